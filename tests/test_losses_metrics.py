import math
import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score

from image_toolkit.models.losses import MaskedBinaryCrossentropy
from image_toolkit.models.metrics import MaskedF1Score
from image_toolkit.models.runtime import keras, tf

Y_TRUE = np.array([[1, 0, np.nan], [0, np.nan, 1], [1, 1, 0], [np.nan, 0, 1], [0, 0, 0]], dtype=np.float32)
Y_PRED = np.array([[0.9, 0.2, 0.7], [0.6, 0.1, 0.8], [0.8, 0.3, 0.1], [0.5, 0.6, 0.4], [0.1, 0.1, 0.9]], dtype=np.float32)


def test_masked_bce_averages_known_cells_only():
    known = ~np.isnan(Y_TRUE)
    y = np.nan_to_num(Y_TRUE)
    cells = -(y * np.log(Y_PRED) + (1 - y) * np.log(1 - Y_PRED))
    expected = np.mean([cells[i][known[i]].mean() for i in range(len(y))])
    loss = MaskedBinaryCrossentropy()(Y_TRUE, Y_PRED)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_masked_bce_gradient_is_finite_despite_unknown_cells():
    logits = tf.Variable(np.zeros_like(Y_PRED))
    with tf.GradientTape() as tape:
        loss = MaskedBinaryCrossentropy()(Y_TRUE, tf.sigmoid(logits))
    gradient = tape.gradient(loss, logits).numpy()
    assert np.isfinite(gradient).all()
    assert (gradient[np.isnan(Y_TRUE)] == 0).all()


def test_masked_bce_reloads_from_config():
    loss = MaskedBinaryCrossentropy(pos_weight=[2.0, 1.0, 1.0], neg_weight=[1.0, 1.0, 0.5])
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    np.testing.assert_allclose(float(again(Y_TRUE, Y_PRED)), float(loss(Y_TRUE, Y_PRED)), rtol=1e-6)


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_masked_f1_matches_scikit_learn_on_known_cells(average):
    metric = MaskedF1Score(3, average)
    metric.update_state(Y_TRUE[:3], Y_PRED[:3])
    metric.update_state(Y_TRUE[3:], Y_PRED[3:])
    known = ~np.isnan(Y_TRUE)
    predicted = (Y_PRED >= 0.5).astype(int)
    if average == "macro":
        per_label = [f1_score(Y_TRUE[known[:, j], j], predicted[known[:, j], j], zero_division=0) for j in range(3)]
        expected = np.mean(per_label)
    else:
        expected = f1_score(Y_TRUE[known], predicted[known], zero_division=0)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)


def test_multiclass_f1_uses_argmax():
    y_true = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    y_pred = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]], dtype=np.float32)
    metric = MaskedF1Score(3, "macro", threshold=None)
    metric.update_state(y_true, y_pred)
    expected = f1_score([0, 1, 2, 2], [0, 2, 2, 2], average="macro", zero_division=0)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)


def sklearn_f1(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return f1_score(*args, **kwargs)


def keras_f1(y_true, y_pred, weights, *, num_classes, average, threshold, zero_division, batches=3):
    """The metric's result after updates in `batches` pieces (weights per row or None)."""
    metric = MaskedF1Score(num_classes, average, threshold=threshold, zero_division=zero_division)
    for rows in np.array_split(np.arange(len(y_true)), batches):
        metric.update_state(y_true[rows], y_pred[rows], None if weights is None else weights[rows])
    return float(metric.result())


def random_multilabel(rng, n, n_labels, blank):
    """0/1 labels with blanks; some labels never true, some never predicted, some neither."""
    y_true = (rng.random((n, n_labels)) < rng.random(n_labels)).astype(np.float32)
    y_pred = rng.random((n, n_labels)).astype(np.float32) * rng.choice([1.0, 0.4], n_labels)  # 0.4: never predicted
    absent = rng.random(n_labels) < 0.3
    y_true[:, absent] = 0.0
    if blank:
        y_true[rng.random((n, n_labels)) < 0.3] = np.nan
        y_true[0] = np.nan_to_num(y_true[0])  # every label keeps a known cell
    return y_true, y_pred


CASES = [(average, zero_division, weighted) for average in ("macro", "micro") for zero_division in (0.0, 1.0, math.nan) for weighted in (False, True)]


@pytest.mark.parametrize("average, zero_division, weighted", CASES)
def test_multilabel_f1_equals_scikit_learn_on_random_cases(average, zero_division, weighted):
    rng = np.random.default_rng(7)
    for case in range(12):
        n, n_labels = rng.integers(1, 30), rng.integers(1, 6)
        y_true, y_pred = random_multilabel(rng, n, n_labels, blank=case % 2 == 1)
        weights = rng.uniform(0.1, 3.0, n).astype(np.float32) if weighted else None
        predicted = (y_pred >= 0.5).astype(int)
        known = ~np.isnan(y_true)
        cell_weights = np.ones_like(y_true) if weights is None else np.broadcast_to(weights[:, None], y_true.shape)
        if known.all() and n_labels > 1:  # scikit-learn's own multi-label F1 (one column would read as binary classes)
            expected = sklearn_f1(y_true.astype(int), predicted, average=average, sample_weight=weights, zero_division=zero_division)
        elif average == "micro":  # all known cells pooled
            expected = sklearn_f1(y_true[known].astype(int), predicted[known], sample_weight=cell_weights[known], zero_division=zero_division)
        else:  # the mean over labels of each label's F1 on its known cells
            per_label = [
                sklearn_f1(y_true[known[:, j], j].astype(int), predicted[known[:, j], j], sample_weight=cell_weights[known[:, j], j], zero_division=zero_division)
                for j in range(n_labels)
            ]
            expected = np.nan if np.isnan(per_label).all() else np.nanmean(per_label)
        result = keras_f1(y_true, y_pred, weights, num_classes=n_labels, average=average, threshold=0.5, zero_division=zero_division)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=f"case {case}")


