"""End-to-end searches with real training on tiny models."""

import json

import numpy as np
import pandas as pd
import pytest

from bortsearch import Arch, load
from bortsearch.cli import main
from bortsearch.errors import UserError
from bortsearch.model.proxies import effective_param_count, forward_flops, param_count
from bortsearch.search.algorithm import pareto_front
from bortsearch.search.run import RESULT_COLUMNS, SearchConfig, run_search

FLAGS = ["--steps", "8", "--batch-size", "8", "--seq-len", "32", "--quiet"]


FLAGS_MEASURED = ["--epsilon", "8", "--inference", "measured"]


def _search(space, run, teacher, *extra):
    return main(["search", "--space", str(space), "--run", str(run), "--teacher", str(teacher),
                 *FLAGS, *extra])


def test_end_to_end_search_and_show(space, teacher, tmp_path, capsys):
    run = tmp_path / "run"
    assert _search(space, run, teacher, "--epsilon", "2", "--lr", "1e-3", "--lr", "3e-3") == 0
    out = capsys.readouterr().out
    assert "chosen: ⟨D=" in out and "pareto.png" in out
    table = pd.read_csv(run / "results.csv")
    assert list(table.columns) == RESULT_COLUMNS and len(table) == 8
    assert (table["status"] == "done").sum() == 4 and (table["status"] == "skipped").sum() == 4
    assert table.loc[~table["trained"], "error"].isna().all()
    assert table.loc[~table["trained"], "w_coefficient"].isna().all()
    assert set(table.loc[table["trained"], "best_lr"]) <= {1e-3, 3e-3}
    # every number is recomputed independently
    t = json.loads((run / "best.json").read_text())["maximum_point"]
    for r in table.itertuples():
        arch = Arch(r.layers, r.heads, r.hidden, r.intermediate, vocab_size=300, max_positions=64)
        assert r.params == param_count(arch) and r.effective_params == effective_param_count(arch)
        assert r.inference == forward_flops(arch, 1, 32, "encoder")
        if r.status == "done":  # p̂ is the non-embedding count by default
            w = ((t["p_hat"] - r.effective_params) / t["p_hat"]) * \
                ((t["inference"] - r.inference) / t["inference"]) / r.error
            assert r.w_coefficient == pytest.approx(w, rel=1e-9)
    assert t["p_hat"] == effective_param_count(Arch.from_dict(t["arch"]))
    done = table[table["status"] == "done"]
    assert list(done["pareto"]) == pareto_front(
        list(zip(done["effective_params"], done["inference"], done["error"])))
    best = json.loads((run / "best.json").read_text())
    top = done.loc[done["w_coefficient"].idxmax()]
    assert best["size"] == [int(top.layers), int(top.heads), int(top.hidden), int(top.intermediate)]
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "teacher" / "model.safetensors").is_file()
    # the run folder rebuilds its config: the flags given, the defaults and the ε used
    from bortsearch.search.config import SearchConfig

    cfg = SearchConfig.from_run(run)
    assert cfg.epsilon == best["epsilon"] == 2 and cfg.lrs == (1e-3, 3e-3)
    assert cfg.steps == best["steps"] and cfg.inherit == "first" and cfg.space == str(space)
    # show prints the ranked table with the W-optimum first
    assert main(["show", str(run)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[1].startswith(">") and "{:>3}".format(best["size"][0]) in shown[1][:6]


def test_same_seed_same_table(space, teacher, tmp_path):
    for name in ("a", "b"):
        assert _search(space, tmp_path / name, teacher, "--epsilon", "3") == 0
    assert ((tmp_path / "a" / "results.csv").read_text()
            == (tmp_path / "b" / "results.csv").read_text())


def test_groups_compiled_ahead_give_the_same_table(space, teacher, tmp_path):
    """With one candidate per group, each group's programs compile while the group
    before it trains: the table is the one a single lockstep group gives, and the
    journal records the search's wait for compiles apart from their own time."""
    assert _search(space, tmp_path / "one", teacher, "--epsilon", "3") == 0
    assert _search(space, tmp_path / "many", teacher, "--epsilon", "3", "--group-size", "1") == 0
    assert (tmp_path / "one" / "results.csv").read_text() == \
        (tmp_path / "many" / "results.csv").read_text()
    from bortsearch.search.records import timings

    t = timings(tmp_path / "many")
    assert len(t) >= 2 and (t["compile_busy_s"] > 0).all() and (t["compile_s"] >= 0).all()


def test_epsilon_all_trains_one(space, teacher, tmp_path):
    assert _search(space, tmp_path / "r", teacher, "--epsilon", "8") == 0
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    assert table["trained"].sum() == 1


def test_changed_setting_is_refused_by_name(space, teacher, tmp_path, capsys):
    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "8") == 0
    before = (run / "results.csv").read_text()
    assert main(["search", "--space", str(space), "--run", str(run), "--teacher", str(teacher),
                 "--steps", "9", "--batch-size", "8", "--seq-len", "32", "--quiet",
                 "--epsilon", "8"]) == 2
    err = capsys.readouterr().err
    assert "other settings (steps: 8 then, 9 now)" in err and "another --run folder" in err
    assert (run / "results.csv").read_text() == before
    # a run recorded before the --dtype setting existed was float32: it still resumes
    config = json.loads((run / "config.json").read_text())
    assert config.pop("dtype") == "float32"
    (run / "config.json").write_text(json.dumps(config))
    assert _search(space, run, teacher, "--epsilon", "8") == 0
    assert (run / "results.csv").read_text() == before


def test_a_bfloat16_search_trains_and_records_its_dtype(space, teacher, tmp_path, capsys):
    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "8", "--dtype", "bfloat16") == 0
    assert json.loads((run / "config.json").read_text())["dtype"] == "bfloat16"
    done = pd.read_csv(run / "results.csv").query("status == 'done'")
    assert len(done) == 1 and np.isfinite(done["error"]).all() and (done["error"] > 0).all()
    capsys.readouterr()
    assert _search(space, run, teacher, "--epsilon", "8") == 2
    assert "dtype: 'bfloat16' then, 'float32' now" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        _search(space, run, teacher, "--epsilon", "8", "--dtype", "float16")
    assert exit_.value.code == 2 and "--dtype" in capsys.readouterr().err
    with pytest.raises(UserError, match="--dtype must be one of float32, bfloat16"):
        SearchConfig(space=str(space), dtype="float16")


def test_a_failing_candidate_is_recorded_and_the_search_completes(space, teacher, tmp_path,
                                                                   monkeypatch):
    import bortsearch.search.candidates as candidates

    real = candidates.init_params

    def poisoned(arch, seed=0, *args, **kwargs):
        params = real(arch, seed, *args, **kwargs)
        if arch.size == (2, 2, 32, 32):
            params["params"]["embeddings"]["word"]["embedding"][:] = np.nan
        return params

    monkeypatch.setattr(candidates, "init_params", poisoned)
    two = tmp_path / "two.toml"  # the poisoned candidate and one healthy one
    two.write_text('name = "two"\nlayers = [2]\nheads = [2]\nhidden = [16, 32]\n'
                   'intermediate = [32]\n')
    cfg = SearchConfig(space=str(two), teacher=str(teacher), epsilon=1, steps=4,
                       batch_size=8, seq_len=32, init="random")
    result = run_search(tmp_path / "r", cfg, progress=False, log=lambda *a: None)
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1 and tuple(failed.iloc[0, :4]) == (2, 2, 32, 32)
    assert "loss became NaN at step 1" in failed.iloc[0]["note"]
    assert (table["status"] == "done").sum() == 1 and result.best is not None
    assert result.best.arch.size == (2, 2, 16, 32)
    journal = (tmp_path / "r" / "journal.jsonl").read_text()
    assert '"event": "failed"' in journal


