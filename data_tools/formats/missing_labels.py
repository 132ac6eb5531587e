"""Strategies for unknown cells of a multi-label training matrix.

* `mask`: leave them NaN; the masked loss and metrics skip them.
* `mean`: fill each with its label's training mean (the original tool's choice).
* `mf`: fill each with the probability from a low-rank logistic matrix
  factorisation of the known cells, so correlated labels inform each other
  (the original tool's other experiment).

Validation labels are never filled: scores are computed on known cells only.
"""

from __future__ import annotations

import logging

import numpy as np

from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.names import MISSING_LABELS as STRATEGIES

logger = logging.getLogger(__name__)


def fill_missing(labels: np.ndarray, strategy: str, *, seed: int = 0) -> np.ndarray:
    """A copy of `labels` (N x L, NaN = unknown) with unknown cells handled by `strategy`."""
    if strategy not in STRATEGIES:
        raise OptionError(f"--missing-labels: expected one of {', '.join(STRATEGIES)}. Received: {strategy!r}.")
    labels = np.array(labels, dtype=np.float32)
    unknown = np.isnan(labels)
    if strategy == "mask" or not unknown.any():
        return labels
    if strategy == "mean":
        n_known = (~unknown).sum(axis=0)
        means = np.where(n_known > 0, np.nansum(labels, axis=0) / np.maximum(n_known, 1), 0.5)
        return np.where(unknown, means, labels).astype(np.float32)
    return np.where(unknown, logistic_matrix_factorization(labels, seed=seed), labels).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def logistic_matrix_factorization(
    labels: np.ndarray,
    *,
    rank: int | None = None,
    l2: float = 1e-2,
    iterations: int = 500,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """Probabilities sigmoid(U Vᵀ + b) fitted by Adam to the known cells of `labels`.

    The label matrix is small (images x labels), so full-batch Adam in NumPy
    converges in well under a second for tens of thousands of images; no
    library offers logistic MF with a mask, hence these few lines.
    """
    n_rows, n_labels = labels.shape
    rank = rank or max(1, min(n_labels - 1, (n_labels + 1) // 2))
    known = ~np.isnan(labels)
    target = np.where(known, labels, 0.0)
    n_known = max(int(known.sum()), 1)
    rng = np.random.default_rng(seed)
    params = {
        "u": rng.normal(0.0, 0.1, (n_rows, rank)),
        "v": rng.normal(0.0, 0.1, (n_labels, rank)),
        "b": np.zeros(n_labels),
    }
    moments = {name: (np.zeros_like(p), np.zeros_like(p)) for name, p in params.items()}
    beta1, beta2 = 0.9, 0.999
    for step in range(1, iterations + 1):
        residual = (_sigmoid(params["u"] @ params["v"].T + params["b"]) - target) * known / n_known
        grads = {
            "u": residual @ params["v"] + l2 * params["u"] / n_rows,
            "v": residual.T @ params["u"] + l2 * params["v"] / n_rows,
            "b": residual.sum(axis=0),
        }
        for name, grad in grads.items():
            m, v = moments[name]
            m[...] = beta1 * m + (1 - beta1) * grad
            v[...] = beta2 * v + (1 - beta2) * grad**2
            m_hat = m / (1 - beta1**step)
            v_hat = v / (1 - beta2**step)
            params[name] -= learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
    logger.debug("Logistic MF: rank %d, %d known cells", rank, n_known)
    return _sigmoid(params["u"] @ params["v"].T + params["b"]).astype(np.float32)
