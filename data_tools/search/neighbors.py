"""Exact k nearest neighbours of feature rows, in blocks, with faiss heaps.

The matrix products are the bulk of the work, and all against all they are
symmetric: the keys between row blocks i and j are the transpose of those
between j and i. So each pair of blocks is computed once and offered to
the heaps of both, and a block against itself is one symmetric product
(BLAS syrk): half the products of a plain search. The products run on
numpy's BLAS (`manhattan` on faiss's `pairwise_extra_distances`); a
`faiss.ResultHeap` keeps the k best of every row in C++, so no Python loop
touches a key.

Memory: besides the features and the (n_queries, k) results, the working
set is a few blocks of keys and rows, sized to fit `max_memory`. Features
already C-contiguous float32 (an array, or a memmap from `open_features`) are
read in place, checked block by block, never copied; any other array-like
(an h5py dataset) is read once, by blocks, into one array.

Determinism: every heap receives its candidates in increasing index order,
and a faiss max-heap admits only a strictly smaller key, so among equal
distances the smaller index wins; results are sorted by (distance, index).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from image_toolkit.data_tools.atomic import atomic_path, cannot_write, writable_folder
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import BLOCK_ROWS, check_features, feature_blocks

logger = logging.getLogger(__name__)

NEIGHBORS_FILE = "neighbors.npy"
DISTANCES_FILE = "distances.npy"
CSV_FILE = "neighbors.csv"
# Larger blocks only take memory: the work beside the products is already small at this size.
MAX_BLOCK_ROWS = 4096
# A block is offered whole, not key by key, when more than 1 key in this many may enter the heaps.
DENSE_FRACTION = 16
PROGRESS_SECONDS = 10.0
# The value of a thread count that means every core.
ALL_CORES = {-1: "all cores"}


# Kernels: how a metric turns blocks of rows into keys.


class Block(NamedTuple):
    """Rows of one block, ready for the product, with the per-row terms the metric adds to it."""

    rows: np.ndarray
    terms: np.ndarray | None


class Kernel:
    """How a metric turns two blocks of rows into keys (smaller = nearer), and keys into distances.

    This base class is the inner product. Similarities become keys by
    negation, so one kind of heap serves every metric: faiss's min-heap
    (keep the largest) would break ties towards the larger index.
    Per-row terms (norms) are computed once for all rows.
    """

    def row_terms(self, rows: np.ndarray) -> np.ndarray | None:
        return None

    def block(self, rows: np.ndarray, terms: np.ndarray | None) -> Block:
        return Block(rows, terms)

    def fill(self, left: Block, right: Block, out: np.ndarray) -> None:
        """Write the keys of every left row against every right row into `out`."""
        # numpy runs the symmetric product (syrk, half the work) when `left is right`.
        np.matmul(left.rows, right.rows.T, out=out)
        self.product_to_keys(out, left.terms, right.terms)

    def product_to_keys(self, out: np.ndarray, left_terms: np.ndarray | None, right_terms: np.ndarray | None) -> None:
        np.negative(out, out=out)

    def report(self, keys: np.ndarray) -> np.ndarray:
        """What users see: the distance, or for `inner_product` the product."""
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
            dim,
            n_left,
            faiss.swig_ptr(left.rows),
            n_right,
            faiss.swig_ptr(right.rows),
            faiss.METRIC_L1,
            0,
            faiss.swig_ptr(out),
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


# Heaps.


class TopK:
    """The k smallest keys of every row, kept by a `faiss.ResultHeap` (faiss's C++ max-heaps).

    Blocks go in with `add_result_subset`: the block's rows are the subset
    of heaps, and its columns, one range of ids shared by every row, are the
    ids. That is the loop faiss's `addn` runs, so nothing is lost by not
    driving the heap array by hand.
    """

    def __init__(self, n_rows: int, k: int):
        self._heap = faiss.ResultHeap(n_rows, k)  # keep_max=False: max-heaps, a strictly smaller key enters.
        self._transposed = np.empty(0, dtype=np.float32)

    def add(self, keys: np.ndarray, first_row: int, first_column: int) -> None:
        """Offer a C-contiguous block of keys of rows first_row... against columns first_column..."""
        n_rows, n_columns = keys.shape
        self._heap.add_result_subset(
            np.arange(first_row, first_row + n_rows), keys, np.arange(first_column, first_column + n_columns)
        )

    def add_transposed(self, keys: np.ndarray, first_row: int, first_column: int) -> None:
        """Offer keys.T: to the rows first_column... against the columns first_row...

        Once a heap is full, only keys below its top (its k-th best so far)
        can enter, and those are few: one vectorised comparison picks them
        out, and only they are offered, column by column in increasing row
        order. That spares transposing the block.
        """
        n_rows, n_columns = keys.shape
        worst_kept = self._heap.D[first_column : first_column + n_columns, 0].copy()  # Contiguous compares faster.
        if not np.isinf(worst_kept).any():
            entering = keys < worst_kept  # Counted before its positions are taken: a dense block has many.
            if np.count_nonzero(entering) * DENSE_FRACTION <= keys.size and self._add_found(
                np.flatnonzero(entering), keys, first_row, first_column
            ):
                return
        if self._transposed.size < keys.size:
            self._transposed = np.empty(keys.size, dtype=np.float32)
        self.add(_transpose_into(_view(self._transposed, n_columns, n_rows), keys), first_column, first_row)

    def _add_found(self, found: np.ndarray, keys: np.ndarray, first_row: int, first_column: int) -> bool:
        """Offer the keys at flat positions `found` to their columns' heaps; False if padding would cost too much."""
        n_columns = keys.shape[1]
        rows, columns = np.divmod(found, n_columns)
        # A stable sort groups them by column, rows still increasing; on 16 bits numpy makes it a radix sort.
        order = np.argsort(columns.astype(np.uint16 if n_columns <= 2**16 else np.int64), kind="stable")
        rows, columns = rows[order], columns[order]
        counts = np.bincount(columns, minlength=n_columns)
        heaps = np.flatnonzero(counts)
        counts = counts[heaps]
        width = int(counts.max(initial=0))
        if len(heaps) * width * DENSE_FRACTION > keys.size:
            return False
        line = np.repeat(np.arange(len(heaps)), counts)
        slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        values = np.full((len(heaps), width), np.inf, dtype=np.float32)  # +inf never enters a full heap.
        ids = np.full((len(heaps), width), -1, dtype=np.int64)
        values[line, slot] = keys[rows, columns]
        ids[line, slot] = rows + first_row
        self._heap.add_result_subset(heaps + first_column, values, ids)
        return True

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and indices of every row, nearest first."""
        self._heap.finalize()
        return self._heap.D, self._heap.I


# Options, threads and memory.


def check_options(*, metric: str, n_threads: int, max_memory: int) -> None:
    """Reject impossible options; the CLI calls this before reading any file."""
    if metric not in KERNELS:
        raise OptionError(f"Unknown distance metric. Expected one of {', '.join(METRICS)}. Received: {metric!r}")
    check_range("--n-jobs", n_threads, low=1, special=ALL_CORES)
    check_range("max_memory", max_memory, low=0, low_open=True, why="bytes")


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def thread_limit(n_threads: int) -> Iterator[int]:
    """Bound BLAS and faiss (OpenMP) threads to n_threads (-1: all cores) inside the block; yields the number."""
    n_threads = available_cores() if n_threads == -1 else n_threads
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield n_threads
    finally:
        faiss.omp_set_num_threads(previous)


def working_set(rows: int, dim: int) -> int:
    """Bytes a search with blocks of `rows` needs beside the features and results.

    Two blocks of keys (one filled while the heaps read the other), one
    transposed block, the temporaries that pick out candidates (4 bytes a
    key at most) and two blocks of prepared rows.
    """
    return 16 * rows * rows + 8 * rows * dim


def block_rows(dim: int, max_memory: int) -> int:
    """The most rows per block whose working set fits in max_memory bytes, up to MAX_BLOCK_ROWS."""
    rows = int((math.sqrt(dim * dim + max_memory) - dim) / 4)  # The root of working_set(rows, dim) = max_memory.
    if rows < 1:
        raise OptionError(
            f"A memory limit of {max_memory / 2**20:g} MB cannot hold one block of {dim} features. "
            f"Give at least {math.ceil(working_set(1, dim) / 2**20)} MB."
        )
    return min(rows, MAX_BLOCK_ROWS)


# The search.


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
    metrics report a distance and rank smaller first. Distances come from
    float32 products, as in faiss: (sq)euclidean ones are exact to about
    1e-7 of the squared norms, so identical rows may be 1e-6 apart.
    `max_memory` (bytes) bounds the working set beyond the features and the
    results; `n_threads` bounds BLAS and faiss threads (-1: all cores).
    """
    check_options(metric=metric, n_threads=n_threads, max_memory=max_memory)
    gallery = searchable_rows(features, "features")
    if queries is None:
        if include_self:
            check_range("k", k, low=1, high=len(gallery), why="the number of rows")
        else:
            check_range("k", k, low=1, high=len(gallery) - 1, why="the number of rows less the row itself")
    else:
        queries = searchable_rows(queries, "queries")
        if queries.shape[1] != gallery.shape[1]:
            raise DataError(
                f"queries have {queries.shape[1]} features per row but the set has {gallery.shape[1]}; "
                "extract both with the same model and layer."
            )
        check_range("k", k, low=1, high=len(gallery), why="the number of rows")

    kernel = KERNELS[metric]
    size = block_rows(gallery.shape[1], max_memory)
    with thread_limit(n_threads) as threads, _Feeder(size, threads) as feeder:
        if queries is None:
            top = _search_symmetric(kernel, gallery, k, size, feeder, include_self=include_self)
        else:
            top = _search(kernel, queries, gallery, k, size, feeder)
        feeder.drain()
        keys, indices = top.results()
    distances = kernel.report(keys)
    order = np.lexsort((indices, keys), axis=1)  # Ties by index, whatever order the heaps left them in.
    return np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)


