"""A probe after bench-task's CPU run: does the search's error proxy rank the candidates
by their distilled accuracy when their brief training uses the distillation's learning
rate?

Why: in `results/task-cpu/`, the held-out KL of the candidates after the search's brief
training (s = 200 at Θ = {1e-3, 3e-3}, every best θ 1e-3) did not rank them by the dev
accuracy they reached when distilled for 300 steps at lr 1e-4 (Spearman -0.13, p = 0.72).
One suspect is Θ: a rate ten times the distillation's may damage the larger inherited
students more than the small ones, so the proxy would rank survival of a high rate.

Protocol, written before this probe ran (2026-12-06):
- The search of `results/task-cpu/` again, in a run folder of its own, changing only Θ to
  {1e-4} (the distillation's rate) and the seeds to 1 (seed 0); the same space, teacher,
  task rows, ε (so the same candidates), s = 200, batch 32, length 64.
- Measured: each candidate's held-out KL; Spearman between -KL and the candidate's seed-0
  distilled dev accuracy (`results/task-cpu/scores.csv`), with its permutation p-value,
  beside the same for the search's own KL (Θ = {1e-3, 3e-3}, 2 seeds); and the pick by W.
- Read: ρ > 0 with p < 0.05 at Θ = {1e-4} points at the default Θ for task searches (the
  next issue: a task search's Θ near the fine-tuning rate, measured on its own); otherwise
  the proxy fails at either rate. One seed: a probe, not a claim; reported either way.

    python bench/task_lr_probe.py    # needs bench-task's CPU work folder (its run)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402
from bort_minilm import SPACE, name_of  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "task-cpu"
LR = 1e-4


def ranks(run: Path, scores: pd.DataFrame) -> tuple[pd.DataFrame, tuple[float, float]]:
    table = pd.read_csv(run / "results.csv")
    done = table[table["status"] == "done"].copy()
    done["model"] = [name_of(tuple(int(x) for x in r)) for r in
                     done[["layers", "heads", "hidden", "intermediate"]].itertuples(index=False)]
    seed0 = scores[scores["seed"] == 0].set_index("model")["dev"]
    done = done[done["model"].isin(seed0.index)]
    done["dev_seed0"] = [seed0[m] for m in done["model"]]
    return done, protocol.spearman(list(-done["kl"]), list(done["dev_seed0"]))


def main() -> int:
    from bortsearch.process import setup_process
    from bortsearch.runio import cache_dir, write_atomic
    from bortsearch.search.run import SearchConfig, run_search

    setup_process()
    work = cache_dir() / "task-cpu"
    base = json.loads((RESULTS / "search.json").read_text())
    run = work / "run-lr1e-4"
    cfg = SearchConfig(space=str(SPACE), teacher=base["teacher"], task="sst2",
                       task_data=base["task_data"], seq_len=base["seq_len"],
                       batch_size=base["batch_size"], epsilon=base["epsilon"],
                       steps=base["steps"], lrs=(LR,), seeds=1)
    run_search(run, cfg, progress=True, log=print)
    scores = pd.read_csv(RESULTS / "scores.csv")
    probe, rho_probe = ranks(run, scores)
    own, rho_own = ranks(work / "run", scores)
    rows = probe[["model", "kl", "dev_seed0"]].merge(
        own[["model", "kl"]], on="model", suffixes=("_lr1e-4", "_search"))
    rows.to_csv(RESULTS / "lr-probe.csv", index=False)
    best = json.loads((run / "best.json").read_text())
    lines = ["# Probe: the error proxy at the distillation's learning rate",
             "", "Protocol and reading: `bench/task_lr_probe.py`'s docstring, written before "
             "it ran. Raw rows: `lr-probe.csv`.", "",
             "| Θ | seeds | Spearman(-KL, seed-0 distilled dev accuracy) | p | pick |",
             "|---|---|---|---|---|",
             f"| {{1e-3, 3e-3}} (the search's) | 2 | {rho_own[0]:+.2f} | {rho_own[1]:.3f} | "
             f"{'-'.join(map(str, json.loads((RESULTS / 'best.json').read_text())['size']))} |",
             f"| {{1e-4}} | 1 | {rho_probe[0]:+.2f} | {rho_probe[1]:.3f} | "
             f"{'-'.join(map(str, best['size'])) if best.get('size') else 'none'} |", ""]
    verdict = ("the default Θ is the suspect" if rho_probe[0] > 0 and rho_probe[1] < 0.05
               else "the proxy fails at either rate")
    lines.append(f"Reading (the protocol's rule): {verdict}.")
    write_atomic(RESULTS / "lr-probe.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
