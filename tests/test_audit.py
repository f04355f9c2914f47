"""The reliability report: seeds' noise, confirmation, and each warning on a
constructed case where it must fire and on its opposite where it must not."""

import math

import pytest

from bortsearch import Arch
from bortsearch.search.algorithm import (
    DONE,
    Evaluation,
    Proxies,
    algorithm1,
    confirm,
    summarise,
    within_noise,
)
from bortsearch.search.audit import diagnose, spearman, summary_lines

BASE = Arch(1, 1, 8, 8, vocab_size=100, max_positions=16)
XI = [BASE.with_size(d, 1, h, 8) for d in (1, 2, 3) for h in (8, 16)]
T = Proxies(10**6, 1e6)
BASELINES = {"teacher_entropy": 5.0, "unigram_ce": 6.0, "unigram_kl": 1.0}


def _proxies():
    # bigger D and H: more parameters and time, so a smaller known part of W
    return {a: Proxies(1000 * a.layers * a.hidden, 1000.0 * a.layers * a.hidden) for a in XI}


def _evaluator(kl, se=0.0, seeds=2):
    """Evaluations with KL `kl(arch)` and a seed spread of ± se (ê = H_T + KL)."""
    def evaluate(archs):
        out = {}
        for a in archs:
            trials = [(1e-3, j, 5.0 + kl(a) + (se if j else -se), kl(a) + (se if j else -se))
                      for j in range(seeds)]
            out[a] = summarise(trials, [1e-3], "kl")
        return out
    return evaluate


def _search(kl, se=0.0, seeds=2, metric="kl"):
    result = algorithm1(XI, _proxies(), T, 1, _evaluator(kl, se, seeds))
    return result, diagnose(result, BASELINES, metric, seeds)


def _codes(report):
    return {w["code"] for w in report["warnings"]}


def test_summarise_means_seeds_and_picks_the_best_theta():
    trials = [(1e-3, 0, 6.0, 1.0), (1e-3, 1, 6.2, 1.2), (3e-3, 0, 5.5, 0.5), (3e-3, 1, 5.7, 0.7),
              (1e-2, 0, math.nan, math.nan), (1e-2, 1, 1.0, 0.1)]
    ev = summarise(trials, [1e-3, 3e-3, 1e-2], "kl")
    assert ev.status == DONE and ev.best_lr == 3e-3  # 1e-2 has a NaN seed: it does not count
    assert ev.error == pytest.approx(0.6) and ev.kl == pytest.approx(0.6)
    assert ev.ce == pytest.approx(5.6)
    assert ev.error_se == pytest.approx(0.1)  # std 0.1414 / sqrt(2)
    assert summarise(trials, [1e-3, 3e-3, 1e-2], "ce").error == pytest.approx(5.6)
    assert math.isnan(summarise(trials[:1], [1e-3], "kl").error_se)  # one seed: unknown
    failed = summarise([(1e-3, 0, math.nan, math.nan)], [1e-3], "kl", "loss became NaN")
    assert failed.status == "failed" and failed.reason == "loss became NaN"


def test_within_noise_needs_measured_noise():
    assert within_noise(1.0, 0.1, 1.1, 0.1)
    assert not within_noise(1.0, 0.01, 1.1, 0.01)
    assert not within_noise(1.0, math.nan, 1.0, math.nan)


def test_untrained_part_decides_fires_when_errors_are_equal():
    result, report = _search(lambda a: 0.5)
    smallest = min(XI, key=lambda a: _proxies()[a].params)
    assert result.best.arch == smallest and report["decided_by_training"] is False
    assert "untrained-part-decides" in _codes(report)
    assert any("did NOT decide" in line for line in summary_lines(report))


def test_untrained_part_decides_is_silent_when_training_changes_the_pick():
    # the deepest, widest students learn far better: the error term outweighs size
    result, report = _search(lambda a: 0.5 / (a.layers * a.hidden) ** 2)
    assert report["decided_by_training"] is True
    assert result.best.arch != min(XI, key=lambda a: _proxies()[a].params)
    assert "untrained-part-decides" not in _codes(report)
    assert report["spearman_w_vs_size_speed"] < 1.0


