"""The training loop: maximum-point training, pretraining and fine-tuning all run
`run_steps` over a state that `resume` restored from its folder.

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

from bortsearch.config import option, positive_float, positive_int
from bortsearch.errors import UserError
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import DTYPES
from bortsearch.runio import progress_bar
from bortsearch.train.step import (
    LossConfig,
    OptimConfig,
    evaluate,
    forward_flops_per_token,
    from_legacy,
    init_state,
    legacy_state,
    teacher_logits,
    teacher_targets,
    train_flops_per_token,
    train_step,
)


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


def checkpointer(directory: Path):
    """An Orbax checkpoint manager for `directory`: the last two steps kept, written
    synchronously (a step counts as saved when the call returns)."""
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


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop journal lines a killed run wrote after its last checkpoint."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in keep))


@dataclasses.dataclass
class Member:
    """One model of a group trained on the same batches: what it is, where it
    starts, and its own work folder (checkpoints, `metrics.jsonl`)."""

    arch: Arch
    params: object
    workdir: Path
    desc: str = "training"
    loss_cfg: LossConfig | None = None  # its own distillation loss; None: the group's


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The training-loop options the commands share (`teacher`, `pretrain`, `finetune`,
    `search`), declared here once: each command's config takes them with `same_option`
    and its own default (this class is their declaration, not built at run time)."""

    steps: int = option(1000, "training steps", type=positive_int)
    lr: float = option(1e-4, "peak learning rate", type=positive_float)
    eval_every: int = option(100, "steps between held-out evaluations", type=positive_int)
    checkpoint_every: int = option(100, "steps between resumable checkpoints",
                                   type=positive_int)
    dtype: str = option("float32", "compute dtype of training: float32, or bfloat16 for "
                        "GPU/TPU (parameters, optimiser, softmax and loss stay float32; "
                        "slower on a CPU)", choices=DTYPES)


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
    return fit_group([Member(arch, params, workdir, desc)], data, optim, lr, teacher=teacher,
                     loss_cfg=loss_cfg, eval_every=eval_every,
                     checkpoint_every=checkpoint_every, progress=progress, dtype=dtype)[0]


def resume(workdir: Path, state, optim: OptimConfig, journal: str | None = None,
           primary: bool = True):
    """A training state's checkpoint manager, and the state restored from its latest
    checkpoint in `workdir/checkpoints` (step 0 and `state` when there is none).

    Args:
      workdir: the run's folder (created if absent).
      state: the fresh `TrainState`, whose shapes, dtypes and shardings the restored
        one takes.
      optim: the optimiser (the layout of its state).
      journal: a JSON-lines file in `workdir` with a "step" per line; its lines past
        the restored step (written after the last checkpoint) are dropped, so a
        resumed run writes them once.
      primary: whether this process writes (the journal is trimmed by process 0).

    Returns:
      (manager, start step, state).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    manager = checkpointer(workdir / "checkpoints")
    start, state = restore_latest(manager, state, optim)
    if journal is not None and primary:
        trim_metrics(workdir / journal, start)
    return manager, start, state


def run_steps(start: int, steps: int, step, *, eval_every: int, checkpoint_every: int,
              evaluate, save, bar=None) -> None:
    """Steps `start` .. `steps` - 1 of a training loop, one step in flight.

    Args:
      step: `step(k)` takes step k and returns an array of it to wait on (its loss);
        the host prepares step k + 1 while step k runs.
      evaluate, save: `evaluate(done)` after every `eval_every` steps and the last;
        then `save(done)` after every `checkpoint_every` steps and the last, so a
        checkpoint follows what was logged before it.
      bar: a progress bar updated by one per finished step.
    """
    in_flight = None
    for k in range(start, steps):
        out = step(k)
        jax.block_until_ready(in_flight)  # the bar reports finished steps, not queued ones
        in_flight = out
        done = k + 1
        if done % eval_every == 0 or done == steps:
            evaluate(done)
        if done % checkpoint_every == 0 or done == steps:
            save(done)
        if bar is not None:
            bar.update(1)


class _Trainee:
    """A member's live state in `fit_group`: its train state, checkpoints and log."""

    def __init__(self, m: Member, data, optim: OptimConfig, lr: float, replicated,
                 primary: bool, loss_cfg: LossConfig | None):
        if jax.process_count() > 1:
            _check_processes_agree(m.params, data, 0)
        self.member = m
        self.manager, self.start, self.state = resume(
            m.workdir, place(init_state(m.params, lr, optim), replicated), optim,
            "metrics.jsonl", primary)
        self.log = open(m.workdir / "metrics.jsonl" if primary else os.devnull, "a")
        self.flops_per_step = train_flops_per_token(m.arch, data.spec.seq_len,
                                                    data.spec.predictions) \
            * data.tokens_per_batch()
        self.last_eval: dict = {}
        self.metrics: dict = {}
        self.loss_cfg = m.loss_cfg or loss_cfg


