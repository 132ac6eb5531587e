"""`toolkit tsne` and the 2-D maps behind it, on real digits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.maps.embedding import classes_by_image, embed_2d
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
