"""F1 scores that skip unknown labels (NaN in `y_true`), for multi-label and multi-class tasks."""

from __future__ import annotations

from image_toolkit.models.runtime import keras

ops = keras.ops
AVERAGES = ("macro", "micro")


@keras.saving.register_keras_serializable(package="image_toolkit")
class MaskedF1Score(keras.metrics.Metric):
    """Macro or micro F1 over the known cells of `y_true`.

    A prediction is positive where its probability is >= `threshold`
    (multi-label), or at the arg-max when `threshold` is None (multi-class,
    where micro F1 equals accuracy). A label with no true or predicted
    positive scores 0, as scikit-learn's `f1_score(zero_division=0)` does,
    so the two agree exactly.
    """

    def __init__(self, num_classes: int, average: str = "macro", threshold: float | None = 0.5, name: str | None = None, dtype=None):
        if average not in AVERAGES:
            raise ValueError(f"average: expected one of {AVERAGES}. Received: average={average!r}")
        super().__init__(name=name or f"{average}_f1", dtype=dtype)
        self.num_classes = num_classes
        self.average = average
        self.threshold = threshold
        self.counts = {
            key: self.add_variable(shape=(num_classes,), initializer="zeros", name=key)
            for key in ("true_positives", "false_positives", "false_negatives")
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        known = ops.cast(ops.logical_not(ops.isnan(y_true)), "float32")
        actual = ops.cast(ops.where(ops.isnan(y_true), 0.0, y_true) >= 0.5, "float32")
        if self.threshold is None:
            predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes)
        else:
            predicted = ops.cast(y_pred >= self.threshold, "float32")
        actual, predicted = actual * known, predicted * known
        self.counts["true_positives"].assign_add(ops.sum(actual * predicted, axis=0))
        self.counts["false_positives"].assign_add(ops.sum((1.0 - actual) * predicted, axis=0))
        self.counts["false_negatives"].assign_add(ops.sum(actual * (1.0 - predicted), axis=0))

    def result(self):
        tp, fp, fn = (self.counts[key] for key in ("true_positives", "false_positives", "false_negatives"))
        if self.average == "micro":
            tp, fp, fn = ops.sum(tp), ops.sum(fp), ops.sum(fn)
        denominator = 2.0 * tp + fp + fn
        f1 = ops.where(denominator > 0, 2.0 * tp / ops.maximum(denominator, 1e-12), 0.0)
        return ops.mean(f1)

    def reset_state(self):
        for variable in self.counts.values():
            variable.assign(ops.zeros_like(variable))

    def get_config(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "average": self.average,
            "threshold": self.threshold,
            "name": self.name,
            "dtype": self.dtype,
        }
