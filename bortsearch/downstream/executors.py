"""Where fine-tuning trials train when not here: a Ray cluster, one task per
(model, task, learning rate, seed), with the conventions of the search's
`--executor ray` (`--ray-address`, `--worker-cpus`, `--worker-gpus`,
`--max-retries`).

Workers need no shared file system: each job's encoder weights (NumPy), encoded
splits and settings go into the object store once; a worker runs `run_trial` in a
temporary folder and returns the trial's result and files (its evaluations and
best weights), which the driver, the only writer of the output folders, puts in
place (`result.json` last, the trial's completion mark). A finished trial is
never sent again, so an interrupted grid resumes; a trial whose worker died is
retried by Ray from its start (the worker's checkpoints are its own).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bortsearch.errors import UserError
from bortsearch.process import setup_process


def _ray_trial(encoder, task, train, devs, cfg, lr: float, seed: int):
    """A Ray task: one fine-tuning trial in a temporary folder; its result and files."""
    setup_process()
    import tempfile
    from pathlib import Path

    from bortsearch.downstream.finetune import run_trial
    from bortsearch.runio import enable_compilation_cache

    enable_compilation_cache()
    with tempfile.TemporaryDirectory(prefix="bortsearch-trial-") as d:
        work = Path(d) / "trial"
        result = run_trial(encoder, task, train, devs, cfg, lr, seed, work)
        files = {name: (work / name).read_bytes() for name in ("evals.jsonl", "best.safetensors")
                 if (work / name).is_file()}
    return result, files


@dataclasses.dataclass
class RayTrials:
    """Fine-tuning trials as Ray tasks (attributes as `search.executors.RayExecutor`'s)."""

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    max_retries: int = 2

    def __call__(self, todo: list, bar) -> None:
        import jax

        from bortsearch.downstream.finetune import _trial_dir
        from bortsearch.runio import write_atomic, write_json
        from bortsearch.search.executors import RayExecutor

        cluster = RayExecutor(self.address, self.num_cpus, self.num_gpus, self.max_retries)
        ray = cluster.connect()
        remote = ray.remote(_ray_trial).options(max_retries=self.max_retries,
                                                retry_exceptions=False,
                                                **cluster.resources(ray))
        refs, pending = {}, {}
        for job, lr, seed in todo:
            if id(job) not in refs:  # into the object store once per job
                encoder = dataclasses.replace(
                    job.encoder, params=jax.tree.map(np.asarray, job.encoder.params))
                refs[id(job)] = [ray.put(x) for x in (encoder, job.task, job.train, job.devs,
                                                      job.cfg)]
            pending[remote.remote(*refs[id(job)], lr, seed)] = (job, lr, seed)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job, lr, seed = pending.pop(done[0])
            try:
                result, files = ray.get(done[0])
            except ray.exceptions.RayError as e:
                for ref in pending:
                    ray.cancel(ref)
                reason = str(e).strip().splitlines()[0][:200]
                raise UserError(f"the fine-tuning trial lr {lr:g}, seed {seed} of {job.out} "
                                f"failed after {self.max_retries} retries ({reason}); re-run "
                                f"the same command to train it again (finished trials are "
                                f"kept)") from None
            work = _trial_dir(job.out, lr, seed)
            for name, data in files.items():
                write_atomic(work / name, data)
            write_json(work / "result.json", result)  # last: the trial's completion mark
            bar.update(job.steps_per_trial)
