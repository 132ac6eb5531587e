"""Metadata CSVs for similarity learning (`image`, `class`, `split`, `root`) and the commands that make them.

`make-metadata` reads a folder of class sub-folders; `filter-images` keeps
images large enough and classes with enough images, as the face project did
before training, and reports what each step removed.

Where the images are (`read_metadata`, the same rule for every command that
reads a metadata CSV: train-siamese, train-simclr, assess):

- `image` is the path under the folder the images were listed from
  (`CLASS/name.jpg`), the same name features, indexes and maps use;
- `root` is that folder, relative to the CSV's own folder (or absolute), so a
  CSV finds its images from any working directory, and a CSV moved together
  with its images still finds them. `make-metadata photos/ metadata.csv`
  writes `root` = `photos`; a CSV inside the image folder has `root` = `.`;
- `--img-directory DIR` (img_directory=) overrides: every `image` is then
  relative to DIR and `root` is ignored;
- a CSV without `root` (hand-written, or from an older make-metadata) is read
  relative to its own folder. An older make-metadata CSV written outside its
  image folder is recognised when none of its first images is beside the CSV
  but exactly one sub-folder of the CSV's folder holds them: that folder is
  used, with a warning saying how to make it explicit. A blank `root` cell
  means the CSV's folder too.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from image_toolkit.data_tools.atomic import atomic_path, refuse_inputs
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.background import to_rgb
from image_toolkit.data_tools.formats.csv_files import read_checked_csv
from image_toolkit.data_tools.formats.images import check_images, find_images, report_skipped
from image_toolkit.data_tools.formats.splits import stratified_split

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
ROOT_COLUMN = "root"
# How many rows the check for an older make-metadata CSV looks at.
PROBE_ROWS = 20


def read_metadata(path: str | Path, *, img_directory: str | Path | None = None) -> pd.DataFrame:
    """Read a metadata CSV: `image` and `class` columns, `split` optional (all 'train' if absent).

    The frame has `image`, `class`, `split` and `path`, each image's file
    found by the rule in the module docstring (`--img-directory`, else the
    `root` column, else the CSV's folder). Files are not checked here.
    """
    path = Path(path)
    frame = read_checked_csv(
        path, required=("image", "class"), kind="metadata CSV", example="image,class,split,root",
        missing_fix=f"make one with 'toolkit make-metadata IMAGE_DIR {path.name}'",
    )
    if "split" not in frame.columns:
        frame["split"] = "train"
    if img_directory is not None:
        roots = [Path(img_directory)] * len(frame)
    elif ROOT_COLUMN in frame.columns:
        roots = [path.parent / root.strip() for root in frame[ROOT_COLUMN]]
    else:
        roots = [_legacy_root(path, frame["image"].tolist())] * len(frame)
    frame = frame[["image", "class", "split"]].copy()
    frame["path"] = [root / image for root, image in zip(roots, frame["image"])]
    return frame


def _legacy_root(path: Path, images: list[str]) -> Path:
    """The folder the images of a CSV without a `root` column are relative to (module docstring)."""
    folder = path.parent
    probe = images[:PROBE_ROWS]
    if any((folder / image).exists() for image in probe):
        return folder
    try:
        candidates = [child for child in sorted(folder.iterdir()) if child.is_dir() and not child.name.startswith(".")]
    except OSError:
        return folder
    holding = [child for child in candidates if any((child / image).exists() for image in probe)]
    if len(holding) != 1:
        return folder
    found = holding[0]
    logger.warning(
        "%s: image paths are relative to %s (a metadata CSV from an older make-metadata); "
        "rewrite it with 'toolkit make-metadata %s %s' or pass --img-directory %s.",
        path, found, found, path, found,
    )
    return found


def relative_root(image_dir: str | Path, csv_path: str | Path) -> str:
    """`image_dir` as a `root` cell for a CSV at `csv_path`: relative to the CSV's folder, else absolute."""
    image_dir, folder = Path(image_dir).absolute(), Path(csv_path).absolute().parent
    try:
        return Path(os.path.relpath(image_dir, folder)).as_posix()
    except ValueError:  # Another drive (Windows): no relative path.
        return image_dir.as_posix()


def make_metadata(image_dir: str | Path, output_csv: str | Path, *, balanced: bool = False,
                  test_split: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """One row per image of `image_dir/CLASS/...`, with a stratified train/test split (`formats.splits`).

    `image` is the path under `image_dir` and `root` is `image_dir` relative
    to the CSV's folder (module docstring), so the CSV works from any
    working directory and moves with its images. A class with a single
    image stays in training.
    """
    check_range("--test-split", test_split, low=0, high=1, high_open=True)
    image_dir = Path(image_dir)
    paths = find_images(image_dir)
    # Only an image of the same name can be the output: the others need not be resolved.
    refuse_inputs(output_csv, (path for path in paths if path.name == Path(output_csv).name), option="OUTPUT_CSV")
    paths = [path for path in paths if path.parent != image_dir]
    if not paths:
        raise DataError(f"{image_dir}: no images in class sub-folders (expected {image_dir}/CLASS/image.jpg).")
    images = [path.relative_to(image_dir).as_posix() for path in paths]
    classes = np.array([Path(image).parts[0] for image in images])
    rng = np.random.default_rng(seed)
    if balanced:
        smallest = min(np.bincount(np.unique(classes, return_inverse=True)[1]))
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(classes == c))[:smallest] for c in np.unique(classes)]))
        images, classes = [images[i] for i in keep], classes[keep]
    split = np.where(stratified_split(classes, test_split, seed=seed), "test", "train")
    frame = pd.DataFrame({"image": images, "class": classes, "split": split, ROOT_COLUMN: relative_root(image_dir, output_csv)})
    with atomic_path(output_csv) as temporary:
        frame.to_csv(temporary, index=False)
    return frame


