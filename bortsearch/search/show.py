"""Showing a finished search: the ranked table and the Pareto plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bortsearch.model.arch import row_size
from bortsearch.search.records import read_results


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Trained candidates, W-optimum first, then by W (NaN last), then by error;
    untrained architectures are left out."""
    trained = table[table["trained"]].copy()
    trained["_w"] = trained["w_coefficient"].fillna(-float("inf"))
    trained = trained.sort_values(["_w", "error", "params"], ascending=[False, True, True],
                                  kind="stable")
    return trained.drop(columns="_w")


def _col(table: pd.DataFrame, name: str) -> pd.Series:
    """A column of the results table, NaN where an older run lacks it."""
    return table[name] if name in table else pd.Series(float("nan"), index=table.index)


def _ms(best: dict) -> str:
    """The measured î's column title: ms, and the runtime where it is not XLA."""
    runtime = best.get("runtime") or "xla"
    return "ms" if runtime == "xla" else f"ms {runtime}"


def format_table(table: pd.DataFrame, best: dict) -> str:
    """The ranked table as text: `>` marks the W-optimum, `*` Pareto members, `~` a W
    within noise of the optimum's; the error is the one W used (± its standard
    error over seeds), with the confirmed error when the run confirmed its top."""
    rows = ranked(table)
    best_size = tuple(best["size"]) if best.get("size") else None
    kind = best.get("inference_kind", "analytic")
    metric = best.get("error_metric", "ce")
    confirmed = _col(rows, "confirmed_error").notna().any()
    albert = "embedding" in rows.columns
    lines = [f"{'':3}{'D':>3} {'A':>3} {'H':>5} {'I':>5} "
             + (f"{'E':>5} {'G':>3} " if albert else "") + f"{'params':>10} {'eff.':>9} "
             f"{'GFLOPs' if kind == 'analytic' else _ms(best):>9} {metric:>16} {'acc.':>6} "
             f"{'W':>9} "
             + (f"{'confirmed':>16} {'W conf.':>9} " if confirmed else "")
             + f"{'lr':>8}  status"]
    se, within, acc = (_col(rows, n) for n in ("error_se", "within_noise", "accuracy"))
    c_err, c_se, c_w = (_col(rows, n) for n in ("confirmed_error", "confirmed_error_se",
                                                 "confirmed_w"))
    for k, r in enumerate(rows.itertuples()):
        size = row_size(r)
        mark = ((">" if size == best_size else " ") + ("*" if r.pareto else " ")
                + ("~" if within.iloc[k] is True or within.iloc[k] == 1 else " "))
        inference = r.inference / 1e9 if kind == "analytic" else r.inference * 1e3
        lr = "" if pd.isna(r.best_lr) else f"{r.best_lr:g}"
        note = "" if pd.isna(r.note) or not r.note else f" ({r.note})"
        line = (f"{mark}{r.layers:>3} {r.heads:>3} {r.hidden:>5} {r.intermediate:>5} "
                + (f"{r.embedding:>5} {r.groups:>3} " if albert else "") +
                f"{r.params:>10,} {r.effective_params:>9,} {inference:>9.3f} "
                f"{_pm(r.error, se.iloc[k]):>16} "
                f"{'' if pd.isna(acc.iloc[k]) else format(acc.iloc[k], '.3f'):>6} "
                f"{r.w_coefficient:>9.4g} ")
        if confirmed:
            line += f"{_pm(c_err.iloc[k], c_se.iloc[k]):>16} {c_w.iloc[k]:>9.4g} "
        lines.append(line + f"{lr:>8}  {r.status}{note}")
    size = "eff." if best.get("size_proxy") == "non-embedding" else "params"
    lines.append(f"> W-optimum   * Pareto front over ({size}, inference, error)   ~ W within "
                 "noise of the optimum's   acc. the held-out accuracy (at the selected "
                 "positions, or on a task's labels)   "
                 f"{int((~table['trained']).sum())} architectures not trained (skipped)"
                 + ("\np̂ (W's size term) counts the non-embedding parameters (eff.)"
                    if size == "eff." else ""))
    return "\n".join(lines)


