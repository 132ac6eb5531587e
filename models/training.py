"""Train the transfer-learning classifier from a label CSV: `toolkit train` and `train.py`.

One function, `train_classifier`, does the whole run in the order of the work:
read and check the lists, drop unreadable images, split, fill or mask missing
labels, build the pipeline and the model, fit with checkpoints, then write
the curves and `run.json`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import missing_folders
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.background import background_name, parse_background
from image_toolkit.data_tools.formats.images import check_images, report_skipped, require_readable
from image_toolkit.data_tools.formats.labels import LabelTable, read_label_csv, split_table, write_label_csv
from image_toolkit.data_tools.formats.missing_labels import fill_missing
from image_toolkit.data_tools.formats.model_file import update_h5_metadata
from image_toolkit.data_tools.maps.plots import plot_training_curves
from image_toolkit.data_tools.names import CLASS_WEIGHTS, PRECISIONS, STRATEGIES, THRESHOLDS
from image_toolkit.data_tools.provenance import toolkit_version
from image_toolkit.models.backbones import check_backbone_options, get_backbone
from image_toolkit.models.callbacks import TrainingCheckpoints, save_h5_with_metadata
from image_toolkit.models.classifier import ImageClassifier
from image_toolkit.models.evaluation import MACRO, scores_table, tune_thresholds
from image_toolkit.models.inference import classifier_probabilities, load_classifier
from image_toolkit.models.losses import MaskedBinaryCrossentropy
from image_toolkit.models.metrics import MaskedF1Score
from image_toolkit.models.pipeline import image_dataset, random_augmentation
from image_toolkit.models.runs import HISTORY_FILE, begin_run, check_resumable, write_run_record
from image_toolkit.models.runtime import (
    check_strategy_options,
    check_tensorboard,
    distributed_input,
    distribution_strategy,
    fitting,
    is_chief,
    keras,
    precision_policy,
    tensorboard_callbacks,
    worker_output_dir,
)

logger = logging.getLogger(__name__)

# XLA measured slower for training steps on CPU: 0.50x plain for ResNet50 at 224 px on
# 2 cores, after a 34 s compile (benchmarks/bench_input_pipeline.py), so it stays off.
JIT_COMPILE = False
# Decoded training images are cached in memory when they fit in this budget.
CACHE_BYTES = 2**30


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Every option of a training run; `run.json` records them all."""

    data_csv: str = "./label.txt"
    img_directory: str = "./images"
    output_dir: str = "."
    task: str = "multilabel"
    backbone: str = "resnet50"
    weights: str = "imagenet"
    head_units: int = 64
    dropout: float = 0.0
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    val_split: float = 0.2
    seed: int = 42
    missing_labels: str = "mask"
    class_weight: str = "none"
    fine_tune: bool = False
    augment: bool = False
    precision: str = "fp32"
    strategy: str = "default"
    resume: bool = False
    train_csv: str | None = None
    val_csv: str | None = None
    thresholds: str = "fixed"
    tensorboard: str | None = None
    background: str = "white"

    def check(self) -> None:
        """Refuse impossible values before any file is read or layer built."""
        check_backbone_options(self.backbone, weights=self.weights, image_size=self.image_size)
        choices = {"precision": PRECISIONS, "strategy": STRATEGIES, "class_weight": CLASS_WEIGHTS}
        for option, allowed in choices.items():
            if getattr(self, option) not in allowed:
                raise OptionError(f"{_spelled(option)}: expected one of {', '.join(allowed)}. Received: {getattr(self, option)!r}.")
        check_range("--val-split", self.val_split, low=0, high=1, low_open=True, high_open=True)
        for option in ("epochs", "batch_size", "head_units", "image_size"):
            check_range(_spelled(option), getattr(self, option), low=1)
        check_range("--learning-rate", self.learning_rate, low=0, low_open=True)
        check_range("--dropout", self.dropout, low=0, high=1, high_open=True)
        check_strategy_options(self.strategy, resume=self.resume,
                               weighs_classes=self.task == "multiclass" and self.class_weight == "balanced")
        if self.thresholds not in THRESHOLDS:
            raise OptionError(f"--thresholds: expected one of {', '.join(THRESHOLDS)}. Received: {self.thresholds!r}.")
        if self.thresholds == "tuned" and self.task == "multiclass":
            raise OptionError("--thresholds tuned: a multi-class model takes the top class, it has no thresholds; use it with --task multilabel.")
        check_tensorboard(self.tensorboard)
        parse_background(self.background)
        if (self.train_csv is None) != (self.val_csv is None):
            raise OptionError("--train-csv and --val-csv go together: give both lists, or neither to split --data-csv.")


def _spelled(option: str) -> str:
    """An option as --help shows it: batch_size -> --batch-size."""
    return "--" + option.replace("_", "-")


