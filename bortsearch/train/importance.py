"""Which attention heads, feed-forward units and hidden units of a teacher matter,
and a rewiring of the teacher that puts them first without changing its function.

A student inherits the leading block of every axis of the teacher
(`encoder.inherit_params`): the first heads, the first feed-forward units, the first
hidden units. Which come first is an accident of training. `importance` measures
them on a few masked-LM batches, and `rewire` permutes the teacher so that the most
important lead, computing exactly what it computed before; the leading-block slice
then takes the most important ones, and inheritance stays one code path [ours,
after DynaBERT's head and neuron reordering].

Each importance is the first-order estimate of what the masked-LM loss would lose
if the unit were switched off by a gate g (g = 1 now), |∂L/∂g| [Michel et al. 2019,
"Are Sixteen Heads Really Better than One?"], taken per batch and averaged over
batches. The gates need no change to the model: a gate scaling parameters θ has
∂L/∂g = Σ θ · ∂L/∂θ over those parameters, so one backward pass gives every gate.

- **A head** of a layer (group): a gate on its context vectors; they are linear in the
  head's value parameters, so the gate scales its columns of the value projection.
- **A feed-forward unit**: a gate on its activation, which scales its row of the
  output projection.
- **A hidden unit**: the residual stream is shared by every layer, so a hidden unit
  has one order for the whole model. Its gate switches it off wherever the stream is
  written: at the output of every LayerNorm (the embeddings' and each layer's two,
  whose scale and bias it scales) and, with factorised embeddings, at the E→H map; in
  pre-LayerNorm blocks (ModernBERT's), where the stream is written (the embeddings'
  LayerNorm and every block's two residual writes: its columns of the attention output
  and feed-forward output projections) and where it is read (the output of every block's
  two LayerNorms and of the final one, which would otherwise give the zeroed unit
  −μ/σ·γ). That is what a narrower student loses when the unit is cut from every tensor
  (up to the LayerNorms' statistics, which still count the unit, at 0).

Heads are permuted whole, so rotary positions (which rotate pairs inside a head) and
gated feed-forward blocks (a unit's inner and gate columns move together) are rewired
as the rest.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bortsearch.model.arch import Arch

Params = dict


@dataclasses.dataclass(frozen=True)
class Importance:
    """Per layer group, the importance of each head (G x A) and feed-forward unit
    (G x I); the hidden units' (H), shared by every layer."""

    heads: np.ndarray
    ffn: np.ndarray
    hidden: np.ndarray
    batches: int

    def to_dict(self) -> dict:
        return {"heads": self.heads.tolist(), "ffn": self.ffn.tolist(),
                "hidden": self.hidden.tolist(), "batches": self.batches}

    @classmethod
    def from_dict(cls, d: dict) -> Importance:
        return cls(np.asarray(d["heads"], np.float64), np.asarray(d["ffn"], np.float64),
                   np.asarray(d["hidden"], np.float64), int(d["batches"]))

    def orders(self) -> Orders:
        """Most important first (ties: the lower index)."""
        first = lambda x: np.argsort(-x, axis=-1, kind="stable")  # noqa: E731
        return Orders(first(self.heads), first(self.ffn), first(self.hidden))


@dataclasses.dataclass(frozen=True)
class Orders:
    """Permutations: heads and feed-forward units per layer group (G x A, G x I),
    hidden units for the whole model (H). New position i takes old unit order[i]."""

    heads: np.ndarray
    ffn: np.ndarray
    hidden: np.ndarray

    @classmethod
    def identity(cls, arch: Arch) -> Orders:
        g = arch.num_groups
        return cls(np.tile(np.arange(arch.heads), (g, 1)),
                   np.tile(np.arange(arch.intermediate), (g, 1)), np.arange(arch.hidden))


def _gate_sums(arch: Arch, params: Params, grads: Params) -> tuple:
    """∂L/∂g for every gate of one batch: (G x A, G x I, H)."""
    p, g = params["params"], grads["params"]
    pg = lambda *path: (_get(p, path) * _get(g, path) if _has(p, path)  # noqa: E731
                        else 0.0)  # a family without biases has no such term
    lay = ("layers",)
    value_cols = (pg(*lay, "attention", "value", "kernel").sum(1)
                  + pg(*lay, "attention", "value", "bias"))  # G x H
    heads = value_cols.reshape(arch.num_groups, arch.heads, arch.head_dim).sum(-1)
    ffn = pg(*lay, "ffn", "outer", "kernel").sum(-1)  # G x I
    embeddings = pg("embeddings", "ln", "scale") + pg("embeddings", "ln", "bias")
    if arch.family.norm == "pre":  # written by the blocks' projections, read through norms
        terms = [pg(*lay, *part, leaf) for part in (("attention", "out"), ("ffn", "outer"))
                 for leaf in ("kernel", "bias")]  # G x H x H, G x H (or no bias: 0)
        terms += [pg(*lay, ln, k) for ln in ("attention_ln", "ffn_ln") for k in ("scale", "bias")]
        terms += [pg("final_ln", k) for k in ("scale", "bias")]
        return heads, ffn, embeddings + sum(
            jnp.reshape(t, (-1, arch.hidden)).sum(0) for t in terms if jnp.ndim(t))
    hidden = sum(pg(*lay, ln, k).sum(0) for ln in ("attention_ln", "ffn_ln")
                 for k in ("scale", "bias"))
    if "relative_ln" in p:  # DeBERTa: a unit's column of the relative table, read by c2p/p2c
        hidden = hidden + pg("relative_ln", "scale") + pg("relative_ln", "bias")
    if arch.embedding is None:
        hidden = hidden + embeddings
    else:
        hidden = (hidden + pg("embedding_map", "kernel").sum(0)
                  + pg("embedding_map", "bias"))
    return heads, ffn, hidden


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