def _pm(value: float, se: float) -> str:
    if pd.isna(value):
        return "nan"
    return f"{value:.4f}" + (f" ± {se:.4f}" if not pd.isna(se) else "")


def _rounds(sp: dict) -> str:
    """How far the measured speed-up moved between its interleaved rounds."""
    r = sp.get("round_speedups")
    return f"; median of {len(r)} rounds, {min(r):.2f}–{max(r):.2f}x" if r else ""


def reliability(best: dict) -> str:
    """The run's reliability report (what decided the pick, noise, warnings), with
    the W-optimum's predicted and measured speed-up over the maximum point."""
    from bortsearch.search.audit import summary_lines

    lines = summary_lines(best["diagnostics"]) if best.get("diagnostics") else []
    sp = best.get("speedup")
    if sp:
        lines.insert(0, f"speed-up over the maximum point ({sp['scope']}): predicted "
                        f"{sp['predicted']:.2f}x by î, measured {sp['measured']:.2f}x "
                        f"({1e3 * sp['best_s']:.2f} ms against {1e3 * sp['maximum_point_s']:.2f} "
                        f"ms at batch 1 on {sp['hardware']['device_kind']}, "
                        f"{sp.get('runtime', 'xla')}{_rounds(sp)})")
    lm = best.get("latency_model")
    if lm:
        lines.insert(1 if sp else 0,
                     f"î fitted on {lm['measured']} measured architectures "
                     f"({best.get('runtime')}): "
                     f"leave-one-out error median {100 * lm['loo_median_rel_error']:.1f}%, "
                     f"max {100 * lm['loo_max_rel_error']:.1f}%")
    return "\n".join(lines)


def plot_pareto(table: pd.DataFrame, best: dict, path: str | Path) -> Path:
    """Parameters against the inference proxy, coloured by error, with the Pareto
    front drawn and the W-optimum marked. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = best.get("inference_kind", "analytic")
    scale, unit = (1e9, "GFLOPs per forward pass") if kind == "analytic" else \
        (1e-3, f"ms per forward pass, measured ({best.get('runtime') or 'xla'})")
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    skipped = table[~table["trained"]]
    ax.scatter(skipped["params"] / 1e6, skipped["inference"] / scale, s=10, c="lightgrey",
               label="not trained")
    done = table[table["status"] == "done"]
    points = ax.scatter(done["params"] / 1e6, done["inference"] / scale, c=done["error"], s=40,
                        cmap="viridis_r", edgecolors="black", linewidths=0.4, label="trained")
    label = ("error KL(T ‖ S) = ê − H_T (nats)" if best.get("error_metric") == "kl"
             else "error ê (KD cross-entropy vs the maximum point, nats)")
    fig.colorbar(points, ax=ax, label=label)
    front = done[done["pareto"]].sort_values(["params", "inference"])
    ax.plot(front["params"] / 1e6, front["inference"] / scale, "-", color="tab:red", lw=1.2,
            label="Pareto front (params, inference, error)")
    ax.scatter(front["params"] / 1e6, front["inference"] / scale, s=90, facecolors="none",
               edgecolors="tab:red", linewidths=1.2)
    failed = table[table["status"] == "failed"]
    if len(failed):
        ax.scatter(failed["params"] / 1e6, failed["inference"] / scale, marker="x", c="black",
                   label="failed")
    t = best.get("maximum_point")
    if t:
        ax.scatter([t["params"] / 1e6], [t["inference"] / scale], marker="^", s=90, c="black",
                   label="maximum point T (the teacher)")
    if best.get("size"):
        ax.scatter([best["params"] / 1e6], [best["inference"] / scale], marker="*", s=300,
                   c="gold", edgecolors="black", zorder=5,
                   label="W-optimum ⟨{}⟩".format(", ".join(map(str, best["size"]))))
    if "groups" in done.columns:  # ALBERT's axes: which candidates share or factorise
        for r in done.itertuples():
            if (r.embedding, r.groups) != (r.hidden, r.layers):
                ax.annotate(f"E{r.embedding} G{r.groups}", (r.params / 1e6, r.inference / scale),
                            fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("parameters p̂ (millions)")
    ax.set_ylabel(f"inference proxy î ({unit})")
    ax.set_title("bortsearch: candidates, Pareto front and W-optimum")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write a figure as PNG atomically."""
    import io

    import matplotlib.pyplot as plt

    from bortsearch.runio import write_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    path = Path(path)
    write_atomic(path, buffer.getvalue())
    return path


