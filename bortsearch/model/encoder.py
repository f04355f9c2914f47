"""One BERT-family masked-LM encoder for teacher, maximum point and candidates.

Post-LayerNorm BERT blocks with exact (erf) GELU, a padding attention mask and a
masked-LM head whose decoder is tied to the word embeddings (or not, as the
checkpoint says). The encoder layers run under `nn.scan`, so their parameters
are stacked along a leading axis of length D; the scan is unrolled by default
(faster steps on CPU; `unroll=1` compiles one layer body whatever the depth).
Dense layers multiply 2-D matrices (`Dense`), which XLA's CPU backend runs at
twice the speed of a dense over B x L x H in the backward pass.

Parameter tree (leading `D` on everything under `layers`):

    embeddings/{word, position, token_type}/embedding, embeddings/ln/{scale, bias}
    layers/attention/{query, key, value, out}/{kernel, bias}, layers/attention_ln
    layers/ffn/{inner, outer}/{kernel, bias}, layers/ffn_ln
    head/transform/{kernel, bias}, head/ln, head/bias, [head/decoder/kernel if untied]

With ALBERT's axes: the embedding tables and their LayerNorm are E wide, then
embedding_map/{kernel, bias} (E→H); `layers` has a leading G (each group's
parameters applied D/G times in a row); the head's transform maps H→E.

With `num_labels` set, the same encoder carries a sequence-classification head
instead of the masked-LM head, laid out as Hugging Face's
`BertForSequenceClassification` (pooler/{kernel, bias}, classifier/{kernel, bias})
or `RobertaForSequenceClassification` (classifier/{dense, out_proj}/{kernel, bias}).

Dropout (Hugging Face's places and rate) acts only when called with
`deterministic=False` and a "dropout" RNG, as fine-tuning does; the default
`deterministic=True` is the dropout-free model that search and pretraining use.

Mixed precision: with `dtype="bfloat16"` the parameters stay float32 and are cast
where they are used; matrix products, activations and the residual stream are
bfloat16, while LayerNorm statistics, the attention softmax and the returned
logits are float32. The float32 default traces to the same program as before.

`bortsearch.model.hf` maps this one-to-one onto Hugging Face BERT/RoBERTa names.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bortsearch.model.arch import Arch

Params = Any  # a pytree of arrays: {"params": {...}}

_INIT = nn.initializers.normal(stddev=0.02)  # BERT's initialiser, also the Bort student's


DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters are float32 either way


def _layer_norm(arch: Arch, name: str, dtype="float32") -> nn.LayerNorm:
    # Exact two-pass variance: matches PyTorch's LayerNorm to float32 precision.
    # Statistics are float32 (Flax's minimum) whatever `dtype` the output has.
    return nn.LayerNorm(epsilon=arch.layer_norm_eps, use_fast_variance=False, dtype=dtype,
                        use_bias=arch.family.bias, name=name)


@jax.custom_vjp
def matmul(x_MxK, w_KxN):
    """x @ w for a matrix x, with a backward pass arranged for XLA's CPU backend.

    The kernel's gradient xᵀ·dy contracts over the rows. XLA's CPU dot runs that
    at full speed only when the transposed operand is the narrower one; otherwise
    (an FFN's outer kernel, the tied decoder) it is 1.2-3x slower, so the product is
    taken the other way round, (dyᵀ·x)ᵀ, behind an optimisation barrier that keeps
    the simplifier from folding the transpose back into the dot.
    """
    return x_MxK @ w_KxN


def _matmul_fwd(x_MxK, w_KxN):
    return x_MxK @ w_KxN, (x_MxK, w_KxN)


def _matmul_bwd(res, dy_MxN):
    x_MxK, w_KxN = res
    return dy_MxN @ w_KxN.T, transposed_product(x_MxK, dy_MxN)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def product(x_MxK, w_KxN):
    """x @ w: autodiff's kernel gradient xᵀ·dy is already the fast orientation when
    K <= N; `matmul`'s custom rule, which costs tracing and compile time, only where
    it is not (the FFN's outer kernel)."""
    return x_MxK @ w_KxN if w_KxN.shape[0] <= w_KxN.shape[1] else matmul(x_MxK, w_KxN)


def transposed_product(a_MxK, b_MxN):
    """aᵀ·b (K x N), contracting the rows, with the narrower operand transposed."""
    if a_MxK.shape[1] <= b_MxN.shape[1]:
        return a_MxK.T @ b_MxN
    return jax.lax.optimization_barrier(b_MxN.T @ a_MxK).T


@jax.custom_vjp
def matmul_t(x_MxK, e_NxK):
    """x @ eᵀ (the tied decoder against the word embeddings), its gradients as `matmul`'s."""
    return x_MxK @ e_NxK.T


def _matmul_t_fwd(x_MxK, e_NxK):
    return x_MxK @ e_NxK.T, (x_MxK, e_NxK)


def _matmul_t_bwd(res, dy_MxN):
    x_MxK, e_NxK = res
    return dy_MxN @ e_NxK, transposed_product(dy_MxN, x_MxK)


matmul_t.defvjp(_matmul_t_fwd, _matmul_t_bwd)


class Dense(nn.Module):
    """`nn.Dense`'s parameters (kernel, bias) applied to the rows of a matrix.

    The leading axes are flattened first, so forward and backward are plain 2-D
    matrix products. Given B x L x H, `nn.Dense` contracts the kernel's gradient
    over two axes at once, which XLA's CPU backend runs at about half the speed of
    the 2-D product: the encoder layer's backward took 1.4x as long.
    """

    features: int
    use_bias: bool = True
    dtype: Any = "float32"  # the product's; the parameters are float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _INIT, (x.shape[-1], self.features))
        y = product(_rows(x).astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y.reshape(*x.shape[:-1], self.features)


def _rows(x):
    """x as a matrix: its leading axes flattened into rows."""
    return x.reshape(-1, x.shape[-1])


def _dense(features: int, name: str, dtype="float32", bias: bool = True) -> Dense:
    return Dense(features, use_bias=bias, dtype=dtype, name=name)


def _act(arch: Arch):
    """The feed-forward and head activation: exact GELU, or its tanh approximation."""
    return functools.partial(jax.nn.gelu, approximate=arch.activation == "gelu_new")


class _Part(nn.Module):
    """What the embeddings, the attention and a whole layer are built from: the
    architecture, Hugging Face's dropout (off when `deterministic`) and the
    compute dtype."""

    arch: Arch
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Any = "float32"


class Attention(_Part):

    @nn.compact
    def __call__(self, x_BxLxH, bias_Bx1x1xL, rope=None):
        """`rope`: the rotary (cos, sin), each L x Dh, for a "rotary" family. For a
        "relative" family `bias_Bx1x1xL` is (the mask's bias, the normalised relative
        table 2k x H, the L x L index into it)."""
        a, dh, dt = self.arch.heads, self.arch.head_dim, self.dtype
        b, l, h = x_BxLxH.shape
        bias = self.arch.family.bias
        relative = None
        if isinstance(bias_Bx1x1xL, tuple):
            bias_Bx1x1xL, *relative = bias_Bx1x1xL

        def split(t):  # ...xH -> ...xAxDh
            return t.reshape(*t.shape[:-1], a, dh)

        query, key = _dense(h, "query", dt, bias), _dense(h, "key", dt, bias)
        q_BxLxAxDh, k_BxLxAxDh = split(query(x_BxLxH)), split(key(x_BxLxH))
        v_BxLxAxDh = split(_dense(h, "value", dt, bias)(x_BxLxH))
        if rope is not None:
            q_BxLxAxDh, k_BxLxAxDh = (rotate(t, *rope) for t in (q_BxLxAxDh, k_BxLxAxDh))
        scores_BxAxLxL = jnp.einsum("bqad,bkad->baqk", q_BxLxAxDh, k_BxLxAxDh)
        if relative is None:
            scores_BxAxLxL = scores_BxAxLxL / np.sqrt(dh)
        else:  # DeBERTa: + content→position + position→content, all over √(3·Dh)
            table_2KxH, index_LxL = relative
            pos_k_2KxAxDh, pos_q_2KxAxDh = split(key(table_2KxH)), split(query(table_2KxH))
            scores_BxAxLxL = (scores_BxAxLxL + disentangled(
                q_BxLxAxDh, k_BxLxAxDh, pos_q_2KxAxDh, pos_k_2KxAxDh, index_LxL)) \
                / np.sqrt(3 * dh)
        probs_BxAxLxL = jax.nn.softmax(scores_BxAxLxL.astype(jnp.float32) + bias_Bx1x1xL,
                                       axis=-1).astype(dt)
        probs_BxAxLxL = nn.Dropout(self.dropout, deterministic=self.deterministic)(probs_BxAxLxL)
        ctx_BxLxAxDh = jnp.einsum("baqk,bkad->bqad", probs_BxAxLxL, v_BxLxAxDh)
        return _dense(h, "out", dt, bias)(ctx_BxLxAxDh.reshape(b, l, h))


def disentangled(q_BxLxAxDh, k_BxLxAxDh, pos_q_2KxAxDh, pos_k_2KxAxDh, index_LxL):
    """DeBERTa's relative scores (unscaled): c2p[i, j] = q_i · pos_k[δ(i, j)] and
    p2c[i, j] = k_j · pos_q[δ(i, j)], δ(i, j) = the bucket of i − j, shifted by k into
    the table's 2k rows (`relative_index`); their sum, B x A x L x L."""
    b, l, a, _ = q_BxLxAxDh.shape
    index = jnp.broadcast_to(index_LxL, (b, a, l, l))
    c2p_BxAxLx2K = jnp.einsum("bqad,rad->baqr", q_BxLxAxDh, pos_k_2KxAxDh)
    p2c_BxAxLx2K = jnp.einsum("bkad,rad->bakr", k_BxLxAxDh, pos_q_2KxAxDh)
    c2p = jnp.take_along_axis(c2p_BxAxLx2K, index, axis=-1)
    # p2c[i, j] = p2c_BxAxLx2K[j, δ(i, j)]: gathered along j's rows, then transposed
    p2c = jnp.take_along_axis(p2c_BxAxLx2K, jnp.swapaxes(index, -1, -2), axis=-1)
    return c2p + jnp.swapaxes(p2c, -1, -2)


def relative_index(arch: Arch, seq_len: int) -> np.ndarray:
    """L x L rows of the relative table: the bucket of i − j (DeBERTa's log buckets
    beyond half the bucket count, in float32 as transformers computes them) plus k,
    clipped to [0, 2k)."""
    rel = np.arange(seq_len)[:, None] - np.arange(seq_len)[None, :]
    if arch.relative_buckets > 0:
        mid, top = arch.relative_buckets // 2, arch.max_relative
        sign = np.sign(rel)
        abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
        log_pos = np.ceil(np.log(abs_pos / np.float32(mid)) / np.log(np.float32((top - 1) / mid))
                          * np.float32(mid - 1)) + np.float32(mid)
        rel = np.where(abs_pos <= mid, rel, log_pos * sign).astype(np.int64)
    k = arch.relative_span
    return np.clip(rel + k, 0, 2 * k - 1).astype(np.int32)


def rope_tables(theta: float, head_dim: int, seq_len: int):
    """Rotary (cos, sin), each L x Dh, for positions 0..L-1 at base `theta`: frequency
    j of the first and second halves of a head is theta^(-2j/Dh) (transformers')."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = np.arange(seq_len, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)
    angles = np.concatenate([freqs, freqs], axis=-1)
    return jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))


def rotate(x_BxLxAxDh, cos_LxDh, sin_LxDh):
    """Rotary position embedding in float32: x·cos + rotate_half(x)·sin, where
    rotate_half(x) = (−x₂, x₁) for the halves x₁, x₂ of each head."""
    x = x_BxLxAxDh.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    half = jnp.concatenate([-x2, x1], axis=-1)
    out = x * cos_LxDh[None, :, None] + half * sin_LxDh[None, :, None]
    return out.astype(x_BxLxAxDh.dtype)


class Embeddings(_Part):

    @nn.compact
    def __call__(self, input_ids_BxL, token_type_ids_BxL):
        arch = self.arch
        h = arch.embedding_size  # E: H unless factorised
        x = nn.Embed(arch.vocab_size, h, embedding_init=_INIT, name="word")(input_ids_BxL)
        if arch.has_position_table:
            x = x + nn.Embed(arch.max_positions, h, embedding_init=_INIT, name="position")(
                position_ids(arch, input_ids_BxL)
            )
        if arch.type_vocab_size:
            x = x + nn.Embed(arch.type_vocab_size, h, embedding_init=_INIT, name="token_type")(
                token_type_ids_BxL
            )
        x = _layer_norm(arch, "ln", self.dtype)(x)
        return nn.Dropout(self.dropout, deterministic=self.deterministic)(x)


def position_ids(arch: Arch, input_ids_BxL):
    """BERT: 0..L-1. RoBERTa ("padded"): counted from pad_token_id + 1 over non-padding
    tokens."""
    b, l = input_ids_BxL.shape
    if arch.family.positions == "padded":
        not_pad = (input_ids_BxL != arch.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(not_pad, axis=1) * not_pad + arch.pad_token_id
    return jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))


class Encoder(nn.Module):
    """The masked-LM encoder. Built from an `Arch`; nothing else sets its size.

    Attributes:
      arch: the architecture.
      unroll: layers per scan iteration. None (the default) unrolls fully: on
        XLA's CPU backend the scanned loop's backward costs a fixed ~20 ms a step
        (zero-filled stacked residuals and copies), a layer at H = 64 ran twice as
        slow, while compile time stays small (1.8 s at D = 2, 4.4 s at D = 12, 8.5 s
        at BERT-large's D = 24, against 2-3 s scanned). 1 keeps compile time flat
        in D, for very deep models. The parameters are stacked along D either way.
      head: False returns the last hidden states (B x L x H) and skips the
        masked-LM head, as a student deployed downstream runs it.
      num_labels: > 0 replaces the masked-LM head by a sequence-classification
        head with this many outputs (1: regression), returning B x num_labels.
      dropout: Hugging Face's hidden and attention dropout rate, applied only
        when called with `deterministic=False`.
      dtype: the compute dtype, "float32" or "bfloat16" (see the module's notes);
        the parameters and the returned logits are float32 either way.
    """

    arch: Arch
    unroll: int | None = None
    head: bool = True
    num_labels: int = 0
    dropout: float = 0.1
    dtype: Any = "float32"
    sop: bool = False  # also ALBERT's sentence-order head: returns (MLM logits, B x 2)

    @nn.compact
    def __call__(self, input_ids_BxL, attention_mask_BxL, token_type_ids_BxL=None,
                 positions_BxP=None, deterministic: bool = True):
        """Masked-LM logits (or classification logits, or hidden states).

        Args:
          input_ids_BxL: int token ids.
          attention_mask_BxL: 1 for real tokens, 0 for padding.
          token_type_ids_BxL: segment ids (zeros when None).
          positions_BxP: if given, the head runs only at these positions (the
            masked ones), returning BxPxV; otherwise at every position, BxLxV.
          deterministic: False turns dropout on (needs a "dropout" RNG).

        Returns:
          What the attributes make of the one encoder, as transformers' classes do:
          masked-LM logits BxLxV (BxPxV at `positions_BxP`), the default
          (`*ForMaskedLM`); with `sop`, those and the sentence-order logits Bx2
          (`AlbertForPreTraining`); with `num_labels`, classification logits
          B x num_labels (`*ForSequenceClassification`); with `head=False`, the last
          hidden states BxLxH (the bare `*Model`). Always float32.
        """
        arch, dt = self.arch, self.dtype
        rate = 0.0 if deterministic else self.dropout
        if token_type_ids_BxL is None:
            token_type_ids_BxL = jnp.zeros_like(input_ids_BxL)
        x_BxLxH = Embeddings(arch, rate, deterministic, dt, name="embeddings")(
            input_ids_BxL, token_type_ids_BxL)
        if arch.embedding is not None:  # ALBERT's factorised embedding: E -> H
            x_BxLxH = _dense(arch.hidden, "embedding_map", dt)(x_BxLxH)
        # Additive mask as in Hugging Face: the most negative float where padded
        # (added to float32 attention scores).
        neg = jnp.finfo(jnp.float32).min
        bias_Bx1x1xL = jnp.where(attention_mask_BxL[:, None, None, :] > 0, 0.0, neg)
        if arch.family.norm == "pre":  # ModernBERT: rotary, local windows, pre-LayerNorm
            x_BxLxH = self._pre_norm_layers(x_BxLxH, attention_mask_BxL, rate, deterministic)
            return self._outputs(x_BxLxH, attention_mask_BxL, positions_BxP, rate, deterministic)
        if arch.family.positions == "relative":  # the layers' shared relative table
            table = self.param("relative_embedding", _INIT, (2 * arch.relative_span, arch.hidden))
            table = _layer_norm(arch, "relative_ln", dt)(table.astype(dt))
            bias_Bx1x1xL = (bias_Bx1x1xL, table,
                            jnp.asarray(relative_index(arch, input_ids_BxL.shape[1])))
        body = Layer
        if arch.groups is not None:
            # ALBERT's sharing: each of the G groups' parameters applied D/G times in a
            # row, by an inner scan that broadcasts them.
            repeats = arch.layers // arch.groups
            body = nn.scan(
                Layer, variable_broadcast="params", variable_axes={"intermediates": 0},
                split_rngs={"params": False, "dropout": True},
                in_axes=nn.broadcast, length=repeats,
                unroll=repeats if self.unroll is None else 1)
        layers = nn.scan(
            body, variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=nn.broadcast, length=arch.num_groups,
            unroll=arch.num_groups if self.unroll is None else self.unroll,
        )
        x_BxLxH, _ = layers(arch, rate, deterministic, dt, name="layers")(x_BxLxH, bias_Bx1x1xL)
        return self._outputs(x_BxLxH, attention_mask_BxL, positions_BxP, rate, deterministic)

    def _pre_norm_layers(self, x_BxLxH, attention_mask_BxL, rate, deterministic):
        """The layers of a pre-LayerNorm rotary family, then its final LayerNorm. Each
        layer gets its index (global or local attention, and layer 0's missing
        attention norm) and both attentions' masks and rotary tables."""
        arch, dt = self.arch, self.dtype
        l = x_BxLxH.shape[1]
        keep_Bx1x1xL = attention_mask_BxL[:, None, None, :] > 0
        neg = jnp.finfo(jnp.float32).min
        context = {"global": (jnp.where(keep_Bx1x1xL, 0.0, neg),
                              rope_tables(arch.rope_theta, arch.head_dim, l))}
        if arch.local_window is not None:
            near_LxL = np.abs(np.arange(l)[:, None] - np.arange(l)[None, :]) \
                <= arch.local_window // 2
            context["local"] = (jnp.where(keep_Bx1x1xL & near_LxL[None, None], 0.0, neg),
                                rope_tables(arch.local_rope_theta, arch.head_dim, l))
        layers = nn.scan(
            PreNormLayer, variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast, 0),
            length=arch.layers, unroll=arch.layers if self.unroll is None else self.unroll)
        x_BxLxH, _ = layers(arch, rate, deterministic, dt, name="layers")(
            x_BxLxH, context, jnp.arange(arch.layers))
        return _layer_norm(arch, "final_ln", dt)(x_BxLxH)

    def _outputs(self, x_BxLxH, attention_mask_BxL, positions_BxP, rate, deterministic):
        """The head on the last hidden states: the attributes' form (`__call__`)."""
        arch, dt = self.arch, self.dtype
        if self.num_labels:
            return classify(arch, self.num_labels, x_BxLxH, rate, deterministic, dt,
                            attention_mask_BxL)
        if not self.head:
            return x_BxLxH.astype(jnp.float32)
        first_BxH = x_BxLxH[:, 0]
        if positions_BxP is not None:
            x_BxLxH = jnp.take_along_axis(x_BxLxH, positions_BxP[:, :, None], axis=1)
        logits = MLMHead(arch, dt, name="head")(x_BxLxH,
                                                self.variables["params"]["embeddings"]["word"])
        if not self.sop:
            return logits
        # ALBERT's sentence-order head (AlbertForPreTraining): tanh(pooler(x₀)), then
        # dropout and a 2-way classifier; BERT's NSP head has the same form. (Other
        # families keep it internal, with their own pooler activation.)
        drop = nn.Dropout(rate, deterministic=deterministic)
        return logits, _dense(2, "sop", dt)(drop(_pooled(arch, first_BxH, dt))).astype(jnp.float32)


class Layer(_Part):
    """One post-LayerNorm BERT block; the carry of the layer scan."""

    @nn.compact
    def __call__(self, x_BxLxH, bias_Bx1x1xL):
        arch, dt = self.arch, self.dtype
        drop = nn.Dropout(self.dropout, deterministic=self.deterministic)
        attention = Attention(arch, self.dropout, self.deterministic, dt, name="attention")
        x_BxLxH = _layer_norm(arch, "attention_ln", dt)(
            x_BxLxH + drop(attention(x_BxLxH, bias_Bx1x1xL)))
        x_BxLxH = _layer_norm(arch, "ffn_ln", dt)(
            x_BxLxH + drop(FFN(arch, dt, name="ffn")(x_BxLxH)))
        self.sow("intermediates", "hidden", x_BxLxH)  # read by `with_hidden_states`
        return x_BxLxH, None


class PreNormLayer(_Part):
    """One pre-LayerNorm block (ModernBERT's): x + attn(norm(x)), then
    x + ffn(norm(x)); layer 0 has no attention norm (its input is the embeddings'
    LayerNorm), and a layer attends globally or within the local window by its index."""

    @nn.compact
    def __call__(self, x_BxLxH, context, index):
        arch, dt = self.arch, self.dtype
        drop = nn.Dropout(self.dropout, deterministic=self.deterministic)
        attention = Attention(arch, self.dropout, self.deterministic, dt, name="attention")
        normed = _layer_norm(arch, "attention_ln", dt)(x_BxLxH)
        h_BxLxH = jnp.where(index == 0, x_BxLxH, normed)
        bias, (cos, sin) = context["global"]
        if "local" in context:  # the local layers' mask and rotary base
            is_global = index % arch.global_every == 0
            local_bias, (local_cos, local_sin) = context["local"]
            bias = jnp.where(is_global, bias, local_bias)
            cos, sin = jnp.where(is_global, cos, local_cos), jnp.where(is_global, sin, local_sin)
        x_BxLxH = x_BxLxH + drop(attention(h_BxLxH, bias, (cos, sin)))
        ffn = FFN(arch, dt, name="ffn")
        x_BxLxH = x_BxLxH + drop(ffn(_layer_norm(arch, "ffn_ln", dt)(x_BxLxH)))
        self.sow("intermediates", "hidden", x_BxLxH)  # read by `with_hidden_states`
        return x_BxLxH, None


class FFN(nn.Module):
    """act(x·W_inner)·W_outer, or with a "glu" family (act(x·W_inner) ⊙ x·W_gate)·W_outer."""

    arch: Arch
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x_BxLxH):
        arch, dt, bias = self.arch, self.dtype, self.arch.family.bias
        inner_BxLxI = _act(arch)(_dense(arch.intermediate, "inner", dt, bias)(x_BxLxH))
        if arch.family.ffn == "glu":
            inner_BxLxI = inner_BxLxI * _dense(arch.intermediate, "gate", dt, bias)(x_BxLxH)
        return _dense(arch.hidden, "outer", dt, bias)(inner_BxLxI)


class MLMHead(nn.Module):
    arch: Arch
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x_BxPxH, word_embeddings):
        arch, dt = self.arch, self.dtype
        x = _act(arch)(_dense(arch.embedding_size, "transform", dt, arch.family.bias)(
            x_BxPxH))  # H -> E
        x = _layer_norm(arch, "ln", dt)(x)
        if arch.tie_decoder:
            logits = matmul_t(_rows(x), word_embeddings["embedding"].astype(dt)).reshape(
                *x.shape[:-1], -1)
        else:
            logits = Dense(arch.vocab_size, use_bias=False, dtype=dt, name="decoder")(x)
        bias = self.param("bias", nn.initializers.zeros, (arch.vocab_size,))
        return logits.astype(jnp.float32) + bias


def classify(arch: Arch, num_labels: int, x_BxLxH, rate: float, deterministic: bool,
             dtype="float32", attention_mask_BxL=None):
    """The sequence-classification head on the first token, as Hugging Face has it,
    by the family's `classifier` form and activation:

    "pooler" (BERT, ALBERT: tanh; DistilBERT's pre_classifier: relu):
    dropout(act(pooler(x₀))) → classifier. "dense" (RoBERTa: tanh; ELECTRA: gelu):
    dropout(x₀) → act(classifier.dense) → dropout → classifier.out_proj. "head"
    (ModernBERT: gelu): norm(act(classifier.dense(x₀))) → dropout → classifier.out_proj,
    x₀ the first token's state, or with `arch.pooling` "mean" the mean of the unpadded
    tokens' states.
    (Called inside `Encoder`'s compact scope, so the names are its own.)
    """
    drop = nn.Dropout(rate, deterministic=deterministic)
    x_BxH = x_BxLxH[:, 0]
    if arch.family.classifier == "head":
        if arch.pooling == "mean":
            m_BxL = (jnp.ones(x_BxLxH.shape[:2]) if attention_mask_BxL is None
                     else attention_mask_BxL).astype(x_BxLxH.dtype)
            x_BxH = (x_BxLxH * m_BxL[..., None]).sum(1) / m_BxL.sum(1, keepdims=True)
        return _NormedClassifier(arch, num_labels, dtype, name="classifier")(
            x_BxH, drop).astype(jnp.float32)
    if arch.family.classifier == "pooler":
        return _dense(num_labels, "classifier", dtype)(drop(_pooled(arch, x_BxH, dtype))).astype(
            jnp.float32)
    return _DenseClassifier(num_labels, arch.hidden, arch.family.classifier_act, dtype,
                            name="classifier")(drop(x_BxH), drop).astype(jnp.float32)


CLASSIFIER_ACTS = {"tanh": jnp.tanh, "relu": jax.nn.relu,
                   "gelu": functools.partial(jax.nn.gelu, approximate=False)}


def _pooled(arch: Arch, x_BxH, dtype):
    """The pooler, act(pooler(x₀)) (BERT's and ALBERT's tanh, DistilBERT's relu), under
    the caller's "pooler" name (the classifier's and the sentence-order head's: one
    pretrained, both read it)."""
    return CLASSIFIER_ACTS[arch.family.classifier_act](
        _dense(arch.hidden, "pooler", dtype)(x_BxH))


class _NormedClassifier(nn.Module):
    arch: Arch
    num_labels: int
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x_BxH, drop):
        arch, dt = self.arch, self.dtype
        x_BxH = CLASSIFIER_ACTS[arch.family.classifier_act](
            _dense(arch.hidden, "dense", dt, arch.family.bias)(x_BxH))
        x_BxH = drop(_layer_norm(arch, "ln", dt)(x_BxH))
        return _dense(self.num_labels, "out_proj", dt)(x_BxH)


class _DenseClassifier(nn.Module):
    num_labels: int
    hidden: int
    act: str = "tanh"
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x_BxH, drop):
        x_BxH = drop(CLASSIFIER_ACTS[self.act](_dense(self.hidden, "dense", self.dtype)(x_BxH)))
        return _dense(self.num_labels, "out_proj", self.dtype)(x_BxH)


