"""An approximate nearest-neighbour index of image features that tunes itself, kept in a folder.

`ImageIndex` wraps one faiss index of the feature rows and the image paths:

- kind `ivf` (default): `IndexIVFFlat`, k-means lists trained on the data;
  the fastest to build and, one query per call, to search at recall@10 0.95
  on both data sets of `benchmarks/bench_ann.py` (see README).
- kind `hnsw`: `IndexHNSWFlat`, a graph (M=24, efConstruction=48: on
  bench_ann, as fast to search as M=32, 80 and 2.2x faster to build).
- kind `ivfpq`: faiss's fast-scan IVF-PQ (`IVF{nlist},PQ{m}x4fs`: 4-bit codes
  compared with SIMD lookups) behind an exact re-rank (`IndexRefineFlat`):
  the lists propose `k_factor * k` rows by their codes and the exact rows,
  kept beside the codes, order them. Fast to build and to search.
- kind `flat`: exact search, for small sets and as the reference.

Metric `cosine` (default) is the inner product of L2-normalised rows; their
lengths are kept (`norms.npy`) so the original features can be given back,
e.g. class scores for a keyword query. `euclidean` and `inner_product` index
the rows as they are. Reported values follow `toolkit compute-distances`:
cosine distance (1 - similarity), euclidean distance, or the inner product
(larger is nearer).

Self-tuning: building holds out a random sample of the rows (a tenth, at
least 100 or half of a small set, at most 1000), indexes the others, finds
the held-out rows' exact 10 nearest indexed rows, raises `efSearch` (hnsw)
or `nprobe` (ivf, ivfpq) along a fixed grid until recall@10 reaches `target_recall`,
and then adds the held-out rows too (they come last in the index and in
`paths.json`). Rows tied with the exact 10th neighbour count as found. The
chosen value and the measured recall are saved. The sample is held out
properly because an indexed row searched for (even leaving itself out of the
results) finds its own place in the graph: on clustered 64-d data that gave
hnsw a recall of 0.99 where new images got 0.88. `add` tunes again the same
way on a sample of the new rows when it adds at least 100 at once; with fewer
it keeps the tuned value.

The folder holds plain files, no pickle: `index.faiss` (faiss's own format),
`paths.json` (a JSON list), `metadata.json`, and `norms.npy` for cosine,
checked against each other on load. They change together, as one unit:
`save` writes the complete set into a new sub-folder (`set-1`, `set-2`,
...), flushes it to disk, and only then replaces `index.json`, the small
manifest naming the current set (`os.replace`, atomic). Loading reads the set
`index.json` names, so a crash at any moment leaves the old index or the new
one, never a mix. Older sets, and a half-written set a crash left, are
removed after the swap (or by the next save). A folder without `index.json`
holds the four files at its top level (toolkit versions before the manifest)
and loads as before; saving into it moves it to the new layout. Only sets
holding nothing but index files are removed, so a user's own `set-2/` stays.
One writer at a time: two concurrent `index add` runs on one folder both
finish whole, and the later manifest wins (the other's rows are not in it).

Memory: the index holds the features (N x D float32) plus, for hnsw, about
2 * M ids per row, for ivfpq m / 2 bytes of codes per row: ivfpq's codes
only propose candidates, and the exact rows beside them re-rank them, so the
recall stays tunable (k_factor) but the rows stay too. Building and adding
stream the features a block at a time (they may stay on disk: a memmap or an
h5 dataset, see `open_features`): beyond the index, memory holds one block,
the held-out rows and, while ivf or ivfpq trains, its sample of at most 64
rows per list; tuning reads the stored rows back a block at a time. Loading
memory-maps a large index file (see `ImageIndex.load`), so search and serve
start without reading it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import faiss
import numpy as np

from image_toolkit.data_tools.atomic import atomic_path, cannot_write, flush_to_disk, make_folder, remove_empty, write_text
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import (
    COMPARABLE_KEYS,
    REEXTRACT,
    FeatureSet,
    anchored_model,
    check_features,
    feature_blocks,
    located_model,
)
from image_toolkit.data_tools.formats.json_files import read_json
from image_toolkit.data_tools.progress import progress_bar, track
from image_toolkit.data_tools.search.neighbors import ALL_CORES, NearestRows, available_cores

logger = logging.getLogger(__name__)

KINDS = ("hnsw", "ivf", "ivfpq", "flat")
METRICS = ("cosine", "euclidean", "inner_product")
FAISS_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "euclidean": faiss.METRIC_L2, "inner_product": faiss.METRIC_INNER_PRODUCT}
# The metric the exact search (`NearestRows`) computes on the stored rows, giving faiss's own values.
EXACT_METRICS = {"cosine": "inner_product", "euclidean": "sqeuclidean", "inner_product": "inner_product"}

INDEX_FILE, PATHS_FILE, METADATA_FILE, NORMS_FILE = "index.faiss", "paths.json", "metadata.json", "norms.npy"
# The manifest naming the current set of the four files, and the sub-folders holding each set.
MANIFEST_FILE, SET_PREFIX = "index.json", "set-"
SET_NAME = re.compile(rf"{SET_PREFIX}(\d+)")
FORMAT = "image-toolkit index"
FORMAT_VERSION = 1
BUILD = "Build it with toolkit index build FEATURES INDEX_DIR."

# Search-time settings tried in order by `_tune`, each about 1.5 times the last.
EF_SEARCH_GRID = (10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
TUNE_SAMPLE = 1000
TUNE_K = 10
# `add` tunes again only with this many new rows at once: fewer would measure recall too roughly.
MIN_ADDED_TO_TUNE = 100
# faiss's k-means wants at least this many training rows per list.
MIN_ROWS_PER_LIST = 39
# ivfpq trains 16 centroids (4 bits) per sub-quantizer: smaller sets are repeated up to this many rows to train.
MIN_PQ_TRAIN = 16 * MIN_ROWS_PER_LIST
# ivfpq re-ranks k_factor * k rows exactly; tuning tries these, smallest first (see _tune).
K_FACTOR_GRID = (2, 4, 8, 16, 32, 64)
# ivfpq's k_factor when it is neither given nor tuned (too few rows).
UNTUNED_K_FACTOR = 8
# Rows handed to faiss's add (and read back to tune) at once: one block in memory, and a progress bar can follow.
ADD_BLOCK = 10_000
# ivf and ivfpq train on at most this many rows per list (faiss's k-means would take 256): see `_training_rows`.
TRAIN_ROWS_PER_LIST = 64
# `load` maps an index file larger than this into memory, unless told (see `load`).
MMAP_BYTES = 256 * 2**20


class faiss_threads:  # Lower case: it replaces a contextlib function of this name, and callers keep it.
    """Bound faiss's OpenMP threads (-1: all cores) inside a `with` block.

    faiss's own BLAS runs on the same OpenMP threads, so this is all a faiss
    call needs. `image_toolkit.data_tools.search.neighbors.thread_limit` also bounds numpy's BLAS
    through threadpoolctl, which costs about 0.5 ms a call: as much as a
    whole one-query search. A class, not a generator, and nothing set when
    the count is already right: a one-query search takes tens of microseconds.
    """

    __slots__ = ("previous", "wanted")

    def __init__(self, n_threads: int):
        self.wanted = available_cores() if n_threads == -1 else n_threads

    def __enter__(self) -> None:
        self.previous = faiss.omp_get_max_threads()
        if self.previous != self.wanted:
            faiss.omp_set_num_threads(self.wanted)

    def __exit__(self, *exc_info) -> None:
        if self.previous != self.wanted:
            faiss.omp_set_num_threads(self.previous)


def default_nlist(n: int) -> int:
    """ivf lists for n rows when none are given: about 4 sqrt(n), as faiss advises, but at most one per MIN_ROWS_PER_LIST rows."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_ROWS_PER_LIST))


