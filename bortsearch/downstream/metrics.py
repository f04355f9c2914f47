"""GLUE's metrics, computed by scikit-learn and SciPy.

accuracy; F1 of the positive class (MRPC, QQP); Matthews correlation (CoLA);
Pearson and Spearman correlation (STS-B). A task's score is the mean of its
metrics, as the GLUE leaderboard averages them.
"""

from __future__ import annotations

import math

import numpy as np

NAMES = ("accuracy", "f1", "matthews", "pearson", "spearman")


def compute(names: tuple[str, ...], predictions, labels) -> dict[str, float]:
    """The metrics `names` of predictions (class ids, or values for regression)
    against labels."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    p, y = np.asarray(predictions), np.asarray(labels)
    out = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(accuracy_score(y, p))
        elif name == "f1":
            out[name] = float(f1_score(y, p, zero_division=0.0))
        elif name == "matthews":
            out[name] = float(matthews_corrcoef(y, p))
        elif name in ("pearson", "spearman"):
            if np.std(p) == 0 or np.std(y) == 0:  # undefined: a constant prediction
                out[name] = float("nan")
            else:
                fn = pearsonr if name == "pearson" else spearmanr
                out[name] = float(fn(p, y)[0])
        else:
            raise ValueError(f"unknown metric {name!r}; known: {NAMES}")
    return out


def score(metrics: dict[str, float], names: tuple[str, ...]) -> float:
    """The task's score: the mean of its metrics (NaN counts as 0, no signal)."""
    values = [metrics[n] for n in names]
    return float(np.mean([0.0 if math.isnan(v) else v for v in values]))


def majority(names: tuple[str, ...], train_labels, dev_labels, regression: bool) -> dict:
    """The majority-class baseline: always predict the training split's most
    frequent class (for regression its mean, whose correlations are undefined)."""
    y = np.asarray(train_labels)
    guess = float(y.mean()) if regression else int(np.bincount(y).argmax())
    return compute(names, np.full(len(dev_labels), guess), dev_labels)
