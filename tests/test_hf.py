"""Hugging Face checkpoints: parity with transformers (golden files made by
tests/golden/make_golden.py with torch), export round trips, and bad input."""

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bortsearch import Model, UserError, load, load_checkpoint, save_checkpoint
from bortsearch.model.hf import export_tensors

GOLDEN = Path(__file__).resolve().parent / "golden"
LOGITS = np.load(GOLDEN / "logits.npz")


@pytest.mark.parametrize("folder,key", [("bert_tiny", "bert"), ("bert_tiny_bin", "bert"),
                                        ("roberta_tiny", "roberta")])
def test_logits_match_transformers(folder, key):
    model = load(GOLDEN / folder)
    ids, mask = LOGITS[f"{key}_ids"], LOGITS[f"{key}_mask"]
    assert (mask == 0).any()  # the inputs carry padding
    np.testing.assert_allclose(model.logits(ids, mask), LOGITS[f"{key}_logits"], atol=1e-4, rtol=0)


DEFAULT_OPT = """
import sys
import numpy as np
from bortsearch import load
golden = sys.argv[1]
gold = np.load(golden + "/logits.npz")
for key in ("bert", "roberta"):
    model = load(golden + "/" + key + "_tiny")
    print(np.abs(model.logits(gold[key + "_ids"], gold[key + "_mask"])
                 - gold[key + "_logits"]).max())
"""


