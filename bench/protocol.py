"""The rules and the statistics of `bench/bort_small_protocol.md`, as functions.

Everything the protocol decides by rule lives here, apart from the pipeline that
trains: which students are the rivals (from the pick and the space alone), latency
in interleaved rounds, the two-level
bootstrap of a score over pretraining and fine-tuning seeds, the test that
decides (wins / loses / cannot tell), "no greater latency" within the noise, the
front, and Spearman's ρ with its permutation p-value. Pure NumPy except the
latency rounds; tests/test_bench_bort.py plants results and checks each verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

BERT_TINY, BERT_MINI = (2, 2, 128, 512), (4, 4, 256, 1024)


def rivals_by_rule(space: Sequence, teacher, pick, size: Callable, flops: Callable,
                   seed: int = 0, n_random: int = 2) -> dict[str, object]:
    """The protocol's rivals of `pick`, by role: (a) smallest, (b) uniform shrink,
    (c) the teacher cut to the pick's depth at full width, (d) BERT-Tiny and
    BERT-Mini where the space holds them, (e) random within ±20% of the pick's
    size, and the control (f), the pick from random weights (the same shape).

    Args:
      space: the space's architectures (`Arch`); `teacher`, `pick`: `Arch`es.
      size, flops: an architecture's size proxy p̂ and its FLOPs.
    """
    target = size(pick)
    out = {"(a) smallest": min((a for a in space if a.size != pick.size),
                               key=lambda a: (size(a), flops(a), a.size))}
    head = teacher.hidden // teacher.heads  # the teacher's head size (MiniLM's: 32)
    shrinks = []
    for h in range(2 * head, teacher.hidden + 1, head):
        # D/D_T nearest H/H_T, in integers (|H_T·D − D_T·H|); a tie takes the smaller D
        depth = min(range(1, teacher.layers + 1),
                    key=lambda d: (abs(teacher.hidden * d - teacher.layers * h), d))
        shrinks.append(teacher.with_size(depth, h // head, h, 4 * h))
    shrinks = [a for a in shrinks if a.size != pick.size]
    out["(b) uniform shrink"] = min(shrinks, key=lambda a: (abs(size(a) - target), a.size))
    out["(c) teacher cut to the pick's depth"] = teacher.with_size(
        pick.layers, teacher.heads, teacher.hidden, teacher.intermediate)
    held = {a.size: a for a in space}
    for name, shape in (("(d) BERT-Tiny", BERT_TINY), ("(d) BERT-Mini", BERT_MINI)):
        if shape in held:
            out[name] = held[shape]
    out = {role: a for role, a in out.items() if a.size != pick.size}  # the pick is no rival
    taken = {pick.size, *(a.size for a in out.values())}
    pool = sorted((a for a in space if a.size not in taken
                   and abs(size(a) / target - 1) <= 0.2), key=lambda a: a.size)
    rng = np.random.default_rng(seed)
    for k, j in enumerate(rng.choice(len(pool), min(n_random, len(pool)), replace=False)):
        out[f"(e) random {k + 1}"] = pool[int(j)]
    out["(f) control: the pick from random weights"] = pick
    return out


def interleaved_latency(models: dict, measure: Callable, rounds: int = 15,
                        seed: int = 0) -> list[dict]:
    """`measure(model) -> seconds` for every model once a round, in a fresh random
    order each round; one row per round and model (with the load average)."""
    import os

    rng = np.random.default_rng(seed)
    names = list(models)
    rows = []
    for r in range(rounds):
        for j in rng.permutation(len(names)):
            name = names[int(j)]
            rows.append({"round": r, "model": name, "seconds": float(measure(models[name])),
                         "load_average": os.getloadavg()[0]})
    return rows


def latency_summary(rows: list[dict], n: int = 10_000, seed: int = 0) -> dict[str, dict]:
    """Each model's median over rounds and its 95% bootstrap interval (rounds resampled)."""
    by_model = _by_model(rows)
    rng = np.random.default_rng(seed)
    out = {}
    for name, x in by_model.items():
        boot = np.median(x[rng.integers(0, len(x), (n, len(x)))], axis=1)
        out[name] = {"median": float(np.median(x)), "lo": float(np.quantile(boot, 0.025)),
                     "hi": float(np.quantile(boot, 0.975))}
    return out


