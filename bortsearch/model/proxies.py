"""The size and speed proxies p̂ and î of ALGORITHM.md.

p̂ is the number of trainable parameters, counted as Hugging Face's
`BertForMaskedLM(config).num_parameters()` counts them: embeddings (word,
position, token type, LayerNorm), D encoder layers, the masked-LM transform and
LayerNorm, and the output bias; no pooler; a tied decoder counted once. With
ALBERT's axes (as `AlbertForMaskedLM` counts): E-wide embedding tables and
LayerNorm, the E→H projection (always: an ALBERT folder has it even where E = H,
as the identity `export` writes), G distinct layers (a shared layer counted once),
a head transform H→E with its LayerNorm at E. p̂ is the size of what `export`
writes, in every combination of E and G. A family's features change the terms as
its transformers class has them (ModernBERT: no position or type table, no biases
but the output's, a gated feed-forward block, no norm before the first layer's
attention, a final norm).

î is either `analytic` (forward FLOPs at a reference input: exact, cheap and the
same on every machine) or `measured` (median wall-clock of the compiled forward
on this machine's default device).
"""

from __future__ import annotations

import os
import platform

import jax

from bortsearch.model.arch import Arch

DEFAULT_BATCH = 1
DEFAULT_SEQ_LEN = 128


def ffn_matrices(arch: Arch) -> int:
    """H x I matrices in a feed-forward block: 2, or 3 when gated (GeGLU)."""
    return 3 if arch.family.ffn == "glu" else 2


def layer_params(arch: Arch) -> int:
    """Parameters of one encoder layer."""
    h, i, b = arch.hidden, arch.intermediate, int(arch.family.bias)
    attention = 4 * (h * h + b * h)  # query, key, value, out
    m = ffn_matrices(arch)
    ffn = m * h * i + b * ((m - 1) * i + h)
    layer_norms = 2 * (1 + b) * h
    return attention + ffn + layer_norms


def embedding_table_params(arch: Arch) -> int:
    """Word, position and token-type tables: the vocabulary- and length-sized part."""
    positions = arch.max_positions if arch.has_position_table else 0
    return (arch.vocab_size + positions + arch.type_vocab_size) * arch.embedding_size


def relative_table_params(arch: Arch) -> int:
    """DeBERTa's relative-position table, 2k x H (0 for the other families)."""
    return 2 * arch.relative_span * arch.hidden


def param_count(arch: Arch) -> int:
    """p̂: trainable parameters, in Hugging Face `BertForMaskedLM` (or, with
    ALBERT's axes, `AlbertForMaskedLM`; the family's own class otherwise) convention:
    each distinct parameter once."""
    h, e, v, b = arch.hidden, arch.embedding_size, arch.vocab_size, int(arch.family.bias)
    norm = (1 + b) * e  # a LayerNorm at E: its scale, and its bias where the family has one
    embeddings = embedding_table_params(arch) + norm
    projection = (e * h + h) if arch.projected else 0  # E -> H
    head = (h * e + b * e) + norm + v + (0 if arch.tie_decoder else e * v)
    # DeBERTa adds its relative table (2k x H) and its LayerNorm. (Pre-LayerNorm,
    # ModernBERT: the first layer lacks its attention norm and a final norm follows the
    # last layer, so the D layers' two norms each still count.)
    relative = relative_table_params(arch) + (2 * h if arch.relative_span else 0)  # and its norm
    return embeddings + projection + arch.num_groups * layer_params(arch) + head + relative


def effective_param_count(arch: Arch) -> int:
    """Non-embedding parameters: p̂ less the embedding tables and the output
    vocabulary projection (bias, and the decoder when untied). [ours]

    The FPTAS assumes intermediate layers dominate; with a large vocabulary and a
    small H the embeddings can break that, which this count makes visible. With
    shared layers it counts each distinct layer once (what is stored, not what
    runs: the FLOPs proxy counts every application).
    """
    output = arch.vocab_size * (1 if arch.tie_decoder else 1 + arch.embedding_size)
    # DeBERTa's relative-position table is a position table too (its LayerNorm stays)
    return param_count(arch) - embedding_table_params(arch) - output - relative_table_params(arch)


