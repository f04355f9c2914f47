"""Importance of heads, feed-forward units and hidden units, and the rewiring that
puts the important ones first: the rewired model computes the same function for
every family and head, and the importances move with the units."""

import numpy as np
import pytest

from bortsearch.model.arch import Arch
from bortsearch.model.encoder import Model, _classify, _sop_logits, inherit_params, init_params
from bortsearch.train.importance import Importance, Orders, importance, rewire

V = 50
KINDS = {
    "bert": dict(model_type="bert"),
    "roberta, untied decoder": dict(model_type="roberta", tie_decoder=False, pad_token_id=1,
                                    type_vocab_size=1, max_positions=34),
    "albert, factorised and shared": dict(model_type="albert", embedding=6, groups=1),
    "albert, two groups, E = H": dict(model_type="albert", embedding=16, groups=2),
    # DeBERTa: the relative table is read by the query and key rows
    "deberta-v2": dict(model_type="deberta-v2", type_vocab_size=0, relative_buckets=8,
                       max_relative=32),
    # ModernBERT: pre-LayerNorm, rotary heads, a gated feed-forward block, no biases,
    # layers of two attention types (the local window) and mean pooling
    "modernbert": dict(model_type="modernbert", type_vocab_size=0, local_window=4,
                       global_every=2, pooling="mean"),
    "distilbert": dict(model_type="distilbert", type_vocab_size=0),
    "electra, E < H": dict(model_type="electra", embedding=8),  # the E→H projection
}


def _arch(kind, layers=4):
    kw = {"max_positions": 32, **KINDS[kind]}
    return Arch(layers=layers, heads=4, hidden=16, intermediate=24, vocab_size=V, **kw)


def _params(arch, seed=0, **kw):
    """Random weights, LayerNorms and biases included (not 1s and 0s)."""
    rng = np.random.default_rng(seed)
    import jax

    return jax.tree.map(lambda x: (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32),
                        init_params(arch, seed, **kw))


def _orders(arch, seed=1):
    rng = np.random.default_rng(seed)
    g = arch.num_groups
    return Orders(np.stack([rng.permutation(arch.heads) for _ in range(g)]),
                  np.stack([rng.permutation(arch.intermediate) for _ in range(g)]),
                  rng.permutation(arch.hidden))


def _inputs(arch, seed=2):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # padding
    ids[1, 6:] = arch.pad_token_id
    return ids, mask, np.zeros_like(ids)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rewired_model_computes_the_same_function(kind):
    arch = _arch(kind)
    ids, mask, types = _inputs(arch)
    orders = _orders(arch)
    params = _params(arch)
    moved = rewire(arch, params, orders)
    assert not np.allclose(moved["params"]["layers"]["ffn"]["inner"]["kernel"],
                           params["params"]["layers"]["ffn"]["inner"]["kernel"])
    np.testing.assert_allclose(Model(arch, moved).logits(ids, mask),
                               Model(arch, params).logits(ids, mask), atol=1e-5, rtol=1e-5)
    clf = _params(arch, num_labels=3)  # the sequence-classification head
    np.testing.assert_allclose(np.asarray(_classify(arch, 3, rewire(arch, clf, orders),
                                                    ids, mask, types)),
                               np.asarray(_classify(arch, 3, clf, ids, mask, types)),
                               atol=1e-5, rtol=1e-5)
    sop = _params(arch, sop=True)  # the sentence-order head
    np.testing.assert_allclose(np.asarray(_sop_logits(arch, rewire(arch, sop, orders),
                                                      ids, mask, types)),
                               np.asarray(_sop_logits(arch, sop, ids, mask, types)),
                               atol=1e-5, rtol=1e-5)


def _batches(arch, n=2, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(3, V, (4, 12)).astype(np.int32)
        positions = np.stack([rng.choice(12, 3, replace=False) for _ in range(4)]).astype(np.int32)
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids), "positions": positions,
                    "labels": rng.integers(3, V, (4, 3)).astype(np.int32),
                    "weights": np.ones((4, 3), np.float32)})
    return out


