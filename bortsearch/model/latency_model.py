"""î fitted [ours]: a latency model from a handful of measured architectures.

FLOPs alone miss what dominates small models at batch 1: a fixed cost per call
(dispatch, embedding gather, the runtime's own overhead) and per layer (a dozen
operator launches, LayerNorms, reshapes), and the attention's element-wise work,
which grows with the heads A and L². The model is

    latency ≈ c₀ + c₁·D + c₂·FLOPs + c₃·D·A·B·L²

with c ≥ 0 (non-negative least squares: each term is a cost), fitted on the
measured latencies of a few architectures that span the space's FLOPs, and judged
by its leave-one-out error on them (each measured architecture predicted by the
model fitted on the others).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bortsearch.model.arch import Arch
from bortsearch.model.proxies import forward_flops

FEATURES = ("call", "layers", "flops", "attention_scores")


def features(arch: Arch, batch: int, seq_len: int, scope: str) -> np.ndarray:
    return np.array([1.0, arch.layers, float(forward_flops(arch, batch, seq_len, scope)),
                     float(arch.layers * arch.heads * batch * seq_len ** 2)])


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
        return {"features": list(FEATURES), "coef": list(self.coef), "measured": len(self.loo_errors),
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
