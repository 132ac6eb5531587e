"""Repeat rows of a training list by designated ratios: `toolkit resample`.

A ratio is given per group of training rows:

* `deselected`: images someone deselected (deselect_count > 0 in the image
  feedback CSV), the "decision boundary" images;
* `selected`: images lassoed or selected and never deselected;
* `feedback`: every image the feedback names;
* `class:NAME`: images of class NAME (multiclass) or with label NAME = 1 (multilabel).

A row in several groups gets the product of their ratios (a deselected
kitchen image with `deselected=3` and `class:kitchen=2` appears 6 times).
A ratio r keeps floor(r) copies of a row and one more with probability
r - floor(r), drawn with the seed, so 2.5 means "2 or 3 copies, 2.5 on
average" and 0.5 "half of the rows". Only training rows are ever repeated;
a training list that shares an image with the validation or test list is
refused, because repeating it would train on what is scored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import refuse_inputs
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.feedback.store import read_image_feedback
from image_toolkit.data_tools.formats.labels import LabelTable, read_labels, write_label_csv

logger = logging.getLogger(__name__)

FEEDBACK_GROUPS = ("deselected", "selected", "feedback")
# Most copies of a row: a ratio of 1e9 once asked numpy for 1021 GiB.
MAX_RATIO = 1000
CLASS_PREFIX = "class:"


def _group_and_value(item: str) -> tuple[str, str]:
    """`"deselected=3"` -> `("deselected", "3")`, with the group checked."""
    group, equals, value = item.partition("=")
    group = group.strip()
    if not equals or not group:
        raise OptionError(f"--ratio {item}: expected GROUP=RATIO, e.g. deselected=3 or class:kitchen=2.")
    if group not in FEEDBACK_GROUPS and not (group.startswith(CLASS_PREFIX) and len(group) > len(CLASS_PREFIX)):
        raise OptionError(
            f"--ratio {item}: unknown group '{group}'; expected one of {', '.join(FEEDBACK_GROUPS)} or class:NAME."
        )
    return group, value


def _ratio_value(item: str, value: str) -> float:
    """One ratio, refused unless it is a positive number up to MAX_RATIO."""
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    if not (math.isfinite(ratio) and 0 < ratio <= MAX_RATIO):
        raise OptionError(
            f"--ratio {item}: the ratio must be a positive number up to {MAX_RATIO} "
            f"(1 keeps the rows, 3 triples them, 0.5 keeps half). Received: {value.strip()!r}."
        )
    return ratio


def parse_ratio_sweep(items: Iterable[str]) -> list[dict[str, float]]:
    """`["deselected=1,3", "class:kitchen=2"]` -> `[{"deselected": 1.0, "class:kitchen": 2.0}, {"deselected": 3.0, ...}]`.

    A comma list of values sweeps its group: one ratio set per value, the
    other groups fixed. Only one group may be swept, so that a sweep is a
    line (Δ against one ratio), not a grid nobody can plot or afford.
    """
    groups: dict[str, list[float]] = {}
    for item in items:
        group, value = _group_and_value(item)
        if group in groups:
            raise OptionError(f"--ratio {item}: group '{group}' is given twice; give each group once.")
        values = [_ratio_value(item, part) for part in value.split(",")]
        if len(set(values)) < len(values):
            raise OptionError(f"--ratio {item}: a value is listed twice; list each ratio of the sweep once.")
        groups[group] = values
    if not groups:
        raise OptionError("--ratio: give at least one, e.g. --ratio deselected=3.")
    swept = [group for group, values in groups.items() if len(values) > 1]
    if len(swept) > 1:
        raise OptionError(
            f"--ratio: the groups {', '.join(swept)} each list several values; sweep one group at a time "
            "(give the others a single ratio)."
        )
    if not swept:
        return [{group: values[0] for group, values in groups.items()}]
    return [{group: (value if group == swept[0] else values[0]) for group, values in groups.items()}
            for value in groups[swept[0]]]


def parse_ratios(items: Iterable[str]) -> dict[str, float]:
    """`["deselected=3", "class:kitchen=2"]` -> `{"deselected": 3.0, "class:kitchen": 2.0}`: one ratio per group."""
    ratio_sets = parse_ratio_sweep(items)
    if len(ratio_sets) > 1:
        swept = next(group for group in ratio_sets[0] if ratio_sets[0][group] != ratio_sets[1][group])
        raise OptionError(f"--ratio {swept}: give one ratio per group here; a list of values sweeps it in toolkit experiment.")
    return ratio_sets[0]


def group_members(table: LabelTable, feedback: pd.DataFrame, groups: Iterable[str], *, source: str = "the training list") -> dict[str, np.ndarray]:
    """For each group, a boolean mask over the table's rows."""
    by_image = feedback.set_index("image")
    deselected = set(by_image.index[by_image["deselect_count"] > 0])
    picked = by_image["lasso_count"] + by_image["select_count"] > 0
    selected = set(by_image.index[picked & (by_image["deselect_count"] == 0)])
    images = np.array(table.images, dtype=object)
    masks = {}
    for group in groups:
        if group == "deselected":
            masks[group] = np.isin(images, list(deselected))
        elif group == "selected":
            masks[group] = np.isin(images, list(selected))
        elif group == "feedback":
            masks[group] = np.isin(images, list(by_image.index))
        else:
            name = group[len(CLASS_PREFIX):]
            if name not in table.label_names:
                raise OptionError(f"--ratio {group}: no class '{name}' in {source} (classes: {', '.join(table.label_names)}).")
            masks[group] = table.labels[:, table.label_names.index(name)] == 1
    return masks


