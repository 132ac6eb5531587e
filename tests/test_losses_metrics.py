import numpy as np
import pytest
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
