import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

# The suite keeps out of the user's home folder: what libraries write there (Ray's
# token file, ONNX Runtime's telemetry database, matplotlib's cache) goes to one
# temporary home for the session, which every worker and subprocess inherits.
os.environ.setdefault("BORTSEARCH_TEST_HOME", tempfile.mkdtemp(prefix="bortsearch-home-"))
os.environ["HOME"] = os.environ["BORTSEARCH_TEST_HOME"]

# A shared persistent compilation cache keeps repeated compiles of the same tiny
# models cheap across test files.
os.environ.setdefault("BORTSEARCH_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))

# XLA's backend at optimisation level 0 for the suite (every subprocess inherits it):
# the tests' models are tiny, so compiling is most of their work, and level 0
# compiles about a third faster; the numerics the tests check are unchanged within
# their tolerances. `BORTSEARCH_TEST_XLA_OPT=default` runs the suite as users compile.
TEST_XLA_FLAGS = ("" if os.environ.get("BORTSEARCH_TEST_XLA_OPT") == "default"
                  else "--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
# Every compiled program goes to the shared cache, however fast it compiled: the same
# tiny programs compile again in many subprocesses.
os.environ.setdefault("BORTSEARCH_CACHE_MIN_COMPILE_S", "0")


def xla_flags(devices: int = 1) -> str:
    """XLA_FLAGS for a subprocess: the suite's, with `devices` CPU devices."""
    many = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    return f"{TEST_XLA_FLAGS} {many}".strip()

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


TINY_SPACE = """name = "tiny"
layers = [1, 2]
heads = [2]
hidden = [16, 32]
intermediate = [32, 64]
"""


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A tiny BERT-family teacher trained briefly on the embedded corpus."""
    from bortsearch import (
        Arch,
        TeacherConfig,
        resolve_corpus,
        train_teacher,
        train_tokenizer,
    )

    out = tmp_path_factory.mktemp("teacher") / "t"
    corpus = resolve_corpus(None)
    tok = train_tokenizer(corpus, 300)
    arch = Arch(2, 2, 32, 64, vocab_size=tok.vocab_size, max_positions=64)
    train_teacher(out, arch, corpus, tok, TeacherConfig(steps=40, lr=2e-3,
                  batch_size=8, seq_len=32), progress=False)
    return out


@pytest.fixture
def space(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY_SPACE)
    return f


def kill_when(proc, ready, timeout=180.0):
    """SIGKILL `proc` as soon as `ready()` holds (polled every 20 ms)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the process ended before it could be killed"


def has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_job(argv: list[str], n: int = 2, per_process=None, env=None):
    """Start `argv` (a bortsearch command line) as an n-process JAX job on this
    machine, one CPU device each; `per_process(i)` adds flags to process i."""
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "bortsearch")
    job = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(n)]
    environ = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    return [subprocess.Popen([exe, *argv, *job, "--process-id", str(i),
                              *(per_process(i) if per_process else [])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**environ, **(env or {})})
            for i in range(n)]


def wait_job(procs, timeout=300) -> list[tuple[int, str]]:
    """(exit code, stderr) of every process of a job."""
    return [(p.wait(timeout=timeout), p.stderr.read()) for p in procs]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, teacher):
    """A finished search over TINY_SPACE with the session's teacher (copy it: `run`)."""
    from bortsearch.cli import main

    d = tmp_path_factory.mktemp("run")
    (d / "space.toml").write_text(TINY_SPACE)
    assert main(["search", "--space", str(d / "space.toml"), "--run", str(d / "run"),
                 "--teacher", str(teacher), "--epsilon", "4", "--steps", "5", "--batch-size",
                 "8", "--seq-len", "32", "--quiet"]) == 0
    return d / "run"


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of `finished_run` that a test may change."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy

