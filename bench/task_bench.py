"""Compress the model you have, run as `bench/task_protocol.md` states.

A fine-tuned classifier (all-MiniLM-L6-v2's encoder fine-tuned on SST-2 by `bortsearch
finetune`) is the teacher of a task search; the pick, the rivals by rule
(bench/protocol.py, as bench-bort's), the pick trained on the labels alone (L) and the
pick from random weights (R) are distilled on the task under one budget, five seeds
each; every student is scored on SST-2 dev after its last step; latency in interleaved
rounds; the answer with bootstrap intervals. Every phase resumes (re-run the command).
Raw results and the report go to bench/results/task-PROFILE/.

    python bench/task_bench.py [--profile cpu|gpu|toy] [--out WORK]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402
from bort_minilm import SPACE, Cost, latency, name_of, students  # noqa: E402
from glue_eval import GLUE_DATA  # noqa: E402

LR = 1e-4  # the teacher's fine-tuning and every student's distillation


@dataclasses.dataclass(frozen=True)
class Profile:
    task_rows: int | None = None  # training rows of SST-2 used at all (None: every one)
    teacher_rows: int | None = 8000  # of them, the teacher's (after the held-out rows)
    teacher_epochs: int = 2
    teacher_min: float | None = 80.0  # dev accuracy (%) below which the experiment stops
    search_steps: int | None = None  # None: the search's defaults
    search_batch: int = 32
    seq_len: int = 64
    epsilon: int | None = None
    steps: int = 300
    batch: int = 32
    seeds: int = 5
    n_random: int = 2
    rounds: int = 15


PROFILES = {
    "cpu": Profile(),
    "gpu": Profile(teacher_rows=None, teacher_min=85.0, steps=2000),
    "toy": Profile(task_rows=1200, teacher_rows=64, teacher_epochs=1, teacher_min=None,
                   search_steps=4, search_batch=8, seq_len=32, epsilon=4, steps=4, batch=8,
                   seeds=2, n_random=1, rounds=2),
}


def probe_work() -> Path | None:
    """bench-task's CPU work folder, for a probe that reuses its run (the process set up
    first), or None, said on stderr, where that run is not there."""
    from bortsearch.process import setup_process
    from bortsearch.runio import cache_dir

    setup_process()
    work = cache_dir() / "task-cpu"
    if not (work / "run" / "best.json").is_file():
        print(f"{work}/run: not there; run `python bench/task_bench.py` first", file=sys.stderr)
        return None
    return work


# ---------------------------------------------------------------- 1. rows, teacher


def task_folders(work: Path, p: Profile) -> tuple[Path, Path]:
    """`task/` (SST-2's training rows, cut to `task_rows`, and its dev split) for the
    search and the students, and `teacher-data/` without the rows `TaskData` holds out
    (and cut to `teacher_rows`) for the teacher's fine-tuning."""
    from bortsearch.data.batches import HELDOUT_EVERY
    from bortsearch.data.tasks import HELDOUT_SEED
    from bortsearch.runio import write_atomic

    src = GLUE_DATA / "SST-2"
    task, teach = work / "task" / "SST-2", work / "teacher-data" / "SST-2"
    if (teach / "dev.tsv").is_file():
        return task.parent, teach.parent
    lines = (src / "train.tsv").read_text(encoding="utf-8-sig").splitlines(True)
    head, rows = lines[:1], lines[1:][:p.task_rows]
    held = set(np.random.default_rng(HELDOUT_SEED).permutation(len(rows))
               [:len(rows) // HELDOUT_EVERY].tolist())  # TaskData's draw
    mine = [r for i, r in enumerate(rows) if i not in held][:p.teacher_rows]
    dev = (src / "dev.tsv").read_text(encoding="utf-8-sig")
    for folder, train in ((task, rows), (teach, mine)):
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "train.tsv", "".join(head + train))
        write_atomic(folder / "dev.tsv", dev)
    return task.parent, teach.parent


def teacher(work: Path, data: Path, profile: str, p: Profile, progress: bool) -> Path:
    """The encoder fine-tuned on the teacher's rows: all-MiniLM-L6-v2's, or the toy's."""
    from bortsearch.downstream.finetune import FinetuneConfig, finetune

    out = work / "teacher"
    if profile == "toy":
        from bort_small import toy_teacher

        encoder, _ = toy_teacher(work / "toy")
    else:
        from minilm_teacher import minilm_folder

        encoder = minilm_folder()
    if not (out / "metrics.json").is_file():
        finetune(encoder, "sst2", data, out, FinetuneConfig(
            lrs=(LR,), epochs=p.teacher_epochs, batch_size=p.batch, max_length=p.seq_len),
            progress=progress)
    return out


def dev_rows(model, task_dir: Path, seq_len: int):
    """SST-2 dev for `model`'s tokenizer: (ids, attention mask, token types, labels)."""
    from bortsearch.data.tasks import encode, load_task

    enc = encode(model.tokenizer, load_task("sst2", task_dir).dev, seq_len,
                 model.arch.type_vocab_size)
    mask = (np.arange(seq_len)[None] < enc.lengths[:, None]).astype(np.int64)
    return enc.ids.astype(np.int64), mask, enc.types.astype(np.int64), enc.labels


def dev_accuracy(folder: Path, task_dir: Path, seq_len: int) -> float:
    """A classifier folder's accuracy (%) on SST-2 dev, computed here from its logits."""
    from bortsearch.model.hf import load_checkpoint

    model = load_checkpoint(folder, part="auto")
    ids, mask, types, labels = dev_rows(model, task_dir, seq_len)
    hits = []
    for i in range(0, len(ids), 64):
        logits = model.logits(ids[i:i + 64], mask[i:i + 64], types[i:i + 64])
        hits.append(logits.argmax(-1) == labels[i:i + 64])
    return 100 * float(np.concatenate(hits).mean())


# ---------------------------------------------------------------- 2. search, students


def search(run: Path, space: Path, teacher_dir: Path, task_dir: Path, p: Profile,
           progress: bool) -> dict:
    from bortsearch.search.run import SearchConfig, run_search

    extra = {"steps": p.search_steps} if p.search_steps else {}
    cfg = SearchConfig(space=str(space), teacher=str(teacher_dir), task="sst2",
                       task_data=str(task_dir.resolve()), seq_len=p.seq_len,
                       batch_size=p.search_batch, epsilon=p.epsilon, **extra)
    run_search(run, cfg, progress=progress, log=lambda *a: None)
    return json.loads((run / "best.json").read_text())


def roles_by_rule(run: Path, best: dict, p: Profile):
    """(pick, {size: [role]} of the pick and rivals (a)–(e), the candidates' sizes, T):
    bench-bort's rules (`bort_minilm.students`), the candidates (g) apart."""
    pick, roles, _, T = students(run, best, p)
    cands = [s for s, rs in roles.items() if "(g) candidate" in rs]
    kept = {s: [r for r in rs if r != "(g) candidate"] for s, rs in roles.items()}
    return pick, {s: rs for s, rs in kept.items() if rs}, cands, T


def distil_all(run: Path, work: Path, pick, roles: dict, cands: list, p: Profile,
               progress: bool) -> dict:
    """{(name, seed): (export folder, pretraining summary)}: every student of a seed in
    one group, the candidates (g) with seed 0 alone; (L) and (R) in run copies of their
    own."""
    from bortsearch.search.student import PretrainConfig, pretrain_many

    base = PretrainConfig(steps=p.steps, batch_size=p.batch, seq_len=p.seq_len, lr=LR,
                          eval_every=max(1, p.steps // 4),
                          checkpoint_every=max(1, p.steps // 4), init="teacher")
    variants = {"": base, "-labels": dataclasses.replace(base, ce_weight=1.0, kd_weight=0.0),
                "-random": dataclasses.replace(base, init="random")}
    folders = {}
    for seed in range(p.seeds):
        for suffix, cfg in variants.items():
            where = run if (seed, suffix) == (0, "") else work / f"run{suffix}-seed{seed}"
            if where != run and not (where / "best.json").is_file():
                shutil.copytree(run, where, ignore=shutil.ignore_patterns("pretrain"))
            sizes = (sorted(roles) if not suffix else [pick.size])
            if (seed, suffix) == (0, ""):
                sizes = sorted({*sizes, *cands})
            names = {s: name_of(s) + suffix for s in sizes}
            outs = {s: work / "students" / f"seed{seed}" / names[s] for s in sizes}
            done = pretrain_many(where, outs, dataclasses.replace(cfg, seed=seed),
                                 progress=progress)
            folders.update({(names[s], seed): (outs[s], summary)
                            for s, summary in zip(sizes, done)})
    return folders


def int8(folders: dict[str, list[Path]], task_dir: Path, seq_len: int, rounds: int,
         work: Path) -> dict:
    """The protocol's int8 line, reported beside the test: each model's folders (the
    teacher's one, the pick's one a seed) through `bortsearch onnx --int8`; dev accuracy
    of every int8 classifier, and the int8 encoders' latency (ONNX Runtime, one thread
    pinned to one core, batch 1, length 128, `rounds` interleaved rounds, each the median
    of 20 calls). Kept in `work`, keyed by the models' weights and the settings, so a
    resumed experiment does not measure again and another one does."""
    import hashlib
    import tempfile

    from bortsearch.deploy.latency import onnx_runner, time_calls
    from bortsearch.deploy.onnx_export import INT8_NAME, export_onnx, run_logits, session
    from bortsearch.downstream.glue import LATENCY_LENGTH
    from bortsearch.model.hf import load_checkpoint
    from bortsearch.runio import file_sha256, write_json

    key = hashlib.sha256(json.dumps([seq_len, rounds, {name: [file_sha256(f / "model.safetensors")
                                                              for f in paths]
                                                       for name, paths in sorted(folders.items())}]
                                    ).encode()).hexdigest()[:12]
    cache = work / f"int8-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    out: dict = {"accuracy": {}, "rows": []}
    runs = {}  # each model's int8 encoder graph (no classifier), one session each
    with tempfile.TemporaryDirectory(prefix="task-int8-") as d:
        for name, paths in folders.items():
            accs = []
            for i, folder in enumerate(paths):
                graph = export_onnx(folder, Path(d) / f"{name}-{i}", int8=True) / INT8_NAME
                model = load_checkpoint(folder, part="auto")
                ids, mask, types, labels = dev_rows(model, task_dir, seq_len)
                logits = run_logits(session(graph, 1), ids, mask, types)
                accs.append(100 * float((logits.argmax(-1) == labels).mean()))
                if i == 0:
                    runs[name], _ = onnx_runner(model, 1, min(LATENCY_LENGTH,
                                                              model.arch.max_seq_len),
                                                scope="encoder", int8=True, threads=1)
            out["accuracy"][name] = accs
        cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cores)})  # this thread, which runs ONNX Runtime's one
        try:
            out["rows"] = protocol.interleaved_latency(
                runs, lambda run: time_calls(run, 20, 2)["median_s"], rounds=rounds)
        finally:
            os.sched_setaffinity(0, cores)
    write_json(cache, out)
    return out


# ---------------------------------------------------------------- 3. the answer


def answer_of(scores: dict, lat_rows: list, teacher_acc: float, pick: str, rivals: list,
              cands: list, table) -> dict:
    """Every figure of the protocol's test, from the raw scores and latency rounds."""
    trials = {m: {s: [x] for s, x in by_seed.items()} for m, by_seed in scores.items()}
    score = {m: protocol.score_interval(t) for m, t in trials.items()}
    lat = protocol.latency_summary(lat_rows)
    s = score[pick]
    out = {"pick": pick, "teacher_dev_accuracy": teacher_acc, "score": score, "latency": lat,
           "kept": {k: s[k] / teacher_acc for k in ("mean", "lo", "hi")},
           "speed_up": protocol.no_greater_latency(lat_rows, "teacher", pick)[1]}
    ok = [r for r in rivals if protocol.no_greater_latency(lat_rows, r, pick)[0]]
    out["admissible"] = ok
    if ok:
        best = max(ok, key=lambda r: score[r]["mean"])
        out["best_rival"], out["decision"] = best, protocol.decide(trials[pick], trials[best])
    for control in ("labels", "random"):
        out[f"over_{control}"] = protocol.decide(trials[pick], trials[f"{pick}-{control}"])
    students = [m for m in lat if m != "teacher"]
    out["front"] = protocol.on_front({m: lat[m] for m in students},
                                     {m: score[m] for m in students})
    kl = {name_of(tuple(int(x) for x in r[:4])): float(r[4]) for r in
          table[["layers", "heads", "hidden", "intermediate", "kl"]].itertuples(index=False)}
    named = [c for c in cands if c in scores]
    if len(named) >= 3:
        out["spearman_kl"] = protocol.spearman([-kl[c] for c in named],
                                               [scores[c][0] for c in named])
    # every rival against the pick beside the test: its latency ratio and the margin
    out["versus"] = {r: {"latency_ratio": protocol.no_greater_latency(lat_rows, r, pick)[1],
                         **protocol.decide(trials[pick], trials[r])} for r in rivals}
    out["goals"] = {"kept": out["kept"]["lo"] >= 0.97, "speed": out["speed_up"][0] >= 4,
                    "labels": out["over_labels"]["lo"] > 0}
    out["goal_met"] = bool(all(out["goals"].values()))
    return out


def moonshot(score: dict, T) -> dict:
    """The best mean among the students no larger (p̂) than BERT-Mini, against its
    published SST-2 score (GLUE test; ours is dev)."""
    from bortsearch.model.proxies import effective_param_count

    limit = effective_param_count(T.with_size(*protocol.BERT_MINI))
    small = {m: v for m, v in score.items() if m != "teacher" and not m.endswith(
        ("-labels", "-random")) and effective_param_count(
        T.with_size(*(int(x) for x in m.split("-")[:4]))) <= limit}
    if not small:
        return {}
    best = max(small, key=lambda m: small[m]["mean"])
    return {"best": best, "mean": small[best]["mean"], "trials": small[best]["trials"],
            "target": BERT_MINI_SST2, "met": small[best]["mean"] >= BERT_MINI_SST2}


BERT_MINI_SST2 = 85.9  # BERT-Mini's published SST-2 score (GLUE test)


def dev_majority(task_dir: Path) -> float:
    """The accuracy (%) of always answering SST-2 dev's commonest class."""
    from bortsearch.data.tasks import load_task

    labels = np.asarray(load_task("sst2", task_dir).dev.y).astype(int)
    return 100 * float(np.bincount(labels).max() / len(labels))


def int8_summary(q: dict, pick: str) -> dict:
    """Each int8 model's dev accuracy (mean over its seeds, bootstrap interval), latency
    (median over rounds, interval) and the teacher / pick latency ratio's interval."""
    return {"accuracy": {m: protocol.score_interval({s: [x] for s, x in enumerate(a)})
                         for m, a in q["accuracy"].items()},
            "latency": protocol.latency_summary(q["rows"]),
            "speed_up": protocol.no_greater_latency(q["rows"], "teacher", pick)[1]}


def _name(m: str) -> str:
    return "⟨" + m.replace("-", ",") + "⟩" if m[0].isdigit() else m


def _minutes(seconds: float) -> str:
    return "<1 min" if seconds < 60 else f"{seconds / 60:.0f} min"


def report_lines(a: dict, search_speedup: dict | None = None) -> list[str]:
    """The answer as the report's and the README's lines, every figure from `a`
    (answer.json) and the search's own speed-up check (best.json's `speedup`)."""
    pk = a["pick"]
    s, k, sp = a["score"][pk], a["kept"], a["speed_up"]
    tc = a.get("teacher_checkpoint")
    chosen = "" if not tc else (
        "; its last step, so nothing was chosen on dev" if tc["chosen_step"] == tc["steps"] else
        f"; finetune kept its best dev evaluation, step {tc['chosen_step']} of {tc['steps']}: "
        f"chosen on dev, against the protocol")
    lines = [f"- Teacher: SST-2 dev accuracy {a['teacher_dev_accuracy']:.1f}% (one fine-tuning "
             f"seed, its noise not measured{chosen}).",
             f"- Pick {_name(pk)}: {s['mean']:.1f}% ({s['lo']:.1f} to "
             f"{s['hi']:.1f}), {100 * k['mean']:.1f}% of the teacher's ({100 * k['lo']:.1f} to "
             f"{100 * k['hi']:.1f}), {sp[0]:.1f}× to {sp[1]:.1f}× faster than it (float32 XLA "
             f"encoder, length 128)" + (
                 f"; the search's own check at its length {search_speedup['seq_len']}: "
                 f"{search_speedup['measured']:.1f}× measured, {search_speedup['predicted']:.1f}× "
                 f"predicted (best.json)" if search_speedup else "") + "."]
    if "decision" in a:
        d = a["decision"]
        lines.append(f"- Over the best rival of no greater latency ({_name(a['best_rival'])}): "
                     f"{d['margin']:+.1f} points ({d['lo']:+.1f} to {d['hi']:+.1f}): "
                     f"{d['verdict']}.")
    else:
        roles = " ".join(r for rs in a["roles"].values() for r in rs)
        beside = "; ".join(
            f"{_name(r)} {v['latency_ratio'][0]:.2f}× to {v['latency_ratio'][1]:.2f}× its "
            f"latency, {v['margin']:+.1f} ({v['lo']:+.1f} to {v['hi']:+.1f})"
            for r, v in sorted(a.get("versus", {}).items(),
                               key=lambda kv: kv[1]["latency_ratio"][0]))
        lines.append("- No rival has no greater latency than the pick, so the test against "
                     "the rivals could not be made" + (
                         "; rule (e) found no architecture within ±20% of its p̂"
                         if "(e)" not in roles else "")
                     + (f". Beside the test, pick − rival: {beside}." if beside else "."))
    d = a["over_labels"]
    lines.append(f"- Over itself trained on the labels alone (L): {d['margin']:+.1f} points "
                 f"({d['lo']:+.1f} to {d['hi']:+.1f}): {d['verdict']}"
                 + (": distillation bought nothing measurable in this budget"
                    if d["lo"] <= 0 else "") + ".")
    d, r = a["over_random"], a["score"][f"{pk}-random"]
    near_chance = "dev_majority" in a and r["mean"] < a["dev_majority"] + 2
    lines.append(f"- Over itself from random weights (R): {d['margin']:+.1f} points "
                 f"({d['lo']:+.1f} to {d['hi']:+.1f}): {d['verdict']}" + (
                     f"; (R) scored {r['mean']:.1f}%, near the {a['dev_majority']:.1f}% of "
                     f"always answering the commonest class: a random start learns next to "
                     f"nothing in this budget, so this margin says little about the teacher's "
                     f"weights" if near_chance else "") + ".")
    g = a.get("goals")
    conditions = "" if not g else " (" + ", ".join(
        f"{what}: {'yes' if g[key] else 'no'}" for key, what in
        (("kept", "≥ 97% kept"), ("speed", "≥ 4× faster"), ("labels", "above labels alone"))) + ")"
    lines.append(f"- Goal, by the intervals' ends: {'met' if a['goal_met'] else 'not met'}"
                 f"{conditions}.")
    if a.get("moonshot"):
        m = a["moonshot"]
        lines.append(f"- Moonshot (a student no larger than BERT-Mini at ≥ {m['target']:g}, "
                     f"BERT-Mini's published SST-2 test score; ours is dev): "
                     f"{'met' if m['met'] else 'not met'}; the best is {_name(m['best'])} at "
                     f"{m['mean']:.1f}%" + (" (seed 0 only)" if m["trials"] == 1 else "") + ".")
    t = a.get("timing") or {}
    if t:  # wall time of every invocation that finished a phase (a killed one's is lost)
        lines.append("- Cost (wall, this machine; a phase's invocation killed before it "
                     "finished is not counted): " + ", ".join(
                         f"{name} {_minutes(t[key])}" for name, key in (
                             ("teacher", "teacher_s"), ("search", "search_s"),
                             ("distillation", "distil_s"), ("latency", "latency_s"),
                             ("int8", "int8_s")) if key in t) + ".")
    if a.get("commits"):
        short = lambda c: c[:7] + ("+changes" if c.endswith("+changes") else "")  # noqa: E731
        lines.append("- Commits that did each phase's work: " + "; ".join(
            f"{phase} {', '.join(map(short, cs))}" for phase, cs in a["commits"].items()
            if phase != "rows") + ".")
    if "skipped" in a.get("int8", {}):
        lines.append(f"- int8: not measured ({a['int8']['skipped']}).")
    if "accuracy" in a.get("int8", {}):  # beside the test, not in it
        q, pk = a["int8"], a["pick"]
        acc, ms, sp = q["accuracy"], q["latency"], q["speed_up"]
        lines.append(f"- int8 (ONNX Runtime, one thread; beside the test): the pick "
                     f"{acc[pk]['mean']:.1f}% ({acc[pk]['lo']:.1f} to {acc[pk]['hi']:.1f}) at "
                     f"{1e3 * ms[pk]['median']:.2f} ms, the teacher "
                     f"{acc['teacher']['mean']:.1f}% at {1e3 * ms['teacher']['median']:.2f} ms: "
                     f"{sp[0]:.1f}× to {sp[1]:.1f}× faster.")
    return lines


def experiment(out: Path, profile: str, progress: bool, results: Path | None = None) -> dict:
    import pandas as pd

    from bortsearch.errors import UserError
    from bortsearch.runio import write_json

    p = PROFILES[profile]
    results = results or ROOT / "bench" / "results" / f"task-{profile}"
    results.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cost = Cost(out)
    task_dir, teacher_data = cost("rows", task_folders, out, p)
    t_dir = cost("teacher", teacher, out, teacher_data, profile, p, progress)
    t_acc = dev_accuracy(t_dir, task_dir, p.seq_len)
    metrics = json.loads((t_dir / "metrics.json").read_text())
    checkpoint = {"chosen_step": metrics["chosen"]["step"], "steps": metrics["grid"][0]["steps"]}
    write_json(results / "teacher.json", {"dev_accuracy": t_acc, "rows": p.teacher_rows,
                                          "epochs": p.teacher_epochs, "lr": LR, **checkpoint})
    if p.teacher_min is not None and t_acc < p.teacher_min:
        answer = {"verdict": f"stopped: the teacher's dev accuracy {t_acc:.1f}% is below "
                             f"{p.teacher_min:g}%"}
        write_json(results / "answer.json", answer)
        return answer
    space = (out / "toy" / "space.toml") if profile == "toy" else SPACE
    run = out / "run"
    best = cost("search", search, run, space, t_dir, task_dir, p, progress)
    for f in ("results.csv", "best.json", "search.json"):
        shutil.copy(run / f, results / f)
    if not best.get("size"):
        answer = {"verdict": "the search chose no architecture", "reason": best.get("reason")}
        write_json(results / "answer.json", answer)
        return answer
    pick, roles, cands, T = roles_by_rule(run, best, p)
    folders = cost("distil", distil_all, run, out, pick, roles, cands, p, progress)
    rows = []
    for (name, seed), (folder, summary) in sorted(folders.items()):
        rows.append({"model": name, "seed": seed,
                     "dev": dev_accuracy(folder, task_dir, p.seq_len),
                     "heldout_accuracy": summary["heldout_accuracy"],
                     "heldout_kd_ce": summary["heldout_kd_ce"]})
    scores_df = pd.DataFrame(rows)
    scores = {m: dict(zip(g["seed"], g["dev"])) for m, g in scores_df.groupby("model")}
    pk = name_of(pick.size)
    rivals = [name_of(s) for s, rs in roles.items() if s != pick.size]
    archs = {"teacher": T, **{name_of(s): T.with_size(*s) for s in roles}}
    lat_rows = cost("latency", latency, archs, out, p.rounds)
    table = pd.read_csv(run / "results.csv")
    answer = answer_of(scores, lat_rows, t_acc, pk, rivals,
                       [name_of(c) for c in cands], table)
    from bortsearch.model.proxies import effective_param_count

    answer.update(profile=profile, timing=cost.totals(run), commit=cost.commit,
                  commits=cost.commits(), roles={name_of(s): rs for s, rs in roles.items()},
                  moonshot=moonshot(answer["score"], T), dev_majority=dev_majority(task_dir),
                  teacher_checkpoint=checkpoint)
    pd.DataFrame([{"model": name_of(s), "roles": "; ".join(rs), "layers": s[0], "heads": s[1],
                   "hidden": s[2], "intermediate": s[3],
                   "p_hat": effective_param_count(T.with_size(*s)),
                   "seeds": len(scores[name_of(s)])} for s, rs in sorted(roles.items())]
                 ).to_csv(results / "students.csv", index=False)
    scores_df.to_csv(results / "scores.csv", index=False)
    pd.DataFrame(lat_rows).to_csv(results / "latency.csv", index=False)
    write_json(results / "answer.json", answer)  # the test's answer, before the int8 line
    try:
        from bortsearch.deploy.onnx_export import require_onnx

        require_onnx()
    except UserError as e:  # beside the test: its absence does not lose the answer
        answer["int8"] = {"skipped": str(e)}
    else:
        quantised = cost("int8", int8, {"teacher": [t_dir], pk: [
            folders[(pk, seed)][0] for seed in range(p.seeds)]}, task_dir, p.seq_len,
            p.rounds, out)
        answer["int8"] = int8_summary(quantised, pk)
        pd.DataFrame(quantised["rows"]).to_csv(results / "latency-int8.csv", index=False)
        answer["timing"], answer["commits"] = cost.totals(run), cost.commits()
    write_json(results / "answer.json", answer)
    write_report(answer, T, results, profile)
    return answer


def diagnosis(a: dict, best: dict) -> list[str]:
    """Where the pick does not win: which of the protocol's suspects the figures point to
    (the error proxy, the distillation, the inheritance), and the search's own word."""
    if a.get("goal_met"):
        return []
    suspects = []
    if not best.get("diagnostics", {}).get("decided_by_training", True):
        suspects.append("the search's own warning: size and speed, not training, decided "
                        "the pick")
    if "spearman_kl" in a and (a["spearman_kl"][0] <= 0 or a["spearman_kl"][1] > 0.05):
        suspects.append("the error proxy: the held-out KL after s steps did not rank the "
                        "candidates by their distilled dev accuracy")
    if a["over_labels"]["lo"] <= 0:
        suspects.append("the distillation: no better than the labels alone")
    if a["over_random"]["lo"] <= 0:
        suspects.append("the inheritance: no better than a random start")
    return ["- Where the pick does not win, the figures point to " + "; ".join(suspects) + "."]\
        if suspects else []


def write_report(answer: dict, T, results: Path, profile: str) -> None:
    """report.md (a row a model: roles, p̂, latency and dev accuracy with their
    intervals, on the front; then the answer), front.png (accuracy against latency,
    front marked, pick highlighted) and, but for the toy, the README's block."""
    from bortsearch.model.proxies import effective_param_count
    from bortsearch.runio import write_atomic

    lat, score, front = answer["latency"], answer["score"], answer.get("front", {})
    roles = {"teacher": "teacher", **{m: "; ".join(r) for m, r in answer["roles"].items()}}
    pick = answer["pick"]
    roles.update({f"{pick}-labels": "(L) labels alone", f"{pick}-random": "(R) random start"})
    lines = [f"# Compress the model you have: task-{profile}", "",
             "SST-2 dev accuracy (%, mean over seeds, 95% percentile-bootstrap interval of the "
             "seeds: with 5 seeds, narrower than a t-interval) and latency (ms at batch 1, "
             "length 128, one thread, the float32 XLA encoder; median over interleaved rounds, "
             "95% interval); p̂ the non-embedding parameters.", "",
             "| model | roles | p̂ | latency ms | dev accuracy | front |",
             "|---|---|---|---|---|---|"]
    rows = sorted(set(lat) | set(score), key=lambda m: (m not in lat, lat.get(m, {}).get(
        "median", 0), m))
    for m in rows:
        size = T.size if m == "teacher" else tuple(int(x) for x in m.split("-")[:4])
        sc, la = score.get(m), lat.get(m)
        acc = (f"{answer['teacher_dev_accuracy']:.1f} (one seed)" if m == "teacher" else
               "—" if not sc else f"{sc['mean']:.1f} (seed 0 only)" if sc["trials"] == 1 else
               f"{sc['mean']:.1f} ({sc['lo']:.1f} to {sc['hi']:.1f})")
        ms = (f"{1e3 * la['median']:.2f} ({1e3 * la['lo']:.2f} to {1e3 * la['hi']:.2f})"
              if la else "as the pick's" if m.startswith(pick + "-") else "not measured")
        lines.append(f"| {m} | {roles.get(m, '(g) candidate, seed 0')} | "
                     f"{effective_param_count(T.with_size(*size)):,} | {ms} | {acc} | "
                     f"{'yes' if front.get(m) else ''} |")
    best = json.loads((results / "best.json").read_text())
    search_cfg = json.loads((results / "search.json").read_text())
    speedup = best.get("speedup")
    lines += ["", *report_lines(answer, speedup and {**speedup,
                                                     "seq_len": search_cfg["seq_len"]})]
    if "spearman_kl" in answer:
        rho, pval = answer["spearman_kl"]
        lines.append(f"- The search's KL ranking of its trained candidates against their "
                     f"distilled dev accuracy (seed 0): Spearman {rho:+.2f} (p = {pval:.3f}).")
    lines += diagnosis(answer, best)
    write_atomic(results / "report.md", "\n".join(lines) + "\n")
    teacher = (("teacher", 1e3 * lat["teacher"]["median"], answer["teacher_dev_accuracy"])
               if "teacher" in lat else None)
    protocol.front_plot(results / "front.png", rows, lat, score, front, pick,
                        "SST-2 dev accuracy, %", teacher)
    if profile != "toy":
        update_readme(ROOT / "README.md", profile, "\n".join(
            line for line in lines if line.startswith("- ")))


BEGIN, END = "<!-- task results: begin -->", "<!-- task results: end -->"


def update_readme(readme: Path, profile: str, report_md: str) -> None:
    """The README's result, made from the report by this script (between its markers;
    one block per profile, the latest run's)."""
    head = (f"**{profile.upper()} profile** (made by `bench/task_bench.py --profile {profile}`; "
            f"every model's row with its intervals and the plot: "
            f"[report.md](bench/results/task-{profile}/report.md), "
            f"[front.png](bench/results/task-{profile}/front.png)):")
    protocol.readme_block(readme, BEGIN, END, profile, "\n\n".join([head, report_md.strip()]))


def report_only(results: Path, profile: str) -> dict:
    """report.md, front.png and the README's block made again from the committed raw
    results (answer.json, best.json), running nothing."""
    from bortsearch.model.arch import Arch

    answer = json.loads((results / "answer.json").read_text())
    best = json.loads((results / "best.json").read_text())
    write_report(answer, Arch.from_dict(best["maximum_point"]["arch"]), results, profile)
    return answer


def main(argv=None) -> int:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--out", type=Path, help="work folder (default: the cache's task-PROFILE)")
    ap.add_argument("--results", type=Path, help="raw results and the answer (default "
                    "bench/results/task-PROFILE)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="make report.md, front.png and the README's block again from the "
                         "committed raw results, running nothing")
    args = ap.parse_args(argv)
    from bortsearch.runio import cache_dir

    if args.report_only:
        answer = report_only(args.results or ROOT / "bench" / "results" /
                             f"task-{args.profile}", args.profile)
        print((ROOT / "bench" / "results" / f"task-{args.profile}" / "report.md").read_text()
              if not args.results else "")
        return 0
    out = args.out or cache_dir() / f"task-{args.profile}"
    answer = experiment(out, args.profile, not args.quiet, args.results)
    print(json.dumps({k: answer.get(k) for k in ("pick", "kept", "speed_up", "decision",
                                                 "over_labels", "goal_met", "verdict")},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