def test_show_needs_a_finished_run(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 2
    assert "no results.csv; it is not a bortsearch run folder" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["show", str(tmp_path)]) == 2
    assert "the search has not finished; re-run `bortsearch search`" in capsys.readouterr().err


def test_bad_search_input(space, teacher, tmp_path, capsys):
    assert _search(space, tmp_path / "r", teacher, "--epsilon", "9") == 2
    assert "--epsilon 9: must be between 1 and |Ξ| = 8" in capsys.readouterr().err
    assert _search(space, tmp_path / "r2", tmp_path / "nope") == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    assert _search(space, busy, teacher) == 2
    assert "not a bortsearch run" in capsys.readouterr().err


@pytest.mark.slow
def test_measured_inference_is_journalled_and_not_measured_again(space, teacher, tmp_path,
                                                                 capsys):
    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "8", "--inference", "measured") == 0
    events = [json.loads(l) for l in (run / "journal.jsonl").read_text().splitlines()]
    latency = [e for e in events if e["event"] == "latency"]
    assert len(latency) == 8  # Ξ ∪ {T}: the teacher ⟨2, 2, 32, 64⟩ is in this Ξ
    assert all(e["median_s"] > 0 and e["hardware"]["cores"] for e in latency)
    table = pd.read_csv(run / "results.csv")
    by_size = {tuple(e["arch"]): e["median_s"] for e in latency}
    assert all(r.inference == by_size[(r.layers, r.heads, r.hidden, r.intermediate)]
               for r in table.itertuples())
    assert _search(space, run, teacher, "--epsilon", "8", "--inference", "measured") == 0
    again = [json.loads(l) for l in (run / "journal.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "latency" for e in again) == 8
    # the same run re-scored with ONNX Runtime int8 latency: measured again, in that runtime
    assert _search(space, run, teacher, "--runtime", "onnx-int8") == 2
    assert "--inference measured --runtime onnx-int8" in capsys.readouterr().err
    int8 = [*FLAGS_MEASURED, "--runtime", "onnx-int8"]
    assert _search(space, run, teacher, *int8) == 0
    assert "ms onnx-int8" in capsys.readouterr().out
    events = [json.loads(l) for l in (run / "journal.jsonl").read_text().splitlines()]
    onnx = [e for e in events if e["event"] == "latency" and e.get("runtime") == "onnx-int8"]
    assert len(onnx) == 8 and all(e["hardware"]["onnxruntime"] for e in onnx)
    by_size = {tuple(e["arch"]): e["median_s"] for e in onnx}
    table = pd.read_csv(run / "results.csv")
    assert all(r.inference == by_size[(r.layers, r.heads, r.hidden, r.intermediate)]
               for r in table.itertuples())
    best = json.loads((run / "best.json").read_text())
    assert best["runtime"] == "onnx-int8" and best["speedup"]["runtime"] == "onnx-int8"
    assert main(["show", str(run)]) == 0
    assert "onnx-int8" in capsys.readouterr().out
    assert _search(space, run, teacher, *int8) == 0  # nothing measured again
    events = [json.loads(l) for l in (run / "journal.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "latency" for e in events) == 16


@pytest.mark.slow
def test_fitted_latency_model_predicts_every_architecture(space, teacher, tmp_path, capsys):
    from bortsearch.model.latency_model import FEATURES, features, fit_latency
    from bortsearch.search.latency import LATENCY_ROUNDS

    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "8", "--inference", "fitted",
                   "--runtime", "onnx") == 0
    assert "leave-one-out error" in capsys.readouterr().out
    events = [json.loads(l) for l in (run / "journal.jsonl").read_text().splitlines()]
    latency = [e for e in events if e["event"] == "latency"]
    assert latency and all(e["runtime"] == "onnx" for e in latency)
    best = json.loads((run / "best.json").read_text())
    lm = best["latency_model"]
    # each architecture of the sample measured in LATENCY_ROUNDS interleaved rounds
    rounds = {}
    for e in latency:
        rounds.setdefault(tuple(e["arch"]), []).append(e["median_s"])
    assert {len(v) for v in rounds.values()} == {LATENCY_ROUNDS}
    assert [tuple(e["arch"]) for e in latency[:len(rounds)]] == list(rounds)  # round by round
    assert lm["features"] == list(FEATURES) and lm["measured"] == len(rounds)
    assert all(c >= 0 for c in lm["coef"]) and best["inference_kind"] == "fitted"
    # the model again from the journalled measurements (medians over the rounds), and
    # î = its predictions
    teacher_arch = load(teacher).arch
    archs = [teacher_arch.with_size(*k) for k in rounds]
    again = fit_latency(archs, [float(np.median(v)) for v in rounds.values()], 1, 32, "encoder")
    np.testing.assert_allclose(again.coef, lm["coef"], rtol=1e-9)
    table = pd.read_csv(run / "results.csv")
    for r in table.itertuples():
        arch = teacher_arch.with_size(r.layers, r.heads, r.hidden, r.intermediate)
        assert r.inference == pytest.approx(features(arch, 1, 32, "encoder") @ lm["coef"])
    assert lm["loo_max_rel_error"] == pytest.approx(max(map(abs, again.loo_errors)))
    # the speed-up check: the pick and T in turn, the medians of the rounds
    sp = best["speedup"]
    assert len(sp["round_speedups"]) == LATENCY_ROUNDS == sp["rounds"]
    assert min(sp["round_speedups"]) <= sp["measured"] <= max(sp["round_speedups"])


def test_an_edited_config_is_a_clear_error(space, teacher, tmp_path, capsys):
    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "8") == 0
    (run / "config.json").write_text("{not json")
    assert _search(space, run, teacher, "--epsilon", "8") == 2
    assert "config.json is not valid JSON (was it edited?)" in capsys.readouterr().err


def test_seeds_confirmation_and_the_reliability_report(space, teacher, tmp_path, capsys):
    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "2", "--seeds", "2", "--confirm", "2",
                   "--confirm-steps", "12", "--init", "teacher", "--error", "ce") == 0
    out = capsys.readouterr().out
    assert "teacher entropy H_T" in out and "speed-up over the maximum point" in out
    assert "confirmation: 2 re-trained longer" in out
    table = pd.read_csv(run / "results.csv")
    done = table[table["status"] == "done"]
    assert done["error_se"].notna().all() and (done["error_se"] >= 0).all()
    # W's noise follows from ê's by the delta method; KL is ê less the teacher's entropy
    assert np.allclose(done["w_se"], done["w_coefficient"] * done["error_se"] / done["error"])
    best = json.loads((run / "best.json").read_text())
    diag = best["diagnostics"]
    assert np.allclose(done["ce"] - done["kl"], diag["teacher_entropy"], atol=1e-4)
    assert np.allclose(done["error"], done["ce"])  # --error ce
    assert diag["unigram_kl"] == pytest.approx(diag["unigram_ce"] - diag["teacher_entropy"])
    assert table["confirmed_error"].notna().sum() == 2 and best["chosen_by"] == "confirmed"
    confirmed = table[table["confirmed_error"].notna()]
    top = confirmed.loc[confirmed["confirmed_w"].idxmax()]
    assert best["size"] == [int(top.layers), int(top.heads), int(top.hidden), int(top.intermediate)]
    sp = best["speedup"]
    assert sp["predicted"] == pytest.approx(best["maximum_point"]["inference"] / best["inference"])
    assert sp["measured"] == pytest.approx(sp["maximum_point_s"] / sp["best_s"])
    assert isinstance(best["warnings"], list)
    events = [json.loads(x) for x in (run / "journal.jsonl").read_text().splitlines()]
    confirm_done = [e for e in events if e["event"] == "done" and e["phase"] == "confirm"]
    assert len(confirm_done) == 2 and all(e["steps"] == 12 for e in confirm_done)
    assert all(len(e["trials"]) == 4 for e in confirm_done)  # 2 seeds x the 2 θ of Θ
    # the audit writes its plot and repeats the report
    assert main(["audit", str(run)]) == 0
    assert "Spearman(short ê, confirmed ê)" in capsys.readouterr().out
    assert (run / "audit.png").read_bytes()[:4] == b"\x89PNG"
    # the error metric re-scores the journal: no candidate is trained twice (only a
    # new member of the top K, if the other metric reorders it, is confirmed)
    def starts(evs, phase):
        return [tuple(e["arch"]) for e in evs if e["event"] == "start" and e["phase"] == phase]

    assert _search(space, run, teacher, "--epsilon", "2", "--seeds", "2", "--confirm", "2",
                   "--confirm-steps", "12", "--init", "teacher", "--error", "kl") == 0
    again = [json.loads(x) for x in (run / "journal.jsonl").read_text().splitlines()]
    assert starts(again, "search") == starts(events, "search")
    assert len(set(starts(again, "confirm"))) == len(starts(again, "confirm"))
    rescored = pd.read_csv(run / "results.csv")
    assert np.allclose(rescored.loc[rescored["status"] == "done", "error"],
                       rescored.loc[rescored["status"] == "done", "kl"])


def test_bad_reliability_flags(space, teacher, tmp_path, capsys):
    assert _search(space, tmp_path / "r", teacher, "--confirm", "-1") == 2
    assert "--confirm must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_show_reads_a_run_from_before_the_reliability_columns(space, teacher, tmp_path, capsys):
    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "4") == 0
    table = pd.read_csv(run / "results.csv")
    table[RESULT_COLUMNS[:15]].to_csv(run / "results.csv", index=False)  # the older layout
    best = json.loads((run / "best.json").read_text())
    for key in ("diagnostics", "warnings", "speedup", "error_metric", "inference_scope"):
        best.pop(key)
    (run / "best.json").write_text(json.dumps(best))
    capsys.readouterr()
    assert main(["show", str(run)]) == 0 and main(["audit", str(run)]) == 0
    out = capsys.readouterr().out
    assert "made by an older version" in out and (run / "audit.png").is_file()


