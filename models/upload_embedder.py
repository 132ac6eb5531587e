"""The image embedder `toolkit serve` hands its web app: built on the first uploaded query, not at start-up.

This module imports neither TensorFlow nor the backbones: the server then
starts without them (640 MB of a 1M-image server's memory, measured by
benchmarks/bench_webapp.py) and pays for them on the first upload only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.errors import DataError


def lazy_embedder(index_metadata: Callable[[], dict], *, runtime: str | None = None,
                  precision: str | None = None) -> Callable[[list[Path]], np.ndarray]:
    """A function embedding image files with the model an index records, built (TensorFlow imported) on its first call.

    `runtime` and `precision` (None: those that made the index's features) as for `extractor_from_metadata`.
    """
    lock = threading.Lock()
    extractor: list = []

    def embed(paths: list[Path]) -> np.ndarray:
        from image_toolkit.models.extraction import compute_features, extractor_from_metadata

        with lock:
            if not extractor:
                metadata = index_metadata()
                if not metadata.get("model"):
                    raise DataError("the index records no feature model, so an uploaded image cannot be embedded.")
                extractor.append(extractor_from_metadata(metadata, runtime=runtime, precision=precision, queries=True))
            return compute_features(extractor[0], paths, batch_size=len(paths), verbose=0)

    return embed
