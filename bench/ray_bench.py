"""The overhead of Ray: the same small search locally and on a local Ray cluster
with 1 and 2 workers (tasks declaring all CPUs, or one each).

    python bench/ray_bench.py [--steps 30]

Prints wall times, the overhead against `local`, and the machine's load. Every
run starts cold (a fresh run folder; the persistent compilation cache is warm for
all three after the first), so the Ray figures include starting the cluster,
putting the teacher, data and reference into the object store, and each worker's
start-up (importing JAX and bortsearch, compiling its candidate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "bortsearch")


def main():
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp())
    (work / "corpus.txt").write_text(("the quick brown fox jumps over the lazy dog and a "
                                      "transformer encoder stacks attention " * 40 + "\n\n") * 20)
    base = [EXE, "search", "--space", str(HERE / "search_spaces/demo.toml"), "--teacher",
            str(HERE / "tests/golden/bert_tiny"), "--corpus", str(work / "corpus.txt"),
            "--steps", str(args.steps), "--batch-size", "8", "--seq-len", "32",
            "--epsilon", "9", "--quiet"]
    cpus = os.cpu_count() or 1
    runs = {"local (warm-up)": [], "local": [],
            "ray, 1 worker": ["--executor", "ray", "--worker-cpus", str(cpus)],
            f"ray, {cpus} workers": ["--executor", "ray", "--worker-cpus", "1"]}
    print(f"ray overhead — demo space, ε = 9 (4 candidates), s = {args.steps}, 2 seeds × 2 θ; "
          f"{cpus} CPUs; load average {os.getloadavg()[0]:.1f}")
    walls = {}
    for name, extra in runs.items():
        run = work / name.replace(" ", "_").replace(",", "")
        t0 = time.perf_counter()
        r = subprocess.run(base + ["--run", str(run)] + extra, capture_output=True, text=True)
        walls[name] = time.perf_counter() - t0
        if r.returncode:
            print(f"{name}: failed\n{r.stderr}")
            return
        same = (run / "results.csv").read_bytes() == \
            (work / "local" / "results.csv").read_bytes() if name != "local (warm-up)" else True
        over = walls[name] - walls.get("local", walls[name])
        print(f"{name:<18} wall {walls[name]:6.1f} s   overhead vs local {over:+6.1f} s   "
              f"results.csv identical to local: {same}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