@pytest.mark.parametrize("average, zero_division, weighted", CASES)
def test_multiclass_f1_equals_scikit_learn_on_random_cases(average, zero_division, weighted):
    """Classes that neither occur nor are predicted are left out of the macro mean, as in scikit-learn."""
    rng = np.random.default_rng(11)
    for case in range(12):
        n, n_classes = rng.integers(1, 30), rng.integers(2, 7)
        occurring = rng.choice(n_classes, size=rng.integers(1, n_classes + 1), replace=False)
        classes = rng.choice(occurring, n)
        y_true = np.eye(n_classes, dtype=np.float32)[classes]
        y_pred = rng.dirichlet(np.ones(n_classes), n).astype(np.float32)
        y_pred[:, rng.random(n_classes) < 0.3] = 0.0  # classes never predicted
        blank = rng.random(n) < (0.25 if case % 2 else 0.0)
        blank[0] = False
        y_true[blank, rng.integers(0, n_classes)] = np.nan  # a row with an unknown cell has no known class
        weights = rng.uniform(0.0, 3.0, n).astype(np.float32) if weighted else None
        if weights is not None:
            weights[0] = 1.0
        rows = ~blank
        expected = sklearn_f1(
            classes[rows], y_pred[rows].argmax(axis=1), average=average,
            sample_weight=None if weights is None else weights[rows], zero_division=zero_division,
        )
        result = keras_f1(y_true, y_pred, weights, num_classes=n_classes, average=average, threshold=None, zero_division=zero_division)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7, equal_nan=True, err_msg=f"case {case}")


def test_multiclass_macro_f1_leaves_out_a_class_never_true_nor_predicted():
    y_true = np.eye(3, dtype=np.float32)[[0, 1, 1, 1]]
    y_pred = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
    assert sklearn_f1([0, 1, 1, 1], [0, 0, 1, 1], average="macro") == pytest.approx(11 / 15)
    metric = MaskedF1Score(3, "macro", threshold=None)
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(11 / 15, rel=1e-5)  # not (2/3 + 4/5 + 0) / 3


def test_f1_weighs_images_by_sample_weight():
    y_true = np.array([[1.0], [1.0], [0.0]], dtype=np.float32)
    y_pred = np.array([[0.9], [0.1], [0.9]], dtype=np.float32)
    weights = np.array([3.0, 1.0, 0.5], dtype=np.float32)
    metric = MaskedF1Score(1, "macro")
    metric.update_state(y_true, y_pred, sample_weight=weights)
    expected = sklearn_f1([1, 1, 0], [1, 0, 1], sample_weight=weights)
    assert expected == pytest.approx(6 / 7.5)
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)


def test_f1_config_holds_the_base_config_and_reloads():
    metric = MaskedF1Score(4, "micro", threshold=0.3, zero_division=1.0, name="f1_at_0.3", dtype="float32")
    config = metric.get_config()
    assert keras.metrics.Metric.get_config(metric).items() <= config.items()
    assert config == {"name": "f1_at_0.3", "dtype": "float32", "num_classes": 4, "average": "micro", "threshold": 0.3, "zero_division": 1.0}
    again = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(again, MaskedF1Score) and again.get_config() == config


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"average": "weighted"}, "Expected one of {'macro', 'micro'}. Received: average='weighted'"),
        ({"threshold": 1.5}, "Received: threshold=1.5"),
        ({"zero_division": "warn"}, "Expected one of {0.0, 1.0, nan}. Received: zero_division='warn'"),
        ({"num_classes": 0}, "Received: num_classes=0"),
    ],
)
def test_f1_refuses_impossible_arguments(arguments, message):
    with pytest.raises(ValueError, match="Invalid `") as error:
        MaskedF1Score(**{"num_classes": 3, **arguments})
    assert message in str(error.value)