def _check_separate(image_dir: Path, output_dir: Path) -> None:
    """Refuse an output folder that is the image folder, inside it, or around it.

    Copies written into the image folder would replace the originals (with
    --resize, by smaller ones) and be read as input next time; an image folder
    inside the output folder would become a class of its metadata.csv.
    """
    source, target = image_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        where = "is IMAGE_DIR" if target == source else "is inside IMAGE_DIR"
        raise OptionError(
            f"OUTPUT_DIR {output_dir} {where} ({image_dir}); the copies would overwrite or mix with the originals. "
            "Choose an output folder outside it, e.g. a sibling folder."
        )
    if target in source.parents:
        raise OptionError(
            f"OUTPUT_DIR {output_dir} contains IMAGE_DIR {image_dir}; its metadata.csv would list the originals as a class. "
            "Choose an output folder outside it, e.g. a sibling folder."
        )


def filter_images(image_dir: str | Path, output_dir: str | Path, *, min_size: int = 100, min_per_class: int = 50,
                  sample: int | None = None, resize: int | None = None, background: str = "white", seed: int = 0,
                  filters: Sequence[tuple[str, Callable[[list[Path]], Sequence[bool]]]] = ()) -> list[tuple[str, int]]:
    """Copy (and optionally resize) the images that pass each filter; return (step, images left) counts.

    Resized copies are RGB, transparency composited onto `background`.
    `filters` are more (step, keep) filters, applied after the size filter:
    `keep(paths)` flags the paths to keep (`data_tools.inspect.cleaning`:
    duplicates and outliers).

    `output_dir/metadata.csv` lists the copies, with `root` = `.` (they sit
    beside it), so it is read like any make-metadata CSV.

    Nothing is written, and no output folder made, until some image has
    passed every filter: a run that keeps nothing leaves no empty folder.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    _check_separate(image_dir, output_dir)
    paths = [path for path in find_images(image_dir) if path.parent != image_dir]
    counts = [("found in class folders", len(paths))]
    usable, skipped = check_images(paths)
    paths = [path for path, ok in zip(paths, usable) if ok]
    counts.append(("readable", len(paths)))

    def large_enough(path: Path) -> bool:
        with Image.open(path) as image:
            return min(image.size) >= min_size

    paths = [path for path in paths if large_enough(path)]
    counts.append((f"at least {min_size} px on both sides", len(paths)))
    for step, keep in filters:
        if paths:
            paths = [path for path, kept in zip(paths, keep(paths)) if kept]
        counts.append((step, len(paths)))
    classes = np.array([path.relative_to(image_dir).parts[0] for path in paths])
    labels, sizes = np.unique(classes, return_counts=True)
    kept_classes = set(labels[sizes >= min_per_class])
    paths = [path for path, label in zip(paths, classes) if label in kept_classes]
    counts.append((f"in classes with at least {min_per_class} images ({len(kept_classes)} classes)", len(paths)))
    if sample is not None and sample < len(paths):
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in np.sort(rng.choice(len(paths), size=sample, replace=False))]
        counts.append(("sampled", len(paths)))
    if not paths:
        left = "; ".join(f"{step}: {count}" for step, count in counts)
        emptied = next(step for step, count in counts if count == 0)
        raise DataError(
            f"{image_dir}: no image passes the filters; the step '{emptied}' left none ({left}); "
            f"lower --min-size or --min-per-class. Nothing was written to {output_dir}."
        )
    report_skipped(skipped, output_dir, counts[0][1])
    for path in paths:
        target = output_dir / path.relative_to(image_dir)
        with atomic_path(target) as temporary:  # makes the class folder with its first image
            if resize:
                with Image.open(path) as image:
                    image = to_rgb(image, background).resize((resize, resize), Image.BICUBIC)
                    image.save(temporary, format=Image.registered_extensions().get(target.suffix.lower(), "PNG"), quality=95)
            else:
                shutil.copyfile(path, temporary)  # As it is: no second JPEG compression.
    make_metadata(output_dir, output_dir / "metadata.csv", test_split=0.2, seed=seed)
    return counts
