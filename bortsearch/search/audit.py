"""How far to trust a search's answer: what decided it, and how it compares with noise.

W = size term · speed term / error, so log W = log s + log v − log e over the trained
candidates. When the error term barely varies, the untrained size·speed part decides
the pick and the training was for nothing; when two candidates' W differ by less
than their seed noise, the order between them is a coin toss; when students are
no better than a predictor of token frequencies, ê measures nothing about them.
`diagnose` measures each of these on a finished `Result` and says what to change.
[ours: the papers report none of this]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bortsearch.search.algorithm import DONE, NOISE_Z, Result, Row, known_w_part

# Warn when the W-optimum's student closes less than this share of the gap between
# the unigram baseline and the teacher (KL_unigram − KL_student) / KL_unigram.
LEARNED_MIN = 0.25
# Warn when the teacher's own entropy is more than this share of ê (error = ce).
ENTROPY_MAX = 0.9


def spearman(a, b) -> float:
    """Rank correlation (NaN with fewer than 3 pairs or a constant side): Pearson's
    correlation of the average ranks, which is Spearman's rho with ties (pandas'
    method="spearman" gives the same but imports SciPy's statistics, 0.6 s a process)."""
    a, b = pd.Series(list(a), dtype=float), pd.Series(list(b), dtype=float)
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return math.nan
    return float(a.rank().corr(b.rank()))


def _terms(r: Row, t) -> tuple[float, float, float]:
    size = (t.params - r.proxies.params) / t.params
    speed = (t.inference - r.proxies.inference) / t.inference
    return math.log(size), math.log(speed), -math.log(r.error)


def diagnose(result: Result, baselines: dict, metric: str, seeds: int,
             size_proxy: str = "params") -> dict:
    """The reliability report of a finished search: the spread of log W's three
    terms, whether training changed the pick, the optimum's margin over the
    runner-up in units of noise, how much the students learned beyond token
    frequencies, and warnings that each say what to do.

    Args:
      result: the scored search (after confirmation, if any).
      baselines: `teacher_entropy`, `unigram_ce`, `unigram_kl` on B (a task search's
        "unigram" is its class prior), and for a task search `teacher_accuracy` and
        `majority_accuracy` on B.
      metric: the error W used, "ce" or "kl".
      seeds: trials per θ (1: the noise is not measured).
      size_proxy: what p̂ counted, "params" or "non-embedding".
    """
    t = result.maximum_point
    trained = [r for r in result.rows
               if r.status == DONE and not r.note and math.isfinite(r.w)]
    report: dict = {"error_metric": metric, "seeds": seeds, "candidates": len(trained),
                    **{k: float(v) for k, v in baselines.items()}, "warnings": []}

    def warn(code: str, message: str) -> None:
        report["warnings"].append({"code": code, "message": message})

    if "teacher_accuracy" in baselines and \
            baselines["teacher_accuracy"] < baselines["majority_accuracy"] + 0.05:
        warn("teacher_labels", f"the classifier teacher's accuracy on the held-out training "
             f"rows is {baselines['teacher_accuracy']:.3f}, no better than always answering "
             f"the commonest class ({baselines['majority_accuracy']:.3f}): check that it was "
             f"fine-tuned on this task and that its labels (id2label) name the task's")
    best = result.best
    if best is None or not trained:
        report["decided_by_training"] = None
        return report
    terms = np.array([_terms(r, t) for r in trained])  # size, speed, error
    logw = terms.sum(axis=1)
    report["log_w_terms"] = {
        name: {"range": float(np.ptp(terms[:, k])), "std": float(terms[:, k].std())}
        for k, name in enumerate(("size", "speed", "error"))}
    report["log_w_std"] = float(logw.std())
    known = [known_w_part(r.proxies, t) for r in trained]
    report["spearman_w_vs_size_speed"] = spearman([r.w for r in trained], known)
    report["spearman_w_vs_inverse_error"] = spearman([r.w for r in trained],
                                                     [1 / r.error for r in trained])
    untrained_pick = trained[int(np.argmax(known))]  # the first on ties, as Algorithm 1
    report["size_speed_pick"] = list(untrained_pick.arch.size)
    decided = best.arch != untrained_pick.arch
    report["decided_by_training"] = decided if len(trained) > 1 else None
    if len(trained) > 1 and not decided:
        from bortsearch.model.proxies import effective_param_count, param_count

        table_share = 1 - effective_param_count(best.arch) / param_count(best.arch)
        warn("untrained-part-decides", (
            f"training did not decide the pick: {best.arch.label()} is also the best by size "
            f"and speed alone (log W's error term spans {np.ptp(terms[:, 2]):.3g}, the size "
            f"and speed terms {np.ptp(terms[:, 0]):.3g} and {np.ptp(terms[:, 1]):.3g}); "
            + ("use --error kl so that W divides by what the student controls, "
               if metric == "ce" else "")
            + (f"use --size-proxy non-embedding (the vocabulary's tables are "
               f"{100 * table_share:.0f}% of the pick's parameters), "
               if size_proxy == "params" and table_share > 0.5 else "")
            + "train longer (--steps), try --init teacher, or --confirm 3"))

    # Margin over the runner-up, in the W that chose the optimum.
    w_of = (lambda r: r.confirmed_w) if result.confirmed else (lambda r: r.w)
    se_of = (lambda r: r.confirmed_w_se) if result.confirmed else (lambda r: r.w_se)
    rivals = sorted((r for r in trained if r.arch != best.arch and math.isfinite(w_of(r))),
                    key=lambda r: -w_of(r))
    if rivals:
        runner = rivals[0]
        gap = w_of(best) - w_of(runner)
        spread = math.hypot(se_of(best), se_of(runner))
        report["runner_up"] = list(runner.arch.size)
        report["margin_w"] = gap / w_of(best) if w_of(best) else math.nan
        report["margin_z"] = gap / spread if spread > 0 else math.nan  # NaN: not measured
        ties = [list(r.arch.size) for r in trained if r.within_noise]
        report["within_noise_of_best"] = ties
        if seeds < 2:
            warn("noise-not-measured", (
                f"the noise is not measured (one seed): the optimum leads the runner-up "
                f"{runner.arch.label()} by {100 * report['margin_w']:.2g}% of W, which brief "
                f"training from another seed can reverse; use --seeds 3"))
        elif ties:
            warn("within-noise", (
                f"the pick is within noise: {len(ties)} candidate(s), the runner-up "
                f"{runner.arch.label()} among them, have a W less than {NOISE_Z:g} standard "
                f"errors from the optimum's (margin {report['margin_z']:.2g} σ); use more "
                f"--seeds, more --steps, or --confirm {min(len(ties) + 1, len(trained))}"))

    # How much the students learned beyond token frequencies.
    kl_uni = baselines.get("unigram_kl", math.nan)
    if math.isfinite(kl_uni) and kl_uni > 0 and math.isfinite(best.kl):
        learned = (kl_uni - best.kl) / kl_uni
        report["learned_beyond_unigram"] = learned
        if learned < LEARNED_MIN:
            warn("near-unigram", (
                f"the students learned little beyond token frequencies: the optimum's KL to the "
                f"teacher is {best.kl:.3f} nats against {kl_uni:.3f} for a unigram predictor "
                f"({100 * learned:.0f}% of the way to the teacher); train longer (--steps), "
                f"raise Θ (--lr), or use --init teacher"))
    h = baselines.get("teacher_entropy", math.nan)
    if metric == "ce" and math.isfinite(h) and best.ce > 0:
        report["teacher_entropy_share"] = h / best.ce
        if h / best.ce > ENTROPY_MAX:
            warn("entropy-dominates", (
                f"{100 * h / best.ce:.0f}% of ê is the teacher's own entropy ({h:.3f} nats), "
                f"which no student can change; use --error kl"))
    if result.confirmed:
        confirmed = [r for r in trained if math.isfinite(r.confirmed_error)]
        report["confirmed"] = len(confirmed)
        report["spearman_short_vs_confirmed"] = spearman(
            [r.error for r in confirmed], [r.confirmed_error for r in confirmed])
        short_best = max(trained, key=lambda r: r.w)
        report["confirmation_changed_pick"] = short_best.arch != best.arch
    return report


