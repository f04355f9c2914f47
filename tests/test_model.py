import jax
import numpy as np
import pytest

from bortsearch import Arch, Encoder, Model, init_params

TINY = Arch(2, 2, 32, 64, vocab_size=50, max_positions=16)
TINY_ROBERTA = Arch(2, 4, 32, 48, vocab_size=50, max_positions=18, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1, model_type="roberta")


def test_same_seed_same_params_other_seed_differs():
    a, b, c = (init_params(TINY, s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not np.array_equal(a["params"]["embeddings"]["word"]["embedding"],
                              c["params"]["embeddings"]["word"]["embedding"])


def test_init_statistics_follow_bert():
    p = init_params(Arch(2, 2, 128, 256, vocab_size=2000), 0)["params"]
    word = np.asarray(p["embeddings"]["word"]["embedding"])
    assert abs(word.std() - 0.02) < 0.001 and abs(word.mean()) < 0.001
    assert np.all(np.asarray(p["layers"]["ffn"]["inner"]["bias"]) == 0)
    assert np.all(np.asarray(p["layers"]["ffn_ln"]["scale"]) == 1)
    assert p["layers"]["attention"]["query"]["kernel"].shape == (2, 128, 128)


@pytest.mark.parametrize("arch", [TINY, TINY_ROBERTA], ids=["bert", "roberta"])
def test_padding_does_not_change_unpadded_logits(arch):
    model = Model.init(arch, seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, arch.vocab_size, (2, 7)).astype(np.int32)
    short = model.logits(ids, np.ones_like(ids))
    pad = np.full((2, 5), arch.pad_token_id, np.int32)
    padded_ids = np.concatenate([ids, pad], axis=1)
    mask = np.concatenate([np.ones_like(ids), np.zeros_like(pad)], axis=1)
    padded = model.logits(padded_ids, mask)
    np.testing.assert_allclose(padded[:, :7], short, atol=1e-5)
    # and the mask matters: attending to padding changes the result
    unmasked = model.logits(padded_ids, np.ones_like(padded_ids))
    assert np.abs(unmasked[:, :7] - short).max() > 1e-4


def test_untied_decoder_and_no_token_types():
    arch = Arch(1, 2, 16, 32, vocab_size=30, max_positions=8, type_vocab_size=0,
                tie_decoder=False)
    model = Model.init(arch)
    assert "decoder" in model.params["params"]["head"]
    assert "token_type" not in model.params["params"]["embeddings"]
    assert model.logits(np.array([1, 2, 3])).shape == (1, 3, 30)


def test_jit_and_no_jit_agree():
    from bortsearch.model.encoder import Encoder

    model = Model.init(TINY, seed=2)
    ids = np.arange(1, 9, dtype=np.int32)[None]
    mask = np.ones_like(ids)
    with jax.disable_jit():
        eager = Encoder(TINY).apply(model.params, ids, mask)
    np.testing.assert_allclose(model.logits(ids, mask), eager, atol=1e-5)


def test_head_at_positions_equals_full_logits_gathered():
    from bortsearch.model.encoder import Encoder

    model = Model.init(TINY, seed=0)
    ids = np.arange(1, 11, dtype=np.int32).reshape(2, 5)
    mask = np.ones_like(ids)
    positions = np.array([[0, 3], [4, 1]], np.int32)
    full = model.logits(ids, mask)
    part = Encoder(TINY).apply(model.params, ids, mask, None, positions)
    np.testing.assert_allclose(part, np.take_along_axis(full, positions[:, :, None], 1), atol=1e-5)


def test_teacher_layer_map_is_uniform_and_keeps_the_top_layer():
    from bortsearch.model.encoder import teacher_layers

    assert teacher_layers(1, 3) == [2] and teacher_layers(2, 4) == [1, 3]
    assert teacher_layers(3, 3) == [0, 1, 2] and teacher_layers(4, 2) == [0, 1]


def test_inherited_parameters_are_the_teachers_leading_blocks():
    from bortsearch.model.encoder import inherit_params, init_params

    teacher = Arch(4, 4, 32, 64, vocab_size=60, max_positions=16)
    t = init_params(teacher, 7)["params"]
    same = inherit_params(teacher, teacher, {"params": t}, seed=0)["params"]
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(t)):
        np.testing.assert_array_equal(a, b)
    small = teacher.with_size(2, 2, 16, 48)
    s = inherit_params(small, teacher, {"params": t}, seed=0)["params"]
    np.testing.assert_array_equal(s["embeddings"]["word"]["embedding"],
                                  t["embeddings"]["word"]["embedding"][:, :16])
    np.testing.assert_array_equal(s["layers"]["ffn"]["inner"]["kernel"],
                                  t["layers"]["ffn"]["inner"]["kernel"][[1, 3], :16, :48])
    np.testing.assert_array_equal(s["layers"]["attention"]["query"]["bias"],
                                  t["layers"]["attention"]["query"]["bias"][[1, 3], :16])
    np.testing.assert_array_equal(s["head"]["bias"], t["head"]["bias"])
    # what the teacher lacks keeps the student's own random draw
    big = teacher.with_size(5, 4, 32, 80)
    b = inherit_params(big, teacher, {"params": t}, seed=3)["params"]
    own = init_params(big, 3)["params"]
    inner = b["layers"]["ffn"]["inner"]["kernel"]
    np.testing.assert_array_equal(inner[:4, :, :64], t["layers"]["ffn"]["inner"]["kernel"])
    np.testing.assert_array_equal(inner[4], own["layers"]["ffn"]["inner"]["kernel"][4])
    np.testing.assert_array_equal(inner[:4, :, 64:],
                                  own["layers"]["ffn"]["inner"]["kernel"][:4, :, 64:])


def test_headless_forward_is_the_last_hidden_state():
    arch = Arch(2, 2, 16, 32, vocab_size=50, max_positions=16)
    params = init_params(arch, 0)
    ids = np.array([[3, 4, 5, 0]])
    mask = np.array([[1, 1, 1, 0]])
    hidden = Encoder(arch, head=False).apply(params, ids, mask)
    assert hidden.shape == (1, 4, 16)
    from bortsearch.model.encoder import MLMHead

    logits = MLMHead(arch).apply({"params": params["params"]["head"]}, hidden,
                                 params["params"]["embeddings"]["word"])
    np.testing.assert_allclose(logits, Encoder(arch).apply(params, ids, mask), atol=1e-5)


@pytest.mark.parametrize("k, n", [(8, 24), (24, 8), (16, 16)], ids=["narrow", "wide", "square"])
def test_matmul_gradients_equal_plain_autodiff(k, n):
    """`matmul`/`matmul_t` reorder the kernel gradient's product for XLA's CPU
    backend (both orientations, by which operand is narrower); the gradients are
    still those of x @ w and x @ eᵀ."""
    from bortsearch.model.encoder import matmul, matmul_t

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    c = rng.standard_normal((40, n)).astype(np.float32)  # a cotangent that is not all ones

    def grads(f, w_):
        return jax.jit(jax.grad(lambda x, w: (f(x, w) * c).sum(), argnums=(0, 1)))(x, w_)

    for ours, plain, w_ in [(matmul, lambda x, w: x @ w, w),
                            (matmul_t, lambda x, e: x @ e.T, np.ascontiguousarray(w.T))]:
        for got, want in zip(grads(ours, w_), grads(plain, w_)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unrolled_and_scanned_layers_agree():
    """The default (layers unrolled) and `unroll=1` (one scanned layer body) are
    the same function, with and without ALBERT's layer sharing."""
    ids = np.arange(12).reshape(2, 6) % 50
    mask = np.ones_like(ids)
    for arch in (TINY, Arch(4, 2, 32, 64, vocab_size=50, max_positions=16, groups=2)):
        p = init_params(arch, 0)
        np.testing.assert_allclose(Encoder(arch).apply(p, ids, mask),
                                   Encoder(arch, unroll=1).apply(p, ids, mask), atol=1e-5)


@pytest.mark.parametrize("arch", [TINY, TINY_ROBERTA,
                                  Arch(2, 2, 32, 64, vocab_size=50, max_positions=16,
                                       embedding=16, groups=1)],
                         ids=["bert", "roberta", "albert"])
def test_bfloat16_compute_keeps_float32_parameters_and_outputs(arch):
    """dtype="bfloat16": the products run in bfloat16 (the program says so), the
    logits and hidden states come back float32 and near the float32 model's; the
    float32 default has no bfloat16 in its program at all."""
    params = init_params(arch, 1)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, arch.vocab_size, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0

    def run(dtype, **kw):
        return Encoder(arch, dtype=dtype, **kw).apply(params, ids, mask)

    for kw in ({}, {"head": False}):
        full, half = run("float32", **kw), run("bfloat16", **kw)
        assert half.dtype == np.float32 and half.shape == full.shape
        scale = np.abs(full).max()
        assert 0 < np.abs(half - full).max() < 0.05 * scale  # bfloat16 has 8 bits of mantissa
    program = str(jax.make_jaxpr(lambda p: Encoder(arch, dtype="bfloat16").apply(p, ids, mask))(
        params))
    assert "dot_general" in program and "bf16[" in program
    assert "bf16" not in str(jax.make_jaxpr(lambda p: Encoder(arch).apply(p, ids, mask))(params))
