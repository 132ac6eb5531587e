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
from tests.conftest import one_line_error

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--backbone", "small_cnn", "--weights", "none", "--image_size", "32", "--quiet"]


def train_args(root, output_dir, *extra):
    return ["--data_csv", str(root / "label.txt"), "--img_directory", str(root / "images"), "--output_dir", str(output_dir), *SMALL, *extra]


@pytest.fixture(scope="module")
def trained(digits_set, tmp_path_factory):
    """One small_cnn run on 1000 digits, shared by the tests that read its outputs."""
    from click.testing import CliRunner

    root, table = digits_set
    output_dir = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(train, train_args(root, output_dir, "--epochs", "25", "--json"))
    assert result.exit_code == 0, result.output
    return output_dir, json.loads(result.stdout.strip().splitlines()[-1]), table


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
    assert len(train_list) + len(val_list) == len(table)
    assert len(val_list) == 200


def test_predict_round_trip_through_the_cli(trained, digits_set, runner):
    output_dir, _, table = trained
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
    assert all(set(r["labels"]) == {k for k, p in r["probabilities"].items() if p >= 0.5} for r in records)


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
    assert "--head_units 64, this one 8" in one_line_error(changed)


def test_multiclass_task_from_a_label_column(digits_set, tmp_path, runner):
    root, table = digits_set
    table[["image"]].assign(label=table["digit_name"]).head(80).to_csv(tmp_path / "classes.csv", index=False)
    args = ["--data_csv", str(tmp_path / "classes.csv"), "--img_directory", str(root / "images"), "--output_dir", str(tmp_path), "--task", "multiclass", "--epochs", "1", *SMALL]
    result = runner.invoke(train, args)
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "train.csv")["label"].unique()) == 10


def test_resnet50_without_weights_trains_a_step_at_64px(tiny_set, tmp_path, runner):
    root, _ = tiny_set
    args = ["--data_csv", str(root / "label.txt"), "--img_directory", str(root / "images"), "--output_dir", str(tmp_path),
            "--backbone", "resnet50", "--weights", "none", "--image_size", "64", "--epochs", "1", "--batch_size", "32", "--quiet"]
    result = runner.invoke(train, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "best_model.h5").is_file()


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
