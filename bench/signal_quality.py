"""`make bench-signal` (bench/signal_quality.py): does training decide the search's answer, and above noise?

For a space and a teacher, runs the real search (`run_search`) twice over the same
candidates with a grid of learning rates: with s steps and N seeds, and with 5·s
steps and one seed, so the journals hold, per candidate, seed and θ, ê and KL
after s and after 5·s steps. From it, for each configuration (error
metric × Θ ⊆ grid × initialisation) it prints:

- Spearman(ê at s, ê at 5·s): does brief training rank candidates as longer does;
- Spearman(ê seed 0, ê seed 1) at s: does the ranking survive another seed;
- the fraction of neighbour differences (candidates sorted by ê) above the median
  seed standard deviation;
- Spearman(W, size·speed part) at s: 1.0 means W ignores the training;
- Spearman(W at s, W at 5·s): the criterion for choosing the error metric;
- whether the W-optimum at s is the arg-max of the untrained part, and whether
  it is the W-optimum after 5·s.

Spaces: `demo` (search_spaces/demo.toml, the embedded corpus, the demo teacher),
`narrow` (search_spaces/narrow.toml, WikiText-2 from ../shared/data when present,
else the embedded corpus, its maximum point trained 800 steps) and `bort_small`
(search_spaces/bort_small.toml, the reference teacher of bench/teacher_reference.py
on the Gutenberg books). Not a test: it
asserts nothing. Usage: python bench/signal_quality.py [demo|narrow ...] [--steps S]
"""  # noqa: E501 -- the first line is the --help description (argparse below)

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
GRID = (1e-3, 3e-3, 1e-2)
GUTENBERG = ROOT.parent / "shared" / "data" / "gutenberg" / "train.txt"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # teacher_reference, for bort_small


