"""A search run: its directory, journal, teacher, proxies and results.

The run directory is self-describing and crash-safe:

    config.json      the resolved settings (a re-run with other settings is refused)
    journal.jsonl    append-only events: latency, start, done, failed (one JSON a line)
    results.csv      one row per architecture of Ξ (written atomically at the end)
    best.json        the W-optimum and its proxies, and the maximum point's
    teacher/         the teacher checkpoint (a copy, so the run stands alone)
    pareto.png       written by `bortsearch show` (and at the end of a search)

Resuming is replaying the journal: candidates with a `done` or `failed` event are
not trained again, and the final table is the one an uninterrupted run writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bortsearch.config import (
    fingerprint,
    fraction,
    option,
    positive_float,
    positive_int,
    validate,
)
from bortsearch.data.batches import BatchSpec, load_data
from bortsearch.data.corpus import resolve_corpus
from bortsearch.data.tasks import TaskData, load_task, teacher_label_order
from bortsearch.data.tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer
from bortsearch.deploy.latency import RUNTIMES, measure_latency
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import DTYPES, INHERITS, INITS, LAYER_RULES
from bortsearch.model.hf import load_checkpoint, weights_sha256
from bortsearch.model.proxies import (
    SCOPES,
    SIZE_PROXIES,
    effective_param_count,
    forward_flops,
    param_count,
    size_proxy,
)
from bortsearch.process import setup_process
from bortsearch.runio import (
    atomic_dir,
    cache_dir,
    check_settings,
    enable_compilation_cache,
    exclusive,
    write_atomic,
    write_json,
)
from bortsearch.search.algorithm import (
    DONE,
    ERRORS,
    FAILED,
    Evaluation,
    Proxies,
    Result,
    algorithm1,
    confirm,
    summarise,
    w_coefficient,
)
from bortsearch.search.audit import diagnose
from bortsearch.search.candidates import CandidateSettings, HeldOut, Timing
from bortsearch.search.executors import LocalExecutor
from bortsearch.search.space import load_space
from bortsearch.train.importance import Importance, importance, rewire
from bortsearch.train.step import LossConfig
from bortsearch.train.teacher import TeacherConfig, check_seq_len, train_teacher

INFERENCE_KINDS = ("analytic", "measured", "fitted")
RESULT_COLUMNS = ["layers", "heads", "hidden", "intermediate", "params", "effective_params",
                  "inference", "error", "w_coefficient", "trained", "pareto", "status",
                  "best_lr", "interval", "note", "error_se", "w_se", "within_noise", "ce", "kl",
                  "confirmed_error", "confirmed_error_se", "confirmed_w", "accuracy"]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search depends on; `config.json` is this, resolved."""

    space: str = option(None, "a search-space TOML file", required=True)
    teacher: str | None = option(
        None, "a Hugging Face checkpoint folder (BERT, RoBERTa, ALBERT, DistilBERT, "
        "XLM-RoBERTa, ELECTRA): a masked-LM model, or a fine-tuned sequence classifier "
        "with --task", default_text="train the space's "
        "maximum point (cached)")
    corpus: tuple[str, ...] | None = option(
        None, "a text file, folder, glob or .jsonl file; repeat for more", metavar="PATH",
        repeat=True, default_text="the embedded Python-documentation corpus")
    text_field: str = option("text", "the text field of .jsonl corpora")
    # a sequence-classification teacher is distilled on its task's training rows: the
    # task (a GLUE name, or a name with text_fields and label_field) and its folder
    task: str | None = option(
        None, "with a classifier --teacher: the task it was fine-tuned on (a GLUE name, or "
        "your own with --text-fields and --label-field); the candidates are distilled on "
        "its training rows")
    task_data: str | None = option(
        None, "--task's folder (train.tsv, ...) or the GLUE folder holding it", flag="--data",
        metavar="DIR")
    text_fields: str | None = option(None, "a custom --task's text field(s)", metavar="A[,B]")
    label_field: str | None = option(None, "a custom --task's label field")
    vocab_size: int = option(DEFAULT_VOCAB_SIZE, "vocabulary of the WordPiece tokenizer "
                             "trained on the corpus when there is no teacher", type=positive_int)
    epsilon: int | None = option(None, "interval size ε", type=positive_int,
                                 default_text="⌈|Ξ|/12⌉: about 12 candidates trained")
    steps: int = option(200, "training steps s per candidate", type=positive_int,
                        fingerprint=True)
    lrs: tuple[float, ...] = option(
        (1e-3, 3e-3), "a peak learning rate of Θ; repeat for more", flag="--lr",
        type=positive_float, repeat=True, metavar="LR", fingerprint=True)
    batch_size: int = option(32, "sequences per batch, split across all local devices",
                             type=positive_int, fingerprint=True)
    seq_len: int = option(64, "tokens per sequence (also î's reference input: batch 1, this "
                          "length)", type=positive_int, fingerprint=True)
    seed: int = option(0, "seed of data order, masking and initialisation", type=int,
                       fingerprint=True)
    inference: str = option(
        "analytic", "inference proxy: FLOPs, measured latency on this machine, or latency "
        "predicted by a model fitted on a few measured architectures",
        choices=INFERENCE_KINDS, fingerprint=True)
    # î without the masked-LM head, as deployed [ours]
    inference_scope: str = option(
        "encoder", "what î counts: the encoder a downstream student runs, or the masked-LM "
        "model with its vocabulary head", choices=SCOPES, fingerprint=True)
    # where a measured î runs [ours]
    runtime: str = option(
        "xla", "where --inference measured runs the forward pass: xla, onnx (ONNX Runtime "
        "float32) or onnx-int8 (dynamic int8); needs bortsearch[onnx] for the last two",
        choices=RUNTIMES)
    # p̂: the non-embedding parameters [ours] (bench-bort: the same GLUE score as with
    # all parameters for a smaller, faster student), or "params", all of them [paper]
    size_proxy: str = option(
        "non-embedding", "what p̂ counts: the non-embedding parameters (a vocabulary's "
        "table is memory, not compute), or every parameter (as the paper); changing it "
        "re-scores a finished run, training only candidates it has not trained",
        choices=SIZE_PROXIES)
    # The defaults of the next three are chosen by bench/signal_quality.py
    # (docs/reading-the-answer.md); the paper's choices are ce, one seed, random.
    error: str = option("kl", "the error W divides by: kl = ê − H_T, what the student "
                        "controls, or ce = ê as in the paper", choices=ERRORS)
    seeds: int = option(2, "trials per θ from seeds --seed, --seed + 1, ...: the mean error, "
                        "its standard error and W's noise", type=positive_int, fingerprint=True)
    init: str = option("teacher", "students start from Normal(0, 0.02) or inherit the "
                       "teacher's weights", choices=INITS, fingerprint=True)
    # which units they inherit: the leading ones ("first"), or the most important ones
    # ("importance": the teacher rewired into importance order first) [ours]
    inherit: str = option(
        "first", "with --init teacher, which heads, feed-forward and hidden units a student "
        "inherits: the teacher's first ones, or its most important ones on the corpus "
        "(measured, cached, recorded in the run's importance.json); pretrain follows the run",
        choices=INHERITS, fingerprint=True)
    importance_batches: int = option(4, "training batches that measure the importances",
                                     type=positive_int, metavar="N")
    # which teacher layers a shallower student inherits [ours]
    inherit_layers: str = option(
        "uniform", "with --init teacher, which teacher layers a shallower student inherits: "
        "TinyBERT's uniform map (the top layer kept), the first ones, every other one from "
        "the first (DistilBERT), or the map whose inherited student has the lowest KL to the "
        "teacher on one training batch; pretrain follows the run", choices=LAYER_RULES,
        fingerprint=True)
    confirm: int = option(0, "train the K best by W again for --confirm-steps and choose by "
                          "those errors (0: no confirmation)", type=int, minimum=0,
                          metavar="K")
    confirm_steps: int | None = option(None, "steps of the confirmation training",
                                       type=positive_int, metavar="S2",
                                       default_text="5 x --steps")
    max_params: int | None = option(None, "only architectures with at most this many "
                                    "parameters (p̂) can be chosen", type=positive_int)
    max_inference: float | None = option(
        None, "only architectures with at most this inference proxy (FLOPs, or seconds when "
        "measured) can be chosen", type=positive_float)
    teacher_steps: int = option(TeacherConfig.steps, "steps of maximum-point training when "
                                "there is no --teacher", type=positive_int)
    group_size: int | None = option(None, "candidates trained in lockstep on each teacher "
                                    "output", type=positive_int, default_text="as many as "
                                    "fit 2 GiB of training state")
    # successive halving over Θ at this fraction of s [ours]: bench/halving_bench.py,
    # the same picks on three spaces for 23-25% fewer trial steps; None: every trial to s
    halving: float | None = option(
        0.5, "successive halving over Θ: after this fraction of --steps, each candidate's θ "
        "whose mean error is worse than the best θ's by more than 3 standard errors of seed "
        "noise stop training (0: off)", type=fraction, metavar="FRACTION",
        parse=lambda v: v or None, fingerprint=True)
    checkpoint_every: int = option(50, "steps between checkpoints of the candidates in "
                                   "training, so that a killed search resumes mid-group",
                                   type=positive_int)
    dtype: str = option("float32", "compute dtype of the brief training: float32, or "
                        "bfloat16 for GPU/TPU (parameters, optimiser, softmax and loss stay "
                        "float32; slower on a CPU)", choices=DTYPES, fingerprint=True)

    def __post_init__(self):
        # Ranges are checked where values enter, so the Python API gets them too.
        if not self.lrs:
            raise UserError("--lr: give at least one learning rate")
        validate(self)

    @property
    def long_steps(self) -> int:
        return self.confirm_steps or 5 * self.steps


