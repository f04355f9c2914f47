"""Measured latency (î measured): the compiled forward pass timed in XLA, or the
exported graph in ONNX Runtime (float32 or dynamic int8), as users deploy it.

The analytic proxies (parameters, FLOPs) are in `bortsearch.model.proxies`; this
module runs the model, so it sits above both the model and its ONNX export.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bortsearch.deploy.onnx_export import (
    INT8_NAME,
    ONNX_NAME,
    feeds,
    onnx_graph,
    quantize_int8,
    require_onnx,
    session,
)
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import Model, forward_hidden, forward_logits, init_params
from bortsearch.model.proxies import (
    DEFAULT_BATCH,
    DEFAULT_SEQ_LEN,
    SCOPES,
    hardware_fingerprint,
)


def time_calls(call, repeats: int, warmup: int) -> dict:
    """`warmup` untimed calls, then the median and inter-quartile range (seconds)
    of `repeats` timed ones; `call` must return only when its work is done."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"median_s": statistics.median(times), "iqr_s": q3 - q1, "repeats": repeats}


RUNTIMES = ("xla", "onnx", "onnx-int8")  # where a measured î runs the forward pass


def measure_latency(arch: Arch, batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
                    repeats: int = 20, warmup: int = 2, seed: int = 0,
                    scope: str = "mlm", runtime: str = "xla") -> dict:
    """î measured: wall-clock of the compiled forward on the default device
    (`scope` as in `forward_flops`: with or without the masked-LM head), in XLA
    (`runtime="xla"`), or in ONNX Runtime on the CPU, float32 (`"onnx"`) or with
    dynamic int8 quantisation (`"onnx-int8"`), every core, as users deploy it.

    Compiles ahead of time (outside the timing), runs `warmup` calls, then times
    `repeats` calls each ended by `block_until_ready` (JAX dispatch is
    asynchronous). Returns the median and the inter-quartile range in seconds,
    the compile time, and the hardware fingerprint.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope=}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime=}")

    params = init_params(arch, seed)
    if runtime != "xla":
        m = measure_onnx_latency(Model(arch, params), batch, seq_len, scope,
                                 int8=runtime == "onnx-int8", repeats=repeats, warmup=warmup,
                                 seed=seed)
        hardware = {**hardware_fingerprint(), "runtime": runtime,
                    "onnxruntime": m.pop("onnxruntime"), "threads": m["threads"]}
        return {**m, "runtime": runtime, "hardware": hardware}
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, arch.vocab_size, (batch, seq_len), dtype=np.int32)
    ids = jax.device_put(ids)
    mask = jax.device_put(np.ones((batch, seq_len), np.int32))
    types = jax.device_put(np.zeros((batch, seq_len), np.int32))
    t0 = time.perf_counter()
    program = forward_logits if scope == "mlm" else forward_hidden
    forward = program.lower(arch, params, ids, mask, types).compile()
    compile_s = time.perf_counter() - t0
    return {
        **time_calls(lambda: forward(params, ids, mask, types).block_until_ready(),
                     repeats, warmup),
        "compile_s": compile_s,
        "batch": batch,
        "seq_len": seq_len,
        "scope": scope,
        "runtime": runtime,
        "hardware": hardware_fingerprint(),
    }


def onnx_runner(model: Model, batch: int, seq_len: int, scope: str = "mlm",
                int8: bool = False, threads: int | None = None, seed: int = 0):
    """An ONNX Runtime session of the model's graph (float32, or dynamically quantised
    int8; with the masked-LM head when `scope` is "mlm") with `threads` intra-op threads
    (None: every core), fed random ids at batch x seq_len. Returns (call, prepare_s):
    `call()` runs the forward pass once; prepare_s is the seconds building it took."""
    require_onnx()
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.arch.vocab_size, (batch, seq_len), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bortsearch-onnx-") as d:
        path = Path(d) / ONNX_NAME
        path.write_bytes(onnx_graph(model, head=scope == "mlm").SerializeToString())
        if int8:
            quantize_int8(path, Path(d) / INT8_NAME)
            path = Path(d) / INT8_NAME
        sess = session(path, threads)
    feed = feeds(sess, feed)
    return (lambda: sess.run(None, feed)), time.perf_counter() - t0


def measure_onnx_latency(model: Model, batch: int, seq_len: int, scope: str = "mlm",
                         int8: bool = False, threads: int | None = None, repeats: int = 20,
                         warmup: int = 2, seed: int = 0) -> dict:
    """Median wall-clock of `onnx_runner`'s call; the same fields as `measure_latency`."""
    _, ort = require_onnx()
    call, prepare_s = onnx_runner(model, batch, seq_len, scope, int8, threads, seed)
    return {**time_calls(call, repeats, warmup),
            "compile_s": prepare_s, "batch": batch, "seq_len": seq_len, "scope": scope,
            "threads": threads or os.cpu_count(), "onnxruntime": ort.__version__}
