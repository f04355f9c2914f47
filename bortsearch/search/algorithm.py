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
from enum import StrEnum

from bortsearch.model.arch import Arch


class Status(StrEnum):
    """A candidate's state in the results: trained, failed, or not chosen to train
    (a `str`: it is written to results.csv and the journal as its value)."""

    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


DONE, FAILED, SKIPPED = Status.DONE, Status.FAILED, Status.SKIPPED


@dataclasses.dataclass(frozen=True)
class Proxies:
    """p̂ and î of one architecture (î in the unit of the chosen proxy)."""

    params: int
    inference: float


NOISE_Z = 2.0  # "within noise": W differs by less than 2 standard errors


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The outcome of training one candidate: the error W uses (mean over seeds at
    the best θ), its standard error, and every trial for the record.

    `trials` holds (θ, seed index, ê, KL, accuracy) per training run (journals
    written before the accuracy was kept: the first four); `summarise` derives
    the rest from them, so a journal of trials can be re-scored with another
    error metric without training again.
    """

    status: str  # DONE or FAILED
    error: float = math.nan
    best_lr: float | None = None
    reason: str = ""
    error_se: float = math.nan  # NaN with one seed: the noise is not measured
    ce: float = math.nan  # ê = CE(T → S) at τ = 1, mean over seeds at the best θ
    kl: float = math.nan  # KL(T ‖ S) = ê − H_T on the same positions
    trials: tuple[tuple[float, ...], ...] = ()
    # the student's held-out accuracy on the same positions (a task's rows: its labels)
    accuracy: float = math.nan


ERRORS = ("ce", "kl")


def summarise(trials, lrs, metric: str = "ce", reason: str = "") -> Evaluation:
    """An `Evaluation` from its trials: per θ the mean of `metric` over seeds; the
    θ with the lowest mean wins (the earlier of `lrs` on ties). A θ with any
    non-finite trial does not count; with none left the candidate failed."""
    if metric not in ERRORS:
        raise ValueError(f"metric must be one of {ERRORS}, got {metric=}")
    trials = tuple(tuple(t) for t in trials)
    lrs = list(lrs)
    finite = {}
    for lr in lrs:
        rows = [t for t in trials if t[0] == lr]
        if rows and all(math.isfinite(t[2]) and math.isfinite(t[3]) for t in rows):
            finite[lr] = rows
    if not finite:
        return Evaluation(FAILED, reason=reason or "no θ gave a finite error", trials=trials)
    k = 2 if metric == "ce" else 3
    best = min(finite, key=lambda lr: (_mean([r[k] for r in finite[lr]]), lrs.index(lr)))
    rows = finite[best]
    values = [r[k] for r in rows]
    se = math.nan
    if len(values) > 1:
        m = _mean(values)
        se = math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1) / len(values))
    accuracy = _mean([r[4] for r in rows]) if all(len(r) > 4 for r in rows) else math.nan
    return Evaluation(DONE, _mean(values), best, reason, se, _mean([r[2] for r in rows]),
                      _mean([r[3] for r in rows]), trials, accuracy)


def _mean(xs) -> float:
    return sum(xs) / len(xs)


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
    error_se: float = math.nan
    w_se: float = math.nan  # W · error_se / error (delta method)
    within_noise: bool = False  # W not distinguishable from the optimum's
    ce: float = math.nan
    kl: float = math.nan
    accuracy: float = math.nan
    confirmed_error: float = math.nan  # after --confirm's longer training
    confirmed_error_se: float = math.nan
    confirmed_w: float = math.nan
    confirmed_w_se: float = math.nan


@dataclasses.dataclass(frozen=True)
class Result:
    rows: list[Row]  # sorted as Algorithm 1 sorts Ξ
    best: Row | None  # the W-optimum among eligible, constraint-satisfying candidates
    maximum_point: Proxies
    confirmed: bool = False  # best was chosen by the confirmed errors


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
        w = w_coefficient(p, t, error) if status == DONE else math.nan
        done_ev = ev if ev and status == DONE else Evaluation(FAILED)
        rows.append(Row(arch, p, k // epsilon, k in chosen_set, status, error, w,
                        on_front.get(k, False), ev.best_lr if ev else None, note,
                        error_se=done_ev.error_se, w_se=w_noise(w, done_ev.error_se, error),
                        ce=done_ev.ce, kl=done_ev.kl, accuracy=done_ev.accuracy))
    eligible = [r for r in rows if _eligible(r)]
    best = max(eligible, key=lambda r: r.w) if eligible else None  # first wins ties
    rows = _mark_noise(rows, best, "w", "w_se")
    return Result(rows, _same(rows, best), t)


def w_noise(w: float, error_se: float, error: float) -> float:
    """W's standard error from the error's, by the delta method: W ∝ 1/error."""
    return w * error_se / error


def _eligible(r: Row) -> bool:
    return r.status == DONE and not r.note and math.isfinite(r.w)


def _same(rows: list[Row], row: Row | None) -> Row | None:
    return None if row is None else next(r for r in rows if r.arch == row.arch)


def within_noise(w_a: float, se_a: float, w_b: float, se_b: float) -> bool:
    """Whether two W values differ by less than NOISE_Z standard errors of their
    difference (False when the noise is not measured)."""
    spread = math.sqrt(se_a**2 + se_b**2)
    return math.isfinite(spread) and abs(w_a - w_b) < NOISE_Z * spread


def _mark_noise(rows: list[Row], best: Row | None, w: str, se: str) -> list[Row]:
    """Flag the rows whose W (field `w`) is within noise of the optimum's."""
    if best is None:
        return rows
    wb, sb = getattr(best, w), getattr(best, se)
    return [dataclasses.replace(r, within_noise=r.arch != best.arch and _eligible(r)
                                and within_noise(getattr(r, w), getattr(r, se), wb, sb))
            for r in rows]


def confirm(result: Result, k: int,
            evaluate: Callable[[list[Arch]], Mapping[Arch, Evaluation]]) -> Result:
    """Train the K best by W again (longer, by the given evaluator) and choose the
    W-optimum among them by the confirmed errors. [ours]

    The short pick is one of the K, so the confirmed choice is at least as good
    as Algorithm 1's pick when both are measured after the longer training.
    """
    top = sorted((r for r in result.rows if _eligible(r)), key=lambda r: -r.w)[:k]
    if not top:
        return result
    evaluations = evaluate([r.arch for r in top])
    t = result.maximum_point
    updated = {}
    for r in top:
        ev = evaluations.get(r.arch)
        if ev is not None and ev.status == DONE:
            w = w_coefficient(r.proxies, t, ev.error)
            updated[r.arch] = dataclasses.replace(
                r, confirmed_error=ev.error, confirmed_error_se=ev.error_se, confirmed_w=w,
                confirmed_w_se=w_noise(w, ev.error_se, ev.error))
    rows = [updated.get(r.arch, r) for r in result.rows]
    confirmed = [r for r in rows if math.isfinite(r.confirmed_w)]
    if not confirmed:
        return dataclasses.replace(result, rows=rows)
    best = max(confirmed, key=lambda r: r.confirmed_w)
    rows = _mark_noise(rows, best, "confirmed_w", "confirmed_w_se")
    return Result(rows, _same(rows, best), t, confirmed=True)
