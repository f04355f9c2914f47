"""Training: the masked-LM / distillation loss, AdamW, and a pure jitted step.

One step function serves maximum-point training (masked-LM cross-entropy alone),
the search's brief candidate training and pretraining (the Bort loss, with the
teacher's softened distribution as an input): distillation is a term in the loss,
not a second trainer. The learning rate lives in the state, so several settings θ ∈ Θ of one
architecture can share one compiled step under `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from bortsearch.config import fraction, non_negative_float, option, positive_float
from bortsearch.model.arch import Arch
from bortsearch.model.encoder import (
    Encoder,
    classifier_outputs,
    param_size,
    teacher_layers,
    with_hidden_states,
)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then linear decay to 0, and global-norm clipping.

    Defaults are the Bort pretraining recipe (ALGORITHM.md): lr 1e-4, Adam ε 1e-6,
    weight decay 0.01 (not on LayerNorm parameters or biases), 1% warm-up, clip 1.0.
    """

    steps: int
    warmup: float = option(0.01, "warm-up as a fraction of the steps", type=fraction)
    weight_decay: float = option(0.01, "AdamW weight decay, not on LayerNorm or biases",
                                 type=fraction)
    adam_eps: float = option(1e-6, "Adam's ε", type=positive_float)
    b1: float = 0.9
    b2: float = 0.999
    clip: float = option(1.0, "global gradient-norm clipping", type=positive_float)
    # The learning rate of everything but the masked-LM head, as a multiple of the
    # head's: 0 freezes the encoder (a new head trained alone), 0.1 gives a
    # pretrained encoder a tenth of a new head's rate.
    body_lr_scale: float = 1.0

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup * self.steps))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """L = ce_weight · CE(student, tokens) + kd_weight · τ² · KL(p_T^τ ‖ p_S^τ)
    on masked positions (the Bort code's loss, with the KL it intended)."""

    ce_weight: float = option(0.1, "weight of the cross-entropy on the true tokens (labels)",
                              type=non_negative_float)
    kd_weight: float = option(0.5, "weight of τ² · KL to the teacher", type=non_negative_float)
    temperature: float = option(2.0, "distillation temperature τ", type=positive_float)
    # + sop_weight · CE(sentence order), on batches of pairs
    sop_weight: float = option(1.0, "weight of the sentence-order loss",
                               type=non_negative_float)
    # + hidden_weight · MSE(hidden states), TinyBERT's intermediate-layer term (`hidden_mse`)
    hidden_weight: float = option(
        0.0, "weight of the hidden-state term: the mean squared difference between each "
        "student layer's outputs and those of the teacher layer it inherited (TinyBERT's "
        "uniform map with --init random or ALBERT's groups), on the student's leading hidden "
        "units", type=non_negative_float)
    # The teacher layer each student layer is matched with by that term; None: TinyBERT's
    # uniform map. `pretrain` sets it per student to the layers the student inherited.
    hidden_layers: tuple[int, ...] | None = None


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    lr: jax.Array  # the peak learning rate θ


def _decay_mask(params):
    """Weight decay on kernels and embedding tables only."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"), params)


def optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW with a unit-peak schedule over the parameters as one flat vector;
    `apply_gradients` scales by −lr and gives it the parameters to decay (kernels
    and embedding tables) with the others zeroed.

    One vector rather than a tree of ~25 leaves: the same arithmetic (the clip's
    global norm is the same norm), a few fused loops instead of one per leaf and
    per transformation, and 17% less compile time for a candidate's step.
    """
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps),
        optax.add_decayed_weights(cfg.weight_decay),
        optax.scale_by_schedule(_schedule(cfg)),
    )


def _schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warm-up to 1, then linear decay to 0."""
    w = cfg.warmup_steps
    return optax.join_schedules(
        [optax.linear_schedule(0.0, 1.0, w),
         optax.linear_schedule(1.0, 0.0, max(1, cfg.steps - w))],
        [w])


def _decayed(params):
    """The parameters as one vector, zero where weight decay does not apply."""
    return jnp.concatenate([jnp.ravel(x) if m else jnp.zeros(np.size(x), x.dtype) for x, m in
                            zip(jax.tree.leaves(params), jax.tree.leaves(_decay_mask(params)))])


def init_state(params, lr: float, cfg: OptimConfig) -> TrainState:
    """The state before step 1. The optimiser's initial state (Adam's moments and
    every counter) is all zeros, so it is built from its shapes without running
    `init` op by op; `tests/test_train.py` checks it equals `optimizer(cfg).init`."""
    flat = jax.ShapeDtypeStruct((param_size(params),), np.float32)
    abstract = jax.eval_shape(optimizer(cfg).init, flat)
    opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    return TrainState(np.zeros((), np.int32), params, opt_state, np.asarray(lr, np.float32))


def _tree_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The same AdamW over the parameter tree, decay masked per leaf: how the state
    was laid out before it was one flat vector (`legacy_state`)."""
    return optax.chain(optax.clip_by_global_norm(cfg.clip),
                       optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps),
                       optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
                       optax.scale_by_schedule(_schedule(cfg)))


