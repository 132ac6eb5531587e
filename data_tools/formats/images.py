"""Image files: find them, check they decode, and report the ones that don't.

TensorFlow's decoders stop a whole tf.data pipeline at the first bad file and
do not say which one it was, so every file is checked once, up front, with
Pillow in a thread pool (Pillow releases the GIL while decoding; JPEGs are
decoded at reduced scale through `draft`, which keeps the check cheap).
Unreadable files are skipped, counted and listed in `skipped_images.txt`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from image_toolkit.data_tools.atomic import write_text
from image_toolkit.data_tools.errors import DataError

logger = logging.getLogger(__name__)

# The formats the pipeline decodes (MPO: a camera's multi-picture JPEG, read as its first picture).
DECODABLE_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "GIF"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
SKIPPED_FILE = "skipped_images.txt"


def image_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be used as an image, or None if it decodes."""
    try:
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported format {image.format} (use JPEG, PNG, BMP or GIF)"
            image.draft("RGB", (64, 64))
            image.load()
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "is a folder"
    except Exception as error:  # Pillow raises many types for bad files.
        return f"cannot decode ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
    return None


def check_images(paths: list[Path], *, workers: int | None = None) -> tuple[list[bool], list[tuple[str, str]]]:
    """Check every file; return a usable flag per path and (path, reason) for the others."""
    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(image_problem, paths, chunksize=64))
    usable = [problem is None for problem in problems]
    skipped = [(str(path), problem) for path, problem in zip(paths, problems) if problem is not None]
    return usable, skipped


def report_skipped(skipped: list[tuple[str, str]], output_dir: str | os.PathLike, total: int) -> None:
    """Log the count of unreadable images and list them in `output_dir` (nothing is written when none is skipped).

    Call it after `require_readable`: a run that can read no image then fails
    without leaving a list behind (in the working directory, by default).
    """
    if not skipped:
        return
    target = Path(output_dir) / SKIPPED_FILE
    write_text(target, "".join(f"{path}\t{reason}\n" for path, reason in skipped))
    first_path, first_reason = skipped[0]
    logger.warning(
        "Skipped %d of %d images that cannot be read (first: %s: %s); list in %s",
        len(skipped), total, first_path, first_reason, target,
    )


def require_readable(
    n_usable: int, skipped: list[tuple[str, str]], where: str, *, fix: str = "check the paths and --img-directory"
) -> None:
    """Fail when no image at all can be read: a run on nothing is a mistake, not a result."""
    if n_usable == 0:
        reason = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{where}: no readable image{reason}; {fix}.")


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files under a folder, recursively, in a stable (sorted) order."""
    root = Path(root)
    return sorted(
        path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
