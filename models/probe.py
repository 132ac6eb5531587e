"""A linear probe: logistic regression on extracted features, saved as a toolkit classifier (`toolkit probe`).

On a few hundred images a CNN trained from scratch can lose to a linear model
on raw pixels; practitioners then fit a linear model on frozen features. Here
scikit-learn fits it (StandardScaler, then LogisticRegressionCV: C chosen by
k-fold cross-validation on the training part), one multinomial model for
multiclass, one binary model per label for multilabel. The scaler is folded
into the coefficients (W' = W / scale, b' = b - W' . mean), so the probe is
one Dense layer on top of the feature extractor rebuilt from the features'
metadata: a `best_model.h5` that `predict`, `evaluate` and `export` take as
they take a trained classifier.

`fit_linear_probe` is the one fitting function; `assess --linear_probe`
scores embeddings with it too.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.atomic import missing_folders
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import MODEL_FILE_WEIGHTS, read_features
from image_toolkit.data_tools.formats.labels import LabelTable, read_label_csv, split_table, write_label_csv
from image_toolkit.data_tools.formats.model_file import read_h5_metadata
from image_toolkit.data_tools.names import CLASS_WEIGHTS, TASKS
from image_toolkit.data_tools.provenance import toolkit_version
from image_toolkit.models.backbones import PIXELS
from image_toolkit.models.callbacks import save_h5_with_metadata
from image_toolkit.models.runs import write_run_record
from image_toolkit.models.runtime import keras

logger = logging.getLogger(__name__)

# Folds for choosing C (fewer when the rarest class has fewer training images), and the C grid searched.
# On standardised features the best C of digits pixels and pooled CNN features fell within 1e-4..1e2;
# tol 1e-3 (scikit-learn's default is 1e-4) stopped the large-C fits near their optimum 2x sooner.
CV_FOLDS = 5
CS = np.logspace(-4, 2, 7)
TOL = 1e-3
MAX_ITER = 1000
REEXTRACT_FIX = "re-extract them with toolkit get-transfer-layer IMAGES FEATURES --append"


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """Every option of a probe run; `run.json` records them all."""

    features: str
    data_csv: str = "./label.txt"
    output_dir: str = "."
    task: str = "multilabel"
    val_split: float = 0.2
    seed: int = 42
    class_weight: str = "none"
    train_csv: str | None = None
    val_csv: str | None = None
    n_jobs: int = 1

    def check(self) -> None:
        """Refuse impossible values before any file is read."""
        for option, allowed in {"task": TASKS, "class_weight": CLASS_WEIGHTS}.items():
            if getattr(self, option) not in allowed:
                raise OptionError(f"--{option.replace('_', '-')}: expected one of {', '.join(allowed)}. Received: {getattr(self, option)!r}.")
        check_range("--val-split", self.val_split, low=0, high=1, low_open=True, high_open=True)
        if (self.train_csv is None) != (self.val_csv is None):
            raise OptionError("--train-csv and --val-csv go together: give both lists, or neither to split --data-csv.")


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """The fitted probe in raw feature units: probabilities = activation(features @ kernel + bias).

    `kernel` is D x K, `bias` K; the activation is softmax for multiclass,
    sigmoid (one column per label) for multilabel. `C` holds the chosen
    inverse regularisation strength of each model; `estimators` the fitted
    scikit-learn (StandardScaler, row basis or None, LogisticRegressionCV) of
    each, so the fold can be checked against scikit-learn's own predict_proba.
    """

    kernel: np.ndarray
    bias: np.ndarray
    task: str
    C: list[float]
    estimators: list[tuple]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = np.asarray(features, np.float64) @ self.kernel + self.bias
        if self.task == "multiclass":
            logits -= logits.max(axis=1, keepdims=True)
            exp = np.exp(logits)
            return exp / exp.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-logits))


def _row_space(features: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis (D x r) of the rows' span when there are fewer rows than features, else None.

    An L2-penalised linear model's weights lie in the span of its training
    rows (the representer theorem), and each fold's rows lie in the span of
    all rows, so fitting on the r coordinates is exact and costs r / D of
    fitting on the D features (3,072 pixels of 800 images: a quarter).
    """
    if features.shape[0] >= features.shape[1]:
        return None
    _, singular, vt = np.linalg.svd(features, full_matrices=False)
    return vt[singular > singular[0] * 1e-7].T


