"""What every request of the web app reads, loaded once: the index, its images' names, classes and map.

Memory at a million images: the index itself (the faiss index holds the
rows; a request reads only the rows it needs, by id, `SearchIndex.rows`),
the names, one int32 class code and one uint16 map group per image, the
class scores (N x classes) when given, and the map (N x 2 float32). No N x D
copy of the features: a PCA map streams the rows from the index, a block at
a time, and keeps only its coordinates.
"""

from __future__ import annotations

import csv
import logging
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.errors import DataError
from image_toolkit.data_tools.formats.labels import SEPARATOR
from image_toolkit.data_tools.search import rocchio
from image_toolkit.data_tools.search.ranking import top_k

logger = logging.getLogger(__name__)

# Above this many images without a --map, the app makes no PCA map on the fly (it would read every row at start-up
# of the map view); the user is told to make one with toolkit tsne.
MAX_PCA_POINTS = 100_000
# Colours a person can tell apart: the most frequent class texts keep their own group, the rest share "other".
MAX_GROUPS = 20
OTHER_GROUP = "other"
# The map's group of an image the feedback store does not know.
NO_GROUP = 65535
# Images whose files the start-up check looks for, spread over the index: a million stats would take minutes.
IMAGE_CHECK_SAMPLE = 1000
# Rows read from the index at a time where a class's own rows are scored (a rare class).
ROW_BLOCK = 16_384
# Most neighbours asked of the index while growing k to find k images of a class; past it, the class's rows are scored.
MAX_SEARCH_K = 16_384


def map_message(n: int) -> str:
    """What a browser user is told when the collection is too large for a PCA map made on the fly."""
    return (f"no map yet: {n:,} images are more than the {MAX_PCA_POINTS:,} this server maps on the fly. "
            "Ask whoever runs it to make one with 'toolkit tsne FEATURES -o map.png' (which writes map.csv) and restart it with "
            "'toolkit serve ... --map map.csv'.")


