import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import has_checkpoint, kill_when, xla_flags
from safetensors.numpy import load_file

from bortsearch import load
from bortsearch.cli import main

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

    a, b = (load_file(str(tmp_path / "whole" / "model.safetensors")),
            load_file(str(out / "model.safetensors")))
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


GOLDEN = Path(__file__).resolve().parent / "golden"
CLASSES = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert"}


def bare_export(folder: Path, out: Path, sentence_transformers: bool = False) -> Path:
    """`folder`'s encoder as `…Model.save_pretrained` writes it: no family prefix, no
    masked-LM head; with `sentence_transformers`, also that library's files at the
    root (modules.json, a pooling folder) and a tokenizer.json that pads and cuts
    at 16 tokens, as all-MiniLM-L6-v2's does at 128."""
    from safetensors.numpy import save_file

    from bortsearch.data.tokenizer import load_tokenizer

    config = json.loads((folder / "config.json").read_text())
    base = config["model_type"]
    tensors = load_file(str(folder / "model.safetensors"))
    out.mkdir(parents=True)
    save_file({k[len(base) + 1:]: v for k, v in tensors.items() if k.startswith(base + ".")},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in folder.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            (out / f.name).write_bytes(f.read_bytes())
    config["architectures"] = [f"{CLASSES[base]}Model"]
    (out / "config.json").write_text(json.dumps(config))
    if sentence_transformers:
        tok = load_tokenizer(out, base)
        tok.hf.enable_padding(length=16)
        tok.hf.enable_truncation(16)
        tok.hf.save(str(out / "tokenizer.json"))
        (out / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]))
        (out / "1_Pooling").mkdir()
        (out / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert_tiny", "roberta_tiny", "albert_groups"])
def test_a_bare_encoder_becomes_a_teacher(family, tmp_path, capsys):
    """`teacher --init-from` an encoder without a masked-LM head: a new head, trained
    alone (the encoder exactly as it was), then the whole model; the better stage
    kept and reported at [MASK] positions; the result loads as a masked-LM teacher."""
    from bortsearch.model.hf import load_checkpoint

    bare = bare_export(GOLDEN / family, tmp_path / "bare",
                       sentence_transformers=family == "bert_tiny")
    out = tmp_path / "teacher"
    args = ["--init-from", str(bare), "--out", str(out), "--head-steps", "3", "--steps", "3",
            "--batch-size", "4", "--seq-len", "32", "--quiet"]
    assert main(["teacher", *args]) == 0
    printed = capsys.readouterr().out
    assert "a new masked-LM head on the encoder" in printed and "at [MASK] positions" in printed
    summary = json.loads((out / "bortsearch.json").read_text())
    assert summary["settings"]["head_steps"] == 3 and summary["settings"]["body_lr"] == 1e-4
    assert set(summary["stages"]) == {"head", "whole"} and summary["kept"] in summary["stages"]
    kept = summary["stages"][summary["kept"]]
    assert kept["mask_mlm_ce"] == min(s["mask_mlm_ce"] for s in summary["stages"].values())
    assert summary["heldout"] == {k: v for k, v in kept.items() if k in summary["heldout"]}
    teacher = load_checkpoint(out)  # a masked-LM folder now
    import jax

    theirs = load_checkpoint(bare, part="encoder").params["params"]
    mine = teacher.params["params"]
    body = [k for k in theirs if k != "pooler"]
    assert "head" in mine and "layers" in body
    moved = max(float(np.abs(np.asarray(a) - b).max()) for k in body
                for a, b in zip(jax.tree.leaves(mine[k]), jax.tree.leaves(theirs[k])))
    assert (moved == 0.0) == (summary["kept"] == "head")
    # a document longer than the saved tokenizer's 16-token cut is not cut
    doc = "the quick brown fox jumps over the lazy dog " * 10
    assert len(teacher.tokenizer.encode_batch([doc])[0]) > 16
    # searching with the bare folder says in one line what to run
    space = tmp_path / "space.toml"
    space.write_text('name = "s"\nlayers = [1]\nheads = [2]\nhidden = [16]\nintermediate = [32]\n')
    assert main(["search", "--space", str(space), "--teacher", str(bare), "--run",
                 str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no masked-LM head" in err and f"bortsearch teacher --init-from {bare}" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run" / "results.csv").exists()


def test_the_head_stage_leaves_the_encoder_exactly_as_it_was():
    """`OptimConfig.body_lr_scale = 0`: weight decay included, only the head moves."""
    import jax

    from bortsearch import Arch
    from bortsearch.model.encoder import init_params
    from bortsearch.train.step import OptimConfig, init_state, train_step

    arch = Arch(1, 2, 16, 32, vocab_size=50, max_positions=16)
    params = init_params(arch, 0)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(5, 50, (2, 16)).astype(np.int32),
             "attention_mask": np.ones((2, 16), np.int32),
             "positions": np.tile(np.arange(1, 4, dtype=np.int32), (2, 1)),
             "labels": rng.integers(5, 50, (2, 3)).astype(np.int32),
             "weights": np.ones((2, 3), np.float32)}
    cfg = OptimConfig(steps=3, body_lr_scale=0.0)
    state = init_state(jax.tree.map(np.array, params), 1e-2, cfg)
    for _ in range(3):
        state, _ = train_step(state, batch, arch=arch, cfg=cfg)
    after = jax.device_get(state.params)["params"]
    for name in params["params"]:
        same = jax.tree.leaves(jax.tree.map(lambda a, b: bool((np.asarray(a) == b).all()),
                                            params["params"][name], after[name]))
        assert all(same) == (name != "head"), name


def test_mask_only_quality_against_numpy(teacher):
    """`mlm_quality`'s [MASK]-position figures, recomputed from the logits in NumPy."""
    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.train.step import mlm_quality, student_logits

    model = load(teacher)
    data = load_data(resolve_corpus(None), model.tokenizer, BatchSpec(8, 32))
    q = mlm_quality(model.arch, model.params, data)
    hits = nll = n = top_hits = uni = 0.0
    log_q = data.unigram_log_probs(model.arch.vocab_size)
    top = None
    sample = np.concatenate([b["labels"][b["weights"] > 0]
                             for b in (data.train_batch(i) for i in range(20))])
    top = np.bincount(sample).argmax()
    for b in data.heldout_batches():
        logits = np.asarray(student_logits(model.arch, model.params, b), np.float64)
        shown = np.take_along_axis(b["input_ids"], b["positions"], 1)
        w = b["weights"] * (shown == model.tokenizer.mask_id)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                               keepdims=True)) - logits.max(-1, keepdims=True)
        true = np.take_along_axis(logp, b["labels"][..., None], -1)[..., 0]
        hits += float(((logits.argmax(-1) == b["labels"]) * w).sum())
        nll += float((-true * w).sum())
        top_hits += float(((b["labels"] == top) * w).sum())
        uni += float((-log_q[b["labels"]] * w).sum())
        n += float(w.sum())
    assert 0 < n < sum(float(b["weights"].sum()) for b in data.heldout_batches())
    assert q["mask_predictions"] == n
    assert q["mask_accuracy"] == pytest.approx(hits / n, abs=1e-9)
    assert q["mask_mlm_ce"] == pytest.approx(nll / n, rel=1e-4)
    assert q["mask_frequency_baseline"] == pytest.approx(top_hits / n, abs=1e-9)
    assert q["mask_unigram_gap"] == pytest.approx(uni / n - nll / n, rel=1e-3, abs=1e-4)


def test_bad_init_from_folders(teacher, tmp_path, capsys):
    """A folder that is no encoder, and a corpus the vocabulary cannot read."""
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    args = ["--batch-size", "4", "--seq-len", "32", "--steps", "1", "--quiet"]
    assert main(["teacher", "--init-from", str(neither), "--out", str(tmp_path / "a"),
                 *args]) == 2
    assert "model_type 'gpt2' is not supported" in capsys.readouterr().err
    foreign = tmp_path / "foreign.txt"
    foreign.write_text(("Съешь же ещё этих мягких французских булок да выпей чаю. " * 30
                        + "\n\n") * 40)
    assert main(["teacher", "--init-from", str(teacher), "--out", str(tmp_path / "b"),
                 "--corpus", str(foreign), *args]) == 2
    err = capsys.readouterr().err
    assert "unknown to the teacher's vocabulary" in err and not (tmp_path / "b").exists()
