"""Bort in small with the MiniLM teacher, run as `bench/bort_small_protocol.md` states.

The search over search_spaces/bort_minilm.toml with the teacher of
`make teacher-minilm`; the rivals computed by rule from the pick
(bench/protocol.py); every student pretrained under one budget (one group, the
teacher paid once a batch; the random-weights control and the second pretraining
seed in groups of their own, in copies of the run); fine-tuning with its
hyper-parameters chosen on held-out training rows alone, dev read at that choice;
latency in interleaved rounds, one thread; the deciding test with two-level
bootstrap intervals. Every phase resumes (re-run the same command). Raw results
and the report go to bench/results/bort_small-PROFILE/.

    python bench/bort_minilm.py [--profile cpu|gpu|toy] [--out WORK]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402
from glue_eval import GLUE_DATA, SHARED  # noqa: E402

GUTENBERG = SHARED / "data" / "gutenberg" / "train.txt"
SPACE = ROOT / "search_spaces" / "bort_minilm.toml"
FOLDERS = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "rte": "RTE"}
SHORT = {"sst2": 64}  # single short sentences
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"


@dataclasses.dataclass(frozen=True)
class Profile:
    search_steps: int | None = None  # None: the search's defaults
    search_batch: int = 32
    search_seq_len: int = 64
    epsilon: int | None = None
    pretrain_steps: int = 600
    pretrain_batch: int = 32
    pretrain_seq_len: int = 128
    pretrain_lr: float = 5e-4
    second_seed_for_all: bool = False  # else: the pick and the rivals (a)-(e)
    tasks: tuple = ("sst2", "mrpc", "cola", "rte")
    sst2_rows: int | None = 8000
    heldout_rows: int = 2000  # the held-out part: 10% of a training split, at most this
    lrs: tuple = (1e-4, 3e-4)
    epochs: int = 3
    seeds: int = 5
    length: int = 128
    min_gap: float | None = 10.0  # points over the best constant answer (None: keep all)
    train_rows: int | None = None  # fine-tuning rows a task (None: as the task folders hold)
    rounds: int = 15
    n_random: int = 2


PROFILES = {
    # what 2 CPU cores finish in one working session (bench/bort_small_protocol.md, Changes)
    "cpu": Profile(pretrain_steps=50, pretrain_batch=16, tasks=("sst2",), sst2_rows=500,
                   heldout_rows=250, lrs=(1e-4,)),
    "gpu": Profile(pretrain_steps=4000, second_seed_for_all=True, sst2_rows=None),
    "toy": Profile(search_steps=4, search_batch=8, search_seq_len=32, epsilon=4,
                   pretrain_steps=4, pretrain_batch=8, pretrain_seq_len=32, tasks=("rte",),
                   sst2_rows=None, lrs=(1e-4,), epochs=1, seeds=2, length=32, min_gap=None,
                   train_rows=32, rounds=2, n_random=1),
}


def name_of(size) -> str:
    return "-".join(map(str, size))


# ---------------------------------------------------------------- 1. teacher, search


def teacher_and_space(out: Path, profile: str, quiet: bool) -> tuple[Path, Path, list | None]:
    if profile == "toy":
        from bort_small import toy_teacher

        teacher, space = toy_teacher(out / "toy")  # and its 4-architecture space
        return teacher, space, None
    from minilm_teacher import adapt, default_out

    teacher = default_out("cpu")
    adapt(teacher, "cpu", str(GUTENBERG), quiet)
    return teacher, SPACE, [str(GUTENBERG)]


def teacher_entropy(teacher: Path, search: dict) -> float:
    """The teacher's mean entropy on the held-out batches of a search with these settings
    (what the search records as `teacher_entropy`)."""
    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.model.hf import load_checkpoint
    from bortsearch.search.candidates import HeldOut

    model = load_checkpoint(teacher)
    corpus = resolve_corpus(search["corpus"], search.get("text_field", "text"))
    data = load_data(corpus, model.tokenizer,
                     BatchSpec(search["batch_size"], search["seq_len"], seed=search["seed"]),
                     progress=False)
    return float(HeldOut.of(model, data).baselines["teacher_entropy"])


def reuse_search(run: Path, source: Path, teacher: Path) -> dict:
    """The run folder rebuilt from a finished search's committed answer (its
    results.csv, best.json and search.json) and the teacher, instead of running the
    search again (it is deterministic: the same teacher, space and corpus give the
    same table). What is reused, and the teacher it is paired with, go to
    run/reused.json and the answer."""
    import hashlib

    from bortsearch.runio import atomic_dir, write_json

    files = ("results.csv", "best.json", "search.json")
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        sys.exit(f"--search-from {source}: no {', '.join(missing)}; give the folder a finished "
                 f"search's results were copied to (bench/results/bort_small-PROFILE)")
    # the teacher must be the one the search ran with: its entropy on the search's
    # held-out batches (recorded with the answer) is a fingerprint of its outputs
    s = json.loads((source / "search.json").read_text())
    recorded = json.loads((source / "best.json").read_text())["diagnostics"]["teacher_entropy"]
    entropy = teacher_entropy(teacher, s)
    if abs(entropy - recorded) > 1e-4 * abs(recorded):
        sys.exit(f"--search-from {source}: its teacher's entropy on the held-out batches was "
                 f"{recorded:.6f}, this teacher's is {entropy:.6f}; the search ran with "
                 f"another teacher: run the search (leave out --search-from)")
    if not (run / "teacher" / "config.json").is_file():
        with atomic_dir(run / "teacher") as tmp:
            shutil.copytree(teacher, tmp, dirs_exist_ok=True)
    for f in files:
        shutil.copy(source / f, run / f)
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    weights = hashlib.sha256((teacher / "model.safetensors").read_bytes()).hexdigest()
    record = json.loads((teacher / "bortsearch.json").read_text())
    write_json(run / "reused.json", {
        "from": str(source),
        "commit": git("log", "-1", "--format=%H", "--", str(source / "best.json")),
        "teacher_sha256": weights, "teacher_entropy": {"recorded": recorded, "now": entropy},
        "teacher_record": {k: v for k, v in record.items() if "loss" in k or "acc" in k
                           or "perplexity" in k or k in ("steps", "head_steps")}})
    return json.loads((run / "best.json").read_text())


def search(run: Path, space: Path, teacher: Path, corpus, p: Profile, progress: bool):
    from bortsearch.search.run import SearchConfig, run_search

    if (run / "reused.json").is_file():  # rebuilt from a finished search (--search-from)
        return json.loads((run / "best.json").read_text())

    extra = {"steps": p.search_steps} if p.search_steps else {}
    cfg = SearchConfig(space=str(space), teacher=str(teacher), corpus=corpus,
                       seq_len=p.search_seq_len, batch_size=p.search_batch,
                       epsilon=p.epsilon, **extra)
    run_search(run, cfg, progress=progress, log=lambda *a: None)
    return json.loads((run / "best.json").read_text())


# ---------------------------------------------------------------- 2. students


def students(run: Path, best: dict, p: Profile):
    """(pick, roles {size: [role]}, the rivals' sizes (a)–(e), the teacher's Arch)."""
    import pandas as pd

    from bortsearch.model.arch import Arch, row_size
    from bortsearch.model.proxies import effective_param_count, forward_flops

    T = Arch.from_dict(best["maximum_point"]["arch"])
    table = pd.read_csv(run / "results.csv")
    space = [T.with_size(*row_size(r)) for r in table.itertuples()]
    pick = T.with_size(*best["size"])
    flops = lambda a: forward_flops(a, 1, 128, "encoder")  # noqa: E731
    rivals = protocol.rivals_by_rule(space, T, pick, effective_param_count, flops,
                                     n_random=p.n_random)
    near = sorted({a.size for r, a in rivals.items() if not r.startswith("(f)")})
    roles = {pick.size: ["pick"]}
    for role, arch in rivals.items():
        if not role.startswith("(f)"):
            roles.setdefault(arch.size, []).append(role)
    for r in table[table["status"] == "done"].itertuples():
        roles.setdefault(row_size(r), []).append("(g) candidate")
    return pick, roles, near, T


def pretrain_config(p: Profile):
    """The profile's pretraining: its budget, from the teacher's weights, seed 0."""
    from bortsearch.search.student import PretrainConfig

    return PretrainConfig(steps=p.pretrain_steps, batch_size=p.pretrain_batch,
                          seq_len=p.pretrain_seq_len, lr=p.pretrain_lr,
                          eval_every=max(1, p.pretrain_steps // 4),
                          checkpoint_every=max(1, p.pretrain_steps // 4), init="teacher")


def pretrain_all(run: Path, out: Path, roles: dict, pick, rivals: list, p: Profile,
                 progress: bool) -> dict:
    """{(size, variant): export folder}; variant "seed0", "seed1" or "random"."""
    from bortsearch.search.student import pretrain_many

    cfg = pretrain_config(p)
    second = sorted(roles) if p.second_seed_for_all else sorted({pick.size, *rivals})
    groups = {"seed0": (run, sorted(roles), cfg),
              "seed1": (out / "run-seed1", second, dataclasses.replace(cfg, seed=1)),
              "random": (out / "run-control", [pick.size], dataclasses.replace(cfg, init="random"))}
    folders = {}
    for variant, (where, sizes, c) in groups.items():
        if where != run and not (where / "best.json").is_file():
            shutil.copytree(run, where, ignore=shutil.ignore_patterns("pretrain"))
        outs = {s: out / "students" / variant / name_of(s) for s in sizes}
        pretrain_many(where, outs, c, progress=progress)
        folders.update({(s, variant): f for s, f in outs.items()})
    return folders


# ---------------------------------------------------------------- 3. fine-tuning


def task_folders(work: Path, tasks, p: Profile) -> tuple[Path, Path]:
    """Two GLUE folders with the same training rows: `held`, whose dev.tsv is the
    held-out part of each training split (selection), and `final`, whose dev.tsv is
    the task's dev split (read only at the held-out choice)."""
    from bortsearch.runio import write_atomic

    held, final = work / "glue-heldout", work / "glue-final"
    cuts = {"sst2_rows": p.sst2_rows, "heldout_rows": p.heldout_rows}
    record = work / "glue-cuts.json"
    if record.is_file() and json.loads(record.read_text()) != cuts:
        sys.exit(f"{work}: its GLUE rows were cut for other settings "
                 f"({record.read_text().strip()}, now {json.dumps(cuts)}); remove {held}, "
                 f"{final}, {work / 'ft'} and {record} to cut them again")
    record.write_text(json.dumps(cuts))
    for task in tasks:
        src = GLUE_DATA / FOLDERS[task]
        if (final / FOLDERS[task] / "dev.tsv").is_file():
            continue
        if task == "cola":  # its val.tsv is the held-out part
            head, train = [], (src / "train.tsv").read_text(encoding="utf-8").splitlines(True)
            heldout = (src / "val.tsv").read_text(encoding="utf-8").splitlines(True)
        else:
            lines = (src / "train.tsv").read_text(encoding="utf-8-sig").splitlines(True)
            head, rows = lines[:1], lines[1:]
            order = np.random.default_rng(0).permutation(len(rows))
            k = min(p.heldout_rows, len(rows) // 10)
            keep = sorted(order[k:])
            train, heldout = [rows[i] for i in keep], [rows[i] for i in sorted(order[:k])]
        if task == "sst2" and p.sst2_rows:
            train = train[:p.sst2_rows]
        dev = (src / "dev.tsv").read_text(encoding="utf-8-sig").splitlines(True)
        for folder, rows in ((held, heldout), (final, dev[len(head):])):
            d = folder / FOLDERS[task]
            d.mkdir(parents=True, exist_ok=True)
            write_atomic(d / "train.tsv", "".join(head + train))
            write_atomic(d / "dev.tsv", "".join(head + rows))
    return held, final


def finetune_model(folder: Path, task: str, held: Path, final: Path, work: Path,
                   p: Profile, progress: bool) -> dict:
    """Every (lr, seed) trained once for `p.epochs` epochs, its weights after each
    epoch scored on the held-out rows and on dev; (lr, epochs) chosen by the mean over
    seeds on the held-out rows alone, and the dev scores read at that choice only."""
    from bortsearch.data.tasks import load_task
    from bortsearch.downstream import metrics as M
    from bortsearch.downstream.finetune import FinetuneConfig, prepare, run_trials

    length = SHORT.get(task, p.length) if p.length >= 64 else p.length
    cfg = FinetuneConfig(lrs=p.lrs, epochs=p.epochs, seeds=p.seeds, max_length=length,
                         max_train_samples=p.train_rows, max_eval_samples=p.train_rows)
    job = prepare(folder, task, held, work, cfg)
    dev = load_task(task, final, max_train=p.train_rows, max_eval=p.train_rows)
    job.task = dataclasses.replace(job.task, devs={"heldout": job.task.devs["dev"],
                                                   "dev": dev.devs["dev"]})
    job.train = job.devs = None  # encoded again with both evaluation splits
    run_trials([job], progress=progress)
    names = job.task.spec.metrics
    scores = {(lr, s): [{k: 100 * M.score(e[k], names) for k in ("heldout", "dev")}
                        for e in map(json.loads, (work / "trials" / f"lr{lr:g}-seed{s}" /
                                                  "evals.jsonl").read_text().splitlines())]
              for lr in p.lrs for s in range(p.seeds)}
    return {**choose(scores, p.lrs, p.epochs, p.seeds),
            "heldout_majority": best_constant(task, held, p.train_rows),
            "dev_majority": best_constant(task, final, p.train_rows)}


def choose(scores: dict, lrs, epochs: int, seeds: int) -> dict:
    """The protocol's choice from `scores[lr, seed][epoch - 1] = {"heldout", "dev"}`:
    (lr, epochs) by the mean over seeds on the held-out rows alone (ties: fewer
    epochs, then the lower lr), and each seed's dev score at that choice. Nothing
    else of dev is read."""
    per_seed = {(lr, e + 1): [scores[lr, s][e]["heldout"] for s in range(seeds)]
                for lr in lrs for e in range(epochs)}
    grid = {k: float(np.mean(v)) for k, v in per_seed.items()}
    lr, n = max(grid, key=lambda k: (grid[k], -k[1], -k[0]))
    return {"heldout": grid, "heldout_per_seed": per_seed, "lr": lr, "epochs": n,
            "dev": [scores[lr, s][n - 1]["dev"] for s in range(seeds)]}


def best_constant(task: str, folder: Path, rows: int | None) -> float:
    """The best score × 100 of a constant answer on `folder`'s dev split (every class
    tried, not only the training split's majority: RTE is nearly balanced)."""
    from bortsearch.data.tasks import load_task
    from bortsearch.downstream import metrics as M

    t = load_task(task, folder, max_train=rows, max_eval=rows)
    y = next(iter(t.devs.values())).y
    return 100 * max(M.score(M.compute(t.spec.metrics, np.full(len(y), c), y), t.spec.metrics)
                     for c in range(len(t.spec.label_names or (0, 1))))


# ---------------------------------------------------------------- 4. latency


def latency(archs: dict, work: Path, rounds: int) -> list[dict]:
    """Interleaved rounds in a subprocess with XLA on one thread (cached)."""
    import hashlib

    key = hashlib.sha256(json.dumps(sorted(archs)).encode()).hexdigest()[:12]
    path = work / f"latency-{rounds}-{key}.json"  # another set of models measures again
    if not path.is_file():
        spec = work / "latency-archs.json"
        spec.write_text(json.dumps({k: a.to_dict() for k, a in archs.items()}))
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD}"}
        subprocess.run([sys.executable, __file__, "--measure", str(spec), str(path),
                        str(rounds)], check=True, env=env)
    return json.loads(path.read_text())