class IndexRows:
    """The index's rows as a read-only array-like (shape, len, slices), so streaming code reads them block by block.

    `maps.embedding.embed_2d` reads its features through `feature_blocks`:
    given this, a PCA map reads the rows from the index a block at a time.
    """

    def __init__(self, index):
        self.index = index
        self.shape = (index.size, index.dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.index.rows(np.arange(self.shape[0])[rows])


class Classes:
    """Each indexed image's class text as the store registers it (`images.class`), as codes.

    Texts: one class (multiclass), the positive labels joined by ';'
    (multilabel), '' unknown. They are numbered most frequent first, then by
    name; the first MAX_GROUPS - 1 are the map's groups by that number, and
    when there are more, the rest share the last group, "other".
    """

    def __init__(self, names: list[str], registered: dict[str, str], labels: list[str]):
        texts = [registered.get(name) for name in names]
        counts = Counter(text for text in texts if text is not None)
        self.texts = sorted(counts, key=lambda text: (-counts[text], text))
        number = {text: i for i, text in enumerate(self.texts)}
        self.codes = np.array([number.get(text, -1) if text is not None else -1 for text in texts], dtype=np.int32)
        self.labels = list(labels)
        self.label_texts = {label: np.array([i for i, text in enumerate(self.texts) if label in text.split(SEPARATOR)],
                                            dtype=np.int32) for label in self.labels}
        self.label_counts = {label: int(sum(counts[self.texts[i]] for i in codes)) for label, codes in self.label_texts.items()}
        if len(self.texts) <= MAX_GROUPS:
            self.groups = [{"name": text, "count": counts[text]} for text in self.texts]
        else:
            named = self.texts[: MAX_GROUPS - 1]
            self.groups = [{"name": text, "count": counts[text]} for text in named]
            self.groups.append({"name": OTHER_GROUP, "count": sum(counts[text] for text in self.texts[MAX_GROUPS - 1:])})
        self.group_codes = np.where(self.codes < 0, NO_GROUP, np.minimum(self.codes, MAX_GROUPS - 1)).astype("<u2")

    def text(self, image_id: int) -> str:
        """The class text of an image ('' when unknown or not in the store)."""
        code = self.codes[image_id]
        return self.texts[code] if code >= 0 else ""

    def examples(self, count: int = 3) -> list[str]:
        """The `count` labels carried by most images (ties in the store's order), for the search box's placeholder."""
        ranked = sorted((label for label in self.labels if self.label_counts[label]),
                        key=lambda label: -self.label_counts[label])
        return ranked[:count]

    def unknown(self, label: str) -> str | None:
        """None for a label of the store, else what a browser user is told."""
        if label in self.label_texts:
            return None
        return f"no class '{label}'; the classes are: {', '.join(self.labels)}."

    def carrying(self, label: str) -> np.ndarray:
        """Boolean (N,): the images carrying `label` (a known one). One pass over N int32 codes: no copy of rows."""
        codes = self.label_texts[label]
        return self.codes == codes[0] if len(codes) == 1 else np.isin(self.codes, codes)


class Collection:
    """The indexed images, their classes and map: what every request reads, loaded once."""

    def __init__(self, index_dir, images_dir, *, scores=None, map_csv=None):
        from image_toolkit.data_tools.search.backends import load_index

        self.root = Path(images_dir).resolve()
        if not self.root.is_dir():
            raise DataError(f"{images_dir}: no such image folder; pass the folder the index's image paths are relative to.")
        # Read whole, not mapped: a server answers many queries, and a mapped index's first ones fault its lists in
        # (1M x 256 ivf: p95 21 ms cold against 0.18 ms read, benchmarks/bench_scale.py).
        index = load_index(index_dir, n_threads=1, mmap=False)
        self.index_dir = Path(index_dir)
        self.metadata = dict(index.features_metadata_)
        self.index, self.metric, self.dim = index, index.metric, int(index.dim)
        self.names = [self._relative(path) for path in index.paths_]
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.class_scores, self.vocabulary = self._class_scores(index, scores)
        self._check_images(images_dir)
        self.map_csv, self._coords, self._map_lock = map_csv, None, threading.Lock()
        if map_csv is not None:  # Read now, so a wrong --map is an error at start, not a 500 on the map view.
            self._coords = (self._read_map(Path(map_csv)), Path(map_csv).name)

    @property
    def size(self) -> int:
        return len(self.names)

    def rows(self, ids) -> np.ndarray:
        """The feature rows (M x D float32, as given) of the images `ids`, read from the index by id."""
        return self.index.rows(np.asarray(ids, dtype=np.int64))

    def centroid(self, ids) -> np.ndarray:
        """The mean (D,) of the rows `ids` in the metric's space (`rocchio.centroid`), reading only those rows."""
        ids = np.asarray(ids, dtype=np.int64)
        return rocchio.centroid(self.rows(ids), np.arange(len(ids)), metric=self.metric)

    def scores(self, query: np.ndarray, ids) -> np.ndarray:
        """Larger-is-nearer scores of the rows `ids` for the query, by the index's metric, read a block at a time."""
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.empty(len(ids), dtype=np.float32)
        for start in range(0, len(ids), ROW_BLOCK):
            block = ids[start : start + ROW_BLOCK]
            scores[start : start + len(block)] = rocchio.similarities(query, self.rows(block), metric=self.metric)
        return scores

    def nearest(self, query: np.ndarray, k: int, *, within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k indexed rows nearest the query (D,) by the index's metric: (ids, scores), best first, ties by id.

        Scores are larger-is-nearer, the app's convention: the index reports
        cosine and euclidean distances and inner products as they are.
        `within` (boolean N) keeps only those images: the index is asked for
        more neighbours, four times as many each round, until k of them are
        found; a class too rare for that (more than MAX_SEARCH_K neighbours
        needed) has its own rows scored instead, a block at a time.
        """
        if within is None:
            return self._search(query, k)
        members = int(within.sum())
        k = min(int(k), members)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        wanted = min(self.size, k * max(1, self.size // members))
        while wanted <= MAX_SEARCH_K:
            ids, scores = self._search(query, wanted)
            keep = within[ids]
            if keep.sum() >= k or wanted >= self.size:
                return ids[keep][:k], scores[keep][:k]
            wanted = min(self.size, 4 * wanted)
        ids = np.flatnonzero(within)
        scores = self.scores(query, ids)
        order = top_k(scores, k)
        return ids[order], scores[order]

    def _search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        values, ids = self.index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), k=min(int(k), self.index.size))
        values, ids = values[0], ids[0]
        found = ids >= 0  # An approximate index may find fewer than k.
        values, ids = values[found], ids[found]
        scores = 1 - values if self.metric == "cosine" else -values if self.metric == "euclidean" else values
        order = np.lexsort((ids, -scores))
        return ids[order], scores[order].astype(np.float32)

    def _relative(self, path: str) -> str:
        """An index path as a name relative to the image folder (absolute paths inside it are shortened)."""
        if not path.startswith(("/", "./")) and "//" not in path and "/./" not in path and not path.endswith(("/", "/.")):
            return path  # Already as Path writes it: no Path, and no new string, for each of a million names.
        candidate = Path(path)
        if candidate.is_absolute():
            try:
                return candidate.resolve().relative_to(self.root).as_posix()
            except ValueError:
                return path
        return candidate.as_posix()

    def _class_scores(self, index, scores) -> tuple[np.ndarray | None, list[str] | None]:
        from image_toolkit.data_tools.formats.features import read_features
        from image_toolkit.data_tools.search.keywords import class_names, scores_for_index

        try:
            paths, values, metadata, source = scores_for_index(
                index, read_features(scores) if scores else None, str(self.index_dir), scores_name=str(scores)
            )
            names = class_names(metadata, values.shape[1], source)
        except DataError as error:
            if scores:
                raise
            logger.info("Keyword search by learned queries only: %s", error)
            return None, None
        full = np.zeros((len(self.names), values.shape[1]), dtype=np.float32)
        rows = [self.ids.get(self._relative(path)) for path in paths]
        keep = [i for i, row in enumerate(rows) if row is not None]
        full[[rows[i] for i in keep]] = values[keep]
        return full, names

    def _check_images(self, images_dir) -> None:
        """Refuse an image folder holding none of the indexed images; warn with the count when some are missing.

        The wrong folder otherwise serves a page of broken images, every one a
        404. At most IMAGE_CHECK_SAMPLE names, spread evenly over the index,
        are looked for: a million files are not stat'ed at start-up.
        """
        n = len(self.names)
        sample = np.unique(np.linspace(0, n - 1, min(n, IMAGE_CHECK_SAMPLE)).astype(np.int64)) if n else []
        missing = sum(self.file(int(i)) is None for i in sample)
        looked = f"{n:,} indexed images" if len(sample) == n else f"{len(sample):,} indexed images looked for (of {n:,})"
        if n and missing == len(sample):
            raise DataError(
                f"{images_dir}: holds none of the {looked} (the index names e.g. '{self.names[0]}'); "
                "pass the folder the index's image paths are relative to as --img-directory.")
        if missing:
            logger.warning("%s: %d of the %s are not in this folder; the page shows them as missing.", images_dir, missing, looked)

    def file(self, image_id: int) -> Path | None:
        """The image file of an id, or None when the id is unknown or its file is not inside the image folder."""
        if not 0 <= image_id < len(self.names):
            return None
        path = (self.root / self.names[image_id]).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def map_info(self) -> dict:
        """`info.map`: where the coordinates come from, how many images have a point, or why there is no map."""
        if self._coords is not None:
            coords, source = self._coords
            return {"source": source, "points": int((~np.isnan(coords[:, 0])).sum()), "message": None}
        if self.size > MAX_PCA_POINTS:
            return {"source": None, "points": None, "message": map_message(self.size)}
        return {"source": "pca", "points": self.size, "message": None}

    def coords(self) -> tuple[np.ndarray, str] | None:
        """(N x 2 float32 coordinates, NaN where an image has no point; where they come from), or None: no map.

        A PCA map (no --map, at most MAX_PCA_POINTS images) is made on the
        first call, its rows streamed from the index, and kept; concurrent
        first calls wait for that one.
        """
        with self._map_lock:
            if self._coords is None and self.size <= MAX_PCA_POINTS:
                from image_toolkit.data_tools.maps.embedding import embed_2d

                self._coords = (embed_2d(IndexRows(self.index), method="pca", where=str(self.index_dir)), "pca")
        return self._coords

    def _read_map(self, path: Path) -> np.ndarray:
        coords = np.full((len(self.names), 2), np.nan, dtype=np.float32)
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = [name for name in ("image", "x", "y") if name not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{path}: no '{missing[0]}' column; --map takes the image,x,y CSV of toolkit tsne.")
                for line, row in enumerate(reader, start=2):
                    image_id = self.ids.get(self._relative(row["image"]))
                    if image_id is None:
                        continue
                    try:
                        coords[image_id] = float(row["x"]), float(row["y"])
                    except ValueError:
                        raise DataError(f"{path} line {line}: x and y must be numbers; got {row['x']!r}, {row['y']!r}.") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error}).") from None
        absent = int(np.isnan(coords[:, 0]).sum())
        if absent == len(self.names):
            raise DataError(f"{path}: none of its images is in the index; make the map from the index's features.")
        if absent:
            logger.warning("%s: %d indexed images have no coordinates and are left off the map.", path, absent)
        return coords
