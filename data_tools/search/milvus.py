"""Image features in a Milvus collection: the vector-database backend of `toolkit index` (`--backend milvus`).

A faiss index lives in one process's memory; when a collection outgrows one
machine, or several programs search the same images, the rows go to a
vector database instead. `MilvusIndex` has the API of the faiss
`ImageIndex` that the CLI and the web app use (fit, add, search, save, load,
info, vectors, check_comparable, paths_), so nothing above it knows which
engine answers. A URI ending in `.db` runs Milvus Lite inside this process
(a folder of files, by default `INDEX_DIR/milvus.db`); `http://host:19530`
talks to a Milvus server with the same client calls.

The collection holds an int64 primary key `id` (the row's place in
`paths_`) and the float vector as given; Milvus's metric (COSINE, L2, IP)
does the normalising. Reported values follow `ImageIndex`: cosine distance
(1 - similarity), euclidean distance (Milvus gives its square), or the inner
product (larger is nearer). `--kind` maps to Milvus's own index types: hnsw
to HNSW (M, efConstruction), ivf to IVF_FLAT (nlist), flat to FLAT (exact).

The recall check is the faiss one (`ImageIndex._tune`): building holds out a
sample of the rows, inserts the others while it finds the sample's exact 10
nearest among them (and, for `add`, among the rows stored before, read back
from Milvus block by block), raises `ef` (hnsw) or `nprobe` (ivf) along the
same grid until recall@10 reaches the target, then inserts the sample; the
value and the recall are saved and shown by `toolkit index info`.

The index folder is written as `ImageIndex.save` writes it (a new set
holding `paths.json` and `metadata.json`, then the `index.json` manifest):
metadata.json records the backend, the URI (relative to the folder for a
Lite file inside it), the collection, the metric and the tuning. A build
fills a new collection and drops the one it replaces only after the new
manifest is in place, so an interrupted build leaves the old index whole.
Rows of an interrupted `add` (in the collection, not yet in paths.json) are
left out of searches and deleted by the next add.

Memory: features are read and inserted block by block; tuning holds the
sample (at most 1000 rows) and one block of stored rows. `vectors()` (keyword
search, the web app) gives back all N x D rows, as the faiss index does.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.atomic import flush_to_disk, make_folder, remove_empty
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError, missing_extra
from image_toolkit.data_tools.formats.features import check_features, feature_blocks, located_model
from image_toolkit.data_tools.formats.json_files import read_json
from image_toolkit.data_tools.progress import progress_bar, track
from image_toolkit.data_tools.search.index import (
    BUILD,
    EF_SEARCH_GRID,
    FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    METRICS,
    MIN_ADDED_TO_TUNE,
    NPROBE_GRID,
    PATHS_FILE,
    TUNE_K,
    ImageIndex,
    checked_shape,
    default_nlist,
    held_out_sample,
    index_set,
    recall_within_radius,
    unique_mask,
    untuned_record,
)
from image_toolkit.data_tools.search.neighbors import ALL_CORES, NearestRows

logger = logging.getLogger(__name__)

BACKEND = "milvus"
LITE_FILE = "milvus.db"
SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")
INDEX_TYPES = {"hnsw": "HNSW", "ivf": "IVF_FLAT", "flat": "FLAT"}
MILVUS_METRICS = {"cosine": "COSINE", "euclidean": "L2", "inner_product": "IP"}
SEARCH_PARAMETERS = {"hnsw": "ef", "ivf": "nprobe"}
# Floats sent or read in one call: 4 Mi floats (16 MiB) stay well under gRPC's 64 MiB message limit.
MESSAGE_FLOATS = 1 << 22
# Milvus's most rows per query call (offset + limit) and queries per search call.
MAX_CALL_ROWS = 16_384
# Seconds to wait for a server to index the rows before tuning on them.
INDEX_WAIT = 600


def is_lite(uri: str) -> bool:
    """Whether `uri` names a Milvus Lite file (run in this process) rather than a server."""
    return not uri.startswith(SERVER_SCHEMES)


def check_uri(uri: str) -> None:
    """An OptionError unless `uri` is a server address or a Milvus Lite file name ending in .db (pymilvus's rule)."""
    if not uri or (is_lite(uri) and not uri.endswith(".db")):
        raise OptionError(
            "--uri must be a Milvus Lite file ending in .db (e.g. my_index/milvus.db) or a server "
            f"(http://host:19530). Received: --uri={uri!r}"
        )


def connect(uri: str):
    """A MilvusClient for `uri`; a missing package or an unreachable server is one DataError line."""
    try:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError:
        raise missing_extra("--backend milvus", "pymilvus and milvus-lite", "milvus") from None
    # Milvus Lite logs the start and stop of its in-process server, and a failed start with a traceback: the first is
    # no news to the user, the second is said in one line below.
    logging.getLogger("milvus_lite").setLevel(logging.WARNING)
    logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=uri)
    except MilvusException as error:
        reason = getattr(error, "message", str(error))
        if "milvus-lite is required" in reason:
            raise missing_extra(f"{uri}: a Milvus Lite file", "milvus-lite", "milvus") from None
        if is_lite(uri):
            reason = "" if reason == "Open local milvus failed" else f" ({reason})"  # pymilvus's words when Lite did not start.
            raise DataError(f"{uri}: cannot open this Milvus Lite database{reason}; another process "
                            "(toolkit serve?) may hold it: stop it, or use a Milvus server.") from None
        raise DataError(f"{uri}: cannot reach the Milvus server ({reason}); start it, or give the right --uri.") from None