def test_size_proxy_rescores_a_finished_run_without_training_again(space, teacher, tmp_path,
                                                                    capsys):
    """--size-proxy non-embedding: p̂ and W count the non-embedding parameters; on a
    finished run it re-scores, training only representatives not trained before."""
    run = tmp_path / "r"
    assert _search(space, run, teacher, "--epsilon", "2") == 0
    assert _search(space, run, teacher, "--epsilon", "2", "--size-proxy", "non-embedding") == 0
    assert "counts the non-embedding parameters" in capsys.readouterr().out
    events = [json.loads(l) for l in (run / "journal.jsonl").read_text().splitlines()]
    trained = [tuple(e["arch"]) for e in events if e["event"] == "done"]
    assert len(trained) == len(set(trained))  # nothing trained twice
    best = json.loads((run / "best.json").read_text())
    t = best["maximum_point"]
    T = Arch.from_dict(t["arch"])
    assert best["size_proxy"] == "non-embedding" and t["p_hat"] == effective_param_count(T)
    assert (t["params"] == param_count(T)
            and best["params"] == param_count(Arch.from_dict(best["arch"])))
    table = pd.read_csv(run / "results.csv")
    for r in table[table["status"] == "done"].itertuples():
        w = ((t["p_hat"] - r.effective_params) / t["p_hat"]) * \
            ((t["inference"] - r.inference) / t["inference"]) / r.error
        assert r.w_coefficient == pytest.approx(w, rel=1e-9)
    with pytest.raises(SystemExit) as e:
        main(["search", "--space", str(space), "--run", str(tmp_path / "x"), "--teacher",
              str(teacher), "--size-proxy", "bytes"])
    assert e.value.code == 2 and "invalid choice: 'bytes'" in capsys.readouterr().err
