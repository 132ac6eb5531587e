"""`toolkit index build | add | info` and `image_toolkit.data_tools.search.index.ImageIndex`: recall, growth, reload, bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from image_toolkit.cli import index as cli_index
from image_toolkit.cli.index import index
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import FeatureSet, read_features, write_features
from image_toolkit.data_tools.search import index as index_module
from image_toolkit.data_tools.search.index import ImageIndex
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
METADATA = {"model": "resnet50", "output": "pooled", "layer": "avg_pool", "image_size": 224, "weights": "imagenet"}


def clustered(n: int, dim: int = 32, *, clusters: int = 40, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Rows around `clusters` random centres, with noise in every dimension: neighbours are not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))).astype(np.float32)


def feature_set(rows: np.ndarray, start: int = 0, metadata: dict | None = None) -> FeatureSet:
    return FeatureSet([f"images/{start + i:05d}.jpg" for i in range(len(rows))], rows, dict(METADATA if metadata is None else metadata))


@pytest.fixture(scope="module")
def data():
    rows = clustered(3200)
    return rows[:3000], rows[3000:]  # Indexed rows, and new rows as queries.


@pytest.fixture(scope="module")
def hard_data():
    """64-d rows with wide clusters: neither hnsw nor ivf reaches recall 0.95 at its cheapest setting."""
    rows = clustered(3200, 64, spread=1.5)
    return rows[:3000], rows[3000:]


@pytest.fixture
def features_file(tmp_path, data):
    write_features(tmp_path / "features.npz", feature_set(data[0]))
    return tmp_path / "features.npz"


@pytest.fixture(scope="module")
def built(tmp_path_factory, data):
    """A flat index of the 3000 rows, to copy: building is not what its users test."""
    folder = tmp_path_factory.mktemp("built") / "index"
    ImageIndex(kind="flat").fit(feature_set(data[0])).save(folder)
    return folder


def invoke(runner, *args):
    return runner.invoke(index, [*map(str, args), "--quiet"])


def true_recall(index: ImageIndex, rows: np.ndarray, queries: np.ndarray, metric: str, k: int = 10) -> float:
    """recall@k of `index.search` against scikit-learn's brute force on the rows as given (no faiss, no toolkit).

    A result counts as found when its true distance is within the exact k-th
    one (ties with the k-th neighbour are as good as it).
    """
    from sklearn.neighbors import NearestNeighbors

    radius = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric).fit(rows).kneighbors(queries)[0][:, -1]
    _, found = index.search(queries, k=k)
    found = np.array([int(Path(path).stem) for path in index.paths_])[found]  # Index order -> row of `rows`.
    if metric == "cosine":
        unit, unit_queries = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (rows, queries))
        distances = 1 - np.einsum("qd,qkd->qk", unit_queries, unit[found])
    else:
        distances = np.linalg.norm(rows[found] - queries[:, None, :], axis=2)
    return float(np.mean(distances <= radius[:, None] + 1e-5))


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_tuned_index_reaches_the_target_recall_and_a_starved_one_does_not(hard_data, kind, metric):
    """On 3000 wide 64-d clusters the search setting decides recall: tuning must find one that reaches the target.

    Recall is measured on 200 new images against scikit-learn's exact
    neighbours, not by the index's own tuning. The same index searched at
    the cheapest setting (efSearch=1, which faiss raises to k; nprobe=1)
    falls well below the target, so a tuning that stopped early, or a search
    that ignored the tuned value, would fail here.
    """
    rows, queries = hard_data
    approximate = ImageIndex(kind=kind, metric=metric, target_recall=0.95, n_threads=1).fit(feature_set(rows))
    assert true_recall(approximate, rows, queries, metric) >= 0.95
    tuning = approximate.tuning_
    assert tuning["recall"] >= 0.95 and tuning["sample"] == 300 and tuning["k"] == 10 and tuning["indexed"] == 2700
    assert tuning["parameter"] == {"hnsw": "efSearch", "ivf": "nprobe", "ivfpq": "nprobe"}[kind]
    assert approximate.params_[tuning["parameter"]] == tuning["value"] == tuning["tried"][-1][0]
    # Tuning raised the setting: the cheaper ones tried first fell short.
    assert len(tuning["tried"]) > 1 and all(recall < 0.95 for _, recall in tuning["tried"][:-1])

    approximate._set_search_parameter(1)
    assert true_recall(approximate, rows, queries, metric) < 0.95


def test_tuning_raises_the_parameter_when_the_target_needs_it(data):
    rows, _ = data
    low = ImageIndex(kind="ivf", target_recall=0.5, n_threads=1).fit(feature_set(rows))
    high = ImageIndex(kind="ivf", target_recall=1.0, n_threads=1).fit(feature_set(rows))
    assert low.params_["nprobe"] < high.params_["nprobe"]
    assert high.tuning_["recall"] == 1.0


def test_flat_index_is_exact_and_reports_compute_distances_values(data):
    rows, queries = data
    from image_toolkit.data_tools.search.neighbors import exact_neighbors

    for metric in ("cosine", "euclidean", "inner_product"):
        values, indices = ImageIndex(kind="flat", metric=metric).fit(feature_set(rows)).search(queries[:20], k=5)
        expected_values, expected_indices = exact_neighbors(rows, k=5, metric=metric, queries=queries[:20])
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(values, expected_values, rtol=1e-4, atol=1e-4)


def test_add_then_search_equals_building_from_all_features_for_flat(runner, tmp_path, data):
    rows, queries = data
    write_features(tmp_path / "first.npz", feature_set(rows[:2000]))
    write_features(tmp_path / "second.h5", feature_set(rows[2000:], start=2000))
    write_features(tmp_path / "all.npz", feature_set(rows))
    write_features(tmp_path / "queries.npz", feature_set(queries, start=9000))
    assert invoke(runner, "build", tmp_path / "first.npz", tmp_path / "grown", "--kind", "flat").exit_code == 0
    result = invoke(runner, "add", tmp_path / "grown", tmp_path / "second.h5")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # --quiet
    assert ImageIndex.load(tmp_path / "grown").size == 3000
    assert invoke(runner, "build", tmp_path / "all.npz", tmp_path / "whole", "--kind", "flat").exit_code == 0

    grown, whole = ImageIndex.load(tmp_path / "grown"), ImageIndex.load(tmp_path / "whole")
    assert grown.paths_ == whole.paths_ == read_features(tmp_path / "all.npz").paths
    for got, expected in zip(grown.search(queries, k=10), whole.search(queries, k=10)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(grown.vectors(), rows, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_add_grows_an_approximate_index_and_tunes_it_again(tmp_path, data, kind):
    rows, queries = data
    grown = ImageIndex(kind=kind, n_threads=1).fit(feature_set(rows[:1500]))
    grown.save(tmp_path / "index")
    first_tuning = grown.tuning_
    grown = ImageIndex.load(tmp_path / "index").add(feature_set(rows[1000:], start=1000))  # 500 rows again: skipped.
    assert grown.size == 3000 and sorted(grown.paths_) == feature_set(rows).paths
    assert grown.tuning_["recall"] >= 0.95 and grown.tuning_["indexed"] == 3000 - 150
    assert grown.tuning_ != first_tuning
    position = grown.paths_.index("images/02500.jpg")
    assert grown.search(rows[2500:2501], k=1)[1][0, 0] == position
    order = [int(path[7:12]) for path in grown.paths_]
    np.testing.assert_allclose(grown.vectors(), rows[order], rtol=1e-5, atol=1e-5)
    # A few new images keep the tuned setting.
    kept = grown.tuning_
    grown.add(feature_set(clustered(5, seed=9), start=7000))
    assert grown.size == 3005 and grown.tuning_ == kept


def test_saved_index_reloads_with_its_settings(tmp_path, data):
    rows, queries = data
    built = ImageIndex(kind="hnsw", m=16, ef_construction=40, n_threads=1).fit(feature_set(rows))
    built.save(tmp_path / "index")
    loaded = ImageIndex.load(tmp_path / "index")
    assert loaded.get_config() == {**built.get_config(), "n_threads": -1}
    assert loaded.params_ == built.params_ and loaded.tuning_ == built.tuning_
    assert loaded.index_.hnsw.efSearch == built.params_["efSearch"]
    for got, expected in zip(loaded.search(queries, k=10), built.search(queries, k=10)):
        np.testing.assert_array_equal(got, expected)
    assert sorted(path.name for path in (tmp_path / "index").iterdir()) == ["index.json", "set-1"]
    assert sorted(path.name for path in (tmp_path / "index" / "set-1").iterdir()) == ["index.faiss", "metadata.json", "norms.npy", "paths.json"]
    metadata = json.loads((tmp_path / "index" / "set-1" / "metadata.json").read_text())
    assert metadata["features"]["model"] == "resnet50" and metadata["size"] == 3000


def test_ivfpq_tunes_its_re_rank_and_reloads_with_it(tmp_path, hard_data):
    """ivfpq chooses k_factor (the re-rank depth) before nprobe, and a reloaded index searches with both."""
    rows, queries = hard_data
    built = ImageIndex(kind="ivfpq", n_threads=1).fit(feature_set(rows))
    assert built.params_["pq_m"] == 32 and built.params_["nlist"] == 76  # 64 features: 32 codes of 2; 4 sqrt(3000) lists.
    # Every list searched: k_factor rises to the first recall of 0.975; then, at the tuned nprobe, falls while on target.
    factors = built.tuning_["k_factor_tried"]
    rise = next(i for i, (_, recall) in enumerate(factors) if recall >= 0.975) + 1
    assert [f for f, _ in factors[:rise]] == [2, 4, 8, 16, 32, 64][:rise]
    assert all(recall < 0.975 for _, recall in factors[: rise - 1])
    kept = [f for f, recall in factors[rise:] if recall >= 0.95]
    assert built.params_["k_factor"] == min(kept, default=factors[rise - 1][0]) == built.index_.k_factor
    assert all(recall >= 0.95 for _, recall in factors[rise:-1])
    assert true_recall(built, rows, queries, "cosine") >= 0.95
    built.save(tmp_path / "index")
    loaded = ImageIndex.load(tmp_path / "index")
    assert loaded.params_ == built.params_ and loaded.get_config()["k_factor"] is None
    assert loaded.index_.k_factor == built.params_["k_factor"] and loaded._ivf().nprobe == built.params_["nprobe"]
    for got, expected in zip(loaded.search(queries, k=10), built.search(queries, k=10)):
        np.testing.assert_array_equal(got, expected)
    # Exact re-rank: values are the true cosine distances of the rows found.
    values, found = loaded.search(queries[:5], k=3)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    order = np.array([int(Path(path).stem) for path in loaded.paths_])
    expected = 1 - np.einsum("qd,qkd->qk", queries[:5] / np.linalg.norm(queries[:5], axis=1, keepdims=True), unit[order[found]])
    np.testing.assert_allclose(values, expected, atol=1e-5)


def test_ivfpq_given_k_factor_and_pq_m_are_kept(data):
    rows, _ = data
    built = ImageIndex(kind="ivfpq", pq_m=8, k_factor=16, nlist=20, n_threads=1).fit(feature_set(rows))
    assert {key: built.params_[key] for key in ("pq_m", "k_factor", "nlist")} == {"pq_m": 8, "k_factor": 16, "nlist": 20}
    assert "k_factor_tried" not in built.tuning_ and built.tuning_["recall"] >= 0.95


def test_large_k_is_clamped_with_a_warning_and_every_row_returned(data):
    rows, _ = data
    for kind in ("hnsw", "ivf", "ivfpq"):
        small = ImageIndex(kind=kind, n_threads=1).fit(feature_set(rows[:300]))
        with pytest.warns(UserWarning, match="k=500 is more than the 300 indexed images"):
            values, indices = small.search(rows[:2], k=500)
        assert indices.shape == (2, 300)
        assert all(sorted(row) == list(range(300)) for row in indices.tolist())
        assert np.all(np.diff(values, axis=1) >= -1e-6)


def test_tiny_sets_build_and_tune(data):
    # That tuning reaches its target is proven on a large, hard set above; here recall is 1 by size alone.
    rows, _ = data
    for n in (1, 2, 24):
        for kind in ("hnsw", "ivf", "ivfpq", "flat"):
            built = ImageIndex(kind=kind).fit(feature_set(rows[:n]))
            assert built.size == n
            assert built.tuning_["recall"] is None if (n == 1 and kind != "flat") else built.tuning_["recall"] >= 0.95
            assert built.paths_[built.search(rows[:1], k=1)[1][0, 0]] == "images/00000.jpg"


def test_duplicate_paths_keep_the_first_row(data, caplog):
    rows, _ = data
    duplicated = FeatureSet(["a.jpg", "b.jpg", "a.jpg"], rows[:3], {})
    built = ImageIndex(kind="flat").fit(duplicated)
    assert built.paths_ == ["a.jpg", "b.jpg"] and "Skipped 1 images" in caplog.text


def test_info_command_shows_size_kind_parameters_and_recall(runner, tmp_path, features_file):
    assert invoke(runner, "build", features_file, tmp_path / "index", "--kind", "ivf").exit_code == 0
    result = invoke(runner, "info", tmp_path / "index")
    assert result.exit_code == 0, result.output
    assert "3,000 images x 32 features, ivf (nlist=" in result.stdout
    assert "recall@10: " in result.stdout and "held-out images against 2,700 (target 0.95)" in result.stdout
    assert "model resnet50" in result.stdout
    record = json.loads(invoke(runner, "info", tmp_path / "index", "--json").stdout)
    assert record["size"] == 3000 and record["kind"] == "ivf" and record["metric"] == "cosine"
    assert record["tuning"]["recall"] >= 0.95 and record["params"]["nprobe"] == record["tuning"]["value"]
    assert record["bytes"] > 3000 * 32 * 4


def test_build_refuses_an_existing_index_unless_overwrite(runner, tmp_path, features_file, built):
    shutil.copytree(built, tmp_path / "index")
    result = invoke(runner, "build", features_file, tmp_path / "index", "--kind", "ivf")
    assert result.exit_code == 1
    assert "already holds an index" in one_line_error(result)
    assert invoke(runner, "build", features_file, tmp_path / "index", "--kind", "ivf", "--overwrite").exit_code == 0
    assert ImageIndex.load(tmp_path / "index").kind == "ivf"


# Bad input.


@pytest.mark.parametrize("option, value", [("--kind", "lsh"), ("--metric", "manhattan"), ("--target_recall", "1.5")])
def test_unknown_kind_metric_or_impossible_recall_is_a_usage_error(runner, tmp_path, features_file, option, value):
    result = invoke(runner, "build", features_file, tmp_path / "index", option, value)
    assert result.exit_code == 2
    assert option.replace("_", "-") in one_line_error(result) and not (tmp_path / "index").exists()


def test_library_rejects_unknown_kind_and_metric(data):
    with pytest.raises(OptionError, match=r"Expected one of hnsw, ivf, ivfpq, flat. Received: kind='lsh'"):
        ImageIndex(kind="lsh").fit(feature_set(data[0]))
    with pytest.raises(OptionError, match=r"Expected one of cosine, euclidean, inner_product. Received: metric='l1'"):
        ImageIndex(metric="l1").fit(feature_set(data[0]))
    assert cli_index.KINDS == index_module.KINDS and cli_index.METRICS == index_module.METRICS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"m": 1}, r"^m must be at least 2. Received: m=1$"),
        ({"ef_construction": 0}, r"^ef_construction must be at least 1. Received: ef_construction=0$"),
        ({"kind": "ivf", "nlist": 0}, r"^nlist must be at least 1. Received: nlist=0$"),
        ({"kind": "ivf", "nlist": 41}, r"^nlist must be at most 40 \(the number of rows\). Received: nlist=41$"),
        ({"target_recall": 0}, r"^--target-recall must be in \(0, 1\]. Received: --target-recall=0$"),
        ({"target_recall": 1.5}, r"Received: --target-recall=1.5$"),
        ({"n_threads": 0}, r"^--n-jobs must be -1 \(all cores\) or at least 1. Received: --n-jobs=0$"),
    ],
)
def test_library_rejects_impossible_settings(data, options, message):
    with pytest.raises(OptionError, match=message):
        ImageIndex(**options).fit(feature_set(data[0][:40]))


@pytest.mark.parametrize("pq_m", [5, 30, 33])
def test_ivfpq_whose_pq_m_does_not_divide_the_features_names_the_valid_ones(runner, tmp_path, features_file, data, pq_m):
    nearest = {5: 4, 30: 32, 33: 32}[pq_m]
    message = (rf"^--pq-m must divide the 32 features per row \(nearest: {nearest}\). "
               rf"Expected one of 1, 2, 4, 8, 16, 32. Received: --pq-m={pq_m}$")
    with pytest.raises(OptionError, match=message):
        ImageIndex(kind="ivfpq", pq_m=pq_m).fit(feature_set(data[0][:100]))
    result = invoke(runner, "build", features_file, tmp_path / "index", "--kind", "ivfpq", "--pq-m", pq_m)
    assert result.exit_code == 2 and f"Received: --pq-m={pq_m}" in one_line_error(result)
    assert not (tmp_path / "index").exists()


def test_unreachable_target_recall_warns_with_the_best_recall_reached(runner, tmp_path, features_file, data):
    """Four 4-bit codes per row and no re-rank depth: no nprobe reaches 0.99, and the message says how far it got."""
    options = {"kind": "ivfpq", "pq_m": 4, "k_factor": 1, "target_recall": 0.99, "n_threads": 1}
    with pytest.warns(UserWarning, match=r"^--target-recall 0.99 not reached: recall@10 was at best 0\.\d{3}, at nprobe=\d+ "
                                         r"\(tried nprobe 1 to 76\)\. Rebuild with a larger --k-factor or --pq-m, or --kind flat"):
        built = ImageIndex(**options).fit(feature_set(data[0]))
    best = max(recall for _, recall in built.tuning_["tried"])
    assert built.tuning_["recall"] == best < 0.99 and built.params_["nprobe"] == built.tuning_["value"]
    with pytest.warns(UserWarning, match=rf"^--target-recall 0.99 not reached: recall@10 was at best {best:.3f}, "):
        result = invoke(runner, "build", features_file, tmp_path / "index", "--kind", "ivfpq", "--pq-m", 4,
                        "--k-factor", 1, "--target-recall", 0.99)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "index" / "set-1" / "metadata.json").read_text())["tuning"]["recall"] == best


def test_missing_index_dir(runner, tmp_path, features_file):
    for args in (("info", tmp_path / "nowhere"), ("add", tmp_path / "nowhere", features_file)):
        result = invoke(runner, *args)
        assert result.exit_code == 2 and "does not exist" in one_line_error(result)
    with pytest.raises(DataError, match="no such index folder"):
        ImageIndex.load(tmp_path / "nowhere")


def edit_metadata(folder, **changes):
    """Change the format version or the config in the metadata.json of an index folder's set."""
    metadata = json.loads((folder / "metadata.json").read_text())
    if "format_version" in changes:
        metadata["format_version"] = changes.pop("format_version")
    metadata["config"].update(changes)
    (folder / "metadata.json").write_text(json.dumps(metadata))


