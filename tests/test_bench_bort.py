"""The issue-21 benchmarks end to end at toy scale, so that they cannot rot:
the reference-teacher recipe (bench/teacher_reference.py) and Bort in small
(bench/bort_small.py). Their real settings run by hand (README, bench/RESULTS.md)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _protocol():
    sys.path.insert(0, str(BENCH))
    import protocol

    return protocol


def test_protocol_rivals_follow_their_rules():
    """bench/bort_small_protocol.md's rivals, computed from a pick and the space."""
    from bortsearch import load_space
    from bortsearch.model.proxies import effective_param_count, forward_flops

    p = _protocol()
    space = load_space(BENCH.parent / "search_spaces" / "bort_minilm.toml")
    xi = space.architectures(vocab_size=30522)
    assert len(xi) == 42
    teacher = xi[0].with_size(6, 12, 384, 1536)
    size = effective_param_count
    flops = lambda a: forward_flops(a, 1, 128, "encoder")  # noqa: E731
    pick = next(a for a in xi if a.size == (4, 4, 256, 512))
    r = p.rivals_by_rule(xi, teacher, pick, size, flops)
    assert r["(a) smallest"].size == (2, 2, 128, 512)
    shrink = r["(b) uniform shrink"].size
    assert shrink[2] % 32 == 0 and shrink[1] == shrink[2] // 32 and shrink[3] == 4 * shrink[2]
    assert abs(shrink[0] / 6 - shrink[2] / 384) <= 1 / 6  # depth and width shrunk alike
    assert r["(c) teacher cut to the pick's depth"].size == (4, 12, 384, 1536)
    assert r["(d) BERT-Tiny"].size == (2, 2, 128, 512)
    assert r["(d) BERT-Mini"].size == (4, 4, 256, 1024)
    randoms = [r[k] for k in r if k.startswith("(e)")]
    assert len(randoms) == 2 and len({a.size for a in randoms}) == 2
    for a in randoms:
        assert a.size != pick.size and abs(size(a) / size(pick) - 1) <= 0.2
        assert a.size not in {r[k].size for k in r if not k.startswith(("(e)", "(f)"))}
    assert r["(f) control: the pick from random weights"] is pick
    # the same pick and space give the same rivals; the nearest two by size
    assert {k: v.size for k, v in p.rivals_by_rule(xi, teacher, pick, size, flops).items()} \
        == {k: v.size for k, v in r.items()}
    near = p.nearest_rivals(pick, r, size)
    gaps = sorted(abs(size(r[k]) - size(pick)) for k in r if not k.startswith("(f)"))
    assert [abs(size(r[k]) - size(pick)) for k in near] == gaps[:2]


def test_protocol_verdicts_on_planted_results():
    """The test that decides gives the right verdict, with the right sign, on planted
    scores; latency within noise is no greater; the front and Spearman."""
    p = _protocol()
    rng = np.random.default_rng(0)

    def trials(mean, sd=0.5, seeds=(0, 1), fine=5):
        return {s: list(mean + sd * rng.standard_normal(fine)) for s in seeds}

    better, worse = trials(80.0), trials(75.0)
    win = p.decide(better, worse, n=2000)
    assert win["verdict"] == "wins" and win["lo"] > 0 and 4 < win["margin"] < 6
    lose = p.decide(worse, better, n=2000)
    assert lose["verdict"] == "loses" and lose["hi"] < 0 and lose["margin"] < 0
    assert p.decide(trials(80.0, sd=3), trials(80.2, sd=3), n=2000)["verdict"] == "cannot tell"
    # two pretraining seeds far apart widen the interval beyond the fine-tuning spread
    one = p.score_interval({0: [80.0, 80.1, 79.9, 80.0, 80.1]}, n=2000)
    two = p.score_interval({0: [78.0, 78.1, 77.9, 78.0, 78.1], 1: [82.0, 82.1, 81.9, 82.0, 82.1]},
                           n=2000)
    assert two["hi"] - two["lo"] > 5 * (one["hi"] - one["lo"])
    # latency: 3% slower on noisy rounds is no greater; 50% slower is
    rounds = [{"round": r, "model": m, "seconds": s * (1 + 0.1 * rng.standard_normal())}
              for r in range(15) for m, s in (("pick", 1.0), ("close", 1.03), ("slow", 1.5))]
    assert p.no_greater_latency(rounds, "close", "pick", n=2000)[0]
    assert not p.no_greater_latency(rounds, "slow", "pick", n=2000)[0]
    lat = p.latency_summary(rounds, n=2000)
    assert lat["pick"]["lo"] <= lat["pick"]["median"] <= lat["pick"]["hi"]
    score = {"pick": p.score_interval(better, n=2000), "close": p.score_interval(worse, n=2000),
             "slow": p.score_interval(trials(70.0), n=2000)}
    front = p.on_front(lat, score)
    assert front["pick"] and not front["slow"]
    rho, pval = p.spearman([1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4, 3, 6, 5, 8, 7], n=2000)
    assert rho == pytest.approx(0.9047619, abs=1e-6) and pval < 0.01
    rho, pval = p.spearman([1, 2, 3, 4, 5, 6, 7, 8], [8, 1, 6, 3, 2, 7, 4, 5], n=2000)
    assert pval > 0.05


def test_interleaved_latency_measures_every_model_once_a_round():
    p = _protocol()
    seen = []
    rows = p.interleaved_latency({"a": 1, "b": 2, "c": 3}, lambda m: seen.append(m) or m * 1e-3,
                                 rounds=4)
    assert len(rows) == 12 and sorted(seen) == [1] * 4 + [2] * 4 + [3] * 4
    for r in range(4):
        assert sorted(x["model"] for x in rows if x["round"] == r) == ["a", "b", "c"]
    orders = {tuple(x["model"] for x in rows if x["round"] == r) for r in range(4)}
    assert len(orders) > 1  # a fresh order each round
