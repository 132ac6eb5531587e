"""`toolkit evaluate`, per-label thresholds and TensorBoard logs, on real digits."""

import json

import numpy as np
import pandas as pd
import pytest

from image_toolkit.cli.evaluate import evaluate
from image_toolkit.cli.predict import predict
from image_toolkit.cli.train import train
from tests.conftest import one_line_error, train_args

LABELS = ["even", "prime", "five_or_more", "closed_loop"]


def scalar_tags(log_dir) -> set[str]:
    """The tags of the scalars in a TensorBoard log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    return set(tags["scalars"]) | set(tags["tensors"])


def run_evaluate(runner, model, test_csv, image_dir, output_dir, *extra):
    result = runner.invoke(evaluate, [str(model), str(test_csv), "--img_directory", str(image_dir),
                                      "--output_dir", str(output_dir), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scored(trained, digits_set, tmp_path_factory):
    """The digits model on its 200 held-out digits, with its tuned thresholds and with 0.5 for every label."""
    from click.testing import CliRunner

    run_dir, _, _ = trained
    root = digits_set[0]
    test_csv = run_dir.parent / "test.csv"
    output_dir = tmp_path_factory.mktemp("evaluation")
    tuned = run_evaluate(CliRunner(), run_dir / "best_model.h5", test_csv, root / "images", output_dir)
    fixed = run_evaluate(CliRunner(), run_dir / "best_model.h5", test_csv, root / "images", output_dir / "fixed", "--threshold", "0.5")
    return output_dir, tuned, fixed, test_csv


def test_evaluate_scores_the_held_out_digits(scored):
    output_dir, tuned, fixed, test_csv = scored
    print(f"test macro-F1: 0.5 {fixed['macro_f1']:.4f}, tuned {tuned['macro_f1']:.4f}")
    assert tuned["n_images"] == 200 and tuned["task"] == "multilabel"
    for summary in (tuned, fixed):
        assert summary["macro_f1"] >= 0.85 and summary["micro_f1"] >= 0.88, summary
        assert summary["macro_roc_auc"] >= 0.95, summary
    rows = {row["class"]: row for row in tuned["per_label"]}
    truth = pd.read_csv(test_csv)
    for name in LABELS:  # blank cells are left out: support counts the known positives
        assert rows[name]["support"] == int((truth[name] == 1).sum())
        assert rows[name]["average_precision"] >= 0.9
    for name in ("evaluation.json", "per_label.csv", "pr_curves.png"):
        assert (output_dir / name).is_file(), name
    per_label = pd.read_csv(output_dir / "per_label.csv")
    assert list(per_label["label"]) == [*LABELS, "macro", "micro"]
    assert json.loads((output_dir / "evaluation.json").read_text())["macro_f1"] == tuned["macro_f1"]


def test_evaluate_agrees_with_scikit_learn_on_the_predictions(scored, trained, digits_set, runner):
    """The macro-F1 evaluate reports is f1_score's over predict's labels, blank cells left out."""
    from sklearn.metrics import f1_score

    _, tuned, _, test_csv = scored
    truth = pd.read_csv(test_csv)
    images = [str(digits_set[0] / "images" / name) for name in truth["image"]]
    result = runner.invoke(predict, [*images, "--model", str(trained[0] / "best_model.h5"), "--json"])
    labels = [json.loads(line)["labels"] for line in result.stdout.splitlines()]
    f1 = []
    for name in LABELS:
        known = truth[name].notna().to_numpy()
        predicted = np.array([name in given for given in labels])
        f1.append(f1_score(truth[name][known].astype(int), predicted[known]))
    assert tuned["macro_f1"] == pytest.approx(np.mean(f1), abs=1e-6)


def test_evaluate_fails_labels_that_do_not_belong_to_the_images(scored, trained, digits_set, tmp_path, runner):
    """The bar is real: the same model scored against shuffled labels falls far below it."""
    _, tuned, _, test_csv = scored
    truth = pd.read_csv(test_csv)
    shuffled = truth.assign(**{name: truth[name].sample(frac=1, random_state=0).to_numpy() for name in LABELS})
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    summary = run_evaluate(runner, trained[0] / "best_model.h5", tmp_path / "shuffled.csv", digits_set[0] / "images", tmp_path / "out")
    assert summary["macro_f1"] < 0.7 and summary["macro_roc_auc"] < 0.65, summary
    assert tuned["macro_f1"] - summary["macro_f1"] > 0.25


def test_tuned_thresholds_are_stored_and_used(trained, scored):
    _, summary, _ = trained
    from image_toolkit.data_tools.formats.model_file import read_h5_metadata
    from image_toolkit.models.evaluation import THRESHOLD_GRID

    stored = read_h5_metadata(trained[0] / "best_model.h5")["thresholds"]
    assert stored == summary["thresholds"] and len(stored) == 4
    assert all(t in THRESHOLD_GRID for t in stored)
    # 0.5 is on the grid, so each label's validation F1 can only rise, and so can their mean.
    assert summary["val_macro_f1_tuned"] >= summary["best_val_macro_f1"] - 1e-9
    _, tuned, fixed, _ = scored
    assert tuned["thresholds"] == stored and fixed["thresholds"] == [0.5] * 4


def test_evaluate_multiclass_draws_the_confusion_matrix(digits_set, tmp_path, runner):
    root, table = digits_set
    classes = table[["image"]].assign(label=table["digit_name"])
    classes.head(120).to_csv(tmp_path / "classes.csv", index=False)
    classes.tail(60).to_csv(tmp_path / "test.csv", index=False)
    args = train_args(root, tmp_path / "run", "--task", "multiclass", "--epochs", "2", data_csv=tmp_path / "classes.csv")
    assert runner.invoke(train, args).exit_code == 0
    summary = run_evaluate(runner, tmp_path / "run" / "best_model.h5", tmp_path / "test.csv", root / "images", tmp_path / "out")
    matrix = np.array(summary["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 60
    assert summary["accuracy"] == pytest.approx(np.trace(matrix) / 60, abs=1e-6)
    assert summary["thresholds"] is None and (tmp_path / "out" / "confusion.png").is_file()


def test_evaluate_names_the_missing_and_extra_labels(trained, digits_set, tmp_path, runner):
    truth = pd.read_csv(trained[0].parent / "test.csv").rename(columns={"prime": "odd"})
    truth.to_csv(tmp_path / "other.csv", index=False)
    result = runner.invoke(evaluate, [str(trained[0] / "best_model.h5"), str(tmp_path / "other.csv"),
                                      "--img_directory", str(digits_set[0] / "images"), "--output_dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "other.csv" in message and "missing prime" in message and "extra odd" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [evaluate, predict])
@pytest.mark.parametrize("threshold", ["1.5", "-0.1"])
def test_thresholds_outside_zero_to_one_are_refused(trained, command, threshold, runner):
    model = str(trained[0] / "best_model.h5")
    args = [model, model] if command is evaluate else [model, "--model", model]
    result = runner.invoke(command, [*args, "--threshold", threshold])
    assert result.exit_code == 2
    assert "--threshold" in one_line_error(result) and threshold in result.stderr


def test_tuned_thresholds_need_a_multilabel_task(tiny_set, tmp_path, runner):
    root, _ = tiny_set
    result = runner.invoke(train, train_args(root, tmp_path, "--task", "multiclass", "--thresholds", "tuned"))
    assert result.exit_code == 2 and "--task multilabel" in one_line_error(result)


def test_tensorboard_logs_every_metric_per_epoch(tiny_set, tmp_path, runner):
    root, _ = tiny_set
    result = runner.invoke(train, train_args(root, tmp_path / "run", "--epochs", "2", "--tensorboard", str(tmp_path / "logs")))
    assert result.exit_code == 0, result.output
    for split in ("train", "validation"):
        assert {"epoch_loss", "epoch_macro_f1", "epoch_micro_f1"} <= scalar_tags(tmp_path / "logs" / split)


def test_tensorboard_without_its_extra_is_one_line(tiny_set, tmp_path, runner, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    root, _ = tiny_set
    result = runner.invoke(train, train_args(root, tmp_path / "run", "--tensorboard", str(tmp_path / "logs")))
    assert result.exit_code == 1
    assert 'pip install "image-toolkit[tensorboard]"' in one_line_error(result)
    assert not (tmp_path / "run").exists() and not (tmp_path / "logs").exists()
