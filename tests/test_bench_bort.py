"""The teacher and Bort-in-small benchmarks end to end at toy scale, so that they
cannot rot: the reference-teacher recipe (bench/teacher_reference.py) and Bort in small
(bench/bort_minilm.py, bench/protocol.py). Their real profiles run by hand
(bench/README.md)."""

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
def test_bort_in_small_follows_its_protocol(tmp_path):
    """bench/bort_minilm.py's toy profile end to end: every rival role computed, every
    student pretrained under the one budget, the fine-tuning scored on dev once per
    seed by the recipe chosen on held-out rows, and the margin's sign and verdict
    those of the raw scores."""
    out, results = tmp_path / "work", tmp_path / "results"
    _run("bort_minilm.py", "--out", str(out), "--results", str(results))
    answer = json.loads((results / "answer.json").read_text())
    students = pd.read_csv(results / "students.csv")
    roles = " ".join(students["roles"])
    for role in ("pick", "(a) smallest", "(b) uniform shrink", "(c) teacher cut",
                 "(e) random 1", "(g) candidate"):
        assert role in roles
    best = json.loads((results / "best.json").read_text())
    assert answer["pick"] == "-".join(map(str, best["size"]))
    # one budget: every student pretrained for the toy's 4 steps, from the same stream
    pretrained = [m for m in students["model"] if not m.endswith("-random")]
    assert len(pretrained) == len(students) - 1  # and the control (f)
    for name in pretrained:
        summary = json.loads((out / "run" / "pretrain" / name / "summary.json").read_text())
        assert summary["steps"] == 4 and summary["group_size"] == len(pretrained)
    control = json.loads((out / "run-control" / "pretrain" / answer["pick"] / "summary.json")
                         .read_text())
    assert control["steps"] == 4 and control["init"] == "random"
    for variant in ("run-seed1", "run-control"):
        assert any((out / variant / "pretrain").iterdir())
    ft = pd.read_csv(results / "finetune.csv")
    assert set(ft["model"]) == {"teacher", *students["model"]}
    assert (ft.groupby(["model", "variant", "task"]).size() == 2).all()  # 2 seeds each
    assert ft["dev"].between(0, 100).all() and ft["heldout_best"].between(0, 100).all()
    lat = pd.read_csv(results / "latency.csv")
    assert (lat.groupby("round").size() == len(students) + 1).all()
    if "decision" in answer:  # a rival of no greater latency exists
        d, rival = answer["decision"], answer["best_rival"]
        mean = lambda m: ft[(ft["model"] == m) & ft["variant"].isin(["seed0", "seed1"])] \
            .groupby("task")["dev"].mean().mean()  # noqa: E731
        assert d["margin"] == pytest.approx(mean(answer["pick"]) - mean(rival))
        assert d["lo"] <= d["margin"] + 1e-9 and d["margin"] <= d["hi"] + 1e-9
        assert d["verdict"] == ("wins" if d["lo"] > 0 else "loses" if d["hi"] < 0
                                else "cannot tell")
        assert answer["admissible"][rival]["no_greater"]
    assert "teacher_bought" in answer and "kept_against_teacher" in answer
    sel = pd.read_csv(results / "selection.csv")
    assert (sel.groupby(["model", "variant", "task"])["chosen"].sum() == 1).all()
    assert (results / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert answer["pick"] in (results / "report.md").read_text()
    # --search-from: a finished search's committed answer rebuilds a run folder for the
    # later phases, checked against the teacher by its entropy on the held-out batches
    sys.path.insert(0, str(BENCH))
    import bort_minilm

    # --report-only makes the same report from the committed raw results
    before = (results / "report.md").read_text()
    (results / "report.md").unlink()
    bort_minilm.report_only(results, "toy")
    assert (results / "report.md").read_text() == before
    teacher = Path(json.loads((results / "search.json").read_text())["teacher_path"])
    best = bort_minilm.reuse_search(tmp_path / "again", results, teacher)
    assert best == json.loads((results / "best.json").read_text())
    reused = json.loads((tmp_path / "again" / "reused.json").read_text())
    assert reused["teacher_entropy"]["now"] == pytest.approx(
        reused["teacher_entropy"]["recorded"], rel=1e-4)
    assert (tmp_path / "again" / "teacher" / "config.json").is_file()
    assert not (tmp_path / "again" / "journal.jsonl").exists()
    other = tmp_path / "other-teacher"  # the same shape, other weights: refused
    import shutil

    from safetensors.numpy import load_file, save_file
    shutil.copytree(teacher, other)
    w = load_file(str(other / "model.safetensors"))
    save_file({k: v * 1.5 if v.ndim == 2 else v for k, v in w.items()},
              str(other / "model.safetensors"))
    with pytest.raises(SystemExit, match="another teacher"):
        bort_minilm.reuse_search(tmp_path / "third", results, other)
    assert not (tmp_path / "third" / "best.json").exists()


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
    # the same pick and space give the same rivals
    assert {k: v.size for k, v in p.rivals_by_rule(xi, teacher, pick, size, flops).items()} \
        == {k: v.size for k, v in r.items()}
    # the pick's own shape is never a rival: with BERT-Tiny as the pick, (a) and (d) move on
    tiny = next(a for a in xi if a.size == (2, 2, 128, 512))
    r = p.rivals_by_rule(xi, teacher, tiny, size, flops)
    assert "(d) BERT-Tiny" not in r and r["(a) smallest"].size == (2, 4, 128, 512)
    assert all(a.size != tiny.size for k, a in r.items() if not k.startswith("(f)"))
    # (b)'s depth ties (D/6 equally near H/384 from both sides) take the smaller depth
    assert r["(b) uniform shrink"].size[0] == min(
        range(1, 7), key=lambda d: (abs(384 * d - 6 * r["(b) uniform shrink"].size[2]), d))


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
    # averaged over tasks: the same checkpoints on both tasks, the verdict as on one
    two_tasks = p.decide_tasks({"a": better, "b": better}, {"a": worse, "b": worse}, n=2000)
    assert two_tasks["verdict"] == "wins" and two_tasks["margin"] == pytest.approx(win["margin"])
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


def test_the_readme_result_is_made_from_the_report(tmp_path):
    """bench/bort_minilm.py writes each profile's answer (the report's bullets up to
    "where the pick does not win", with a link to the whole report) between the README's
    markers, replacing that profile's earlier block and keeping the others and the text
    around."""
    sys.path.insert(0, str(BENCH))
    import bort_minilm as B

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{B.BEGIN}\n{B.END}\nafter\n")
    B.update_readme(readme, "cpu", "| a | b |\n\n- first cpu\n")
    B.update_readme(readme, "gpu", "- gpu answer\n")
    B.update_readme(readme, "cpu", "| table |\n\n- second cpu\n- **Where the pick does not "
                                   "win** (the list)\n  - a detail\n- a later figure\n")
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{B.END}\nafter\n")
    assert "second cpu" in text and "first cpu" not in text and "gpu answer" in text
    assert "| table |" not in text and "a detail" not in text and "later figure" not in text
    assert text.index("CPU profile") < text.index("GPU profile")
    assert "bench/results/bort_small-cpu/report.md" in text


def test_the_recipe_is_chosen_on_held_out_rows_and_dev_read_at_the_choice():
    """Held-out and dev disagree on the best epoch: the choice follows held-out (mean
    over seeds; ties to fewer epochs, then the lower lr) and each seed's dev score is
    read at that epoch, whatever dev would have preferred."""
    sys.path.insert(0, str(BENCH))
    import bort_minilm as B

    held = {(1e-4, 0): [60, 70, 65], (1e-4, 1): [62, 72, 60],
            (3e-4, 0): [50, 71, 40], (3e-4, 1): [50, 71, 40]}
    dev = {(1e-4, 0): [90, 10, 95], (1e-4, 1): [91, 11, 96],
           (3e-4, 0): [99, 99, 99], (3e-4, 1): [99, 99, 99]}
    scores = {k: [{"heldout": h, "dev": d} for h, d in zip(held[k], dev[k])] for k in held}
    got = B.choose(scores, (1e-4, 3e-4), 3, 2)
    assert (got["lr"], got["epochs"]) == (1e-4, 2) and got["dev"] == [10, 11]
    assert got["heldout"][(1e-4, 2)] == 71 and got["heldout_per_seed"][(3e-4, 1)] == [50, 50]
    tie = {k: [{"heldout": 5, "dev": i} for i in range(3)] for k in held}  # all equal
    assert (B.choose(tie, (1e-4, 3e-4), 3, 2)["lr"], B.choose(tie, (1e-4, 3e-4), 3, 2)["epochs"]) \
        == (1e-4, 1)


def test_spearman_is_undefined_for_a_constant_ranking():
    p = _protocol()
    rho, pv = p.spearman([1, 2, 3], [5, 5, 5])
    assert np.isnan(rho) and np.isnan(pv)
    assert all(np.isnan(p.spearman([1], [2])))
    rho, pv = p.spearman([1, 2, 3, 4], [1, 2, 3, 4], n=200)
    assert rho == pytest.approx(1.0) and 0 < pv <= 1


def test_task_rows_cut_for_other_settings_are_refused(tmp_path, shared_data):
    """A work folder whose GLUE rows were cut for another profile is not reused."""
    import dataclasses

    sys.path.insert(0, str(BENCH))
    import bort_minilm as B

    p = dataclasses.replace(B.PROFILES["toy"], heldout_rows=20)
    held, final = B.task_folders(tmp_path, ("rte",), p)
    rows = (held / "RTE" / "dev.tsv").read_text().splitlines()
    assert len(rows) == 1 + 20  # the header and the held-out part
    assert B.task_folders(tmp_path, ("rte",), p) == (held, final)  # the same cut: reused
    with pytest.raises(SystemExit, match="cut for other settings"):
        B.task_folders(tmp_path, ("rte",), dataclasses.replace(p, heldout_rows=30))


def test_inherit_bench_pairs_candidates_against_the_default():
    """bench/inherit_bench.py's summary on planted rows: paired differences against
    first/uniform, counted beyond 2 standard errors, and the ranking agreement."""
    sys.path.insert(0, str(BENCH))
    import inherit_bench as I

    rows = []
    for (inherit, layers), shift in zip(I.SETTINGS, (0.0, -0.05, 0.0, 0.04)):
        for k, (kl, se) in enumerate([(0.30, 0.01), (0.20, 0.01), (0.10, 0.001)]):
            rows.append({"space": "s", "inherit": inherit, "layers": layers, "arch": f"a{k}",
                         "kl": kl + shift * (k != 2), "kl_se": se, "w": 1.0, "pick": "a2",
                         "cpu_s": 1.0, "load_average": 0.5})
    got = {s["setting"]: s for s in I.summarise(rows)}
    assert got["first/uniform"]["mean_diff"] == 0 and got["first/uniform"]["spearman"] == 1
    imp = got["importance/uniform"]
    assert imp["mean_diff"] == pytest.approx(-0.1 / 3) and (imp["better"], imp["worse"]) == (2, 0)
    assert got["importance/measured"]["worse"] == 2 and got["first/measured"]["better"] == 0
    text = I.report(I.summarise(rows), rows)
    assert "| s | importance/uniform | 3 |" in text and "0.1500 ± 0.0100 (-25.0%)" in text
