"""The filters `filter-images --drop-duplicates --drop-outliers` applies, built on inspect's findings.

Each filter is a (step, keep) pair for `formats.metadata.filter_images`:
`keep(paths)` says which of the images still in play to keep. They are
computed on those images only, after the earlier steps, so a duplicate of a
file dropped as unreadable or too small does not count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.inspect.report import features_for
from image_toolkit.data_tools.inspect.similar import DUPLICATE_DISTANCE, near_duplicate_groups, outlier_scores

Keep = Callable[[list[Path]], np.ndarray]


def cleaning_filters(image_dir: str | Path, *, drop_duplicates: bool = False, drop_outliers: float | None = None,
                     features: str | Path | None = None, duplicate_distance: float = DUPLICATE_DISTANCE,
                     k: int = 5) -> list[tuple[str, Keep]]:
    """The steps asked for: keep the first image (in name order) of each duplicate group; drop the
    `drop_outliers` fraction of images (rounded down) with the highest within-class kNN distance.

    Features are `inspect`'s: the feature file's rows (names relative to
    `image_dir`), else pixel features.
    """
    if drop_outliers is not None:
        check_range("--drop-outliers", drop_outliers, low=0, high=1, high_open=True)
    image_dir = Path(image_dir)

    def rows(paths: list[Path]) -> np.ndarray:
        names = [path.relative_to(image_dir).as_posix() for path in paths]
        return features_for(names, paths, features=features)[0]

    def without_duplicates(paths: list[Path]) -> np.ndarray:
        keep = np.ones(len(paths), dtype=bool)
        for group in near_duplicate_groups(rows(paths), max_distance=duplicate_distance):
            keep[group[1:]] = False
        return keep

    def without_outliers(paths: list[Path]) -> np.ndarray:
        classes = [path.relative_to(image_dir).parts[0] for path in paths]
        scores = np.nan_to_num(outlier_scores(rows(paths), classes, k=k), nan=-np.inf)
        keep = np.ones(len(paths), dtype=bool)
        keep[np.argsort(-scores, kind="stable")[:int(drop_outliers * len(paths))]] = False
        return keep

    steps = []
    if drop_duplicates:
        steps.append((f"not a duplicate (cosine distance > {duplicate_distance})", without_duplicates))
    if drop_outliers is not None:
        steps.append((f"not among the {100 * drop_outliers:g}% most unusual (kNN distance in the class, k={k})",
                      without_outliers))
    return steps
