"""All-against-all k nearest neighbours, exact or through a self-tuned faiss index at a measured recall (`find_neighbors`).

Exact all-against-all search costs N^2 (x D): about 15 s for 50,000 rows of
2,048 features on 4 cores, 2 hours for a million (see `exact_seconds`). An `ImageIndex`
(ivf or hnsw) answers every row in about N x sqrt(N) work instead, at a
recall its search parameter (nprobe, efSearch) sets. The index tunes that
parameter for recall@10 on held-out rows as it is built; here the goal is
recall@k of the rows themselves, so before the whole search it is measured
on a seeded random sample of rows (RECALL_SAMPLE at most) against their
exact neighbours, and raised along the index's own grid until it reaches
the target. The recall reported is that of the written results: the
sample's rows, read back from them. Rows tied with the exact k-th distance
count as found, as in the index's tuning.

The sample's rows are themselves indexed, as every row of an all-against-all
search is, so measuring them in place is the true measure of this job (the
index holds rows out only to tune for new images).

Results follow `exact_neighbors`: (distances float32, indices int64) of
shape (n_queries, k), nearest first, ties by row number, the same values
for each metric; a row is not its own neighbour unless `include_self`
(searched with k + 1 and dropped wherever it comes, or the last dropped
when it was not found). `manhattan` has no faiss index. A place the index
could not fill holds index -1 and distance NaN, as `ImageIndex.search` says.

Memory: the index holds the features (N x D float32, hnsw about 2 x 24 ids
a row more) beside the (n_queries, k) results; the features are read a block
of BLOCK_ROWS at a time, by the index, the sample's exact search
(`exact_radius`) and the search itself, and never copied whole.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import NamedTuple

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import BLOCK_ROWS, FeatureSet, feature_blocks
from image_toolkit.data_tools.progress import progress_bar
from image_toolkit.data_tools.search.index import (
    EF_SEARCH_GRID,
    MIN_ROWS_PER_LIST,
    NPROBE_GRID,
    ImageIndex,
    gather_rows,
    recall_within_radius,
)
from image_toolkit.data_tools.search.neighbors import available_cores, check_options, exact_neighbors, exact_radius

logger = logging.getLogger(__name__)

METHODS = ("exact", "ivf", "hnsw")
# DISTANCE_METRIC -> the index's metric; sqeuclidean is searched as euclidean and squared.
INDEX_METRICS = {"cosine": "cosine", "euclidean": "euclidean", "sqeuclidean": "euclidean", "inner_product": "inner_product"}
# Rows whose exact neighbours measure the recall: enough for about +-0.005 at recall 0.95 and k = 10.
RECALL_SAMPLE = 2000
# Fewer rows than two ivf lists need to train: exact search instead, which is instant at that size anyway.
MIN_APPROXIMATE_ROWS = 2 * MIN_ROWS_PER_LIST
# Above this many rows, the exact default prints a hint naming the approximate methods.
EXACT_HINT_ROWS = 50_000
# Seconds of one thread per pair of rows in the exact search, for the hint: the heaps' share, and the product's per feature.
# Measured (k = 10 to 50): 17 ns a pair at D = 512, 25 ns at 2,048, one thread; 6.8 ns with 2 at D = 128 (a shared machine).
EXACT_PAIR_SECONDS = 14e-9
EXACT_FEATURE_SECONDS = 5.5e-12


class Neighbors(NamedTuple):
    """What a search found, and how: `method` the one used, `recall` None for exact, `params` the index's settings."""

    distances: np.ndarray
    indices: np.ndarray
    method: str
    recall: dict | None
    params: dict


def check_method(method: str, metric: str, target_recall: float) -> None:
    """Reject an impossible method, metric or target before any file is read."""
    if method not in METHODS:
        raise OptionError(f"Unknown method. Expected one of {', '.join(METHODS)}. Received: method={method!r}")
    check_range("--target-recall", target_recall, low=0, high=1, low_open=True)
    if method != "exact" and metric not in INDEX_METRICS:
        raise OptionError(
            f"--method {method} searches a faiss index, which has no {metric} distance: use --method exact, "
            f"or one of {', '.join(INDEX_METRICS)}. Received: DISTANCE_METRIC={metric!r}"
        )


def exact_seconds(n_rows: int, dim: int, n_threads: int, n_queries: int | None = None) -> float:
    """About how long `exact_neighbors` takes: all against all (half the products) or n_queries against n_rows."""
    threads = available_cores() if n_threads == -1 else n_threads
    pairs = float(n_rows) * (n_rows if n_queries is None else n_queries)
    return pairs * (EXACT_PAIR_SECONDS + dim * EXACT_FEATURE_SECONDS) / threads