def searchable_rows(features, where: str) -> np.ndarray:
    """Checked features as one C-contiguous float32 array, for the blocks to slice.

    One already in that form (an array, a read-only memmap) is checked
    block by block and returned as it is: a memmap stays on disk, and no
    N x D temporary is made. Another array-like with a 2-D `shape` (an
    h5py dataset) is read block by block into one array. Anything else
    goes through `check_features`, whose error names what is wrong.
    """
    shape = getattr(features, "shape", ())
    if len(shape) != 2 or 0 in shape or getattr(features, "dtype", np.dtype(object)).kind not in "fiu":
        return np.ascontiguousarray(check_features(features, where))
    if isinstance(features, np.ndarray) and features.dtype == np.float32 and features.flags.c_contiguous:
        for _ in feature_blocks(features, where=where):
            pass
        return features
    rows = np.empty(shape, dtype=np.float32)
    for start, block in feature_blocks(features, where=where):
        rows[start : start + len(block)] = block
    return rows


def _search(kernel: Kernel, queries: np.ndarray, gallery: np.ndarray, k: int, size: int, feeder: _Feeder) -> TopK:
    """Every block of queries against every block of the gallery."""
    top = TopK(len(queries), k)
    _offer(top, kernel, _Blocks(kernel, queries), gallery, size, feeder)
    return top


