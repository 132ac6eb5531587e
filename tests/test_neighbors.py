"""Exact neighbours: equal to scikit-learn's brute force, symmetric = plain, ties by index, atomic outputs."""

import csv

import faiss
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from image_toolkit.data_tools.atomic import writable_folder
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import feature_blocks
from image_toolkit.data_tools.search import neighbors
from image_toolkit.data_tools.search.neighbors import (
    METRICS,
    block_rows,
    exact_neighbors,
    exact_radius,
    working_set,
    write_neighbors,
)

DIM = 16
# Blocks of 40 rows: 150 rows make several blocks, the last one short.
SMALL_MEMORY = working_set(40, DIM)


def brute_force(gallery, queries, k, metric):
    """scikit-learn's answer; inner products (not a scikit-learn metric) sorted by numpy."""
    if metric == "inner_product":
        products = queries @ gallery.T
        if queries is gallery:
            np.fill_diagonal(products, -np.inf)
        indices = np.argsort(-products, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(products, indices, 1), indices
    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric).fit(gallery)
    return search.kneighbors(None if queries is gallery else queries)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((150, DIM), dtype=np.float32), rng.standard_normal((30, DIM), dtype=np.float32)


def test_blocks_are_small_in_these_tests():
    assert block_rows(DIM, SMALL_MEMORY) == 40


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("max_memory", [SMALL_MEMORY, 2**29])
def test_all_against_all_equals_brute_force(data, metric, max_memory):
    features, _ = data
    distances, indices = exact_neighbors(features, k=7, metric=metric, max_memory=max_memory)
    expected_distances, expected_indices = brute_force(features, features, 7, metric)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)
    assert distances.dtype == np.float32 and indices.dtype == np.int64


@pytest.mark.parametrize("metric", METRICS)
def test_queries_equal_brute_force(data, metric):
    features, queries = data
    distances, indices = exact_neighbors(features, k=5, metric=metric, queries=queries, max_memory=SMALL_MEMORY)
    expected_distances, expected_indices = brute_force(features, queries, 5, metric)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_symmetric_search_equals_the_plain_one(data, metric):
    features, _ = data
    symmetric = exact_neighbors(features, k=9, metric=metric, include_self=True, max_memory=SMALL_MEMORY)
    plain = exact_neighbors(features, k=9, metric=metric, queries=features, max_memory=SMALL_MEMORY)
    np.testing.assert_array_equal(symmetric[1], plain[1])
    np.testing.assert_allclose(symmetric[0], plain[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dense_fraction", [1, 10**9])
def test_keys_offered_one_by_one_or_as_a_whole_block_agree(data, monkeypatch, dense_fraction):
    # 1: every block that can be is offered key by key; 10**9: every block is transposed whole.
    monkeypatch.setattr(neighbors, "DENSE_FRACTION", dense_fraction)
    features, _ = data
    distances, indices = exact_neighbors(features, k=7, max_memory=SMALL_MEMORY)
    expected_distances, expected_indices = brute_force(features, features, 7, "cosine")
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)


def test_self_is_excluded_unless_asked_for(data):
    features, _ = data
    rows = np.arange(len(features))[:, None]
    _, indices = exact_neighbors(features, k=5, max_memory=SMALL_MEMORY)
    assert not (indices == rows).any()
    _, indices = exact_neighbors(features, k=5, include_self=True, max_memory=SMALL_MEMORY)
    np.testing.assert_array_equal(indices[:, :1], rows)


@pytest.mark.parametrize("metric", METRICS)
def test_ties_are_broken_by_index_across_blocks(metric):
    # Rows of four ones among 16 columns: every product is exact, so equal distances are true ties
    # (and plenty), and every metric ranks by the product.
    rng = np.random.default_rng(1)
    features = np.zeros((120, DIM), dtype=np.float32)
    for row in features:
        row[rng.choice(DIM, 4, replace=False)] = 1
    products = features.astype(np.float64) @ features.T
    np.fill_diagonal(products, -np.inf)
    by_product_then_index = np.lexsort((np.broadcast_to(np.arange(120), products.shape), -products), axis=1)
    _, indices = exact_neighbors(features, k=10, metric=metric, max_memory=SMALL_MEMORY)
    np.testing.assert_array_equal(indices, by_product_then_index[:, :10])


def test_results_are_deterministic_whatever_the_threads(data):
    features, _ = data
    one = exact_neighbors(features, k=6, n_threads=1, max_memory=SMALL_MEMORY)
    all_cores = exact_neighbors(features, k=6, n_threads=-1, max_memory=SMALL_MEMORY)
    np.testing.assert_array_equal(one[1], all_cores[1])


def test_thread_settings_are_restored(data):
    before = faiss.omp_get_max_threads()
    exact_neighbors(data[0], k=3, n_threads=1)
    assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"k": 0}, r"^k must be between 1 and 149 \(the number of rows less the row itself\). Received: k=0$"),
        ({"k": 150}, r"between 1 and 149 .* Received: k=150"),
        ({"k": 151, "include_self": True}, r"k must be between 1 and 150 \(the number of rows\). Received: k=151"),
        (
            {"k": 3, "metric": "hamming"},
            r"Expected one of cosine, euclidean, sqeuclidean, inner_product, manhattan. Received: 'hamming'",
        ),
        ({"k": 3, "n_threads": 0}, r"^--n-jobs must be -1 \(all cores\) or at least 1. Received: --n-jobs=0$"),
        ({"k": 3, "n_threads": -2}, r"Received: --n-jobs=-2"),
        ({"k": 3, "max_memory": 0}, r"^max_memory must be greater than 0 \(bytes\). Received: max_memory=0$"),
        ({"k": 3, "max_memory": 100}, r"cannot hold one block of 16 features. Give at least 1 MB"),
    ],
)
def test_impossible_options_are_usage_errors(data, options, message):
    with pytest.raises(OptionError, match=message):
        exact_neighbors(data[0], **options)


