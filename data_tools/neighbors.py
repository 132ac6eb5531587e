"""Exact k nearest neighbours of feature rows, in blocks, with faiss heaps.

All-against-all search is symmetric: the block of distances between row
blocks i and j is the transpose of the one between j and i, so each pair of
blocks (i, j), j >= i, is computed once and fed to the heaps of both blocks.
That halves the matrix products, the bulk of the work. The products run on
numpy's BLAS (`manhattan` on faiss's `pairwise_extra_distances`), and faiss's
C++ heaps keep the k best of every row, so no Python loop touches a distance.

Memory: besides the features and the (n_queries, k) results, the working set
is two blocks of distances and two blocks of operands, sized to `max_memory`.

Determinism: every row receives its candidates in increasing index order and
a faiss max-heap only lets a strictly smaller key in, so among equal
distances the smaller index wins; the final sort is by (key, index).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
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

# Rows per block at most: small enough that the symmetric scheme skips close
# to half of the products (the diagonal blocks are computed in full), large
# enough that each product runs at full BLAS speed.
MAX_BLOCK_ROWS = 2048
PROGRESS_SECONDS = 10.0


class Block(NamedTuple):
    """Rows of one block, ready for a kernel, with the per-row terms the metric adds back."""

    rows: np.ndarray
    terms: np.ndarray | None


class Kernel:
    """How a metric turns two blocks of rows into keys (smaller = nearer) and keys into distances.

    Per-row terms (norms) are computed once for all rows, so that preparing a
    block costs one pass over it. The left block carries the negation of
    similarity metrics, so that one kind of heap serves every metric: faiss's
    min-heap (keep the largest) would break ties towards larger indices.
    """

    def row_terms(self, rows: np.ndarray) -> np.ndarray | None:
        return None

    def block(self, rows: np.ndarray, terms: np.ndarray | None, *, left: bool) -> Block:
        return Block(rows, terms)

    def fill(self, left: Block, right: Block, out: np.ndarray) -> None:
        np.matmul(left.rows, right.rows.T, out=out)

    def report(self, keys: np.ndarray) -> np.ndarray:
        return keys


class InnerProduct(Kernel):
    def block(self, rows, terms, *, left):
        return Block(-rows if left else rows, None)

    def report(self, keys):
        return -keys


class Cosine(Kernel):
    def row_terms(self, rows):
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        norms[norms == 0] = 1  # As scikit-learn: a zero row stays zero, at distance 1 from every row.
        return norms

    def block(self, rows, terms, *, left):
        return Block(rows / (-terms if left else terms)[:, None], None)

    def report(self, keys):
        return np.clip(1 + keys, 0, 2)


class SquaredEuclidean(Kernel):
    def row_terms(self, rows):
        return np.einsum("ij,ij->i", rows, rows)

    def block(self, rows, terms, *, left):
        # Scaling by -2 is exact, so the product gives -2<x, y> at no cost.
        return Block(rows * -2 if left else rows, terms)

    def fill(self, left, right, out):
        super().fill(left, right, out)
        out += left.terms[:, None]
        out += right.terms[None, :]
        np.maximum(out, 0, out=out)  # Rounding can make a tiny squared distance negative.


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


KERNELS = {
    "cosine": Cosine(),
    "euclidean": Euclidean(),
    "sqeuclidean": SquaredEuclidean(),
    "inner_product": InnerProduct(),
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

    def add(self, block: np.ndarray, first_row: int, first_column: int) -> None:
        """Offer a C-contiguous block of keys for rows first_row... against columns first_column..."""
        n_rows, n_columns = block.shape
        self._heaps.addn(n_columns, faiss.swig_ptr(block), first_column, first_row, n_rows)

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and indices of every row, nearest first."""
        self._heaps.reorder()
        return self.keys, self.indices


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def thread_limit(n_threads: int) -> Iterator[None]:
    """Bound BLAS and OpenMP (faiss) threads to n_threads (-1 = all cores) for the block."""
    n_threads = available_cores() if n_threads == -1 else n_threads
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


def block_rows(dim: int, max_memory: int) -> int:
    """Rows per block so that two key blocks and two operand blocks fit in max_memory bytes."""
    # 2 * b * b * 4 bytes of keys + 2 * b * dim * 4 bytes of operands <= max_memory.
    rows = int((-dim + math.sqrt(dim * dim + max_memory / 2)) / 2)
    if rows < 1:
        need = math.ceil(8 * (1 + dim) / 2**20)
        raise OptionError(
            f"max_memory={max_memory / 2**20:g} MB cannot hold one row of {dim} features. "
            f"Give at least {need} MB."
        )
    return min(rows, MAX_BLOCK_ROWS)


