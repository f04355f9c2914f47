"""Fine-tuning and the GLUE table: transformers parity of the classifier export,
dropout only in training, headless checkpoints, real GLUE data beating the
majority class, SIGKILL resume, and the student-vs-teacher table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import has_checkpoint, kill_when
from safetensors.numpy import load_file, save_file

from bortsearch import Arch, Model, UserError, load, load_checkpoint, save_checkpoint
from bortsearch.data.tasks import Split, encode
from bortsearch.data.tokenizer import load_tokenizer
from bortsearch.downstream.finetune import FinetuneConfig, finetune, initial_params
from bortsearch.downstream.glue import glue
from bortsearch.model.encoder import Encoder, init_params

GOLDEN = Path(__file__).resolve().parent / "golden"
CLS = np.load(GOLDEN / "classifier_logits.npz")
PAIRS = [("the quick brown fox", "jumps over the lazy dog"),
         ("a transformer encoder", "stacks attention"),
         ("dog", "the fox jumps over a lazy transformer encoder stacks")]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_classifier_export_matches_transformers(family):
    model = load(GOLDEN / f"classifier_{family}")
    labels = CLS[f"{family}_labels"].tolist()
    assert model.num_labels == len(labels)
    config = json.loads((GOLDEN / f"classifier_{family}" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(labels))] == labels
    got = model.logits(CLS[f"{family}_ids"], CLS[f"{family}_mask"], CLS[f"{family}_types"])
    np.testing.assert_allclose(got, CLS[f"{family}_logits"], atol=1e-4, rtol=0)
    assert np.abs(CLS[f"{family}_logits"]).max() > 1e-3  # a trained head, not zeros


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_pair_encoding_equals_the_transformers_tokenizer(family):
    folder = GOLDEN / f"classifier_{family}"
    model = load(folder)
    tok = load_tokenizer(folder, family)
    split = Split([a for a, _ in PAIRS], [b for _, b in PAIRS], np.zeros(3, np.int32))
    enc = encode(tok, split, 64, model.arch.type_vocab_size)
    ids, mask, types = CLS[f"{family}_ids"], CLS[f"{family}_mask"], CLS[f"{family}_types"]
    assert enc.lengths.tolist() == mask.sum(1).tolist()
    for row in range(3):
        n = enc.lengths[row]
        assert enc.ids[row, :n].tolist() == ids[row, :n].tolist()
        assert enc.types[row, :n].tolist() == types[row, :n].tolist()


def test_classifier_config_reads_in_transformers():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(GOLDEN / "classifier_bert")
    assert config.architectures == ["BertForSequenceClassification"]
    assert config.num_labels == 3 and config.label2id == {"maybe": 0, "no": 1, "yes": 2}
    assert config.problem_type == "single_label_classification"


def test_dropout_only_when_asked_and_the_default_is_unchanged():
    arch = Arch(2, 2, 16, 32, vocab_size=50, max_positions=16)
    params = init_params(arch, 0)
    ids = np.arange(20).reshape(2, 10) % 50
    mask = np.ones_like(ids)
    plain = Encoder(arch).apply(params, ids, mask)
    assert np.array_equal(plain, Encoder(arch, dropout=0.5).apply(params, ids, mask,
                                                                  deterministic=True))
    key = {"dropout": jax.random.key(3)}
    a = Encoder(arch).apply(params, ids, mask, deterministic=False, rngs=key)
    b = Encoder(arch).apply(params, ids, mask, deterministic=False, rngs=key)
    c = Encoder(arch).apply(params, ids, mask, deterministic=False,
                            rngs={"dropout": jax.random.key(4)})
    assert np.array_equal(a, b) and not np.allclose(a, plain) and not np.allclose(a, c)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data_module):
    """A random tiny BERT with a WordPiece vocabulary of SST-2's training text."""
    from bortsearch import resolve_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    rows = (shared_data_module / "glue/SST-2/train.tsv").read_text().splitlines()[1:8001]
    (root / "text.txt").write_text("\n".join(r.split("\t")[0] for r in rows))
    tok = train_tokenizer(resolve_corpus([str(root / "text.txt")]), 1500)
    arch = Arch(2, 2, 64, 128, vocab_size=tok.vocab_size, max_positions=130)
    save_checkpoint(Model.init(arch, 0), root / "bert", tok)
    return root / "bert"


