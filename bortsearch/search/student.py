"""Leaving the tool: export the chosen student, and pretrain it by distillation.

`export` writes a Hugging Face folder for a run's W-optimum (or any --arch): the
config of the teacher's family, the teacher's tokenizer, a model card with the
search's provenance and the Pareto plot, and, once the student is pretrained,
its weights. `pretrain` trains the student against the run's teacher with the
Bort recipe (ALGORITHM.md), resumably, data parallel over all local devices, and
ends with such an export.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

from bortsearch.config import option, part, same_option, validate
from bortsearch.data.batches import BatchSpec, load_data
from bortsearch.data.corpus import resolve_corpus
from bortsearch.data.tokenizer import load_tokenizer
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch, row_size
from bortsearch.model.encoder import INITS, Model, inherit_params, init_params
from bortsearch.model.hf import (
    export_tensors,
    load_checkpoint,
    params_from_tensors,
    write_hf_folder,
)
from bortsearch.model.proxies import effective_param_count, forward_flops, param_count
from bortsearch.process import setup_process
from bortsearch.runio import atomic_dir, check_settings, write_atomic, write_json
from bortsearch.search.config import SearchConfig, SearchRecord
from bortsearch.train.distributed import is_primary
from bortsearch.train.fit import LoopConfig
from bortsearch.train.step import LossConfig, OptimConfig, evaluate, mlm_quality, teacher_view
from bortsearch.train.teacher import check_seq_len

STUDENT_WEIGHTS = "student.safetensors"
OBJECTIVES = ("mlm", "mlm+sop")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Distillation pretraining; defaults are the Bort recipe (ALGORITHM.md)."""

    steps: int = same_option(LoopConfig, "steps")
    batch_size: int = same_option(BatchSpec, "batch_size")
    seq_len: int = same_option(BatchSpec, "seq_len")
    lr: float = same_option(LoopConfig, "lr")
    warmup: float = same_option(OptimConfig, "warmup")
    weight_decay: float = same_option(OptimConfig, "weight_decay")
    adam_eps: float = same_option(OptimConfig, "adam_eps")
    clip: float = same_option(OptimConfig, "clip")
    ce_weight: float = same_option(LossConfig, "ce_weight")
    kd_weight: float = same_option(LossConfig, "kd_weight")
    temperature: float = same_option(LossConfig, "temperature")
    eval_every: int = same_option(LoopConfig, "eval_every")
    checkpoint_every: int = same_option(LoopConfig, "checkpoint_every")
    seed: int = same_option(BatchSpec, "seed")
    dtype: str = same_option(LoopConfig, "dtype")
    init: str | None = option(
        None, "start from Normal(0, 0.02) or from the teacher's weights", choices=INITS,
        default_text="as the search's candidates started, so the student trained is the one "
        "the search scored")
    objective: str = option(
        "mlm", "mlm: masked-LM distillation (the Bort recipe); mlm+sop: and ALBERT's "
        "sentence-order prediction on pairs of consecutive segments, learnt from their "
        "labels", choices=OBJECTIVES)
    sop_weight: float = same_option(LossConfig, "sop_weight")
    hidden_weight: float = same_option(LossConfig, "hidden_weight")

    def __post_init__(self):
        validate(self)

def _run_files(run: Path) -> tuple[dict, SearchRecord]:
    """A finished run's best.json and its search's record (search.json)."""
    if not (run / "best.json").is_file() or not (run / "teacher" / "config.json").is_file():
        raise UserError(f"{run}: not a finished search run (no best.json or teacher/); run "
                        f"`bortsearch search --run {run}` to the end first")
    return json.loads((run / "best.json").read_text()), SearchRecord.read(run)


def student_arch(run: str | Path, size: tuple[int, int, int, int] | None = None) -> Arch:
    """The run's W-optimum, or `size` in the teacher's family."""
    run = Path(run)
    best, _ = _run_files(run)
    family = Arch.from_dict(best["maximum_point"]["arch"])
    if size is not None:
        return family.with_size(*size)
    if not best.get("size"):
        raise UserError(f"{run}: the search chose no architecture ({best.get('reason', '')}); "
                        f"pick one with --arch D,A,H,I")
    return Arch.from_dict(best["arch"])