class Journal:
    """The append-only event log of a run; each line is flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = path

    def events(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything after it is lost anyway
        return out

    def append(self, event: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({**event, "time": round(time.time(), 3)}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def repair(self) -> None:
        """Drop a partial last line left by a kill, so appends stay parseable."""
        if self.path.is_file():
            good = self.events()
            write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in good))


def _key(arch: Arch) -> list[int]:
    return list(arch.size)


def prepare_teacher(cfg: SearchConfig, space, corpus, log, progress: bool):
    """T and its tokenizer: the given checkpoint, or the space's maximum point
    trained once per (space, corpus, settings) and cached."""
    if cfg.teacher:
        teacher = load_checkpoint(cfg.teacher, part="auto")
        n = teacher.num_labels
        if n and not cfg.task:
            raise UserError(f"--teacher {cfg.teacher}: a sequence classifier ({n} labels); give "
                            f"the task it was fine-tuned on: --task TASK --data DIR")
        if cfg.task and not n:
            raise UserError(f"--task {cfg.task}: the teacher {cfg.teacher} is a masked-LM "
                            f"model; a task search needs a fine-tuned sequence classifier "
                            f"(…ForSequenceClassification) as --teacher, or leave out --task")
        return teacher, Path(cfg.teacher)
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    arch = space.maximum_point(tokenizer.vocab_size, cfg.seq_len)
    tcfg = TeacherConfig(steps=cfg.teacher_steps, batch_size=cfg.batch_size,
                         seq_len=cfg.seq_len, seed=cfg.seed)
    key = hashlib.sha256(json.dumps([arch.to_dict(), corpus.fingerprint(), cfg.vocab_size,
                                     tcfg.record()], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "teachers" / key
    if (path / "bortsearch.json").is_file():
        log(f"maximum point {arch.label()}: reusing the cached teacher {path}")
    else:
        log(f"maximum point {arch.label()}: training it as the teacher "
            f"({cfg.teacher_steps} steps)")
    summary = train_teacher(path, arch, corpus, tokenizer, tcfg, progress=progress)
    log(f"teacher held-out masked-LM accuracy {summary['heldout_accuracy']:.3f} "
        f"(frequency baseline {summary['frequency_baseline_accuracy']:.3f})")
    return load_checkpoint(path), path


IMPORTANCE_VERSION = 1  # the cache key's: raise it when `importance` measures otherwise


def teacher_importance(teacher, teacher_path, corpus, data, batches: int, log) -> Importance:
    """The teacher's head, feed-forward and hidden-unit importances on the first
    `batches` training batches of the search's corpus; cached, since they depend only
    on the teacher, the corpus and the batches."""
    key = hashlib.sha256(json.dumps([IMPORTANCE_VERSION, weights_sha256(teacher_path),
                                     corpus.fingerprint(), dataclasses.asdict(data.spec), batches],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "importance" / f"{key}.json"
    if path.is_file():
        return Importance.from_dict(json.loads(path.read_text()))
    log(f"measuring the teacher's head, feed-forward and hidden-unit importance "
        f"({batches} batches)")
    imp = importance(teacher.arch, teacher.params, [data.train_batch(k) for k in range(batches)])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, imp.to_dict())
    return imp


def run_search(run_dir: str | Path, cfg: SearchConfig, progress: bool = True,
               log=print, executor=None) -> Result:
    """Algorithm 1 end to end in `run_dir`, resuming whatever an earlier run finished.

    `executor` says where candidates train (`bortsearch.search.executors`: local, the
    default, or a Ray cluster); it does not change the results, so a run begun
    with one can be resumed with the other."""
    setup_process()
    enable_compilation_cache()
    run = Path(run_dir)
    space = load_space(cfg.space)
    if cfg.task and not (cfg.teacher and cfg.task_data):
        raise UserError(f"--task {cfg.task}: a task search distils a fine-tuned classifier on "
                        f"the task's rows; give it with --teacher DIR and the task's folder "
                        f"with --data DIR")
    given = [f for f, v in (("--data", cfg.task_data), ("--text-fields", cfg.text_fields),
                            ("--label-field", cfg.label_field)) if v]
    if given and not cfg.task:
        raise UserError(f"{', '.join(given)} describe a task search's task; give --task TASK "
                        f"(with a classifier --teacher), or leave them out")
    if cfg.task and cfg.corpus:
        raise UserError("--corpus and --task: a task search trains on the task's training "
                        "rows; leave out --corpus")
    if cfg.task and cfg.inference_scope == "mlm":
        raise UserError("--inference-scope mlm counts a masked-LM head, which a task "
                        "search's students do not have; use --inference-scope encoder")
    corpus = None if cfg.task else resolve_corpus(list(cfg.corpus) if cfg.corpus else None,
                                                  cfg.text_field)
    if cfg.runtime != "xla" and cfg.inference == "analytic":
        raise UserError(f"--runtime {cfg.runtime} is where a measured latency runs; give "
                        f"--inference measured --runtime {cfg.runtime} (or fitted)")
    if cfg.teacher and not Path(cfg.teacher).is_dir():
        raise UserError(f"--teacher {cfg.teacher}: "
                        f"{'is a file, not' if Path(cfg.teacher).exists() else 'no such'} "
                        f"checkpoint folder; give the Hugging Face folder (config.json and "
                        f"weights)")
    if run.exists() and not run.is_dir():
        raise UserError(f"--run {run}: exists and is not a folder")
    if run.is_dir() and any(p.name != ".lock" for p in run.iterdir()) \
            and not (run / "config.json").is_file():
        raise UserError(f"--run {run}: the folder is not empty and is not a bortsearch run; "
                        f"choose a new folder")
    teacher, teacher_path = prepare_teacher(cfg, space, corpus, log, progress)
    T = teacher.arch
    check_seq_len(T, cfg.seq_len)
    if space.albert and T.family.embedding != "albert":
        raise UserError(f"--space {cfg.space}: ALBERT's axes (embedding, groups) cannot be "
                        f"written as a {T.family.title} model, the teacher's family; remove "
                        f"them from the space, or use a BERT or ALBERT teacher")
    xi = [T.with_size(*a.size) for a in space.architectures()]
    lost = [a for a in xi if T.projected and a.family.embedding == "electra" and not a.projected]
    if lost and cfg.init == "teacher":
        log(f"warning: {len(lost)} candidate(s) have H = E = {T.embedding_size}, where "
            f"transformers' ELECTRA has no E→H projection: they inherit the teacher's "
            f"embeddings without its projection (a worse start than the others')")
    epsilon = cfg.epsilon or math.ceil(len(xi) / 12)
    if not 1 <= epsilon <= len(xi):
        raise UserError(f"--epsilon {epsilon}: must be between 1 and |Ξ| = {len(xi)}")

    settings = {  # what a resumed run must match: the fields marked so, and these
        **fingerprint(cfg), "space": space.to_dict(), "teacher_arch": T.to_dict(),
        "teacher_weights": weights_sha256(teacher_path), "epsilon": epsilon,
        **({"importance_batches": cfg.importance_batches} if cfg.inherit == "importance" else {}),
    }
    # Everything that can fail on the user's input is checked before the run folder
    # is written: a corpus too short for one batch, say.
    spec = BatchSpec(cfg.batch_size, cfg.seq_len, seed=cfg.seed)
    if cfg.task:
        task = load_task(cfg.task, cfg.task_data, cfg.text_fields, cfg.label_field)
        if task.num_labels != teacher.num_labels:
            raise UserError(f"--task {cfg.task}: {task.num_labels} classes, but the teacher "
                            f"has {teacher.num_labels} outputs; give the task it was "
                            f"fine-tuned on")
        id2label = json.loads((teacher_path / "config.json").read_text()).get("id2label")
        order, note = teacher_label_order(task, id2label)
        if note:
            log(f"note: {note}")
        data = corpus = TaskData(task, teacher.tokenizer, spec, T.type_vocab_size, order)
        if data.truncated > 0.05:
            log(f"note: {100 * data.truncated:.0f}% of the task's rows are cut at --seq-len "
                f"{cfg.seq_len}; give the length the teacher was fine-tuned at (often 128)")
        settings["task"] = task.name
    else:
        data = load_data(corpus, teacher.tokenizer, spec, progress=progress)
    settings["corpus"] = corpus.fingerprint()
    imp = None
    if cfg.inherit == "importance":  # the run's own record first, so a resume matches it
        recorded = run / "importance.json"
        imp = (Importance.from_dict(json.loads(recorded.read_text())) if recorded.is_file()
               else teacher_importance(teacher, teacher_path, corpus, data,
                                       cfg.importance_batches, log))
        teacher = dataclasses.replace(teacher, params=rewire(T, teacher.params, imp.orders()))
    run.mkdir(parents=True, exist_ok=True)
    with exclusive(run, "a search in this run folder"):
        if imp is not None and not (run / "importance.json").is_file():
            write_json(run / "importance.json", imp.to_dict())
        return _run_locked(run, cfg, settings, corpus, teacher, teacher_path, T, xi, epsilon,
                           data, progress, log, executor or LocalExecutor())


def _run_locked(run: Path, cfg: SearchConfig, settings: dict, corpus, teacher, teacher_path,
                T, xi, epsilon, data, progress, log, executor) -> Result:
    """`run_search` once the folder is this process's alone."""
    started = any(e.get("event") in ("done", "failed")
                  for e in Journal(run / "journal.jsonl").events())
    check_settings(run / "config.json", settings, f"the run in {run}",
                   "use the same flags to resume it, or another --run folder", started)
    write_json(run / "search.json", {**dataclasses.asdict(cfg), "epsilon": epsilon,
                                     "teacher_path": str(teacher_path),
                                     "corpus_name": corpus.name})
    if not (run / "teacher" / "config.json").is_file():
        with atomic_dir(run / "teacher") as tmp:  # a failed copy leaves nothing behind
            shutil.copytree(teacher_path, tmp, dirs_exist_ok=True)

    journal = Journal(run / "journal.jsonl")
    journal.repair()
    events = journal.events()
    proxies, latency_model = _proxies(xi + [T], cfg, journal, events, progress)
    reference = HeldOut.of(teacher, data)
    if cfg.task:  # the teacher on the held-out rows' labels, beside the commonest class
        labels = np.concatenate([b["labels"][:, 0] for b in reference.batches])
        guess = np.concatenate([np.asarray(t)[:, 0].argmax(-1) for t in reference.teacher])
        reference.baselines.update(
            teacher_accuracy=float((guess == labels).mean()),
            majority_accuracy=float(np.bincount(labels).max() / len(labels)))
        log(f"teacher on the held-out training rows: accuracy "
            f"{reference.baselines['teacher_accuracy']:.3f} (the commonest class "
            f"{reference.baselines['majority_accuracy']:.3f})")
    evaluate = JournalledEvaluator(journal, events, teacher, data, proxies, cfg, progress, log,
                                   reference, executor=executor)
    log(f"|Ξ| = {len(xi)}, ε = {epsilon}, s = {cfg.steps}, Θ = {list(cfg.lrs)}, "
        f"seeds {cfg.seeds}, init {cfg.init}, error {cfg.error}")
    result = algorithm1(xi, proxies, proxies[T], epsilon, evaluate, cfg.max_params,
                        cfg.max_inference)
    if cfg.confirm:
        log(f"confirming the {cfg.confirm} best by W with {cfg.long_steps} steps")
        longer = JournalledEvaluator(journal, events, teacher, data, proxies, cfg, progress, log,
                                     reference, steps=cfg.long_steps, phase="confirm",
                                     executor=executor)
        result = confirm(result, cfg.confirm, longer)
    report = diagnose(result, reference.baselines, cfg.error, cfg.seeds, cfg.size_proxy)
    speedup = _speedup(result, T, cfg, journal, events)
    write_results(run, result, cfg, epsilon, T, report, speedup, latency_model)
    return result


