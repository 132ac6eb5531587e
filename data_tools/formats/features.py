"""Feature files: image paths, one float32 row of CNN features per path, and how they were made.

Four formats hold the same content, picked by the name's suffix:

- `.feat`, a feature folder (for large collections): `features.npy` (a plain
  float32 N x D .npy, memory-mapped when read), `paths.txt` (one path per
  line, UTF-8; a path holding a line break is refused on write) and
  `metadata.json`. Read by slices, it never has to fit in memory; `.feat`
  is the one rule that makes a path a feature folder, so an image folder
  or an empty `X/` given by mistake is never taken for one (or replaced).
- `.h5` (large collections too): datasets `paths` (UTF-8 strings) and
  `features` (written in chunks of rows, so a slice reads only its rows);
  metadata as JSON in the file's `metadata` attribute.
- `.npz` (small and mid-sized sets, one file): arrays `paths` (unicode),
  `features` (float32, N x D) and `metadata` (a JSON string). Loads without
  pickle, but whole, into memory.
- `.pkl` (the original format): a dict {"paths": list, "features": ndarray,
  "metadata": dict}, read by the restricted unpickler of `feature_pickle`.

`read_features` loads a file whole and checks every value. `open_features`
leaves the features of a folder or an .h5 file on disk, checking shape and
paths only, and `feature_blocks` reads them block by block, each checked
finite: the one way streaming commands read features. `write_feature_blocks`
writes blocks as they come (a .npy in a staging folder, an .h5 dataset, an
.npz member), so no output needs its features in memory either.
Every output is written aside and moved into place whole, an existing one
replaced in one step.

Every file is checked on load (2-D, finite, one path per row), so a damaged
or foreign file fails here with its name, not deep inside a search.

Features of a toolkit model file (weights "model file") record the model's
absolute path, and beside it `model_relative`, its path relative to the
folder of the file recording it (a feature file, an index folder). Reading
finds the model where it was, else relative to the file, so a project moved
or copied whole keeps working; a relative path recorded by older versions is
tried from the current folder, then from the file's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import mmap
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from image_toolkit.data_tools.atomic import (
    atomic_path,
    cannot_write,
    flush_to_disk,
    make_folder,
    remove_empty,
    staging_folder,
)
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.feature_pickle import RefusedDtype, RefusedGlobal, load_feature_pickle
from image_toolkit.data_tools.names import FEATURE_FOLDER_SUFFIX
from image_toolkit.data_tools.progress import progress_bar
from image_toolkit.data_tools.provenance import toolkit_version

logger = logging.getLogger(__name__)

FOLDER = FEATURE_FOLDER_SUFFIX
FORMATS = (".npz", ".h5", ".pkl", FOLDER)
# The files of a feature folder, and nothing else: a folder holding more is not replaced.
FOLDER_FILES = ("features.npy", "paths.txt", "metadata.json")
# Metadata that must agree for feature rows to be comparable, and so to be merged.
COMPARABLE_KEYS = ("model", "layer", "image_size", "weights", "background")
# What a file made before a key was recorded meant by it: transparent images were then composited onto white, and
# TensorFlow computed the features in fp32.
COMPARABLE_DEFAULTS = {"background": "white", "runtime": "tensorflow", "precision": "fp32"}
# What the rows of one extraction run share, so that --append extends and merge-features joins only such rows: the
# comparable keys, and the runtime and precision that computed them (OpenVINO bf16 rows are close to TensorFlow fp32
# ones, not equal). A query or an index may come from another runtime: they compare COMPARABLE_KEYS only.
EXTRACTION_KEYS = (*COMPARABLE_KEYS, "runtime", "precision")
# Metadata that describes one shard of an extraction run and means nothing once merged.
SHARD_KEYS = ("num_shards", "shard_index")
REEXTRACT = "Re-extract with toolkit get-transfer-layer."
# The `weights` recorded for features of a toolkit model file, whose `model` is then a path: the file holds the weights.
MODEL_FILE_WEIGHTS = "model file"
# Rows read at once by `feature_blocks`: 16,384 x 2,048 float32 is 128 MiB.
BLOCK_ROWS = 16_384
# Rows per .h5 chunk: about 1 MiB (HDF5's default chunk cache), at most 1,024 rows.
H5_CHUNK_BYTES, H5_CHUNK_ROWS = 2**20, 1024


@dataclass(frozen=True)
class FeatureSet:
    """Paths (relative to the image folder), their features (float32, N x D) and metadata.

    `features` is an in-memory array from `read_features`; from
    `open_features` it may be an on-disk array-like (read-only memmap, h5py
    dataset) with `shape`, `dtype`, `len` and row slicing.
    Metadata says how the features were made: model, layer, image_size,
    weights and toolkit_version, plus num_shards / shard_index for a shard.
    """

    paths: list[str]
    features: np.ndarray
    metadata: dict = field(default_factory=dict)


def feature_format(path: str | os.PathLike) -> str:
    """The format of a feature file or folder, from its suffix; an unknown suffix is a usage error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OptionError(
            f"{Path(path).name}: unknown feature file type. Expected a name ending in "
            f"{', '.join(FORMATS[:-1])} or {FOLDER} (a feature folder). Received: {suffix or 'no suffix'!r}"
        )
    return suffix


