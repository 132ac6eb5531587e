"""`toolkit tsne` and the 2-D maps behind it, on real digits."""

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.maps.embedding import classes_by_image, embed_2d, read_rows
from tests.conftest import one_line_error
from tests.test_feedback import class_csv, pixel_features

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mapped(digits_set, tmp_path_factory):
    """Pixel features and labels of 150 digits, and a feedback CSV marking 5 of them deselected."""
    root, table = digits_set
    work = tmp_path_factory.mktemp("tsne")
    table = table.iloc[:150]
    features = pixel_features(root, list(table["image"]), work / "features.npz")
    labels = class_csv(table, work / "classes.csv")
    feedback = work / "image_feedback.csv"
    rows = pd.DataFrame({"image": table["image"][:8], "class": table["digit_name"][:8], "query_class": "one",
                         "lasso_count": 1, "deselect_count": [1, 1, 1, 1, 1, 0, 0, 0], "select_count": 0, "users": 1})
    rows.to_csv(feedback, index=False)
    return {"work": work, "table": table, "features": features, "labels": labels, "feedback": feedback}


def test_tsne_writes_the_plot_and_the_coordinates(mapped, runner):
    output = mapped["work"] / "map.png"
    args = ["tsne", str(mapped["features"]), "--labels", str(mapped["labels"]), "--highlight", str(mapped["feedback"]),
            "-o", str(output), "--n_jobs", "1", "--json"]
    result = runner.invoke(toolkit, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["highlighted"] == 5 and summary["images"] == 150
    assert (summary["sampled"], summary["placed"]) == (150, 0)
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size[0] > 300
    coords = pd.read_csv(mapped["work"] / "map.csv")
    assert list(coords.columns) == ["image", "x", "y"]
    assert coords["image"].tolist() == mapped["table"]["image"].tolist()
    assert np.isfinite(coords[["x", "y"]].to_numpy()).all() and coords[["x", "y"]].std().min() > 1


def test_tsne_keeps_classes_together(mapped):
    """Digits of one class are nearer each other on the map than to other digits (a real map, not noise)."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from image_toolkit.data_tools.formats.features import read_features

    coords = embed_2d(read_features(mapped["features"]).features, method="tsne", seed=0, n_jobs=1)
    accuracy = cross_val_score(KNeighborsClassifier(5), coords, mapped["table"]["digit_name"], cv=3).mean()
    assert accuracy > 0.8


def test_maps_are_deterministic_with_the_seed(mapped):
    from image_toolkit.data_tools.formats.features import read_features

    features = read_features(mapped["features"]).features
    for method in ("tsne", "pca"):
        first = embed_2d(features, method=method, seed=4, n_jobs=1)
        assert first.shape == (150, 2) and first.dtype == np.float32
        np.testing.assert_array_equal(first, embed_2d(features, method=method, seed=4, n_jobs=1))


def test_coordinates_path_and_pca(mapped, runner):
    coords = mapped["work"] / "coords.csv"
    result = runner.invoke(toolkit, ["tsne", str(mapped["features"]), "--method", "pca", "-o", str(mapped["work"] / "pca.png"), "--coords", str(coords)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(coords)) == 150


def test_a_metadata_csv_colours_by_its_class_column(mapped, runner, tmp_path):
    table = mapped["table"]
    metadata = tmp_path / "metadata.csv"
    pd.DataFrame({"image": table["image"], "class": table["digit_name"], "split": "test"}).to_csv(metadata, index=False)
    known, multilabel = classes_by_image(metadata)
    assert not multilabel and known == dict(zip(table["image"], table["digit_name"]))
    args = ["tsne", str(mapped["features"]), "--labels", str(metadata), "--method", "pca", "-o", str(tmp_path / "m.png")]
    result = runner.invoke(toolkit, args)
    assert result.exit_code == 0, result.output


def test_few_points_lower_the_perplexity_with_a_warning():
    features = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    with pytest.warns(UserWarning, match="perplexity"):
        coords = embed_2d(features, perplexity=30, n_jobs=1)
    assert coords.shape == (10, 2)


@pytest.mark.parametrize("perplexity", [0, -5.0, float("nan")])
def test_perplexity_must_be_positive(perplexity):
    from image_toolkit.data_tools.errors import OptionError

    with pytest.raises(OptionError, match=r"^perplexity must be greater than 0. Received: perplexity="):
        embed_2d(np.zeros((10, 5), dtype=np.float32), perplexity=perplexity)


def test_bad_inputs(mapped, runner, tmp_path):
    not_png = runner.invoke(toolkit, ["tsne", str(mapped["features"]), "-o", str(tmp_path / "map.jpg")])
    assert not_png.exit_code == 2 and ".png" in one_line_error(not_png)
    other = tmp_path / "other.csv"
    other.write_text("image,label\nx.png,a\ny.png,b\n")
    unmatched = runner.invoke(toolkit, ["tsne", str(mapped["features"]), "--labels", str(other), "-o", str(tmp_path / "m.png")])
    assert unmatched.exit_code == 1 and "none of its images" in one_line_error(unmatched)
    no_image = tmp_path / "h.csv"
    no_image.write_text("path\nx.png\n")
    highlight = runner.invoke(toolkit, ["tsne", str(mapped["features"]), "--highlight", str(no_image), "-o", str(tmp_path / "m.png")])
    assert highlight.exit_code == 1 and "no 'image' column" in one_line_error(highlight)


def test_tsne_loads_no_tensorflow(mapped, tmp_path):
    code = (
        "import sys; from click.testing import CliRunner; from image_toolkit.cli.main import toolkit; "
        f"r = CliRunner().invoke(toolkit, ['tsne', {str(mapped['features'])!r}, '--method', 'pca', '-o', {str(tmp_path / 'm.png')!r}]); "
        "print(r.exit_code, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout.split() == ["0", "False", "False"], done.stdout + done.stderr


def small_blocks(monkeypatch) -> None:
    """Blocks of 97 rows, so the sample and the placed rows straddle block ends."""
    import functools

    from image_toolkit.data_tools.formats.features import feature_blocks
    from image_toolkit.data_tools.maps import embedding

    monkeypatch.setattr(embedding, "feature_blocks", functools.partial(feature_blocks, rows=97))


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """600 of scikit-learn's digit scans on disk (a memmap and a feature file), mapped in small blocks from a sample of 200."""
    from sklearn.datasets import load_digits

    from image_toolkit.data_tools.formats.features import FeatureSet, write_features
    from image_toolkit.data_tools.maps.embedding import sample_rows

    digits = load_digits()
    work = tmp_path_factory.mktemp("sampled")
    np.save(work / "features.npy", digits.data[:600].astype(np.float32))
    features = np.load(work / "features.npy", mmap_mode="r")
    paths = [f"digit_{i}.png" for i in range(600)]
    write_features(work / "features.npz", FeatureSet(paths, np.asarray(features), {"model": "pixels"}))
    with pytest.MonkeyPatch.context() as monkeypatch:
        small_blocks(monkeypatch)
        coords = embed_2d(features, max_points=200, seed=0, n_jobs=1)
    return {"work": work, "features": features, "paths": paths, "labels": digits.target[:600], "coords": coords,
            "rows": sample_rows(600, 200, seed=0)}


def test_a_sample_makes_the_map_and_every_other_point_is_placed_near_its_class(sampled):
    """The 400 placed digits are classified by their 5 nearest sampled digits on the map, far above chance (0.1)."""
    from sklearn.neighbors import KNeighborsClassifier

    coords, rows, labels = sampled["coords"], sampled["rows"], sampled["labels"]
    assert coords.shape == (600, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    assert len(rows) == 200 and len(np.unique(rows)) == 200
    placed = np.setdiff1d(np.arange(600), rows)
    accuracy = KNeighborsClassifier(5).fit(coords[rows], labels[rows]).score(coords[placed], labels[placed])
    assert accuracy > 0.8, accuracy


def test_placing_does_not_move_the_sample(sampled):
    """The sampled points keep the map of the sample alone (openTSNE only centres it)."""
    alone = embed_2d(np.asarray(sampled["features"])[sampled["rows"]], seed=0, n_jobs=1)
    on_map = sampled["coords"][sampled["rows"]]
    np.testing.assert_allclose(on_map - on_map.mean(axis=0), alone - alone.mean(axis=0), atol=1e-3)


def test_a_sampled_map_is_deterministic_and_shows_a_placing_bar(sampled, capsys, monkeypatch):
    small_blocks(monkeypatch)
    coords = embed_2d(sampled["features"], max_points=200, seed=0, n_jobs=1, show=True)
    assert "Placing" in capsys.readouterr().err
    np.testing.assert_array_equal(coords, sampled["coords"])


def test_without_sampling_the_map_is_unchanged(sampled):
    """Up to max_points rows, all are mapped as before: on disk or in memory, the same map."""
    features = sampled["features"][:150]
    for method in ("tsne", "pca"):
        in_memory = embed_2d(np.array(features), method=method, seed=1, n_jobs=1)
        np.testing.assert_array_equal(embed_2d(features, method=method, seed=1, n_jobs=1, max_points=150), in_memory)


def test_tsne_samples_and_places_on_the_command_line(sampled, runner):
    work = sampled["work"]
    for method in ("tsne", "pca"):
        output = work / f"{method}.png"
        args = ["tsne", str(work / "features.npz"), "--method", method, "--max_points", "200", "--n-jobs", "1",
                "-o", str(output), "--json"]
        result = runner.invoke(toolkit, args)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert (summary["images"], summary["sampled"], summary["placed"]) == (600, 200, 400)
        coords = pd.read_csv(output.with_suffix(".csv"))
        assert coords["image"].tolist() == sampled["paths"]
        assert np.isfinite(coords[["x", "y"]].to_numpy()).all() and coords[["x", "y"]].std().min() > 0.1
    text = runner.invoke(toolkit, ["tsne", str(work / "features.npz"), "--method", "pca", "--max-points", "200",
                                   "-o", str(work / "text.png")])
    assert text.exit_code == 0 and "200 sampled, 400 placed" in text.stdout, text.output


@pytest.mark.parametrize("args, rule", [
    (["--max-points", "90"], "--max-points must be at least 91"),
    (["--max-points", "20", "--perplexity", "10"], "--max-points must be at least 31"),
    (["--max-points", "0", "--method", "pca"], "--max-points must be at least 4"),
])
def test_too_few_max_points_is_a_usage_error(sampled, runner, tmp_path, args, rule):
    result = runner.invoke(toolkit, ["tsne", str(sampled["work"] / "features.npz"), *args, "-o", str(tmp_path / "m.png")])
    assert result.exit_code == 2 and rule in one_line_error(result)
    assert not list(tmp_path.iterdir())


def test_all_rows_of_an_array_in_memory_are_used_as_they_are_and_a_memmap_is_read(tmp_path):
    """No second copy of in-memory features when every row makes the map; the rows are still checked."""
    features = np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32)
    tracemalloc.start()
    try:
        rows = read_rows(features, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows is features and peak < features.nbytes / 4, f"{peak / 2**20:.1f} MB for {features.nbytes / 2**20:.1f} MB of rows"
    np.save(tmp_path / "features.npy", features)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    read = read_rows(mapped, None)
    assert type(read) is np.ndarray and not np.shares_memory(read, mapped)
    np.testing.assert_array_equal(read, features)
    features[15_000, 3] = np.nan
    with pytest.raises(DataError, match="NaN or infinity"):
        read_rows(features, None)
