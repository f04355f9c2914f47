"""ALBERT's two axes: factorised embeddings (E) and cross-layer sharing (G), from
space file to Hugging Face export, against transformers' golden files."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bortsearch import Arch, Model, UserError, load, load_space, param_count, save_checkpoint
from bortsearch.model.arch import parse_size
from bortsearch.model.encoder import Encoder, init_params
from bortsearch.model.proxies import effective_param_count, forward_flops
from bortsearch.search.space import space_from_dict, space_table

GOLDEN = Path(__file__).resolve().parent / "golden"
LOGITS = np.load(GOLDEN / "albert_logits.npz")
SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


@pytest.mark.parametrize("folder", ["albert_shared", "albert_groups", "student_albert"])
def test_logits_match_transformers_albert(folder):
    model = load(GOLDEN / folder)
    ids, mask = LOGITS[f"{folder}_ids"], LOGITS[f"{folder}_mask"]
    assert (mask == 0).any()
    np.testing.assert_allclose(model.logits(ids, mask), LOGITS[f"{folder}_logits"], atol=1e-4,
                               rtol=0)


@pytest.mark.parametrize("folder,family", [("sop_albert", "AlbertForPreTraining"),
                                           ("sop_bert", "BertForPreTraining")])
def test_sentence_order_head_matches_transformers_pretraining_classes(folder, family):
    """A student exported with its order head (`pretrain --objective mlm+sop`) is
    read by transformers' `AutoModelForPreTraining` with every tensor used, and both
    heads give transformers' logits (tests/golden/make_golden_sop.py) within 1e-4,
    on padded two-segment inputs; `bortsearch.load` reads the head back."""
    golden = np.load(GOLDEN / "sop_logits.npz")
    config = json.loads((GOLDEN / folder / "config.json").read_text())
    assert config["architectures"] == [family]
    model = load(GOLDEN / folder)
    ids, mask, types = (golden[f"{folder}_{k}"] for k in ("ids", "mask", "types"))
    assert (mask == 0).any() and types.any()
    np.testing.assert_allclose(model.logits(ids, mask, types), golden[f"{folder}_logits"],
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.sop_logits(ids, mask, types), golden[f"{folder}_order"],
                               atol=1e-4, rtol=0)
    if folder == "sop_albert":
        assert model.arch.embedding_size == 16 and model.arch.num_groups == 2
    # written again, the folder is the same tensors under the same names
    from bortsearch.model.hf import export_tensors, read_tensors

    again, before = export_tensors(model), read_tensors(GOLDEN / folder)
    assert again.keys() == before.keys()
    assert all(np.array_equal(again[k], before[k]) for k in again)


def test_golden_albert_folders_cover_sharing_factorisation_and_activations():
    shared, groups = load(GOLDEN / "albert_shared"), load(GOLDEN / "albert_groups")
    assert shared.arch.size == (3, 4, 32, 48, 16, 1) and shared.arch.activation == "gelu_new"
    assert groups.arch.size == (4, 4, 32, 48, 24, 2) and groups.arch.activation == "gelu"
    student = json.loads((GOLDEN / "student_albert" / "config.json").read_text())
    assert student["model_type"] == "albert" and student["architectures"] == ["AlbertForMaskedLM"]
    assert (student["embedding_size"], student["num_hidden_groups"], student["inner_group_num"]) \
        == (8, 2, 1)
    assert student["hidden_act"] == "gelu" and student["tokenizer_class"] == "BertTokenizerFast"


def test_param_count_equals_transformers_albert():
    for c in json.loads((GOLDEN / "albert_counts.json").read_text()):
        arch = Arch(c["num_hidden_layers"], c["num_attention_heads"], c["hidden_size"],
                    c["intermediate_size"], vocab_size=c["vocab_size"],
                    max_positions=c["max_position_embeddings"],
                    type_vocab_size=c["type_vocab_size"], model_type="albert",
                    embedding=c["embedding_size"], groups=c["num_hidden_groups"])
        assert param_count(arch) == c["num_parameters"], c
        # the same shape reached from a BERT-family space (E = H and G = D stored as
        # None): what `export` writes is the same ALBERT folder, with its E->H map
        bert = Arch(1, 1, 8, 8, vocab_size=c["vocab_size"], max_positions=arch.max_positions,
                    type_vocab_size=arch.type_vocab_size).with_size(*arch.size)
        if bert.albert:
            assert param_count(bert) == c["num_parameters"], (bert, c)
    kinds = set()
    for c in json.loads((GOLDEN / "albert_counts.json").read_text()):
        kinds.add((c["embedding_size"] < c["hidden_size"],
                   c["num_hidden_groups"] < c["num_hidden_layers"]))
    assert kinds >= {(True, False), (False, True), (True, True)}, kinds
    for folder in ("albert_shared", "albert_groups", "student_albert"):
        model = load(GOLDEN / folder)
        n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(model.params))
        assert param_count(model.arch) == n


def test_defaults_are_todays_model_and_sharing_is_repetition():
    """E = H and G = D store as None (today's model); G = 1 equals D copies of one
    layer run through the unshared model."""
    base = Arch(4, 2, 32, 64, vocab_size=90)
    assert base.with_size(4, 2, 32, 64, 32, 4) == base and base.size == (4, 2, 32, 64)
    assert not {"embedding", "groups", "activation"} & set(base.to_dict())  # records as before
    shared = base.with_size(4, 2, 32, 64, 32, 1)
    assert shared.size == (4, 2, 32, 64, 32, 1) and shared.label().endswith("E=32, G=1⟩")
    p = init_params(shared, 3)
    unrolled = jax.tree.map(np.asarray, p)
    unrolled["params"]["layers"] = jax.tree.map(lambda x: np.repeat(x, 4, axis=0),
                                                p["params"]["layers"])
    ids = np.arange(14).reshape(2, 7) % 90
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    np.testing.assert_allclose(Encoder(shared).apply(p, ids, mask),
                               Encoder(base).apply(unrolled, ids, mask), atol=1e-5)
    grouped = base.with_size(4, 2, 32, 64, 32, 2)  # layer i uses group ⌊i·G/D⌋: 0,0,1,1
    p2 = init_params(grouped, 4)
    unrolled = jax.tree.map(np.asarray, p2)
    unrolled["params"]["layers"] = jax.tree.map(lambda x: np.repeat(x, 2, axis=0),
                                                p2["params"]["layers"])
    np.testing.assert_allclose(Encoder(grouped).apply(p2, ids, mask),
                               Encoder(base).apply(unrolled, ids, mask), atol=1e-5)


@pytest.mark.parametrize("teacher_e", [None, 16])  # E_T = H, and a factorised teacher
def test_a_factorised_student_starts_from_the_teachers_embeddings_by_svd(teacher_e):
    """Where the teacher's (centred) embedding tables have rank E - 1, the student with
    E-wide tables reproduces the teacher's encoder exactly: the truncated SVD loses
    nothing; with cut columns (the old start) it is far off."""
    from bortsearch.model.encoder import forward_hidden, inherit_params

    teacher = Arch(2, 2, 32, 64, vocab_size=90, max_positions=40, embedding=teacher_e)
    e_t = teacher.embedding_size
    rng = np.random.default_rng(0)
    t = jax.tree.map(np.array, init_params(teacher, 1))
    basis = rng.normal(size=(7, e_t)).astype(np.float32)  # rank E - 1 = 7
    basis -= basis.mean(axis=1, keepdims=True)  # rows centred: LayerNorm sees them so
    for name in ("word", "position", "token_type"):
        table = t["params"]["embeddings"][name]["embedding"]
        table[:] = rng.normal(size=(len(table), 7)).astype(np.float32) @ basis * 0.05
    t["params"]["embeddings"]["ln"]["scale"][:] = rng.uniform(0.5, 1.5, e_t)
    t["params"]["embeddings"]["ln"]["bias"][:] = rng.normal(size=e_t) * 0.1
    ids = rng.integers(0, 90, size=(2, 9))
    mask, types = np.ones_like(ids), (np.arange(9)[None] > 4).astype(np.int32) + 0 * ids
    want = np.asarray(forward_hidden(teacher, t, ids, mask, types))
    student = teacher.with_size(2, 2, 32, 64, 8, 2)
    assert student.embedding == 8
    got = np.asarray(forward_hidden(student, inherit_params(student, teacher, t, seed=0), ids, mask,
                             types))
    np.testing.assert_allclose(got, want, atol=2e-4)
    cut = init_params(student, 0)  # what cutting 8 columns with a random map gives
    far = np.asarray(forward_hidden(student, cut, ids, mask, types))
    assert np.abs(far - want).max() > 0.1


def test_shared_and_factorised_export_round_trip(tmp_path):
    from bortsearch.data.tokenizer import load_tokenizer

    tok = load_tokenizer(GOLDEN / "student_bert", "bert")
    for kw in (dict(embedding=8, groups=1), dict(groups=2), dict(embedding=8)):
        arch = Arch(4, 2, 16, 24, vocab_size=120, max_positions=40, **kw)
        model = Model.init(arch, 1)
        save_checkpoint(model, tmp_path / str(kw), tok)
        back = load(tmp_path / str(kw))
        config = json.loads((tmp_path / str(kw) / "config.json").read_text())
        assert config["model_type"] == "albert" and back.arch.num_groups == arch.num_groups
        ids = np.arange(14).reshape(2, 7) + 5
        # Equal up to float rounding: without `embedding`, the ALBERT checkpoint carries
        # an identity E→H map, which changes how XLA fuses the program.
        np.testing.assert_allclose(model.logits(ids), back.logits(ids), rtol=0, atol=1e-6)


def test_space_axes_enumerate_and_validate(tmp_path):
    space = load_space(SPACES / "albert.toml")
    archs = space.architectures()
    assert len(archs) == 32 and len({a.size for a in archs}) == 32
    plain = [a for a in archs if len(a.size) == 4]
    no_axes = space_from_dict({"layers": [2, 4], "heads": [2], "hidden": [64, 128],
                               "intermediate": [128, 256]})
    assert [a.size for a in plain] == [a.size for a in no_axes.architectures()]
    table = space_table(space)
    assert list(table.columns[:6]) == ["layers", "heads", "hidden", "intermediate",
                                       "embedding", "groups"]
    for r in table.itertuples():
        arch = space.base_arch().with_size(r.layers, r.heads, r.hidden, r.intermediate,
                                           r.embedding, r.groups)
        assert r.params == param_count(arch) and r.effective_params == effective_param_count(arch)
        assert r.flops == forward_flops(arch, 1, 128, "encoder")
    bort = load_space(SPACES / "bort_albert.toml").architectures()
    assert len(bort) == 1800
    assert list(space_table(load_space(SPACES / "demo.toml")).columns[:5]) == \
        ["layers", "heads", "hidden", "intermediate", "params"]
    base = {"layers": [2, 4], "heads": [2], "hidden": [64], "intermediate": [64]}
    for extra, message in [({"groups": [3]}, "groups = 3 divides none of the layers"),
                           ({"embedding": [128]}, "embedding = 128 is larger than every hidden"),
                           ({"embedding": [0]}, "embedding values must be >= 1"),
                           ({"groups": ["H"]}, 'groups must hold integers or "D"'),
                           ({"embedding": [32], "model_type": "roberta"}, "need model_type"),
                           ({"embedding": [32, 32]}, "lists 32 more than once")]:
        with pytest.raises(UserError, match=message):
            space_from_dict({**base, **extra}, "s.toml")
    assert parse_size("4,2,64,128,32,2") == (4, 2, 64, 128, 32, 2)
    for bad, message in [("4,2,64,128,96,2", "at most hidden"), ("4,2,64,128,32,3", "divide"),
                         ("4,2,64,128,32", "four positive integers")]:
        with pytest.raises(UserError, match=message):
            parse_size(bad)


def test_compile_time_stays_flat_in_depth_when_shared():
    """With `unroll=1`, one layer body is compiled whatever D: the HLO of a G = 1,
    D = 12 forward is no bigger than D = 2's."""
    arch = Arch(2, 2, 32, 64, vocab_size=100, groups=1)
    ids = jax.ShapeDtypeStruct((1, 8), np.int32)

    def hlo_size(a):
        f = jax.jit(lambda p, i: Encoder(a, unroll=1).apply(p, i, np.ones((1, 8), np.int32)))
        from bortsearch.model.encoder import param_shapes

        return len(f.lower(param_shapes(a), ids).as_text())

    assert hlo_size(arch.with_size(12, 2, 32, 64, 32, 1)) <= 1.02 * hlo_size(arch)


@pytest.mark.slow
def test_albert_space_search_pretrain_resume_and_export(teacher, tmp_path, capsys):
    """A search over albert.toml runs to the end with E and G in its table; a
    shared, factorised student pretrains (killed and resumed: identical weights)
    and exports as an ALBERT that transformers reads."""
    import os
    import subprocess
    import sys

    import pandas as pd
    from conftest import has_checkpoint, kill_when
    from safetensors.numpy import load_file

    from bortsearch.cli import main

    run = tmp_path / "run"
    assert main(["search", "--space", str(SPACES / "albert.toml"), "--run", str(run),
                 "--teacher", str(teacher), "--epsilon", "8", "--steps", "4", "--seeds", "1",
                 "--batch-size", "8", "--seq-len", "32", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "    E   G " in out
    table = pd.read_csv(run / "results.csv")
    assert list(table.columns[:6]) == ["layers", "heads", "hidden", "intermediate",
                                       "embedding", "groups"]
    assert len(table) == 32 and (table["status"] == "done").sum() >= 4
    assert ((table["groups"] < table["layers"]) & (table["status"] == "done")).any()
    assert (run / "pareto.png").is_file()
    exe = str(Path(sys.executable).parent / "bortsearch")
    flags = ["--arch", "4,2,64,128,32,2", "--steps", "60", "--batch-size", "8", "--seq-len",
             "32", "--lr", "1e-3", "--eval-every", "20", "--checkpoint-every", "10", "--quiet"]
    assert main(["pretrain", str(run), "--out", str(tmp_path / "whole"), *flags, "--seed",
                 "0"]) == 0
    work = run / "pretrain" / "4-2-64-128-32-2"
    (work.parent / "whole").mkdir()
    os.replace(work, work.parent / "whole" / work.name)
    proc = subprocess.Popen([exe, "pretrain", str(run), "--out", str(tmp_path / "s"), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: has_checkpoint(work / "checkpoints"))
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), *flags]) == 0
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert "albert.encoder.albert_layer_groups.1.albert_layers.0.ffn.weight" in b
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (config["model_type"], config["embedding_size"], config["num_hidden_groups"]) == \
        ("albert", 32, 2)
    student = load(tmp_path / "s")
    assert student.arch.size == (4, 2, 64, 128, 32, 2)
    transformers = pytest.importorskip("transformers")
    assert type(transformers.AutoConfig.from_pretrained(tmp_path / "s")).__name__ == "AlbertConfig"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    assert tok("a transformer")["input_ids"] == student.tokenizer.hf.encode("a transformer").ids


def test_an_albert_fine_tunes_into_an_albert_classifier(tmp_path):
    """Sharing and factorisation survive fine-tuning: the export is an
    AlbertForSequenceClassification (pooler `albert.pooler`, `classifier`) that
    reads back with the same logits. (Against transformers by hand: 1.5e-8.)"""
    from bortsearch.downstream.finetune import FinetuneConfig, finetune

    words = "the quick brown fox jumps over lazy dog a transformer encoder stacks".split()
    rows = ["a\tb\tlabel"] + [
        f"{' '.join(words[i % 9:i % 9 + 3])}\t{' '.join(words[i % 5:i % 5 + 2])}\t"
        f"{['yes', 'no'][i % 2]}" for i in range(32)]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    finetune(GOLDEN / "albert_shared", "pairs", tmp_path, tmp_path / "out",
             FinetuneConfig(lrs=(1e-2,), epochs=1, batch_size=8, max_length=32),
             text_fields="a,b", label_field="label", progress=False)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["AlbertForSequenceClassification"]
    assert (config["num_hidden_groups"], config["embedding_size"]) == (1, 16)
    from safetensors.numpy import load_file

    names = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {"albert.pooler.weight", "classifier.weight",
            "albert.encoder.embedding_hidden_mapping_in.weight"} <= names.keys()
    model = load(tmp_path / "out")
    assert model.num_labels == 2 and model.arch.size == (3, 4, 32, 48, 16, 1)
    assert model.logits(np.array([[2, 10, 11, 12, 3]])).shape == (1, 2)
