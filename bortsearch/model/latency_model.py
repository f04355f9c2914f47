"""î fitted [ours]: a latency model from a handful of measured architectures.

FLOPs alone miss what dominates small models at batch 1: a fixed cost per call
(dispatch, embedding gather, the runtime's own overhead) and per layer (a dozen
operator launches, reshapes); the element-wise work on the activations (LayerNorms,
GELU, residual adds, and in int8 the quantisation of every product's input), which
grows with D·L·(H + I); the attention's softmax, which grows with the heads A and L²;
and the products themselves at two rates: those with the weights (which int8
quantises, and which are large enough to run near the machine's peak) and the
attention's scores and weighted sum (in float32 in every runtime, and split into
A small products). The model is

    latency ≈ c₀ + c₁·D + c₂·weight FLOPs + c₃·attention FLOPs + c₄·D·A·B·L²
              + c₅·D·B·L·(H + I)

with c ≥ 0 (non-negative least squares: each term is a cost), fitted on the
measured latencies of a few architectures that span the space's FLOPs, and judged
by its leave-one-out error on them (each measured architecture predicted by the
model fitted on the others). bench/latency_fit.py measures how it predicts the
rest of a space, against the model without the last two splits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bortsearch.model.arch import Arch
from bortsearch.model.proxies import attention_flops, attention_scores, forward_flops, weight_flops

FEATURES = ("call", "layers", "weight_flops", "attention_flops", "attention_scores",
            "activations")


def features(arch: Arch, batch: int, seq_len: int, scope: str) -> np.ndarray:
    """The model's terms for one architecture (see the module's docstring)."""
    d, b, l = arch.layers, batch, seq_len
    return np.array([1.0, d, weight_flops(arch, b, l, scope), attention_flops(arch, b, l),
                     attention_scores(arch, b, l), d * b * l * (arch.hidden + arch.intermediate)],
                    dtype=float)


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Seconds per forward pass as c · features(arch)."""

    coef: tuple[float, ...]
    batch: int
    seq_len: int
    scope: str
    loo_errors: tuple[float, ...] = ()  # relative, one per measured architecture

    def predict(self, arch: Arch) -> float:
        return float(features(arch, self.batch, self.seq_len, self.scope) @ np.array(self.coef))

    def summary(self) -> dict:
        errs = np.abs(self.loo_errors) if self.loo_errors else np.array([np.nan])
        return {"features": list(FEATURES), "coef": list(self.coef),
                "measured": len(self.loo_errors),
                "loo_median_rel_error": float(np.median(errs)),
                "loo_max_rel_error": float(np.max(errs)), "batch": self.batch,
                "seq_len": self.seq_len, "scope": self.scope}


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares in relative error (rows weighted by 1/y), on
    columns scaled to unit maximum for conditioning."""
    from scipy.optimize import nnls

    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    w = 1.0 / y
    c, _ = nnls((x / scale) * w[:, None], y * w)
    return c / scale


def fit_latency(archs: list[Arch], seconds: list[float], batch: int, seq_len: int,
                scope: str) -> LatencyModel:
    """The model fitted on all measured architectures, with each one's
    leave-one-out relative error (predicted / measured − 1)."""
    if len(archs) != len(seconds) or len(archs) < 2:
        raise ValueError("fit_latency needs at least two measured architectures")
    x = np.stack([features(a, batch, seq_len, scope) for a in archs])
    y = np.asarray(seconds, float)
    loo = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        loo.append(float(x[i] @ _nnls(x[keep], y[keep]) / y[i] - 1.0))
    return LatencyModel(tuple(float(c) for c in _nnls(x, y)), batch, seq_len, scope, tuple(loo))


def sample(archs: list[Arch], k: int, batch: int, seq_len: int, scope: str) -> list[Arch]:
    """k architectures that span the space: evenly spaced in FLOPs rank (the
    smallest and the largest included), ties broken by the architecture."""
    ranked = sorted(archs, key=lambda a: (forward_flops(a, batch, seq_len, scope), a.size))
    if k >= len(ranked):
        return ranked
    picks = sorted({round(j * (len(ranked) - 1) / (k - 1)) for j in range(k)})
    return [ranked[j] for j in picks]
