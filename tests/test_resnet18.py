"""ResNet18 checks its arguments before building, as `keras.applications` does, and reloads its weights files."""

import numpy as np
import pytest

from image_toolkit.models import resnet18
from image_toolkit.models.resnet18 import ResNet18


class NoLayers:
    """Stands in for `keras.layers`: building any layer fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a layer ({name}) was built before the arguments were checked")


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"weights": "missing.weights.h5"}, "or the path to an existing weights file to be loaded. Received: weights='missing.weights.h5'"),
        ({"weights": "imagenet"}, "resnet18 has no ImageNet weights in Keras"),
        ({"input_shape": (16, 16, 3)}, "Input size must be at least 32x32; Received: input_shape=(16, 16, 3)"),
        ({"input_shape": (64, 3)}, "`input_shape` must be a tuple of three integers"),
        ({"pooling": "sum"}, "should be one of {None, 'avg', 'max'}. Received: pooling='sum'"),
    ],
)
def test_arguments_are_checked_before_any_layer_is_built(monkeypatch, tmp_path, arguments, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(resnet18, "layers", NoLayers())
    with pytest.raises(ValueError) as error:
        ResNet18(**{"input_shape": (32, 32, 3), **arguments})
    assert message in str(error.value)


def test_a_weights_file_reloads_into_the_same_network(tmp_path):
    model = ResNet18(input_shape=(32, 32, 3))
    assert model.get_layer("conv1_conv") and model.get_layer("conv5_block2_out")
    path = tmp_path / "resnet18.weights.h5"
    model.save_weights(path)
    again = ResNet18(weights=str(path), input_shape=(32, 32, 3))
    for before, after in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(before, after)