def _measure(spec: str, out: str, rounds: int) -> None:
    from bortsearch.downstream.glue import cpu_latency
    from bortsearch.model.arch import Arch
    from bortsearch.runio import write_json

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as torch_bench
    archs = {k: Arch.from_dict(v) for k, v in json.loads(Path(spec).read_text()).items()}
    rows = protocol.interleaved_latency(archs, lambda a: cpu_latency(a)["median_s"],
                                        rounds=rounds)
    write_json(Path(out), [{**r, "cores": sorted(os.sched_getaffinity(0))} for r in rows])


# ---------------------------------------------------------------- 5. the answer


def commit() -> str:
    """The commit this script runs from, with "+changes" when the tree differs from it."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


class Cost:
    """Each phase's wall and CPU time, appended to WORK/cost.jsonl by every invocation
    that does work in it (a resumed experiment adds up), with the commit it ran."""

    def __init__(self, out: Path):
        self.path, self.commit = out / "cost.jsonl", commit()

    def __call__(self, phase: str, fn, *args):
        t0, c0 = time.time(), time.process_time()
        value = fn(*args)
        with open(self.path, "a") as f:
            f.write(json.dumps({"phase": phase, "wall_s": time.time() - t0,
                                "cpu_s": time.process_time() - c0, "commit": self.commit,
                                "at": time.time()}) + "\n")
        return value

    def rows(self) -> list[dict]:
        return [json.loads(x) for x in self.path.read_text().splitlines()] \
            if self.path.is_file() else []

    def commits(self) -> dict:
        """{phase: the commits its invocations that did work ran from} (an invocation
        that finished in under 10 s only found the phase done)."""
        found: dict = {}
        for r in self.rows():
            if r["wall_s"] >= 10 and r["commit"] not in found.setdefault(r["phase"], []):
                found[r["phase"]].append(r["commit"])
        return found

    def totals(self, run: Path) -> dict:
        """Wall seconds a phase, over every invocation; the search's from its journal
        (the first event to the last finished candidate), wherever it was run."""
        out = {}
        for r in self.rows():
            out[f"{r['phase']}_s"] = out.get(f"{r['phase']}_s", 0.0) + r["wall_s"]
        journal = run / "journal.jsonl"
        events = [json.loads(x) for x in journal.read_text().splitlines()] \
            if journal.is_file() else []  # none: the search was reused (--search-from)
        times = [e["time"] for e in events if "time" in e]
        done = [e["time"] for e in events if e.get("event") in ("done", "failed") and "time" in e]
        if times and done:
            out["search_s"] = max(done) - min(times)
        return out


def experiment(out: Path, profile: str, progress: bool, results: Path | None = None,
               search_from: Path | None = None) -> dict:
    import pandas as pd

    from bortsearch.model.proxies import effective_param_count, forward_flops
    from bortsearch.runio import write_json

    p = PROFILES[profile]
    out.mkdir(parents=True, exist_ok=True)
    results = results or ROOT / "bench" / "results" / f"bort_small-{profile}"
    results.mkdir(parents=True, exist_ok=True)
    cost = Cost(out)
    teacher, space, corpus = cost("teacher", teacher_and_space, out, profile, not progress)
    run = out / "run"
    if search_from is not None and not (run / "best.json").is_file():
        cost("search-reused", reuse_search, run, search_from, teacher)
    best = cost("search", search, run, space, teacher, corpus, p, progress)
    for f in ("results.csv", "best.json", "search.json"):
        shutil.copy(run / f, results / f)
    if not best.get("size"):  # the protocol's answer: the search could not tell
        answer = {"verdict": "the search chose no architecture", "reason": best.get("reason")}
        write_json(results / "answer.json", answer)
        return answer
    pick, roles, rivals_sizes, T = students(run, best, p)
    folders = cost("pretrain", pretrain_all, run, out, roles, pick, rivals_sizes, p, progress)
    held, final = task_folders(out, p.tasks, p)
    pk = name_of(pick.size)
    control = f"{pk}-random"
    models = {("teacher", "seed0"): run / "teacher",
              **{(control if v == "random" else name_of(s), v): f
                 for (s, v), f in folders.items()}}
    ft_rows, sel_rows = [], []

    def tune(name, variant, folder, task):
        r = finetune_model(folder, task, held, final, out / "ft" / variant / name / task, p,
                           progress)
        for (lr, epochs), mean in r["heldout"].items():
            sel_rows.append({"model": name, "variant": variant, "task": task, "lr": lr,
                             "epochs": epochs, "heldout_mean": mean,
                             **{f"heldout_seed{s}": x for s, x in
                                enumerate(r["heldout_per_seed"][lr, epochs])},
                             "chosen": (lr, epochs) == (r["lr"], r["epochs"])})
        for seed, score in enumerate(r["dev"]):
            ft_rows.append({"model": name, "variant": variant, "task": task, "ft_seed": seed,
                            "dev": score, "lr": r["lr"], "epochs": r["epochs"],
                            "heldout_best": r["heldout"][(r["lr"], r["epochs"])],
                            "heldout_majority": r["heldout_majority"],
                            "dev_majority": r["dev_majority"]})
        return r

    def finetune_all():
        # the teacher first: the tasks it clears the constant answer on, by the held-out rows
        gaps = {}
        for t in p.tasks:
            r = tune("teacher", "seed0", run / "teacher", t)
            gaps[t] = r["heldout"][(r["lr"], r["epochs"])] - r["heldout_majority"]
        tasks = [t for t in p.tasks if p.min_gap is None or gaps[t] >= p.min_gap]
        for (name, variant), folder in models.items():
            for task in tasks if name != "teacher" else ():
                tune(name, variant, folder, task)
        return gaps, tasks

    gaps, tasks = cost("finetune", finetune_all)
    ft = pd.DataFrame(ft_rows)
    archs = {"teacher": T, control: pick, **{name_of(s): T.with_size(*s) for s in roles}}
    lat_rows = cost("latency", latency, archs, out, p.rounds)
    lat = protocol.latency_summary(lat_rows)

    def trials(name, variants=("seed0", "seed1", "random")):
        sub = ft[(ft["model"] == name) & ft["variant"].isin(variants)]
        return {t: {v: list(g["dev"]) for v, g in sub[sub["task"] == t].groupby("variant")}
                for t in tasks}

    names = ["teacher", control, *(name_of(s) for s in roles)]
    score = {n: protocol.task_interval(trials(n)) for n in names} if tasks else {}
    rivals = [name_of(s) for s, rs in roles.items()
              if any(r[:3] in ("(a)", "(b)", "(c)", "(d)", "(e)") for r in rs) and s != pick.size]
    admissible = {r: protocol.no_greater_latency(lat_rows, r, pk) for r in rivals}
    from bortsearch.model.proxies import hardware_fingerprint

    loads = [r["load_average"] for r in lat_rows]
    answer = {"profile": profile, "machine": hardware_fingerprint(),
              "latency_load_average": [min(loads), max(loads)],
              "pick": pk, "tasks": tasks, "task_gaps": gaps, "min_gap": p.min_gap,
              "timing": cost.totals(run), "commit": cost.commit,
              "search_reused": json.loads((run / "reused.json").read_text())
              if (run / "reused.json").is_file() else None,
              "seeds": {"pretraining": {"pick and rivals (a)-(e)": 2,
                                        "others": 2 if p.second_seed_for_all else 1},
                        "fine-tuning": p.seeds}, "latency": lat,
              "score": score, "admissible": {r: {"no_greater": a, "ratio_interval": i}
                                             for r, (a, i) in admissible.items()},
              "speed_up_over_teacher": protocol.no_greater_latency(lat_rows, "teacher", pk)[1],
              "runner_up": name_of(best["diagnostics"]["runner_up"])
              if (best.get("diagnostics") or {}).get("runner_up") else None}
    ok = [r for r in rivals if admissible[r][0]]
    answer["steps_not_taken"] = [why for why, missing in (
        ("no task qualified", not tasks), ("no rival of no greater latency", not ok)) if missing]
    if tasks:
        if ok:
            best_rival = max(ok, key=lambda r: score[r]["mean"])
            answer["best_rival"] = best_rival
            answer["decision"] = protocol.decide_tasks(trials(pk), trials(best_rival))
        answer["teacher_bought"] = protocol.decide_tasks(trials(pk, ("seed0",)),
                                                         trials(control))
        answer["kept_against_teacher"] = protocol.decide_tasks(trials(pk), trials("teacher"))
        others = [n for n in names if n != "teacher"]
        answer["front"] = protocol.on_front({n: lat[n] for n in others},
                                            {n: score[n] for n in others})
        cands = [name_of(s) for s, rs in roles.items() if "(g) candidate" in rs]
        table = pd.read_csv(run / "results.csv").set_index(
            ["layers", "heads", "hidden", "intermediate"])
        row = {c: table.loc[tuple(int(x) for x in c.split("-"))] for c in cands}
        down = [score[c]["mean"] for c in cands]
        answer["spearman_error"] = protocol.spearman([-float(row[c]["error"]) for c in cands],
                                                     down)
        w = [float(row[c]["w_coefficient"]) for c in cands]
        finite = [i for i, x in enumerate(w) if np.isfinite(x)]
        answer["spearman_w"] = protocol.spearman([w[i] for i in finite],
                                                 [down[i] for i in finite])
        answer["spearman_candidates"] = len(cands)
        if len(cands) < 8:
            answer["steps_not_taken"].append(f"only {len(cands)} trained candidates for "
                                             f"Spearman (the protocol asks for at least 8)")
    pd.DataFrame([{"model": name_of(s), "roles": "; ".join(rs),
                   "p_hat": effective_param_count(T.with_size(*s)),
                   "flops": forward_flops(T.with_size(*s), 1, 128, "encoder")}
                  for s, rs in roles.items()]
                 + [{"model": control, "roles": "(f) control: the pick from random weights",
                     "p_hat": effective_param_count(pick),
                     "flops": forward_flops(pick, 1, 128, "encoder")}]
                 ).to_csv(results / "students.csv", index=False)
    ft.to_csv(results / "finetune.csv", index=False)
    pd.DataFrame(sel_rows).to_csv(results / "selection.csv", index=False)
    pd.DataFrame(lat_rows).to_csv(results / "latency.csv", index=False)
    answer.update(derived(answer, results))
    write_json(results / "answer.json", answer)
    report(answer, {**roles, control: ["(f) control: the pick from random weights"]}, T, results)
    if profile != "toy":
        update_readme(ROOT / "README.md", profile, (results / "report.md").read_text())
    return answer


def report(answer: dict, roles: dict, T, results: Path) -> None:
    """report.md (a row a model: roles, p̂, latency and score with their intervals, on
    the front) and front.png (score against latency, front marked, pick highlighted)."""
    from bortsearch.model.proxies import effective_param_count
    from bortsearch.runio import write_atomic

    lat, score, front = answer["latency"], answer["score"], answer.get("front", {})
    role = {"teacher": "teacher", **{(k if isinstance(k, str) else name_of(k)): "; ".join(r)
                                     for k, r in roles.items()}}
    lines = [f"Bort in small (bench/bort_small_protocol.md), tasks {', '.join(answer['tasks'])}; "
             "latency ms at batch 1, length 128, one thread (median over rounds, 95% interval); "
             "score: the tasks' mean dev score (95% two-level bootstrap interval).", "",
             "| model | roles | p̂ | latency ms | score | front |", "|---|---|---|---|---|---|"]
    order = sorted(lat, key=lambda m: lat[m]["median"])
    for m in order:
        size = T.size if m == "teacher" else tuple(int(x) for x in m.split("-")[:4])
        sc = score.get(m)
        cell = f"{sc['mean']:.1f} ({sc['lo']:.1f} to {sc['hi']:.1f})" if sc else "—"
        lines.append(f"| {m} | {role[m]} | {effective_param_count(T.with_size(*size)):,} | "
                     f"{1e3 * lat[m]['median']:.2f} ({1e3 * lat[m]['lo']:.2f} to "
                     f"{1e3 * lat[m]['hi']:.2f}) | {cell} | {'yes' if front.get(m) else ''} |")
    lines += ["", *answer_lines(answer)]
    write_atomic(results / "report.md", "\n".join(lines) + "\n")
    protocol.front_plot(results / "front.png", order, lat, score, front, answer["pick"],
                        "mean dev score")


def _interval(d: dict, unit: str = "") -> str:
    return f"{d['margin']:+.1f}{unit} (95% interval {d['lo']:+.1f} to {d['hi']:+.1f})"


def dominating(answer: dict) -> list[str]:
    """The models faster than the pick and better, each beyond both intervals."""
    pk, lat, score = answer["pick"], answer["latency"], answer["score"]
    return sorted((m for m in score if m not in (pk, "teacher") and m in lat
                   and lat[m]["hi"] < lat[pk]["lo"] and score[m]["lo"] > score[pk]["hi"]),
                  key=lambda m: lat[m]["median"])


def derived(answer: dict, results: Path) -> dict:
    """Figures a sceptic asks for beside the protocol's, from the raw files: the best
    constant answer on dev, the search's p̂, î, KL and θ for the pick and the models that
    dominate it, and the ranking by p̂ alone and above the constant answer."""
    import pandas as pd

    if "score" not in answer or answer["pick"] not in answer["score"]:
        return {}
    ft = pd.read_csv(results / "finetune.csv")
    floor = float(ft.groupby("task")["dev_majority"].first().mean())
    table = pd.read_csv(results / "results.csv")
    done = table[table["status"] == "done"]
    rows = {f"{r.layers}-{r.heads}-{r.hidden}-{r.intermediate}": r for r in done.itertuples()}
    out = {"dev_constant": floor, "search_terms": {
        m: {"p_hat": float(r.effective_params), "inference": float(r.inference),
            "kl": float(r.kl), "kl_se": float(r.error_se), "lr": float(r.best_lr)}
        for m, r in rows.items() if m in (answer["pick"], *dominating(answer))}}
    chosen = ft.groupby("model")["epochs"].max()
    above_all = [m for m in answer["score"] if m != "teacher" and m in chosen.index
                 and answer["score"][m]["lo"] > floor]
    out["longest_epochs"] = (sum(int(chosen[m]) == int(ft["epochs"].max()) for m in above_all),
                             len(above_all), int(ft["epochs"].max()))
    cands = [m for m in rows if m in answer["score"]]
    down = [answer["score"][m]["mean"] for m in cands]
    if len(cands) >= 3:
        out["spearman_size"] = protocol.spearman(
            [float(rows[m].effective_params) for m in cands], down)
        above = [m for m in cands if answer["score"][m]["lo"] > floor]
        if len(above) >= 3:
            out["spearman_error_above_floor"] = (len(above), *protocol.spearman(
                [-float(rows[m].kl) for m in above], [answer["score"][m]["mean"] for m in above]))
    return out


def not_winning_lines(answer: dict) -> list[str]:
    """The protocol's "where the pick does not win": what the figures point to."""
    d = answer.get("decision")
    if (d and d["verdict"] == "wins") or "score" not in answer or answer["pick"] not in \
            answer["score"]:
        return []
    pk, lat, score = answer["pick"], answer["latency"], answer["score"]
    out = ["- **Where the pick does not win** (the protocol's list, with the figures):"]
    dom = dominating(answer)
    runner = answer.get("runner_up")
    one_seed = [m for m in dom if m not in answer.get("admissible", {})
                and answer.get("seeds", {}).get("pretraining", {}).get("others", 2) < 2]
    if dom:
        out.append("  - Faster than the pick and better, beyond both intervals: " + ", ".join(
            f"{m} ({1e3 * lat[m]['median']:.2f} ms, {score[m]['mean']:.1f})" for m in dom)
            + f" against the pick's {1e3 * lat[pk]['median']:.2f} ms and "
            f"{score[pk]['mean']:.1f}" + (f"; {runner} is the search's runner-up by W"
                                           if runner in dom else "")
            + (f" ({', '.join(one_seed)}: one pretraining seed, so its interval leaves out "
               f"that noise)" if one_seed else "") + ".")
    terms = answer.get("search_terms", {})
    for m in dom:
        if m in terms and pk in terms:
            a, b = terms[pk], terms[m]
            favoured = [what for what, key in (("size p̂", "p_hat"), ("FLOPs î", "inference"),
                                               ("KL", "kl")) if a[key] < b[key]]
            out.append(f"  - The search put the pick above {m} by its {' and '.join(favoured)}"
                       f" (pick: p̂ {a['p_hat']:,.0f}, î {a['inference']:.3g}, KL "
                       f"{a['kl']:.3f} ± {a['kl_se']:.3f} at lr {a.get('lr', float('nan')):g}; "
                       f"{m}: {b['p_hat']:,.0f}, {b['inference']:.3g}, {b['kl']:.3f} ± "
                       f"{b['kl_se']:.3f} at lr {b.get('lr', float('nan')):g}; the KL after "
                       f"the search's s steps, not after the students' pretraining)"
                       + (": the error proxy after s steps, not the size or speed terms, "
                          "misjudged them" if favoured == ["KL"] else "") + ".")
    if "spearman_error" in answer:
        (r1, p1), (r2, p2) = answer["spearman_error"], answer["spearman_w"]
        size = answer.get("spearman_size")
        above = answer.get("spearman_error_above_floor")
        out.append(f"  - Over all trained candidates the error proxy follows the downstream "
                   f"ranking (ρ {r1:+.2f}, p = {p1:.3f}) and W, which trades error for size "
                   f"and speed, does not (ρ {r2:+.2f}, p = {p2:.3f})"
                   + (f"; but p̂ alone ranks them as well (ρ {size[0]:+.2f}, p = "
                      f"{size[1]:.3f})" if size else "")
                   + (f"; among the {above[0]} whose interval is above the best constant "
                      f"answer the error's ρ is {above[1]:+.2f} (p = {above[2]:.3f})"
                      if above else "") + ".")
    control, floor = f"{pk}-random", answer.get("dev_constant")
    if "teacher_bought" in answer:
        if floor is not None and control in score and score[control]["hi"] <= floor + 1e-9:
            out.append("  - Inheritance: not measured here (the control never left the "
                       "constant answer).")
        else:
            out.append(f"  - Inheritance: the teacher's weights are worth "
                       f"{answer['teacher_bought']['margin']:+.1f} points to the pick "
                       f"({answer['teacher_bought']['verdict']}).")
    if answer.get("longest_epochs"):
        n, m, e = answer["longest_epochs"]
        out.append(f"  - Budget: {n} of the {m} models above the constant answer chose the "
                   f"grid's longest fine-tuning ({e} epochs): at this scale the scores may "
                   f"measure how fast a model leaves the constant answer.")
    out.append("  - s and Θ: not examined by this run (the search's defaults, no "
               "confirmation phase).")
    return out


