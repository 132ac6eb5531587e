"""ResNet18 (He et al., 2015) as a functional Keras model, in the style of `keras.applications`.

Keras ships ResNet50 and deeper; the fashion-similarity project this toolkit
absorbs used ResNet18, which trains in reasonable time on a CPU. Layer names
follow `keras.applications.ResNet50` (`conv1_conv`, `conv2_block1_1_conv`,
...), so a layer can be picked by name.
"""

from __future__ import annotations

import os
from pathlib import Path

from image_toolkit.models.runtime import keras

layers = keras.layers
DEFAULT_SIZE = 224
MIN_SIZE = 32


def _check_arguments(weights, input_tensor, input_shape, pooling, classes, include_top) -> None:
    """Refuse arguments that cannot work, with the rule, the allowed values and what was received."""
    if weights == "imagenet":
        raise ValueError(
            "resnet18 has no ImageNet weights in Keras: the `weights` argument should be either "
            "`None` (random initialization) or the path to the weights file to be loaded. Received: weights='imagenet'"
        )
    if not (weights is None or (isinstance(weights, (str, os.PathLike)) and Path(weights).is_file())):
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization) "
            f"or the path to an existing weights file to be loaded. Received: weights={weights!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"The `pooling` argument should be one of {{None, 'avg', 'max'}}. Received: pooling={pooling!r}")
    if include_top and not (isinstance(classes, int) and classes >= 1):
        raise ValueError(f"The `classes` argument should be a positive integer. Received: classes={classes!r}")
    if input_tensor is not None:
        shape, what = tuple(input_tensor.shape[1:]), f"input_tensor.shape={tuple(input_tensor.shape)}"
    else:
        shape, what = input_shape, f"input_shape={input_shape}"
    if shape is None:
        return
    if len(shape) != 3:
        raise ValueError(f"`input_shape` must be a tuple of three integers (height, width, channels). Received: {what}")
    if any(size is not None and size < MIN_SIZE for size in shape[:2]):
        raise ValueError(f"Input size must be at least {MIN_SIZE}x{MIN_SIZE}; Received: {what}")


def _basic_block(x, filters: int, stride: int, name: str):
    """Two 3x3 convolutions with a shortcut (projected when the shape changes)."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_0_bn")(shortcut)
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_2_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def ResNet18(
    include_top: bool = False,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = "avg",
    classes: int = 1000,
    classifier_activation: str = "softmax",
    name: str = "resnet18",
) -> keras.Model:
    """Build ResNet18; there are no pretrained Keras weights for it, so `weights` is None or a file.

    Arguments are checked before any layer is built, as in `keras.applications`:
    `weights` must be None (random initialisation) or the path of an existing
    weights file; the input must be at least 32 x 32 pixels (five stride-2
    steps); `pooling` one of None, 'avg' or 'max'.
    """
    _check_arguments(weights, input_tensor, input_shape, pooling, classes, include_top)
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape or (DEFAULT_SIZE, DEFAULT_SIZE, 3))
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="conv1_conv")(inputs)
    x = layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=2):
        for block in (1, 2):
            stride = 2 if block == 1 and stage > 2 else 1
            x = _basic_block(x, filters, stride, name=f"conv{stage}_block{block}")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