class JournalledEvaluator:
    """The evaluator `algorithm1` calls: candidates the journal already holds are
    read back, the rest are trained by a `CandidateTrainer`, and every start and
    finish is journalled and shown (bar over candidates, a line per candidate)."""

    def __init__(self, journal: Journal, events: list[dict], teacher, data, proxies: dict,
                 cfg: SearchConfig, progress: bool, log, reference: HeldOut,
                 steps: int | None = None, phase: str = "search", executor=None):
        self.journal, self.teacher, self.data = journal, teacher, data
        self.executor = executor or LocalExecutor()
        self.proxies, self.cfg, self.progress, self.log = proxies, cfg, progress, log
        self.reference, self.phase = reference, phase
        self.steps = steps or cfg.steps
        self.finished = {tuple(e["arch"]): e for e in events if e["event"] in (DONE, FAILED)
                         and e.get("phase", "search") == phase
                         and e.get("steps", cfg.steps) == self.steps}
        self.bar = None

    def __call__(self, archs: list[Arch]) -> dict[Arch, Evaluation]:
        from bortsearch.runio import progress_bar

        out = {a: self._replay(self.finished[a.size]) for a in archs if a.size in self.finished}
        todo = [a for a in archs if a not in out]
        self.log(f"{len(archs)} candidates; {len(out)} already done")
        if not todo:
            return out
        cfg = self.cfg
        settings = CandidateSettings(steps=self.steps, lrs=tuple(cfg.lrs), loss=LossConfig(),
                                     seed=cfg.seed, seeds=cfg.seeds, init=cfg.init,
                                     layers=cfg.inherit_layers,
                                     error=cfg.error, group_size=cfg.group_size,
                                     dtype=cfg.dtype, halving=cfg.halving)
        self.bar = progress_bar(total=len(archs), initial=len(out), desc="candidates",
                                unit="cand", disable=not self.progress,
                                bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} "
                                           "[{elapsed}<{remaining}, {rate_fmt}]")
        checkpoints = self.journal.path.parent / "candidates" / f"{self.phase}-{self.steps}"
        out.update(self.executor(self.teacher, self.data, settings, self.reference, todo,
                                 self._on_start, self._on_done, self._on_step, checkpoints,
                                 cfg.checkpoint_every))
        self.bar.close()
        self.bar = None
        return out

    def _replay(self, event: dict) -> Evaluation:
        """The journalled trials, scored with this run's error metric."""
        if event["event"] == FAILED and not event.get("trials"):
            return Evaluation(FAILED, reason=event.get("reason", ""))
        trials = [(t[0], t[1], *map(_denum, t[2:])) for t in event["trials"]]
        return summarise(trials, self.cfg.lrs, self.cfg.error, event.get("reason", ""))

    def _tag(self, arch: Arch) -> dict:
        return {"arch": _key(arch), "phase": self.phase, "steps": self.steps}

    def _on_start(self, arch: Arch) -> None:
        self.journal.append({"event": "start", **self._tag(arch)})

    def _on_done(self, arch: Arch, ev: Evaluation, timing: Timing | None) -> None:
        self.journal.append({"event": ev.status, **self._tag(arch), "error": _num(ev.error),
                             "best_lr": ev.best_lr, "reason": ev.reason,
                             "trials": [[t[0], t[1], *map(_num, t[2:])] for t in ev.trials],
                             **({"timing": dataclasses.asdict(timing)} if timing else {})})
        p, t = self.proxies[arch], self.proxies[self.teacher.arch]
        line = (f"{arch.label():<32} params {p.params / 1e6:7.2f}M  "
                f"{_inference_text(p.inference, self.cfg.inference)}  ")
        noise = f" ± {ev.error_se:.4f}" if math.isfinite(ev.error_se) else ""
        line += (f"{self.cfg.error} {ev.error:.4f}{noise}  W {w_coefficient(p, t, ev.error):.4g}  "
                 f"lr {ev.best_lr:g}" if ev.status == DONE else f"FAILED: {ev.reason}")
        if self.phase == "confirm":
            line = f"confirmed ({self.steps} steps) " + line
        (self.bar.write if self.bar is not None and self.progress else self.log)(line)

    def _on_step(self, n: int) -> None:
        if self.bar is not None:  # fractions of a candidate; never past the total
            self.bar.update(min(n / self.steps, self.bar.total - self.bar.n))