def test_bad_features_are_data_errors(data):
    features, queries = data
    with pytest.raises(DataError, match="queries have 8 features per row but the set has 16"):
        exact_neighbors(features, k=3, queries=queries[:, :8])
    with pytest.raises(DataError, match="NaN or infinity"):
        exact_neighbors(np.array([[1.0, np.nan], [0.0, 1.0]]), k=1)


def test_neighbours_are_written_all_together(tmp_path, data):
    features, _ = data
    paths = [f"img_{i}.png" for i in range(len(features))]
    distances, indices = exact_neighbors(features, k=2)
    written = write_neighbors(tmp_path / "out", distances, indices, paths, paths)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(path.name for path in written)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "neighbors.npy"), indices)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "distances.npy"), distances)
    with open(tmp_path / "out" / "neighbors.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["query", "rank", "neighbor", "distance"]
    assert rows[1][:3] == ["img_0.png", "1", paths[indices[0, 0]]]
    assert float(rows[2][3]) == pytest.approx(distances[0, 1], rel=1e-5)
    assert len(rows) == 1 + 2 * len(features)


def test_a_failed_write_leaves_nothing(tmp_path, data):
    features, _ = data
    distances, indices = exact_neighbors(features, k=2)
    with pytest.raises(IndexError):
        write_neighbors(tmp_path, distances, indices, ["a.png"] * len(features), ["too", "short"])
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_cannot_be_made_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"file: is a file, not a folder"):
        writable_folder(tmp_path / "file" / "out")


def test_a_float32_memmap_is_searched_in_place(tmp_path, data, monkeypatch):
    """No copy and no N x D temporary: the memmap itself goes to the blocks, checked a block at a time."""
    features, queries = data
    np.save(tmp_path / "features.npy", features)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    assert neighbors.searchable_rows(mapped, "features") is mapped
    checked = []
    monkeypatch.setattr(neighbors, "feature_blocks", lambda rows, **kw: checked.append(len(rows)) or iter([]))
    monkeypatch.setattr(neighbors, "check_features", lambda *a: pytest.fail("the whole memmap was checked at once"))
    distances, indices = exact_neighbors(mapped, k=4, max_memory=SMALL_MEMORY)
    monkeypatch.undo()
    assert checked == [len(features)]
    expected = exact_neighbors(features, k=4, max_memory=SMALL_MEMORY)
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_array_equal(distances, expected[0])
    np.testing.assert_array_equal(exact_neighbors(features, k=4, queries=mapped[:30])[1],
                                  exact_neighbors(features, k=4, queries=features[:30])[1])


def test_an_h5_dataset_is_read_by_blocks(tmp_path, data):
    import h5py

    features, _ = data
    with h5py.File(tmp_path / "f.h5", "w") as content:
        content.create_dataset("features", data=features.astype(np.float64))
    with h5py.File(tmp_path / "f.h5", "r") as content:
        rows = neighbors.searchable_rows(content["features"], "features")
    assert rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, features)


def test_a_nan_in_a_later_block_of_a_memmap_is_found(tmp_path, data, monkeypatch):
    features = data[0].copy()
    features[120, 3] = np.nan
    np.save(tmp_path / "features.npy", features)
    monkeypatch.setattr(neighbors, "feature_blocks", lambda features, where: feature_blocks(features, rows=50, where=where))
    with pytest.raises(DataError, match="features rows 100-149: 'features' holds NaN or infinity"):
        exact_neighbors(np.load(tmp_path / "features.npy", mmap_mode="r"), k=3)


@pytest.mark.parametrize("metric", METRICS)
def test_the_exact_radius_streamed_by_blocks_is_the_kth_value_of_exact_neighbors(data, metric):
    """Blocks of 7 rows, and blocks of keys of 40, merged in one heap: the k-th value all against all (own rows left out)
    and of new queries, as `exact_neighbors` reports it, as a smaller-is-nearer key."""
    features, queries = data
    sign = -1 if metric == "inner_product" else 1
    sample = np.array([0, 6, 7, 40, 41, 149])  # At both ends of the blocks of rows and of keys.
    radius = exact_radius(features, features[sample], k=5, metric=metric, own_rows=sample, rows=7, max_memory=SMALL_MEMORY)
    all_against_all, _ = exact_neighbors(features, k=5, metric=metric)
    np.testing.assert_allclose(radius, sign * all_against_all[sample, -1], rtol=1e-6, atol=1e-6)
    radius = exact_radius(features, queries, k=5, metric=metric, rows=7, max_memory=SMALL_MEMORY)
    np.testing.assert_allclose(radius, sign * exact_neighbors(features, k=5, metric=metric, queries=queries)[0][:, -1],
                               rtol=1e-6, atol=1e-6)


def test_the_csv_is_written_by_blocks_of_queries(tmp_path, data, monkeypatch):
    features, _ = data
    paths = [f"img_{i}.png" for i in range(len(features))]
    distances, indices = exact_neighbors(features, k=3)
    write_neighbors(tmp_path / "whole", distances, indices, paths, paths)
    monkeypatch.setattr(neighbors, "CSV_BLOCK_ROWS", 7)  # 150 queries: 22 blocks, the last one short
    write_neighbors(tmp_path / "blocks", distances, indices, paths, paths)
    whole = (tmp_path / "whole" / "neighbors.csv").read_text()
    assert (tmp_path / "blocks" / "neighbors.csv").read_text() == whole
    assert len(whole.splitlines()) == 1 + 3 * len(features)
