"""Embedding models: the shared tower, Siamese networks of types B, C and D, and SimCLR.

Types after Bell & Bala (2015), "Learning visual similarity for product
design with convolutional neural networks":

* B: a shared tower, contrastive loss on the Euclidean distance of a pair;
* C: B plus a category softmax on each branch;
* D: C with L2-normalised embeddings and cosine distance.

The tower (`embedding_model`) is what retrieval uses; the Siamese network
and SimCLR only train it. The tower is made of built-in Keras layers only, so
a saved tower reloads with plain `keras.models.load_model` in any process;
the training models' own pieces are registered Keras serialisables, which
reload once the toolkit is imported.
"""

from __future__ import annotations

from image_toolkit.models.backbones import build_backbone, resolve_weights
from image_toolkit.models.layers import PairDistance
from image_toolkit.models.losses import nt_xent_loss
from image_toolkit.models.runtime import keras

SIAMESE_TYPES = ("b", "c", "d")


def EmbeddingTower(
    backbone: str = "resnet18",
    *,
    weights: str | None = None,
    image_size: int = 224,
    embedding_dim: int = 128,
    normalize: bool = False,
    name: str = "embedding_model",
) -> keras.Model:
    """Backbone (average-pooled) -> Dense(embedding_dim) [-> L2 normalisation]."""
    weights = resolve_weights(backbone, weights)
    base = build_backbone(backbone, weights=weights, image_size=image_size)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = base(inputs)
    x = keras.layers.Dense(embedding_dim, dtype="float32", name="embedding")(x)
    if normalize:
        # A built-in layer, so the tower reloads with plain Keras, without the toolkit installed.
        x = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="l2_normalize")(x)
    return keras.Model(inputs, x, name=name)


def SiameseNetwork(tower: keras.Model, *, siamese_type: str, classes: int | None = None, name: str = "siamese") -> keras.Model:
    """Two images through one shared tower -> their distance (and, for C and D, class scores of each)."""
    if siamese_type not in SIAMESE_TYPES:
        raise ValueError(f"siamese_type: expected one of {SIAMESE_TYPES}. Received: {siamese_type!r}")
    shape = tower.input_shape[1:]
    image_a = keras.Input(shape=shape, name="image_a")
    image_b = keras.Input(shape=shape, name="image_b")
    embedding_a, embedding_b = tower(image_a), tower(image_b)
    metric = "cosine" if siamese_type == "d" else "euclidean"
    outputs = {"distance": PairDistance(metric, name="distance")(embedding_a, embedding_b)}
    if siamese_type in ("c", "d"):
        if not classes:
            raise ValueError("Siamese types c and d need the number of classes for their softmax heads.")
        head = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="category")
        outputs["class_a"] = keras.layers.Identity(name="class_a")(head(embedding_a))
        outputs["class_b"] = keras.layers.Identity(name="class_b")(head(embedding_b))
    return keras.Model({"image_a": image_a, "image_b": image_b}, outputs, name=name)


@keras.saving.register_keras_serializable(package="image_toolkit")
class SimCLR(keras.Model):
    """SimCLR: an encoder (the tower) and a projection head trained with NT-Xent on two views.

    Batches are pairs `(view_a, view_b)` of the same images under two random
    augmentations; no labels are used. `train_step` / `test_step` are
    overridden so `fit`, callbacks, progress bars and checkpoints all work.
    """

    def __init__(self, encoder: keras.Model, projection_dim: int = 128, temperature: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive. Received: {temperature}")
        self.encoder = encoder
        self.projection_dim = projection_dim
        self.temperature = temperature
        width = encoder.output_shape[-1]
        # Batch normalisation in the head, as in the SimCLR paper: without it a small
        # encoder's first projections are nearly equal and the loss stalls at log(2N - 1).
        self.projection = keras.Sequential(
            [
                keras.layers.Dense(width, use_bias=False),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
                keras.layers.Dense(projection_dim, dtype="float32"),
            ],
            name="projection_head",
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, images, training=False):
        return self.projection(self.encoder(images, training=training), training=training)

    def _loss(self, views, training: bool):
        view_a, view_b = views
        return nt_xent_loss(self(view_a, training=training), self(view_b, training=training), self.temperature)

    def train_step(self, data):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = self._loss(data, training=True)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        self.loss_tracker.update_state(self._loss(data, training=False))
        return {"loss": self.loss_tracker.result()}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "projection_dim": self.projection_dim,
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
