"""The encoder as an ONNX graph, run by ONNX Runtime, in float32 or int8.

Why a graph built with `onnx.helper` rather than a general exporter: the project has
one encoder (`bortsearch.model.encoder`), whose forward pass is a few dozen
operators, and a general JAX→ONNX converter (jax2onnx) would add a fast-moving
dependency that traces Flax's scans and custom VJPs. Building the graph directly
from the parameter tree keeps the operators the plain ones that ONNX Runtime fuses
(LayerNormalization, MatMul, Softmax, Erf) and that its dynamic quantiser knows
(MatMul weights become int8). Parity with `Model.logits` is a test, per family.

The graph takes `input_ids`, `attention_mask` and `token_type_ids` (int64,
batch x sequence, both axes dynamic; no `token_type_ids` for a family without token
types, as DistilBERT's tokenizer gives none) and returns `logits`: batch x sequence x
vocabulary for a masked-LM model, batch x labels for a classifier.

int8: `onnxruntime.quantization.quantize_dynamic` (weights int8 per tensor,
activations quantised at run time), ONNX Runtime's own tool.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from bortsearch.errors import UserError
from bortsearch.model.encoder import Model

OPSET = 17  # LayerNormalization is in the default domain from 17
ONNX_NAME = "model.onnx"
INT8_NAME = "model_quantized.onnx"  # Optimum's name for the dynamically quantised graph
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def require_onnx():
    """onnx and onnxruntime, or one line that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise UserError(f"ONNX export and runtime need the onnx extra ({e.name} is not "
                        f"installed); install it with: pip install 'bortsearch[onnx]'") from None
    return onnx, onnxruntime


