"""A probe after the lr probe: does the task search's error proxy at the distillation's
learning rate predict the candidates' accuracy after a longer distillation, better than
their size alone?

Why: `results/task-cpu/lr-probe.md` found the held-out KL after s = 200 steps at
Θ = {1e-4} tracked the candidates' SST-2 dev accuracy after the 300-step distillation
(Spearman +0.79), no better than their size alone (+0.84), and that brief training is the
distillation's own recipe stopped at 200 of its 300 steps. Until the proxy is measured
against a longer distillation, a task search at the default rates warns and suggests
`--lr 1e-4` (README, docs/commands.md).

Protocol, written before this probe ran (2026-12-06):
- The 11 candidates the task-cpu search trained (`lr-probe.csv`'s rows), each distilled
  from the teacher's weights for 1,000 steps (5 · s), lr 1e-4, batch 32, length 64, seed 0,
  the tool's loss, all in one group in a run copy of their own (`run-long-seed0`), scored
  on SST-2 dev after the last step (nothing chosen on dev).
- Measured: Spearman (and its permutation p-value, `protocol.spearman`) between that dev
  accuracy and each of: −KL at Θ = {1e-4} (the lr probe's search), −KL at the search's Θ
  = {1e-3, 3e-3}, p̂ (the search's size proxy, non-embedding parameters), and the seed-0
  dev accuracy after 300 steps (`scores.csv`).
- Read: the task search's default Θ becomes the distillation's rate when ρ(−KL at 1e-4)
  > 0 with p < 0.05 and is at least ρ(p̂); otherwise Θ and the warning stay, the warning
  citing this result. One seed and 11 candidates: a probe, reported either way.

    python bench/task_long_probe.py    # needs bench-task's CPU work folder (its run)

Raw rows: `results/task-cpu/long-probe.csv`; the reading: `long-probe.md`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402
from task_bench import LR, PROFILES, dev_accuracy, probe_work  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "task-cpu"
STEPS = 1000


def size_of(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in name.split("-"))


def distil(work: Path, names: list[str]) -> dict[str, float]:
    """Every candidate distilled for STEPS in one group: {name: SST-2 dev accuracy}."""
    from bortsearch.search.student import PretrainConfig, pretrain_many

    p = PROFILES["cpu"]
    cfg = PretrainConfig(steps=STEPS, batch_size=p.batch, seq_len=p.seq_len, lr=LR,
                         eval_every=STEPS // 4, checkpoint_every=STEPS // 4, init="teacher",
                         seed=0)
    where = work / "run-long-seed0"
    if not (where / "best.json").is_file():
        shutil.copytree(work / "run", where, ignore=shutil.ignore_patterns("pretrain"))
    outs = {size_of(n): work / "long-probe" / n for n in names}
    pretrain_many(where, outs, cfg, progress=True)
    return {n: dev_accuracy(outs[size_of(n)], work / "task" / "SST-2", p.seq_len)
            for n in names}


def reading(rows: pd.DataFrame) -> list[str]:
    dev = list(rows["dev_1000"])
    against = {"−KL at Θ = {1e-4}, s = 200 (the lr probe)": -rows["kl_lr1e-4"],
               "−KL at Θ = {1e-3, 3e-3}, s = 200 (the search's)": -rows["kl_search"],
               "p̂ (the size proxy)": rows["p_hat"],
               "dev accuracy after 300 steps (seed 0)": rows["dev_seed0"]}
    rho = {k: protocol.spearman(list(v), dev) for k, v in against.items()}
    lines = ["# Probe: the task search's error proxy against a longer distillation", "",
             "Protocol and reading rule: `bench/task_long_probe.py`'s docstring, written "
             "before it ran. Raw rows: `long-probe.csv`. The 11 candidates of bench-task's "
             f"CPU search, each distilled for {STEPS} steps at lr 1e-4 (seed 0) and scored on "
             "SST-2 dev.", "",
             f"| ranked by | Spearman with dev accuracy after {STEPS} steps | p |", "|---|---|---|"]
    lines += [f"| {k} | {r:+.2f} | {'< 0.001' if p < 0.001 else f'{p:.3f}'} |"
              for k, (r, p) in rho.items()]
    r_kl, p_kl = rho["−KL at Θ = {1e-4}, s = 200 (the lr probe)"]
    r_size = rho["p̂ (the size proxy)"][0]
    change = r_kl > 0 and p_kl < 0.05 and r_kl >= r_size
    lines += ["", "Reading (the protocol's rule): " + (
        "the task search's default Θ becomes the distillation's rate." if change else
        "Θ and the warning stay; the proxy at the distillation's rate ranks the candidates "
        "by the longer distillation's accuracy less closely than their size alone (a point "
        "comparison of two Spearman values, as the rule states; their difference is not "
        "tested).")]
    return lines


def main() -> int:
    from bortsearch.runio import write_atomic

    work = probe_work()
    if work is None:
        return 2
    rows = pd.read_csv(RESULTS / "lr-probe.csv")
    table = pd.read_csv(work / "run" / "results.csv")
    p_hat = {"-".join(map(str, r[:4])): r[4] for r in table[
        ["layers", "heads", "hidden", "intermediate", "effective_params"]].itertuples(
            index=False)}
    rows["p_hat"] = [p_hat[m] for m in rows["model"]]
    raw = RESULTS / "long-probe.csv"
    if raw.is_file():
        rows = pd.read_csv(raw)
    else:
        dev = distil(work, list(rows["model"]))
        rows["dev_1000"] = [dev[m] for m in rows["model"]]
        write_atomic(raw, rows.to_csv(index=False))
    text = "\n".join(reading(rows)) + "\n"
    write_atomic(RESULTS / "long-probe.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
