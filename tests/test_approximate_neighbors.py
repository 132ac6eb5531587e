"""Approximate all-against-all neighbours: recall measured and reached, exact's semantics, fallback, refusals."""

import warnings

import numpy as np
import pytest

from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.search import approximate_neighbors
from image_toolkit.data_tools.search.approximate_neighbors import (
    MIN_APPROXIMATE_ROWS,
    exact_hint,
    find_neighbors,
)
from image_toolkit.data_tools.search.index import ImageIndex
from image_toolkit.data_tools.search.neighbors import exact_neighbors

K = 10


@pytest.fixture(scope="module")
def clustered():
    """1,500 rows of 16 features in 30 overlapping clusters: approximate search misses some neighbours."""
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((30, 16)).astype(np.float32) * 2
    return centers[rng.integers(0, 30, 1500)] + rng.standard_normal((1500, 16)).astype(np.float32)


def true_recall(found, exact_indices):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact_indices, strict=True)])


def pair_distances(features, queries, indices, metric):
    """The metric between every query and each neighbour found, computed plainly."""
    neighbours = features[indices]
    if metric == "cosine":
        unit = lambda rows: rows / np.linalg.norm(rows, axis=-1, keepdims=True)  # noqa: E731
        return 1 - np.einsum("qd,qkd->qk", unit(queries), unit(neighbours))
    if metric == "inner_product":
        return np.einsum("qd,qkd->qk", queries, neighbours)
    squared = ((queries[:, None, :] - neighbours) ** 2).sum(-1)
    return squared if metric == "sqeuclidean" else np.sqrt(squared)


@pytest.mark.parametrize(("method", "metric"), [("ivf", "cosine"), ("ivf", "sqeuclidean"), ("hnsw", "euclidean"),
                                                ("hnsw", "inner_product")])
def test_recall_reaches_the_target_and_values_mean_what_exact_ones_mean(clustered, method, metric):
    found = find_neighbors(clustered, k=K, method=method, metric=metric, target_recall=0.95, n_threads=1)
    _, exact_indices = exact_neighbors(clustered, k=K, metric=metric, n_threads=1)
    assert found.method == method
    assert found.distances.shape == found.indices.shape == (len(clustered), K)
    assert found.distances.dtype == np.float32 and found.indices.dtype == np.int64
    assert not (found.indices == np.arange(len(clustered))[:, None]).any()  # never itself
    assert found.recall["k"] == K and found.recall["sample"] == len(clustered)
    assert found.recall["value"] >= 0.95
    assert true_recall(found.indices, exact_indices) >= 0.95
    assert abs(true_recall(found.indices, exact_indices) - found.recall["value"]) < 0.01  # every row is the sample here
    np.testing.assert_allclose(found.distances, pair_distances(clustered, clustered, found.indices, metric),
                               rtol=1e-4, atol=1e-4)
    keys = -found.distances if metric == "inner_product" else found.distances
    assert (np.diff(keys, axis=1) >= 0).all()  # nearest first


def test_a_short_tuning_is_raised_until_the_recall_at_k_is_reached(clustered, monkeypatch):
    """The index's own tuning (recall@10 of held-out rows) may stop short of recall@k: the calibration goes on."""

    class TunedShort(ImageIndex):
        def fit(self, *args, **kwargs):
            super().fit(*args, **kwargs)
            self.index_.nprobe = self.params_["nprobe"] = 1
            return self

    monkeypatch.setattr(approximate_neighbors, "ImageIndex", TunedShort)
    found = find_neighbors(clustered, k=30, method="ivf", metric="euclidean", target_recall=0.98, n_threads=1)
    tried = found.recall["tried"]
    assert tried[0][0] == 1 and tried[0][1] < 0.98 and len(tried) > 1
    assert found.recall["value"] == tried[-1][1] >= 0.98
    assert found.params["nprobe"] == tried[-1][0]
    _, exact_indices = exact_neighbors(clustered, k=30, metric="euclidean", n_threads=1)
    assert true_recall(found.indices, exact_indices) >= 0.98


def test_queries_are_searched_against_the_index_with_no_self_to_drop(clustered):
    queries = clustered[:200] + 0.01
    found = find_neighbors(clustered, k=K, method="ivf", queries=queries, target_recall=0.95, sample_size=100, n_threads=1)
    _, exact_indices = exact_neighbors(clustered, k=K, queries=queries, n_threads=1)
    assert found.indices.shape == (200, K) and found.recall["sample"] == 100
    assert true_recall(found.indices, exact_indices) >= 0.95
    assert (found.indices[:, 0] == np.arange(200)).mean() > 0.9  # the row a query was made from is not dropped


def test_include_self_keeps_a_row_as_its_own_nearest(clustered):
    found = find_neighbors(clustered, k=3, method="hnsw", include_self=True, n_threads=1)
    assert (found.indices[:, 0] == np.arange(len(clustered))).mean() > 0.95
    assert found.recall["value"] >= 0.95


def test_a_memmap_gives_the_same_neighbours_as_an_array(clustered, tmp_path):
    np.save(tmp_path / "features.npy", clustered)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    from_disk = find_neighbors(mapped, k=5, method="ivf", n_threads=1)
    in_memory = find_neighbors(clustered, k=5, method="ivf", n_threads=1)
    np.testing.assert_array_equal(from_disk.indices, in_memory.indices)


def test_too_few_rows_for_an_index_are_searched_exactly_with_one_warning():
    features = np.random.default_rng(0).standard_normal((MIN_APPROXIMATE_ROWS - 1, 8)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_neighbors(features, k=4, method="ivf")
    assert [str(w.message) for w in caught] == [
        f"{MIN_APPROXIMATE_ROWS - 1} images are too few for --method ivf (at least {MIN_APPROXIMATE_ROWS}): "
        "searched exactly instead."
    ]
    assert found.method == "exact" and found.recall is None
    np.testing.assert_array_equal(found.indices, exact_neighbors(features, k=4)[1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "hnsw", "metric": "manhattan"}, r"--method hnsw searches a faiss index, which has no manhattan"),
        ({"method": "ivf", "target_recall": 0}, r"--target-recall must be in \(0, 1\]. Received: --target-recall=0"),
        ({"method": "ivf", "target_recall": 1.5}, r"Received: --target-recall=1.5"),
        ({"method": "annoy"}, r"Expected one of exact, ivf, hnsw. Received: method='annoy'"),
        ({"method": "ivf", "k": 1500}, r"k must be between 1 and 1499"),
    ],
)
def test_impossible_options_are_usage_errors(clustered, options, message):
    with pytest.raises(OptionError, match=message):
        find_neighbors(clustered, **{"k": 3, **options})


def test_the_hint_appears_only_above_the_size_where_exact_stays_fast():
    assert exact_hint(50_000, 2048, 4) is None
    assert exact_hint(1_000, 2048, 4, n_queries=1_000) is None
    hint = exact_hint(1_000_000, 2048, 4)
    assert hint.startswith("Hint: exact search of 1,000,000 images of 2048 features takes about ")
    assert " h on 4 threads; --method ivf or hnsw" in hint and "\n" not in hint
