"""`toolkit experiment`: baseline vs meta on a fixed test split, on real digits (plumbing: 1 epoch, 32 px)."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from image_toolkit.cli.main import toolkit
from tests.conftest import one_line_error

SMALL = ["--backbone", "small_cnn", "--weights", "none", "--image_size", "32", "--epochs", "1", "--batch_size", "16", "--quiet"]
FEEDBACK_COLUMNS = ["image", "class", "query_class", "lasso_count", "deselect_count", "select_count", "users"]


@pytest.fixture(scope="module")
def setup(digits_set, tmp_path_factory):
    """160 digits as a multiclass list, and feedback marking every fourth of them deselected."""
    root, table = digits_set
    work = tmp_path_factory.mktemp("experiment")
    table = table.iloc[:160]
    labels = work / "classes.csv"
    pd.DataFrame({"image": table["image"], "label": table["digit_name"]}).to_csv(labels, index=False)
    marked = table.iloc[::4]
    feedback = work / "image_feedback.csv"
    pd.DataFrame({"image": marked["image"], "class": marked["digit_name"], "query_class": "eight", "lasso_count": 1,
                  "deselect_count": 1, "select_count": 0, "users": 1}, columns=FEEDBACK_COLUMNS).to_csv(feedback, index=False)
    return {"root": root, "work": work, "labels": labels, "feedback": feedback, "deselected": set(marked["image"])}


def experiment_args(setup, output_dir, *extra, data_csv=None, task="multiclass"):
    return ["experiment", "--data_csv", str(data_csv or setup["labels"]), "--img_directory", str(setup["root"] / "images"),
            "--feedback", str(setup["feedback"]), "--ratio", "deselected=3", "--test_split", "0.3",
            "--output_dir", str(output_dir), "--task", task, *SMALL, *extra]


@pytest.fixture(scope="module")
def multiclass_run(setup):
    output_dir = setup["work"] / "multiclass"
    result = CliRunner().invoke(toolkit, experiment_args(setup, output_dir, "--seeds", "2"))
    assert result.exit_code == 0, result.output
    return output_dir, result


def test_experiment_trains_both_variants_per_seed_and_logs_them(multiclass_run):
    output_dir, result = multiclass_run
    log = pd.read_csv(output_dir / "ExperimentLog.csv")
    assert list(zip(log["variant"], log["seed"])) == [("baseline", 0), ("meta", 0), ("baseline", 1), ("meta", 1)]
    for column in ["time", "options", "epochs", "wall_time_s", "best_val_macro_f1", "test_macro_f1"]:
        assert log[column].notna().all(), column
    assert log["options"].nunique() == 1  # identical training options for every run
    results = pd.read_csv(output_dir / "Results.csv")
    assert len(results) == 4 * 11 and set(results["class"]) >= {"three", "eight", "macro"}
    macro = results[results["class"] == "macro"]
    np.testing.assert_allclose(macro["f1"].to_numpy(), log["test_macro_f1"].to_numpy(), atol=1e-6)
    assert (output_dir / "experiment.png").stat().st_size > 1000
    for line in ["| baseline |", "| meta |", "±", "Paired difference meta − baseline", "95 % interval"]:
        assert line in result.stdout, line
    summary = json.loads((output_dir / "experiment.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["difference"]["n"] == 2


def test_lists_are_fixed_and_only_training_rows_are_resampled(multiclass_run, setup):
    output_dir, _ = multiclass_run
    experiment = json.loads((output_dir / "experiment.json").read_text())["experiment"]
    lists = output_dir / "lists" / experiment
    train, val, test = (pd.read_csv(lists / name)["image"] for name in ["train_baseline.csv", "val.csv", "test.csv"])
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert len(train) + len(val) + len(test) == 160
    meta = pd.read_csv(lists / "train_meta_seed0.csv")["image"].value_counts()
    deselected_train = setup["deselected"] & set(train)
    assert deselected_train and all(meta[name] == 3 for name in deselected_train)
    assert set(meta.index) == set(train) and meta.sum() == len(train) + 2 * len(deselected_train)
    runs = output_dir / "runs" / experiment
    base = json.loads((runs / "baseline_seed1" / "run.json").read_text())["options"]
    meta_options = json.loads((runs / "meta_seed1" / "run.json").read_text())["options"]
    differing = {key for key in base if base[key] != meta_options[key]}
    assert differing == {"train_csv", "output_dir"} and base["seed"] == 1 and base["val_csv"].endswith("val.csv")


def test_the_same_seed_gives_the_same_result_and_logs_are_appended(multiclass_run, setup):
    output_dir, _ = multiclass_run
    first = pd.read_csv(output_dir / "ExperimentLog.csv")
    result = CliRunner().invoke(toolkit, experiment_args(setup, output_dir, "--seeds", "1"))
    assert result.exit_code == 0, result.output
    log = pd.read_csv(output_dir / "ExperimentLog.csv")
    assert len(log) == 6 and log["experiment"].nunique() == 2
    for experiment in log["experiment"].unique():  # Every logged run keeps its folder.
        assert (output_dir / "runs" / experiment / "baseline_seed0" / "best_model.h5").is_file()
    again = log.iloc[4:].reset_index(drop=True)
    expected = first.iloc[:2].reset_index(drop=True)
    for column in ["variant", "seed", "best_val_macro_f1", "test_macro_f1", "train_rows"]:
        assert again[column].tolist() == expected[column].tolist(), column
    assert "not decidable: 1 seed, no interval" in result.stdout


def test_multilabel_experiment_scores_each_label_on_known_cells(setup, digits_set, tmp_path):
    root, table = digits_set
    labels = tmp_path / "label.txt"
    pd.read_csv(root / "label.txt").iloc[:120].to_csv(labels, index=False)
    result = CliRunner().invoke(toolkit, experiment_args(setup, tmp_path / "out", "--seeds", "1", data_csv=labels, task="multilabel"))
    assert result.exit_code == 0, result.output
    results = pd.read_csv(tmp_path / "out" / "Results.csv")
    assert set(results["class"]) == {"even", "prime", "five_or_more", "closed_loop", "macro"}
    test = pd.read_csv(tmp_path / "out" / "lists" / results["experiment"].iloc[0] / "test.csv")
    support = results[results["variant"] == "meta"].set_index("class")["support"]
    assert support["even"] == int((test["even"] == 1).sum())


def test_a_test_split_too_small_for_a_class_is_refused(setup, tmp_path):
    result = CliRunner().invoke(toolkit, experiment_args(setup, tmp_path / "out", "--min_test_per_class", "8"))
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "the test split holds" in message and "--min-test-per-class" in message and "--test-split" in message
    assert not (tmp_path / "out" / "runs").exists()


def test_a_test_list_that_overlaps_the_data_is_refused(setup, tmp_path):
    test_csv = tmp_path / "test.csv"
    pd.read_csv(setup["labels"]).iloc[:30].to_csv(test_csv, index=False)
    result = CliRunner().invoke(toolkit, experiment_args(setup, tmp_path / "out", "--test_csv", str(test_csv)))
    assert result.exit_code == 1 and "must be held out" in one_line_error(result)


def test_feedback_on_none_of_the_training_images_is_refused_before_training(setup, tmp_path):
    elsewhere = tmp_path / "elsewhere.csv"
    feedback = pd.read_csv(setup["feedback"])
    feedback["image"] = "other_folder/" + feedback["image"]
    feedback.to_csv(elsewhere, index=False)
    args = experiment_args(setup, tmp_path / "out")
    args[args.index(str(setup["feedback"]))] = str(elsewhere)
    result = CliRunner().invoke(toolkit, args)
    assert result.exit_code == 1
    assert "elsewhere.csv: no training image is in a group of --ratio" in one_line_error(result)
    assert not (tmp_path / "out" / "runs").exists()


def test_bad_ratio_is_refused_before_training(setup, tmp_path):
    args = experiment_args(setup, tmp_path / "out")
    args[args.index("deselected=3")] = "deselected=-1"
    result = CliRunner().invoke(toolkit, args)
    assert result.exit_code == 2 and "--ratio" in one_line_error(result)


def test_scores_match_scikit_learn_and_mask_blank_cells():
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    from image_toolkit.data_tools.formats.labels import LabelTable
    from image_toolkit.models.experiment import score_predictions

    truth = np.array([[1, 0], [0, np.nan], [1, 1], [0, 1], [np.nan, 0]], dtype=float)
    predicted = np.array([[1, 1], [1, 1], [0, 1], [0, 1], [1, 0]], dtype=float)
    scores = score_predictions(LabelTable(list("abcde"), truth, ["x", "y"], "multilabel"), predicted).set_index("class")
    assert scores.loc["x", "f1"] == pytest.approx(f1_score([1, 0, 1, 0], [1, 1, 0, 0]))
    assert scores.loc["y", "f1"] == pytest.approx(f1_score([0, 1, 1, 0], [1, 1, 1, 0]))
    assert scores.loc["macro", "f1"] == pytest.approx((scores.loc["x", "f1"] + scores.loc["y", "f1"]) / 2)

    classes = np.array([0, 1, 2, 2, 1, 0])
    guesses = np.array([0, 2, 2, 1, 1, 1])
    onehot = np.eye(3)
    scores = score_predictions(LabelTable(list("abcdef"), onehot[classes], ["p", "q", "r"], "multiclass"), onehot[guesses])
    precision, recall, f1, support = precision_recall_fscore_support(classes, guesses, zero_division=0)
    np.testing.assert_allclose(scores["f1"][:3], f1)
    np.testing.assert_allclose(scores["precision"][:3], precision)
    assert scores["f1"].iloc[3] == pytest.approx(f1_score(classes, guesses, average="macro"))


def test_paired_difference_interval_is_scipys_paired_t_interval():
    from scipy import stats

    from image_toolkit.models.experiment import paired_difference

    baseline, meta = np.array([0.80, 0.82, 0.81, 0.79]), np.array([0.84, 0.85, 0.86, 0.80])
    result = paired_difference(baseline, meta)
    # Independent of the formula: a one-sample t test of the differences against 0.
    expected = stats.ttest_1samp(meta - baseline, 0.0).confidence_interval(0.95)
    assert result["mean"] == pytest.approx(np.mean(meta - baseline))
    assert (result["low"], result["high"]) == pytest.approx((expected.low, expected.high))
    assert result["decidable"] and result["verdict"].startswith("meta better")
    assert paired_difference(meta, baseline)["verdict"].startswith("meta worse")
    assert paired_difference(baseline, baseline + np.array([0.01, -0.01, 0.0, 0.005]))["verdict"].startswith("no clear difference")


@pytest.mark.parametrize(
    "baseline, meta, reason",
    [
        ([0.80, np.nan, 0.81], [0.84, 0.85, 0.86], "seed(s) 1"),
        ([0.80, 0.82, 0.81], [0.84, 0.85, np.nan], "seed(s) 2"),
        ([0.80], [0.84], "1 seed"),
    ],
)
def test_nan_scores_or_one_seed_are_not_decidable(baseline, meta, reason):
    from image_toolkit.models.experiment import format_report, paired_difference

    result = paired_difference(np.array(baseline), np.array(meta))
    assert not result["decidable"] and result["low"] is None and result["high"] is None
    assert result["verdict"].startswith("not decidable") and reason in result["verdict"]
    assert "no clear difference" not in result["verdict"]
    summary = {"variants": {}, "by_seed": [], "difference": result}
    assert "not decidable" in format_report(summary)


def test_a_log_with_other_columns_is_refused_before_training(setup, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ExperimentLog.csv").write_text("when,what\n1,2\n")
    result = CliRunner().invoke(toolkit, experiment_args(setup, tmp_path / "out"))
    assert result.exit_code == 1 and "move the file aside" in one_line_error(result)
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("output", ["afile", "afile/exp"])
def test_an_output_folder_that_is_a_file_is_one_line(setup, tmp_path, output):
    (tmp_path / "afile").write_text("my notes")
    result = CliRunner().invoke(toolkit, experiment_args(setup, tmp_path / output))
    assert result.exit_code in (1, 2), result.output
    line = one_line_error(result)
    assert str(tmp_path / "afile") in line and "is a file" in line
    assert (tmp_path / "afile").read_text() == "my notes"
