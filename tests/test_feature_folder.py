"""Features bigger than memory: the .feat folder layout, lazy opening, block reads, streaming writes and merges."""

import json
import shutil
import tracemalloc
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest

from image_toolkit.cli.extract import get_transfer_layer
from image_toolkit.cli.features import merge_features as merge_command
from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.formats import features as formats
from image_toolkit.data_tools.formats.features import (
    FeatureSet,
    feature_blocks,
    merge_features,
    open_features,
    read_features,
    write_feature_blocks,
    write_features,
)
from tests.conftest import one_line_error

METADATA = {"model": "resnet50", "layer": "avg_pool", "image_size": 224, "weights": "imagenet"}


def feature_set(n=6, dim=4, start=0):
    rows = np.random.default_rng(start).random((n, dim), dtype=np.float32)
    return FeatureSet([f"class_{i % 2}/image_{i:05d}.png" for i in range(start, start + n)], rows, dict(METADATA))


def raw_folder(folder, features, paths, metadata=None):
    """A feature folder written by hand, to damage one piece of it."""
    folder.mkdir()
    np.save(folder / "features.npy", features)
    (folder / "paths.txt").write_text("".join(f"{path}\n" for path in paths), encoding="utf-8")
    (folder / "metadata.json").write_text(json.dumps(metadata or METADATA))
    return folder


def test_the_folder_holds_a_plain_npy_one_path_a_line_and_json(tmp_path):
    written = feature_set()
    write_features(tmp_path / "features.feat", written)
    folder = tmp_path / "features.feat"
    assert sorted(entry.name for entry in folder.iterdir()) == ["features.npy", "metadata.json", "paths.txt"]
    np.testing.assert_array_equal(np.load(folder / "features.npy"), written.features)
    assert (folder / "paths.txt").read_text(encoding="utf-8").split("\n") == [*written.paths, ""]
    assert json.loads((folder / "metadata.json").read_text())["layer"] == "avg_pool"
    assert [entry.name for entry in tmp_path.iterdir()] == ["features.feat"]  # No staging folder left.


def test_open_features_leaves_a_folder_or_h5_on_disk_and_blocks_read_it(tmp_path):
    written = feature_set(n=10)
    for suffix in (".feat", ".h5", ".npz"):
        write_features(tmp_path / f"f{suffix}", written)
    folder, h5, npz = (open_features(tmp_path / f"f{suffix}") for suffix in (".feat", ".h5", ".npz"))
    assert isinstance(folder.features, np.memmap) and not folder.features.flags.writeable
    assert isinstance(h5.features, h5py.Dataset) and h5.features.chunks == (10, 4)
    assert type(npz.features) is np.ndarray
    for opened in (folder, h5, npz):
        assert opened.paths == written.paths and opened.features.shape == (10, 4)
        blocks = list(feature_blocks(opened.features, rows=4))
        assert [start for start, _ in blocks] == [0, 4, 8]
        np.testing.assert_array_equal(np.concatenate([block for _, block in blocks]), written.features)
    assert type(read_features(tmp_path / "f.feat").features) is np.ndarray  # read_features: in memory, writable.


def test_h5_is_written_in_chunks_of_rows_and_an_old_contiguous_one_still_opens(tmp_path):
    write_features(tmp_path / "wide.h5", feature_set(n=3000, dim=512))
    with h5py.File(tmp_path / "wide.h5") as content:
        assert content["features"].chunks == (512, 512)  # About 1 MiB a chunk.
    old = feature_set(n=5)
    with h5py.File(tmp_path / "old.h5", "w") as content:
        content.create_dataset("paths", data=old.paths, dtype=h5py.string_dtype("utf-8"))
        content.create_dataset("features", data=old.features)
        content.attrs["metadata"] = json.dumps(old.metadata)
    opened = open_features(tmp_path / "old.h5")
    assert opened.features.chunks is None
    np.testing.assert_array_equal(next(feature_blocks(opened.features))[1], old.features)


def test_float16_and_float64_rows_are_accepted_and_read_as_float32(tmp_path):
    for dtype in (np.float16, np.float64):
        rows = np.arange(12, dtype=dtype).reshape(6, 2)
        opened = open_features(raw_folder(tmp_path / f"{np.dtype(dtype).name}.feat", rows, [f"{i}.png" for i in range(6)]))
        assert opened.features.dtype == dtype
        (_, block), = feature_blocks(opened.features)
        assert block.dtype == np.float32 and block.tolist() == rows.tolist()