@functools.partial(jax.jit, static_argnums=0)
def _batch_gates(arch: Arch, params, batch):
    from bortsearch.train.step import loss_and_metrics

    grads = jax.grad(lambda q: loss_and_metrics(q, arch, batch, None, None)[0])(params)
    return tuple(jnp.abs(x) for x in _gate_sums(arch, params, grads))


def _check_blocks(arch: Arch) -> None:
    """The gates and the rewiring know post- and pre-LayerNorm blocks with a plain or a
    gated feed-forward block; a family with another block must teach them first."""
    if arch.family.norm not in ("post", "pre") or arch.family.ffn not in ("mlp", "glu"):
        raise ValueError(f"importance and rewire know no {arch.family.norm!r} norm or "
                         f"{arch.family.ffn!r} feed-forward block ({arch.family.title})")


def importance(arch: Arch, params: Params, batches) -> Importance:
    """The teacher's importances on masked-LM `batches` (dicts as `BatchSpec` makes
    them), each |∂L/∂g| of its batch's mean cross-entropy, averaged over batches."""
    _check_blocks(arch)
    batches = list(batches)
    if not batches:
        raise ValueError("importance needs at least one batch")
    keep = ("input_ids", "attention_mask", "token_type_ids", "positions", "labels", "weights")
    sums = None
    for batch in batches:
        got = _batch_gates(arch, params, {k: batch[k] for k in keep if k in batch})
        got = [np.asarray(x, np.float64) for x in got]
        sums = got if sums is None else [a + b for a, b in zip(sums, got)]
    return Importance(*(s / len(batches) for s in sums), batches=len(batches))


def rewire(arch: Arch, params: Params, orders: Orders) -> Params:
    """The same model with its heads, feed-forward units and hidden units permuted
    by `orders`: every tensor that reads or writes an axis is permuted along it, so
    the function is unchanged (to float rounding). Works on masked-LM, classifier
    and sentence-order parameter trees of every family (tied or untied decoders,
    factorised embeddings, shared layer groups)."""
    _check_blocks(arch)
    p = jax.tree.map(np.asarray, params["params"])
    h = np.asarray(orders.hidden)
    cols = np.stack([(o[:, None] * arch.head_dim + np.arange(arch.head_dim)).ravel()
                     for o in np.asarray(orders.heads)])  # G x H: head columns
    ffn = np.asarray(orders.ffn)
    per_group = lambda x, idx, axis: np.stack(  # noqa: E731
        [np.take(x[g], idx[g], axis=axis) for g in range(x.shape[0])])
    out = jax.tree.map(lambda x: x, p)  # a copy of the tree's structure

    def put(path, value):
        tree = out
        for k in path[:-1]:
            tree = tree[k]
        tree[path[-1]] = value

    L = ("layers",)
    att, f = L + ("attention",), L + ("ffn",)

    def put_if(path, value):  # a family without biases (ModernBERT) has no such leaf
        if _has(p, path):
            put(path, value(_get(p, path)))

    for name in ("query", "key", "value"):
        k = _get(p, att + (name, "kernel"))  # G x H x H: rows read the stream
        put(att + (name, "kernel"), per_group(k[:, h, :], cols, 1))
        put_if(att + (name, "bias"), lambda b: per_group(b, cols, 0))
    k = _get(p, att + ("out", "kernel"))  # G x H(heads) x H(stream)
    put(att + ("out", "kernel"), per_group(k, cols, 0)[:, :, h])
    put_if(att + ("out", "bias"), lambda b: b[:, h])
    for name in ("inner", "gate"):  # a gated block's two I-wide projections move together
        put_if(f + (name, "kernel"), lambda k: per_group(k[:, h, :], ffn, 1))  # G x H x I
        put_if(f + (name, "bias"), lambda b: per_group(b, ffn, 0))
    k = _get(p, f + ("outer", "kernel"))  # G x I x H
    put(f + ("outer", "kernel"), per_group(k, ffn, 0)[:, :, h])
    put_if(f + ("outer", "bias"), lambda b: b[:, h])
    for ln in ("attention_ln", "ffn_ln"):
        for key in ("scale", "bias"):
            put_if(L + (ln, key), lambda x: x[:, h])
    for key in ("scale", "bias"):  # a pre-LayerNorm family's last norm
        put_if(("final_ln", key), lambda x: x[h])
    factorised = arch.embedding is not None
    if factorised:  # the stream starts at the E→H map; the E-wide tables stay
        put(("embedding_map", "kernel"), p["embedding_map"]["kernel"][:, h])
        put(("embedding_map", "bias"), p["embedding_map"]["bias"][h])
    else:
        for table in ("word", "position", "token_type"):
            if table in p["embeddings"]:
                put(("embeddings", table, "embedding"), p["embeddings"][table]["embedding"][:, h])
        for key in ("scale", "bias"):
            put_if(("embeddings", "ln", key), lambda x: x[h])
    if "head" in p:  # H -> E, LayerNorm at E, decoder: E is H unless factorised
        head = p["head"]
        kernel = head["transform"]["kernel"][h, :]
        if not factorised:  # its output meets the (permuted) word table
            kernel = kernel[:, h]
            put_if(("head", "transform", "bias"), lambda b: b[h])
            for key in ("scale", "bias"):
                put_if(("head", "ln", key), lambda x: x[h])
            if "decoder" in head:
                put(("head", "decoder", "kernel"), head["decoder"]["kernel"][h, :])
        put(("head", "transform", "kernel"), kernel)
    if "relative_embedding" in p:  # DeBERTa's table, read by the (permuted) query and key rows
        put(("relative_embedding",), p["relative_embedding"][:, h])
        for key in ("scale", "bias"):
            put(("relative_ln", key), p["relative_ln"][key][h])
    for reader in (("pooler",), ("classifier", "dense")):  # read the first token's state
        if _has(p, reader + ("kernel",)):
            put(reader + ("kernel",), _get(p, reader + ("kernel",))[h, :])
    if _has(p, ("classifier", "kernel")) and not _has(p, ("pooler",)):
        raise ValueError("a classifier without a pooler: unknown head layout")
    return {"params": out}