def pq_divisors(dim: int) -> list[int]:
    """The sub-quantizer counts a product quantizer of `dim` features accepts: the divisors of dim."""
    return [m for m in range(1, dim + 1) if dim % m == 0]


def default_pq_m(dim: int) -> int:
    """ivfpq's default sub-quantizers: the largest divisor of `dim` up to dim / 2 (two features per 4-bit code)."""
    return max(m for m in pq_divisors(dim) if 2 * m <= dim) if dim > 1 else 1


def check_pq_m(pq_m: int, dim: int) -> None:
    """An OptionError naming the valid values unless `pq_m` divides `dim`."""
    check_range("--pq-m", pq_m, low=1)
    if dim % pq_m:
        valid = pq_divisors(dim)
        nearest = min(valid, key=lambda m: (abs(m - pq_m), m))
        raise OptionError(
            f"--pq-m must divide the {dim} features per row (nearest: {nearest}). "
            f"Expected one of {', '.join(map(str, valid))}. Received: --pq-m={pq_m}"
        )


def check_index_options(*, kind: str, metric: str, target_recall: float | None, n_threads: int) -> None:
    """Reject impossible options before any file is read."""
    if kind not in KINDS:
        raise OptionError(f"Unknown index kind. Expected one of {', '.join(KINDS)}. Received: kind={kind!r}")
    if metric not in METRICS:
        raise OptionError(f"Unknown metric. Expected one of {', '.join(METRICS)}. Received: metric={metric!r}")
    if target_recall is not None:
        check_range("--target-recall", target_recall, low=0, high=1, low_open=True)
    check_range("--n-jobs", n_threads, low=1, special=ALL_CORES)


