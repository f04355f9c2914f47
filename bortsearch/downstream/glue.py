"""The downstream proof: several models fine-tuned on several tasks, side by side.

`glue(models, data, out)` fine-tunes every model on every task (each a
`finetune` run under OUT/<model>/<task>/, so a finished one is re-used and a
killed one resumes), then writes `glue.csv`, `glue.md` (the table: one row per
model with p̂, non-embedding parameters, the measured CPU latency at batch 1 and
length 128, each task's dev score and their average; the majority-class baseline
as a row) and `glue.png` (average score against latency).

Given a search run folder instead of models, it takes the run's teacher and every
student the run pretrained (exported to OUT/models/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bortsearch.data.tasks import FORMATS, GLUE, task_folder
from bortsearch.downstream.finetune import (
    LATENCY_LENGTH,
    FinetuneConfig,
    finish,
    prepare,
    run_trials,
)
from bortsearch.errors import UserError
from bortsearch.process import setup_process
from bortsearch.search.config import SearchConfig


def available_tasks(data: Path) -> list[str]:
    """The GLUE tasks whose folder under `data` has a training and a dev split."""
    found = []
    for name, spec in GLUE.items():
        folder = task_folder(data, spec)
        has = [any((folder / f"{stem}{ext}").is_file() for ext in FORMATS)
               for stem in ("train", spec.devs[0])]
        if all(has):
            found.append(name)
    return found


def run_models(run: Path, out: Path) -> list[Path]:
    """A search run's teacher and its pretrained students (exported once)."""
    from bortsearch.search.student import STUDENT_WEIGHTS, export

    models = [run / "teacher"]
    for weights in sorted((run / "pretrain").glob(f"*/{STUDENT_WEIGHTS}")):
        size = tuple(int(x) for x in weights.parent.name.split("-"))
        folder = out / "models" / f"student-{weights.parent.name}"
        if not (folder / "model.safetensors").is_file():
            export(run, folder, size)
        models.append(folder)
    if len(models) == 1:
        raise UserError(f"{run}: no pretrained student yet; run `bortsearch pretrain {run} "
                        f"--out DIR` first (or name the models to compare)")
    return models


def _names(models: list[Path]) -> list[str]:
    names, seen = [], {}
    for m in models:
        base = m.name if m.name != "teacher" else "teacher"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def cpu_latency(arch) -> dict:
    """The encoder's measured latency at batch 1, length 128, on the CPU."""
    import jax

    from bortsearch.deploy.latency import measure_latency

    with jax.default_device(jax.devices("cpu")[0]):
        return measure_latency(arch, batch=1, seq_len=min(LATENCY_LENGTH, arch.max_seq_len),
                               scope="encoder")


