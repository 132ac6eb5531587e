"""Score a trained classifier on a labelled test list: `toolkit evaluate`, per-label thresholds, the experiment's scores.

Everything is scikit-learn's metrics over the known cells of each label
(blank cells are left out, as in training): precision, recall, F1 and
support at the model's thresholds, ROC-AUC and average precision from the
probabilities, micro and macro averages, and for a multi-class model its
confusion matrix. Thresholds are per label: 0.5, the ones `train --thresholds
tuned` stored in the model, or one given on the command line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import write_text
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.formats.images import check_images, report_skipped, require_readable
from image_toolkit.data_tools.formats.labels import LabelTable, read_label_csv
from image_toolkit.data_tools.maps.plots import plot_confusion, plot_pr_curves
from image_toolkit.models.inference import DEFAULT_THRESHOLD, classifier_probabilities, decide, label_thresholds, load_classifier

logger = logging.getLogger(__name__)

# The rows of the averages in a scores table, after the labels' rows.
MACRO = "macro"
MICRO = "micro"
# The thresholds `train --thresholds tuned` tries per label: 0.05, 0.10, ..., 0.95. A grid rather than every
# distinct probability, so a threshold tuned on a few validation images does not sit on one image's score.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def tune_thresholds(labels: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """Per label, the grid threshold with the best F1 on the known cells (ties: the one nearest 0.5).

    A label without a positive or a negative among its known cells keeps
    0.5: F1 cannot choose between thresholds there.
    """
    from sklearn.metrics import f1_score

    chosen = []
    for truth, scores in zip(labels.T, probabilities.T):
        known = ~np.isnan(truth)
        y = truth[known].astype(int)
        if len(np.unique(y)) < 2:
            chosen.append(DEFAULT_THRESHOLD)
            continue
        f1 = np.array([f1_score(y, scores[known] >= t, zero_division=0) for t in THRESHOLD_GRID])
        best = np.flatnonzero(f1 == f1.max())
        chosen.append(float(THRESHOLD_GRID[best[np.abs(THRESHOLD_GRID[best] - 0.5).argmin()]]))
    return chosen


def score_predictions(truth: LabelTable, predicted: np.ndarray) -> pd.DataFrame:
    """Per-label precision, recall, F1 and support (blank truth cells left out), then the macro row."""
    from sklearn.metrics import precision_recall_fscore_support

    rows = []
    for j, name in enumerate(truth.label_names):
        known = ~np.isnan(truth.labels[:, j])
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth.labels[known, j].astype(int), predicted[known, j].astype(int),
            average="binary", pos_label=1, zero_division=0,
        )
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int((truth.labels[known, j] == 1).sum())})
    frame = pd.DataFrame(rows)
    macro = {"class": MACRO, **frame[["precision", "recall", "f1"]].mean().to_dict(), "support": int(frame["support"].sum())}
    return pd.concat([frame, pd.DataFrame([macro])], ignore_index=True)


def _micro(truth: LabelTable, predicted: np.ndarray) -> dict:
    """Precision, recall and F1 over all known cells together (for multiclass, micro-F1 is the accuracy)."""
    from sklearn.metrics import precision_recall_fscore_support

    known = ~np.isnan(truth.labels)
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth.labels[known].astype(int), predicted[known].astype(int), average="binary", zero_division=0
    )
    return {"class": MICRO, "precision": precision, "recall": recall, "f1": f1, "support": int((truth.labels[known] == 1).sum())}


def _ranking_scores(truth: LabelTable, probabilities: np.ndarray) -> pd.DataFrame:
    """ROC-AUC and average precision per label; NaN where a label's known cells hold one value only."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rows = []
    for j in range(len(truth.label_names)):
        known = ~np.isnan(truth.labels[:, j])
        y, scores = truth.labels[known, j].astype(int), probabilities[known, j]
        both = len(np.unique(y)) == 2
        rows.append({"roc_auc": roc_auc_score(y, scores) if both else np.nan,
                     "average_precision": average_precision_score(y, scores) if both else np.nan})
    return pd.DataFrame(rows)


def scores_table(truth: LabelTable, probabilities: np.ndarray, thresholds: np.ndarray) -> pd.DataFrame:
    """One row per label (precision, recall, F1, support, ROC-AUC, AP, threshold), then the macro and micro rows."""
    predicted = decide(probabilities, truth.task, thresholds)
    table = score_predictions(truth, predicted)
    per_label = pd.concat([table.iloc[:-1].reset_index(drop=True), _ranking_scores(truth, probabilities)], axis=1)
    per_label["threshold"] = np.nan if truth.task == "multiclass" else thresholds
    macro = {**table.iloc[-1].to_dict(), **per_label[["roc_auc", "average_precision"]].mean().to_dict()}
    return pd.concat([per_label, pd.DataFrame([macro, _micro(truth, predicted)])], ignore_index=True)


