"""The issue-21 benchmarks end to end at toy scale, so that they cannot rot:
the reference-teacher recipe (bench/teacher_reference.py) and Bort in small
(bench/bort_small.py). Their real settings run by hand (README, bench/RESULTS.md)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(script, *args):
    done = subprocess.run([sys.executable, str(BENCH / script), "--profile", "toy", "--quiet",
                           *args], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_teacher_recipe_trains_in_stages_and_reports_its_quality(shared_data, tmp_path):
    out = tmp_path / "ref"
    text = _run("teacher_reference.py", "--out", str(out),
                "--corpus", str(shared_data / "gutenberg" / "valid.txt"))
    # stage 2 continued stage 1: it records the weights it started from
    s1, s2 = (json.loads((out / f"stage{k}" / "bortsearch.json").read_text()) for k in (1, 2))
    from bortsearch.model.hf import weights_sha256

    assert s2["settings"]["init_from"] == weights_sha256(out / "stage1")
    report = json.loads((out / "reference.json").read_text())
    for name in ("gutenberg valid", "WikiText-2 test"):
        m = report["mlm"][name]
        assert 0 <= m["accuracy"] <= 1 and m["pseudo_perplexity"] == pytest.approx(
            math.exp(m["mlm_ce"]))
        assert m["positions"] > 0 and m["unigram_kl"] > 0
    rows = {r["model"]: r for r in report["glue"]}
    assert set(rows) == {"teacher", "same shape, random init"}
    for r in rows.values():  # two seeds each: a mean and its standard error
        assert 0 <= r["rte"] <= 100 and r["rte_se"] >= 0
    assert "| teacher |" in text and "unigram KL" in text
    # re-running trains nothing and gives the same report
    before = (out / "reference.md").read_text()
    again = _run("teacher_reference.py", "--out", str(out), "--corpus",
                 str(shared_data / "gutenberg" / "valid.txt"))
    assert (out / "reference.md").read_text() == before and before.strip() in again


@pytest.mark.slow
def test_bort_small_compares_the_pick_with_the_rivals(shared_data, tmp_path):
    out = tmp_path / "bs"
    text = _run("bort_small.py", "--out", str(out))
    res = pd.read_csv(out / "bort_small.csv")
    roles = " ".join(res["role"])
    for role in ("teacher (ceiling)", "W-optimum", "confirmed pick", "(a) smallest",
                 "(c) latency-matched", "(d) random 1", "candidate"):
        assert role in roles
    best = json.loads((out / "search" / "best.json").read_text())
    pick = res[res["role"].str.contains("W-optimum")].iloc[0]
    assert pick["model"] == "-".join(map(str, best["size"]))
    # every student had the same pretraining budget, and its KL is measured
    students = res[res["model"] != "teacher"]
    assert (students["kl_pretrained"] >= -1e-6).all() and students["rte_se"].notna().all()
    # the front is the non-dominated set of (latency, average)
    for r in students.itertuples():
        dominated = ((students["latency_ms"] <= r.latency_ms) & (students["average"] >= r.average)
                     & ((students["latency_ms"] < r.latency_ms) | (students["average"] > r.average)))
        assert r.front == (not dominated.any())
    assert (out / "bort_small.png").read_bytes()[:4] == b"\x89PNG"
    # int8: every student's classifiers quantised, scored and timed in ONNX Runtime
    assert (students["latency_int8_ms"] > 0).all() and students["rte_int8"].between(0, 100).all()
    assert "int8 (cost)" in text
    assert "W-optimum" in text and "Spearman over the" in text and "standard errors" in text \
        or "no other student is as fast" in text
