"""Algorithm 1 without training: a synthetic error stands in for the evaluator."""

import itertools
import math

import numpy as np
import pytest

from bortsearch import Arch
from bortsearch.search.algorithm import (
    DONE,
    FAILED,
    Evaluation,
    Proxies,
    algorithm1,
    intervals,
    pareto_front,
    representatives,
    sort_key,
    w_coefficient,
    w_formula,
)

T = Proxies(params=100, inference=40.0)


def test_w_formula_by_hand():
    # ((100-50)/100) · ((40-10)/40) / 2 = 0.5 · 0.75 / 2
    assert w_formula(Proxies(50, 10.0), T, 2.0) == pytest.approx(0.1875)
    assert w_coefficient(Proxies(50, 10.0), T, 2.0) == pytest.approx(0.1875)
    assert w_formula(Proxies(90, 36.0), T, 0.5) == pytest.approx(0.1 * 0.1 / 0.5)


def test_w_is_zero_at_the_maximum_point_and_not_eligible():
    assert w_formula(T, T, 1.3) == 0.0
    assert math.isnan(w_coefficient(T, T, 1.3))


@pytest.mark.parametrize("p,why", [
    (Proxies(120, 10.0), "bigger"),         # formula would give a negative W
    (Proxies(150, 50.0), "bigger and slower"),  # formula would give a positive W: never |·|
    (Proxies(50, 40.0), "not faster"),
])
def test_architectures_that_save_nothing_get_nan(p, why):
    assert math.isnan(w_coefficient(p, T, 1.0)), why


def test_bad_errors_give_nan():
    for e in (0.0, -1.0, math.nan, math.inf):
        assert math.isnan(w_coefficient(Proxies(50, 10.0), T, e))


def test_w_grows_with_savings_at_equal_error():
    ws = [w_coefficient(Proxies(p, i), T, 2.0) for p, i in [(90, 35.0), (70, 25.0), (40, 10.0)]]
    assert ws == sorted(ws) and ws[0] > 0


@pytest.mark.parametrize("count,eps", [(1, 1), (10, 1), (10, 3), (10, 10), (300, 7), (300, 300)])
def test_interval_count_and_sizes(count, eps):
    blocks = intervals(count, eps)
    assert len(blocks) == math.ceil(count / eps)
    assert [i for b in blocks for i in b] == list(range(count))
    assert all(len(b) == eps for b in blocks[:-1]) and 1 <= len(blocks[-1]) <= eps


def test_epsilon_out_of_range():
    with pytest.raises(ValueError):
        intervals(5, 0)
    with pytest.raises(ValueError):
        intervals(5, 6)


def test_representative_is_the_best_known_w_part_with_earlier_on_ties():
    a = Arch(1, 1, 8, 8)
    ordered = [(a.with_size(1, 1, 8, i), p) for i, p in enumerate(
        [Proxies(10, 30.0), Proxies(10, 20.0),   # interval 0 → index 1 (faster)
         Proxies(20, 10.0), Proxies(20, 10.0),   # interval 1 → a tie → the earlier, 2
         Proxies(30, 5.0), Proxies(40, 5.0)],    # interval 2 → 4 (smaller)
        start=1)]
    assert representatives(ordered, T, 2) == [1, 2, 4]
    assert representatives(ordered, T, 1) == list(range(6))


def _space():
    base = Arch(1, 1, 8, 8, vocab_size=100, max_positions=16)
    return [base.with_size(d, a, h, i) for d, a, h, i in
            itertools.product([1, 2, 3], [1, 2], [8, 16, 32], [8, 32]) if h % a == 0]


def _proxies(xi):
    # A size-like p̂ and a speed-like î that do not order the same way.
    return {a: Proxies(a.layers * a.hidden * (a.hidden + a.intermediate),
                       float(a.layers * (a.hidden + 3 * a.intermediate) + a.heads)) for a in xi}


def _error(a):
    return 1.0 + 10.0 / (a.layers * a.hidden) + 0.01 * a.heads + 1.0 / a.intermediate


class Recorder:
    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, archs):
        self.calls.append(list(archs))
        return {a: Evaluation(FAILED, reason="forced") if a in self.fail
                else Evaluation(DONE, _error(a), 1e-3) for a in archs}