class ImageIndex:
    """Image paths and their features in a faiss index, searchable by feature rows.

    Constructor arguments are stored as given and checked in `fit`. Learned
    state: `index_` (the faiss index), `paths_`, `features_metadata_` (how
    the features were made), `norms_` (row lengths, cosine only), `params_`
    (the faiss settings in use), `tuning_` (target, chosen value, recall)
    and `mapped_` (loaded memory-mapped, so read-only).
    `paths_` and the index list the images in index order: the rows held out
    for tuning come after the others of the same `fit` or `add`.

    `m` and `ef_construction` shape the hnsw graph; `nlist` is the number of
    ivf or ivfpq lists (default round(4 * sqrt(N)), at most N / 39). `pq_m`
    is ivfpq's number of 4-bit sub-quantizers (a divisor of the feature
    count; default the largest up to D / 2) and `k_factor` how many times k
    rows its codes propose for the exact re-rank (default None: tuned).
    """

    def __init__(
        self,
        *,
        kind: str = "ivf",
        metric: str = "cosine",
        target_recall: float | None = 0.95,
        m: int = 24,
        ef_construction: int = 48,
        nlist: int | None = None,
        pq_m: int | None = None,
        k_factor: int | None = None,
        n_threads: int = -1,
    ):
        self.kind = kind
        self.metric = metric
        self.target_recall = target_recall
        self.m = m
        self.ef_construction = ef_construction
        self.nlist = nlist
        self.pq_m = pq_m
        self.k_factor = k_factor
        self.n_threads = n_threads

    def get_config(self) -> dict:
        """The constructor arguments, as given."""
        return {
            "kind": self.kind, "metric": self.metric, "target_recall": self.target_recall, "m": self.m,
            "ef_construction": self.ef_construction, "nlist": self.nlist, "pq_m": self.pq_m,
            "k_factor": self.k_factor, "n_threads": self.n_threads,
        }

    # Building and growing.

    def fit(self, feature_set: FeatureSet, *, show: bool | None = None) -> ImageIndex:
        """Index every row of `feature_set`, tuning the search to `target_recall` on held-out rows.

        `feature_set.features` may stay on disk (a memmap, an h5 dataset: see
        `open_features`): it is read a block at a time. `show` draws progress
        bars of the adding and the tuning on stderr (None: when stderr is a
        terminal; False for --quiet).
        """
        check_index_options(kind=self.kind, metric=self.metric, target_recall=self.target_recall, n_threads=self.n_threads)
        check_range("m", self.m, low=2)
        check_range("ef_construction", self.ef_construction, low=1)
        if self.nlist is not None:
            check_range("nlist", self.nlist, low=1)
        if self.k_factor is not None:
            check_range("--k-factor", self.k_factor, low=1)
        dim = checked_shape(feature_set, "features")
        keep = unique_mask(feature_set.paths, set())
        count = int(keep.sum())
        if self.nlist is not None and self.kind in ("ivf", "ivfpq"):
            check_range("nlist", self.nlist, high=count, why="the number of rows")
        if self.pq_m is not None and self.kind == "ivfpq":
            check_pq_m(self.pq_m, dim)
        started = time.monotonic()
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.m, FAISS_METRICS[self.metric])
            index.hnsw.efConstruction = self.ef_construction
            params = {"M": self.m, "efConstruction": self.ef_construction, "efSearch": index.hnsw.efSearch}
        elif self.kind == "ivf":
            nlist = self.nlist or default_nlist(count)
            quantizer = faiss.IndexFlat(dim, FAISS_METRICS[self.metric])
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, FAISS_METRICS[self.metric])
            params = {"nlist": nlist, "nprobe": index.nprobe}
        elif self.kind == "ivfpq":
            nlist = self.nlist or default_nlist(count)
            pq_m = self.pq_m or default_pq_m(dim)
            index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x4fs,RFlat", FAISS_METRICS[self.metric])
            index.k_factor = self.k_factor or UNTUNED_K_FACTOR
            params = {"nlist": nlist, "pq_m": pq_m, "k_factor": int(index.k_factor), "nprobe": 1}
        else:
            index = faiss.IndexFlat(dim, FAISS_METRICS[self.metric])
            params = {}
        self.index_, self.params_, self.tuning_, self.mapped_ = index, params, {}, False
        self.paths_, self.norms_ = [], (np.empty(0, dtype=np.float32) if self.metric == "cosine" else None)
        self.features_metadata_ = dict(feature_set.metadata)
        self._grow(feature_set, keep, self.target_recall, tune_at_least=1, show=show, where="features")
        logger.debug("Indexed %d rows of %d features (%s, %s) in %.1f s",
                     self.size, dim, self.kind, self.metric, time.monotonic() - started)
        return self

    def add(self, feature_set: FeatureSet, *, where: str = "the new features", show: bool | None = None) -> ImageIndex:
        """Add the rows of `feature_set` whose paths are not indexed yet.

        The features must come from the same model and layer as the indexed
        ones, and may stay on disk, as for `fit`. With at least 100 new rows,
        the search is tuned again, on held-out new rows; with fewer, the
        tuned setting is kept. An ivf index keeps its lists: new rows join
        the nearest list. An index loaded memory-mapped is read-only. `show`
        as for `fit`.
        """
        self._check_fitted()
        if self.mapped_:
            raise OptionError("This index was loaded memory-mapped (read-only); load it with "
                              "ImageIndex.load(folder, mmap=False) to add images.")
        self.check_comparable(checked_shape(feature_set, where), feature_set.metadata, where)
        keep = unique_mask(feature_set.paths, set(self.paths_))
        if not keep.any():
            logger.info("All %d images are already in the index; nothing to add.", len(feature_set.paths))
            return self
        target = self.tuning_.get("target_recall", self.target_recall)
        self._grow(feature_set, keep, target, tune_at_least=MIN_ADDED_TO_TUNE, show=show, where=where)
        logger.debug("Added %d images; the index holds %d.", int(keep.sum()), self.size)
        return self

    def _grow(self, feature_set: FeatureSet, keep: np.ndarray, target: float | None, *, tune_at_least: int,
              show: bool | None, where: str) -> None:
        """Add the rows `keep` marks; to tune, hold a sample of them out, tune on it against the rest, then add it.

        Held-out rows go last, so the index (and `paths_`) lists them after
        the others. Rows searched while they are in the index would find their
        own place in the graph or list, and overstate recall for new images.

        Two passes over the features, a block at a time: the first checks
        every row (so nothing is added from a damaged file) and gathers the
        held-out rows and, for an untrained ivf or ivfpq index, its training
        sample; the second adds the rows. Beyond the index, memory holds one
        block, the held-out rows and, while training, the training sample.
        """
        kept = np.flatnonzero(keep)
        tune = target is not None and self.kind != "flat" and len(kept) >= tune_at_least
        held_rows = kept[held_out_sample(len(kept), len(self.paths_), tune=tune)]
        held = len(held_rows)
        train_rows = self._training_rows(kept) if not self.index_.is_trained else np.empty(0, dtype=np.int64)
        queries, training = gather_rows(feature_set.features, [held_rows, train_rows], where)
        if not self.index_.is_trained:
            self._train(self._prepared(training, in_place=True)[0])
            del training  # Gone before the adding: the sample and the index are never held together.
        added = keep.copy()
        added[held_rows] = False
        self._reserve(len(kept))
        norms = [self.norms_] if self.norms_ is not None else None
        with faiss_threads(self.n_threads), progress_bar(int(added.sum()), "Indexing", show=show if added.any() else False) as advance:
            for start, block in feature_blocks(feature_set.features, rows=ADD_BLOCK, where=where):
                chosen = added[start : start + len(block)]
                rows, block_norms = self._prepared(block if chosen.all() else block[chosen], in_place=not chosen.all())
                self.index_.add(rows)
                advance(len(rows))
                if norms is not None:
                    norms.append(block_norms)
        paths = feature_set.paths
        self.paths_ = self.paths_ + [paths[i] for i in np.flatnonzero(added)] + [paths[i] for i in held_rows]
        queries, query_norms = self._prepared(queries, in_place=True)
        if norms is not None:
            self.norms_ = np.concatenate([*norms, query_norms])
        if held:
            self._tune(queries, target, show=show)
            with faiss_threads(self.n_threads):
                self.index_.add(queries)
        else:
            self.tuning_ = untuned_record(self.tuning_, kind=self.kind, target=target, parameter=self._parameter_name(),
                                          value=self._parameter_value(), tune_at_least=tune_at_least)

    def _training_rows(self, kept: np.ndarray) -> np.ndarray:
        """The rows ivf or ivfpq trains on: all of `kept`, or a random sample of TRAIN_ROWS_PER_LIST per list.

        faiss's k-means would itself sample 256 rows per list; fewer keep the
        sample well below the size of the index (a quarter of 1M rows with
        the default 4000 lists), and it is freed before the rows are added.
        On 200k x 256 clustered rows, 1789 lists trained on 114k rows reached
        recall@10 0.98 at nprobe 4. A set of at most that many rows trains whole, in order, as before.
        """
        most = TRAIN_ROWS_PER_LIST * self._ivf().nlist
        if len(kept) <= most:
            return kept
        return np.sort(np.random.default_rng(len(kept)).choice(kept, size=most, replace=False))

    def _train(self, rows: np.ndarray) -> None:
        """k-means lists (and ivfpq's codebooks) on prepared rows; a small ivfpq set is repeated to train.

        ivf also gets a direct map, so that `reconstruct` gives rows back (keyword search, tuning).
        """
        with faiss_threads(self.n_threads):
            if self.kind == "ivfpq" and len(rows) < MIN_PQ_TRAIN:  # k-means needs 16 rows per sub-quantizer, 39 per list.
                rows = np.resize(rows, (MIN_PQ_TRAIN, rows.shape[1]))
            self.index_.train(rows)
        if self.kind == "ivf":
            self.index_.make_direct_map()

    def _reserve(self, rows: int) -> None:
        """Room for `rows` more in the flat store of exact rows (flat, hnsw, ivfpq's re-rank), taken at once.

        faiss grows the store as a std::vector, doubling it: each step holds
        the old and the new copy together (a peak of 1.65 x the store at
        200k x 256). Growing it to the final size and back keeps the
        capacity, so adding block by block never copies. ivf's lists grow
        one by one, each small.
        """
        if self.kind == "ivf":
            return
        store = faiss.downcast_index({"flat": lambda: self.index_, "hnsw": lambda: self.index_.storage,
                                      "ivfpq": lambda: self.index_.refine_index}[self.kind]())
        size = store.codes.size()
        store.codes.resize(size + rows * store.code_size)
        store.codes.resize(size)

    def _prepared(self, rows: np.ndarray, *, in_place: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows as faiss stores them (L2-normalised for cosine) and their lengths (cosine only).

        Normalising writes into a copy, unless `in_place` says the caller's
        rows are its own to change (a gathered sample, a selected block).
        """
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.metric != "cosine":
            return rows, None
        if not in_place:
            rows = rows.copy()
        norms = np.linalg.norm(rows, axis=1).astype(np.float32)
        faiss.normalize_L2(rows)  # Leaves a zero row at zero.
        return rows, norms

    # Searching.

    def search(self, queries: np.ndarray, *, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed rows of every query: (values float32, indices int64), both (n_queries, k).

        Values are distances (cosine, euclidean; nearest first) or inner
        products (largest first). k above the index size is clamped to it,
        with a warning. An approximate index may find fewer than k rows for a
        query: the missing places hold index -1 and value NaN.
        """
        self._check_fitted()
        k = self._checked_k(k)
        # The web app's case is one query a call: the common input skips check_features' copies and row scan.
        if not (isinstance(queries, np.ndarray) and queries.ndim == 2 and queries.dtype == np.float32
                and queries.size and np.isfinite(queries).all()):
            queries = check_features(queries, "queries")
        if queries.shape[1] != self.dim:
            raise DataError(
                f"queries: {queries.shape[1]} features per row, but the index has {self.dim}; "
                f"extract the queries with the index's model and layer ({_describe(self.features_metadata_)})."
            )
        if self.metric == "cosine":  # A normalised copy; no lengths, unlike _prepared.
            queries = np.array(queries, dtype=np.float32, order="C")
            faiss.normalize_L2(queries)
        else:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
        with faiss_threads(self.n_threads):
            raw, indices, complete = self._search_raw(queries, k)
        return self._reported(raw, indices, complete), indices

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """faiss's search at the tuned setting; queries it leaves short of k results are searched again exhaustively.

        faiss's hnsw keeps only efSearch candidates, so efSearch is raised to
        k for the search; ivf finds fewer than k rows when the probed lists
        hold fewer. Also says whether every query found k rows after that.
        """
        if self.kind == "hnsw" and k > self.params_["efSearch"]:  # params_ follows the index: no SWIG look-ups.
            raw, indices = self.index_.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=k))
        else:  # faiss's search_c, as its Python search calls it, without the checks `search` has made already.
            raw, indices = np.empty((len(queries), k), dtype=np.float32), np.empty((len(queries), k), dtype=np.int64)
            self.index_.search_c(len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(raw), faiss.swig_ptr(indices))
        if self.kind == "flat" or indices[:, -1].min() >= 0:  # faiss fills from the front: the last column tells.
            return raw, indices, True
        short = np.flatnonzero((indices < 0).any(axis=1))
        if self.kind == "hnsw":
            exhaustive = faiss.SearchParametersHNSW(efSearch=max(self.size, k))
        elif self.kind == "ivf":
            exhaustive = faiss.SearchParametersIVF(nprobe=self.index_.nlist)
        else:
            every_list = faiss.SearchParametersIVF(nprobe=self._ivf().nlist)
            exhaustive = faiss.IndexRefineSearchParameters(k_factor=self.index_.k_factor, base_index_params=every_list)
        raw[short], indices[short] = self.index_.search(queries[short], k, params=exhaustive)
        return raw, indices, False

    def _ivf(self) -> faiss.IndexIVF:
        """The inverted lists of an ivf or ivfpq index (ivfpq's sit behind the re-rank)."""
        return faiss.extract_index_ivf(self.index_)

    def _checked_k(self, k: int) -> int:
        check_range("k", k, low=1)
        if k > self.size:
            warnings.warn(f"k={k} is more than the {self.size} indexed images; returning all {self.size}.", stacklevel=3)
            return self.size
        return k

    def _reported(self, raw: np.ndarray, indices: np.ndarray, complete: bool = False) -> np.ndarray:
        """faiss's values (inner products, squared L2) as users see them, in place; NaN where no row was found.

        `complete`: every query found k rows (an exact index always does), so there is no -1 to look for.
        """
        if self.metric == "cosine":
            values = np.subtract(1, raw, out=raw)
            np.maximum(values, 0, out=values)  # Rounding: 1 - 1.0000001. (Not np.clip: slower on small arrays.)
        elif self.metric == "euclidean":
            values = np.sqrt(np.maximum(raw, 0, out=raw), out=raw)
        else:
            values = raw  # faiss's own array, not shared with anything: no copy.
        if not complete:
            values[indices < 0] = np.nan
        return values

    def vectors(self) -> np.ndarray:
        """The indexed features as given (N x D float32), read back from the index, in the order of `paths_`."""
        self._check_fitted()
        rows = self.index_.reconstruct_n(0, self.size)
        return rows * self.norms_[:, None] if self.norms_ is not None else rows

    def rows(self, ids) -> np.ndarray:
        """The indexed features as given of the rows `ids` (M x D float32), read from the index by id.

        What a server reads per request (a query's rows, a centroid's): only
        those rows, never the N x D copy of `vectors`.
        """
        self._check_fitted()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = self.index_.reconstruct_batch(ids)
        return rows * self.norms_[ids, None] if self.norms_ is not None else rows

    def _exact_radius(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Each query's exact k-th nearest faiss value among the indexed rows, as a key (smaller is nearer).

        The rows are read back from the index a block at a time: never all N rows at once.
        """
        nearest = NearestRows(queries, k=k, metric=EXACT_METRICS[self.metric], n_threads=self.n_threads)
        for start in range(0, self.size, ADD_BLOCK):
            nearest.add(self.index_.reconstruct_n(start, min(ADD_BLOCK, self.size - start)))
        return nearest.radius()

    # Tuning.

    def _tune(self, queries: np.ndarray, target_recall: float, *, k: int = TUNE_K, show: bool | None = None) -> dict:
        """Raise efSearch / nprobe along its grid until recall@k of `queries`, rows not in the index, reaches the target.

        The exact k nearest indexed rows of each query are the truth; a row
        found at the exact k-th distance counts as found (ties). Stores and
        returns the target, the parameter, its value, the measured recall
        and every (value, recall) tried.

        ivfpq first chooses its re-rank depth, unless `k_factor` was given:
        searching every list, so that only the 4-bit codes lose neighbours,
        the smallest k_factor of K_FACTOR_GRID whose recall is halfway from
        the target to 1 (0.975 for 0.95), which leaves nprobe room to reach
        the target; then nprobe is raised as for ivf; then k_factor is
        lowered again while the recall at that nprobe stays on target.
        `k_factor_tried` lists every (k_factor, recall) in that order.
        """
        started = time.monotonic()
        k = min(k, self.size)
        radius = self._exact_radius(queries, k)
        larger_is_nearer = self.index_.metric_type == faiss.METRIC_INNER_PRODUCT
        parameter = self._parameter_name()

        def measured() -> float:
            with faiss_threads(self.n_threads):
                raw, ids = self.index_.search(queries, k)
            return recall_within_radius(-raw if larger_is_nearer else raw, ids, radius, k)

        if self.kind == "hnsw":
            grid = EF_SEARCH_GRID
        else:
            nlist = self._ivf().nlist
            grid = tuple(v for v in NPROBE_GRID if v < nlist) + (nlist,)
        factors = []
        if self.kind == "ivfpq" and self.k_factor is None:
            self._set_search_parameter(nlist)
            for factor in track(K_FACTOR_GRID, "Tuning k_factor", show=show):
                self._set_k_factor(factor)
                factors.append([factor, round(measured(), 4)])
                if factors[-1][1] >= (1 + target_recall) / 2:
                    break
            else:  # The best, and the smallest of equals.
                self._set_k_factor(max(factors, key=lambda item: (item[1], -item[0]))[0])
        tried = []
        for value in track(grid, f"Tuning {parameter}", show=show):
            self._set_search_parameter(value)
            tried.append([value, round(measured(), 4)])
            if tried[-1][1] >= target_recall:
                break
        if factors and tried[-1][1] >= target_recall:
            # The halfway margin may be more than this nprobe needs: a smaller k_factor re-ranks fewer rows.
            for factor in sorted((f for f in K_FACTOR_GRID if f < self.params_["k_factor"]), reverse=True):
                previous = self.params_["k_factor"]
                self._set_k_factor(factor)
                recall = round(measured(), 4)
                factors.append([factor, recall])
                if recall < target_recall:
                    self._set_k_factor(previous)
                    break
                tried[-1][1] = recall
        value, recall = tried[-1]
        if recall < target_recall:
            value, recall = max(tried, key=lambda item: item[1])
            self._set_search_parameter(value)
            more = {"hnsw": "a larger --m or --ef-construction", "ivfpq": "a larger --k-factor or --pq-m"}.get(self.kind, "")
            warnings.warn(
                f"--target-recall {target_recall} not reached: recall@{k} was at best {recall:.3f}, at {parameter}={value} "
                f"(tried {parameter} {tried[0][0]} to {tried[-1][0]}). Rebuild with {more + ', or ' if more else ''}"
                "--kind flat for exact search, or lower --target-recall.", stacklevel=3
            )
        self.tuning_ = {"target_recall": target_recall, "k": k, "sample": len(queries), "recall": recall,
                        "parameter": parameter, "value": value, "tried": tried, "indexed": self.size}
        if factors:
            self.tuning_["k_factor_tried"] = factors
        logger.info("Tuned %s=%s: recall@%d %.3f on %d held-out images against %d (target %g), %.1f s",
                    parameter, value, k, recall, len(queries), self.size, target_recall, time.monotonic() - started)
        return self.tuning_

    def _parameter_name(self) -> str | None:
        return {"hnsw": "efSearch", "ivf": "nprobe", "ivfpq": "nprobe"}.get(self.kind)

    def _parameter_value(self) -> int | None:
        name = self._parameter_name()
        return self.params_[name] if name else None

    def _set_k_factor(self, value: int) -> None:
        self.index_.k_factor = float(value)
        self.params_["k_factor"] = int(value)

    def _set_search_parameter(self, value: int | None) -> None:
        if self.kind == "hnsw":
            self.index_.hnsw.efSearch = int(value)
            self.params_["efSearch"] = int(value)
        elif self.kind in ("ivf", "ivfpq"):
            self._ivf().nprobe = int(value)
            self.params_["nprobe"] = int(value)

    # Describing.

    @property
    def size(self) -> int:
        return int(self.index_.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index_.d)

    def info(self) -> dict:
        """Size, kind, metric, faiss parameters, tuning and how the features were made."""
        self._check_fitted()
        return {
            "size": self.size, "dim": self.dim, "kind": self.kind, "metric": self.metric,
            "params": dict(self.params_), "tuning": dict(self.tuning_), "features": dict(self.features_metadata_),
        }

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise OptionError("This ImageIndex holds nothing yet: call fit(features) or ImageIndex.load(folder) first.")

    def check_comparable(self, dim: int, metadata: dict, what: str) -> None:
        """A DataError naming `what` unless features of this width and metadata can join or query the index."""
        if dim != self.dim:
            raise DataError(
                f"{what}: {dim} features per row, but the index has {self.dim}; "
                f"extract them with the index's model and layer ({_describe(self.features_metadata_)})."
            )
        for key in COMPARABLE_KEYS:
            mine, theirs = self.features_metadata_.get(key), metadata.get(key)
            if mine is not None and theirs is not None and mine != theirs:
                raise DataError(
                    f"{what}: made with {key}={theirs!r}, but the index with {key}={mine!r}; "
                    "only features of the same model and layer can be compared."
                )

    # Saving and loading.

    def close(self) -> None:
        """Nothing to release: a faiss index is memory or a mapped file (`SearchIndex.close` is for servers)."""

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Write the index folder as one unit: a new set of files, then the manifest naming it; return the set's files.

        Until `index.json` is replaced, loading finds the previous index
        whole; a failed save leaves the folder as it was (a new folder is
        removed again).
        """
        self._check_fitted()
        directory = Path(directory)
        created = make_folder(directory)
        # An index.faiss at the top is an old-layout index (or its remains after a crash past the manifest):
        # its four files go once the new set is in place. Without it, no top-level file is the index's.
        old_layout = (directory / INDEX_FILE).exists()
        folder = directory / f"{SET_PREFIX}{_next_set_number(directory)}"
        try:  # Outside the clean-up below: a set of that name made meanwhile by another writer is not ours to remove.
            folder.mkdir()
        except OSError as error:
            remove_empty(created)
            raise cannot_write(directory, error) from None
        try:
            files = self._write_set(folder, anchored_model(self.features_metadata_, directory))
            write_text(directory / MANIFEST_FILE, json.dumps({"format": FORMAT, "current": folder.name}))
        except (OSError, DataError) as error:
            shutil.rmtree(folder, ignore_errors=True)
            remove_empty(created)
            if isinstance(error, DataError):
                raise
            raise cannot_write(directory, error) from None
        flush_to_disk(directory)  # The manifest's new name on disk before the set it replaced goes.
        _remove_stale(directory, current=folder.name, old_layout=old_layout)
        return files

    def _write_set(self, folder: Path, features_metadata: dict) -> list[Path]:
        """The four files (three without norms) in `folder`, each flushed to disk before the manifest may name them."""
        metadata = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": self.get_config(),
            "size": self.size, "dim": self.dim, "params": self.params_, "tuning": self.tuning_,
            "features": features_metadata,
        }
        files = [folder / name for name in (INDEX_FILE, PATHS_FILE, METADATA_FILE)]
        try:
            faiss.write_index(self.index_, str(files[0]))
        except RuntimeError as error:  # faiss's own error for a file it cannot write.
            raise OSError(str(error).strip().splitlines()[-1]) from None
        files[1].write_text(json.dumps(self.paths_, ensure_ascii=False), encoding="utf-8")
        files[2].write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
        if self.norms_ is not None:
            files.append(folder / NORMS_FILE)
            np.save(files[3], self.norms_)
        for path in [*files, folder]:
            flush_to_disk(path)
        return files

    @classmethod
    def load(cls, directory: str | os.PathLike, *, n_threads: int = -1, mmap: bool | None = None) -> ImageIndex:
        """Read the current set of an index folder written by `save`; a missing or damaged one is a DataError naming the file.

        `mmap=True` maps `index.faiss` into memory instead of reading it
        (faiss's IO_FLAG_MMAP_IFC, every kind): loading takes milliseconds
        whatever the size, and a search reads only the pages it touches,
        from the page cache the OS shares and can reclaim. A mapped index is
        read-only (`add` refuses it). None (default): mapped when the file
        is larger than MMAP_BYTES.
        """
        check_range("--n-jobs", n_threads, low=1, special=ALL_CORES)
        directory = Path(directory)
        if not directory.is_dir():
            raise DataError(f"{directory}: no such index folder. {BUILD}")
        top, directory = directory, index_set(directory)
        missing = [name for name in (INDEX_FILE, PATHS_FILE, METADATA_FILE) if not (directory / name).is_file()]
        if missing:
            raise DataError(f"{directory}: not an index folder (no {', '.join(missing)}). {BUILD}")
        metadata = read_json(directory / METADATA_FILE, dict, fix=BUILD)
        if metadata.get("format") != FORMAT or not isinstance(metadata.get("config"), dict):
            raise DataError(f"{directory / METADATA_FILE}: not the metadata of a toolkit index. {BUILD}")
        version = metadata.get("format_version", 0)
        if not isinstance(version, int):
            raise DataError(f"{directory / METADATA_FILE}: format_version is {version!r}, not a number. {BUILD}")
        if version > FORMAT_VERSION:
            raise DataError(f"{directory}: written by a newer toolkit (format {version}); upgrade image-toolkit.")
        paths = read_json(directory / PATHS_FILE, list, fix=BUILD)
        index_file = directory / INDEX_FILE
        mapped = index_file.stat().st_size > MMAP_BYTES if mmap is None else bool(mmap)
        try:
            index = faiss.read_index(str(index_file), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1]
            raise DataError(f"{directory / INDEX_FILE}: not a readable faiss index ({reason}). {BUILD}") from None
        config = {**metadata["config"], "n_threads": n_threads}
        self = cls(**{key: config.get(key, value) for key, value in cls().get_config().items()})
        self.index_, self.paths_, self.mapped_ = index, [str(path) for path in paths], mapped
        self.params_, self.tuning_ = dict(metadata.get("params", {})), dict(metadata.get("tuning", {}))
        self._check_loaded(directory)
        self.features_metadata_ = located_model(dict(metadata.get("features", {})), top)
        self.norms_ = None
        if self.metric == "cosine":
            try:
                self.norms_ = np.load(directory / NORMS_FILE, allow_pickle=False).astype(np.float32, copy=False)
            except (OSError, ValueError) as error:
                raise DataError(f"{directory / NORMS_FILE}: missing or damaged ({error}). {BUILD}") from None
        counts = {"index.faiss": index.ntotal, "paths.json": len(paths), "metadata.json": metadata.get("size")}
        if self.norms_ is not None:
            counts["norms.npy"] = len(self.norms_)
        if len(set(counts.values())) != 1 or index.d != metadata.get("dim"):
            found = ", ".join(f"{name}: {count}" for name, count in counts.items())
            raise DataError(f"{directory}: the index files disagree on the number of images ({found}). {BUILD}")
        self._set_search_parameter(self._parameter_value())  # Nothing to set for flat.
        if self.kind == "ivfpq":
            self._set_k_factor(self.params_.get("k_factor", UNTUNED_K_FACTOR))
        return self

    def _check_loaded(self, directory: Path) -> None:
        """A DataError unless the metadata's kind, metric and parameters describe the faiss index beside it."""
        where = directory / METADATA_FILE
        if self.kind not in KINDS or self.metric not in METRICS:
            raise DataError(f"{where}: unknown kind {self.kind!r} or metric {self.metric!r}. {BUILD}")
        faiss_class = {"hnsw": faiss.IndexHNSW, "ivf": faiss.IndexIVF, "ivfpq": faiss.IndexRefine, "flat": faiss.IndexFlat}[self.kind]
        right_kind = isinstance(self.index_, faiss_class) and (
            self.kind != "ivfpq" or isinstance(faiss.downcast_index(self.index_.base_index), faiss.IndexIVFPQFastScan))
        if not right_kind or self.index_.metric_type != FAISS_METRICS[self.metric]:
            raise DataError(
                f"{where}: says a {self.kind} index of metric {self.metric}, but {INDEX_FILE} is a "
                f"{type(self.index_).__name__} of another kind or metric. {BUILD}"
            )
        name = self._parameter_name()
        if name is not None and not isinstance(self.params_.get(name), int):
            raise DataError(f"{where}: no {name} among the parameters ({self.params_}). {BUILD}")


