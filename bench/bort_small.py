"""`make bench-bort` (bench/bort_small.py): Bort in small, end to end.

Does the search's pick, once pretrained, beat the students a person would choose?
With a teacher that knows English (bench/teacher_reference.py) and the space of its
sub-architectures (search_spaces/bort_small.toml):

1. the search at the defaults, and again with --confirm 3 (the confirmation run
   starts from a copy of the first, so only the confirmation trains);
2. pretraining by distillation, under one identical budget (steps, batch, data,
   seed, start: the teacher's weights, as the search scored), of: the W-optimum,
   the confirmed pick, every other trained candidate (so that the search's ranking
   can be compared with what pretraining gives), and the rivals a person would
   choose: (a) the space's smallest architecture; (b) a uniform shrink of the
   teacher (I = 4H, D ∝ H, the teacher's heads) with about the pick's parameters;
   (c) the shape at the space's extremes (full width and fewer layers, or full
   depth and narrow) with about the pick's measured latency; (d) two random
   architectures within ±20% of the pick's parameters (one in the toy profile);
3. GLUE dev fine-tuning of every student and the teacher (bench/glue_eval.py:
   seeds, mean ± standard error);
4. the table (params, measured CPU latency at batch 1 and length 128, held-out KL
   after pretraining, each task, the average ± its standard error), the plot (GLUE
   average against latency, the Pareto front, the pick), the answer (is the pick
   on the front; its margin over the best rival of no greater latency, in standard
   errors), and the Spearman correlations between the search's ranking of the
   trained candidates (by error, by W) and the ranking after pretraining (held-out
   KL) and after fine-tuning (GLUE average).

Profiles: `cpu` (the 2-core machine), `gpu` (a lent accelerator: full GLUE train
splits, a longer pretraining), `toy` (CI: a tiny teacher trained here, seconds per
phase; the same code path). Every phase resumes: re-run the same command.

    python bench/bort_small.py [--profile cpu|gpu|toy] [--teacher DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from glue_eval import GLUE_DATA, SHARED, glue_folder, glue_scores  # noqa: E402

GUTENBERG = SHARED / "data" / "gutenberg" / "train.txt"
SPACE = ROOT / "search_spaces" / "bort_small.toml"
TOY_SPACE = """name = "toy"
layers = [1, 2]
heads = [2]
hidden = [16, 32]
intermediate = [32, 64]
"""


@dataclasses.dataclass(frozen=True)
class Profile:
    search_steps: int = 200  # the search's defaults (SearchConfig) unless said here
    search_seq_len: int = 64
    search_batch: int = 32
    epsilon: int | None = None  # None: the default, about 12 candidates
    confirm: int = 3
    confirm_steps: int | None = None  # None: 5 · s
    pretrain_steps: int = 600
    pretrain_batch: int = 32
    pretrain_seq_len: int = 128
    pretrain_lr: float = 5e-4
    glue_tasks: tuple = (("sst2", 3), ("mrpc", 3), ("rte", 3), ("cola", 3), ("qnli", 3))
    glue_train: int | None = 1000
    glue_epochs: int = 3
    glue_lr: float = 1e-4
    glue_length: int = 128
    glue_candidates: bool = False  # fine-tune every trained candidate too (GLUE's Spearman)
    int8: bool = True  # also each classifier quantised to int8 in ONNX Runtime
    random_rivals: int = 2  # rivals (d)


PROFILES = {
    "cpu": Profile(),
    "gpu": Profile(pretrain_steps=10000, pretrain_batch=128, glue_train=None,
                   glue_candidates=True),
    "toy": Profile(search_steps=4, search_seq_len=32, search_batch=8, epsilon=4, confirm=2,
                   confirm_steps=4, pretrain_steps=4, pretrain_batch=8, pretrain_seq_len=32,
                   glue_tasks=(("rte", 2),), glue_train=32, glue_epochs=1,
                   glue_length=32, glue_candidates=True, random_rivals=1),
}


def toy_teacher(work: Path) -> tuple[Path, Path]:
    """A tiny teacher on the embedded corpus, and the toy space."""
    from bortsearch import (
        Arch,
        TeacherConfig,
        resolve_corpus,
        train_teacher,
        train_tokenizer,
    )

    work.mkdir(parents=True, exist_ok=True)
    (work / "space.toml").write_text(TOY_SPACE)
    corpus = resolve_corpus(None)
    tok = train_tokenizer(corpus, 300)
    arch = Arch(2, 2, 32, 64, vocab_size=tok.vocab_size, max_positions=64)
    train_teacher(work / "teacher", arch, corpus, tok,
                  TeacherConfig(steps=20, lr=2e-3, batch_size=8, seq_len=32), progress=False)
    return work / "teacher", work / "space.toml"


def search(run: Path, space: Path, teacher: Path, corpus, p: Profile, confirm: int = 0,
           progress: bool = False):
    from bortsearch.search.run import SearchConfig, run_search

    cfg = SearchConfig(space=str(space), teacher=str(teacher), corpus=corpus,
                       steps=p.search_steps, seq_len=p.search_seq_len,
                       batch_size=p.search_batch, epsilon=p.epsilon, confirm=confirm,
                       confirm_steps=p.confirm_steps if confirm else None)
    return run_search(run, cfg, progress=progress, log=lambda *a: None)


def latencies(archs, work: Path) -> dict:
    """Measured CPU latency (batch 1, length 128, the encoder), cached in WORK."""
    from bortsearch.downstream.glue import cpu_latency
    from bortsearch.runio import write_json

    path = work / "latency.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    for a in archs:
        key = ",".join(map(str, a.size))
        if key not in known:
            m = cpu_latency(a)
            known[key] = {"median_ms": 1e3 * m["median_s"], "iqr_ms": 1e3 * m["iqr_s"]}
    write_json(path, known)
    return {a.size: known[",".join(map(str, a.size))] for a in archs}


def rivals(xi, teacher, pick, latency: dict, seed: int = 0, n_random: int = 2) -> dict:
    """The students a person would choose, by name: (a) to (d) of the docstring."""
    from bortsearch.model.proxies import param_count

    size = {a.size: param_count(a) for a in xi}
    near = lambda a, target: abs(math.log(size[a.size] / target))  # noqa: E731
    out = {"(a) smallest": min(xi, key=lambda a: (size[a.size], a.size))}
    depth = lambda h: max(1, round(teacher.layers * h / teacher.hidden))  # noqa: E731
    shrinks = [a for a in xi if a.intermediate == 4 * a.hidden and a.layers == depth(a.hidden)
               and a.heads == teacher.heads and a.size != teacher.size]
    if shrinks:
        out["(b) uniform shrink"] = min(shrinks, key=lambda a: near(a, size[pick.size]))
    full_width = [a for a in xi if a.hidden == teacher.hidden
                  and a.intermediate == teacher.intermediate and a.size != teacher.size]
    full_depth = [a for a in xi if a.layers == teacher.layers and a.hidden == min(
        b.hidden for b in xi) and a.size != teacher.size]
    extremes = full_width + full_depth
    if extremes:
        target = latency[pick.size]["median_ms"]
        out["(c) latency-matched"] = min(
            extremes, key=lambda a: abs(math.log(latency[a.size]["median_ms"] / target)))
    taken = {pick.size, *(a.size for a in out.values())}
    pool = [a for a in xi if a.size not in taken and a.size != teacher.size
            and abs(size[a.size] / size[pick.size] - 1) <= 0.2]
    rng = np.random.default_rng(seed)
    if len(pool) < n_random:  # widen to the nearest by parameters
        pool = sorted((a for a in xi if a.size not in taken and a.size != teacher.size),
                      key=lambda a: near(a, size[pick.size]))[:n_random]
    for k, j in enumerate(rng.choice(len(pool), min(n_random, len(pool)), replace=False)):
        out[f"(d) random {k + 1}"] = pool[int(j)]
    return out


def heldout_entropy(teacher, corpus, p: Profile) -> float:
    """H_T on pretraining's held-out batches: KL = KD cross-entropy − H_T."""
    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.train.step import teacher_entropy_sums, teacher_logits

    data = load_data(resolve_corpus(list(corpus) if corpus else None), teacher.tokenizer,
                     BatchSpec(p.pretrain_batch, p.pretrain_seq_len, seed=0))
    sums = [teacher_entropy_sums(teacher_logits(teacher.arch, teacher.params, b), b["weights"])
            for b in data.heldout_batches()]
    return sum(s["entropy"] for s in sums) / sum(s["n"] for s in sums)