def weights_dir(run: Path, arch: Arch) -> Path:
    return run / "pretrain" / "-".join(map(str, arch.size))


def task_data(run: Path, search: SearchConfig, teacher: Model, spec: BatchSpec):
    """A task run's batches (its search's task, folder and fields) for `spec`, its labels
    in the teacher's output order as the search had them."""
    from bortsearch.data.tasks import TaskData, load_task, teacher_label_order

    task = load_task(search.task, search.task_data, search.text_fields, search.label_field)
    id2label = json.loads((run / "teacher" / "config.json").read_text()).get("id2label")
    order, _ = teacher_label_order(task, id2label)
    data = TaskData(task, teacher.tokenizer, spec, teacher.arch.type_vocab_size, order)
    recorded = json.loads((run / "config.json").read_text()).get("corpus") \
        if (run / "config.json").is_file() else None
    if recorded is not None and recorded != data.fingerprint():
        raise UserError(f"{run}: the task's rows in {search.task_data} are not the ones the "
                        f"search distilled on (changed files, or a relative --data read from "
                        f"another folder); run from the search's folder with its files")
    return data


def _labels(run: Path) -> tuple[str, ...]:
    """A classifier teacher's class names, in its output order."""
    id2label = json.loads((run / "teacher" / "config.json").read_text())["id2label"]
    return tuple(id2label[str(i)] for i in range(len(id2label)))


def _write_student(folder: Path, run: Path, arch: Arch, tokenizer, params, extra) -> None:
    """The student's Hugging Face folder: a masked-LM model, or for a task run a
    sequence classifier with the teacher's labels."""
    task = _task_of(run)
    write_hf_folder(folder, arch, tokenizer, params, extra,
                    labels=_labels(run) if task else None, task=task or "")


def _task_of(run: Path) -> str | None:
    """The task of a task run, else None."""
    return SearchConfig.from_run(run).task


