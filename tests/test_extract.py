"""Feature extraction through the command line: formats, --append, shards, inputs, bad input."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from image_toolkit.cli.extract import get_inception_output, get_transfer_layer
from image_toolkit.cli.features import merge_features
from image_toolkit.cli.neighbors import compute_distances
from image_toolkit.cli.train import train
from image_toolkit.data_tools.formats.features import read_features
from tests.conftest import one_line_error


@pytest.fixture(scope="module")
def model(tiny_set, tmp_path_factory):
    """A small_cnn classifier trained for one epoch: a deterministic feature model."""
    root, _ = tiny_set
    output_dir = tmp_path_factory.mktemp("model")
    args = ["--data_csv", str(root / "label.txt"), "--img_directory", str(root / "images"), "--output_dir", str(output_dir),
            "--backbone", "small_cnn", "--weights", "none", "--image_size", "32", "--epochs", "1", "--quiet"]
    assert CliRunner().invoke(train, args).exit_code == 0
    return output_dir / "best_model.h5"


@pytest.fixture
def images(tiny_set, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(tiny_set[0] / "images", folder)
    return folder


def extract(runner, command, *args):
    result = runner.invoke(command, [*map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def test_transfer_layer_of_a_toolkit_model_in_every_format(runner, model, images, tmp_path):
    sets = {}
    for suffix in (".npz", ".h5", ".pkl"):
        extract(runner, get_transfer_layer, images, tmp_path / f"features{suffix}", "--model", model)
        sets[suffix] = read_features(tmp_path / f"features{suffix}")
    first = sets[".npz"]
    assert first.features.shape == (24, 64) and first.features.dtype == np.float32
    assert first.paths == sorted(p.name for p in images.iterdir())
    assert first.metadata["layer"] == "head_dense" and first.metadata["image_size"] == 32
    assert first.metadata["model"] == str(model) and first.metadata["output"] == "pooled"
    assert "toolkit_version" in first.metadata
    for other in sets.values():
        assert other.paths == first.paths
        np.testing.assert_array_equal(other.features, first.features)


def test_named_layer_and_output_layer(runner, model, images, tmp_path):
    extract(runner, get_transfer_layer, images, tmp_path / "pooled.npz", "--model", model, "--layer", "small_cnn")
    assert read_features(tmp_path / "pooled.npz").features.shape == (24, 128)
    extract(runner, get_inception_output, images, tmp_path / "scores.npz", "--model", model)
    scores = read_features(tmp_path / "scores.npz")
    assert scores.features.shape == (24, 4) and scores.metadata["layer"] == "predictions"


def test_imagenet_networks_give_1000_scores_and_2048_pooled(runner, images, tmp_path):
    extract(runner, get_inception_output, images / "0000.png", tmp_path / "s.npz", "--model", "resnet50", "--weights", "none", "--image_size", "32")
    scores = read_features(tmp_path / "s.npz")
    assert scores.features.shape == (1, 1000) and scores.paths == ["0000.png"]
    np.testing.assert_allclose(scores.features.sum(), 1.0, rtol=1e-4)
    extract(runner, get_transfer_layer, images, tmp_path / "p.npz", "--model", "resnet50", "--weights", "none", "--image_size", "32", "--batch_size", "10")
    assert read_features(tmp_path / "p.npz").features.shape == (24, 2048)


def test_append_computes_only_new_images_and_equals_a_full_run(runner, model, images, tmp_path):
    extract(runner, get_transfer_layer, images, tmp_path / "full.npz", "--model", model)
    held_back = tmp_path / "later"
    held_back.mkdir()
    for image in sorted(images.iterdir())[::3]:
        image.rename(held_back / image.name)
    extract(runner, get_transfer_layer, images, tmp_path / "grown.npz", "--model", model)
    for image in held_back.iterdir():
        image.rename(images / image.name)
    result = runner.invoke(get_transfer_layer, [str(images), str(tmp_path / "grown.npz"), "--model", str(model), "--append", "--json"])
    assert result.exit_code == 0, result.output
    assert '"computed": 8' in result.stdout
    full, grown = read_features(tmp_path / "full.npz"), read_features(tmp_path / "grown.npz")
    order = [grown.paths.index(path) for path in full.paths]
    np.testing.assert_allclose(grown.features[order], full.features, rtol=1e-5, atol=1e-6)


def test_shards_merge_to_one_run(runner, model, images, tmp_path):
    extract(runner, get_transfer_layer, images, tmp_path / "one.h5", "--model", model)
    for index in range(3):
        extract(runner, get_transfer_layer, images, tmp_path / f"part{index}.npz", "--model", model, "--num_shards", 3, "--shard_index", index)
    result = runner.invoke(merge_features, [str(tmp_path / "merged.npz"), *(str(tmp_path / f"part{i}.npz") for i in range(3))])
    assert result.exit_code == 0, result.output
    one, merged = read_features(tmp_path / "one.h5"), read_features(tmp_path / "merged.npz")
    assert sorted(merged.paths) == one.paths
    order = [merged.paths.index(path) for path in one.paths]
    np.testing.assert_allclose(merged.features[order], one.features, rtol=1e-5, atol=1e-6)


def test_csv_input_and_unreadable_images_listed(runner, model, images, tmp_path):
    (images / "0001.png").write_text("not an image")
    listing = tmp_path / "list.csv"
    listing.write_text("image\nimages/0000.png\nimages/0001.png\nimages/0002.png\nimages/gone.png\n")
    out = tmp_path / "out" / "f.npz"
    extract(runner, get_transfer_layer, listing, out, "--model", model)
    assert read_features(out).paths == ["images/0000.png", "images/0002.png"]
    skipped = (out.parent / "skipped_images.txt").read_text()
    assert "0001.png" in skipped and "gone.png" in skipped


def test_images_to_neighbors_csv(runner, model, images, tmp_path):
    extract(runner, get_transfer_layer, images, tmp_path / "f.npz", "--model", model)
    result = runner.invoke(compute_distances, [str(tmp_path / "f.npz"), str(tmp_path / "nn"), "cosine", "5", "1"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "nn" / "neighbors.csv").read_text().splitlines()
    assert len(lines) == 1 + 24 * 5
    assert np.load(tmp_path / "nn" / "neighbors.npy").shape == (24, 5)


@pytest.mark.parametrize(
    "make_args, code, message",
    [
        (lambda d, m, t: [str(t / "empty"), str(t / "f.npz"), "--model", str(m)], 1, "no image files"),
        (lambda d, m, t: [str(t / "junk"), str(t / "f.npz"), "--model", str(m)], 1, "no readable image"),
        (lambda d, m, t: [str(d), str(t / "f.txt"), "--model", str(m)], 2, "unknown feature file type"),
        (lambda d, m, t: [str(d), str(t / "f.npz"), "--model", str(m), "--layer", "nope"], 2, "has no layer 'nope'"),
        (lambda d, m, t: [str(d), str(t / "f.npz"), "--model", str(m), "--num_shards", "2", "--shard_index", "2"], 2, "--shard-index"),
        (lambda d, m, t: [str(d), str(t / "f.npz"), "--model", str(t / "absent.h5")], 1, "model file not found"),
    ],
)
def test_bad_extraction_input(runner, model, images, tmp_path, make_args, code, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("text")
    result = runner.invoke(get_transfer_layer, make_args(images, model, tmp_path))
    assert result.exit_code == code, result.output
    assert message in one_line_error(result)
    assert not (tmp_path / "f.npz").exists()


def test_append_refuses_a_file_from_another_model(runner, model, images, tmp_path):
    extract(runner, get_transfer_layer, images, tmp_path / "f.npz", "--model", model)
    result = runner.invoke(get_transfer_layer, [str(images), str(tmp_path / "f.npz"), "--model", "resnet50", "--weights", "none", "--image_size", "32", "--append"])
    assert result.exit_code == 1
    assert "--append only extends" in one_line_error(result)


def test_extractor_rebuilt_from_metadata_gives_the_same_features(runner, model, images, tmp_path):
    from image_toolkit.models.extraction import compute_features, extractor_from_metadata

    extract(runner, get_transfer_layer, images, tmp_path / "f.npz", "--model", model)
    saved = read_features(tmp_path / "f.npz")
    extractor = extractor_from_metadata(saved.metadata)
    again = compute_features(extractor, [images / saved.paths[0], images / saved.paths[1]], verbose=0)
    np.testing.assert_allclose(again, saved.features[:2], rtol=1e-5, atol=1e-6)


def test_a_metadata_csv_lists_its_images_under_its_root(tmp_path):
    """make-metadata's CSV names the image folder in `root`: extraction from the CSV finds the images there."""
    from image_toolkit.models.extraction import list_images

    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "meta.csv").write_text("image,class,split,root\na/1.png,a,train,photos\na/2.png,a,test,photos\n")
    root, paths = list_images(tmp_path / "meta.csv")
    assert root == tmp_path / "photos" and paths == ["a/1.png", "a/2.png"]
    (tmp_path / "mixed.csv").write_text("image,class,split,root\na/1.png,a,train,photos\nb/2.png,b,test,other\n")
    assert list_images(tmp_path / "mixed.csv") == (tmp_path, ["photos/a/1.png", "other/b/2.png"])


