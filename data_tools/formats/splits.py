"""One stratified split for every list: label CSVs (train/validation/test) and metadata CSVs (train/test).

`stratified_split` draws the held-out rows with scikit-learn's
`train_test_split(..., stratify=...)`, seeded, so the same seed gives the same
split. Around it, the cases stratification cannot handle are decided here,
explicitly, rather than left to crash or to chance:

* a class with one image goes to training: a held-out image of a class the
  model never saw scores nothing and costs the class;
* when there are more classes than held-out (or training) rows,
  stratification is impossible: the split falls back to a plain random one
  and logs it;
* afterwards every class keeps at least one image in training (one of its
  held-out images moves back when the draw took them all, as a proportional
  allocation can for a class of two among large ones).

The held-out part may therefore be a row or two smaller or larger than
`test_size` asks for. What a "class" is for multilabel rows is the caller's
choice; `rarest_positive` gives the one the label CSVs use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def rarest_positive(labels: np.ndarray, label_names: Sequence[str]) -> np.ndarray:
    """The stratum of each multilabel row: its rarest positive label ('' when it has none).

    The label combination would make most rows of a many-label table a class
    of their own; the rarest positive label keeps the strata few and puts the
    rare labels' images on both sides. Ties go to the label listed first;
    unknown (NaN) cells count as not positive.
    """
    positive = np.nan_to_num(np.asarray(labels, dtype=float)) == 1
    counts = positive.sum(axis=0)
    names = np.asarray(label_names, dtype=object)
    strata = np.full(len(positive), "", dtype=object)
    for row in np.flatnonzero(positive.any(axis=1)):
        columns = np.flatnonzero(positive[row])
        strata[row] = names[columns[np.argmin(counts[columns])]]
    return strata


def stratified_split(strata: Sequence, test_size: float, *, seed: int) -> np.ndarray:
    """A boolean mask of the held-out rows: about `test_size` of each stratum (class), reproducible by `seed`.

    `strata` holds one class per row (any hashable values). See the module
    docstring for singletons, infeasible stratification and the guarantee
    that every class keeps a training image.
    """
    from sklearn.model_selection import train_test_split

    strata = np.asarray(strata, dtype=object).astype(str)
    held_out = np.zeros(len(strata), dtype=bool)
    if test_size <= 0 or len(strata) == 0:
        return held_out
    random_state = seed % 2**32
    classes, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    pool = np.flatnonzero(counts[inverse] >= 2)  # singletons stay in training
    if pool.size < 2:
        return held_out
    # What train_test_split draws for a fraction, leaving at least one row for training.
    n_test = min(int(np.ceil(test_size * pool.size)), pool.size - 1)
    n_classes = int((counts >= 2).sum())
    if n_test < n_classes or pool.size - n_test < n_classes:
        logger.warning("%d classes but %d held-out and %d training rows: the split is random, not stratified",
                       n_classes, n_test, pool.size - n_test)
        stratify = None
    else:
        stratify = strata[pool]
    _, test_rows = train_test_split(pool, test_size=n_test, stratify=stratify, random_state=random_state)
    held_out[test_rows] = True
    rng = np.random.default_rng(random_state)
    for label in np.flatnonzero(counts >= 2):
        rows = np.flatnonzero(inverse == label)
        if held_out[rows].all():
            held_out[rng.choice(rows)] = False
    return held_out
