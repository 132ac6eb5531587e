"""Import TensorFlow once, quietly, and hold the process-wide settings of a run.

TensorFlow's C++ runtime writes start-up notices (oneDNN, CUDA stubs, CPU
features) straight to file descriptor 2 before its own log level applies, so
the import runs with that descriptor pointed at /dev/null. Set
`TOOLKIT_TF_LOGS=1` to see them when debugging an installation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    if os.environ.get("TOOLKIT_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_tensorflow():
    if "tensorflow" not in sys.modules:
        with _stderr_silenced():
            import keras  # noqa: F401
            import tensorflow

            # Device discovery logs CUDA probing errors on machines without a GPU.
            tensorflow.config.list_physical_devices()
    import tensorflow

    tensorflow.get_logger().setLevel(logging.ERROR)
    # Keras logs through absl that HDF5 is a legacy format; best_model.h5 is HDF5 on purpose.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tensorflow


tf = _import_tensorflow()

import keras  # noqa: E402


def progress_verbosity(quiet: bool) -> int:
    """Keras `verbose`: a live progress bar on a terminal, a final line in logs, nothing if quiet."""
    if quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def set_threads(n_cores: int) -> None:
    """Bound TensorFlow's thread pools; -1 keeps TensorFlow's default (all cores)."""
    if n_cores > 0:
        tf.config.threading.set_intra_op_parallelism_threads(n_cores)
        tf.config.threading.set_inter_op_parallelism_threads(n_cores)


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Apply a Keras dtype policy for the duration of a run, then restore the old one.

    Keras has no per-model switch for the application backbones, so the global
    policy is set here, and only here, and put back afterwards.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if precision == "fp32" else precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def distribution_strategy(name: str):
    """The tf.distribute strategy for `--strategy` (default: the current one, one device)."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