def _check_layout(shape: tuple, dtype: np.dtype, where: str) -> None:
    """A non-empty 2-D array of numbers, from its shape and dtype alone (no value is read)."""
    if len(shape) != 2 or dtype.kind not in "fiu":
        raise DataError(f"{where}: expected a 2-D float array 'features' (N x D), got shape {tuple(shape)}, "
                        f"dtype {dtype}. {REEXTRACT}")
    if 0 in shape:
        raise DataError(f"{where}: 'features' is empty (shape {tuple(shape)}). {REEXTRACT}")


def check_features(features: object, where: str, *, first_row: int = 0) -> np.ndarray:
    """A finite, non-empty 2-D float32 array, or a DataError that names `where` and the first bad row.

    `first_row` is the row number of `features[0]` in its file, so a block's
    error names the row as the file counts it.
    """
    if not isinstance(features, (np.ndarray, list, tuple)):
        raise DataError(f"{where}: expected a 2-D float array 'features' (N x D), got {type(features).__name__}. {REEXTRACT}")
    array = np.asarray(features)
    _check_layout(array.shape, array.dtype, where)
    array = array.astype(np.float32, copy=False)
    # A row sum is finite exactly when every value is (float32 values cannot overflow a float64 sum),
    # and needs no N x D mask.
    bad_rows = np.flatnonzero(~np.isfinite(array.sum(axis=1, dtype=np.float64)))
    if len(bad_rows):
        raise DataError(
            f"{where}: 'features' holds NaN or infinity in {len(bad_rows)} of {len(array)} rows "
            f"(first: row {first_row + bad_rows[0]}). {REEXTRACT}"
        )
    return array


def _check_paths(paths: object, where: str) -> list[str]:
    if isinstance(paths, np.ndarray):
        paths = paths.tolist()
    if not isinstance(paths, (list, tuple)) or not all(isinstance(path, str) for path in paths):
        raise DataError(f"{where}: 'paths' must be a list of strings. {REEXTRACT}")
    return list(paths)


def _checked(paths: object, features: object, metadata: object, where: str, *, values: bool = True) -> FeatureSet:
    """The content as a FeatureSet, checked; `values=False` checks an on-disk array's shape and dtype only."""
    if values or not hasattr(features, "shape"):
        features = check_features(features, where)
    else:
        _check_layout(features.shape, np.dtype(features.dtype), where)
    paths = _check_paths(paths, where)
    if len(paths) != len(features):
        raise DataError(f"{where}: {len(paths)} paths for {len(features)} rows of 'features'. {REEXTRACT}")
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be a dict, got {type(metadata).__name__}. {REEXTRACT}")
    return FeatureSet(paths, features, dict(metadata))


def comparable(metadata: dict, key: str):
    """`metadata[key]` for comparing two feature files; a key older files lack reads as its COMPARABLE_DEFAULTS value."""
    return metadata.get(key, COMPARABLE_DEFAULTS.get(key))


