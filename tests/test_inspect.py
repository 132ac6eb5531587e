"""toolkit inspect and filter-images --drop-duplicates --drop-outliers, on 200 digits with planted problems.

The planted set (module fixture): 10 digits copied resized (to 40-58 px) and
re-saved as JPEG q=90 beside their originals, one exact byte copy, one text
file named .png (unreadable), one noise image in a class folder (the outlier).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_toolkit.cli.inspect import DUPLICATE_DISTANCE, inspect
from image_toolkit.cli.similarity import filter_images
from image_toolkit.data_tools import inspect as library
from image_toolkit.data_tools.formats.features import FeatureSet, write_features
from image_toolkit.data_tools.make_demo_data import write_digit_folders
from tests.conftest import one_line_error

N_COPIES = 10


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The digit folders with the planted files; returns (folder, planted groups as sets of names)."""
    root = write_digit_folders(tmp_path_factory.mktemp("inspect") / "digits", n_images=200, image_size=32, seed=0)
    originals = sorted(path for path in root.rglob("*.png"))
    groups = []
    for i, path in enumerate(originals[:: len(originals) // N_COPIES][:N_COPIES]):
        side = 40 + 2 * i
        copy = path.with_name(f"copy{i}.jpg")
        Image.open(path).convert("RGB").resize((side, side), Image.BICUBIC).save(copy, quality=90)
        groups.append({path.relative_to(root).as_posix(), copy.relative_to(root).as_posix()})
    exact = originals[-1].with_name("exact_copy.png")
    shutil.copyfile(originals[-1], exact)
    groups.append({originals[-1].relative_to(root).as_posix(), exact.relative_to(root).as_posix()})
    (root / "zero" / "broken.png").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "three" / "noise.png")
    return root, groups


@pytest.fixture(scope="module")
def inspected(planted, tmp_path_factory):
    from click.testing import CliRunner

    root, _ = planted
    output = tmp_path_factory.mktemp("inspected") / "out"
    result = CliRunner().invoke(inspect, [str(root), "--output-dir", str(output)])
    assert result.exit_code == 0, result.output
    return output, result.output


def test_planted_near_duplicates_are_found_with_recall_one_and_no_false_group(planted, inspected):
    _, groups = planted
    found = pd.read_csv(inspected[0] / "duplicates.csv")
    found_groups = [set(group["image"]) for _, group in found.groupby("group")]
    assert sorted(map(sorted, found_groups)) == sorted(map(sorted, groups))  # each planted pair, nothing else
    near = found[found["image"].str.contains("copy[0-9]", regex=True)]
    assert set(near["kind"]) == {"near"} and (near["distance"] < DUPLICATE_DISTANCE).all()


def test_the_exact_copy_is_found_by_its_hash(inspected):
    found = pd.read_csv(inspected[0] / "duplicates.csv")
    group = found[found["group"] == found.loc[found["image"].str.endswith("exact_copy.png"), "group"].item()]
    assert list(group["kind"]) == ["first", "exact"] and list(group["distance"]) == [0, 0]
    assert json.loads((inspected[0] / "inspect.json").read_text())["exact_duplicate_groups"] == 1


def test_the_unreadable_file_is_listed_with_its_reason(inspected):
    report = json.loads((inspected[0] / "inspect.json").read_text())
    assert [item["image"] for item in report["unreadable"]] == ["zero/broken.png"]
    assert "cannot decode" in report["unreadable"][0]["reason"]
    assert report["images"] == 200 + N_COPIES + 3 and report["readable"] == 200 + N_COPIES + 2


def test_class_counts_are_the_files_in_each_folder(planted, inspected):
    root, _ = planted
    report = json.loads((inspected[0] / "inspect.json").read_text())
    assert report["classes"] == {folder.name: len(list(folder.iterdir())) for folder in root.iterdir()}
    assert report["formats"] == {"JPEG": N_COPIES, "PNG": 200 + 2}


def test_the_noise_image_is_the_top_outlier(inspected):
    ranked = pd.read_csv(inspected[0] / "outliers.csv")
    assert ranked.loc[0, "image"] == "three/noise.png" and ranked.loc[0, "rank"] == 1
    assert ranked.loc[0, "score"] > 1.5 * ranked.loc[1, "score"]  # far ahead of the worst real digit


def test_outputs_and_summary(inspected):
    output, printed = inspected
    assert {path.name for path in output.iterdir()} == {
        "inspect.json", "duplicates.csv", "outliers.csv", "class_counts.png", "sizes.png", "outliers.png", "duplicates.png"}
    assert "      11  duplicate groups" in printed and "zero/broken.png" in printed


def test_features_file_gives_the_same_groups_and_json(planted, tmp_path, runner):
    """A feature file is matched by image name: rows written in reverse order still find the same groups."""
    root, groups = planted
    images = library.image_set(root)
    readable = [(name, path) for name, path in zip(images.names, images.paths) if "broken" not in name][::-1]
    rows = library.pixel_features([path for _, path in readable])
    write_features(tmp_path / "f.npz", FeatureSet([name for name, _ in readable], rows, {"model": "pixels"}))
    result = runner.invoke(inspect, [str(root), "--features", str(tmp_path / "f.npz"), "--output-dir", str(tmp_path / "o"),
                                     "--outliers", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["duplicate_groups"] == len(groups) and report["outliers"] == []


def test_the_cli_default_distance_is_the_library_one():
    assert DUPLICATE_DISTANCE == library.DUPLICATE_DISTANCE


def test_filter_images_drops_duplicates_and_outliers_and_counts_each_step(planted, tmp_path, runner):
    root, groups = planted
    result = runner.invoke(filter_images, [str(root), str(tmp_path / "kept"), "--min-size", "8", "--min-per-class", "1",
                                           "--drop-duplicates", "--drop-outliers", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    counts = [step["images"] for step in json.loads(result.stdout)["steps"]]
    readable = 200 + N_COPIES + 2
    # found, readable, size, duplicates (one of each group goes), outliers (1% of 201, rounded down), classes
    assert counts == [readable + 1, readable, readable, readable - len(groups), readable - len(groups) - 2,
                      readable - len(groups) - 2]
    kept = {path.name for path in (tmp_path / "kept").rglob("*.*")}
    assert "noise.png" not in kept and not any(name.startswith("copy") or name == "exact_copy.png" for name in kept)


# --- Bad input: one line, the right exit code, nothing written ---------------------------------------


def test_inspect_on_an_empty_folder(tmp_path, runner):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(inspect, [str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no image files" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_inspect_on_only_unreadable_files(tmp_path, runner):
    (tmp_path / "bad").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "bad" / name).write_text("text")
    result = runner.invoke(inspect, [str(tmp_path / "bad"), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no readable image (first: a.png: cannot decode" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_inspect_with_features_of_other_images(planted, tmp_path, runner):
    root, _ = planted
    write_features(tmp_path / "f.npz", FeatureSet(["other/0.png"], np.ones((1, 4), np.float32), {}))
    result = runner.invoke(inspect, [str(root), "--features", str(tmp_path / "f.npz"), "--output-dir", str(tmp_path / "out")])
    error = one_line_error(result)
    assert result.exit_code == 1 and "f.npz" in error and "first: eight/" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fraction", ["1", "-0.1", "1.5"])
def test_filter_images_drop_outliers_outside_0_1(planted, tmp_path, runner, fraction):
    root, _ = planted
    result = runner.invoke(filter_images, [str(root), str(tmp_path / "kept"), "--drop-outliers", fraction])
    assert result.exit_code == 2 and "--drop-outliers" in one_line_error(result)
    assert not (tmp_path / "kept").exists()


def test_a_metadata_csv_gives_the_same_report_as_its_folder(planted, inspected, tmp_path, runner):
    from image_toolkit.data_tools.formats.metadata import make_metadata

    root, _ = planted
    make_metadata(root, tmp_path / "metadata.csv")
    result = runner.invoke(inspect, [str(tmp_path / "metadata.csv"), "--output-dir", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    report, folder_report = json.loads(result.stdout), json.loads((inspected[0] / "inspect.json").read_text())
    for key in ("images", "readable", "classes", "duplicate_groups", "outliers"):
        assert report[key] == folder_report[key], key
    assert [item["image"] for item in report["unreadable"]] == ["zero/broken.png"]  # the reason names the path read