def exact_hint(n_rows: int, dim: int, n_threads: int, n_queries: int | None = None) -> str | None:
    """A one-line hint naming the approximate methods, when exact search has more pairs than EXACT_HINT_ROWS all against all; else None."""
    if n_rows * (n_rows if n_queries is None else n_queries) <= EXACT_HINT_ROWS**2:
        return None
    seconds = exact_seconds(n_rows, dim, n_threads, n_queries)
    shown = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
    threads = available_cores() if n_threads == -1 else n_threads
    return (f"Hint: exact search of {n_rows:,} images of {dim} features takes about {shown} on {threads} threads; "
            "--method ivf or hnsw is approximate and faster, at the recall --target-recall sets (default 0.95).")


def find_neighbors(
    features,
    *,
    k: int,
    method: str = "exact",
    metric: str = "cosine",
    queries=None,
    include_self: bool = False,
    target_recall: float = 0.95,
    sample_size: int = RECALL_SAMPLE,
    seed: int = 0,
    max_memory: int = 512 * 2**20,
    n_threads: int = -1,
    show: bool | None = None,
) -> Neighbors:
    """The k nearest rows of `features` to every row of `queries` (default: every row of `features`), by `method`.

    `exact` is `exact_neighbors`; `ivf` and `hnsw` search an index, whose
    parameter is raised until recall@k, measured on `sample_size` random
    queries (seeded) against exact search, reaches `target_recall`; if the
    grid ends first, the best setting is kept, with a warning. Fewer than
    MIN_APPROXIMATE_ROWS rows are searched exactly, with a warning.
    `features` and `queries` are any array-like `feature_blocks` reads
    (array, memmap, h5py dataset). `max_memory` and `n_threads` as for
    `exact_neighbors` (the sample's exact search); `show` draws progress
    bars (None: when stderr is a terminal).
    """
    check_method(method, metric, target_recall)
    check_range("sample_size", sample_size, low=1)
    exact = dict(k=k, metric=metric, queries=queries, include_self=include_self, max_memory=max_memory, n_threads=n_threads)
    if method == "exact":
        return Neighbors(*exact_neighbors(features, **exact), method="exact", recall=None, params={})
    check_options(metric=metric, n_threads=n_threads, max_memory=max_memory)
    n_rows = len(features)
    if queries is None:
        check_range("k", k, low=1, high=n_rows - (0 if include_self else 1),
                    why="the number of rows" if include_self else "the number of rows less the row itself")
    else:
        check_range("k", k, low=1, high=n_rows, why="the number of rows")
        if queries.shape[1] != features.shape[1]:
            raise DataError(
                f"queries have {queries.shape[1]} features per row but the set has {features.shape[1]}; "
                "extract both with the same model and layer."
            )
    if n_rows < MIN_APPROXIMATE_ROWS:
        warnings.warn(f"{n_rows} images are too few for --method {method} (at least {MIN_APPROXIMATE_ROWS}): "
                      "searched exactly instead.", stacklevel=2)
        return Neighbors(*exact_neighbors(features, **exact), method="exact", recall=None, params={})

    started = time.monotonic()
    index = _built_index(features, method, metric, target_recall, n_threads, show)
    search = _Search(index, metric, drop_self=queries is None and not include_self, k=k)
    targets, where = (features, "features") if queries is None else (queries, "queries")
    sample = np.sort(np.random.default_rng(seed).choice(len(targets), size=min(sample_size, len(targets)), replace=False))
    sample_rows = gather_rows(targets, [sample], where)[0]
    own_rows = sample if queries is None else None
    radius = exact_radius(features, sample_rows, k=k, metric=metric, own_rows=own_rows if search.drop_self else None,
                          rows=BLOCK_ROWS, max_memory=max_memory, n_threads=n_threads)
    tried = _calibrate(index, search, sample_rows, own_rows, radius, target_recall, k)
    logger.debug("Built and calibrated the %s index of %d rows in %.1f s", method, n_rows, time.monotonic() - started)

    distances = np.empty((len(targets), k), dtype=np.float32)
    indices = np.empty((len(targets), k), dtype=np.int64)
    with progress_bar(len(targets), "Neighbours", show=show) as advance:
        for start, block in feature_blocks(targets, rows=BLOCK_ROWS, where=where):
            stop = start + len(block)
            distances[start:stop], indices[start:stop] = search(block, np.arange(start, stop) if queries is None else None)
            advance(len(block))
    parameter = _parameter(index)
    value = recall_within_radius(search.keys(distances[sample]), indices[sample], radius, k)
    logger.debug("Recall@%d %.3f on %d sampled images (target %g), %s=%d",
                k, value, len(sample), target_recall, parameter, index.params_[parameter])
    recall = {"k": k, "sample": len(sample), "value": round(value, 4), "target": target_recall,
              "parameter": parameter, "tried": tried}
    return Neighbors(distances, indices, method=method, recall=recall, params=dict(index.params_))