def test_epsilon_one_is_the_brute_force_arg_max():
    xi = _space()
    proxies = _proxies(xi)
    t = Proxies(max(p.params for p in proxies.values()) + 1,
                max(p.inference for p in proxies.values()) + 1)
    evaluate = Recorder()
    result = algorithm1(xi, proxies, t, 1, evaluate)
    assert sorted(evaluate.calls[0], key=lambda a: a.size) == sorted(xi, key=lambda a: a.size)
    brute = max(xi, key=lambda a: (w_formula(proxies[a], t, _error(a)),
                                   -sorted(xi, key=lambda x: sort_key(x, proxies[x])).index(a)))
    assert result.best.arch == brute
    assert result.best.w == pytest.approx(w_formula(proxies[brute], t, _error(brute)))


def test_epsilon_all_trains_one_candidate():
    xi = _space()
    evaluate = Recorder()
    result = algorithm1(xi, _proxies(xi), Proxies(10**9, 1e9), len(xi), evaluate)
    assert len(evaluate.calls) == 1 and len(evaluate.calls[0]) == 1
    assert sum(r.status == DONE for r in result.rows) == 1
    assert sum(r.status == "skipped" for r in result.rows) == len(xi) - 1


def test_intervals_follow_the_size_order():
    xi = _space()
    proxies = _proxies(xi)
    result = algorithm1(xi, proxies, Proxies(10**9, 1e9), 4, Recorder())
    params = [r.proxies.params for r in result.rows]
    assert params == sorted(params)
    assert [r.interval for r in result.rows] == [k // 4 for k in range(len(xi))]
    assert all(sum(r.representative for r in result.rows if r.interval == i) == 1
               for i in range(math.ceil(len(xi) / 4)))


def test_constraints_filter_the_arg_max():
    xi = _space()
    proxies = _proxies(xi)
    t = Proxies(10**9, 1e9)
    free = algorithm1(xi, proxies, t, 1, Recorder()).best
    limit = free.proxies.params - 1
    limited = algorithm1(xi, proxies, t, 1, Recorder(), max_params=limit)
    assert limited.best.proxies.params <= limit
    feasible = [a for a in xi if proxies[a].params <= limit]
    assert limited.best.w == pytest.approx(
        max(w_formula(proxies[a], t, _error(a)) for a in feasible))
    over = [r for r in limited.rows if r.proxies.params > limit]
    assert all("over --max-params" in r.note for r in over)
    cut = float(np.median([p.inference for p in proxies.values()]))
    fast = algorithm1(xi, proxies, t, 1, Recorder(), max_inference=cut)
    assert fast.best.proxies.inference <= cut
    assert fast.best.w == pytest.approx(max(w_formula(proxies[a], t, _error(a))
                                            for a in xi if proxies[a].inference <= cut))
    assert algorithm1(xi, proxies, t, 1, Recorder(), max_params=1).best is None


def test_failed_candidates_are_recorded_and_the_rest_scored():
    xi = _space()
    proxies = _proxies(xi)
    best = algorithm1(xi, proxies, Proxies(10**9, 1e9), 1, Recorder()).best.arch
    result = algorithm1(xi, proxies, Proxies(10**9, 1e9), 1, Recorder(fail=[best]))
    failed = [r for r in result.rows if r.status == FAILED]
    assert [r.arch for r in failed] == [best] and failed[0].note == "forced"
    assert math.isnan(failed[0].w) and result.best.arch != best


def test_pareto_front_is_exactly_the_non_dominated_set():
    rng = np.random.default_rng(0)
    for _ in range(50):
        points = [tuple(p) for p in rng.integers(0, 5, (12, 3)).astype(float)]
        front = pareto_front(points)
        for p, on in zip(points, front):
            dominated = any(all(q[k] <= p[k] for k in range(3)) and q != p for q in points)
            assert on == (not dominated)
    assert pareto_front([(1, 1, 1), (1, 1, 1)]) == [True, True]  # equal points keep each other


def test_pareto_in_results_covers_only_trained_candidates():
    xi = _space()
    result = algorithm1(xi, _proxies(xi), Proxies(10**9, 1e9), 3, Recorder())
    assert all(r.status == DONE for r in result.rows if r.pareto)
    trained = [r for r in result.rows if r.status == DONE]
    pts = [(r.proxies.params, r.proxies.inference, r.error) for r in trained]
    assert [r.pareto for r in trained] == pareto_front(pts)