def fit_group(members: list[Member], data, optim: OptimConfig, lr: float, *, teacher=None,
              loss_cfg: LossConfig | None = None, eval_every: int = 100,
              checkpoint_every: int = 100, progress: bool = True,
              dtype: str = "float32") -> list[FitResult]:
    """`fit` for several models on one batch stream: each batch is placed, and the
    teacher's outputs on it computed, once for all of them, then each member takes
    its own step (the same compiled step a lone `fit` runs, so each result is the
    one `fit` gives that member alone). Each member resumes from its own folder; a
    step is computed for the members that have not yet taken it."""
    from bortsearch.train.distributed import is_primary

    batch_sharding, replicated = data_mesh(data.spec.batch_size)
    primary = is_primary()  # the one process of a multi-process job that logs
    group = [_Trainee(m, data, optim, lr, replicated, primary, loss_cfg) for m in members]
    t_params = place(teacher.params, replicated) if teacher is not None else None
    heldout = [place(b, batch_sharding) for b in data.heldout_batches()]
    heldout_teacher = ([teacher_logits(teacher.arch, t_params, b) for b in heldout]
                       if teacher is not None else None)
    teacher_flops_per_step = 0.0 if teacher is None else forward_flops_per_token(
        teacher.arch, data.spec.seq_len, data.spec.predictions) * data.tokens_per_batch()
    first = min(t.start for t in group)
    desc = members[0].desc if len(members) == 1 else f"{len(members)} students"
    bar = progress_bar(total=optim.steps, initial=first, desc=desc, unit="step",
                       disable=not (progress and primary))
    teacher_steps = 0

    def due(done: int) -> list[_Trainee]:  # the members that take step done - 1
        return [t for t in group if t.start < done]

    def step(k: int):
        nonlocal teacher_steps
        batch = place(data.train_batch(k), batch_sharding)
        targets = None
        if teacher is not None:
            targets = teacher_targets(teacher.arch, t_params, batch, loss_cfg.temperature,
                                      dtype, loss_cfg.hidden_weight > 0)
            teacher_steps += 1
        for t in due(k + 1):
            t.state, t.metrics = train_step(
                t.state, batch, targets, arch=t.member.arch, cfg=optim,
                loss_cfg=t.loss_cfg if teacher is not None else None, dtype=dtype)
        return [t.metrics["loss"] for t in due(k + 1)]

    def evaluate_all(done: int) -> None:
        members = due(done)
        for t in members:
            _log_eval(t, done, heldout, heldout_teacher, bar if t is members[0] else None)

    def save(done: int) -> None:
        for t in due(done):
            t.manager.save(done, args=save_args(t.state))

    t0 = time.perf_counter()
    try:
        run_steps(first, optim.steps, step, eval_every=eval_every,
                  checkpoint_every=checkpoint_every, evaluate=evaluate_all, save=save, bar=bar)
        jax.block_until_ready([t.state for t in group])
    finally:
        for t in group:
            t.log.close()
    seconds = time.perf_counter() - t0
    bar.close()
    results = []
    for t in group:
        t.manager.close()
        if not t.last_eval:  # resumed after the last step: evaluate what was restored
            t.last_eval = evaluate(t.member.arch, t.state.params, heldout, heldout_teacher)
        ran = optim.steps - t.start
        per_s = (optim.steps - first) / max(seconds, 1e-9)  # the group's steps per second
        teacher_per_s = teacher_steps * teacher_flops_per_step / max(seconds, 1e-9)
        students = sum(x.flops_per_step * (optim.steps - x.start) for x in group) \
            / max(seconds, 1e-9)
        last = {**t.last_eval, "tokens_per_s": per_s * data.tokens_per_batch(),
                # this student's training FLOPs; the teacher's forward apart (paid once
                # for the group), then the group's total
                "model_flops_per_s": ran * t.flops_per_step / max(seconds, 1e-9),
                "teacher_flops_per_s": teacher_per_s,
                "total_flops_per_s": students + teacher_per_s,
                "teacher_flops_share": teacher_per_s / max(students + teacher_per_s, 1e-30),
                "group_size": len(group)}
        results.append(FitResult(jax.device_get(t.state.params), last, seconds, ran))
    return results


def _log_eval(t: _Trainee, done: int, heldout, heldout_teacher, bar) -> None:
    """Evaluate a member on the held-out set and append the line to its journal."""
    t.last_eval = evaluate(t.member.arch, t.state.params, heldout, heldout_teacher)
    record = {"step": done, "devices": jax.device_count(),
              **{k: float(v) for k, v in t.metrics.items()},
              **{f"heldout_{k}": v for k, v in t.last_eval.items()}}
    t.log.write(json.dumps(record) + "\n")
    t.log.flush()
    if bar is not None:
        shown = {"loss": f"{record['loss']:.3f}", "acc": f"{t.last_eval['accuracy']:.3f}"}
        if "kd_ce" in t.last_eval:
            shown["kd"] = f"{t.last_eval['kd_ce']:.3f}"
        bar.set_postfix(shown, refresh=False)


def save_args(state):
    """Orbax's arguments that save a training state (`manager.save(step, args=...)`)."""
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(state)
