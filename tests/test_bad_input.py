"""Bad input and hostile environments: every case exits 2 with one
`bortsearch: error:` line that names the problem, leaves nothing behind, and
does not block the corrected command."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bortsearch.cli import main

GOLDEN = Path(__file__).resolve().parent / "golden"
TEACHER = GOLDEN / "bert_tiny"  # vocabulary 120, 40 positions
SPACE = 'name = "t"\nlayers = [1, 2]\nheads = [2]\nhidden = [16]\nintermediate = [24]\n'
WORDS = ("the quick brown fox jumps over the lazy dog and a transformer encoder stacks "
         "attention and feed forward layers while distillation trains a student ")


@pytest.fixture
def env(tmp_path):
    """A work folder with a valid space, a corpus long enough for a search, and
    bad files beside them."""
    (tmp_path / "space.toml").write_text(SPACE)
    (tmp_path / "corpus.txt").write_text((WORDS * 40 + "\n\n") * 20)
    (tmp_path / "short.txt").write_text("the fox\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    return tmp_path


def search(env, *extra, run="run", corpus="corpus.txt", space="space.toml", teacher=TEACHER):
    return ["search", "--space", str(env / space), "--run", str(env / run), "--teacher",
            str(teacher), "--corpus", str(env / corpus), "--steps", "2", "--batch-size", "4",
            "--seq-len", "16", "--seeds", "1", "--epsilon", "2", "--quiet", *extra]


def space_file(env, text, name="bad.toml"):
    (env / name).write_text(text) if isinstance(text, str) else (env / name).write_bytes(text)
    return ["space", str(env / name)]


def teacher_copy(env, edit):
    """A copy of the golden teacher, changed by `edit(folder)`."""
    folder = env / "teacher_copy"
    shutil.copytree(TEACHER, folder)
    edit(folder)
    return search(env, teacher=folder)


def _config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _headless(folder):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k[5:]: v for k, v in tensors.items() if k.startswith("bert.")},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


CASES = {
    # space files
    "space: missing": (lambda e: ["space", str(e / "nope.toml")], "no such space file"),
    "space: a folder": (lambda e: ["space", str(e / "foreign")], "is a folder, not a space file"),
    "space: bad TOML": (lambda e: space_file(e, "layers = [1,"), "not a valid TOML file"),
    "space: not UTF-8": (lambda e: space_file(e, b"name = '\xff'\n"), "not a valid TOML file"),
    "space: unknown key": (lambda e: space_file(e, SPACE + "depth = [2]\n"), "unknown key 'depth'"),
    "space: missing axis": (lambda e: space_file(e, 'layers = [1]\nheads = [2]\nhidden = [16]\n'),
                            "missing axis 'intermediate'"),
    "space: axis not a list": (lambda e: space_file(e, SPACE.replace("[1, 2]", "2")),
                               "layers must be a non-empty list"),
    "space: empty axis": (lambda e: space_file(e, SPACE.replace("[1, 2]", "[]")),
                          "layers must be a non-empty list"),
    "space: non-integer": (lambda e: space_file(e, SPACE.replace("[16]", "[16.5]")),
                           "hidden must hold integers only"),
    "space: below 1": (lambda e: space_file(e, SPACE.replace("[1, 2]", "[0, 2]")),
                       "layers values must be >= 1"),
    "space: duplicate": (lambda e: space_file(e, SPACE.replace("[1, 2]", "[2, 2]")),
                         "lists 2 more than once"),
    "space: no valid architecture": (lambda e: space_file(e, SPACE.replace("[2]", "[3]")),
                                     "no valid architecture"),
    "space: model_type": (lambda e: space_file(e, SPACE + 'model_type = "gpt2"\n'),
                          "model_type = 'gpt2' is not supported"),
    "space: vocab_size": (lambda e: space_file(e, SPACE + "vocab_size = -3\n"),
                          "vocab_size must be an integer >= 1"),
    "space: groups not dividing": (lambda e: space_file(e, SPACE + "groups = [3]\n"),
                                   "groups = 3 divides none of the layers"),
    "space: embedding above H": (lambda e: space_file(e, SPACE + "embedding = [64]\n"),
                                 "embedding = 64 is larger than every hidden"),
    "space: embedding below 1": (lambda e: space_file(e, SPACE + "embedding = [0]\n"),
                                 "embedding values must be >= 1"),
    "space: ALBERT axes in a roberta space": (
        lambda e: space_file(e, SPACE + 'model_type = "roberta"\ngroups = [1]\n'),
        "need model_type"),
    "space: name not a string": (lambda e: space_file(e, SPACE.replace('"t"', "3")),
                                 "name must be a string"),
    # flags
    "flag: unknown command": (lambda e: ["serach"], "invalid choice"),
    "flag: missing --space": (lambda e: ["search", "--run", str(e / "run")],
                              "the following arguments are required: --space"),
    "flag: --steps 0": (lambda e: search(e, "--steps", "0"), "expected a positive integer"),
    "flag: --steps x": (lambda e: search(e, "--steps", "x"), "expected a positive integer"),
    "flag: --lr inf": (lambda e: search(e, "--lr", "inf"), "positive finite number"),
    "flag: --lr nan": (lambda e: search(e, "--lr", "nan"), "positive finite number"),
    "flag: --lr -1": (lambda e: search(e, "--lr", "-1"), "positive finite number"),
    "flag: --epsilon above |Ξ|": (lambda e: search(e, "--epsilon", "50"),
                                  "--epsilon 50: must be between 1 and |Ξ| = 2"),
    "flag: --inference": (lambda e: search(e, "--inference", "guess"), "invalid choice"),
    "flag: --error": (lambda e: search(e, "--error", "mse"), "invalid choice"),
    "flag: --confirm -1": (lambda e: search(e, "--confirm", "-1"), "--confirm must be >= 0"),
    "flag: --seq-len 4": (lambda e: search(e, "--seq-len", "4"), "--seq-len"),
    "flag: --seq-len above positions": (lambda e: search(e, "--seq-len", "64"),
                                        "longer than the 40 positions"),
    "flag: --max-inference inf": (lambda e: search(e, "--max-inference", "inf"),
                                  "positive finite number"),
    "flag: pretrain --warmup -1": (lambda e: ["pretrain", str(e / "run"), "--out", str(e / "o"),
                                              "--warmup", "-1"], "expected a number in [0, 1)"),
    "flag: pretrain --warmup 5": (lambda e: ["pretrain", str(e / "run"), "--out", str(e / "o"),
                                             "--warmup", "5"], "expected a number in [0, 1)"),
    "flag: pretrain --weight-decay -5": (
        lambda e: ["pretrain", str(e / "run"), "--out", str(e / "o"), "--weight-decay", "-5"],
        "expected a number in [0, 1)"),
    "flag: export --arch three numbers": (
        lambda e: ["export", str(e / "run"), "--out", str(e / "o"), "--arch", "2,2,16"],
        "--arch must be four positive integers"),
    "flag: export --arch heads": (
        lambda e: ["export", str(e / "run"), "--out", str(e / "o"), "--arch", "2,3,16,24"],
        "must be a multiple of heads"),
    "flag: export --arch groups": (
        lambda e: ["export", str(e / "run"), "--out", str(e / "o"), "--arch", "3,2,16,24,8,2"],
        "must divide layers"),
    "flag: finetune --max-length 0": (
        lambda e: ["finetune", str(TEACHER), "--task", "sst2", "--data", str(e),
                   "--out", str(e / "o"), "--max-length", "0"], "expected a positive integer"),
    "flag: finetune --warmup 1.5": (
        lambda e: ["finetune", str(TEACHER), "--task", "sst2", "--data", str(e),
                   "--out", str(e / "o"), "--warmup", "1.5"], "expected a number in [0, 1)"),
    "flag: finetune unknown task": (
        lambda e: ["finetune", str(TEACHER), "--task", "squad", "--data", str(e),
                   "--out", str(e / "o")], "not a GLUE task"),
    "flag: glue without --out": (lambda e: ["glue", str(TEACHER), "--data", str(e)],
                                 "--out is required"),
    # corpora
    "corpus: missing": (lambda e: search(e, corpus="nope.txt"), "nope.txt"),
    "corpus: not UTF-8": (lambda e: search(e, corpus="latin1.txt"), "not UTF-8"),
    "corpus: empty": (lambda e: search(e, corpus="empty.txt"), "empty.txt"),
    "corpus: too short for one batch": (lambda e: search(e, corpus="short.txt"), "short"),
    # teacher folders
    "teacher: missing": (lambda e: search(e, teacher=e / "nope"), "no such checkpoint folder"),
    "teacher: a file": (lambda e: search(e, teacher=e / "file"),
                        "is a file, not checkpoint folder"),
    "teacher: no config.json": (
        lambda e: teacher_copy(e, lambda f: (f / "config.json").unlink()), "no config.json"),
    "teacher: config not JSON": (
        lambda e: teacher_copy(e, lambda f: (f / "config.json").write_text("{")),
        "not valid JSON"),
    "teacher: model_type": (lambda e: teacher_copy(e, lambda f: _config(f, model_type="gpt2")),
                            "model_type 'gpt2' is not supported"),
    "teacher: activation": (lambda e: teacher_copy(e, lambda f: _config(f, hidden_act="relu")),
                            "hidden_act 'relu' is not supported"),
    "teacher: config lacks a size": (
        lambda e: teacher_copy(e, lambda f: _config(f, num_hidden_layers=None)),
        "config.json"),
    "teacher: no weights": (
        lambda e: teacher_copy(e, lambda f: (f / "model.safetensors").unlink()), "no weights"),
    "teacher: truncated weights": (
        lambda e: teacher_copy(e, lambda f: (f / "model.safetensors").write_bytes(
            (TEACHER / "model.safetensors").read_bytes()[:500])), "truncated or corrupt"),
    "teacher: wrong shapes": (lambda e: teacher_copy(e, lambda f: _config(f, hidden_size=64)),
                              "has shape"),
    "teacher: no masked-LM head": (lambda e: teacher_copy(e, _headless), "no masked-LM head"),
    "teacher: no tokenizer": (
        lambda e: teacher_copy(e, lambda f: (f / "vocab.txt").unlink()), "no tokenizer files"),
    "teacher: tokenizer of another size": (
        lambda e: teacher_copy(e, lambda f: (f / "vocab.txt").write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))),
        "the tokenizer has 7 tokens"),
    # run and output locations
    "run: a file": (lambda e: search(e, run="file"), "exists and is not a folder"),
    "run: a foreign folder": (lambda e: search(e, run="foreign"),
                              "is not empty and is not a bortsearch run"),
    "show: not a run": (lambda e: ["show", str(e / "foreign")], "foreign"),
    "export: not a finished run": (lambda e: ["export", str(e / "foreign"), "--out", str(e / "o")],
                                   "not a finished search run"),
    "pretrain: not a finished run": (
        lambda e: ["pretrain", str(e / "foreign"), "--out", str(e / "o")],
        "not a finished search run"),
    "teacher --out: a file": (
        lambda e: ["teacher", "--space", str(e / "space.toml"), "--out", str(e / "file"),
                   "--corpus", str(e / "corpus.txt"), "--steps", "1", "--vocab-size", "100",
                   "--batch-size", "4", "--seq-len", "16", "--quiet"], "is a file"),
    "teacher: corpus too short": (
        lambda e: ["teacher", "--space", str(e / "space.toml"), "--out", str(e / "t"),
                   "--corpus", str(e / "short.txt"), "--steps", "1", "--vocab-size", "100",
                   "--batch-size", "4", "--seq-len", "16", "--quiet"], "short.txt"),
    "finetune --out: a file": (
        lambda e: ["finetune", str(TEACHER), "--task", "sst2", "--data", str(e),
                   "--out", str(e / "file")], "is a file"),
    "finetune --data: missing": (
        lambda e: ["finetune", str(TEACHER), "--task", "sst2", "--data", str(e / "nope"),
                   "--out", str(e / "o")], "no such folder"),
    "finetune model: headless is fine, a file is not": (
        lambda e: ["finetune", str(e / "file"), "--task", "sst2", "--data", str(e),
                   "--out", str(e / "o")], "no train.tsv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_exit_2_and_leaves_nothing(case, env, capsys):
    make, message = CASES[case]
    argv = make(env)
    before = sorted(p.name for p in env.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bortsearch: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in env.iterdir()) == before  # nothing new, nothing half-written


def test_a_failed_first_attempt_does_not_block_the_corrected_command(env, capsys):
    assert main(search(env, corpus="short.txt")) == 2
    assert not (env / "run").exists()
    assert main(search(env)) == 0
    assert (env / "run" / "results.csv").is_file()
    # a first attempt that wrote its settings but finished nothing takes new ones
    (env / "run2").mkdir()
    (env / "run2" / "config.json").write_text(json.dumps({"steps": 999}))
    assert main(search(env, run="run2")) == 0
    # a run with finished work still refuses other settings, naming them
    assert main(search(env, "--steps", "3")) == 2
    assert "steps: 2 then, 3 now" in capsys.readouterr().err


def _os_error(code, path):
    def fail(*_a, **_k):
        raise OSError(code, os.strerror(code), str(path))
    return fail


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left on the device"),
                                        (errno.EROFS, "the file system is read-only"),
                                        (errno.EACCES, "permission denied")])
def test_os_errors_while_writing_are_one_line_and_leave_nothing(code, words, env, capsys,
                                                               monkeypatch):
    import bortsearch.search.run as run_module

    real = shutil.copytree

    def copy_then_fail(src, dst, **kw):  # half a teacher copy, then the disk fills
        real(src, dst, **kw)
        (Path(dst) / "model.safetensors").write_bytes(b"half")
        raise OSError(code, os.strerror(code), str(Path(dst) / "model.safetensors"))

    monkeypatch.setattr(run_module.shutil, "copytree", copy_then_fail)
    assert main(search(env)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "model.safetensors" in err
    leftovers = [p.name for p in (env / "run").iterdir()] if (env / "run").exists() else []
    assert not [n for n in leftovers if "teacher" in n]  # no half-copied teacher
    monkeypatch.setattr(run_module.shutil, "copytree", real)
    assert main(search(env)) == 0  # the corrected environment: the same command works


def test_read_only_export_location(env, capsys, monkeypatch):
    import bortsearch.runio as runio

    assert main(search(env)) == 0
    monkeypatch.setattr(runio.tempfile, "mkdtemp", _os_error(errno.EROFS, env / "ro"))
    capsys.readouterr()
    assert main(["export", str(env / "run"), "--out", str(env / "ro" / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"bortsearch: error: {env / 'ro'}: the file system is read-only; "
                   f"choose a location you can write to\n")


def test_pretrain_twice_finishes_at_once(env, capsys):
    assert main(search(env)) == 0
    flags = ["--steps", "4", "--batch-size", "4", "--seq-len", "16", "--eval-every", "2",
             "--checkpoint-every", "2", "--quiet"]
    capsys.readouterr()
    assert main(["pretrain", str(env / "run"), "--out", str(env / "s"), *flags]) == 0
    first = capsys.readouterr().out
    weights = (env / "s" / "model.safetensors").read_bytes()
    assert main(["pretrain", str(env / "run"), "--out", str(env / "s"), *flags]) == 0
    assert capsys.readouterr().out == first  # the same summary, nothing trained again
    assert (env / "s" / "model.safetensors").read_bytes() == weights
    assert main(["pretrain", str(env / "run"), "--out", str(env / "foreign"), *flags]) == 2


def test_weightless_export_card_does_not_promise_weights(env):
    assert main(search(env)) == 0
    assert main(["export", str(env / "run"), "--out", str(env / "x")]) == 0
    card = (env / "x" / "README.md").read_text()
    assert "AutoModelForMaskedLM" not in card and "AutoConfig" in card


def test_broken_pipe_is_not_a_traceback(tmp_path):
    exe = Path(sys.executable).parent / "bortsearch"
    spaces = Path(__file__).resolve().parent.parent / "search_spaces"
    r = subprocess.run(f"'{exe}' space '{spaces / 'bort.toml'}' | head -2", shell=True,
                       capture_output=True, text=True)
    assert len(r.stdout.splitlines()) == 2 and "Traceback" not in r.stderr and r.stderr == ""


def test_a_second_search_on_a_running_run_is_refused(env, capsys):
    """A lock held by a live process refuses the second search, naming the owner; a
    killed owner's lock is released by the operating system, so a resume goes on."""
    (env / "run").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid 4242 on elsewhere'); f.flush(); "
         "print('held', flush=True); time.sleep(60)", str(env / "run" / ".lock")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        assert main(search(env)) == 2
        err = capsys.readouterr().err
        assert "already running (pid 4242 on elsewhere)" in err and err.count("\n") == 1
        assert not (env / "run" / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(search(env)) == 0  # the owner is gone: its lock went with it
