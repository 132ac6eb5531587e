"""Hyper-parameter search with KerasTuner: `toolkit tune`.

The search trains the very model the training command trains, over the
options that matter most: for the classifier (`new_classifier`, fed by
`classifier_dataset`) head units, learning rate, dropout, augmentation and,
with pretrained weights, fine-tuning, scored by `val_macro_f1`, the score
train keeps its best epoch by; for a Siamese network (`--task siamese`,
`similarity.build_training_model`) the contrastive margin, embedding size
and learning rate, scored by `val_recall@1` on the metadata's held-out
split, the score train-siamese keeps its best epoch by. The first trial is
the command's default configuration, so the best is at least as good as the
defaults by construction, and both scores are reported. The best options
are written as a `run.json` that `toolkit train --config` (or
`train-siamese --config`) accepts.

Everything lives in --output-dir: KerasTuner's project folder (`tuner/`,
which makes the search resumable), `search.json` (what was searched, so
that a changed search is refused), `trials.csv`, `trials.png` and `run.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import missing_folders, write_text
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError, missing_extra
from image_toolkit.data_tools.formats.json_files import read_json
from image_toolkit.data_tools.maps.plots import plot_trials
from image_toolkit.models.callbacks import RetrievalEvaluation
from image_toolkit.models.runs import write_run_record
from image_toolkit.models.runtime import distribution_strategy, keras
from image_toolkit.models.similarity import (
    SimilarityOptions,
    build_training_model,
    retrieval_gallery,
    siamese_data,
    tower_of,
    training_images,
)
from image_toolkit.models.training import (
    TrainOptions,
    classifier_dataset,
    fit_class_weight,
    load_lists,
    new_classifier,
    training_labels,
)

logger = logging.getLogger(__name__)

TUNERS = ("bayesian", "hyperband")
OBJECTIVE = "val_macro_f1"
SIAMESE_OBJECTIVE = "val_recall@1"
HEAD_UNITS = (16, 32, 64, 128, 256)
EMBEDDING_DIMS = (32, 64, 128, 256)
SIAMESE_SEARCHED = ("margin", "embedding_dim", "learning_rate")
PROJECT = "tuner"
SEARCH_FILE = "search.json"


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """How to search; the fixed options of the model and its data are a `TrainOptions`."""

    tuner: str = "bayesian"
    max_trials: int = 10
    executions_per_trial: int = 1
    overwrite: bool = False

    def check(self) -> None:
        """Refuse impossible values before any file is read."""
        if self.tuner not in TUNERS:
            raise OptionError(f"--tuner: expected one of {', '.join(TUNERS)}. Received: {self.tuner!r}.")
        check_range("--max-trials", self.max_trials, low=1)
        check_range("--executions-per-trial", self.executions_per_trial, low=1)


def searched(training: TrainOptions) -> tuple[str, ...]:
    """The options the search varies; fine-tuning only for a pretrained backbone (a random one always trains whole)."""
    names = ("head_units", "learning_rate", "dropout", "augment")
    return (*names, "fine_tune") if training.weights != "none" else names


def _keras_tuner():
    try:
        import keras_tuner
    except ImportError:
        raise missing_extra("toolkit tune", "KerasTuner", "tune") from None
    return keras_tuner


def _hypermodel_class(kt):
    class ClassifierHyperModel(kt.HyperModel):
        """train's classifier, with the searched options taken from the trial's hyper-parameters."""

        def __init__(self, training: TrainOptions, train, val, strategy):
            super().__init__(name="classifier")
            self.training, self.train, self.val, self.strategy = training, train, val, strategy
            self.train_labels = training_labels(training, train)

        def options(self, hp) -> TrainOptions:
            # Defaults are train's defaults (TrainOptions), so the default trial is `toolkit train` as it stands.
            default = TrainOptions()
            values = {
                "head_units": hp.Choice("head_units", HEAD_UNITS, default=default.head_units),
                "learning_rate": hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=default.learning_rate),
                "dropout": hp.Float("dropout", 0.0, 0.5, default=default.dropout),
                "augment": hp.Boolean("augment", default=default.augment),
            }
            if "fine_tune" in searched(self.training):
                values["fine_tune"] = hp.Boolean("fine_tune", default=default.fine_tune)
            return dataclasses.replace(self.training, **values)

        def build(self, hp):
            keras.utils.set_random_seed(self.training.seed)
            with self.strategy.scope():
                return new_classifier(self.options(hp), self.train_labels)

        def fit(self, hp, model, *args, **kwargs):
            options = self.options(hp)
            return model.fit(
                classifier_dataset(options, self.train, self.train_labels, self.strategy, training=True),
                validation_data=classifier_dataset(options, self.val, self.val.labels, self.strategy, training=False),
                shuffle=False,
                class_weight=fit_class_weight(options, self.train_labels),
                **kwargs,
            )

    return ClassifierHyperModel


def _siamese_hypermodel_class(kt):
    class SiameseHyperModel(kt.HyperModel):
        """train-siamese's network, with margin, embedding size and learning rate from the trial's hyper-parameters."""

        def __init__(self, similarity: SimilarityOptions, frame: pd.DataFrame, train: pd.DataFrame, strategy):
            super().__init__(name="siamese")
            self.similarity, self.train, self.strategy = similarity, train, strategy
            self.gallery = retrieval_gallery(frame, similarity)
            if self.gallery is None:
                raise DataError(f"{similarity.data}: no held-out images (split other than 'train', two of a class) to score "
                                "the trials by recall@1; write the CSV with 'toolkit make-metadata --test-split 0.2'.")
            self.n_classes = train["class"].nunique()

        def options(self, hp) -> SimilarityOptions:
            default = SimilarityOptions(method="siamese", data=self.similarity.data)
            return dataclasses.replace(
                self.similarity,
                margin=hp.Float("margin", 0.25, 2.0, sampling="log", default=default.margin),
                embedding_dim=hp.Choice("embedding_dim", EMBEDDING_DIMS, default=default.embedding_dim),
                learning_rate=hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=default.learning_rate),
            )

        def build(self, hp):
            keras.utils.set_random_seed(self.similarity.seed)
            with self.strategy.scope():
                return build_training_model(self.options(hp), self.n_classes)[0]

        def fit(self, hp, model, *args, epochs: int, callbacks=(), **kwargs):
            # The same pairs for every trial; the retrieval scores must reach the logs before KerasTuner's callbacks read them.
            options = self.options(hp)
            dataset, steps, _ = siamese_data(self.train, options, epochs, np.random.default_rng(options.seed), self.strategy)
            evaluation = RetrievalEvaluation(tower_of(model), *self.gallery, metric=options.metric)
            return model.fit(dataset, epochs=epochs, steps_per_epoch=steps, shuffle=False,
                             callbacks=[evaluation, *callbacks], **kwargs)

    return SiameseHyperModel


def _defaults_first(oracle_class):
    """An oracle whose first trial is the hyper-parameters' defaults, then its own choices."""

    class DefaultsFirst(oracle_class):
        def _random_values(self):
            if not self._tried_so_far:
                return {hp.name: hp.default for hp in self.hyperparameters.space}
            return super()._random_values()

    return DefaultsFirst