def _fit_one(features: np.ndarray, y: np.ndarray, *, class_weight: str, seed: int, n_jobs: int):
    """StandardScaler + LogisticRegressionCV on one target; (coef K' x D, intercept K', C) folded to raw units."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    scaled = scaler.transform(features)
    basis = _row_space(scaled)
    counts = np.bincount(y)
    folds = int(max(2, min(CV_FOLDS, counts[counts > 0].min())))
    model = LogisticRegressionCV(Cs=CS, cv=folds, tol=TOL, max_iter=MAX_ITER, n_jobs=n_jobs, random_state=seed,
                                 class_weight=None if class_weight == "none" else class_weight, scoring="neg_log_loss")
    with warnings.catch_warnings():
        # A class with fewer images than folds is only warned about; scikit-learn 1.8+ announces new defaults we do not use.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*(l1_ratios|use_legacy_attributes)", category=FutureWarning)
        model.fit(scaled if basis is None else scaled @ basis, y)
    coef = (model.coef_ if basis is None else model.coef_ @ basis.T) / scaler.scale_
    intercept = model.intercept_ - coef @ scaler.mean_
    return coef, intercept, float(np.atleast_1d(model.C_)[0]), (scaler, basis, model)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, task: str, *, class_weight: str = "none",
                     seed: int = 42, n_jobs: int = 1) -> LinearProbe:
    """Fit the probe on `features` (N x D) and `labels` (N x K: 0, 1 or NaN unknown, one-hot for multiclass).

    Multiclass rows with an unknown cell are left out; each multilabel label
    is fitted on its known cells. A label whose known training cells all
    agree cannot be fitted: it predicts its constant (probability 1 - 1e-4
    or 1e-4).
    """
    features = np.asarray(features, np.float64)
    n_labels = labels.shape[1]
    if task == "multiclass":
        known = ~np.isnan(labels).any(axis=1)
        y = labels[known].argmax(axis=1)
        present = np.unique(y)
        if len(present) < 2:
            raise DataError(f"the training part has {len(present)} class with images; a linear probe needs at least 2.")
        coef, intercept, c, fitted = _fit_one(features[known], np.searchsorted(present, y), class_weight=class_weight, seed=seed, n_jobs=n_jobs)
        if len(present) == 2:  # scikit-learn's binary model has one row: the second class's logit against the first's 0
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        kernel, bias = np.zeros((features.shape[1], n_labels)), np.full(n_labels, -1e4)  # a class never seen: never chosen
        kernel[:, present], bias[present] = coef.T, intercept
        return LinearProbe(kernel, bias, task, [c], [fitted])
    kernel, bias, cs, estimators = np.zeros((features.shape[1], n_labels)), np.zeros(n_labels), [], []
    for j in range(n_labels):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j].astype(int)
        if len(np.unique(y)) < 2:
            value = y[0] if len(y) else 0
            logger.warning("label %d: its %d known training cells are all %d; it predicts that constant", j, len(y), value)
            bias[j] = np.log(1e4) if value else -np.log(1e4)
            cs.append(float("nan"))
            estimators.append(None)
            continue
        coef, intercept, c, fitted = _fit_one(features[known], y, class_weight=class_weight, seed=seed, n_jobs=n_jobs)
        kernel[:, j], bias[j] = coef[0], intercept[0]
        cs.append(c)
        estimators.append(fitted)
    return LinearProbe(kernel, bias, task, cs, estimators)


def f1_scores(labels: np.ndarray, probabilities: np.ndarray, task: str) -> dict[str, float]:
    """Macro and micro F1 as training's MaskedF1Score defines them (argmax for multiclass, 0.5 for multilabel)."""
    from sklearn.metrics import f1_score

    if task == "multiclass":
        known = ~np.isnan(labels).any(axis=1)
        y, p = labels[known].argmax(axis=1), probabilities[known].argmax(axis=1)
        return {"macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
                "micro_f1": float(f1_score(y, p, average="micro", zero_division=0))}
    predicted = (probabilities >= 0.5).astype(int)
    known = ~np.isnan(labels)
    per_label = [f1_score(labels[known[:, j], j].astype(int), predicted[known[:, j], j], zero_division=0)
                 for j in range(labels.shape[1])]
    micro = f1_score(labels[known].astype(int), predicted[known], zero_division=0)
    return {"macro_f1": float(np.mean(per_label)), "micro_f1": float(micro)}


def _feature_rows(feature_paths: list[str], images: list[str], source: str, features_path: str) -> np.ndarray:
    """The feature row of each of `images`; an image without one is a DataError naming it and the fix."""
    index = {path: row for row, path in enumerate(feature_paths)}
    missing = [image for image in images if image not in index]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} of {len(images)} labelled images have no row in {features_path} "
            f"(first: '{missing[0]}'); {REEXTRACT_FIX}."
        )
    return np.array([index[image] for image in images], dtype=int)


