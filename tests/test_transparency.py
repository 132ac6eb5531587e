"""Transparency: images with alpha are composited onto one `--background`, whatever RGB hides under alpha 0.

Each kind of file with transparency (PNG RGBA, PNG LA, PNG palette with
tRNS, grey PNG with a transparent grey, GIF with a transparent index) is
written twice: the same visible picture, different hidden colours where
alpha is 0. Both copies must decode to the same pixels, through the
TensorFlow pipeline and through Pillow (thumbnails, plots), and give the
same features.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.formats.background import background_name, parse_background, to_rgb
from tests.conftest import one_line_error

SIZE = 16
KINDS = ("rgba.png", "la.png", "palette.png", "palette_bytes.png", "grey_trns.png", "palette.gif")


def _write(folder, hidden_seed: int) -> None:
    """One file of each kind; `hidden_seed` draws the colours under alpha 0 (the visible pixels are fixed)."""
    visible, hidden = np.random.default_rng(0), np.random.default_rng(hidden_seed)
    alpha = np.zeros((SIZE, SIZE), np.uint8)
    alpha[4:12, 4:12], alpha[0] = 255, 128  # opaque square, a half-transparent row, the rest transparent
    rgb = visible.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    rgb[alpha == 0] = hidden.integers(0, 256, (int((alpha == 0).sum()), 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(folder / "la.png")
    # Palette: index 0 is transparent, its colour is the hidden one; 1-5 are visible.
    indices = np.where(alpha == 0, 0, 1 + np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 5).astype(np.uint8)
    palette = [*map(int, hidden.integers(0, 256, 3)), 10, 20, 30, 200, 40, 60, 90, 250, 15, 120, 130, 140, 0, 0, 255, 77, 77, 77]
    for name, transparency in (("palette.png", 0), ("palette.gif", 0), ("palette_bytes.png", bytes([0, 255, 255, 255, 255, 255, 0]))):
        image = Image.fromarray(indices, "P")
        image.putpalette(palette)
        image.save(folder / name, transparency=transparency)
    grey = np.where(alpha == 0, 7, 100 + indices * 20).astype(np.uint8)  # 7 is the transparent grey
    hidden_grey = int(hidden.integers(0, 7))  # a grey PNG hides nothing: its transparent value is what differs
    Image.fromarray(np.where(grey == 7, hidden_grey, grey).astype(np.uint8), "L").save(
        folder / "grey_trns.png", transparency=hidden_grey)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two folders with the same visible pictures and different hidden colours."""
    root = tmp_path_factory.mktemp("transparency")
    _write(root / "a", 1)
    _write(root / "b", 2)
    return root


def _pipeline_pixels(path, background=None) -> np.ndarray:
    from image_toolkit.models.pipeline import decode_rgb
    from image_toolkit.models.runtime import tf

    return decode_rgb(tf.constant(str(path)), background).numpy()


def _pillow_pixels(path, background=None) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(to_rgb(image, background))


@pytest.mark.parametrize("kind", KINDS)
def test_hidden_colours_do_not_show(pictures, kind):
    first, second = _pipeline_pixels(pictures / "a" / kind), _pipeline_pixels(pictures / "b" / kind)
    assert not np.array_equal(np.asarray(Image.open(pictures / "a" / kind).convert("RGBA"))[..., :3],
                              np.asarray(Image.open(pictures / "b" / kind).convert("RGBA"))[..., :3]) or kind == "grey_trns.png"
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, _pillow_pixels(pictures / "a" / kind))  # TF and Pillow agree exactly
    np.testing.assert_array_equal(first, _pillow_pixels(pictures / "b" / kind))
    assert (first[SIZE - 1, SIZE - 1] == 255).all()  # a transparent corner is white by default
    black = _pipeline_pixels(pictures / "a" / kind, (0, 0, 0))
    assert (black[SIZE - 1, SIZE - 1] == 0).all()
    np.testing.assert_array_equal(black, _pillow_pixels(pictures / "a" / kind, "black"))
    np.testing.assert_array_equal(black[5:11, 5:11], first[5:11, 5:11])  # opaque pixels do not change


