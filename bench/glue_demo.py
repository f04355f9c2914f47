"""The downstream proof end to end: the demo search on real text, its W-optimum
pretrained by distillation, and the GLUE dev table of teacher against student.

    python bench/glue_demo.py --corpus ../shared/data/wikitext-2-raw/wiki.test.raw \
        --glue ../shared/data/glue --run runs/glue-demo

Every phase is resumable (re-run the same command). Sized for a GPU in minutes;
on a 2-core CPU expect hours (SST-2 alone is 67k training rows × 3 epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bortsearch.downstream.finetune import FinetuneConfig  # noqa: E402
from bortsearch.downstream.glue import format_table, glue  # noqa: E402
from bortsearch.search.run import SearchConfig, run_search  # noqa: E402
from bortsearch.search.student import PretrainConfig, pretrain  # noqa: E402

HERE = Path(__file__).resolve().parent.parent


def main():
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", required=True)
    p.add_argument("--glue", required=True)
    p.add_argument("--run", default="runs/glue-demo")
    p.add_argument("--teacher-steps", type=int, default=3000)
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--lr", type=float, action="append")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte", "cola", "qnli"])
    args = p.parse_args()
    run = Path(args.run)
    t0 = time.perf_counter()
    cfg = SearchConfig(space=str(HERE / "search_spaces/demo.toml"), corpus=(args.corpus,),
                       teacher_steps=args.teacher_steps)
    result = run_search(run, cfg, progress=False)
    t_search = time.perf_counter() - t0
    print(f"search: {result.best.arch.label()} chosen in {t_search:.0f} s", flush=True)
    student = run / "student"
    if not (student / "model.safetensors").is_file():
        s = pretrain(run, student, cfg=PretrainConfig(steps=args.pretrain_steps,
                                                      lr=args.pretrain_lr), progress=False)
        print(f"pretrain: held-out MLM accuracy {s['heldout_accuracy']:.3f} (teacher "
              f"{s['teacher_heldout_accuracy']:.3f})", flush=True)
    t_pre = time.perf_counter() - t0 - t_search
    t1 = time.perf_counter()
    fcfg = FinetuneConfig(lrs=tuple(args.lr or (1e-4, 5e-4)), epochs=args.epochs,
                          seeds=args.seeds)
    table = glue([run], args.glue, run / "glue", args.tasks, fcfg, progress=False)
    t_glue = time.perf_counter() - t1
    print(format_table(table, args.tasks))
    print(json.dumps({"search_s": round(t_search), "pretrain_s": round(t_pre),
                      "glue_s": round(t_glue), "load": os.getloadavg()[0],
                      "finetune": {"lrs": list(fcfg.lrs), "epochs": fcfg.epochs,
                                   "seeds": fcfg.seeds}}))


if __name__ == "__main__":
    main()
