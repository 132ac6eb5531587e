"""ResNet18 (He et al., 2015) as a functional Keras model, in the style of `keras.applications`.

Keras ships ResNet50 and deeper; the fashion-similarity project this toolkit
absorbs used ResNet18, which trains in reasonable time on a CPU. Layer names
follow `keras.applications.ResNet50` (`conv1_conv`, `conv2_block1_1_conv`,
...), so a layer can be picked by name.
"""

from __future__ import annotations

from image_toolkit.models.runtime import keras

layers = keras.layers


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
    """Build ResNet18; there are no pretrained Keras weights for it, so `weights` must be None or a file."""
    if weights == "imagenet":
        raise ValueError("resnet18 has no ImageNet weights in Keras; use weights=None or a weights file.")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape or (224, 224, 3))
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
    if weights not in (None, "none"):
        model.load_weights(weights)
    return model
