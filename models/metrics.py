"""F1 scores that skip unknown labels (NaN in `y_true`), for multi-label and multi-class tasks."""

from __future__ import annotations

import math
import numbers

from image_toolkit.models.runtime import keras

ops = keras.ops
AVERAGES = ("macro", "micro")
COUNTS = ("true_positives", "false_positives", "false_negatives", "seen")


def _check_arguments(num_classes, average, threshold, zero_division) -> None:
    """Refuse impossible arguments in the words of `keras.metrics.F1Score`, before any variable is made."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"Invalid `num_classes` argument value. Expected a positive integer. Received: num_classes={num_classes!r}")
    if average not in AVERAGES:
        raise ValueError(f"Invalid `average` argument value. Expected one of {{'macro', 'micro'}}. Received: average={average!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < threshold <= 1.0):
        raise ValueError(f"Invalid `threshold` argument value. Expected None or a number with 0 < threshold <= 1. Received: threshold={threshold!r}")
    if isinstance(zero_division, bool) or not isinstance(zero_division, numbers.Real) or not (
        zero_division in (0, 1) or math.isnan(zero_division)
    ):
        raise ValueError(f"Invalid `zero_division` argument value. Expected one of {{0.0, 1.0, nan}}. Received: zero_division={zero_division!r}")


@keras.saving.register_keras_serializable(package="image_toolkit")
class MaskedF1Score(keras.metrics.Metric):
    """Macro or micro F1 over the known cells of `y_true`, as scikit-learn's `f1_score` defines it.

    Multi-label (`threshold` a number): a prediction is positive where its
    probability is >= `threshold`; every label counts, each scored on its
    known cells. Equal to `f1_score(y, p, average=...)` on each label's (or,
    for micro, all) known cells.

    Multi-class (`threshold=None`): the prediction is the arg-max; rows with
    an unknown cell are left out. As scikit-learn does without `labels=`, the
    macro mean runs over the classes that occur in the true or the predicted
    classes seen so far; micro F1 is then accuracy.

    F1 is 2 TP / (2 TP + FP + FN). A label with no true and no predicted
    positive (zero denominator) scores `zero_division`, as in scikit-learn:
    0.0 (its default), 1.0, or NaN to leave that label out of the macro mean.

    `sample_weight` of shape (batch,) weighs each image, as scikit-learn's
    `sample_weight` does; a (batch, num_classes) weight weighs each cell.
    """

    def __init__(
        self,
        num_classes: int,
        average: str = "macro",
        threshold: float | None = 0.5,
        zero_division: float = 0.0,
        name: str | None = None,
        dtype=None,
    ):
        _check_arguments(num_classes, average, threshold, zero_division)
        super().__init__(name=name or f"{average}_f1", dtype=dtype)
        self.num_classes = int(num_classes)
        self.average = average
        self.threshold = None if threshold is None else float(threshold)
        self.zero_division = float(zero_division)
        # Weighted counts per label, and `seen`: unweighted count of true or predicted
        # occurrences, which decides (as in scikit-learn) which classes a multi-class mean runs over.
        self.counts = {
            key: self.add_variable(shape=(num_classes,), initializer="zeros", name=key) for key in COUNTS
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        unknown = ops.isnan(y_true)
        if self.threshold is None:
            # A multi-class row with any unknown cell has no known class: leave the row out.
            unknown = ops.broadcast_to(ops.any(unknown, axis=-1, keepdims=True), ops.shape(y_true))
            actual = ops.one_hot(ops.argmax(ops.where(unknown, 0.0, y_true), axis=-1), self.num_classes)
            predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes)
        else:
            actual = ops.cast(ops.where(unknown, 0.0, y_true) >= 0.5, "float32")
            predicted = ops.cast(y_pred >= self.threshold, "float32")
        known = ops.cast(ops.logical_not(unknown), "float32")
        actual, predicted = actual * known, predicted * known
        weight = known
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            if len(sample_weight.shape) == 1:
                sample_weight = ops.expand_dims(sample_weight, -1)
            weight = known * ops.broadcast_to(sample_weight, ops.shape(y_true))
        self.counts["true_positives"].assign_add(ops.sum(weight * actual * predicted, axis=0))
        self.counts["false_positives"].assign_add(ops.sum(weight * (1.0 - actual) * predicted, axis=0))
        self.counts["false_negatives"].assign_add(ops.sum(weight * actual * (1.0 - predicted), axis=0))
        self.counts["seen"].assign_add(ops.sum(ops.maximum(actual, predicted), axis=0))

    def result(self):
        tp, fp, fn, seen = (self.counts[key] for key in COUNTS)
        if self.average == "micro":
            return _f1(ops.sum(tp), ops.sum(fp), ops.sum(fn), self.zero_division)
        f1 = _f1(tp, fp, fn, self.zero_division)
        # Multi-label: every label; multi-class: the classes that occurred, as scikit-learn's unique_labels.
        counted = ops.ones_like(f1, dtype="bool") if self.threshold is not None else seen > 0
        if math.isnan(self.zero_division):
            counted = ops.logical_and(counted, ops.logical_not(ops.isnan(f1)))
        n_counted = ops.sum(ops.cast(counted, "float32"))
        total = ops.sum(ops.where(counted, f1, 0.0))
        return ops.where(n_counted > 0, total / ops.maximum(n_counted, 1.0), self.zero_division)

    def reset_state(self):
        for variable in self.counts.values():
            variable.assign(ops.zeros_like(variable))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "average": self.average,
            "threshold": self.threshold,
            "zero_division": self.zero_division,
        }


def _f1(tp, fp, fn, zero_division: float):
    """2 TP / (2 TP + FP + FN), or `zero_division` where the denominator is 0."""
    denominator = 2.0 * tp + fp + fn
    return ops.where(denominator > 0, 2.0 * tp / ops.maximum(denominator, 1e-12), zero_division)
