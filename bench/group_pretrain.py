"""What pretraining several students in one group saves: the teacher paid once a batch.

With a 30,522-word teacher of 22.7M parameters (all-MiniLM-L6-v2's encoder with a
masked-LM head) the teacher's forward pass is most of a small student's
distillation step on a CPU. `pretrain --arch A --arch B …` (`fit_group`) computes
each batch and the teacher's outputs on it once for all the students; separately,
each student's run pays them again. This bench distils the same students for the
same steps both ways, in interleaved rounds (round 0, where the programs compile,
is dropped; the later rounds alternate which way goes first), and reports process
CPU seconds and wall seconds per way, the saving, and the load average; it also
checks that the two ways give the same weights, and that training moved them.
Each way includes its run's fixed costs: a separate run computes the teacher's
outputs on the held-out batches once per student, the group once. The teacher's
weights do not change the timing; any masked-LM folder serves. Writes
bench/results/group_pretrain.json.

    python bench/group_pretrain.py [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GUTENBERG = ROOT.parent / "shared" / "data" / "gutenberg" / "valid.txt"
STUDENTS = [(2, 2, 128, 512), (2, 4, 256, 1024), (4, 4, 256, 1024), (4, 12, 384, 1024)]


def main(argv=None) -> int:
    from bortsearch.process import setup_process

    setup_process()  # before the first JAX computation
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--teacher", help="a masked-LM folder (default: MiniLM with a new head)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)

    import jax

    from bortsearch.data.batches import BatchSpec, load_data
    from bortsearch.data.corpus import resolve_corpus
    from bortsearch.model.encoder import inherit_params
    from bortsearch.model.hf import load_checkpoint, load_encoder_with_new_head
    from bortsearch.train.fit import Member, fit, fit_group
    from bortsearch.train.step import LossConfig, OptimConfig

    if args.teacher:
        teacher = load_checkpoint(args.teacher)
    else:
        from minilm_teacher import minilm_folder

        teacher = load_encoder_with_new_head(minilm_folder())
    data = load_data(resolve_corpus([str(GUTENBERG)]), teacher.tokenizer, BatchSpec(16, 128))
    optim, loss = OptimConfig(steps=args.steps), LossConfig()
    archs = [teacher.arch.with_size(*s) for s in STUDENTS]
    starts = [inherit_params(a, teacher.arch, teacher.params, 0) for a in archs]
    kw = dict(teacher=teacher, loss_cfg=loss, eval_every=10**9, checkpoint_every=10**9,
              progress=False)

    def separate(work: Path):
        return [fit(a, data, optim, 5e-4, s, work / f"alone-{i}", **kw).params
                for i, (a, s) in enumerate(zip(archs, starts))]

    def grouped(work: Path):
        members = [Member(a, s, work / f"group-{i}") for i, (a, s) in
                   enumerate(zip(archs, starts))]
        return [r.params for r in fit_group(members, data, optim, 5e-4, **kw)]

    rows, outputs = [], {}
    for r in range(args.rounds):
        for name, way in (("separate", separate), ("group", grouped)) if r % 2 == 0 else \
                (("group", grouped), ("separate", separate)):
            with tempfile.TemporaryDirectory() as tmp:
                load0, c0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
                outputs[name] = way(Path(tmp))
                rows.append({"round": r, "way": name, "cpu_s": time.process_time() - c0,
                             "wall_s": time.perf_counter() - t0, "load_average": load0})
            print(rows[-1], flush=True)
    same = all(bool((np.asarray(x) == y).all())
               for a, b in zip(outputs["separate"], outputs["group"])
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    moved = all(any(bool((np.asarray(x) != y).any()) for x, y in
                    zip(jax.tree.leaves(a), jax.tree.leaves(s)))
                for a, s in zip(outputs["group"], starts))
    assert moved, "training left a student's weights unchanged"
    kept = [row for row in rows if row["round"] > 0]  # round 0 compiles

    def median(way, key):
        return float(np.median([row[key] for row in kept if row["way"] == way]))

    report = {
        "teacher": teacher.arch.label(), "students": [a.label() for a in archs],
        "steps": args.steps, "batch": "16 x 128", "rounds": rows, "identical_weights": same,
        "device": "CPU (2 cores)",
        **{f"{w}_{k}": median(w, k) for w in ("separate", "group") for k in ("cpu_s", "wall_s")},
    }
    report["cpu_saving"] = 1 - report["group_cpu_s"] / report["separate_cpu_s"]
    report["wall_saving"] = 1 - report["group_wall_s"] / report["separate_wall_s"]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "group_pretrain.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(archs)} students x {args.steps} steps, teacher {teacher.arch.label()}: "
          f"separately {report['separate_cpu_s']:.0f} CPU-s ({report['separate_wall_s']:.0f} s "
          f"wall), in one group {report['group_cpu_s']:.0f} CPU-s "
          f"({report['group_wall_s']:.0f} s): {100 * report['cpu_saving']:.0f}% less CPU "
          f"time; identical weights: {same}; load average "
          f"{np.mean([r['load_average'] for r in kept]):.1f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
