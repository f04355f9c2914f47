"""Export and pretraining of the chosen student."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bortsearch import load
from bortsearch.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"
PRETRAIN = ["--steps", "12", "--batch-size", "8", "--seq-len", "32", "--lr", "1e-3",
            "--eval-every", "4", "--checkpoint-every", "4", "--quiet"]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_exported_student_matches_transformers(family):
    """Golden round trip: make_student.py pretrained and exported these students
    with bortsearch; make_golden.py loaded them with transformers'
    AutoModelForMaskedLM and recorded its logits on padded inputs."""
    g = np.load(GOLDEN / "logits.npz")
    model = load(GOLDEN / f"student_{family}")
    ids, mask = g[f"student_{family}_ids"], g[f"student_{family}_mask"]
    assert (mask == 0).any()
    np.testing.assert_allclose(model.logits(ids, mask), g[f"student_{family}_logits"],
                               atol=1e-4, rtol=0)


def test_fresh_export_has_the_structure_transformers_read(run, tmp_path):
    """What the exporter writes now is what the golden round trip verified."""
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), "--arch", "2,2,16,24",
                 *PRETRAIN]) == 0
    golden = load_file(str(GOLDEN / "student_bert" / "model.safetensors"))
    fresh = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert fresh.keys() == golden.keys()
    assert all(fresh[k].dtype == golden[k].dtype and fresh[k].ndim == golden[k].ndim for k in fresh)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config.keys() == json.loads((GOLDEN / "student_bert" / "config.json").read_text()).keys()
    transformers = pytest.importorskip("transformers")
    c = transformers.AutoConfig.from_pretrained(tmp_path / "s")
    assert type(c).__name__ == "BertConfig"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    model = load(tmp_path / "s")
    assert tok("the module")["input_ids"] == model.tokenizer.hf.encode("the module").ids


def test_export_without_weights_then_with(run, tmp_path, capsys):
    best = json.loads((run / "best.json").read_text())
    assert main(["export", str(run), "--out", str(tmp_path / "cfg")]) == 0
    out = tmp_path / "cfg"
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == best["size"][0]
    card = (out / "README.md").read_text()
    assert "ε = 4, s = 5" in card and f"{best['params']:,}" in card and "pareto.png" in card
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--onnx"]) == 2
    assert "no pretrained weights" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # after pretraining, export picks the weights up
    assert main(["pretrain", str(run), "--out", str(tmp_path / "p"), *PRETRAIN]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "w"), "--onnx", "--int8"]) == 0
    assert "with weights" in capsys.readouterr().out
    from bortsearch.deploy.onnx_export import run_logits, session

    ids = np.arange(3, 23).reshape(2, 10)
    np.testing.assert_allclose(run_logits(session(tmp_path / "w" / "model.onnx", 1), ids),
                               load(tmp_path / "w").logits(ids), atol=1e-4, rtol=0)
    assert (tmp_path / "w" / "model_quantized.onnx").is_file()
    a, b = (load_file(str(tmp_path / "p" / "model.safetensors")),
            load_file(str(tmp_path / "w" / "model.safetensors")))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert "Held-out masked-LM accuracy" in (tmp_path / "w" / "README.md").read_text()


def test_pretrain_logs_heldout_metrics_and_exports(run, tmp_path):
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), *PRETRAIN]) == 0
    size = json.loads((run / "best.json").read_text())["size"]
    metrics = [json.loads(l) for l in
               (run / "pretrain" / "-".join(map(str, size)) / "metrics.jsonl")
               .read_text().splitlines()]
    assert [m["step"] for m in metrics] == [4, 8, 12]
    assert all({"heldout_accuracy", "heldout_kd_ce", "loss", "kl", "ce"} <= m.keys()
               for m in metrics)
    assert metrics[-1]["loss"] < metrics[0]["loss"] * 1.5
    model = load(tmp_path / "s")
    assert list(model.arch.size) == size
    # FLOP/s: the student's training, the teacher's forward apart, and both
    from bortsearch.train.step import forward_flops_per_token, train_flops_per_token

    summary = json.loads((run / "pretrain" / "-".join(map(str, size)) / "summary.json").read_text())
    teacher = load(run / "teacher").arch
    t, st = forward_flops_per_token(teacher, 32, 5), train_flops_per_token(model.arch, 32, 5)
    assert summary["teacher_flops_share"] == pytest.approx(t / (t + st))
    assert summary["total_flops_per_s"] == pytest.approx(
        summary["model_flops_per_s"] + summary["teacher_flops_per_s"])


def test_export_errors_write_nothing(run, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    assert main(["export", str(run), "--out", str(busy)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep"]
    assert main(["export", str(run), "--out", str(tmp_path / "a"), "--arch", "2,3,32,64"]) == 2
    assert "hidden (32) must be a multiple of heads (3)" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "b"), "--arch", "2,2,32"]) == 2
    assert "four positive integers" in capsys.readouterr().err
    best = json.loads((run / "best.json").read_text())
    (run / "best.json").write_text(json.dumps({**best, "arch": None, "size": None,
                                               "reason": "nothing eligible"}))
    assert main(["export", str(run), "--out", str(tmp_path / "c")]) == 2
    assert ("chose no architecture (nothing eligible); pick one with --arch"
            in capsys.readouterr().err)
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "not a finished search run" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "abcd")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_roberta_family_search_export_and_pretrain(tmp_path):
    """The Bort configuration: a RoBERTa teacher (byte-level BPE, positions after
    the padding offset, one token type, untied decoder) through search, pretrain
    and export; the student inherits the family."""
    (tmp_path / "space.toml").write_text(
        'name = "r"\nmodel_type = "roberta"\nlayers = [1, 2]\nheads = [2]\nhidden = [16]\n'
        'intermediate = [24]\n')
    run = tmp_path / "run"
    assert main(["search", "--space", str(tmp_path / "space.toml"), "--run", str(run),
                 "--teacher", str(GOLDEN / "roberta_tiny"), "--epsilon", "1", "--steps", "4",
                 "--batch-size", "8", "--seq-len", "32", "--quiet"]) == 0
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), *PRETRAIN]) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["model_type"] == "roberta" and config["tie_word_embeddings"] is False
    assert config["pad_token_id"] == 1 and config["max_position_embeddings"] == 42
    student = load(tmp_path / "s")
    assert student.arch.model_type == "roberta" and student.tokenizer.family == "roberta"
    assert "lm_head.decoder.weight" in load_file(str(tmp_path / "s" / "model.safetensors"))
    transformers = pytest.importorskip("transformers")
    assert type(transformers.AutoConfig.from_pretrained(tmp_path / "s")).__name__ == "RobertaConfig"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    assert tok("a transformer")["input_ids"] == student.tokenizer.hf.encode("a transformer").ids


def test_glue_on_a_run_compares_its_teacher_and_pretrained_student(run, tmp_path, capsys):
    assert main(["glue", str(run), "--data", str(tmp_path / "glue")]) == 2  # no data yet
    assert "no such folder" in capsys.readouterr().err
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    words = "the cat sat on a mat while dogs ran far away".split()
    rows = ["index\tsentence1\tsentence2\tlabel"] + [
        f"{i}\t{' '.join(words[i % 5:i % 5 + 6])}\t{' '.join(words[i % 3:i % 3 + 3])}\t"
        f"{['entailment', 'not_entailment'][i % 2]}" for i in range(40)]
    for split in ("train", "dev"):
        (rte / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    assert main(["glue", str(run), "--data", str(tmp_path / "glue")]) == 2  # no student yet
    assert "no pretrained student" in capsys.readouterr().err
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), *PRETRAIN]) == 0
    flags = ["--data", str(tmp_path / "glue"), "--max-length", "32", "--epochs", "1",
             "--batch-size", "8", "--lr", "1e-3", "--quiet"]
    assert main(["glue", str(run), *flags]) == 0
    size = "-".join(map(str, json.loads((run / "best.json").read_text())["size"]))
    import pandas as pd

    table = pd.read_csv(run / "glue" / "glue.csv")
    assert table["model"].tolist() == ["teacher", f"student-{size}", "majority class"]
    assert table["rte"].notna().all() and table.loc[2, "rte"] == 50.0
    assert (run / "glue" / "models" / f"student-{size}" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "| teacher |" in out and "glue.png" in out


@pytest.mark.parametrize("flag", [[], ["--init", "random"]])
def test_pretrain_starts_as_the_search_scored(run, tmp_path, flag):
    """By default the student starts as the run's candidates did (the search's
    default is the teacher's weights); --init random starts from Normal(0, 0.02).
    One step at a negligible learning rate leaves the start visible."""
    from bortsearch import Model
    from bortsearch.model.encoder import inherit_params, init_params
    from bortsearch.model.hf import export_tensors

    assert json.loads((run / "search.json").read_text())["init"] == "teacher"
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), "--steps", "1",
                 "--lr", "1e-9", "--batch-size", "8", "--seq-len", "32", "--quiet", *flag]) == 0
    student, teacher = load(tmp_path / "s"), load(run / "teacher")
    expected = (init_params(student.arch, 0) if flag
                else inherit_params(student.arch, teacher.arch, teacher.params, 0))
    got, want = export_tensors(student), export_tensors(Model(student.arch, expected))
    assert max(float(np.abs(got[k] - want[k]).max()) for k in got) < 1e-6
    size = "-".join(map(str, student.arch.size))
    summary = json.loads((run / "pretrain" / size / "summary.json").read_text())
    assert summary["init"] == ("random" if flag else "teacher")
    card = (tmp_path / "s" / "README.md").read_text()
    assert ("from random weights" if flag else "from the teacher's weights") in card


def test_pretrain_with_sentence_order_prediction(run, tmp_path, capsys):
    """--objective mlm+sop: batches of ordered or swapped segment pairs, the order
    head trained from their labels beside distillation, its held-out accuracy
    logged and summarised, and the head exported as BertForPreTraining's, which
    `bortsearch.load` reads back with the same weights."""
    out = tmp_path / "s"
    assert main(["pretrain", str(run), "--out", str(out), "--objective", "mlm+sop",
                 *PRETRAIN]) == 0
    assert "held-out sentence-order accuracy" in capsys.readouterr().out
    size = json.loads((run / "best.json").read_text())["size"]
    work = run / "pretrain" / "-".join(map(str, size))
    metrics = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    assert all({"sop_ce", "sop_accuracy", "heldout_sop_accuracy"} <= m.keys() for m in metrics)
    summary = json.loads((work / "summary.json").read_text())
    assert summary["objective"] == "mlm+sop" and 0 <= summary["heldout_sop_accuracy"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]
    names = load_file(str(out / "model.safetensors")).keys()
    assert {"cls.seq_relationship.weight", "bert.pooler.dense.weight"} <= names
    model = load(out)
    ids = np.array([[2, 7, 8, 3, 9, 10, 3]])
    assert model.sop_logits(ids, token_type_ids=[[0, 0, 0, 0, 1, 1, 1]]).shape == (1, 2)
    assert "sentence-order prediction" in (out / "README.md").read_text()
    # the held-out order accuracy, recomputed with NumPy from the exported weights
    from bortsearch import BatchSpec, load_data, resolve_corpus

    data = load_data(resolve_corpus(None), model.tokenizer, BatchSpec(8, 32, seed=0), pairs=True)
    hits = []
    for b in data.heldout_batches():
        order = model.sop_logits(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        hits += list(order[np.arange(len(order)), b["sop_labels"]] >= order.max(-1))
    assert summary["heldout_sop_accuracy"] == pytest.approx(np.mean(hits), abs=1e-9)
    # the same command again: the finished export is recognised, nothing is trained
    assert main(["pretrain", str(run), "--out", str(out), "--objective", "mlm+sop",
                 *PRETRAIN]) == 0
    # another objective for the same student's work folder is refused by name
    assert main(["pretrain", str(run), "--out", str(tmp_path / "t"), *PRETRAIN]) == 2
    assert "objective: 'mlm+sop' then, 'mlm' now" in capsys.readouterr().err


def test_students_pretrained_in_one_group_equal_separate_runs(run, tmp_path, monkeypatch,
                                                              capsys):
    """`pretrain --arch A --arch B` computes the teacher's outputs once per batch for
    both, and each student ends bit for bit as its own run does."""
    import shutil

    import bortsearch.train.fit as fit_module

    calls = []
    real = fit_module.teacher_targets
    monkeypatch.setattr(fit_module, "teacher_targets",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    group_run = tmp_path / "group-run"
    shutil.copytree(run, group_run)
    sizes = ["1,2,16,32", "2,2,32,64"]
    common = ["--steps", "6", "--eval-every", "3", "--batch-size", "8", "--seq-len", "32",
              "--quiet"]
    for size in sizes:
        assert main(["pretrain", str(run), "--arch", size, "--out", str(tmp_path / size),
                     *common]) == 0
    assert len(calls) == 12
    calls.clear()
    argv = ["pretrain", str(group_run), *[a for s in sizes for a in ("--arch", s)],
            "--out", str(tmp_path / "group"), *common]
    assert main(argv) == 0
    assert len(calls) == 6  # once per batch for both students
    out = capsys.readouterr().out
    assert "once per batch for 2 students" in out
    for size in sizes:
        name = size.replace(",", "-")
        alone = (tmp_path / size / "model.safetensors").read_bytes()
        assert (tmp_path / "group" / name / "model.safetensors").read_bytes() == alone
        lines = [(r / "pretrain" / name / "metrics.jsonl").read_text().splitlines()
                 for r in (run, group_run)]
        assert lines[0] == lines[1] and len(lines[0]) == 2
        summary = json.loads((group_run / "pretrain" / name / "summary.json").read_text())
        assert summary["group_size"] == 2 and summary["heldout_mask_accuracy"] >= 0
    # the same command again finds both exports and trains nothing
    assert main(argv) == 0 and len(calls) == 6
    assert main(["pretrain", str(group_run), "--arch", sizes[0], "--arch", sizes[0], "--out",
                 str(tmp_path / "twice"), *common]) == 2
    assert "the same --arch is given twice" in capsys.readouterr().err
