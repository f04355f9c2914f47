"""Is the E axis a fair contest? Factorised students (E < H)
against their unfactorised twin, trained as the search trains candidates (s
steps, Θ, two seeds, from the teacher's weights), once with the truncated-SVD
start (`encoder._svd_embeddings`, the default since 2026-11-28) and once with
the old start (E cut columns of the teacher's tables and a random E→H map).

    python bench/albert_svd.py [--teacher DIR] [--steps 200] [--out DIR]

Each start is its own search run over the same space (every architecture
trained: ε = 1), in the cache (resumable); the table gives each architecture's
KL after s steps (± its seed standard error) under both starts, and KL at step 0.
Default teacher: the reference teacher (bench/teacher_reference.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CACHE = Path(os.environ.get("BORTSEARCH_CACHE", Path.home() / ".cache" / "bortsearch"))

SPACE = """name = "albert-svd"
description = "Factorised students of the reference teacher against their twin"
model_type = "bert"
layers = [2]
heads = [4]
hidden = [256]
intermediate = [512]
embedding = [64, 128, "H"]
groups = ["D"]
"""


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", type=Path, default=CACHE / "teachers/reference-cpu/stage2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--corpus", default=str(HERE.parent.parent / "shared/data/gutenberg/train.txt"))
    ap.add_argument("--out", type=Path, default=CACHE / "bench/albert-svd")
    args = ap.parse_args()

    import pandas as pd

    from bortsearch.model import encoder
    from bortsearch.search.run import SearchConfig, run_search

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "space.toml").write_text(SPACE)
    svd = encoder._svd_embeddings
    tables = {}
    for start in ("svd", "cut"):
        encoder._svd_embeddings = svd if start == "svd" else (lambda a, ta, tp, p: p)
        cfg = SearchConfig(space=str(args.out / "space.toml"), teacher=str(args.teacher),
                           corpus=(args.corpus,), epsilon=1, steps=args.steps)
        run_search(args.out / start, cfg, progress=False)
        tables[start] = pd.read_csv(args.out / start / "results.csv")
    encoder._svd_embeddings = svd
    k0 = step0(args)
    lines = [f"KL to the teacher after s = {args.steps} steps (search's candidate training: "
             f"Θ = {{1e-3, 3e-3}}, two seeds, batch 32 x 64, from the teacher's weights; "
             f"mean ± seed standard error at the best θ), and at step 0:", "",
             "| architecture | E | KL, SVD start | KL, cut start | step 0, SVD | step 0, cut |",
             "|---|---|---|---|---|---|"]
    for r_svd, r_cut in zip(tables["svd"].itertuples(), tables["cut"].itertuples()):
        e = int(getattr(r_svd, "embedding", r_svd.hidden))
        z = k0.get(e, {})
        lines.append(f"| ⟨{r_svd.layers},{r_svd.heads},{r_svd.hidden},{r_svd.intermediate}⟩ | "
                     f"{e} | {r_svd.kl:.3f} ± {r_svd.error_se:.3f} | "
                     f"{r_cut.kl:.3f} ± {r_cut.error_se:.3f} | {z.get('svd', float('nan')):.3f} | "
                     f"{z.get('cut', float('nan')):.3f} |")
    text = "\n".join(lines)
    (args.out / "albert_svd.md").write_text(text + "\n")
    (args.out / "albert_svd.json").write_text(json.dumps(
        {k: v.to_dict("records") for k, v in tables.items()}, indent=2, default=float))
    print(text)


def step0(args) -> dict:
    """KL to the teacher before any training, on 4 held-out batches of Gutenberg valid."""
    from bortsearch import load_checkpoint
    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.model import encoder
    from bortsearch.train.step import eval_sums, teacher_logits

    T = load_checkpoint(args.teacher)
    valid = str(Path(args.corpus).with_name("valid.txt"))
    data = load_data(resolve_corpus([valid], "text"), T.tokenizer, BatchSpec(16, 128, seed=0),
                     progress=False)
    batches = data.heldout_batches()[:4]
    touts = [teacher_logits(T.arch, T.params, b) for b in batches]

    def kl(arch, params):
        s = {}
        for b, t in zip(batches, touts):
            for k, v in eval_sums(arch, params, b, t).items():
                s[k] = s.get(k, 0.0) + float(v)
        return s["kl"] / s["n"]

    svd = encoder._svd_embeddings
    out = {}
    for e in (64, 128, 256):
        arch = T.arch.with_size(2, 4, 256, 512, e, 2)
        out[e] = {"svd": kl(arch, encoder.inherit_params(arch, T.arch, T.params, 0))}
        encoder._svd_embeddings = lambda a, ta, tp, p: p
        out[e]["cut"] = kl(arch, encoder.inherit_params(arch, T.arch, T.params, 0))
        encoder._svd_embeddings = svd
    return out


if __name__ == "__main__":
    main()