def legacy_state(state: TrainState, cfg: OptimConfig) -> TrainState:
    """The shapes of `state` (any leading trial axes) with the optimiser state laid
    out as older checkpoints hold it, Adam's moments as trees like the parameters."""
    lead = np.shape(state.step)
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[len(lead):], x.dtype),
                       state.params)
    tree = jax.eval_shape(_tree_optimizer(cfg).init, one)
    opt_state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(lead + s.shape, s.dtype), tree)
    return state._replace(opt_state=opt_state)


def from_legacy(old: TrainState, cfg: OptimConfig) -> TrainState:
    """A state restored in `legacy_state`'s layout, its moments flattened in the
    parameters' leaf order (the order `ravel_pytree` and `apply_gradients` use)."""
    lead = np.ndim(old.step)
    adam = next(s for s in old.opt_state if isinstance(s, optax.ScaleByAdamState))
    sched = next(s for s in old.opt_state if isinstance(s, optax.ScaleByScheduleState))

    def flat(tree):
        return np.concatenate([np.asarray(x).reshape(*np.shape(x)[:lead], -1)
                               for x in jax.tree.leaves(tree)], axis=-1)

    size = flat(adam.mu).shape[-1]
    new = jax.eval_shape(optimizer(cfg).init, jax.ShapeDtypeStruct((size,), np.float32))
    values = iter([np.asarray(adam.count), flat(adam.mu), flat(adam.nu), np.asarray(sched.count)])
    return old._replace(opt_state=jax.tree.map(lambda _: next(values), new))


def student_logits(arch: Arch, params, batch, dtype: str = "float32", hidden: bool = False):
    """Logits at the masked positions: B x P x V, float32 (computed in `dtype`);
    on a batch of sentence-order pairs (`sop_labels`), (those, the order head's B x 2).
    On a task's batch (no `positions`: `bortsearch.data.tasks.TaskData`) a sequence
    classifier's logits as one prediction a row, B x 1 x C, so that the losses and
    sums below serve a classifier teacher unchanged: CE on the labels, KL to the
    teacher's class distribution. With `hidden`: (those, every layer's hidden states
    D x B x L x H)."""
    inputs = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    if "positions" not in batch:
        model = Encoder(arch, dtype=dtype, num_labels=classifier_outputs(params))
    else:
        model = Encoder(arch, dtype=dtype, sop="sop_labels" in batch)
        inputs += (batch["positions"],)
    if hidden:
        out, hidden_DxBxLxH = with_hidden_states(model, params, *inputs)
    else:
        out = model.apply(params, *inputs)
    if "positions" not in batch:
        out = out[:, None, :]
    return (out, hidden_DxBxLxH) if hidden else out


def teacher_view(batch):
    """What the teacher is shown of a batch: the batch, but on ALBERT's sentence-order
    pairs one segment's token types, as it was trained (its type-1 row was never
    trained), and no order labels (it has no order head: the student learns the
    order from the labels alone). A task's pairs keep their token types: a
    classifier teacher was fine-tuned on them."""
    if "sop_labels" not in batch:
        return batch
    return {k: v for k, v in batch.items() if k not in ("token_type_ids", "sop_labels")}


@functools.partial(jax.jit, static_argnums=0)
def teacher_logits(arch: Arch, params, batch):
    """The frozen teacher's float32 logits at the masked positions, once per batch."""
    return student_logits(arch, params, teacher_view(batch))


class Targets(NamedTuple):
    """What the distillation term needs of the teacher at temperature τ: its
    distribution p = softmax(T/τ) and Σ_v p log p per position. Computed once per
    batch (`distill_targets`), not in every candidate's and every θ's step."""

    probs_BxPxV: jax.Array
    neg_entropy_BxP: jax.Array
    hidden_DxBxLxH: jax.Array | None = None  # its layers' outputs, for `hidden_mse`