# (path, reason) of the unreadable images, and how many images were checked.
Skipped = tuple[tuple[tuple[str, str], ...], int]


def _usable_rows(table: LabelTable, image_dir: Path, output_dir: Path, source: str,
                 earlier: Skipped = ((), 0)) -> tuple[LabelTable, Skipped]:
    """Drop images that cannot be read and, for multiclass, unlabelled rows.

    A list with none readable fails first, leaving nothing behind (its
    error names the first unreadable image); otherwise the unreadable ones,
    with those of `earlier` lists of the run, are listed in skipped_images.txt.
    """
    unique = sorted(set(table.images))
    usable, skipped = check_images([image_dir / name for name in unique])
    readable = {name for name, ok in zip(unique, usable) if ok}
    require_readable(len(readable), skipped, source)
    so_far = ((*earlier[0], *skipped), earlier[1] + len(unique))
    report_skipped(list(so_far[0]), output_dir, so_far[1])
    keep = np.array([name in readable for name in table.images])
    if table.task == "multiclass":
        labelled = ~np.isnan(table.labels).any(axis=1)
        if (~labelled & keep).any():
            logger.warning("%s: %d rows have no class and are left out", source, int((~labelled & keep).sum()))
        keep &= labelled
    return table.subset(np.flatnonzero(keep)), so_far


def load_lists(options: TrainOptions, output_dir: Path) -> tuple[LabelTable, LabelTable]:
    """The training and validation lists, from explicit CSVs or a reproducible split of --data-csv.

    Unreadable images are left out and listed in output_dir.
    """
    image_dir = Path(options.img_directory)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found; pass --img-directory with the folder of your images.")
    if options.train_csv is not None:
        train = read_label_csv(options.train_csv, options.task, allow_duplicates=True)
        val = read_label_csv(options.val_csv, options.task, label_names=train.label_names)
        train, skipped = _usable_rows(train, image_dir, output_dir, options.train_csv)
        val, _ = _usable_rows(val, image_dir, output_dir, options.val_csv, earlier=skipped)
        leaked = sorted(set(train.images) & set(val.images))
        if leaked:
            raise DataError(f"{options.train_csv}: image '{leaked[0]}' is also in {options.val_csv}; a validation image must not be trained on.")
    else:
        table, _ = _usable_rows(read_label_csv(options.data_csv, options.task), image_dir, output_dir, options.data_csv)
        if len(table) < 2:
            raise DataError(
                f"{options.data_csv}: {len(table)} usable image; training needs at least 2 "
                "(one to train on, one to validate)."
            )
        train, val = split_table(table, options.val_split, options.seed)
    return train, val


def _balanced(y: np.ndarray, weights: np.ndarray, classes: int) -> np.ndarray:
    """scikit-learn's 'balanced' weight of each class 0..classes-1 (n / (n_present * count)); 1.0 for an absent class.

    `compute_class_weight` refuses a class absent from `y`; such a class has
    no cell for its weight to scale, so it gets the neutral 1.0. The present
    classes count in `n_present`, as in scikit-learn.
    """
    from sklearn.utils.class_weight import compute_class_weight

    weighted = weights > 0
    y, weights = y[weighted], weights[weighted]
    result = np.ones(classes)
    if len(y):
        present = np.unique(y)
        result[present] = compute_class_weight("balanced", classes=present, y=y, sample_weight=weights)
    return result


