"""Small custom layers of the embedding models, registered so saved models reload anywhere."""

from __future__ import annotations

from image_toolkit.models.runtime import keras

ops = keras.ops
DISTANCES = ("euclidean", "cosine")


@keras.saving.register_keras_serializable(package="image_toolkit")
class PairDistance(keras.layers.Layer):
    """Distance between two embeddings: Euclidean, or cosine distance (1 - cosine similarity)."""

    def __init__(self, metric: str = "euclidean", **kwargs):
        if metric not in DISTANCES:
            raise ValueError(f"metric: expected one of {DISTANCES}. Received: metric={metric!r}")
        super().__init__(**kwargs)
        self.metric = metric

    def call(self, a, b):
        a, b = ops.cast(a, "float32"), ops.cast(b, "float32")
        if self.metric == "cosine":
            similarity = ops.sum(ops.normalize(a, axis=-1) * ops.normalize(b, axis=-1), axis=-1, keepdims=True)
            return 1.0 - similarity
        return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=-1, keepdims=True), 1e-12))

    def compute_output_shape(self, a_shape, b_shape):
        return (a_shape[0], 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "metric": self.metric}