def shown_model(metadata: dict) -> dict:
    """Metadata to print: a model file under the working folder shown relative to it, as the user would type it.

    The file keeps the absolute path (found from anywhere); a summary or
    `index info` line stays short and the same on every machine.
    """
    model = metadata.get("model")
    if metadata.get("weights") != MODEL_FILE_WEIGHTS or not isinstance(model, str) or not Path(model).is_absolute():
        return metadata
    try:
        return {**metadata, "model": Path(model).relative_to(Path.cwd().resolve()).as_posix()}
    except ValueError:  # Outside the working folder: the absolute path says where.
        return metadata


def anchored_model(metadata: dict, folder: str | os.PathLike) -> dict:
    """Metadata to write into `folder`: a model file's path also relative to it (`model_relative`), to be found when moved.

    Only an absolute model path (as extraction records it, or as reading
    found it) is anchored; any other drops a `model_relative` that would
    describe some other folder.
    """
    metadata = {key: value for key, value in metadata.items() if key != "model_relative"}
    model = metadata.get("model")
    if metadata.get("weights") != MODEL_FILE_WEIGHTS or not isinstance(model, str) or not Path(model).is_absolute():
        return metadata
    try:
        relative = os.path.relpath(model, Path(folder).resolve())
    except ValueError:  # Another drive (Windows): no relative path exists.
        return metadata
    return {**metadata, "model_relative": Path(relative).as_posix()}


def located_model(metadata: dict, folder: str | os.PathLike) -> dict:
    """Metadata read from a file in `folder`, its model file's path made absolute where the file is found.

    Tried in order: the recorded path (a relative one from the current
    folder, as older versions meant it, then from `folder`), then
    `model_relative` from `folder`. None found: the metadata as recorded,
    for the command that needs the model to say so.
    """
    model = metadata.get("model")
    if metadata.get("weights") != MODEL_FILE_WEIGHTS or not isinstance(model, str) or not model:
        return metadata
    recorded, folder = Path(model), Path(folder)
    candidates = [recorded] if recorded.is_absolute() else [recorded, folder / recorded]
    if isinstance(metadata.get("model_relative"), str):
        candidates.append(folder / metadata["model_relative"])
    found = next((candidate for candidate in candidates if candidate.is_file()), None)
    return metadata if found is None else {**metadata, "model": str(found.resolve())}


def _read_pkl(path: Path) -> tuple[object, object, object]:
    try:
        with path.open("rb") as handle:
            content = load_feature_pickle(handle)
    except RefusedGlobal as refused:
        raise DataError(
            f"{path.name}: refused to load: the pickle calls {refused}, and a feature pickle may only hold "
            "numpy arrays, lists, dicts, strings and numbers. Re-extract to .npz with toolkit get-transfer-layer."
        ) from None
    except RefusedDtype as refused:
        raise DataError(
            f"{path.name}: refused to load: the pickle holds an array of dtype {refused}, and a feature pickle may hold "
            "only plain numeric and text arrays. Re-extract to .npz with toolkit get-transfer-layer."
        ) from None
    if not isinstance(content, dict) or not {"paths", "features"} <= content.keys():
        raise DataError(f"{path.name}: expected a dict with 'paths' and 'features'. {REEXTRACT}")
    return content["paths"], content["features"], content.get("metadata", {})


def _read_npz(path: Path) -> tuple[object, object, object]:
    with np.load(path, allow_pickle=False) as content:
        if not {"paths", "features"} <= set(content.files):
            raise DataError(f"{path.name}: expected arrays 'paths' and 'features', found {content.files}. {REEXTRACT}")
        metadata = json.loads(str(content["metadata"])) if "metadata" in content.files else {}
        return content["paths"], content["features"], metadata


def _open_h5(path: Path) -> tuple[object, object, object]:
    """Paths and metadata read; `features` the h5py dataset, its file left open (read-only) while it is referenced."""
    import h5py

    content = h5py.File(path, "r")
    try:
        if not {"paths", "features"} <= content.keys() or not isinstance(content["features"], h5py.Dataset):
            raise DataError(
                f"{path.name}: expected datasets 'paths' and 'features', found {list(content.keys())}. {REEXTRACT}"
            )
        metadata = json.loads(content.attrs.get("metadata", "{}"))
        return content["paths"].asstr()[()], content["features"], metadata
    except BaseException:
        content.close()
        raise


