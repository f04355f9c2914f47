import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bortsearch import load
from bortsearch.cli import main
from conftest import has_checkpoint, kill_when, xla_flags

SPACE = str(Path(__file__).resolve().parent.parent / "search_spaces" / "demo.toml")
TINY = ["--space", SPACE, "--arch", "1,2,32,64", "--vocab-size", "300", "--batch-size", "8",
        "--seq-len", "32", "--quiet"]


def _run(args, **kw):
    exe = Path(sys.executable).parent / "bortsearch"
    return subprocess.Popen([str(exe), "teacher", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_teacher_learns_above_the_frequency_baseline(tmp_path, capsys):
    out = tmp_path / "teacher"
    args = ["--space", SPACE, "--arch", "2,2,64,128", "--vocab-size", "1000", "--batch-size",
            "32", "--seq-len", "64", "--steps", "300", "--lr", "2e-3", "--quiet", "--out", str(out)]
    assert main(["teacher", *args]) == 0
    summary = json.loads((out / "bortsearch.json").read_text())
    assert summary["heldout_accuracy"] > 2 * summary["frequency_baseline_accuracy"]
    assert "held-out masked-LM accuracy" in capsys.readouterr().out
    model = load(out)
    assert model.arch.size == (2, 2, 64, 128) and model.tokenizer.vocab_size == 1000
    assert not (tmp_path / ".teacher.partial").exists()
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir() if f.is_file()}
    assert "model.safetensors" in modes  # not safetensors' own 0600: the umask's, as the rest
    assert set(modes.values()) == {0o666 & ~umask}, modes
    # the same command again trains nothing and reports the same result
    t0 = time.perf_counter()
    assert main(["teacher", *args]) == 0
    assert time.perf_counter() - t0 < 10
    assert json.loads((out / "bortsearch.json").read_text()) == summary


def test_changed_settings_are_refused(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["teacher", *TINY, "--steps", "3", "--out", str(out)]) == 0
    assert main(["teacher", *TINY, "--steps", "4", "--out", str(out)]) == 2
    assert "holds a teacher trained with other settings" in capsys.readouterr().err
    # an unfinished run (a checkpoint saved) with other settings names them
    work = tmp_path / ".u.partial"
    (work / "checkpoints" / "2").mkdir(parents=True)
    (work / "settings.json").write_text(json.dumps({"steps": 99}))
    assert main(["teacher", *TINY, "--steps", "4", "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert "steps: 99 then, 4 now" in err and not (tmp_path / "u").exists()
    # one that finished nothing (a first attempt that failed) takes the new settings
    (work / "checkpoints" / "2").rmdir()
    assert main(["teacher", *TINY, "--steps", "4", "--out", str(tmp_path / "u")]) == 0


def test_bad_teacher_input(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["teacher", *TINY, "--steps", "2", "--out", str(busy)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["teacher", *TINY[:-3], "--seq-len", "500", "--quiet", "--steps", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--seq-len 500 is longer than the 128 positions" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    common = [*TINY, "--steps", "600", "--checkpoint-every", "50"]
    whole = _run([*common, "--out", str(tmp_path / "whole")])
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    out = tmp_path / "killed"
    proc = _run([*common, "--out", str(out)])
    kill_when(proc, lambda: has_checkpoint(tmp_path / ".killed.partial" / "checkpoints"))
    assert not out.exists()  # nothing half-written where the result goes
    resumed = _run([*common, "--out", str(out)])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()

    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_teacher_continues_from_a_folder(teacher, tmp_path, capsys):
    """--init-from trains the folder's own shape and tokenizer onward from its
    weights, and records which weights it started from."""
    out = tmp_path / "more"
    args = ["--init-from", str(teacher), "--out", str(out), "--steps", "1", "--lr", "1e-9",
            "--batch-size", "8", "--seq-len", "32", "--quiet"]
    assert main(["teacher", *args]) == 0
    assert f"continuing {teacher}" in capsys.readouterr().out
    a, b = load(teacher), load(out)
    assert b.arch == a.arch and b.tokenizer.hf.to_str() == a.tokenizer.hf.to_str()
    from bortsearch.model.hf import export_tensors, weights_sha256

    x, y = export_tensors(a), export_tensors(b)
    assert max(float(np.abs(x[k] - y[k]).max()) for k in x) < 1e-6
    settings = json.loads((out / "bortsearch.json").read_text())["settings"]
    assert settings["init_from"] == weights_sha256(teacher)
    # a shape and tokenizer come from the folder: --space, --arch, --vocab-size are refused
    assert main(["teacher", *args[:4], "--space", SPACE]) == 2
    assert "drop --space, --arch and --vocab-size" in capsys.readouterr().err
    assert main(["teacher", "--out", str(tmp_path / "none")]) == 2
    assert "give --space" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_train_the_one_process_teacher(tmp_path):
    """`teacher` as a two-process JAX job (one CPU device each, Gloo between them)
    writes the same weights, bit for bit, as one process with two devices and the
    same global batch; a job whose processes disagree is refused by all of them."""
    from conftest import launch_job, wait_job

    common = [*TINY, "--steps", "12", "--checkpoint-every", "4"]
    one = _run([*common, "--out", str(tmp_path / "one")],
               env={**os.environ, "XLA_FLAGS": xla_flags(2)})
    assert one.wait(timeout=300) == 0, one.stderr.read()
    job = launch_job(["teacher", *common, "--out", str(tmp_path / "two")])
    assert [code for code, _ in wait_job(job)] == [0, 0], wait_job(job)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), \
        load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    s1, s2 = (json.loads((tmp_path / x / "bortsearch.json").read_text()) for x in ("one", "two"))
    assert s2["heldout_mlm_ce"] == s1["heldout_mlm_ce"]
    assert not (tmp_path / ".two.partial").exists()  # process 0 cleaned up once

    bad = launch_job(["teacher", *common, "--out", str(tmp_path / "bad")],
                     per_process=lambda i: ["--seed", str(i)])
    for code, err in wait_job(bad):
        assert code == 2 and "start from different weights or data" in err, err
    assert not (tmp_path / "bad").exists()


def test_job_flags_are_checked_before_any_work(tmp_path, capsys):
    out = ["--out", str(tmp_path / "t"), *TINY]
    for flags, message in [
        (["--num-processes", "2"], "give --coordinator HOST:PORT too"),
        (["--coordinator", "nowhere"], "give HOST:PORT"),
        (["--coordinator", "h:99999"], "give HOST:PORT"),
        (["--coordinator", "h:1234", "--num-processes", "2"], "needs --num-processes N and "
                                                              "--process-id I"),
        (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"],
         "--process-id 2 must be in 0..1"),
    ]:
        assert main(["teacher", *out, *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
    assert not (tmp_path / "t").exists()
