"""One check for numeric arguments, with the message Keras gives: the rule, then what was received.

    check_range("k", 0, low=1)
    OptionError: k must be at least 1. Received: k=0
    check_range("target_recall", 1.5, low=0, high=1, low_open=True)
    OptionError: target_recall must be in (0, 1]. Received: target_recall=1.5
    check_range("n_threads", 0, low=1, special={-1: "all cores"})
    OptionError: n_threads must be -1 (all cores) or at least 1. Received: n_threads=0
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from image_toolkit.data_tools.errors import OptionError


def check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    special: Mapping[float, str] | None = None,
    why: str | None = None,
) -> None:
    """Raise an OptionError unless `value` lies between `low` and `high` (either may be None: no bound).

    Bounds are included unless `low_open` / `high_open`. `special` maps
    values allowed outside the range to their meaning (-1: "all cores").
    `why` says where a bound comes from ("the number of rows"). NaN is never
    in range. `name` is the argument as the caller spells it.
    """
    if special and value in special:
        return
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    if not (above and below):  # Written so that NaN, which compares False, fails.
        raise OptionError(f"{name} must be {describe_range(low, high, low_open, high_open, special, why)}. "
                          f"Received: {name}={_shown(value)}")


def describe_range(
    low: float | None,
    high: float | None,
    low_open: bool = False,
    high_open: bool = False,
    special: Mapping[float, str] | None = None,
    why: str | None = None,
) -> str:
    """The rule in words: "at least 1", "between 1 and 9", "in (0, 1]", "-1 (all cores) or at least 1"."""
    if low is not None and high is not None:
        if low_open or high_open:
            rule = f"in {'(' if low_open else '['}{_shown(low)}, {_shown(high)}{')' if high_open else ']'}"
        else:
            rule = f"between {_shown(low)} and {_shown(high)}"
    elif low is not None:
        rule = f"{'greater than' if low_open else 'at least'} {_shown(low)}"
    elif high is not None:
        rule = f"{'less than' if high_open else 'at most'} {_shown(high)}"
    else:
        rule = "a number"
    if why:
        rule += f" ({why})"
    if special:
        rule = " or ".join([*(f"{_shown(value)} ({meaning})" for value, meaning in special.items()), rule])
    return rule


def _shown(value) -> str:
    """A value as the user wrote it: 0.5, not np.float64(0.5)."""
    return repr(value.item() if isinstance(value, np.generic) else value)