def _read_h5(path: Path) -> tuple[object, object, object]:
    paths, features, metadata = _open_h5(path)
    with features.file:
        return paths, features[()], metadata


def _paths_text(paths: list[str], where: str) -> bytes:
    """`paths.txt`: one path a line; a path with a line break would read back as two, so it is refused."""
    broken = next((path for path in paths if "\n" in path), None)
    if broken is not None:
        raise DataError(f"{where}: the path {broken!r} holds a line break, which paths.txt cannot hold; "
                        "rename that image, or write an .h5 or .npz file instead.")
    # surrogateescape: a file name that is not UTF-8 (os.fsdecode of its bytes) keeps its bytes.
    return "".join(f"{path}\n" for path in paths).encode("utf-8", "surrogateescape")


def _read_paths_text(path: Path) -> list[str]:
    """The paths of `paths.txt`, split at line feeds only (a carriage return or other break stays in its path)."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    return text.split("\n")[:-1] if text else []


def _open_folder(path: Path) -> tuple[object, object, object]:
    """Paths and metadata read; `features` memory-mapped read-only, its shape checked against the paths."""
    missing = [name for name in FOLDER_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path.name}: not a complete feature folder: {' and '.join(missing)} missing "
                        f"(a feature folder holds {', '.join(FOLDER_FILES)}). {REEXTRACT}")
    try:
        features = np.load(path / "features.npy", mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path.name}/features.npy: truncated or damaged ({reason}); the extraction that wrote it "
                        f"did not finish or the file was cut. {REEXTRACT}") from None
    if not isinstance(features, np.ndarray):
        raise DataError(f"{path.name}/features.npy: not a .npy array file. {REEXTRACT}")
    _check_layout(features.shape, features.dtype, f"{path.name}/features.npy")
    paths = _read_paths_text(path / "paths.txt")
    if len(paths) != len(features):
        raise DataError(f"{path.name}: paths.txt holds {len(paths):,} paths but features.npy {len(features):,} rows; "
                        f"the folder is damaged or mixed from two runs. {REEXTRACT}")
    return paths, features, json.loads((path / "metadata.json").read_text(encoding="utf-8"))


def _read_folder(path: Path) -> tuple[object, object, object]:
    paths, features, metadata = _open_folder(path)
    return paths, np.array(features), metadata


READERS = {".npz": _read_npz, ".h5": _read_h5, ".pkl": _read_pkl, FOLDER: _read_folder}
# Where features can stay on disk; the others are read whole, as by READERS.
OPENERS = {**READERS, ".h5": _open_h5, FOLDER: _open_folder}


def _load(path: str | os.PathLike, *, lazy: bool) -> FeatureSet:
    path = Path(path)
    suffix = feature_format(path)
    if suffix == FOLDER and path.is_file():
        raise DataError(f"{path}: is a file, but a name ending in {FOLDER} is a feature folder. Rename it to its format's suffix.")
    if not (path.is_dir() if suffix == FOLDER else path.is_file()):
        kind = "feature folder" if suffix == FOLDER else "feature file"
        raise DataError(f"{path}: {kind} not found. Extract features first with toolkit get-transfer-layer.")
    try:
        paths, features, metadata = (OPENERS if lazy else READERS)[suffix](path)
    except DataError:
        raise
    except Exception as error:  # numpy, h5py, json and pickle raise many types for a foreign file.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path.name}: not a {suffix} feature {'folder' if suffix == FOLDER else 'file'} "
                        f"({reason}). {REEXTRACT}") from None
    checked = _checked(paths, features, metadata, path.name, values=not (lazy and suffix in (".h5", FOLDER)))
    return replace(checked, metadata=located_model(checked.metadata, path.parent))


def read_features(path: str | os.PathLike) -> FeatureSet:
    """Load a feature file or folder whole and check every value; every problem is a DataError naming it and the fix."""
    return _load(path, lazy=False)


def open_features(path: str | os.PathLike) -> FeatureSet:
    """A feature file whose `features` may stay on disk, for commands that stream them (see `feature_blocks`).

    A feature folder's `features` is a read-only memmap, an .h5 file's the
    h5py dataset (its file open read-only while referenced): slicing reads
    only those rows. .npz and .pkl load in memory, checked as by
    `read_features`. Shape, dtype and one path per row are checked here
    without reading the values; the values block by block in `feature_blocks`,
    so a file bigger than memory is never read whole.
    """
    return _load(path, lazy=True)


def feature_blocks(features, *, rows: int = BLOCK_ROWS, where: str = "features") -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 block) over the rows of `features` in order, each block checked finite.

    The one way every streaming command reads features: one block in memory
    at a time, whatever holds the rows (array, memmap, h5 dataset). float16
    and float64 rows are converted a block at a time. An error names the
    rows as the file counts them.
    """
    if rows < 1:
        raise ValueError(f"rows: expected at least 1. Received: {rows}")
    for start in range(0, len(features), rows):
        block = np.asarray(features[start : start + rows])
        yield start, check_features(block, f"{where} rows {start}-{start + len(block) - 1}", first_row=start)
        release_pages(features, start, start + len(block))