def model_card(run: Path, arch: Arch, summary: dict | None) -> str:
    """README.md of an export: what the student is and where it came from."""
    best, record = _run_files(run)
    search = record.config
    t = best["maximum_point"]
    row = {}
    if (run / "results.csv").is_file():
        import pandas as pd

        table = pd.read_csv(run / "results.csv")
        match = table[[row_size(r) == arch.size for r in table.itertuples()]]
        row = match.iloc[0].to_dict() if len(match) else {}
    chosen = best.get("size") == list(arch.size)
    kind = best.get("inference_kind", "analytic")
    scope = best.get("inference_scope", "mlm")  # runs before the scope existed counted the head
    metric = best.get("error_metric", "ce")
    flops = float(forward_flops(arch, 1, search.seq_len, scope))
    unit = ("FLOPs per forward pass at batch 1" if kind == "analytic"
            else "seconds, measured in " + (best.get("runtime") or "xla"))

    def fmt(x, spec=".4g"):
        return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    lines = [
        f"# bortsearch student {arch.label()}", "",
        f"A {'ALBERT' if arch.albert else arch.family.title}-family "
        + (f"sequence classifier for the task {search.task} (distilled from the "
           f"fine-tuned teacher) " if search.task else "masked-LM encoder ")
        + "found by bortsearch's "
        "implementation of the Bort FPTAS (de Wynter & Perry 2020), "
        + ("the W-optimum of its search." if chosen
           else "chosen by hand (--arch) from its search."),
        "", "## Architecture", "",
        "| layers D | heads A | hidden H | intermediate I | embedding E | groups G | "
        "vocabulary | positions |",
        "|---|---|---|---|---|---|---|---|",
        f"| {arch.layers} | {arch.heads} | {arch.hidden} | {arch.intermediate} | "
        f"{arch.embedding_size} | {arch.num_groups} | {arch.vocab_size} | "
        f"{arch.max_positions} |", "",
        "## Search provenance", "",
        f"- space: `{search.space}`; ε = {best.get('epsilon')}, "
        f"s = {best.get('steps')}, Θ = {best.get('lrs')}",
        f"- teacher (maximum point T): {Arch.from_dict(t['arch']).label()}, "
        f"from `{record.teacher_path or search.teacher or '?'}`; "
        f"p̂(T) = {t['params']:,}, î(T) = {fmt(t['inference'])}",
        f"- {'task' if search.task else 'corpus'}: {record.corpus_name or '?'}",
        f"- this student: p̂ = {param_count(arch):,} parameters "
        f"({effective_param_count(arch):,} non-embedding), "
        f"î = {fmt(row.get('inference', flops))} "
        f"({unit}"
        f", {scope}), "
        f"{'ê' if metric == 'ce' else 'KL = ê − H_T'} = {fmt(row.get('error'))}, "
        f"W = {fmt(row.get('w_coefficient'))}",
        "- the Pareto plot of the search: `pareto.png`", "",
    ]
    if chosen and best.get("warnings"):
        lines += ["## Reliability warnings of the search", ""]
        lines += [f"- {w}" for w in best["warnings"]] + [""]
    if summary:
        start = ("random weights" if summary.get("init") != "teacher" else
                 "the teacher's most important heads and units" if
                 summary.get("inherit") == "importance" else "the teacher's weights")
        lines += ["## Pretraining", "",
                  f"Distillation against the teacher for {summary['steps']} steps from "
                  f"{start} "
                  f"({_loss_text(summary.get('loss'))}; AdamW lr {summary['lr']:g}).",
                  f"Held-out {'task' if summary.get('task') else 'masked-LM'} accuracy "
                  f"{summary['heldout_accuracy']:.4f} "
                  f"(teacher {summary['teacher_heldout_accuracy']:.4f}); KD cross-entropy "
                  f"{summary['heldout_kd_ce']:.4f}."
                  + (f" At [MASK] positions only: {summary['heldout_mask_accuracy']:.4f} "
                     f"(teacher {summary['teacher_heldout_mask_accuracy']:.4f}; always the "
                     f"most frequent token {summary['heldout_mask_frequency_baseline']:.4f})."
                     if "heldout_mask_accuracy" in summary else ""), ""]
        if summary.get("objective") == "mlm+sop":
            lines += [f"With ALBERT's sentence-order prediction (SOP) besides, from its labels "
                      f"(the teacher has no such head): held-out order accuracy "
                      f"{summary['heldout_sop_accuracy']:.4f}."
                      + (f" The order head is not exported ({arch.family.title} has no "
                         f"pretraining class with one in transformers)."
                         if arch.model_type != "bert" and not arch.albert
                         else " The order head is exported as transformers' "
                         + ("`AlbertForPreTraining` has it (`sop_classifier`)." if arch.albert
                            else "`BertForPreTraining` has its NSP head "
                                 "(`cls.seq_relationship`).")), ""]
        auto = "AutoModelForSequenceClassification" if search.task else \
            "AutoModelForMaskedLM"
        lines += [f"Load it with `transformers.{auto}.from_pretrained(folder)` or "
                  "`bortsearch.load(folder)`.", ""]
    else:
        lines += ["No weights: this export holds the configuration and tokenizer only "
                  "(`transformers.AutoConfig.from_pretrained(folder)` and `AutoTokenizer` read "
                  "them); `bortsearch pretrain` trains the student and exports it with weights.",
                  ""]
    return "\n".join(lines)


def _loss_text(loss: dict | None) -> str:
    """The distillation loss as the summary records it (older summaries: the defaults)."""
    loss = loss or _loss_record(LossConfig())
    hidden = loss.get("hidden_weight", 0.0)
    matched = loss.get("hidden_layers")
    return (f"{loss['ce_weight']:g} · CE + {loss['kd_weight']:g} · τ² · KL"
            + (f" + {hidden:g} · hidden-state MSE (student layers against teacher layers "
               f"{', '.join(map(str, matched)) if matched else 'by the uniform map'})"
               if hidden else "")
            + f", τ = {loss['temperature']:g}")


