"""`toolkit resample`: rows repeated by group ratios, deterministic, never leaking held-out images."""

import json

import numpy as np
import pandas as pd
import pytest

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.errors import OptionError
from image_toolkit.data_tools.feedback.resample import parse_ratios
from image_toolkit.data_tools.formats.labels import read_label_csv
from tests.conftest import one_line_error

FEEDBACK_COLUMNS = ["image", "class", "query_class", "lasso_count", "deselect_count", "select_count", "users"]


@pytest.fixture
def lists(tmp_path):
    """A multiclass training list of 12 images, a validation list and image feedback on some of them."""
    names = ["three", "eight", "nine"]
    train = pd.DataFrame({"image": [f"{i:04d}.png" for i in range(12)], "label": [names[i % 3] for i in range(12)]})
    val = pd.DataFrame({"image": ["0100.png", "0101.png"], "label": ["three", "eight"]})
    feedback = pd.DataFrame(
        [
            ["0000.png", "three", "eight", 1, 1, 0, 1],  # deselected
            ["0004.png", "eight", "eight", 2, 0, 0, 2],  # selected, never deselected
            ["0005.png", "nine", "three;eight", 2, 2, 0, 2],  # deselected
            ["0100.png", "three", "eight", 1, 1, 0, 1],  # a validation image: never added
        ],
        columns=FEEDBACK_COLUMNS,
    )
    paths = {"train": tmp_path / "train.csv", "val": tmp_path / "val.csv", "feedback": tmp_path / "image_feedback.csv"}
    train.to_csv(paths["train"], index=False)
    val.to_csv(paths["val"], index=False)
    feedback.to_csv(paths["feedback"], index=False)
    paths["out"] = tmp_path / "train_meta.csv"
    return paths


def run(runner, lists, *ratios, extra=()):
    args = ["resample", str(lists["train"]), str(lists["feedback"]), "-o", str(lists["out"]),
            *[item for ratio in ratios for item in ("--ratio", ratio)], "--val_csv", str(lists["val"]), *extra]
    return runner.invoke(toolkit, args)


def test_integer_ratio_repeats_the_deselected_rows(runner, lists):
    result = run(runner, lists, "deselected=3")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(lists["out"])
    counts = out["image"].value_counts()
    assert counts["0000.png"] == 3 and counts["0005.png"] == 3
    assert (counts.drop(["0000.png", "0005.png"]) == 1).all() and len(counts) == 12
    assert "0100.png" not in set(out["image"])
    assert out.set_index("image").loc["0005.png", "label"].tolist() == ["nine"] * 3
    # Counts per group, before and after, on stdout.
    assert "deselected" in result.stdout and "total" in result.stdout and "16" in result.stdout
    # A resampled list reads back as a training list (rows may repeat).
    table = read_label_csv(lists["out"], "multiclass", allow_duplicates=True)
    assert len(table) == 16


def test_groups_multiply_and_class_groups_work(runner, lists):
    result = run(runner, lists, "deselected=2", "class:nine=3", "selected=2", extra=["--json"])
    assert result.exit_code == 0, result.output
    counts = pd.read_csv(lists["out"])["image"].value_counts()
    assert counts["0005.png"] == 6  # deselected and a nine: 2 x 3
    assert counts["0000.png"] == 2 and counts["0004.png"] == 2 and counts["0002.png"] == 3
    groups = {g["group"]: g for g in json.loads(result.stdout)["groups"]}
    assert groups["class:nine"]["rows_before"] == 4 and groups["total"]["rows_after"] == len(pd.read_csv(lists["out"]))


def test_fractional_ratios_are_deterministic_with_the_seed(runner, lists, tmp_path):
    outputs = []
    for seed in (7, 7, 8):
        assert run(runner, lists, "class:three=0.5", "class:eight=2.5", extra=["--seed", str(seed)]).exit_code == 0
        outputs.append(lists["out"].read_text())
    assert outputs[0] == outputs[1]
    counts = pd.read_csv(lists["out"])["image"].value_counts()
    eights = [f"{i:04d}.png" for i in range(1, 12, 3)]
    assert all(counts.get(name, 0) in (2, 3) for name in eights)
    threes = [f"{i:04d}.png" for i in range(0, 12, 3)]
    assert all(counts.get(name, 0) in (0, 1) for name in threes)