def write_manifest(folder, content):
    (folder.parent / "index.json").write_text(content)


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "index.faiss").write_bytes(b"not an index"), "index.faiss: not a readable faiss index"),
    (lambda folder: (folder / "index.faiss").unlink(), "not an index folder (no index.faiss)"),
    (lambda folder: (folder / "paths.json").write_text('["only one.jpg"]'), "disagree on the number of images"),
    (lambda folder: (folder / "metadata.json").write_text("{"), "metadata.json: not readable JSON"),
    (lambda folder: (folder / "norms.npy").write_bytes(b"\x93NUMPY garbage"), "norms.npy: missing or damaged"),
    (lambda folder: edit_metadata(folder, format_version="x"), "format_version is 'x', not a number"),
    (lambda folder: edit_metadata(folder, kind="lsh"), "unknown kind 'lsh' or metric 'cosine'"),
    (lambda folder: edit_metadata(folder, metric="manhattan"), "unknown kind 'flat' or metric 'manhattan'"),
    (lambda folder: edit_metadata(folder, kind="hnsw"), "says a hnsw index of metric cosine, but index.faiss is a"),
    (lambda folder: edit_metadata(folder, metric="euclidean"), "says a flat index of metric euclidean, but"),
    (lambda folder: write_manifest(folder, "{"), "index.json: not readable JSON"),
    (lambda folder: write_manifest(folder, '{"format": "image-toolkit index", "current": "../x"}'), "index.json: not the manifest"),
    (lambda folder: shutil.rmtree(folder), "index.json: names the set set-1, which is missing"),
])
def test_corrupt_index_dir_is_one_line_error(runner, tmp_path, built, damage, message):
    """Damage to the set index.json names, or to index.json itself, is one line naming the file."""
    shutil.copytree(built, tmp_path / "index")
    damage(tmp_path / "index" / "set-1")
    result = invoke(runner, "info", tmp_path / "index")
    assert result.exit_code == 1
    assert message in one_line_error(result)