def _proxies(archs, cfg: SearchConfig, journal: Journal, events,
             progress) -> tuple[dict, dict | None]:
    """p̂ and î for Ξ and T, and the fitted latency model's summary (or None).
    Measured latencies are journalled, so a resumed run does not measure again.
    `fitted`: the latency model of `latency_model`, fitted on `FITTED_SAMPLE`
    measured architectures of Ξ and on T."""
    scope = cfg.inference_scope
    if cfg.inference == "analytic":
        return {a: Proxies(size_proxy(a, cfg.size_proxy),
                           float(forward_flops(a, 1, cfg.seq_len, scope))) for a in archs}, None
    if cfg.inference == "fitted":
        from bortsearch.model.latency_model import fit_latency, sample

        xi, T = archs[:-1], archs[-1]
        measured = sample(xi, FITTED_SAMPLE, 1, cfg.seq_len, scope)
        measured += [T] if T not in measured else []
        times = _measured(measured, cfg, journal, events, progress, rounds=LATENCY_ROUNDS)
        model = fit_latency(measured, [times[a] for a in measured], 1, cfg.seq_len, scope)
        return ({a: Proxies(size_proxy(a, cfg.size_proxy), model.predict(a)) for a in archs},
                model.summary())
    times = _measured(archs, cfg, journal, events, progress)
    return {a: Proxies(size_proxy(a, cfg.size_proxy), times[a]) for a in archs}, None


