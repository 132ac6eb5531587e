"""What a toolkit model file records beside its weights, read without loading TensorFlow.

`toolkit train` stores the label names, backbone, image size and task of a
classifier as JSON in one HDF5 attribute of `best_model.h5`; commands that
only need the label names (keyword search) read them here, cheaply. Every
loader first checks that the file is whole (`model_file_format`).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import h5py

from image_toolkit.data_tools.atomic import atomic_path
from image_toolkit.data_tools.errors import DataError

METADATA_ATTRIBUTE = "image_toolkit"
# The first bytes of the two formats Keras saves: a `.keras` file is a zip archive, an `.h5` file HDF5.
SIGNATURES = {"keras": b"PK\x03\x04", "h5": b"\x89HDF\r\n\x1a\n"}


def _is_complete(path: Path, kind: str) -> bool:
    """Whether a file of that format reads to its end: a zip's directory and checksums, an HDF5 file's recorded length."""
    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is None
        with h5py.File(path, "r"):
            return True
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def model_file_format(path: str | os.PathLike) -> str | None:
    """'keras' or 'h5' by the file's first bytes, whatever its name; None for a file of neither format.

    A file that starts as one of them but does not read to its end is a
    DataError saying so. Keras calls a `.keras` archive it cannot open "File
    not found", and h5py a truncated file unreadable; both send the user
    looking for a file that is there, when it was cut short (an interrupted
    copy or download, a full disk) and has to be copied or trained again.
    """
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(8)
    kind = next((name for name, signature in SIGNATURES.items() if head[: len(signature)] == signature[: len(head)]), None)
    if kind is not None and not _is_complete(path, kind):
        raise DataError(
            f"{path}: not a complete Keras model file (truncated or damaged); copy the whole file again, or train the model again."
        )
    return kind


def read_h5_metadata(path: str | os.PathLike) -> dict | None:
    """The toolkit metadata of an HDF5 model, or None if it has none (or is no HDF5 file).

    A model file cut short is a DataError (`model_file_format`).
    """
    if model_file_format(path) != "h5":
        return None
    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get(METADATA_ATTRIBUTE)
    return None if raw is None else json.loads(raw)


def update_h5_metadata(path: str | os.PathLike, fields: dict) -> None:
    """Add `fields` to an HDF5 model's toolkit metadata: the file is copied, changed and moved into place.

    A run killed meanwhile leaves the old file whole (and a temporary copy).
    """
    metadata = read_h5_metadata(path)
    if metadata is None:
        raise DataError(f"{path}: not an image-toolkit model (no label metadata).")
    with atomic_path(path) as temporary:
        shutil.copyfile(path, temporary)
        with h5py.File(temporary, "a") as handle:
            handle.attrs[METADATA_ATTRIBUTE] = json.dumps({**metadata, **fields})