def no_greater_latency(rows: list[dict], rival: str, pick: str, n: int = 10_000,
                       seed: int = 0) -> tuple[bool, tuple[float, float]]:
    """Whether `rival` is no slower than `pick` within the noise: the 95% bootstrap
    interval of the ratio of medians, rounds resampled jointly (a round measures
    both), includes or lies below 1. Returns (verdict, interval)."""
    by_model = _by_model(rows)
    a, b = by_model[rival], by_model[pick]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n, len(a)))
    ratio = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    lo, hi = float(np.quantile(ratio, 0.025)), float(np.quantile(ratio, 0.975))
    return lo <= 1.0, (lo, hi)


def _by_model(rows: list[dict]) -> dict[str, np.ndarray]:
    """Seconds per model, in round order (rounds align across models)."""
    out: dict[str, list] = {}
    for row in sorted(rows, key=lambda r: r["round"]):
        out.setdefault(row["model"], []).append(row["seconds"])
    return {k: np.asarray(v) for k, v in out.items()}


def two_level_bootstrap(trials: dict, n: int = 10_000, seed: int = 0) -> np.ndarray:
    """`n` bootstrap means of a score over its trials, `trials` = {pretraining seed:
    [score of each fine-tuning seed]}: pretraining seeds resampled first, then the
    fine-tuning seeds within each drawn one."""
    rng = np.random.default_rng(seed)
    groups = [np.asarray(v, float) for _, v in sorted(trials.items())]
    means = np.empty(n)
    for i in range(n):
        drawn = [groups[j] for j in rng.integers(0, len(groups), len(groups))]
        means[i] = np.mean([g[rng.integers(0, len(g), len(g))].mean() for g in drawn])
    return means


def task_bootstrap(by_task: dict[str, dict], n: int = 10_000, seed: int = 0) -> np.ndarray:
    """`n` bootstrap means of a score averaged over tasks, `by_task` = {task: {pretraining
    seed: [fine-tuning scores]}}. One pretrained checkpoint is fine-tuned on every task,
    so each resample draws the pretraining seeds once for all tasks, then each task's
    fine-tuning seeds within them."""
    rng = np.random.default_rng(seed)
    tasks = [{k: np.asarray(v, float) for k, v in t.items()} for _, t in sorted(by_task.items())]
    keys = sorted(tasks[0])
    means = np.empty(n)
    for i in range(n):
        drawn = [keys[j] for j in rng.integers(0, len(keys), len(keys))]
        means[i] = np.mean([np.mean([t[k][rng.integers(0, len(t[k]), len(t[k]))].mean()
                                     for k in drawn]) for t in tasks])
    return means


def task_interval(by_task: dict[str, dict], n: int = 10_000, seed: int = 0) -> dict:
    """A model's score averaged over tasks, with its 95% bootstrap interval."""
    boot = task_bootstrap(by_task, n, seed)
    return {"mean": _task_mean(by_task), "lo": float(np.quantile(boot, 0.025)),
            "hi": float(np.quantile(boot, 0.975))}


def _task_mean(by_task: dict[str, dict]) -> float:
    """The mean over tasks of each task's mean over all its trials."""
    return float(np.mean([np.mean([x for v in t.values() for x in v]) for t in by_task.values()]))


def decide_tasks(pick: dict[str, dict], rival: dict[str, dict], n: int = 10_000,
                 seed: int = 0) -> dict:
    """The test that decides, on scores averaged over tasks: the margin pick − rival,
    its 95% interval from independent `task_bootstrap`s of both, and the verdict:
    "wins" (the interval's lower end above 0), "loses" (its upper end below 0), else
    "cannot tell"."""
    diff = task_bootstrap(pick, n, seed) - task_bootstrap(rival, n, seed + 1)
    lo, hi = float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))
    margin = _task_mean(pick) - _task_mean(rival)
    verdict = "wins" if lo > 0 else "loses" if hi < 0 else "cannot tell"
    return {"margin": margin, "lo": lo, "hi": hi, "verdict": verdict}