def release_pages(features, start: int, stop: int) -> None:
    """Unmap the pages of rows start..stop of a memory-mapped feature file from this process; they stay in the page cache.

    A memmap's pages, once read, count in the process's resident memory
    until it ends: a pass over 8 GB of features would look like 8 GB held.
    The file is mapped read-only, so a page read again later is simply
    faulted back in from the cache. Anything but a read-only, C-ordered
    memmap (an array, an h5py dataset) is left alone.
    """
    mapping = getattr(features, "_mmap", None)
    if mapping is None or features.flags.writeable or not features.flags.c_contiguous or stop <= start:
        return
    rows = features[start:stop]
    base = np.frombuffer(mapping, dtype=np.uint8).__array_interface__["data"][0]
    first = rows.__array_interface__["data"][0] - base
    begin = first - first % mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):  # Not every system has madvise; the pages then stay until exit.
        mapping.madvise(mmap.MADV_DONTNEED, begin, first + rows.nbytes - begin)


Blocks = Iterator[tuple[int, np.ndarray]]


def _write_npy(handle: BinaryIO, blocks: Blocks, shape: tuple[int, int]) -> None:
    """A float32 .npy of `shape` written as its blocks come, in order: the header, then the rows.

    Plain writes, not a memmap: a full disk is then an OSError (ENOSPC),
    not a SIGBUS that kills the process.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(handle, header)
    for _, block in blocks:
        handle.write(memoryview(np.ascontiguousarray(block)).cast("B"))  # The rows' bytes, not a copy.


def _write_npz(target: Path, paths: list[str], blocks: Blocks, shape: tuple[int, int], metadata: dict) -> None:
    """An .npz as `np.savez` writes it (stored, not compressed), its `features` member written a block at a time."""
    with zipfile.ZipFile(target, "w", allowZip64=True) as archive:
        for name, array in (("paths", np.array(paths, dtype=str)), ("metadata", np.array(json.dumps(metadata)))):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        with archive.open("features.npy", "w", force_zip64=True) as member:
            _write_npy(member, blocks, shape)


def _write_h5(target: Path, paths: list[str], blocks: Blocks, shape: tuple[int, int], metadata: dict) -> None:
    """`features` in chunks of whole rows (about 1 MiB), so reading a slice of rows reads only the chunks it spans."""
    import h5py

    chunk_rows = min(shape[0], H5_CHUNK_ROWS, max(1, H5_CHUNK_BYTES // (4 * shape[1])))
    with h5py.File(target, "w") as content:
        content.create_dataset("paths", data=paths, dtype=h5py.string_dtype("utf-8"))
        features = content.create_dataset("features", shape=shape, dtype=np.float32, chunks=(chunk_rows, shape[1]))
        for start, block in blocks:
            features[start : start + len(block)] = block
        content.attrs["metadata"] = json.dumps(metadata)


def _write_pkl(target: Path, paths: list[str], blocks: Blocks, shape: tuple[int, int], metadata: dict) -> None:
    """The original format, a pickle of the whole array: built in memory, so small sets only."""
    features = np.empty(shape, dtype=np.float32)
    for start, block in blocks:
        features[start : start + len(block)] = block
    content = {"paths": paths, "features": features, "metadata": metadata}
    with target.open("wb") as handle:
        pickle.dump(content, handle, protocol=pickle.HIGHEST_PROTOCOL)


WRITERS = {".npz": _write_npz, ".h5": _write_h5, ".pkl": _write_pkl}


def _write_file(target: Path, paths: list[str], blocks: Blocks, shape: tuple[int, int], metadata: dict) -> None:
    with atomic_path(target) as temporary:
        WRITERS[target.suffix.lower()](temporary, paths, blocks, shape, metadata)


# renameat2(2): swap two paths in one step (Linux 3.15 and later, glibc 2.28 and later).
AT_FDCWD, RENAME_EXCHANGE = -100, 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders atomically; False where the system cannot (another OS, an old kernel, a file system without it)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _replace_folder(staging: Path, target: Path) -> None:
    """Move a finished folder onto `target`: readers see the old folder or the new one, never a mix.

    An existing target is swapped with the staging folder in one step where
    the system can; elsewhere it is moved aside first, and a kill between the
    two renames leaves it under its hidden `.partial.old` name.
    """
    if not target.is_dir():
        os.rename(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # Now the old folder.
    else:
        aside = staging.with_name(f"{staging.name}.old")
        os.rename(target, aside)
        os.rename(staging, target)
        shutil.rmtree(aside)


def _check_folder_target(target: Path) -> None:
    """Refuse to replace a file, or a folder holding anything but a feature folder's files."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise DataError(f"{target}: is a file, but a name ending in {FOLDER} is a feature folder; give another name.")
    if target.is_dir():
        foreign = sorted(entry.name for entry in target.iterdir() if entry.name not in FOLDER_FILES)
        if foreign:
            raise DataError(f"{target}: holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, so it is "
                            "not a feature folder to replace; give a new folder name or remove it.")