def init_params(arch: Arch, seed: int = 0, num_labels: int = 0, sop: bool = False) -> Params:
    """Parameters drawn from Normal(0, 0.02) (biases 0, LayerNorm 1/0) for a seed.

    Drawn with NumPy from the shape tree, each leaf from its own stream keyed by
    (seed, path): no per-architecture XLA compile (which cost ~1 s each on a
    2-core CPU), and the same seed gives the same values wherever a leaf appears.
    """
    def draw(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] in ("kernel", "embedding"):
            key = zlib.crc32("/".join(names).encode())
            rng = np.random.default_rng([seed, key])
            return (0.02 * rng.standard_normal(leaf.shape, np.float32)).astype(np.float32)
        fill = 1.0 if names[-1] == "scale" else 0.0
        return np.full(leaf.shape, fill, np.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(arch, num_labels, sop))


def teacher_layers(student_layers: int, teacher_layers: int) -> list[int]:
    """Which teacher layer each student layer inherits: TinyBERT's uniform map,
    student layer m ← teacher layer ⌊(m+1)·D_T/D_S⌋ − 1 (so the top layer maps to the
    top layer). A deeper student inherits the teacher's D_T layers, then random."""
    if student_layers > teacher_layers:
        return list(range(teacher_layers))
    return [(m + 1) * teacher_layers // student_layers - 1 for m in range(student_layers)]


# Which teacher layer (group) each layer (group) of a shallower student inherits
# (`layer_map`): TinyBERT's uniform map, the first layers, every other layer from
# the first (DistilBERT's), or the map whose one-batch KL to the teacher is lowest
# (`importance.measured_layers`).
LAYER_RULES = ("uniform", "first", "alternate", "measured")


def layer_map(rule: str, student_layers: int, teacher_layers_: int) -> list[int]:
    """The teacher layers a student of `student_layers` inherits by a fixed rule
    ("uniform", "first" or "alternate"). A student as deep or deeper takes the
    teacher's layers in order (then random ones)."""
    s, t = student_layers, teacher_layers_
    if s >= t or rule == "uniform":
        return teacher_layers(s, t)
    if rule == "first":
        return list(range(s))
    if rule == "alternate":
        return [m * t // s for m in range(s)]
    raise ValueError(f"no fixed layer map {rule!r}: use one of uniform, first, alternate")


def typed_layer_map(picks: list[int], arch: Arch, teacher_arch: Arch) -> list[int]:
    """`picks` with each student layer's pick moved, where its attention type (global, or
    ModernBERT's local window with its own rotary base) differs from the student
    layer's, to the nearest teacher layer of the student layer's type (the earlier of two
    as near), so that every inherited layer attends as it was trained to."""
    if teacher_arch.local_window is None or arch.local_window is None:
        return list(picks)
    out = []
    for m, t in enumerate(picks):
        want = arch.is_global(m)
        same = [k for k in range(teacher_arch.layers) if teacher_arch.is_global(k) == want]
        out.append(t if teacher_arch.is_global(t) == want or not same
                   else min(same, key=lambda k: (abs(k - t), k)))
    return out


INITS = ("random", "teacher")  # how a student starts: `init_params` or `inherit_params`
# which of the teacher's units a student inherits: its leading ones as trained, or the
# leading ones once the teacher is rewired into importance order (train/importance.py)
INHERITS = ("first", "importance")


def inherit_params(arch: Arch, teacher_arch: Arch, teacher_params: Params,
                   seed: int = 0, sop: bool = False, layers: list[int] | None = None,
                   num_labels: int = 0) -> Params:
    """A student initialised from the teacher's weights [ours, after the weight
    inheritance of DynaBERT and AutoTinyBERT]: layers chosen by `teacher_layers`,
    and in every tensor the leading block of each axis (the first H hidden units,
    the first I feed-forward units; heads are contiguous column blocks, so the
    first H columns are the first heads). Whatever the teacher lacks (a wider or
    deeper student) keeps its Normal(0, 0.02) draw from `init_params(arch, seed)`.
    `layers` names the teacher layer (group) of each student layer (group) instead;
    `num_labels` > 0 gives the student a classification head (inherited from a
    classifier teacher's as the rest is) instead of the masked-LM head."""
    picks = (teacher_layers(arch.num_groups, teacher_arch.num_groups) if layers is None
             else list(layers))  # a group per layer slot
    if len(picks) != min(arch.num_groups, teacher_arch.num_groups) or not all(
            0 <= k < teacher_arch.num_groups for k in picks):
        raise ValueError(f"layers {picks}: need a teacher layer index below "
                         f"{teacher_arch.num_groups} for each of {arch.num_groups} layers")

    def take(path, mine):
        theirs = teacher_params
        for k in path:
            theirs = theirs.get(getattr(k, "key", k)) if isinstance(theirs, dict) else None
            if theirs is None:  # e.g. a factorised student's E→H map: the teacher has none
                return np.array(mine)
        theirs = np.asarray(theirs)
        out = np.array(mine)
        if getattr(path[1], "key", None) == "layers":  # leading axis: the layer
            theirs = theirs[picks]
        block = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, theirs.shape))
        out[block] = theirs[block]
        return out

    params = jax.tree_util.tree_map_with_path(
        take, init_params(arch, seed, num_labels=num_labels, sop=sop))
    if arch.embedding is not None and arch.embedding_size < teacher_arch.embedding_size:
        params = _svd_embeddings(arch, teacher_arch, teacher_params, params)
    return params


