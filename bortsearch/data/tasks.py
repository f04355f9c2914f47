"""Downstream tasks: the GLUE tasks in the GLUE distribution's layout, and custom
tasks from CSV, TSV or JSON-lines files.

A GLUE task folder holds `train.tsv` and `dev.tsv` (MNLI: `dev_matched.tsv` and
`dev_mismatched.tsv`), tab-separated with no quoting; CoLA has no header row and is
read by column position, every other task by its header's column names. Labels
keep Hugging Face's `datasets` order (so `id2label` matches `glue` checkpoints).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from bortsearch.data.batches import HELDOUT_EVERY, BatchSpec
from bortsearch.errors import UserError


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Where a task's columns are and how it is scored.

    Attributes:
      folder: the task's folder name in the GLUE distribution.
      text: the text column(s), one or a pair (names; positions when no header).
      label: the label column.
      values: the label values as the files write them, in label-id order;
        None for regression.
      names: the label names for `id2label` (default: the values).
      metrics: GLUE's metrics for the task; its score is their mean.
      devs: the evaluation split file stems; the first decides.
      header: whether the files start with a header row.
    """

    folder: str
    text: tuple
    label: str | int
    values: tuple[str, ...] | None
    names: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    devs: tuple[str, ...] = ("dev",)
    header: bool = True

    @property
    def regression(self) -> bool:
        return self.values is None

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self.names or self.values


