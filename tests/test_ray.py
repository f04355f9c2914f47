"""Candidates on a real local Ray cluster: the same results as a local run, the
driver the only writer, a killed worker retried, and a lost one recorded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

GOLDEN = Path(__file__).resolve().parent / "golden"
EXE = str(Path(sys.executable).parent / "bortsearch")
SPACE = 'name = "t"\nlayers = [1]\nheads = [2]\nhidden = [16, 32]\nintermediate = [24]\n'


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    (d / "space.toml").write_text(SPACE)
    (d / "corpus.txt").write_text(("the quick brown fox jumps over the lazy dog and a "
                                   "transformer encoder stacks attention " * 40 + "\n\n") * 20)
    return d


DEMO = str(Path(__file__).resolve().parent.parent / "search_spaces" / "demo.toml")


def _search(work, run, *extra, space=None, epsilon="1"):
    return [EXE, "search", "--space", space or str(work / "space.toml"), "--teacher",
            str(GOLDEN / "bert_tiny"), "--corpus", str(work / "corpus.txt"), "--steps", "3",
            "--batch-size", "4", "--seq-len", "16", "--epsilon", epsilon, "--quiet",
            "--run", str(work / run), *extra]


@pytest.fixture(scope="module")
def local(work):
    subprocess.run(_search(work, "local"), check=True, capture_output=True)
    return work / "local"


def _events(run):
    return [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]


def _workers():
    r = subprocess.run(["pgrep", "-f", "ray::_train_one"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


@pytest.mark.slow
def test_ray_gives_the_local_results_byte_for_byte(work, local):
    r = subprocess.run(_search(work, "ray", "--executor", "ray"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (work / "ray" / "results.csv").read_bytes() == (local / "results.csv").read_bytes()
    done = [e for e in _events(work / "ray") if e["event"] == "done"]
    assert len(done) == 2 and all(e["timing"]["train_s"] > 0 for e in done)
    # resumed with the local executor: the journal has everything, nothing is trained
    again = subprocess.run(_search(work, "ray"), capture_output=True, text=True)
    assert "2 candidates; 2 already done" in again.stdout


def _kill_first_worker(proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        pids = _workers()
        if pids:
            time.sleep(0.5)  # inside the task
            os.kill(pids[0], signal.SIGKILL)
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_results_are_unchanged(work, local):
    proc = subprocess.Popen(_search(work, "retried", "--executor", "ray"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _kill_first_worker(proc)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert (work / "retried" / "results.csv").read_bytes() == \
        (local / "results.csv").read_bytes()


@pytest.mark.slow
def test_a_worker_lost_beyond_its_retries_is_recorded_failed(work):
    proc = subprocess.Popen(_search(work, "lost", "--executor", "ray", "--max-retries", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _kill_first_worker(proc)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    failed = [e for e in _events(work / "lost") if e["event"] == "failed"]
    assert len(failed) == 1 and "worker failed after 0 retries" in failed[0]["reason"]
    assert len([e for e in _events(work / "lost") if e["event"] == "done"]) == 1


@pytest.mark.slow
def test_demo_space_on_two_workers_survives_a_killed_driver(work):
    """The demo space (36 architectures, ε = 9: 4 candidates) on a local cluster of
    2 CPUs, i.e. 2 workers; the driver is killed once a candidate is journalled,
    and the resumed search submits only the rest and matches a local run."""
    demo = dict(space=DEMO, epsilon="9")
    subprocess.run(_search(work, "demo-local", **demo), check=True, capture_output=True)
    proc = subprocess.Popen(_search(work, "demo-ray", "--executor", "ray", **demo),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = work / "demo-ray" / "journal.jsonl"
    from conftest import kill_when

    kill_when(proc, lambda: journal.is_file() and '"event": "done"' in journal.read_text())
    before = len([e for e in _events(work / "demo-ray") if e["event"] == "done"])
    assert 1 <= before < 4
    r = subprocess.run(_search(work, "demo-ray", "--executor", "ray", **demo),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"4 candidates; {before} already done" in r.stdout
    done = [tuple(e["arch"]) for e in _events(work / "demo-ray") if e["event"] == "done"]
    assert len(done) == len(set(done)) == 4  # nothing finished was trained again
    assert (work / "demo-ray" / "results.csv").read_bytes() == \
        (work / "demo-local" / "results.csv").read_bytes()


def _glue(out, *extra):
    from conftest import SHARED_DATA

    return [EXE, "glue", str(GOLDEN / "student_bert"), "--data", str(SHARED_DATA / "glue"),
            "--tasks", "mrpc", "--seeds", "2", "--lr", "1e-3", "--epochs", "1",
            "--max-train-samples", "48", "--max-eval-samples", "24", "--max-length", "32",
            "--eval-every", "1", "--quiet", "--out", str(out), *extra]


def _trials(out):
    """Every trial's result (timings left out) and evaluations, by path."""
    found = {}
    for f in sorted(Path(out).glob("*/*/trials/*/result.json")):
        result = {k: v for k, v in json.loads(f.read_text()).items()
                  if "seconds" not in k and "per_s" not in k}
        found[str(f.parent.relative_to(out))] = (result, (f.parent / "evals.jsonl").read_text())
    return found


