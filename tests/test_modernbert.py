"""ModernBERT: read, tokenised, counted, shrunk and written as transformers has it
(goldens: tests/golden/make_golden_modernbert.py, with the students of
tests/golden/make_family_students.py modernbert). Its features are data of the one
encoder: pre-LayerNorm blocks, rotary positions, global attention every third layer and
a local window between, a gated feed-forward block, no biases but the output's."""

import json

import numpy as np
import pytest
from family_checks import GOLDEN, assert_logits, assert_tokenizer_ids, assert_written_again

from bortsearch import load
from bortsearch.errors import UserError
from bortsearch.model.hf import arch_from_config, load_checkpoint
from bortsearch.model.proxies import param_count


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "modernbert.npz"))


@pytest.mark.parametrize("kind", ["tiny", "cls"])
def test_checkpoints_give_transformers_logits(golden, kind):
    """Masked-LM and sequence-classification forms, padding included; the inputs are
    longer than the local window, so local and global layers differ. The classifier pools
    the mean of the unpadded tokens, as the released models are configured."""
    model = load(GOLDEN / f"modernbert_{kind}")
    assert model.arch.pooling == ("mean" if kind == "cls" else "cls")
    assert model.arch.model_type == "modernbert" and model.num_labels == (3 if kind == "cls"
                                                                         else 0)
    assert_logits(model, golden, f"modernbert_{kind}")


def test_the_window_and_the_rotary_bases_are_read_and_change_the_logits(golden):
    model = load_checkpoint(GOLDEN / "modernbert_tiny")
    arch = model.arch
    assert (arch.local_window, arch.global_every) == (8, 3)
    assert (arch.rope_theta, arch.local_rope_theta) == (1000.0, 10.0)
    assert [arch.is_global(i) for i in range(4)] == [True, False, False, True]
    assert (arch.type_vocab_size, arch.has_position_table) == (0, False)
    ids, mask = golden["modernbert_tiny_ids"], golden["modernbert_tiny_mask"]
    base = np.asarray(model.logits(ids, mask))
    import dataclasses

    from bortsearch.model.encoder import Model

    for change in (dict(local_window=None, global_every=1), dict(local_rope_theta=1000.0),
                   dict(rope_theta=10.0)):
        other = Model(dataclasses.replace(arch, **change), model.params)
        # beyond twice the parity tolerance: a window or base taken wrongly fails parity
        assert np.abs(np.asarray(other.logits(ids, mask)) - base).max() > 2e-4, change
    # the older config form (as on the Hub) is the same architecture
    config = json.loads((GOLDEN / "modernbert_tiny" / "config.json").read_text())
    older = {k: v for k, v in config.items() if k not in ("layer_types", "rope_parameters")}
    older.update(global_rope_theta=1000.0, local_rope_theta=10.0)
    assert arch_from_config(older, "older") == arch


def test_tokenizer_gives_transformers_ids(golden):
    assert_tokenizer_ids(load_checkpoint(GOLDEN / "modernbert_tiny").tokenizer, golden,
                         "modernbert")


def test_param_count_is_transformers_num_parameters():
    for row in json.loads((GOLDEN / "modernbert_counts.json").read_text()):
        want = row.pop("num_parameters")
        arch = arch_from_config({**row, "model_type": "modernbert", "pad_token_id": 0}, "x")
        assert param_count(arch) == want, row


@pytest.mark.parametrize("suffix", ["", "_cls"])
def test_students_load_in_transformers_with_the_same_logits(golden, suffix, tmp_path):
    """The student searched, pretrained (and fine-tuned) from the ModernBERT teacher:
    transformers reads it as ModernBERT with our logits, and writing it again gives the
    committed tensors (the fused Wqkv and Wi) and config."""
    key = f"student_modernbert{suffix}"
    model = load(GOLDEN / key)
    assert model.arch.model_type == "modernbert" and model.arch.size == (2, 2, 16, 24)
    head = "ForSequenceClassification" if suffix else "ForMaskedLM"
    assert str(golden[f"{key}_class"]) == "ModernBert" + head
    assert_logits(model, golden, key)
    mine = assert_written_again(model, key, tmp_path)
    assert "model.layers.0.attn.Wqkv.weight" in mine  # fused, as transformers names it
    assert "model.layers.0.attn_norm.weight" not in mine  # layer 0 has none


def _config(tmp_path, **fields):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    base = json.loads((GOLDEN / "modernbert_tiny" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**base, **fields}))
    return folder


@pytest.mark.parametrize("fields, message", [
    (dict(norm_bias=True), "norm_bias = True is not supported for ModernBERT"),
    (dict(classifier_pooling="max"), "pooling must be 'cls', or 'mean'"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling .* not supported"),
    (dict(hidden_activation="silu"), "hidden_activation = 'silu'"),
    (dict(layer_types=["full_attention", "full_attention", "sliding_attention",
                       "full_attention"]), "layer_types .* is not supported"),
    (dict(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                              "rope_theta": 1e4}}), "rope_type 'linear'"),
])
def test_features_not_supported_are_refused_by_name(tmp_path, fields, message):
    with pytest.raises(UserError, match=message):
        load_checkpoint(_config(tmp_path, **fields))


