import jax
import numpy as np
import pytest

from bortsearch import Arch
from bortsearch.model.encoder import init_params
from bortsearch.model.proxies import param_count
from bortsearch.search.candidates import groups
from bortsearch.train.step import (
    LossConfig,
    OptimConfig,
    _decay_mask,
    distill_targets,
    init_state,
    loss_and_metrics,
    optimizer,
    train_step,
    train_step_many,
)

ARCH = Arch(2, 2, 16, 32, vocab_size=50, max_positions=16)


def _batch(seed=0, b=4, length=12, p=3):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(5, 50, (b, length)).astype(np.int32),
            "attention_mask": np.ones((b, length), np.int32),
            "positions": rng.integers(1, length - 1, (b, p)).astype(np.int32),
            "labels": rng.integers(5, 50, (b, p)).astype(np.int32),
            "weights": np.array([[1, 1, 0]] * b, np.float32)}


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_bort_loss_against_numpy():
    from bortsearch.train.step import student_logits

    params, batch = init_params(ARCH, 0), _batch()
    teacher = np.random.default_rng(1).normal(size=(4, 3, 50)).astype(np.float32)
    cfg = LossConfig()
    loss, m = loss_and_metrics(params, ARCH, batch, distill_targets(teacher, cfg.temperature), cfg)
    s = np.asarray(student_logits(ARCH, params, batch), np.float64)
    w = batch["weights"]
    ce = -(np.take_along_axis(_np_log_softmax(s), batch["labels"][..., None], -1)[..., 0]
           * w).sum() / w.sum()
    tau = cfg.temperature
    pt, lt, ls = (np.exp(_np_log_softmax(teacher / tau)), _np_log_softmax(teacher / tau),
                  _np_log_softmax(s / tau))
    kl = ((pt * (lt - ls)).sum(-1) * w).sum() / w.sum() * tau**2
    assert float(m["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(m["kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(loss) == pytest.approx(0.1 * ce + 0.5 * kl, rel=1e-5)
    # the KL is zero when the student is its own teacher
    _, same = loss_and_metrics(params, ARCH, batch,
                               distill_targets(np.asarray(s, np.float32), cfg.temperature), cfg)
    assert abs(float(same["kl"])) < 1e-5


def test_bort_loss_gradient_equals_the_log_softmax_form():
    """The loss is written with log-sum-exps and the teacher's precomputed targets;
    its gradient is that of the textbook form on full log-softmax arrays."""
    import jax.numpy as jnp

    from bortsearch.train.step import student_logits, teacher_logits, teacher_targets

    params, batch, cfg = init_params(ARCH, 0), _batch(seed=5), LossConfig()
    teacher_params = init_params(ARCH, 7)
    logits = teacher_logits(ARCH, teacher_params, batch)
    tau, w = cfg.temperature, batch["weights"]

    def textbook(p):
        s = student_logits(ARCH, p, batch)
        ce = -(jnp.take_along_axis(jax.nn.log_softmax(s), batch["labels"][..., None], -1)[..., 0]
               * w).sum() / w.sum()
        t = jax.nn.log_softmax(logits / tau)
        kl = ((jnp.exp(t) * (t - jax.nn.log_softmax(s / tau))).sum(-1) * w).sum() / w.sum()
        return cfg.ce_weight * ce + cfg.kd_weight * tau**2 * kl

    targets = teacher_targets(ARCH, teacher_params, batch, tau)
    for a, b in zip(jax.tree.leaves(distill_targets(logits, tau)), jax.tree.leaves(targets)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    ours = jax.grad(lambda p: loss_and_metrics(p, ARCH, batch, targets, cfg)[0])(params)
    ref = jax.grad(textbook)(params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_schedule_warms_up_then_decays_to_zero():
    cfg = OptimConfig(steps=100, warmup=0.1)
    params = {"w": np.ones(3, np.float32)}
    tx = optimizer(cfg.__class__(steps=100, warmup=0.1, weight_decay=0.0, clip=1e9))
    state = tx.init(params)
    scales = []
    for _ in range(100):
        updates, state = tx.update({"w": np.ones(3, np.float32)}, state, params)
        scales.append(float(updates["w"][0]))
    assert scales[0] == 0.0 and scales[10] == pytest.approx(max(scales), rel=1e-3)
    assert scales[99] == pytest.approx(1 / 90, abs=0.02) and scales[-1] < scales[50]


def test_weight_decay_skips_layer_norms_and_biases():
    mask = _decay_mask(init_params(ARCH, 0))["params"]
    assert mask["layers"]["ffn"]["inner"]["kernel"] and mask["embeddings"]["word"]["embedding"]
    assert not mask["layers"]["ffn"]["inner"]["bias"] and not mask["layers"]["ffn_ln"]["scale"]
    assert not mask["head"]["bias"]


def test_init_state_equals_optax_init():
    from jax.flatten_util import ravel_pytree

    params, cfg = init_params(ARCH, 0), OptimConfig(steps=10)
    ours = init_state(params, 1e-3, cfg).opt_state
    real = optimizer(cfg).init(ravel_pytree(params)[0])
    assert jax.tree.structure(ours) == jax.tree.structure(real)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(real)):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def _tree_adamw_steps(params, grads_list, lr, cfg):
    """optax's AdamW over the parameter tree, decay masked per leaf: the reference."""
    import optax

    from bortsearch.train.step import _tree_optimizer

    tx, state = _tree_optimizer(cfg), _tree_optimizer(cfg).init(params)
    for g in grads_list:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
    return params, state


def test_flat_update_equals_adamw_over_the_tree():
    """The optimiser runs on the parameters as one vector; the parameters it makes
    are those of optax's AdamW over the tree (clip, decay mask, schedule)."""
    from bortsearch.train.step import apply_gradients

    cfg = OptimConfig(steps=6, warmup=0.2, clip=0.5)
    params = init_params(ARCH, 0)
    grads = [jax.tree.map(lambda x, k=k: np.random.default_rng(k).normal(size=x.shape)
                          .astype(np.float32), params) for k in range(4)]
    state = init_state(params, 3e-3, cfg)
    for g in grads:
        state = apply_gradients(state, g, cfg)
    ref, _ = _tree_adamw_steps(params, grads, 3e-3, cfg)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    moved = state.params["params"]["layers"]["ffn"]["inner"]["kernel"]
    assert not np.allclose(moved, params["params"]["layers"]["ffn"]["inner"]["kernel"])


@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_checkpoint_from_the_tree_layout_resumes(tmp_path, lead):
    """A checkpoint written with Adam's moments as trees (before the flat state)
    restores into today's state and goes on exactly as the tree optimiser would:
    a pretraining state (no leading axes) and a candidate's trials (N x |Θ|)."""
    import orbax.checkpoint as ocp

    from bortsearch.train.fit import checkpointer, restore_latest
    from bortsearch.train.step import TrainState, apply_gradients

    cfg, lr = OptimConfig(steps=6, warmup=0.2), 3e-3
    params = init_params(ARCH, 0)
    grads = [jax.tree.map(lambda x, k=k: np.random.default_rng(k).normal(size=x.shape)
                          .astype(np.float32), params) for k in range(3)]
    mid, mid_opt = _tree_adamw_steps(params, grads[:2], lr, cfg)
    end, _ = _tree_adamw_steps(params, grads, lr, cfg)

    def stack(tree):
        return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), lead + np.shape(x)).copy(),
                            tree)

    old = TrainState(np.full(lead, 2, np.int32), stack(mid), stack(mid_opt),
                     np.full(lead, lr, np.float32))
    manager = checkpointer(tmp_path / "ckpt")
    manager.save(2, args=ocp.args.StandardSave(old))
    manager.wait_until_finished()
    template = init_state(stack(params), 0.0, cfg)
    template = template._replace(
        step=np.zeros(lead, np.int32), lr=np.zeros(lead, np.float32),
        opt_state=jax.tree.map(lambda x: np.zeros(lead + x.shape[-1:] if x.ndim else lead, x.dtype),
                               init_state(params, 0.0, cfg).opt_state))
    step, state = restore_latest(checkpointer(tmp_path / "ckpt"), template, cfg)
    assert step == 2 and int(np.asarray(state.step).ravel()[0]) == 2
    g = stack(grads[2])
    apply = apply_gradients
    for _ in lead:
        apply = jax.vmap(apply, in_axes=(0, 0, None))
    state = apply(state, g, cfg)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(stack(end))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_training_reduces_the_loss():
    cfg = OptimConfig(steps=40, warmup=0.1)
    state, batch = init_state(init_params(ARCH, 0), 1e-2, cfg), _batch()
    losses = []
    for _ in range(40):
        state, m = train_step(state, batch, arch=ARCH, cfg=cfg)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_vmapped_learning_rates_equal_separate_runs():
    cfg, loss = OptimConfig(steps=5), LossConfig()
    teacher = np.random.default_rng(2).normal(size=(4, 3, 50)).astype(np.float32)
    targets = distill_targets(teacher, loss.temperature)
    lrs = [1e-3, 5e-3]
    singles = []
    for lr in lrs:
        s = init_state(init_params(ARCH, 0), lr, cfg)
        for k in range(5):
            s, _ = train_step(s, _batch(k), targets, arch=ARCH, cfg=cfg, loss_cfg=loss)
        singles.append(s)
    one = init_state(init_params(ARCH, 0), 0.0, cfg)
    many = jax.tree.map(lambda x: np.stack([np.asarray(x)] * 2)[None], one)._replace(
        lr=np.array([lrs], np.float32))  # 1 seed x 2 settings
    for k in range(5):
        batches = jax.tree.map(lambda x: x[None], _batch(k))
        many, _ = train_step_many(many, batches, jax.tree.map(lambda x: x[None], targets),
                                  arch=ARCH, cfg=cfg, loss_cfg=loss)
    for j, single in enumerate(singles):
        for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(many.params)):
            np.testing.assert_allclose(np.asarray(b)[0, j], a, atol=1e-6)


