"""The one way a feature pickle (`.pkl`, the original format) is loaded: plain numpy arrays and containers only.

A pickle can run any code when loaded, so `load_feature_pickle` admits numpy
arrays, lists, dicts, strings and numbers only, and refuses anything else
before it runs; arrays and numpy scalars must have a plain number or text
dtype (no fields, no objects). Refusals are `RefusedGlobal` / `RefusedDtype`,
which `features.read_features` turns into one line naming the file.
"""

from __future__ import annotations

import pickle
from typing import BinaryIO

import numpy as np


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a function or class outside the allowed ones."""


class RefusedDtype(pickle.UnpicklingError):
    """The pickle builds a dtype that is not a plain number or text type: its arrays could turn raw bytes into pointers."""


# Array kinds a feature pickle may hold: boolean, integers, floats, unicode text.
PLAIN_KINDS = "biufU"


def _check_plain(dtype: np.dtype) -> np.dtype:
    """`dtype` if it is a plain number or text type (no fields, no sub-array), else RefusedDtype.

    Its item size, alignment and flags must also be those numpy gives the
    same type string: a pickle sets them as it likes (BUILD), and a plain
    `f8` flagged as holding objects would be read as pointers all the same.
    """
    if not isinstance(dtype, np.dtype) or dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise RefusedDtype(str(dtype))
    canonical = np.dtype(dtype.str)
    if (dtype.itemsize, dtype.alignment, dtype.flags) != (canonical.itemsize, canonical.alignment, canonical.flags):
        raise RefusedDtype(f"{dtype} with a forged item size, alignment or flags")
    return dtype


def _plain_result(make):
    """`numpy.dtype`, refusing a dtype that is not plain as soon as it is made."""
    return lambda *args: _check_plain(make(*args))


def _plain_argument(position: int):
    """A guard for a numpy function that fills an array or scalar with raw bytes: its dtype argument must be plain."""
    def guard(function):
        def checked(*args):
            _check_plain(args[position] if len(args) > position else None)
            return function(*args)
        return checked
    return guard


def _ndarray_only(reconstruct):
    """`_reconstruct`, for numpy arrays only (not a subclass that could run code)."""
    def checked(cls, *args):
        if cls is not np.ndarray:
            raise RefusedGlobal(f"_reconstruct of {cls!r}")
        return reconstruct(cls, *args)
    return checked


class _FeaturePickle(pickle._Unpickler):
    """Unpickles plain numpy arrays and containers; refuses every other global, and every other dtype, before it is used.

    numpy's own pieces can build a dtype whose object field lies over raw
    bytes, and an array of it reads those bytes as pointers (a segfault, or
    worse). So every dtype is checked where it is made (`numpy.dtype`), where
    its state is set (the BUILD step, which can add fields), and where an
    array or scalar is filled with it. Checking BUILD needs Python's own
    unpickler (as joblib's NumpyUnpickler does): the C one cannot be hooked
    there. Feature pickles are a few large byte strings, so it is as fast.
    """

    # The globals a feature pickle may name, and the guard each is wrapped in (None: used as it is).
    ALLOWED = {
        ("numpy", "ndarray"): None,
        ("numpy", "dtype"): _plain_result,
        ("numpy.core.multiarray", "_reconstruct"): _ndarray_only,
        ("numpy._core.multiarray", "_reconstruct"): _ndarray_only,
        ("numpy.core.multiarray", "scalar"): _plain_argument(0),
        ("numpy._core.multiarray", "scalar"): _plain_argument(0),
        ("numpy.core.numeric", "_frombuffer"): _plain_argument(1),
        ("numpy._core.numeric", "_frombuffer"): _plain_argument(1),
        ("_codecs", "encode"): None,  # How protocol 2 stores bytes.
    }
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise RefusedGlobal(f"{module}.{name}")
        found, guard = super().find_class(module, name), self.ALLOWED[module, name]
        return found if guard is None else guard(found)

    def load_build(self) -> None:
        """BUILD sets the state of a dtype or an array only, and only to a plain dtype."""
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, np.dtype):
            # (version, byte order, sub-array, names, fields, ...): a plain dtype has neither of the three.
            if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
                raise RefusedDtype("a structured dtype" if isinstance(state, tuple) and len(state) >= 5 else "of an unknown form")
        elif isinstance(target, np.ndarray):
            # (version, shape, dtype, Fortran order, data), or the same without the version.
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise RefusedDtype("of an unknown form")
            _check_plain(state[-3])
        else:
            raise RefusedGlobal(f"the state of a {type(target).__name__}")
        super().load_build()
        if isinstance(target, np.dtype):
            _check_plain(target)

    dispatch[pickle.BUILD[0]] = load_build


def load_feature_pickle(handle: BinaryIO) -> object:
    """The content of a feature pickle, or RefusedGlobal / RefusedDtype before anything unsafe is built."""
    return _FeaturePickle(handle, encoding="latin1").load()
