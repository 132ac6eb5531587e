"""The best k of a vector of scores, ties broken by index: the one ranking rule of keyword, Rocchio and web searches.

Memory and time: when k is much smaller than n, `np.argpartition` keeps the
candidates (every score at least the k-th largest, ties included) in O(n)
and only those are sorted, so a million scores are never fully sorted.
"""

from __future__ import annotations

import numpy as np

# Partitioning first pays below this share of n: on a million float32 scores, 0.07 s against a full sort's 0.33 s
# at k = 40, and about even at k = n / 4.
PARTITION_SHARE = 0.25


def top_k(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices of the k largest scores (all when k is None or above n), largest first, equal scores by index.

    NaN scores rank last, as `np.lexsort` puts them.
    """
    scores = np.asarray(scores).reshape(-1)
    n = len(scores)
    k = n if k is None else max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.arange(n)
    if k < PARTITION_SHARE * n and not np.isnan(scores).any():
        # Every score equal to the k-th largest stays a candidate, so ties are still broken by index.
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        candidates = np.flatnonzero(scores >= kth)
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]].astype(np.int64, copy=False)