def test_seed_axis_trains_each_seed_on_its_own_batches():
    cfg, loss = OptimConfig(steps=3), LossConfig()
    rng = np.random.default_rng(3)
    teachers = distill_targets(rng.normal(size=(2, 4, 3, 50)).astype(np.float32), loss.temperature)
    singles = []
    for j in range(2):
        s = init_state(init_params(ARCH, j), 2e-3, cfg)
        for k in range(3):
            s, _ = train_step(s, _batch(10 * j + k), jax.tree.map(lambda x: x[j], teachers),
                              arch=ARCH, cfg=cfg, loss_cfg=loss)
        singles.append(s)
    states = [init_state(init_params(ARCH, j), 2e-3, cfg) for j in range(2)]
    many = jax.tree.map(lambda *xs: np.stack([np.asarray(x)[None] for x in xs]), *states)
    for k in range(3):
        batches = jax.tree.map(lambda *xs: np.stack(xs), _batch(k), _batch(10 + k))
        many, _ = train_step_many(many, batches, teachers, arch=ARCH, cfg=cfg, loss_cfg=loss)
    for j, single in enumerate(singles):
        for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(many.params)):
            np.testing.assert_allclose(np.asarray(b)[j, 0], a, atol=1e-6)


def test_kl_is_ce_less_the_teacher_entropy_against_numpy():
    from bortsearch.train.step import eval_sums, student_logits, teacher_entropy_sums

    rng = np.random.default_rng(4)
    params = init_params(ARCH, 1)
    batch = _batch(0)
    teacher = 3 * rng.normal(size=(4, 3, 50)).astype(np.float32)
    sums = eval_sums(ARCH, params, batch, teacher)
    logq = _np_log_softmax(np.asarray(student_logits(ARCH, params, batch), np.float64))
    logp = _np_log_softmax(teacher.astype(np.float64))
    w = batch["weights"]
    ce = (-(np.exp(logp) * logq).sum(-1) * w).sum()
    entropy = (-(np.exp(logp) * logp).sum(-1) * w).sum()
    assert float(sums["kd_ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(sums["kl"]) == pytest.approx(ce - entropy, rel=1e-4)
    unigram = np.log(np.full(50, 1 / 50, np.float32))
    base = teacher_entropy_sums(teacher, w, unigram)
    assert base["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert base["unigram_ce"] == pytest.approx(np.log(50) * w.sum(), rel=1e-5)


def test_groups_by_count_and_by_memory():
    archs = [ARCH.with_size(d, 2, 16, 32) for d in range(1, 8)]
    assert [len(g) for g in groups(archs, 2, 3)] == [3, 3, 1]
    assert [a for g in groups(archs, 2, None) for a in g] == archs
    big = [Arch(24, 16, 1024, 4096, vocab_size=50265)] * 3  # ~355M params: 5.7 GB each
    assert [len(g) for g in groups(big, 1, None)] == [1, 1, 1]
    assert 4 * param_count(big[0]) * 4 > 2 << 30


def test_accuracy_and_correct_count_equal_numpy_argmax():
    """Accuracy is taken as 'the true logit is the row max' (no argmax over the
    vocabulary); on logits without ties that is NumPy's argmax, weighted."""
    from bortsearch.train.step import eval_sums, student_logits

    params, batch = init_params(ARCH, 3), _batch(seed=4)
    logits = np.asarray(student_logits(ARCH, params, batch))
    hits = (logits.argmax(-1) == batch["labels"]) * batch["weights"]
    _, metrics = loss_and_metrics(params, ARCH, batch, None, None)
    assert float(metrics["accuracy"]) == pytest.approx(hits.sum() / batch["weights"].sum())
    assert float(eval_sums(ARCH, params, batch)["correct"]) == hits.sum()
    # a batch where the labels are the argmax: every weighted position is a hit
    batch["labels"] = logits.argmax(-1).astype(np.int32)
    assert float(eval_sums(ARCH, params, batch)["correct"]) == batch["weights"].sum()


def test_bfloat16_step_learns_with_float32_state():
    """Training with the model in bfloat16: the parameters and the optimiser's
    state stay float32, the first loss and gradient norm are float32's to bfloat16
    precision (and not equal to them), and the loss falls as far as in float32."""
    from bortsearch.train.step import student_logits, teacher_targets

    cfg, loss_cfg = OptimConfig(steps=40, warmup=0.1), LossConfig()
    batch, params = _batch(), init_params(ARCH, 0)
    targets = teacher_targets(ARCH, init_params(ARCH, 9), batch, loss_cfg.temperature,
                              "bfloat16")
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(targets))
    assert student_logits(ARCH, params, batch, "bfloat16").dtype == np.float32
    runs = {}
    for dtype in ("float32", "bfloat16"):
        state, metrics = init_state(params, 1e-2, cfg), []
        for _ in range(40):
            state, m = train_step(state, batch, targets, arch=ARCH, cfg=cfg, loss_cfg=loss_cfg,
                                  dtype=dtype)
            metrics.append({k: float(v) for k, v in m.items()})
        assert metrics[-1]["loss"] < 0.6 * metrics[0]["loss"]
        assert all(x.dtype in (np.float32, np.int32) for x in jax.tree.leaves(state))
        runs[dtype] = metrics
    full, half = runs["float32"], runs["bfloat16"]
    for key in ("loss", "grad_norm"):
        assert half[0][key] == pytest.approx(full[0][key], rel=2e-2)
        assert half[0][key] != full[0][key]
    assert half[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=2e-2)


def _layer_outputs(arch, params, batch):
    """Every layer's output computed independently of `with_hidden_states`: layer k's is
    the last hidden state of the model cut to its first k+1 layers."""
    import dataclasses

    from bortsearch.model.encoder import Encoder

    outs = []
    for k in range(arch.layers):
        cut = {"params": {**params["params"], "layers": jax.tree.map(
            lambda a, k=k: a[:k + 1], params["params"]["layers"])}}
        model = Encoder(dataclasses.replace(arch, layers=k + 1), head=False)
        outs.append(np.asarray(model.apply(cut, batch["input_ids"], batch["attention_mask"])))
    return np.stack(outs)


def test_hidden_states_are_each_layers_output():
    from bortsearch.model.encoder import Encoder, with_hidden_states

    arch = ARCH.with_size(3, 2, 16, 32)
    params, batch = init_params(arch, 3), _batch(seed=2)
    batch["attention_mask"][:, -4:] = 0
    logits, hidden = with_hidden_states(Encoder(arch), params, batch["input_ids"],
                                        batch["attention_mask"])
    np.testing.assert_allclose(hidden, _layer_outputs(arch, params, batch), atol=1e-5)
    # asking for them changes nothing else
    np.testing.assert_array_equal(logits, Encoder(arch).apply(params, batch["input_ids"],
                                                              batch["attention_mask"]))
    # ALBERT's shared groups: every application of a group, in order
    albert = Arch(4, 2, 16, 32, vocab_size=50, max_positions=16, groups=2, embedding=8)
    params = init_params(albert, 3)
    _, hidden = with_hidden_states(Encoder(albert), params, batch["input_ids"],
                                   batch["attention_mask"])
    # the same as four unshared layers holding groups 0, 0, 1, 1, layer by layer
    unshared = Arch(4, 2, 16, 32, vocab_size=50, max_positions=16, embedding=8)
    repeated = {"params": {**params["params"], "layers": jax.tree.map(
        lambda a: np.repeat(a, 2, axis=0), params["params"]["layers"])}}
    np.testing.assert_allclose(hidden, _layer_outputs(unshared, repeated, batch), atol=1e-5)


def test_hidden_term_against_numpy():
    """`hidden_mse`: student layer m against the teacher's uniformly mapped layer, on the
    student's (leading) units, over real tokens; the loss adds it at its weight, and at
    weight 0 has no such term."""
    import dataclasses

    from bortsearch.train.step import hidden_mse, teacher_targets

    teacher_arch = ARCH.with_size(4, 2, 32, 64)
    student, teacher_params = init_params(ARCH, 0), init_params(teacher_arch, 1)
    batch = _batch(seed=4)
    batch["attention_mask"][:2, -5:] = 0
    mask = batch["attention_mask"].astype(bool)
    s = _layer_outputs(ARCH, student, batch)  # 2 x B x L x 16
    t = _layer_outputs(teacher_arch, teacher_params, batch)  # 4 x B x L x 32
    want = np.mean([((s[m] - t[tl][..., :16]) ** 2).mean(-1)[mask].mean()
                    for m, tl in enumerate([1, 3])])  # ⌊(m+1)·4/2⌋ − 1
    assert float(hidden_mse(s, t, batch["attention_mask"])) == pytest.approx(want, rel=1e-5)
    # a student's own map (the layers it inherited), here teacher layers 0 and 2
    own = np.mean([((s[m] - t[tl][..., :16]) ** 2).mean(-1)[mask].mean()
                   for m, tl in enumerate([0, 2])])
    assert float(hidden_mse(s, t, batch["attention_mask"], (0, 2))) == \
        pytest.approx(own, rel=1e-5)

    cfg, on_cfg = LossConfig(), dataclasses.replace(LossConfig(), hidden_weight=2.0)
    targets = teacher_targets(teacher_arch, teacher_params, batch, cfg.temperature, "float32",
                              True)
    np.testing.assert_allclose(targets.hidden_DxBxLxH, t, atol=1e-5)
    loss = jax.jit(loss_and_metrics, static_argnums=(1, 4))
    off, m0 = loss(student, ARCH, batch, targets, cfg)  # weight 0: today's loss, no term
    on, m1 = loss(student, ARCH, batch, targets, on_cfg)
    _, m2 = loss(student, ARCH, batch, targets, dataclasses.replace(on_cfg,
                                                                     hidden_layers=(0, 2)))
    assert float(m2["hidden_mse"]) == pytest.approx(own, rel=1e-4)
    assert "hidden_mse" not in m0 and float(m0["kl"]) == pytest.approx(float(m1["kl"]))
    assert float(m1["hidden_mse"]) == pytest.approx(want, rel=1e-4)
    assert float(on) == pytest.approx(float(off) + 2.0 * want, rel=1e-5)