FITTED_SAMPLE = 8  # architectures measured to fit `--inference fitted`, besides T
LATENCY_ROUNDS = 5  # interleaved rounds for the fitted model's sample and the speed-up check


def _measured(archs, cfg: SearchConfig, journal: Journal, events, progress,
              rounds: int = 1) -> dict:
    """Measured median latency of each architecture, from the journal or measured now:
    with `rounds` > 1, the median over that many rounds, each round over every
    architecture in turn (starting one further on each round), so that drifts in the
    machine's load hit all of them alike."""
    scope = cfg.inference_scope
    from bortsearch.runio import progress_bar

    if cfg.runtime != "xla":
        from bortsearch.deploy.onnx_export import require_onnx

        require_onnx()
    # a run resumed with another --runtime measures again; each runtime's own figures
    known: dict = {}
    for e in events:
        if e["event"] == "latency" and e.get("runtime", "xla") == cfg.runtime:
            known.setdefault(tuple(e["arch"]), []).append(e["median_s"])
    archs = list(dict.fromkeys(archs))  # T may be in Ξ too
    todo = [(r, a) for r in range(rounds)
            for a in archs[r % len(archs):] + archs[:r % len(archs)]
            if len(known.get(a.size, [])) <= r]
    for _, a in progress_bar(iterable=todo, desc=f"measuring latency ({cfg.runtime})",
                             unit="arch", disable=not progress or not todo):
        m = measure_latency(a, batch=1, seq_len=cfg.seq_len, scope=scope, runtime=cfg.runtime)
        known.setdefault(a.size, []).append(m["median_s"])
        journal.append({"event": "latency", "arch": _key(a), "median_s": m["median_s"],
                        "iqr_s": m["iqr_s"], "hardware": m["hardware"],
                        **({"runtime": cfg.runtime} if cfg.runtime != "xla" else {})})
    return {a: statistics.median(known[a.size][:rounds]) for a in archs}


