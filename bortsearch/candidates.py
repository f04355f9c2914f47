"""The evaluator of Algorithm 1: brief distillation of candidates against T.

Candidates train in lockstep groups: for each batch the teacher's logits are
computed once and every candidate of the group takes its step on them, so the
teacher costs one forward pass per batch per group rather than per candidate.
The settings θ ∈ Θ of one architecture are a leading axis of its training state
under `jax.vmap`: one compiled step trains all of Θ. Every candidate starts from
the same seed and sees the same batches in the same order; ê is the KD
cross-entropy against T at τ = 1 on the fixed held-out batches B.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from bortsearch.arch import Arch
from bortsearch.model import Model, init_params
from bortsearch.proxies import param_count
from bortsearch.search import DONE, FAILED, Evaluation
from bortsearch.train import (LossConfig, OptimConfig, eval_sums, init_state,
                              teacher_logits, train_flops_per_token, train_step_many)

GROUP_MEMORY_BYTES = 2 << 30  # parameters + Adam moments + gradients of a group, float32


@dataclasses.dataclass(frozen=True)
class CandidateSettings:
    """s, Θ and the loss of the brief training (Algorithm 1 step 5)."""

    steps: int = 200
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    warmup: float = 0.05
    loss: LossConfig = LossConfig()
    seed: int = 0
    group_size: int | None = None  # None: as many as fit GROUP_MEMORY_BYTES


@dataclasses.dataclass(frozen=True)
class Timing:
    """Where one candidate's time went (seconds), for the benchmark and the journal."""

    compile_s: float
    train_s: float
    teacher_s: float  # this candidate's share of the group's teacher forwards
    eval_s: float
    tokens_per_s: float
    model_flops_per_s: float


def groups(archs: list[Arch], n_lrs: int, group_size: int | None) -> list[list[Arch]]:
    """Consecutive groups, bounded by count or by the float32 training-state memory."""
    out: list[list[Arch]] = []
    used = 0
    for a in archs:
        need = 4 * param_count(a) * 4 * n_lrs  # params, two moments, gradients
        if not out or (len(out[-1]) >= group_size if group_size
                       else used + need > GROUP_MEMORY_BYTES):
            out.append([])
            used = 0
        out[-1].append(a)
        used += need
    return out