def _has(tree, path) -> bool:
    for k in path:
        if not isinstance(tree, dict) or k not in tree:
            return False
        tree = tree[k]
    return True


def candidate_layer_maps(student_layers: int, teacher_layers: int,
                         limit: int = 128) -> list[list[int]]:
    """The layer maps `measured_layers` tries, in order of preference on a tie: the
    fixed rules (uniform, alternate, first), then every other increasing choice of
    teacher layers while there are at most `limit` of them."""
    import itertools
    import math

    from bortsearch.model.encoder import layer_map

    maps = []
    for rule in ("uniform", "alternate", "first"):
        m = layer_map(rule, student_layers, teacher_layers)
        if m not in maps:
            maps.append(m)
    if student_layers < teacher_layers and math.comb(teacher_layers, student_layers) <= limit:
        maps += [list(c) for c in itertools.combinations(range(teacher_layers), student_layers)
                 if list(c) not in maps]
    return maps


def measured_layers(arch: Arch, teacher_arch: Arch, teacher_params: Params, batch,
                    teacher_logits, seed: int = 0) -> tuple[list[int], dict]:
    """The layer map whose inherited student (before any training) is closest to the
    teacher: the lowest KL(teacher ‖ student) on one `batch` (the search's first
    training batch), over `candidate_layer_maps` (ties: the earlier). Returns the map
    and every map's KL."""
    from bortsearch.model.encoder import classifier_outputs, inherit_params
    from bortsearch.train.step import eval_sums

    if arch.num_groups >= teacher_arch.num_groups:
        return list(range(teacher_arch.num_groups)), {}
    kls = {}
    for m in candidate_layer_maps(arch.num_groups, teacher_arch.num_groups):
        params = inherit_params(arch, teacher_arch, teacher_params, seed, layers=m,
                                num_labels=classifier_outputs(teacher_params))
        sums = eval_sums(arch, params, batch, teacher_logits)
        kls[tuple(m)] = float(sums["kl"]) / max(float(sums["n"]), 1.0)
    best = min(kls, key=lambda m: kls[m])  # dicts keep order: the earlier wins a tie
    return list(best), {"-".join(map(str, m)): v for m, v in kls.items()}


def inherited_layers(rule: str, arch: Arch, teacher_arch: Arch, teacher_params: Params,
                     measuring, seed: int = 0) -> list[int]:
    """The teacher layers `arch` inherits by `rule` (encoder.LAYER_RULES); for
    "measured", `measuring()` gives the batch and the teacher's logits on it (called
    only then, so callers can compute it once for all students)."""
    from bortsearch.model.encoder import layer_map, typed_layer_map

    if rule != "measured":  # a fixed map, each pick of the student layer's attention type
        return typed_layer_map(layer_map(rule, arch.num_groups, teacher_arch.num_groups),
                               arch, teacher_arch)
    return measured_layers(arch, teacher_arch, teacher_params, *measuring(), seed)[0]