def _inference_text(value: float, kind: str) -> str:
    return f"{value / 1e9:7.3f} GFLOPs" if kind == "analytic" else f"{value * 1e3:7.2f} ms"


def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _denum(x):
    return math.nan if x is None else float(x)


def results_table(result: Result) -> pd.DataFrame:
    rows = [{
        "layers": r.arch.layers, "heads": r.arch.heads, "hidden": r.arch.hidden,
        "intermediate": r.arch.intermediate, "params": param_count(r.arch),
        "effective_params": effective_param_count(r.arch), "inference": r.proxies.inference,
        "error": r.error, "w_coefficient": r.w, "trained": r.status != "skipped",
        "pareto": r.pareto, "status": r.status, "best_lr": r.best_lr, "interval": r.interval,
        "note": r.note, "error_se": r.error_se, "w_se": r.w_se, "within_noise": r.within_noise,
        "ce": r.ce, "kl": r.kl, "confirmed_error": r.confirmed_error,
        "confirmed_error_se": r.confirmed_error_se, "confirmed_w": r.confirmed_w,
        "accuracy": r.accuracy,
    } for r in result.rows]
    columns = list(RESULT_COLUMNS)
    if any(r.arch.albert for r in result.rows):  # ALBERT's axes, after intermediate
        for row, r in zip(rows, result.rows):
            row.update(embedding=r.arch.embedding_size, groups=r.arch.num_groups)
        columns[4:4] = ["embedding", "groups"]
    return pd.DataFrame(rows, columns=columns)