def summary_lines(report: dict) -> list[str]:
    """The report as a few lines of text for the terminal (best.json stores NaN
    as null: read back, it is NaN again)."""
    report = {k: math.nan if v is None and k != "decided_by_training" else v
              for k, v in report.items()}
    if report.get("decided_by_training") is None:
        return ["reliability: no eligible trained candidate to judge"]
    lines = []
    h, u = report.get("teacher_entropy"), report.get("unigram_ce")
    lines.append(f"error: W divides by {'KL = ê − H_T' if report['error_metric'] == 'kl' else 'ê'}"
                 f"; teacher entropy H_T {h:.3f} nats, unigram baseline ê {u:.3f} "
                 f"(KL {report['unigram_kl']:.3f})")
    t = report["log_w_terms"]
    lines.append(f"log W over {report['candidates']} trained candidates: ranges size "
                 f"{t['size']['range']:.3g}, speed {t['speed']['range']:.3g}, error "
                 f"{t['error']['range']:.3g}; Spearman(W, size·speed) "
                 f"{report['spearman_w_vs_size_speed']:.2f}, Spearman(W, 1/error) "
                 f"{report['spearman_w_vs_inverse_error']:.2f}")
    decided = report["decided_by_training"]
    line = ("training decided the pick: the best by size and speed alone is ⟨{}⟩".format(
        ", ".join(map(str, report["size_speed_pick"]))) if decided else
        "training did NOT decide the pick (it is also the best by size and speed alone)")
    if "margin_w" in report:
        z = report["margin_z"]
        line += (f"; margin over the runner-up ⟨{', '.join(map(str, report['runner_up']))}⟩ "
                 f"{100 * report['margin_w']:.2g}% of W"
                 + (f", {z:.2g} σ of seed noise" if math.isfinite(z) else
                    ", noise not measured" if report["seeds"] < 2 else ""))
    lines.append(line)
    if "learned_beyond_unigram" in report:
        lines.append(f"the optimum closed {100 * report['learned_beyond_unigram']:.0f}% of the "
                     f"unigram baseline's KL to the teacher")
    if "spearman_short_vs_confirmed" in report:
        lines.append(f"confirmation: {report['confirmed']} re-trained longer; Spearman(short ê, "
                     f"confirmed ê) {report['spearman_short_vs_confirmed']:.2f}; pick "
                     f"{'changed' if report['confirmation_changed_pick'] else 'unchanged'}")
    lines += [f"warning: {w['message']}" for w in report["warnings"]]
    return lines
