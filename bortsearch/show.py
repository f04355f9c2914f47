"""Showing a finished search: the ranked table and the Pareto plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bortsearch.run import read_results


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Trained candidates, W-optimum first, then by W (NaN last), then by error;
    untrained architectures are left out."""
    trained = table[table["trained"]].copy()
    trained["_w"] = trained["w_coefficient"].fillna(-float("inf"))
    trained = trained.sort_values(["_w", "error", "params"], ascending=[False, True, True],
                                  kind="stable")
    return trained.drop(columns="_w")


def format_table(table: pd.DataFrame, best: dict) -> str:
    """The ranked table as text: `*` marks Pareto members, `>` the W-optimum."""
    rows = ranked(table)
    best_size = tuple(best["size"]) if best.get("size") else None
    kind = best.get("inference_kind", "analytic")
    lines = [f"{'':2}{'D':>3} {'A':>3} {'H':>5} {'I':>5} {'params':>10} {'eff.':>9} "
             f"{'GFLOPs' if kind == 'analytic' else 'ms':>9} {'error':>8} {'W':>9} "
             f"{'lr':>8}  status"]
    for r in rows.itertuples():
        size = (r.layers, r.heads, r.hidden, r.intermediate)
        mark = (">" if size == best_size else " ") + ("*" if r.pareto else " ")
        inference = r.inference / 1e9 if kind == "analytic" else r.inference * 1e3
        lr = "" if pd.isna(r.best_lr) else f"{r.best_lr:g}"
        note = "" if pd.isna(r.note) or not r.note else f" ({r.note})"
        lines.append(f"{mark}{r.layers:>3} {r.heads:>3} {r.hidden:>5} {r.intermediate:>5} "
                     f"{r.params:>10,} {r.effective_params:>9,} {inference:>9.3f} "
                     f"{r.error:>8.4f} {r.w_coefficient:>9.4g} {lr:>8}  {r.status}{note}")
    lines.append("> W-optimum   * Pareto front over (params, inference, error)   "
                 f"{int((~table['trained']).sum())} architectures not trained (skipped)")
    return "\n".join(lines)


def plot_pareto(table: pd.DataFrame, best: dict, path: str | Path) -> Path:
    """Parameters against the inference proxy, coloured by error, with the Pareto
    front drawn and the W-optimum marked. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bortsearch.runio import write_atomic

    kind = best.get("inference_kind", "analytic")
    scale, unit = (1e9, "GFLOPs per forward pass") if kind == "analytic" else (1e-3, "ms per forward pass")
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    skipped = table[~table["trained"]]
    ax.scatter(skipped["params"] / 1e6, skipped["inference"] / scale, s=10, c="lightgrey",
               label="not trained")
    done = table[table["status"] == "done"]
    points = ax.scatter(done["params"] / 1e6, done["inference"] / scale, c=done["error"], s=40,
                        cmap="viridis_r", edgecolors="black", linewidths=0.4, label="trained")
    fig.colorbar(points, ax=ax, label="error ê (KD cross-entropy vs the maximum point, nats)")
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
                   label="W-optimum ⟨{}, {}, {}, {}⟩".format(*best["size"]))
    ax.set_xlabel("parameters p̂ (millions)")
    ax.set_ylabel(f"inference proxy î ({unit})")
    ax.set_title("bortsearch: candidates, Pareto front and W-optimum")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    path = Path(path)
    write_atomic(path, buffer.getvalue())
    return path


def show(run: str | Path) -> tuple[str, Path]:
    """The ranked table as text, and the path of the freshly written pareto.png."""
    table, best = read_results(run)
    return format_table(table, best), plot_pareto(table, best, Path(run) / "pareto.png")
