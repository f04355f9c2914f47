"""A fine-tuned sequence classifier as the teacher: the search distils its candidates
on the task's training rows (bortsearch/data/tasks.py `TaskData`), scoring them by the
held-out KL to the teacher's class distribution."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bortsearch import BatchSpec, SearchConfig, UserError, load_checkpoint, load_task, run_search
from bortsearch.data.tasks import TaskData

GOLDEN = Path(__file__).resolve().parent / "golden"
TEACHER = GOLDEN / "classifier_roberta"  # RobertaForSequenceClassification, labels no/yes
WORDS = ("the quick brown fox jumps over a lazy dog while the transformer encoder "
         "stacks attention").split()
SPACE = """name = "task"
layers = [1, 2]
heads = [1, 2]
hidden = [8, 16]
intermediate = [12, 24]
"""


def _task(folder: Path, rows: int = 800, labels=("no", "yes")) -> Path:
    """A two-class task of the teacher's vocabulary: "yes" when "fox" is in the text."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", rows), ("dev", 40)):
        lines = ["text\tlabel"]
        for _ in range(n):
            text = " ".join(rng.choice(WORDS, rng.integers(3, 12)))
            lines.append(f"{text}\t{labels[1] if 'fox' in text else labels[0]}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def _cfg(tmp_path, **kw) -> SearchConfig:
    space = tmp_path / "task.toml"
    space.write_text(SPACE)
    base = dict(space=str(space), teacher=str(TEACHER), task="mine",
                task_data=str(_task(tmp_path / "data")), text_fields="text", label_field="label",
                steps=6, lrs=(1e-3,), batch_size=8, seq_len=32, epsilon=4, halving=None)
    return SearchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    """One finished task search (tests copy it before they change anything)."""
    tmp = tmp_path_factory.mktemp("task")
    cfg = _cfg(tmp)
    result = run_search(tmp / "run", cfg, progress=False, log=lambda *a: None)
    return tmp, cfg, result


def _copy(task_run, tmp_path) -> Path:
    """A copy of the finished run and its task's folder, pointed at each other."""
    import shutil

    tmp = task_run[0]
    shutil.copytree(tmp / "data", tmp_path / "data")
    shutil.copytree(tmp / "run", tmp_path / "run")
    for name in ("search.json", "config.json"):
        f = tmp_path / "run" / name
        f.write_text(f.read_text().replace(str(tmp / "data"), str(tmp_path / "data")))
    return tmp_path / "run"


def _data(tmp_path, batch=8):
    teacher = load_checkpoint(TEACHER, part="auto")
    task = load_task("mine", _task(tmp_path / "data"), "text", "label")
    return teacher, TaskData(task, teacher.tokenizer, BatchSpec(batch, 32), 1)


def test_task_batches_hold_out_rows_and_give_the_teachers_class_logits(tmp_path):
    from bortsearch.train.step import teacher_logits

    teacher, data = _data(tmp_path)
    held = data.heldout_batches()
    assert len(held) == 4 and all(b["labels"].shape == (8, 1) for b in held)
    # held-out rows are never training rows, whatever the seed
    assert not set(data.heldout_idx) & set(data.train_idx)
    # another seed, another order
    rows = np.concatenate([data.train_batch(s)["labels"][:, 0] for s in range(5)])
    other = np.concatenate([data.with_seed(1).train_batch(s)["labels"][:, 0] for s in range(5)])
    assert not np.array_equal(rows, other)
    # the teacher's logits on a task batch are its classifier's, one "position" a row
    b = held[0]
    got = np.asarray(teacher_logits(teacher.arch, teacher.params, b))
    want = teacher.logits(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert got.shape == (8, 1, 2)
    np.testing.assert_allclose(got[:, 0], want, atol=1e-5)
    # the class prior: add-one smoothed label frequencies of the training rows
    y = data.encoded.labels[data.train_idx]
    counts = np.bincount(y, minlength=2) + 1.0
    np.testing.assert_allclose(np.exp(data.unigram_log_probs(2)), counts / counts.sum(),
                               rtol=1e-6)


def test_a_full_size_student_inherits_the_classifier_exactly(tmp_path):
    import jax

    from bortsearch.model.encoder import inherit_params

    teacher, _ = _data(tmp_path)
    params = inherit_params(teacher.arch, teacher.arch, teacher.params, num_labels=2)
    assert jax.tree.structure(params) == jax.tree.structure(teacher.params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(teacher.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_search_distils_a_classifier_teacher_on_its_task(task_run):
    from bortsearch.search.candidates import HeldOut

    tmp_path, cfg, result = task_run
    table = pd.read_csv(tmp_path / "run" / "results.csv")
    done = table[table["status"] == "done"]
    assert len(done) >= 2 and (done["kl"] >= 0).all() and np.isfinite(done["error"]).all()
    assert result.best is not None
    # each candidate's held-out accuracy on the task's labels: the mean over seeds of the
    # journalled trials at its best θ
    assert done["accuracy"].between(0, 1).all()
    events = [json.loads(x) for x in (tmp_path / "run" / "journal.jsonl").read_text()
              .splitlines()]
    for e in (e for e in events if e.get("event") == "done"):
        row = done[(done["layers"] == e["arch"][0]) & (done["heads"] == e["arch"][1])
                   & (done["hidden"] == e["arch"][2]) & (done["intermediate"] == e["arch"][3])]
        accs = [t[4] for t in e["trials"] if t[0] == e["best_lr"]]
        assert float(row["accuracy"].iloc[0]) == pytest.approx(np.mean(accs))
    search = json.loads((tmp_path / "run" / "search.json").read_text())
    assert search["task"] == "mine" and search["corpus_name"].startswith("mine")
    # ê's baselines: the teacher's own entropy on B, computed here from its probabilities
    teacher, data = _data(tmp_path)
    p = np.concatenate([
        np.asarray(jax_softmax(teacher.logits(b["input_ids"], b["attention_mask"],
                                              b["token_type_ids"])))
        for b in data.heldout_batches()])
    entropy = float(-(p * np.log(p)).sum(-1).mean())
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["diagnostics"]["teacher_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert HeldOut.of(teacher, data).baselines["teacher_entropy"] == pytest.approx(entropy,
                                                                                    rel=1e-4)
    # and its accuracy on the held-out rows' labels, beside the commonest class
    labels = np.concatenate([b["labels"][:, 0] for b in data.heldout_batches()])
    assert best["diagnostics"]["teacher_accuracy"] == pytest.approx(
        float((p.argmax(-1) == labels).mean()))
    assert best["diagnostics"]["majority_accuracy"] == pytest.approx(
        np.bincount(labels).max() / len(labels))
    # the same flags resume the finished run without training anything
    again = run_search(tmp_path / "run", cfg, progress=False, log=lambda *a: None)
    assert again.best.arch == result.best.arch


def jax_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("change, message", [
    ({"task": None, "task_data": None, "text_fields": None, "label_field": None},
     "a sequence classifier (2 labels); give the task it was fine-tuned on"),
    ({"task_data": None}, "give it with --teacher DIR and the task's folder"),
    ({"inference_scope": "mlm"}, "use --inference-scope encoder"),
    ({"batch_size": 32}, "lower --batch-size"),
    ({"task": None, "teacher": None}, "--data, --text-fields, --label-field describe a task"),
])
def test_a_task_search_refuses_what_it_cannot_do(tmp_path, change, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_search(tmp_path / "run", _cfg(tmp_path, **change), progress=False,
                   log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_the_task_must_be_the_teachers(tmp_path, teacher):
    three = _task(tmp_path / "three", labels=("maybe", "yes"))  # two labels, other names
    (three / "train.tsv").write_text((three / "train.tsv").read_text() + "a dog\tno\n")
    with pytest.raises(UserError, match="3 classes, but the teacher has 2 outputs"):
        run_search(tmp_path / "run", _cfg(tmp_path, task_data=str(three)), progress=False,
                   log=lambda *a: None)
    with pytest.raises(UserError, match="is a masked-LM model"):
        run_search(tmp_path / "run2", _cfg(tmp_path, teacher=str(teacher)), progress=False,
                   log=lambda *a: None)


def test_pretrain_distils_the_pick_on_the_task_and_exports_a_classifier(task_run, tmp_path):
    """`pretrain RUN` on a task run: the pick distilled on the task's rows (with the
    hidden-state term, which the journal shows), written as a sequence classifier with
    the teacher's labels that loads back with the same logits, and as ONNX with them; a
    second call finds the export done."""
    from bortsearch import PretrainConfig, pretrain
    from bortsearch.deploy.onnx_export import run_logits, session
    from bortsearch.model.hf import read_tensors

    run, result = _copy(task_run, tmp_path), task_run[2]
    cfg = PretrainConfig(steps=8, batch_size=8, seq_len=32, eval_every=4, checkpoint_every=4,
                         hidden_weight=1.0)  # with the hidden-state term
    summary = pretrain(run, tmp_path / "student", cfg=cfg, progress=False)
    assert summary["task"] == "mine" and 0 <= summary["heldout_accuracy"] <= 1
    # the term matches each student layer with the teacher layer it inherited
    from bortsearch.model.encoder import teacher_layers

    inherited = teacher_layers(result.best.arch.layers,
                               load_checkpoint(TEACHER, part="auto").arch.layers)
    assert summary["loss"]["hidden_weight"] == 1.0
    assert summary["loss"]["hidden_layers"] == inherited
    journal = (run / "pretrain" / "-".join(map(str, result.best.arch.size)) / "metrics.jsonl")
    assert all(json.loads(line)["hidden_mse"] > 0 for line in journal.read_text().splitlines())
    assert summary["heldout_kd_ce"] > 0 and summary["steps_run"] == 8
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    teacher_config = json.loads((TEACHER / "config.json").read_text())
    assert config["architectures"] == ["RobertaForSequenceClassification"]
    assert config["id2label"] == teacher_config["id2label"]
    student = load_checkpoint(tmp_path / "student", part="auto")
    assert student.num_labels == 2 and student.arch.size == result.best.arch.size
    # the tensor names of the teacher's (a transformers classifier's), its head included
    names, theirs = set(read_tensors(tmp_path / "student")), set(read_tensors(TEACHER))
    assert names <= theirs and {n for n in theirs if "classifier" in n} <= names
    # the export's logits on held-out rows, and the same from its ONNX graph below
    _, data = _data(tmp_path)
    b = data.heldout_batches()[0]
    logits = student.logits(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert logits.shape == (8, 2) and np.isfinite(logits).all()
    card = (tmp_path / "student" / "README.md").read_text()
    assert "sequence classifier for the task mine" in card
    assert f"hidden-state MSE (student layers against teacher layers " \
           f"{', '.join(map(str, inherited))})" in card
    pytest.importorskip("onnxruntime")
    from bortsearch.search.student import export

    export(run, tmp_path / "onnx", onnx=True)
    sess = session(tmp_path / "onnx" / "model.onnx", 1)
    np.testing.assert_allclose(run_logits(sess, b["input_ids"], b["attention_mask"],
                                          b["token_type_ids"]), logits, atol=1e-4)
    again = pretrain(run, tmp_path / "student", cfg=cfg, progress=False)
    assert again == summary


def test_the_tasks_labels_follow_the_teachers_output_order(tmp_path):
    from bortsearch.data.tasks import teacher_label_order

    task = load_task("mine", _task(tmp_path / "data"), "text", "label")  # labels no, yes
    assert teacher_label_order(task, {"0": "no", "1": "yes"}) == (None, "")
    assert teacher_label_order(task, {"0": "YES", "1": "NO"}) == ([1, 0], "")
    assert teacher_label_order(task, {"0": "LABEL_0", "1": "LABEL_1"}) == (None, "")
    with pytest.raises(UserError, match=r"the teacher's labels \(neg, pos\) are not the task's"):
        teacher_label_order(task, {"0": "neg", "1": "pos"})
    teacher, plain = _data(tmp_path)
    swapped = TaskData(task, teacher.tokenizer, BatchSpec(8, 32), 1, [1, 0])
    np.testing.assert_array_equal(swapped.encoded.labels, 1 - plain.encoded.labels)
    assert swapped.fingerprint() != plain.fingerprint()


def _pairs(folder: Path) -> Path:
    """A three-class pair task with the labels of tests/golden/classifier_bert."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 800), ("dev", 20)):
        rows = ["a\tb\tlabel"] + [
            f"{' '.join(rng.choice(WORDS, 4))}\t{' '.join(rng.choice(WORDS, 5))}\t"
            f"{rng.choice(['maybe', 'no', 'yes'])}" for _ in range(n)]
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_a_pair_task_shows_the_teacher_its_token_types(tmp_path):
    """A BERT classifier fine-tuned on pairs sees the pairs' segment ids, as it was
    fine-tuned (only ALBERT's sentence-order pairs hide them from a masked-LM teacher)."""
    from bortsearch.train.step import teacher_logits

    teacher = load_checkpoint(GOLDEN / "classifier_bert", part="auto")  # 3 labels, 2 types
    task = load_task("pairs", _pairs(tmp_path / "pairs"), "a,b", "label")
    data = TaskData(task, teacher.tokenizer, BatchSpec(8, 32), teacher.arch.type_vocab_size)
    b = data.heldout_batches()[0]
    assert b["token_type_ids"].max() == 1  # the second text's segment
    got = np.asarray(teacher_logits(teacher.arch, teacher.params, b))[:, 0]
    np.testing.assert_allclose(
        got, teacher.logits(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
        atol=1e-6)
    zeros = teacher.logits(b["input_ids"], b["attention_mask"], 0 * b["token_type_ids"])
    assert np.abs(got - zeros).max() > 0


def test_pretrain_refuses_task_files_changed_since_the_search(task_run, tmp_path):
    from bortsearch import PretrainConfig, glue, pretrain

    run = _copy(task_run, tmp_path)
    (tmp_path / "glue-data").mkdir()
    with pytest.raises(UserError, match="a task search"):
        glue([run], tmp_path / "glue-data")
    train = tmp_path / "data" / "train.tsv"
    train.write_text(train.read_text() + "the fox\tyes\n")
    with pytest.raises(UserError, match="are not the ones the search distilled on"):
        pretrain(run, tmp_path / "s", cfg=PretrainConfig(steps=2, batch_size=8, seq_len=32),
                 progress=False)
    assert not (tmp_path / "s").exists()


def test_a_bert_classifier_teacher_searches_a_pair_task(tmp_path):
    cfg = _cfg(tmp_path, teacher=str(GOLDEN / "classifier_bert"), task="pairs",
               task_data=str(_pairs(tmp_path / "pairs")), text_fields="a,b", steps=4)
    result = run_search(tmp_path / "run", cfg, progress=False, log=lambda *a: None)
    done = pd.read_csv(tmp_path / "run" / "results.csv").query("status == 'done'")
    assert len(done) >= 2 and done["accuracy"].between(0, 1).all() and result.best is not None
    diagnostics = json.loads((tmp_path / "run" / "best.json").read_text())["diagnostics"]
    assert 0 <= diagnostics["teacher_accuracy"] <= 1


def test_a_task_search_stopped_between_candidates_resumes_to_the_same_table(task_run,
                                                                          tmp_path):
    """A task search stopped after its second candidate (its journal cut there, the
    results not yet written) trains only the rest when run again, and ends with the
    uninterrupted run's results table."""
    import dataclasses

    run = _copy(task_run, tmp_path)
    journal = run / "journal.jsonl"
    lines = journal.read_text().splitlines()
    done = [i for i, line in enumerate(lines) if json.loads(line)["event"] == "done"]
    assert len(done) >= 3, "too few trained candidates to stop the search between them"
    journal.write_text("\n".join(lines[:done[1] + 1]) + "\n")
    for name in ("results.csv", "best.json"):
        (run / name).unlink()
    cfg = dataclasses.replace(task_run[1], task_data=str(tmp_path / "data"))
    run_search(run, cfg, progress=False, log=lambda *a: None)
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    trained = [tuple(e["arch"]) for e in events if e["event"] == "done"]
    assert len(trained) == len(set(trained)) == len(done)  # none trained twice
    assert (run / "results.csv").read_text() == \
        (task_run[0] / "run" / "results.csv").read_text()


def test_a_task_search_at_rates_far_above_fine_tuning_says_what_to_change(task_run, tmp_path):
    """The fixture's search trains its inherited candidates at θ = 1e-3 only: best.json
    carries the warning that names the flag; a Θ holding a fine-tuning rate, a random
    start or a masked-LM search does not warn."""
    from bortsearch.search.run import task_lr_warning

    tmp, cfg, _ = task_run
    best = json.loads((tmp / "run" / "best.json").read_text())
    assert any("consider --lr" in w for w in best["warnings"]), best["warnings"]
    assert task_lr_warning(cfg) is not None
    for quiet in (dict(lrs=(1e-4, 1e-3)), dict(init="random")):
        assert task_lr_warning(_cfg(tmp_path, **quiet)) is None
    assert task_lr_warning(SearchConfig(space="s.toml", lrs=(1e-3,))) is None
