"""`make bench`: throughput and where the time goes, on this machine's default device.

1. The machine's float32 matmul peak, measured (jit, warm-up, block_until_ready,
   best of several sizes and repeats).
2. A fixed small search (demo space, ε = 6 → 6 candidates, s = 100, Θ = {1e-3}, one
   seed, random initialisation, batch 32 × 64, the embedded corpus) on a cold XLA
   compilation cache, so the compile figures are those of a first search. The
   teacher is trained once and cached, and is not part of the timing.
3. Per candidate and in total: training tokens/s, model FLOP/s and its fraction
   of the matmul peak, compile share and teacher share of the candidate phase.
4. The same search once more with the compilation cache now warm (a re-run, a
   resume): its compile time and share.

Not a test: it asserts nothing and its numbers depend on the machine.
Run it with `make bench`; the same code runs on a GPU unchanged.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import bortsearch.search.run as run_module
from bortsearch.model.proxies import hardware_fingerprint, param_count
from bortsearch.search.run import SearchConfig, run_search, timings

ROOT = Path(__file__).resolve().parent.parent


def matmul_peak(sizes=(512, 1024, 2048), repeats=10) -> tuple[float, int]:
    """Best float32 matmul FLOP/s over a few square sizes."""
    best, best_n = 0.0, 0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        f = jax.jit(lambda x, y: x @ y)
        f(a, a).block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, a).block_until_ready()
            times.append(time.perf_counter() - t0)
        flops = 2 * n**3 / min(times)
        if flops > best:
            best, best_n = flops, n
    return best, best_n


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    hw = hardware_fingerprint()
    print(f"bortsearch benchmark — {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{os.getloadavg()[0]:.1f} (the machine's other work changes every figure)")
    print(f"device: {hw['platform']} / {hw['device_kind']} x{hw['device_count']}; "
          f"CPU: {hw['cpu']}, {hw['cores']} cores; jax {hw['jax']}")
    peak, n = matmul_peak()
    print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({n}x{n})\n")

    jax_cache = Path(tempfile.mkdtemp(prefix="bortsearch-bench-xla-"))

    def cold_cache():
        jax.config.update("jax_compilation_cache_dir", str(jax_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

    run_module.enable_compilation_cache = cold_cache
    run_dir = Path(tempfile.mkdtemp(prefix="bortsearch-bench-run-"))
    cfg = SearchConfig(space=str(ROOT / "search_spaces" / "demo.toml"), epsilon=6, steps=100,
                       lrs=(1e-3,), seeds=1, init="random", batch_size=32, seq_len=64)
    # Train (or reuse) the teacher outside the timing.
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.search.space import load_space

    run_module.prepare_teacher(cfg, load_space(cfg.space), resolve_corpus(None),
                               log=lambda *a: None, progress=False)
    t0 = time.perf_counter()
    run_search(run_dir, cfg, progress=False, log=lambda *a: None)
    wall = time.perf_counter() - t0

    t = timings(run_dir)
    print(f"{'candidate':<18} {'params':>9} {'tok/s':>9} {'GFLOP/s':>8} {'% peak':>7} "
          f"{'compile s':>9} {'train s':>8} {'teacher s':>9}")
    for r in t.itertuples():
        print(f"{str(r.arch):<18} {param_count(_arch(run_dir, r.arch)):>9,} "
              f"{r.tokens_per_s:>9.0f} {r.model_flops_per_s / 1e9:>8.1f} "
              f"{100 * r.model_flops_per_s / peak:>6.1f}% {r.compile_s:>9.2f} {r.train_s:>8.2f} "
              f"{r.teacher_s:>9.2f}")
    phase = t[["compile_s", "train_s", "teacher_s", "eval_s"]].sum()
    total = phase.sum()
    tokens = (t["tokens_per_s"] * t["train_s"]).sum()
    flops = (t["model_flops_per_s"] * t["train_s"]).sum()
    print(f"\ntotal: {len(t)} candidates, search wall {wall:.1f} s "
          f"(candidate phase {total:.1f} s)")
    print(f"training: {tokens / phase['train_s']:.0f} tokens/s, "
          f"{flops / phase['train_s'] / 1e9:.1f} GFLOP/s = "
          f"{100 * flops / phase['train_s'] / peak:.1f}% of the matmul peak")
    other = wall - total
    print("search wall split: " + ", ".join(
        f"{name} {100 * v / wall:.1f}%" for name, v in (
            ("compile", phase["compile_s"]), ("train", phase["train_s"]),
            ("teacher", phase["teacher_s"]), ("eval", phase["eval_s"]), ("other", other))))
    busy = t["compile_busy_s"].sum() if "compile_busy_s" in t else float("nan")
    print(f"compile: the search waited {phase['compile_s']:.1f} s for compiles that took "
          f"{busy:.1f} s in all (the rest overlapped other compiles or training)")
    print(f"compile share {100 * phase['compile_s'] / total:.1f}%  "
          f"teacher share {100 * phase['teacher_s'] / total:.1f}%  "
          f"held-out eval share {100 * phase['eval_s'] / total:.1f}%  "
          f"(of the candidate phase)")

    # The same search again in a new run folder: XLA's persistent cache is warm now.
    warm_dir = Path(tempfile.mkdtemp(prefix="bortsearch-bench-run-"))
    t0 = time.perf_counter()
    run_search(warm_dir, cfg, progress=False, log=lambda *a: None)
    warm_wall = time.perf_counter() - t0
    w = timings(warm_dir)[["compile_s", "train_s", "teacher_s", "eval_s"]].sum()
    print(f"warm compilation cache (the same search again): search wall {warm_wall:.1f} s, "
          f"compile {w['compile_s']:.1f} s = {100 * w['compile_s'] / w.sum():.1f}% "
          f"(cold: {phase['compile_s']:.1f} s)")


def _arch(run_dir: Path, size):
    import json

    from bortsearch.model.arch import Arch

    base = Arch.from_dict(json.loads((run_dir / "best.json").read_text())["maximum_point"]["arch"])
    return base.with_size(*size)


if __name__ == "__main__":
    sys.exit(main())
