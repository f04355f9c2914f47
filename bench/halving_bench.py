"""Less work for the same answer? Successive halving over Θ against the full search.

For each space (`demo`, `narrow` on WikiText-2, `bort_small` on the Gutenberg books with
the reference teacher: bench/signal_quality.py's settings), the search at the defaults
(s = 200, Θ = {1e-3, 3e-3}, 2 seeds, teacher initialisation, ε default) twice: every
trial to s, and with `--halving F`. Prints per space the two picks, whether they agree,
and if not how far the halving pick's W is from the full run's optimum in the full run's
seed noise; the work (optimiser steps over all trials, from the journal's
`trial_steps`), the training and compile seconds, and the search's wall time; and how
often a θ was stopped, and whether the stopped θ was ever the full run's best θ.

Usage: python bench/halving_bench.py [demo narrow bort_small] [--halving 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from signal_quality import run  # noqa: E402


def journal(run_dir: Path) -> dict:
    out = {}
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "done" and e.get("phase", "search") == "search":
            out[tuple(e["arch"])] = e
    return out


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    import pandas as pd

    from bortsearch.runio import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spaces", nargs="*", default=["demo", "narrow", "bort_small"])
    ap.add_argument("--halving", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=cache_dir() / "bench" / "signal")
    args = ap.parse_args()
    rows = []
    for space in args.spaces:
        runs, wall = {}, {}
        for name, extra in (("full", {}), ("halving", {"halving": args.halving})):
            t0 = time.perf_counter()
            runs[name] = run(space, "teacher", 200, 2, None, args.out, (1e-3, 3e-3), **extra)
            wall[name] = time.perf_counter() - t0
        best = {k: json.loads((v / "best.json").read_text()) for k, v in runs.items()}
        table = pd.read_csv(runs["full"] / "results.csv")
        w = {(r.layers, r.heads, r.hidden, r.intermediate): (r.w_coefficient, r.error, r.error_se)
             for r in table.itertuples() if r.status == "done"}
        picks = {k: tuple(b["size"]) for k, b in best.items()}
        gap = ""
        if picks["full"] != picks["halving"] and picks["halving"] in w:
            (w0, e0, s0), (w1, e1, s1) = w[picks["full"]], w[picks["halving"]]
            # W ∝ 1/error: its relative noise is the error's; both candidates' noise
            sigma = math.hypot(w0 * s0 / e0, w1 * s1 / e1)
            gap = f"{(w0 - w1) / sigma:.1f} σ below the full optimum's W"
        # the candidates of each run's answer (a cached run may hold more: re-scored)
        trained = {k: {(r.layers, r.heads, r.hidden, r.intermediate)
                       for r in pd.read_csv(v / "results.csv").itertuples() if r.status == "done"}
                   for k, v in runs.items()}
        done = {k: {a: e for a, e in journal(v).items() if a in trained[k]}
                for k, v in runs.items()}
        work = {k: sum(e["timing"].get("trial_steps", 0) or 2 * 2 * 200  # older: all to s
                       for e in d.values() if "timing" in e) for k, d in done.items()}
        stopped = [e for e in done["halving"].values() if e["timing"].get("halved_at")]
        wrong = [a for a, e in done["halving"].items() if e["timing"].get("halved_at")
                 and a in done["full"] and any(lr == done["full"][a]["best_lr"]
                                               for lr, _ in e["timing"]["dropped"])]
        secs = {k: (sum(e["timing"]["train_s"] for e in d.values()),
                    sum(e["timing"]["compile_s"] for e in d.values())) for k, d in done.items()}
        rows.append({
            "space": space, "candidates": len(done["full"]),
            "pick (full)": ",".join(map(str, picks["full"])),
            "pick (halving)": ",".join(map(str, picks["halving"])),
            "same pick": picks["full"] == picks["halving"], "if not": gap,
            "θ stopped": f"{len(stopped)}/{len(done['halving'])}",
            "stopped θ was the full run's best": len(wrong),
            "trial steps": f"{work['halving']:,} / {work['full']:,} "
                           f"({100 * (1 - work['halving'] / work['full']):.0f}% saved)",
            "train s": f"{secs['halving'][0]:.0f} / {secs['full'][0]:.0f}",
            "compile s": f"{secs['halving'][1]:.0f} / {secs['full'][1]:.0f}",
        })
    print(f"\nhalving at {args.halving:g}·s (θ stopped when worse by > 3 seed s.e.); "
          f"halving / full:")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