def test_a_non_finite_value_is_named_by_its_row_in_the_file(tmp_path):
    rows = np.ones((12, 3), dtype=np.float32)
    rows[10, 1] = np.nan
    opened = open_features(raw_folder(tmp_path / "f.feat", rows, [f"{i}.png" for i in range(12)]))  # Opening reads no value.
    with pytest.raises(DataError, match=r"^f.feat rows 8-11: 'features' holds NaN or infinity in 1 of 4 rows \(first: row 10\)"):
        list(feature_blocks(opened.features, rows=4, where="f.feat"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("paths", r"^f.feat: paths.txt holds 5 paths but features.npy 6 rows; .*Re-extract"),
        ("truncate", r"^f.feat/features.npy: truncated or damaged \(.*\); .*Re-extract with toolkit get-transfer-layer"),
        ("empty npy", r"^f.feat/features.npy: truncated or damaged"),
        ("no paths.txt", r"^f.feat: not a complete feature folder: paths.txt missing"),
        ("no metadata.json", r"^f.feat: not a complete feature folder: metadata.json missing"),
        ("1-D", r"^f.feat/features.npy: expected a 2-D float array 'features' \(N x D\), got shape \(6,\)"),
        ("text", r"^f.feat/features.npy: expected a 2-D float array .* dtype <U1"),
    ],
)
def test_a_damaged_folder_is_one_error_naming_it_and_the_fix(tmp_path, damage, message):
    rows = {"1-D": np.ones(6, np.float32), "text": np.full((6, 2), "x")}.get(damage, np.ones((6, 2), np.float32))
    folder = raw_folder(tmp_path / "f.feat", rows, [f"{i}.png" for i in range(5 if damage == "paths" else 6)])
    npy = folder / "features.npy"
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-5])
    elif damage == "empty npy":
        npy.write_bytes(b"")
    elif damage.startswith("no "):
        (folder / damage[3:]).unlink()
    for load in (open_features, read_features):
        with pytest.raises(DataError, match=message):
            load(folder)


def test_a_feat_name_that_is_a_file_or_missing_is_refused(tmp_path):
    (tmp_path / "file.feat").write_text("x")
    with pytest.raises(DataError, match=r"file.feat: is a file, but a name ending in .feat is a feature folder"):
        open_features(tmp_path / "file.feat")
    with pytest.raises(DataError, match=r"file.feat: is a file, but a name ending in .feat is a feature folder"):
        write_features(tmp_path / "file.feat", feature_set())
    with pytest.raises(DataError, match=r"missing.feat: feature folder not found"):
        open_features(tmp_path / "missing.feat")


def test_paths_with_a_line_break_are_refused_and_other_odd_names_round_trip(tmp_path):
    broken = FeatureSet(["a.png", "two\nlines.png"], np.ones((2, 2), np.float32), {})
    with pytest.raises(DataError, match=r"f.feat: the path 'two\\nlines.png' holds a line break.*\.h5 or \.npz"):
        write_features(tmp_path / "f.feat", broken)
    assert list(tmp_path.iterdir()) == []
    odd = ["carriage\rreturn.png", "tab\tand space .png", "café/ünï.png", "not-utf8-\udcff.png", ""]
    write_features(tmp_path / "odd.feat", FeatureSet(odd, np.ones((5, 2), np.float32), {}))
    assert read_features(tmp_path / "odd.feat").paths == odd


def test_an_existing_folder_is_replaced_whole_or_left_as_it_was(tmp_path, monkeypatch):
    target = tmp_path / "f.feat"
    write_features(target, feature_set(n=8))
    write_features(target, feature_set(n=3, start=50))
    assert read_features(target).paths == feature_set(n=3, start=50).paths
    monkeypatch.setattr(formats, "_exchange", lambda first, second: False)  # A system without renameat2.
    write_features(target, feature_set(n=4, start=70))
    assert read_features(target).paths == feature_set(n=4, start=70).paths
    bad = np.ones((5, 4), np.float32)
    bad[4, 0] = np.inf
    with pytest.raises(DataError, match=r"f.feat: 'features' holds NaN or infinity in 1 of 2 rows \(first: row 4\)"):
        write_feature_blocks(target, [f"{i}.png" for i in range(5)], [bad[:3], bad[3:]], dim=4, metadata={})
    assert read_features(target).paths == feature_set(n=4, start=70).paths
    assert [entry.name for entry in tmp_path.iterdir()] == ["f.feat"]
    (target / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"f.feat: holds notes.txt, so it is not a feature folder to replace"):
        write_features(target, feature_set())
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("suffix", [".feat", ".h5", ".npz", ".pkl"])
def test_blocks_written_as_they_come_read_back_as_one_array(tmp_path, suffix):
    whole = feature_set(n=11, dim=3)
    blocks = (whole.features[start : start + 4] for start in range(0, 11, 4))
    write_feature_blocks(tmp_path / f"f{suffix}", whole.paths, blocks, dim=3, metadata=whole.metadata)
    read = read_features(tmp_path / f"f{suffix}")
    assert read.paths == whole.paths and read.metadata["layer"] == "avg_pool" and "toolkit_version" in read.metadata
    np.testing.assert_array_equal(read.features, whole.features)


def shards(tmp_path, suffix=".feat"):
    """Two shards of one run, the second repeating the first's last two paths."""
    first, second = feature_set(n=40, dim=8), feature_set(n=30, dim=8, start=38)
    for name, shard in (("a", first), ("b", second)):
        write_features(tmp_path / f"{name}{suffix}", shard)
    return first, second


