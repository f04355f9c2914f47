"""Checks the encoder-family tests share: a model's logits against transformers' golden
ones, its tokenizer's ids, and a student written again as its committed golden folder."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from bortsearch.model.hf import write_hf_folder

GOLDEN = Path(__file__).resolve().parent / "golden"
PAIRS = [("the quick brown fox", "jumps over the lazy dog"),
         ("a small student", "a large teacher, distilled")]


def assert_logits(model, golden: dict, key: str, inputs: str | None = None) -> None:
    """`model`'s logits on golden `{inputs or key}_ids/_mask` equal `{key}_logits` within
    1e-4 (a masked-LM's padded rows left out: they have no target)."""
    ids, mask = golden[f"{inputs or key}_ids"], golden[f"{inputs or key}_mask"]
    got, want = np.asarray(model.logits(ids, mask)), golden[f"{key}_logits"]
    assert got.shape == want.shape
    keep = mask.astype(bool) if got.ndim == 3 else slice(None)
    np.testing.assert_allclose(got[keep], want[keep], atol=1e-4, rtol=0)


def assert_tokenizer_ids(tok, golden: dict, name: str) -> None:
    """Single and paired texts give the ids transformers' tokenizer gave."""
    for i, (a, b) in enumerate(PAIRS):
        assert tok.hf.encode(a).ids == golden[f"{name}_single{i}"].tolist()
        assert tok.hf.encode(a, b).ids == golden[f"{name}_pair{i}"].tolist()


def assert_written_again(model, key: str, folder: Path) -> dict:
    """Writing `model` into `folder` gives GOLDEN/key's tensors (names and values) and
    config (not the file's bytes); returns the tensors written."""
    config = json.loads((GOLDEN / key / "config.json").read_text())
    labels = (tuple(config["id2label"][str(i)] for i in range(len(config["id2label"])))
              if model.num_labels else None)
    write_hf_folder(folder, model.arch, model.tokenizer, model.params, labels=labels,
                    task=config.get("finetuning_task", ""))
    mine = load_file(str(folder / "model.safetensors"))
    theirs = load_file(str(GOLDEN / key / "model.safetensors"))
    assert mine.keys() == theirs.keys()
    for k in theirs:
        np.testing.assert_array_equal(mine[k], theirs[k])
    assert json.loads((folder / "config.json").read_text()) == config
    return mine
