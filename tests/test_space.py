from pathlib import Path

import pytest

from bortsearch import UserError, load_space, param_count
from bortsearch.search.space import size_order

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def test_bort_space_has_300_architectures():
    space = load_space(SPACES / "bort.toml")
    archs = space.architectures()
    assert len(archs) == 300 and len(set(archs)) == 300
    assert all(a.hidden % a.heads == 0 for a in archs)
    assert archs[0].model_type == "roberta" and archs[0].vocab_size == 50265


@pytest.mark.parametrize("name,count", [("demo", 36), ("narrow", 36)])
def test_shipped_small_spaces(name, count):
    archs = load_space(SPACES / f"{name}.toml").architectures()
    assert len(set(archs)) == count and all(a.hidden % a.heads == 0 for a in archs)


def test_enumeration_is_deterministic_and_sorted_by_size():
    a = load_space(SPACES / "demo.toml").architectures()
    b = load_space(SPACES / "demo.toml").architectures()
    assert a == b
    ordered = sorted(a, key=size_order)
    assert [param_count(x) for x in ordered] == sorted(param_count(x) for x in a)


def test_overrides_win_over_file_and_family(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("layers=[1]\nheads=[2]\nhidden=[8]\nintermediate=[8]\nvocab_size=77\n")
    space = load_space(f)
    assert space.base_arch().vocab_size == 77
    assert space.base_arch(vocab_size=99).vocab_size == 99
    assert space.base_arch().max_positions == 512  # the bert family default


BAD = {
    "unknown key": ("layrs = [1]\n", "unknown key 'layrs'"),
    "missing axis": ("heads=[2]\nhidden=[8]\nintermediate=[8]\n", "missing axis 'layers'"),
    "empty axis": ("layers=[]\n", "layers must be a non-empty list"),
    "not a list": ("layers=3\n", "layers must be a non-empty list"),
    "non-integer": ("layers=[1, 2.5]\n", "layers must hold integers only"),
    "string value": ('layers=["2"]\n', "layers must hold integers only"),
    "below one": ("layers=[0, 2]\n", "layers values must be >= 1"),
    "duplicate": ("layers=[2, 2]\n", "layers lists 2 more than once"),
    "no valid arch": ("layers=[1]\nheads=[3]\nhidden=[8]\nintermediate=[8]\n",
                      "no valid architecture"),
    "bad model type": ('model_type="gpt2"\n', "model_type = 'gpt2' is not supported"),
    "bad vocab": ("vocab_size=0\n", "vocab_size must be an integer >= 1"),
    "syntax": ("layers = [1,\n", "not a valid TOML file"),
}
DEFAULTS = {"layers": "[1]", "heads": "[2]", "hidden": "[8]", "intermediate": "[8]"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_files_name_file_key_and_fix(tmp_path, case):
    text, message = BAD[case]
    keys = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line}
    body = text + "".join(f"{k} = {v}\n" for k, v in DEFAULTS.items()
                          if k not in keys and case not in ("missing axis", "syntax"))
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(UserError) as err:
        load_space(f)
    assert message in str(err.value) and str(f) in str(err.value)


def test_missing_file():
    with pytest.raises(UserError, match="no such space file"):
        load_space("does/not/exist.toml")