class _Graph:
    """Nodes and initialisers, with fresh names."""

    def __init__(self, onnx):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def dense(self, x: str, kernel, bias=None, hint: str = "dense") -> str:
        y = self.op("MatMul", x, self.const(np.asarray(kernel, np.float32), f"{hint}_kernel"))
        if bias is not None:
            y = self.op("Add", y, self.const(np.asarray(bias, np.float32), f"{hint}_bias"))
        return y

    def layer_norm(self, x: str, ln, eps: float, hint: str = "ln") -> str:
        bias = ([self.const(np.asarray(ln["bias"], np.float32), f"{hint}_bias")]
                if "bias" in ln else [])  # a family without biases (ModernBERT)
        return self.op("LayerNormalization", x,
                       self.const(np.asarray(ln["scale"], np.float32), f"{hint}_scale"),
                       *bias, axis=-1, epsilon=float(eps))

    def rotate(self, x: str, cos: str, sin: str, head_dim: int) -> str:
        """Rotary embedding of B x A x L x Dh: x·cos + (−x₂, x₁)·sin, x₁ and x₂ the
        halves of each head."""
        x1, x2 = self.name("half"), self.name("half")
        halves = self.const(np.array([head_dim // 2, head_dim // 2], np.int64))
        self.nodes.append(self.helper.make_node("Split", [x, halves], [x1, x2], axis=-1))
        half = self.op("Concat", self.op("Neg", x2), x1, axis=-1)
        return self.op("Add", self.op("Mul", x, cos), self.op("Mul", half, sin))

    def gelu(self, x: str, approximate: bool) -> str:
        half = self.const(np.float32(0.5))
        one = self.const(np.float32(1.0))
        if approximate:  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            cube = self.op("Mul", self.op("Mul", x, x), x)
            inner = self.op("Add", x, self.op("Mul", cube, self.const(np.float32(0.044715))))
            t = self.op("Tanh", self.op("Mul", inner,
                                        self.const(np.float32(np.sqrt(2 / np.pi)))))
        else:  # 0.5·x·(1 + erf(x/√2))
            t = self.op("Erf", self.op("Mul", x, self.const(np.float32(1 / np.sqrt(2)))))
        return self.op("Mul", self.op("Mul", x, half), self.op("Add", t, one))

    def activation(self, x: str, name: str) -> str:
        """A classification head's activation: "tanh", "relu" or (exact) "gelu"."""
        if name == "gelu":
            return self.gelu(x, approximate=False)
        return self.op({"tanh": "Tanh", "relu": "Relu"}[name], x)


def onnx_graph(model: Model, head: bool = True):
    """The model's forward pass as an `onnx.ModelProto` (float32). `head=False`
    returns the encoder's last hidden states (`last_hidden_state`, batch x sequence
    x H), as a student deployed downstream runs it without the masked-LM head."""
    onnx, _ = require_onnx()
    arch = model.arch
    p = {k: v for k, v in model.params["params"].items()}
    g = _Graph(onnx)
    i64 = onnx.TensorProto.INT64
    ids, mask, types = INPUTS
    # embeddings: word + position + token type, LayerNorm at E
    emb = p["embeddings"]
    x = g.op("Gather", g.const(np.asarray(emb["word"]["embedding"], np.float32), "word"), ids)
    if arch.family.positions == "padded":  # counted over non-padding tokens
        pad = g.const(np.int64(arch.pad_token_id))
        not_pad = g.op("Cast", g.op("Not", g.op("Equal", ids, pad)), to=i64)
        pos = g.op("Add", g.op("Mul", g.op("CumSum", not_pad, g.const(np.int64(1))), not_pad),
                   g.const(np.int64(arch.pad_token_id)))
    else:  # 0 .. L-1
        length = g.op("Gather", g.op("Shape", ids), g.const(np.int64(1)), axis=0)
        pos = g.op("Range", g.const(np.int64(0)), length, g.const(np.int64(1)))
    if arch.has_position_table:
        x = g.op("Add", x, g.op("Gather", g.const(np.asarray(emb["position"]["embedding"],
                                                             np.float32), "position"), pos))
    if arch.type_vocab_size:
        x = g.op("Add", x, g.op("Gather", g.const(np.asarray(emb["token_type"]["embedding"],
                                                             np.float32), "token_type"), types))
    x = g.layer_norm(x, emb["ln"], arch.layer_norm_eps, "embeddings_ln")
    if arch.embedding is not None:  # ALBERT's E -> H map
        x = g.dense(x, p["embedding_map"]["kernel"], p["embedding_map"]["bias"], "embedding_map")
    # the additive attention mask, B x 1 x 1 x L: 0 where attended, float32's min where padded
    keep = g.op("Cast", g.op("Greater", mask, g.const(np.int64(0))), to=onnx.TensorProto.BOOL)
    zero, neg = g.const(np.float32(0.0)), g.const(np.float32(np.finfo(np.float32).min))
    keep = g.op("Unsqueeze", keep, g.const(np.array([1, 2], np.int64)))
    bias = g.op("Where", keep, zero, neg)
    if arch.family.norm == "pre":  # ModernBERT's blocks: their own loop
        x = _pre_norm_layers(g, arch, p, x, pos, keep, bias, zero, neg)
        return _finish(g, model, arch, p, x, head)
    a, dh, h = arch.heads, arch.head_dim, arch.hidden
    heads_shape = g.const(np.array([0, 0, a, dh], np.int64), "heads_shape")
    hidden_shape = g.const(np.array([0, 0, h], np.int64), "hidden_shape")
    relative = None
    if arch.family.positions == "relative":
        scale = g.const(np.float32(1 / np.sqrt(3 * dh)), "score_scale")
        relative = _relative_parts(g, arch, p, ids)
    else:
        scale = g.const(np.float32(1 / np.sqrt(dh)), "score_scale")
    layers = p["layers"]
    gelu_new = arch.activation == "gelu_new"
    for i in range(arch.layers):
        lp = _layer_params(arch, layers, i)
        att = lp["attention"]

        def split(name, perm):
            t = g.dense(x, att[name]["kernel"], att[name]["bias"], f"l{i}_{name}")
            return g.op("Transpose", g.op("Reshape", t, heads_shape), perm=perm)

        q = split("query", [0, 2, 1, 3])  # B x A x L x Dh
        k = split("key", [0, 2, 3, 1])  # B x A x Dh x L
        v = split("value", [0, 2, 1, 3])
        scores = g.op("MatMul", q, k)
        if relative is not None:  # DeBERTa: + c2p + p2c, all over √(3·Dh)
            scores = g.op("Add", scores, _disentangled(g, arch, att, relative, q, k, scores))
        scores = g.op("Add", g.op("Mul", scores, scale), bias)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), hidden_shape)
        out = g.dense(ctx, att["out"]["kernel"], att["out"]["bias"], f"l{i}_out")
        x = g.layer_norm(g.op("Add", x, out), lp["attention_ln"], arch.layer_norm_eps)
        ffn = lp["ffn"]
        inner = g.gelu(g.dense(x, ffn["inner"]["kernel"], ffn["inner"]["bias"], f"l{i}_inner"),
                       gelu_new)
        out = g.dense(inner, ffn["outer"]["kernel"], ffn["outer"]["bias"], f"l{i}_outer")
        x = g.layer_norm(g.op("Add", x, out), lp["ffn_ln"], arch.layer_norm_eps)
    return _finish(g, model, arch, p, x, head)


def _relative_parts(g: _Graph, arch, p: dict, ids: str):
    """DeBERTa's normalised relative table (a constant, NumPy) and the L x L index into
    it, cut from the longest input's (the index depends on i − j alone)."""
    from bortsearch.model.encoder import relative_index

    table = np.asarray(p["relative_embedding"], np.float64)
    ln = p["relative_ln"]
    mean, var = table.mean(-1, keepdims=True), table.var(-1, keepdims=True)
    table = (table - mean) / np.sqrt(var + arch.layer_norm_eps) * ln["scale"] + ln["bias"]
    length = g.op("Unsqueeze", g.op("Gather", g.op("Shape", ids), g.const(np.int64(1)), axis=0),
                  g.const(np.array([0], np.int64)))
    zeros = g.const(np.array([0, 0], np.int64))
    ends = g.op("Concat", length, length, axis=0)
    index = relative_index(arch, arch.max_positions).astype(np.int64)
    index = g.op("Slice", g.const(index, "relative_index"), zeros, ends,
                 g.const(np.array([0, 1], np.int64)))
    return table.astype(np.float32), index


def _disentangled(g: _Graph, arch, att: dict, relative, q: str, k: str, like: str) -> str:
    """c2p + p2c (unscaled) for one layer, B x A x L x L (`encoder.disentangled`):
    the table's keys and queries are constants of the layer's weights."""
    table, index = relative
    a, dh = arch.heads, arch.head_dim

    def heads(kind):  # A x Dh x 2k: the table through the layer's query or key
        t = table @ np.asarray(att[kind]["kernel"]) + np.asarray(att[kind]["bias"])
        return g.const(t.reshape(-1, a, dh).transpose(1, 2, 0).astype(np.float32), kind)

    shape = g.op("Shape", like)
    c2p_index = g.op("Expand", index, shape)
    p2c_index = g.op("Expand", g.op("Transpose", index, perm=[1, 0]), shape)
    c2p = g.op("GatherElements", g.op("MatMul", q, heads("key")), c2p_index, axis=3)
    keys = g.op("Transpose", k, perm=[0, 1, 3, 2])  # B x A x L x Dh
    p2c = g.op("GatherElements", g.op("MatMul", keys, heads("query")), p2c_index, axis=3)
    return g.op("Add", c2p, g.op("Transpose", p2c, perm=[0, 1, 3, 2]))


def _layer_params(arch, layers, i: int) -> dict:
    """Layer i's parameters (ALBERT: its group's) as NumPy arrays."""
    grp = i * arch.num_groups // arch.layers  # ALBERT's contiguous blocks
    return {part: {k: np.asarray(v[grp]) if not isinstance(v, dict)
                   else {kk: np.asarray(vv[grp]) for kk, vv in v.items()}
                   for k, v in tree.items()}
            for part, tree in layers.items()}


def _pre_norm_layers(g: _Graph, arch, p: dict, x: str, pos: str, keep: str, bias: str,
                     zero: str, neg: str) -> str:
    """ModernBERT's layers (as `encoder.PreNormLayer`): rotary queries and keys, the
    local layers' window mask, the gated feed-forward block; then the final norm."""
    from bortsearch.model.encoder import rope_tables

    a, dh, h = arch.heads, arch.head_dim, arch.hidden
    heads_shape = g.const(np.array([0, 0, a, dh], np.int64), "heads_shape")
    hidden_shape = g.const(np.array([0, 0, h], np.int64), "hidden_shape")
    scale = g.const(np.float32(1 / np.sqrt(dh)), "score_scale")
    length = g.op("Unsqueeze", g.op("Gather", g.op("Shape", pos), g.const(np.int64(0)), axis=0),
                  g.const(np.array([0], np.int64)))

    def tables(theta):  # cos, sin: L x Dh, cut from the longest input's
        return [g.op("Slice", g.const(np.asarray(t, np.float32)), g.const(np.array([0])),
                     length, g.const(np.array([0])))
                for t in rope_tables(theta, dh, arch.max_positions)]

    rope = {True: tables(arch.rope_theta)}
    masks = {True: bias}
    if arch.local_window is not None:
        rope[False] = tables(arch.local_rope_theta)
        rows = g.op("Unsqueeze", pos, g.const(np.array([1], np.int64)))
        cols = g.op("Unsqueeze", pos, g.const(np.array([0], np.int64)))
        near = g.op("LessOrEqual", g.op("Abs", g.op("Sub", rows, cols)),
                    g.const(np.int64(arch.local_window // 2)))  # L x L
        masks[False] = g.op("Where", g.op("And", keep, near), zero, neg)
    for i in range(arch.layers):
        lp = _layer_params(arch, p["layers"], i)
        att, ffn, glob = lp["attention"], lp["ffn"], arch.is_global(i)
        y = x if i == 0 else g.layer_norm(x, lp["attention_ln"], arch.layer_norm_eps)

        def split(name, src=y, at=att, layer=i):
            t = g.dense(src, at[name]["kernel"], at[name].get("bias"), f"l{layer}_{name}")
            return g.op("Transpose", g.op("Reshape", t, heads_shape), perm=[0, 2, 1, 3])

        cos, sin = rope[glob]
        q = g.rotate(split("query"), cos, sin, dh)
        k = g.op("Transpose", g.rotate(split("key"), cos, sin, dh), perm=[0, 1, 3, 2])
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), masks[glob])
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), split("value"))
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), hidden_shape)
        x = g.op("Add", x, g.dense(ctx, att["out"]["kernel"], att["out"].get("bias"),
                                   f"l{i}_out"))
        y = g.layer_norm(x, lp["ffn_ln"], arch.layer_norm_eps)
        inner = g.gelu(g.dense(y, ffn["inner"]["kernel"], ffn["inner"].get("bias"),
                               f"l{i}_inner"), arch.activation == "gelu_new")
        if "gate" in ffn:
            inner = g.op("Mul", inner, g.dense(y, ffn["gate"]["kernel"],
                                               ffn["gate"].get("bias"), f"l{i}_gate"))
        x = g.op("Add", x, g.dense(inner, ffn["outer"]["kernel"], ffn["outer"].get("bias"),
                                   f"l{i}_outer"))
    return g.layer_norm(x, p["final_ln"], arch.layer_norm_eps, "final_ln")