def test_noise_warnings():
    # one seed: the noise is not measured, and the report says so
    _, one = _search(lambda a: 0.5, seeds=1)
    assert "noise-not-measured" in _codes(one) and "within-noise" not in _codes(one)
    # two seeds whose spread dwarfs the differences in W: the runner-up ties
    result, noisy = _search(lambda a: 0.5 / a.layers, se=0.3)
    assert "within-noise" in _codes(noisy) and noisy["within_noise_of_best"]
    assert any(r.within_noise for r in result.rows)
    # the same errors measured precisely: no tie
    _, precise = _search(lambda a: 0.5 / a.layers, se=1e-6)
    assert not ({"within-noise", "noise-not-measured"} & _codes(precise))
    assert precise["margin_z"] > 2


def test_near_unigram_fires_only_when_students_learned_little():
    _, lazy = _search(lambda a: 0.95)  # KL 0.95 of the unigram's 1.0
    assert "near-unigram" in _codes(lazy)
    assert lazy["learned_beyond_unigram"] == pytest.approx(0.05)
    _, learned = _search(lambda a: 0.2)
    assert "near-unigram" not in _codes(learned)


def test_entropy_dominates_fires_for_ce_only():
    result = algorithm1(XI, _proxies(), T, 1, _evaluator(lambda a: 0.3))
    assert "entropy-dominates" in _codes(diagnose(result, BASELINES, "ce", 2))
    assert "entropy-dominates" not in _codes(diagnose(result, BASELINES, "kl", 2))


def test_log_w_decomposition_is_the_spread_of_each_term():
    result, report = _search(lambda a: 0.1 * a.layers)
    trained = [r for r in result.rows if r.status == DONE]
    errors = [-math.log(r.error) for r in trained]
    assert report["log_w_terms"]["error"]["range"] == pytest.approx(max(errors) - min(errors))
    sizes = [math.log((T.params - r.proxies.params) / T.params) for r in trained]
    assert report["log_w_terms"]["size"]["range"] == pytest.approx(max(sizes) - min(sizes))


def test_confirm_rechooses_among_the_top_k_by_the_longer_errors():
    short = algorithm1(XI, _proxies(), T, 1, _evaluator(lambda a: 0.5))
    top3 = sorted((r for r in short.rows), key=lambda r: -r.w)[:3]
    favourite = top3[2].arch  # third by short W; after long training it is far better
    calls = []

    def longer(archs):
        calls.append(list(archs))
        return {a: Evaluation(DONE, 0.01 if a == favourite else 0.5, 1e-3, error_se=0.001)
                for a in archs}

    result = confirm(short, 3, longer)
    assert [sorted(a.size for a in c) for c in calls] == [sorted(r.arch.size for r in top3)]
    assert result.confirmed and result.best.arch == favourite
    assert sum(math.isfinite(r.confirmed_error) for r in result.rows) == 3
    report = diagnose(result, BASELINES, "kl", 2)
    assert report["confirmation_changed_pick"] is True and report["confirmed"] == 3
    # the short pick is always among the confirmed, so K = 1 keeps it
    assert confirm(short, 1, longer).best.arch == short.best.arch


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    # with ties, against SciPy's definition
    from scipy.stats import spearmanr

    a, b = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_untrained_pick_names_the_size_proxy_when_the_vocabulary_table_dominates():
    """BASE's vocabulary of 100 at H = 8 is most of every candidate's parameters:
    when size decided, the warning points at --size-proxy non-embedding, unless the
    run already uses it."""
    from bortsearch.model.proxies import effective_param_count, param_count

    result, report = _search(lambda a: 0.5)  # equal errors: size and speed decide
    assert 1 - effective_param_count(result.best.arch) / param_count(result.best.arch) > 0.5
    message = next(w["message"] for w in report["warnings"]
                   if w["code"] == "untrained-part-decides")
    assert "--size-proxy non-embedding" in message
    again = diagnose(result, BASELINES, "kl", 2, size_proxy="non-embedding")
    assert not any("--size-proxy" in w["message"] for w in again["warnings"])
