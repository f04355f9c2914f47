"""Does inheriting the teacher's most important units (or its best layers) give
candidates a better start, and does it change the search's answer?

Decided before it was run: on a space, the real search at the tool's defaults (s = 200,
Θ = {1e-3, 3e-3}, 2 seeds, halving 0.5, teacher initialisation) four times, changing only
what a candidate inherits:

    first/uniform (today's default), importance/uniform, first/measured, importance/measured

(`--inherit`, `--inherit-layers`). Algorithm 1's representatives depend only on the
untrained proxies, so every run trains the same candidates: each candidate's error (KL to
the teacher at its best θ after s steps, mean over the 2 seeds, with its standard error)
is compared with the default's, paired, as a difference with the standard error of both
seeds' spreads. Reported per setting: the mean paired difference over candidates with its
standard error (over candidates), how many candidates are better or worse beyond 2
standard errors, Spearman between its candidate ranking and the default's, and its pick.
A setting would become the default only where it lowers the mean KL beyond 2 standard
errors on every space measured and never raises a candidate's beyond 2; one space is not
enough to change it. Raw per-candidate rows go to bench/results/inherit-SPACE.csv, the
summary to bench/results/inherit.md.

Usage: python bench/inherit_bench.py [demo] [--epsilon 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from signal_quality import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [("first", "uniform"), ("importance", "uniform"), ("first", "measured"),
            ("importance", "measured")]


def measure(space: str, epsilon: int | None, out: Path) -> list[dict]:
    import pandas as pd

    rows = []
    for inherit, layers in SETTINGS:
        t0, c0 = time.time(), time.process_time()
        d = run(space, "teacher", 200, 2, epsilon, out, (1e-3, 3e-3), halving=0.5,
                inherit=inherit, inherit_layers=layers)
        cost = {"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0,
                "load_average": os.getloadavg()[0]}
        best = json.loads((d / "best.json").read_text())
        for r in pd.read_csv(d / "results.csv").itertuples():
            if r.status == "done":
                rows.append({"space": space, "inherit": inherit, "layers": layers,
                             "arch": f"{r.layers}-{r.heads}-{r.hidden}-{r.intermediate}",
                             "kl": r.error, "kl_se": r.error_se, "w": r.w_coefficient,
                             "pick": "-".join(map(str, best["size"])), **cost})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from protocol import spearman

    df = pd.DataFrame(rows)
    base = df[(df.inherit == "first") & (df.layers == "uniform")].set_index("arch")
    out = []
    for (inherit, layers), g in df.groupby(["inherit", "layers"], sort=False):
        g = g.set_index("arch").loc[base.index]
        d = g.kl - base.kl
        se = np.sqrt(g.kl_se ** 2 + base.kl_se ** 2)
        rho, p = spearman(list(base.kl), list(g.kl), n=2000)
        out.append({"space": g.space.iloc[0], "setting": f"{inherit}/{layers}",
                    "candidates": len(g), "mean_kl": float(g.kl.mean()),
                    "mean_diff": float(d.mean()),
                    "mean_diff_se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1
                    else float("nan"),
                    "better": int((d < -2 * se).sum()), "worse": int((d > 2 * se).sum()),
                    "spearman": rho, "spearman_p": p, "pick": g.pick.iloc[0],
                    "cpu_s": float(g.cpu_s.iloc[0]), "load": float(g.load_average.iloc[0])})
    return out


def report(summary: list[dict], rows: list[dict]) -> str:
    """inherit.md: the summary table, then each candidate's KL against the default's."""
    lines = ["# What a candidate inherits (`bench/inherit_bench.py`)", "",
             "The search at the defaults four times per space, changing only `--inherit` and "
             "`--inherit-layers`; each candidate's KL to the teacher after s = 200 steps (mean of "
             "2 seeds at its best θ) against the default's (first/uniform). Raw rows: "
             "`inherit-SPACE.csv` (with each run's CPU seconds and load average; the runs were "
             "not interleaved, so their times are not compared). With 2 seeds a candidate's "
             "standard error has one degree of freedom: the counts beyond 2 s.e. are the rule "
             "stated before the run, and loose as a test. Spearman over so few candidates "
             "spread this far in KL says little; its permutation p-value is given.", "",
             "| space | setting | candidates | mean KL | Δ against first/uniform (s.e.) | "
             "better / worse beyond 2 s.e. | Spearman with first/uniform (p) | pick |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['space']} | {r['setting']} | {r['candidates']} | {r['mean_kl']:.4f} "
                     f"| {r['mean_diff']:+.4f} ({r['mean_diff_se']:.4f}) | {r['better']} / "
                     f"{r['worse']} | {r['spearman']:+.2f} ({r['spearman_p']:.2f}) | "
                     f"{r['pick']} |")
    base = {(r["space"], r["arch"]): r["kl"] for r in rows
            if (r["inherit"], r["layers"]) == ("first", "uniform")}
    lines += ["", "Each candidate's KL, and the change against first/uniform:", "",
              "| space | candidate | " + " | ".join(f"{i}/{l}" for i, l in SETTINGS) + " |",
              "|---|---|" + "---|" * len(SETTINGS)]
    for space, arch in base:
        cells = []
        for i, l in SETTINGS:
            r = next(x for x in rows if (x["space"], x["arch"], x["inherit"], x["layers"])
                     == (space, arch, i, l))
            change = 100 * (r["kl"] / base[space, arch] - 1)
            cells.append(f"{r['kl']:.4f} ± {r['kl_se']:.4f}"
                         + ("" if (i, l) == ("first", "uniform") else f" ({change:+.1f}%)"))
        lines.append(f"| {space} | {arch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    import pandas as pd

    from bortsearch.runio import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spaces", nargs="*", default=["demo"])
    ap.add_argument("--epsilon", type=int, default=6)
    ap.add_argument("--out", type=Path, default=cache_dir() / "bench" / "inherit")
    ap.add_argument("--report-only", action="store_true",
                    help="remake inherit.md from the committed inherit-SPACE.csv files")
    args = ap.parse_args()
    results = ROOT / "bench" / "results"
    summary, every = [], []
    for space in args.spaces:
        csv = results / f"inherit-{space}.csv"
        if args.report_only:
            rows = pd.read_csv(csv).to_dict("records")
        else:
            rows = measure(space, args.epsilon, args.out)
            pd.DataFrame(rows).to_csv(csv, index=False)
        summary += summarise(rows)
        every += rows
    text = report(summary, every)
    (results / "inherit.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
