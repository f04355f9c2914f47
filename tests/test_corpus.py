import json

import pytest

from bortsearch import UserError, resolve_corpus
from bortsearch.data.corpus import embedded_corpus


def test_embedded_default_is_english_text_from_the_python_installation():
    corpus = resolve_corpus(None)
    assert corpus == embedded_corpus()
    assert corpus.size_bytes() > 500_000
    docs = list(corpus.documents())
    assert len(docs) > 1000
    assert any("the" in d.split() for d in docs[:10])


def test_files_folders_globs_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first doc line one\nline two\n\nsecond doc\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.txt").write_text("third doc\n")
    (sub / "skip.bin").write_bytes(b"\0\1")  # not a corpus suffix: folders ignore it
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "fourth doc"}) + "\n\n"
                                      + json.dumps({"body": "x", "text": "fifth"}) + "\n")
    corpus = resolve_corpus([str(tmp_path / "a.txt"), str(sub), str(tmp_path / "*.jsonl")])
    assert list(corpus.documents()) == ["first doc line one line two", "second doc",
                                        "third doc", "fourth doc", "fifth"]
    # the same file named twice is read once
    assert len(resolve_corpus([str(tmp_path / "a.txt"), str(tmp_path / "a.txt")]).files) == 1


def test_fingerprint_follows_content(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    before = resolve_corpus([str(f)]).fingerprint()
    assert resolve_corpus([str(f)]).fingerprint() == before
    f.write_text("two")
    assert resolve_corpus([str(f)]).fingerprint() != before


@pytest.mark.parametrize("content,message", [
    (b"good line\nbad \xff byte\n", "not UTF-8 text (invalid byte at byte offset 14)"),
    (b"text\nthen\0binary", "looks binary (NUL byte at byte offset 9)"),
])
def test_bad_bytes_name_file_and_offset(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(UserError) as err:
        list(resolve_corpus([str(f)]).documents())
    assert message in str(err.value) and str(f) in str(err.value)


@pytest.mark.parametrize("setup,spec,message", [
    (None, "missing.txt", "no such file or folder"),
    ("empty_dir", "empty_dir", "the folder has no .txt/.jsonl files"),
    (None, "nothing*.txt", "the pattern matches no file"),
])
def test_bad_corpus_paths(tmp_path, setup, spec, message):
    if setup:
        (tmp_path / setup).mkdir()
    with pytest.raises(UserError, match=message):
        resolve_corpus([str(tmp_path / spec)])


@pytest.mark.parametrize("line,message", [
    ("{not json", "bad.jsonl:1: not valid JSON"),
    ('{"body": "no text field"}', "bad.jsonl:1: no string field 'text'; set the field"),
])
def test_bad_jsonl(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        list(resolve_corpus([str(f)]).documents())
