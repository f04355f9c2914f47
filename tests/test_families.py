"""DistilBERT, XLM-RoBERTa and ELECTRA: read, tokenised, counted, shrunk and written as
transformers has them (goldens: tests/golden/make_golden_families.py, with the
students of tests/golden/make_family_students.py)."""

import json

import numpy as np
import pytest
from family_checks import GOLDEN, assert_logits, assert_tokenizer_ids, assert_written_again
from safetensors.numpy import load_file

from bortsearch import load
from bortsearch.errors import UserError
from bortsearch.model.arch import FAMILIES, Arch
from bortsearch.model.encoder import forward_hidden
from bortsearch.model.hf import (
    arch_from_config,
    load_checkpoint,
    load_encoder_with_new_head,
    write_hf_folder,
)
from bortsearch.model.proxies import param_count

FAMILY = {"distilbert": "distilbert", "xlmr": "xlm-roberta", "electra": "electra"}


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "families.npz"))


@pytest.mark.parametrize("name", ["distilbert", "xlmr", "electra"])
@pytest.mark.parametrize("kind", ["tiny", "cls"])
def test_checkpoints_give_transformers_logits(golden, name, kind):
    """Masked-LM and sequence-classification forms, padding included."""
    model = load(GOLDEN / f"{name}_{kind}")
    assert model.arch.model_type == FAMILY[name]
    assert model.num_labels == (3 if kind == "cls" else 0)
    assert_logits(model, golden, f"{name}_{kind}")


def test_family_features_are_read_from_the_config():
    distil = load_checkpoint(GOLDEN / "distilbert_tiny").arch
    assert (distil.type_vocab_size, distil.layers, distil.hidden) == (0, 3, 32)
    electra = load_checkpoint(GOLDEN / "electra_tiny").arch
    assert (electra.embedding_size, electra.hidden, electra.albert) == (16, 32, False)
    assert electra.size == (3, 4, 32, 48)  # E is a family setting, not an axis
    xlmr = load_checkpoint(GOLDEN / "xlmr_tiny").arch
    assert (xlmr.pad_token_id, xlmr.max_seq_len) == (1, 40)  # positions after the pad


@pytest.mark.parametrize("name", ["distilbert", "xlmr", "electra"])
def test_tokenizers_give_transformers_ids(golden, name):
    assert_tokenizer_ids(load_checkpoint(GOLDEN / f"{name}_tiny").tokenizer, golden, name)


def test_electra_discriminator_is_an_encoder(golden, tmp_path):
    """A discriminator (ElectraForPreTraining) has no masked-LM head: refused as a
    teacher with the fix, read as an encoder with ElectraModel's hidden states."""
    with pytest.raises(UserError, match="no masked-LM head.*teacher --init-from"):
        load_checkpoint(GOLDEN / "electra_disc")
    model = load_checkpoint(GOLDEN / "electra_disc", part="encoder")
    ids, mask = golden["electra_disc_ids"], golden["electra_disc_mask"]
    got = np.asarray(forward_hidden(model.arch, model.params, ids, mask, np.zeros_like(ids)))
    keep = mask.astype(bool)
    np.testing.assert_allclose(got[keep], golden["electra_disc_hidden"][keep], atol=1e-4, rtol=0)
    # `teacher --init-from`'s start: the encoder with a new generator-style head
    fresh = load_encoder_with_new_head(GOLDEN / "electra_disc")
    write_hf_folder(tmp_path, fresh.arch, fresh.tokenizer, fresh.params)
    again = load_checkpoint(tmp_path)
    assert again.arch == model.arch and "ElectraForMaskedLM" in \
        json.loads((tmp_path / "config.json").read_text())["architectures"]


def test_param_count_is_transformers_num_parameters():
    for row in json.loads((GOLDEN / "families_counts.json").read_text()):
        family = row.pop("family")
        want = row.pop("num_parameters")
        arch = arch_from_config({**row, "model_type": FAMILY[family]}, family)
        assert param_count(arch) == want, (family, row)


@pytest.mark.parametrize("name", ["distilbert", "xlmr", "electra"])
@pytest.mark.parametrize("suffix", ["", "_cls"])
def test_students_load_in_transformers_with_the_same_logits(golden, name, suffix, tmp_path):
    """The students bortsearch searched, pretrained (and fine-tuned) from each family's
    teacher: transformers' class for them is the family's own, its logits equal ours,
    and writing the student again gives the committed tensors and config (values and
    names; not the file's bytes)."""
    key = f"student_{name}{suffix}"
    model = load(GOLDEN / key)
    hidden = 32 if name == "electra" else 16
    assert model.arch.model_type == FAMILY[name] and model.arch.size == (2, 2, hidden, 24)
    if name == "electra":  # the teacher's E = 16 kept, with the projection to H = 32
        assert model.arch.embedding == 16
    head = "ForSequenceClassification" if suffix else "ForMaskedLM"
    assert str(golden[f"{key}_class"]) == FAMILY_CLASSES[name] + head
    assert_logits(model, golden, key)
    assert_written_again(model, key, tmp_path)


FAMILY_CLASSES = {name: FAMILIES[t].classes for name, t in FAMILY.items()}


def _config(tmp_path, **fields):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


@pytest.mark.parametrize("fields, message", [
    (dict(model_type="deberta"), "DeBERTa \\(v1\\) .*not supported yet"),
    (dict(model_type="distilbert", sinusoidal_pos_embds=True), "sinusoidal_pos_embds"),
    (dict(model_type="electra", hidden_act="gelu_new"), "ELECTRA, whose heads use exact GELU"),
    (dict(model_type="distilbert", activation="relu"), "hidden_act 'relu' is not supported"),
])
def test_family_features_not_supported_are_refused_by_name(tmp_path, fields, message):
    with pytest.raises(UserError, match=message):
        load_checkpoint(_config(tmp_path, **fields))