def _finish(g: _Graph, model: Model, arch, p: dict, x: str, head: bool):
    """The head on the last hidden states, the graph's output, and the checked model."""
    onnx = g.onnx
    i64 = onnx.TensorProto.INT64
    h, emb, gelu_new = arch.hidden, p["embeddings"], arch.activation == "gelu_new"
    if not head and not model.num_labels:
        logits, out_shape = x, ["batch", "sequence", h]
    elif model.num_labels:
        first = g.op("Gather", x, g.const(np.int64(0)), axis=1)  # B x H
        act = arch.family.classifier_act
        if arch.family.classifier == "head":  # ModernBERT: norm(act(dense(x₀))) → linear
            if arch.pooling == "mean":  # the unpadded tokens' mean instead of the first's
                m = g.op("Unsqueeze", g.op("Cast", INPUTS[1], to=onnx.TensorProto.FLOAT),
                         g.const(np.array([2], np.int64)))
                first = g.op("Div", g.op("ReduceSum", g.op("Mul", x, m),
                                         g.const(np.array([1], np.int64)), keepdims=0),
                             g.op("ReduceSum", m, g.const(np.array([1], np.int64)), keepdims=0))
            c = p["classifier"]
            y = g.activation(g.dense(first, c["dense"]["kernel"], c["dense"].get("bias"),
                                     "cls_dense"), act)
            y = g.layer_norm(y, c["ln"], arch.layer_norm_eps, "cls_ln")
            logits = g.dense(y, c["out_proj"]["kernel"], c["out_proj"]["bias"], "cls_out")
        elif arch.family.classifier == "dense":
            c = p["classifier"]
            y = g.activation(g.dense(first, c["dense"]["kernel"], c["dense"]["bias"],
                                     "cls_dense"), act)
            logits = g.dense(y, c["out_proj"]["kernel"], c["out_proj"]["bias"], "cls_out")
        else:
            y = g.activation(g.dense(first, p["pooler"]["kernel"], p["pooler"]["bias"],
                                     "pooler"), act)
            logits = g.dense(y, p["classifier"]["kernel"], p["classifier"]["bias"], "classifier")
        out_shape = ["batch", model.num_labels]
    else:
        head = p["head"]
        y = g.gelu(g.dense(x, head["transform"]["kernel"], head["transform"].get("bias"),
                           "head_transform"), gelu_new)
        y = g.layer_norm(y, head["ln"], arch.layer_norm_eps, "head_ln")
        decoder = (np.asarray(emb["word"]["embedding"], np.float32).T if arch.tie_decoder
                   else np.asarray(head["decoder"]["kernel"], np.float32))
        logits = g.dense(y, decoder, head["bias"], "decoder")
        out_shape = ["batch", "sequence", arch.vocab_size]
    out_name = "last_hidden_state" if not head and not model.num_labels else "logits"
    g.nodes.append(onnx.helper.make_node("Identity", [logits], [out_name]))
    inputs = [onnx.helper.make_tensor_value_info(n, i64, ["batch", "sequence"])
              for n in graph_inputs(arch)]
    output = onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, out_shape)
    graph = onnx.helper.make_graph(g.nodes, "bortsearch_encoder", inputs, [output], g.inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="bortsearch")
    proto.ir_version = min(proto.ir_version, 9)  # what ONNX Runtime releases read
    onnx.checker.check_model(proto, full_check=True)
    return proto


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic quantisation: MatMul weights int8, activations at run time."""
    import logging

    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process: shape inference, not needed here
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def write_graphs(folder: Path, model: Model, int8: bool = False, proto=None) -> list[str]:
    """model.onnx (and with int8 model_quantized.onnx) into `folder`, which the
    caller writes atomically; returns the names written."""
    proto = onnx_graph(model) if proto is None else proto
    (folder / ONNX_NAME).write_bytes(proto.SerializeToString())
    if not int8:
        return [ONNX_NAME]
    quantize_int8(folder / ONNX_NAME, folder / INT8_NAME)
    os.chmod(folder / INT8_NAME, (folder / ONNX_NAME).stat().st_mode & 0o777)  # the umask's
    return [ONNX_NAME, INT8_NAME]


# Files of a model folder that travel with its graph (weights do not: the graph holds them)
_SKIP = {"model.safetensors", "pytorch_model.bin", ONNX_NAME, INT8_NAME}


def export_onnx(model_dir: str | Path, out: str | Path, int8: bool = False) -> Path:
    """`bortsearch onnx MODEL --out DIR [--int8]`: DIR/model.onnx (and with int8
    DIR/model_quantized.onnx) beside a copy of the folder's config, tokenizer and
    card files. Written into a temporary sibling and renamed: never half-written."""
    from bortsearch.model.hf import load
    from bortsearch.runio import atomic_dir

    onnx, _ = require_onnx()
    src, out = Path(model_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty folder; choose a new --out "
                        f"folder, or remove it")
    model = load(src)
    proto = onnx_graph(model)
    with atomic_dir(out) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in _SKIP:
                shutil.copyfile(f, tmp / f.name)
        write_graphs(tmp, model, int8, proto)
        info = {"source": str(src), "opset": OPSET, "files": [ONNX_NAME]
                + ([INT8_NAME] if int8 else []), "num_labels": model.num_labels,
                "arch": model.arch.to_dict()}
        (tmp / "onnx.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for a graph, with `threads` intra-op threads
    (None: ONNX Runtime's default, every core) and one inter-op thread."""
    _, ort = require_onnx()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def graph_inputs(arch) -> tuple[str, ...]:
    """The graph's inputs: `INPUTS`, less `token_type_ids` for a family without token
    types (DistilBERT), as its tokenizer gives none."""
    return INPUTS if arch.type_vocab_size else INPUTS[:2]


def feeds(sess, feed: dict) -> dict:
    """`feed` less the inputs the session's graph does not take."""
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def run_logits(sess, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
    """`Model.logits` through an ONNX Runtime session."""
    ids = np.atleast_2d(np.asarray(input_ids, np.int64))
    mask = np.ones_like(ids) if attention_mask is None else \
        np.asarray(attention_mask, np.int64).reshape(ids.shape)
    types = np.zeros_like(ids) if token_type_ids is None else \
        np.asarray(token_type_ids, np.int64).reshape(ids.shape)
    return sess.run(["logits"], feeds(sess, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": types}))[0]
