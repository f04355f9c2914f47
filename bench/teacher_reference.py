"""The reference teacher: a BERT-Mini-shaped masked LM that knows some English.

The recipe, one command, resumable (re-run it after a kill, or in a
later session on the same machine: the work lives in the cache, not in runs/):

    make teacher-reference                  # the CPU profile, about 1.5 h on 2 cores
    python bench/teacher_reference.py --profile gpu   # a lent GPU: from scratch, larger

CPU profile, two stages, both `bortsearch teacher` on gutenberg train, ⟨4,4,256,1024⟩,
WordPiece 8,192 trained on the same text, length 128, batch 32, AdamW lr 1e-3:
  1. 2,500 steps from random weights (the command that made the interim
     ../shared/teachers/gutenberg-mini; its tokenizer is trained again here, and
     the WordPiece trainer of this `tokenizers` gives another vocabulary, so
     stage 1 is trained here too, about 17 minutes);
  2. `--init-from` stage 1: STEPS more with a fresh warm-up and decay and another
     data order (seed 1).
GPU profile: one stage from random weights, batch 256, 12,000 steps.

Then `--evaluate` (run by default once training is done) writes
OUT/reference.json and prints: masked-LM accuracy and pseudo-perplexity on
gutenberg valid and on the WikiText-2 test split, the unigram predictor's KL
against the teacher (the gap a student can learn), and GLUE dev scores of the
teacher and of the same shape from random weights (seeds, mean ± standard error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GUTENBERG = SHARED / "data" / "gutenberg"
WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
SIZE = (4, 4, 256, 1024)
VOCAB = 8192

PROFILES = {
    # stage 1 = the interim teacher's command; stage 2 continues it
    "cpu": {"stages": [dict(steps=2500, batch=32, seed=0, lr=1e-3),
                       dict(steps=4000, batch=32, seed=1, lr=1e-3)]},
    "gpu": {"stages": [dict(steps=12000, batch=256, seed=0, lr=1e-3)]},
    # CI: the same code path, seconds
    "toy": {"stages": [dict(steps=6, batch=8, seed=0, lr=1e-3),
                       dict(steps=6, batch=8, seed=1, lr=1e-3)]},
}

# GLUE dev evaluation (bench/glue_eval.py): seeds per task
GLUE_TASKS = {"sst2": 3, "mrpc": 3, "rte": 3, "cola": 3, "qnli": 3}
TOY_TASKS = {"rte": 2}


def default_out(profile: str) -> Path:
    from bortsearch.runio import cache_dir

    return cache_dir() / "teachers" / f"reference-{profile}"


def space_file(folder: Path) -> Path:
    """A space whose maximum point is SIZE (the teacher command trains it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.toml"
    path.write_text('name = "reference"\nmodel_type = "bert"\n'
                    "layers = [1, 2, 3, 4]\nheads = [2, 4]\nhidden = [64, 128, 192, 256]\n"
                    "intermediate = [256, 512, 768, 1024]\n")
    return path


def train(out: Path, profile: str, corpus: list[str], progress: bool) -> Path:
    """Run the profile's stages in order; each finished stage is kept and skipped."""
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.data.tokenizer import train_tokenizer
    from bortsearch.model.hf import load_checkpoint
    from bortsearch.search.space import load_space
    from bortsearch.train.teacher import TeacherConfig, train_teacher

    corpus_obj = resolve_corpus(corpus)
    previous = None
    for k, st in enumerate(PROFILES[profile]["stages"], start=1):
        stage = out / f"stage{k}"
        cfg = TeacherConfig(steps=st["steps"], lr=st["lr"], checkpoint_every=250,
                            eval_every=250,
                            batch_size=st["batch"], seq_len=128 if profile != "toy" else 32,
                            seed=st["seed"])
        if previous is None:
            tokenizer = train_tokenizer(corpus_obj, VOCAB if profile != "toy" else 512)
            arch = load_space(space_file(out)).sized(tokenizer.vocab_size, SIZE if profile != "toy"
                                                     else (2, 2, 32, 64))
            train_teacher(stage, arch, corpus_obj, tokenizer, cfg, progress=progress)
        else:
            start = load_checkpoint(previous)
            train_teacher(stage, start.arch, corpus_obj, start.tokenizer, cfg,
                          progress=progress, init_from=previous)
        summary = json.loads((stage / "bortsearch.json").read_text())
        print(f"stage {k}: {st['steps']} steps x {st['batch']}: held-out accuracy "
              f"{summary['heldout_accuracy']:.4f}, CE {summary['heldout_mlm_ce']:.3f}",
              flush=True)
        previous = stage
    return previous


def main(argv=None) -> int:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", type=Path, help="work and result folder (default: the cache's "
                   "teachers/reference-PROFILE, which outlives a work tree)")
    p.add_argument("--corpus", action="append", help=f"default {GUTENBERG / 'train.txt'}")
    p.add_argument("--no-evaluate", action="store_true", help="train only")
    p.add_argument("--glue-train", type=int, default=2000,
                   help="training rows per GLUE task (default 2000)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = args.out or default_out(args.profile)
    corpus = args.corpus or [str(GUTENBERG / "train.txt")]
    t0 = time.time()
    teacher = train(out, args.profile, corpus, not args.quiet)
    print(f"teacher: {teacher} ({time.time() - t0:.0f} s this call)", flush=True)
    if not args.no_evaluate:
        report = evaluate(teacher, out, corpus, glue_train=args.glue_train,
                          toy=args.profile == "toy", progress=not args.quiet)
        print(report)
    return 0


def evaluate(teacher: Path, out: Path, corpus: list[str], glue_train: int, toy: bool = False,
             progress: bool = False) -> str:
    """The teacher's quality (module docstring); writes OUT/reference.json and
    OUT/reference.md and returns the Markdown."""
    from glue_eval import format_scores, glue_folder, glue_scores, mlm_quality

    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.model.encoder import Model, init_params
    from bortsearch.model.hf import load_checkpoint, save_checkpoint
    from bortsearch.runio import write_atomic, write_json

    model = load_checkpoint(teacher)
    train_data = load_data(resolve_corpus(corpus), model.tokenizer, BatchSpec(8, 32))
    log_q = train_data.unigram_log_probs(model.arch.vocab_size)
    batches = 2 if toy else 16
    texts = {"gutenberg valid": GUTENBERG / "valid.txt", "WikiText-2 test": WIKITEXT}
    mlm = {name: mlm_quality(model, path, log_q, batches, seq_len=32 if toy else 128)
           for name, path in texts.items()}
    twin = out / "random-init"
    if not (twin / "config.json").is_file():
        save_checkpoint(Model(model.arch, init_params(model.arch, 0), model.tokenizer), twin)
    tasks = TOY_TASKS if toy else GLUE_TASKS
    table = glue_scores({"teacher": teacher, "same shape, random init": twin},
                        glue_folder(out), out / "glue", tasks,
                        train_rows=64 if toy else glue_train, epochs=1 if toy else 3,
                        max_length=64 if toy else 128,
                        progress=progress)
    summary = json.loads((teacher / "bortsearch.json").read_text())
    lines = [f"Teacher {model.arch.label()}, vocabulary {model.arch.vocab_size}, "
             f"{model.num_params:,} parameters: `{teacher}`", "",
             "| held-out text | masked-LM accuracy | CE (nats) | pseudo-perplexity | "
             "H_T | unigram KL | positions |", "|---|---|---|---|---|---|---|"]
    for name, m in mlm.items():
        lines.append(f"| {name} | {m['accuracy']:.3f} | {m['mlm_ce']:.3f} | "
                     f"{m['pseudo_perplexity']:.1f} | {m['teacher_entropy']:.3f} | "
                     f"{m['unigram_kl']:.3f} | {m['positions']:,} |")
    lines += ["", f"GLUE dev (first {64 if toy else glue_train} training rows per task, lr "
              f"1e-4, {1 if toy else 3} epochs, best epoch per trial; mean ± standard error "
              f"over seeds {tasks}; QNLI: its dev split cut into train and dev):", "",
              format_scores(table, list(tasks))]
    text = "\n".join(lines)
    write_json(out / "reference.json", {
        "teacher": str(teacher), "training": summary.get("settings"), "mlm": mlm,
        "glue": table.to_dict(orient="records"), "glue_majority": table.attrs["majority"],
        "glue_tasks": tasks})
    write_atomic(out / "reference.md", text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
