"""Does ALBERT's sentence-order prediction help the student downstream?

With the Bort-in-small benchmark's search run and budget (`make bench-bort` first,
the CPU profile): pretrain one student with `--objective mlm+sop` under exactly the
budget its masked-LM-only twin had (steps, batch, length, learning rate, the
teacher's weights as the start), then fine-tune both on MRPC, RTE and QNLI (the
inter-sentence tasks ALBERT names) with the bench's GLUE settings and seeds, and
print per task the mean ± standard error, the difference and its size in standard
errors, and the order head's held-out accuracy. The masked-LM twin's pretraining and
fine-tuning are the bench-bort ones, read from its cache.

Usage: python bench/sop_bench.py [--size D,A,H,I]   (default: the search's pick)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bort_small import PROFILES  # noqa: E402
from glue_eval import glue_folder, glue_scores  # noqa: E402

TASKS = {"mrpc": 3, "rte": 3, "qnli": 3}


def main() -> None:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    from bortsearch.model.arch import parse_size
    from bortsearch.runio import cache_dir
    from bortsearch.search.student import PretrainConfig, pretrain

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", help="the student D,A,H,I (default: the run's W-optimum)")
    ap.add_argument("--out", type=Path, default=cache_dir() / "bench" / "bort-small-cpu")
    args = ap.parse_args()
    base, p = args.out, PROFILES["cpu"]
    run = base / "search"
    if not (run / "best.json").is_file():
        sys.exit(f"no Bort-in-small run in {run}: run `make bench-bort` first")
    size = parse_size(args.size) if args.size else tuple(
        json.loads((run / "best.json").read_text())["size"])
    name = "-".join(map(str, size))
    twin = base / "students" / name
    if not (twin / "model.safetensors").is_file():
        sys.exit(f"no masked-LM-only student {twin}: bench-bort pretrains the pick and its "
                 f"rivals; give one of {sorted(x.name for x in (base / 'students').iterdir())}")
    # the same run in its own folder: one student's pretraining folder per objective
    sop_run = base / "sop" / "run"
    if not (sop_run / "best.json").is_file():
        shutil.copytree(run, sop_run, ignore=shutil.ignore_patterns("pretrain", "candidates"),
                        dirs_exist_ok=True)
    cfg = PretrainConfig(steps=p.pretrain_steps, batch_size=p.pretrain_batch,
                         seq_len=p.pretrain_seq_len, lr=p.pretrain_lr, warmup=0.05,
                         eval_every=max(1, p.pretrain_steps // 4),
                         checkpoint_every=max(1, p.pretrain_steps // 4))
    twin_summary = json.loads((run / "pretrain" / name / "summary.json").read_text())
    t0 = time.time()
    summary = pretrain(sop_run, base / "sop" / "students" / name, size,
                       dataclasses.replace(cfg, objective="mlm+sop"), progress=True)
    pretrain_s = time.time() - t0
    data = glue_folder(base)
    t0 = time.time()
    glue = {"mlm": glue_scores({name: twin}, data, base / "glue", TASKS, p.glue_train,
                               p.glue_lr, p.glue_epochs, p.glue_length, progress=True),
            "mlm+sop": glue_scores({name: base / "sop" / "students" / name}, data,
                                   base / "sop" / "glue", TASKS, p.glue_train, p.glue_lr,
                                   p.glue_epochs, p.glue_length, progress=True)}
    glue_s = time.time() - t0
    print(f"\nstudent ⟨{','.join(map(str, size))}⟩, pretraining {cfg.steps} steps × "
          f"{cfg.batch_size} × {cfg.seq_len}, lr {cfg.lr:g}, teacher's weights; GLUE "
          f"{p.glue_train} training rows, {p.glue_epochs} epochs, lr {p.glue_lr:g}, 3 seeds "
          f"(QNLI: train and dev cut from its dev split); pretraining {pretrain_s:.0f} s, "
          f"GLUE {glue_s:.0f} s")
    print(f"held-out: masked-LM accuracy {twin_summary['heldout_accuracy']:.4f} (mlm) / "
          f"{summary['heldout_accuracy']:.4f} (mlm+sop, on its pair batches); sentence-order "
          f"accuracy {summary['heldout_sop_accuracy']:.4f} (chance 0.5)")
    print("| objective | " + " | ".join(TASKS) + " | average |")
    print("|---|" + "---|" * (len(TASKS) + 1))
    for objective, table in glue.items():
        r = table.iloc[0]
        print(f"| {objective} | " + " | ".join(f"{r[t]:.1f} ± {r[t + '_se']:.1f}"
                                              for t in [*TASKS, "average"]) + " |")
    a, b = glue["mlm"].iloc[0], glue["mlm+sop"].iloc[0]
    cells = []
    for t in [*TASKS, "average"]:
        d, se = b[t] - a[t], math.hypot(a[t + "_se"], b[t + "_se"])
        cells.append(f"{d:+.1f} ({d / se:+.1f} s.e.)" if se > 0 else f"{d:+.1f}")
    print("| mlm+sop − mlm | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