@pytest.mark.parametrize("kind", ["bert", "albert, two groups, E = H", "modernbert"])
def test_importances_move_with_the_units(kind):
    """The rewired model's importances are the original's, permuted: so after
    rewiring into importance order every axis is sorted, most important first."""
    arch = _arch(kind)
    params, batches = _params(arch), _batches(arch)
    imp = importance(arch, params, batches)
    assert imp.heads.shape == (arch.num_groups, arch.heads)
    assert imp.ffn.shape == (arch.num_groups, arch.intermediate)
    assert imp.hidden.shape == (arch.hidden,) and imp.batches == 2
    assert (imp.heads > 0).all() and (imp.hidden > 0).all()
    orders = imp.orders()
    after = importance(arch, rewire(arch, params, orders), batches)
    np.testing.assert_allclose(after.heads, np.take_along_axis(imp.heads, orders.heads, 1),
                               rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(after.ffn, np.take_along_axis(imp.ffn, orders.ffn, 1),
                               rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(after.hidden, imp.hidden[orders.hidden], rtol=1e-3, atol=1e-7)
    assert (np.diff(after.hidden) <= 1e-6 * after.hidden.max()).all()
    back = Importance.from_dict(imp.to_dict())
    np.testing.assert_array_equal(back.orders().ffn, orders.ffn)


def test_a_head_that_does_nothing_is_least_important():
    """A head whose value weights are zero has zero context vectors: its gate cannot
    change the loss, so its importance is 0 and the rewiring puts it last."""
    arch = _arch("bert", layers=2)
    params = _params(arch)
    att = params["params"]["layers"]["attention"]
    dh = arch.head_dim
    att["value"]["kernel"][0, :, :dh] = 0  # layer 0, head 0
    att["value"]["bias"][0, :dh] = 0
    imp = importance(arch, params, _batches(arch))
    assert imp.heads[0, 0] == 0 and (imp.heads[0, 1:] > 0).all()
    assert imp.orders().heads[0, -1] == 0


def test_a_student_inherits_the_most_important_units():
    """Inheritance from the rewired teacher is the leading-block slice of it: the
    student's feed-forward units are the teacher's most important ones."""
    arch = _arch("bert")
    params = _params(arch)
    imp = importance(arch, params, _batches(arch))
    orders = imp.orders()
    student = arch.with_size(4, 4, 16, 8)
    got = inherit_params(student, arch, rewire(arch, params, orders))
    inner = params["params"]["layers"]["ffn"]["inner"]["kernel"]  # D x H x I
    for layer in range(4):
        top = orders.ffn[layer, :8]
        np.testing.assert_allclose(got["params"]["layers"]["ffn"]["inner"]["kernel"][layer],
                                   inner[layer][orders.hidden][:, top])
        assert set(top) == set(np.argsort(-imp.ffn[layer], kind="stable")[:8])


def test_search_inherits_by_importance_and_pretrain_follows(space, teacher, tmp_path, capsys):
    """`search --inherit importance` records the teacher's importances in the run,
    trains candidates from the rewired teacher (another table than `first`), is
    refused when resumed with the other setting, and `pretrain` follows the run."""
    import json

    import pandas as pd

    from bortsearch import load
    from bortsearch.cli import main

    def search(run, *extra):
        return main(["search", "--space", str(space), "--run", str(run), "--teacher",
                     str(teacher), "--steps", "4", "--batch-size", "8", "--seq-len", "32",
                     "--epsilon", "4", "--quiet", *extra])

    run, first = tmp_path / "imp", tmp_path / "first"
    assert search(run, "--inherit", "importance") == 0
    T = load(teacher).arch
    imp = Importance.from_dict(json.loads((run / "importance.json").read_text()))
    assert imp.heads.shape == (T.num_groups, T.heads) and imp.hidden.shape == (T.hidden,)
    assert json.loads((run / "search.json").read_text())["inherit"] == "importance"
    assert search(first) == 0
    a, b = (pd.read_csv(r / "results.csv").dropna(subset=["error"]) for r in (run, first))
    assert list(a["layers"]) == list(b["layers"]) and not np.allclose(a["error"], b["error"])
    capsys.readouterr()
    before = (run / "results.csv").read_text()
    assert search(run) == 2  # resumed without the flag: refused, naming the setting
    err = capsys.readouterr().err.strip()
    assert "inherit: 'importance' then, 'first' now" in err and len(err.splitlines()) == 1
    assert search(run, "--inherit", "importance") == 0  # the same flags: finished at once
    assert (run / "results.csv").read_text() == before
    out = tmp_path / "student"
    assert main(["pretrain", str(run), "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--seq-len", "32", "--eval-every", "2", "--quiet"]) == 0
    name = "-".join(map(str, json.loads((run / "best.json").read_text())["size"]))
    summary = json.loads((run / "pretrain" / name / "summary.json").read_text())
    assert summary["init"] == "teacher" and summary["inherit"] == "importance"
    assert "most important heads and units" in (out / "README.md").read_text()


def test_layer_maps_by_rule():
    from bortsearch.model.encoder import layer_map, teacher_layers

    assert layer_map("uniform", 2, 6) == teacher_layers(2, 6) == [2, 5]
    assert layer_map("first", 2, 6) == [0, 1]
    assert layer_map("alternate", 6, 12) == [0, 2, 4, 6, 8, 10]  # DistilBERT's
    assert layer_map("alternate", 3, 6) == [0, 2, 4]
    assert layer_map("first", 8, 6) == list(range(6))  # deeper: every teacher layer
    arch = _arch("bert", layers=4)
    params = _params(arch)
    student = arch.with_size(2, 4, 16, 24)
    got = inherit_params(student, arch, params, layers=[0, 3])
    q = params["params"]["layers"]["attention"]["query"]["kernel"]
    np.testing.assert_array_equal(got["params"]["layers"]["attention"]["query"]["kernel"],
                                  q[[0, 3]])
    with pytest.raises(ValueError, match="layers"):
        inherit_params(student, arch, params, layers=[0, 4])


def test_measured_layers_find_the_map_that_reproduces_the_teacher():
    """A teacher whose top layer does nothing (zero output projections: post-LN of a
    normalised input) computes what its first two layers do; for a 2-layer student the
    measured map is those two layers, with KL 0, where the uniform map keeps the top."""
    import jax

    from bortsearch.train.importance import candidate_layer_maps, measured_layers
    from bortsearch.train.step import teacher_logits

    arch = _arch("bert", layers=3)
    params = jax.tree.map(lambda x: 5 * x if x.ndim == 3 else x, _params(arch))  # layers matter
    lay = params["params"]["layers"]
    lay["ffn_ln"]["scale"][1], lay["ffn_ln"]["bias"][1] = 1, 0  # layer 1's output normalised
    for ln in ("attention_ln", "ffn_ln"):  # and layer 2 leaves it as it is
        lay[ln]["scale"][2], lay[ln]["bias"][2] = 1, 0
    for part in (lay["attention"]["out"], lay["ffn"]["outer"]):
        part["kernel"][2] = 0
        part["bias"][2] = 0
    batch = _batches(arch, 1)[0]
    student = arch.with_size(2, 4, 16, 24)
    assert candidate_layer_maps(2, 3) == [[0, 2], [0, 1], [1, 2]]  # uniform, alternate, rest
    best, kls = measured_layers(student, arch, params, batch,
                                teacher_logits(arch, params, batch))
    assert best == [0, 1] and set(kls) == {"1-2", "0-1", "0-2"}
    assert kls["0-1"] < 1e-4 and min(kls["1-2"], kls["0-2"]) > 100 * kls["0-1"] + 1e-3


def test_search_with_measured_layers_and_pretrain_following_it(space, teacher, tmp_path):
    import json

    from bortsearch.cli import main

    run = tmp_path / "r"
    assert main(["search", "--space", str(space), "--run", str(run), "--teacher", str(teacher),
                 "--steps", "2", "--batch-size", "8", "--seq-len", "32", "--epsilon", "4",
                 "--quiet", "--inherit-layers", "measured"]) == 0
    assert json.loads((run / "config.json").read_text())["inherit_layers"] == "measured"
    # the journal records the map each candidate inherited: D_S increasing teacher layers
    teacher_layers = json.loads((run / "best.json").read_text())["maximum_point"]["arch"][
        "layers"]
    done = [e for e in map(json.loads, (run / "journal.jsonl").read_text().splitlines())
            if e["event"] == "done"]
    assert done
    for e in done:
        depth, layers = e["arch"][0], e["timing"]["layers"]
        assert len(layers) == min(depth, teacher_layers) and layers == sorted(set(layers))
        assert all(0 <= k < teacher_layers for k in layers)
    assert main(["pretrain", str(run), "--out", str(tmp_path / "s"), "--arch", "1,2,16,32",
                 "--steps", "1", "--batch-size", "8", "--seq-len", "32", "--eval-every", "1",
                 "--quiet"]) == 0
    summary = json.loads((run / "pretrain" / "1-2-16-32" / "summary.json").read_text())
    assert summary["inherit_layers"] == "measured" and summary["inherit"] == "first"


@pytest.mark.parametrize("kind", ["bert", "albert, factorised and shared", "deberta-v2",
                                  "modernbert"])
def test_gate_derivatives_match_finite_differences(kind):
    """Each importance is |∂L/∂g| of a gate g that scales a unit's parameters: the
    one-backward-pass sums equal the loss's finite differences in g, for a head, a
    feed-forward unit and a hidden unit (LayerNorm outputs everywhere, or ALBERT's
    E→H map, or a pre-LayerNorm family's residual writes), shared layers included."""
    import jax

    from bortsearch.train.importance import _gate_sums
    from bortsearch.train.step import loss_and_metrics

    arch = _arch(kind, layers=2)
    params = jax.tree.map(lambda x: x.astype(np.float64), _params(arch))
    batch = _batches(arch, 1)[0]
    with jax.enable_x64(True):
        loss = lambda q: float(loss_and_metrics(q, arch, batch, None, None)[0])  # noqa: E731
        grads = jax.grad(lambda q: loss_and_metrics(q, arch, batch, None, None)[0])(params)
        heads, ffn, hidden = (np.asarray(x) for x in _gate_sums(arch, params, grads))

        def scaled(g, edits):
            q = jax.tree.map(np.array, params)
            for path, index in edits:
                leaf = q["params"]
                for k in path[:-1]:
                    leaf = leaf[k]
                leaf[path[-1]][index] *= g
            return q

        def derivative(edits, d=3e-2):  # the model computes in float32
            return (loss(scaled(1 + d, edits)) - loss(scaled(1 - d, edits))) / (2 * d)

        dh = arch.head_dim  # head 1 of group 0: its columns of the value projection
        head = [(("layers", "attention", "value", "kernel"), (0, slice(None), slice(dh, 2 * dh)))]
        if arch.family.bias:
            head += [(("layers", "attention", "value", "bias"), (0, slice(dh, 2 * dh)))]
        assert derivative(head) == pytest.approx(heads[0, 1], rel=2e-2, abs=1e-7)
        unit = [(("layers", "ffn", "outer", "kernel"), (arch.num_groups - 1, 5, slice(None)))]
        assert derivative(unit) == pytest.approx(ffn[-1, 5], rel=2e-2, abs=1e-7)
        k = 3
        if arch.family.norm == "pre":  # its writes, and the norms that read the stream
            stream = [(("embeddings", "ln", "scale"), (k,)), (("final_ln", "scale"), (k,))]
            stream += [(("layers", *part, "kernel"), (slice(None), slice(None), k))
                       for part in (("attention", "out"), ("ffn", "outer"))]
            stream += [(("layers", ln, "scale"), (slice(None), k))
                       for ln in ("attention_ln", "ffn_ln")]
            # at g = 0 the unit is off: 0 in the stream after every layer and in the final
            # norm's output (an independent check of the set)
            from bortsearch.model.encoder import Encoder, with_hidden_states

            off = jax.tree.map(lambda x: x.astype(np.float32), scaled(0.0, stream))
            ids, mask = batch["input_ids"], batch["attention_mask"]
            _, states = with_hidden_states(Encoder(arch, head=False), off, ids, mask)
            assert np.abs(np.asarray(states)[..., k]).max() == 0
            last = Encoder(arch, head=False).apply(off, ids, mask)
            assert np.abs(np.asarray(last)[..., k]).max() == 0
        else:
            stream = [(("layers", ln, key), (slice(None), k))
                      for ln in ("attention_ln", "ffn_ln") for key in ("scale", "bias")]
            stream += ([(("embeddings", "ln", key), (k,)) for key in ("scale", "bias")]
                       if arch.embedding is None else
                       [(("embedding_map", "kernel"), (slice(None), k)),
                        (("embedding_map", "bias"), (k,))])
        if "relative_ln" in params["params"]:  # DeBERTa: the unit's column of the table
            stream += [(("relative_ln", key), (k,)) for key in ("scale", "bias")]
        assert derivative(stream) == pytest.approx(hidden[k], rel=2e-2, abs=1e-7)
        assert abs(heads[0, 1]) > 1e-6 and abs(ffn[-1, 5]) > 1e-6 and abs(hidden[k]) > 1e-6