def _write_folder(target: Path, paths: list[str], blocks: Blocks, shape: tuple[int, int], metadata: dict) -> None:
    """The three files written in a staging folder beside `target`, flushed to disk, then moved into place whole."""
    _check_folder_target(target)
    text = _paths_text(paths, target.name)
    created = make_folder(target.parent)
    staging = None
    try:
        staging = staging_folder(target.parent, target.name)
        (staging / "paths.txt").write_bytes(text)
        (staging / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
        with (staging / "features.npy").open("wb") as handle:
            _write_npy(handle, blocks, shape)
        for name in FOLDER_FILES:
            flush_to_disk(staging / name)
        flush_to_disk(staging)
        _replace_folder(staging, target)
        flush_to_disk(target.parent)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
        raise


def _checked_blocks(blocks: Iterable[np.ndarray], shape: tuple[int, int], where: str, advance: Callable[[int], None]) -> Blocks:
    """(first row, block) of each non-empty block, checked finite and of width D, counted by `advance` once written.

    The blocks must hold N rows in all: fewer or more is a bug of the caller.
    """
    done = 0
    for block in blocks:
        if len(block) == 0:
            continue
        block = check_features(block, where, first_row=done)
        if block.shape[1] != shape[1] or done + len(block) > shape[0]:
            raise ValueError(f"{where}: a block of {block.shape} after {done} rows does not fit {shape} features")
        yield done, block
        done += len(block)
        advance(len(block))
    if done != shape[0]:
        raise ValueError(f"{where}: the blocks held {done} rows for {shape[0]} paths")


def write_feature_blocks(
    path: str | os.PathLike,
    paths: list[str],
    blocks: Iterable[np.ndarray],
    *,
    dim: int,
    metadata: dict,
    show: bool | None = None,
) -> None:
    """Write features arriving block by block (rows in order, `dim` wide) atomically, in the format `path` names.

    One block is in memory at a time for a feature folder, .h5 and .npz (a
    .pkl is built whole). The toolkit's version is added to the metadata
    unless already there, and a model file's path relative to the output's
    folder (`anchored_model`). Blocks are checked finite as they come; a
    failure leaves any existing output as it was. `show` is the progress
    bar of rows written (`progress.progress_bar`: None draws it on a terminal).
    """
    path = Path(path)
    suffix = feature_format(path)
    paths = _check_paths(paths, path.name)
    _check_layout((len(paths), dim), np.dtype(np.float32), path.name)
    if not isinstance(metadata, dict):
        raise DataError(f"{path.name}: 'metadata' must be a dict, got {type(metadata).__name__}.")
    metadata = anchored_model({"toolkit_version": toolkit_version(), **metadata}, path.parent)
    shape = (len(paths), int(dim))
    write = _write_folder if suffix == FOLDER else _write_file
    try:
        with progress_bar(shape[0], f"Writing {path.name}", show=show) as advance:
            write(path, paths, _checked_blocks(blocks, shape, path.name, advance), shape, metadata)
    except OSError as error:
        raise cannot_write(path, error) from None


def write_features(path: str | os.PathLike, feature_set: FeatureSet) -> None:
    """Check and write a feature set atomically, in the format its suffix names (see `write_feature_blocks`)."""
    feature_format(path)
    checked = _checked(feature_set.paths, feature_set.features, feature_set.metadata, Path(path).name, values=False)
    write_feature_blocks(path, checked.paths, [checked.features], dim=checked.features.shape[1], metadata=checked.metadata)


def _npz_summary(path: Path) -> tuple[object, object, tuple, np.dtype]:
    """An .npz's paths, metadata and the shape and dtype of its `features`, read from the member's header alone."""
    with zipfile.ZipFile(path) as archive:
        names = {name.removesuffix(".npy") for name in archive.namelist()}
        if not {"paths", "features"} <= names:
            raise DataError(f"{path.name}: expected arrays 'paths' and 'features', found {sorted(names)}. {REEXTRACT}")
        with archive.open("paths.npy") as member:
            paths = np.lib.format.read_array(member, allow_pickle=False)
        metadata = {}
        if "metadata" in names:
            with archive.open("metadata.npy") as member:
                metadata = json.loads(str(np.lib.format.read_array(member, allow_pickle=False)))
        with archive.open("features.npy") as member:
            major, minor = np.lib.format.read_magic(member)
            shape, _, dtype = getattr(np.lib.format, f"read_array_header_{major}_{minor}")(member)
    return paths, metadata, shape, dtype


def _shard_summary(path: str | os.PathLike) -> tuple[list[str], dict, int]:
    """A shard's paths, metadata and row width, without keeping its features in memory.

    An .npz's features are not read at all (its header gives their shape); a
    folder or .h5 stays on disk; a .pkl is loaded and let go. A file that does
    not read as a shard fails as `open_features` says it.
    """
    path = Path(path)
    if feature_format(path) == ".npz" and path.is_file():
        try:
            paths, metadata, shape, dtype = _npz_summary(path)
            _check_layout(shape, dtype, path.name)
            checked = _check_paths(paths, path.name)
            if len(checked) == shape[0] and isinstance(metadata, dict):
                return checked, located_model(metadata, path.parent), shape[1]
        except DataError:
            raise
        except Exception:  # A foreign or damaged file: open_features words the error.
            pass
    shard = open_features(path)
    return shard.paths, shard.metadata, shard.features.shape[1]


def _check_complete(names: list[str], metadatas: list[dict]) -> None:
    """Inputs that say they are shards (`num_shards`, `shard_index`) must be one run's every shard, each once."""
    shards = [(name, metadata) for name, metadata in zip(names, metadatas) if "num_shards" in metadata]
    if not shards:
        return
    first_name, first = shards[0]
    count = first["num_shards"]
    seen: dict[object, str] = {}
    for name, metadata in shards:
        if metadata["num_shards"] != count:
            raise DataError(f"{name}: num_shards {metadata['num_shards']!r}, but {first_name} has num_shards {count!r}; "
                            "merge only the shards of one extraction run.")
        index = metadata.get("shard_index")
        if not isinstance(index, int) or not isinstance(count, int) or not 0 <= index < count:
            raise DataError(f"{name}: shard_index {index!r} is not one of num_shards {count!r} (0 to num_shards - 1); "
                            "the file is damaged or not a shard of this run.")
        if index in seen:
            raise DataError(f"{name}: shard_index {index} again (also in {seen[index]}); give each shard once.")
        seen[index] = name
    if len(shards) != count:
        missing = ", ".join(str(index) for index in range(count) if index not in seen)
        raise DataError(f"{first_name}: {len(shards)} of {count} shards given (missing shard_index {missing}); "
                        "merge every shard of the run, rerunning the tasks that failed.")


def _first_rows(shard_paths: list[list[str]]) -> list[np.ndarray]:
    """For each shard's paths, the mask of its rows whose path no earlier row (of it or an earlier shard) has."""
    seen: set[str] = set()
    masks = []
    for paths in shard_paths:
        mask = np.zeros(len(paths), dtype=bool)
        for row, path in enumerate(paths):
            if path not in seen:
                seen.add(path)
                mask[row] = True
        masks.append(mask)
    return masks


def merge_features(
    inputs: list[str | os.PathLike], output: str | os.PathLike, *, show: bool | None = None
) -> dict:
    """Join the shards of one extraction run into `output`, in the order given; return a summary.

    Shards must have the same number of features per row and agree on the
    metadata that makes rows comparable (model, layer, image size, weights);
    shards that record `num_shards` / `shard_index` must be all of their run,
    each once. A path found again (in a later shard or the same one) is
    dropped there, and counted in the log. Only the paths of every shard are
    read first; then each shard is opened in turn when its rows are written,
    and let go before the next, so at most one .npz or .pkl shard is in
    memory (a feature folder or .h5 shard never is, nor is the result).
    """
    if not inputs:
        raise OptionError("merge needs at least one feature file. Received: none")
    absent = [Path(path) for path in inputs if not Path(path).exists()]
    if absent:
        more = f" (and {len(absent) - 1} more of the {len(inputs)} inputs)" if len(absent) > 1 else ""
        raise DataError(f"{absent[0]}: not found{more}; merge needs every shard: rerun the tasks that failed.")
    names = [Path(path).name for path in inputs]
    summaries = [_shard_summary(path) for path in inputs]
    (_, first_metadata, dim), first_name = summaries[0], names[0]
    for name, (_, metadata, width) in zip(names[1:], summaries[1:]):
        if width != dim:
            raise DataError(f"{name}: {width} features per row, but {first_name} has {dim}; "
                            "merge only shards of one extraction run.")
        for key in EXTRACTION_KEYS:
            if comparable(metadata, key) != comparable(first_metadata, key):
                raise DataError(
                    f"{name}: {key}={comparable(metadata, key)!r}, but {first_name} has "
                    f"{key}={comparable(first_metadata, key)!r}; merge only shards of one extraction run."
                )
    _check_complete(names, [metadata for _, metadata, _ in summaries])
    shard_paths = [paths for paths, _, _ in summaries]
    del summaries
    masks = _first_rows(shard_paths)
    paths = [path for rows, mask in zip(shard_paths, masks) for path, kept in zip(rows, mask) if kept]
    duplicates = sum(len(rows) for rows in shard_paths) - len(paths)
    if duplicates:
        repeated = next(path for rows, mask in zip(shard_paths, masks) for path, kept in zip(rows, mask) if not kept)
        logger.warning("Kept the first of %d duplicate paths (first: %s)", duplicates, repeated)
    del shard_paths

    def kept_blocks() -> Iterator[np.ndarray]:
        for path, name, mask in zip(inputs, names, masks):
            features = open_features(path).features
            in_memory = isinstance(features, np.ndarray) and not isinstance(features, np.memmap)
            if len(features) != len(mask):
                raise DataError(f"{name}: changed while being merged ({len(features)} rows, {len(mask)} before); merge again.")
            for start, block in feature_blocks(features, where=name):
                keep = mask[start : start + len(block)]
                if keep.all():  # A view of an in-memory shard, still held by the writer, would keep it all alive.
                    yield np.array(block) if in_memory else block
                else:
                    yield block[keep]
            del features, block  # Let go of this shard before the next is opened.

    metadata = {key: value for key, value in first_metadata.items() if key not in SHARD_KEYS}
    write_feature_blocks(output, paths, kept_blocks(), dim=dim, metadata=metadata, show=show)
    return {"output": str(output), "inputs": len(inputs), "images": len(paths), "features": dim, "duplicates": duplicates}