def _offer(top: TopK, kernel: Kernel, query_blocks: _Blocks, gallery: np.ndarray, size: int, feeder: _Feeder, *,
           first_column: int = 0, own_rows: np.ndarray | None = None) -> None:
    """Offer every block of queries against every block of `gallery`, whose rows are numbered from first_column.

    A query's own row (`own_rows[query]`, a row number) gets key +inf, which never enters a heap.
    """
    row_spans, column_spans = _spans(query_blocks.size, size), _spans(len(gallery), size)
    gallery_blocks = _Blocks(kernel, gallery)
    progress = _Progress(len(row_spans) * len(column_spans))
    for r0, r1 in row_spans:
        left = query_blocks(r0, r1)
        for c0, c1 in column_spans:
            keys = feeder.buffer(r1 - r0, c1 - c0)
            kernel.fill(left, gallery_blocks(c0, c1), keys)
            if own_rows is not None:
                columns = own_rows[r0:r1] - (first_column + c0)
                inside = np.flatnonzero((columns >= 0) & (columns < c1 - c0))
                keys[inside, columns[inside]] = np.inf
            feeder.submit(top.add, keys, r0, first_column + c0)
            progress.step()


class NearestRows:
    """The exact k nearest of rows that come a block at a time, to a few queries: the truth that recall is measured by.

    The rows may be a feature file read by `feature_blocks` (see
    `exact_radius`), an index's stored rows read back, or rows on their way
    into a database: whatever the source, memory holds the queries, one
    block and the (n_queries, k) heaps, never all the rows. Rows are numbered
    in the order they are added; `own_rows` gives each query's own row
    number, which is never its neighbour (all against all). Ties go to the
    row added first, as in `exact_neighbors`.
    """

    def __init__(self, queries: np.ndarray, *, k: int, metric: str = "cosine", own_rows: np.ndarray | None = None,
                 max_memory: int = 512 * 2**20, n_threads: int = -1):
        check_options(metric=metric, n_threads=n_threads, max_memory=max_memory)
        check_range("k", k, low=1)
        self.queries = searchable_rows(queries, "queries")
        self.k, self.metric, self.n_threads = k, metric, n_threads
        self.rows_added = 0
        self._kernel = KERNELS[metric]
        self._query_blocks = _Blocks(self._kernel, self.queries)
        self._own = None if own_rows is None else np.asarray(own_rows, dtype=np.int64)
        self._size = block_rows(self.queries.shape[1], max_memory)
        self._top = TopK(len(self.queries), k)

    def add(self, rows: np.ndarray) -> None:
        """Offer the next block of rows (checked float32, as `feature_blocks` gives them)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        with thread_limit(self.n_threads) as threads, _Feeder(self._size, threads) as feeder:
            _offer(self._top, self._kernel, self._query_blocks, rows, self._size, feeder,
                   first_column=self.rows_added, own_rows=self._own)
            feeder.drain()
        self.rows_added += len(rows)

    def radius(self) -> np.ndarray:
        """Each query's exact k-th nearest value (as `exact_neighbors` reports it), as a key: smaller is nearer.

        The inner product, where larger is nearer, is negated. Call it once,
        after the last `add`: it sorts the heaps into results, which ends them.
        """
        keys, _ = self._top.results()
        values = self._kernel.report(keys[:, -1])
        return -values if self.metric == "inner_product" else values


def exact_radius(features, queries: np.ndarray, *, k: int, metric: str = "cosine", own_rows: np.ndarray | None = None,
                 rows: int = BLOCK_ROWS, max_memory: int = 512 * 2**20, n_threads: int = -1,
                 where: str = "features") -> np.ndarray:
    """Each query's exact k-th nearest value among the rows of `features`, as a smaller-is-nearer key (see `NearestRows`).

    `features` is any array-like `feature_blocks` reads (array, memmap, h5py
    dataset), read `rows` at a time and never whole: the cost of knowing the
    truth for a sample of queries is their products with every row, not a
    second copy of the features. `own_rows`: each query's own row, left out.
    """
    nearest = NearestRows(queries, k=k, metric=metric, own_rows=own_rows, max_memory=max_memory, n_threads=n_threads)
    for _, block in feature_blocks(features, rows=rows, where=where):
        nearest.add(block)
    return nearest.radius()


def _search_symmetric(
    kernel: Kernel, features: np.ndarray, k: int, size: int, feeder: _Feeder, *, include_self: bool
) -> TopK:
    """Every pair of blocks once, offered to the heaps of both blocks.

    Block j meets the earlier blocks i < j first, then itself. So the heaps
    of block j receive candidates in increasing index order (blocks i < j,
    then j, then the later blocks as those come), and the heaps of block i
    are already full when block j's keys come back to them, which is what
    lets `TopK.add_transposed` offer only the few that can enter.
    """
    top = TopK(len(features), k)
    blocks = _Blocks(kernel, features)
    spans = _spans(len(features), size)
    progress = _Progress(len(spans) * (len(spans) + 1) // 2)

    def offer_both_ways(keys: np.ndarray, r0: int, c0: int) -> None:
        top.add(keys, r0, c0)
        top.add_transposed(keys, r0, c0)

    def offer_diagonal(keys: np.ndarray, r0: int) -> None:
        if not include_self:
            np.fill_diagonal(keys, np.inf)
        top.add(keys, r0, r0)

    for j, (r0, r1) in enumerate(spans):
        left = blocks(r0, r1)
        for c0, c1 in spans[:j]:
            keys = feeder.buffer(r1 - r0, c1 - c0)
            kernel.fill(left, blocks(c0, c1), keys)
            feeder.submit(offer_both_ways, keys, r0, c0)
            progress.step()
        keys = feeder.buffer(r1 - r0, r1 - r0)
        kernel.fill(left, left, keys)
        feeder.submit(offer_diagonal, keys, r0)
        progress.step()
    return top


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    """Cut range(n) into equal spans of at most `size`."""
    count = math.ceil(n / size)
    edges = [round(n * i / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


class _Blocks:
    """Blocks of rows of one array, prepared for a kernel; the per-row terms are computed once."""

    def __init__(self, kernel: Kernel, rows: np.ndarray):
        self._kernel, self._rows, self._terms = kernel, rows, kernel.row_terms(rows)
        self.size = len(rows)

    def __call__(self, start: int, stop: int) -> Block:
        terms = None if self._terms is None else self._terms[start:stop]
        return self._kernel.block(self._rows[start:stop], terms)


class _Feeder:
    """Offers blocks of keys to the heaps on a helper thread while the next product runs.

    Between products, the heap work (mostly single-threaded) would leave
    the other cores idle, or spinning in the BLAS. Two key buffers take
    turns: the next product fills one while the heaps read the other. One
    helper keeps the offers in order, as ties require. With one core
    allowed, offers run in turn with the products instead.
    """

    def __init__(self, size: int, n_threads: int):
        self._buffers = [np.empty(size * size, dtype=np.float32) for _ in range(2)]
        self._pending: list[Future | None] = [None, None]
        self._turn = 0
        # OpenMP thread counts belong to each thread: the helper sets its own.
        self._helper = (
            ThreadPoolExecutor(1, initializer=faiss.omp_set_num_threads, initargs=(n_threads,))
            if n_threads > 1
            else None
        )

    def buffer(self, n_rows: int, n_columns: int) -> np.ndarray:
        """The next key buffer, as (n_rows, n_columns), once the heaps are done with it."""
        self._turn ^= 1
        self._wait(self._turn)
        return _view(self._buffers[self._turn], n_rows, n_columns)

    def submit(self, offer: Callable[..., None], keys: np.ndarray, *args: int) -> None:
        """Run offer(keys, *args) on the helper; `keys` must be the last buffer handed out."""
        if self._helper is None:
            offer(keys, *args)
        else:
            self._pending[self._turn] = self._helper.submit(offer, keys, *args)

    def drain(self) -> None:
        """Wait for every offer, raising the first error of one."""
        self._wait(self._turn ^ 1)
        self._wait(self._turn)

    def _wait(self, turn: int) -> None:
        pending, self._pending[turn] = self._pending[turn], None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _Feeder:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._helper is not None:
            self._helper.shutdown(wait=True)


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


def _view(buffer: np.ndarray, n_rows: int, n_columns: int) -> np.ndarray:
    """A C-contiguous (n_rows, n_columns) view on the front of a flat buffer."""
    return buffer[: n_rows * n_columns].reshape(n_rows, n_columns)


def _transpose_into(out: np.ndarray, block: np.ndarray, tile: int = 16) -> np.ndarray:
    """Copy block.T into the C-contiguous `out`, a few rows of `block` at a time.

    numpy's plain transposed copy strides through memory and runs about
    eight times slower than this cache-friendly tiling.
    """
    for start in range(0, len(block), tile):
        out[:, start : start + tile] = block[start : start + tile].T
    return out


# Output files.


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
    It is written CSV_BLOCK_ROWS queries at a time, so its Python strings
    never number more than a block's (1M x 50 lines at once would be GBs).
    """
    output_dir = writable_folder(output_dir)
    targets = [output_dir / name for name in (NEIGHBORS_FILE, DISTANCES_FILE, CSV_FILE)]
    try:
        with contextlib.ExitStack() as stack:
            neighbors_file, distances_file, csv_file = (stack.enter_context(atomic_path(t)) for t in targets)
            np.save(neighbors_file, indices.astype(np.int64, copy=False))
            np.save(distances_file, distances.astype(np.float32, copy=False))
            with csv_file.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["query", "rank", "neighbor", "distance"])
                _write_csv_rows(writer, distances, indices, query_paths, gallery_paths)
    except OSError as error:
        raise cannot_write(output_dir, error) from None
    return targets


# Queries per block of neighbors.csv: 8192 x 50 lines are a few tens of MB of Python strings.
CSV_BLOCK_ROWS = 8192


def _write_csv_rows(
    writer, distances: np.ndarray, indices: np.ndarray, query_paths: Sequence[str], gallery_paths: Sequence[str]
) -> None:
    """The (query, rank, neighbor, distance) lines, one block of queries at a time."""
    if len(query_paths) != len(indices):
        raise ValueError(f"{len(query_paths)} query paths for {len(indices)} rows of neighbours")
    k = indices.shape[1]
    gallery = np.asarray(gallery_paths, dtype=object)  # References to the same strings, for fancy indexing.
    ranks = np.arange(1, k + 1).tolist()
    for start in range(0, len(indices), CSV_BLOCK_ROWS):
        block = indices[start : start + CSV_BLOCK_ROWS]
        writer.writerows(
            zip(
                np.repeat(np.asarray(query_paths[start : start + len(block)], dtype=object), k),
                ranks * len(block),
                gallery[block.ravel()],
                (f"{distance:.6g}" for distance in distances[start : start + len(block)].ravel().tolist()),
                strict=True,
            )
        )
