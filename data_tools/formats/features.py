"""Feature files: image paths, one float32 row of CNN features per path, and how they were made.

Three formats hold the same content, picked by the file's suffix:

- `.npz` (recommended): arrays `paths` (unicode), `features` (float32, N x D)
  and `metadata` (a JSON string). Loads without pickle.
- `.h5` (recommended): datasets `paths` (UTF-8 strings) and `features`;
  metadata as JSON in the file's `metadata` attribute.
- `.pkl` (the original format): a dict {"paths": list, "features": ndarray,
  "metadata": dict}. A pickle can run any code when loaded, so it is read by
  an unpickler that admits numpy arrays, lists, dicts, strings and numbers
  only, and refuses anything else before it runs; arrays and numpy scalars
  must have a plain number or text dtype (no fields, no objects).

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

import json
import logging
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from image_toolkit.data_tools.atomic import atomic_path, cannot_write
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.provenance import toolkit_version

logger = logging.getLogger(__name__)

FORMATS = (".npz", ".h5", ".pkl")
# Metadata that must agree for feature rows to be comparable, and so to be merged.
COMPARABLE_KEYS = ("model", "layer", "image_size", "weights")
# Metadata that describes one shard of an extraction run and means nothing once merged.
SHARD_KEYS = ("num_shards", "shard_index")
REEXTRACT = "Re-extract with toolkit get-transfer-layer."
# The `weights` recorded for features of a toolkit model file, whose `model` is then a path: the file holds the weights.
MODEL_FILE_WEIGHTS = "model file"


@dataclass(frozen=True)
class FeatureSet:
    """Paths (relative to the image folder), their features (float32, N x D) and metadata.

    Metadata says how the features were made: model, layer, image_size,
    weights and toolkit_version, plus num_shards / shard_index for a shard.
    """

    paths: list[str]
    features: np.ndarray
    metadata: dict = field(default_factory=dict)


def feature_format(path: str | os.PathLike) -> str:
    """The format of a feature file, from its suffix; an unknown suffix is a usage error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OptionError(
            f"{Path(path).name}: unknown feature file type. Expected a name ending in "
            f"{', '.join(FORMATS)}. Received: {suffix or 'no suffix'!r}"
        )
    return suffix


def check_features(features: object, where: str) -> np.ndarray:
    """A finite, non-empty 2-D float32 array, or a DataError that names `where`."""
    array = np.asarray(features) if isinstance(features, (np.ndarray, list, tuple)) else None
    if array is None or array.ndim != 2 or array.dtype.kind not in "fiu":
        got = f"shape {array.shape}, dtype {array.dtype}" if array is not None else type(features).__name__
        raise DataError(f"{where}: expected a 2-D float array 'features' (N x D), got {got}. {REEXTRACT}")
    if 0 in array.shape:
        raise DataError(f"{where}: 'features' is empty (shape {array.shape}). {REEXTRACT}")
    array = array.astype(np.float32, copy=False)
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad_rows):
        raise DataError(
            f"{where}: 'features' holds NaN or infinity in {len(bad_rows)} of {len(array)} rows "
            f"(first: row {bad_rows[0]}). {REEXTRACT}"
        )
    return array