SIZE_PROXIES = ("params", "non-embedding")


def size_proxy(arch: Arch, kind: str = "params") -> int:
    """p̂: every parameter [paper], or the non-embedding ones [ours: a vocabulary's
    table is memory, not compute, and with a real vocabulary it can be most of a
    small student's count, so that the size term alone decides W]."""
    if kind not in SIZE_PROXIES:
        raise ValueError(f"kind must be one of {SIZE_PROXIES}, got {kind=}")
    return param_count(arch) if kind == "params" else effective_param_count(arch)


SCOPES = ("encoder", "mlm")
SOFTMAX_FLOPS = 5  # per attention score: max, subtract, exp, sum, divide


def forward_flops(arch: Arch, batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
                  scope: str = "mlm") -> int:
    """î analytic: FLOPs of one forward pass.

    Counts matrix products, 2 FLOPs per multiply-add: per layer the four
    attention projections (8·B·L·H²), scores and the softmax-weighted sum
    (4·B·L²·H) and the feed-forward block (4·B·L·H·I; 6·B·L·H·I gated), for each of the D layer
    applications (shared or not); with ALBERT's axes the E→H projection
    (2·B·L·E·H), which the exported ALBERT model runs even where E = H; with
    `scope="mlm"` also the head's transform (2·B·L·H·E) and decoder (2·B·L·E·V) at every position.
    Of the element-wise work, the attention softmax is counted
    (`SOFTMAX_FLOPS` per score, B·A·L² scores a layer), because it is the term
    through which the head count A costs time [ours]; GELU, LayerNorm and the
    residual adds are left out (a few percent at realistic sizes).

    `scope="encoder"` is what a student deployed downstream runs (the head is
    dropped for classification); `"mlm"` is the masked-LM model as trained.
    """
    return (weight_flops(arch, batch, seq_len, scope) + attention_flops(arch, batch, seq_len)
            + SOFTMAX_FLOPS * attention_scores(arch, batch, seq_len))


def weight_flops(arch: Arch, batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
                 scope: str = "mlm") -> int:
    """The part of `forward_flops` in products with the weights (what int8 quantises):
    the projections, the feed-forward block, ALBERT's E→H and the masked-LM head."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope=}")
    b, l, h, i, v = batch, seq_len, arch.hidden, arch.intermediate, arch.vocab_size
    e = arch.embedding_size
    projection = 2 * b * l * e * h if arch.projected else 0
    head = 2 * b * l * h * e + 2 * b * l * e * v if scope == "mlm" else 0
    ffn = 2 * ffn_matrices(arch) * b * l * h * i
    # DeBERTa: each layer projects the relative table (2k x H) by its query and key
    relative = 2 * 2 * (2 * arch.relative_span) * h * h if arch.relative_span else 0
    return projection + arch.layers * (8 * b * l * h * h + ffn + relative) + head


def attention_flops(arch: Arch, batch: int = DEFAULT_BATCH,
                    seq_len: int = DEFAULT_SEQ_LEN) -> int:
    """The part of `forward_flops` in the attention's scores and softmax-weighted sum
    (4·B·L²·H a layer application)."""
    # DeBERTa: and the content→position and position→content products with the table
    relative = 2 * 2 * batch * seq_len * 2 * arch.relative_span * arch.hidden
    return arch.layers * (4 * batch * seq_len * seq_len * arch.hidden + relative)


def attention_scores(arch: Arch, batch: int = DEFAULT_BATCH,
                     seq_len: int = DEFAULT_SEQ_LEN) -> int:
    """The attention scores of a forward pass, D·A·B·L² (each costs SOFTMAX_FLOPS)."""
    return arch.layers * arch.heads * batch * seq_len * seq_len


def hardware_fingerprint() -> dict:
    """What a measured latency depends on: device, CPU, cores, jax version (and on
    a GPU whether its programs are deterministic: bortsearch/determinism.py)."""
    from bortsearch.determinism import flag_value

    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        **({"deterministic_ops": bool(flag_value())} if device.platform == "gpu" else {}),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