def test_add_refuses_features_of_another_dimension_or_model(runner, tmp_path, built, data):
    shutil.copytree(built, tmp_path / "index")
    write_features(tmp_path / "narrow.npz", feature_set(data[1][:, :16], start=5000))
    result = invoke(runner, "add", tmp_path / "index", tmp_path / "narrow.npz")
    assert result.exit_code == 1 and "narrow.npz: 16 features per row, but the index has 32" in one_line_error(result)
    write_features(tmp_path / "other.npz", feature_set(data[1], start=5000, metadata={**METADATA, "model": "inceptionv3"}))
    result = invoke(runner, "add", tmp_path / "index", tmp_path / "other.npz")
    assert result.exit_code == 1 and "other.npz: made with model='inceptionv3', but the index with model='resnet50'" in one_line_error(result)
    assert ImageIndex.load(tmp_path / "index").size == 3000


def test_index_commands_load_no_tensorflow_and_reload_in_a_fresh_process(tmp_path, features_file):
    code = (
        "import sys; from click.testing import CliRunner; from image_toolkit.cli.main import toolkit; "
        f"r = CliRunner().invoke(toolkit, ['index', 'build', {str(features_file)!r}, {str(tmp_path / 'index')!r}, '--quiet']); "
        "assert r.exit_code == 0, r.output; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "False False", done.stderr
    code = (
        "from image_toolkit.data_tools.search.index import ImageIndex; import numpy as np; "
        f"i = ImageIndex.load({str(tmp_path / 'index')!r}); v = i.vectors(); "
        "print(i.size, i.search(v[7:8], k=1)[1][0, 0])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "3000 7", done.stderr


def test_an_index_finds_its_model_file_again_when_moved_with_it(tmp_path, monkeypatch, data):
    """The model path is stored absolute and relative to the index folder; loading tries both (one function for features and indexes)."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "best_model.h5").write_bytes(b"model")
    metadata = {**METADATA, "weights": "model file", "model": str(project / "models" / "best_model.h5")}
    ImageIndex(kind="flat").fit(feature_set(data[0][:50], metadata=metadata)).save(project / "index")
    project.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    loaded = ImageIndex.load(tmp_path / "moved" / "index")
    assert loaded.features_metadata_["model"] == str((tmp_path / "moved" / "models" / "best_model.h5").resolve())
    assert loaded.features_metadata_["model_relative"] == "../models/best_model.h5"