@dataclasses.dataclass(frozen=True)
class Resampled:
    """The resampled table, the source row of each of its rows, and counts per group."""

    table: LabelTable
    rows: np.ndarray
    counts: pd.DataFrame


def check_no_leak(train: LabelTable, held_out: dict[str, Iterable[str]], source: str) -> None:
    """Refuse a training list that shares an image with a validation or test list."""
    train_images = set(train.images)
    for name, images in held_out.items():
        leaked = sorted(train_images.intersection(images))
        if leaked:
            more = f" (and {len(leaked) - 1} more)" if len(leaked) > 1 else ""
            raise DataError(
                f"{source}: image '{leaked[0]}'{more} is also in {name}; resampling would train on held-out images. "
                f"Remove it from {source} or from {name}."
            )


def check_copies(per_row: np.ndarray, masks: dict[str, np.ndarray], train: LabelTable) -> None:
    """Refuse ratios whose product gives a row more than MAX_RATIO copies (four groups at 1000 once asked for 7 TiB)."""
    worst = int(np.argmax(per_row)) if len(per_row) else 0
    if len(per_row) and per_row[worst] > MAX_RATIO:
        groups = [group for group, mask in masks.items() if mask[worst]]
        raise OptionError(
            f"--ratio: image '{train.images[worst]}' is in the groups {', '.join(groups)}, whose ratios multiply to "
            f"{per_row[worst]:g} copies; at most {MAX_RATIO} copies per row, so lower the ratios of groups that overlap."
        )


def row_ratios(train: LabelTable, feedback: pd.DataFrame, ratios: dict[str, float], *,
               source: str = "the training list") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each training row's ratio (the product of its groups' ratios) and the group masks.

    The one place a ratio becomes per-row: as copies (`resample_table`) or as
    a loss weight (`toolkit experiment --use weight`).
    """
    masks = group_members(train, feedback, ratios, source=source)
    for group, mask in masks.items():
        if not mask.any():
            logger.warning("--ratio %s: no row of %s is in this group; it changes nothing", group, source)
    outside = sorted(set(feedback["image"]) - set(train.images))
    if outside:
        logger.info("%d images with feedback are not in %s (validation, test or unlabelled) and are not added", len(outside), source)
    per_row = np.ones(len(train))
    for group, mask in masks.items():
        per_row[mask] *= ratios[group]
    return per_row, masks


def resample_table(
    train: LabelTable,
    feedback: pd.DataFrame,
    ratios: dict[str, float],
    *,
    seed: int = 0,
    held_out: dict[str, Iterable[str]] | None = None,
    source: str = "the training list",
) -> Resampled:
    """Repeat the training rows by the ratios of their groups (module docstring); deterministic with `seed`."""
    if not ratios:
        raise OptionError("--ratio: give at least one, e.g. --ratio deselected=3.")
    for group, ratio in ratios.items():
        check_range(f"--ratio {group}", ratio, low=0, high=MAX_RATIO, low_open=True, why="copies per row")
    check_no_leak(train, held_out or {}, source)
    per_row, masks = row_ratios(train, feedback, ratios, source=source)
    check_copies(per_row, masks, train)
    whole = np.floor(per_row)
    draws = np.random.default_rng(seed).random(len(train))
    copies = (whole + (draws < per_row - whole)).astype(int)
    rows = np.repeat(np.arange(len(train)), copies)
    in_no_group = ~np.any(list(masks.values()), axis=0) if masks else np.ones(len(train), dtype=bool)
    counts = pd.DataFrame(
        [
            {"group": group, "ratio": ratios.get(group, 1.0), "rows_before": int(mask.sum()), "rows_after": int(copies[mask].sum())}
            for group, mask in [*masks.items(), ("other", in_no_group), ("total", np.ones(len(train), dtype=bool))]
        ]
    )
    counts.loc[counts["group"].isin(["other", "total"]), "ratio"] = np.nan
    return Resampled(train.subset(rows), rows, counts)


def resample_csv(
    train_csv: str | Path,
    feedback_csv: str | Path,
    output: str | Path,
    ratios: dict[str, float],
    *,
    seed: int = 0,
    val_csv: str | Path | None = None,
    test_csv: str | Path | None = None,
    task: str | None = None,
) -> Resampled:
    """Read the lists, resample the training list and write it to `output` (atomically); `output` may not be an input."""
    refuse_inputs(output, (train_csv, feedback_csv, val_csv, test_csv), option="-o")
    train = read_labels(train_csv, task, allow_duplicates=True)
    held_out = {}
    for path in (val_csv, test_csv):
        if path is not None:
            held_out[str(path)] = read_labels(path, train.task, allow_duplicates=True).images
    if not held_out:
        logger.warning("No --val-csv or --test-csv given: cannot check that no held-out image is resampled.")
    result = resample_table(train, read_image_feedback(feedback_csv), ratios, seed=seed, held_out=held_out, source=str(train_csv))
    write_label_csv(result.table, output)
    return result