def pareto(latency, score) -> list[bool]:
    """Not dominated: no other model is at least as fast and at least as good, and
    better in one."""
    pts = list(zip(latency, score))
    return [not any(l2 <= l1 and s2 >= s1 and (l2 < l1 or s2 > s1) for l2, s2 in pts)
            for l1, s1 in pts]


def experiment(out: Path, profile: str, teacher: Path | None, progress: bool) -> str:
    from bortsearch.model.arch import Arch
    from bortsearch.model.hf import load_checkpoint
    from bortsearch.model.proxies import param_count
    from bortsearch.runio import write_atomic
    from bortsearch.search.audit import spearman
    from bortsearch.search.run import read_results
    from bortsearch.search.student import PretrainConfig, pretrain

    p = PROFILES[profile]
    t0 = time.time()
    timing = {}
    out.mkdir(parents=True, exist_ok=True)
    if profile == "toy":
        teacher, space = toy_teacher(out / "toy")
        corpus = None
    else:
        space, corpus = SPACE, (str(GUTENBERG),)
    # 1. the search, and the same run confirmed
    run, confirmed_run = out / "search", out / "search-confirm"
    result = search(run, space, teacher, corpus, p, progress=progress)
    if not (confirmed_run / "results.csv").is_file():
        shutil.rmtree(confirmed_run, ignore_errors=True)
        shutil.copytree(run, confirmed_run)
    confirmed = search(confirmed_run, space, teacher, corpus, p, confirm=p.confirm,
                       progress=progress)
    timing["search_s"] = time.time() - t0
    table, best = read_results(run)
    T = Arch.from_dict(best["maximum_point"]["arch"])
    xi = [T.with_size(int(r.layers), int(r.heads), int(r.hidden), int(r.intermediate))
          for r in table.itertuples()]
    latency = latencies(xi + [T], out)
    pick, cpick = result.best.arch, confirmed.best.arch
    roles: dict[tuple, list[str]] = {}
    roles.setdefault(pick.size, []).append("W-optimum")
    roles.setdefault(cpick.size, []).append("confirmed pick")
    for name, a in rivals(xi, T, pick, latency, n_random=p.random_rivals).items():
        roles.setdefault(a.size, []).append(name)
    trained = table[table["status"] == "done"]
    for r in trained.itertuples():
        roles.setdefault((int(r.layers), int(r.heads), int(r.hidden), int(r.intermediate)),
                         []).append("candidate")
    roles.pop(T.size, None)  # the teacher's own shape is the ceiling row
    # 2. pretraining, one budget for all
    cfg = PretrainConfig(steps=p.pretrain_steps, batch_size=p.pretrain_batch,
                         seq_len=p.pretrain_seq_len, lr=p.pretrain_lr, warmup=0.05,
                         eval_every=max(1, p.pretrain_steps // 4),
                         checkpoint_every=max(1, p.pretrain_steps // 4))
    t1 = time.time()
    students, summaries = {}, {}
    for size in sorted(roles):
        folder = out / "students" / "-".join(map(str, size))
        summaries[size] = pretrain(run, folder, size, cfg, progress=progress)
        students[size] = folder
    timing["pretrain_s"] = time.time() - t1
    teacher_model = load_checkpoint(run / "teacher")
    h_t = heldout_entropy(teacher_model, corpus, p)
    # 3. GLUE
    t2 = time.time()
    tasks = dict(p.glue_tasks)
    names = {size: "-".join(map(str, size)) for size in students}
    chosen = {s: f for s, f in students.items() if p.glue_candidates or roles[s] != ["candidate"]}
    scores = glue_scores({"teacher": run / "teacher",
                          **{names[s]: f for s, f in chosen.items()}},
                         glue_folder(out), out / "glue", tasks, train_rows=p.glue_train,
                         lr=p.glue_lr, epochs=p.glue_epochs, max_length=p.glue_length,
                         progress=progress, int8=p.int8)
    timing["glue_s"] = time.time() - t2
    # 4. the table, the plot, the answer
    by_name = scores.set_index("model")
    short = {(int(r.layers), int(r.heads), int(r.hidden), int(r.intermediate)): r
             for r in trained.itertuples()}
    rows = []
    for size in [T.size, *sorted(students, key=lambda s: latency[s]["median_ms"])]:
        name = "teacher" if size == T.size else names[size]
        s = by_name.loc[name] if name in by_name.index else None  # None: not fine-tuned
        r = short.get(size)
        rows.append({
            "model": name, "role": "teacher (ceiling)" if size == T.size
            else ", ".join(roles[size]), "size": size,
            "params": param_count(T.with_size(*size)),
            "latency_ms": latency[size]["median_ms"], "latency_iqr_ms": latency[size]["iqr_ms"],
            "kl_pretrained": (summaries[size]["heldout_kd_ce"] - h_t) if size in summaries
            else 0.0,
            "search_kl": getattr(r, "error", math.nan) if r is not None else math.nan,
            "search_w": getattr(r, "w_coefficient", math.nan) if r is not None else math.nan,
            **({k: s[k] for k in s.index if k != "model"} if s is not None
               else {k: math.nan for k in by_name.columns})})
    import pandas as pd

    res = pd.DataFrame(rows)
    students_only = res[(res["model"] != "teacher") & res["average"].notna()]
    res["front"] = False
    res.loc[students_only.index, "front"] = pareto(students_only["latency_ms"],
                                                   students_only["average"])
    answer = _answer(res, names[pick.size], names[cpick.size])
    corr = _spearman(res, spearman)
    write_atomic(out / "bort_small.csv", res.to_csv(index=False))
    plot(res, names[pick.size], out / "bort_small.png")
    text = _report(res, tasks, answer, corr, p, profile, timing, scores.attrs["majority"], h_t)
    write_atomic(out / "bort_small.md", text + "\n")
    return text


def _answer(res, pick: str, cpick: str) -> dict:
    row = res.set_index("model")
    out = {}
    for label, name in (("W-optimum", pick), ("confirmed pick", cpick)):
        me = row.loc[name]
        rivals = row[(row.index != name) & (row.index != "teacher") & row["average"].notna()
                     & (row["latency_ms"] <= me["latency_ms"])]
        entry = {"model": name, "on_front": bool(me["front"]), "average": me["average"],
                 "average_se": me["average_se"]}
        if len(rivals):
            best = rivals["average"].idxmax()
            gap = me["average"] - rivals.loc[best, "average"]
            se = math.hypot(me["average_se"], rivals.loc[best, "average_se"])
            entry.update(best_rival=best, rival_average=float(rivals.loc[best, "average"]),
                         margin=float(gap), margin_se=float(gap / se) if se > 0 else math.nan)
        out[label] = entry
    return out


def _spearman(res, spearman) -> dict:
    cand = res[res["search_kl"].notna()]
    tuned = cand[cand["average"].notna()]
    return {"n": int(len(cand)), "n_glue": int(len(tuned)),
            "search_kl_vs_pretrained_kl": spearman(cand["search_kl"], cand["kl_pretrained"]),
            "search_w_vs_pretrained_kl": spearman(cand["search_w"], -cand["kl_pretrained"]),
            "search_w_vs_glue": spearman(tuned["search_w"], tuned["average"]),
            "search_kl_vs_glue": spearman(-tuned["search_kl"], tuned["average"]),
            "pretrained_kl_vs_glue": spearman(-tuned["kl_pretrained"], tuned["average"])}


def plot(res, pick: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    st = res[(res["model"] != "teacher") & res["average"].notna()]
    ax.errorbar(st["latency_ms"], st["average"], yerr=st["average_se"], fmt="o",
                color="tab:blue", ms=5, lw=1, label="students (± seed s.e.)")
    front = st[st["front"]].sort_values("latency_ms")
    ax.plot(front["latency_ms"], front["average"], "-", color="tab:red", lw=1,
            label="Pareto front")
    t = res[res["model"] == "teacher"]
    ax.scatter(t["latency_ms"], t["average"], marker="^", s=90, c="black", label="teacher")
    me = res[res["model"] == pick]
    ax.scatter(me["latency_ms"], me["average"], marker="*", s=300, c="gold",
               edgecolors="black", zorder=5, label="search's pick (W-optimum)")
    for k, r in enumerate(res[res["average"].notna()].itertuples()):
        short = r.role.split(",")[0] if r.role != "candidate" else ""
        ax.annotate(f"{r.model} {short}".strip(), (r.latency_ms, r.average),
                    textcoords="offset points", xytext=(4, 3 if k % 2 else -9), fontsize=6)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")  # plain numbers on the ticks, not powers of ten
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("CPU latency, batch 1, length 128 (ms, log)")
    ax.set_ylabel("GLUE dev average")
    ax.set_title("Bort in small: pretrained students, quality against speed")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _report(res, tasks, answer, corr, p: Profile, profile, timing, majority, h_t) -> str:
    head = ["model", "role", "params", "CPU ms", "KL after pretraining", "search KL", "W",
            *tasks, "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res.itertuples():
        lines.append("| " + " | ".join([
            ("**" + r.model + "**") if r.front else r.model, r.role, f"{r.params:,}",
            f"{r.latency_ms:.2f}", f"{r.kl_pretrained:.3f}",
            "" if math.isnan(r.search_kl) else f"{r.search_kl:.3f}",
            "" if math.isnan(r.search_w) else f"{r.search_w:.3g}",
            *[_pm(getattr(r, t), getattr(r, t + "_se")) for t in [*tasks, "average"]]]) + " |")
    lines.append("| majority class | | | | | | | " + " | ".join(
        f"{majority[t]:.1f}" for t in tasks) + f" | {majority['average']:.1f} |")
    lines += ["", "Bold: on the Pareto front of the students (latency, GLUE average).", ""]
    if "average_int8" in res.columns:
        lines += ["int8: each fine-tuned classifier (every seed) quantised by ONNX Runtime's "
                  "dynamic quantisation and scored in ONNX Runtime; the score, and its cost "
                  "(int8 − float32, paired by seed); the classifier's latency at batch 1 in "
                  "ONNX Runtime float32 and int8 (every core):", "",
                  "| model | ONNX fp32 ms | ONNX int8 ms | "
                  + " | ".join(f"{t} int8 (cost)" for t in [*tasks, "average"]) + " |",
                  "|" + "---|" * (4 + len(tasks))]
        for r in res.itertuples():
            if math.isnan(getattr(r, "average_int8", math.nan)):
                continue
            lines.append(f"| {r.model} | {r.latency_onnx_ms:.2f} | {r.latency_int8_ms:.2f} | "
                         + " | ".join(
                             f"{getattr(r, t + '_int8'):.1f} ({getattr(r, t + '_int8_cost'):+.1f}"
                             f" ± {getattr(r, t + '_int8_cost_se'):.1f})"
                             for t in [*tasks, "average"]) + " |")
        lines.append("")
    for label, a in answer.items():
        text = (f"- {label} {a['model']}: {'on' if a['on_front'] else 'not on'} the front; "
                f"average {a['average']:.1f} ± {a['average_se']:.1f}")
        if "best_rival" in a:
            text += (f"; the best student of no greater latency is {a['best_rival']} "
                     f"({a['rival_average']:.1f}): margin {a['margin']:+.1f} points = "
                     f"{a['margin_se']:+.1f} standard errors")
        else:
            text += "; no other student is as fast"
        lines.append(text)
    lines += ["", f"Spearman over the {corr['n']} trained candidates, all pretrained: search "
              f"KL vs KL after pretraining {corr['search_kl_vs_pretrained_kl']:.2f}; search W vs "
              f"KL after pretraining (lower KL) {corr['search_w_vs_pretrained_kl']:.2f}. Over "
              f"the {corr['n_glue']} of them fine-tuned: search W vs GLUE average "
              f"{corr['search_w_vs_glue']:.2f}; search KL vs GLUE average (lower KL, higher "
              f"score) {corr['search_kl_vs_glue']:.2f}; KL after pretraining vs GLUE "
              f"{corr['pretrained_kl_vs_glue']:.2f}.", "",
              f"Budget ({profile}): search s = {p.search_steps}, batch {p.search_batch} x "
              f"{p.search_seq_len}, --confirm {p.confirm}; pretraining {p.pretrain_steps} steps x "
              f"{p.pretrain_batch} x {p.pretrain_seq_len}, lr {p.pretrain_lr:g}, from the "
              f"teacher's weights; GLUE: {p.glue_train or 'all'} training rows, "
              f"{p.glue_epochs} epochs, lr {p.glue_lr:g}, seeds {tasks}; H_T on the held-out "
              f"batches {h_t:.3f} nats. Wall: search {timing['search_s']:.0f} s, pretraining "
              f"{timing['pretrain_s']:.0f} s, GLUE {timing['glue_s']:.0f} s (this call; "
              f"finished phases are reused)."]
    return "\n".join(lines)


def _pm(value, se) -> str:
    return "—" if math.isnan(value) else f"{value:.1f} ± {se:.1f}"


def main(argv=None) -> int:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--teacher", type=Path, help="the teacher folder (default: the reference "
                    "teacher that bench/teacher_reference.py leaves in the cache)")
    ap.add_argument("--out", type=Path, help="the work and result folder (default: the "
                    "cache's bench/bort-small-PROFILE, which outlives a work tree)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    teacher = args.teacher
    if teacher is None and args.profile != "toy":
        from teacher_reference import PROFILES as RECIPES
        from teacher_reference import default_out

        recipe = "gpu" if args.profile == "gpu" else "cpu"
        ref = default_out(recipe)
        teacher = ref / f"stage{len(RECIPES[recipe]['stages'])}"
        if not (teacher / "bortsearch.json").is_file():
            sys.exit(f"no reference teacher in {ref}: run `make teacher-reference` first, or "
                     f"pass --teacher DIR")
    if not GLUE_DATA.is_dir():
        sys.exit(f"{GLUE_DATA}: no GLUE data beside the checkout")
    from bortsearch.runio import cache_dir

    out = args.out or cache_dir() / "bench" / f"bort-small-{args.profile}"
    print(experiment(out, args.profile, teacher, not args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