def check_options(*, metric: str, n_threads: int, max_memory: int) -> None:
    """Reject impossible options before any data is read."""
    if metric not in KERNELS:
        raise OptionError(f"Unknown metric. Expected one of {', '.join(METRICS)}. Received: metric={metric!r}")
    if n_threads == 0 or n_threads < -1:
        raise OptionError(f"n_cores must be -1 (all cores) or a positive number. Received: n_cores={n_threads}")
    if max_memory <= 0:
        raise OptionError(f"max_memory must be positive. Received: max_memory={max_memory}")


def _check_k(k: int, n_candidates: int, why: str) -> None:
    if not 1 <= k <= n_candidates:
        raise OptionError(
            f"n_neighbors must be between 1 and {n_candidates} ({why}). Received: n_neighbors={k}"
        )


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


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
    metrics report a distance and rank smaller first.
    """
    check_options(metric=metric, n_threads=n_threads, max_memory=max_memory)
    gallery = np.ascontiguousarray(check_features(features, "features"), dtype=np.float32)
    symmetric = queries is None
    if symmetric:
        queries = gallery
        if include_self:
            _check_k(k, len(gallery), "the number of rows")
        else:
            _check_k(k, len(gallery) - 1, "the number of rows less the row itself")
    else:
        queries = np.ascontiguousarray(check_features(queries, "queries"), dtype=np.float32)
        if queries.shape[1] != gallery.shape[1]:
            raise DataError(
                f"queries have {queries.shape[1]} features per row but the set has {gallery.shape[1]}; "
                "extract both with the same model and layer."
            )
        _check_k(k, len(gallery), "the number of rows")

    kernel = KERNELS[metric]
    size = block_rows(gallery.shape[1], max_memory)
    with thread_limit(n_threads):
        top = _search(kernel, queries, gallery, k, size, symmetric=symmetric, include_self=include_self)
        keys, indices = top.results()
    distances = kernel.report(keys)
    order = np.lexsort((indices, -distances if metric == "inner_product" else distances), axis=1)
    return np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)


def _transpose_into(out: np.ndarray, block: np.ndarray, tile: int = 16) -> np.ndarray:
    """Copy block.T into the C-contiguous `out`, a few rows of `block` at a time.

    numpy's plain transposed copy walks memory with a large stride and runs
    about eight times slower than this cache-friendly tiling.
    """
    for start in range(0, len(block), tile):
        out[:, start : start + tile] = block[start : start + tile].T
    return out


def _search(
    kernel: Kernel,
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    size: int,
    *,
    symmetric: bool,
    include_self: bool,
) -> TopK:
    """Feed every block of keys to the heaps; in the symmetric case each pair of blocks once, both ways."""
    top = TopK(len(queries), k)
    gallery_terms = kernel.row_terms(gallery)
    query_terms = gallery_terms if symmetric else kernel.row_terms(queries)
    keys_buffer = np.empty(size * size, dtype=np.float32)
    transposed_buffer = np.empty(size * size if symmetric else 0, dtype=np.float32)
    row_spans, column_spans = _spans(len(queries), size), _spans(len(gallery), size)
    pairs = [(rows, columns) for rows in row_spans for columns in column_spans if not symmetric or columns >= rows]
    started = last_report = time.monotonic()
    left_span = left = None
    for done, ((r0, r1), (c0, c1)) in enumerate(pairs, 1):
        if left_span != (r0, r1):
            left_span = (r0, r1)
            left = kernel.block(queries[r0:r1], _part(query_terms, r0, r1), left=True)
        right = kernel.block(gallery[c0:c1], _part(gallery_terms, c0, c1), left=False)
        keys = keys_buffer[: (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
        kernel.fill(left, right, keys)
        if symmetric and r0 == c0 and not include_self:
            np.fill_diagonal(keys, np.inf)
        elif symmetric and r0 != c0:
            top.add(_transpose_into(transposed_buffer[: keys.size].reshape(c1 - c0, r1 - r0), keys), c0, r0)
        top.add(keys, r0, c0)
        if time.monotonic() - last_report > PROGRESS_SECONDS or done == len(pairs):
            last_report = time.monotonic()
            logger.info("Neighbours: %d of %d blocks (%.0f s)", done, len(pairs), last_report - started)
    return top


def _part(terms: np.ndarray | None, start: int, stop: int) -> np.ndarray | None:
    return None if terms is None else terms[start:stop]
