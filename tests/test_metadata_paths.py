"""Where a metadata CSV's images are: one rule for make-metadata, filter-images, train-siamese, train-simclr, assess.

`image` is the path under the folder the images were listed from, `root` that
folder relative to the CSV's own folder; --img_directory overrides; a CSV
without `root` is read from its folder, or from the one sub-folder holding
its images (an older make-metadata CSV).
"""

import json
import logging
import shutil

import pandas as pd
from click.testing import CliRunner

from image_toolkit.cli.similarity import assess, filter_images, make_metadata, train_siamese, train_simclr
from image_toolkit.data_tools.formats.images import SKIPPED_FILE
from image_toolkit.data_tools.formats.metadata import read_metadata
from image_toolkit.data_tools.make_demo_data import write_digit_folders
from tests.conftest import class_folders, one_line_error

SMALL = ["--backbone", "small_cnn", "--image_size", "32", "--embedding_dim", "16", "--epochs", "1", "--batch_size", "32", "--quiet"]


def invoke(command, *args):
    result = CliRunner().invoke(command, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def run_json(command, *args):
    return json.loads(invoke(command, *args, "--json").stdout.strip().splitlines()[-1])


def files(folder):
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())



def test_the_chain_works_without_options_from_another_working_directory(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    write_digit_folders(project / "photos", n_images=120, image_size=32, seed=1)
    monkeypatch.chdir(project)
    invoke(make_metadata, "photos", "meta.csv", "--test_split", "0.3")
    frame = pd.read_csv(project / "meta.csv")
    assert set(frame["root"]) == {"photos"} and frame["image"].str.match(r"^[a-z]+/\d{4}\.png$").all()

    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    csv = "../project/meta.csv"
    siamese = run_json(train_siamese, csv, "--type", "d", "--output_dir", "siamese", *SMALL)
    assert siamese["n_train"] == (frame["split"] == "train").sum() and "val_recall@1" in siamese
    simclr = run_json(train_simclr, csv, "--output_dir", "simclr", *SMALL)
    assert simclr["n_train"] == siamese["n_train"] and "val_recall@1" in simclr
    model = elsewhere / "siamese" / "embedding_model.keras"
    scores = run_json(assess, model, csv, "--output_dir", "assessed")
    assert scores["images"] == (frame["split"] == "test").sum()
    assert {"similarity_heatmap.png", "query_grid.png"} <= set(files(elsewhere / "assessed"))
    assert not list(elsewhere.rglob(SKIPPED_FILE)) and not list(project.rglob(SKIPPED_FILE))

    # The CSV moves with its images: its root is relative to its own folder.
    shutil.move(project, tmp_path / "moved")
    assert run_json(assess, model, tmp_path / "moved" / "meta.csv", "--output_dir", "moved_assessed")["images"] == scores["images"]


def test_assess_writes_only_under_its_output_dir_and_nothing_when_no_image_reads(tmp_path, monkeypatch):
    photos = write_digit_folders(tmp_path / "photos", n_images=60, image_size=32, seed=2)
    invoke(make_metadata, photos, tmp_path / "meta.csv", "--test_split", "0.5")
    invoke(train_siamese, tmp_path / "meta.csv", "--output_dir", tmp_path / "run", *SMALL)
    model = tmp_path / "run" / "embedding_model.keras"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    # No image found: one line naming the CSV and the fix, and no file written, not even skipped_images.txt.
    result = CliRunner().invoke(assess, [str(model), str(tmp_path / "meta.csv"), "--img_directory", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "meta.csv: no readable image" in message and "file not found" in message and "--img-directory" in message
    assert files(work) == []

    # Some images unreadable: listed in --output_dir only.
    frame = pd.read_csv(tmp_path / "meta.csv")
    broken = frame[frame["split"] == "test"].head(1).assign(image="zero/missing.png")
    pd.concat([frame, broken]).to_csv(tmp_path / "with_missing.csv", index=False)
    invoke(assess, model, tmp_path / "with_missing.csv", "--output_dir", tmp_path / "out")
    assert files(work) == []
    assert "zero/missing.png\tfile not found" in (tmp_path / "out" / SKIPPED_FILE).read_text()


def test_make_metadata_root_is_relative_to_the_csv_folder(tmp_path, monkeypatch):
    class_folders(tmp_path / "data" / "photos", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    cases = {"data/photos/metadata.csv": ".", "data/meta.csv": "photos", "lists/meta.csv": "../data/photos"}
    for csv, root in cases.items():
        invoke(make_metadata, "data/photos", csv)
        frame = read_metadata(csv)
        assert set(pd.read_csv(csv)["root"]) == {root}, csv
        assert all(path.is_file() for path in frame["path"]) and list(frame.columns) == ["image", "class", "split", "path"]
        assert frame["image"].tolist() == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]  # the names features and maps use


def test_filter_images_metadata_sits_beside_its_copies(tmp_path, monkeypatch):
    source = write_digit_folders(tmp_path / "source", n_images=40, image_size=32, seed=3)
    invoke(filter_images, source, tmp_path / "kept", "--min_size", "8", "--min_per_class", "1")
    assert set(pd.read_csv(tmp_path / "kept" / "metadata.csv")["root"]) == {"."}
    monkeypatch.chdir(source)
    frame = read_metadata(tmp_path / "kept" / "metadata.csv")
    assert len(frame) == 40 and all(path.parent.parent == tmp_path / "kept" for path in frame["path"])


def test_img_directory_overrides_the_root_column(tmp_path):
    class_folders(tmp_path / "photos", {"a": 1, "b": 1})
    invoke(make_metadata, tmp_path / "photos", tmp_path / "meta.csv")
    frame = read_metadata(tmp_path / "meta.csv", img_directory=tmp_path / "copy")
    assert frame["path"].tolist() == [tmp_path / "copy" / "a" / "0.png", tmp_path / "copy" / "b" / "0.png"]


def test_a_csv_without_root_is_read_from_its_folder(tmp_path):
    class_folders(tmp_path, {"a": 1})
    (tmp_path / "hand.csv").write_text("image,class\na/0.png,a\n/abs/elsewhere.png,a\n")
    assert read_metadata(tmp_path / "hand.csv")["path"].tolist() == [tmp_path / "a" / "0.png", tmp_path.joinpath("/abs/elsewhere.png")]
    # A blank root cell means the CSV's folder too.
    (tmp_path / "blank.csv").write_text("image,class,root\na/0.png,a,\n")
    assert read_metadata(tmp_path / "blank.csv")["path"].tolist() == [tmp_path / "a" / "0.png"]


def test_an_older_make_metadata_csv_beside_its_image_folder_is_recognised(tmp_path, caplog):
    class_folders(tmp_path / "photos", {"a": 2, "b": 2})
    (tmp_path / "meta.csv").write_text("image,class,split\na/0.png,a,train\na/1.png,a,test\nb/0.png,b,train\nb/1.png,b,test\n")
    (tmp_path / "runs").mkdir()  # Other sub-folders without the images do not count.
    with caplog.at_level(logging.WARNING):
        frame = read_metadata(tmp_path / "meta.csv")
    assert frame["path"].tolist()[0] == tmp_path / "photos" / "a" / "0.png"
    assert "older make-metadata" in caplog.text and f"--img-directory {tmp_path / 'photos'}" in caplog.text

    # Two sub-folders that could be the root: no guess, the CSV's folder (and the error names the fix).
    class_folders(tmp_path / "copy", {"a": 2, "b": 2})
    assert read_metadata(tmp_path / "meta.csv")["path"].tolist()[0] == tmp_path / "a" / "0.png"


def test_an_older_csv_fails_in_training_with_the_fix(tmp_path):
    class_folders(tmp_path / "photos", {"a": 2})
    class_folders(tmp_path / "copy", {"a": 2})
    (tmp_path / "meta.csv").write_text("image,class\na/0.png,a\na/1.png,a\n")
    result = CliRunner().invoke(train_siamese, [str(tmp_path / "meta.csv"), "--output_dir", str(tmp_path / "run"), *SMALL])
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "meta.csv: no readable image" in message and "pass --img-directory" in message
    assert not (tmp_path / "run" / SKIPPED_FILE).exists()
