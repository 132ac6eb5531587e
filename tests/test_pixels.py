"""`--model pixels`: each image's raw pixels as its features, through the same pipeline as a CNN."""

import shutil

import numpy as np
import pytest
from PIL import Image

from image_toolkit.cli.extract import get_inception_output, get_transfer_layer
from image_toolkit.data_tools.formats.features import read_features
from image_toolkit.models.extraction import compute_features, extract, extractor_from_metadata, feature_extractor
from tests.conftest import one_line_error


@pytest.fixture
def images(tiny_set, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(tiny_set[0] / "images", folder)
    return folder


def pillow_pixels(path, size):
    """The reference: Pillow's RGB conversion and (antialiased bilinear) resize, scaled to [0, 1]."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.float32).reshape(-1) / 255.0


def test_pixels_at_the_stored_size_are_the_images_own(runner, images, tmp_path):
    (images / "zz_broken.png").write_text("not an image")
    result = runner.invoke(get_transfer_layer, [str(images), str(tmp_path / "px.npz"), "--model", "pixels",
                                                "--image_size", "32", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert '"skipped": 1' in result.stdout
    pixels = read_features(tmp_path / "px.npz")
    assert pixels.features.shape == (24, 32 * 32 * 3) and pixels.features.dtype == np.float32
    assert pixels.metadata["model"] == "pixels" and pixels.metadata["image_size"] == 32
    expected = np.stack([pillow_pixels(images / path, 32) for path in pixels.paths])
    np.testing.assert_allclose(pixels.features, expected, atol=1e-6)
    assert 0.0 <= pixels.features.min() and pixels.features.max() <= 1.0


def test_pixels_resized_match_pillow(images, tmp_path):
    summary = extract(images, tmp_path / "px.npz", feature_extractor("pixels", output="pooled", image_size=12), verbose=0)
    pixels = read_features(summary["path"])
    assert pixels.features.shape == (24, 12 * 12 * 3)
    expected = np.stack([pillow_pixels(images / path, 12) for path in pixels.paths])
    # TensorFlow's and Pillow's antialiased bilinear filters differ by rounding only.
    np.testing.assert_allclose(pixels.features, expected, atol=3 / 255)


def test_a_pixels_feature_file_rebuilds_its_extractor(images, tmp_path):
    extract(images, tmp_path / "px.npz", feature_extractor("pixels", output="pooled"), verbose=0)
    stored = read_features(tmp_path / "px.npz")
    query = extractor_from_metadata(stored.metadata)
    row = compute_features(query, [images / stored.paths[3]], batch_size=1, verbose=0)
    np.testing.assert_allclose(row[0], stored.features[3], atol=1e-6)


@pytest.mark.parametrize(
    "command, extra, message",
    [
        (get_transfer_layer, ["--layer", "flatten"], "--model pixels has no layers"),
        (get_inception_output, [], "raw pixels have no class scores"),
    ],
)
def test_pixels_usage_errors(runner, images, tmp_path, command, extra, message):
    result = runner.invoke(command, [str(images), str(tmp_path / "px.npz"), "--model", "pixels", *extra])
    assert result.exit_code == 2, result.output
    assert message in one_line_error(result)
    assert not (tmp_path / "px.npz").exists()
