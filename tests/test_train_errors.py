"""Bad input to `toolkit train` / `toolkit predict`: one line on stderr, the right exit code, no half-written model."""

import json
import shutil

import h5py
import numpy as np
import pytest

from image_toolkit.cli.predict import predict
from image_toolkit.cli.train import train
from tests.conftest import one_line_error
from tests.test_images import make_images

SMALL = ["--backbone", "small_cnn", "--weights", "none", "--image_size", "32", "--epochs", "1", "--quiet"]


@pytest.fixture
def data(tiny_set, tmp_path):
    """A private copy of the tiny set that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(tiny_set[0], root)
    return root


def run_train(runner, root, *extra, csv="label.txt"):
    args = ["--data_csv", str(root / csv), "--img_directory", str(root / "images"), "--output_dir", str(root / "out"), *SMALL, *extra]
    return runner.invoke(train, args)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "label CSV not found"),
        ("", "the file is empty"),
        ("file,even\n0000.png,1\n", "no 'image' column"),
        ("image,even\n0000.png,1\n0001.png,yes\n", "line 3, column 'even': value 'yes' is not a label"),
        ("image,even\n0000.png,1\n0000.png,0\n", "listed more than once"),
    ],
)
def test_bad_label_csv(runner, data, content, message):
    if content is not None:
        (data / "bad.csv").write_text(content)
    result = run_train(runner, data, csv="bad.csv")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert message in line and "bad.csv" in line
    assert not (data / "out" / "best_model.h5").exists()


def test_missing_and_corrupt_images_are_skipped_and_listed(runner, data, caplog):
    (data / "images" / "0000.png").unlink()
    (data / "images" / "0001.png").unlink()
    (data / "images" / "0001.jpg").write_text("a text file named .jpg")
    (data / "label.txt").write_text((data / "label.txt").read_text().replace("0001.png", "0001.jpg"))
    (data / "images" / "0002.png").write_bytes((data / "images" / "0003.png").read_bytes()[:50])
    result = run_train(runner, data)
    assert result.exit_code == 0, result.output
    skipped = dict(line.split("\t") for line in (data / "out" / "skipped_images.txt").read_text().splitlines())
    assert {path.rsplit("/", 1)[1]: reason.split(" (")[0] for path, reason in skipped.items()} == {
        "0000.png": "file not found",
        "0001.jpg": "cannot decode",
        "0002.png": "cannot decode",
    }
    assert "Skipped 3 of 24 images" in caplog.text
    assert (data / "out" / "best_model.h5").is_file()


def test_unreadable_images_of_both_given_lists_are_listed(runner, data):
    rows = (data / "label.txt").read_text().splitlines()
    (data / "train.csv").write_text("\n".join([rows[0], *rows[1:17]]) + "\n")
    (data / "val.csv").write_text("\n".join([rows[0], *rows[17:]]) + "\n")
    for name in ("0001.png", "0020.png"):  # One in each list.
        (data / "images" / name).write_text("not an image")
    result = run_train(runner, data, "--train_csv", str(data / "train.csv"), "--val_csv", str(data / "val.csv"))
    assert result.exit_code == 0, result.output
    listed = (data / "out" / "skipped_images.txt").read_text()
    assert "0001.png" in listed and "0020.png" in listed


def test_no_readable_image_fails(runner, data):
    for image in (data / "images").iterdir():
        image.write_text("text pretending to be a picture")
    result = run_train(runner, data)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "label.txt: no readable image (first: " in line and "0000.png" in line
    assert not (data / "out").exists(), "a run on no image left its output folder"


@pytest.mark.parametrize("rows", ["0000.png,1\n", "0000.png,1\n0001.png,0\n"])
def test_fewer_than_two_usable_images_fails(runner, data, rows):
    (data / "images" / "0001.png").write_text("unreadable")
    (data / "few.csv").write_text("image,even\n" + rows)
    result = run_train(runner, data, csv="few.csv")
    assert result.exit_code == 1
    assert "few.csv: 1 usable image; training needs at least 2" in one_line_error(result)
    assert not (data / "out" / "train.csv").exists() and not (data / "out" / "run.json").exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--val_split", "1.5"], "--val-split"),
        (["--val_split", "0"], "--val-split"),
        (["--backbone", "vgg99"], "--backbone"),
        (["--epochs", "0"], "--epochs"),
        (["--train_csv", "x.csv"], "--train-csv and --val-csv go together"),
        (["--backbone", "inceptionv3", "--image_size", "64"], "inceptionv3 needs at least 75 pixels. Received: 64"),
    ],
)
def test_impossible_options_are_usage_errors(runner, data, option, message):
    result = run_train(runner, data, *option)
    assert result.exit_code == 2
    assert message in one_line_error(result)
    assert not (data / "out").exists()


@pytest.mark.parametrize("backbone", ["mobilenetv2", "vgg16"])
def test_imagenet_weights_offline_name_the_fix(runner, data, monkeypatch, tmp_path, backbone):
    """Offline, Keras' own get_file runs (its cache an empty folder) and its download fails: one line, exit 1."""
    import urllib.error

    from keras.src.backend import config
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras_home"))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    args = ["--data_csv", str(data / "label.txt"), "--img_directory", str(data / "images"), "--output_dir", str(data / "out" / "r50"),
            "--backbone", backbone, "--weights", "imagenet", "--image_size", "32", "--epochs", "1"]
    result = runner.invoke(train, args)
    assert result.exit_code == 1, result.output
    assert "Downloading" not in result.stdout and "Downloading" not in result.stderr
    assert "https://" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in result.output
    assert "--weights imagenet" in line and "--weights none" in line and "--weights PATH" in line
    assert not (data / "out").exists(), "a failed run left an (empty) output folder"
    from image_toolkit.models.runtime import keras

    assert keras.config.is_interactive_logging_enabled(), "Keras' interactive logging was left off"