def _svd_embeddings(arch: Arch, teacher_arch: Arch, teacher_params: Params,
                    params: Params) -> Params:
    """A factorised student's fair start [ours, ALBERT's E axis]: its E-wide tables
    are the teacher's (centred, as LayerNorm sees them) projected on their top E
    right singular vectors V (the best rank-(E-1) approximation of the stacked
    word, position and type tables: one of the E coordinates goes to keep the
    student's LayerNorm exact), and its E→H map undoes that projection, so that
    map(LayerNorm_E(x V)) ≈ the teacher's LayerNorm(x) (then its own E→H map, if
    it has one) on the student's H units. The tied output side follows the same
    V: the head's H→E transform is the teacher's times V, so logits ≈ the
    teacher's with its word table at rank E. (Cutting E columns instead keeps an
    arbitrary E of the teacher's coordinates and a random map, which short
    training does not repair.)"""
    t = jax.tree.map(lambda x: np.asarray(x, np.float32), teacher_params["params"])
    p = jax.tree.map(np.array, params["params"])
    e, e_t, h = arch.embedding_size, teacher_arch.embedding_size, arch.hidden
    names = [n for n in ("word", "position", "token_type") if n in p["embeddings"]]
    tables = {n: t["embeddings"][n]["embedding"] for n in names if n in t["embeddings"]}
    centred = {n: x - x.mean(axis=1, keepdims=True) for n, x in tables.items()}
    _, _, vt = np.linalg.svd(np.concatenate(list(centred.values())), full_matrices=False)
    # The top E-1 directions, turned into E coordinates that sum to zero (so that
    # the student's LayerNorm, which subtracts the mean over E, removes nothing the
    # teacher's kept): v = V_{E-1} Qᵀ, Q an orthonormal basis of 1_E's complement.
    q = np.linalg.svd(np.eye(e) - 1.0 / e)[0][:, :e - 1]
    v = (vt[:e - 1].T @ q.T).astype(np.float32)  # E_t x E, vᵀv the projection
    for n, x in centred.items():
        rows = min(len(x), len(p["embeddings"][n]["embedding"]))
        p["embeddings"][n]["embedding"][:rows] = x[:rows] @ v
    # teacher: LayerNorm over E_t, then its map (the identity when unfactorised)
    gamma, beta = t["embeddings"]["ln"]["scale"], t["embeddings"]["ln"]["bias"]
    if "embedding_map" in t:
        m_t, b_t = t["embedding_map"]["kernel"], t["embedding_map"]["bias"]
    else:
        m_t, b_t = np.eye(e_t, dtype=np.float32), np.zeros(e_t, np.float32)
    width = min(h, m_t.shape[1])
    # LayerNorm over E of x·V has the std of LayerNorm over E_t of x times √(E_t/E)
    kernel = np.sqrt(e_t / e) * (v.T * gamma) @ m_t
    p["embedding_map"]["kernel"][:, :width] = kernel[:, :width]
    p["embedding_map"]["bias"][:width] = (beta @ m_t + b_t)[:width]
    p["embeddings"]["ln"]["scale"][:] = 1.0
    p["embeddings"]["ln"]["bias"][:] = 0.0
    # the output side: the head's transform into the same E coordinates
    head_t, head = t["head"], p["head"]
    rows = min(h, head_t["transform"]["kernel"].shape[0])
    head["transform"]["kernel"][:rows] = head_t["transform"]["kernel"][:rows] @ v
    head["transform"]["bias"][:] = head_t["transform"]["bias"] @ v
    head["ln"]["scale"][:] = 1.0  # measured best of 0.5-3 (and of the teacher's rms scale)
    head["ln"]["bias"][:] = head_t["ln"]["bias"] @ v
    if "decoder" in head and "decoder" in head_t:
        head["decoder"]["kernel"][:] = v.T @ head_t["decoder"]["kernel"]
    return {**params, "params": jax.tree.map(jnp.asarray, p)}


