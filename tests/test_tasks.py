"""Downstream tasks and metrics: GLUE layouts, custom files, bad files, and the
metrics against scikit-learn, SciPy and their textbook formulas."""

import json
import math

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bortsearch import UserError
from bortsearch.data.tasks import GLUE, load_task
from bortsearch.downstream import metrics as M

# One row per GLUE task in the GLUE distribution's layout: (folder, header, row).
LAYOUT = {
    "cola": ("CoLA", None, "gj04\t1\t\tThe sailors rode the breeze."),
    "sst2": ("SST-2", "sentence\tlabel", "a charming journey . \t1"),
    "mrpc": ("MRPC", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             '1\t1\t2\t"He said it.\tHe said "it".'),
    "stsb": ("STS-B", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1"
             "\tsentence2\tscore",
             "0\tmain\tf\t2012\t1\tnone\tnone\tA plane.\tAn air plane.\t5.000"),
    "qqp": ("QQP", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "1\t2\t3\tWhy?\tHow come?\t1"),
    "mnli": ("MNLI", "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
             "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\t"
             "label1\tgold_label", "0\t1\t2\tg\t(\t(\t(\t(\tA man.\tA person.\tneutral\tneutral"),
    "qnli": ("QNLI", "index\tquestion\tsentence\tlabel", "0\tWho?\tHim.\tnot_entailment"),
    "rte": ("RTE", "index\tsentence1\tsentence2\tlabel", "0\tIt rained.\tIt was wet.\tentailment"),
    "wnli": ("WNLI", "index\tsentence1\tsentence2\tlabel", "0\tHe left.\tHe went.\t1"),
}
EXPECT = {  # (first text, second text, label) of the row above
    "cola": ("The sailors rode the breeze.", None, 1),
    "sst2": ("a charming journey . ", None, 1),
    "mrpc": ('"He said it.', 'He said "it".', 1),
    "stsb": ("A plane.", "An air plane.", 5.0),
    "qqp": ("Why?", "How come?", 1),
    "mnli": ("A man.", "A person.", 1),
    "qnli": ("Who?", "Him.", 1),
    "rte": ("It rained.", "It was wet.", 0),
    "wnli": ("He left.", "He went.", 1),
}