@pytest.mark.parametrize("output_dir", ["out", "out/run"])
def test_output_dir_that_is_a_file(runner, data, output_dir):
    """The option naming a file, or a file on the way to the folder, is a usage error (2): the same mistake."""
    (data / "out").write_text("my notes")
    args = ["--data_csv", str(data / "label.txt"), "--img_directory", str(data / "images"), "--output_dir", str(data / output_dir), *SMALL]
    result = runner.invoke(train, args)
    assert result.exit_code == 2 and "is a file" in one_line_error(result)
    if output_dir != "out":
        assert f"{data / 'out'}: is a file, not a folder" in one_line_error(result)
    assert (data / "out").read_text() == "my notes"


def test_weights_file_that_does_not_exist(runner, data):
    result = run_train(runner, data, "--weights", str(data / "nope.h5"))
    assert result.exit_code == 2
    assert "nope.h5 is not a file" in one_line_error(result)


def test_predict_with_a_missing_model(runner, data):
    result = runner.invoke(predict, [str(data / "images" / "0000.png"), "--model_weights", str(data / "nope.h5")])
    assert result.exit_code == 1
    assert "model file not found" in one_line_error(result)


@pytest.mark.parametrize("kind", ["text", "plain_h5"])
def test_predict_with_a_file_that_is_not_a_toolkit_model(runner, data, kind):
    model = data / "model.h5"
    if kind == "text":
        model.write_text("hello")
    else:
        with h5py.File(model, "w") as handle:
            handle["weights"] = np.zeros(3)
    result = runner.invoke(predict, [str(data / "images" / "0000.png"), "--model_weights", str(model)])
    assert result.exit_code == 1
    assert "not an image-toolkit model" in one_line_error(result)


def test_predict_reads_images_of_any_size_and_mode(runner, data, tmp_path):
    assert run_train(runner, data).exit_code == 0
    folder = tmp_path / "odd"
    folder.mkdir()
    paths = make_images(folder)
    result = runner.invoke(predict, [str(folder), "--model_weights", str(data / "out" / "best_model.h5"), "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(line)["image"] for line in result.stdout.splitlines()) == sorted(map(str, paths))


def test_predict_skips_unreadable_images_and_names_them(runner, data):
    assert run_train(runner, data).exit_code == 0
    (data / "broken.jpg").write_text("no")
    args = [str(data / "images" / "0005.png"), str(data / "broken.jpg"), "--model_weights", str(data / "out" / "best_model.h5")]
    result = runner.invoke(predict, args)
    assert result.exit_code == 0, result.output
    assert "Skipped" in result.stderr and "broken.jpg" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    missing = runner.invoke(predict, [str(data / "absent.png"), "--model_weights", str(data / "out" / "best_model.h5")])
    assert missing.exit_code == 1 and "no such file or folder" in one_line_error(missing)


TRUNCATED = "not a complete Keras model file (truncated or damaged)"


def cut_short(source, target, keep):
    content = source.read_bytes()
    target.write_bytes(content[: int(len(content) * keep)])
    return target


def test_predict_with_a_truncated_model_says_it_is_truncated(runner, data):
    assert run_train(runner, data).exit_code == 0
    for keep in (0.0, 0.3, 0.999):
        model = cut_short(data / "out" / "best_model.h5", data / "cut.h5", keep)
        result = runner.invoke(predict, [str(data / "images" / "0000.png"), "--model", str(model)])
        assert result.exit_code == 1, result.output
        line = one_line_error(result)
        assert f"{model}: {TRUNCATED}" in line and "File not found" not in line, (keep, line)


def test_resume_from_a_truncated_checkpoint_says_it_is_truncated(runner, data):
    assert run_train(runner, data).exit_code == 0
    state = json.loads((data / "out" / "train_state.json").read_text())
    checkpoint = data / "out" / state["checkpoint"]
    cut_short(checkpoint, checkpoint, 0.5)
    result = run_train(runner, data, "--epochs", "2", "--resume")
    assert result.exit_code == 1, result.output
    assert f"{checkpoint}: {TRUNCATED}" in one_line_error(result)


def test_predict_on_a_folder_without_images_names_it(runner, data):
    assert run_train(runner, data).exit_code == 0
    (data / "empty").mkdir()
    result = runner.invoke(predict, [str(data / "empty"), "--model", str(data / "out" / "best_model.h5")])
    assert result.exit_code == 1, result.output
    assert f"{data / 'empty'}: no readable image" in one_line_error(result)