def distill_targets(teacher_BxPxV, temperature: float, hidden_DxBxLxH=None) -> Targets:
    """The teacher's `Targets` at temperature τ from its logits."""
    logp = jax.nn.log_softmax(jnp.asarray(teacher_BxPxV) / temperature)
    p = jnp.exp(logp)
    return Targets(p, (p * logp).sum(-1), hidden_DxBxLxH)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def teacher_targets(arch: Arch, params, batch, temperature: float,
                    dtype: str = "float32", hidden: bool = False) -> Targets:
    """The frozen teacher's `Targets` on a batch: its forward (in `dtype`) and its
    float32 softmax in one program; with `hidden`, its layers' outputs too."""
    out = student_logits(arch, params, teacher_view(batch), dtype, hidden)
    if hidden:
        return distill_targets(out[0], temperature, out[1])
    return distill_targets(out, temperature)


def hidden_mse(student_DxBxLxH, teacher_DxBxLxH, attention_mask_BxL,
               layers: tuple[int, ...] | None = None):
    """TinyBERT's intermediate-layer term without its learnt projection: student layer m
    against teacher layer `layers[m]` (None: ⌊(m+1)·D_T/D_S⌋ − 1, `teacher_layers`' uniform
    map; a student deeper than the teacher matches its first D_T layers), on the hidden
    units both have (the leading ones, the ones an inheriting student took), squared
    differences averaged over those units, the matched layers and the real tokens."""
    picks = list(layers) if layers is not None else teacher_layers(
        student_DxBxLxH.shape[0], teacher_DxBxLxH.shape[0])
    h = min(student_DxBxLxH.shape[-1], teacher_DxBxLxH.shape[-1])
    diff = student_DxBxLxH[:len(picks), ..., :h] - teacher_DxBxLxH[np.asarray(picks), ..., :h]
    return _weighted_mean(jnp.square(diff).mean((0, 3)), attention_mask_BxL.astype(jnp.float32))


def _true_and_max(logits_BxPxV, labels_BxP):
    """The true token's logit and the row max (gradient-free) at each position."""
    true_BxP = jnp.take_along_axis(logits_BxPxV, labels_BxP[..., None], -1)[..., 0]
    return true_BxP, jax.lax.stop_gradient(logits_BxPxV.max(-1))


def _hits(true_BxP, max_BxP):
    """1.0 where the true token's logit is the largest (a tie counts as a hit). The
    same as comparing argmax except on exact ties, and a max that the loss's
    log-sum-exp shares rather than XLA's CPU argmax (5.7 ms over 32 x 10 x 4096)."""
    return (true_BxP >= max_BxP).astype(jnp.float32)


def _weighted_mean(x_BxP, w_BxP):
    return (x_BxP * w_BxP).sum() / jnp.maximum(w_BxP.sum(), 1.0)


def _logsumexp(x_BxPxV, max_BxP):
    """log Σ exp(x) over the last axis, shifted by its (gradient-free) row max."""
    return jnp.log(jnp.exp(x_BxPxV - max_BxP[..., None]).sum(-1)) + max_BxP


