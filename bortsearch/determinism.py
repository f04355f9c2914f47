"""Deterministic programs on GPUs, by default.

On a GPU, XLA's scatter-add (the embedding table's gradient), some GEMM and
reduction kernels and autotuning choose their order of summation at run time, so
two identical searches can train to different errors and choose different students.
`--xla_gpu_deterministic_ops=true` makes XLA use deterministic implementations;
`bortsearch.setup_process()` adds it to `XLA_FLAGS` before JAX starts a backend (the
flag is read then, once per process); every command, run entry point and Ray worker
calls it. On CPUs XLA's programs are already deterministic and the flag changes
nothing.

`BORTSEARCH_GPU_NONDETERMINISTIC=1` leaves it off (faster on some GPU programs; the
cost has not been measured on a GPU yet); an `XLA_FLAGS` that already names the flag
is left as the user wrote it.
"""

from __future__ import annotations

import os

FLAG = "xla_gpu_deterministic_ops"
OPT_OUT = "BORTSEARCH_GPU_NONDETERMINISTIC"


def flag_value(name: str = FLAG) -> bool | None:
    """The value `XLA_FLAGS` gives the boolean flag `name` (the last one wins; a bare
    `--name` is true), or None where it is not named."""
    value = None
    for item in os.environ.get("XLA_FLAGS", "").split():
        key, _, v = item.lstrip("-").partition("=")
        if key == name:
            value = v.lower() not in ("false", "0") if v else True
    return value


def deterministic_gpu_programs() -> bool:
    """Add `--xla_gpu_deterministic_ops=true` to `XLA_FLAGS` unless the user named
    the flag or opted out; returns whether the flag is on for this process."""
    if flag_value() is None and os.environ.get(OPT_OUT, "") in ("", "0"):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{FLAG}=true".strip()
    return bool(flag_value())