def param_size(params) -> int:
    """How many numbers a parameter tree (or its shapes) holds."""
    return sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params))


def _init(arch: Arch, num_labels: int, sop: bool, key):  # traced by `param_shapes` only
    ids = jnp.zeros((1, 2), jnp.int32)
    return Encoder(arch, num_labels=num_labels, sop=sop).init(key, ids, jnp.ones_like(ids))


@functools.lru_cache(maxsize=256)
def param_shapes(arch: Arch, num_labels: int = 0, sop: bool = False) -> Params:
    """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating it
    (with a classification head of `num_labels` outputs instead of the masked-LM
    head when that is > 0; with the sentence-order head besides it for `sop`)."""
    return jax.eval_shape(functools.partial(_init, arch, num_labels, sop), jax.random.key(0))


def has_sop_head(params: Params) -> bool:
    return "sop" in params["params"]


def classifier_outputs(params: Params) -> int:
    """The outputs of the sequence-classification head in `params` (0: it has none)."""
    head = params["params"].get("classifier")
    if head is None:
        return 0
    return (head["out_proj"] if "out_proj" in head else head)["kernel"].shape[-1]


def with_hidden_states(encoder: Encoder, params, *args):
    """`encoder.apply(params, *args)` and every layer's output hidden states, D x B x L x
    H float32 (ALBERT's: each application of a shared group; ModernBERT's: before its
    final norm), which the layers `sow` when asked for them."""
    out, state = encoder.apply(params, *args, mutable=["intermediates"])
    (hidden,) = state["intermediates"]["layers"]["hidden"]
    return out, hidden.reshape(-1, *hidden.shape[-3:]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def forward_logits(arch: Arch, params, input_ids, attention_mask, token_type_ids):
    """The compiled masked-LM forward pass (B x L x V logits); `arch` is static."""
    return Encoder(arch).apply(params, input_ids, attention_mask, token_type_ids)


@functools.partial(jax.jit, static_argnums=0)
def forward_hidden(arch: Arch, params, input_ids, attention_mask, token_type_ids):
    """The compiled encoder forward pass without the head (B x L x H); `arch` is static."""
    return Encoder(arch, head=False).apply(params, input_ids, attention_mask, token_type_ids)


@functools.partial(jax.jit, static_argnums=0)
def _sop_logits(arch: Arch, params, input_ids, attention_mask, token_type_ids):
    return Encoder(arch, sop=True).apply(params, input_ids, attention_mask, token_type_ids)[1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _classify(arch: Arch, num_labels: int, params, input_ids, attention_mask, token_type_ids):
    return Encoder(arch, num_labels=num_labels).apply(params, input_ids, attention_mask,
                                                      token_type_ids)


@dataclasses.dataclass(frozen=True)
class Model:
    """An architecture with its parameters (and, once loaded, its tokenizer); with
    `num_labels` > 0, a sequence classifier (its `logits` are B x num_labels).

    Example:
      >>> model = Model.init(Arch(2, 2, 64, 128, vocab_size=100), seed=0)
      >>> model.logits(np.array([[5, 6, 7]]), np.array([[1, 1, 1]])).shape
      (1, 3, 100)
    """

    arch: Arch
    params: Params
    tokenizer: Any = None
    num_labels: int = 0

    @classmethod
    def init(cls, arch: Arch, seed: int = 0) -> Model:
        return cls(arch, init_params(arch, seed))

    def logits(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """Masked-LM logits (batch x length x vocabulary), or a classifier's
        (batch x labels), as NumPy float32."""
        program = (functools.partial(_classify, self.arch, self.num_labels) if self.num_labels
                   else functools.partial(forward_logits, self.arch))
        return np.asarray(program(self.params, *self._inputs(input_ids, attention_mask,
                                                              token_type_ids)))

    def sop_logits(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """The sentence-order head's logits (batch x 2: in order, swapped) of a model
        pretrained with `--objective mlm+sop`."""
        if not has_sop_head(self.params):
            raise ValueError("this model has no sentence-order head (pretrain it with "
                             "--objective mlm+sop)")
        return np.asarray(_sop_logits(self.arch, self.params,
                                      *self._inputs(input_ids, attention_mask, token_type_ids)))

    @staticmethod
    def _inputs(input_ids, attention_mask, token_type_ids):
        input_ids = np.asarray(input_ids, dtype=np.int32)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = np.zeros_like(input_ids)
        return (input_ids, np.asarray(attention_mask, np.int32).reshape(input_ids.shape),
                np.asarray(token_type_ids, np.int32).reshape(input_ids.shape))

    @property
    def num_params(self) -> int:
        return param_size(self.params)
