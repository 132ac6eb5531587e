"""`toolkit suggest` and `feedback simulate --suggest`: the images a model is least sure of, judged.

Unit tests of the scores on known probabilities (no TensorFlow); then one
small_cnn trained for ten epochs on 300 digits (multiclass, ten classes),
shared by the module, ranks the other 700.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.feedback.suggest import entropy_scores, margin_scores, suggest, uncertainty_scores
from tests.conftest import SMALL

# Rows: sure, torn between two classes, spread over three.
MULTICLASS = np.array([[0.9, 0.05, 0.05], [0.45, 0.44, 0.11], [0.34, 0.33, 0.33]])
TRAIN_ROWS = 300


def test_margin_is_top1_minus_top2_and_ranks_the_torn_first():
    np.testing.assert_allclose(margin_scores(MULTICLASS, "multiclass"), [0.85, 0.01, 0.01])
    scores, order = uncertainty_scores(MULTICLASS, "multiclass", "margin")
    assert order.tolist() == [1, 2, 0]  # a tie keeps the input order


def test_entropy_is_the_softmax_entropy_and_ranks_the_spread_first():
    expected = [-(row * np.log(row)).sum() for row in MULTICLASS]
    np.testing.assert_allclose(entropy_scores(MULTICLASS, "multiclass"), expected)
    assert uncertainty_scores(MULTICLASS, "multiclass", "entropy")[1].tolist() == [2, 1, 0]


def test_multilabel_margin_is_the_label_nearest_its_threshold_and_entropy_the_sum():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.55], [0.3, 0.5]])
    thresholds = np.array([0.5, 0.6])
    np.testing.assert_allclose(margin_scores(probabilities, "multilabel", thresholds), [0.4, 0.05, 0.1])
    binary = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))  # noqa: E731
    np.testing.assert_allclose(entropy_scores(probabilities, "multilabel"), binary(probabilities).sum(axis=1))
    rows = suggest(["a", "b", "c"], probabilities, ["x", "y"], "multilabel", n=2, thresholds=thresholds)
    assert [(r.image, r.query_class, r.predicted) for r in rows] == [("b", "y", "x"), ("c", "y", "")]


def test_random_is_seeded():
    first = uncertainty_scores(MULTICLASS, "multiclass", "random", seed=3)[1]
    assert np.array_equal(first, uncertainty_scores(MULTICLASS, "multiclass", "random", seed=3)[1])


@pytest.fixture(scope="module")
def model(digits_set, tmp_path_factory):
    """A small_cnn on 300 digits, ten epochs: right on about half the others, unsure of many. (root, model, truth by image)."""
    root, table = digits_set
    work = tmp_path_factory.mktemp("suggest")
    labels = pd.DataFrame({"image": table["image"], "label": table["digit_name"]})
    labels.to_csv(work / "classes.csv", index=False)
    labels.iloc[:TRAIN_ROWS].to_csv(work / "train.csv", index=False)
    from click.testing import CliRunner

    result = CliRunner().invoke(toolkit, ["train", "--data-csv", str(work / "train.csv"), "--img-directory", str(root / "images"),
                                          "--output-dir", str(work / "run"), *SMALL, "--epochs", "10", "--task", "multiclass"])
    assert result.exit_code == 0, result.output
    return work, work / "run" / "best_model.h5", dict(zip(labels["image"], labels["label"])), root


def run_suggest(runner, model, *args):
    work, path, _, root = model
    result = runner.invoke(toolkit, ["suggest", str(path), str(root / "images"), "--data-csv", str(work / "train.csv"), *args])
    assert result.exit_code == 0, result.output
    return result


def test_suggest_writes_n_rows_and_skips_labelled_and_judged_images(runner, model, tmp_path):
    work, _, truth, _ = model
    judged = list(truth)[TRAIN_ROWS : TRAIN_ROWS + 50]
    pd.DataFrame({"image": judged, "class": [truth[i] for i in judged], "query_class": [truth[i] for i in judged],
                  "lasso_count": 1, "deselect_count": 0, "select_count": 0, "users": 1}).to_csv(tmp_path / "fb.csv", index=False)
    out = tmp_path / "suggestions.csv"
    result = run_suggest(runner, model, "--n", "40", "--feedback", str(tmp_path / "fb.csv"), "-o", str(out), "--json")
    summary = json.loads(result.stdout)
    assert summary["ranked"] == 1000 - TRAIN_ROWS - 50 and summary["suggested"] == 40
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["rank", "image", "score", "query_class", "probability", "predicted"]
    assert len(frame) == 40 and frame["rank"].tolist() == list(range(1, 41))
    assert frame["score"].is_monotonic_increasing  # margin: the smallest first
    assert not set(frame["image"]) & (set(list(truth)[:TRAIN_ROWS]) | set(judged))


def test_the_least_sure_images_are_wrong_more_often_than_random_ones(runner, model, tmp_path):
    _, _, truth, _ = model
    error = {}
    for strategy in ("margin", "random", "entropy"):
        run_suggest(runner, model, "--n", "100", "--strategy", strategy, "-o", str(tmp_path / f"{strategy}.csv"), "--quiet")
        frame = pd.read_csv(tmp_path / f"{strategy}.csv")
        error[strategy] = float((frame["predicted"] != frame["image"].map(truth)).mean())
    print("error rate of the 100 suggested:", error)
    # Measured: margin 0.77, entropy 0.84, random 0.58. An untrained model is equally unsure of all: no gap.
    assert error["margin"] >= error["random"] + 0.10, error
    assert error["entropy"] >= error["random"] + 0.10, error


def test_simulated_users_deselect_exactly_the_wrongly_predicted_suggestions(runner, model, tmp_path):
    work, _, truth, _ = model
    run_suggest(runner, model, "--n", "60", "-o", str(tmp_path / "s.csv"), "--quiet")
    result = runner.invoke(toolkit, ["feedback", "simulate", "--data-csv", str(work / "classes.csv"), "--suggest",
                                     str(tmp_path / "s.csv"), "-o", str(tmp_path / "e.jsonl"), "--noise", "0"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    frame = pd.read_csv(tmp_path / "s.csv")
    wrong = set(frame["image"][frame["predicted"] != frame["image"].map(truth)])
    deselected = {image for e in events if e["action"] == "deselect" for image in e["images"]}
    selected = {image for e in events if e["action"] == "select" for image in e["images"]}
    assert deselected == wrong and selected == set(frame["image"]) - wrong
    assert all(truth[image] == e["query_class"] for e in events if e["action"] == "select" for image in e["images"])
    assert {e["action"] for e in events} <= {"select", "deselect"}
    assert "60 suggested images judged" in result.output
