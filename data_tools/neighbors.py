"""Exact k nearest neighbours of feature rows, in blocks, with faiss heaps.

All against all, the search is symmetric: the distances between row blocks
j and i are the transpose of those between i and j, so each pair of blocks
(i, j), j >= i, is computed once and offered to the heaps of both, and a
diagonal block i against itself is one symmetric product (BLAS syrk, half
the work). That halves the matrix products, which are the bulk of the work.
The products run on numpy's BLAS (`manhattan` on faiss's
`pairwise_extra_distances`), and faiss's C++ heaps keep the k best of every
row, so no Python loop touches a distance.

Memory: besides the features and the (n_queries, k) results, the working set
is two blocks of distances and two blocks of rows, sized to `max_memory`.

Determinism: every row receives its candidates in increasing index order and
a faiss max-heap admits only a strictly smaller key, so among equal
distances the smaller index wins; results are sorted by (distance, index).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from data_tools.atomic import atomic_path
from data_tools.errors import DataError, OptionError
from data_tools.features import check_features

logger = logging.getLogger(__name__)

NEIGHBORS_FILE = "neighbors.npy"
DISTANCES_FILE = "distances.npy"
CSV_FILE = "neighbors.csv"
# Larger blocks only add memory: the per-block work beside the product is
# already small at this size.
MAX_BLOCK_ROWS = 4096
PROGRESS_SECONDS = 10.0


class Block(NamedTuple):
    """Rows of one block, ready for the product, with the per-row terms the metric adds to it."""

    rows: np.ndarray
    terms: np.ndarray | None


class Kernel:
    """How a metric turns two blocks of rows into keys (smaller = nearer), and keys into distances.

    Per-row terms (norms) are computed once for all rows, so that preparing a
    block costs one pass over it. Similarities become keys by negation, so
    one kind of heap serves every metric: faiss's min-heap (keep the largest)
    would break ties towards larger indices.
    """

    def row_terms(self, rows: np.ndarray) -> np.ndarray | None:
        return None

    def block(self, rows: np.ndarray, terms: np.ndarray | None) -> Block:
        return Block(rows, terms)

    def fill(self, left: Block, right: Block, out: np.ndarray) -> None:
        """Write the keys of every left row against every right row into `out`."""
        # numpy runs the symmetric product (syrk) when `left is right`.
        np.matmul(left.rows, right.rows.T, out=out)
        self.product_to_keys(out, left.terms, right.terms)

    def product_to_keys(self, out: np.ndarray, left_terms: np.ndarray | None, right_terms: np.ndarray | None) -> None:
        np.negative(out, out=out)

    def report(self, keys: np.ndarray) -> np.ndarray:
        """The distance (or similarity) users see, from the keys."""
        return -keys


class Cosine(Kernel):
    def row_terms(self, rows):
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        norms[norms == 0] = 1  # As scikit-learn: a zero row stays zero, at distance 1 from every row.
        return norms

    def block(self, rows, terms):
        return Block(rows / terms[:, None], None)

    def report(self, keys):
        return np.clip(1 + keys, 0, 2)


class SquaredEuclidean(Kernel):
    def row_terms(self, rows):
        return np.einsum("ij,ij->i", rows, rows)

    def product_to_keys(self, out, left_terms, right_terms):
        out *= -2
        out += left_terms[:, None]
        out += right_terms[None, :]
        np.maximum(out, 0, out=out)  # Rounding can make a tiny squared distance negative.

    def report(self, keys):
        return keys


class Euclidean(SquaredEuclidean):
    def report(self, keys):
        return np.sqrt(keys)


class Manhattan(Kernel):
    def fill(self, left, right, out):
        (n_left, dim), n_right = left.rows.shape, len(right.rows)
        faiss.pairwise_extra_distances(
            dim, n_left, faiss.swig_ptr(left.rows), n_right, faiss.swig_ptr(right.rows),
            faiss.METRIC_L1, 0, faiss.swig_ptr(out),
        )

    def report(self, keys):
        return keys


KERNELS = {
    "cosine": Cosine(),
    "euclidean": Euclidean(),
    "sqeuclidean": SquaredEuclidean(),
    "inner_product": Kernel(),
    "manhattan": Manhattan(),
}
METRICS = tuple(KERNELS)


class TopK:
    """The k smallest keys of every row, kept by faiss's C++ max-heaps."""

    def __init__(self, n_rows: int, k: int):
        self.keys = np.empty((n_rows, k), dtype=np.float32)
        self.indices = np.empty((n_rows, k), dtype=np.int64)
        self._heaps = faiss.float_maxheap_array_t()
        self._heaps.k, self._heaps.nh = k, n_rows
        self._heaps.val = faiss.swig_ptr(self.keys)
        self._heaps.ids = faiss.swig_ptr(self.indices)
        self._heaps.heapify()

    def add(self, keys: np.ndarray, first_row: int, first_column: int) -> None:
        """Offer a C-contiguous block of keys: rows from first_row against columns from first_column."""
        n_rows, n_columns = keys.shape
        self._heaps.addn(n_columns, faiss.swig_ptr(keys), first_column, first_row, n_rows)

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and indices of every row, nearest first."""
        self._heaps.reorder()
        return self.keys, self.indices


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def thread_limit(n_threads: int) -> Iterator[None]:
    """Bound BLAS and OpenMP (faiss) threads to n_threads (-1 = all cores) inside the block."""
    n_threads = available_cores() if n_threads == -1 else n_threads
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


def check_options(*, metric: str, n_threads: int, max_memory: int) -> None:
    """Reject impossible options; the CLI calls this before reading any file."""
    if metric not in KERNELS:
        raise OptionError(f"Unknown distance metric. Expected one of {', '.join(METRICS)}. Received: {metric!r}")
    if n_threads == 0 or n_threads < -1:
        raise OptionError(f"The number of cores must be -1 (all cores) or at least 1. Received: {n_threads}")
    if max_memory <= 0:
        raise OptionError(f"The memory limit must be positive. Received: {max_memory} bytes")


def block_rows(dim: int, max_memory: int) -> int:
    """Rows per block such that two blocks of keys and two blocks of rows fit in max_memory bytes."""
    # 2 * rows**2 * 4 bytes of keys + 2 * rows * dim * 4 bytes of rows <= max_memory.
    rows = int((math.sqrt(dim * dim + max_memory / 2) - dim) / 2)
    if rows < 1:
        raise OptionError(
            f"A memory limit of {max_memory / 2**20:g} MB cannot hold one block of {dim} features. "
            f"Give at least {math.ceil(8 * (dim + 1) / 2**20)} MB."
        )
    return min(rows, MAX_BLOCK_ROWS)


def _check_k(k: int, n_candidates: int, why: str) -> None:
    if not 1 <= k <= n_candidates:
        raise OptionError(f"The number of neighbours must be between 1 and {n_candidates} ({why}). Received: {k}")


def exact_neighbors(
    features: np.ndarray,
    *,
    k: int,
    metric: str = "cosine",
    queries: np.ndarray | None = None,
    include_self: bool = False,
    max_memory: int = 512 * 2**20,
    n_threads: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of `features` to every row of `queries` (default: to every row of `features`).

    Returns (distances float32, indices int64), both (n_queries, k), nearest
    first, ties by index. Without `queries`, a row is not its own neighbour
    unless `include_self`; with them, every feature row is a candidate.
    `inner_product` reports the product and ranks larger first; the other
    metrics report a distance and rank smaller first. `max_memory` (bytes)
    bounds the working set beyond the features and the results; `n_threads`
    bounds BLAS and faiss threads (-1: all cores).
    """
    check_options(metric=metric, n_threads=n_threads, max_memory=max_memory)
    gallery = np.ascontiguousarray(check_features(features, "features"))
    if queries is None:
        limit, why = (len(gallery), "the number of rows") if include_self else (
            len(gallery) - 1, "the number of rows less the row itself")
    else:
        queries = np.ascontiguousarray(check_features(queries, "queries"))
        if queries.shape[1] != gallery.shape[1]:
            raise DataError(
                f"queries have {queries.shape[1]} features per row but the set has {gallery.shape[1]}; "
                "extract both with the same model and layer."
            )
        limit, why = len(gallery), "the number of rows"
    _check_k(k, limit, why)

    kernel = KERNELS[metric]
    size = block_rows(gallery.shape[1], max_memory)
    with thread_limit(n_threads):
        if queries is None:
            top = _search_symmetric(kernel, gallery, k, size, include_self=include_self)
        else:
            top = _search(kernel, queries, gallery, k, size)
        keys, indices = top.results()
    distances = kernel.report(keys)
    order = np.lexsort((indices, keys), axis=1)  # Ties by index, whatever order the heaps left them in.
    return np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    """Cut range(n) into equal spans of at most `size`."""
    count = math.ceil(n / size)
    edges = [round(n * i / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


class _Blocks:
    """Blocks of rows of one array, prepared for a kernel; the per-row terms are computed once."""

    def __init__(self, kernel: Kernel, rows: np.ndarray):
        self.kernel, self.rows, self.terms = kernel, rows, kernel.row_terms(rows)

    def __call__(self, start: int, stop: int) -> Block:
        terms = None if self.terms is None else self.terms[start:stop]
        return self.kernel.block(self.rows[start:stop], terms)


class _Progress:
    """Logs how many block pairs are done, every PROGRESS_SECONDS, and at the end of a run that logged."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.started = self.reported = time.monotonic()

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.reported > PROGRESS_SECONDS or (self.done == self.total and self.reported > self.started):
            self.reported = now
            logger.info("Neighbours: %d of %d blocks (%.0f s)", self.done, self.total, now - self.started)


def _key_buffer(size: int) -> np.ndarray:
    return np.empty(size * size, dtype=np.float32)


def _view(buffer: np.ndarray, n_rows: int, n_columns: int) -> np.ndarray:
    """A C-contiguous (n_rows, n_columns) view on the front of a flat buffer."""
    return buffer[: n_rows * n_columns].reshape(n_rows, n_columns)


def _search(kernel: Kernel, queries: np.ndarray, gallery: np.ndarray, k: int, size: int) -> TopK:
    """Every query block against every gallery block."""
    top, buffer = TopK(len(queries), k), _key_buffer(size)
    query_blocks, gallery_blocks = _Blocks(kernel, queries), _Blocks(kernel, gallery)
    row_spans, column_spans = _spans(len(queries), size), _spans(len(gallery), size)
    progress = _Progress(len(row_spans) * len(column_spans))
    for r0, r1 in row_spans:
        left = query_blocks(r0, r1)
        for c0, c1 in column_spans:
            keys = _view(buffer, r1 - r0, c1 - c0)
            kernel.fill(left, gallery_blocks(c0, c1), keys)
            top.add(keys, r0, c0)
            progress.step()
    return top


def _search_symmetric(kernel: Kernel, features: np.ndarray, k: int, size: int, *, include_self: bool) -> TopK:
    """Every block pair (i, j), j >= i, once, offered to the heaps of both blocks."""
    top, buffer, transposed = TopK(len(features), k), _key_buffer(size), _key_buffer(size)
    blocks = _Blocks(kernel, features)
    spans = _spans(len(features), size)
    progress = _Progress(len(spans) * (len(spans) + 1) // 2)
    for i, (r0, r1) in enumerate(spans):
        left = blocks(r0, r1)
        keys = _view(buffer, r1 - r0, r1 - r0)
        kernel.fill(left, left, keys)
        if not include_self:
            np.fill_diagonal(keys, np.inf)
        top.add(keys, r0, r0)
        progress.step()
        for c0, c1 in spans[i + 1 :]:
            keys = _view(buffer, r1 - r0, c1 - c0)
            kernel.fill(left, blocks(c0, c1), keys)
            # Rows c0:c1 see columns r0:r1 before any later ones: ids keep increasing per row.
            top.add(_transpose_into(_view(transposed, c1 - c0, r1 - r0), keys), c0, r0)
            top.add(keys, r0, c0)
            progress.step()
    return top


def _transpose_into(out: np.ndarray, block: np.ndarray, tile: int = 16) -> np.ndarray:
    """Copy block.T into the C-contiguous `out`, a few rows of `block` at a time.

    numpy's plain transposed copy strides through memory and runs about
    eight times slower than this cache-friendly tiling.
    """
    for start in range(0, len(block), tile):
        out[:, start : start + tile] = block[start : start + tile].T
    return out


def writable_dir(path: str | os.PathLike) -> Path:
    """Create the output folder and prove a file can be written there, before any long computation."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise DataError(f"{path}: cannot write there ({error.strerror or error}); choose another output folder.") from None
    return path


def write_neighbors(
    output_dir: str | os.PathLike,
    distances: np.ndarray,
    indices: np.ndarray,
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
) -> list[Path]:
    """Write neighbors.npy, distances.npy and neighbors.csv into output_dir: all three or none.

    The CSV, for people, has one line per (query, neighbour): the query's
    path, the rank (1 = nearest), the neighbour's path and the distance.
    """
    output_dir = writable_dir(output_dir)
    targets = [output_dir / name for name in (NEIGHBORS_FILE, DISTANCES_FILE, CSV_FILE)]
    k = indices.shape[1]
    try:
        with contextlib.ExitStack() as stack:
            neighbors_file, distances_file, csv_file = (stack.enter_context(atomic_path(t)) for t in targets)
            np.save(neighbors_file, indices.astype(np.int64, copy=False))
            np.save(distances_file, distances.astype(np.float32, copy=False))
            with csv_file.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["query", "rank", "neighbor", "distance"])
                writer.writerows(
                    zip(
                        np.repeat(np.asarray(query_paths, dtype=object), k),
                        np.tile(np.arange(1, k + 1), len(indices)).tolist(),
                        np.asarray(gallery_paths, dtype=object)[indices.ravel()],
                        (f"{distance:.6g}" for distance in distances.ravel().tolist()),
                    )
                )
    except OSError as error:
        raise DataError(f"{output_dir}: cannot write the neighbours ({error.strerror or error}).") from None
    return targets