def test_append_from_another_folder_with_the_model_named_another_way(runner, model, images, tmp_path, monkeypatch):
    """The first run's relative --model is recorded resolved, so a later --append from elsewhere matches it."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    shutil.copy(model, project / "models" / "best_model.h5")
    later = tmp_path / "later"
    later.mkdir()
    for image in sorted(images.iterdir())[::2]:
        image.rename(later / image.name)
    monkeypatch.chdir(project)
    extract(runner, get_transfer_layer, images, "features.npz", "--model", "models/best_model.h5")
    assert read_features("features.npz").metadata["model"] == str((project / "models" / "best_model.h5").resolve())
    for image in later.iterdir():
        image.rename(images / image.name)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(get_transfer_layer, [str(images), "project/features.npz", "--model", "./project/models/best_model.h5",
                                                "--append", "--json"])
    assert result.exit_code == 0, result.output
    assert '"computed": 12' in result.stdout and len(read_features(project / "features.npz").paths) == 24


@pytest.mark.parametrize("command, argv", [
    (get_transfer_layer, ["IMAGES", "OUT/features.npz", "--model", "pixels"]),
    (compute_distances, ["FEATURES", "OUT", "cosine", "2"]),
])
def test_an_unwritable_output_folder_is_refused_before_any_work(runner, images, tmp_path, monkeypatch, command, argv):
    """The output folder's check comes first, so a read-only folder costs no extraction or search time."""
    import os

    from image_toolkit.data_tools.search import neighbors
    from image_toolkit.models import extraction

    features = tmp_path / "f.npz"
    assert runner.invoke(get_transfer_layer, [str(images), str(features), "--model", "pixels", "--quiet"]).exit_code == 0
    if os.geteuid() == 0:  # Root writes through chmod; /sys refuses even root.
        out = Path("/sys/toolkit-test")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "out"
    monkeypatch.setattr(extraction, "feature_extractor", lambda *a, **k: pytest.fail("extractor built before the output check"))
    monkeypatch.setattr(neighbors, "exact_neighbors", lambda *a, **k: pytest.fail("search before the output check"), raising=False)
    args = [a.replace("IMAGES", str(images)).replace("FEATURES", str(features)).replace("OUT", str(out)) for a in argv]
    result = runner.invoke(command, args)
    assert result.exit_code == 1, result.output
    assert str(out.parent) in one_line_error(result) and not out.exists()


