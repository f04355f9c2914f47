"""Shared by the reference-teacher and Bort-in-small benchmarks: a teacher's
masked-LM quality on held-out text, and GLUE dev scores with their seed noise.

GLUE here is CPU-sized: the first `train_rows` training rows of each task, one
learning rate, several seeds; each task's score is the mean over seeds of the
trial's best dev epoch, with its standard error. QNLI has no training split in
../shared/data/glue: its dev split is cut in two (the first 4,000 rows train, the
other 1,463 are the dev set), stated wherever the score is shown.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
GLUE_DATA = SHARED / "data" / "glue"
QNLI_TRAIN_ROWS = 4000
SHORT = {"sst2", "cola"}  # single short sentences: length 64 is enough


def glue_folder(work: Path, source: Path = GLUE_DATA) -> Path:
    """A GLUE folder with SST-2, MRPC, RTE, CoLA (links to `source`) and QNLI
    (train/dev cut from its dev split)."""
    out = work / "glue-data"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("SST-2", "MRPC", "RTE", "CoLA"):
        if not (out / name).exists() and (source / name).is_dir():
            (out / name).symlink_to((source / name).resolve())
    qnli = out / "QNLI"
    if not (qnli / "dev.tsv").is_file() and (source / "QNLI" / "dev.tsv").is_file():
        from bortsearch.runio import write_atomic

        lines = (source / "QNLI" / "dev.tsv").read_text(encoding="utf-8").splitlines(True)
        qnli.mkdir(exist_ok=True)
        write_atomic(qnli / "train.tsv", "".join(lines[:1 + QNLI_TRAIN_ROWS]))
        write_atomic(qnli / "dev.tsv", "".join(lines[:1] + lines[1 + QNLI_TRAIN_ROWS:]))
    return out


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(list(values), float)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def glue_scores(models: dict[str, Path], data: Path, out: Path, tasks: dict[str, int],
                train_rows: int | None, lr: float = 1e-4, epochs: int = 3,
                max_length: int = 128, progress: bool = False, int8: bool = False):
    """Fine-tune every model on every task (resumable: each is a `finetune` run
    under OUT/<model>/<task>) and return a table: per task the mean score × 100
    over `tasks[task]` seeds and its standard error, and their average, whose
    standard error treats the tasks as independent. Sentence pairs are cut at
    `max_length` tokens, single sentences at half that. `int8`: every trial also
    quantised to int8 and scored in ONNX Runtime: TASK_int8 (mean ± se over seeds),
    TASK_int8_cost (int8 − float32, paired by seed, mean ± se), average_int8 and
    latency_int8_ms / latency_onnx_ms (the classifier graphs at batch 1)."""
    import pandas as pd

    from bortsearch.downstream.finetune import FinetuneConfig, finetune

    rows = []
    for name, folder in models.items():
        row = {"model": name}
        for task, seeds in tasks.items():
            cfg = FinetuneConfig(lrs=(lr,), epochs=epochs, seeds=seeds,
                                 max_length=max_length // 2 if task in SHORT else max_length,
                                 max_train_samples=train_rows)
            m = finetune(folder, task, data, out / name / task, cfg, progress=progress,
                         int8=int8)
            row[task], row[f"{task}_se"] = mean_se(100 * t["score"] for t in m["grid"])
            if int8:
                q = m["int8"]
                row[f"{task}_int8"], row[f"{task}_int8_se"] = mean_se(
                    100 * t["score"] for t in q["grid"])
                row[f"{task}_int8_cost"], row[f"{task}_int8_cost_se"] = mean_se(
                    100 * (t["score"] - t["fp32_score"]) for t in q["grid"])
                row["latency_int8_ms"], row["latency_onnx_ms"] = (q["latency_ms"],
                                                                  q["fp32_latency_ms"])
            row.setdefault("majority", {})[task] = 100 * m["majority_score"]
        row["average"] = float(np.mean([row[t] for t in tasks]))
        row["average_se"] = float(math.sqrt(sum(row[f"{t}_se"] ** 2 for t in tasks)) / len(tasks))
        for kind in ("int8", "int8_cost") if int8 else ():
            row[f"average_{kind}"] = float(np.mean([row[f"{t}_{kind}"] for t in tasks]))
            row[f"average_{kind}_se"] = float(
                math.sqrt(sum(row[f"{t}_{kind}_se"] ** 2 for t in tasks)) / len(tasks))
        rows.append(row)
    table = pd.DataFrame(rows)
    majority = rows[0]["majority"]
    table.attrs["majority"] = {**majority, "average": float(np.mean(list(majority.values())))}
    return table.drop(columns="majority")


def format_scores(table, tasks, suffix: str = "") -> str:
    """Markdown: one row per model, 'mean ± se' per task and on average (with
    `suffix` "_int8" or "_int8_cost", those columns)."""
    head = ["model", *tasks, "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [f"{r[t + suffix]:.1f} ± {r[t + suffix + '_se']:.1f}"
                 for t in [*tasks, "average"]]
        lines.append("| " + " | ".join([str(r["model"]), *cells]) + " |")
    maj = table.attrs.get("majority")
    if maj and not suffix:
        lines.append("| majority class | " + " | ".join(f"{maj[t]:.1f}" for t in tasks)
                     + f" | {maj['average']:.1f} |")
    return "\n".join(lines)


def mlm_quality(model, corpus: str | Path, unigram_log_q, batches: int = 16,
                seq_len: int = 128, batch_size: int = 32) -> dict:
    """Masked-LM accuracy, cross-entropy and pseudo-perplexity of `model` on a
    text file (the first `batches` batches of a fixed order and masking), and
    the KL of a context-free predictor `unigram_log_q` against the model on the
    same positions: how much a student can learn beyond token frequencies."""
    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.search.candidates import error_baselines
    from bortsearch.train.step import mlm_quality as quality_of
    from bortsearch.train.step import teacher_logits

    data = load_data(resolve_corpus([str(corpus)]), model.tokenizer,
                     BatchSpec(batch_size, seq_len, seed=0, heldout_batches=1))
    n = min(batches, data.train_sequences // batch_size)
    held = [data.train_batch(k) for k in range(n)]
    quality = quality_of(model.arch, model.params, data, held, unigram_log_q)
    logits = [teacher_logits(model.arch, model.params, b) for b in held]
    base = error_baselines(held, logits, unigram_log_q)
    positions = int(sum(b["weights"].sum() for b in held))
    return {**quality, "pseudo_perplexity": math.exp(quality["mlm_ce"]), "positions": positions,
            "teacher_entropy": base["teacher_entropy"], "unigram_kl": base["unigram_kl"]}