def test_merge_of_two_folder_shards_equals_their_concatenation(tmp_path):
    first, second = shards(tmp_path)
    summary = merge_features([tmp_path / "a.feat", tmp_path / "b.feat"], tmp_path / "all.feat")
    assert summary == {"output": str(tmp_path / "all.feat"), "inputs": 2, "images": 68, "features": 8, "duplicates": 2}
    merged = read_features(tmp_path / "all.feat")
    assert merged.paths == first.paths + second.paths[2:]
    np.testing.assert_array_equal(merged.features, np.concatenate([first.features, second.features[2:]]))


def test_merge_streams_memory_mapped_shards_without_holding_their_features(tmp_path):
    rows, dim, names = 3000, 256, ["a", "b", "c", "d"]  # 4 shards of 3 MiB.
    for index, name in enumerate(names):
        write_features(tmp_path / f"{name}.feat", feature_set(n=rows, dim=dim, start=index * rows))
    total = len(names) * rows * dim * 4
    tracemalloc.start()
    try:
        merge_features([tmp_path / f"{name}.feat" for name in names], tmp_path / "all.feat")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < total / 4, f"peak {peak / 2**20:.1f} MiB for {total / 2**20:.0f} MiB of features"
    assert open_features(tmp_path / "all.feat").features.shape == (len(names) * rows, dim)


@pytest.mark.parametrize("suffix", [".npz", ".pkl"])
def test_merge_holds_one_in_memory_shard_at_a_time(tmp_path, monkeypatch, suffix):
    """.npz and .pkl shards load whole: each is opened when its rows are written and let go before the next."""
    names = ["a", "b", "c", "d"]
    for index, name in enumerate(names):
        write_features(tmp_path / f"{name}{suffix}", feature_set(n=50, dim=8, start=index * 50))
    live, most = [0], [0]
    opened = formats.open_features

    def counted(path):
        shard = opened(path)
        live[0] += 1
        most[0] = max(most[0], live[0])
        weakref.finalize(shard.features, lambda: live.__setitem__(0, live[0] - 1))
        return shard

    monkeypatch.setattr(formats, "open_features", counted)
    merge_features([tmp_path / f"{name}{suffix}" for name in names], tmp_path / "all.feat")
    assert most[0] == 1, f"{most[0]} shards' features in memory at once"
    merged = read_features(tmp_path / "all.feat")
    assert merged.paths == [path for name in names for path in read_features(tmp_path / f"{name}{suffix}").paths]


def test_merge_features_command_writes_a_folder_and_refuses_a_folder_that_is_not_one(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shards(tmp_path, ".h5")
    result = runner.invoke(merge_command, ["all.feat", "a.h5", "b.h5", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"output": "all.feat", "inputs": 2, "images": 68, "features": 8}
    again = runner.invoke(merge_command, ["again.npz", "all.feat", "--quiet"])  # A folder as an input.
    assert again.exit_code == 0, again.output
    assert read_features("again.npz").paths == read_features("all.feat").paths
    (tmp_path / "images").mkdir()
    for args in (["images", "a.h5"], ["out.npz", "images"]):
        refused = runner.invoke(merge_command, args)
        assert refused.exit_code == 2 and "'images' is a directory" in one_line_error(refused)
    (tmp_path / "file.feat").write_text("x")
    refused = runner.invoke(merge_command, ["file.feat", "a.h5"])
    assert refused.exit_code == 2 and "'file.feat' is a file" in one_line_error(refused)


def test_extraction_writes_and_appends_to_a_feature_folder(runner, tiny_set, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_set[0] / "images", images)
    full = tmp_path / "full.feat"
    result = runner.invoke(get_transfer_layer, [str(images), str(full), "--model", "pixels", "--image-size", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    later = sorted(images.iterdir())[::3]
    for image in later:
        image.rename(tmp_path / image.name)
    grown = tmp_path / "grown.feat"
    assert runner.invoke(get_transfer_layer, [str(images), str(grown), "--model", "pixels", "--image-size", "8", "--quiet"]).exit_code == 0
    for image in later:
        (tmp_path / image.name).rename(image)
    result = runner.invoke(get_transfer_layer, [str(images), str(grown), "--model", "pixels", "--image-size", "8", "--append", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["computed"] == len(later)
    whole, extended = read_features(full), read_features(grown)
    assert sorted(extended.paths) == whole.paths and len(extended.paths) == 24
    order = [extended.paths.index(path) for path in whole.paths]
    np.testing.assert_allclose(extended.features[order], whole.features, rtol=1e-6)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process's file-backed memory from /proc")
def test_streaming_a_feature_folder_leaves_its_pages_out_of_the_process_memory(tmp_path):
    """A pass over a memory-mapped folder holds one block, not the whole file, in the process's resident memory."""
    def mapped_file_mb() -> float:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssFile"))
        return int(line.split()[1]) / 1024

    rows = np.random.default_rng(0).standard_normal((60_000, 256)).astype(np.float32)  # 59 MiB
    write_features(tmp_path / "big.feat", FeatureSet([str(i) for i in range(len(rows))], rows, {}))
    del rows
    features = open_features(tmp_path / "big.feat").features
    before, total = mapped_file_mb(), 0.0
    for _, block in feature_blocks(features, rows=4_096):
        total += float(block[:, 0].sum())
    assert np.isfinite(total)
    assert mapped_file_mb() - before < 20
