"""Feature files: the four formats round-trip, bad files fail with their name, shards merge."""

import json
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import FeatureSet, merge_features, read_features, write_features
from image_toolkit.data_tools.provenance import toolkit_version

METADATA = {"model": "resnet50", "layer": "avg_pool", "image_size": 224, "weights": "imagenet"}


def feature_set(n=6, dim=4, start=0, **metadata):
    rng = np.random.default_rng(start)
    paths = [f"class_{i % 2}/image_{i:03d}.png" for i in range(start, start + n)]
    return FeatureSet(paths, rng.random((n, dim), dtype=np.float32), {**METADATA, **metadata})


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".pkl", ".feat"])
def test_every_format_round_trips(tmp_path, suffix):
    written = feature_set()
    write_features(tmp_path / f"features{suffix}", written)
    read = read_features(tmp_path / f"features{suffix}")
    assert read.paths == written.paths
    assert read.features.dtype == np.float32
    np.testing.assert_array_equal(read.features, written.features)
    assert read.metadata == {**METADATA, "toolkit_version": toolkit_version()}  # The version every artifact records.
    assert [path.name for path in tmp_path.iterdir()] == [f"features{suffix}"]  # No temporary left.


def test_original_pickle_of_float64_features_loads_as_float32(tmp_path):
    target = tmp_path / "features.pkl"
    content = {"paths": ["a.png", "b.png"], "features": np.ones((2, 3)), "metadata": {"scale": np.float32(2)}}
    target.write_bytes(pickle.dumps(content, protocol=2))
    read = read_features(target)
    assert read.features.dtype == np.float32 and read.metadata == {"scale": 2.0}
    # Plain arrays and numpy scalars of every kind a feature pickle holds, in the oldest and the newest protocol.
    content = {"paths": np.array(["a.png", "b.png"]), "features": np.ones((2, 3), dtype=np.float16),
               "metadata": {"scale": np.float64(2), "count": np.int64(3), "flag": np.bool_(True)}}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        target.write_bytes(pickle.dumps(content, protocol=protocol))
        read = read_features(target)
        assert read.paths == ["a.png", "b.png"] and read.features.dtype == np.float32
        assert read.metadata == {"scale": 2.0, "count": 3, "flag": True}


class RunsCode:
    def __reduce__(self):
        return os.system, ("touch hacked",)


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "features.pkl"
    target.write_bytes(pickle.dumps({"paths": ["a.png"], "features": RunsCode()}))
    with pytest.raises(DataError, match=r"features.pkl: refused to load: the pickle calls posix.system"):
        read_features(target)
    assert not (tmp_path / "hacked").exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"paths": np.array(["a"] * 5), "features": np.ones(5)},
            r"expected a 2-D float array 'features' \(N x D\), got shape \(5,\)",
        ),
        (
            {"paths": np.array(["a", "b"]), "features": np.array([[1.0], [np.nan]])},
            r"'features' holds NaN or infinity in 1 of 2 rows \(first: row 1\)",
        ),
        (
            {"paths": np.array(["a"]), "features": np.array([[np.inf]])},
            r"NaN or infinity in 1 of 1 rows \(first: row 0\)",
        ),
        ({"paths": np.array([], dtype=str), "features": np.ones((0, 4))}, r"'features' is empty"),
        ({"paths": np.array(["a"]), "features": np.ones((2, 3))}, r"1 paths for 2 rows"),
        ({"paths": np.array(["a"]), "features": np.array([["x"]])}, r"expected a 2-D float array.*dtype <U1"),
        ({"features": np.ones((2, 3))}, r"expected arrays 'paths' and 'features'"),
    ],
)
def test_bad_content_names_the_file_and_the_fix(tmp_path, arrays, message):
    target = tmp_path / "features.npz"
    np.savez(target, **arrays)
    with pytest.raises(DataError, match=message) as raised:
        read_features(target)
    assert str(raised.value).startswith("features.npz: ") and "get-transfer-layer" in str(raised.value)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".pkl"])
def test_a_file_of_another_kind_is_not_a_feature_file(tmp_path, suffix):
    target = tmp_path / f"notes{suffix}"
    target.write_text("just some text\n")
    with pytest.raises(DataError, match=rf"notes\{suffix}: not a \{suffix} feature file"):
        read_features(target)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="feature file not found"):
        read_features(tmp_path / "missing.npz")
    with pytest.raises(OptionError, match=r"Expected a name ending in .npz, .h5, .pkl or .feat \(a feature folder\). Received: '.csv'"):
        read_features(tmp_path / "features.csv")
    with pytest.raises(OptionError, match="unknown feature file type"):
        write_features(tmp_path / "features.txt", feature_set())


