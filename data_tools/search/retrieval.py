"""Retrieval scores of an embedding: recall@k, mAP@R and kNN accuracy, leave-one-out or from an index; clustering scores.

Every image of a gallery is a query against all the others (never itself),
except an image alone in its class, which only stands in the way.
`recall@k` is the share of queries with at least one same-class image among
their k nearest (the usual definition in metric learning); `mAP@R` is mean
average precision over the R nearest, R being the number of other images of
the query's class (Musgrave et al., "A Metric Learning Reality Check", 2020);
kNN accuracy is the majority class of the k nearest. NMI and adjusted Rand
index score a k-means clustering of the embeddings against the classes.
"""

from __future__ import annotations

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.search.neighbors import exact_neighbors

RECALL_AT = (1, 5, 10)
# k-means starts per clustering score (the best one is kept), at a fixed seed: 2 keep the per-epoch cost near 0.1 s on 300 images.
KMEANS_RESTARTS = 2


def _majority(votes: np.ndarray):
    """The most frequent class among the nearest; a tie goes to the class of the nearer image."""
    labels, first, counts = np.unique(votes, return_index=True, return_counts=True)
    tied = counts == counts.max()
    return labels[tied][np.argmin(first[tied])]


def ranking_scores(query_codes: np.ndarray, neighbor_codes: np.ndarray, relevant: np.ndarray, *, knn: int = 5) -> dict[str, float]:
    """recall@1/5/10, mAP@R and kNN accuracy from each query's ranked answers, whoever ranked them.

    `query_codes` (Q) are the queries' classes as integers, `neighbor_codes`
    (Q x k, nearest first) their answers' classes (-1: an answer of no known
    class, never a hit), `relevant` (Q, each >= 1) how many images of the
    query's class the gallery holds beside the query (R of mAP@R). k must
    reach 10, `knn` and the largest R: the exhaustive search and an index's
    answers are scored by this one function.
    """
    k = neighbor_codes.shape[1]
    hits = neighbor_codes == query_codes[:, None]
    scores = {f"recall@{at}": float(hits[:, :at].any(axis=1).mean()) for at in RECALL_AT}
    ranks = np.arange(1, k + 1)
    within_r = ranks[None, :] <= relevant[:, None]
    precision_at = np.cumsum(hits, axis=1) / ranks
    scores["map@r"] = float(((precision_at * hits * within_r).sum(axis=1) / relevant).mean())
    predicted = np.array([_majority(row) for row in neighbor_codes[:, :knn]])
    scores["knn_accuracy"] = float((predicted == query_codes).mean())
    return scores


def retrieval_scores(embeddings: np.ndarray, classes: np.ndarray, *, metric: str = "cosine", knn: int = 5) -> dict[str, float]:
    """recall@1/5/10, mAP@R and kNN accuracy of `embeddings` (N x D) labelled by `classes` (N).

    An image alone in its class has nothing to find: it stays in the
    gallery, as a distractor, but is not a query.
    """
    check_range("knn", knn, low=1)
    names, codes = np.unique(np.asarray(classes), return_inverse=True)
    counts = np.bincount(codes)
    max_r = int(counts.max()) - 1
    if max_r < 1:
        raise DataError("every class has a single image in the gallery; retrieval needs a class with at least 2.")
    k = min(len(codes) - 1, max(max(RECALL_AT), max_r, knn))
    _, neighbors = exact_neighbors(np.asarray(embeddings, dtype=np.float32), k=k, metric=metric)
    queries = counts[codes] > 1
    return ranking_scores(codes[queries], codes[neighbors[queries]], counts[codes[queries]] - 1, knn=knn)


def index_scores(query_images: list[str], query_classes: np.ndarray, neighbors: np.ndarray, index_paths: list[str],
                 labels: dict[str, object], *, knn: int = 5) -> tuple[dict[str, float], dict[str, int]]:
    """Retrieval scores of a search system's answers: `neighbors` (Q x k+1 row numbers into `index_paths`, -1 none).

    The gallery is the index: an image's class is `labels[path]` (the
    metadata CSV's, by image name); an indexed image the CSV does not label
    keeps its place in the ranking as a wrong answer (it is counted, in the
    second dict). A query's own image, when indexed, is dropped from its
    answers (else the last answer is), and R counts the indexed images of its
    class beside it. A query whose class has no other indexed image is not
    scored. Returns the scores (`ranking_scores`) and the counts.
    """
    check_range("knn", knn, low=1)
    query_classes = np.asarray(query_classes)
    names = sorted({*query_classes.tolist(), *labels.values()})
    code_of = {name: code for code, name in enumerate(names)}
    # Each indexed image's class code (-1: not in the CSV), and a last -1 that the index's "no answer" (-1) reads.
    indexed = np.array([code_of[labels[path]] if path in labels else -1 for path in index_paths] + [-1])
    if (indexed[:-1] < 0).all():
        raise DataError("none of the index's images is in the metadata CSV; build the index from the CSV's images "
                        "(toolkit get-transfer-layer METADATA_CSV FEATURES --model MODEL, then toolkit index build).")
    position = {path: row for row, path in enumerate(index_paths)}
    own = np.array([position.get(image, -2) for image in query_images])
    keep = neighbors != own[:, None]
    answers = np.array([row[mask][: neighbors.shape[1] - 1] for row, mask in zip(neighbors, keep)])
    query_codes = np.array([code_of[name] for name in query_classes.tolist()])
    per_class = np.bincount(indexed[:-1][indexed[:-1] >= 0], minlength=len(names))
    relevant = per_class[query_codes] - (own >= 0)
    scored = relevant > 0
    if not scored.any():
        raise DataError("no query has an image of its class in the index beside itself; nothing to score.")
    scores = ranking_scores(query_codes[scored], indexed[answers[scored]], relevant[scored], knn=knn)
    counts = {"queries": int(scored.sum()), "images": len(index_paths), "unlabelled": int((indexed[:-1] < 0).sum())}
    return scores, counts


def clustering_scores(embeddings: np.ndarray, classes: np.ndarray, *, metric: str = "cosine", seed: int = 0) -> dict[str, float]:
    """How well k-means, told only the number of classes, recovers them: NMI and adjusted Rand index.

    An unsupervised check beside retrieval (as in Musgrave et al.): no
    labels reach the clustering. For cosine the embeddings are L2-normalised
    first, so k-means' Euclidean distance ranks as cosine does.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.preprocessing import normalize

    embeddings = np.asarray(embeddings, dtype=np.float64)
    if metric == "cosine":
        embeddings = normalize(embeddings)
    n_classes = len(np.unique(classes))
    clusters = KMeans(n_clusters=n_classes, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(embeddings)
    return {"nmi": float(normalized_mutual_info_score(classes, clusters)), "ari": float(adjusted_rand_score(classes, clusters))}