def test_albert_axes_are_refused_for_families_without_them():
    with pytest.raises(ValueError, match="not available for the distilbert family"):
        Arch(2, 2, 16, 24, model_type="distilbert", type_vocab_size=0, embedding=8)
    with pytest.raises(ValueError, match="not available for the electra family"):
        Arch(2, 2, 16, 24, model_type="electra", groups=1)
    electra = Arch(4, 4, 32, 48, model_type="electra", embedding=16)
    assert electra.with_size(2, 2, 24, 24).embedding == 16  # the family's E is kept
    assert electra.with_size(2, 2, 64, 96).embedding == 16
    assert electra.with_size(2, 2, 16, 24).embedding is None  # E = H: no projection
    assert electra.with_size(2, 2, 24, 24).size == (2, 2, 24, 24)


@pytest.mark.parametrize("name, hidden", [("electra", 32), ("distilbert", 16)])
def test_family_search_pretrain_and_export(tmp_path, name, hidden):
    """A family's teacher through search and pretrain: the student is written in the
    family (ELECTRA keeps its E = 16 under a wider H, with the projection); transformers
    reads its config and tokenizer as the family's."""
    from bortsearch.cli import main

    (tmp_path / "space.toml").write_text(
        f'name = "f"\nlayers = [2]\nheads = [2]\nhidden = [{hidden}]\nintermediate = [24]\n')
    run = tmp_path / "run"
    assert main(["search", "--space", str(tmp_path / "space.toml"), "--run", str(run),
                 "--teacher", str(GOLDEN / f"{name}_tiny"), "--epsilon", "1", "--steps", "3",
                 "--seeds", "1", "--lr", "1e-3", "--batch-size", "8", "--seq-len", "32",
                 "--quiet"]) == 0
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), "--steps", "4",
                 "--batch-size", "8", "--seq-len", "32", "--eval-every", "2", "--quiet"]) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["model_type"] == name
    student = load(tmp_path / "s")
    assert student.arch.model_type == name and student.arch.hidden == hidden
    tensors = load_file(str(tmp_path / "s" / "model.safetensors"))
    if name == "electra":
        assert config["embedding_size"] == 16 and student.arch.embedding == 16
        assert tensors["electra.embeddings_project.weight"].shape == (32, 16)
    else:
        assert "n_layers" in config and not any("token_type" in k for k in tensors)
    transformers = pytest.importorskip("transformers")
    assert type(transformers.AutoConfig.from_pretrained(tmp_path / "s")).__name__ == \
        f"{FAMILIES[name].classes}Config"
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "s")
    assert student.tokenizer.class_name == f"{FAMILIES[name].classes}TokenizerFast"
    assert type(tok) is getattr(transformers, student.tokenizer.class_name)  # v5: an alias
    assert tok("a transformer")["input_ids"] == student.tokenizer.hf.encode("a transformer").ids


def test_a_family_classifier_teacher_searches_and_distils_its_task(tmp_path):
    """An XLM-RoBERTa sequence classifier (the golden student fine-tuned on a
    sentence-pair task) as a task search's teacher: the search trains on the task,
    pretrain distils the pick into an XLMRobertaForSequenceClassification."""
    import sys

    from bortsearch.cli import main

    sys.path.insert(0, str(GOLDEN))
    from make_family_students import pairs_task

    (tmp_path / "space.toml").write_text(
        'name = "f"\nlayers = [1]\nheads = [2]\nhidden = [16]\nintermediate = [24]\n')
    run, data = tmp_path / "run", pairs_task(400)
    assert main(["search", "--space", str(tmp_path / "space.toml"), "--run", str(run),
                 "--teacher", str(GOLDEN / "student_xlmr_cls"), "--task", "pairs", "--data",
                 str(data), "--text-fields", "a,b", "--label-field", "label", "--epsilon", "1",
                 "--steps", "3", "--seeds", "1", "--lr", "1e-3", "--batch-size", "4",
                 "--seq-len", "32", "--quiet"]) == 0
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), "--steps", "3",
                 "--batch-size", "4", "--seq-len", "32", "--eval-every", "3", "--quiet"]) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert config["id2label"] == {"0": "maybe", "1": "no", "2": "yes"}
    student = load(tmp_path / "s")
    assert student.arch.model_type == "xlm-roberta" and student.num_labels == 3


def test_a_space_with_albert_axes_is_refused_for_other_families(tmp_path, capsys):
    from bortsearch.cli import main

    (tmp_path / "space.toml").write_text(
        'name = "f"\nlayers = [2]\nheads = [2]\nhidden = [16]\nintermediate = [24]\n'
        'embedding = [8, "H"]\n')
    assert main(["search", "--space", str(tmp_path / "space.toml"), "--run",
                 str(tmp_path / "run"), "--teacher", str(GOLDEN / "electra_tiny"), "--quiet",
                 "--steps", "2", "--batch-size", "4", "--seq-len", "16"]) == 2
    err = capsys.readouterr().err
    assert "ALBERT's axes" in err and "ELECTRA" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_distilbert_layer_norm_epsilon_is_transformers_fixed_one():
    config = json.loads((GOLDEN / "distilbert_tiny" / "config.json").read_text())
    assert arch_from_config({**config, "layer_norm_eps": 1e-5}, "x").layer_norm_eps == 1e-12


def test_a_family_without_token_types_refuses_a_token_type_table():
    with pytest.raises(ValueError, match="distilbert family has no token types"):
        Arch(2, 2, 16, 24, model_type="distilbert")  # the default type_vocab_size is 2
    assert Arch(2, 2, 16, 24, model_type="distilbert", type_vocab_size=0).type_vocab_size == 0
