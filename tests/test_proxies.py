import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bortsearch import Arch, effective_param_count, forward_flops, measure_latency, param_count
from bortsearch.model.encoder import Encoder, param_shapes


def _random_archs(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        heads = int(rng.choice([1, 2, 4, 8]))
        yield Arch(layers=int(rng.integers(1, 7)), heads=heads,
                   hidden=heads * int(rng.integers(1, 17)),
                   intermediate=int(rng.integers(1, 300)),
                   vocab_size=int(rng.integers(5, 5000)),
                   max_positions=int(rng.integers(8, 600)),
                   type_vocab_size=int(rng.integers(0, 3)),
                   tie_decoder=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("arch", list(_random_archs(40)), ids=lambda a: a.label())
def test_param_count_equals_parameter_tree(arch):
    leaves = jax.tree.leaves(param_shapes(arch))
    assert param_count(arch) == sum(int(np.prod(x.shape)) for x in leaves)


def test_param_count_matches_hugging_face_convention():
    # transformers 5.23: BertForMaskedLM(BertConfig()).num_parameters() == 109514298
    # (vocabulary 30,522, 512 positions, 2 token types, tied decoder, no pooler), and
    # RobertaForMaskedLM of roberta-large's config gives 355412057. Computed once with
    # transformers; tests/golden/make_golden.py re-checks them.
    assert param_count(Arch(12, 12, 768, 3072)) == 109_514_298
    roberta = dict(vocab_size=50265, max_positions=514, type_vocab_size=1,
                   model_type="roberta", pad_token_id=1, layer_norm_eps=1e-5)
    assert param_count(Arch(24, 16, 1024, 4096, **roberta)) == 355_412_057


def test_effective_params_are_the_non_embedding_part():
    arch = Arch(3, 4, 64, 100, vocab_size=1000, max_positions=50, type_vocab_size=2)
    shapes = param_shapes(arch)["params"]
    layers = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["layers"]))
    head = shapes["head"]
    transform = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
        {"t": head["transform"], "ln": head["ln"]}))
    embedding_ln = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["embeddings"]["ln"]))
    assert effective_param_count(arch) == layers + transform + embedding_ln