def _make_tuner(kt, hypermodel, options, tuning: TuneOptions, output_dir: Path, objective: str):
    objective = kt.Objective(objective, direction="max")
    common = {"hypermodel": hypermodel, "executions_per_trial": tuning.executions_per_trial,
              "directory": str(output_dir), "project_name": PROJECT, "overwrite": tuning.overwrite}
    if tuning.tuner == "bayesian":
        oracle = _defaults_first(kt.oracles.BayesianOptimizationOracle)(
            objective, max_trials=tuning.max_trials, seed=options.seed)
        return kt.Tuner(oracle=oracle, **common)
    oracle = _defaults_first(kt.oracles.HyperbandOracle)(objective, max_epochs=options.epochs, seed=options.seed)
    oracle.max_trials = tuning.max_trials  # Hyperband counts brackets; --max-trials still caps the trials.

    class Hyperband(kt.Hyperband):
        def __init__(self, **kwargs):
            kt.Tuner.__init__(self, oracle=oracle, **kwargs)  # kt.Hyperband's own __init__ would make its oracle

    return Hyperband(**common)


def _check_same_search(record: dict, output_dir: Path, overwrite: bool) -> None:
    """A search continues only with the options it started with; else one line says what changed."""
    path = output_dir / SEARCH_FILE
    if overwrite or not path.is_file():
        return
    fix = "use a new --output-dir or --overwrite"
    previous = read_json(path, dict, fix=f"{fix}.")
    for name in sorted(set(record) | set(previous)):
        if previous.get(name) != record.get(name):
            raise OptionError(f"--output-dir {output_dir}: holds a search with --{name.replace('_', '-')} {previous.get(name)!r}, "
                              f"this one has {record.get(name)!r}; {fix}.")