def loss_and_metrics(params, arch: Arch, batch, targets: Targets | None,
                     loss_cfg: LossConfig | None, dtype: str = "float32"):
    """Masked-LM cross-entropy alone when there is no teacher; else the Bort loss.

    Written with log-sum-exps rather than full log-softmax arrays: with s the
    student's logits, z = s/τ and the teacher's `Targets` (p, Σ p log p),
    CE = lse(s) − s_label and KL(p ‖ softmax z) = Σ p log p − Σ p·z + lse(z).
    One row max serves both log-sum-exps and the accuracy. The model computes in
    `dtype`; its logits, and everything here, are float32. With `hidden_weight` and the
    teacher's hidden states in `targets`, plus the weighted `hidden_mse`."""
    hidden = (targets is not None and targets.hidden_DxBxLxH is not None
              and loss_cfg.hidden_weight > 0)
    logits_BxPxV = student_logits(arch, params, batch, dtype, hidden)
    hidden_term = 0.0
    if hidden:
        logits_BxPxV, student_DxBxLxH = logits_BxPxV
        mse = hidden_mse(student_DxBxLxH, targets.hidden_DxBxLxH, batch["attention_mask"],
                         loss_cfg.hidden_layers)
        hidden_term = loss_cfg.hidden_weight * mse
    sop_term, metrics = 0.0, {}
    if "sop_labels" in batch:  # ALBERT's sentence-order prediction, from its labels
        logits_BxPxV, order_Bx2 = logits_BxPxV
        sop_ce, sop_hits = _order_loss(order_Bx2, batch["sop_labels"])
        sop_term = (loss_cfg.sop_weight if loss_cfg is not None else 1.0) * sop_ce
        metrics = {"sop_ce": sop_ce, "sop_accuracy": sop_hits.mean()}
    w_BxP = batch["weights"]
    true_BxP, max_BxP = _true_and_max(logits_BxPxV, batch["labels"])
    ce = _weighted_mean(_logsumexp(logits_BxPxV, max_BxP) - true_BxP, w_BxP)
    accuracy = _weighted_mean(_hits(true_BxP, max_BxP), w_BxP)
    metrics = {"ce": ce, "accuracy": accuracy, **metrics}
    if targets is None:
        return ce + sop_term, metrics
    tau = loss_cfg.temperature
    z_BxPxV = logits_BxPxV / tau
    kl_BxP = (targets.neg_entropy_BxP - (targets.probs_BxPxV * z_BxPxV).sum(-1)
              + _logsumexp(z_BxPxV, max_BxP / tau))
    kl = _weighted_mean(kl_BxP, w_BxP) * tau**2
    metrics["kl"] = kl
    if hidden:
        metrics["hidden_mse"] = mse
    return loss_cfg.ce_weight * ce + loss_cfg.kd_weight * kl + sop_term + hidden_term, metrics


def _order_loss(order_Bx2, labels_B):
    """Cross-entropy of the order head and its hits (a tie counts as a hit): the
    masked-LM loss's own pieces, with one "position" per row."""
    order_Bx1x2 = order_Bx2[:, None]
    true_Bx1, max_Bx1 = _true_and_max(order_Bx1x2, labels_B[:, None])
    return (_logsumexp(order_Bx1x2, max_Bx1) - true_Bx1).mean(), _hits(true_Bx1, max_Bx1)[:, 0]


def apply_gradients(state: TrainState, grads, cfg: OptimConfig) -> TrainState:
    """One AdamW update of `state` by `grads` at the state's peak learning rate."""
    flat_grads, unravel = ravel_pytree(grads)
    updates, opt_state = optimizer(cfg).update(flat_grads, state.opt_state,
                                               _decayed(state.params))
    steps = unravel(-state.lr * updates)
    if cfg.body_lr_scale != 1.0:
        steps = _scale_body(steps, cfg.body_lr_scale)
    params = optax.apply_updates(state.params, steps)
    return TrainState(state.step + 1, params, opt_state, state.lr)


def _scale_body(updates, scale: float):
    """`updates` with every subtree but the masked-LM head's multiplied by `scale`
    (after weight decay, so a scale of 0 leaves those parameters exactly as they were)."""
    inner = updates["params"]
    return {**updates, "params": {k: v if k == "head" else jax.tree.map(lambda x: x * scale, v)
                                  for k, v in inner.items()}}


def _step(state: TrainState, batch, targets: Targets | None, arch: Arch, cfg: OptimConfig,
          loss_cfg: LossConfig | None, dtype: str = "float32"):
    grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, arch, batch, targets, loss_cfg, dtype)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    return apply_gradients(state, grads, cfg), metrics


@functools.partial(jax.jit, static_argnames=("arch", "cfg", "loss_cfg", "dtype"),
                   donate_argnums=0)
def train_step(state: TrainState, batch, targets: Targets | None = None, *, arch: Arch,
               cfg: OptimConfig, loss_cfg: LossConfig | None = None, dtype: str = "float32"):
    """One optimiser step: `(state, batch, teacher's targets) -> (state, metrics)`,
    the model computing in `dtype` (the parameters and the optimiser are float32)."""
    return _step(state, batch, targets, arch, cfg, loss_cfg, dtype)


@functools.partial(jax.jit, static_argnames=("arch", "cfg", "loss_cfg", "dtype"),
                   donate_argnums=0)
