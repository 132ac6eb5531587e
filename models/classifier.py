"""The transfer-learning classifier: backbone -> Dense(head_units, relu) [-> Dropout] -> Dense(classes)."""

from __future__ import annotations

from image_toolkit.models.backbones import build_backbone, resolve_weights
from image_toolkit.models.runtime import keras


def ImageClassifier(
    backbone: str = "resnet50",
    *,
    weights: str | None = "imagenet",
    image_size: int = 224,
    head_units: int = 64,
    classes: int,
    classifier_activation: str = "sigmoid",
    fine_tune: bool = False,
    dropout: float = 0.0,
    name: str = "image_classifier",
) -> keras.Model:
    """Build the classifier on a named backbone.

    A pretrained backbone is frozen and run in inference mode (its batch
    norm statistics kept) unless `fine_tune`; a randomly initialised one
    must learn, so it is always trainable. The output layer computes in
    float32 so mixed precision never produces float16 probabilities.
    A `dropout` above 0 adds a Dropout layer ("head_dropout") before the
    output; at 0 the model has none, so models saved before it load unchanged.
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
    weights = resolve_weights(backbone, weights)
    base = build_backbone(backbone, weights=weights, image_size=image_size)
    pretrained = weights is not None
    base.trainable = fine_tune or not pretrained
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = base(inputs, training=False) if pretrained else base(inputs)
    x = keras.layers.Dense(head_units, activation="relu", name="head_dense")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        classes, activation=classifier_activation, dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=name)
