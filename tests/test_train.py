"""Training and prediction through the command line, on real digits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from image_toolkit.cli.predict import predict
from image_toolkit.cli.train import train
from image_toolkit.models.inference import load_classifier
from tests.conftest import SMALL, one_line_error, train_args

REPO = Path(__file__).resolve().parents[1]


def test_small_cnn_learns_digit_labels(trained):
    output_dir, summary, _ = trained
    assert summary["best_val_micro_f1"] >= 0.90, summary
    assert summary["best_val_macro_f1"] >= 0.85, summary
    for name in ["best_model.h5", "loss_curve.png", "history.csv", "run.json", "train.csv", "val.csv"]:
        assert (output_dir / name).is_file(), name
    history = pd.read_csv(output_dir / "history.csv")
    assert len(history) == 25 and history["loss"].iloc[-1] < history["loss"].iloc[0]
    run = json.loads((output_dir / "run.json").read_text())
    assert run["options"]["backbone"] == "small_cnn" and run["best_epoch"] == summary["best_epoch"]


def test_split_lists_are_disjoint_and_cover_the_data(trained, digits_set):
    output_dir, _, table = trained
    train_list = pd.read_csv(output_dir / "train.csv")
    val_list = pd.read_csv(output_dir / "val.csv")
    assert not set(train_list["image"]) & set(val_list["image"])
    assert len(train_list) + len(val_list) == 800
    assert len(val_list) == 160


def test_predict_round_trip_through_the_cli(trained, digits_set, runner):
    output_dir, summary, table = trained
    root = digits_set[0]
    val_images = pd.read_csv(output_dir / "val.csv")["image"][:40]
    args = [str(root / "images" / name) for name in val_images]
    result = runner.invoke(predict, [*args, "--model_weights", str(output_dir / "best_model.h5"), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["image"]).name for r in records] == list(val_images)
    truth = table.set_index("image").loc[list(val_images), ["even", "prime", "five_or_more", "closed_loop"]]
    predicted = np.array([[p >= 0.5 for p in r["probabilities"].values()] for r in records])
    known = truth.notna().to_numpy()
    accuracy = (predicted == truth.fillna(0).to_numpy().astype(bool))[known].mean()
    assert accuracy >= 0.85
    thresholds = dict(zip(summary["label_names"], summary["thresholds"]))  # the run tuned them (--thresholds tuned)
    assert all(set(r["labels"]) == {k for k, p in r["probabilities"].items() if p >= thresholds[k]} for r in records)


def test_inference_script_reloads_the_model_in_a_fresh_process(trained, digits_set):
    output_dir, _, _ = trained
    image = digits_set[0] / "images" / "0000.png"
    command = [sys.executable, "inference.py", str(image), "--model_weights", str(output_dir / "best_model.h5")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(image)) and "closed_loop=" in done.stdout
    assert done.stderr.strip() == "", done.stderr


def test_train_script_runs_the_same_command(tiny_set, tmp_path):
    root, _ = tiny_set
    command = [sys.executable, "train.py", *train_args(root, tmp_path, "--epochs", "1")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "best_model.h5").is_file() and (tmp_path / "loss_curve.png").is_file()


def test_resume_continues_from_the_last_epoch(tiny_set, tmp_path, runner):
    root, _ = tiny_set
    first = runner.invoke(train, train_args(root, tmp_path, "--epochs", "1"))
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(train, train_args(root, tmp_path, "--epochs", "3", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1, 2]
    assert json.loads((tmp_path / "train_state.json").read_text())["epoch"] == 3
    changed = runner.invoke(train, train_args(root, tmp_path, "--epochs", "4", "--resume", "--head_units", "8"))
    assert changed.exit_code == 2
    assert "--head-units 64, this one 8" in one_line_error(changed)


def test_multiclass_task_from_a_label_column(digits_set, tmp_path, runner):
    root, table = digits_set
    table[["image"]].assign(label=table["digit_name"]).head(80).to_csv(tmp_path / "classes.csv", index=False)
    args = ["--data_csv", str(tmp_path / "classes.csv"), "--img_directory", str(root / "images"), "--output_dir", str(tmp_path), "--task", "multiclass", "--epochs", "1", *SMALL]
    result = runner.invoke(train, args)
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "train.csv")["label"].unique()) == 10


def test_resnet50_without_weights_trains_a_step_at_32px(tiny_set, tmp_path, runner):
    """The default backbone (25M parameters) at its smallest input, 8 images: it builds, trains a step and reloads."""
    root, _ = tiny_set
    (tmp_path / "few.csv").write_text("\n".join((root / "label.txt").read_text().splitlines()[:9]) + "\n")
    args = ["--data_csv", str(tmp_path / "few.csv"), "--img_directory", str(root / "images"), "--output_dir", str(tmp_path / "run"),
            "--backbone", "resnet50", "--weights", "none", "--image_size", "32", "--epochs", "1", "--batch_size", "4", "--quiet"]
    result = runner.invoke(train, args)
    assert result.exit_code == 0, result.output
    _, metadata = load_classifier(tmp_path / "run" / "best_model.h5")
    assert metadata["backbone"] == "resnet50" and metadata["image_size"] == 32


def test_vgg16_without_weights_trains_a_step_at_32px(tiny_set, tmp_path, runner):
    """VGG16 (15M parameters) at its smallest input, 8 images: the registry entry builds, trains and reloads."""
    root, _ = tiny_set
    (tmp_path / "few.csv").write_text("\n".join((root / "label.txt").read_text().splitlines()[:9]) + "\n")
    args = ["--data_csv", str(tmp_path / "few.csv"), "--img_directory", str(root / "images"), "--output_dir", str(tmp_path / "run"),
            "--backbone", "vgg16", "--weights", "none", "--image_size", "32", "--epochs", "1", "--batch_size", "4", "--quiet"]
    result = runner.invoke(train, args)
    assert result.exit_code == 0, result.output
    model, metadata = load_classifier(tmp_path / "run" / "best_model.h5")
    assert metadata["backbone"] == "vgg16"
    assert "vgg16" in [layer.name for layer in model.layers]


@pytest.mark.parametrize(
    "options",
    [
        ["--missing_labels", "mf", "--class_weight", "balanced"],
        ["--missing_labels", "mean", "--augment"],
        ["--precision", "mixed_bfloat16"],
        ["--precision", "mixed_float16"],
        ["--strategy", "mirrored", "--fine_tune"],
    ],
)
def test_training_options_run_end_to_end(tiny_set, tmp_path, runner, options):
    root, _ = tiny_set
    (root / "holes.csv").write_text((root / "label.txt").read_text().replace(",1,0,", ",,0,", 3))
    args = ["--data_csv", str(root / "holes.csv"), "--img_directory", str(root / "images"), "--output_dir", str(tmp_path), "--epochs", "1", *SMALL, *options]
    result = runner.invoke(train, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"


def hand_balanced(labels):
    """The former hand-written per-label weights, n / (2 * count), for labels with both values."""
    known = ~np.isnan(labels)
    positives = np.nansum(labels, axis=0)
    return known.sum(axis=0) / (2 * positives), known.sum(axis=0) / (2 * (known.sum(axis=0) - positives))


def test_balanced_label_weights_are_scikit_learns_per_label():
    from sklearn.utils.class_weight import compute_class_weight

    from image_toolkit.models.training import balanced_label_weights

    rng = np.random.default_rng(3)
    labels = (rng.random((40, 4)) < [0.1, 0.3, 0.5, 0.8]).astype(np.float32)
    labels[0], labels[1] = 1.0, 0.0  # every label has both values
    labels[rng.random(labels.shape) < 0.2] = np.nan
    labels[0], labels[1] = 1.0, 0.0
    pos, neg = balanced_label_weights(labels)
    for j in range(labels.shape[1]):
        known = labels[~np.isnan(labels[:, j]), j].astype(int)
        np.testing.assert_allclose([neg[j], pos[j]], compute_class_weight("balanced", classes=np.array([0, 1]), y=known), rtol=1e-5)
    np.testing.assert_allclose(np.array([pos, neg]), np.array(hand_balanced(labels)), rtol=1e-5)
    filled = np.where(np.isnan(labels), 0.25, labels)  # --missing_labels mean/mf: a filled cell is part positive
    np.testing.assert_allclose(np.array(balanced_label_weights(filled)), np.array(hand_balanced(filled)), rtol=1e-5)


def test_a_label_with_one_value_is_not_weighted():
    from image_toolkit.models.training import balanced_label_weights

    labels = np.array([[0, 1], [0, 0], [0, np.nan], [np.nan, 1]], dtype=np.float32)
    pos, neg = balanced_label_weights(labels)
    assert (pos[0], neg[0]) == (1.0, 1.0)  # nothing to balance (the hand-written weights gave negatives 0.5)
    assert (pos[1], neg[1]) == pytest.approx((0.75, 1.5))


def test_balanced_class_weights_are_scikit_learns_over_the_classes_present():
    from sklearn.utils.class_weight import compute_class_weight

    from image_toolkit.models.training import balanced_class_weights

    classes = np.array([0, 0, 0, 1, 3, 3])
    weights = balanced_class_weights(np.eye(4, dtype=np.float32)[classes])
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=classes)
    assert weights == pytest.approx({0: expected[0], 1: expected[1], 2: 1.0, 3: expected[2]})


def small_run(runner, root, output_dir, *extra, csv="label.txt"):
    """A small_cnn run on the tiny set; the options in `extra` come last and win."""
    args = ["--data_csv", str(root / csv), "--img_directory", str(root / "images"), "--output_dir", str(output_dir), *SMALL, "--epochs", "1", *extra]
    result = runner.invoke(train, args)
    assert result.exit_code == 0, result.output
    return pd.read_csv(output_dir / "history.csv")


def test_balanced_class_weight_reweighs_the_loss(tiny_set, tmp_path, runner):
    """A label positive in 2 of 16 training images: its negatives weigh 16 / (2 * 14) under 'balanced'.

    With a learning rate too small to move the weights, both runs start from
    the same seed and keep the same model; the validation images are all
    negatives, so their loss scales by exactly that weight.
    """
    root, table = tiny_set
    rare = table[["image"]].assign(rare=0)
    rare.loc[[0, 1], "rare"] = 1
    rare.iloc[:16].to_csv(tmp_path / "train.csv", index=False)
    rare.iloc[16:].to_csv(tmp_path / "val.csv", index=False)
    lists = ["--train_csv", str(tmp_path / "train.csv"), "--val_csv", str(tmp_path / "val.csv"), "--learning_rate", "1e-9", "--batch_size", "8"]
    plain = small_run(runner, root, tmp_path / "none", *lists, "--class_weight", "none")
    balanced = small_run(runner, root, tmp_path / "balanced", *lists, "--class_weight", "balanced")
    assert balanced["val_loss"].iloc[0] / plain["val_loss"].iloc[0] == pytest.approx(16 / 28, rel=1e-3)
    assert balanced["loss"].iloc[0] != pytest.approx(plain["loss"].iloc[0], rel=1e-3)


@pytest.mark.parametrize("fine_tune", [False, True])
def test_fine_tune_trains_a_pretrained_backbone(tiny_set, tmp_path, runner, fine_tune):
    """A backbone from a weights file stays frozen unless --fine_tune; the head trains either way."""
    from image_toolkit.models.backbones import SmallCNN
    from image_toolkit.models.runs import STATE_FILE
    from image_toolkit.models.runtime import keras

    root, _ = tiny_set
    pretrained = SmallCNN(input_shape=(32, 32, 3))
    weights_file = tmp_path / "small_cnn.weights.h5"
    pretrained.save_weights(weights_file)
    small_run(runner, root, tmp_path / "run", "--weights", str(weights_file), "--epochs", "2", *(["--fine_tune"] if fine_tune else []))
    model = keras.models.load_model(tmp_path / "run" / json.loads((tmp_path / "run" / STATE_FILE).read_text())["checkpoint"])
    backbone = model.get_layer("small_cnn")
    assert backbone.trainable is fine_tune
    changed = [not np.array_equal(before, after) for before, after in zip(pretrained.get_weights(), backbone.get_weights())]
    assert all(changed) if fine_tune else not any(changed), changed
    assert len(model.trainable_weights) == len(backbone.weights) * fine_tune + 4  # the head: two Dense layers


@pytest.mark.parametrize("augment", [False, True])
def test_augment_changes_the_training_batches(tiny_set, tmp_path, runner, monkeypatch, augment):
    """--augment puts random flips, rotations and zooms in the training pipeline (never the validation one)."""
    from image_toolkit.models import training

    calls = []

    def recording(paths, labels=None, **options):
        calls.append((paths, options))
        return training_pipeline(paths, labels, **options)

    training_pipeline = training.image_dataset
    monkeypatch.setattr(training, "image_dataset", recording)
    root, _ = tiny_set
    small_run(runner, root, tmp_path, *(["--augment"] if augment else []))
    (train_paths, train_options), (_, val_options) = calls
    assert train_options["shuffle"] and not val_options["shuffle"] and val_options["augment"] is None
    if not augment:
        assert train_options["augment"] is None
        return
    fixed = {**train_options, "shuffle": False, "cache": False}
    plain = next(iter(training_pipeline(train_paths, **{**fixed, "augment": None})))[0].numpy()
    augmented = next(iter(training_pipeline(train_paths, **fixed)))[0].numpy()
    assert plain.shape == augmented.shape
    assert np.abs(plain - augmented).mean() > 0.01 * np.abs(plain).mean()
