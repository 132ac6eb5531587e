"""Build the demo data set (`label.txt` + `images/`) from scikit-learn's handwritten digits.

The digits ship with scikit-learn (real scans, no download). Each 8x8 scan is
upscaled to a PNG and given four yes/no labels, so the set exercises
multi-label training; a few label cells are left blank to exercise missing
labels. `toolkit demo-data` writes them (`write_demo_dataset`, or the class
folders of `write_digit_folders`); tests and benchmarks call
`write_digits_dataset` for sets of other sizes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from image_toolkit.data_tools.atomic import atomic_path, make_folder, remove_empty, staging_folder
from image_toolkit.data_tools.errors import DataError

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LABEL_RULES = {
    "even": lambda d: d % 2 == 0,
    "prime": lambda d: d in (2, 3, 5, 7),
    "five_or_more": lambda d: d >= 5,
    "closed_loop": lambda d: d in (0, 6, 8, 9),
}


def digit_labels(digits: np.ndarray) -> pd.DataFrame:
    """The four yes/no labels of each digit, as 0/1 integer columns."""
    return pd.DataFrame({name: [int(rule(int(d))) for d in digits] for name, rule in LABEL_RULES.items()})


def digit_image(scan: np.ndarray, image_size: int) -> Image.Image:
    """An 8x8 scan (values 0-16) as dark ink on white paper, upscaled smoothly to RGB."""
    ink = (scan.reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8)
    image = Image.fromarray(255 - ink, mode="L").resize((image_size, image_size), Image.BICUBIC)
    return image.convert("RGB")


def write_digits_dataset(
    output_dir: str | Path,
    *,
    n_images: int = 300,
    image_size: int = 64,
    blank_fraction: float = 0.05,
    seed: int = 0,
    csv_name: str = "label.txt",
) -> pd.DataFrame:
    """Write `images/NNNN.png` and a multi-label CSV under `output_dir`; return the full table.

    The returned table also holds the digit itself (`digit`, `digit_name`),
    for multi-class use and for checks; the CSV holds only the four labels,
    with `blank_fraction` of their cells left empty.
    """
    output_dir = Path(output_dir)
    images_dir = output_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(digits.target))[:n_images]
    names = [f"{i:04d}.png" for i in range(len(rows))]
    for name, row in zip(names, rows):
        digit_image(digits.data[row], image_size).save(images_dir / name)
    labels = digit_labels(digits.target[rows])
    table = labels.astype("Int64").mask(rng.random(labels.shape) < blank_fraction)
    table.insert(0, "image", names)
    with atomic_path(output_dir / csv_name) as temporary:
        table.to_csv(temporary, index=False)
    table["digit"] = digits.target[rows]
    table["digit_name"] = [DIGIT_NAMES[d] for d in digits.target[rows]]
    return table


def write_digit_folders(output_dir: str | Path, *, n_images: int = 1797, image_size: int = 32, seed: int = 0) -> Path:
    """Digits as class sub-folders (`zero/`, `one/`, ...), for the similarity commands; returns the folder.

    `output_dir` must be new or empty: digits mixed into other class folders
    would make a wrong data set. The folders are written into a hidden
    folder beside it and moved into place at the end, so a failed run leaves
    neither a partial set nor an empty folder.
    """
    output_dir = Path(output_dir)
    if output_dir.is_symlink() or (output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir()))):
        raise DataError(f"{output_dir}: already exists and is not an empty folder; give a new or empty folder "
                        "(the digit class folders would mix into what is there).")
    created = make_folder(output_dir.parent)
    staging = None
    try:
        staging = staging_folder(output_dir.parent, output_dir.name)
        digits = load_digits()
        rows = np.random.default_rng(seed).permutation(len(digits.target))[:n_images]
        for i, row in enumerate(rows):
            folder = staging / DIGIT_NAMES[digits.target[row]]
            folder.mkdir(exist_ok=True)
            digit_image(digits.data[row], image_size).save(folder / f"{i:04d}.png")
        if output_dir.is_dir():
            output_dir.rmdir()  # empty, checked above
        os.replace(staging, output_dir)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
        raise
    return output_dir



def write_demo_dataset(output_dir: str | Path, *, n_images: int = 300, image_size: int = 64, seed: int = 0) -> None:
    """label.txt + images/ in `output_dir`, written aside and moved in at the end: all of it or nothing."""
    output_dir = Path(output_dir)
    taken = [name for name in ("label.txt", "images") if (output_dir / name).exists() or (output_dir / name).is_symlink()]
    if taken:
        raise DataError(f"{output_dir}: already holds {' and '.join(taken)}; give another folder for the demo data.")
    created = make_folder(output_dir)
    staging = None
    moved: list[Path] = []
    try:
        staging = staging_folder(output_dir, "demo-data")
        write_digits_dataset(staging, n_images=n_images, image_size=image_size, seed=seed)
        for name in ("images", "label.txt"):
            os.replace(staging / name, output_dir / name)
            moved.append(output_dir / name)
        staging.rmdir()
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for path in moved:  # what was moved in before the failure: checked above not to be the user's
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        remove_empty(created)
        raise
