import numpy as np
import pytest

from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.labels import read_label_csv, split_table, write_label_csv


def write(tmp_path, text, name="label.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_multilabel_with_blank_cells(tmp_path):
    path = write(tmp_path, "image, even, prime\na.png,1,0\nb.png,,1\nc.png,0,\n")
    table = read_label_csv(path)
    assert table.images == ["a.png", "b.png", "c.png"]
    assert table.label_names == ["even", "prime"]
    np.testing.assert_array_equal(table.labels, [[1, 0], [np.nan, 1], [0, np.nan]])


def test_reads_multiclass_as_one_hot(tmp_path):
    path = write(tmp_path, "image,label\na.png,kitchen\nb.png,bedroom\nc.png,\n")
    table = read_label_csv(path, "multiclass")
    assert table.label_names == ["bedroom", "kitchen"]
    np.testing.assert_array_equal(table.labels, [[0, 1], [1, 0], [np.nan, np.nan]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file is empty"),
        ("file,even\na.png,1\n", "no 'image' column"),
        ("image,even\n", "no image rows"),
        ("image,even\na.png,1\nb.png,2\n", "line 3, column 'even': value '2' is not a label"),
        ("image,even\na.png,1\na.png,0\n", "'a.png' is listed more than once (lines 2, 3)"),
        ("image\na.png\n", "no label columns"),
    ],
)
def test_bad_csv_names_file_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        read_label_csv(path)
    assert str(path) in str(error.value)


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match="label CSV not found"):
        read_label_csv(tmp_path / "nope.csv")


def test_resampled_lists_may_repeat_rows(tmp_path):
    path = write(tmp_path, "image,even\na.png,1\na.png,1\nb.png,0\n")
    assert len(read_label_csv(path, allow_duplicates=True)) == 3


def test_split_is_reproducible_and_disjoint(tmp_path):
    rows = "".join(f"{i}.png,{i % 2}\n" for i in range(50))
    table = read_label_csv(write(tmp_path, "image,odd\n" + rows))
    train, val = split_table(table, 0.2, seed=3)
    again_train, again_val = split_table(table, 0.2, seed=3)
    assert val.images == again_val.images and train.images == again_train.images
    assert len(val) == 10 and not set(train.images) & set(val.images)
    assert split_table(table, 0.2, seed=4)[1].images != val.images


def test_multiclass_split_keeps_every_class_in_both_parts(tmp_path):
    rows = "".join(f"{i}.png,{'rare' if i < 5 else 'common'}\n" for i in range(50))
    table = read_label_csv(write(tmp_path, "image,label\n" + rows), "multiclass")
    train, val = split_table(table, 0.2, seed=0)
    assert np.nansum(val.labels, axis=0).min() >= 1 and np.nansum(train.labels, axis=0).min() >= 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_refuses_impossible_fraction(tmp_path, fraction):
    table = read_label_csv(write(tmp_path, "image,odd\na.png,1\nb.png,0\n"))
    with pytest.raises(OptionError, match="--val_split"):
        split_table(table, fraction, seed=0)


@pytest.mark.parametrize("task, text", [("multilabel", "image,a,b\nx.png,1,\ny.png,0,1\n"), ("multiclass", "image,label\nx.png,cat\ny.png,dog\n")])
def test_write_then_read_round_trip(tmp_path, task, text):
    table = read_label_csv(write(tmp_path, text), task)
    write_label_csv(table, tmp_path / "copy.csv")
    again = read_label_csv(tmp_path / "copy.csv", task)
    assert again.images == table.images and again.label_names == table.label_names
    np.testing.assert_array_equal(again.labels, table.labels)