class CandidateTrainer:
    """`evaluate(archs) -> {arch: Evaluation}` for `bortsearch.search.algorithm1`.

    Args:
      teacher: T, frozen.
      data: the `MLMData` every candidate trains and is measured on.
      settings: s, Θ, loss, seed, group size.
      on_start, on_done: called per candidate (the run journal, the progress bar).
      on_step: called once per lockstep step with the group size.
    """

    def __init__(self, teacher: Model, data, settings: CandidateSettings,
                 on_start: Callable[[Arch], None] = lambda a: None,
                 on_done: Callable[[Arch, Evaluation, Timing | None], None] = lambda *a: None,
                 on_step: Callable[[int], None] = lambda n: None):
        self.teacher, self.data, self.settings = teacher, data, settings
        self.on_start, self.on_done, self.on_step = on_start, on_done, on_step
        self.optim = OptimConfig(steps=settings.steps, warmup=settings.warmup)
        self.heldout = [jax.device_put(b) for b in data.heldout_batches()]
        t0 = time.perf_counter()
        self.heldout_teacher = jax.block_until_ready(
            [teacher_logits(teacher.arch, teacher.params, b) for b in self.heldout])
        self.teacher_eval_s = time.perf_counter() - t0

    def __call__(self, archs: list[Arch]) -> dict[Arch, Evaluation]:
        results: dict[Arch, Evaluation] = {}
        for group in groups(list(archs), len(self.settings.lrs), self.settings.group_size):
            results.update(self.train_group(group))
        return results

    def _initial_state(self, arch: Arch):
        s = self.settings
        one = init_state(init_params(arch, s.seed), 0.0, self.optim)
        stacked = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], len(s.lrs), 0), one)
        return jax.device_put(stacked._replace(lr=np.asarray(s.lrs, np.float32)))

    def train_group(self, archs: list[Arch]) -> dict[Arch, Evaluation]:
        s, data = self.settings, self.data
        batch0 = jax.device_put(data.train_batch(0))
        t_logits0 = teacher_logits(self.teacher.arch, self.teacher.params, batch0)
        live: dict[Arch, dict] = {}
        results: dict[Arch, Evaluation] = {}

        def prepare(arch):
            t0 = time.perf_counter()
            state = self._initial_state(arch)
            step = train_step_many.lower(state, batch0, t_logits0, arch=arch, cfg=self.optim,
                                         loss_cfg=s.loss).compile()
            evaluate = eval_sums.lower(arch, jax.tree.map(lambda x: x[0], state.params),
                                       self.heldout[0], self.heldout_teacher[0]).compile()
            return dict(state=state, step=step, evaluate=evaluate, losses=[],
                        compile_s=time.perf_counter() - t0, train_s=0.0)

        for arch in archs:
            self.on_start(arch)
        # XLA compiles without the GIL and mostly on one core: compile the group's
        # candidates side by side, one per core.
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            futures = {arch: pool.submit(prepare, arch) for arch in archs}
        for arch, future in futures.items():
            try:
                live[arch] = future.result()
            except Exception as e:  # noqa: BLE001 -- out of memory, XLA errors: record, go on
                results[arch] = self._fail(arch, f"could not compile: {_short(e)}")
        # Wall-clock compile time of the group, shared out in proportion to each
        # candidate's own compile time (which overlaps with the others').
        wall, own = time.perf_counter() - t0, sum(c["compile_s"] for c in live.values())
        for c in live.values():
            c["compile_s"] = wall * c["compile_s"] / max(own, 1e-9)
        teacher_s = 0.0
        for k in range(s.steps):
            batch = jax.device_put(data.train_batch(k))
            t0 = time.perf_counter()
            t_logits = jax.block_until_ready(
                teacher_logits(self.teacher.arch, self.teacher.params, batch))
            teacher_s += time.perf_counter() - t0
            for arch in list(live):
                c = live[arch]
                t0 = time.perf_counter()
                try:
                    c["state"], metrics = c["step"](c["state"], batch, t_logits)
                    c["losses"].append(jax.block_until_ready(metrics["loss"]))
                except Exception as e:  # noqa: BLE001
                    del live[arch]
                    results[arch] = self._fail(arch, f"training failed at step {k + 1}: {_short(e)}")
                    continue
                c["train_s"] += time.perf_counter() - t0
            self.on_step(len(live))
        for arch, c in live.items():
            t0 = time.perf_counter()
            results[arch] = self._finish(arch, c)
            timing = self._timing(arch, c, teacher_s / max(len(live), 1), time.perf_counter() - t0)
            self.on_done(arch, results[arch], timing)
        return results

    def _finish(self, arch: Arch, c: dict) -> Evaluation:
        """ê per θ on B; the lowest finite one wins. NaN losses fail a θ."""
        losses = np.stack([np.asarray(x) for x in c["losses"]])  # steps x |Θ|
        errors = {}
        for j, lr in enumerate(self.settings.lrs):
            if not np.isfinite(losses[:, j]).all():
                first = int(np.argmin(np.isfinite(losses[:, j]))) + 1
                errors[lr] = (math.nan, f"loss became NaN at step {first} with lr {lr:g}")
                continue
            params = jax.tree.map(lambda x, j=j: x[j], c["state"].params)
            sums = [c["evaluate"](params, b, t) for b, t in zip(self.heldout, self.heldout_teacher)]
            kd = sum(float(x["kd_ce"]) for x in sums) / max(sum(float(x["n"]) for x in sums), 1.0)
            errors[lr] = (kd, "" if math.isfinite(kd) else f"held-out error is NaN with lr {lr:g}")
        finite = {lr: e for lr, (e, _) in errors.items() if math.isfinite(e)}
        by_lr = tuple((lr, e) for lr, (e, _) in errors.items())
        if not finite:
            return Evaluation(FAILED, reason="; ".join(r for _, r in errors.values()),
                              error_by_lr=by_lr)
        best = min(finite, key=lambda lr: (finite[lr], self.settings.lrs.index(lr)))
        return Evaluation(DONE, finite[best], best, error_by_lr=by_lr)

    def _fail(self, arch: Arch, reason: str) -> Evaluation:
        ev = Evaluation(FAILED, reason=reason)
        self.on_done(arch, ev, None)
        return ev

    def _timing(self, arch: Arch, c: dict, teacher_s: float, eval_s: float) -> Timing:
        spec = self.data.spec
        tokens = self.settings.steps * self.data.tokens_per_batch() * len(self.settings.lrs)
        flops = train_flops_per_token(arch, spec.seq_len, spec.predictions) * tokens
        train_s = max(c["train_s"], 1e-9)
        return Timing(c["compile_s"], c["train_s"], teacher_s, eval_s, tokens / train_s,
                      flops / train_s)


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return "out of memory (" + text[:160] + ")"
    return text[:200]