@pytest.fixture(scope="module")
def shared_data_module():
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="module")
def headless(tiny, tmp_path_factory):
    """The same weights as a bare `BertModel.save_pretrained` export: no `bert.`
    prefix, no masked-LM head, a pooler."""
    out = tmp_path_factory.mktemp("headless") / "bert"
    out.mkdir()
    tensors = load_file(str(tiny / "model.safetensors"))
    bare = {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")}
    rng = np.random.default_rng(0)
    bare["pooler.dense.weight"] = rng.normal(0, 0.02, (64, 64)).astype(np.float32)
    bare["pooler.dense.bias"] = np.zeros(64, np.float32)
    save_file(bare, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in tiny.iterdir():
        if f.name != "model.safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_headless_checkpoints_fine_tune_but_cannot_teach(tiny, headless):
    with pytest.raises(UserError, match="no masked-LM head.*bortsearch teacher --init-from"):
        load_checkpoint(headless)
    enc = load_checkpoint(headless, part="encoder").params["params"]
    full = load_checkpoint(tiny).params["params"]
    assert set(enc) == {"embeddings", "layers", "pooler"}
    for k in ("embeddings", "layers"):
        jax.tree.map(np.testing.assert_array_equal, enc[k], full[k])
    start = initial_params(load_checkpoint(headless, part="encoder"), 2, seed=0)["params"]
    np.testing.assert_array_equal(start["pooler"]["kernel"], enc["pooler"]["kernel"])  # kept


SMALL = dict(lrs=(1e-3,), epochs=2, max_length=64, max_train_samples=3000,
             max_eval_samples=400)


@pytest.mark.slow
def test_real_sst2_beats_the_majority_class_and_exports_a_classifier(tiny, shared_data, tmp_path):
    m = finetune(tiny, "sst2", shared_data / "glue", tmp_path / "out",
                 FinetuneConfig(**SMALL), progress=False)
    assert m["majority"]["accuracy"] == pytest.approx(0.5, abs=0.05)
    assert m["dev"]["accuracy"] > m["majority"]["accuracy"] + 0.08, m["dev"]
    assert m["score"] == m["dev"]["accuracy"] and set(m["dev"]) == {"accuracy"}
    assert m["seconds_per_epoch"] > 0 and len(m["grid"]) == 1
    umask = os.umask(0)
    os.umask(umask)
    for f in ("metrics.json", "model.safetensors", "config.json"):  # not mkstemp's 0600
        assert (tmp_path / "out" / f).stat().st_mode & 0o777 == 0o666 & ~umask
    model = load(tmp_path / "out")  # the exported classifier reproduces the dev score
    from bortsearch.data.tasks import load_task
    from bortsearch.downstream.finetune import predict

    task = load_task("sst2", shared_data / "glue", max_eval=400)
    enc = encode(model.tokenizer, task.dev, 64, model.arch.type_vocab_size)
    pred = predict(model.arch, 2, model.params, enc, 64)
    assert (pred == task.dev.y).mean() == pytest.approx(m["dev"]["accuracy"])
    import bortsearch.downstream.finetune as ft

    real_encode = ft.encode
    ft.encode = lambda *a, **k: pytest.fail("a finished run tokenised its splits again")
    try:
        again = finetune(tiny, "sst2", shared_data / "glue", tmp_path / "out",
                         FinetuneConfig(**SMALL), progress=False)
    finally:
        ft.encode = real_encode
    assert again == m  # finished: returned at once, nothing encoded
    # int8 added to the finished run, without training: the ONNX graphs beside the model
    q = finetune(tiny, "sst2", shared_data / "glue", tmp_path / "out",
                 FinetuneConfig(**SMALL), progress=False, int8=True)
    assert {k: v for k, v in q.items() if k != "int8"} == m
    assert abs(q["int8"]["score"] - m["score"]) < 0.05 and q["int8"]["latency_ms"] > 0
    from bortsearch.deploy.onnx_export import session
    from bortsearch.downstream.finetune import predict_onnx

    fp32 = predict_onnx(session(tmp_path / "out" / "model.onnx"), 2, enc, 64)
    assert (fp32 == pred).mean() > 0.995  # float32 ONNX: the same classes as JAX
    int8 = predict_onnx(session(tmp_path / "out" / "model_quantized.onnx"), 2, enc, 64)
    assert (int8 == task.dev.y).mean() == pytest.approx(q["int8"]["score"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["int8"] == q["int8"]
    (one,) = q["int8"]["grid"]  # every trial quantised: here the one, the exported
    assert one["score"] == q["int8"]["score"] and one["fp32_score"] == m["score"]
    with pytest.raises(UserError, match="other settings"):
        finetune(tiny, "sst2", shared_data / "glue", tmp_path / "out",
                 FinetuneConfig(**{**SMALL, "epochs": 3}), progress=False)


def _cli(*args):
    return [sys.executable, "-m", "bortsearch.cli", *map(str, args)]


@pytest.mark.slow
def test_sigkill_resume_gives_identical_metrics(tiny, shared_data, tmp_path):
    args = ["finetune", tiny, "--task", "mrpc", "--data", shared_data / "glue", "--lr", "1e-3",
            "--lr", "3e-4", "--epochs", "2", "--max-train-samples", "320", "--eval-every", "4",
            "--max-eval-samples", "100", "--max-length", "64", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(*args, "--out", tmp_path / "killed"), env=env,
                            stderr=subprocess.DEVNULL)
    second = tmp_path / "killed" / "trials" / "lr0.0003-seed0" / "checkpoints"
    kill_when(proc, lambda: has_checkpoint(second))
    assert not (tmp_path / "killed" / "metrics.json").exists()
    first_done = json.loads((tmp_path / "killed/trials/lr0.001-seed0/result.json").read_text())
    from bortsearch.cli import main  # in this process: no start-up

    assert main([*map(str, args), "--out", str(tmp_path / "killed")]) == 0
    assert main([*map(str, args), "--out", str(tmp_path / "whole")]) == 0
    killed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    def strip(m):
        return [{k: v for k, v in t.items() if "seconds" not in k and "per_s" not in k}
                for t in m["grid"]]

    assert strip(killed) == strip(whole) and killed["dev"] == whole["dev"]
    assert json.loads((tmp_path / "killed/trials/lr0.001-seed0/result.json").read_text()) \
        == first_done  # the finished trial was not redone
    for trial in ("lr0.001-seed0", "lr0.0003-seed0"):
        a = (tmp_path / "killed/trials" / trial / "evals.jsonl").read_text()
        assert a == (tmp_path / "whole/trials" / trial / "evals.jsonl").read_text()
    assert load_file(str(tmp_path / "killed/model.safetensors")).keys() \
        == load_file(str(tmp_path / "whole/model.safetensors")).keys()
    for k, v in load_file(str(tmp_path / "whole/model.safetensors")).items():
        np.testing.assert_array_equal(load_file(str(tmp_path / "killed/model.safetensors"))[k], v)


@pytest.mark.slow
def test_glue_table_student_vs_teacher(tiny, headless, shared_data, tmp_path):
    cfg = FinetuneConfig(lrs=(1e-3,), epochs=1, max_length=64, max_train_samples=256,
                         max_eval_samples=64)
    table = glue([tiny, headless], shared_data / "glue", tmp_path / "g", ["rte", "cola"], cfg,
                 progress=False, int8=True)
    assert table["model"].tolist() == ["bert", "bert-2", "majority class"]
    assert (table.loc[:1, "latency_ms"] > 0).all() and (table.loc[:1, "params"] > 0).all()
    assert table.loc[2, "cola"] == 0.0  # Matthews of a constant guess
    assert table["average"].tolist() == pytest.approx(table[["rte", "cola"]].mean(axis=1).tolist())
    for f in ("glue.csv", "glue.md", "glue.png"):
        assert (tmp_path / "g" / f).is_file()
    on_disk = pd.read_csv(tmp_path / "g" / "glue.csv")
    assert on_disk["rte"].tolist() == pytest.approx(table["rte"].tolist())
    rte = json.loads((tmp_path / "g/bert/rte/metrics.json").read_text())
    assert table.loc[0, "rte"] == pytest.approx(100 * rte["score"])
    assert table.loc[0, "rte_int8"] == pytest.approx(100 * rte["int8"]["score"])
    assert (table.loc[:1, "latency_int8_ms"] > 0).all()
    assert table.loc[:1, "average_int8"].tolist() == pytest.approx(
        table.loc[:1, ["rte_int8", "cola_int8"]].mean(axis=1).tolist())
    assert "average int8" in (tmp_path / "g" / "glue.md").read_text()


def test_finetune_bad_input(tiny, shared_data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        finetune(tiny, "sst2", shared_data / "glue", tmp_path / "file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not a fine-tuning run"):
        finetune(tiny, "sst2", shared_data / "glue", tmp_path / "full")
    with pytest.raises(UserError, match="--max-length 600 is longer"):
        finetune(tiny, "sst2", shared_data / "glue", tmp_path / "o",
                 FinetuneConfig(max_length=600))
    assert not (tmp_path / "o").exists()  # nothing written for a refused run
    with pytest.raises(UserError, match="--warmup"):
        FinetuneConfig(warmup=1.5)
    with pytest.raises(UserError, match="--lr"):
        FinetuneConfig(lrs=(float("inf"),))
