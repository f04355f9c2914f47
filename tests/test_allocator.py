"""`bortsearch.setup_process()` keeps freed memory in the process (bortsearch/allocator.py):
a program whose temporaries exceed glibc's largest mmap threshold then reuses
them instead of page-faulting fresh memory in on every call."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

PROGRAM = """
import resource
import bortsearch
import jax, jax.numpy as jnp
if SETUP:
    bortsearch.setup_process()  # after the imports, before the first computation, as the CLI does
f = jax.jit(lambda x: jnp.cumsum(x)[::4].sum())  # a 64 MiB temporary
x = jnp.ones(16 << 20, jnp.float32)
faults = []
for _ in range(12):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(min(faults[4:]))  # once the heap has grown to its working size
"""


def _fewest_faults_per_call(setup: bool = True, **env) -> float:
    base = {k: v for k, v in os.environ.items()
            if k not in ("GLIBC_TUNABLES", "BORTSEARCH_SYSTEM_MALLOC", "XLA_FLAGS")}
    out = subprocess.run([sys.executable, "-c", f"SETUP = {setup}\n{PROGRAM}"],
                         capture_output=True, text=True, check=True,
                         env={**base, "JAX_PLATFORMS": "cpu", **env})
    return float(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_not_faulted_in_again():
    kept = _fewest_faults_per_call()
    system = _fewest_faults_per_call(BORTSEARCH_SYSTEM_MALLOC="1")
    # 64 MiB is 16,384 pages: glibc's defaults fault them in again on every call.
    assert system > 10_000
    assert kept < 1_000
    # importing bortsearch alone leaves the process's malloc as it was
    assert _fewest_faults_per_call(setup=False) > 10_000


def test_child_processes_get_the_same_settings(monkeypatch):
    from bortsearch.allocator import TRIM_THRESHOLD, tunables

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("BORTSEARCH_SYSTEM_MALLOC", raising=False)
    assert tunables() == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                                            f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}"}
    monkeypatch.setenv("BORTSEARCH_SYSTEM_MALLOC", "1")
    assert tunables() == {}
