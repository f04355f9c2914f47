"""DeBERTa-v2/v3: read (in transformers' default head layout and the original
checkpoints'), tokenised, counted, shrunk and written as transformers has it (goldens:
tests/golden/make_golden_deberta.py, with the students of make_family_students.py
deberta). Its disentangled attention is data of the one encoder: a relative table, log
position buckets, content→position and position→content scores."""

import dataclasses
import json

import numpy as np
import pytest
from family_checks import GOLDEN, assert_logits, assert_tokenizer_ids, assert_written_again
from safetensors.numpy import load_file

from bortsearch import load
from bortsearch.errors import UserError
from bortsearch.model.encoder import Model, relative_index
from bortsearch.model.hf import arch_from_config, load_checkpoint
from bortsearch.model.proxies import param_count


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "deberta.npz"))


@pytest.mark.parametrize("kind", ["tiny", "cls", "lm"])
def test_checkpoints_give_transformers_logits(golden, kind):
    """Masked-LM (transformers' default head, and the original checkpoints'
    lm_predictions.lm_head beside a replaced-token head) and classifier forms."""
    model = load(GOLDEN / f"deberta_{kind}")
    assert model.arch.model_type == "deberta-v2"
    assert model.num_labels == (3 if kind == "cls" else 0)
    assert_logits(model, golden, f"deberta_{kind}", "deberta_tiny" if kind == "lm" else None)


def test_relative_positions_are_read_and_change_the_logits(golden):
    model = load_checkpoint(GOLDEN / "deberta_tiny")
    arch = model.arch
    assert (arch.relative_buckets, arch.max_relative, arch.relative_span) == (8, 64, 8)
    assert (arch.has_position_table, arch.type_vocab_size) == (False, 0)
    # the log buckets: distances up to ±4 their own, beyond that shared
    assert relative_index(arch, 12)[0].tolist() == [8, 7, 6, 5, 4, 3, 3, 3, 3, 3, 3, 2]
    ids, mask = golden["deberta_tiny_ids"], golden["deberta_tiny_mask"]
    base = np.asarray(model.logits(ids, mask))
    # the log scale's top (max_relative), and no buckets (distances clipped at ±8): the
    # same 16-row table read at other rows
    for change in (dict(max_relative=16), dict(relative_buckets=0, max_relative=8)):
        other = Model(dataclasses.replace(arch, **change), model.params)
        # beyond twice the parity tolerance: buckets taken wrongly fail parity
        assert np.abs(np.asarray(other.logits(ids, mask)) - base).max() > 2e-4, change


def test_tokenizer_gives_transformers_ids(golden):
    tok = load_checkpoint(GOLDEN / "deberta_tiny").tokenizer
    assert tok.class_name == "DebertaV2TokenizerFast"
    assert_tokenizer_ids(tok, golden, "deberta")


def test_param_count_is_transformers_num_parameters():
    for row in json.loads((GOLDEN / "deberta_counts.json").read_text()):
        want = row.pop("num_parameters")
        arch = arch_from_config({**row, "model_type": "deberta-v2"}, "x")
        assert param_count(arch) == want, row


@pytest.mark.parametrize("suffix", ["", "_cls"])
def test_students_load_in_transformers_with_the_same_logits(golden, suffix, tmp_path):
    key = f"student_deberta{suffix}"
    model = load(GOLDEN / key)
    assert model.arch.model_type == "deberta-v2" and model.arch.size == (2, 2, 16, 24)
    head = "ForSequenceClassification" if suffix else "ForMaskedLM"
    assert str(golden[f"{key}_class"]) == "DebertaV2" + head
    assert_logits(model, golden, key)
    assert "deberta.encoder.rel_embeddings.weight" in assert_written_again(model, key, tmp_path)


def _config(tmp_path, **fields):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    base = json.loads((GOLDEN / "deberta_tiny" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**base, **fields}))
    return folder


@pytest.mark.parametrize("fields, message", [
    (dict(conv_kernel_size=3), "conv_kernel_size = 3 is not supported for DeBERTa-v2/v3"),
    (dict(position_biased_input=True), "position_biased_input = True"),
    (dict(share_att_key=False), "share_att_key = False"),
    (dict(pos_att_type=["c2p"]), "pos_att_type \\['c2p'\\] is not supported"),
    (dict(relative_attention=False), "relative_attention = False"),
])
def test_features_not_supported_are_refused_by_name(tmp_path, fields, message):
    with pytest.raises(UserError, match=message):
        load_checkpoint(_config(tmp_path, **fields))


