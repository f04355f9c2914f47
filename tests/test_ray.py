"""Candidates on a real Ray cluster of two nodes on this machine (a head and a
second node started with `ray start`, one CPU each): the same results as a local
run, candidates placed on both nodes, the driver the only writer, a killed worker
retried and continued from shared storage, a lost one recorded, and the GLUE grid."""

import json
import os
import re
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
# Four candidates for the one-CPU nodes: the comparison with a local run, and the
# killed driver.
FOUR = SPACE.replace("intermediate = [24]", "intermediate = [24, 48]")


RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module", autouse=True)
def ray_home(tmp_path_factory):
    """Ray's state kept apart from the user's for the module: every process (the
    nodes, each search) sees a temporary home folder and this module's own token in
    the environment. The home holds a stale `~/.ray/auth_token`, as a local
    `ray.init()` leaves one: with the environment's token set, it cannot change the
    result (a head node reads such a file and turns token authentication on, while
    a node joining with `ray start --address` does not send it)."""
    import secrets

    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield home


@pytest.fixture(scope="module")
def cluster(ray_home):
    """One cluster for the module (each search connects to it, instead of starting
    its own): a head node and a second node, one CPU each."""
    env = dict(os.environ)
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.run([RAY, "start", "--head", "--port", "0", "--include-dashboard",
                           "false", *common], capture_output=True, text=True, env=env)
    assert head.returncode == 0, head.stderr[-2000:]
    address = re.search(r"ray start --address='([^']+)'", head.stdout + head.stderr).group(1)
    second = subprocess.run([RAY, "start", "--address", address, *common],
                            capture_output=True, text=True, env=env)
    try:
        assert second.returncode == 0, second.stderr[-2000:]
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    (d / "space.toml").write_text(SPACE)
    (d / "four.toml").write_text(FOUR)
    (d / "corpus.txt").write_text(("the quick brown fox jumps over the lazy dog and a "
                                   "transformer encoder stacks attention " * 40 + "\n\n") * 20)
    return d


def _ray(cluster):
    return ["--executor", "ray", "--ray-address", cluster]


def _search(work, run, *extra, space=None, epsilon="1"):
    return [EXE, "search", "--space", space or str(work / "space.toml"), "--teacher",
            str(GOLDEN / "bert_tiny"), "--corpus", str(work / "corpus.txt"), "--steps", "3",
            "--batch-size", "4", "--seq-len", "16", "--epsilon", epsilon, "--quiet",
            "--run", str(work / run), *extra]


@pytest.fixture(scope="module")
def local(work):
    """A local run over the four candidates."""
    subprocess.run(_search(work, "local", space=str(work / "four.toml")), check=True,
                   capture_output=True)
    return work / "local"


def _events(run):
    return [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]


def _workers():
    r = subprocess.run(["pgrep", "-f", "ray::_train_one"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


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
def test_a_worker_lost_beyond_its_retries_is_recorded_failed(work, cluster):
    proc = subprocess.Popen(_search(work, "lost", *_ray(cluster), "--max-retries", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _kill_first_worker(proc)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    failed = [e for e in _events(work / "lost") if e["event"] == "failed"]
    assert len(failed) == 1 and "worker failed after 0 retries" in failed[0]["reason"]
    assert len([e for e in _events(work / "lost") if e["event"] == "done"]) == 1


@pytest.mark.slow
def test_ray_matches_a_local_run_byte_for_byte_across_two_nodes_and_a_killed_driver(
        work, local, cluster):
    """Four candidates on the two one-CPU nodes; the driver is killed once a
    candidate is journalled, and the resumed search submits only the rest: its
    results.csv is the local run's, byte for byte, and resuming it once more with the
    local executor finds everything done."""
    demo = dict(space=str(work / "four.toml"), epsilon="1")
    proc = subprocess.Popen(_search(work, "demo-ray", *_ray(cluster), **demo),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = work / "demo-ray" / "journal.jsonl"
    from conftest import kill_when

    kill_when(proc, lambda: journal.is_file() and '"event": "done"' in journal.read_text())
    before = len([e for e in _events(work / "demo-ray") if e["event"] == "done"])
    assert 1 <= before < 4
    r = subprocess.run(_search(work, "demo-ray", *_ray(cluster), **demo),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"4 candidates; {before} already done" in r.stdout
    done = [e for e in _events(work / "demo-ray") if e["event"] == "done"]
    assert len({tuple(e["arch"]) for e in done}) == len(done) == 4  # none trained twice
    assert all(e["timing"]["train_s"] > 0 for e in done)
    # one CPU a node: the candidates ran on both nodes
    assert len({e["timing"]["node"] for e in done}) == 2
    assert (work / "demo-ray" / "results.csv").read_bytes() == (local / "results.csv").read_bytes()
    # resumed with the local executor: the journal has everything, nothing is trained
    again = subprocess.run(_search(work, "demo-ray", **demo), capture_output=True, text=True)
    assert "4 candidates; 4 already done" in again.stdout


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
def test_glue_grid_on_ray_equals_the_local_grid_and_resumes(tmp_path, shared_data,
                                                            cluster):
    subprocess.run(_glue(tmp_path / "local"), check=True, capture_output=True)
    r = subprocess.run(_glue(tmp_path / "ray", *_ray(cluster)), capture_output=True,
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
    r = subprocess.run(_glue(tmp_path / "ray", *_ray(cluster)), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert _trials(tmp_path / "ray") == local
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items() if p != gone)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_continues_from_the_shared_storage(work, cluster):
    """Every worker is killed mid-candidate: each task is retried and the results are
    those of an uninterrupted run. With --storage, the candidate's checkpoints are
    where every worker sees them: the retried task continues from the last one.
    (Without it, a retried task starts again from step 0, as any task without
    checkpoints does.)"""
    from conftest import has_checkpoint

    args = ["--steps", "300", "--checkpoint-every", "20", "--max-retries", "1"]
    ref = subprocess.run([*_search(work, "steady"), *args], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    store = work / "store"
    proc = subprocess.Popen([*_search(work, "stored", *_ray(cluster), "--storage",
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


@pytest.mark.slow
def test_ray_leaves_the_home_folder_alone_and_names_a_missing_token(work, cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(home)
    # the module's cluster uses token authentication, and this search has no token
    # (Ray's client retries for 20 s before it gives up; 2 here)
    r = subprocess.run(_search(work, "no-token", *_ray(cluster)),
                       env={**env, "RAY_gcs_server_port_wait_time_s": "2"},
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr
    # Ray's own C++ client logs its retries first; the last line is the message
    assert "Traceback" not in r.stderr
    assert "uses token authentication" in r.stderr.strip().splitlines()[-1], r.stderr
    assert "RAY_AUTH_TOKEN=" in r.stderr.strip().splitlines()[-1]
    assert not (work / "no-token" / "results.csv").exists()
    # a local cluster of its own (not the module's, which `ray.init()` would join):
    # token authentication on, no token file written
    r = subprocess.run(_search(work, "own", "--executor", "ray"),
                       env={**env, "RAY_ADDRESS": "local"},
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert (work / "own" / "results.csv").is_file()
    assert not (home / ".ray").exists(), sorted(map(str, home.rglob("*")))