def _count(jaxpr, per_eqn) -> int:
    """Sum `per_eqn(eqn)` over a jaxpr, recursing into sub-jaxprs; a scan body
    counts `length` times."""
    total = 0
    for eqn in jaxpr.eqns:
        total += per_eqn(eqn)
        for name, sub in eqn.params.items():
            subs = sub if isinstance(sub, (list, tuple)) else [sub]
            for s in subs:
                inner = getattr(s, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
                    total += times * _count(inner, per_eqn)
                elif hasattr(s, "eqns"):
                    total += _count(s, per_eqn)
    return total


def _dot(eqn) -> int:
    if eqn.primitive.name != "dot_general":
        return 0
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    contracted = int(np.prod([lhs[d] for d in lhs_contract]))
    return 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted


def _dot_flops(jaxpr) -> int:
    """Independent FLOP count: 2·(output size)·(contracted size) per dot_general."""
    return _count(jaxpr, _dot)


def _exp_elements(jaxpr) -> int:
    """Elements that go through `exp`: in the forward, the attention softmax's scores."""
    return _count(jaxpr, lambda e: int(np.prod(e.outvars[0].aval.shape))
                  if e.primitive.name == "exp" else 0)


def _jaxpr(arch, batch, seq_len, unroll=1, head=True):
    params = param_shapes(arch)
    ids = jnp.zeros((batch, seq_len), jnp.int32)
    return jax.make_jaxpr(lambda p, i: Encoder(arch, unroll=unroll, head=head).apply(
        p, i, jnp.ones_like(i)))(params, ids)


@pytest.mark.parametrize("arch,batch,seq_len", [
    (Arch(3, 4, 64, 96, vocab_size=500), 2, 16),
    (Arch(1, 1, 8, 8, vocab_size=7, max_positions=4), 1, 4),
    (Arch(4, 8, 1024, 768, vocab_size=50265, max_positions=514, type_vocab_size=1,
          model_type="roberta", pad_token_id=1), 1, 128),
    (Arch(6, 2, 64, 96, vocab_size=300, embedding=16, groups=2), 2, 8),  # ALBERT's axes
    (Arch(4, 2, 32, 64, vocab_size=300, groups=1, activation="gelu_new"), 1, 8),
    (Arch(3, 4, 64, 64, vocab_size=300, embedding=64, model_type="albert"), 1, 8),
    # ModernBERT: gated feed-forward (three H x I products), local windows, no position table
    (Arch(4, 4, 32, 48, vocab_size=300, max_positions=64, type_vocab_size=0,
          model_type="modernbert", local_window=8, global_every=3), 2, 12),
    # DeBERTa: the relative table's projections and the c2p and p2c products
    (Arch(3, 4, 32, 48, vocab_size=300, max_positions=64, type_vocab_size=0,
          model_type="deberta-v2", relative_buckets=8, max_relative=64), 2, 12),
])
def test_flops_equal_independent_dot_and_softmax_count(arch, batch, seq_len):
    from bortsearch.model.proxies import SOFTMAX_FLOPS

    for scope in ("mlm", "encoder"):
        jaxpr = _jaxpr(arch, batch, seq_len, head=scope == "mlm").jaxpr
        exps = _exp_elements(jaxpr)
        assert exps == arch.layers * batch * arch.heads * seq_len**2  # one per score
        # E = H with G < D: the encoder runs no E->H map, but the exported ALBERT
        # model runs the identity map `export` writes, and î counts what is deployed
        exported_map = 2 * batch * seq_len * arch.hidden ** 2 \
            if arch.albert and arch.embedding is None else 0
        assert forward_flops(arch, batch, seq_len, scope) == \
            _dot_flops(jaxpr) + SOFTMAX_FLOPS * exps + exported_map


def test_head_count_costs_time_and_the_head_is_scoped():
    arch = Arch(2, 2, 64, 128, vocab_size=4000, max_positions=128)
    assert forward_flops(arch.with_size(2, 4, 64, 128), 1, 64, "encoder") > \
        forward_flops(arch, 1, 64, "encoder")
    head = 2 * 64 * 64 * 64 + 2 * 64 * 64 * 4000
    assert forward_flops(arch, 1, 64, "mlm") - forward_flops(arch, 1, 64, "encoder") == head
    with pytest.raises(ValueError, match="scope"):
        forward_flops(arch, 1, 64, "decoder")


def test_flops_against_xla_cost_analysis():
    # XLA also counts element-wise work (GELU, softmax, LayerNorm), which the
    # analytic count leaves out; at this size it is under 5% more. Fully unrolled,
    # because XLA counts a while-loop body once.
    arch = Arch(2, 4, 256, 1024, vocab_size=4000, max_positions=128)
    batch, seq_len = 2, 64
    params = param_shapes(arch)
    ids = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    f = jax.jit(lambda p, i: Encoder(arch, unroll=arch.layers).apply(p, i, jnp.ones_like(i)))
    cost = f.lower(params, ids).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = forward_flops(arch, batch, seq_len)
    assert analytic <= cost["flops"] <= 1.05 * analytic, (analytic, cost["flops"])
    # without the head, XLA's count of the encoder alone
    f = jax.jit(lambda p, i: Encoder(arch, unroll=arch.layers, head=False).apply(
        p, i, jnp.ones_like(i)))
    cost = f.lower(params, ids).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = forward_flops(arch, batch, seq_len, "encoder")
    assert analytic <= cost["flops"] <= 1.05 * analytic, (analytic, cost["flops"])


def test_measured_latency_is_a_sane_median():
    arch = Arch(1, 2, 32, 64, vocab_size=100, max_positions=32)
    result = measure_latency(arch, batch=1, seq_len=16, repeats=7)
    assert 0 < result["median_s"] < 1.0 and result["iqr_s"] >= 0
    assert result["repeats"] == 7 and result["compile_s"] > 0
    hw = result["hardware"]
    assert hw["platform"] == jax.devices()[0].platform and hw["cores"] >= 1 and hw["jax"]
    # a model with ~30x the FLOPs takes measurably longer
    big = measure_latency(arch.with_size(4, 2, 128, 512), batch=4, seq_len=32, repeats=7)
    assert big["median_s"] > result["median_s"]
    # the head of a large vocabulary dominates a small model (~20x its FLOPs here):
    # dropping it is faster
    wide_vocab = Arch(1, 2, 128, 128, vocab_size=30000, max_positions=128)
    assert forward_flops(wide_vocab, 1, 128, "mlm") > 20 * forward_flops(wide_vocab, 1, 128,
                                                                         "encoder")
    mlm = measure_latency(wide_vocab, batch=1, seq_len=128, repeats=7, scope="mlm")
    encoder = measure_latency(wide_vocab, batch=1, seq_len=128, repeats=7, scope="encoder")
    assert encoder["scope"] == "encoder" and encoder["median_s"] < mlm["median_s"]


def test_training_flops_per_token_against_the_dot_count():
    """The FLOP/s the benchmark and pretraining report: 3 × the forward's matrix
    products per token, with the head only at the P masked positions."""
    from bortsearch.train.step import train_flops_per_token

    arch = Arch(2, 4, 64, 96, vocab_size=700, max_positions=64)
    b, length, p = 3, 32, 5
    params = param_shapes(arch)
    ids = jnp.zeros((b, length), jnp.int32)
    pos = jnp.zeros((b, p), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda q, i, x: Encoder(arch).apply(q, i, jnp.ones_like(i), None, x))(
        params, ids, pos)
    forward = _dot_flops(jaxpr.jaxpr)
    assert (train_flops_per_token(arch, length, p) * b * length
            == pytest.approx(3 * forward, rel=1e-12))


def test_latency_model_recovers_known_costs_and_reports_its_held_out_error():
    from bortsearch.model.latency_model import features, fit_latency, sample

    base = Arch(2, 2, 64, 128, vocab_size=1000, max_positions=128)
    archs = [base.with_size(d, a, h, i) for d in (1, 2, 4) for a in (2, 4) for h in (64, 128)
             for i in (128, 512)]
    # per call, per layer, per weight FLOP, per attention FLOP, per score, per activation
    truth = np.array([2e-4, 5e-5, 1e-11, 4e-11, 3e-10, 2e-9])
    seconds = [float(features(a, 1, 128, "encoder") @ truth) for a in archs]
    model = fit_latency(archs, seconds, 1, 128, "encoder")
    np.testing.assert_allclose(model.coef, truth, rtol=1e-6)
    # the terms, computed independently of forward_flops for one architecture
    a = archs[-1]  # <4, 4, 128, 512>
    d, l, h, i = a.layers, 128, a.hidden, a.intermediate
    np.testing.assert_allclose(features(a, 1, 128, "encoder"),
                               [1, d, d * (8 * l * h * h + 4 * l * h * i), d * 4 * l * l * h,
                                d * a.heads * l * l, d * l * (h + i)])
    assert max(map(abs, model.loo_errors)) < 1e-6
    # FLOPs alone cannot: a per-layer cost makes deep-narrow slower than its FLOPs say
    flops_only = [forward_flops(a, 1, 128, "encoder") for a in archs]
    ratio = np.array(seconds) / np.array(flops_only)
    assert ratio.max() / ratio.min() > 2
    noisy = [s * (1 + 0.05 * (-1) ** j) for j, s in enumerate(seconds)]
    summary = fit_latency(archs, noisy, 1, 128, "encoder").summary()
    assert 0 < summary["loo_median_rel_error"] < 0.2 and summary["measured"] == len(archs)
    picked = sample(archs, 5, 1, 128, "encoder")
    ranked = sorted(archs, key=lambda a: (forward_flops(a, 1, 128, "encoder"), a.size))
    assert len(picked) == 5 and picked[0] == ranked[0] and picked[-1] == ranked[-1]
