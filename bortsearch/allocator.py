"""Keep freed memory in the process, so that training steps do not page-fault.

XLA's CPU backend allocates each execution's temporaries as one block (61 MB for a
step of the demo's smallest candidate, more for larger ones) and frees it when the
step ends. glibc serves a block that large with mmap and returns it with munmap,
so every step touches fresh pages: 15,800 page faults and 25 ms of kernel time in
a 57 ms candidate step, half of the step. With one arena, no mmap for
large blocks and freed memory kept up to 1 GiB, the block is reused: the same
step takes 0.2 ms of kernel time.

`keep_freed_memory()` applies this with `mallopt`; it must run before JAX starts
its threads (each thread's arena is fixed at its first allocation), so
`bortsearch.setup_process()` calls it (bortsearch/process.py). Child processes that
do not call it get the same settings from `GLIBC_TUNABLES` (`tunables()`).
Set BORTSEARCH_SYSTEM_MALLOC=1 to leave glibc's defaults alone. Other C
libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform

TRIM_THRESHOLD = 1 << 30  # bytes of freed memory the heap may keep
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters


def _glibc():
    if os.environ.get("BORTSEARCH_SYSTEM_MALLOC") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """One malloc arena, no mmap for large blocks, freed memory kept (glibc only).

    Returns whether the settings were applied.
    """
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))


def tunables() -> dict[str, str]:
    """The same settings as environment variables for a child process (empty where
    they do not apply or a GLIBC_TUNABLES is already set)."""
    if _glibc() is None or "GLIBC_TUNABLES" in os.environ:
        return {}
    return {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                              f"glibc.malloc.trim_threshold={TRIM_THRESHOLD}"}
