"""Predict labels of new images with a trained `best_model.h5`: `toolkit predict` and `inference.py`."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.formats.background import background_name, parse_background
from image_toolkit.data_tools.formats.images import check_images, find_images, require_readable
from image_toolkit.data_tools.formats.model_file import model_file_format, read_h5_metadata
from image_toolkit.data_tools.names import check_runtime
from image_toolkit.models.backbones import BACKBONES, preprocessing
from image_toolkit.models.openvino_runtime import model_file_key, openvino_forward
from image_toolkit.models.pipeline import image_dataset
from image_toolkit.models.runtime import keras

logger = logging.getLogger(__name__)

# A multi-label model's threshold for every label unless it stores tuned ones (`train --thresholds tuned`).
DEFAULT_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's probability per label and the labels at or above the threshold."""

    image: str
    probabilities: dict[str, float]
    labels: list[str]


def load_classifier(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """Load a toolkit classifier and its metadata (label names, backbone, image size, task)."""
    metadata = classifier_metadata(path)
    return keras.models.load_model(path, compile=False), metadata


def classifier_metadata(path: str | os.PathLike) -> dict:
    """A toolkit classifier's metadata, read without building the model (OpenVINO's cache may not need it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found; pass the best_model.h5 of a training run, or train one with toolkit train (python train.py).")
    try:
        metadata = read_h5_metadata(path)
    except OSError:
        metadata = None
    if metadata is None:
        raise DataError(
            f"{path}: not an image-toolkit model (no label metadata); use the best_model.h5 written by toolkit train (python train.py)."
        )
    return metadata


def load_embedding_model(path: str | Path) -> tuple[keras.Model, dict]:
    """Load an embedding tower (`embedding_model.keras`) and what its input needs.

    The backbone is the tower's nested model, named after it, which gives
    the preprocessing; the input shape gives the image size.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found; train one with 'toolkit train-siamese' or 'toolkit train-simclr'.")
    if model_file_format(path) is None:
        raise DataError(
            f"{path}: not a Keras model file (neither a .keras archive nor HDF5); "
            "pass the embedding_model.keras of a train-siamese or train-simclr run."
        )
    try:
        tower = keras.models.load_model(path, compile=False)
    except Exception as error:
        raise DataError(f"{path}: not a Keras model ({str(error).splitlines()[0]}).") from None
    backbones = [layer.name for layer in tower.layers if layer.name in BACKBONES]
    if not backbones:
        raise DataError(f"{path}: not an image-toolkit embedding model (no known backbone inside).")
    normalized = any(isinstance(layer, keras.layers.UnitNormalization) for layer in tower.layers)
    return tower, {"backbone": backbones[0], "image_size": int(tower.input_shape[1]), "normalized": normalized,
                   "background": _trained_background(path)}


def _trained_background(path: Path) -> str:
    """The --background of the run that made an embedding model, from the run.json beside it; white when none says."""
    try:
        return background_name(json.loads((path.parent / "run.json").read_text())["options"]["background"])
    except (OSError, ValueError, KeyError, TypeError):
        return background_name(None)


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image arguments as files: folders are searched recursively; missing paths are an error (`named_inputs`)."""
    return [path for path, _ in named_inputs(inputs)]


def named_inputs(inputs: list[str | os.PathLike]) -> list[tuple[Path, str]]:
    """Image arguments as (file, name): a folder's images named relative to it, a file by its path as given.

    The names are what a label CSV or the feedback store calls the images
    when the folder is the data set's image folder (`toolkit suggest`).
    A folder without images is worth a warning only beside inputs that
    have some; with none at all, the caller's error names the inputs.
    """
    named: list[tuple[Path, str]] = []
    empty = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = find_images(item)
            empty += [] if found else [item]
            named.extend((path, path.relative_to(item).as_posix()) for path in found)
        elif item.exists():
            named.append((item, str(item)))
        else:
            raise DataError(f"{item}: no such file or folder.")
    for folder in empty if named else []:
        logger.warning("%s: no image files in this folder", folder)
    return named


def classifier_preprocess(metadata: dict):
    """The input preprocessing of a toolkit classifier: its backbone's, or the one its metadata names.

    A model built on other features (a linear probe on pixel features)
    records its own under 'preprocess'.
    """
    return preprocessing(metadata.get("preprocess", metadata["backbone"]))


def classifier_forward(model_path: str | os.PathLike, metadata: dict, *, runtime: str = "tensorflow",
                       precision: str = "fp32"):
    """A preprocessed batch to probabilities: Keras' `predict_on_batch`, or the model compiled by OpenVINO (`runtime`).

    The Keras model is loaded for TensorFlow, and for OpenVINO only when its
    cache lacks the converted model or its parity check.
    """
    check_runtime(runtime, precision, tensorflow=("fp32",))
    load = functools.cache(lambda: keras.models.load_model(model_path, compile=False))
    if runtime == "tensorflow":
        return load().predict_on_batch
    key = model_file_key(model_path, output="scores", layer=None, image_size=metadata["image_size"])  # the whole model
    return openvino_forward(load, label=Path(model_path).name, key=key, precision=precision,
                            preprocess=classifier_preprocess(metadata))[0]


def classifier_probabilities(paths: list[Path], model: keras.Model | None, metadata: dict, *, batch_size: int = 32,
                             forward=None) -> np.ndarray:
    """The model's probability per label (columns in metadata's label order) for each of `paths`, all readable.

    `forward` runs a batch (default: the Keras model's `predict_on_batch`; see `classifier_forward`, with which
    `model` may be None).
    """
    forward = forward or model.predict_on_batch
    dataset = image_dataset(
        paths,
        image_size=metadata["image_size"],
        preprocess=classifier_preprocess(metadata),
        batch_size=batch_size,
        background=parse_background(metadata.get("background")),  # the training one; none recorded: white
    )
    batches = [np.asarray(forward(batch)) for batch in dataset]
    return np.concatenate(batches) if batches else np.zeros((0, len(metadata["label_names"])), np.float32)


def label_thresholds(metadata: dict, threshold: float | None = None) -> np.ndarray:
    """Each label's threshold: `threshold` for all when given, else the model's stored ones, else 0.5."""
    n = len(metadata["label_names"])
    if threshold is not None:
        return np.full(n, float(threshold))
    return np.asarray(metadata.get("thresholds") or [DEFAULT_THRESHOLD] * n, dtype=float)


def decide(probabilities: np.ndarray, task: str, thresholds: np.ndarray) -> np.ndarray:
    """0/1 decisions: the top class for multiclass, each label at or above its threshold for multilabel."""
    if task == "multiclass":
        return np.eye(probabilities.shape[1])[probabilities.argmax(axis=1)]
    return (probabilities >= thresholds).astype(float)


def predict_images(
    inputs: list[str | os.PathLike],
    model_path: str | os.PathLike,
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    runtime: str = "tensorflow",
    precision: str = "fp32",
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for every readable image, and (path, reason) for the unreadable ones.

    Images of any size and colour mode are accepted: the pipeline converts
    them to the model's RGB input size. A multi-label model gives the labels
    at or above `threshold`, by default its own per-label thresholds.
    `runtime` 'openvino' runs the model with OpenVINO (`precision` fp32, bf16 or auto).
    """
    check_runtime(runtime, precision, tensorflow=("fp32",))
    metadata = classifier_metadata(model_path)
    paths = expand_inputs(inputs)
    usable, skipped = check_images(paths)
    paths = [path for path, ok in zip(paths, usable) if ok]
    require_readable(len(paths), skipped, ", ".join(map(str, inputs)), fix="pass JPEG, PNG, BMP or GIF files or folders")
    forward = classifier_forward(model_path, metadata, runtime=runtime, precision=precision)
    probabilities = classifier_probabilities(paths, None, metadata, batch_size=batch_size, forward=forward)
    names = metadata["label_names"]
    decisions = decide(probabilities, metadata["task"], label_thresholds(metadata, threshold))
    chosen = [[name for name, given in zip(names, row) if given] for row in decisions]
    predictions = [
        Prediction(str(path), {name: round(float(p), 4) for name, p in zip(names, row)}, labels)
        for path, row, labels in zip(paths, probabilities, chosen)
    ]
    return predictions, skipped
