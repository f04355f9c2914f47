"""Text corpora: plain-text files, folders, globs and `.jsonl`, streamed from disk.

A corpus is an ordered list of files. Plain text is read line by line; a blank
line ends a document. A `.jsonl` file holds one document per line, in a text
field (default "text"). Nothing is held in memory beyond one chunk of lines.

Policy for bad files: a file that is not UTF-8 (or holds NUL bytes, i.e. looks
binary) is an error naming the file and the byte offset; nothing is skipped
silently.

With no corpus given, the embedded default is used: the help topics of
`pydoc_data` and the longer docstrings of the standard library's own modules,
read from the Python installation (about 1.6 MB of English on Python 3.11).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from bortsearch.errors import UserError
from bortsearch.runio import cache_dir

TEXT_SUFFIXES = {".txt", ".text", ".raw", ".tokens", ".md", ".rst", ""}
EMBEDDED_VERSION = 1  # bump when the embedded default's recipe changes


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The files of a corpus in reading order, and the `.jsonl` text field."""

    files: tuple[Path, ...]
    text_field: str = "text"
    name: str = ""

    def documents(self) -> Iterator[str]:
        """Every document, in order. Raises `UserError` on a bad file."""
        for path in self.files:
            if path.suffix == ".jsonl":
                yield from _jsonl_documents(path, self.text_field)
            else:
                yield from _text_documents(path)

    def fingerprint(self) -> str:
        """SHA-256 over the file contents (and the text field): the cache key.

        Read once per `Corpus`: a search asks for it several times (tokenizer,
        token cache, teacher, run settings), and a large corpus is slow to read.
        """
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:
        h = hashlib.sha256(f"text_field={self.text_field}\n".encode())
        for path in self.files:
            h.update(f"{path.name}\0".encode())
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        return h.hexdigest()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def resolve_corpus(specs: list[str] | None, text_field: str = "text") -> Corpus:
    """Turn `--corpus` values (files, folders, globs; repeatable) into a Corpus.

    No specs means the embedded default.
    """
    if not specs:
        return embedded_corpus()
    files: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _is_corpus_file(f))
            if not found:
                raise UserError(f"--corpus {spec}: the folder has no .txt/.jsonl files; "
                                f"point at text files or a folder that holds them")
            files += found
        elif p.is_file():
            files.append(p)
        elif any(ch in spec for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            if not found:
                raise UserError(f"--corpus {spec}: the pattern matches no file; check the "
                                f"path, and quote the pattern so the shell leaves it alone")
            files += found
        else:
            raise UserError(f"--corpus {spec}: no such file or folder")
    files = list(dict.fromkeys(f.resolve() for f in files))  # keep order, drop repeats
    return Corpus(tuple(files), text_field, name=", ".join(specs))


def _is_corpus_file(path: Path) -> bool:
    return path.suffix in TEXT_SUFFIXES or path.suffix == ".jsonl"


def _lines(path: Path) -> Iterator[str]:
    """Decoded lines; a NUL byte or invalid UTF-8 is an error with its byte offset."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            nul = raw.find(b"\0")
            if nul >= 0:
                raise UserError(f"{path}: looks binary (NUL byte at byte offset "
                                f"{offset + nul}); pass text files only")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: not UTF-8 text (invalid byte at byte offset "
                                f"{offset + e.start}); convert it, e.g. with "
                                f"`iconv -t utf-8`") from None
            offset += len(raw)
            yield line


def _text_documents(path: Path) -> Iterator[str]:
    doc: list[str] = []
    for line in _lines(path):
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield " ".join(doc)
            doc = []
    if doc:
        yield " ".join(doc)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not valid JSON ({e.msg}); each line of a "
                            f".jsonl corpus must be one JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise UserError(f"{path}:{number}: no string field {field!r}; set the field "
                            f"with --text-field")
        if record[field].strip():
            yield record[field].strip()


def embedded_corpus() -> Corpus:
    """The default corpus, written once to the cache from this Python installation."""
    version = ".".join(map(str, sys.version_info[:3]))
    path = cache_dir() / "corpora" / f"embedded-v{EMBEDDED_VERSION}-py{version}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in _embedded_documents():
                f.write(re.sub(r"\n\s*\n", "\n", doc) + "\n\n")  # one blank line ends a document
        os.replace(tmp, path)
    return Corpus((path,), name="embedded default (Python documentation text)")


def _embedded_documents() -> Iterator[str]:
    """pydoc help topics, then module/class/function docstrings of 200+ characters."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key].strip()
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "tkinter", "turtledemo",
            "ensurepip", "__pycache__", "pydoc_data"}
    for f in sorted(root.rglob("*.py")):
        if skip & set(f.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    yield doc.strip()