def test_invalid_features_are_never_written(tmp_path):
    bad = FeatureSet(["a.png"], np.full((1, 3), np.nan, dtype=np.float32), {})
    with pytest.raises(DataError, match="NaN"):
        write_features(tmp_path / "features.npz", bad)
    assert list(tmp_path.iterdir()) == []


def test_shards_merge_into_what_one_file_holds(tmp_path):
    whole = feature_set(n=10)
    for index, rows in enumerate([slice(0, 4), slice(4, 7), slice(7, 10)]):
        shard = FeatureSet(
            whole.paths[rows], whole.features[rows], {**whole.metadata, "num_shards": 3, "shard_index": index}
        )
        write_features(tmp_path / f"shard_{index}.h5", shard)
    summary = merge_features([tmp_path / f"shard_{index}.h5" for index in range(3)], tmp_path / "merged.npz")
    assert summary["images"] == 10 and summary["duplicates"] == 0
    merged = read_features(tmp_path / "merged.npz")
    assert merged.paths == whole.paths
    np.testing.assert_array_equal(merged.features, whole.features)
    assert "shard_index" not in merged.metadata and merged.metadata["layer"] == "avg_pool"


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ([(4, 0), (4, 2), (4, 3)], r"^shard_0.npz: 3 of 4 shards given \(missing shard_index 1\); merge every shard"),
        ([(4, 0), (4, 2)], r"^shard_0.npz: 2 of 4 shards given \(missing shard_index 1, 3\)"),
        ([(2, 0), (2, 1), (2, 1)], r"^shard_2.npz: shard_index 1 again \(also in shard_1.npz\); give each shard once"),
        ([(2, 0), (3, 1)], r"^shard_1.npz: num_shards 3, but shard_0.npz has num_shards 2; merge only the shards of one"),
        ([(2, 0), (2, 2)], r"^shard_1.npz: shard_index 2 is not one of num_shards 2"),
    ],
)
def test_merge_refuses_shards_that_are_not_one_complete_run(tmp_path, shards, message):
    for index, (count, shard_index) in enumerate(shards):
        write_features(tmp_path / f"shard_{index}.npz", feature_set(n=3, start=3 * index, num_shards=count, shard_index=shard_index))
    with pytest.raises(DataError, match=message):
        merge_features([tmp_path / f"shard_{index}.npz" for index in range(len(shards))], tmp_path / "merged.feat")
    assert not (tmp_path / "merged.feat").exists()


def test_merge_takes_files_without_shard_metadata_beside_one_complete_run(tmp_path):
    """A merged file (no shard metadata) plus every shard of a new run: the completeness check counts the shards only."""
    write_features(tmp_path / "old.npz", feature_set(n=3))
    for index in range(2):
        write_features(tmp_path / f"shard_{index}.npz", feature_set(n=3, start=3 + 3 * index, num_shards=2, shard_index=index))
    summary = merge_features([tmp_path / name for name in ("old.npz", "shard_1.npz", "shard_0.npz")], tmp_path / "all.npz")
    assert summary["images"] == 9


def test_merge_with_a_missing_input_names_it_and_writes_nothing(tmp_path):
    write_features(tmp_path / "shard-0.feat", feature_set())
    with pytest.raises(DataError, match=r"shard-1.feat: not found \(and 1 more of the 3 inputs\); merge needs every shard"):
        merge_features([tmp_path / name for name in ("shard-0.feat", "shard-1.feat", "shard-2.feat")], tmp_path / "all.feat")
    assert not (tmp_path / "all.feat").exists()


def test_merge_keeps_the_first_of_duplicate_paths(tmp_path, caplog):
    first, second = feature_set(n=4), feature_set(n=4, start=2)
    write_features(tmp_path / "a.npz", first)
    write_features(tmp_path / "b.npz", second)
    with caplog.at_level(logging.WARNING):
        merge_features([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "merged.h5")
    merged = read_features(tmp_path / "merged.h5")
    assert merged.paths == first.paths + second.paths[2:]
    np.testing.assert_array_equal(merged.features[:4], first.features)
    assert "Kept the first of 2 duplicate paths (first: class_0/image_002.png)" in caplog.text


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (feature_set(dim=5, start=10), r"b.npz: 5 features per row, but a.npz has 4"),
        (feature_set(start=10, layer="conv5"), r"b.npz: layer='conv5', but a.npz has layer='avg_pool'"),
    ],
)
def test_merge_refuses_shards_of_different_runs(tmp_path, other, message):
    write_features(tmp_path / "a.npz", feature_set())
    write_features(tmp_path / "b.npz", other)
    with pytest.raises(DataError, match=message):
        merge_features([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "merged.npz")
    assert not (tmp_path / "merged.npz").exists()


class OverlappingDtype:
    """A structured dtype whose object field lies over an integer field, flagged as holding references, not as a list pickle.

    Built only from pieces the loader allows (numpy.dtype and its state):
    an array of it turns raw bytes into object pointers.
    """

    def __reduce__(self):
        fields = {"pointer": (np.dtype("O"), 0), "number": (np.dtype("<i8"), 0)}
        return np.dtype, ("V8", False, True), (3, "|", None, ("pointer", "number"), fields, 8, 1, 1)


class FlaggedFloat:
    """A plain float64 whose state sets numpy's 'holds objects' flags: its values would be read as pointers."""

    def __reduce__(self):
        return np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 0x3F)