def _speedup(result: Result, T: Arch, cfg: SearchConfig, journal: Journal,
             events: list[dict]) -> dict | None:
    """The W-optimum's speed-up over T: predicted by î, and measured on this
    machine (median latency at batch 1 and length L, the proxy's scope). The
    measurement is journalled, so a finished run is not measured again."""
    if result.best is None:
        return None
    best = result.best
    predicted = result.maximum_point.inference / best.proxies.inference
    runtime = cfg.runtime if cfg.inference != "analytic" else "xla"
    key = [_key(best.arch), _key(T), cfg.seq_len, cfg.inference_scope] \
        + ([runtime] if runtime != "xla" else [])
    known = [e for e in events if e["event"] == "speedup" and e["key"] == key]
    if known:
        measured = known[-1]["measured"]
    else:
        # the two in turn, LATENCY_ROUNDS times: load drifts hit both alike
        rounds = [[measure_latency(a, 1, cfg.seq_len, repeats=10, scope=cfg.inference_scope,
                                   runtime=runtime) for a in (best.arch, T)]
                  for _ in range(LATENCY_ROUNDS)]
        best_s, t_s = ([r[i]["median_s"] for r in rounds] for i in (0, 1))
        measured = {"best_s": statistics.median(best_s), "maximum_point_s": statistics.median(t_s),
                    "iqr_s": [statistics.median(r[i]["iqr_s"] for r in rounds) for i in (0, 1)],
                    "rounds": LATENCY_ROUNDS,
                    "round_speedups": [t / b for t, b in zip(t_s, best_s)],
                    "hardware": rounds[0][0]["hardware"]}
        journal.append({"event": "speedup", "key": key, "measured": measured})
    return {"predicted": predicted, "measured": measured["maximum_point_s"] / measured["best_s"],
            "scope": cfg.inference_scope, "runtime": runtime, **measured}