def test_fractional_ratio_keeps_the_expected_share_on_average():
    from image_toolkit.data_tools.feedback.resample import resample_table
    from image_toolkit.data_tools.formats.labels import LabelTable

    n = 4000
    table = LabelTable([f"{i}.png" for i in range(n)], np.tile([[1.0, 0.0]], (n, 1)), ["a", "b"], "multiclass")
    feedback = pd.DataFrame(columns=FEEDBACK_COLUMNS)
    result = resample_table(table, feedback, {"class:a": 1.3}, seed=0)
    assert len(result.table) == pytest.approx(1.3 * n, rel=0.03)


@pytest.mark.parametrize("ratio", ["deselected=0", "deselected=-2", "deselected=abc", "deselected", "boundary=2", "deselected=nan", "deselected=1e9"])
def test_bad_ratio_is_a_usage_error(runner, lists, ratio):
    result = run(runner, lists, ratio)
    assert result.exit_code == 2
    message = one_line_error(result)
    assert "--ratio" in message
    assert not lists["out"].exists()


def test_the_same_group_twice_is_refused():
    with pytest.raises(OptionError, match="given twice"):
        parse_ratios(["deselected=2", "deselected=3"])


def test_unknown_class_group_names_the_classes(runner, lists):
    result = run(runner, lists, "class:seven=2")
    assert result.exit_code == 2
    assert "no class 'seven'" in one_line_error(result) and "three" in one_line_error(result)


def test_a_training_list_holding_validation_images_is_refused(runner, lists):
    train = pd.read_csv(lists["train"])
    leaked = pd.concat([train, pd.DataFrame({"image": ["0100.png"], "label": ["three"]})])
    leaked.to_csv(lists["train"], index=False)
    result = run(runner, lists, "deselected=3")
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "'0100.png'" in message and "val.csv" in message and "held-out" in message
    assert not lists["out"].exists()


def test_multilabel_lists_keep_blank_cells_and_use_label_groups(runner, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("image,even,prime\n0000.png,1,0\n0001.png,0,\n0002.png,1,1\n")
    feedback = tmp_path / "image_feedback.csv"
    pd.DataFrame([["0001.png", "", "even", 1, 1, 0, 1]], columns=FEEDBACK_COLUMNS).to_csv(feedback, index=False)
    out = tmp_path / "meta.csv"
    args = ["resample", str(train), str(feedback), "-o", str(out), "--ratio", "deselected=2", "--ratio", "class:prime=3"]
    result = runner.invoke(toolkit, args)
    assert result.exit_code == 0, result.output
    table = read_label_csv(out, "multilabel", allow_duplicates=True)
    assert table.images == ["0000.png", "0001.png", "0001.png", "0002.png", "0002.png", "0002.png"]
    assert np.isnan(table.labels[1, 1]) and np.isnan(table.labels[2, 1])


def test_ratios_that_multiply_past_the_cap_are_a_usage_error(runner, tmp_path):
    """Each ratio is at most 1000, but a row in four groups would get 1000^4 copies: numpy once asked for 7 TiB."""
    train = tmp_path / "train.csv"
    train.write_text("image,a,b,c\n0000.png,1,1,1\n0001.png,0,1,0\n")
    feedback = tmp_path / "image_feedback.csv"
    pd.DataFrame([["0000.png", "a;b;c", "a", 1, 1, 0, 1]], columns=FEEDBACK_COLUMNS).to_csv(feedback, index=False)
    out = tmp_path / "meta.csv"
    ratios = [item for group in ("deselected", "class:a", "class:b", "class:c") for item in ("--ratio", f"{group}=1000")]
    result = runner.invoke(toolkit, ["resample", str(train), str(feedback), "-o", str(out), *ratios])
    assert result.exit_code == 2
    message = one_line_error(result)
    assert "'0000.png'" in message and "deselected, class:a, class:b, class:c" in message and "1e+12" in message
    assert "at most 1000" in message
    assert not out.exists()
