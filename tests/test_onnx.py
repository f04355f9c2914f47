"""ONNX export: parity of ONNX Runtime with `bortsearch.load(...).logits` for every
family and head, the int8 graph, and bad input."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bortsearch import load
from bortsearch.cli import main
from bortsearch.deploy.onnx_export import run_logits, session

GOLDEN = Path(__file__).resolve().parent / "golden"


def _inputs(arch, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, arch.vocab_size, size=(3, 13))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    if arch.family.positions == "padded":
        ids[mask == 0] = arch.pad_token_id
    types = np.zeros_like(ids)
    if arch.type_vocab_size > 1:
        types[:, 7:] = 1
    return ids, mask, types


@pytest.mark.parametrize("folder", [
    "bert_tiny", "roberta_tiny",
    "albert_groups",  # E < H and G < D
    "student_albert", "classifier_bert", "classifier_roberta",
    # DistilBERT (no token types; ReLU pre_classifier), XLM-RoBERTa, ELECTRA (E < H; GELU head)
    "distilbert_tiny", "xlmr_tiny", "electra_tiny", "distilbert_cls", "xlmr_cls", "electra_cls",
    # ModernBERT: rotary, local windows (13 tokens > its 8), gated, pre-LayerNorm, no biases
    "modernbert_tiny", "modernbert_cls", "student_modernbert",
    # DeBERTa-v2/v3: disentangled attention over bucketed relative positions
    "deberta_tiny", "deberta_cls", "student_deberta"])
def test_onnx_runtime_logits_equal_the_models(folder, tmp_path, capsys):
    assert main(["onnx", str(GOLDEN / folder), "--out", str(tmp_path / "o")]) == 0
    assert "model.onnx" in capsys.readouterr().out
    model = load(GOLDEN / folder)
    assert model.arch.albert == folder.startswith(("albert", "student_albert"))
    # the config and tokenizer travel with the graph; the weights are in it
    copied = {f.name for f in (tmp_path / "o").iterdir()}
    assert {"config.json", "model.onnx", "onnx.json"} <= copied
    assert "model.safetensors" not in copied and "model_quantized.onnx" not in copied
    if model.tokenizer is not None:
        assert copied & {"vocab.txt", "tokenizer.json", "vocab.json"}
    sess = session(tmp_path / "o" / "model.onnx", threads=1)
    for seed, length in ((0, 13), (1, 5)):  # dynamic batch and sequence axes
        ids, mask, types = (x[:, :length] for x in _inputs(model.arch, seed))
        want = model.logits(ids, mask, types)
        got = run_logits(sess, ids, mask, types)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_int8_graph_is_smaller_and_close(tmp_path):
    """Dynamic int8 of a trained-shape model: the weights shrink about 4x and the
    logits stay close (the size of the error on real models is in bench/results/onnx_latency.md)."""
    assert main(["onnx", str(GOLDEN / "roberta_tiny"), "--out", str(tmp_path / "o"),
                 "--int8"]) == 0
    o = tmp_path / "o"
    assert (o / "model_quantized.onnx").stat().st_size < 0.6 * (o / "model.onnx").stat().st_size
    umask = os.umask(0)
    os.umask(umask)
    assert (o / "model_quantized.onnx").stat().st_mode & 0o777 == 0o666 & ~umask
    model = load(GOLDEN / "roberta_tiny")
    ids, mask, types = _inputs(model.arch)
    want = model.logits(ids, mask, types)
    got = run_logits(session(o / "model_quantized.onnx", 1), ids, mask, types)
    assert got.shape == want.shape and not np.allclose(got, want, atol=1e-6)  # it is int8
    keep = mask.astype(bool)
    assert np.abs(got - want)[keep].max() < 0.25 * want[keep].std(), "int8 drifted"
    assert json.loads((o / "onnx.json").read_text())["files"] == ["model.onnx",
                                                                 "model_quantized.onnx"]


def test_bad_onnx_input(tmp_path, capsys, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    assert main(["onnx", str(GOLDEN / "bert_tiny"), "--out", str(busy)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep"]
    assert main(["onnx", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # the extra not installed: one line that says how to install it
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["onnx", str(GOLDEN / "bert_tiny"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'bortsearch[onnx]'" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_a_family_without_token_types_takes_what_its_tokenizer_gives(tmp_path):
    """DistilBERT's graph has no token_type_ids input (its tokenizer gives none): ONNX
    Runtime runs on input_ids and attention_mask alone."""
    assert main(["onnx", str(GOLDEN / "distilbert_cls"), "--out", str(tmp_path / "o")]) == 0
    sess = session(tmp_path / "o" / "model.onnx", threads=1)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    model = load(GOLDEN / "distilbert_cls")
    ids, mask, _ = _inputs(model.arch)
    got = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(got, model.logits(ids, mask), atol=1e-4, rtol=0)
