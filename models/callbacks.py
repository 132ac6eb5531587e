"""Callbacks that save checkpoints atomically and keep the state `--resume` needs."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import h5py

from image_toolkit.data_tools.atomic import atomic_path, write_text
from image_toolkit.data_tools.formats.model_file import METADATA_ATTRIBUTE
from image_toolkit.models.runs import LAST_CHECKPOINT, STATE_FILE
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
    """Save the best epoch by `monitor` (through `save_best`) and the last epoch (for `--resume`).

    The last checkpoint is a `.keras` file of the whole training model with
    its optimizer state; beside it `train_state.json` records the epoch
    reached and the best score so far, so a resumed run neither repeats
    epochs nor overwrites a better model. Both are written atomically.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        save_best: Callable[[keras.Model, int, float], None],
        monitor: str = "val_macro_f1",
        mode: str = "max",
        best_score: float | None = None,
        best_epoch: int | None = None,
    ):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.save_best = save_best
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best_score = -self.sign * math.inf if best_score is None else best_score
        self.best_epoch = best_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = float((logs or {}).get(self.monitor, math.nan))
        if self.sign * score > self.sign * self.best_score:
            self.best_score, self.best_epoch = score, epoch + 1
            self.save_best(self.model, self.best_epoch, score)
            logger.info("Epoch %d: %s improved to %.4f; best model saved", epoch + 1, self.monitor, score)
        with atomic_path(self.output_dir / LAST_CHECKPOINT) as temporary:
            self.model.save(temporary)
        write_text(
            self.output_dir / STATE_FILE,
            json.dumps({"epoch": epoch + 1, "best_score": self.best_score, "best_epoch": self.best_epoch}, indent=2),
        )


class RetrievalEvaluation(keras.callbacks.Callback):
    """Embed a labelled gallery after every epoch and log recall@1/5/10, mAP@R and kNN accuracy.

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
        from image_toolkit.data_tools.search.retrieval import retrieval_scores

        embeddings = self.tower.predict(self.gallery, verbose=0)
        scores = retrieval_scores(embeddings, self.classes, metric=self.metric)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in scores.items()})
