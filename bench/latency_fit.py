"""How well does a latency model fitted on a few measured architectures predict the
rest, in each runtime? (`--inference fitted`.)

    python bench/latency_fit.py [--space S] [--rounds 3] [--repeats 15] [--out DIR]

Measures every architecture of the space (encoder scope, batch 1, length 128, every
core: what `search --inference measured` measures) in XLA, ONNX Runtime float32 and
ONNX Runtime int8, `--rounds` times, each round in a new shuffled order so that load
drifts hit all architectures alike; the measurements are kept in DIR/latency.json, so
an interrupted run resumes. Then, for each feature set below, the model is fitted
on what the search measures (`latency_model.sample`: 8 architectures of Ξ + the
maximum point T) and judged on every other architecture: the error of the predicted
speed-up of T over it against the measured one (the median over rounds), median and
worst, and on `--pick` (the bort_small search's pick). The rounds' own spread is the
floor: the speed-up of one round against the median of the others.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CACHE = Path(os.environ.get("BORTSEARCH_CACHE", Path.home() / ".cache" / "bortsearch"))
RUNTIMES = ("xla", "onnx", "onnx-int8")
B, L, SCOPE = 1, 128, "encoder"


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--space", default=str(HERE.parent / "search_spaces/bort_small.toml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--pick", default="2,4,256,512")
    p.add_argument("--out", default=str(CACHE / "bench/latency-fit"))
    return p.parse_args()


def measure(archs, args) -> dict:
    """{runtime: {arch key: [median seconds per round]}}, resumed from the file."""
    from bortsearch.deploy.latency import measure_latency

    path = Path(args.out) / "latency.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    got = json.loads(path.read_text()) if path.is_file() else {}
    for r in range(args.rounds):
        order = [(rt, a) for rt in RUNTIMES for a in archs]
        random.Random(r).shuffle(order)
        todo = [(rt, a) for rt, a in order if len(got.get(rt, {}).get(key(a), [])) <= r]
        t0 = time.time()
        for n, (rt, a) in enumerate(todo):
            m = measure_latency(a, B, L, repeats=args.repeats, scope=SCOPE, runtime=rt)
            got.setdefault(rt, {}).setdefault(key(a), []).append(m["median_s"])
            if n == len(todo) - 1:  # the round's load and time, for the report
                got.setdefault("rounds", []).append(
                    {"load": os.getloadavg()[0], "seconds": time.time() - t0})
            if n % 20 == 0 or n == len(todo) - 1:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(got))
                os.replace(tmp, path)
                print(f"round {r + 1}: {n + 1}/{len(todo)} load {os.getloadavg()[0]:.1f}",
                      file=sys.stderr, flush=True)
    return got


def key(a) -> str:
    return "-".join(map(str, a.size))


def feature_sets():
    """name -> features(arch): today's model (`latency_model.features`) and the two
    it replaced, for comparison."""
    from bortsearch.model.latency_model import features
    from bortsearch.model.proxies import forward_flops

    def before(a):  # the model until 2026-11-28: call, D, FLOPs, D·A·L²
        return np.array([1.0, a.layers, float(forward_flops(a, B, L, SCOPE)),
                         float(a.layers * a.heads * B * L * L)])

    return {"before (call, D, FLOPs, D·A·L²)": before,
            "split FLOPs (call, D, weight FLOPs, attention FLOPs, D·A·L²)":
                lambda a: features(a, B, L, SCOPE)[:5],
            "today: split + activations D·L·(H+I)": lambda a: features(a, B, L, SCOPE)}


def maximum_point(archs):
    from bortsearch.model.proxies import forward_flops

    return max(archs, key=lambda a: forward_flops(a, B, L, SCOPE))


def evaluate(archs, times, pick, feats) -> dict:
    from bortsearch.model.latency_model import _nnls, sample

    T = maximum_point(archs)
    fit_on = sample([a for a in archs if a != T], 8, B, L, SCOPE) + [T]
    held = [a for a in archs if a not in fit_on]
    med = {a: statistics.median(times[key(a)]) for a in archs}
    x = np.stack([feats(a) for a in fit_on])
    c = _nnls(x, np.array([med[a] for a in fit_on]))
    pred = {a: float(feats(a) @ c) for a in archs}
    err = {a: (pred[T] / pred[a]) / (med[T] / med[a]) - 1 for a in held + [pick] if a != T}
    errs = np.abs([err[a] for a in held])
    return {"median": float(np.median(errs)), "max": float(errs.max()),
            "worst": key(max(held, key=lambda a: abs(err[a]))), "pick": err[pick],
            "coef": c.tolist()}


def floor(archs, times, pick) -> dict:
    """Round-to-round spread of the measured speed-up of T over each architecture:
    each round's against the median of the others (what a perfect model would miss):
    the median and worst over the architectures and rounds, and the pick's median."""

    T = maximum_point(archs)
    rounds = len(times[key(T)])
    devs, pick_devs = [], []
    for a in archs:
        if a == T:
            continue
        for r in range(rounds):
            rest = [i for i in range(rounds) if i != r]
            one = times[key(T)][r] / times[key(a)][r]
            others = statistics.median(times[key(T)][i] for i in rest) / \
                statistics.median(times[key(a)][i] for i in rest)
            (pick_devs if a == pick else devs).append(abs(one / others - 1))
    return {"median": float(np.median(devs)), "max": float(np.max(devs)),
            "pick": float(np.median(pick_devs)) if pick_devs else float("nan")}


def main():
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    args = parse()
    os.environ["JAX_PLATFORMS"] = "cpu"
    from bortsearch import load_space

    archs = list(load_space(args.space).architectures(vocab_size=8192))
    pick = next(a for a in archs if key(a) == args.pick.replace(",", "-"))
    got = measure(archs, args)
    loads = [r["load"] for r in got.get("rounds", [])] or [float("nan")]
    lines = [f"`bench/latency_fit.py` on {Path(args.space).name} ({len(archs)} architectures; "
             f"{args.rounds} rounds, median of {args.repeats} calls each, every core; "
             f"load {min(loads):.1f}–{max(loads):.1f} at the rounds' ends)", "",
             "| runtime | model | held-out median error | held-out worst | pick "
             f"⟨{args.pick}⟩ |", "|---|---|---|---|---|"]
    res = {}
    for rt in RUNTIMES:
        fl = floor(archs, got[rt], pick)
        lines.append(f"| {rt} | round-to-round spread (the floor) | {100 * fl['median']:.1f}% | "
                     f"{100 * fl['max']:.0f}% | {100 * fl['pick']:.1f}% |")
        for name, feats in feature_sets().items():
            e = evaluate(archs, got[rt], pick, feats)
            res.setdefault(rt, {})[name] = e
            lines.append(f"| {rt} | {name} | {100 * e['median']:.1f}% | {100 * e['max']:.0f}% "
                         f"({e['worst']}) | {100 * e['pick']:+.1f}% |")
    (Path(args.out) / "latency_fit.json").write_text(json.dumps(res, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