def _checked(paths: object, features: object, metadata: object, where: str) -> FeatureSet:
    array = check_features(features, where)
    if isinstance(paths, np.ndarray):
        paths = paths.tolist()
    if not isinstance(paths, (list, tuple)) or not all(isinstance(path, str) for path in paths):
        raise DataError(f"{where}: 'paths' must be a list of strings. {REEXTRACT}")
    if len(paths) != len(array):
        raise DataError(f"{where}: {len(paths)} paths for {len(array)} rows of 'features'. {REEXTRACT}")
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be a dict, got {type(metadata).__name__}. {REEXTRACT}")
    return FeatureSet(list(paths), array, dict(metadata))


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


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a function or class outside the allowed ones."""


class _RefusedDtype(pickle.UnpicklingError):
    """The pickle builds a dtype that is not a plain number or text type: its arrays could turn raw bytes into pointers."""


# Array kinds a feature pickle may hold: boolean, integers, floats, unicode text.
PLAIN_KINDS = "biufU"


def _check_plain(dtype: np.dtype) -> np.dtype:
    """`dtype` if it is a plain number or text type (no fields, no sub-array), else _RefusedDtype.

    Its item size, alignment and flags must also be those numpy gives the
    same type string: a pickle sets them as it likes (BUILD), and a plain
    `f8` flagged as holding objects would be read as pointers all the same.
    """
    if not isinstance(dtype, np.dtype) or dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise _RefusedDtype(str(dtype))
    canonical = np.dtype(dtype.str)
    if (dtype.itemsize, dtype.alignment, dtype.flags) != (canonical.itemsize, canonical.alignment, canonical.flags):
        raise _RefusedDtype(f"{dtype} with a forged item size, alignment or flags")
    return dtype


def _plain_result(make):
    """`numpy.dtype`, refusing a dtype that is not plain as soon as it is made."""
    return lambda *args: _check_plain(make(*args))


def _plain_argument(position: int):
    """A guard for a numpy function that fills an array or scalar with raw bytes: its dtype argument must be plain."""
    def guard(function):
        def checked(*args):
            _check_plain(args[position] if len(args) > position else None)
            return function(*args)
        return checked
    return guard


def _ndarray_only(reconstruct):
    """`_reconstruct`, for numpy arrays only (not a subclass that could run code)."""
    def checked(cls, *args):
        if cls is not np.ndarray:
            raise _RefusedGlobal(f"_reconstruct of {cls!r}")
        return reconstruct(cls, *args)
    return checked


class _FeaturePickle(pickle._Unpickler):
    """Unpickles plain numpy arrays and containers; refuses every other global, and every other dtype, before it is used.

    numpy's own pieces can build a dtype whose object field lies over raw
    bytes, and an array of it reads those bytes as pointers (a segfault, or
    worse). So every dtype is checked where it is made (`numpy.dtype`), where
    its state is set (the BUILD step, which can add fields), and where an
    array or scalar is filled with it. Checking BUILD needs Python's own
    unpickler (as joblib's NumpyUnpickler does): the C one cannot be hooked
    there. Feature pickles are a few large byte strings, so it is as fast.
    """

    # The globals a feature pickle may name, and the guard each is wrapped in (None: used as it is).
    ALLOWED = {
        ("numpy", "ndarray"): None,
        ("numpy", "dtype"): _plain_result,
        ("numpy.core.multiarray", "_reconstruct"): _ndarray_only,
        ("numpy._core.multiarray", "_reconstruct"): _ndarray_only,
        ("numpy.core.multiarray", "scalar"): _plain_argument(0),
        ("numpy._core.multiarray", "scalar"): _plain_argument(0),
        ("numpy.core.numeric", "_frombuffer"): _plain_argument(1),
        ("numpy._core.numeric", "_frombuffer"): _plain_argument(1),
        ("_codecs", "encode"): None,  # How protocol 2 stores bytes.
    }
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _RefusedGlobal(f"{module}.{name}")
        found, guard = super().find_class(module, name), self.ALLOWED[module, name]
        return found if guard is None else guard(found)

    def load_build(self) -> None:
        """BUILD sets the state of a dtype or an array only, and only to a plain dtype."""
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, np.dtype):
            # (version, byte order, sub-array, names, fields, ...): a plain dtype has neither of the three.
            if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
                raise _RefusedDtype("a structured dtype" if isinstance(state, tuple) and len(state) >= 5 else "of an unknown form")
        elif isinstance(target, np.ndarray):
            # (version, shape, dtype, Fortran order, data), or the same without the version.
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise _RefusedDtype("of an unknown form")
            _check_plain(state[-3])
        else:
            raise _RefusedGlobal(f"the state of a {type(target).__name__}")
        super().load_build()
        if isinstance(target, np.dtype):
            _check_plain(target)

    dispatch[pickle.BUILD[0]] = load_build


def _read_pkl(path: Path) -> tuple[object, object, object]:
    try:
        with path.open("rb") as handle:
            content = _FeaturePickle(handle, encoding="latin1").load()
    except _RefusedGlobal as refused:
        raise DataError(
            f"{path.name}: refused to load: the pickle calls {refused}, and a feature pickle may only hold "
            "numpy arrays, lists, dicts, strings and numbers. Re-extract to .npz with toolkit get-transfer-layer."
        ) from None
    except _RefusedDtype as refused:
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


def _read_h5(path: Path) -> tuple[object, object, object]:
    import h5py

    with h5py.File(path, "r") as content:
        if not {"paths", "features"} <= content.keys():
            raise DataError(
                f"{path.name}: expected datasets 'paths' and 'features', found {list(content.keys())}. {REEXTRACT}"
            )
        metadata = json.loads(content.attrs.get("metadata", "{}"))
        return content["paths"].asstr()[()], content["features"][()], metadata


READERS = {".npz": _read_npz, ".h5": _read_h5, ".pkl": _read_pkl}


def read_features(path: str | os.PathLike) -> FeatureSet:
    """Load and check a feature file; every problem is a DataError naming the file and the fix."""
    path = Path(path)
    reader = READERS[feature_format(path)]
    if not path.is_file():
        raise DataError(f"{path}: feature file not found. Extract features first with toolkit get-transfer-layer.")
    try:
        paths, features, metadata = reader(path)
    except DataError:
        raise
    except Exception as error:  # numpy, h5py and pickle raise many types for a foreign file.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path.name}: not a {path.suffix} feature file ({reason}). {REEXTRACT}") from None
    checked = _checked(paths, features, metadata, path.name)
    return replace(checked, metadata=located_model(checked.metadata, path.parent))


# Rows read at once by `feature_blocks`: 16,384 x 2,048 float32 is 128 MiB.
BLOCK_ROWS = 16_384


def open_features(path: str | os.PathLike) -> FeatureSet:
    """A feature file whose `features` may stay on disk, for commands that stream them (see `feature_blocks`).

    `features` is an array-like with `shape`, `dtype`, `len` and row slicing
    (`features[start:stop]`): a numpy array, a read-only memmap, or an h5py
    dataset. Its shape and paths are checked here; its values block by
    block in `feature_blocks`, so a file bigger than memory is never read whole.
    """
    return read_features(path)


def feature_blocks(features, *, rows: int = BLOCK_ROWS, where: str = "features") -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 block) over the rows of `features` in order, each block checked finite.

    The one way every streaming command reads features: one block in memory
    at a time, whatever holds the rows (array, memmap, h5 dataset).
    """
    for start in range(0, len(features), rows):
        yield start, check_features(np.asarray(features[start : start + rows]), f"{where} rows {start}-")


def _write_npz(target: Path, feature_set: FeatureSet) -> None:
    with target.open("wb") as handle:
        np.savez(
            handle,
            paths=np.array(feature_set.paths, dtype=str),
            features=feature_set.features,
            metadata=np.array(json.dumps(feature_set.metadata)),
        )


def _write_h5(target: Path, feature_set: FeatureSet) -> None:
    import h5py

    with h5py.File(target, "w") as content:
        content.create_dataset("paths", data=feature_set.paths, dtype=h5py.string_dtype("utf-8"))
        content.create_dataset("features", data=feature_set.features)
        content.attrs["metadata"] = json.dumps(feature_set.metadata)


def _write_pkl(target: Path, feature_set: FeatureSet) -> None:
    content = {"paths": feature_set.paths, "features": feature_set.features, "metadata": feature_set.metadata}
    with target.open("wb") as handle:
        pickle.dump(content, handle, protocol=pickle.HIGHEST_PROTOCOL)


WRITERS = {".npz": _write_npz, ".h5": _write_h5, ".pkl": _write_pkl}


def write_features(path: str | os.PathLike, feature_set: FeatureSet) -> None:
    """Check and write a feature set atomically, in the format its suffix names.

    The toolkit's version is added to the metadata unless already there, and
    a model file's path relative to the output's folder (`anchored_model`).
    """
    writer = WRITERS[feature_format(path)]
    checked = _checked(feature_set.paths, feature_set.features, feature_set.metadata, Path(path).name)
    metadata = anchored_model({"toolkit_version": toolkit_version(), **checked.metadata}, Path(path).parent)
    checked = replace(checked, metadata=metadata)
    try:
        with atomic_path(path) as temporary:
            writer(temporary, checked)
    except OSError as error:
        raise cannot_write(path, error) from None


def merge_features(inputs: list[str | os.PathLike]) -> FeatureSet:
    """Concatenate the shards of one extraction run, in the order given.

    Shards must have the same number of features per row and agree on the
    metadata that makes rows comparable (model, layer, image size, weights).
    A path found again in a later shard is dropped there, and counted in the log.
    """
    if not inputs:
        raise OptionError("merge needs at least one feature file. Received: none")
    shards = [(Path(path).name, read_features(path)) for path in inputs]
    first_name, first = shards[0]
    for name, shard in shards[1:]:
        if shard.features.shape[1] != first.features.shape[1]:
            raise DataError(
                f"{name}: {shard.features.shape[1]} features per row, but {first_name} has "
                f"{first.features.shape[1]}; merge only shards of one extraction run."
            )
        for key in COMPARABLE_KEYS:
            if shard.metadata.get(key) != first.metadata.get(key):
                raise DataError(
                    f"{name}: {key}={shard.metadata.get(key)!r}, but {first_name} has "
                    f"{key}={first.metadata.get(key)!r}; merge only shards of one extraction run."
                )
    paths = [path for _, shard in shards for path in shard.paths]
    features = np.concatenate([shard.features for _, shard in shards])
    first_rows = {}
    for row, path in enumerate(paths):
        first_rows.setdefault(path, row)
    if len(first_rows) < len(paths):
        repeated = next(path for row, path in enumerate(paths) if first_rows[path] != row)
        logger.warning("Kept the first of %d duplicate paths (first: %s)", len(paths) - len(first_rows), repeated)
        keep = np.fromiter(first_rows.values(), dtype=np.int64, count=len(first_rows))
        paths, features = list(first_rows), features[keep]
    metadata = {key: value for key, value in first.metadata.items() if key not in SHARD_KEYS}
    return FeatureSet(paths, features, metadata)
