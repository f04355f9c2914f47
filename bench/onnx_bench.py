"""Deployment speed: the teacher and two students in XLA, ONNX Runtime float32 and
int8, and transformers on PyTorch (eager), at batch 1 and length 128; what int8
costs in masked-LM agreement; and the Bort-style speed-up predicted against
measured in each runtime (FLOPs, and the fitted latency model of
`bortsearch.model.latency_model`).

    python bench/onnx_bench.py [--models T,S1,S2] [--rounds 15] [--out DIR]

Each thread setting runs in its own process (`--threads 1`: pinned to one core, XLA
single-threaded, ONNX Runtime and torch one thread; `--threads all`: every core).
Within a process the runtimes run interleaved, one timed block each in turn, so load
hits all alike; the figure is the median over rounds of CPU time (process time) per
forward pass, wall time beside it, with the load average. Encoder scope (no
masked-LM head: what a student deployed downstream runs). The PyTorch column needs
torch (not a bortsearch dependency): put it on PYTHONPATH.

Models default to the reference teacher (bench/teacher_reference.py) and two
students pretrained by bench/bort_small.py (the pick and the smallest); int8
agreement is measured on Gutenberg valid (../shared/data), masked as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("BORTSEARCH_CACHE", Path.home() / ".cache" / "bortsearch"))
DEFAULT_MODELS = [CACHE / "teachers/reference-cpu/stage2",
                  CACHE / "bench/bort-small-cpu/students/2-4-256-512",
                  CACHE / "bench/bort-small-cpu/students/1-2-64-256"]
RUNTIMES = ("xla", "onnx", "onnx-int8", "torch")


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(map(str, DEFAULT_MODELS)))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=5, help="forward passes per timed block")
    p.add_argument("--threads", choices=["1", "all"], help="(internal) one setting only")
    p.add_argument("--out", default=str(CACHE / "bench/onnx"))
    p.add_argument("--space", default=str(HERE.parent / "search_spaces/bort_small.toml"))
    p.add_argument("--skip-agreement", action="store_true")
    return p.parse_args()


ARGS = parse()
if ARGS.threads == "1":  # before XLA, ONNX Runtime and torch start their pools
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(HERE.parent))


def timings(models: list[Path], threads: int | None) -> dict:
    """{model: {runtime: {cpu_s, wall_s}}}, interleaved rounds, encoder scope."""
    import jax
    import numpy as np

    from bortsearch import load
    from bortsearch.deploy.onnx_export import (
        feeds as graph_feeds,
    )
    from bortsearch.deploy.onnx_export import (
        onnx_graph,
        quantize_int8,
        session,
    )
    from bortsearch.model.encoder import forward_hidden

    try:
        import torch
        torch.set_num_threads(threads or os.cpu_count())
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    out = {}
    work = Path(ARGS.out) / "graphs"
    work.mkdir(parents=True, exist_ok=True)
    for path in models:
        model = load(path)
        ids = rng.integers(5, model.arch.vocab_size, (1, min(128, model.arch.max_seq_len)))
        mask = np.ones_like(ids)
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                 "token_type_ids": np.zeros_like(ids, dtype=np.int64)}
        g = work / f"{path.name}-encoder.onnx"
        q = work / f"{path.name}-encoder-int8.onnx"
        g.write_bytes(onnx_graph(model, head=False).SerializeToString())
        quantize_int8(g, q)
        params = jax.device_put(model.params)
        jids, jmask, jtypes = (jax.device_put(x.astype(np.int32)) for x in
                               (ids, mask, np.zeros_like(ids)))
        runners = {
            "xla": lambda: forward_hidden(model.arch, params, jids, jmask,
                                          jtypes).block_until_ready(),
        }
        for name, file in (("onnx", g), ("onnx-int8", q)):
            sess = session(file, threads)
            runners[name] = lambda s=sess, f=graph_feeds(sess, feeds): s.run(None, f)
        if torch is not None:
            runners["torch"] = _torch_runner(path, ids)
        for run in runners.values():  # warm-up (compiles, allocations)
            for _ in range(3):
                run()
        samples = {k: [] for k in runners}
        for _ in range(ARGS.rounds):
            for name, run in runners.items():
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(ARGS.calls):
                    run()
                samples[name].append(((time.process_time() - c0) / ARGS.calls,
                                      (time.perf_counter() - w0) / ARGS.calls))
        out[path.name] = {k: {"cpu_s": statistics.median(c for c, _ in v),
                              "wall_s": statistics.median(w for _, w in v)}
                          for k, v in samples.items()}
        out[path.name]["params"] = model.num_params
        out[path.name]["size"] = list(model.arch.size)
    return out


def _torch_runner(path: Path, ids):
    import torch
    from transformers import AutoModel

    tm = AutoModel.from_pretrained(str(path), add_pooling_layer=False).eval()
    t = torch.tensor(ids, dtype=torch.long)
    mask = torch.ones_like(t)

    def run():
        with torch.no_grad():
            tm(input_ids=t, attention_mask=mask)
    return run


def agreement(models: list[Path]) -> dict:
    """int8 against float32 in ONNX Runtime on masked Gutenberg valid text: top-1
    agreement at the masked positions, accuracy of each, and the logit error."""
    import numpy as np

    from bortsearch import load
    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.deploy.onnx_export import onnx_graph, quantize_int8, run_logits, session

    valid = HERE.parent.parent / "shared/data/gutenberg/valid.txt"
    if not valid.is_file():
        return {}
    out = {}
    work = Path(ARGS.out) / "graphs"
    for path in models:
        model = load(path)
        g, q = work / f"{path.name}-mlm.onnx", work / f"{path.name}-mlm-int8.onnx"
        g.write_bytes(onnx_graph(model).SerializeToString())
        quantize_int8(g, q)
        fp, i8 = session(g), session(q)
        data = load_data(resolve_corpus([str(valid)], "text"), model.tokenizer,
                         BatchSpec(16, 128, seed=0), progress=False)
        n = agree = hit_fp = hit_i8 = 0
        err = []
        for batch in data.heldout_batches()[:4]:
            ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
            a, b = run_logits(fp, ids, mask), run_logits(i8, ids, mask)
            pos, lab, w = (np.asarray(batch[k]) for k in ("positions", "labels", "weights"))
            rows = np.arange(len(ids))[:, None]
            la, lb = a[rows, pos], b[rows, pos]
            keep = w > 0
            n += keep.sum()
            agree += ((la.argmax(-1) == lb.argmax(-1)) & keep).sum()
            hit_fp += ((la.argmax(-1) == lab) & keep).sum()
            hit_i8 += ((lb.argmax(-1) == lab) & keep).sum()
            err.append(np.abs(la - lb)[keep].mean(-1))
        err = np.concatenate(err)
        out[path.name] = {"positions": int(n), "top1_agreement": agree / n,
                          "accuracy_fp32": hit_fp / n, "accuracy_int8": hit_i8 / n,
                          "mean_abs_logit_error": float(err.mean()),
                          "logit_std": float(a.std())}
    return out


def speedups(space: str, threads: int | None) -> dict:
    """Maximum point over each architecture of the space's sample, measured in
    each ONNX/XLA runtime, against FLOPs and the fitted model (fitted on the
    sample, judged on held-out architectures of the space)."""
    from bortsearch import load_space
    from bortsearch.deploy.latency import measure_latency
    from bortsearch.model.latency_model import fit_latency, sample
    from bortsearch.model.proxies import forward_flops
    archs = list(load_space(space).architectures(vocab_size=8192))
    T = max(archs, key=lambda a: forward_flops(a, 1, 128, "encoder"))
    fit_on = sample([a for a in archs if a != T], 8, 1, 128, "encoder") + [T]
    held = [a for a in sample([a for a in archs if a not in fit_on], 6, 1, 128, "encoder")]
    out = {}
    for runtime in ("xla", "onnx", "onnx-int8"):
        t = {a: measure_latency(a, 1, 128, repeats=15, scope="encoder", runtime=runtime)["median_s"]
             for a in fit_on + held}
        model = fit_latency(fit_on, [t[a] for a in fit_on], 1, 128, "encoder")
        rows = []
        for a in held:
            measured = t[T] / t[a]
            by_flops = forward_flops(T, 1, 128, "encoder") / forward_flops(a, 1, 128, "encoder")
            by_model = model.predict(T) / model.predict(a)
            rows.append({"size": list(a.size), "measured": measured, "flops": by_flops,
                         "fitted": by_model})
        out[runtime] = {"rows": rows, "model": model.summary(),
                        "max_abs_error_flops": max(abs(r["flops"] / r["measured"] - 1)
                                                   for r in rows),
                        "max_abs_error_fitted": max(abs(r["fitted"] / r["measured"] - 1)
                                                    for r in rows)}
    return out


def child(threads: str) -> None:
    models = [Path(m) for m in ARGS.models.split(",")]
    n = 1 if threads == "1" else None
    res = {"threads": threads, "load_before": os.getloadavg()[0],
           "timings": timings(models, n)}
    if threads == "all":
        res["speedups"] = speedups(ARGS.space, n)
        if not ARGS.skip_agreement:
            res["agreement"] = agreement(models)
    res["load_after"] = os.getloadavg()[0]
    print(json.dumps(res, default=float))


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    if ARGS.threads:
        return child(ARGS.threads)
    results = []
    for threads in ("1", "all"):
        cmd = [sys.executable, __file__, "--threads", threads, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_bench.json").write_text(json.dumps(results, indent=2, default=float))
    print(report(results))


def report(results: list[dict]) -> str:
    import jax

    lines = []
    for r in results:
        # one thread: CPU time; every core: wall time (what a user waits; CPU time
        # counts each spinning thread)
        key, what = ("cpu_s", "CPU") if r["threads"] == "1" else ("wall_s", "wall")
        lines += [f"### {r['threads']} thread(s), encoder at batch 1, length 128, {what} time "
                  f"per forward pass (load {r['load_before']:.1f} → {r['load_after']:.1f})", "",
                  "| model | params | XLA ms | ONNX fp32 ms | ONNX int8 ms | PyTorch ms | "
                  "XLA / PyTorch | int8 / PyTorch |", "|---|---|---|---|---|---|---|---|"]
        timings = list(r["timings"].items())
        for name, t in timings:
            torch_ms = t.get("torch", {}).get(key)
            cells = [f"{1e3 * t[k][key]:.2f}" if k in t else "—"
                     for k in ("xla", "onnx", "onnx-int8", "torch")]

            def ratio(k):
                return f"{torch_ms / t[k][key]:.2f}x faster" if torch_ms else "—"

            lines.append(f"| {name} ⟨{','.join(map(str, t['size']))}⟩ | {t['params']:,} | "
                         + " | ".join(cells) + f" | {ratio('xla')} | {ratio('onnx-int8')} |")
        if len(timings) > 1:
            (a, ta), (b, tb) = timings[0], timings[1]
            lines += ["", f"Speed-up of {a} over {b}: " + ", ".join(
                f"{k} {ta[k][key] / tb[k][key]:.2f}x" for k in ("xla", "onnx", "onnx-int8", "torch")
                if k in ta and k in tb) + f"; {b} in int8 against {a} in XLA float32: "
                f"{ta['xla'][key] / tb['onnx-int8'][key]:.2f}x"]
        lines.append("")
        if "speedups" in r:
            lines += ["Speed-up of the maximum point over held-out architectures: measured, "
                      "and predicted by FLOPs and by the latency model fitted on 8 others + T", "",
                      "| runtime | architecture | measured | FLOPs | fitted |",
                      "|---|---|---|---|---|"]
            for runtime, s in r["speedups"].items():
                for row in s["rows"]:
                    lines.append(f"| {runtime} | ⟨{','.join(map(str, row['size']))}⟩ | "
                                 f"{row['measured']:.2f}x | {row['flops']:.2f}x | "
                                 f"{row['fitted']:.2f}x |")
                lines.append(f"| {runtime} | **worst error** | | "
                             f"{100 * s['max_abs_error_flops']:.0f}% | "
                             f"{100 * s['max_abs_error_fitted']:.0f}% |")
            lines.append("")
        if r.get("agreement"):
            lines += ["int8 against float32 (ONNX Runtime) at the masked positions of "
                      "Gutenberg valid:", "",
                      "| model | positions | top-1 agreement | accuracy fp32 | accuracy int8 | "
                      "mean abs logit error (logit std) |", "|---|---|---|---|---|---|"]
            for name, a in r["agreement"].items():
                lines.append(f"| {name} | {a['positions']} | {a['top1_agreement']:.3f} | "
                             f"{a['accuracy_fp32']:.3f} | {a['accuracy_int8']:.3f} | "
                             f"{a['mean_abs_logit_error']:.3f} ({a['logit_std']:.2f}) |")
            lines.append("")
    lines.append(f"CPU: {_cpu()}, {os.cpu_count()} cores; jax {jax.__version__}")
    return "\n".join(lines)


def _cpu() -> str:
    from bortsearch.model.proxies import _cpu_model

    return _cpu_model()


if __name__ == "__main__":
    main()
