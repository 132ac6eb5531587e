"""`toolkit compute-distances` and `toolkit merge-features` from the command line, good input and bad."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from image_toolkit.cli.features import merge_features
from image_toolkit.cli.neighbors import compute_distances
from image_toolkit.data_tools.formats.features import FeatureSet, read_features, write_features
from image_toolkit.data_tools.search.neighbors import METRICS, exact_neighbors
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def features_file(tmp_path):
    rng = np.random.default_rng(0)
    feature_set = FeatureSet(
        [f"cats/{i:02d}.jpg" for i in range(12)], rng.random((12, 8), dtype=np.float32), {"model": "m"}
    )
    write_features(tmp_path / "features.npz", feature_set)
    return tmp_path / "features.npz"


def test_round_trip_from_a_feature_file_to_neighbors_csv(runner, tmp_path, features_file):
    result = runner.invoke(compute_distances, [str(features_file), str(tmp_path / "out"), "euclidean", "3", "-1"])
    assert result.exit_code == 0, result.output
    assert "12 images x 3 neighbours" in result.stdout
    features = read_features(features_file)
    distances, indices = exact_neighbors(features.features, k=3, metric="euclidean")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "neighbors.npy"), indices)
    with open(tmp_path / "out" / "neighbors.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 36
    assert rows[0] == {
        "query": "cats/00.jpg",
        "rank": "1",
        "neighbor": features.paths[indices[0, 0]],
        "distance": f"{distances[0, 0]:.6g}",
    }


def test_queries_and_json_summary(runner, tmp_path, features_file):
    queries = FeatureSet(["dogs/a.jpg", "dogs/b.jpg"], np.ones((2, 8), dtype=np.float32), {})
    write_features(tmp_path / "queries.h5", queries)
    arguments = [
        str(features_file),
        str(tmp_path / "out"),
        "cosine",
        "4",
        "--queries",
        str(tmp_path / "queries.h5"),
        "--json",
    ]
    result = runner.invoke(compute_distances, arguments)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["queries"] == 2 and summary["files"] == ["neighbors.npy", "distances.npy", "neighbors.csv"]
    assert np.load(tmp_path / "out" / "distances.npy").shape == (2, 4)


def test_help_names_every_metric(runner):
    result = runner.invoke(compute_distances, ["--help"])
    assert result.exit_code == 0
    assert all(metric in result.output for metric in METRICS)


def test_the_script_runs_the_same_command(tmp_path, features_file):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "compute_distances.py"),
            str(features_file),
            str(tmp_path / "out"),
            "cosine",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "out" / "neighbors.npy").shape == (12, 2)


def write_bad(tmp_path, kind):
    """A feature file broken in one way."""
    if kind == "pickle that runs code":
        target = tmp_path / "features.pkl"
        target.write_bytes(b"cos\nsystem\n(S'touch hacked'\ntR.")
        return target
    target = tmp_path / "features.npz"
    arrays = {
        "not a feature file": None,
        "wrong shape": {"paths": np.array(["a", "b"]), "features": np.ones(2)},
        "NaN row": {"paths": np.array(["a", "b"]), "features": np.array([[0.0], [np.nan]])},
        "empty": {"paths": np.array([], dtype=str), "features": np.ones((0, 3))},
    }[kind]
    if arrays is None:
        target.write_text("not numpy")
    else:
        np.savez(target, **arrays)
    return target


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not a feature file", "not a .npz feature file"),
        ("wrong shape", "expected a 2-D float array 'features' (N x D), got shape (2,)"),
        ("NaN row", "NaN or infinity in 1 of 2 rows (first: row 1)"),
        ("empty", "'features' is empty"),
        ("pickle that runs code", "refused to load"),
    ],
)
def test_bad_feature_files_are_one_line_data_errors(runner, tmp_path, monkeypatch, kind, message):
    monkeypatch.chdir(tmp_path)
    path = write_bad(tmp_path, kind)
    result = runner.invoke(compute_distances, [str(path), str(tmp_path / "out"), "cosine", "1"])
    assert result.exit_code == 1
    assert message in one_line_error(result)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "hacked").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["cosine", "0"], "k must be between 1 and 11"),
        (["cosine", "12"], "Received: k=12"),
        (["hamming", "3"], "Expected one of cosine, euclidean, sqeuclidean, inner_product, manhattan"),
        (["cosine", "3", "0"], "at least 1. Received: --n-jobs=0"),
        (["cosine", "3", "-2"], "Received: --n-jobs=-2"),
        (["cosine", "three"], "'three' is not a valid integer"),
    ],
)
def test_impossible_arguments_are_one_line_usage_errors(runner, tmp_path, features_file, arguments, message):
    result = runner.invoke(compute_distances, [str(features_file), str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2
    assert message in one_line_error(result)
    assert not (tmp_path / "out" / "neighbors.npy").exists()


def test_missing_features_file_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(compute_distances, [str(tmp_path / "nope.npz"), str(tmp_path / "out"), "cosine", "3"])
    assert result.exit_code == 2
    assert "does not exist" in one_line_error(result)


def test_unwritable_output_folder_fails_before_the_search(runner, tmp_path, features_file):
    (tmp_path / "taken").write_text("a file, not a folder")
    result = runner.invoke(compute_distances, [str(features_file), str(tmp_path / "taken" / "out"), "cosine", "3"])
    assert result.exit_code == 2  # as for OUTPUT_DIR_PATH = the file itself: a usage error
    assert "taken: is a file, not a folder" in one_line_error(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder(runner, tmp_path, features_file):
    (tmp_path / "locked").mkdir(mode=0o500)
    result = runner.invoke(compute_distances, [str(features_file), str(tmp_path / "locked"), "cosine", "3"])
    assert result.exit_code == 1
    assert "cannot write here (Permission denied)" in one_line_error(result)


def test_merge_features_joins_shards(runner, tmp_path, features_file):
    whole = read_features(features_file)
    for index, rows in enumerate([slice(0, 5), slice(5, 12)]):
        write_features(
            tmp_path / f"shard_{index}.pkl", FeatureSet(whole.paths[rows], whole.features[rows], whole.metadata)
        )
    result = runner.invoke(
        merge_features, [str(tmp_path / "all.h5"), str(tmp_path / "shard_0.pkl"), str(tmp_path / "shard_1.pkl")]
    )
    assert result.exit_code == 0, result.output
    assert "12 images x 8 features from 2 files" in result.stdout
    merged = read_features(tmp_path / "all.h5")
    assert merged.paths == whole.paths
    np.testing.assert_array_equal(merged.features, whole.features)


def test_merge_features_refuses_an_unknown_output_type_before_reading(runner, tmp_path, features_file):
    result = runner.invoke(merge_features, [str(tmp_path / "all.csv"), str(features_file)])
    assert result.exit_code == 2
    assert "unknown feature file type" in one_line_error(result)
    result = runner.invoke(merge_features, [str(tmp_path / "all.npz")])
    assert result.exit_code == 2
    assert "Missing argument" in one_line_error(result)


def test_a_refused_run_leaves_no_output_folder(runner, tmp_path):
    """The writability probe before the search leaves nothing: the folder appears with the outputs."""
    from image_toolkit.cli.neighbors import compute_distances
    from image_toolkit.data_tools.formats.features import FeatureSet, write_features

    write_features(tmp_path / "f.npz", FeatureSet([f"{i}.png" for i in range(5)], np.eye(5, dtype=np.float32), {}))
    result = runner.invoke(compute_distances, [str(tmp_path / "f.npz"), str(tmp_path / "out" / "sub"), "cosine", "9"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


@pytest.fixture
def clustered_file(tmp_path):
    """400 rows of 8 features in 10 clusters: enough to build an ivf or hnsw index."""
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((10, 8)).astype(np.float32) * 3
    rows = centers[rng.integers(0, 10, 400)] + rng.standard_normal((400, 8)).astype(np.float32)
    write_features(tmp_path / "clustered.npz", FeatureSet([f"{i:03d}.png" for i in range(400)], rows, {}))
    return tmp_path / "clustered.npz"


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_an_approximate_method_writes_what_exact_writes_and_reports_its_recall(runner, tmp_path, clustered_file, method):
    exact = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "exact"), "cosine", "5"])
    result = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "out"), "cosine", "5", "-1",
                                               "--method", method, "--target_recall", "0.9", "--json"])
    assert exact.exit_code == 0 and result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == method and summary["queries"] == 400
    assert summary["recall"]["k"] == 5 and summary["recall"]["sample"] == 400 and summary["recall"]["value"] >= 0.9
    for name in ("neighbors.npy", "distances.npy"):
        approximate, reference = np.load(tmp_path / "out" / name), np.load(tmp_path / "exact" / name)
        assert approximate.shape == reference.shape and approximate.dtype == reference.dtype
    found, truth = np.load(tmp_path / "out" / "neighbors.npy"), np.load(tmp_path / "exact" / "neighbors.npy")
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, truth, strict=True)]) >= 0.9
    assert len((tmp_path / "out" / "neighbors.csv").read_text().splitlines()) == 1 + 400 * 5


def test_the_summary_line_names_the_measured_recall(runner, tmp_path, clustered_file):
    result = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "out"), "euclidean", "3", "--method", "ivf"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("400 images x 3 neighbours (euclidean, ivf nprobe=")
    assert "recall@3 " in result.stdout and " on 400 images, " in result.stdout


def test_queries_with_an_approximate_method(runner, tmp_path, clustered_file):
    gallery = read_features(clustered_file)
    write_features(tmp_path / "queries.npz", FeatureSet(["q0.png", "q1.png"], gallery.features[:2] + 0.01, {}))
    result = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "out"), "cosine", "4", "--method", "hnsw",
                                               "--queries", str(tmp_path / "queries.npz"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recall"]["sample"] == 2
    assert np.load(tmp_path / "out" / "neighbors.npy")[:, 0].tolist() == [0, 1]  # no self to drop


def test_too_few_images_for_an_index_are_searched_exactly(runner, tmp_path, features_file):
    with pytest.warns(UserWarning) as caught:
        result = runner.invoke(compute_distances, [str(features_file), str(tmp_path / "out"), "cosine", "3", "--method", "ivf",
                                                   "--json"])
    assert result.exit_code == 0, result.output
    assert [str(w.message) for w in caught] == ["12 images are too few for --method ivf (at least 78): searched exactly instead."]
    assert json.loads(result.stdout)["method"] == "exact" and json.loads(result.stdout)["recall"] is None
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "neighbors.npy"),
                                  exact_neighbors(read_features(features_file).features, k=3, metric="cosine")[1])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "ivf", "--target-recall", "0"], "0<x<=1"),
        (["--method", "ivf", "--target_recall", "1.5"], "1.5 is not in the range 0<x<=1"),
        (["--method", "kdtree"], "'kdtree' is not one of 'exact', 'ivf', 'hnsw'"),
        (["--target-recall", "0.9"], "--target-recall is for --method ivf or hnsw"),
    ],
)
def test_impossible_methods_and_targets_are_usage_errors(runner, tmp_path, clustered_file, arguments, message):
    result = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "out"), "cosine", "3", *arguments])
    assert result.exit_code == 2
    assert message in one_line_error(result)


def test_manhattan_has_no_approximate_method(runner, tmp_path, clustered_file):
    result = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "out"), "manhattan", "3", "--method", "hnsw"])
    assert result.exit_code == 2
    assert "--method hnsw searches a faiss index, which has no manhattan distance: use --method exact" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_a_large_exact_search_hints_at_the_approximate_methods(runner, tmp_path, clustered_file, monkeypatch):
    from image_toolkit.data_tools.search import approximate_neighbors

    monkeypatch.setattr(approximate_neighbors, "EXACT_HINT_ROWS", 100)
    result = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "out"), "cosine", "3"])
    assert result.exit_code == 0
    assert [line for line in result.stderr.splitlines() if line.startswith("Hint:")] == [
        approximate_neighbors.exact_hint(400, 8, 4)
    ]
    result = runner.invoke(compute_distances, [str(clustered_file), str(tmp_path / "out2"), "cosine", "3", "--method", "ivf"])
    assert "Hint:" not in result.stderr


def test_the_cli_lists_the_library_methods():
    from image_toolkit.cli.neighbors import METHODS as CLI_METHODS
    from image_toolkit.data_tools.search.approximate_neighbors import METHODS as LIBRARY_METHODS

    assert CLI_METHODS == LIBRARY_METHODS
