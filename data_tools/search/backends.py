"""One search interface, two engines: the faiss `ImageIndex` (default) or a Milvus collection (`--backend milvus`).

As FiftyOne's similarity backends and TF Similarity's `Search`: the CLI and
the web app build an index with `new_index`, reopen one with `load_index`,
and then use only the methods of `SearchIndex`; which engine answers is
recorded in the index folder (`backend` in metadata.json; absent for faiss,
which wrote the folder before there was a choice).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import FeatureSet
from image_toolkit.data_tools.formats.json_files import read_json
from image_toolkit.data_tools.search.index import BUILD, METADATA_FILE, ImageIndex, holds_index, index_set

BACKENDS = ("faiss", "milvus")


class SearchIndex(Protocol):
    """What the CLI, the web app and keyword search use of an index, whichever engine holds it."""

    metric: str
    paths_: list[str]
    features_metadata_: dict

    @property
    def size(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def fit(self, feature_set: FeatureSet, *, show: bool | None = None) -> SearchIndex: ...

    def add(self, feature_set: FeatureSet, *, where: str = ..., show: bool | None = None) -> SearchIndex: ...

    def search(self, queries: np.ndarray, *, k: int = 10) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors(self) -> np.ndarray: ...

    def rows(self, ids) -> np.ndarray: ...

    def info(self) -> dict: ...

    def check_comparable(self, dim: int, metadata: dict, what: str) -> None: ...

    def save(self, directory: str | os.PathLike) -> list[Path]: ...

    def close(self) -> None: ...


def new_index(backend: str, *, index_dir: str | os.PathLike, uri: str | None = None, **config) -> SearchIndex:
    """An unfitted index of `backend` with the options of `toolkit index build`, checked before any file is read.

    `uri` (milvus only) defaults to a Milvus Lite file `milvus.db` inside
    `index_dir`. faiss takes every option of `ImageIndex`; milvus those its
    index types have (`pq_m` and `k_factor`, ivfpq's, are dropped).
    """
    if backend not in BACKENDS:
        raise OptionError(f"Unknown backend. Expected one of {', '.join(BACKENDS)}. Received: backend={backend!r}")
    if backend == "faiss":
        if uri is not None:
            raise OptionError(f"--uri applies to --backend milvus only. Received: --uri={uri!r} with --backend faiss")
        return ImageIndex(**config)
    from image_toolkit.data_tools.search.milvus import LITE_FILE, MilvusIndex

    config = {key: value for key, value in config.items() if key not in ("pq_m", "k_factor")}
    index = MilvusIndex(uri=uri or str(Path(index_dir) / LITE_FILE), **config)
    index.check_options()
    return index


def backend_of(directory: str | os.PathLike) -> str:
    """The engine of the index in `directory`: metadata.json's `backend`, faiss when it names none (or holds no index)."""
    directory = Path(directory)
    if not directory.is_dir() or not holds_index(directory):
        return "faiss"  # ImageIndex.load says what is wrong with the folder.
    metadata_file = index_set(directory) / METADATA_FILE
    if not metadata_file.is_file():
        return "faiss"
    backend = read_json(metadata_file, dict, fix=BUILD).get("backend", "faiss")
    if backend not in BACKENDS:
        raise DataError(f"{metadata_file}: backend {backend!r} is not one this toolkit knows ({', '.join(BACKENDS)}); "
                        "upgrade image-toolkit.")
    return backend


def load_index(directory: str | os.PathLike, *, n_threads: int = -1, mmap: bool | None = None) -> SearchIndex:
    """The index in `directory`, by the engine that built it: a faiss `ImageIndex` or a `MilvusIndex`.

    `mmap` is faiss's (see `ImageIndex.load`); a Milvus index lives in its database and ignores it.
    """
    if backend_of(directory) == "milvus":
        from image_toolkit.data_tools.search.milvus import MilvusIndex

        return MilvusIndex.load(directory, n_threads=n_threads)
    return ImageIndex.load(directory, n_threads=n_threads, mmap=mmap)
