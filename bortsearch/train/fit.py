"""The training loop shared by maximum-point training and pretraining.

Data parallel over every local device: a one-axis mesh ("data") shards each
batch along its rows and replicates the state; XLA inserts the gradient
all-reduce. The same code runs on one CPU, several forced host devices, a GPU
or a TPU host. Multi-process (train/distributed.py): after
`jax.distributed.initialize`, the mesh spans `jax.devices()` of every process,
each process places its own rows of the same global batch, and only process 0
writes the metrics; Orbax writes each checkpoint once for all.

Resumable: Orbax checkpoints of the training state every `checkpoint_every`
steps; batches are a pure function of the step, so the step is the data
position and a resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bortsearch.model.arch import Arch
from bortsearch.errors import UserError
from bortsearch.train.step import (LossConfig, OptimConfig, evaluate, forward_flops_per_token,
                              from_legacy, init_state, legacy_state, teacher_logits,
                              teacher_targets, train_flops_per_token, train_step)


@dataclasses.dataclass(frozen=True)
class FitResult:
    params: object
    heldout: dict  # the final held-out evaluation
    train_seconds: float  # wall-clock of this process's steps
    steps_run: int  # steps this process ran (fewer after a resume)


def data_mesh(batch_size: int) -> tuple[NamedSharding, NamedSharding]:
    """(batch sharding, replicated sharding) over all devices of all processes."""
    devices = jax.devices()
    if batch_size % len(devices):
        where = (f" of {jax.process_count()} processes" if jax.process_count() > 1 else "")
        raise UserError(f"--batch-size {batch_size} must be a multiple of the "
                        f"{len(devices)} devices{where} the batch is split across")
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def progress_bar(**kwargs):
    """A tqdm bar: live on a terminal, a line every 30 s in a log file."""
    import sys

    from tqdm import tqdm

    return tqdm(mininterval=0.5 if sys.stderr.isatty() else 30, dynamic_ncols=True, **kwargs)


def _checkpointer(directory: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        directory.resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))


def restore_latest(manager, state, optim: OptimConfig):
    """(step, state) of the manager's latest checkpoint, restored into the shapes,
    dtypes and shardings of `state`; (0, state) when there is none."""
    step = manager.latest_step() or 0
    if step:
        state = restore_checkpoint(manager, step, state, optim)
    return step, state


def restore_checkpoint(manager, step: int, item, optim: OptimConfig):
    """Checkpoint `step` restored into the shapes of `item`: a `TrainState`, or a
    dict holding one under "state". A checkpoint written before the optimiser's
    state was one flat vector (Adam's moments as trees) is read in that layout and
    converted, so a run in progress resumes across the change."""
    import orbax.checkpoint as ocp

    def swap(f, x):
        return {**x, "state": f(x["state"])} if isinstance(x, dict) else f(x)

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, item)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:
        if "mismatch" not in str(e):
            raise
        try:
            old = manager.restore(step, args=ocp.args.StandardRestore(
                swap(lambda s: legacy_state(s, optim), abstract)))
        except ValueError:
            raise e from None
    return swap(lambda s: from_legacy(s, optim), old)


def place(tree, sharding):
    """Host arrays onto `sharding`. In a multi-process job every process holds the
    whole (identical) value and hands over its own devices' part: `device_put`
    would first all-gather the whole value to check that it is identical, at
    every step (`_check_processes_agree` checks once, by CRC)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


def _check_processes_agree(params, data, step: int) -> None:
    """Refuse a multi-process job whose processes would train different things: a
    CRC of the starting weights and of the global batch at `step`, compared
    across processes (each builds both itself, from its own files and flags)."""
    import zlib

    from jax.experimental import multihost_utils

    def crc(arrays):
        value = 0
        for a in arrays:
            value = zlib.crc32(np.ascontiguousarray(a).tobytes(), value)
        return value

    batch = data.train_batch(step)
    mine = np.array([crc(jax.tree.leaves(jax.device_get(params))),
                     crc(batch[k] for k in sorted(batch))], np.uint32)
    try:
        multihost_utils.assert_equal(mine)
    except AssertionError:
        raise UserError("the processes of this job start from different weights or data; "
                        "give every process the same command, files and corpus (only "
                        "--process-id differs)") from None


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop journal lines a killed run wrote after its last checkpoint."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in keep))


def fit(arch: Arch, data, optim: OptimConfig, lr: float, params, workdir: Path, *,
        teacher=None, loss_cfg: LossConfig | None = None, eval_every: int = 100,
        checkpoint_every: int = 100, progress: bool = True, desc: str = "training",
        dtype: str = "float32") -> FitResult:
    """Train `params` for `optim.steps` steps; resume from `workdir` if it holds a checkpoint.

    Args:
      arch, params: the model to train and its starting parameters.
      data: an `MLMData`; batch `k` is step `k`'s.
      optim, lr: the optimiser and its peak learning rate.
      workdir: checkpoints and `metrics.jsonl` (one JSON line per logged step).
      teacher: a `Model` to distil from (with `loss_cfg`), or None for plain masked LM.
      dtype: the compute dtype of the student's step and the teacher's forward
        (parameters, optimiser and held-out evaluation stay float32).
    """
    from bortsearch.train.distributed import is_primary

    workdir.mkdir(parents=True, exist_ok=True)
    batch_sharding, replicated = data_mesh(data.spec.batch_size)
    if jax.process_count() > 1:
        _check_processes_agree(params, data, 0)
    state = place(init_state(params, lr, optim), replicated)
    manager = _checkpointer(workdir / "checkpoints")
    start, state = restore_latest(manager, state, optim)
    primary = is_primary()  # the one process of a multi-process job that logs
    metrics_path = workdir / "metrics.jsonl"
    if primary:
        _trim_metrics(metrics_path, start)

    t_params = place(teacher.params, replicated) if teacher is not None else None
    heldout = [place(b, batch_sharding) for b in data.heldout_batches()]
    heldout_teacher = ([teacher_logits(teacher.arch, t_params, b) for b in heldout]
                       if teacher is not None else None)
    flops_per_step = train_flops_per_token(arch, data.spec.seq_len, data.spec.predictions) \
        * data.tokens_per_batch()
    teacher_flops_per_step = 0.0 if teacher is None else forward_flops_per_token(
        teacher.arch, data.spec.seq_len, data.spec.predictions) * data.tokens_per_batch()
    last_eval: dict = {}
    bar = progress_bar(total=optim.steps, initial=start, desc=desc, unit="step",
                       disable=not (progress and primary))
    t0, metrics, in_flight = time.perf_counter(), {}, None
    with open(metrics_path if primary else os.devnull, "a") as log:
        for step in range(start, optim.steps):
            batch = place(data.train_batch(step), batch_sharding)
            targets = (teacher_targets(teacher.arch, t_params, batch, loss_cfg.temperature, dtype)
                       if teacher is not None else None)
            state, metrics = train_step(state, batch, targets, arch=arch, cfg=optim,
                                        loss_cfg=loss_cfg if teacher is not None else None,
                                        dtype=dtype)
            # One step in flight: the host prepares batch k+1 while step k runs, and
            # the bar reports finished steps rather than queued ones.
            jax.block_until_ready(in_flight)
            in_flight = metrics["loss"]
            done = step + 1
            if done % eval_every == 0 or done == optim.steps:
                last_eval = evaluate(arch, state.params, heldout, heldout_teacher)
                record = {"step": done, "devices": jax.device_count(),
                          **{k: float(v) for k, v in metrics.items()},
                          **{f"heldout_{k}": v for k, v in last_eval.items()}}
                log.write(json.dumps(record) + "\n")
                log.flush()
                shown = {"loss": f"{record['loss']:.3f}", "acc": f"{last_eval['accuracy']:.3f}"}
                if "kd_ce" in last_eval:
                    shown["kd"] = f"{last_eval['kd_ce']:.3f}"
                bar.set_postfix(shown, refresh=False)
            if done % checkpoint_every == 0 or done == optim.steps:
                manager.save(done, args=_save_args(state))
            bar.update(1)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    bar.close()
    manager.close()
    if not last_eval:  # resumed after the last step: evaluate what was restored
        last_eval = evaluate(arch, state.params, heldout, heldout_teacher)
    ran = optim.steps - start
    per_s = ran / max(seconds, 1e-9)
    last_eval = {**last_eval, "tokens_per_s": per_s * data.tokens_per_batch(),
                 # the student's training FLOPs; the teacher's forward apart, then both
                 "model_flops_per_s": per_s * flops_per_step,
                 "teacher_flops_per_s": per_s * teacher_flops_per_step,
                 "total_flops_per_s": per_s * (flops_per_step + teacher_flops_per_step),
                 "teacher_flops_share": teacher_flops_per_step
                 / (flops_per_step + teacher_flops_per_step)}
    return FitResult(jax.device_get(state.params), last_eval, seconds, ran)


def _save_args(state):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(state)