def balanced_label_weights(labels: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-label weights of positive and negative cells: scikit-learn's 'balanced', one label at a time.

    Each label is its own two-class problem over its known cells: with P
    positives and N negatives, positives weigh (P + N) / (2 P) and negatives
    (P + N) / (2 N). A filled (fractional) cell q counts q as a positive and
    1 - q as a negative (through `sample_weight`). A label with only one
    value has nothing to balance: both weights are 1.0.
    """
    pos, neg = [], []
    for column in labels.T:
        known = column[~np.isnan(column)]
        y = np.concatenate([np.ones(len(known), int), np.zeros(len(known), int)])
        negative, positive = _balanced(y, np.concatenate([known, 1.0 - known]), 2)
        pos.append(round(float(positive), 6))
        neg.append(round(float(negative), 6))
    return pos, neg


def balanced_class_weights(labels: np.ndarray) -> dict[int, float]:
    """Keras `class_weight` for one-hot labels: scikit-learn's 'balanced' over the classes present, 1.0 for the others."""
    weights = _balanced(labels.argmax(axis=1), np.ones(len(labels)), labels.shape[1])
    return {c: float(weight) for c, weight in enumerate(weights)}


def _compile(model: keras.Model, options: TrainOptions, train_labels: np.ndarray) -> None:
    n_classes = train_labels.shape[1]
    if options.task == "multiclass":
        loss = keras.losses.CategoricalCrossentropy()
        threshold = None
    else:
        weights = balanced_label_weights(train_labels) if options.class_weight == "balanced" else (None, None)
        loss = MaskedBinaryCrossentropy(pos_weight=weights[0], neg_weight=weights[1])
        threshold = 0.5
    model.compile(
        optimizer=keras.optimizers.Adam(options.learning_rate),
        loss=loss,
        metrics=[
            MaskedF1Score(n_classes, "macro", threshold=threshold),
            MaskedF1Score(n_classes, "micro", threshold=threshold),
        ],
        jit_compile=JIT_COMPILE,
    )


def _tune_thresholds(model_path: Path, val: LabelTable, image_dir: Path, batch_size: int) -> dict:
    """Store in the best model each label's threshold with the best validation F1; return them and the F1 they give.

    The model file is rewritten whole under a temporary name and moved into
    place (`update_h5_metadata`), so it is never without its metadata.
    """
    model, metadata = load_classifier(model_path)
    probabilities = classifier_probabilities([image_dir / name for name in val.images], model, metadata, batch_size=batch_size)
    thresholds = tune_thresholds(val.labels, probabilities)
    update_h5_metadata(model_path, {"thresholds": thresholds})
    macro_f1 = scores_table(val, probabilities, np.array(thresholds)).set_index("class").loc[MACRO, "f1"]
    return {"thresholds": thresholds, "val_macro_f1_tuned": round(float(macro_f1), 6)}


def training_labels(options: TrainOptions, train: LabelTable) -> np.ndarray:
    """The training targets: blank multilabel cells filled or masked as --missing-labels says."""
    return fill_missing(train.labels, options.missing_labels, seed=options.seed) if options.task == "multilabel" else train.labels


def classifier_dataset(options: TrainOptions, table: LabelTable, labels: np.ndarray, strategy, *, training: bool,
                       weights: np.ndarray | None = None):
    """The tf.data pipeline of a list: shuffled (and augmented with --augment) when `training`, cached when it fits.

    `weights`, one per row, travel with the images as Keras `sample_weight`.
    """
    backbone = get_backbone(options.backbone)
    image_dir = Path(options.img_directory)
    per_image_bytes = options.image_size**2 * 3 * 4

    def rows_dataset(rows: np.ndarray, batch_size: int):
        return image_dataset(
            [image_dir / table.images[row] for row in rows],
            labels[rows],
            image_size=options.image_size,
            preprocess=backbone.preprocess,
            batch_size=batch_size,
            shuffle=training,
            seed=options.seed,
            augment=random_augmentation(options.seed) if training and options.augment else None,
            cache=len(rows) * per_image_bytes < CACHE_BYTES,
            background=parse_background(options.background),
            weights=None if weights is None else weights[rows],
        )

    return distributed_input(strategy, rows_dataset, len(table), batch_size=options.batch_size)


def new_classifier(options: TrainOptions, train_labels: np.ndarray) -> keras.Model:
    """The compiled classifier of `options`, for labels shaped like `train_labels` (train and tune build the same)."""
    model = ImageClassifier(
        options.backbone,
        weights=options.weights,
        image_size=options.image_size,
        head_units=options.head_units,
        classes=train_labels.shape[1],
        classifier_activation="softmax" if options.task == "multiclass" else "sigmoid",
        fine_tune=options.fine_tune,
        dropout=options.dropout,
    )
    _compile(model, options, train_labels)
    return model


def fit_class_weight(options: TrainOptions, train_labels: np.ndarray) -> dict[int, float] | None:
    """Keras `class_weight` of a fit: balanced classes for multiclass with --class-weight balanced, else none."""
    return balanced_class_weights(train_labels) if options.task == "multiclass" and options.class_weight == "balanced" else None


def fit_sample_weights(options: TrainOptions, train: LabelTable, train_labels: np.ndarray,
                       image_weights: dict[str, float] | None) -> np.ndarray | None:
    """Per-row loss weights of a fit: `image_weights` (1 for images not named) times the row's class weight.

    Keras refuses `class_weight` together with a `sample_weight` in the
    dataset, so with image weights the multiclass class weight (--class-weight
    balanced) is folded in here, multiplicatively, and `fit` gets no
    `class_weight`. Multilabel class weights live in the loss and multiply on
    their own. None when there are no image weights.
    """
    if image_weights is None:
        return None
    weights = np.array([image_weights.get(image, 1.0) for image in train.images], dtype=np.float32)
    class_weight = fit_class_weight(options, train_labels)
    if class_weight is not None:
        weights *= np.array([class_weight[c] for c in train_labels.argmax(axis=1)], dtype=np.float32)
    return weights


def train_classifier(options: TrainOptions, *, verbose: int = 1, image_weights: dict[str, float] | None = None) -> dict:
    """Run a whole training; return the summary also written to `run.json`.

    The distribution strategy comes first: a multi-worker one must exist
    before TensorFlow runs any op. On a cluster every worker runs this same
    function; only the chief writes into --output-dir (`worker_output_dir`).
    `image_weights` gives named training images a loss weight (`toolkit
    experiment --use weight`); run.json counts the rows weighted.
    """
    options.check()
    started = time.time()
    missing_folders(Path(options.output_dir))  # A file where the folder should be: one line now, not after the lists are read.
    strategy = distribution_strategy(options.strategy)
    with worker_output_dir(Path(options.output_dir), strategy) as output_dir:
        summary = _train(options, strategy, output_dir, started, verbose=verbose if is_chief(strategy) else 0,
                         image_weights=image_weights)
    # "chief": whether this process wrote the model (on a cluster, the other workers' outputs were temporary).
    return {**summary, "model": str(Path(options.output_dir) / "best_model.h5"), "chief": is_chief(strategy)}


def _train(options: TrainOptions, strategy, output_dir: Path, started: float, *, verbose: int,
           image_weights: dict[str, float] | None = None) -> dict:
    # The folder itself is made with the first output written into it (data_tools.atomic), so a run
    # that fails before (no ImageNet weights offline, say) leaves no empty folder behind.
    state = check_resumable(dataclasses.asdict(options), output_dir) if options.resume else None

    train, val = load_lists(options, output_dir)
    logger.info("Training on %d images, validating on %d; labels: %s", len(train), len(val), ", ".join(train.label_names))
    train_labels = training_labels(options, train)
    sample_weights = fit_sample_weights(options, train, train_labels, image_weights)

    metadata = {
        "format_version": 1,
        "task": options.task,
        "label_names": train.label_names,
        "backbone": options.backbone,
        "image_size": options.image_size,
        "head_units": options.head_units,
        "weights": options.weights,
        "background": background_name(options.background),
        "toolkit_version": toolkit_version(),
    }
    keras.utils.set_random_seed(options.seed)
    with precision_policy(options.precision), strategy.scope():
        if state is not None:
            model = keras.models.load_model(output_dir / state["checkpoint"])
            logger.info("Resuming after epoch %d (best %.4f at epoch %s)", state["epoch"], state["best_score"], state["best_epoch"])
        else:
            model = new_classifier(options, train_labels)
        checkpoints = TrainingCheckpoints(
            output_dir,
            save_best=lambda best, epoch, score, path: save_h5_with_metadata(
                best, path, {**metadata, "best_epoch": epoch, "val_macro_f1": score}
            ),
            best_name="best_model.h5",
            state=state,
        )
        # The run's record and lists only now that the model stands (weights found, sizes fit).
        write_label_csv(train, output_dir / "train.csv")
        write_label_csv(val, output_dir / "val.csv")
        begin_run(output_dir, dataclasses.asdict(options), state, n_train=len(train), n_val=len(val))
        initial_epoch = state["epoch"] if state else 0
        if initial_epoch < options.epochs:
            with fitting(model, strategy):
                model.fit(
                    classifier_dataset(options, train, train_labels, strategy, training=True, weights=sample_weights),
                    validation_data=classifier_dataset(options, val, val.labels, strategy, training=False),
                    epochs=options.epochs,
                    shuffle=False,  # the dataset shuffles itself, with the run's seed
                    initial_epoch=initial_epoch,
                    class_weight=fit_class_weight(options, train_labels) if sample_weights is None else None,
                    callbacks=[checkpoints, *tensorboard_callbacks(options.tensorboard, strategy, output_dir)],
                    verbose=verbose,
                )
        else:
            logger.info("Already trained for %d epochs; nothing to do.", initial_epoch)

    history = pd.read_csv(output_dir / HISTORY_FILE)
    plot_training_curves(history, output_dir / "loss_curve.png")
    best_row = history.loc[history["val_macro_f1"].idxmax()]
    tuned = _tune_thresholds(output_dir / "best_model.h5", val, Path(options.img_directory), options.batch_size) if options.thresholds == "tuned" else {}
    summary = {
        "status": "finished",
        "best_epoch": checkpoints.best_epoch,
        "best_val_macro_f1": round(checkpoints.best_score, 6),
        "best_val_micro_f1": round(float(best_row["val_micro_f1"]), 6),
        "epochs": int(history["epoch"].max()) + 1,
        "n_train": len(train),
        "n_val": len(val),
        **({} if image_weights is None else {"weighted_rows": sum(image_weights.get(image, 1.0) != 1.0 for image in train.images)}),
        "label_names": train.label_names,
        **tuned,
        "wall_time_s": round(time.time() - started, 2),
        "model": str(output_dir / "best_model.h5"),
    }
    write_run_record(output_dir, dataclasses.asdict(options), **summary)
    return summary
