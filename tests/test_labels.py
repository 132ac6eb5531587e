import numpy as np
import pytest

from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.labels import read_label_csv, read_labels, split_table, write_label_csv


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
    with pytest.raises(OptionError, match="--val-split"):
        split_table(table, fraction, seed=0)


@pytest.mark.parametrize("task, text", [("multilabel", "image,a,b\nx.png,1,\ny.png,0,1\n"), ("multiclass", "image,label\nx.png,cat\ny.png,dog\n")])
def test_write_then_read_round_trip(tmp_path, task, text):
    table = read_label_csv(write(tmp_path, text), task)
    write_label_csv(table, tmp_path / "copy.csv")
    again = read_label_csv(tmp_path / "copy.csv", task)
    assert again.images == table.images and again.label_names == table.label_names
    np.testing.assert_array_equal(again.labels, table.labels)


def multiclass_table(counts):
    """A multiclass table with `counts[name]` images of each class."""
    from image_toolkit.data_tools.formats.labels import LabelTable

    names = sorted(counts)
    classes = [name for name in names for _ in range(counts[name])]
    labels = np.eye(len(names), dtype=np.float32)[[names.index(c) for c in classes]]
    return LabelTable([f"{i}.png" for i in range(len(classes))], labels, names, "multiclass")


@pytest.mark.parametrize("rare", [1, 2])
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.6, 0.8])
@pytest.mark.parametrize("seed", range(5))
def test_a_rare_class_keeps_training_images(rare, fraction, seed):
    table = multiclass_table({"common": 40, "other": 20, "rare": rare})
    train, val = split_table(table, fraction, seed=seed)
    assert np.nansum(train.labels, axis=0).min() >= 1
    if rare == 1:
        assert "rare" not in {table.label_names[int(np.argmax(row))] for row in val.labels}


@pytest.mark.parametrize("seed", range(10))
def test_a_rare_multilabel_label_keeps_its_training_positive(tmp_path, seed):
    rows = "".join(f"{i}.png,{i % 2},{int(i in (7, 30))},{int(i == 11)}\n" for i in range(40))
    table = read_label_csv(write(tmp_path, "image,odd,rare2,rare1\n" + rows))
    train, val = split_table(table, 0.3, seed=seed)
    assert (np.nansum(train.labels, axis=0) >= 1).all()
    assert "11.png" in train.images


def test_the_split_is_stratified(tmp_path):
    train, val = split_table(multiclass_table({"a": 25, "b": 25, "c": 25, "d": 25}), 0.2, seed=1)
    np.testing.assert_array_equal(np.nansum(val.labels, axis=0), [5, 5, 5, 5])
    # Multilabel, stratified by the rarest positive label: 'big' (20 rows), else 'odd' (40), else none (40).
    rows = "".join(f"{i}.png,{i % 2},{int(i < 20)}\n" for i in range(100))
    table = read_label_csv(write(tmp_path, "image,odd,big\n" + rows))
    for seed in range(3):
        train, val = split_table(table, 0.2, seed=seed)
        big, odd = val.labels[:, 1] == 1, val.labels[:, 0] == 1
        assert (len(val), big.sum(), (odd & ~big).sum()) == (20, 4, 8)


def test_same_seed_same_stratified_split():
    table = multiclass_table({"a": 30, "b": 12, "c": 2, "d": 1})
    first, again = split_table(table, 0.25, seed=7), split_table(table, 0.25, seed=7)
    assert first[1].images == again[1].images and first[0].images == again[0].images
    assert split_table(table, 0.25, seed=8)[1].images != first[1].images


def test_a_split_of_single_images_is_refused_with_the_reason():
    with pytest.raises(DataError, match="a class with one image stays in training"):
        split_table(multiclass_table({"a": 1, "b": 1, "c": 1}), 0.4, seed=0)


def test_a_metadata_csv_reads_as_a_multiclass_label_csv(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text("image,class,split\nzero/0.png,zero,train\none/1.png,one,test\none/2.png,one,train\n")
    table = read_labels(path)
    assert table.task == "multiclass" and table.label_names == ["one", "zero"]
    assert table.images == ["zero/0.png", "one/1.png", "one/2.png"]
    assert table.labels.tolist() == [[0, 1], [1, 0], [1, 0]]