def write_results(run: Path, result: Result, cfg: SearchConfig, epsilon: int, T: Arch,
                  report: dict | None = None, speedup: dict | None = None,
                  latency_model: dict | None = None) -> None:
    """best.json, then results.csv (the mark of a finished run), each atomically."""
    best = result.best

    def field(name):
        return None if best is None else _num(getattr(best, name))

    write_json(run / "best.json", {
        "arch": None if best is None else best.arch.to_dict(),
        "size": None if best is None else list(best.arch.size),
        "params": None if best is None else param_count(best.arch),
        "size_proxy": cfg.size_proxy,
        "p_hat": None if best is None else best.proxies.params,
        "effective_params": None if best is None else effective_param_count(best.arch),
        "inference": None if best is None else best.proxies.inference,
        "inference_kind": cfg.inference,
        "runtime": cfg.runtime if cfg.inference != "analytic" else None,
        "latency_model": latency_model,
        "inference_scope": cfg.inference_scope,
        "error_metric": cfg.error,
        "error": field("error"),
        "error_se": field("error_se"),
        "ce": field("ce"),
        "kl": field("kl"),
        "accuracy": field("accuracy"),
        "w_coefficient": field("w"),
        "w_se": field("w_se"),
        "best_lr": None if best is None else best.best_lr,
        "chosen_by": "confirmed" if result.confirmed else "short",
        "confirmed_error": field("confirmed_error"),
        "confirmed_w": field("confirmed_w"),
        "maximum_point": {"arch": T.to_dict(), "params": param_count(T),
                          "p_hat": result.maximum_point.params,
                          "inference": result.maximum_point.inference},
        "epsilon": epsilon, "steps": cfg.steps, "lrs": list(cfg.lrs), "seeds": cfg.seeds,
        "init": cfg.init, "confirm": cfg.confirm,
        "confirm_steps": cfg.long_steps if cfg.confirm else None,
        "constraints": {"max_params": cfg.max_params, "max_inference": cfg.max_inference},
        "reason": "" if best is not None else
        "no trained candidate is smaller and faster than the maximum point within the constraints",
        "speedup": speedup,
        "diagnostics": _json_safe(report or {}),
        "warnings": [w["message"] for w in (report or {}).get("warnings", [])],
    })
    write_atomic(run / "results.csv", results_table(result).to_csv(index=False))


def _json_safe(obj):
    """NaN and infinities as null: best.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_results(run: str | Path) -> tuple[pd.DataFrame, dict]:
    """A finished run's results table and best.json."""
    run = Path(run)
    if not (run / "results.csv").is_file():
        hint = ("the search has not finished; re-run `bortsearch search` with the same flags "
                "to resume it") if (run / "config.json").is_file() else \
            "it is not a bortsearch run folder"
        raise UserError(f"{run}: no results.csv; {hint}")
    table = pd.read_csv(run / "results.csv")
    best = json.loads((run / "best.json").read_text())
    return table, best


def timings(run: str | Path) -> pd.DataFrame:
    """Per-candidate timing of a run, from its journal (the benchmark reads this)."""
    rows = []
    for e in Journal(Path(run) / "journal.jsonl").events():
        if e["event"] == DONE and "timing" in e:
            rows.append({"arch": tuple(e["arch"]), **e["timing"]})
    return pd.DataFrame(rows)