def train_step_many(states: TrainState, batches, targets: Targets | None = None, *,
                    arch: Arch, cfg: OptimConfig, loss_cfg: LossConfig | None = None,
                    dtype: str = "float32"):
    """`train_step` over the trials of one architecture: states carry two leading
    axes, N seeds × |Θ| settings. Each seed has its own batch and teacher targets
    (leading axis N); the settings of one seed share them."""
    over_lrs = jax.vmap(_step, in_axes=(0, None, None, None, None, None, None))
    return jax.vmap(over_lrs, in_axes=(0, 0, 0, None, None, None, None))(
        states, batches, targets, arch, cfg, loss_cfg, dtype)


def _eval_sums(arch: Arch, params, batch, teacher_BxPxV=None):
    logits_BxPxV = student_logits(arch, params, batch)
    extra = {}
    if "sop_labels" in batch:
        logits_BxPxV, order_Bx2 = logits_BxPxV
        extra = {"pairs": jnp.float32(order_Bx2.shape[0]),
                 "sop_correct": _order_loss(order_Bx2, batch["sop_labels"])[1].sum()}
    logp = jax.nn.log_softmax(logits_BxPxV)
    w = batch["weights"]
    nll = -jnp.take_along_axis(logp, batch["labels"][..., None], -1)[..., 0]
    hits = _hits(*_true_and_max(logits_BxPxV, batch["labels"]))
    sums = {"n": w.sum(), "correct": (hits * w).sum(), "nll": (nll * w).sum(), **extra}
    if teacher_BxPxV is not None:
        t_logp = jax.nn.log_softmax(teacher_BxPxV)
        t_p = jnp.exp(t_logp)
        sums["kd_ce"] = (-(t_p * logp).sum(-1) * w).sum()
        # KL(T ‖ S) per position, not ê − H_T, so that no cancellation eats it [ours]
        sums["kl"] = ((t_p * (t_logp - logp)).sum(-1) * w).sum()
    return sums


@functools.partial(jax.jit, static_argnums=0)
def eval_sums(arch: Arch, params, batch, teacher_BxPxV=None):
    """Sums over the masked positions of one batch: predictions, correct, NLL
    and, with a teacher, the KD cross-entropy at τ = 1 (the error proxy ê) and
    the KL of the teacher's distribution to the student's (ê less H_T)."""
    return _eval_sums(arch, params, batch, teacher_BxPxV)


@functools.partial(jax.jit, static_argnums=0)
def eval_sums_many(arch: Arch, params, batch, teacher_BxPxV):
    """`eval_sums` for parameters with leading N seeds × |Θ| axes, one shared batch."""
    one = functools.partial(_eval_sums, arch)
    return jax.vmap(jax.vmap(one, in_axes=(0, None, None)), in_axes=(0, None, None))(
        params, batch, teacher_BxPxV)


def teacher_entropy_sums(teacher_BxPxV, weights_BxP, log_q_V=None) -> dict[str, float]:
    """Over the masked positions of one batch: the count, the teacher's own
    entropy H_T (the part of ê no student can remove) and, given a context-free
    log-distribution q, the cross-entropy of the teacher against it (what ê is
    for a student that predicts token frequencies only)."""
    t_logp = jax.nn.log_softmax(jnp.asarray(teacher_BxPxV))
    t_p = jnp.exp(t_logp)
    w = jnp.asarray(weights_BxP)
    out = {"n": float(w.sum()), "entropy": float((-(t_p * t_logp).sum(-1) * w).sum())}
    if log_q_V is not None:
        out["unigram_ce"] = float((-(t_p * jnp.asarray(log_q_V)).sum(-1) * w).sum())
    return out


def evaluate(arch: Arch, params, batches, teacher_outputs=None) -> dict[str, float]:
    """Held-out masked-LM accuracy and cross-entropy, and the KD cross-entropy
    against the teacher's outputs when given (one array per batch)."""
    total: dict[str, float] = {}
    for j, batch in enumerate(batches):
        t = None if teacher_outputs is None else teacher_outputs[j]
        for k, v in eval_sums(arch, params, batch, t).items():
            total[k] = total.get(k, 0.0) + float(v)
    n = max(total["n"], 1.0)
    out = {"accuracy": total["correct"] / n, "mlm_ce": total["nll"] / n}
    if "pairs" in total:
        out["sop_accuracy"] = total["sop_correct"] / max(total["pairs"], 1.0)
    if "kd_ce" in total:
        out["kd_ce"] = total["kd_ce"] / n
    return out