def trials_table(tuner, names: tuple[str, ...], objective: str = OBJECTIVE) -> pd.DataFrame:
    """One row per trial, in order: its hyper-parameters, its score and status."""
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        values = trial.hyperparameters.values
        rows.append({"trial": trial_id, **{name: values.get(name) for name in names},
                     "epochs": values.get("tuner/epochs"), objective: trial.score, "status": trial.status})
    table = pd.DataFrame(rows)
    return table if table["epochs"].notna().any() else table.drop(columns="epochs")


def tune_classifier(training: TrainOptions, tuning: TuneOptions, *, verbose: int = 0) -> dict:
    """Search the classifier's hyper-parameters; write the best as `run.json`; return the summary.

    KerasTuner prints its progress; it goes to stderr when `verbose`, else nowhere.
    """
    training.check()
    tuning.check()
    kt = _keras_tuner()
    names = searched(training)

    def hypermodel(output_dir: Path):
        train, val = load_lists(training, output_dir)
        logger.info("Tuning on %d images, validating on %d; searching %s", len(train), len(val), ", ".join(names))
        return _hypermodel_class(kt)(training, train, val, distribution_strategy("default"))

    return _search(kt, hypermodel, training, tuning, names, OBJECTIVE, TrainOptions(), verbose=verbose)


def tune_siamese(similarity: SimilarityOptions, tuning: TuneOptions, *, verbose: int = 0) -> dict:
    """Search a Siamese network's margin, embedding size and learning rate; as `tune_classifier` otherwise."""
    similarity.check()
    tuning.check()
    kt = _keras_tuner()

    def hypermodel(output_dir: Path):
        frame, train = training_images(similarity, output_dir)
        logger.info("Tuning on %d images, scoring retrieval on the %d held out; searching %s", len(train),
                    len(frame) - len(train), ", ".join(SIAMESE_SEARCHED))
        return _siamese_hypermodel_class(kt)(similarity, frame, train, distribution_strategy("default"))

    defaults = SimilarityOptions(method="siamese", data=similarity.data)
    return _search(kt, hypermodel, similarity, tuning, SIAMESE_SEARCHED, SIAMESE_OBJECTIVE, defaults, verbose=verbose)


def _search(kt, make_hypermodel: Callable[[Path], object], options, tuning: TuneOptions, names: tuple[str, ...],
            objective: str, defaults, *, verbose: int) -> dict:
    """The search both tasks share: `options` is the run's options dataclass, `defaults` its command's defaults."""
    started = time.time()
    output_dir = Path(options.output_dir)
    missing_folders(output_dir)
    record = {**dataclasses.asdict(tuning), **dataclasses.asdict(options), "searched": list(names)}
    for where in ("output_dir", "overwrite"):
        record.pop(where)
    _check_same_search(record, output_dir, tuning.overwrite)

    hypermodel = make_hypermodel(output_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr if verbose else stack.enter_context(open(os.devnull, "w"))))
        tuner = _make_tuner(kt, hypermodel, options, tuning, output_dir, objective)
        write_text(output_dir / SEARCH_FILE, json.dumps(record, indent=2))
        done_before = sum(trial.status == "COMPLETED" for trial in tuner.oracle.trials.values())
        tuner.search(epochs=options.epochs, verbose=verbose)

    table = trials_table(tuner, names, objective)
    write_text(output_dir / "trials.csv", table.to_csv(index=False))
    plot_trials(table, output_dir / "trials.png", score=objective)
    completed = table[table["status"] == "COMPLETED"]
    if completed.empty:
        raise DataError(f"{output_dir}: no trial completed (see the errors above); fix them and run the same command again.")
    best = completed.loc[completed[objective].idxmax()]
    is_default = (completed[list(names)] == pd.Series({name: getattr(defaults, name) for name in names})).all(axis=1)
    best_options = dataclasses.replace(options, **{name: _plain(best[name]) for name in names})
    summary = {
        "status": "finished",
        "objective": objective,
        f"best_{objective}": round(float(best[objective]), 6),
        f"default_{objective}": round(float(completed.loc[is_default, objective].max()), 6) if is_default.any() else None,
        "best_trial": best["trial"],
        "best": {name: _plain(best[name]) for name in names},
        "trials": len(completed),
        "new_trials": len(completed) - done_before,
        "tuner": tuning.tuner,
        "wall_time_s": round(time.time() - started, 2),
        "run_json": str(output_dir / "run.json"),
    }
    write_run_record(output_dir, dataclasses.asdict(best_options), **summary)
    return summary


def _plain(value):
    """A pandas cell as the JSON scalar a TrainOptions field holds (numpy bool/int/float -> Python)."""
    return value.item() if hasattr(value, "item") else value