def answer_lines(answer: dict) -> list[str]:
    """The answer in words, every figure with its interval (report.md and the README)."""
    pk, d, out = answer["pick"], answer.get("decision"), []
    if d:
        out.append(f"- **The test that decides**: the pick {pk} against the best rival of no "
                   f"greater latency, {answer['best_rival']}: {_interval(d, ' points')}: "
                   f"**{d['verdict']}**.")
    for why in answer.get("steps_not_taken", []):
        out.append(f"- Not computed: {why}.")
    if "front" in answer:
        out.append(f"- On the (latency, score) front: {'yes' if answer['front'].get(pk) else 'no'} "
                   f"(front: {', '.join(m for m, on in answer['front'].items() if on)}).")
    if "kept_against_teacher" in answer:
        t, p_ = answer["score"]["teacher"]["mean"], answer["score"][pk]["mean"]
        lo, hi = answer["speed_up_over_teacher"]
        ratio = answer["latency"]["teacher"]["median"] / answer["latency"][pk]["median"]
        floor = answer.get("dev_constant")
        gain = (f"; {100 * (p_ - floor) / (t - floor):.1f}% of its gain over the best "
                f"constant answer, {floor:.1f}" if floor is not None and t > floor else "")
        out.append(f"- Against the teacher: {_interval(answer['kept_against_teacher'], ' points')}"
                   f" ({100 * p_ / t:.1f}% of its score{gain}) at {ratio:.2f}× its speed (95% "
                   f"interval {lo:.2f} to {hi:.2f}).")
    out += not_winning_lines(answer)
    control = f"{answer['pick']}-random"
    floor = answer.get("dev_constant")
    if "teacher_bought" in answer and floor is not None and control in answer.get("score", {}) \
            and answer["score"][control]["hi"] <= floor + 1e-9:
        out.append(f"- What the teacher's weights bought: the pick from random weights never "
                   f"left the best constant answer ({floor:.1f} on every seed), so "
                   f"{answer['teacher_bought']['margin']:+.1f} points is the pick's lead over "
                   f"the constant answer, not a measure of inheritance.")
    elif "teacher_bought" in answer:
        out.append(f"- What the teacher's weights bought (the pick against itself from random "
                   f"weights, seed 0 of each): {_interval(answer['teacher_bought'], ' points')}.")
    if "spearman_error" in answer:
        (r1, p1), (r2, p2) = answer["spearman_error"], answer["spearman_w"]
        n = answer["spearman_candidates"]
        out.append(f"- The search's ranking against the downstream one over {n} trained "
                   f"candidates: Spearman ρ = {r1:+.2f} by the error proxy (permutation p = "
                   f"{p1:.3f}), {r2:+.2f} by W (p = {p2:.3f})"
                   + (" (fewer than the 8 the protocol asks for: not evidence either way)."
                      if n < 8 else "."))
    seeds = answer.get("seeds")
    if seeds:
        pre = seeds["pretraining"]
        out.append(f"- Intervals resample the seeds a model has: {seeds['fine-tuning']} "
                   f"fine-tuning seeds each; pretraining seeds {pre['pick and rivals (a)-(e)']} "
                   f"for the pick and the rivals (a)–(e), {pre['others']} for the teacher, the "
                   f"control and the other candidates"
                   + (", whose intervals therefore leave out pretraining noise" if
                      pre["others"] < 2 else "")
                   + "; no interval includes the dev set's own sampling noise"
                   + "; with 2 pretraining seeds the percentile bootstrap is narrower than "
                   "the spread it estimates, so read a verdict near its edge as tentative.")
    gaps = ", ".join(f"{t} {g:+.1f}" for t, g in answer.get("task_gaps", {}).items())
    need = answer.get("min_gap")
    out.append(f"- Tasks: {', '.join(answer['tasks']) or 'none'} (the teacher over the best "
               f"constant answer on held-out rows: {gaps}"
               f"{f'; a task needs +{need:g}' if need is not None else ''}).")
    m, tm = answer.get("machine", {}), answer.get("timing", {})
    out.append(f"- Ran from commit `{answer.get('commit', '?')}`.")
    if answer.get("search_reused"):
        r = answer["search_reused"]
        e = r["teacher_entropy"]
        out.append(f"- The search was not run again: its answer committed at `{r['commit'][:7]}` "
                   f"rebuilt the run folder (`--search-from`), with the teacher made again by "
                   f"the same command; its entropy on the search's held-out batches is "
                   f"{e['now']:.6f} nats against the recorded {e['recorded']:.6f}.")
    reused = bool(answer.get("search_reused"))
    cost = ", ".join(f"{k[:-2]} {v / 60:.0f} min" for k, v in tm.items()
                     if not (reused and k.startswith("search")))
    if reused:
        cost += " (the search's own cost is in the protocol's Changes: it was not run here)"
    out.append(f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
               f"{m.get('platform', '?')}; cost: {cost} (wall); load average during the "
               f"latency rounds {answer.get('latency_load_average', ['?'])[0]:.1f} to "
               f"{answer.get('latency_load_average', [0, 0])[-1]:.1f}.")
    return out