_NLI2 = ("entailment", "not_entailment")
GLUE: dict[str, TaskSpec] = {
    "cola": TaskSpec("CoLA", (3,), 1, ("0", "1"), ("unacceptable", "acceptable"),
                     ("matthews",), header=False),
    "sst2": TaskSpec("SST-2", ("sentence",), "label", ("0", "1"), ("negative", "positive")),
    "mrpc": TaskSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"),
                     ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "stsb": TaskSpec("STS-B", ("sentence1", "sentence2"), "score", None,
                     metrics=("pearson", "spearman")),
    "qqp": TaskSpec("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"),
                    ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "mnli": TaskSpec("MNLI", ("sentence1", "sentence2"), "gold_label",
                     ("entailment", "neutral", "contradiction"),
                     devs=("dev_matched", "dev_mismatched")),
    "qnli": TaskSpec("QNLI", ("question", "sentence"), "label", _NLI2),
    "rte": TaskSpec("RTE", ("sentence1", "sentence2"), "label", _NLI2),
    "wnli": TaskSpec("WNLI", ("sentence1", "sentence2"), "label", ("0", "1"),
                     ("not_entailment", "entailment")),
}
FORMATS = (".tsv", ".csv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Split:
    """Texts (one or two per example) and labels (int ids, or floats for regression)."""

    a: list[str]
    b: list[str] | None
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def head(self, n: int | None) -> Split:
        if n is None:
            return self
        return Split(self.a[:n], None if self.b is None else self.b[:n], self.y[:n])


@dataclasses.dataclass(frozen=True)
class Task:
    """A loaded task: its name, scoring and splits."""

    name: str
    spec: TaskSpec
    train: Split
    devs: dict[str, Split]  # the first decides
    files: tuple[str, ...]  # what was read, for the run's fingerprint
    fingerprint: str

    @property
    def num_labels(self) -> int:
        return 1 if self.spec.regression else len(self.spec.values)

    @property
    def dev(self) -> Split:
        return next(iter(self.devs.values()))


def task_folder(data: Path, spec: TaskSpec, stem: str = "train") -> Path:
    """DIR itself when it holds the task's files, else DIR/<GLUE folder>."""
    if any((data / f"{stem}{ext}").is_file() for ext in FORMATS):
        return data
    return data / spec.folder


def _find(folder: Path, stem: str, what: str) -> Path:
    alternatives = (stem, "validation") if stem == "dev" else (stem,)
    for s in alternatives:
        for ext in FORMATS:
            if (folder / f"{s}{ext}").is_file():
                return folder / f"{s}{ext}"
    raise UserError(f"{folder}: no {stem}.tsv, {stem}.csv or {stem}.jsonl ({what}); point "
                    f"--data at the task's folder (or the GLUE folder that holds it)")


def _rows(path: Path, header: bool) -> tuple[list[str] | None, list[list[str] | dict]]:
    """Header (None for JSON lines and headerless files) and rows of one file."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # MRPC's header starts with a BOM
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e}); convert it to UTF-8") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{n}: not a JSON object ({e}); each line must be "
                                f"one JSON object") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: not a JSON object; each line must be one")
            rows.append(row)
        return None, rows
    if path.suffix == ".csv":
        table = list(csv.reader(lines))
    else:  # GLUE's TSVs are unquoted: a quote character is text
        table = [line.split("\t") for line in lines]
    if not header:
        return None, table
    if not table:
        return [], []
    return [c.strip() for c in table[0]], table[1:]


def _column(path: Path, header, key, n_row: int, row) -> str:
    """One cell, by name or position, with an error that names file, line and column."""
    if isinstance(row, dict):
        if key not in row:
            raise UserError(f"{path}:{n_row}: no field {key!r} (fields: "
                            f"{', '.join(map(str, row))}); name the right one with "
                            f"--text-fields / --label-field")
        value = row[key]
        return value if isinstance(value, str) else json.dumps(value)
    index = key if isinstance(key, int) else header.index(key)
    if index >= len(row):
        raise UserError(f"{path}:{n_row}: {len(row)} columns, but column "
                        f"{key!r} is number {index + 1}; the row is truncated or not "
                        f"{'tab' if path.suffix == '.tsv' else 'comma'}-separated")
    return row[index]


def read_split(path: Path, spec: TaskSpec, label_ids: dict[str, int] | None) -> Split:
    """One split file as texts and label ids (floats for regression)."""
    header, rows = _rows(path, spec.header and path.suffix != ".jsonl")
    if header is not None:
        for key in (*spec.text, spec.label):
            if isinstance(key, str) and key not in header:
                fix = ("name the right one with --text-fields / --label-field"
                       if spec.folder == "" else "is this the right task folder?")
                raise UserError(f"{path}: no column {key!r} in the header "
                                f"({', '.join(header)}); {fix}")
    if not rows:
        raise UserError(f"{path}: no examples; the split must hold at least one row")
    first = 2 if header is not None else 1
    a, b, y = [], [] if len(spec.text) > 1 else None, []
    for n, row in enumerate(rows, first):
        a.append(_column(path, header, spec.text[0], n, row))
        if b is not None:
            b.append(_column(path, header, spec.text[1], n, row))
        raw = _column(path, header, spec.label, n, row).strip()
        if spec.regression:
            try:
                y.append(float(raw))
            except ValueError:
                raise UserError(f"{path}:{n}: label {raw!r} is not a number, and this "
                                f"task is a regression") from None
        elif raw not in label_ids:
            raise UserError(f"{path}:{n}: unknown label {raw!r}; the labels are "
                            f"{', '.join(label_ids)}")
        else:
            y.append(label_ids[raw])
    return Split(a, b, np.asarray(y, np.float32 if spec.regression else np.int32))


def custom_spec(text_fields: str, label_field: str, regression: bool, train: Path) -> TaskSpec:
    """A task from `--text-fields A[,B]` and `--label-field`; class labels are the
    training file's distinct values, sorted."""
    fields = tuple(f.strip() for f in text_fields.split(",") if f.strip())
    if not 1 <= len(fields) <= 2:
        raise UserError(f"--text-fields {text_fields!r}: give one field or two, comma "
                        f"separated, e.g. --text-fields premise,hypothesis")
    spec = TaskSpec("", fields, label_field, None, metrics=("pearson", "spearman"))
    if regression:
        return spec
    header, rows = _rows(train, train.suffix != ".jsonl")
    if header is not None and label_field not in header:
        raise UserError(f"{train}: no column {label_field!r} in the header "
                        f"({', '.join(header)}); name the right one with --label-field")
    first = 2 if header is not None else 1
    values = sorted({_column(train, header, label_field, n, r).strip()
                     for n, r in enumerate(rows, first)})
    if len(values) < 2:
        raise UserError(f"{train}: the label field {label_field!r} has "
                        f"{len(values)} distinct value(s); classification needs two or "
                        f"more (use --regression for a numeric target)")
    metrics = ("f1", "accuracy") if len(values) == 2 else ("accuracy",)
    return dataclasses.replace(spec, values=tuple(values), metrics=metrics)


def load_task(task: str, data: str | Path, text_fields: str | None = None,
              label_field: str | None = None, regression: bool = False,
              max_train: int | None = None, max_eval: int | None = None) -> Task:
    """A GLUE task by name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), or,
    with `text_fields` and `label_field`, a custom task named `task`.

    Args:
      data: the task's folder (train.* and dev.*), or a GLUE folder holding it.
      max_train, max_eval: keep the first N rows of each split.
    """
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"--data {data}: {'not a folder' if data.exists() else 'no such folder'}"
                        f"; point it at the task's folder (train.tsv, dev.tsv) or the GLUE "
                        f"folder that holds it")
    name = task.lower().replace("-", "")
    if text_fields or label_field:
        if not (text_fields and label_field):
            raise UserError("a custom task needs both --text-fields and --label-field")
        train_path = _find(data, "train", "the training split")
        spec = custom_spec(text_fields, label_field, regression, train_path)
        folder = data
    elif name in GLUE:
        spec = GLUE[name]
        folder = task_folder(data, spec)
        train_path = _find(folder, "train", "the training split")
    else:
        raise UserError(f"--task {task}: not a GLUE task ({', '.join(GLUE)}); for your own "
                        f"data give --text-fields A[,B] and --label-field")
    label_ids = None if spec.regression else {v: i for i, v in enumerate(spec.values)}
    train = read_split(train_path, spec, label_ids).head(max_train)
    devs, files = {}, [train_path]
    for stem in spec.devs:
        path = _find(folder, stem, "the evaluation split")
        devs[stem] = read_split(path, spec, label_ids).head(max_eval)
        files.append(path)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    digest.update(json.dumps([max_train, max_eval, dataclasses.asdict(spec)]).encode())
    return Task(name if spec.folder else task, spec, train, devs,
                tuple(str(f) for f in files), digest.hexdigest())


