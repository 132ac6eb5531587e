"""Backbones for transfer learning: the Keras applications, plus a tiny CNN.

Each entry pairs a builder (the `keras.applications` signature) with that
network's own input preprocessing, so the pipeline always feeds a backbone
what its weights were trained on. `small_cnn` has no pretrained weights; it
exists so that tests and CPU-only users can train in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.models.resnet18 import ResNet18
from image_toolkit.models.runtime import keras

logger = logging.getLogger(__name__)


def SmallCNN(
    include_top: bool = False,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = "avg",
    name: str = "small_cnn",
) -> keras.Model:
    """Three conv blocks (32, 64, 128 filters) and global average pooling.

    No batch normalisation: on the few hundred images this network is meant
    for, moving statistics lag the weights and validation scores swing from
    epoch to epoch.

    Arguments follow `keras.applications`; `include_top` and `weights` are
    accepted for that reason, but the network has no top and no pretrained
    weights.
    """
    if include_top or weights not in (None, "none"):
        raise ValueError(f"small_cnn has no top and no pretrained weights. Received: {include_top=}, {weights=}.")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape or (64, 64, 3))
    x = inputs
    for block, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{block}_conv")(x)
        if block < 3:
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


def _scale_to_unit_range(images):
    return images / 127.5 - 1.0


# Caffe's channel order (BGR) as a matrix, and its ImageNet mean per BGR channel: Keras' "caffe" preprocessing.
_RGB_TO_BGR = np.eye(3, dtype="float32")[::-1].copy()
_CAFFE_MEAN = np.array([103.939, 116.779, 123.68], dtype="float32")


def caffe_preprocess(images):
    """Keras' preprocessing of ResNet50 and VGG16 (RGB to BGR, less the ImageNet mean), bit for bit, faster.

    Keras flips the channels with `reverse`, which cost 1.1 ms of CPU per
    224-px image in the input pipeline; a product with the permutation
    matrix costs 0.4 ms and gives the same bits (each output is one input
    times 1, plus zeros). With OpenVINO's forward pass 2.5x TensorFlow's,
    the pipeline's CPU time decides how close files-to-features comes to
    the in-memory rate on a 2-core machine (issue 18).
    """
    return keras.ops.tensordot(images, _RGB_TO_BGR, axes=1) - _CAFFE_MEAN


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A backbone's builder, its preprocessing and the input size its weights expect."""

    builder: Callable[..., keras.Model]
    preprocess: Callable
    default_size: int
    min_size: int
    has_imagenet_weights: bool = True


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(keras.applications.ResNet50, caffe_preprocess, 224, 32),
    "inceptionv3": Backbone(keras.applications.InceptionV3, keras.applications.inception_v3.preprocess_input, 299, 75),
    "mobilenetv2": Backbone(keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input, 224, 32),
    "efficientnetb0": Backbone(keras.applications.EfficientNetB0, keras.applications.efficientnet.preprocess_input, 224, 32),
    "vgg16": Backbone(keras.applications.VGG16, caffe_preprocess, 224, 32),
    "resnet18": Backbone(ResNet18, _scale_to_unit_range, 224, 32, has_imagenet_weights=False),
    "small_cnn": Backbone(SmallCNN, _scale_to_unit_range, 64, 8, has_imagenet_weights=False),
}


def unit_range(images):
    """Raw pixels (0-255) scaled to [0, 1]: the preprocessing of `--model pixels` features."""
    return images / 255.0


# What `preprocessing` accepts beside the backbone names: models fed raw pixels (a linear probe on pixel features).
PIXELS = "pixels"


def preprocessing(name: str) -> Callable:
    """The input preprocessing called `name`: a backbone's own, or 'pixels' (scaled to [0, 1])."""
    return unit_range if name == PIXELS else get_backbone(name).preprocess


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`, or an error listing the known backbones."""
    if name not in BACKBONES:
        raise OptionError(f"--backbone: expected one of {', '.join(BACKBONES)}. Received: {name!r}.")
    return BACKBONES[name]


# The ways `--weights` says random initialisation.
NO_WEIGHTS = (None, "none", "None")


def resolve_weights(name: str, weights: str | None) -> str | None:
    """Normalise `--weights` to 'imagenet', None or an existing file path.

    `small_cnn` has no ImageNet weights; asked for them (the default), it
    falls back to random initialisation with a warning rather than failing.
    """
    if weights in NO_WEIGHTS:
        return None
    if weights == "imagenet":
        if not get_backbone(name).has_imagenet_weights:
            warnings.warn(f"{name} has no ImageNet weights; starting from random weights.", stacklevel=2)
            return None
        return "imagenet"
    return os.fspath(weights)


def check_backbone_options(name: str, *, weights: str | None, image_size: int) -> None:
    """Refuse a backbone, weights file or input size that cannot work, before anything is built or written."""
    spec = get_backbone(name)
    if image_size < spec.min_size:
        raise OptionError(f"--image-size: {name} needs at least {spec.min_size} pixels. Received: {image_size}.")
    if weights not in (*NO_WEIGHTS, "imagenet") and not Path(weights).is_file():
        raise OptionError(f"--weights: {weights} is not a file; use imagenet, none or the path of a weights file.")


@contextlib.contextmanager
def _keras_messages_off() -> Iterator[None]:
    """Keep Keras' own messages off the screen for a while, then restore the setting.

    Keras prints "Downloading data from https://..." and a download bar on
    stdout (`io_utils.print_msg`) while interactive logging is on; with it
    off they go to absl's log at INFO, which the toolkit keeps quiet.
    """
    was_on = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_on:
            keras.config.enable_interactive_logging()


def _download_failed(error: Exception) -> bool:
    """Whether a builder's error is Keras failing to fetch (or check) a weights file."""
    text = str(error)
    return "URL fetch failure" in text or "Incomplete or corrupted file" in text or isinstance(error, OSError)


def build_backbone(name: str, *, weights: str | None, image_size: int, include_top: bool = False) -> keras.Model:
    """Build a backbone with the requested weights: average-pooled without its top, or whole.

    With `include_top` the network ends in its 1000 ImageNet class scores
    (`toolkit get-inception-output`); ImageNet weights then fix the input
    size (299 px for InceptionV3, 224 px for the others).

    ImageNet weights are read from Keras' cache (~/.keras/models), which
    Keras fills on first use without a word on screen: its download line
    would otherwise be printed before an offline failure. Offline, that
    failure is one line naming the two ways around it, a `DataError` (exit 1,
    a problem of the environment, not of the command line).
    """
    check_backbone_options(name, weights=weights, image_size=image_size)
    spec = get_backbone(name)
    weights = resolve_weights(name, weights)
    shape = (image_size, image_size, 3)
    try:
        with _keras_messages_off() if weights == "imagenet" else contextlib.nullcontext():
            model = spec.builder(
                include_top=include_top,
                weights="imagenet" if weights == "imagenet" else None,
                input_shape=shape,
                pooling=None if include_top else "avg",
            )
    except Exception as error:
        if weights == "imagenet" and _download_failed(error):
            raise DataError(
                f"--weights imagenet: cannot download the ImageNet weights of {name} (no internet?); "
                "use --weights none, or --weights PATH with a local weights file."
            ) from None
        if isinstance(error, ValueError):
            raise OptionError(f"--backbone {name}: {error}") from None
        raise
    if weights not in (None, "imagenet"):
        try:
            model.load_weights(weights)
        except Exception as error:
            raise OptionError(
                f"--weights {weights}: does not fit the {name} network "
                f"({str(error).splitlines()[0]})."
            ) from None
        logger.info("Loaded backbone weights from %s", weights)
    return model