def score_interval(trials: dict, n: int = 10_000, seed: int = 0) -> dict:
    """A model's mean score over its trials and its 95% two-level bootstrap interval."""
    boot = two_level_bootstrap(trials, n, seed)
    flat = [x for v in trials.values() for x in v]
    return {"mean": float(np.mean(flat)), "lo": float(np.quantile(boot, 0.025)),
            "hi": float(np.quantile(boot, 0.975)), "trials": len(flat)}


def decide(pick_trials: dict, rival_trials: dict, n: int = 10_000, seed: int = 0) -> dict:
    """The test that decides, on one task: `decide_tasks` with that task alone."""
    return decide_tasks({"task": pick_trials}, {"task": rival_trials}, n, seed)


def on_front(latency: dict[str, dict], score: dict[str, dict]) -> dict[str, bool]:
    """A model is on the front unless another is faster (its latency interval wholly
    below) and better (its score interval wholly above)."""
    return {m: not any(latency[o]["hi"] < latency[m]["lo"] and score[o]["lo"] > score[m]["hi"]
                       for o in latency if o != m)
            for m in latency}


def spearman(x: Sequence[float], y: Sequence[float], n: int = 10_000,
             seed: int = 0) -> tuple[float, float]:
    """Spearman's ρ (average ranks for ties) and its two-sided permutation p-value;
    both NaN where ρ is undefined (fewer than 2 values, or one side constant)."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rho = _pearson(rx, ry) if len(rx) >= 2 else float("nan")
    if not math.isfinite(rho):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    perms = np.array([_pearson(rx, rng.permutation(ry)) for _ in range(n)])
    p = float((np.sum(np.abs(perms) >= abs(rho) - 1e-12) + 1) / (n + 1))
    return rho, p


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties share their average rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom else float("nan")


def readme_block(readme, begin: str, end: str, profile: str, block: str) -> None:
    """Write a benchmark's `block` for `profile` between the README's `begin` and `end`
    markers, one block per profile (the latest run's), keeping the other profiles'
    blocks and the text around; nothing when the README has no such markers."""
    from pathlib import Path

    from bortsearch.runio import write_atomic

    text = Path(readme).read_text()
    if begin not in text:
        return
    head, rest = text.split(begin, 1)
    body, tail = rest.split(end, 1)
    blocks = {}
    for old in body.split("<!-- profile: ")[1:]:
        name, content = old.split(" -->", 1)
        blocks[name] = content.strip()
    blocks[profile] = block.strip()
    body = "".join(f"\n<!-- profile: {k} -->\n{v}\n" for k, v in sorted(blocks.items()))
    write_atomic(readme, head + begin + body + end + tail)


def front_plot(path, models: Sequence[str], latency: dict, score: dict, front: dict,
               pick: str, ylabel: str, reference: tuple[str, float, float] | None = None):
    """Score against latency (ms, batch 1, length 128, one thread) with both intervals:
    the pick a red star, the front green, the rest grey; `reference` (name, latency ms,
    score), e.g. the teacher, a dashed line. Written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        if m not in score or m not in latency:
            continue
        x, y = 1e3 * latency[m]["median"], score[m]["mean"]
        ax.errorbar(x, y, yerr=[[y - score[m]["lo"]], [score[m]["hi"] - y]],
                    xerr=[[x - 1e3 * latency[m]["lo"]], [1e3 * latency[m]["hi"] - x]],
                    fmt="*" if m == pick else "o",
                    color="tab:red" if m == pick else "tab:green" if front.get(m) else
                    "tab:gray", ms=12 if m == pick else 5)
        ax.annotate(m, (x, y), fontsize=6)
    title = "pick (red star), front (green)"
    if reference is not None:
        name, x, y = reference
        ax.axhline(y, color="tab:blue", lw=0.8, ls="--")
        ax.annotate(name, (x, y), fontsize=6, color="tab:blue")
        title += f", {name} (dashed)"
    ax.set_xlabel("CPU latency, ms (batch 1, length 128, one thread)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