def _loss_record(loss: LossConfig) -> dict:
    """The loss as a summary records it: its settings, the hidden-state term's layer map
    only where a student has its own."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(loss).items()
            if not (k == "hidden_layers" and v is None)}


def export(run: str | Path, out: str | Path, size=None, params=None,
           summary: dict | None = None, onnx: bool = False, int8: bool = False) -> Path:
    """Write the student's Hugging Face folder to `out` (which must not hold files).

    Weights come from `params`, else from an earlier `pretrain` of this student in
    the run, else there are none (configuration and tokenizer only). `onnx` adds
    model.onnx (and `int8` model_quantized.onnx), which need weights.
    """
    if int8 and not onnx:
        raise UserError("--int8 quantises the ONNX graph; give --onnx --int8")
    if onnx:
        from bortsearch.deploy.onnx_export import require_onnx

        require_onnx()
    run, out = Path(run), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not empty; choose a new folder")
    arch = student_arch(run, size)
    tokenizer = load_tokenizer(run / "teacher", arch.model_type)
    wdir = weights_dir(run, arch)
    if params is None and (wdir / STUDENT_WEIGHTS).is_file():
        from safetensors.numpy import load_file

        n = len(_labels(run)) if _task_of(run) else 0
        params = params_from_tensors(arch, load_file(str(wdir / STUDENT_WEIGHTS)), wdir,
                                     "classifier" if n else "mlm", n,
                                     sop=True)  # the order head, if it was trained with one
        summary = json.loads((wdir / "summary.json").read_text())
    if onnx and params is None:
        raise UserError(f"{arch.label()} has no pretrained weights in {run} to put in an ONNX "
                        f"graph; pretrain it first (bortsearch pretrain {run} --out DIR)")
    extra = {"README.md": model_card(run, arch, summary)}
    if (run / "pareto.png").is_file():
        extra["pareto.png"] = (run / "pareto.png").read_bytes()
    with atomic_dir(out) as tmp:
        _write_student(tmp, run, arch, tokenizer, params, extra)
        if onnx:
            from bortsearch.deploy.onnx_export import write_graphs

            n = len(_labels(run)) if _task_of(run) else 0
            write_graphs(tmp, Model(arch, params, num_labels=n), int8)
    return out



def _finished_export(work: Path, out: Path) -> dict | None:
    """The summary, if `out` holds exactly the weights this pretraining finished with."""
    from safetensors.numpy import load_file

    if not (work / "summary.json").is_file() or not (out / "model.safetensors").is_file():
        return None
    try:
        mine = load_file(str(work / STUDENT_WEIGHTS))
        theirs = load_file(str(out / "model.safetensors"))
    except Exception:
        return None
    import numpy as np

    if mine.keys() != theirs.keys() or not all(np.array_equal(mine[k], theirs[k]) for k in mine):
        return None
    return json.loads((work / "summary.json").read_text())


def pretrain(run: str | Path, out: str | Path, size=None, cfg: PretrainConfig = PretrainConfig(),
             corpus: list[str] | None = None, progress: bool = True) -> dict:
    """Distil the student from the run's teacher, then export it with weights.

    Work lives in `RUN/pretrain/D-A-H-I/` (Orbax checkpoints every
    `checkpoint_every` steps, `metrics.jsonl`); the same command after a kill
    resumes there. Returns the summary written into the model card.
    """
    return pretrain_many(run, {size: out}, cfg, corpus, progress)[0]


def pretrain_many(run: str | Path, outs: dict, cfg: PretrainConfig = PretrainConfig(),
                  corpus: list[str] | None = None, progress: bool = True) -> list[dict]:
    """`pretrain` for several students under one budget, in one group: each batch
    and the teacher's outputs on it are computed once for all of them (the
    teacher's forward is most of the work when the students are small), and each
    student ends as it would alone. `outs` maps a size (None: the run's pick) to
    its export folder; returns the summaries in that order."""
    setup_process()
    run = Path(run)
    archs = [student_arch(run, size) for size in outs]
    if len(set(archs)) < len(archs):
        raise UserError("the same --arch is given twice; give each student once")
    todo, summaries = [], {}
    for arch, out in zip(archs, map(Path, outs.values())):
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            finished = _finished_export(weights_dir(run, arch), out)
            if finished is None:
                raise UserError(f"--out {out}: exists and is not empty; choose a new folder")
            summaries[arch] = finished  # the same command again: this export is there
        else:
            todo.append((arch, out))
    if todo:
        summaries.update(_pretrain_group(run, todo, cfg, corpus, progress))
    return [summaries[a] for a in archs]


def _pretrain_group(run: Path, todo: list, cfg: PretrainConfig, corpus, progress: bool) -> dict:
    from bortsearch.train.fit import Member, fit_group

    search = _run_files(run)[1].config
    # the search scored students started as its candidates were
    cfg = dataclasses.replace(cfg, init=cfg.init or search.init)
    task = search.task
    teacher = load_checkpoint(run / "teacher", part="auto" if task else "mlm")
    for arch, _ in todo:
        check_seq_len(arch, cfg.seq_len)
    sop = cfg.objective == "mlm+sop"
    spec = part(BatchSpec, cfg)
    if task:  # the pick distilled on its task's training rows, as the search trained it
        if corpus is not None:
            raise UserError(f"--corpus: {run} is a task search ({task}); its students are "
                            f"distilled on the task's training rows; leave out --corpus")
        if sop:
            raise UserError(f"--objective mlm+sop: {run} is a task search ({task}); its "
                            f"students learn the teacher's classes; leave out --objective")
        data = task_data(run, search, teacher, spec)
        fingerprint = data.fingerprint()
    else:
        specs = corpus if corpus is not None else search.corpus
        corpus_obj = resolve_corpus(list(specs) if specs else None, search.text_field)
        fingerprint = corpus_obj.fingerprint()
        data = load_data(corpus_obj, teacher.tokenizer, spec, progress=progress, pairs=sop)
    for arch, _ in todo:
        work = weights_dir(run, arch)
        check_settings(work / "settings.json",
                       {"arch": arch.to_dict(), "corpus": fingerprint,
                        **dataclasses.asdict(cfg)},
                       f"the pretraining in {work}",
                       f"re-run with the same flags, or remove {work} to start over")
    optim, loss = part(OptimConfig, cfg), part(LossConfig, cfg)

    inherit = search.inherit
    source = teacher.params  # the units a student inherits: the run's --inherit
    if cfg.init == "teacher" and inherit == "importance":
        from bortsearch.train.importance import Importance, rewire

        imp = Importance.from_dict(json.loads((run / "importance.json").read_text()))
        source = rewire(teacher.arch, teacher.params, imp.orders())

    rule = search.inherit_layers

    @functools.cache
    def measuring():  # the search's first training batch, which it measured on
        from bortsearch.train.step import teacher_logits

        spec = BatchSpec(search.batch_size, search.seq_len, seed=search.seed)
        batch = (task_data(run, search, teacher, spec) if task else load_data(
            resolve_corpus(list(search.corpus) if search.corpus else None, search.text_field),
            teacher.tokenizer, spec, progress=False)).train_batch(0)
        return batch, teacher_logits(teacher.arch, source, batch)

    @functools.cache
    def layers(arch):  # the teacher layers each student inherits: the run's rule
        from bortsearch.train.importance import inherited_layers

        return inherited_layers(rule, arch, teacher.arch, source, measuring, search.seed)

    n = teacher.num_labels

    def start(arch):
        return (inherit_params(arch, teacher.arch, source, cfg.seed, sop=sop,
                               layers=layers(arch), num_labels=n)
                if cfg.init == "teacher" else init_params(arch, cfg.seed, n, sop=sop))

    def matched(arch):  # the hidden-state term's map: the layers the student inherited
        if loss.hidden_weight == 0 or cfg.init != "teacher" or arch.groups is not None \
                or teacher.arch.groups is not None:
            return None  # the uniform map (for ALBERT's groups: over layer applications)
        return tuple(layers(arch))

    members = [Member(arch, start(arch), weights_dir(run, arch), f"pretrain {arch.label()}",
                      dataclasses.replace(loss, hidden_layers=matched(arch)))
               for arch, _ in todo]
    loss_of = {m.arch: _loss_record(m.loss_cfg) for m in members}
    # the hidden-state term compares the units a student inherited with the same units of
    # the teacher: the rewired teacher's (the same function, its units in that order)
    distiller = dataclasses.replace(teacher, params=source) if loss.hidden_weight > 0 else teacher
    results = fit_group(members, data, optim, cfg.lr, teacher=distiller, loss_cfg=loss,
                        eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
                        progress=progress, dtype=cfg.dtype)
    heldout = [teacher_view(b) for b in data.heldout_batches()]
    teacher_eval = evaluate(teacher.arch, teacher.params, heldout)
    teacher_quality = None if task else mlm_quality(teacher.arch, teacher.params, data, heldout)
    out_summaries = {}
    for (arch, out), result in zip(todo, results):
        work = weights_dir(run, arch)
        if task:  # accuracy and CE on the held-out training rows' labels
            summary = {"steps": cfg.steps, "lr": cfg.lr, "init": cfg.init, "task": task,
                       **({"inherit": inherit, "inherit_layers": rule}
                          if cfg.init == "teacher" else {}),
                       "loss": loss_of[arch],
                       "heldout_accuracy": result.heldout["accuracy"],
                       "heldout_ce": result.heldout["mlm_ce"],
                       "heldout_kd_ce": result.heldout["kd_ce"],
                       "teacher_heldout_accuracy": teacher_eval["accuracy"],
                       "tokens_per_s": result.heldout["tokens_per_s"],
                       "group_size": result.heldout["group_size"],
                       "steps_run": result.steps_run}
            _finish(run, work, out, arch, result.params, summary, n)
            out_summaries[arch] = summary
            continue
        quality = mlm_quality(arch, result.params, data)
        summary = {
            "steps": cfg.steps, "lr": cfg.lr, "init": cfg.init, "objective": cfg.objective,
            **({"inherit": inherit, "inherit_layers": rule} if cfg.init == "teacher" else {}),
            "loss": loss_of[arch],
            **({"heldout_sop_accuracy": result.heldout["sop_accuracy"]} if sop else {}),
            "heldout_accuracy": result.heldout["accuracy"],
            "heldout_mlm_ce": result.heldout["mlm_ce"],
            "heldout_kd_ce": result.heldout["kd_ce"],
            "heldout_mask_accuracy": quality["mask_accuracy"],
            "heldout_mask_frequency_baseline": quality["mask_frequency_baseline"],
            "teacher_heldout_accuracy": teacher_eval["accuracy"],
            "teacher_heldout_mask_accuracy": teacher_quality["mask_accuracy"],
            "tokens_per_s": result.heldout["tokens_per_s"],
            "model_flops_per_s": result.heldout["model_flops_per_s"],
            "teacher_flops_per_s": result.heldout["teacher_flops_per_s"],
            "total_flops_per_s": result.heldout["total_flops_per_s"],
            "teacher_flops_share": result.heldout["teacher_flops_share"],
            "group_size": result.heldout["group_size"],
            "steps_run": result.steps_run,
        }
        out_summaries[arch] = summary
        _finish(run, work, out, arch, result.params, summary, 0)
    return out_summaries


def _finish(run: Path, work: Path, out: Path, arch: Arch, params, summary: dict,
            num_labels: int) -> None:
    """A pretrained student's weights and summary in its work folder, and its export."""
    if not is_primary():  # process 0 of a multi-process job writes the files
        return
    from safetensors.numpy import save

    write_atomic(work / STUDENT_WEIGHTS,
                 save(export_tensors(Model(arch, params, num_labels=num_labels), num_labels)))
    write_json(work / "summary.json", summary)
    export(run, out, arch.size, params, summary)
