"""Import TensorFlow once, quietly, and hold the process-wide settings of a run.

The settings include the distribution strategy (`--strategy`) and, for a
run over several machines, who writes the outputs (the chief), which rows
each worker reads, and the fixes Keras 3 needs to `fit` there.

TensorFlow's C++ runtime writes start-up notices (oneDNN, CUDA stubs, CPU
features) straight to file descriptor 2 before its own log level applies, so
the import runs with that descriptor pointed at /dev/null. Set
`TOOLKIT_TF_LOGS=1` to see them when debugging an installation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.errors import DataError, OptionError, missing_extra

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


TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
TF_CONFIG_FIX = f"set it on every machine, the same cluster with this machine's task, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'"


def distribution_strategy(name: str):
    """The tf.distribute strategy for `--strategy` (default: the current one, one device).

    `multiworker` must be created before TensorFlow runs its first op:
    collective ops can only be configured while the runtime is not yet
    started, so a run creates its strategy first, before reading any data.
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        # RING collectives work on CPUs and GPUs alike (AUTO picks NCCL where it can).
        ring = tf.distribute.experimental.CommunicationImplementation.RING
        auto = tf.distribute.experimental.CommunicationImplementation.AUTO
        implementation = auto if tf.config.list_physical_devices("GPU") else ring
        with _stderr_silenced():  # It probes the devices again (CUDA errors on a machine without a GPU).
            return tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation)
            )
    return tf.distribute.get_strategy()


def check_strategy_options(strategy: str, *, resume: bool, weighs_classes: bool = False) -> None:
    """Refuse what a multi-worker run cannot do yet, before a worker waits on the others.

    `--resume` would need every worker to load the chief's checkpoint,
    which the other workers do not write (`worker_output_dir`). Keras
    weighs classes by mapping over one tf.data.Dataset, and a cluster's
    input is one dataset per worker.
    """
    if strategy != "multiworker":
        return
    if resume:
        raise OptionError("--resume does not work with --strategy multiworker yet; continue the run on one machine "
                          "(--strategy default or mirrored), or start again in a new --output-dir.")
    if weighs_classes:
        raise OptionError("--class-weight balanced with --task multiclass does not work with --strategy multiworker yet; "
                          "use --class-weight none, or balance the training list with 'toolkit resample'.")


