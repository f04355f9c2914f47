"""Does inheriting by importance change the student bench-bort ends with? The pick of each
setting's search on bench-bort's space, pretrained and fine-tuned by bench-bort's CPU recipe.

Decided before it was run (and before the importance/uniform search of
`bench/inherit_bench.py bort_minilm` had finished): for each setting, first/uniform (bench-
bort's own search, its run folder rebuilt by `bench/bort_minilm.py`) and importance/uniform
(the search `inherit_bench.py` ran), the setting's pick is

- pretrained by bench-bort's CPU profile (`bort_minilm.PROFILES["cpu"]`: 50 steps of 16 × 128,
  lr 5e-4, from the teacher's weights, inheriting as its search did: by importance, the
  teacher rewired, under importance/uniform), pretraining seeds 0 and 1, each in a group of
  its own, from a copy of the search's run folder, so both settings run at this commit;
- fine-tuned on bench-bort's SST-2 cut (500 training rows; lr 1e-4; 1 to 3 epochs chosen on
  the 250 held-out training rows by the mean over 5 fine-tuning seeds; dev read once, at that
  choice), with bench-bort's own functions.

Reported per setting and pretraining seed: the held-out distillation cross-entropy after
pretraining (the KL to the teacher plus the teacher's entropy, the same batches and teacher
for both settings, so their difference is the difference in KL) and the masked-token
accuracy; the SST-2 dev score with its two-level bootstrap interval; the test that decides,
`protocol.decide`: importance − first, "wins" / "loses" / "cannot tell" by its 95% interval.
first/uniform's scores are also set beside the ones bench-bort committed for the same student
(`bench/results/bort_small-cpu/finetune.csv`), a reproduction check across commits.
The rule for the default is `inherit_bench.py`'s (the KL after s steps on every space); this
probe cannot change it, and says whether the search's setting reaches the student users get.
At this budget the pick sits near SST-2's constant answer (bench-bort: 54.2 against 50.9), so
"cannot tell" is the likely outcome and says little.

Usage: python bench/inherit_pick.py   (results: bench/results/inherit-pick.{csv,md})
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402
from bort_minilm import PROFILES, finetune_model, name_of, pretrain_config, task_folders  # noqa: E402
from inherit_bench import bort_dir, default_out  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def runs() -> dict[str, Path]:
    from bortsearch.runio import cache_dir

    c = cache_dir()
    return {"first/uniform": c / "bort-minilm-cpu" / "run",
            "importance/uniform": bort_dir(default_out(), "importance", "uniform")}


def measure(work: Path, progress: bool) -> list[dict]:
    from bortsearch.search.student import pretrain_many

    p = PROFILES["cpu"]
    cfg = pretrain_config(p)
    work.mkdir(parents=True, exist_ok=True)
    held, final = task_folders(work, ("sst2",), p)
    rows = []
    for setting, run in runs().items():
        if not (run / "best.json").is_file():
            sys.exit(f"{run}: no finished search; run bench/bort_minilm.py --profile cpu "
                     f"--search-from bench/results/bort_small-cpu and bench/inherit_bench.py "
                     f"bort_minilm first")
        size = tuple(json.loads((run / "best.json").read_text())["size"])
        for seed in (0, 1):
            tag = f"{setting.replace('/', '-')}-seed{seed}"
            copy = work / "runs" / tag
            if not (copy / "best.json").is_file():
                shutil.copytree(run, copy, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("pretrain", "candidates"))
            t0 = time.process_time()
            student = work / "students" / tag
            summary = pretrain_many(copy, {size: student}, dataclasses.replace(cfg, seed=seed),
                                    progress=progress)[0]
            r = finetune_model(student, "sst2", held, final, work / "ft" / tag, p, progress)
            for ft_seed, score in enumerate(r["dev"]):
                rows.append({"setting": setting, "pick": name_of(size), "pretrain_seed": seed,
                             "ft_seed": ft_seed, "dev": score, "lr": r["lr"],
                             "epochs": r["epochs"],
                             "heldout_best": r["heldout"][(r["lr"], r["epochs"])],
                             "dev_majority": r["dev_majority"],
                             "inherit": summary.get("inherit"),
                             "heldout_kd_ce": summary["heldout_kd_ce"],
                             "heldout_mask_accuracy": summary["heldout_mask_accuracy"],
                             "cpu_s": time.process_time() - t0})
    return rows


def report(rows: list[dict]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)

    def trials(setting):
        sub = df[df.setting == setting]
        return {s: list(g.dev) for s, g in sub.groupby("pretrain_seed")}

    lines = ["# The pick of each inheritance setting, pretrained and fine-tuned "
             "(`bench/inherit_pick.py`)", "",
             "bench-bort's space and CPU recipe (50 pretraining steps of 16 × 128, SST-2's "
             "500-row cut, 5 fine-tuning seeds, 2 pretraining seeds); the protocol is the "
             "script's docstring. Raw rows: `inherit-pick.csv`.", "",
             "| setting | pick | pretraining seed | held-out distillation CE | masked-token "
             "accuracy | epochs chosen | SST-2 dev (mean of 5) |", "|---|---|---|---|---|---|---|"]
    for (setting, seed), g in df.groupby(["setting", "pretrain_seed"], sort=False):
        lines.append(f"| {setting} | {g.pick.iloc[0]} | {seed} | {g.heldout_kd_ce.iloc[0]:.4f} "
                     f"| {g.heldout_mask_accuracy.iloc[0]:.4f} | {g.epochs.iloc[0]} "
                     f"| {g.dev.mean():.1f} |")
    lines.append("")
    for setting in df.setting.unique():
        s = protocol.score_interval(trials(setting))
        lines.append(f"- {setting}: SST-2 dev {s['mean']:.1f} (95% interval {s['lo']:.1f} to "
                     f"{s['hi']:.1f}); the best constant answer {df.dev_majority.iloc[0]:.1f}.")
    d = protocol.decide(trials("importance/uniform"), trials("first/uniform"))
    lines.append(f"- **The test that decides**, importance − first: {d['margin']:+.1f} points "
                 f"(95% interval {d['lo']:+.1f} to {d['hi']:+.1f}): **{d['verdict']}**.")
    committed = pd.read_csv(RESULTS / "bort_small-cpu" / "finetune.csv")
    first = df[df.setting == "first/uniform"]
    pick = first.pick.iloc[0]
    was = committed[(committed.model == pick) & committed.variant.isin(["seed0", "seed1"])]
    if len(was):
        now = sorted(first.dev.round(6))
        same = now == sorted(was.dev.round(6))
        lines.append(f"- Reproduction: first/uniform's pick {pick} scored "
                     f"{'the same as' if same else 'differently from'} bench-bort's committed "
                     f"run, trial for trial ({first.dev.mean():.2f} against "
                     f"{was.dev.mean():.2f}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()
    import argparse

    import pandas as pd

    from bortsearch.runio import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=cache_dir() / "bench" / "inherit-pick")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    csv = RESULTS / "inherit-pick.csv"
    if args.report_only:
        rows = pd.read_csv(csv).to_dict("records")
    else:
        rows = measure(args.out, not args.quiet)
        pd.DataFrame(rows).to_csv(csv, index=False)
    text = report(rows)
    (RESULTS / "inherit-pick.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
