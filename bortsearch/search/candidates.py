"""The evaluator of Algorithm 1: brief distillation of candidates against T.

Candidates train in lockstep groups: for each batch the teacher's logits are
computed once and every candidate of the group takes its step on them, so the
teacher costs one forward pass per batch per group rather than per candidate.
The trials of one architecture — N seeds × the settings θ ∈ Θ — are two leading
axes of its training state under `jax.vmap`: one compiled step trains them all.
Seed j draws the initialisation, the training order and the masking from
`seed + j`; every candidate gets the same seeds, so all see the same batches in
the same order. Each trial is measured on the fixed held-out batches B: ê, the KD
cross-entropy against T at τ = 1, and KL(T ‖ S) = ê − H_T.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bortsearch.model.arch import Arch
from bortsearch.model.encoder import Model, inherit_params, init_params, param_shapes
from bortsearch.model.proxies import param_count
from bortsearch.search.algorithm import FAILED, Evaluation, summarise
from bortsearch.train.step import (
    LossConfig,
    OptimConfig,
    Targets,
    eval_sums_many,
    init_state,
    teacher_entropy_sums,
    teacher_logits,
    teacher_targets,
    train_flops_per_token,
    train_step_many,
)

GROUP_MEMORY_BYTES = 2 << 30  # parameters + Adam moments + gradients of a group, float32


@dataclasses.dataclass(frozen=True)
class CandidateSettings:
    """s, Θ, seeds, initialisation and loss of the brief training (Algorithm 1 step 5)."""

    steps: int = 200
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    warmup: float = 0.05
    loss: LossConfig = LossConfig()
    seed: int = 0
    seeds: int = 2  # N: trials per θ, from seeds seed, seed + 1, ...
    init: str = "teacher"  # inherit the teacher's weights [ours], or "random" [paper]
    layers: str = "uniform"  # which teacher layers a shallower student inherits (LAYER_RULES)
    error: str = "kl"  # the error W uses: "kl" (ê − H_T) or "ce" (ê) [paper]
    group_size: int | None = None  # None: as many as fit GROUP_MEMORY_BYTES
    dtype: str = "float32"  # the compute dtype of students and teacher (model.DTYPES)
    # Successive halving over Θ [ours]: after this fraction of s, every θ whose mean
    # error over the seeds is worse than the best θ's by more than HALVING_Z standard
    # errors stops; the rest train on. None (or one θ, or one seed): all run to s.
    halving: float | None = None

    @property
    def halving_step(self) -> int | None:
        if self.halving is None or len(self.lrs) < 2 or self.seeds < 2:
            return None
        h = round(self.halving * self.steps)
        return h if 0 < h < self.steps else None


HALVING_Z = 3.0  # a θ stops when its mean error is this many standard errors worse


@dataclasses.dataclass(frozen=True)
class Timing:
    """Where one candidate's time went (seconds), for the benchmark and the journal."""

    compile_s: float  # what the search waited for its compiles (the critical path)
    train_s: float
    teacher_s: float  # this candidate's share of the group's teacher forwards
    eval_s: float
    tokens_per_s: float
    model_flops_per_s: float
    resumed_from: int = 0  # the step its training continued from after a kill (0: fresh)
    compile_busy_s: float = 0.0  # its compiles' own duration, overlapped with other work or not
    node: str = ""  # the Ray node that trained it (empty: this process)
    trial_steps: int = 0  # optimiser steps over all its trials (the work; halving saves some)
    halved_at: int = 0  # the step at which θ were dropped (0: none were)
    dropped: tuple = ()  # those θ, and their mean error then: ((θ, error), ...)
    layers: tuple = ()  # the teacher layer (group) each layer (group) inherited; () if none


@dataclasses.dataclass
class Live:
    """One candidate of a lockstep group in training: its trials' state and step, what
    it has cost so far, and what halving and checkpoints did to it."""

    state: Any  # TrainState with leading axes N seeds × |Θ| (kept θ after halving)
    step: Callable  # the compiled training step (for the kept θ after halving)
    evaluate: Any  # the held-out evaluation: a future until `_evaluator` waits for it
    losses: list = dataclasses.field(default_factory=list)  # per step, N x |Θ|
    compile_s: float = 0.0  # what the search waited for its compiles
    compile_busy_s: float = 0.0  # its compiles' own duration
    train_s: float = 0.0
    kept: list | None = None  # the θ indices kept by halving (None: all)
    dropped: dict = dataclasses.field(default_factory=dict)  # θ index -> its error then
    halved_at: int = 0  # the step of halving (0: none yet)
    eval_ready: bool = False
    reduced: Any = None  # the step compiled for the kept θ, a future, if any
    start: int = 0  # trained by this process from this step (restored past it)
    manager: Any = None  # its Orbax checkpoint manager, once it has checkpoints


