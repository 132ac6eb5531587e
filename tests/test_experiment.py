"""`toolkit experiment`: baseline vs meta on a fixed test split, on real digits (plumbing: 1 epoch, 32 px)."""

import dataclasses
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
    arms = ["baseline", "meta", "random", "steps"]  # the default --variants
    assert list(zip(log["variant"], log["seed"])) == [(arm, seed) for seed in (0, 1) for arm in arms]
    assert json.loads(log["options"].iloc[0])["use"] == "upsample"
    assert (log["ratios"] == ["{}", '{"deselected": 3.0}', '{"deselected": 3.0}', '{"deselected": 3.0}'] * 2).all()
    for column in ["time", "options", "epochs", "wall_time_s", "best_val_macro_f1", "test_macro_f1"]:
        assert log[column].notna().all(), column
    assert log["options"].nunique() == 1  # identical training options for every run
    results = pd.read_csv(output_dir / "Results.csv")
    assert len(results) == 8 * 11 and set(results["class"]) >= {"three", "eight", "macro"}
    macro = results[results["class"] == "macro"]
    np.testing.assert_allclose(macro["f1"].to_numpy(), log["test_macro_f1"].to_numpy(), atol=1e-6)
    assert (output_dir / "experiment.png").stat().st_size > 1000
    for line in ["| baseline |", "| meta |", "| random |", "| steps |", "±", "Paired difference meta − baseline",
                 "Paired difference meta − random", "Paired difference steps − baseline", "95 % interval",
                 "minimum detectable difference"]:
        assert line in result.stdout, line
    summary = json.loads((output_dir / "experiment.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["difference"]["n"] == 2
    pairs = [(c["first"], c["second"]) for c in summary["comparisons"]]
    assert pairs == [("meta", "baseline"), ("random", "baseline"), ("steps", "baseline"), ("meta", "random")]
    assert summary["comparisons"][-1]["mde"] > 0 and summary["comparisons"][-1]["seeds_for_0.02"] >= 2


def test_random_adds_as_many_rows_and_steps_makes_as_many_gradient_steps_as_meta(multiclass_run, setup):
    output_dir, _ = multiclass_run
    experiment = json.loads((output_dir / "experiment.json").read_text())["experiment"]
    lists, runs = output_dir / "lists" / experiment, output_dir / "runs" / experiment
    train = pd.read_csv(lists / "train_baseline.csv")["image"]
    meta, random, steps = (pd.read_csv(lists / f"train_{arm}_seed1.csv")["image"].value_counts() for arm in ["meta", "random", "steps"])
    # random: the same copy counts as meta, on other images (not only the deselected ones).
    assert random.sum() == meta.sum() and sorted(random) == sorted(meta) and set(random.index) == set(train)
    assert set(random[random > 1].index) != set(meta[meta > 1].index)
    # steps: the baseline list evenly repeated (every image 1 or 2 times here) to meta's length.
    assert steps.sum() == meta.sum() and set(steps.index) == set(train) and steps.max() - steps.min() <= 1
    record = {arm: json.loads((runs / f"{arm}_seed1" / "run.json").read_text()) for arm in ["baseline", "meta", "steps"]}
    batch = record["meta"]["options"]["batch_size"]
    gradient_steps = {arm: r["epochs"] * -(-r["n_train"] // batch) for arm, r in record.items()}
    assert gradient_steps["steps"] == gradient_steps["meta"] > gradient_steps["baseline"]


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
    result = CliRunner().invoke(toolkit, experiment_args(setup, output_dir, "--seeds", "1", "--variants", "baseline,meta"))
    assert result.exit_code == 0, result.output
    log = pd.read_csv(output_dir / "ExperimentLog.csv")
    assert len(log) == 10 and log["experiment"].nunique() == 2
    for experiment in log["experiment"].unique():  # Every logged run keeps its folder.
        assert (output_dir / "runs" / experiment / "baseline_seed0" / "best_model.h5").is_file()
    again = log.iloc[8:].reset_index(drop=True)
    expected = first.iloc[:2].reset_index(drop=True)
    for column in ["variant", "seed", "best_val_macro_f1", "test_macro_f1", "train_rows"]:
        assert again[column].tolist() == expected[column].tolist(), column
    assert "not decidable: 1 seed, no interval" in result.stdout


def test_multilabel_experiment_scores_each_label_on_known_cells(setup, digits_set, tmp_path):
    root, table = digits_set
    labels = tmp_path / "label.txt"
    pd.read_csv(root / "label.txt").iloc[:120].to_csv(labels, index=False)
    result = CliRunner().invoke(toolkit, experiment_args(setup, tmp_path / "out", "--seeds", "1", "--variants", "baseline,meta",
                                                         data_csv=labels, task="multilabel"))
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


def test_a_ratio_sweep_trains_the_baseline_once_per_seed_and_every_ratio(setup, tmp_path):
    args = experiment_args(setup, tmp_path / "out", "--seeds", "1", "--variants", "baseline,meta")
    args[args.index("deselected=3")] = "deselected=2,3"
    result = CliRunner().invoke(toolkit, args)
    assert result.exit_code == 0, result.output
    log = pd.read_csv(tmp_path / "out" / "ExperimentLog.csv")
    assert list(log["variant"]) == ["baseline", "meta", "meta"]
    assert list(log["ratios"]) == ["{}", '{"deselected": 2.0}', '{"deselected": 3.0}']
    assert log["train_rows"].iloc[1] < log["train_rows"].iloc[2]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 1000
    assert "meta − baseline at deselected=2" in result.stdout and "meta − baseline at deselected=3" in result.stdout


def test_weight_gives_the_deselected_rows_the_ratio_as_loss_weight(setup, tmp_path):
    args = experiment_args(setup, tmp_path / "out", "--seeds", "1", "--variants", "baseline,meta,random,steps", "--use", "weight")
    result = CliRunner().invoke(toolkit, args)
    assert result.exit_code == 0, result.output
    log = pd.read_csv(tmp_path / "out" / "ExperimentLog.csv")
    assert list(log["variant"]) == ["baseline", "meta", "random"]  # weights keep the length: no steps arm
    assert log["train_rows"].nunique() == 1
    runs = tmp_path / "out" / "runs" / log["experiment"].iloc[0]
    train = set(pd.read_csv(runs / "meta_seed0" / "train.csv")["image"])
    weighted = {arm: json.loads((runs / f"{arm}_seed0" / "run.json").read_text()).get("weighted_rows") for arm in ["baseline", "meta", "random"]}
    assert weighted == {"baseline": None, "meta": len(train & setup["deselected"]), "random": len(train & setup["deselected"])}


def test_sample_weights_travel_with_the_images_and_multiply_class_weights(setup):
    from image_toolkit.data_tools.formats.labels import read_label_csv
    from image_toolkit.models.training import TrainOptions, classifier_dataset, fit_sample_weights

    options = TrainOptions(data_csv=str(setup["labels"]), img_directory=str(setup["root"] / "images"), task="multiclass",
                           backbone="small_cnn", weights="none", image_size=32, batch_size=8, class_weight="balanced")
    table = read_label_csv(setup["labels"], "multiclass").subset(range(16))
    deselected = {image: 3.0 for image in table.images if image in setup["deselected"]}
    weights = fit_sample_weights(options, table, table.labels, deselected)
    plain = fit_sample_weights(dataclasses.replace(options, class_weight="none"), table, table.labels, deselected)
    np.testing.assert_allclose(plain, [3.0 if image in deselected else 1.0 for image in table.images])
    from image_toolkit.models.training import balanced_class_weights

    by_class = balanced_class_weights(table.labels)
    np.testing.assert_allclose(weights, plain * np.array([by_class[c] for c in table.labels.argmax(axis=1)]), rtol=1e-6)
    assert fit_sample_weights(options, table, table.labels, None) is None
    batches = list(classifier_dataset(options, table, table.labels, None, training=False, weights=plain))
    assert all(len(batch) == 3 for batch in batches)
    np.testing.assert_allclose(np.concatenate([batch[2].numpy() for batch in batches]), plain)


def test_relabel_sets_the_blank_query_class_cell_of_deselected_images_to_a_known_zero():
    from image_toolkit.data_tools.feedback.controls import arm_lists, relabel_deselected
    from image_toolkit.data_tools.formats.labels import LabelTable

    nan = np.nan
    labels = np.array([[nan, 1, nan], [nan, nan, 0], [1, nan, nan], [nan, nan, nan]])
    table = LabelTable(["a", "b", "c", "d"], labels, ["even", "prime", "odd"], "multilabel")
    feedback = pd.DataFrame({"image": ["a", "b", "c", "d"], "class": "", "query_class": ["even", "odd", "even", "prime"],
                             "lasso_count": 1, "deselect_count": [1, 1, 1, 0], "select_count": 0, "users": 1})
    relabelled, filled = relabel_deselected(table, feedback)
    # a: blank 'even' becomes a known 0; b: 'odd' was already known (0), kept; c: 'even' was known 1, kept;
    # d: not deselected. Every other blank stays blank (masked).
    expected = labels.copy()
    expected[0, 0] = 0
    np.testing.assert_array_equal(relabelled, expected)
    assert filled.sum() == 1
    arms = arm_lists(table, feedback, {}, use="relabel", variants=["baseline", "meta", "random"], seed=0)
    np.testing.assert_array_equal(arms["meta"].table.labels, expected)
    random = arms["random"].table.labels
    assert (np.isnan(random).sum() == np.isnan(labels).sum() - 1) and np.nansum(random) == np.nansum(labels)


def test_parse_ratio_sweep_sweeps_one_group():
    from image_toolkit.data_tools.errors import OptionError
    from image_toolkit.data_tools.feedback.resample import parse_ratio_sweep

    assert parse_ratio_sweep(["deselected=1,3", "class:eight=2"]) == [{"deselected": 1.0, "class:eight": 2.0},
                                                                      {"deselected": 3.0, "class:eight": 2.0}]
    assert parse_ratio_sweep(["deselected=3"]) == [{"deselected": 3.0}]
    for bad in (["deselected=1,-2"], ["deselected=1,2", "selected=1,2"], ["deselected=2,2"]):
        with pytest.raises(OptionError):
            parse_ratio_sweep(bad)


def test_power_numbers_follow_the_t_distribution(tmp_path):
    from scipy import stats

    from image_toolkit.data_tools.maps.plots import plot_sweep
    from image_toolkit.models.experiment import minimum_detectable_difference, seeds_for_halfwidth

    n = seeds_for_halfwidth(0.05)
    assert stats.t.ppf(0.975, n - 1) * 0.05 / np.sqrt(n) <= 0.02 < stats.t.ppf(0.975, n - 2) * 0.05 / np.sqrt(n - 1)
    mde = minimum_detectable_difference(0.05, 10)
    critical = stats.t.ppf(0.975, 9)
    assert stats.nct.sf(critical, 9, mde * np.sqrt(10) / 0.05) == pytest.approx(0.8, abs=1e-6)
    # Many seeds: the normal approximation (z_0.975 + z_0.8) * sd / sqrt(n).
    assert minimum_detectable_difference(0.05, 400) == pytest.approx((1.959964 + 0.841621) * 0.05 / 20, rel=0.01)
    assert minimum_detectable_difference(0.05, 1) is None
    frame = pd.DataFrame({"comparison": ["meta − baseline"] * 2 + ["meta − random"] * 2, "ratio": [2.0, 3.0] * 2,
                          "mean": [0.01, 0.02, 0.0, -0.01], "low": [-0.02, np.nan, -0.03, -0.04], "high": [0.04, np.nan, 0.03, 0.02]})
    plot_sweep(frame, tmp_path / "sweep.png", group="deselected")
    assert (tmp_path / "sweep.png").stat().st_size > 1000