@pytest.mark.slow
def test_search_pretrain_export(tmp_path):
    """A DeBERTa-v3-shaped teacher through search (inheriting its most important units)
    and pretrain: the student is a DeBERTa-v2 that transformers reads with its tokenizer."""
    from bortsearch.cli import main

    (tmp_path / "space.toml").write_text(
        'name = "d"\nlayers = [2]\nheads = [2]\nhidden = [16]\nintermediate = [24]\n')
    run = tmp_path / "run"
    assert main(["search", "--space", str(tmp_path / "space.toml"), "--run", str(run),
                 "--teacher", str(GOLDEN / "deberta_tiny"), "--epsilon", "1", "--steps", "3",
                 "--seeds", "1", "--lr", "1e-3", "--batch-size", "8", "--seq-len", "32",
                 "--inherit", "importance", "--quiet"]) == 0
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), "--steps", "4",
                 "--batch-size", "8", "--seq-len", "32", "--eval-every", "2", "--quiet"]) == 0
    student = load(tmp_path / "s")
    assert student.arch.model_type == "deberta-v2" and student.arch.size == (2, 2, 16, 24)
    assert (student.arch.relative_buckets, student.arch.max_relative) == (8, 64)
    transformers = pytest.importorskip("transformers")
    assert type(transformers.AutoConfig.from_pretrained(tmp_path / "s")).__name__ == \
        "DebertaV2Config"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    assert tok("a transformer")["input_ids"] == student.tokenizer.hf.encode("a transformer").ids
    assert main(["onnx", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--int8"]) == 0


def test_a_sentencepiece_model_alone_is_refused_with_the_fix(tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "deberta_tiny", folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).unlink()
    (folder / "spm.model").write_bytes(b"not read")
    with pytest.raises(UserError, match="spm.model .* alone is not read.*save_pretrained"):
        load_checkpoint(folder)


def test_embedding_rows_past_the_tokenizer_are_read_as_deberta_v3_ships_them(tmp_path):
    """DeBERTa-v3's embedding table has 128,100 rows for 128,001 tokens: a table longer
    than the tokenizer loads (other families refuse it: tests/test_hf.py)."""
    import shutil

    from safetensors.numpy import save_file

    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "deberta_tiny", folder)
    tensors = load_file(str(folder / "model.safetensors"))
    for name in ("deberta.embeddings.word_embeddings.weight", "cls.predictions.bias",
                 "cls.predictions.decoder.bias", "cls.predictions.decoder.weight"):
        if name in tensors:
            t = tensors[name]
            tensors[name] = np.concatenate([t, np.zeros((8, *t.shape[1:]), t.dtype)])
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 128}))
    model = load_checkpoint(folder)
    assert (model.arch.vocab_size, model.tokenizer.vocab_size) == (128, 120)


@pytest.mark.parametrize("folder, prefix, head", [
    ("deberta_tiny", "deberta.", ("cls.", "lm_predictions.")),
    ("modernbert_tiny", "model.", ("head.", "decoder.")),
])
def test_a_bare_encoder_folder_reads_as_the_encoder(tmp_path, folder, prefix, head):
    """A bare `DebertaV2Model` / `ModernBertModel` export (no prefix, no head), as
    sentence-embedding folders ship them: refused as a teacher with the fix, read as the
    encoder (`teacher --init-from`, fine-tuning) with the masked-LM model's weights."""
    import shutil

    from safetensors.numpy import save_file

    bare = tmp_path / "bare"
    shutil.copytree(GOLDEN / folder, bare)
    tensors = load_file(str(bare / "model.safetensors"))
    save_file({k.removeprefix(prefix): v for k, v in tensors.items() if not k.startswith(head)},
              str(bare / "model.safetensors"))
    with pytest.raises(UserError, match="no masked-LM head.*teacher --init-from"):
        load_checkpoint(bare)
    encoder = load_checkpoint(bare, part="encoder").params["params"]
    full = load_checkpoint(GOLDEN / folder).params["params"]
    for key in ("embeddings", "layers"):
        for a, b in zip(jax_leaves(encoder[key]), jax_leaves(full[key])):
            np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_a_left_out_setting_is_taken_at_transformers_default_and_refused_by_name(tmp_path):
    config = json.loads((GOLDEN / "deberta_tiny" / "config.json").read_text())
    del config["share_att_key"]  # transformers: unshared position keys
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="share_att_key = False \\(transformers default\\)"):
        load_checkpoint(folder)
