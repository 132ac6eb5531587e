"""check_range: the one argument-range check, with Keras-style messages."""

import math

import numpy as np
import pytest

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import OptionError


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (0, {"low": 1}, "x must be at least 1. Received: x=0"),
        (0, {"low": 0, "low_open": True}, "x must be greater than 0. Received: x=0"),
        (5, {"high": 4}, "x must be at most 4. Received: x=5"),
        (4, {"high": 4, "high_open": True}, "x must be less than 4. Received: x=4"),
        (10, {"low": 1, "high": 9, "why": "the number of rows"}, "x must be between 1 and 9 (the number of rows). Received: x=10"),
        (1.5, {"low": 0, "high": 1, "low_open": True}, "x must be in (0, 1]. Received: x=1.5"),
        (0.5, {"low": 0, "high": 0.5, "high_open": True}, "x must be in [0, 0.5). Received: x=0.5"),
        (0, {"low": 1, "special": {-1: "all cores"}}, "x must be -1 (all cores) or at least 1. Received: x=0"),
        (np.float64(-0.25), {"low": 0}, "x must be at least 0. Received: x=-0.25"),
    ],
)
def test_values_out_of_range_are_usage_errors_that_say_the_rule_and_the_value(value, bounds, message):
    with pytest.raises(OptionError) as raised:
        check_range("x", value, **bounds)
    assert str(raised.value) == message
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    ("value", "bounds"),
    [
        (1, {"low": 1}),
        (9, {"low": 1, "high": 9}),
        (1.0, {"low": 0, "high": 1, "low_open": True}),
        (-1, {"low": 1, "special": {-1: "all cores"}}),
        (10**9, {}),
    ],
)
def test_values_in_range_pass(value, bounds):
    check_range("x", value, **bounds)


def test_nan_is_never_in_range():
    for bounds in ({"low": 0}, {"high": 1}, {"low": 0, "high": 1, "low_open": True}):
        with pytest.raises(OptionError, match="Received: x=nan"):
            check_range("x", math.nan, **bounds)
