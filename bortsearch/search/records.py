"""A finished run's records: `results.csv` (a row per architecture of Ξ), `best.json`
(the W-optimum, its proxies, noise report and speed-up) and the candidates' timings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.proxies import effective_param_count, param_count
from bortsearch.runio import write_atomic, write_json
from bortsearch.search.algorithm import DONE, SKIPPED, Result
from bortsearch.search.config import SearchConfig
from bortsearch.search.journal import Journal, json_num

RESULT_COLUMNS = ["layers", "heads", "hidden", "intermediate", "params", "effective_params",
                  "inference", "error", "w_coefficient", "trained", "pareto", "status",
                  "best_lr", "interval", "note", "error_se", "w_se", "within_noise", "ce", "kl",
                  "confirmed_error", "confirmed_error_se", "confirmed_w", "accuracy"]


def results_table(result: Result) -> pd.DataFrame:
    rows = [{
        "layers": r.arch.layers, "heads": r.arch.heads, "hidden": r.arch.hidden,
        "intermediate": r.arch.intermediate, "params": param_count(r.arch),
        "effective_params": effective_param_count(r.arch), "inference": r.proxies.inference,
        "error": r.error, "w_coefficient": r.w, "trained": r.status != SKIPPED,
        "pareto": r.pareto, "status": r.status, "best_lr": r.best_lr, "interval": r.interval,
        "note": r.note, "error_se": r.error_se, "w_se": r.w_se, "within_noise": r.within_noise,
        "ce": r.ce, "kl": r.kl, "confirmed_error": r.confirmed_error,
        "confirmed_error_se": r.confirmed_error_se, "confirmed_w": r.confirmed_w,
        "accuracy": r.accuracy,
    } for r in result.rows]
    columns = list(RESULT_COLUMNS)
    if any(r.arch.albert for r in result.rows):  # ALBERT's axes, after intermediate
        for row, r in zip(rows, result.rows):
            row.update(embedding=r.arch.embedding_size, groups=r.arch.num_groups)
        columns[4:4] = ["embedding", "groups"]
    return pd.DataFrame(rows, columns=columns)


def write_results(run: Path, result: Result, cfg: SearchConfig, epsilon: int, T: Arch,
                  report: dict | None = None, speedup: dict | None = None,
                  latency_model: dict | None = None) -> None:
    """best.json, then results.csv (the mark of a finished run), each atomically."""
    best = result.best

    def field(name):
        return None if best is None else json_num(getattr(best, name))

    write_json(run / "best.json", {
        "arch": None if best is None else best.arch.to_dict(),
        "size": None if best is None else list(best.arch.size),
        "params": None if best is None else param_count(best.arch),
        "size_proxy": cfg.size_proxy,
        "p_hat": None if best is None else best.proxies.params,
        "effective_params": None if best is None else effective_param_count(best.arch),
        "inference": None if best is None else best.proxies.inference,
        "inference_kind": cfg.inference,
        "runtime": cfg.runtime if cfg.inference != "analytic" else None,
        "latency_model": latency_model,
        "inference_scope": cfg.inference_scope,
        "error_metric": cfg.error,
        "error": field("error"),
        "error_se": field("error_se"),
        "ce": field("ce"),
        "kl": field("kl"),
        "accuracy": field("accuracy"),
        "w_coefficient": field("w"),
        "w_se": field("w_se"),
        "best_lr": None if best is None else best.best_lr,
        "chosen_by": "confirmed" if result.confirmed else "short",
        "confirmed_error": field("confirmed_error"),
        "confirmed_w": field("confirmed_w"),
        "maximum_point": {"arch": T.to_dict(), "params": param_count(T),
                          "p_hat": result.maximum_point.params,
                          "inference": result.maximum_point.inference},
        "epsilon": epsilon, "steps": cfg.steps, "lrs": list(cfg.lrs), "seeds": cfg.seeds,
        "init": cfg.init, "confirm": cfg.confirm,
        "confirm_steps": cfg.long_steps if cfg.confirm else None,
        "constraints": {"max_params": cfg.max_params, "max_inference": cfg.max_inference},
        "reason": "" if best is not None else
        "no trained candidate is smaller and faster than the maximum point within the constraints",
        "speedup": speedup,
        "diagnostics": _json_safe(report or {}),
        "warnings": [w["message"] for w in (report or {}).get("warnings", [])],
    })
    write_atomic(run / "results.csv", results_table(result).to_csv(index=False))


def _json_safe(obj):
    """NaN and infinities as null: best.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_results(run: str | Path) -> tuple[pd.DataFrame, dict]:
    """A finished run's results table and best.json."""
    run = Path(run)
    if not (run / "results.csv").is_file():
        hint = ("the search has not finished; re-run `bortsearch search` with the same flags "
                "to resume it") if (run / "config.json").is_file() else \
            "it is not a bortsearch run folder"
        raise UserError(f"{run}: no results.csv; {hint}")
    table = pd.read_csv(run / "results.csv")
    best = json.loads((run / "best.json").read_text())
    return table, best


def timings(run: str | Path) -> pd.DataFrame:
    """Per-candidate timing of a run, from its journal (the benchmark reads this)."""
    rows = []
    for e in Journal(Path(run) / "journal.jsonl").events():
        if e["event"] == DONE and "timing" in e:
            rows.append({"arch": tuple(e["arch"]), **e["timing"]})
    return pd.DataFrame(rows)
