"""Outputs appear whole or not at all, and folders appear only with their first output."""

import os

import pytest

from image_toolkit.data_tools.atomic import atomic_path, write_text
from image_toolkit.data_tools.errors import DataError


def test_a_failed_write_leaves_no_file_and_no_new_folder(tmp_path):
    target = tmp_path / "runs" / "r50" / "history.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_a_write_replaces_the_old_file_whole(tmp_path):
    target = tmp_path / "out" / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("new, half written")
        raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["a.txt"]
    write_text(target, "new")
    assert target.read_text() == "new"


def test_a_file_where_a_folder_is_expected_is_one_clear_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(DataError, match=r"taken: is a file, not a folder"):
        write_text(tmp_path / "taken" / "sub" / "x.txt", "x")
    with pytest.raises(DataError, match=r"is a folder, not a file"):
        write_text(tmp_path, "x")
    assert (tmp_path / "taken").read_text() == "a file"


def test_an_output_gets_the_mode_of_the_users_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text(tmp_path / "shared.csv", "image\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.csv").stat().st_mode & 0o777 == 0o644