BUCKET = 32  # batches are padded to a multiple of this many tokens, not to --max-length


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A split tokenised to at most `max_length` tokens, right-padded to it."""

    ids: np.ndarray  # N x max_length
    types: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def batch(self, rows: np.ndarray, size: int, max_length: int) -> dict:
        """Rows `rows` padded to `size` rows (weight 0) and to a multiple of
        BUCKET tokens, so few shapes compile whatever the batch's longest text."""
        n = len(rows)
        rows = np.concatenate([rows, np.full(size - n, rows[0])]) if n < size else rows
        width = min(max_length, -(-int(self.lengths[rows].max()) // BUCKET) * BUCKET)
        positions = np.arange(width)[None, :]
        return {"input_ids": self.ids[rows, :width],
                "token_type_ids": self.types[rows, :width],
                "attention_mask": (positions < self.lengths[rows, None]).astype(np.int32),
                "labels": self.labels[rows],
                "weights": (np.arange(size) < n).astype(np.float32)}


def encode(tokenizer, split: Split, max_length: int, type_vocab_size: int) -> Encoded:
    """Tokenise with the model's tokenizer as Hugging Face does (special tokens of
    its family, pairs truncated longest-first to `max_length`); token types only
    where the model has more than one (`type_vocab_size`)."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_str(tokenizer.hf.to_str())
    tok.enable_truncation(max_length, strategy="longest_first")
    tok.no_padding()
    inputs = list(zip(split.a, split.b)) if split.b is not None else list(split.a)
    encodings = tok.encode_batch(inputs, add_special_tokens=True)
    ids = np.full((len(encodings), max_length), tokenizer.pad_id, np.int32)
    types = np.zeros((len(encodings), max_length), np.int32)
    lengths = np.zeros(len(encodings), np.int32)
    for i, e in enumerate(encodings):
        ids[i, :len(e.ids)] = e.ids
        if type_vocab_size > 1:
            types[i, :len(e.ids)] = e.type_ids
        lengths[i] = len(e.ids)
    return Encoded(ids, types, lengths, split.y)


def teacher_label_order(task: Task, id2label: dict | None) -> tuple[list[int] | None, str]:
    """Which output of a classifier teacher each of the task's labels is: matched by name
    (case aside) to the teacher's `id2label`, by the task's names or its files' values;
    None (index order) when the teacher's names say nothing (LABEL_0, …). A teacher whose
    names are other classes is refused (`UserError`)."""
    names = [str(v).lower() for _, v in sorted((id2label or {}).items(), key=lambda kv: int(kv[0]))]
    for ours in (task.spec.label_names, task.spec.values):
        ours = [str(v).lower() for v in ours or ()]
        if sorted(ours) == sorted(names) and len(set(names)) == len(names):
            order = [names.index(v) for v in ours]
            return (None if order == list(range(len(order))) else order), ""
    if names == [f"label_{i}" for i in range(len(names))]:
        return None, ""
    raise UserError(f"--task {task.name}: the teacher's labels ({', '.join(names)}) are not "
                    f"the task's ({', '.join(map(str, task.spec.label_names or ()))}); give "
                    f"the task it was fine-tuned on, or name its classes in its config.json's "
                    f"id2label as the task does")


HELDOUT_SEED = 20  # the draw of a task's held-out rows, whatever the training seed


class TaskData:
    """Training and held-out batches of a labelled task, for distilling a sequence
    classifier: the interface of `MLMData` (`train_batch`, `heldout_batches`,
    `with_seed`, `spec`), so that a search trains its candidates on either.

    One training row in `HELDOUT_EVERY` is held out, drawn by a fixed seed (not the
    training seed, and not by position, since task files are often ordered); the first
    `spec.heldout_batches` batches of them are the held-out set B, which candidates
    never train on. Dev is not touched. A batch is a dict of NumPy arrays:
    `input_ids`, `token_type_ids`, `attention_mask` (B x L, int32, L = `spec.seq_len`),
    `labels` (B x 1, int32: the class, one "prediction" a row) and `weights`
    (B x 1, float32, all 1).
    """

    def __init__(self, task: Task, tokenizer, spec: BatchSpec, type_vocab_size: int,
                 label_order: list[int] | None = None):
        if task.spec.regression:
            raise UserError(f"--task {task.name}: a regression task (one output) has no class "
                            f"distribution to distil; choose a classification task")
        self.task, self.tokenizer, self.spec = task, tokenizer, spec
        self.type_vocab_size = type_vocab_size
        self.encoded = encode(tokenizer, task.train, spec.seq_len, type_vocab_size)
        if label_order is not None:  # the task's label i is the teacher's output order[i]
            self.encoded = dataclasses.replace(
                self.encoded, labels=np.asarray(label_order)[self.encoded.labels])
        self.label_order = label_order
        n = len(task.train)
        drawn = np.random.default_rng(HELDOUT_SEED).permutation(n)
        held = drawn[:n // HELDOUT_EVERY]
        self.train_idx = np.sort(drawn[n // HELDOUT_EVERY:])
        need = spec.heldout_batches * spec.batch_size
        if len(held) < need or len(self.train_idx) < spec.batch_size:
            raise UserError(
                f"--task {task.name}: {len(task.train):,} training rows hold out {len(held)} "
                f"(one in {HELDOUT_EVERY}), but {spec.heldout_batches} held-out batches of "
                f"{spec.batch_size} need {need} (about {need * HELDOUT_EVERY:,} rows); give "
                f"more rows, or lower --batch-size")
        self.heldout_idx = held[:need]
        # the share of rows cut at seq_len (pairs lose the longer text's end)
        self.truncated = float(np.mean(self.encoded.lengths >= spec.seq_len))
        self._orders: dict[int, np.ndarray] = {}
        self.name = f"{task.name} ({task.files[0]})"

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    def fingerprint(self) -> str:
        """What the batches depend on besides `spec`: the task's files and the tokenizer."""
        h = hashlib.sha256(self.task.fingerprint.encode())
        h.update(self.tokenizer.hf.to_str().encode())
        h.update(str(self.type_vocab_size).encode())
        h.update(str(self.label_order).encode())
        return h.hexdigest()

    def with_seed(self, seed: int) -> TaskData:
        """The same rows and held-out set B, another training order."""
        other = object.__new__(TaskData)
        other.__dict__.update(self.__dict__)
        other.spec, other._orders = dataclasses.replace(self.spec, seed=seed), {}
        return other

    def unigram_log_probs(self, vocab_size: int) -> np.ndarray:
        """log q(c) over the `vocab_size` classes: the training rows' label frequencies,
        add-one smoothed (the context-free predictor of ê's baseline)."""
        y = np.asarray(self.encoded.labels)[self.train_idx].astype(np.int64)
        counts = np.bincount(y, minlength=vocab_size)[:vocab_size].astype(np.float64) + 1.0
        return np.log(counts / counts.sum()).astype(np.float32)

    def tokens_per_batch(self) -> int:
        return self.spec.batch_size * self.spec.seq_len

    def _rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        e, n = self.encoded, len(rows)
        positions = np.arange(self.spec.seq_len)[None, :]
        return {"input_ids": e.ids[rows], "token_type_ids": e.types[rows],
                "attention_mask": (positions < e.lengths[rows, None]).astype(np.int32),
                "labels": np.asarray(e.labels[rows], np.int32)[:, None],
                "weights": np.ones((n, 1), np.float32)}

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch number `step` of the training stream (any step, in any order): each
        epoch a fresh order of the training rows, from (seed, epoch)."""
        b, n = self.spec.batch_size, len(self.train_idx)
        rows = []
        for i in range(step * b, (step + 1) * b):
            epoch, k = divmod(i, n)
            if epoch not in self._orders:
                self._orders = {epoch: np.random.default_rng(
                    [self.spec.seed, 3, epoch]).permutation(n)}  # one epoch kept
            rows.append(self.train_idx[self._orders[epoch][k]])
        return self._rows(np.asarray(rows))

    def heldout_batches(self) -> list[dict[str, np.ndarray]]:
        """The fixed held-out set B, whatever the training seed."""
        b = self.spec.batch_size
        return [self._rows(self.heldout_idx[j * b:(j + 1) * b])
                for j in range(self.spec.heldout_batches)]
