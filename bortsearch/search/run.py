"""A search run: its directory, journal, teacher, proxies and results.

The run directory is self-describing and crash-safe (`journal`, `records`):

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
import shutil
from pathlib import Path

import numpy as np

from bortsearch.config import fingerprint, part
from bortsearch.data.batches import BatchSpec, load_data
from bortsearch.data.corpus import resolve_corpus
from bortsearch.data.tasks import TaskData, load_task, teacher_label_order
from bortsearch.data.tokenizer import train_tokenizer
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.hf import load_checkpoint, weights_sha256
from bortsearch.process import setup_process
from bortsearch.runio import (
    atomic_dir,
    cache_dir,
    check_settings,
    enable_compilation_cache,
    exclusive,
    write_json,
)
from bortsearch.search.algorithm import Result, algorithm1, confirm
from bortsearch.search.audit import diagnose
from bortsearch.search.candidates import HeldOut
from bortsearch.search.config import INFERENCE_KINDS, SearchConfig, SearchRecord
from bortsearch.search.executors import LocalExecutor
from bortsearch.search.journal import Event, Journal, JournalledEvaluator
from bortsearch.search.latency import measure_speedup, search_proxies
from bortsearch.search.records import (
    RESULT_COLUMNS,
    read_results,
    results_table,
    timings,
    write_results,
)
from bortsearch.search.space import load_space
from bortsearch.train.importance import Importance, importance, rewire
from bortsearch.train.teacher import TeacherConfig, check_seq_len, train_teacher

__all__ = ["INFERENCE_KINDS", "RESULT_COLUMNS", "SearchConfig", "prepare_teacher",
           "read_results", "results_table", "run_search", "timings", "write_results"]


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


# untested between 1e-4 (the candidates' KL tracked their distilled accuracy) and 1e-3
# (it did not); one teacher, one seed
TASK_LR = 3e-4


def rotary_inheritance_warnings(T: Arch, xi: list[Arch], cfg: SearchConfig) -> list[str]:
    """What inheriting from a rotary teacher with local windows (ModernBERT) cannot carry
    over: a student layer of the other attention type than the teacher layer it inherits
    (its window and rotary base), and a head size other than the teacher's (the rotary
    frequencies of the inherited queries and keys)."""
    if cfg.init != "teacher" or T.family.positions != "rotary":
        return []
    out = []
    if T.local_window is not None and cfg.inherit_layers == "measured":
        out.append("--inherit-layers measured may give a student layer a teacher layer of "
                   "the other attention type (global or the local window, and its rotary "
                   "base); the fixed maps (uniform, first, alternate) keep every layer's type")
    heads = [a for a in xi if a.head_dim != T.head_dim]
    if heads:
        out.append(f"{len(heads)} candidate(s) have a head size H/A other than the teacher's "
                   f"{T.head_dim}: the rotary frequencies of their inherited queries and keys "
                   f"change; spaces with H/A = {T.head_dim} keep them")
    return out


def task_lr_warning(cfg: SearchConfig) -> str | None:
    """What to consider when a task search's candidates, which inherit a fine-tuned
    classifier, would train only at rates above the one `pretrain` distils at: in the
    SST-2 benchmark (a MiniLM classifier fine-tuned at 1e-4; one seed;
    bench/results/task-cpu/lr-probe.md) the candidates' KL with Θ = {1e-3, 3e-3} (each
    kept 1e-3) did not track their distilled accuracy (Spearman -0.13), and with
    Θ = {1e-4} it did (+0.79), though no better than their size alone (+0.84); against a
    1,000-step distillation (bench/results/task-cpu/long-probe.md) likewise: +0.71 at 1e-4,
    -0.40 at the default Θ, and +0.93 by size alone, so the default Θ stays (the probe's
    rule) and the warning with it."""
    if not cfg.task or cfg.init != "teacher" or min(cfg.lrs) <= TASK_LR:
        return None
    return (f"the candidates inherit a fine-tuned classifier but train only at "
            f"Θ = {{{', '.join(f'{x:g}' for x in cfg.lrs)}}}, above the rate `pretrain` "
            f"distils at by default (1e-4); in bortsearch's SST-2 benchmark (one teacher, 11 "
            f"candidates, one seed) no tracking was found between the candidates' KL at the "
            f"default rates {{1e-3, 3e-3}} and their accuracy after a 300- or 1,000-step "
            f"distillation, while at 1e-4 it tracked it, though less closely than their size "
            f"alone: consider --lr set to the rate you will distil at (it replaces the default "
            f"Θ)")


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
    if (message := task_lr_warning(cfg)) is not None:
        log(f"warning: {message}")
    for message in rotary_inheritance_warnings(T, xi, cfg):
        log(f"warning: {message}")
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
    spec = part(BatchSpec, cfg)
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
    started = any(e.get("event") in (Event.DONE, Event.FAILED)
                  for e in Journal(run / "journal.jsonl").events())
    check_settings(run / "config.json", settings, f"the run in {run}",
                   "use the same flags to resume it, or another --run folder", started)
    SearchRecord(dataclasses.replace(cfg, epsilon=epsilon), str(teacher_path),
                 corpus.name).write(run)
    if not (run / "teacher" / "config.json").is_file():
        with atomic_dir(run / "teacher") as tmp:  # a failed copy leaves nothing behind
            shutil.copytree(teacher_path, tmp, dirs_exist_ok=True)

    journal = Journal(run / "journal.jsonl")
    journal.repair()
    events = journal.events()
    proxies, latency_model = search_proxies(xi + [T], cfg, journal, events, progress)
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
    if (message := task_lr_warning(cfg)) is not None:
        report["warnings"].append({"code": "task_lr", "message": message})
    speedup = measure_speedup(result, T, cfg, journal, events)
    write_results(run, result, cfg, epsilon, T, report, speedup, latency_model)
    return result


