"""Near-duplicates and outliers from image features, by cosine distance.

Rows are L2-normalised, so cosine distance is 1 - dot product and
scikit-learn's exact neighbour search on them is the cosine search. Memory:
the radius graph holds one entry per close pair (few, by design) and the kNN
search k entries per image, so a set of N images costs O(N k), not O(N^2).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.formats.features import FeatureSet
from image_toolkit.data_tools.progress import track

# Cosine distance below which two images are near-duplicates. Copies of a digit resized and re-saved as JPEG
# (q=90) sit below 0.007 on 32 px grey pixel features; the closest two different digits of 200, at 0.015 (tests/test_inspect.py).
DUPLICATE_DISTANCE = 0.01
PIXEL_SIZE = 32


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms == 0, 1, norms)


def pixel_features(paths: list, *, size: int = PIXEL_SIZE, show: bool | None = None) -> np.ndarray:
    """Each image as its grey pixels at `size` x `size`, centred and L2-normalised (no TensorFlow).

    Centring (the image's mean grey subtracted) makes the cosine a correlation:
    a copy brighter or re-encoded stays close, and two dark images with
    different shapes do not look alike merely for being dark.
    """
    rows = np.empty((len(paths), size * size), dtype=np.float32)
    for i, path in enumerate(track(paths, "Pixel features", show=show)):
        with Image.open(path) as image:
            image.draft("L", (size, size))
            grey = np.asarray(image.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel()
        rows[i] = grey - grey.mean()
    return normalised(rows)


def matched_features(feature_set: FeatureSet, names: list[str], where: str) -> np.ndarray:
    """The rows of `feature_set` for `names` (image paths relative to the image folder), in that order."""
    row_of = {path: row for row, path in enumerate(feature_set.paths)}
    missing = [name for name in names if name not in row_of]
    if missing:
        example = feature_set.paths[0] if feature_set.paths else "none"
        raise DataError(
            f"{where}: no features for {len(missing)} of {len(names)} images (first: {missing[0]}; the file has "
            f"names like {example}); extract features from this image folder, e.g. "
            "toolkit get-transfer-layer IMAGE_DIR F.npz --model pixels."
        )
    return normalised(np.asarray(feature_set.features)[[row_of[name] for name in names]])


def near_duplicate_groups(features: np.ndarray, *, max_distance: float = DUPLICATE_DISTANCE,
                          same: list[str] | None = None) -> list[np.ndarray]:
    """Groups (sorted row indices, two or more) of images linked by pairs within `max_distance` (cosine).

    Linked, not all within: a chain of close pairs is one group, as a person
    cleaning the data would see it (scipy's connected components). Rows with
    equal `same` keys (content hashes) are linked whatever their features.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    features = normalised(features)
    if len(features) < 2:
        return []
    graph = NearestNeighbors(radius=max_distance, metric="cosine", algorithm="brute").fit(features) \
        .radius_neighbors_graph(features, mode="connectivity")
    if same is not None:  # each row linked to the first row of its key
        first = np.unique(np.asarray(same, dtype=object), return_index=True, return_inverse=True)
        links = first[1][first[2].ravel()]
        graph = graph + coo_matrix((np.ones(len(links)), (np.arange(len(links)), links)), shape=graph.shape).tocsr()
    _, labels = connected_components(graph, directed=False)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    return sorted((group for group in groups if len(group) > 1), key=lambda group: group[0])


def outlier_scores(features: np.ndarray, classes: list[str] | None = None, *, k: int = 5) -> np.ndarray:
    """Each image's mean cosine distance to its `k` nearest others: within its class when classes are given.

    An image alone in its class (or a class of fewer than k + 1) is scored
    against as many as there are; a single image scores NaN (nothing to compare).
    """
    from sklearn.neighbors import NearestNeighbors

    features = normalised(features)
    groups = [np.arange(len(features))] if classes is None else \
        [np.flatnonzero(np.asarray(classes, dtype=object) == c) for c in dict.fromkeys(classes)]
    scores = np.full(len(features), np.nan)
    for rows in groups:
        n_neighbors = min(k, len(rows) - 1)
        if n_neighbors < 1:
            continue
        distances, _ = NearestNeighbors(n_neighbors=n_neighbors + 1, metric="cosine", algorithm="brute") \
            .fit(features[rows]).kneighbors(features[rows])
        scores[rows] = distances[:, 1:].mean(axis=1)  # the first neighbour is the image itself
    return scores
