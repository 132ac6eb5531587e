"""An index folder changes as one unit: a crash at any step of a save leaves the old index or the new one, never refused.

Each test stops a save at its n-th disk step (a file of the new set flushed,
the manifest written, an old set or file removed) by raising an exception
no cleanup handles, as a kill would, for every n until the save completes.
After each stop the folder must load, as the old index or the new one, and
a later save must complete and leave only the current set behind.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from image_toolkit.data_tools.formats.features import FeatureSet
from image_toolkit.data_tools.search import index as index_module
from image_toolkit.data_tools.search.index import ImageIndex

METADATA = {"model": "pixels", "output": "pooled", "layer": "pixels", "image_size": 4, "weights": "none"}
OLD, NEW = 40, 60


class Crash(BaseException):
    """A stop that no `except Exception` or `except OSError` catches: only `finally` blocks run, as for no kill."""


def rows(n: int, start: int = 0) -> FeatureSet:
    features = np.random.default_rng(start).standard_normal((n, 8)).astype(np.float32)
    return FeatureSet([f"{start + i:04d}.png" for i in range(n)], features, dict(METADATA))


def crash_at(monkeypatch, step: int) -> list[str]:
    """Make the `step`-th disk step of a save raise Crash (0: the first); returns the steps seen, in order."""
    seen = []

    def counted(name, function):
        def wrapper(*args, **kwargs):
            seen.append(name)
            if len(seen) > step:
                raise Crash(name)
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(index_module, "flush_to_disk", counted("flush", index_module.flush_to_disk))
    monkeypatch.setattr(os, "replace", counted("replace", os.replace))
    monkeypatch.setattr(shutil, "rmtree", counted("remove set", shutil.rmtree))
    monkeypatch.setattr(Path, "unlink", counted("remove file", Path.unlink))
    return seen


def to_old_layout(folder: Path) -> None:
    """The layout toolkit versions before the manifest wrote: the four files at the folder's top level."""
    for path in (folder / "set-1").iterdir():
        path.rename(folder / path.name)
    (folder / "set-1").rmdir()
    (folder / "index.json").unlink()


def saved(folder: Path, layout: str) -> Path:
    ImageIndex(kind="flat").fit(rows(OLD)).save(folder)
    if layout == "old layout":
        to_old_layout(folder)
    return folder


def test_an_index_folder_of_the_old_layout_loads_and_moves_to_the_manifest(tmp_path):
    folder = saved(tmp_path / "index", "old layout")
    loaded = ImageIndex.load(folder)
    assert loaded.size == OLD and loaded.paths_[0] == "0000.png"
    loaded.add(rows(NEW - OLD, start=OLD)).save(folder)
    assert sorted(path.name for path in folder.iterdir()) == ["index.json", "set-1"]
    assert ImageIndex.load(folder).size == NEW


@pytest.mark.parametrize("layout", ["manifest", "old layout"])
def test_a_crash_at_any_step_of_a_save_leaves_the_old_or_the_new_index(tmp_path, monkeypatch, layout):
    old_index = saved(tmp_path / "old", layout)
    steps = None
    for step in range(100):
        folder = tmp_path / f"crash{step}"
        shutil.copytree(old_index, folder)
        grown = ImageIndex.load(folder).add(rows(NEW - OLD, start=OLD))
        with monkeypatch.context() as patched:
            seen = crash_at(patched, step)
            try:
                grown.save(folder)
            except Crash:
                pass
            else:
                steps = seen
        assert ImageIndex.load(folder).size in (OLD, NEW), f"after step {step} ({seen})"
        ImageIndex.load(folder).add(rows(NEW - OLD, start=OLD)).save(folder)  # The run again, to the end.
        assert ImageIndex.load(folder).size == NEW
        assert sorted(path.name for path in folder.iterdir())[0] == "index.json"
        assert len(list(folder.iterdir())) == 2, sorted(path.name for path in folder.iterdir())
        if steps is not None:
            break
    # Four files and the set's folder flushed, the manifest moved in, the old set (or the old layout's four files) removed.
    assert steps[:6] == ["flush"] * 5 + ["replace"] and len(steps) >= 7, steps


def test_a_crash_before_the_manifest_leaves_the_old_index_and_the_first_crash_after_it_the_new(tmp_path, monkeypatch):
    folder = tmp_path / "index"
    ImageIndex(kind="flat").fit(rows(OLD)).save(folder)
    grown = ImageIndex.load(folder).add(rows(NEW - OLD, start=OLD))
    for step, size in ((5, OLD), (6, NEW)):
        with monkeypatch.context() as patched:
            crash_at(patched, step)
            with pytest.raises(Crash):
                grown.save(folder)
        assert ImageIndex.load(folder).size == size


def test_a_failed_save_into_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Error in faiss::FileIOWriter::FileIOWriter: No space left on device")

    monkeypatch.setattr(index_module.faiss, "write_index", refuse)
    with pytest.raises(index_module.DataError, match="cannot write here .*No space left on device"):
        ImageIndex(kind="flat").fit(rows(OLD)).save(tmp_path / "new" / "index")
    assert list(tmp_path.iterdir()) == []


def test_a_save_into_a_folder_of_the_users_own_files_removes_none_of_them(tmp_path):
    """Only what the index wrote is cleaned up: a user's `set-1/` of photos and own `metadata.json` stay."""
    folder = tmp_path / "photos"
    (folder / "set-1").mkdir(parents=True)
    (folder / "set-1" / "beach.png").write_bytes(b"png")
    (folder / "set-2").mkdir()
    (folder / "set-2" / "paths.json").write_text("[]")  # An index file's name, beside a user's file: still the user's.
    (folder / "set-2" / "notes.txt").write_text("mine")
    (folder / "metadata.json").write_text("{}")
    ImageIndex(kind="flat").fit(rows(OLD)).save(folder)
    ImageIndex.load(folder).add(rows(NEW - OLD, start=OLD)).save(folder)
    assert (folder / "set-1" / "beach.png").exists() and (folder / "set-2" / "notes.txt").exists()
    assert (folder / "metadata.json").read_text() == "{}"
    assert ImageIndex.load(folder).size == NEW
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("set-")) == ["set-1", "set-2", "set-4"]