def test_extraction_streams_its_features_to_a_folder(tmp_path):
    """2,000 images of 64 x 64 x 3 pixel features (94 MiB): each batch is written as it comes, so far less is ever held.

    (Listing and checking the images take about 2 KiB per image, whatever the features' width.)
    """
    import tracemalloc

    from PIL import Image

    from image_toolkit.models.extraction import compute_features, feature_extractor
    from image_toolkit.models.extraction import extract as run

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2000):
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(images / f"{index:04d}.png")
    (images / "0007.png").write_text("not an image")  # skipped, so not a row
    extractor = feature_extractor("pixels", output="pooled", image_size=64)
    whole = 1999 * 64 * 64 * 3 * 4
    tracemalloc.start()
    try:
        summary = run(images, tmp_path / "f.feat", extractor, batch_size=32, verbose=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < whole / 4, f"peak {peak / 2**20:.1f} MiB for {whole / 2**20:.1f} MiB of features"
    written = read_features(tmp_path / "f.feat")
    assert summary["rows"] == summary["computed"] == 1999 and summary["skipped"] == 1 and summary["dim"] == 12288
    assert written.features.shape == (1999, 12288) and "0007.png" not in written.paths
    rows = [written.paths.index(name) for name in ("0006.png", "0008.png", "1999.png")]
    again = compute_features(extractor, [images / written.paths[row] for row in rows], verbose=0)
    np.testing.assert_array_equal(written.features[rows], again)
