"""Callbacks that save checkpoints atomically and keep the state `--resume` needs."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import h5py

from image_toolkit.data_tools.atomic import atomic_path
from image_toolkit.data_tools.formats.model_file import METADATA_ATTRIBUTE
from image_toolkit.models.runs import LAST_CHECKPOINT, commit_epoch, epoch_file
from image_toolkit.models.runtime import keras

logger = logging.getLogger(__name__)


def save_h5_with_metadata(model: keras.Model, path: str | Path, metadata: dict) -> None:
    """Save `model` as HDF5 with the toolkit's metadata (label names, backbone...) in its attributes.

    Written to a temporary file and moved into place, so an interrupted run
    never leaves half a model where inference would find it.
    """
    with atomic_path(path) as temporary:
        model.save(temporary, include_optimizer=False)
        with h5py.File(temporary, "a") as handle:
            handle.attrs[METADATA_ATTRIBUTE] = json.dumps(metadata)


class TrainingCheckpoints(keras.callbacks.Callback):
    """Commit every epoch whole: its checkpoint (for `--resume`), its history row and, if best by `monitor`, its model.

    The checkpoint is a `.keras` file of the whole training model with its
    optimizer state. A new best model is written by `save_best` to an
    epoch-numbered file first, and moved to `best_name` once the epoch is
    committed; `history.csv` is rewritten from the committed rows. The
    order, and what a run killed midway leaves, are in
    `image_toolkit.models.runs`. `state` continues a resumed run.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        save_best: Callable[[keras.Model, int, float, Path], None],
        best_name: str,
        monitor: str = "val_macro_f1",
        mode: str = "max",
        state: dict | None = None,
    ):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.save_best = save_best
        self.best_name = best_name
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        state = state or {}
        self.best_score = state.get("best_score", -self.sign * math.inf)
        self.best_epoch = state.get("best_epoch")
        self.history = list(state.get("history", []))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        done = epoch + 1
        score = float(logs.get(self.monitor, math.nan))
        publish = {}
        if self.sign * score > self.sign * self.best_score:
            staged = epoch_file(self.best_name, done)
            self.save_best(self.model, done, score, self.output_dir / staged)
            publish[staged] = self.best_name
            self.best_score, self.best_epoch = score, done
            logger.info("Epoch %d: %s improved to %.4f; best model saved", done, self.monitor, score)
        checkpoint = epoch_file(LAST_CHECKPOINT, done)
        with atomic_path(self.output_dir / checkpoint) as temporary:
            self.model.save(temporary)
        self.history.append({"epoch": epoch, **{name: float(logs[name]) for name in sorted(logs)}})
        commit_epoch(self.output_dir, {
            "epoch": done, "checkpoint": checkpoint, "best_score": self.best_score, "best_epoch": self.best_epoch,
            "publish": publish, "history": self.history,
        })


class RetrievalEvaluation(keras.callbacks.Callback):
    """Embed a labelled gallery after every epoch and log recall@1/5/10, mAP@R, kNN accuracy, NMI and ARI.

    NMI and the adjusted Rand index score a k-means clustering of the same
    embeddings (`clustering_scores`): an unsupervised view beside retrieval.

    The scores go into the epoch's logs as `val_recall@1` etc., so the
    progress bar, `history.csv` and the best-epoch checkpoint all see them.
    Must come before those callbacks in the list.
    """

    def __init__(self, tower: keras.Model, gallery, classes, *, metric: str):
        super().__init__()
        self.tower = tower
        self.gallery = gallery
        self.classes = classes
        self.metric = metric

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from image_toolkit.data_tools.search.retrieval import clustering_scores, retrieval_scores

        embeddings = self.tower.predict(self.gallery, verbose=0)
        scores = retrieval_scores(embeddings, self.classes, metric=self.metric)
        scores.update(clustering_scores(embeddings, self.classes, metric=self.metric))
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in scores.items()})