BEGIN, END = "<!-- bort-small results: begin -->", "<!-- bort-small results: end -->"


def readme_lines(report_md: str) -> list[str]:
    """The report's answer as the README shows it: its bullets up to "where the pick
    does not win" (the front page's prose says what that list holds)."""
    out = []
    for line in report_md.splitlines():
        if line.startswith("- **Where the pick does not win**"):
            break
        if line.startswith("- "):
            out.append(line)
    return out


def update_readme(readme: Path, profile: str, report_md: str) -> None:
    """The README's result, made from the report by this script (between its markers;
    one block per profile, the latest run's)."""
    head = (f"**{profile.upper()} profile** (made by `bench/bort_minilm.py --profile {profile}`; "
            f"every model's row, every figure with its interval and the plot: "
            f"[report.md](bench/results/bort_small-{profile}/report.md), "
            f"[front.png](bench/results/bort_small-{profile}/front.png)):")
    protocol.readme_block(readme, BEGIN, END, profile,
                          "\n\n".join([head, "\n".join(readme_lines(report_md))]))


def report_only(results: Path, profile: str) -> dict:
    """report.md, front.png and the README's block made again from the committed raw
    results (answer.json, students.csv, best.json), running nothing."""
    import pandas as pd

    from bortsearch.model.arch import Arch

    answer = json.loads((results / "answer.json").read_text())
    best = json.loads((results / "best.json").read_text())
    if "runner_up" not in answer:  # answers written before it was recorded
        up = (best.get("diagnostics") or {}).get("runner_up")
        answer["runner_up"] = name_of(up) if up else None
    answer.update({k: v for k, v in derived(answer, results).items() if k not in answer})
    roles = {r.model: r.roles.split("; ") for r in pd.read_csv(results / "students.csv")
             .itertuples()}
    report(answer, roles, Arch.from_dict(best["maximum_point"]["arch"]), results)
    if profile != "toy":
        update_readme(ROOT / "README.md", profile, (results / "report.md").read_text())
    return answer


def main(argv=None) -> int:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--measure":
        _measure(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--out", type=Path, help="work folder (default: the cache's "
                    "bort-minilm-PROFILE)")
    ap.add_argument("--results", type=Path, help="raw results and the answer (default "
                    "bench/results/bort_small-PROFILE)")
    ap.add_argument("--search-from", type=Path, metavar="DIR",
                    help="reuse the finished search whose results.csv, best.json and "
                    "search.json are in DIR (e.g. bench/results/bort_small-cpu) instead of "
                    "running it again; recorded in the answer")
    ap.add_argument("--report-only", action="store_true",
                    help="make report.md, front.png and the README's block again from the "
                    "committed raw results, running nothing")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from bortsearch.runio import cache_dir

    if args.report_only:
        report_only(args.results or ROOT / "bench" / "results" / f"bort_small-{args.profile}",
                    args.profile)
        return 0
    out = args.out or cache_dir() / f"bort-minilm-{args.profile}"
    answer = experiment(out, args.profile, not args.quiet, args.results, args.search_from)
    print(json.dumps({k: answer.get(k) for k in ("pick", "tasks", "best_rival", "decision",
                                                 "teacher_bought", "spearman_error")},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
