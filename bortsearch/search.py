"""Algorithm 1 of ALGORITHM.md as pure functions of an `evaluate` callable.

    proxies for Ξ and T → sort by p̂ → ⌈|Ξ|/ε⌉ intervals → one representative each
    → evaluate (train s steps per θ, measure ê) → W-coefficient → arg-max + Pareto front

Nothing here trains: `algorithm1` takes `evaluate(archs) -> {arch: Evaluation}`,
so it can be tested with a synthetic error, and a distributed evaluator can be
plugged in without touching the algorithm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from bortsearch.arch import Arch

DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclasses.dataclass(frozen=True)
class Proxies:
    """p̂ and î of one architecture (î in the unit of the chosen proxy)."""

    params: int
    inference: float


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The outcome of training one candidate: ê (lowest over Θ) and the θ that gave it."""

    status: str  # DONE or FAILED
    error: float = math.nan
    best_lr: float | None = None
    reason: str = ""
    error_by_lr: tuple[tuple[float, float], ...] = ()  # ê for every θ, for the record


@dataclasses.dataclass(frozen=True)
class Row:
    """One architecture of Ξ in the results."""

    arch: Arch
    proxies: Proxies
    interval: int
    representative: bool
    status: str
    error: float
    w: float
    pareto: bool
    best_lr: float | None
    note: str


@dataclasses.dataclass(frozen=True)
class Result:
    rows: list[Row]  # sorted as Algorithm 1 sorts Ξ
    best: Row | None  # the W-optimum among eligible, constraint-satisfying candidates
    maximum_point: Proxies


def w_formula(p: Proxies, t: Proxies, error: float) -> float:
    """W = ((p̂(T) − p̂)/p̂(T)) · ((î(T) − î)/î(T)) · (1/ê), as the paper writes it."""
    return ((t.params - p.params) / t.params) * ((t.inference - p.inference) / t.inference) / error


def ineligible_reason(p: Proxies, t: Proxies) -> str:
    """Why ξ cannot be the W-optimum, or "" if it can. [ours: never take |·| of W]"""
    if p.params >= t.params:
        return "not smaller than the maximum point"
    if p.inference >= t.inference:
        return "not faster than the maximum point"
    return ""


def w_coefficient(p: Proxies, t: Proxies, error: float) -> float:
    """W for a ranked table: NaN where ξ saves nothing (see `ineligible_reason`)
    or ê is not a positive finite number."""
    if ineligible_reason(p, t) or not (math.isfinite(error) and error > 0):
        return math.nan
    return w_formula(p, t, error)


def sort_key(arch: Arch, p: Proxies):
    """Step 3's order: p̂, then î, then (D, A, H, I). [ours: the ties]"""
    return (p.params, p.inference, arch.size)


def intervals(count: int, epsilon: int) -> list[range]:
    """Consecutive index ranges of ε architectures; the last may be shorter."""
    if not 1 <= epsilon <= count:
        raise ValueError(f"epsilon must be in 1..{count}, got {epsilon=}")
    return [range(start, min(start + epsilon, count)) for start in range(0, count, epsilon)]


def known_w_part(p: Proxies, t: Proxies) -> float:
    """The part of W known before training: relative size saving × speed-up."""
    return ((t.params - p.params) / t.params) * ((t.inference - p.inference) / t.inference)


def representatives(ordered: Sequence[tuple[Arch, Proxies]], t: Proxies,
                    epsilon: int) -> list[int]:
    """Step 4: per interval, the index with the largest known part of W (earlier on ties)."""
    chosen = []
    for block in intervals(len(ordered), epsilon):
        chosen.append(max(block, key=lambda k: (known_w_part(ordered[k][1], t), -k)))
    return chosen


def pareto_front(points: Sequence[tuple[float, ...]]) -> list[bool]:
    """Non-dominated points, every objective minimised: a point is dominated if
    another is no worse in all objectives and better in one."""
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


def algorithm1(xi: Sequence[Arch], proxies: Mapping[Arch, Proxies], t: Proxies, epsilon: int,
               evaluate: Callable[[list[Arch]], Mapping[Arch, Evaluation]],
               max_params: int | None = None, max_inference: float | None = None) -> Result:
    """Run Algorithm 1 over Ξ with a given evaluator and return the scored table."""
    ordered = sorted(((a, proxies[a]) for a in xi), key=lambda ap: sort_key(*ap))
    chosen = representatives(ordered, t, epsilon)
    evaluations = evaluate([ordered[k][0] for k in chosen])
    return score(ordered, chosen, evaluations, t, epsilon, max_params, max_inference)


def score(ordered: Sequence[tuple[Arch, Proxies]], chosen: Sequence[int],
          evaluations: Mapping[Arch, Evaluation], t: Proxies, epsilon: int,
          max_params: int | None = None, max_inference: float | None = None) -> Result:
    """Step 6: W for every trained candidate, the Pareto front over (p̂, î, ê), and
    the arg-max of W among eligible candidates that meet the constraints."""
    chosen_set = set(chosen)
    done = [k for k in chosen if evaluations.get(ordered[k][0], Evaluation(FAILED)).status == DONE]
    points = [(ordered[k][1].params, ordered[k][1].inference, evaluations[ordered[k][0]].error)
              for k in done]
    on_front = dict(zip(done, pareto_front(points)))
    rows = []
    for k, (arch, p) in enumerate(ordered):
        ev = evaluations.get(arch) if k in chosen_set else None
        status = SKIPPED if k not in chosen_set else (ev.status if ev else FAILED)
        error = ev.error if ev and status == DONE else math.nan
        note = ""
        if status == FAILED:
            note = ev.reason if ev else "not evaluated"
        elif status == DONE:
            note = ineligible_reason(p, t)
            if max_params is not None and p.params > max_params:
                note = note or f"over --max-params {max_params}"
            if max_inference is not None and p.inference > max_inference:
                note = note or f"over --max-inference {max_inference:g}"
        rows.append(Row(arch, p, k // epsilon, k in chosen_set, status, error,
                        w_coefficient(p, t, error) if status == DONE else math.nan,
                        on_front.get(k, False), ev.best_lr if ev else None, note))
    eligible = [r for r in rows if r.status == DONE and not r.note and math.isfinite(r.w)]
    best = max(eligible, key=lambda r: r.w) if eligible else None  # first wins ties
    return Result(rows, best, t)