def groups(archs: list[Arch], n_trials: int, group_size: int | None) -> list[list[Arch]]:
    """Consecutive groups, bounded by count or by the float32 training-state memory."""
    out: list[list[Arch]] = []
    used = 0
    for a in archs:
        need = 4 * param_count(a) * 4 * n_trials  # params, two moments, gradients
        if not out or (len(out[-1]) >= group_size if group_size
                       else used + need > GROUP_MEMORY_BYTES):
            out.append([])
            used = 0
        out[-1].append(a)
        used += need
    return out


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The held-out batches B, the teacher's logits on them, and what ê is made of
    there (`error_baselines`): computed once per search."""

    batches: list
    teacher: list
    baselines: dict

    @classmethod
    def of(cls, teacher: Model, data) -> HeldOut:
        batches = [jax.device_put(b) for b in data.heldout_batches()]
        logits = jax.block_until_ready(
            [teacher_logits(teacher.arch, teacher.params, b) for b in batches])
        return cls(batches, logits, error_baselines(
            batches, logits, data.unigram_log_probs(teacher.num_labels or teacher.arch.vocab_size)))


class CandidateTrainer:
    """`evaluate(archs) -> {arch: Evaluation}` for `bortsearch.search.algorithm.algorithm1`.

    Args:
      teacher: T, frozen.
      data: the `MLMData` every candidate trains and is measured on.
      settings: s, Θ, loss, seed, group size.
      on_start, on_done: called per candidate (the run journal, the progress bar).
      on_step: called once per lockstep step with the group size.
      reference: the held-out batches with T's outputs, if already computed.
      checkpoints: a folder for candidates' training states (Orbax, every
        `checkpoint_every` steps, one sub-folder per candidate, removed when it
        is done): a group killed part-way continues from there, with the same
        results as an uninterrupted run. None keeps no checkpoints.
    """

    def __init__(self, teacher: Model, data, settings: CandidateSettings,
                 on_start: Callable[[Arch], None] = lambda a: None,
                 on_done: Callable[[Arch, Evaluation, Timing | None], None] = lambda *a: None,
                 on_step: Callable[[int], None] = lambda n: None,
                 reference: HeldOut | None = None, checkpoints: Path | None = None,
                 checkpoint_every: int = 50):
        self.checkpoints, self.checkpoint_every = checkpoints, checkpoint_every
        self.teacher, self.data, self.settings = teacher, data, settings
        self.on_start, self.on_done, self.on_step = on_start, on_done, on_step
        self.optim = OptimConfig(steps=settings.steps, warmup=settings.warmup)
        self.streams = [data] + [data.with_seed(settings.seed + j)
                                 for j in range(1, settings.seeds)]
        self.reference = reference or HeldOut.of(teacher, data)
        self.heldout, self.heldout_teacher = self.reference.batches, self.reference.teacher
        self._layer_maps: dict[Arch, list[int]] = {}

    @property
    def n_trials(self) -> int:
        return self.settings.seeds * len(self.settings.lrs)

    def __call__(self, archs: list[Arch]) -> dict[Arch, Evaluation]:
        results: dict[Arch, Evaluation] = {}
        plan = groups(list(archs), self.n_trials, self.settings.group_size)
        # Compiles run on a thread beside training: a group's held-out evaluation
        # compiles while the group trains, and so do the next group's programs (on
        # a GPU host the CPU is otherwise idle while a group trains). One program
        # at a time: XLA already compiles each on several threads, and two at once
        # contend for the one malloc arena (allocator.py): the demo's 12 steps were
        # ready after 54 s on two threads against 42 s on one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            compiling = self.compile_group(plan[0], pool) if plan else {}
            for i, group in enumerate(plan):
                ready = compiling
                if i + 1 < len(plan):
                    compiling = self.compile_group(plan[i + 1], pool)
                results.update(self.train_group(group, ready))
        return results

    def compile_group(self, archs: list[Arch], pool) -> dict[Arch, dict]:
        """Submit the candidates' programs to `pool`, every training step first,
        then every held-out evaluation (XLA compiles without the GIL, beside
        training). Returns each candidate's two futures."""
        n, lrs = self.settings.seeds, len(self.settings.lrs)

        def step(arch):
            t0 = time.perf_counter()
            state = self._initial_state(arch)
            return state, self._compile_step(arch, state), time.perf_counter() - t0

        def evaluate(arch):
            t0 = time.perf_counter()
            params = jax.tree.map(lambda x: jax.ShapeDtypeStruct((n, lrs, *x.shape), x.dtype),
                                  param_shapes(arch, self.teacher.num_labels))
            program = eval_sums_many.lower(arch, params, self.heldout[0],
                                           self.heldout_teacher[0]).compile()
            return program, time.perf_counter() - t0

        def reduced(arch):  # the step for one θ fewer, which halving will need
            t0 = time.perf_counter()
            state = jobs[arch]["step"].result()[0]  # done: the pool runs jobs in order
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                (x.shape[0], lrs - 1, *x.shape[2:]), x.dtype), state)
            return self._compile_step(arch, abstract), time.perf_counter() - t0

        jobs = {arch: {"step": pool.submit(step, arch)} for arch in archs}
        for arch in archs:
            jobs[arch]["evaluate"] = pool.submit(evaluate, arch)
        if self.settings.halving_step is not None:
            for arch in archs:
                jobs[arch]["reduced"] = pool.submit(reduced, arch)
        return jobs

    def _compile_step(self, arch: Arch, state):
        """The training step of `arch` compiled for states of `state`'s shapes (any
        number of seeds and θ)."""
        return train_step_many.lower(state, *self._step_inputs, arch=arch, cfg=self.optim,
                                     loss_cfg=self.settings.loss,
                                     dtype=self.settings.dtype).compile()

    @functools.cached_property
    def _step_inputs(self):
        """The shapes of a training step's batch (N x B x ...) and teacher targets
        (N x B x P x V and N x B x P), which every candidate's step is compiled for."""
        batch = self.streams[0].train_batch(0)
        n, (b, p) = self.settings.seeds, batch["labels"].shape
        v = self.teacher.num_labels or self.teacher.arch.vocab_size
        return ({k: jax.ShapeDtypeStruct((n, *x.shape), x.dtype) for k, x in batch.items()},
                Targets(jax.ShapeDtypeStruct((n, b, p, v), np.float32),
                        jax.ShapeDtypeStruct((n, b, p), np.float32)))

    def _initial_state(self, arch: Arch):
        """Training states with leading axes N seeds × |Θ|."""
        s, t = self.settings, self.teacher
        layers = self.layers(arch) if s.init == "teacher" else None
        per_seed = []
        for j in range(s.seeds):
            params = (inherit_params(arch, t.arch, t.params, s.seed + j, layers=layers,
                                     num_labels=t.num_labels)
                      if s.init == "teacher" else init_params(arch, s.seed + j, t.num_labels))
            per_seed.append(init_state(params, 0.0, self.optim))
        stacked = jax.tree.map(
            lambda *xs: np.stack([np.repeat(np.asarray(x)[None], len(s.lrs), 0) for x in xs]),
            *per_seed)
        lr = np.broadcast_to(np.asarray(s.lrs, np.float32), (s.seeds, len(s.lrs)))
        return jax.device_put(stacked._replace(lr=np.ascontiguousarray(lr)))

    def layers(self, arch: Arch) -> list[int]:
        """The teacher layers `arch` inherits, by the settings' rule ("measured": on the
        first training batch, not on the held-out batches that score the candidates)."""
        from bortsearch.train.importance import inherited_layers

        if arch not in self._layer_maps:  # measured once, recorded with its timing
            t = self.teacher
            self._layer_maps[arch] = inherited_layers(
                self.settings.layers, arch, t.arch, t.params, lambda: self._layer_batch,
                self.settings.seed)
        return self._layer_maps[arch]

    @functools.cached_property
    def _layer_batch(self):
        """The first training batch and the teacher's logits on it, once per search."""
        batch = self.data.train_batch(0)
        return batch, teacher_logits(self.teacher.arch, self.teacher.params, batch)

    def _batches(self, step: int):
        """Batch `step` of every seed's stream: with a leading axis N, and merged
        into one batch of N·B rows for the teacher."""
        batches = [d.train_batch(step) for d in self.streams]
        stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        merged = {k: v.reshape(-1, *v.shape[2:]) for k, v in stacked.items()}
        return jax.device_put(stacked), jax.device_put(merged)

    def _teacher(self, merged) -> Targets:
        """T's distillation targets on the merged batch (once for every candidate and
        θ), split back into N x B x P x V and N x B x P."""
        targets = teacher_targets(self.teacher.arch, self.teacher.params, merged,
                                  self.settings.loss.temperature, self.settings.dtype)
        return jax.tree.map(lambda x: x.reshape(self.settings.seeds, -1, *x.shape[1:]), targets)

    def train_group(self, archs: list[Arch], compiled: dict[Arch, dict]) -> dict[Arch, Evaluation]:
        """Train one lockstep group and measure it; `compiled` is what
        `compile_group` returned for it."""
        s = self.settings
        live: dict[Arch, Live] = {}
        results: dict[Arch, Evaluation] = {}
        for arch in archs:
            self.on_start(arch)
        # What the search waited for (the critical path), shared out in proportion
        # to each candidate's own compile time (compiles overlap one another).
        t0 = time.perf_counter()
        for arch in archs:
            try:
                state, step, own = compiled[arch]["step"].result()
            except Exception as e:  # noqa: BLE001 -- out of memory, XLA errors: record, go on
                results[arch] = self._fail(arch, f"could not compile: {_short(e)}")
                continue
            live[arch] = Live(state, step, compiled[arch]["evaluate"], compile_s=own,
                              compile_busy_s=own, reduced=compiled[arch].get("reduced"))
        wall, own = time.perf_counter() - t0, sum(c.compile_s for c in live.values())
        for arch, c in live.items():
            c.compile_s = wall * c.compile_s / max(own, 1e-9)
            self._restore(arch, c)
        teacher_s = 0.0
        first = min((c.start for c in live.values()), default=s.steps)
        for k in range(first, s.steps):
            batch, merged = self._batches(k)
            t0 = time.perf_counter()
            targets = jax.block_until_ready(self._teacher(merged))
            teacher_s += time.perf_counter() - t0
            for arch in list(live):
                c = live[arch]
                if k < c.start:  # restored past this step
                    continue
                t0 = time.perf_counter()
                try:
                    c.state, metrics = c.step(c.state, batch, targets)
                    c.losses.append(self._widen(c, jax.block_until_ready(metrics["loss"])))
                except Exception as e:  # noqa: BLE001
                    del live[arch]
                    results[arch] = self._fail(
                        arch, f"training failed at step {k + 1}: {_short(e)}")
                    continue
                c.train_s += time.perf_counter() - t0
                if k + 1 == s.halving_step and c.kept is None:
                    try:
                        self._halve(arch, c, k + 1)
                    except Exception as e:  # noqa: BLE001 -- as a failed step
                        del live[arch]
                        results[arch] = self._fail(arch, f"halving failed at step {k + 1}: "
                                                         f"{_short(e)}")
                        continue
                if self.checkpoints is not None and (k + 1) % self.checkpoint_every == 0 \
                        and k + 1 < s.steps:
                    self._save(arch, c, k + 1)
            self.on_step(len(live))
        for arch in list(live):
            c = live[arch]
            try:
                self._evaluator(c)
            except Exception as e:  # noqa: BLE001
                del live[arch]
                results[arch] = self._fail(arch, f"could not compile: {_short(e)}")
                continue
            t0 = time.perf_counter()
            results[arch] = self._finish(arch, c)
            timing = self._timing(arch, c, teacher_s / max(len(live), 1), time.perf_counter() - t0)
            self.on_done(arch, results[arch], timing)
            if self.checkpoints is not None:  # journalled: its checkpoints are no longer needed
                if c.manager is not None:
                    c.manager.close()
                shutil.rmtree(self._folder(arch), ignore_errors=True)
        return results

    def _folder(self, arch: Arch) -> Path:
        return self.checkpoints / "-".join(map(str, arch.size))

    def _evaluator(self, c: Live):
        """The candidate's compiled held-out evaluation, waited for once."""
        if not c.eval_ready:
            t0 = time.perf_counter()
            c.evaluate, own = c.evaluate.result()
            c.compile_s += time.perf_counter() - t0  # waited for, if it was not ready
            c.compile_busy_s += own
            c.eval_ready = True
        return c.evaluate

    def _widen(self, c: Live, per_trial):
        """Per-trial values (N x kept θ) as N x |Θ|, zeros where a θ was dropped
        (before any was: as they are, on the device)."""
        if c.kept is None:
            return per_trial
        full = np.zeros((self.settings.seeds, len(self.settings.lrs)), np.float32)
        full[:, c.kept] = np.asarray(per_trial)
        return full

    def _heldout_errors(self, c: Live, params) -> tuple[np.ndarray, ...]:
        """ê, KL and accuracy of every trial (N x |Θ|) on the held-out batches B."""
        program = self._evaluator(c)
        sums = [program(params, b, t) for b, t in zip(self.heldout, self.heldout_teacher)]
        n = np.maximum(sum(np.asarray(x["n"]) for x in sums), 1.0)
        return tuple(sum(np.asarray(x[k]) for x in sums) / n for k in ("kd_ce", "kl", "correct"))

    def _halve(self, arch: Arch, c: Live, step: int) -> None:
        """Successive halving at `step`: measure every trial on B, keep the θ whose
        mean error is within HALVING_Z standard errors of the best θ's, and go on
        with those alone (a state and a compiled step of fewer θ). The decision is
        written beside the checkpoints before the first one after it."""
        s = self.settings
        ce, kl, _ = self._heldout_errors(c, c.state.params)
        err = kl if s.error == "kl" else ce
        mean = err.mean(0)
        se = err.std(0, ddof=1) / np.sqrt(s.seeds)
        finite = np.isfinite(mean) & np.isfinite(se)
        if not finite.any():
            return
        best = int(np.flatnonzero(finite)[np.argmin(mean[finite])])
        keep = [i for i in range(len(s.lrs)) if finite[i] and
                mean[i] - mean[best] <= HALVING_Z * float(np.hypot(se[i], se[best]))]
        if len(keep) == len(s.lrs):
            return
        dropped = {i: float(mean[i]) for i in range(len(s.lrs)) if i not in keep}
        if self.checkpoints is not None:
            from bortsearch.runio import write_json

            write_json(self._folder(arch) / "halving.json",
                       {"at": step, "kept": keep,
                        "dropped": {str(i): e for i, e in dropped.items()}})
        self._reduce(arch, c, keep, dropped, step)

    def _reduce(self, arch: Arch, c: Live, keep: list[int], dropped: dict, step: int) -> None:
        """Go on with the θ of `keep` only: their states and a step compiled for them."""
        t0 = time.perf_counter()
        c.state = take_trials(c.state, np.asarray(keep))
        if c.reduced is not None and len(keep) == len(self.settings.lrs) - 1:
            c.step, own = c.reduced.result()  # compiled beside the training
        else:
            c.step = self._compile_step(arch, c.state)
            own = time.perf_counter() - t0
        c.compile_s += time.perf_counter() - t0  # waited for
        c.compile_busy_s += own
        c.kept, c.dropped, c.halved_at = keep, dropped, step

    def _restore(self, arch: Arch, c: Live) -> None:
        """Continue a candidate from its last checkpoint, if it has one."""
        c.start, c.manager = 0, None
        if self.checkpoints is None:
            return
        folder = self._folder(arch)
        if not (folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())):
            return  # nothing saved yet: Orbax (1 s to import) waits for the first save
        from bortsearch.train.fit import checkpointer, restore_checkpoint

        c.manager = checkpointer(folder)
        k = c.manager.latest_step()
        if not k:
            return
        halving = self._folder(arch) / "halving.json"
        if halving.is_file():  # θ were dropped: the checkpoints after it hold the rest
            import json

            h = json.loads(halving.read_text())
            if h["at"] <= k:
                self._reduce(arch, c, h["kept"], {int(i): e for i, e in h["dropped"].items()},
                             h["at"])
        item = {"state": c.state, "losses": jax.ShapeDtypeStruct(
            (k, self.settings.seeds, len(self.settings.lrs)), np.float32)}
        saved = restore_checkpoint(c.manager, k, item, self.optim)
        c.state, c.losses, c.start = saved["state"], list(saved["losses"]), k

    def _save(self, arch: Arch, c: Live, step: int) -> None:
        import orbax.checkpoint as ocp

        if c.manager is None:
            from bortsearch.train.fit import checkpointer

            c.manager = checkpointer(self._folder(arch))
        losses = np.stack([np.asarray(x, np.float32) for x in c.losses])
        c.manager.save(step, args=ocp.args.StandardSave({"state": c.state,
                                                            "losses": losses}))

    def _finish(self, arch: Arch, c: Live) -> Evaluation:
        """ê and KL of every trial on B; a trial whose loss became NaN has none."""
        s = self.settings
        losses = np.stack([np.asarray(x) for x in c.losses])  # steps x N x |Θ|
        params = c.state.params
        if c.kept is not None:  # the evaluation is compiled for every θ: fill the gaps
            slots = np.asarray([c.kept.index(i) if i in c.kept else 0
                                for i in range(len(s.lrs))])
            params = take_trials(params, slots)
        ce, kl, acc = self._heldout_errors(c, params)
        trials, reasons = [], []
        for j in range(s.seeds):
            for i, lr in enumerate(s.lrs):
                if i in c.dropped:  # stopped by halving: no error at s
                    trials.append((lr, j, math.nan, math.nan, math.nan))
                    continue
                finite = np.isfinite(losses[:, j, i])
                if not finite.all():
                    first = int(np.argmin(finite)) + 1
                    reasons.append(f"loss became NaN at step {first} with lr {lr:g}, seed {j}")
                    trials.append((lr, j, math.nan, math.nan, math.nan))
                    continue
                if not (np.isfinite(ce[j, i]) and np.isfinite(kl[j, i])):
                    reasons.append(f"held-out error is NaN with lr {lr:g}, seed {j}")
                trials.append((lr, j, float(ce[j, i]), float(kl[j, i]), float(acc[j, i])))
        return summarise(trials, s.lrs, s.error, "; ".join(reasons))

    def _fail(self, arch: Arch, reason: str) -> Evaluation:
        ev = Evaluation(FAILED, reason=reason)
        self.on_done(arch, ev, None)
        return ev

    def _timing(self, arch: Arch, c: Live, teacher_s: float, eval_s: float) -> Timing:
        spec, s = self.data.spec, self.settings
        start = c.start  # trained by this process from here
        h = c.halved_at or s.steps
        kept = len(c.kept) if c.kept is not None else len(s.lrs)
        trial_steps = s.seeds * (max(0, h - start) * len(s.lrs)
                                 + (s.steps - max(start, h)) * kept)
        tokens = trial_steps * self.data.tokens_per_batch()
        flops = train_flops_per_token(arch, spec.seq_len, spec.predictions) * tokens
        train_s = max(c.train_s, 1e-9)
        return Timing(c.compile_s, c.train_s, teacher_s, eval_s, tokens / train_s,
                      flops / train_s, start, c.compile_busy_s, trial_steps=trial_steps,
                      halved_at=c.halved_at,
                      dropped=tuple((s.lrs[i], e) for i, e in sorted(c.dropped.items())),
                      layers=tuple(self.layers(arch)) if s.init == "teacher" else ())


@jax.jit
def take_trials(tree, index):
    """The trials `index` (axis 1: N x |Θ| x ...) of every leaf, as one compiled
    program: one leaf at a time, each gather would be a program of its own (64 for
    a candidate's training state)."""
    return jax.tree.map(lambda x: x[:, index], tree)


def error_baselines(heldout, heldout_teacher, log_q_V) -> dict[str, float]:
    """What ê is made of on B: the teacher's own entropy H_T (no student can go
    below it) and ê of a context-free student that predicts the corpus's token
    frequencies (the unigram baseline), as CE and as KL = CE − H_T."""
    total: dict[str, float] = {}
    for b, t in zip(heldout, heldout_teacher):
        for k, v in teacher_entropy_sums(t, b["weights"], log_q_V).items():
            total[k] = total.get(k, 0.0) + v
    n = max(total["n"], 1.0)
    h, u = total["entropy"] / n, total["unigram_ce"] / n
    return {"teacher_entropy": h, "unigram_ce": u, "unigram_kl": u - h}


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return "out of memory (" + text[:160] + ")"
    return text[:200]