def _milvus_error(uri: str, error: Exception) -> DataError:
    """A Milvus call that failed (server gone, collection dropped) as one line naming the URI."""
    return DataError(f"{uri}: Milvus failed ({getattr(error, 'message', error)}). {BUILD}")


class MilvusIndex:
    """Image paths and their features in a Milvus collection, searchable by feature rows.

    Constructor arguments are stored as given and checked in `fit`
    (`check_options`). Learned state: `client_`, `collection_`, `paths_`,
    `features_metadata_`, `params_` (the Milvus index and search settings)
    and `tuning_` (target, chosen value, recall), as `ImageIndex` has them.
    """

    def __init__(self, *, uri: str, kind: str = "hnsw", metric: str = "cosine", target_recall: float | None = 0.95,
                 m: int = 24, ef_construction: int = 48, nlist: int | None = None, collection: str | None = None,
                 n_threads: int = -1):
        self.uri = uri
        self.kind = kind
        self.metric = metric
        self.target_recall = target_recall
        self.m = m
        self.ef_construction = ef_construction
        self.nlist = nlist
        self.collection = collection
        self.n_threads = n_threads

    def get_config(self) -> dict:
        """The constructor arguments but the URI and collection (which metadata.json keeps apart), as given."""
        return {"kind": self.kind, "metric": self.metric, "target_recall": self.target_recall, "m": self.m,
                "ef_construction": self.ef_construction, "nlist": self.nlist, "n_threads": self.n_threads}

    def check_options(self) -> None:
        """Reject impossible options before any file is read."""
        check_uri(self.uri)
        if self.kind not in INDEX_TYPES:
            raise OptionError(f"--kind {self.kind} is not available with --backend milvus. "
                              f"Expected one of {', '.join(INDEX_TYPES)}. Received: kind={self.kind!r}")
        if self.metric not in METRICS:
            raise OptionError(f"Unknown metric. Expected one of {', '.join(METRICS)}. Received: metric={self.metric!r}")
        if self.target_recall is not None:
            check_range("--target-recall", self.target_recall, low=0, high=1, low_open=True)
        check_range("--m", self.m, low=2)
        check_range("--ef-construction", self.ef_construction, low=1)
        if self.nlist is not None:
            check_range("--nlist", self.nlist, low=1, high=65_536, why="Milvus's limit")
        check_range("--n-jobs", self.n_threads, low=1, special=ALL_CORES)

    # Building and growing.

    def fit(self, feature_set, *, show: bool | None = None) -> MilvusIndex:
        """Insert every row of `feature_set` into a new collection, tuning the search to `target_recall` on held-out rows.

        `show` draws progress bars on stderr (None: when stderr is a
        terminal). A failed fit drops the new collection, and a Lite file
        it created.
        """
        self.check_options()
        features = feature_set.features
        dim = checked_shape(feature_set, "features")
        paths, positions = _new_rows(feature_set.paths, set())
        lite_file = Path(self.uri) if is_lite(self.uri) else None
        created = make_folder(lite_file.parent) if lite_file else []
        new_file = lite_file is not None and not lite_file.exists()
        self.collection_ = self.collection or f"images_{secrets.token_hex(6)}"
        self.dim_, self.paths_, self.tuning_, self.stale_ = dim, [], {}, False
        self.features_metadata_ = dict(feature_set.metadata)
        self.params_ = {"index_type": INDEX_TYPES[self.kind]}
        if self.kind == "hnsw":
            self.params_.update(M=self.m, efConstruction=self.ef_construction, ef=EF_SEARCH_GRID[0])
        elif self.kind == "ivf":
            nlist = self.nlist or default_nlist(len(paths))
            self.params_.update(nlist=nlist, nprobe=1)
        ours = False
        try:
            self.client_ = connect(self.uri)
            if self._call(self.client_.has_collection, self.collection_):
                raise DataError(f"{self.uri}: already holds a collection {self.collection_}; choose another name.")
            ours = True
            self._create_collection()
            self._grow(features, paths, positions, self.target_recall, tune_at_least=1, where="features", show=show)
        except BaseException:
            if ours:
                self._drop(self.collection_)
            if new_file:
                _release_lite(lite_file)
                shutil.rmtree(lite_file, ignore_errors=True)
                remove_empty(created)
            raise
        return self

    def _create_collection(self) -> None:
        from pymilvus import DataType

        schema = self.client_.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim_)
        index_params = self.client_.prepare_index_params()
        build = {key: self.params_[key] for key in ("M", "efConstruction", "nlist") if key in self.params_}
        # Nested under "params", sent as one JSON value: the form servers have always read, and the only one Milvus Lite
        # 3 reads (pymilvus 3 would send each setting as its own key, which Lite ignores).
        index_params.add_index(field_name="vector", index_type=self.params_["index_type"],
                               metric_type=MILVUS_METRICS[self.metric], params={"params": build})
        # Without waiting for the index (pymilvus polls twice a second, with a call Milvus Lite lacks): Milvus builds it
        # segment by segment as rows arrive, and searches rows not indexed yet exhaustively.
        self._call(self.client_.create_collection, self.collection_, schema=schema)
        self._call(self.client_.create_index, self.collection_, index_params, sync=False)
        self._call(self.client_.load_collection, self.collection_)

    def add(self, feature_set, *, where: str = "the new features", show: bool | None = None) -> MilvusIndex:
        """Insert the rows of `feature_set` whose paths are not indexed yet, as `ImageIndex.add` does.

        With at least 100 new rows the search is tuned again on held-out new
        rows; with fewer the tuned setting is kept.
        """
        self._check_fitted()
        features = feature_set.features
        self.check_comparable(checked_shape(feature_set, where), feature_set.metadata, where)
        paths, positions = _new_rows(feature_set.paths, set(self.paths_))
        if not paths:
            logger.info("All %d images are already in the index; nothing to add.", len(feature_set.paths))
            return self
        if self.stale_:  # Rows an interrupted add inserted but never recorded: their ids are about to be reused.
            self._call(self.client_.delete, self.collection_, filter=f"id >= {self.size}")
            self.stale_ = False
        target = self.tuning_.get("target_recall", self.target_recall)
        self._grow(features, paths, positions, target, tune_at_least=MIN_ADDED_TO_TUNE, where=where, show=show)
        return self

    def _grow(self, features, paths: list[str], positions: np.ndarray, target: float | None, *,
              tune_at_least: int, where: str, show: bool | None) -> None:
        """Insert the rows at `positions` of `features`; to tune, hold a sample out, tune on it against the rest, insert it.

        The held-out rows go last (in `paths_` and as ids), as in `ImageIndex._grow`.
        """
        tune = target is not None and self.kind != "flat" and len(paths) >= tune_at_least
        sample = held_out_sample(len(paths), len(self.paths_), tune=tune)
        held = len(sample)
        order = np.concatenate([np.setdiff1d(np.arange(len(paths)), sample), sample])
        first, indexed = len(order) - held, self.size
        truth = None
        if held:  # The sample's exact neighbours are found on the way: among the rows inserted, and those stored before.
            queries = np.concatenate([check_features(np.asarray(features[p : p + 1]), f"{where} row {p}")
                                      for p in positions[order[first:]]])
            truth = NearestRows(queries, k=min(TUNE_K, indexed + first), metric=self.metric, n_threads=self.n_threads)
            for _, block in self._stored_blocks(indexed):
                truth.add(block)
        self._insert_rows(features, positions[order[:first]], where=where, show=show, seen=truth.add if truth else None)
        self.paths_ = self.paths_ + [paths[i] for i in order]
        self._settle()
        if held:
            self._tune(truth, target, show=show)
            self._insert(queries, self.size - held)
            self._settle()
        else:
            name = SEARCH_PARAMETERS.get(self.kind)
            self.tuning_ = untuned_record(self.tuning_, kind=self.kind, target=target, parameter=name,
                                          value=self.params_[name] if name else None, tune_at_least=tune_at_least)

    def _settle(self) -> None:
        """Seal the rows inserted and wait until the index covers them, so that tuning measures the index.

        Rows Milvus has not indexed yet are searched exhaustively and would
        flatter the recall. A server says how many rows its index holds:
        wait for all (at most INDEX_WAIT seconds). Milvus Lite builds
        indexes in a background thread and reports them finished at once;
        reloading the collection builds the missing ones before it returns.
        """
        self._call(self.client_.flush, self.collection_)
        if is_lite(self.uri):
            self._call(self.client_.release_collection, self.collection_)
            self._call(self.client_.load_collection, self.collection_)
            return
        deadline = time.monotonic() + INDEX_WAIT
        while time.monotonic() < deadline:
            state = self._call(self.client_.describe_index, self.collection_, "vector")
            if state.get("pending_index_rows", 0) == 0 and state.get("indexed_rows", 0) >= state.get("total_rows", 0):
                return
            time.sleep(1)
        logger.warning("%s: the index of collection %s is still being built after %d s; the recall measured may be high.",
                       self.uri, self.collection_, INDEX_WAIT)

    def _insert_rows(self, features, positions: np.ndarray, *, where: str, show: bool | None, seen=None) -> None:
        """Insert the rows of `features` at `positions` (file rows, increasing), streaming the file block by block.

        `seen`, if given, is called with each block of rows inserted.
        """
        wanted = np.zeros(len(features), dtype=bool)
        wanted[positions] = True
        next_id = self.size
        with progress_bar(len(positions), "Indexing", show=show and len(positions) > 0) as advance:
            for start, block in feature_blocks(features, where=where):
                rows = block[wanted[start : start + len(block)]]
                if len(rows):
                    self._insert(rows, next_id)
                    if seen is not None:
                        seen(rows)
                    next_id += len(rows)
                    advance(len(rows))

    def _insert(self, rows: np.ndarray, first_id: int) -> None:
        """Milvus's insert, in calls of at most MESSAGE_FLOATS floats; ids count up from `first_id`."""
        step = max(1, MESSAGE_FLOATS // self.dim_)
        for start in range(0, len(rows), step):
            block = rows[start : start + step]
            data = [{"id": first_id + start + i, "vector": row} for i, row in enumerate(block)]
            self._call(self.client_.insert, self.collection_, data)

    # Searching.

    def search(self, queries: np.ndarray, *, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed rows of every query: (values float32, indices int64), both (n_queries, k).

        Values and clamping as `ImageIndex.search`: distances nearest first
        (cosine, euclidean) or inner products largest first; places Milvus
        left empty hold index -1 and value NaN.
        """
        self._check_fitted()
        k = self._checked_k(k)
        queries = check_features(queries, "queries")
        if queries.shape[1] != self.dim:
            raise DataError(
                f"queries: {queries.shape[1]} features per row, but the index has {self.dim}; "
                "extract the queries with the index's model and layer."
            )
        return self._search(queries, k)

    _checked_k = ImageIndex._checked_k  # The same clamping of k, with the same warning.

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        name = SEARCH_PARAMETERS.get(self.kind)
        params = {name: max(self.params_[name], k) if name == "ef" else self.params_[name]} if name else {}
        search_params = {"metric_type": MILVUS_METRICS[self.metric], "params": params}
        values = np.full((len(queries), k), np.nan, dtype=np.float32)
        indices = np.full((len(queries), k), -1, dtype=np.int64)
        step = max(1, min(MAX_CALL_ROWS, MESSAGE_FLOATS // self.dim))
        for start in range(0, len(queries), step):
            hits = self._call(self.client_.search, self.collection_, data=queries[start : start + step], limit=k,
                              search_params=search_params, output_fields=["id"],
                              filter=f"id < {self.size}" if self.stale_ else "")
            for row, found in enumerate(hits, start=start):
                indices[row, : len(found)] = [hit["id"] for hit in found]
                values[row, : len(found)] = [hit["distance"] for hit in found]
        if self.metric == "cosine":  # Milvus gives the similarity.
            values = np.maximum(1 - values, 0)
        elif self.metric == "euclidean":  # Milvus gives the squared distance.
            values = np.sqrt(np.maximum(values, 0))
        values[indices < 0] = np.nan
        return values, indices

    def vectors(self) -> np.ndarray:
        """The indexed features as given (N x D float32), read back from Milvus block by block, in the order of `paths_`."""
        self._check_fitted()
        rows = np.empty((self.size, self.dim), dtype=np.float32)
        for start, block in self._stored_blocks():
            rows[start : start + len(block)] = block
        return rows

    def rows(self, ids) -> np.ndarray:
        """The indexed features as given of the rows `ids` (M x D float32), asked of Milvus by id, MAX_CALL_ROWS a call."""
        self._check_fitted()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = np.empty((len(ids), self.dim), dtype=np.float32)
        step = max(1, min(MAX_CALL_ROWS, MESSAGE_FLOATS // self.dim))
        for start in range(0, len(ids), step):
            wanted = np.unique(ids[start : start + step])
            found = self._call(self.client_.query, self.collection_, filter=f"id in {wanted.tolist()}",
                               output_fields=["vector"], limit=len(wanted))
            vectors = {entity["id"]: entity["vector"] for entity in found}
            if len(vectors) != len(wanted):
                raise DataError(f"{self.uri}: collection {self.collection_} holds {len(vectors)} of the {len(wanted)} rows "
                                f"asked for, which paths.json lists. {BUILD}")
            rows[start : start + step] = [vectors[i] for i in ids[start : start + step].tolist()]
        return rows

    def _stored_blocks(self, rows: int | None = None):
        """(first id, float32 block) over the first `rows` stored rows (default: all), in id order."""
        rows = self.size if rows is None else rows
        step = max(1, min(MAX_CALL_ROWS, MESSAGE_FLOATS // self.dim))
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            found = self._call(self.client_.query, self.collection_, filter=f"id >= {start} and id < {stop}",
                               output_fields=["vector"], limit=stop - start)
            if len(found) != stop - start:
                raise DataError(f"{self.uri}: collection {self.collection_} holds {len(found)} of rows {start}-{stop - 1}, "
                                f"which paths.json lists. {BUILD}")
            found = sorted(found, key=lambda entity: entity["id"])
            yield start, np.array([entity["vector"] for entity in found], dtype=np.float32)

    # Tuning.

    def _tune(self, truth: NearestRows, target_recall: float, *, show: bool | None = None) -> dict:
        """Raise ef / nprobe along ImageIndex's grid until recall@k of the held-out rows (`truth`) reaches the target.

        The truth is each query's exact k-th distance among the stored rows
        (ties count as found), as in `ImageIndex._tune`.
        """
        started = time.monotonic()
        queries, k, radius = truth.queries, truth.k, truth.radius()
        key = -1 if self.metric == "inner_product" else 1  # recall_within_radius wants smaller-is-nearer keys, as the radius is.
        parameter = SEARCH_PARAMETERS[self.kind]
        nlist = self.params_.get("nlist")
        grid = EF_SEARCH_GRID if self.kind == "hnsw" else (*(v for v in NPROBE_GRID if v < nlist), nlist)
        tried = []
        for value in track(grid, f"Tuning {parameter}", show=show):
            self.params_[parameter] = value
            values, ids = self._search(queries, k)
            tried.append([value, round(recall_within_radius(key * values, ids, radius, k), 4)])
            if tried[-1][1] >= target_recall:
                break
        value, recall = tried[-1]
        if recall < target_recall:
            value, recall = max(tried, key=lambda item: item[1])
            self.params_[parameter] = value
            warnings.warn(
                f"--target-recall {target_recall} not reached: recall@{k} was at best {recall:.3f}, at {parameter}={value}. "
                "Rebuild with a larger --m or --ef-construction (hnsw), --kind flat for exact search, or lower --target-recall.",
                stacklevel=4,
            )
        stored = self.size - len(queries)
        self.tuning_ = {"target_recall": target_recall, "k": k, "sample": len(queries), "recall": recall,
                        "parameter": parameter, "value": value, "tried": tried, "indexed": stored}
        logger.info("Tuned %s=%s: recall@%d %.3f on %d held-out images against %d (target %g), %.1f s",
                    parameter, value, k, recall, len(queries), stored, target_recall, time.monotonic() - started)
        return self.tuning_

    # Describing.

    @property
    def size(self) -> int:
        return len(self.paths_)

    @property
    def dim(self) -> int:
        return self.dim_

    def info(self) -> dict:
        """Backend, URI, collection, size, kind, metric, Milvus parameters, tuning and how the features were made."""
        self._check_fitted()
        return {
            "backend": BACKEND, "uri": self.uri, "collection": self.collection_, "size": self.size, "dim": self.dim,
            "kind": self.kind, "metric": self.metric, "params": dict(self.params_), "tuning": dict(self.tuning_),
            "features": dict(self.features_metadata_),
        }

    check_comparable = ImageIndex.check_comparable  # The same dimension and model checks, reading dim and features_metadata_.

    def _check_fitted(self) -> None:
        if not hasattr(self, "client_"):
            raise OptionError("This MilvusIndex holds nothing yet: call fit(features) or MilvusIndex.load(folder) first.")

    # Saving and loading.

    def close(self) -> None:
        """Stop a Milvus Lite database's in-process server, after its background compaction and index writes.

        A write command calls it before it exits: Milvus Lite writes segment
        index files in a background thread, and a run that ended with one
        half-written left the next command a truncated `.idx` ("read error
        ... 0 != 1"), seen under load. A server URI has nothing to release.
        """
        if is_lite(self.uri):
            _release_lite(Path(self.uri))
            self.client_ = None

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Write the index folder as `ImageIndex.save` does (a new set, then the manifest); then drop a collection it replaced."""
        from pymilvus.exceptions import MilvusException

        replaced = _recorded_collection(directory)
        files = ImageIndex.save(self, directory)
        if replaced is not None and replaced != (_resolved(self.uri), self.collection_):
            uri, name = replaced
            try:
                client = self.client_ if uri == _resolved(self.uri) else connect(uri)
                client.drop_collection(name)
            except (DataError, MilvusException) as error:  # The new index is in place: a leftover is only a warning.
                logger.warning("Could not drop the replaced collection %s at %s (%s); drop it by hand.", name, uri, error)
        return files

    def _write_set(self, folder: Path, features_metadata: dict) -> list[Path]:
        """paths.json and metadata.json in `folder`, flushed to disk (called by `ImageIndex.save`)."""
        uri = self.uri
        if is_lite(uri):  # Relative inside the index folder, so the folder can move; absolute elsewhere.
            resolved, top = Path(uri).resolve(), folder.parent.resolve()
            uri = resolved.relative_to(top).as_posix() if resolved.is_relative_to(top) else str(resolved)
        metadata = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "backend": BACKEND, "uri": uri,
            "collection": self.collection_, "config": self.get_config(), "size": self.size, "dim": self.dim,
            "params": self.params_, "tuning": self.tuning_, "features": features_metadata,
        }
        files = [folder / PATHS_FILE, folder / METADATA_FILE]
        files[0].write_text(json.dumps(self.paths_, ensure_ascii=False), encoding="utf-8")
        files[1].write_text(json.dumps(metadata, indent=2, default=str), encoding="utf-8")
        for path in [*files, folder]:
            flush_to_disk(path)
        return files

    @classmethod
    def load(cls, directory: str | os.PathLike, *, n_threads: int = -1) -> MilvusIndex:
        """Read an index folder written by `save` and connect to its collection; a missing one is a DataError naming it."""
        check_range("--n-jobs", n_threads, low=1, special=ALL_CORES)
        top = Path(directory)
        folder = index_set(top)
        metadata, where = read_json(folder / METADATA_FILE, dict, fix=BUILD), folder / METADATA_FILE
        if metadata.get("format") != FORMAT or metadata.get("backend") != BACKEND or not isinstance(metadata.get("config"), dict):
            raise DataError(f"{where}: not the metadata of a toolkit Milvus index. {BUILD}")
        if not isinstance(metadata.get("format_version"), int) or metadata["format_version"] > FORMAT_VERSION:
            raise DataError(f"{where}: format_version {metadata.get('format_version')!r} is not one this toolkit reads; "
                            "upgrade image-toolkit.")
        paths = read_json(folder / PATHS_FILE, list, fix=BUILD)
        uri, name = metadata.get("uri"), metadata.get("collection")
        if not isinstance(uri, str) or not isinstance(name, str):
            raise DataError(f"{where}: no Milvus uri or collection recorded. {BUILD}")
        if is_lite(uri) and not Path(uri).is_absolute():
            uri = str(top / uri)
        defaults = cls(uri=uri).get_config()
        self = cls(uri=uri, collection=name, **{**{key: metadata["config"].get(key, value) for key, value in defaults.items()},
                                                "n_threads": n_threads})
        if self.kind not in INDEX_TYPES or self.metric not in METRICS:
            raise DataError(f"{where}: unknown kind {self.kind!r} or metric {self.metric!r}. {BUILD}")
        if is_lite(uri) and not Path(uri).exists():
            raise DataError(f"{uri}: the Milvus Lite database of the index {top} is missing. {BUILD}")
        self.client_, self.collection_ = connect(uri), name
        self.paths_, self.dim_ = [str(path) for path in paths], metadata.get("dim")
        self.params_, self.tuning_ = dict(metadata.get("params", {})), dict(metadata.get("tuning", {}))
        self.features_metadata_ = located_model(dict(metadata.get("features", {})), top)
        if not self._call(self.client_.has_collection, name):
            raise DataError(f"{uri}: no collection {name}, which {where} names; it was dropped from the database. {BUILD}")
        self._call(self.client_.load_collection, name)
        count = self._call(self.client_.query, name, filter="", output_fields=["count(*)"])[0]["count(*)"]
        if count < len(paths) or metadata.get("size") != len(paths) or not isinstance(self.dim_, int):
            raise DataError(f"{top}: the index disagrees on the number of images (collection {name}: {count}, "
                            f"paths.json: {len(paths)}, metadata.json: {metadata.get('size')}). {BUILD}")
        self.stale_ = count > len(paths)
        if self.stale_:
            logger.info("Collection %s holds %d rows an interrupted add left; searches skip them.", name, count - len(paths))
        return self

    def _call(self, method, *args, **kwargs):
        """A pymilvus call whose failure (server gone, collection dropped) becomes one DataError line."""
        from pymilvus.exceptions import MilvusException

        try:
            return method(*args, **kwargs)
        except MilvusException as error:
            raise _milvus_error(self.uri, error) from None

    def _drop(self, name: str) -> None:
        from pymilvus.exceptions import MilvusException

        try:
            self.client_.drop_collection(name)
        except MilvusException as error:  # Cleaning up after another error: that one is the one to report.
            logger.warning("Could not drop collection %s at %s (%s).", name, self.uri, error)


def _recorded_collection(directory: str | os.PathLike) -> tuple[str, str] | None:
    """(resolved URI, collection) of the Milvus index `directory` holds now, or None (no index, or a faiss one)."""
    directory = Path(directory)
    try:
        metadata = read_json(index_set(directory) / METADATA_FILE, dict, fix=BUILD)
    except DataError:
        return None
    uri, name = metadata.get("uri"), metadata.get("collection")
    if metadata.get("backend") != BACKEND or not isinstance(uri, str) or not isinstance(name, str):
        return None
    return _resolved(str(directory / uri) if is_lite(uri) and not Path(uri).is_absolute() else uri), name


def _resolved(uri: str) -> str:
    """A Lite file's absolute path, or a server URI as it is: what tells two URIs are one database."""
    return str(Path(uri).resolve()) if is_lite(uri) else uri


def _release_lite(lite_file: Path) -> None:
    """Stop this process's Milvus Lite server of `lite_file`, so its files can be removed."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(str(lite_file))


def _new_rows(paths: list[str], known: set[str]) -> tuple[list[str], np.ndarray]:
    """The paths not in `known` (first of each repeat) and their row numbers in the feature file."""
    positions = np.flatnonzero(unique_mask(paths, known))
    return [paths[i] for i in positions], positions