def glue(models: list[str | Path], data: str | Path, out: str | Path | None = None,
         tasks: list[str] | None = None, cfg: FinetuneConfig = FinetuneConfig(),
         progress: bool = True, int8: bool = False, executor=None) -> pd.DataFrame:
    """Fine-tune each model on each task and write the comparison to `out`.

    Args:
      models: Hugging Face folders, or a single search run folder (its teacher and
        pretrained students).
      data: a GLUE folder (CoLA/, SST-2/, ...).
      out: where the runs and the table go (default for a run: RUN/glue).
      tasks: GLUE task names (default: every task with train and dev under `data`).
      int8: also each fine-tuned classifier quantised to int8 in ONNX Runtime:
        columns TASK_int8, average_int8 and latency_int8_ms (and latency_onnx_ms,
        its float32 graph) beside the float32 ones.
      executor: where the trials train: None here, one after another; a
        `downstream.executors.RayTrials`, every (model, task, lr, seed) of the
        grid as a Ray task at once.
    """
    setup_process()
    from bortsearch.model.hf import arch_from_config
    from bortsearch.model.proxies import effective_param_count, param_count

    t0 = time.perf_counter()
    if int8:
        from bortsearch.deploy.onnx_export import require_onnx

        require_onnx()
    data = Path(data)
    models = [Path(m) for m in models]
    run = models[0] if len(models) == 1 and (models[0] / "best.json").is_file() else None
    if out is None and run is None:
        raise UserError("--out is required unless the model is a search run folder")
    if run is not None and SearchConfig.from_run(run).task:
        raise UserError(f"{run}: a task search; its students are classifiers for its task, "
                        f"not encoders to fine-tune on GLUE; name the models to compare")
    out = Path(out) if out is not None else run / "glue"
    if not data.is_dir():
        raise UserError(f"--data {data}: no such folder; point it at the GLUE folder "
                        f"(CoLA/, SST-2/, ...)")
    tasks = [t.lower().replace("-", "") for t in tasks] if tasks else available_tasks(data)
    unknown = [t for t in tasks if t not in GLUE]
    if unknown:
        raise UserError(f"--tasks: {', '.join(unknown)} not GLUE task(s); choose from "
                        f"{', '.join(GLUE)}")
    if not tasks:
        raise UserError(f"--data {data}: no GLUE task folder with train and dev splits "
                        f"(e.g. SST-2/train.tsv and SST-2/dev.tsv)")
    if run is not None:
        models = run_models(run, out)
    names = _names(models)
    for model in models:
        if not (model / "config.json").is_file():
            raise UserError(f"{model}: no config.json; each model must be a Hugging Face "
                            f"checkpoint folder")
    # every (model, task) checked and prepared first, then the whole grid trained
    jobs = {(name, task): prepare(model, task, data, out / name / task, cfg)
            for name, model in zip(names, models) for task in tasks}
    run_trials(list(jobs.values()), executor, progress)
    rows, majority = [], {}
    for name, model in zip(names, models):
        arch = arch_from_config(json.loads((model / "config.json").read_text()),
                                str(model / "config.json"))
        row = {"model": name, "path": str(model), "layers": arch.layers, "heads": arch.heads,
               "hidden": arch.hidden, "intermediate": arch.intermediate,
               "params": param_count(arch), "effective_params": effective_param_count(arch),
               "latency_ms": cpu_latency(arch)["median_s"] * 1e3}
        for task in tasks:
            m = finish(jobs[(name, task)], int8)
            row[task] = 100 * m["score"]
            majority[task] = 100 * m["majority_score"]
            if int8:
                row[f"{task}_int8"] = 100 * m["int8"]["score"]
                row["latency_int8_ms"] = m["int8"]["latency_ms"]  # the same encoder for each
                row["latency_onnx_ms"] = m["int8"]["fp32_latency_ms"]
        row["average"] = float(np.mean([row[t] for t in tasks]))
        if int8:
            row["average_int8"] = float(np.mean([row[f"{t}_int8"] for t in tasks]))
        rows.append(row)
    rows.append({"model": "majority class", **majority,
                 "average": float(np.mean([majority[t] for t in tasks]))})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    from bortsearch.runio import write_atomic

    write_atomic(out / "glue.md", format_table(table, tasks) + "\n")
    plot_glue(table, out / "glue.png")
    write_atomic(out / "glue.csv", table.to_csv(index=False))  # last: the completion mark
    table.attrs["wall_seconds"] = time.perf_counter() - t0
    return table


def format_table(table: pd.DataFrame, tasks: list[str]) -> str:
    """A Markdown table as the Bort paper lays it out (scores × 100; MRPC and
    QQP: mean of F1 and accuracy; STS-B: of Pearson and Spearman; CoLA: Matthews)."""
    int8 = "average_int8" in table.columns
    head = ["model", "D,A,H,I", "params", "non-emb.", "CPU ms (b1, L128)", *tasks, "average"]
    if int8:
        head += ["ONNX int8 ms", *[f"{t} int8" for t in tasks], "average int8"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        sized = isinstance(r.get("params"), (int, float)) and not pd.isna(r.get("params"))
        cells = [r["model"],
                 f"{int(r.layers)},{int(r.heads)},{int(r.hidden)},{int(r.intermediate)}"
                 if sized else "",
                 f"{int(r.params):,}" if sized else "",
                 f"{int(r.effective_params):,}" if sized else "",
                 f"{r.latency_ms:.2f}" if sized else "",
                 *[f"{r[t]:.1f}" for t in tasks], f"{r['average']:.1f}"]
        if int8:
            cells += ([f"{r.latency_int8_ms:.2f}", *[f"{r[f'{t}_int8']:.1f}" for t in tasks],
                       f"{r['average_int8']:.1f}"] if sized else [""] * (len(tasks) + 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_glue(table: pd.DataFrame, path: Path) -> Path:
    """Average dev score against CPU latency, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    models = table[table["model"] != "majority class"]
    ax.scatter(models["latency_ms"], models["average"], color="tab:blue")
    for _, r in models.iterrows():
        ax.annotate(r["model"], (r["latency_ms"], r["average"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    base = table[table["model"] == "majority class"]["average"]
    if len(base):
        ax.axhline(float(base.iloc[0]), color="grey", linestyle="--", label="majority class")
        ax.legend(loc="lower right", fontsize=8)
    latency = models["latency_ms"]
    log = len(latency) > 1 and latency.max() > 3 * latency.min()
    if log:  # plain numbers on the ticks, not powers of ten
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel(f"CPU latency, batch 1, length 128 (ms{', log' if log else ''})")
    ax.set_ylabel("average dev score")
    ax.set_title("GLUE dev: quality against speed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