def _lists(options: ProbeOptions) -> tuple[LabelTable, LabelTable]:
    """Training and validation lists: explicit CSVs, or the reproducible split train uses; unlabelled rows left out."""
    if options.train_csv is not None:
        train = read_label_csv(options.train_csv, options.task, allow_duplicates=True)
        return train, read_label_csv(options.val_csv, options.task, label_names=train.label_names)
    table = read_label_csv(options.data_csv, options.task)
    labelled = ~np.isnan(table.labels).any(axis=1) if options.task == "multiclass" else ~np.isnan(table.labels).all(axis=1)
    table = table.subset(np.flatnonzero(labelled))
    if len(table) < 2:
        raise DataError(f"{options.data_csv}: {len(table)} labelled image; a probe needs at least 2 "
                        "(one to fit, one to validate). Label more images.")
    return split_table(table, options.val_split, options.seed)


def preprocess_name(metadata: dict) -> str:
    """The name of the input preprocessing the features' extractor expects ('pixels' or a backbone's)."""
    if metadata["model"] == PIXELS:
        return PIXELS
    if metadata["weights"] != MODEL_FILE_WEIGHTS:
        return metadata["model"]
    source = Path(metadata["model"])
    saved = read_h5_metadata(source) if source.is_file() else None
    if saved is None:  # an embedding tower (.keras): its backbone is its nested model
        from image_toolkit.models.inference import load_embedding_model

        return load_embedding_model(source)[1]["backbone"]
    return saved.get("preprocess", saved["backbone"])


def probe_model(extractor, probe: LinearProbe) -> keras.Model:
    """The feature extractor followed by one Dense layer holding the folded probe."""
    features = extractor.model.outputs[0]
    if len(features.shape) > 2:
        features = keras.layers.Flatten(name="probe_flatten")(features)
    activation = "softmax" if probe.task == "multiclass" else "sigmoid"
    dense = keras.layers.Dense(probe.kernel.shape[1], activation=activation, name="probe")
    model = keras.Model(extractor.model.inputs, dense(features), name="linear_probe")
    dense.set_weights([probe.kernel.astype(np.float32), probe.bias.astype(np.float32)])
    return model


def train_probe(options: ProbeOptions) -> dict:
    """Fit a probe on a feature file and a label CSV; write best_model.h5, train.csv, val.csv, run.json; return the summary."""
    from image_toolkit.models.extraction import extractor_from_metadata

    options.check()
    started = time.time()
    output_dir = Path(options.output_dir)
    missing_folders(output_dir)
    feature_set = read_features(options.features)
    if not feature_set.metadata.get("model"):
        raise DataError(f"{options.features}: no metadata saying how the features were made, so no model can be built on them; "
                        "re-extract them with toolkit get-transfer-layer.")
    train, val = _lists(options)
    if options.train_csv is None:  # counted over the whole CSV, as the user wrote it
        rows = _feature_rows(feature_set.paths, train.images + val.images, options.data_csv, options.features)
        train_rows, val_rows = rows[: len(train)], rows[len(train):]
    else:
        train_rows = _feature_rows(feature_set.paths, train.images, options.train_csv, options.features)
        val_rows = _feature_rows(feature_set.paths, val.images, options.val_csv, options.features)
    unused = len(set(feature_set.paths) - set(train.images) - set(val.images))
    if unused:
        logger.info("%s: %d feature rows have no label row and are not used", options.features, unused)
    extractor = extractor_from_metadata(feature_set.metadata)
    preprocess = preprocess_name(feature_set.metadata)
    logger.info("Fitting on %d images, validating on %d; labels: %s", len(train), len(val), ", ".join(train.label_names))
    probe = fit_linear_probe(feature_set.features[train_rows], train.labels, options.task,
                             class_weight=options.class_weight, seed=options.seed, n_jobs=options.n_jobs)
    scores = f1_scores(val.labels, probe.predict_proba(feature_set.features[val_rows]), options.task)
    metadata = {
        "format_version": 1,
        "task": options.task,
        "label_names": train.label_names,
        "backbone": preprocess,
        "image_size": extractor.image_size,
        "head_units": 0,
        "weights": extractor.metadata["weights"],
        "background": extractor.metadata["background"],  # the features' own, so predict decodes as they were made
        "toolkit_version": toolkit_version(),
        "head": "linear",
        "preprocess": preprocess,
        "features": str(Path(options.features).resolve()),
        "val_macro_f1": round(scores["macro_f1"], 6),
    }
    model_path = output_dir / "best_model.h5"
    save_h5_with_metadata(probe_model(extractor, probe), model_path, metadata)
    write_label_csv(train, output_dir / "train.csv")
    write_label_csv(val, output_dir / "val.csv")
    summary = {
        "status": "finished",
        "val_macro_f1": round(scores["macro_f1"], 6),
        "val_micro_f1": round(scores["micro_f1"], 6),
        "C": probe.C,
        "n_train": len(train),
        "n_val": len(val),
        "label_names": train.label_names,
        "wall_time_s": round(time.time() - started, 2),
        "model": str(model_path),
    }
    write_run_record(output_dir, dataclasses.asdict(options), **summary)
    return summary
