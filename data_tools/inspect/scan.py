"""One pass over the image files: header facts (size, mode, format), a content hash and readability.

Pillow's `Image.open` reads the header only, so size, colour mode and format
cost no decoding, read from the bytes already in memory for the hash
(BLAKE2b). Readability is `formats.images.image_problem` on the path (a
reduced-scale decode for JPEG; its reasons name the file as every other
command's do), which finds the file in the OS cache the hash just filled.
Files are handled in a thread pool: Pillow and hashlib release the GIL.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from image_toolkit.data_tools.formats.images import image_problem
from image_toolkit.data_tools.progress import progress_bar


@dataclass(frozen=True)
class ImageInfo:
    """What one pass learns about a file: `problem` is None for a readable image (then size/mode/format are set)."""

    name: str
    path: Path
    width: int | None
    height: int | None
    mode: str | None
    format: str | None
    digest: str | None
    problem: str | None


def read_info(name: str, path: Path) -> ImageInfo:
    """Hash the file's bytes, read its header and check that it decodes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ImageInfo(name, path, None, None, None, None, None, "file not found")
    except OSError as error:
        return ImageInfo(name, path, None, None, None, None, None, f"cannot read ({error.strerror or error})")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    problem = image_problem(path)
    if problem is not None:
        return ImageInfo(name, path, None, None, None, None, digest, problem)
    with Image.open(io.BytesIO(data)) as image:
        return ImageInfo(name, path, image.width, image.height, image.mode, image.format, digest, None)


def scan_images(named_paths: Iterable[tuple[str, Path]], *, show: bool | None = None,
                workers: int | None = None) -> list[ImageInfo]:
    """`read_info` for every (name, path), in order, with a progress bar on stderr."""
    named_paths = list(named_paths)
    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    with progress_bar(len(named_paths), "Reading images", show=show) as advance, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        infos = []
        for info in pool.map(lambda pair: read_info(*pair), named_paths):
            infos.append(info)
            advance(1)
    return infos
