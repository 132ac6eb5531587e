"""Label CSVs: read, check, split and write them.

Two layouts are accepted (README, "Label CSV format"):

* multilabel: a column `image` (a path relative to the image folder), then one
  column per label holding 0, 1 or nothing (unknown);
* multiclass: a column `image` and a column `label` holding a class name.

Unknown labels are kept as NaN in `LabelTable.labels`, so every missing-label
strategy (`image_toolkit.data_tools.formats.missing_labels`) starts from the same matrix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import atomic_path
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.csv_files import read_checked_csv, read_csv_header
from image_toolkit.data_tools.formats.splits import rarest_positive, stratified_split
from image_toolkit.data_tools.names import TASKS

# The class-name column of a multiclass label CSV; a metadata CSV (image,class,split) serves as one too.
CLASS_COLUMNS = ("label", "class")


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """Images and their labels: `labels[i, j]` is 1, 0 or NaN (unknown) for image i, label j."""

    images: list[str]
    labels: np.ndarray
    label_names: list[str]
    task: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows) -> "LabelTable":
        rows = np.asarray(rows)
        return LabelTable(
            images=[self.images[i] for i in rows],
            labels=self.labels[rows],
            label_names=self.label_names,
            task=self.task,
        )


def _read_frame(path: Path, *, allow_duplicates: bool) -> pd.DataFrame:
    frame = read_checked_csv(
        path, required=("image",), kind="label CSV", example="image,even,prime",
        missing_fix="pass --data-csv with the path of your label file",
    )
    duplicated = frame["image"][frame["image"].duplicated()]
    if not duplicated.empty and not allow_duplicates:
        first = duplicated.iloc[0]
        lines = [int(i) + 2 for i in np.flatnonzero(frame["image"] == first)]
        raise DataError(
            f"{path}: image '{first}' is listed more than once (lines {', '.join(map(str, lines))}); "
            "keep one row per image."
        )
    blank = np.flatnonzero(frame["image"] == "")
    if blank.size:
        raise DataError(f"{path} line {blank[0] + 2}: the 'image' cell is empty.")
    return frame


def _multilabel_matrix(frame: pd.DataFrame, path: Path) -> tuple[np.ndarray, list[str]]:
    names = [column for column in frame.columns if column != "image"]
    if not names:
        raise DataError(
            f"{path}: no label columns after 'image'; add one 0/1 column per label "
            "(or use --task multiclass with a 'label' column)."
        )
    cells = frame[names].apply(lambda column: column.str.strip())
    values = {"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "": np.nan}
    bad = ~cells.isin(values.keys())
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        hint = " (a class-name column: use --task multiclass)" if names == ["label"] else ""
        raise DataError(
            f"{path} line {row + 2}, column '{names[col]}': value '{cells.iat[row, col]}' "
            f"is not a label; use 0, 1 or leave the cell blank{hint}."
        )
    matrix = cells.replace(values).to_numpy(dtype=np.float32)
    return matrix, names


def _multiclass_matrix(
    frame: pd.DataFrame, path: Path, class_names: list[str] | None
) -> tuple[np.ndarray, list[str]]:
    column = next((name for name in CLASS_COLUMNS if name in frame.columns), None)
    if column is None:
        raise DataError(
            f"{path}: --task multiclass needs a 'label' column (or the 'class' column of a metadata CSV) "
            f"with one class name per image (found {', '.join(frame.columns)})."
        )
    classes = frame[column].str.strip()
    names = class_names if class_names is not None else sorted(set(classes) - {""})
    unknown = sorted(set(classes) - set(names) - {""})
    if unknown:
        raise DataError(
            f"{path}: class '{unknown[0]}' does not occur in the training list "
            f"(classes: {', '.join(names)})."
        )
    matrix = np.full((len(frame), len(names)), np.nan, dtype=np.float32)
    rows = np.flatnonzero((classes != "").to_numpy())  # One step for all rows: a loop took 4 s for 1M images.
    matrix[rows] = 0.0
    matrix[rows, classes.iloc[rows].map({name: i for i, name in enumerate(names)}).to_numpy(dtype=np.intp)] = 1.0
    return matrix, names


def read_label_csv(
    path: str | Path,
    task: str = "multilabel",
    *,
    label_names: list[str] | None = None,
    allow_duplicates: bool = False,
) -> LabelTable:
    """Read and check a label CSV.

    `label_names` (from a training list) fixes the columns' order.
    `allow_duplicates` admits repeated rows, the way a resampled training list
    (`toolkit resample`) upsamples an image; a label file proper lists each
    image once.
    """
    if task not in TASKS:
        raise OptionError(f"--task: expected one of {', '.join(TASKS)}. Received: {task!r}.")
    path = Path(path)
    frame = _read_frame(path, allow_duplicates=allow_duplicates)
    if task == "multiclass":
        matrix, names = _multiclass_matrix(frame, path, label_names)
    else:
        matrix, names = _multilabel_matrix(frame, path)
        if label_names is not None and names != label_names:
            raise DataError(
                f"{path}: label columns {names} differ from the training list's {label_names}."
            )
    if task == "multiclass" and len(names) < 2:
        raise DataError(f"{path}: --task multiclass needs at least 2 classes; found {names}.")
    return LabelTable(images=frame["image"].tolist(), labels=matrix, label_names=names, task=task)


def write_label_csv(table: LabelTable, path: str | Path) -> None:
    """Write a table in the layout it was read from, atomically (train.csv, val.csv)."""
    if table.task == "multiclass":
        known = ~np.isnan(table.labels).any(axis=1)
        names = np.array(table.label_names, dtype=object)
        column = np.where(known, names[np.nan_to_num(table.labels).argmax(axis=1)], "")
        frame = pd.DataFrame({"image": table.images, "label": column})
    else:
        frame = pd.DataFrame(table.labels, columns=table.label_names).astype("Int64")
        frame.insert(0, "image", table.images)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)


def split_table(table: LabelTable, val_split: float, seed: int) -> tuple[LabelTable, LabelTable]:
    """Split reproducibly into training and validation tables, stratified (`formats.splits`).

    Multiclass rows are stratified by class (unknown class: a stratum of its
    own), multilabel rows by their rarest positive label. A class with a
    single image stays in training.
    """
    check_range("--val-split", val_split, low=0, high=1, low_open=True, high_open=True)
    n_val = int(round(len(table) * val_split))
    if n_val < 1 or len(table) - n_val < 1:
        raise DataError(
            f"--val-split {val_split} leaves no image for training or validation "
            f"with {len(table)} usable images; label more images or change --val-split."
        )
    if table.task == "multiclass":
        strata = image_classes(table)
    else:
        strata = rarest_positive(table.labels, table.label_names)
    held_out = stratified_split(strata, val_split, seed=seed)
    val_rows, train_rows = np.flatnonzero(held_out), np.flatnonzero(~held_out)
    if val_rows.size == 0 or train_rows.size == 0:
        raise DataError(
            f"--val-split {val_split} leaves an empty training or validation list with {len(table)} images "
            "(a class with one image stays in training); label more images."
        )
    return table.subset(train_rows), table.subset(val_rows)


# Separates class names (multilabel positives, query classes) and images in one CSV cell.
SEPARATOR = ";"


def csv_header(path: str | Path) -> list[str]:
    """The column names of a label or metadata CSV."""
    return read_csv_header(path, kind="label CSV", missing_fix="pass the path of your label file")


def infer_task(path: str | Path) -> str:
    """`multiclass` when the CSV has a 'label' (or a metadata CSV's 'class') column, else `multilabel`.

    README, "Label CSV format".
    """
    return "multiclass" if set(CLASS_COLUMNS) & set(csv_header(path)) else "multilabel"


def read_labels(path: str | Path, task: str | None = None, *, allow_duplicates: bool = False) -> LabelTable:
    """`read_label_csv` with the task inferred from the header when not given."""
    return read_label_csv(path, task or infer_task(path), allow_duplicates=allow_duplicates)


def image_classes(table: LabelTable) -> list[str]:
    """Each image's class as text: its class (multiclass) or its positive labels joined by ';' (multilabel).

    An unknown class is ''.
    """
    names = np.array(table.label_names, dtype=object)
    if table.task == "multiclass":  # Whole columns at once: a loop over rows took 24 s for 1M images.
        known = ~np.isnan(table.labels).any(axis=1)
        return np.where(known, names[np.argmax(np.nan_to_num(table.labels), axis=1)], "").tolist()
    patterns, which = np.unique(np.nan_to_num(table.labels) == 1, axis=0, return_inverse=True)
    texts = [SEPARATOR.join(names[pattern]) for pattern in patterns]  # Few patterns, however many images.
    return [texts[i] for i in which.ravel()]
