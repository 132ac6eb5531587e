"""Export a toolkit model for other runtimes: `toolkit export` (SavedModel, ONNX, LiteRT, OpenVINO).

The exported model takes raw RGB pixels (float32, 0-255, NHWC at the model's
image size), because the backbone's preprocessing is wrapped into it: a user
of onnxruntime or OpenVINO then needs only to decode and resize an image,
never to know which backbone was trained or how it scales its input. Keras'
own `Model.export` does the conversion for every format. The label names
and the input spec are written beside the model (`labels.json` in a folder
format, `NAME.json` next to a single file), so the output columns have names.

Each output is written in a hidden staging folder beside the target and moved
into place at the end: a failed conversion leaves neither a partial model
nor an empty folder.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

from image_toolkit.data_tools.atomic import flush_to_disk, make_folder, remove_empty, staging_folder
from image_toolkit.data_tools.errors import DataError, OptionError, missing_extra
from image_toolkit.data_tools.formats.model_file import model_file_format
from image_toolkit.models.inference import classifier_preprocess, load_classifier, load_embedding_model
from image_toolkit.models.runtime import keras

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """How one `--format` is written: Keras' name for it, the default output name and the packages it needs."""

    keras_format: str
    suffix: str  # appended to the model's stem for the default output: "_savedmodel" (a folder) or ".onnx" (a file)
    folder: bool
    packages: tuple[str, ...] = ()
    # The file inside the output folder that Keras writes (OpenVINO's .xml, its weights in a .bin beside it).
    inner_file: str | None = None


FORMATS = {
    "savedmodel": ExportFormat("tf_saved_model", "_savedmodel", folder=True),
    # Keras converts with tf2onnx (which needs onnx); onnxruntime runs the result.
    "onnx": ExportFormat("onnx", ".onnx", folder=False, packages=("onnxruntime", "tf2onnx", "onnx")),
    # TensorFlow's own LiteRT converter; ai-edge-litert (the `litert` extra) is only the runtime.
    "litert": ExportFormat("litert", ".tflite", folder=False),
    "openvino": ExportFormat("openvino", "_openvino", folder=True, packages=("openvino",), inner_file="model.xml"),
}

# The sidecar file's name inside a folder format.
LABELS_FILE = "labels.json"


def require_extra(format_name: str) -> None:
    """Fail before any work when `format_name` needs packages that are not installed, naming the pip command."""
    missing = [name for name in FORMATS[format_name].packages if importlib.util.find_spec(name) is None]
    if missing:
        raise missing_extra(f"--format {format_name}", " and ".join(missing), format_name)


def default_output(model_path: str | os.PathLike, format_name: str) -> Path:
    """The output beside the model: `best_model_savedmodel/`, `best_model.onnx`, `best_model.tflite`, `best_model_openvino/`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + FORMATS[format_name].suffix)


def sidecar_path(output: str | os.PathLike, format_name: str) -> Path:
    """Where the labels and input spec go: inside a folder format, `NAME.json` beside a file."""
    output = Path(output)
    return output / LABELS_FILE if FORMATS[format_name].folder else output.with_name(output.name + ".json")


def load_exportable(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """A classifier (`best_model.h5`) or an embedding tower (`embedding_model.keras`), and its metadata.

    An embedding tower has no label names; its metadata says so (`kind`), so
    the sidecar describes an embedding instead of probability columns.
    """
    path = Path(path)
    if path.is_file() and model_file_format(path) == "keras":
        model, metadata = load_embedding_model(path)
        return model, {**metadata, "kind": "embedding"}
    model, metadata = load_classifier(path)
    return model, {**metadata, "kind": "classifier"}


def with_preprocessing(model: keras.Model, metadata: dict) -> keras.Model:
    """`model` behind its own input preprocessing: a model that takes raw RGB (0-255) at the model's size."""
    size = int(metadata["image_size"])
    inputs = keras.Input((size, size, 3), dtype="float32", name="rgb")
    scaled = keras.layers.Lambda(classifier_preprocess(metadata), name="preprocess")(inputs)
    return keras.Model(inputs, model(scaled), name=f"{model.name}_raw_rgb")


def describe(metadata: dict, format_name: str, exported: keras.Model) -> dict:
    """What a runtime's user needs to call the exported model and read its output."""
    size = int(metadata["image_size"])
    record = {
        "format": format_name,
        "kind": metadata["kind"],
        "backbone": metadata["backbone"],
        "input": {"name": "rgb", "shape": [None, size, size, 3], "dtype": "float32",
                  "layout": "NHWC", "values": "raw RGB 0-255, resized to the image size (preprocessing is inside the model)"},
        "output": {"shape": [None, int(exported.output_shape[-1])]},
    }
    if metadata["kind"] == "classifier":
        record["output"]["values"] = "probability per label, in label_names order"
        record["task"] = metadata["task"]
        record["label_names"] = list(metadata["label_names"])
    else:
        record["output"]["values"] = "embedding" + (" (unit length)" if metadata.get("normalized") else "")
    return record


def _place(staged: Path, target: Path, trash: Path) -> None:
    """Move a staged output onto `target`; an old folder there is moved into `trash` first (os.replace cannot replace one)."""
    if target.is_dir() and not target.is_symlink():
        os.replace(target, trash / f"old-{target.name}")
    os.replace(staged, target)


def export_model(
    model_path: str | os.PathLike,
    format_name: str,
    *,
    output: str | os.PathLike | None = None,
) -> dict:
    """Export the model at `model_path` in `format_name`, preprocessing included; return the sidecar's record.

    The record adds `path` (the exported model) and `labels` (the sidecar).
    """
    if format_name not in FORMATS:
        raise OptionError(f"--format: expected one of {', '.join(FORMATS)}. Received: {format_name!r}.")
    require_extra(format_name)
    spec = FORMATS[format_name]
    output = Path(output) if output is not None else default_output(model_path, format_name)
    if spec.folder and output.exists() and not output.is_dir():
        raise DataError(f"{output}: is a file; --format {format_name} writes a folder, give --output a folder name.")
    if not spec.folder and output.is_dir():
        raise DataError(f"{output}: is a folder; --format {format_name} writes one file, give --output a file name.")
    model, metadata = load_exportable(model_path)
    exported = with_preprocessing(model, metadata)
    record = describe(metadata, format_name, exported)
    sidecar = sidecar_path(output, format_name)

    created = make_folder(output.parent)
    staging = None
    written = False
    try:
        staging = staging_folder(output.parent, output.name)
        staged = staging / output.name
        if spec.folder:
            staged.mkdir()
        keras_target = staged / spec.inner_file if spec.inner_file else staged
        logger.info("Exporting %s as %s to %s", model_path, format_name, output)
        # An explicit signature: ONNX export refuses a model that was never called without one.
        signature = [keras.InputSpec(shape=exported.input_shape, dtype="float32", name="rgb")]
        with warnings.catch_warnings():
            # Keras' tf2onnx patch for NumPy 2 probes `np.object`, which NumPy answers with a FutureWarning: noise to a user.
            warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
            exported.export(os.fspath(keras_target), format=spec.keras_format, verbose=False, input_signature=signature)
        staged_sidecar = staging / "sidecar.json" if not spec.folder else staged / LABELS_FILE
        staged_sidecar.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for path in (staged, staged_sidecar):
            flush_to_disk(path)
        if not spec.folder:
            _place(staged_sidecar, sidecar, staging)
        _place(staged, output, staging)
        written = True
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not written:
            remove_empty(created)
    return {**record, "path": str(output), "labels": str(sidecar)}