class RawArray:
    """An array of a crafted dtype from raw bytes, pickled as numpy pickles arrays (_reconstruct, then its state)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy.(_)core.multiarray._reconstruct
        return reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), self.dtype, False, b"\x41" * 16)


@pytest.mark.parametrize("what", ["array", "dtype", "flagged array", "flagged dtype"])
def test_pickle_of_a_structured_or_object_dtype_is_refused_before_an_array_is_built(tmp_path, what):
    """A crafted dtype whose object field overlaps raw bytes, or a float flagged as objects: one line, no segfault
    (run apart, so a crash fails the test)."""
    target = tmp_path / "features.pkl"
    crafted = FlaggedFloat() if what.startswith("flagged") else OverlappingDtype()
    features = RawArray(crafted) if what.endswith("array") else np.ones((2, 3), dtype=np.float32)
    content = {"paths": ["a.png", "b.png"], "features": features, "metadata": {"dtype": crafted}}
    target.write_bytes(pickle.dumps(content, protocol=2))
    assert b"_codecs\nencode" in target.read_bytes()  # The pieces of the report: numpy.dtype, _reconstruct, _codecs.encode.
    code = ("from image_toolkit.data_tools.formats.features import read_features\n"
            "from image_toolkit.data_tools.errors import DataError\n"
            f"try:\n    read_features({str(target)!r})\nexcept DataError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.startswith("features.pkl: refused to load: the pickle holds an array of dtype "), done.stdout
    assert "only plain numeric and text arrays" in done.stdout and len(done.stdout.splitlines()) == 1


def model_project(root):
    """A project folder: a model file (any bytes do: only its path is read here) and features of it."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "best_model.h5").write_bytes(b"model")
    return root / "models" / "best_model.h5"


MODEL_FILE = {"output": "pooled", "layer": "head_dense", "image_size": 32, "weights": "model file"}


def test_a_model_file_is_found_again_when_the_features_move_with_it(tmp_path, monkeypatch):
    model = model_project(tmp_path / "project")
    write_features(tmp_path / "project" / "features.npz", feature_set(**MODEL_FILE, model=str(model)))
    (tmp_path / "project").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    read = read_features(tmp_path / "moved" / "features.npz")
    assert read.metadata["model"] == str((tmp_path / "moved" / "models" / "best_model.h5").resolve())
    assert read.metadata["model_relative"] == "models/best_model.h5"


def test_a_relative_model_path_recorded_by_an_older_version_is_found_from_another_folder(tmp_path, monkeypatch):
    model_project(tmp_path / "project")
    older = feature_set(**MODEL_FILE, model="models/best_model.h5")
    np.savez(tmp_path / "project" / "features.npz", paths=np.array(older.paths), features=older.features,
             metadata=np.array(json.dumps(older.metadata)))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    read = read_features(tmp_path / "project" / "features.npz")
    assert read.metadata["model"] == str((tmp_path / "project" / "models" / "best_model.h5").resolve())



def test_a_model_under_the_working_folder_is_shown_relative_and_recorded_absolute(tmp_path, monkeypatch):
    from image_toolkit.data_tools.formats.features import MODEL_FILE_WEIGHTS, shown_model

    monkeypatch.chdir(tmp_path)
    inside = {"model": str(tmp_path / "runs" / "best_model.h5"), "weights": MODEL_FILE_WEIGHTS}
    outside = {"model": "/elsewhere/best_model.h5", "weights": MODEL_FILE_WEIGHTS}
    assert shown_model(inside)["model"] == "runs/best_model.h5"
    assert shown_model(outside) == outside and shown_model({"model": "pixels", "weights": "none"})["model"] == "pixels"
