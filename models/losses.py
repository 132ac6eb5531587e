"""Losses that ignore unknown labels (NaN in `y_true`)."""

from __future__ import annotations

from image_toolkit.models.runtime import keras

ops = keras.ops


@keras.saving.register_keras_serializable(package="image_toolkit")
def masked_binary_crossentropy(y_true, y_pred, pos_weight=None, neg_weight=None):
    """Per-image binary cross-entropy averaged over the image's known labels.

    Unknown cells (NaN) are replaced before the log terms are formed, not only
    masked afterwards: a NaN that reaches the graph poisons the gradient even
    where `where` drops its value.
    """
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    known = ops.logical_not(ops.isnan(y_true))
    y = ops.where(known, y_true, 0.0)
    p = ops.clip(y_pred, keras.backend.epsilon(), 1.0 - keras.backend.epsilon())
    positive = y * ops.log(p)
    negative = (1.0 - y) * ops.log(1.0 - p)
    if pos_weight is not None:
        positive = positive * ops.convert_to_tensor(pos_weight, "float32")
    if neg_weight is not None:
        negative = negative * ops.convert_to_tensor(neg_weight, "float32")
    cell_loss = ops.where(known, -(positive + negative), 0.0)
    n_known = ops.sum(ops.cast(known, "float32"), axis=-1)
    return ops.sum(cell_loss, axis=-1) / ops.maximum(n_known, 1.0)


@keras.saving.register_keras_serializable(package="image_toolkit")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """`masked_binary_crossentropy` as a Loss; optional per-label weights for --class-weight balanced."""

    def __init__(
        self,
        pos_weight: list[float] | None = None,
        neg_weight: list[float] | None = None,
        reduction: str = "sum_over_batch_size",
        name: str = "masked_binary_crossentropy",
    ):
        super().__init__(reduction=reduction, name=name)
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight

    def call(self, y_true, y_pred):
        return masked_binary_crossentropy(y_true, y_pred, self.pos_weight, self.neg_weight)

    def get_config(self) -> dict:
        return {
            "pos_weight": self.pos_weight,
            "neg_weight": self.neg_weight,
            "reduction": self.reduction,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="image_toolkit")
def contrastive_loss(y_true, distance, margin=1.0):
    """Hadsell et al. (2006): pull same-class pairs together, push others beyond `margin`.

    `y_true` is 1 for a same-class pair, 0 otherwise; `distance` the pair's distance.
    """
    y = ops.cast(ops.reshape(y_true, (-1,)), "float32")
    d = ops.cast(ops.reshape(distance, (-1,)), "float32")
    return y * ops.square(d) + (1.0 - y) * ops.square(ops.maximum(margin - d, 0.0))


@keras.saving.register_keras_serializable(package="image_toolkit")
class ContrastiveLoss(keras.losses.Loss):
    """`contrastive_loss` with its margin, serialisable (unlike a closure over `margin`)."""

    def __init__(self, margin: float = 1.0, reduction: str = "sum_over_batch_size", name: str = "contrastive_loss"):
        super().__init__(reduction=reduction, name=name)
        self.margin = margin

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, self.margin)

    def get_config(self) -> dict:
        return {"margin": self.margin, "reduction": self.reduction, "name": self.name}


def nt_xent_loss(projections_a, projections_b, temperature: float):
    """NT-Xent (Chen et al., SimCLR, 2020): each view must pick its partner among 2N - 1 others.

    Returns the mean loss over the 2N views of a batch of N images.
    """
    z = ops.normalize(ops.concatenate([projections_a, projections_b], axis=0), axis=-1)
    z = ops.cast(z, "float32")
    n = ops.shape(projections_a)[0]
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    logits = logits - 1e9 * ops.eye(2 * n)  # a view is never its own partner
    partners = ops.concatenate([ops.arange(n, 2 * n), ops.arange(0, n)], axis=0)
    return ops.mean(keras.losses.sparse_categorical_crossentropy(partners, logits, from_logits=True))
