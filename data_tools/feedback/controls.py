"""The training list of each arm of `toolkit experiment`: feedback (meta) and its controls.

Upsampling the deselected images changes two things at once: which images
are repeated, and how many gradient steps an epoch takes. The controls
separate them:

* `random`: the meta list's copies per row (or loss weights) shuffled over
  the training rows with the run's seed, so exactly as many rows are added
  (the same copy counts, the same total weight), but on images chosen at
  random. meta - random is the effect of *which* images.
* `steps`: the baseline rows repeated evenly to exactly the meta list's
  length (every row floor(L/n) times, a seeded random L mod n of them once
  more). Same length, same batch size and same epochs give exactly the same
  number of gradient steps as meta, and the same number of epochs for
  early checkpoints, which scaling --epochs by L/n (rarely a whole number)
  could not. meta - steps is the effect of *which* images, steps - baseline
  that of more steps.

With `--use weight` a row's ratio is its loss weight instead of its copies
(the list keeps its length, so there is no `steps` arm); with `--use relabel`
(multilabel) each deselected image gets a known 0 for its query class where
the cell was blank, and `random` fills as many blank cells picked at random.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.feedback.resample import resample_table, row_ratios
from image_toolkit.data_tools.formats.labels import LabelTable
from image_toolkit.data_tools.names import EXPERIMENT_VARIANTS as VARIANTS
from image_toolkit.data_tools.names import FEEDBACK_USES as USES

logger = logging.getLogger(__name__)

# Arms that the list of each use can have: weighting or relabelling keeps the list's length, so steps = baseline.
USE_VARIANTS = {"upsample": VARIANTS, "weight": ("baseline", "meta", "random"), "relabel": ("baseline", "meta", "random")}
RELABEL_WHY = ('--use relabel: a multi-class image already has exactly one class, so "not class X" adds nothing; '
               "use it with --task multilabel, or --use upsample or weight.")


def check_variants(names: Iterable[str], use: str) -> None:
    """Refuse an unknown arm or `--use`, or arms without baseline and meta (the comparison)."""
    names = list(names)
    text = ",".join(names)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise OptionError(f"--variants: unknown variant '{unknown[0]}'; expected some of {', '.join(VARIANTS)}. Received: {text!r}.")
    if use not in USES:
        raise OptionError(f"--use: expected one of {', '.join(USES)}. Received: {use!r}.")
    if "baseline" not in names or "meta" not in names:
        raise OptionError(f"--variants {text}: baseline and meta are the comparison; list both (and random, steps as controls).")


def parse_variants(text: str, use: str = "upsample") -> tuple[str, ...]:
    """`"baseline,meta,random"` -> the arms, in VARIANTS order; baseline and meta are always among them."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    check_variants(names, use)
    dropped = [name for name in names if name not in USE_VARIANTS[use]]
    if dropped:
        logger.warning("--use %s keeps the list's length, so '%s' would train as the baseline; it is left out", use, dropped[0])
    return tuple(name for name in VARIANTS if name in names and name in USE_VARIANTS[use])


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm's training list, and per-image loss weights (None: all 1)."""

    table: LabelTable
    weights: dict[str, float] | None = None


def even_copies(n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Copies per row that repeat n rows evenly to exactly `length` rows (the remainder drawn with `rng`)."""
    copies = np.full(n, length // n)
    copies[rng.permutation(n)[: length % n]] += 1
    return copies


def relabel_deselected(train: LabelTable, feedback: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Labels with each deselected image's blank query-class cell set to a known 0, and the mask of the cells set.

    A deselect says "this image is not the query class", nothing about its
    other labels, so only that one cell becomes known; the others stay blank
    (masked in training). A known cell is never overwritten.
    """
    if train.task != "multilabel":
        raise OptionError(RELABEL_WHY)
    deselected = feedback[feedback["deselect_count"] > 0].set_index("image")["query_class"]
    labels = train.labels.copy()
    filled = np.zeros(labels.shape, dtype=bool)
    column = {name: j for j, name in enumerate(train.label_names)}
    for i, image in enumerate(train.images):
        j = column.get(deselected.get(image))
        if j is not None and np.isnan(labels[i, j]):
            filled[i, j] = True
    labels[filled] = 0.0
    return labels, filled


def arm_lists(train: LabelTable, feedback: pd.DataFrame, ratios: dict[str, float], *, use: str, variants: Iterable[str],
              seed: int, held_out: dict[str, Iterable[str]] | None = None, source: str = "the training list",
              feedback_source: str = "the feedback CSV") -> dict[str, Arm]:
    """The training list of every arm but the baseline (module docstring), deterministic with `seed`."""
    variants = [variant for variant in variants if variant != "baseline"]
    rng = np.random.default_rng([seed, 1])  # not the stream resample_table draws its copies from
    n = len(train)
    arms: dict[str, Arm] = {}
    if use == "relabel":
        labels, filled = relabel_deselected(train, feedback)
        if not filled.any():
            raise DataError(f"{feedback_source}: no deselected training image has a blank cell for its query class, "
                            "so --use relabel would train on the baseline list; check the feedback CSV and --data-csv.")
        arms["meta"] = Arm(dataclasses.replace(train, labels=labels))
        if "random" in variants:
            blank = np.flatnonzero(np.isnan(train.labels).ravel())
            labels = train.labels.copy().ravel()
            labels[rng.choice(blank, size=int(filled.sum()), replace=False)] = 0.0
            arms["random"] = Arm(dataclasses.replace(train, labels=labels.reshape(train.labels.shape)))
        return arms
    if use == "weight":
        per_row, masks = row_ratios(train, feedback, ratios, source=source)
        _require_members(any(mask.any() for mask in masks.values()), ratios, feedback_source)
        arms["meta"] = Arm(train, dict(zip(train.images, per_row.tolist())))
        if "random" in variants:
            arms["random"] = Arm(train, dict(zip(train.images, rng.permutation(per_row).tolist())))
        return arms
    meta = resample_table(train, feedback, ratios, seed=seed, held_out=held_out, source=source)
    _require_members(meta.counts.loc[meta.counts["group"].isin(list(ratios)), "rows_before"].sum() > 0, ratios, feedback_source)
    arms["meta"] = Arm(meta.table)
    copies = np.bincount(meta.rows, minlength=n)
    if "random" in variants:
        arms["random"] = Arm(train.subset(np.repeat(np.arange(n), rng.permutation(copies))))
    if "steps" in variants:
        arms["steps"] = Arm(train.subset(np.repeat(np.arange(n), even_copies(n, len(meta.table), rng))))
    return arms


def _require_members(any_member: bool, ratios: dict[str, float], feedback_source: str) -> None:
    """Refuse feedback that names no training image: the meta arm would be the baseline."""
    if not any_member:
        raise DataError(
            f"{feedback_source}: no training image is in a group of --ratio {ratios}, so the meta model "
            "would train on the baseline list; check that the feedback CSV names the images of --data-csv."
        )