def _test_table(test_csv: Path, metadata: dict) -> LabelTable:
    """The test list with the model's label columns, in the model's order; other labels are one line naming them."""
    names, task = metadata["label_names"], metadata["task"]
    table = read_label_csv(test_csv, task)
    missing, extra = sorted(set(names) - set(table.label_names)), sorted(set(table.label_names) - set(names))
    # A test list may lack a class of a multi-class model; every label column of a multi-label one must be there.
    if extra or (missing and task == "multilabel"):
        said = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                           f"extra {', '.join(extra)}" if extra else "") if part)
        raise DataError(
            f"{test_csv}: its labels differ from the model's ({said}); the model knows {', '.join(names)}. "
            "Evaluate on a list with the labels the model was trained on."
        )
    order = [table.label_names.index(name) if name in table.label_names else None for name in names]
    labels = np.stack([table.labels[:, j] if j is not None else np.where(np.isnan(table.labels).any(axis=1), np.nan, 0.0)
                       for j in order], axis=1)
    return LabelTable(images=table.images, labels=labels.astype(np.float32), label_names=list(names), task=task)


def evaluate_classifier(
    model_path: str | Path,
    test_csv: str | Path,
    *,
    img_directory: str | Path,
    output_dir: str | Path,
    threshold: float | None = None,
    batch_size: int = 32,
) -> dict:
    """Score `model_path` on `test_csv`; write evaluation.json, per_label.csv and the plots; return the summary.

    Unreadable test images are left out, counted and listed in
    skipped_images.txt, as training does.
    """
    model_path, test_csv, image_dir, output_dir = map(Path, (model_path, test_csv, img_directory, output_dir))
    if not test_csv.is_file():
        raise DataError(f"{test_csv}: test list not found; pass a label CSV in the layout 'toolkit train' reads.")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found; pass --img-directory with the folder of your images.")
    if threshold is not None:
        check_range("--threshold", threshold, low=0, high=1)
    model, metadata = load_classifier(model_path)
    thresholds = label_thresholds(metadata, threshold)
    truth = _test_table(test_csv, metadata)
    usable, skipped = check_images([image_dir / name for name in truth.images])
    require_readable(sum(usable), skipped, str(test_csv))
    report_skipped(skipped, output_dir, len(truth.images))
    truth = truth.subset(np.flatnonzero(usable))
    probabilities = classifier_probabilities([image_dir / name for name in truth.images], model, metadata, batch_size=batch_size)
    table = scores_table(truth, probabilities, thresholds)
    write_text(output_dir / "per_label.csv", table.rename(columns={"class": "label"}).to_csv(index=False))
    plot_pr_curves(truth.labels, probabilities, truth.label_names, output_dir / "pr_curves.png")
    summary = _summary(table, truth, probabilities, metadata, thresholds, model_path, test_csv, len(skipped))
    if truth.task == "multiclass":
        plot_confusion(np.array(summary["confusion_matrix"]), truth.label_names, output_dir / "confusion.png")
    write_text(output_dir / "evaluation.json", json.dumps(summary, indent=2))
    return {**summary, "output_dir": str(output_dir)}


def _summary(table: pd.DataFrame, truth: LabelTable, probabilities: np.ndarray, metadata: dict, thresholds: np.ndarray,
             model_path: Path, test_csv: Path, n_skipped: int) -> dict:
    """What evaluation.json holds: the averages up front, then every label's row, and the confusion matrix."""
    def clean(row: dict) -> dict:
        return {key: (None if isinstance(value, float) and np.isnan(value) else
                      round(value, 6) if isinstance(value, float) else value) for key, value in row.items()}

    rows = [clean(row) for row in table.to_dict(orient="records")]
    by_name = {row["class"]: row for row in rows}
    summary = {
        "model": str(model_path),
        "test_csv": str(test_csv),
        "task": truth.task,
        "n_images": len(truth.images),
        "n_skipped": n_skipped,
        "thresholds": None if truth.task == "multiclass" else [round(float(t), 4) for t in thresholds],
        "macro_f1": by_name[MACRO]["f1"],
        "micro_f1": by_name[MICRO]["f1"],
        "macro_roc_auc": by_name[MACRO]["roc_auc"],
        "macro_average_precision": by_name[MACRO]["average_precision"],
        "per_label": rows,
    }
    if truth.task == "multiclass":
        from sklearn.metrics import confusion_matrix

        known = ~np.isnan(truth.labels).any(axis=1)
        summary["accuracy"] = by_name[MICRO]["f1"]
        summary["confusion_matrix"] = confusion_matrix(
            truth.labels[known].argmax(axis=1), probabilities[known].argmax(axis=1), labels=range(len(truth.label_names))
        ).tolist()
    return summary