def plot_audit(table: pd.DataFrame, best: dict, path: str | Path) -> Path:
    """Left: the error W used against parameters, ± 2 standard errors over seeds,
    the unigram baseline drawn; right: short against confirmed errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = best.get("error_metric", "ce")
    diag = best.get("diagnostics") or {}
    done = table[table["status"] == "done"].sort_values("params")
    confirmed = done[_col(done, "confirmed_error").notna()]
    fig, axes = plt.subplots(1, 2 if len(confirmed) else 1, dpi=110, squeeze=False,
                             figsize=(11 if len(confirmed) else 6.5, 4.5))
    ax = axes[0][0]
    ax.errorbar(done["params"] / 1e6, done["error"], yerr=2 * _col(done, "error_se").fillna(0),
                fmt="o", ms=5, capsize=3, label=f"{metric} after s steps (± 2 SE over seeds)")
    baseline = diag.get("unigram_kl" if metric == "kl" else "unigram_ce")
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", ls="--", lw=1, label="unigram baseline")
    if metric == "ce" and diag.get("teacher_entropy") is not None:
        ax.axhline(diag["teacher_entropy"], color="black", ls=":", lw=1,
                   label="teacher entropy H_T (the floor)")
    if best.get("size"):
        row = done[[row_size(r) == tuple(best["size"]) for r in done.itertuples()]]
        ax.scatter(row["params"] / 1e6, row["error"], marker="*", s=250, c="gold",
                   edgecolors="black", zorder=5, label="W-optimum")
    ax.set_xlabel("parameters p̂ (millions)")
    ax.set_ylabel(f"error ({'KL = ê − H_T' if metric == 'kl' else 'ê'}, nats)")
    ax.set_title("error of the trained candidates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if len(confirmed):
        ax = axes[0][1]
        ax.scatter(confirmed["error"], confirmed["confirmed_error"], c="tab:blue")
        for r in confirmed.itertuples():
            ax.annotate(",".join(map(str, row_size(r))),
                        (r.error, r.confirmed_error), fontsize=7)
        rho = diag.get("spearman_short_vs_confirmed")
        ax.set_title("short vs confirmed error" + (f" (Spearman {rho:.2f})" if rho is not None
                                                   else ""))
        ax.set_xlabel(f"{metric} after s steps")
        ax.set_ylabel(f"{metric} after {best.get('confirm_steps')} steps")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def show(run: str | Path) -> tuple[str, Path]:
    """The ranked table and the reliability report as text, and the path of the
    freshly written pareto.png."""
    table, best = read_results(run)
    text = format_table(table, best)
    report = reliability(best)
    return (text + ("\n\n" + report if report else ""),
            plot_pareto(table, best, Path(run) / "pareto.png"))


def audit(run: str | Path) -> tuple[str, Path]:
    """The reliability report of a finished run as text, and audit.png."""
    table, best = read_results(run)
    report = reliability(best) or "this run has no reliability report (made by an older version)"
    return report, plot_audit(table, best, Path(run) / "audit.png")