def test_logits_match_transformers_as_users_compile():
    """The suite compiles at XLA's optimisation level 0 (conftest.py); the product
    compiles at XLA's default, where the logits match transformers too."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", DEFAULT_OPT, str(GOLDEN)], env=env,
                         capture_output=True, text=True, check=True)
    errors = [float(x) for x in out.stdout.split()]
    assert len(errors) == 2 and max(errors) < 1e-4


def test_golden_checkpoints_cover_both_families_and_decoders():
    bert, roberta = load(GOLDEN / "bert_tiny"), load(GOLDEN / "roberta_tiny")
    assert ((bert.arch.model_type, bert.arch.tie_decoder, bert.arch.type_vocab_size)
            == ("bert", True, 2))
    assert (roberta.arch.model_type, roberta.arch.tie_decoder) == ("roberta", False)
    assert roberta.arch.pad_token_id == 1 and roberta.tokenizer.family == "roberta"


@pytest.mark.parametrize("folder", ["bert_tiny", "roberta_tiny"])
def test_export_reproduces_the_transformers_tensors(folder, tmp_path):
    original = load_file(str(GOLDEN / folder / "model.safetensors"))
    save_checkpoint(load(GOLDEN / folder), tmp_path / "out")
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(original) <= set(exported)
    # The golden RoBERTa's lm_head.bias differs on purpose from lm_head.decoder.bias,
    # the one transformers' forward adds (the logits test proves which is read);
    # the export writes the used one under both names, as released checkpoints have it.
    original.pop("lm_head.bias", None)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = load(tmp_path / "out")
    ids, mask = LOGITS["bert_ids"] % 100, LOGITS["bert_mask"]
    np.testing.assert_array_equal(again.logits(ids, mask), load(GOLDEN / folder).logits(ids, mask))


def test_transformers_reads_the_exported_config_and_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = load(GOLDEN / "roberta_tiny")
    save_checkpoint(model, tmp_path / "out")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert type(config).__name__ == "RobertaConfig"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (3, 32, 300)
    assert config.tie_word_embeddings is False
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "a transformer encoder"
    assert tok(text)["input_ids"] == model.tokenizer.hf.encode(text).ids


# ------------------------------------------------------------------ bad input


def _copy(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(GOLDEN / name, dst)
    return dst


def test_no_config(tmp_path):
    d = _copy("bert_tiny", tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json"):
        load(d)


def test_no_weights(tmp_path):
    d = _copy("bert_tiny", tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"no weights \(model.safetensors or pytorch_model.bin\)"):
        load(d)


@pytest.mark.parametrize("folder,file", [("bert_tiny", "model.safetensors"),
                                         ("bert_tiny_bin", "pytorch_model.bin")])
def test_truncated_weights(tmp_path, folder, file):
    d = _copy(folder, tmp_path)
    data = (d / file).read_bytes()
    (d / file).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt|not a PyTorch zip checkpoint"):
        load(d)


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    d = _copy("bert_tiny", tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError,
                       match="model_type 'gpt2' is not supported; supported: bert, roberta"):
        load(d)


def test_tokenizer_vocabulary_must_match(tmp_path):
    d = _copy("bert_tiny", tmp_path)
    words = (d / "vocab.txt").read_text().splitlines()
    (d / "vocab.txt").write_text("\n".join(words[:-3]) + "\n")
    with pytest.raises(UserError,
                       match="tokenizer has 117 tokens but the checkpoint's vocabulary is 120"):
        load(d)


def test_missing_and_unknown_tensors_are_named(tmp_path):
    d = _copy("bert_tiny", tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors.pop("bert.encoder.layer.1.output.dense.bias")
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(UserError, match="missing tensors: bert.encoder.layer.1.output.dense.bias"):
        load(d)
    tensors["bert.encoder.layer.1.output.dense.bias"] = np.zeros(32, np.float32)
    tensors["bert.encoder.layer.2.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(UserError, match="unknown tensors: bert.encoder.layer.2.extra.weight"):
        load(d)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    d = _copy("bert_tiny_bin", tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

    payload = pickle.dumps({"bert.embeddings.word_embeddings.weight": Exploit()}, protocol=2)
    with zipfile.ZipFile(d / "pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", payload)
    # the payload is live: plain pickle would run it
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError,
                       match="asks for __builtin__.eval, which is not tensor data.*safetensors"):
        load(d)
    assert not marker.exists()


def test_roundtrip_of_a_fresh_model(tmp_path):
    from bortsearch import Arch

    arch = Arch(2, 2, 16, 24, vocab_size=40, max_positions=20, type_vocab_size=0,
                tie_decoder=False, model_type="roberta", pad_token_id=1, layer_norm_eps=1e-5)
    model = Model.init(arch, seed=5)
    save_checkpoint(model, tmp_path / "m")
    back = load_checkpoint(tmp_path / "m", tokenizer="none")
    assert back.arch == arch
    for name, value in export_tensors(model).items():
        np.testing.assert_array_equal(export_tensors(back)[name], value)


def test_a_folder_without_tokenizer_files_loads_for_logits_but_not_to_tokenise(tmp_path):
    """What `BertForMaskedLM(config).save_pretrained(DIR)` writes: config and weights only."""
    d = _copy("bert_tiny", tmp_path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / name).unlink(missing_ok=True)
    model = load(d)
    assert model.tokenizer is None
    np.testing.assert_allclose(model.logits(LOGITS["bert_ids"], LOGITS["bert_mask"]),
                               LOGITS["bert_logits"], atol=1e-4, rtol=0)
    with pytest.raises(UserError, match="no tokenizer files.*copy the teacher's tokenizer"):
        load_checkpoint(d)  # a teacher or an encoder to fine-tune needs them


def test_albert_sentencepiece_tokenizer_from_spiece_model_alone(tmp_path):
    """An ALBERT folder whose tokenizer is only SentencePiece's spiece.model (as the
    released ALBERT checkpoints ship it) loads, and encodes every text, single and
    paired, to transformers' ids (its AlbertTokenizer converts the same file)."""
    pytest.importorskip("sentencepiece")
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from bortsearch import Arch, resolve_corpus
    from bortsearch.data.tokenizer import load_tokenizer

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(list(resolve_corpus(None).documents())[:1500]))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "spiece"), vocab_size=300,
        model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>",
        unk_piece="<unk>", bos_piece="[CLS]", eos_piece="[SEP]",
        user_defined_symbols=["[MASK]"], minloglevel=2)
    folder = tmp_path / "albert"
    save_checkpoint(Model.init(Arch(2, 2, 32, 64, vocab_size=300, embedding=16, groups=1,
                                    max_positions=64)), folder)
    shutil.copy(tmp_path / "spiece.model", folder / "spiece.model")
    assert not (folder / "tokenizer.json").exists()

    ours = load(folder).tokenizer
    assert ours is not None and ours.family == "albert" and ours.vocab_size == 300
    theirs = AutoTokenizer.from_pretrained(folder)
    texts = ["Hello world, this is ``a'' test.", "Café naïve résumé: 1,000,000 items,  spaced",
             "The [MASK] sat [SEP] on <pad> the mat.", "  leading\tand\ntrailing  ", "",
             *list(resolve_corpus(None).documents())[1500:1520]]
    for t in texts:
        assert ours.hf.encode(t).ids == theirs(t)["input_ids"], t
    pair = ours.hf.encode(texts[0], texts[1])
    assert pair.ids == theirs(texts[0], texts[1])["input_ids"]
    assert pair.type_ids[-1] == 1 and pair.type_ids[0] == 0
    # keep_accents and do_lower_case from tokenizer_config.json, as transformers reads them
    (folder / "tokenizer_config.json").write_text(json.dumps({"keep_accents": True,
                                                              "do_lower_case": False}))
    cased = load_tokenizer(folder, "albert")
    theirs = AutoTokenizer.from_pretrained(folder)
    for t in texts[:3]:
        assert cased.hf.encode(t).ids == theirs(t)["input_ids"], t
