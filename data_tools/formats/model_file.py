"""What a toolkit model file records beside its weights, read without loading TensorFlow.

`toolkit train` stores the label names, backbone, image size and task of a
classifier as JSON in one HDF5 attribute of `best_model.h5`; commands that
only need the label names (keyword search) read them here, cheaply.
"""

from __future__ import annotations

import json
import os

import h5py

METADATA_ATTRIBUTE = "image_toolkit"


def read_h5_metadata(path: str | os.PathLike) -> dict | None:
    """The toolkit metadata of an HDF5 model, or None if it has none."""
    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get(METADATA_ATTRIBUTE)
    return None if raw is None else json.loads(raw)