def glue_folder(root, task, rows=3):
    folder, header, row = LAYOUT[task]
    d = root / folder
    d.mkdir(parents=True)
    for stem in GLUE[task].devs + ("train",):
        lines = ([header] if header else []) + [row] * rows
        (d / f"{stem}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


@pytest.mark.parametrize("task", list(GLUE))
def test_every_glue_layout_reads_by_name_from_the_glue_root(task, tmp_path):
    glue_folder(tmp_path, task)
    t = load_task(task, tmp_path)
    a, b, y = EXPECT[task]
    assert (t.train.a[0], t.train.b[0] if t.train.b else None) == (a, b)
    assert t.train.y[0] == pytest.approx(y) and len(t.train) == 3
    assert list(t.devs) == list(GLUE[task].devs)
    assert t.num_labels == (1 if task == "stsb" else len(GLUE[task].values))
    assert load_task(task.upper(), tmp_path / LAYOUT[task][0]).fingerprint == t.fingerprint


def test_first_n_rows_and_fingerprint_follow_the_limits(tmp_path):
    glue_folder(tmp_path, "rte", rows=5)
    t = load_task("rte", tmp_path, max_train=2, max_eval=1)
    assert (len(t.train), len(t.dev)) == (2, 1)
    assert t.fingerprint != load_task("rte", tmp_path).fingerprint


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_custom_tasks_from_csv_tsv_and_jsonl(fmt, tmp_path):
    rows = [("good film", "yes", "pos"), ("bad, sad film", "no", "neg"), ("fine", "ok", "pos")]
    for stem in ("train", "dev"):
        if fmt == "jsonl":
            text = "".join(json.dumps({"q": a, "r": b, "y": c}) + "\n" for a, b, c in rows)
        elif fmt == "csv":
            text = "q,r,y\n" + "".join(f'"{a}",{b},{c}\n' for a, b, c in rows)
        else:
            text = "q\tr\ty\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows)
        (tmp_path / f"{stem}.{fmt}").write_text(text)
    t = load_task("mine", tmp_path, text_fields="q,r", label_field="y")
    assert t.spec.values == ("neg", "pos") and t.spec.metrics == ("f1", "accuracy")
    assert t.train.a[1] == "bad, sad film" and t.train.b[1] == "no"
    assert t.train.y.tolist() == [1, 0, 1]


def test_custom_regression(tmp_path):
    for stem in ("train", "validation"):
        (tmp_path / f"{stem}.csv").write_text("s,score\na,0.5\nb,3\n")
    t = load_task("sts", tmp_path, text_fields="s", label_field="score", regression=True)
    assert t.num_labels == 1 and t.train.y.dtype == np.float32
    assert t.dev.y.tolist() == [0.5, 3.0] and t.spec.metrics == ("pearson", "spearman")


BAD = {
    "missing column": ("sentence\tlabl\nfine\t1\n", "no column 'label'"),
    "unknown label": ("sentence\tlabel\nfine\t7\n", "unknown label '7'"),
    "empty split": ("sentence\tlabel\n", "no examples"),
    "truncated row": ("index\tsentence1\tsentence2\tlabel\n0\tonly\n", ":2: 2 columns"),
    "not utf-8": (b"sentence\tlabel\n\xff\xfe\t1\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_task_files_get_one_clear_error(case, tmp_path):
    text, message = BAD[case]
    task = "rte" if case == "truncated row" else "sst2"
    for stem in ("train", "dev"):
        path = tmp_path / f"{stem}.tsv"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_task(task, tmp_path)


def test_bad_task_arguments(tmp_path):
    with pytest.raises(UserError, match="not a GLUE task"):
        load_task("glue9", tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        load_task("sst2", tmp_path / "nope")
    with pytest.raises(UserError, match="no train.tsv"):
        load_task("sst2", tmp_path)
    (tmp_path / "train.jsonl").write_text('{"t": "a", "y": 1}\n{"t": "b", "y": 1}\n')
    (tmp_path / "dev.jsonl").write_text('{"t": "a", "y": 1}\n')
    with pytest.raises(UserError, match="both --text-fields and --label-field"):
        load_task("mine", tmp_path, text_fields="t")
    with pytest.raises(UserError, match="1 distinct value"):
        load_task("mine", tmp_path, text_fields="t", label_field="y")
    with pytest.raises(UserError, match="no field 'x'"):
        load_task("mine", tmp_path, text_fields="x", label_field="y", regression=True)


def test_metrics_equal_sklearn_scipy_and_the_textbook_formulas():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    got = M.compute(("accuracy", "f1", "matthews"), p, y)
    assert got == {"accuracy": accuracy_score(y, p), "f1": f1_score(y, p),
                   "matthews": matthews_corrcoef(y, p)}
    tp, tn = ((p == 1) & (y == 1)).sum(), ((p == 0) & (y == 0)).sum()
    fp, fn = ((p == 1) & (y == 0)).sum(), ((p == 0) & (y == 1)).sum()
    assert got["accuracy"] == pytest.approx((tp + tn) / 200)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got["matthews"] == pytest.approx(
        (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    s, t = rng.normal(size=50), rng.normal(size=50)
    corr = M.compute(("pearson", "spearman"), s, t)
    assert corr["pearson"] == pytest.approx(pearsonr(s, t)[0])
    assert corr["pearson"] == pytest.approx(np.corrcoef(s, t)[0, 1])
    assert corr["spearman"] == pytest.approx(spearmanr(s, t)[0])
    assert corr["spearman"] == pytest.approx(np.corrcoef(rankdata(s), rankdata(t))[0, 1])
    assert M.score({"f1": 0.8, "accuracy": 0.6}, ("f1", "accuracy")) == pytest.approx(0.7)


def test_majority_baseline_and_constant_predictions():
    base = M.majority(("accuracy", "matthews"), [0, 1, 1, 1], [1, 0, 1, 0], False)
    assert base == {"accuracy": 0.5, "matthews": 0.0}
    corr = M.majority(("pearson", "spearman"), [1.0, 2.0], [1.0, 3.0, 2.0], True)
    assert all(math.isnan(v) for v in corr.values())
    assert M.score(corr, ("pearson", "spearman")) == 0.0
