"""Does bfloat16 training change the search's answer? (`--dtype bfloat16`)

Runs the demo search (`search_spaces/demo.toml`, the embedded corpus, every default:
ε = 3 → 12 candidates, s = 200, 2 seeds × Θ = {1e-3, 3e-3}, teacher init) once with
float32 compute and once with bfloat16 compute, then compares the trained candidates:
Spearman of ê (the KD cross-entropy) and of KL = ê − H_T between the two, the largest
relative change of either, and the W-optimum of each. Held-out ê is measured in float32
in both runs, so the difference is the training's precision alone.

    python bench/dtype_demo.py [--steps N] [--out runs/bench-dtype]

The runs resume if interrupted (they are ordinary search runs). bfloat16 is meant for
GPUs and TPUs; on a CPU it runs, more slowly. Not a test: its numbers depend on the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import pandas as pd

from bortsearch.search.run import SearchConfig, run_search

ROOT = Path(__file__).resolve().parent.parent


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=SearchConfig.steps)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-dtype"))
    args = p.parse_args()
    import jax

    print(f"dtype benchmark — {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{os.getloadavg()[0]:.1f}, device {jax.devices()[0].device_kind}")
    tables, picks = {}, {}
    for dtype in ("float32", "bfloat16"):
        run = Path(args.out) / dtype
        cfg = SearchConfig(space=str(ROOT / "search_spaces" / "demo.toml"), steps=args.steps,
                           dtype=dtype)
        w0, c0 = time.perf_counter(), _cpu_s()
        run_search(run, cfg, progress=False, log=lambda *a: None)
        print(f"{dtype}: {time.perf_counter() - w0:.0f} s wall, {_cpu_s() - c0:.0f} CPU-s "
              f"(0 if the run was already complete)")
        table = pd.read_csv(run / "results.csv")
        tables[dtype] = table[table["status"] == "done"].set_index(
            ["layers", "heads", "hidden", "intermediate"])
        picks[dtype] = tuple(json.loads((run / "best.json").read_text())["size"])
    a, b = tables["float32"], tables["bfloat16"].loc[tables["float32"].index]
    print(f"{len(a)} trained candidates; W-optimum float32 {picks['float32']}, "
          f"bfloat16 {picks['bfloat16']}")
    for col, name in (("ce", "ê"), ("kl", "KL = ê − H_T"), ("w_coefficient", "W")):
        rho = a[col].corr(b[col], method="spearman")
        rel = ((b[col] - a[col]).abs() / a[col].abs()).max()
        print(f"{name:>14}: Spearman {rho:.3f}, largest relative change {100 * rel:.2f}%")
    print("seed noise of the error (median standard error, float32): "
          f"{a['error_se'].median():.4f} against a median |change| of "
          f"{(b['error'] - a['error']).abs().median():.4f}")


if __name__ == "__main__":
    main()
