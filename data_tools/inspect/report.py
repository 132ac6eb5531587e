"""`toolkit inspect`: what a person should know about an image set before training on it.

One pass over the files (`scan`), then features (a feature file, or pixels)
for near-duplicates and outliers (`similar`), then the outputs, all written
atomically into the output folder, which is made with the first of them:
inspect.json (the report), duplicates.csv (group, image, kind: first, exact or
near, distance to the first),
outliers.csv (every readable image, ranked), and plots.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import atomic_path, write_text
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import read_features
from image_toolkit.data_tools.formats.images import find_images, require_readable
from image_toolkit.data_tools.formats.labels import image_classes, read_labels
from image_toolkit.data_tools.formats.metadata import read_metadata
from image_toolkit.data_tools.inspect.scan import ImageInfo, scan_images
from image_toolkit.data_tools.inspect.similar import (
    DUPLICATE_DISTANCE,
    PIXEL_SIZE,
    matched_features,
    near_duplicate_groups,
    outlier_scores,
    pixel_features,
)

logger = logging.getLogger(__name__)

REPORT_FILE, DUPLICATES_FILE, OUTLIERS_FILE = "inspect.json", "duplicates.csv", "outliers.csv"


@dataclass(frozen=True)
class ImageSet:
    """The images to inspect: names (as features and CSVs name them), files, and classes when known.

    `classes[i]` is image i's class (None when classes are unknown, or
    several labels per image); `label_counts` is images per class, or per
    label (`multilabel`) when an image may have several.
    """

    names: list[str]
    paths: list[Path]
    classes: list[str] | None
    label_counts: dict[str, int] | None
    source: str
    multilabel: bool = False


def image_set(source: str | Path, *, data_csv: str | Path | None = None) -> ImageSet:
    """The images of a folder (classes from a label CSV, else from class sub-folders) or of a metadata CSV.

    With `data_csv`, the images are the CSV's, relative to the folder: a
    listed file that is missing is reported as unreadable, not skipped.
    """
    source = Path(source)
    if source.is_file():
        if data_csv is not None:
            raise OptionError(f"--data-csv {data_csv}: {source} is a metadata CSV, which has the classes already; "
                              "give an image folder with --data-csv, or the metadata CSV alone.")
        frame = read_metadata(source)
        names, paths, classes = frame["image"].tolist(), frame["path"].tolist(), frame["class"].astype(str).tolist()
        return ImageSet(names, paths, classes, _counts(classes), f"metadata CSV {source}")
    if data_csv is not None:
        table = read_labels(data_csv)
        paths = [source / name for name in table.images]
        counts = {name: int(np.nansum(table.labels[:, j])) for j, name in enumerate(table.label_names)}
        classes = image_classes(table) if table.task == "multiclass" else None
        return ImageSet(table.images, paths, classes, counts, f"label CSV {data_csv}", table.task != "multiclass")
    paths = find_images(source)
    if not paths:
        raise DataError(f"{source}: no image files (.jpg, .jpeg, .png, .bmp, .gif) in it or its sub-folders; "
                        "give the folder that holds the images.")
    names = [path.relative_to(source).as_posix() for path in paths]
    in_folders = all("/" in name for name in names)
    classes = [name.split("/", 1)[0] for name in names] if in_folders else None
    return ImageSet(names, paths, classes, _counts(classes) if classes else None,
                    "class folders" if in_folders else "folder")


def _counts(values: list[str]) -> dict[str, int]:
    return {str(key): int(n) for key, n in pd.Series(values).value_counts(sort=False).sort_index().items()}


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def check_inspect_options(*, duplicate_distance: float, k: int, outliers: int) -> None:
    """Options checked before any file is read (the CLI's ranges say the same)."""
    check_range("--duplicate-distance", duplicate_distance, low=0, high=2, high_open=True)
    check_range("--k", k, low=1)
    check_range("--outliers", outliers, low=0)


def features_for(names: list[str], paths: list[Path], *, features: str | Path | None,
                 show: bool | None = None) -> tuple[np.ndarray, str]:
    """The rows for these images: from a feature file (matched by name), else pixel features; and what they are."""
    if features is None:
        return pixel_features(paths, show=show), f"pixels ({PIXEL_SIZE} px grey)"
    return matched_features(read_features(features), names, f"--features {features}"), str(features)


def duplicate_table(groups: list[np.ndarray], names: list[str], digests: list[str], rows: np.ndarray) -> pd.DataFrame:
    """One row per image in a group: `kind` first (the one `filter-images --drop-duplicates` keeps), exact
    (the same bytes as the first) or near, and the cosine distance to the first."""
    records = []
    for number, group in enumerate(groups, start=1):
        first = group[0]
        for member in group:
            exact = digests[member] == digests[first]
            distance = 0.0 if exact else float(1 - rows[member] @ rows[first])
            kind = "first" if member == first else "exact" if exact else "near"
            records.append((number, names[member], kind, round(max(distance, 0.0), 6)))
    return pd.DataFrame(records, columns=["group", "image", "kind", "distance"])


def outlier_table(names: list[str], classes: list[str] | None, scores: np.ndarray) -> pd.DataFrame:
    """Every image with its score, most unusual first (rank 1); images with nothing to compare come last."""
    frame = pd.DataFrame({"image": names, "class": classes if classes is not None else "", "score": np.round(scores, 6)})
    frame = frame.sort_values("score", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1)
    return frame


def inspect_images(source: str | Path, output_dir: str | Path, *, data_csv: str | Path | None = None,
                   features: str | Path | None = None, duplicate_distance: float = DUPLICATE_DISTANCE,
                   k: int = 5, outliers: int = 16, show: bool | None = None) -> dict:
    """Inspect an image set, write the outputs into `output_dir` and return the report (inspect.json's content)."""
    from image_toolkit.data_tools.maps.plots import plot_class_counts, plot_image_grid, plot_image_sizes

    check_inspect_options(duplicate_distance=duplicate_distance, k=k, outliers=outliers)
    images = image_set(source, data_csv=data_csv)
    infos: list[ImageInfo] = scan_images(zip(images.names, images.paths), show=show)
    unreadable = [{"image": info.name, "reason": info.problem} for info in infos if info.problem is not None]
    good = [i for i, info in enumerate(infos) if info.problem is None]
    require_readable(len(good), [(item["image"], item["reason"]) for item in unreadable], str(source),
                     fix="the files listed are not images Pillow can decode")
    readable = [infos[i] for i in good]
    names = [info.name for info in readable]
    classes = [images.classes[i] for i in good] if images.classes is not None else None
    rows, described = features_for(names, [info.path for info in readable], features=features, show=show)
    digests = [info.digest for info in readable]
    groups = near_duplicate_groups(rows, max_distance=duplicate_distance, same=digests)
    duplicates = duplicate_table(groups, names, digests, rows)
    ranked = outlier_table(names, classes, outlier_scores(rows, classes, k=k))
    top = ranked.head(outliers)
    widths = np.array([info.width for info in readable])
    heights = np.array([info.height for info in readable])
    report = {
        "source": images.source,
        "images": len(infos),
        "readable": len(readable),
        "unreadable": unreadable,
        "classes" if not images.multilabel else "labels": images.label_counts,
        "width": _spread(widths),
        "height": _spread(heights),
        "aspect_ratio": _spread(widths / heights),
        "modes": _counts([info.mode for info in readable]),
        "formats": _counts([info.format for info in readable]),
        "features": described,
        "duplicate_distance": duplicate_distance,
        "exact_duplicate_groups": sum(n > 1 for n in Counter(digests).values()),
        "duplicate_groups": len(groups),
        "images_in_duplicate_groups": len(duplicates),
        "outliers": top.astype(object).where(top.notna(), None).to_dict(orient="records"),  # NaN: null in JSON
    }
    output_dir = Path(output_dir)
    write_text(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    for frame, name in ((duplicates, DUPLICATES_FILE), (ranked, OUTLIERS_FILE)):
        with atomic_path(output_dir / name) as temporary:
            frame.to_csv(temporary, index=False)
    path_of = dict(zip(names, (info.path for info in readable)))
    plots = ["sizes.png"]
    plot_image_sizes(widths, heights, output_dir / "sizes.png")
    if images.label_counts:  # the same plot for labels: images with each label
        plot_class_counts(images.label_counts, output_dir / "class_counts.png")
        plots.append("class_counts.png")
    if outliers:
        cells = [(path_of[row.image], f"{row.image}\n{row.rank}: {row.score:.3f}") for row in top.itertuples()]
        plot_image_grid([cells[i:i + 8] for i in range(0, len(cells), 8)], output_dir / "outliers.png",
                        title="Most unusual images (rank: score)")
        plots.append("outliers.png")
    if groups:
        shown = [[(path_of[row.image], f"{row.image}\n{row.kind} {row.distance:.3f}") for row in group.head(6).itertuples()]
                 for _, group in list(duplicates.groupby("group"))[:8]]
        plot_image_grid(shown, output_dir / "duplicates.png", title="Duplicate groups (a row each)")
        plots.append("duplicates.png")
    report["plots"] = plots
    return report