@pytest.mark.slow
def test_glue_grid_on_ray_equals_the_local_grid_and_resumes(tmp_path, shared_data):
    subprocess.run(_glue(tmp_path / "local"), check=True, capture_output=True)
    r = subprocess.run(_glue(tmp_path / "ray", "--executor", "ray"), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    local, ray_ = _trials(tmp_path / "local"), _trials(tmp_path / "ray")
    assert len(local) == 2 and local == ray_  # 2 seeds: the same trials
    for task in ("mrpc",):
        a, b = (json.loads((tmp_path / d / "student_bert" / task / "metrics.json").read_text())
                for d in ("local", "ray"))
        assert a["dev"] == b["dev"] and a["chosen"] == b["chosen"]
    # an interrupted grid: one trial unfinished; only it is trained again
    redo = tmp_path / "ray" / "student_bert" / "mrpc"
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*/*/trials/*/result.json")}
    gone = redo / "trials" / "lr0.001-seed1" / "result.json"
    gone.unlink()
    (redo / "metrics.json").unlink()
    (tmp_path / "ray" / "glue.csv").unlink()
    r = subprocess.run(_glue(tmp_path / "ray", "--executor", "ray"), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert _trials(tmp_path / "ray") == local
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items() if p != gone)


@pytest.mark.slow
def test_a_retried_task_continues_from_the_shared_storage(work):
    """With --storage, the candidate's checkpoints are where every worker sees them:
    the task retried after its worker's death continues from the last one."""
    from conftest import has_checkpoint

    args = ["--steps", "300", "--checkpoint-every", "20", "--max-retries", "1"]
    ref = subprocess.run([*_search(work, "steady"), *args], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    store = work / "store"
    proc = subprocess.Popen([*_search(work, "stored", "--executor", "ray", "--storage",
                                      str(store)), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        saved = [d for d in store.glob("*/*/*") if has_checkpoint(d)]
        if len(saved) == 2 and _workers():  # both candidates have one: kill every worker
            for pid in _workers():
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    else:
        pytest.fail("no checkpoint in --storage before the candidates finished")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    done = [e for e in _events(work / "stored") if e["event"] == "done"]
    assert len(done) == 2 and all(e["timing"]["resumed_from"] > 0 for e in done), \
        [e["timing"] for e in done]
    assert (work / "stored" / "results.csv").read_bytes() == \
        (work / "steady" / "results.csv").read_bytes()
    assert not [d for d in store.glob("*/*/*") if has_checkpoint(d)]  # cleaned up when done