def test_the_palette_warning_is_silenced(pictures, capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in KINDS:
            _pillow_pixels(pictures / "a" / kind)
            _pipeline_pixels(pictures / "a" / kind)
    assert "Transparency" not in capfd.readouterr().err


def test_images_without_alpha_are_unchanged(tiny_set):
    root, table = tiny_set
    path = root / "images" / table["image"][0]
    np.testing.assert_array_equal(_pipeline_pixels(path, (0, 0, 0)), np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("text, rgb", [("white", (255, 255, 255)), ("Black", (0, 0, 0)), (" 12, 0,255", (12, 0, 255)),
                                       (None, (255, 255, 255))])
def test_backgrounds_parse(text, rgb):
    assert parse_background(text) == rgb
    assert parse_background(background_name(rgb)) == rgb


@pytest.mark.parametrize("text", ["grey", "1,2", "1,2,3,4", "0,0,256", "-1,0,0", "a,b,c", ""])
def test_malformed_backgrounds_are_refused(text):
    with pytest.raises(OptionError, match="--background: expected white, black or R,G,B"):
        parse_background(text)


def _features(runner, folder, output, *extra, model=("--model", "pixels", "--image-size", "16")):
    from image_toolkit.cli.extract import get_transfer_layer
    from image_toolkit.data_tools.formats.features import read_features

    result = runner.invoke(get_transfer_layer, [str(folder), str(output), *model, "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return read_features(output)


def test_features_agree_and_record_the_background(runner, pictures, tmp_path):
    first, second = _features(runner, pictures / "a", tmp_path / "a.npz"), _features(runner, pictures / "b", tmp_path / "b.npz")
    assert first.paths == second.paths == sorted(KINDS)
    np.testing.assert_array_equal(first.features, second.features)
    assert first.metadata["background"] == "white"
    black = _features(runner, pictures / "a", tmp_path / "black.npz", "--background", "0,0,0")
    assert black.metadata["background"] == "black"
    assert not np.array_equal(black.features, first.features)


def test_append_with_another_background_is_refused(runner, pictures, tmp_path):
    from image_toolkit.cli.extract import get_transfer_layer

    _features(runner, pictures / "a", tmp_path / "a.npz")
    result = runner.invoke(get_transfer_layer, [str(pictures / "b"), str(tmp_path / "a.npz"), "--model", "pixels",
                                                "--image-size", "16", "--append", "--background", "black"])
    assert result.exit_code == 1
    assert "background='white', this run has background='black'" in one_line_error(result)


def test_a_malformed_background_is_one_line(runner, pictures, tmp_path):
    from image_toolkit.cli.extract import get_transfer_layer

    result = runner.invoke(get_transfer_layer, [str(pictures / "a"), str(tmp_path / "x.npz"), "--model", "pixels",
                                                "--background", "12,300,0"])
    assert result.exit_code == 2
    assert "--background: expected white, black or R,G,B" in one_line_error(result)
    assert not (tmp_path / "x.npz").exists()


@pytest.fixture(scope="module")
def black_run(tiny_set, tmp_path_factory):
    """One epoch of small_cnn on 24 digits with --background black."""
    from click.testing import CliRunner

    from image_toolkit.cli.train import train
    from tests.conftest import train_args

    root, _ = tiny_set
    output_dir = tmp_path_factory.mktemp("black_run")
    result = CliRunner().invoke(train, train_args(root, output_dir, "--epochs", "1", "--background", "0,0,0"))
    assert result.exit_code == 0, result.output
    return root, output_dir


def test_training_records_its_background_and_predictions_use_it(runner, black_run, pictures, tmp_path):
    import json

    from image_toolkit.data_tools.formats.model_file import read_h5_metadata
    from image_toolkit.models.inference import classifier_probabilities, load_classifier

    root, output_dir = black_run
    assert json.loads((output_dir / "run.json").read_text())["options"]["background"] == "black"
    assert read_h5_metadata(output_dir / "best_model.h5")["background"] == "black"
    model, metadata = load_classifier(output_dir / "best_model.h5")
    first, second = (classifier_probabilities([pictures / folder / "rgba.png"], model, metadata) for folder in "ab")
    np.testing.assert_array_equal(first, second)
    # Extraction from the model takes its background; another one is refused in one line.
    features = _features(runner, root / "images", tmp_path / "model.npz", model=("--model", str(output_dir / "best_model.h5")))
    assert features.metadata["background"] == "black"
    from image_toolkit.cli.extract import get_transfer_layer

    result = runner.invoke(get_transfer_layer, [str(root / "images"), str(tmp_path / "x.npz"), "--model",
                                                str(output_dir / "best_model.h5"), "--background", "white"])
    assert result.exit_code == 2 and "was trained with --background black" in one_line_error(result)


def test_resume_with_another_background_is_refused(runner, black_run):
    from image_toolkit.cli.train import train
    from tests.conftest import train_args

    root, output_dir = black_run
    result = runner.invoke(train, train_args(root, output_dir, "--epochs", "2", "--resume", "--background", "white"))
    assert result.exit_code == 2
    assert "--background black, this one white" in one_line_error(result)


def test_the_web_page_shows_the_composited_pictures(runner, pictures, tmp_path):
    """/api/images and /api/thumbnails send what the model saw: two folders that differ only under alpha 0 look the same."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from image_toolkit.cli.index import index
    from tests.test_webapp import create_app

    seen, labels = {}, tmp_path / "labels.csv"
    labels.write_text("image,label\n" + "".join(f"{name},{name.split('.')[1]}\n" for name in KINDS))
    for folder in ("a", "b"):
        _features(runner, pictures / folder, tmp_path / f"{folder}.npz")
        result = runner.invoke(index, ["build", str(tmp_path / f"{folder}.npz"), str(tmp_path / f"{folder}_index"),
                                       "--kind", "flat", "--quiet"])
        assert result.exit_code == 0, result.output
        client = TestClient(create_app(tmp_path / f"{folder}_index", pictures / folder, tmp_path / f"{folder}.sqlite",
                                       labels=labels))
        for image_id, name in enumerate(sorted(KINDS)):
            for route in ("images", "thumbnails"):
                answer = client.get(f"/api/{route}/{image_id}")
                assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", (route, name)
                with Image.open(io.BytesIO(answer.content)) as sent:
                    seen[folder, route, name] = np.asarray(sent.convert("RGB"))
    for name in KINDS:
        np.testing.assert_array_equal(seen["a", "images", name], _pillow_pixels(pictures / "a" / name), err_msg=name)
        for route in ("images", "thumbnails"):
            np.testing.assert_array_equal(seen["a", route, name], seen["b", route, name], err_msg=f"{route} {name}")


def test_filter_images_resize_composites_onto_the_background(runner, pictures, tmp_path):
    from image_toolkit.cli.similarity import filter_images

    (tmp_path / "in" / "kind").mkdir(parents=True)
    for name in KINDS:
        (tmp_path / "in" / "kind" / name).write_bytes((pictures / "a" / name).read_bytes())
    result = runner.invoke(filter_images, [str(tmp_path / "in"), str(tmp_path / "out"), "--min-size", "8", "--min-per-class", "1",
                                           "--resize", "16", "--background", "black", "--quiet"])
    assert result.exit_code == 0, result.output
    for name in KINDS:
        with Image.open(tmp_path / "out" / "kind" / name) as copy:
            assert "transparency" not in copy.info and copy.mode in ("RGB", "P"), name  # GIF stays a palette file
            assert copy.convert("RGB").getpixel((15, 15)) == (0, 0, 0), name  # a transparent corner, now black
