"""The proxies of Ξ and T (p̂ and î: analytic FLOPs, measured or fitted latency) and
the measured speed-up of the pick over T; measurements are journalled, so a resumed
run does not measure again."""

from __future__ import annotations

import statistics

from bortsearch.deploy.latency import measure_latency
from bortsearch.model.arch import Arch
from bortsearch.model.proxies import forward_flops, size_proxy
from bortsearch.search.algorithm import Proxies, Result
from bortsearch.search.config import SearchConfig
from bortsearch.search.journal import Event, Journal, arch_key


def search_proxies(archs, cfg: SearchConfig, journal: Journal, events,
             progress) -> tuple[dict, dict | None]:
    """p̂ and î for Ξ and T, and the fitted latency model's summary (or None).
    Measured latencies are journalled, so a resumed run does not measure again.
    `fitted`: the latency model of `latency_model`, fitted on `FITTED_SAMPLE`
    measured architectures of Ξ and on T."""
    scope = cfg.inference_scope
    if cfg.inference == "analytic":
        return {a: Proxies(size_proxy(a, cfg.size_proxy),
                           float(forward_flops(a, 1, cfg.seq_len, scope))) for a in archs}, None
    if cfg.inference == "fitted":
        from bortsearch.model.latency_model import fit_latency, sample

        xi, T = archs[:-1], archs[-1]
        measured = sample(xi, FITTED_SAMPLE, 1, cfg.seq_len, scope)
        measured += [T] if T not in measured else []
        times = measured_latencies(measured, cfg, journal, events, progress, rounds=LATENCY_ROUNDS)
        model = fit_latency(measured, [times[a] for a in measured], 1, cfg.seq_len, scope)
        return ({a: Proxies(size_proxy(a, cfg.size_proxy), model.predict(a)) for a in archs},
                model.summary())
    times = measured_latencies(archs, cfg, journal, events, progress)
    return {a: Proxies(size_proxy(a, cfg.size_proxy), times[a]) for a in archs}, None


FITTED_SAMPLE = 8  # architectures measured to fit `--inference fitted`, besides T
LATENCY_ROUNDS = 5  # interleaved rounds for the fitted model's sample and the speed-up check


def measured_latencies(archs, cfg: SearchConfig, journal: Journal, events, progress,
              rounds: int = 1) -> dict:
    """Measured median latency of each architecture, from the journal or measured now:
    with `rounds` > 1, the median over that many rounds, each round over every
    architecture in turn (starting one further on each round), so that drifts in the
    machine's load hit all of them alike."""
    scope = cfg.inference_scope
    from bortsearch.runio import progress_bar

    if cfg.runtime != "xla":
        from bortsearch.deploy.onnx_export import require_onnx

        require_onnx()
    # a run resumed with another --runtime measures again; each runtime's own figures
    known: dict = {}
    for e in events:
        if e["event"] == Event.LATENCY and e.get("runtime", "xla") == cfg.runtime:
            known.setdefault(tuple(e["arch"]), []).append(e["median_s"])
    archs = list(dict.fromkeys(archs))  # T may be in Ξ too
    todo = [(r, a) for r in range(rounds)
            for a in archs[r % len(archs):] + archs[:r % len(archs)]
            if len(known.get(a.size, [])) <= r]
    for _, a in progress_bar(iterable=todo, desc=f"measuring latency ({cfg.runtime})",
                             unit="arch", disable=not progress or not todo):
        m = measure_latency(a, batch=1, seq_len=cfg.seq_len, scope=scope, runtime=cfg.runtime)
        known.setdefault(a.size, []).append(m["median_s"])
        journal.append({"event": Event.LATENCY, "arch": arch_key(a), "median_s": m["median_s"],
                        "iqr_s": m["iqr_s"], "hardware": m["hardware"],
                        **({"runtime": cfg.runtime} if cfg.runtime != "xla" else {})})
    return {a: statistics.median(known[a.size][:rounds]) for a in archs}


def measure_speedup(result: Result, T: Arch, cfg: SearchConfig, journal: Journal,
             events: list[dict]) -> dict | None:
    """The W-optimum's speed-up over T: predicted by î, and measured on this
    machine (median latency at batch 1 and length L, the proxy's scope). The
    measurement is journalled, so a finished run is not measured again."""
    if result.best is None:
        return None
    best = result.best
    predicted = result.maximum_point.inference / best.proxies.inference
    runtime = cfg.runtime if cfg.inference != "analytic" else "xla"
    key = [arch_key(best.arch), arch_key(T), cfg.seq_len, cfg.inference_scope] \
        + ([runtime] if runtime != "xla" else [])
    known = [e for e in events if e["event"] == Event.SPEEDUP and e["key"] == key]
    if known:
        measured = known[-1]["measured"]
    else:
        # the two in turn, LATENCY_ROUNDS times: load drifts hit both alike
        rounds = [[measure_latency(a, 1, cfg.seq_len, repeats=10, scope=cfg.inference_scope,
                                   runtime=runtime) for a in (best.arch, T)]
                  for _ in range(LATENCY_ROUNDS)]
        best_s, t_s = ([r[i]["median_s"] for r in rounds] for i in (0, 1))
        measured = {"best_s": statistics.median(best_s), "maximum_point_s": statistics.median(t_s),
                    "iqr_s": [statistics.median(r[i]["iqr_s"] for r in rounds) for i in (0, 1)],
                    "rounds": LATENCY_ROUNDS,
                    "round_speedups": [t / b for t, b in zip(t_s, best_s)],
                    "hardware": rounds[0][0]["hardware"]}
        journal.append({"event": Event.SPEEDUP, "key": key, "measured": measured})
    return {"predicted": predicted, "measured": measured["maximum_point_s"] / measured["best_s"],
            "scope": cfg.inference_scope, "runtime": runtime, **measured}
