"""Which images a similarity model sees together: balanced batches and positive/negative pairs.

Random batches of a data set with many classes hold few same-class images,
so a Siamese network sees few positive pairs; a balanced batch of
`classes_per_batch` classes x `examples_per_class` images guarantees them.
"""

from __future__ import annotations

import numpy as np

from data_tools.errors import DataError, OptionError


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
            f"--classes_per_batch: {classes_per_batch} is more than the {len(by_class)} classes in the data."
        )
    if classes_per_batch < 1 or examples_per_class < 1:
        raise OptionError("--classes_per_batch and --examples_per_class must be positive.")
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
    `batches`, every image of a batch is paired inside its batch.
    """
    if not 0.0 < positive_ratio < 1.0:
        raise OptionError(f"--positive_ratio: expected a fraction strictly between 0 and 1. Received: {positive_ratio}.")
    groups = batches if batches is not None else [rng.permutation(len(classes))[: max(n_pairs, 1)]]
    first, second = [], []
    for group in groups:
        by_class = class_indices(classes[group])
        for position, row in enumerate(group):
            same = by_class[classes[row]]
            others = np.flatnonzero(classes[group] != classes[row])
            want_positive = rng.random() < positive_ratio or others.size == 0
            pool = same[same != position] if want_positive else others
            if pool.size == 0:
                pool = others
            first.append(row)
            second.append(group[rng.choice(pool)])
    first, second = np.array(first), np.array(second)
    return first, second, (classes[first] == classes[second]).astype(np.float32)
