import jax
import numpy as np
import pytest

from bortsearch import Arch, Model, init_params

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
    from bortsearch.model import Encoder

    model = Model.init(TINY, seed=2)
    ids = np.arange(1, 9, dtype=np.int32)[None]
    mask = np.ones_like(ids)
    with jax.disable_jit():
        eager = Encoder(TINY).apply(model.params, ids, mask)
    np.testing.assert_allclose(model.logits(ids, mask), eager, atol=1e-5)


def test_head_at_positions_equals_full_logits_gathered():
    from bortsearch.model import Encoder

    model = Model.init(TINY, seed=0)
    ids = np.arange(1, 11, dtype=np.int32).reshape(2, 5)
    mask = np.ones_like(ids)
    positions = np.array([[0, 3], [4, 1]], np.int32)
    full = model.logits(ids, mask)
    part = Encoder(TINY).apply(model.params, ids, mask, None, positions)
    np.testing.assert_allclose(part, np.take_along_axis(full, positions[:, :, None], 1), atol=1e-5)
