"""Relevance feedback by Rocchio, and precision@k on the residual collection, in plain numpy.

Rocchio moves the query towards the images a user selected and away from the
ones they deselected:

    q' = alpha * q + beta * mean(selected) - gamma * mean(deselected)

with the defaults of Rocchio's SMART experiments as Manning, Raghavan and
Schütze give them (Introduction to Information Retrieval, 9.1.1):
alpha = 1, beta = 0.75, gamma = 0.15. An empty set contributes nothing.

With the cosine metric, the query and every judged row are L2-normalised
first, so that each judged image weighs the same whatever its length; the
ranking is then by cosine similarity. With `euclidean` the rows are used as
they are and the ranking is by distance; with `inner_product` (a faiss
index's third metric) as they are, by inner product. A query made from rows (`centroid`)
is built in the same space (`in_metric_space`) as the ranking measures: a
mean of normalised rows lies near the origin, and by euclidean distance it
would rank the shortest rows first, whatever images it was made from.

Evaluation follows the residual-collection method (Salton and Buckley,
1990): images the user already judged are removed before precision is
measured, so that feedback earns no credit for moving them to the top.

Memory: ranking reads the rows as given (float32 rows are not copied) and
holds N scores: only the query is normalised, the rows' lengths come from a
dot product of each row with itself, and the top k are taken by
`np.argpartition` (`ranking.top_k`), so N is never fully sorted. The web app
searches its faiss index instead and uses this module only to build queries.
"""

from __future__ import annotations

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.search.ranking import top_k

ALPHA, BETA, GAMMA = 1.0, 0.75, 0.15
METRICS = ("cosine", "euclidean", "inner_product")


def normalised(rows: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to unit length; zero rows stay zero."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1)


def in_metric_space(rows: np.ndarray, metric: str) -> np.ndarray:
    """Rows (or one vector) as the metric compares them: L2-normalised for cosine, as they are otherwise."""
    return normalised(rows) if metric == "cosine" else np.asarray(rows, dtype=np.float32)


def centroid(features: np.ndarray, ids, *, metric: str = "cosine") -> np.ndarray:
    """The mean (D,) of the rows `ids` in the metric's space: a query for the images they show, ranked by that metric."""
    return in_metric_space(np.asarray(features)[np.asarray(ids, dtype=np.int64)], metric).mean(axis=0)


def _checked_ids(ids, n: int, name: str) -> np.ndarray:
    ids = np.asarray(list(ids), dtype=np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise OptionError(f"{name}: image id {int(bad[0])} is not in the index (ids are 0 to {n - 1}).")
    return ids


def rocchio(query: np.ndarray, features: np.ndarray, selected=(), deselected=(), *,
            alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA, metric: str = "cosine") -> np.ndarray:
    """The refined query q' (D,) from the query (D,), the feature rows (N x D) and the ids judged."""
    if metric not in METRICS:
        raise OptionError(f"Unknown metric. Expected one of {', '.join(METRICS)}. Received: metric={metric!r}")
    for name, weight in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_range(name, weight, low=0)
    features = np.asarray(features, dtype=np.float32)
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if query.shape[0] != features.shape[1]:
        raise OptionError(f"The query has {query.shape[0]} features but the rows have {features.shape[1]}.")
    selected = _checked_ids(selected, len(features), "selected")
    deselected = _checked_ids(deselected, len(features), "deselected")
    refined = alpha * in_metric_space(query, metric)
    if selected.size:
        refined = refined + beta * centroid(features, selected, metric=metric)
    if deselected.size:
        refined = refined - gamma * centroid(features, deselected, metric=metric)
    return refined.astype(np.float32)


def similarities(query: np.ndarray, features: np.ndarray, *, metric: str = "cosine") -> np.ndarray:
    """Score (N,) of every row for the query, larger is nearer: cosine similarity, minus the euclidean distance, or
    the inner product.

    No N x D temporary: the rows are multiplied by the query, and their
    squared lengths taken as each row's dot product with itself.
    """
    features = np.asarray(features, dtype=np.float32)
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if metric == "inner_product":
        return features @ query
    squared = np.einsum("ij,ij->i", features, features)
    if metric == "cosine":
        lengths = np.sqrt(squared, out=squared)
        return np.divide(features @ normalised(query), lengths, out=np.zeros_like(lengths), where=lengths > 0)
    squared -= 2 * (features @ query)
    squared += query @ query
    return -np.sqrt(np.maximum(squared, 0, out=squared), out=squared)


def rank(query: np.ndarray, features: np.ndarray, *, metric: str = "cosine", k: int | None = None,
         exclude=()) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows for the query (all when k is None): (ids, scores), best first, ties by id; `exclude` left out."""
    scores = similarities(query, features, metric=metric)
    exclude = np.unique(np.asarray(list(exclude), dtype=np.int64))
    if exclude.size:
        scores[exclude] = -np.inf  # Last, then dropped: k + the excluded candidates hold the k best others.
    wanted = None if k is None else int(k) + exclude.size
    order = top_k(scores, wanted)
    if exclude.size:
        order = order[~np.isin(order, exclude)][:k]
    return order, scores[order]


def residual_precision_at_k(ranking, relevant, judged, *, k: int = 10) -> float:
    """Precision@k of a ranking after removing the judged ids: the residual collection.

    `relevant` and `judged` are sets (or arrays) of ids; fewer than k
    residual ids left count as misses (divided by k).
    """
    check_range("k", k, low=1)
    judged, relevant = set(np.asarray(list(judged)).tolist()), set(np.asarray(list(relevant)).tolist())
    residual = [i for i in np.asarray(ranking).tolist() if i not in judged][:k]
    return sum(i in relevant for i in residual) / k


def feedback_round(features: np.ndarray, labels: np.ndarray, query_id: int, *, judge: int = 20, k: int = 10,
                   metric: str = "cosine", alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> tuple[float, float]:
    """One simulated user's round on image `query_id`: (precision@k without, with refinement) on the residual collection.

    The user judges the top `judge` results of the query (the query image
    itself left out): those of the query's label are selected, the others
    deselected. Both rankings are then scored on the images not judged.
    """
    labels = np.asarray(labels)
    query = np.asarray(features[query_id], dtype=np.float32)
    ranking, _ = rank(query, features, metric=metric, exclude=[query_id])
    top = ranking[:judge]
    selected, deselected = top[labels[top] == labels[query_id]], top[labels[top] != labels[query_id]]
    relevant = np.flatnonzero(labels == labels[query_id])
    judged = set(top.tolist()) | {query_id}
    before = residual_precision_at_k(ranking, relevant, judged, k=k)
    refined = rocchio(query, features, selected, deselected, alpha=alpha, beta=beta, gamma=gamma, metric=metric)
    after_ranking, _ = rank(refined, features, metric=metric, exclude=[query_id])
    return before, residual_precision_at_k(after_ranking, relevant, judged, k=k)
