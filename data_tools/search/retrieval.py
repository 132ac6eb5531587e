"""Retrieval scores of an embedding: recall@k, mAP@R and kNN accuracy, leave-one-out.

Every image of a gallery is a query against all the others (never itself),
except an image alone in its class, which only stands in the way.
`recall@k` is the share of queries with at least one same-class image among
their k nearest (the usual definition in metric learning); `mAP@R` is mean
average precision over the R nearest, R being the number of other images of
the query's class (Musgrave et al., "A Metric Learning Reality Check", 2020);
kNN accuracy is the majority class of the k nearest.
"""

from __future__ import annotations

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.search.neighbors import exact_neighbors

RECALL_AT = (1, 5, 10)


def _majority(votes: np.ndarray):
    """The most frequent class among the nearest; a tie goes to the class of the nearer image."""
    labels, first, counts = np.unique(votes, return_index=True, return_counts=True)
    tied = counts == counts.max()
    return labels[tied][np.argmin(first[tied])]


def retrieval_scores(embeddings: np.ndarray, classes: np.ndarray, *, metric: str = "cosine", knn: int = 5) -> dict[str, float]:
    """recall@1/5/10, mAP@R and kNN accuracy of `embeddings` (N x D) labelled by `classes` (N).

    An image alone in its class has nothing to find: it stays in the
    gallery, as a distractor, but is not a query.
    """
    check_range("knn", knn, low=1)
    gallery_classes = np.asarray(classes)
    counts = {label: int(count) for label, count in zip(*np.unique(gallery_classes, return_counts=True))}
    max_r = max(counts.values()) - 1
    if max_r < 1:
        raise DataError("every class has a single image in the gallery; retrieval needs a class with at least 2.")
    k = min(len(gallery_classes) - 1, max(max(RECALL_AT), max_r, knn))
    _, neighbors = exact_neighbors(np.asarray(embeddings, dtype=np.float32), k=k, metric=metric)
    queries = np.array([counts[label] > 1 for label in gallery_classes])
    classes, neighbor_classes = gallery_classes[queries], gallery_classes[neighbors[queries]]
    hits = neighbor_classes == classes[:, None]
    scores = {f"recall@{at}": float(hits[:, :at].any(axis=1).mean()) for at in RECALL_AT}
    relevant = np.array([counts[label] - 1 for label in classes])
    ranks = np.arange(1, k + 1)
    within_r = ranks[None, :] <= relevant[:, None]
    precision_at = np.cumsum(hits, axis=1) / ranks
    scores["map@r"] = float(((precision_at * hits * within_r).sum(axis=1) / relevant).mean())
    predicted = np.array([_majority(row) for row in neighbor_classes[:, :knn]])
    scores["knn_accuracy"] = float((predicted == classes).mean())
    return scores