def check_tf_config(raw: str | None) -> dict:
    """The parsed `TF_CONFIG` of a multi-worker run, refused in one line when TensorFlow could not use it.

    TensorFlow itself would wait for a cluster that does not exist, or fail
    deep inside its runtime, so the mistakes a user makes are caught here.
    """
    if not raw:
        raise DataError(f"--strategy multiworker: TF_CONFIG is not set; {TF_CONFIG_FIX}.")
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise DataError(f"TF_CONFIG: not valid JSON ({error}); {TF_CONFIG_FIX}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not any(isinstance(cluster.get(job), list) and cluster[job] for job in ("chief", "worker")):
        raise DataError(f"TF_CONFIG: no 'cluster' with a 'worker' (or 'chief') list of host:port addresses; {TF_CONFIG_FIX}.")
    task = config.get("task")
    job = task.get("type") if isinstance(task, dict) else None
    index = task.get("index") if isinstance(task, dict) else None
    if job not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise DataError(
            f"TF_CONFIG: 'task' must name this machine's job in the cluster ({', '.join(cluster)}) and its index in that list. "
            f"Received: {task!r}; {TF_CONFIG_FIX}."
        )
    return config


def is_chief(strategy) -> bool:
    """Whether this process writes the run's outputs: always on one machine; the chief (or worker 0) of a cluster."""
    return strategy.extended.should_checkpoint


def is_multiworker(strategy) -> bool:
    """Whether `strategy` spans several processes, whose steps run in lockstep."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


@contextlib.contextmanager
def worker_output_dir(output_dir: Path, strategy) -> Iterator[Path]:
    """The folder this process writes the run's outputs into: `output_dir`, or a temporary one on a non-chief worker.

    Every worker of a multi-worker run must save its checkpoints too (saving
    reads variables that are all-reduced across workers), so the others save
    into a folder of their own, removed at the end (the pattern of
    TensorFlow's multi-worker guide). Only the chief (task `chief`, or worker
    0 of a cluster without one) writes into `output_dir`.
    """
    if is_chief(strategy):
        yield output_dir
        return
    with tempfile.TemporaryDirectory(prefix="toolkit-worker-") as temporary:
        yield Path(temporary)


def worker_rows(n: int, workers: int, index: int) -> np.ndarray:
    """The rows 0..n-1 that worker `index` of `workers` reads: every `workers`-th, padded to the same count for all.

    Workers step in lockstep (every step all-reduces the gradients), so all
    must have as many batches: the last rows wrap round to the first, and up
    to `workers` - 1 rows are read twice per epoch.
    """
    padded = -(-n // workers) * workers
    return (np.arange(padded) % n)[index::workers]


def distributed_input(strategy, make: Callable[[np.ndarray, int], tf.data.Dataset], n: int, *, batch_size: int):
    """The input of `fit`: `make(rows, batch)` of all n rows, or on a multi-worker run this worker's rows only.

    Each worker then reads and decodes its own shard (`worker_rows`), in
    batches of `batch_size` / replicas: `--batch-size` stays the global
    batch, as with `mirrored`. TensorFlow's automatic sharding of a list of
    paths would make every worker decode every image and keep its share.
    """
    if not is_multiworker(strategy):
        return make(np.arange(n), batch_size)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise OptionError(
            f"--batch-size {batch_size} does not split evenly over the {replicas} replicas of the cluster; "
            f"pass a multiple of {replicas}."
        )

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        rows = worker_rows(n, context.num_input_pipelines, context.input_pipeline_id)
        return make(rows, context.get_per_replica_batch_size(batch_size))

    return strategy.distribute_datasets_from_function(per_worker)


@contextlib.contextmanager
def fitting(model: keras.Model, strategy) -> Iterator[keras.Model]:
    """`model`, ready for `fit` and `evaluate` under `strategy`: Keras 3 needs two fixes for a multi-worker one.

    Both are keras-team/keras#20585 (Keras 3 `fit` fails under
    MultiWorkerMirroredStrategy), and both are scoped to this block:

    - Keras builds a model's compiled state (metrics, loss, optimizer) from
      the first batch, which it first reduces across replicas with one
      `strategy.reduce` of the whole (x, y) structure; the strategy takes one
      tensor only. The build needs the batch's shapes and dtypes alone: it
      is given this replica's part of the batch, unreduced.
    - Keras averages each step's logs over the replicas with `axis=0`, which
      fails on a scalar; they are averaged with `axis=None` instead (the same
      mean over replicas, on every worker).

    The epoch's logs, which callbacks and checkpoints see, are read from the
    metrics' states, summed over all workers, so every worker sees the same.
    Other strategies are left to Keras.
    """
    if not is_multiworker(strategy):
        yield model
        return
    from keras.src.backend.tensorflow import trainer

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(lambda value: strategy.experimental_local_results(value)[0], next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multiworker(strategy):
            return keras.tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return keras_reduce(values, strategy, reduction)

    model._maybe_symbolic_build = symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    try:
        yield model
    finally:
        trainer.reduce_per_replica = keras_reduce
        del model._maybe_symbolic_build


def check_tensorboard(log_dir: str | None) -> None:
    """Refuse `--tensorboard` before any work when the optional `tensorboard` package is not installed."""
    if log_dir is not None and importlib.util.find_spec("tensorboard") is None:
        raise missing_extra("--tensorboard", "the tensorboard package", "tensorboard")


def tensorboard_callbacks(log_dir: str | None, strategy, output_dir: Path) -> list:
    """Keras' TensorBoard callback writing to `log_dir` (the chief's; other workers write into their temporary folder).

    Listed last among a fit's callbacks, it logs every metric the others
    added to the epoch's logs (a retrieval evaluation's val_recall@1).
    """
    if log_dir is None:
        return []
    target = Path(log_dir) if is_chief(strategy) else output_dir / "tensorboard"
    return [keras.callbacks.TensorBoard(log_dir=str(target), write_graph=False)]