@pytest.mark.slow
def test_search_pretrain_export_and_finetune(tmp_path):
    """A ModernBERT teacher through search, pretrain and fine-tuning: the student is a
    ModernBERT (window and period kept) that transformers reads with its tokenizer; a
    search inheriting by importance."""
    from bortsearch.cli import main

    (tmp_path / "space.toml").write_text(
        'name = "m"\nlayers = [2]\nheads = [2]\nhidden = [16]\nintermediate = [24]\n')
    run = tmp_path / "run"
    assert main(["search", "--space", str(tmp_path / "space.toml"), "--run", str(run),
                 "--teacher", str(GOLDEN / "modernbert_tiny"), "--epsilon", "1", "--steps", "3",
                 "--seeds", "1", "--lr", "1e-3", "--batch-size", "8", "--seq-len", "32",
                 "--quiet"]) == 0
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), "--steps", "4",
                 "--batch-size", "8", "--seq-len", "32", "--eval-every", "2", "--quiet"]) == 0
    student = load(tmp_path / "s")
    assert student.arch.model_type == "modernbert" and student.arch.size == (2, 2, 16, 24)
    assert (student.arch.local_window, student.arch.global_every) == (8, 3)
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "s")
    assert type(config).__name__ == "ModernBertConfig"
    assert config.layer_types == ["full_attention", "sliding_attention"]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    assert tok("a transformer")["input_ids"] == student.tokenizer.hf.encode("a transformer").ids
    # ONNX and its int8 form (parity: tests/test_onnx.py)
    assert main(["onnx", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--int8"]) == 0
    assert (tmp_path / "o" / "model_quantized.onnx").is_file()
    # --inherit importance: the teacher's importances measured through its pre-LayerNorm
    # blocks, and the candidates inherit from it rewired (tests/test_importance.py)
    assert main(["search", "--space", str(tmp_path / "space.toml"), "--run",
                 str(tmp_path / "imp"), "--teacher", str(GOLDEN / "modernbert_tiny"),
                 "--inherit", "importance", "--epsilon", "1", "--steps", "2", "--seeds", "1",
                 "--lr", "1e-3", "--batch-size", "8", "--seq-len", "32", "--quiet"]) == 0
    imp = json.loads((tmp_path / "imp" / "importance.json").read_text())
    assert np.shape(imp["heads"]) == (4, 4) and np.shape(imp["hidden"]) == (32,)
    assert (tmp_path / "imp" / "results.csv").is_file()


def test_inherited_layers_keep_their_attention_type_and_the_rest_is_warned():
    """A fixed layer map takes, for each student layer, a teacher layer of its attention
    type (the uniform map's pick moved to the nearest such); what inheritance cannot
    carry over is warned: a measured map's types, a head size other than the teacher's."""
    from bortsearch.search.config import SearchConfig
    from bortsearch.search.run import rotary_inheritance_warnings
    from bortsearch.train.importance import inherited_layers

    teacher = load_checkpoint(GOLDEN / "modernbert_tiny").arch  # layers 0 and 3 global
    student = teacher.with_size(2, 2, 16, 24)  # layer 0 global, layer 1 local
    # uniform picks [1, 3]: 1 is local, 3 global; moved to the nearest of each type
    assert inherited_layers("uniform", student, teacher, None, None) == [0, 2]
    assert inherited_layers("first", student, teacher, None, None) == [0, 1]
    deep = teacher.with_size(4, 2, 16, 24)  # as deep: every layer its own
    assert inherited_layers("uniform", deep, teacher, None, None) == [0, 1, 2, 3]
    space = [student, teacher.with_size(2, 4, 16, 24)]
    (heads,) = rotary_inheritance_warnings(teacher, space, SearchConfig(space="s"))
    assert "1 candidate(s) have a head size" in heads
    measured = rotary_inheritance_warnings(teacher, space[:1], SearchConfig(
        space="s", inherit_layers="measured"))
    assert len(measured) == 1 and "other attention type" in measured[0]


def test_fine_tuning_starts_from_the_trained_prediction_head():
    """As transformers' ModernBertForSequenceClassification loads a masked-LM checkpoint:
    its classifier's dense and norm are the trained prediction head's; only the output
    layer is new."""
    from bortsearch.downstream.finetune import initial_params

    mlm = load_checkpoint(GOLDEN / "modernbert_tiny").params["params"]["head"]
    encoder = load_checkpoint(GOLDEN / "modernbert_tiny", part="encoder")
    head = initial_params(encoder, 3, seed=0)["params"]["classifier"]
    np.testing.assert_array_equal(head["dense"]["kernel"], mlm["transform"]["kernel"])
    np.testing.assert_array_equal(head["ln"]["scale"], mlm["ln"]["scale"])
    assert head["out_proj"]["kernel"].shape == (32, 3)