def holds_index(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds an index, in either layout (a manifest, or the files at its top level)."""
    directory = Path(directory)
    return (directory / MANIFEST_FILE).exists() or (directory / INDEX_FILE).exists()


def index_set(directory: str | os.PathLike) -> Path:
    """The folder holding an index's current files: the set `index.json` names, or `directory` itself without one."""
    directory = Path(directory)
    manifest = directory / MANIFEST_FILE
    if not manifest.exists():
        return directory
    content = read_json(manifest, dict, fix=BUILD)
    current = content.get("current")
    if content.get("format") != FORMAT or not isinstance(current, str) or not SET_NAME.fullmatch(current):
        raise DataError(f"{manifest}: not the manifest of a toolkit index. {BUILD}")
    if not (directory / current).is_dir():
        raise DataError(f"{manifest}: names the set {current}, which is missing from {directory}. {BUILD}")
    return directory / current


def _next_set_number(directory: Path) -> int:
    """One more than any set in the folder, current or left by a crash: a new set never reuses a name."""
    numbers = [int(match[1]) for path in directory.iterdir() if (match := SET_NAME.fullmatch(path.name))]
    return max(numbers, default=0) + 1


def _is_index_set(folder: Path) -> bool:
    """Whether `folder` holds nothing but an index set's files (complete or half-written): safe to remove.

    A user's own folder that happens to be called `set-2` holds other files
    and is never touched; an empty one is what a crash right after making a
    set's folder leaves.
    """
    own = {INDEX_FILE, PATHS_FILE, METADATA_FILE, NORMS_FILE}
    return folder.is_dir() and all(
        path.name in own or (path.name.startswith(".") and ".partial" in path.name) for path in folder.iterdir()
    )


def _remove_stale(directory: Path, *, current: str, old_layout: bool) -> None:
    """Remove what the current set replaced: older or half-written sets, manifest leftovers, and the
    top-level files of an old-layout index (only when the folder held one before this save)."""
    for path in directory.iterdir():
        if SET_NAME.fullmatch(path.name) and path.name != current and _is_index_set(path):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(f".{MANIFEST_FILE}.") and ".partial" in path.name:
            path.unlink(missing_ok=True)
    if old_layout:  # index.faiss last: while it is there, a crash here leaves files the next save knows as its own.
        for name in (PATHS_FILE, METADATA_FILE, NORMS_FILE, INDEX_FILE):
            (directory / name).unlink(missing_ok=True)


def unique_mask(paths: list[str], known: set[str]) -> np.ndarray:
    """Which rows to index: those whose path is neither in `known` nor earlier in `paths`; duplicates are logged."""
    keep, seen = np.zeros(len(paths), dtype=bool), set(known)
    for row, path in enumerate(paths):
        if path not in seen:
            seen.add(path)
            keep[row] = True
    if not keep.all():
        first = paths[int(np.argmin(keep))]
        logger.warning("Skipped %d images already indexed or listed twice (first: %s)", len(paths) - int(keep.sum()), first)
    return keep


def checked_shape(feature_set: FeatureSet, where: str) -> int:
    """The number of features per row, once the features are 2-D, non-empty and one row per path; no row is read but the first."""
    features = feature_set.features
    first = check_features(np.asarray(features[:1]), where)  # Its shape errors, for the whole array: N = 0 is "empty".
    if len(feature_set.paths) != len(features):
        raise DataError(f"{where}: {len(feature_set.paths)} paths for {len(features)} rows of 'features'. {REEXTRACT}")
    return first.shape[1]


def gather_rows(features, row_sets: list[np.ndarray], where: str) -> list[np.ndarray]:
    """The rows of each sorted array of row numbers, float32, in one pass over the blocks (checking every row).

    Read by slices through `feature_blocks`, as every array-like of
    features is read: no list of rows is asked of an h5 dataset or a memmap.
    """
    dim = np.asarray(features[:1]).shape[1]
    gathered = [np.empty((len(rows), dim), dtype=np.float32) for rows in row_sets]
    for start, block in feature_blocks(features, rows=ADD_BLOCK, where=where):
        for rows, out in zip(row_sets, gathered):
            first, last = np.searchsorted(rows, [start, start + len(block)])
            out[first:last] = block[rows[first:last] - start]
    return gathered


def untuned_record(tuning: dict, *, kind: str, target: float | None, parameter: str | None, value: int | None,
                   tune_at_least: int) -> dict:
    """The tuning record of an index after rows were added without tuning (faiss or Milvus alike).

    A flat index is exact; the first rows of an index too small to tune
    record the untuned setting; an index tuned before keeps its record, and
    the log says why it was not tuned again.
    """
    if kind == "flat":
        return {"target_recall": target, "k": TUNE_K, "sample": 0, "recall": 1.0,
                "parameter": None, "value": None, "tried": [], "exact": True}
    if target is not None and not tuning:
        return {"target_recall": target, "k": TUNE_K, "sample": 0, "recall": None,
                "parameter": parameter, "value": value, "tried": []}
    if tuning:
        logger.info("Kept %s=%s, tuned on %d images: tuning again needs %d new images at once.",
                    tuning["parameter"], tuning["value"], tuning.get("indexed", 0), tune_at_least)
    return tuning


def held_out_sample(n_rows: int, n_indexed: int, *, tune: bool) -> np.ndarray:
    """Sorted positions, among `n_rows` rows being added to `n_indexed`, of those held out to tune (none if not `tune`).

    Seeded by the sizes, so a build or add of the same rows holds out the same ones.
    """
    held = held_out_size(n_rows) if tune else 0
    return np.sort(np.random.default_rng(n_indexed + n_rows).choice(n_rows, size=held, replace=False))


def held_out_size(n: int) -> int:
    """Rows held out to tune: a tenth, at least 100 (or half of a small set), at most 1000."""
    return min(TUNE_SAMPLE, max(n // 10, min(100, n // 2)))


def recall_within_radius(keys: np.ndarray, ids: np.ndarray, radius: np.ndarray, k: int) -> float:
    """Share of the k results found within each query's exact k-th distance: ties with it count as found."""
    tolerance = 1e-5 * np.maximum(1, np.abs(radius))
    found = (ids >= 0) & (keys <= (radius + tolerance)[:, None])
    return float(found.sum() / (k * len(ids)))


def _describe(metadata: dict) -> str:
    shown = [f"{key} {metadata[key]}" for key in ("model", "layer", "image_size") if metadata.get(key) is not None]
    return ", ".join(shown) or "not recorded"


def write_results(path: str | os.PathLike, rows: list[tuple]) -> None:
    """Write search results as a CSV, atomically: a header row, then (query, rank, path, distance or score) rows."""
    try:
        with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
    except OSError as error:
        raise cannot_write(path, error) from None
