"""Which images a similarity model sees together: balanced batches and positive/negative pairs.

Random batches of a data set with many classes hold few same-class images,
so a Siamese network sees few positive pairs; a balanced batch of
`classes_per_batch` classes x `examples_per_class` images guarantees them.
"""

from __future__ import annotations

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError


def class_indices(classes: np.ndarray) -> dict:
    """Row indices of every class."""
    return {label: np.flatnonzero(classes == label) for label in np.unique(classes)}


def require_pairs(classes: np.ndarray, where: str) -> None:
    """Every class needs two images, or it has no positive pair."""
    for label, rows in class_indices(classes).items():
        if len(rows) < 2:
            raise DataError(f"{where}: class '{label}' has one image, so no positive pair; add images or drop the class.")


def balanced_batches(
    classes: np.ndarray, *, classes_per_batch: int, examples_per_class: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of batches, each `classes_per_batch` classes x `examples_per_class` images.

    Images of a class smaller than `examples_per_class` are drawn with
    replacement; the epoch has about as many images as the data set.
    """
    by_class = class_indices(classes)
    if classes_per_batch > len(by_class):
        raise OptionError(
            f"--classes-per-batch: {classes_per_batch} is more than the {len(by_class)} classes in the data."
        )
    check_range("--classes-per-batch", classes_per_batch, low=1)
    check_range("--examples-per-class", examples_per_class, low=1)
    labels = list(by_class)
    n_batches = max(1, len(classes) // (classes_per_batch * examples_per_class))
    batches = []
    for _ in range(n_batches):
        chosen = rng.choice(len(labels), size=classes_per_batch, replace=False)
        rows = [
            rng.choice(by_class[labels[c]], size=examples_per_class, replace=len(by_class[labels[c]]) < examples_per_class)
            for c in chosen
        ]
        batches.append(np.concatenate(rows))
    return batches


def sample_pairs(
    classes: np.ndarray, *, n_pairs: int, positive_ratio: float, rng: np.random.Generator,
    batches: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (first, second, same_class) with about `positive_ratio` positives.

    Without `batches`, partners come from the whole set; with balanced
    `batches`, every image of a batch is paired inside its batch. An image
    with no other of its class in the group gets a negative partner, one
    whose class fills the group a positive. Partners are drawn for a whole
    group at once, from its rows sorted by class: O(n log n) per epoch.
    """
    check_range("--positive-ratio", positive_ratio, low=0, high=1, low_open=True, high_open=True)
    codes = np.unique(classes, return_inverse=True)[1]
    groups = batches if batches is not None else [rng.permutation(len(classes))[: max(n_pairs, 1)]]
    first, second = [], []
    for group in groups:
        n = len(group)
        if n < 2:
            raise OptionError("A batch of one image has no partner for it; use larger batches.")
        group_codes = codes[group]
        order = np.argsort(group_codes, kind="stable")
        sorted_codes = group_codes[order]
        start = np.searchsorted(sorted_codes, group_codes, side="left")  # Each row's class block in `order`.
        count = np.searchsorted(sorted_codes, group_codes, side="right") - start
        place = np.empty(n, dtype=np.int64)
        place[order] = np.arange(n)
        positive = ((rng.random(n) < positive_ratio) | (count == n)) & (count > 1)
        # A positive: another place of the block (skipping the row's own); a negative: a place outside it.
        inside = start + rng.integers(0, np.maximum(count - 1, 1))
        inside += inside >= place
        outside = rng.integers(0, np.maximum(n - count, 1))
        outside += np.where(outside >= start, count, 0)
        first.append(group)
        second.append(group[order[np.where(positive, inside, outside)]])
    first, second = np.concatenate(first), np.concatenate(second)
    return first, second, (classes[first] == classes[second]).astype(np.float32)