def run(space: str, init: str, steps: int, seeds: int, epsilon: int | None, out: Path,
        grid=GRID, **extra) -> Path:
    """The search's run folder for these settings (run, or resumed from the cache);
    `extra`: more `SearchConfig` settings (e.g. halving), named in the folder."""
    from bortsearch.search.run import SearchConfig, run_search

    corpus = (str(WIKI),) if space != "demo" and WIKI.is_file() else None
    teacher = None
    if space == "bort_small":  # the reference teacher (bench/teacher_reference.py) and its books
        from teacher_reference import default_out

        teacher = str(default_out("cpu") / "stage2")
        corpus = (str(GUTENBERG),)
        if not (Path(teacher) / "bortsearch.json").is_file():
            sys.exit(f"no reference teacher in {teacher}: run `make teacher-reference` first")
    cfg = SearchConfig(space=str(ROOT / "search_spaces" / f"{space}.toml"), corpus=corpus,
                       teacher=teacher, steps=steps, lrs=tuple(grid), seeds=seeds, init=init,
                       epsilon=epsilon, teacher_steps=600 if space == "demo" else 800,
                       **{"halving": None, **extra})  # every trial to s unless asked
    lrs = "" if tuple(grid) == GRID else "-lr" + "_".join(f"{x:g}" for x in grid)
    more = "".join(f"-{k}{v}" for k, v in sorted(extra.items()) if v is not None)
    run_dir = out / f"{space}-{init}-s{steps}-n{seeds}-e{epsilon}{lrs}{more}"
    t0 = time.perf_counter()
    run_search(run_dir, cfg, progress=False, log=lambda *a: None)
    print(f"  [{run_dir.name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    return run_dir


def trials(run_dir: Path) -> dict:
    """{arch: [(lr, seed, ce, kl), ...]} from a run's journal."""
    out = {}
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "done":
            out[tuple(e["arch"])] = [tuple(t) for t in e["trials"]]
    return out


def analyse(short_dir: Path, long_dir: Path, lrs, metric: str) -> dict:
    import pandas as pd

    from bortsearch.search.algorithm import summarise
    from bortsearch.search.audit import spearman

    t = json.loads((short_dir / "best.json").read_text())["maximum_point"]
    table = pd.read_csv(short_dir / "results.csv")
    proxy = {(r.layers, r.heads, r.hidden, r.intermediate): (r.params, r.inference)
             for r in table.itertuples()}
    runs = {"short": trials(short_dir), "long": trials(long_dir)}
    archs = sorted(a for a in runs["short"] if a in runs["long"] and proxy[a][0] < t["params"])

    def err(phase, a, seeds=None):
        rows = [x for x in runs[phase][a] if seeds is None or x[1] in seeds]
        return summarise(rows, list(lrs), metric).error

    def known(a):
        p, i = proxy[a]
        return (t["params"] - p) / t["params"] * (t["inference"] - i) / t["inference"]

    n_seeds = 1 + max(x[1] for a in archs for x in runs["short"][a])
    short = [err("short", a) for a in archs]
    long = [err("long", a) for a in archs]
    s0 = [err("short", a, {0}) for a in archs]
    s1 = [err("short", a, {1}) for a in archs] if n_seeds > 1 else s0
    sd = [abs(x - y) / math.sqrt(2) for x, y in zip(s0, s1)]
    order = np.argsort(short)
    gaps = np.diff(np.asarray(short)[order])
    w_short = [known(a) / e for a, e in zip(archs, short)]
    w_long = [known(a) / e for a, e in zip(archs, long)]
    k = [known(a) for a in archs]
    return {
        "n": len(archs),
        "short_vs_long": spearman(short, long),
        "seed_vs_seed": spearman(s0, s1),
        "above_noise": float(np.mean(gaps > np.median(sd))) if n_seeds > 1 else math.nan,
        "w_vs_size_speed": spearman(w_short, k),
        "w_short_vs_long": spearman(w_short, w_long),
        "pick_is_untrained_argmax": int(np.argmax(w_short)) == int(np.argmax(k)),
        "pick_equals_long_pick": int(np.argmax(w_short)) == int(np.argmax(w_long)),
        "pick": list(archs[int(np.argmax(w_short))]),
        "long_pick": list(archs[int(np.argmax(w_long))]),
    }


def main(argv=None) -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spaces", nargs="*", default=["demo", "narrow"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epsilon", type=int, default=None, help="default: about 12 candidates")
    p.add_argument("--inits", default="random,teacher")
    p.add_argument("--lrs", default=",".join(f"{x:g}" for x in GRID),
                   help="the grid of θ to train; every subset is analysed")
    p.add_argument("--out", default=str(ROOT / "runs" / "signal"))
    args = p.parse_args(argv)
    import os

    print(f"bortsearch signal benchmark — {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{os.getloadavg()[0]:.1f}; s = {args.steps}, long = {5 * args.steps}, "
          f"{args.seeds} seeds at s and one at 5·s, "
          f"ε {args.epsilon or 'default (about 12 candidates)'}")
    header = (f"{'space':<5} {'init':<7} {'Θ':<18} {'err':<3} {'n':>3} {'s~5s':>6} "
              f"{'seed~seed':>9} {'>noise':>6} {'W~size·speed':>12} {'W s~5s':>7} "
              f"{'untrained':>9} {'=long':>6}")
    for space in args.spaces:
        for init in args.inits.split(","):
            grid = tuple(float(x) for x in args.lrs.split(","))
            run_dir = run(space, init, args.steps, args.seeds, args.epsilon, Path(args.out), grid)
            long_dir = run(space, init, 5 * args.steps, 1, args.epsilon, Path(args.out), grid)
            print(header)
            thetas = [c for n in range(1, len(grid) + 1) for c in itertools.combinations(grid, n)]
            for lrs, metric in itertools.product(thetas, ("ce", "kl")):
                r = analyse(run_dir, long_dir, lrs, metric)
                theta = "{" + ",".join(f"{x:g}" for x in lrs) + "}"
                print(f"{space:<5} {init:<7} {theta:<18} {metric:<3} {r['n']:>3} "
                      f"{r['short_vs_long']:>6.2f} {r['seed_vs_seed']:>9.2f} "
                      f"{r['above_noise']:>6.2f} {r['w_vs_size_speed']:>12.2f} "
                      f"{r['w_short_vs_long']:>7.2f} {str(r['pick_is_untrained_argmax']):>9} "
                      f"{str(r['pick_equals_long_pick']):>6}")
            b = json.loads((run_dir / "best.json").read_text())["diagnostics"]
            print(f"  H_T {b['teacher_entropy']:.3f}, unigram ê {b['unigram_ce']:.3f} "
                  f"(KL {b['unigram_kl']:.3f})\n")


if __name__ == "__main__":
    main()
