"""The one checked-CSV reader behind label CSVs, metadata CSVs and image-list CSVs."""

import pytest

from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.formats.csv_files import read_checked_csv
from image_toolkit.data_tools.formats.labels import read_label_csv, read_labels
from image_toolkit.data_tools.formats.metadata import read_metadata
from image_toolkit.models.extraction import list_images

READERS = {"labels": read_label_csv, "labels, task from the header": read_labels, "metadata": read_metadata, "image list": list_images}
PROBLEMS = [
    (b"", "the file is empty; expected a header row such as"),
    (b"image,class\na.png,x\nb.png,y,1,2\n", "not a readable CSV (Error tokenizing data. C error: Expected 2 fields in line 3, saw 4)"),
    ("image,class\nä.png,x\n".encode("latin-1"), "line 2 is not UTF-8 text; save the file as CSV UTF-8"),
    (b"file,class\na.png,x\n", "no 'image' column (found file, class); the header row of a"),
    (b"image,class\n", "the header is there but no image rows follow"),
]


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
@pytest.mark.parametrize("content, message", PROBLEMS, ids=["empty", "parse", "encoding", "no image", "no rows"])
def test_every_csv_reader_gives_one_line_naming_file_and_fix(tmp_path, reader, content, message):
    path = tmp_path / "list.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        reader(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_required_columns_are_an_argument_and_cells_stay_text(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image , class\n a.png ,NA\nb.png,\n")
    frame = read_checked_csv(path, required=("image", "class"))
    assert frame["image"].tolist() == ["a.png", "b.png"] and frame["class"].tolist() == ["NA", ""]
    with pytest.raises(DataError, match=r"no 'split' column \(found image, class\)"):
        read_checked_csv(path, required=("image", "split"), kind="metadata CSV", example="image,class,split")
    with pytest.raises(DataError, match="nope.csv: metadata CSV not found; make one"):
        read_metadata(tmp_path / "nope.csv")


def test_an_image_list_csv_lists_each_image_once(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("image,other\n a.png,1\nb.png,2\na.png,3\n")
    assert list_images(path) == (tmp_path, ["a.png", "b.png"])