def _most_frequent_label(data) -> int:
    """The most frequent target of the first training batches (up to 20)."""
    batches = [data.train_batch(i)
               for i in range(min(20, max(1, data.train_sequences // data.spec.batch_size)))]
    return int(np.bincount(np.concatenate([b["labels"][b["weights"] > 0]
                                           for b in batches])).argmax())


def frequency_baseline(data, batches=None, top: int | None = None) -> float:
    """Accuracy on `batches` (default: the held-out set) of always predicting the
    most frequent training token (`top`, default: the most frequent target of
    `data`'s first training batches)."""
    top = _most_frequent_label(data) if top is None else top
    held = data.heldout_batches() if batches is None else batches
    hits = sum(float(((b["labels"] == top) * b["weights"]).sum()) for b in held)
    return hits / max(sum(float(b["weights"].sum()) for b in held), 1.0)


def at_mask(batch, mask_id: int) -> dict:
    """`batch` with its prediction weights kept only where the input holds [MASK].

    BERT's masking leaves 10% of the targets unchanged in the input, where a model
    scores by copying; at [MASK] positions (80%) it must predict from context."""
    shown = np.take_along_axis(np.asarray(batch["input_ids"]), np.asarray(batch["positions"]), 1)
    return {**batch, "weights": np.asarray(batch["weights"]) * (shown == mask_id)}


def mlm_quality(arch: Arch, params, data, batches=None, log_q_V=None) -> dict[str, float]:
    """What a masked-LM model knows, on `batches` (default: the held-out set B).

    `accuracy`/`mlm_ce` count every selected position (the convention of training's
    metrics); the `mask_` figures count only the positions the input shows as
    [MASK], beside two context-free baselines on the same positions: always the
    most frequent training token (`mask_frequency_baseline`) and the corpus's
    add-one-smoothed token frequencies (`mask_unigram_ce`).
    `mask_unigram_gap` = `mask_unigram_ce` − `mask_mlm_ce`, in nats: how much
    context is worth to the model; `mask_perplexity` = exp(`mask_mlm_ce`). The
    frequencies, and the most frequent token, are `data`'s unless `log_q_V` gives
    others (a training corpus's, when `batches` come from other text: its most
    frequent token is then the argmax of `log_q_V`)."""
    batches = data.heldout_batches() if batches is None else batches
    masked = [at_mask(b, data.tokenizer.mask_id) for b in batches]
    every, at = evaluate(arch, params, batches), evaluate(arch, params, masked)
    log_q = data.unigram_log_probs(arch.vocab_size) if log_q_V is None else log_q_V
    n = sum(float(b["weights"].sum()) for b in masked)
    unigram = sum(float((-log_q[b["labels"]] * b["weights"]).sum()) for b in masked) / max(n, 1)
    top = None if log_q_V is None else int(np.argmax(log_q_V))
    return {"accuracy": every["accuracy"], "mlm_ce": every["mlm_ce"],
            "frequency_baseline": frequency_baseline(data, batches, top),
            "mask_predictions": n, "mask_accuracy": at["accuracy"],
            "mask_mlm_ce": at["mlm_ce"], "mask_perplexity": float(np.exp(at["mlm_ce"])),
            "mask_frequency_baseline": frequency_baseline(data, masked, top),
            "mask_unigram_ce": unigram, "mask_unigram_gap": unigram - at["mlm_ce"]}


def forward_flops_per_token(arch: Arch, seq_len: int, predictions: int) -> float:
    """Model FLOPs of one forward pass per input token, with the head only at the
    masked positions (as the teacher runs in distillation)."""
    return train_flops_per_token(arch, seq_len, predictions) / 3.0


def train_flops_per_token(arch: Arch, seq_len: int, predictions: int) -> float:
    """Model FLOPs of one training step per input token: 3 × the forward
    (forward + backward), with the head only at the masked positions."""
    from bortsearch.model.proxies import ffn_matrices

    h, i, v, l, e = arch.hidden, arch.intermediate, arch.vocab_size, seq_len, arch.embedding_size
    # a gated block's third H x I product; DeBERTa's c2p and p2c products with its table
    # (the table's own projections, once a batch, are left out)
    relative = 2 * 2 * 2 * arch.relative_span * h
    per_layer = 8 * h * h + 4 * l * h + 2 * ffn_matrices(arch) * h * i + relative
    projection = 2 * e * h if arch.embedding is not None else 0
    head = (2 * h * e + 2 * e * v) * predictions / seq_len
    return 3.0 * (projection + arch.layers * per_layer + head)
