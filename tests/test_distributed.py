"""Pretraining across devices and processes, and its resume after SIGKILL (apart
from test_student.py so that they run on another pytest worker)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import has_checkpoint, kill_when, xla_flags
from safetensors.numpy import load_file

EXE = str(Path(sys.executable).parent / "bortsearch")


def _pretrain(run, out, *extra, env=None):
    return subprocess.Popen([EXE, "pretrain", str(run), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _last_metrics(run):
    size = json.loads((run / "best.json").read_text())["size"]
    lines = (run / "pretrain" / "-".join(map(str, size)) / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


@pytest.mark.slow
def test_pretrain_resumes_after_sigkill(run, tmp_path):
    flags = ["--steps", "400", "--batch-size", "8", "--seq-len", "32", "--lr", "1e-3",
             "--eval-every", "50", "--checkpoint-every", "25", "--quiet"]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    whole = _pretrain(other, tmp_path / "whole", *flags)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    proc = _pretrain(run, tmp_path / "out", *flags)
    size = json.loads((run / "best.json").read_text())["size"]
    kill_when(proc, lambda: has_checkpoint(
        run / "pretrain" / "-".join(map(str, size)) / "checkpoints"))
    assert not (tmp_path / "out").exists()
    resumed = _pretrain(run, tmp_path / "out", *flags)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert _last_metrics(run) == _last_metrics(other)
    a, b = (load_file(str(tmp_path / "whole" / "model.safetensors")),
            load_file(str(tmp_path / "out" / "model.safetensors")))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_devices_give_the_one_device_loss(run, tmp_path):
    flags = ["--steps", "30", "--batch-size", "8", "--seq-len", "32", "--lr", "1e-3",
             "--eval-every", "10", "--quiet"]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    one = _pretrain(run, tmp_path / "one", *flags)
    two = _pretrain(other, tmp_path / "two", *flags,
                    env={"XLA_FLAGS": xla_flags(2)})
    assert one.wait(timeout=300) == 0, one.stderr.read()
    assert two.wait(timeout=300) == 0, two.stderr.read()
    m1, m2 = _last_metrics(run), _last_metrics(other)
    assert m2["devices"] == 2 and m1["devices"] == 1
    # The same arithmetic, split across two devices: only the reduction order of
    # the gradient all-reduce differs. Tolerance: 1e-4 relative on the final loss.
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4)
    assert m2["heldout_kd_ce"] == pytest.approx(m1["heldout_kd_ce"], rel=1e-4)


@pytest.mark.slow
def test_two_process_pretraining_equals_one_process_and_survives_a_kill(run, tmp_path):
    """`pretrain` as a two-process JAX job (one CPU device each): its whole loss
    curve and its weights equal one process with two devices and the same global
    batch, bit for bit; SIGKILL of one process stops the other at once with a
    message, and the restarted job resumes from the last checkpoint to the same
    weights."""
    from conftest import launch_job, wait_job

    flags = ["--steps", "200", "--batch-size", "8", "--seq-len", "32", "--lr", "1e-3",
             "--eval-every", "10", "--checkpoint-every", "100", "--quiet"]
    other = tmp_path / "other"
    shutil.copytree(run, other)
    one = _pretrain(other, tmp_path / "one", *flags,
                    env={"XLA_FLAGS": xla_flags(2)})
    assert one.wait(timeout=300) == 0, one.stderr.read()

    size = json.loads((run / "best.json").read_text())["size"]
    work = run / "pretrain" / "-".join(map(str, size))
    job = launch_job(["pretrain", str(run), "--out", str(tmp_path / "two"), *flags])
    # killed between checkpoints (once step 110 is logged, past the checkpoint at 100),
    # so that process 0 is training: it fails at its next collective at once. (At a
    # checkpoint's barrier it learns from the heartbeats: the test below.)
    metrics = work / "metrics.jsonl"
    kill_when(job[1], lambda: metrics.is_file() and '{"step": 110,' in metrics.read_text())
    code, err = job[0].wait(timeout=60), job[0].stderr.read()
    assert code == 1 and "start every process again with the same command" in err, err
    assert not (tmp_path / "two").exists()
    assert (work / "metrics.jsonl").read_text()  # it had logged before the kill

    job = launch_job(["pretrain", str(run), "--out", str(tmp_path / "two"), *flags])
    assert [c for c, _ in wait_job(job)] == [0, 0]
    assert json.loads((work / "summary.json").read_text())["steps_run"] < 200  # resumed
    curve = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in
                 (other / "pretrain" / work.name / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in curve] == list(range(10, 201, 10))
    assert curve == reference  # "devices": 2 in both
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), \
        load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


BARRIER = """
import sys
from bortsearch.train import distributed
distributed.HEARTBEAT_TIMEOUT_S = 3
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
print("joined", flush=True)
if sys.argv[2] == "0":
    from orbax.checkpoint import multihost
    try:
        multihost.sync_global_processes("after a checkpoint")  # where Orbax waits
    except Exception as e:  # as the command line does
        distributed.leave_failed_job(e)
else:
    sys.stdin.read()  # never reaches the barrier
"""


def test_a_process_at_a_barrier_learns_of_a_killed_peer_from_the_heartbeats():
    """Process 1 is killed while process 0 waits at a barrier (as after each
    checkpoint): process 0 fails within the heartbeat timeout, not JAX's 100 s.
    Either bortsearch's message (status 1) or, when JAX's error poller is first,
    JAX's own abort; both name the missed heartbeats."""
    import time

    from conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", BARRIER, address, str(i)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        assert all(p.stdout.readline().strip() == "joined" for p in procs)
        time.sleep(0.5)  # process 0 is at the barrier
        procs[1].kill()
        t0 = time.time()
        code = procs[0].wait(timeout=60)
        err = procs[0].stderr.read()
        assert time.time() - t0 < 30, err[-2000:]
        assert code in (1, -6) and "heartbeat" in err, (code, err[-2000:])
        if code == 1:
            assert "start every process again with the same command" in err
    finally:
        for p in procs:
            p.kill()