def _built_index(features, method: str, metric: str, target_recall: float, n_threads: int, show: bool | None) -> ImageIndex:
    """An index of every row, its paths the row numbers (duplicate paths in a feature file must not merge rows).

    Its own tuning (recall@10 of held-out rows) gives the starting point;
    its warning when that misses the target is left out, since the
    calibration at k that follows measures again and warns itself.
    """
    ids = FeatureSet([str(row) for row in range(len(features))], features, {})
    index = ImageIndex(kind=method, metric=INDEX_METRICS[metric], target_recall=target_recall, n_threads=n_threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="--target-recall")
        return index.fit(ids, show=show)


class _Search:
    """Searches blocks of rows in an index; gives original row numbers, self dropped, ordered as `exact_neighbors` orders."""

    def __init__(self, index: ImageIndex, metric: str, *, drop_self: bool, k: int):
        self.index, self.metric, self.drop_self, self.k = index, metric, drop_self, k
        self.row_of = np.array(index.paths_, dtype=np.int64)  # Index position -> row number in the features.
        self.larger_is_nearer = metric == "inner_product"

    def keys(self, values: np.ndarray) -> np.ndarray:
        """Smaller is nearer, whatever the metric."""
        return -values if self.larger_is_nearer else values

    def __call__(self, block: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Distances and row numbers of the k nearest of each row of `block` (`rows`: its row numbers, to drop)."""
        values, found = self.index.search(block, k=self.k + self.drop_self)
        ids = np.where(found >= 0, self.row_of[np.maximum(found, 0)], -1)
        if self.metric == "sqeuclidean":
            values = np.square(values)
        if self.drop_self:
            values, ids = _without(values, ids, rows, self.k)
        order = np.lexsort((ids, self.keys(values)), axis=1)  # NaN (a place not filled) sorts last.
        return np.take_along_axis(values, order, 1), np.take_along_axis(ids, order, 1)


def _without(values: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k of k + 1 results that are not the query's own row: itself dropped wherever it is, else the last."""
    drop = ids == rows[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = np.argsort(drop, axis=1, kind="stable")[:, :k]  # The kept ones first, in their order.
    return np.take_along_axis(values, keep, 1), np.take_along_axis(ids, keep, 1)


def _calibrate(index: ImageIndex, search: _Search, sample_rows: np.ndarray, sample: np.ndarray | None,
               radius: np.ndarray, target_recall: float, k: int) -> list[list]:
    """Raise the index's search parameter along its grid until the sample's recall@k reaches the target.

    Returns every [value, recall] tried; ends at the first on target, or at
    the best one, with a warning, when the grid ends first.
    """
    parameter = _parameter(index)
    tried = []
    for value in _grid(index, k):
        _set_parameter(index, parameter, value)
        values, ids = search(sample_rows, sample)
        tried.append([value, round(recall_within_radius(search.keys(values), ids, radius, k), 4)])
        if tried[-1][1] >= target_recall:
            return tried
    value, recall = max(tried, key=lambda item: (item[1], -item[0]))
    _set_parameter(index, parameter, value)
    warnings.warn(
        f"--target-recall {target_recall} not reached: recall@{k} was at best {recall:.3f}, at {parameter}={value} "
        f"(tried {parameter} {tried[0][0]} to {tried[-1][0]}). Use --method ivf or exact, or lower --target-recall.",
        stacklevel=3,
    )
    return tried


def _parameter(index: ImageIndex) -> str:
    return "efSearch" if index.kind == "hnsw" else "nprobe"


def _grid(index: ImageIndex, k: int) -> list[int]:
    """The tuned value, then the larger ones of the index's grid (ivf: up to every list; hnsw: efSearch below k + 1 is k + 1)."""
    tuned = index.params_[_parameter(index)]
    if index.kind == "hnsw":
        least = max(tuned, k + 1)
        return [least, *(value for value in EF_SEARCH_GRID if value > least)]
    nlist = index.params_["nlist"]
    return [tuned, *(value for value in NPROBE_GRID if tuned < value < nlist), *([nlist] if tuned < nlist else [])]


def _set_parameter(index: ImageIndex, parameter: str, value: int) -> None:
    """Set nprobe or efSearch on the faiss index and in `params_`, which the index's search reads."""
    if parameter == "efSearch":
        index.index_.hnsw.efSearch = int(value)
    else:
        index.index_.nprobe = int(value)
    index.params_[parameter] = int(value)
