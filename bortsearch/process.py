"""What a bortsearch process sets up before JAX starts a backend.

`setup_process()` keeps freed memory in the process (`bortsearch.allocator`: training
steps then do not page-fault) and asks XLA for deterministic GPU programs
(`bortsearch.determinism`). `import bortsearch` changes nothing: the command line
calls it first thing, and so does each entry point that runs work (`run_search`,
`pretrain`, `train_teacher`, `finetune`, `glue`, the Ray workers). A program that
uses the library's pieces directly calls it itself, before its first JAX
computation:

    import bortsearch
    bortsearch.setup_process()
"""

from __future__ import annotations

from bortsearch.allocator import keep_freed_memory
from bortsearch.determinism import deterministic_gpu_programs


def setup_process() -> dict[str, bool]:
    """Apply the process settings (idempotent).

    Returns:
      {"keep_freed_memory": whether glibc's malloc settings were applied,
       "deterministic_gpu_programs": whether XLA's deterministic-ops flag is on}.
    """
    return {"keep_freed_memory": keep_freed_memory(),
            "deterministic_gpu_programs": deterministic_gpu_programs()}
