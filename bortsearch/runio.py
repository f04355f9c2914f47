"""What a run writes and where: crash-safe files and folders (whole or not at all),
settings records, run locks, the cache folder and progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where tokenised corpora, tokenizers, teachers and compiled code are kept:
    `$BORTSEARCH_CACHE`, else `~/.cache/bortsearch`."""
    root = os.environ.get("BORTSEARCH_CACHE") or Path.home() / ".cache" / "bortsearch"
    return Path(root)


def progress_bar(**kwargs):
    """A tqdm bar: live on a terminal, a line every 30 s in a log file."""
    import sys

    from tqdm import tqdm

    return tqdm(mininterval=0.5 if sys.stderr.isatty() else 30, dynamic_ncols=True, **kwargs)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file through a temporary sibling, fsync it, and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600, made what open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in blocks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(target: str | Path):
    """Yield a temporary folder beside `target`; on success it replaces `target`.

    On an exception the temporary folder is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, made what mkdir would give
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old", dir=target.parent))
        os.replace(target, old / "x")
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


# Settings added after runs were first recorded, with what a record without them meant.
LATER_SETTINGS = {"dtype": "float32", "objective": "mlm", "sop_weight": 1.0, "halving": None,
                  "inherit": "first", "inherit_layers": "uniform", "hidden_weight": 0.0}


def check_settings(path: str | Path, settings: dict, what: str, fix: str,
                   started: bool = True) -> None:
    """Record `settings` at `path`, or refuse if a different record is there.

    The error names every differing setting with both values. `started=False`
    says that no work was finished under the old record (a first attempt that
    failed before doing any): the new settings then simply replace it, so a
    corrected command is never blocked by the mistake it corrects.
    """
    from bortsearch.errors import UserError

    path = Path(path)
    if not path.is_file() or not started:
        write_json(path, settings)
        return
    try:
        old = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON (was it edited?); restore it, or start "
                        f"over in a new folder") from None
    old = {**{k: v for k, v in LATER_SETTINGS.items() if k in settings}, **old}
    differing = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if differing:
        detail = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now"
                           for k in differing)
        raise UserError(f"{what} was made with other settings ({detail}); {fix}")


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str):
    """Hold `folder/.lock` for the duration: a second process that asks for the
    same folder is refused with a message naming the owner (pid and host),
    instead of both doing all the work.

    An advisory `flock`, so a killed owner's lock is released by the operating
    system: a stale lock file never blocks a resume.
    """
    import fcntl
    import socket

    from bortsearch.errors import UserError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise UserError(f"{folder}: {what} is already running ({owner}); wait for it to "
                            f"finish, or stop it first: a second one would do the same work "
                            f"twice") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def enable_compilation_cache() -> None:
    """XLA's persistent cache: a repeated shape compiles once per machine (used by
    the search, and by Ray workers on their own machines)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    # programs that compile faster than this are not worth a file (the test suite,
    # whose tiny programs recompile in many subprocesses, sets 0)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("BORTSEARCH_CACHE_MIN_COMPILE_S", "0.3")))
