"""2-D maps of feature vectors: PCA (scikit-learn) or t-SNE (openTSNE), for up to millions of images.

Used by `toolkit tsne` to draw the images and by `toolkit feedback simulate`
to give simulated users a map to lasso on. t-SNE runs on the first 50
principal components (the usual first step: it removes noise and makes the
neighbour search cheap), with openTSNE on `n_jobs` threads. openTSNE picks the
gradient method: FFT-accelerated interpolation from 10,000 points on, and
Barnes-Hut below, where the FFT grid's fixed cost dominates (300 points, one
thread, here: 6 s with FFT, 0.4 s with Barnes-Hut). The default thread count
depends on the size (see `default_n_jobs`). A progress bar follows the
optimisation's iterations on a terminal (`show`).

The sample defines the map, the rest are placed on it. t-SNE's cost grows
with the points it arranges (20,000 took 78 s on 2 cores), so with more rows
than `max_points` (default 50,000) a random sample of `max_points` rows, the
same for the same seed, is embedded as above (PCA fitted on it), and every
other row is projected with that PCA and placed on the finished map by
openTSNE's `TSNEEmbedding.transform`: each new point starts at the median of
its 25 nearest sampled points and is optimised against the sampled points
only, which do not move. Placing streams, one block of `BLOCK_ROWS` rows at a
time, behind a "Placing" bar. Measured with `benchmarks/bench_tsne.py
--sample` (256-d clustered points, memory-mapped) on 2 cores shared with
other jobs (load average about 5): 100,000 points from a sample of 50,000
took 278 s, 210 s for the sample and 68 s to place the other 50,000 (135 s
per 100,000 placed); with a sample of 20,000, 74 s per 100,000 placed; with
5,000, 20-35 s. So a million images with the default sample: about 3.5 min
of t-SNE, then 10-20 min of placing. `--method pca` fits its 2 components on
the same sample and projects the rest block by block: a million images took
8 s end to end, CSV and plot included.

Memory: the sample's features (max_points x D, e.g. 400 MB at 50,000 x
2,048), their 50-d projection, openTSNE's sparse neighbour graph of the sample
(about 90 neighbours per point at perplexity 30), one block of rows, and the
(N, 2) map; never the N x D features. Features are read only through
`feature_blocks`, so an on-disk array (memmap, h5py dataset) works.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.features import feature_blocks
from image_toolkit.data_tools.maps import MAX_POINTS
from image_toolkit.data_tools.progress import progress_bar

logger = logging.getLogger(__name__)

METHODS = ("tsne", "pca")
PCA_DIMS = 50
# openTSNE's iterations: early exaggeration, then the rest; the bar advances every PROGRESS_EVERY.
TSNE_ITERATIONS = (250, 500)
PROGRESS_EVERY = 10
# Measured with `python benchmarks/bench_tsne.py --threads` (best of 3, n_jobs 1 and -1 taking
# turns) on a 2-core machine shared with other jobs (load average about 2):
#   points   n_jobs 1   n_jobs -1 (seconds)
#      300       0.53        0.42
#    2,000       7.29       14.57
#   20,000      77.93       75.46
# Below 10,000 points (Barnes-Hut) a second thread saves 0.1 s at best and doubled the time at
# 2,000 points on the loaded machine (the issue saw 20 s against 2.3 s at 300 points); from
# 10,000 (FFT gradients) all cores are as fast or slightly faster.
ALL_CORES_FROM = 10_000


def default_n_jobs(n_points: int) -> int:
    """openTSNE threads when the caller gives none: one below ALL_CORES_FROM points, all cores from there."""
    return 1 if n_points < ALL_CORES_FROM else -1


def check_max_points(max_points: int, method: str, perplexity: float) -> None:
    """A usage error unless a sample of `max_points` rows makes a map: 4 rows, and for t-SNE more than 3 x perplexity."""
    if method == "pca":
        check_range("--max-points", max_points, low=4, why="4 rows for a map")
    else:
        check_range("--max-points", max_points, low=max(4, int(3 * perplexity) + 1),
                    why=f"t-SNE needs more than 3 x perplexity {perplexity:g} points")


def sample_rows(n_rows: int, max_points: int, *, seed: int = 0) -> np.ndarray | None:
    """The sorted row numbers of the seeded random sample that defines the map; None when all rows fit."""
    if n_rows <= max_points:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_points, replace=False))


def rows_in_block(rows: np.ndarray, start: int, length: int) -> np.ndarray:
    """Where the sorted row numbers `rows` that fall in the block of `length` rows from `start` lie in that block."""
    return rows[np.searchsorted(rows, start) : np.searchsorted(rows, start + length)] - start


def read_rows(features, rows: np.ndarray | None, *, where: str = "features") -> np.ndarray:
    """The float32 rows `rows` (sorted; None: all) of `features`, read block by block into one array.

    All rows of a float32 array already in memory (an .npz or .pkl input)
    are only checked, block by block, and given back as they are: a copy
    would double the features. A memmap or an h5 dataset is read into memory.
    """
    if rows is None and type(features) is np.ndarray and features.dtype == np.float32:  # Not a memmap, a subclass.
        for _ in feature_blocks(features, where=where):
            pass
        return features
    shape = (len(features) if rows is None else len(rows), features.shape[1])
    sample = np.empty(shape, dtype=np.float32)
    filled = 0
    for start, block in feature_blocks(features, where=where):
        if rows is not None:
            block = block[rows_in_block(rows, start, len(block))]
        sample[filled : filled + len(block)] = block
        filled += len(block)
    return sample


def other_rows(features, rows: np.ndarray, *, where: str = "features") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row numbers, float32 rows) of the rows of `features` not in `rows` (sorted), one block at a time."""
    for start, block in feature_blocks(features, where=where):
        keep = np.ones(len(block), dtype=bool)
        keep[rows_in_block(rows, start, len(block))] = False
        if keep.any():
            yield start + np.flatnonzero(keep), block[keep]


def fit_pca(sample: np.ndarray, n_components: int, *, seed: int = 0):
    """PCA fitted on `sample` and the sample's first `n_components` principal components (fewer when the data has fewer).

    The fitted PCA projects the rows outside the sample (`transform`).
    """
    from sklearn.decomposition import PCA

    n_components = min(n_components, sample.shape[0], sample.shape[1])
    pca = PCA(n_components=n_components, random_state=seed)
    return pca, pca.fit_transform(sample).astype(np.float32)


def fit_tsne(reduced: np.ndarray, *, perplexity: float, seed: int, n_jobs: int, show: bool | None):
    """openTSNE's embedding of `reduced` (a TSNEEmbedding: an (N, 2) array that can place new points)."""
    from openTSNE import TSNE

    logger.info("t-SNE of %d points (%d-d after PCA), perplexity %g, n_jobs %d",
                len(reduced), reduced.shape[1], perplexity, n_jobs)
    with progress_bar(sum(TSNE_ITERATIONS), "t-SNE", show=show) as advance:

        def step(iteration: int, error: float, embedding) -> None:  # openTSNE stops on a true return value.
            advance(PROGRESS_EVERY)

        return TSNE(
            n_components=2,
            perplexity=perplexity,
            initialization="pca",
            negative_gradient_method="auto",
            early_exaggeration_iter=TSNE_ITERATIONS[0],
            n_iter=TSNE_ITERATIONS[1],
            n_jobs=n_jobs,
            random_state=seed,
            verbose=False,
            callbacks=step,
            callbacks_every_iters=PROGRESS_EVERY,
        ).fit(reduced)


def embed_2d(
    features,
    *,
    method: str = "tsne",
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int | None = None,
    max_points: int = MAX_POINTS,
    show: bool | None = None,
    where: str = "features",
) -> np.ndarray:
    """An (N, 2) float32 map of N feature rows; the same seed gives the same map.

    `features` is an array or an on-disk array-like (`open_features`), read
    block by block. With more than `max_points` rows, a seeded sample of
    `max_points` rows makes the map and the others are placed on it (see
    the module docstring); with fewer, the map is that of all rows, as
    before sampling existed. t-SNE needs more than 3 x perplexity points;
    with fewer rows, the perplexity is lowered to (N - 1) / 3 with a
    warning. `n_jobs` None picks the thread count by the sample's size
    (`default_n_jobs`); -1 is all cores. `show` draws bars of the t-SNE
    iterations and of the placing on stderr (None: when stderr is a
    terminal). `where` names the features in errors (their file).
    """
    if method not in METHODS:
        raise OptionError(f"--method: expected one of {', '.join(METHODS)}. Received: {method!r}.")
    check_range("perplexity", perplexity, low=0, low_open=True)
    if n_jobs is not None:
        check_range("--n-jobs", n_jobs, low=1, special={-1: "all cores"})
    check_max_points(max_points, method, perplexity)
    if not hasattr(features, "shape"):
        features = np.asarray(features, dtype=np.float32)
    if len(features.shape) != 2 or len(features) < 4:
        raise DataError(f"{where}: a 2-D map needs at least 4 feature rows; got {len(features)}. "
                        "Extract features of more images.")
    rows = sample_rows(len(features), max_points, seed=seed)
    sample = read_rows(features, rows, where=where)
    if method == "pca":
        pca, coords = fit_pca(sample, 2, seed=seed)
    else:
        largest = (len(sample) - 1) / 3
        if perplexity > largest:
            warnings.warn(f"perplexity {perplexity:g} is too large for {len(sample)} points; using {largest:.1f}", stacklevel=2)
            perplexity = largest
        pca, reduced = fit_pca(sample, PCA_DIMS, seed=seed)
        del sample  # The 50-d projection stands for it from here.
        coords = fit_tsne(reduced, perplexity=perplexity, seed=seed,
                          n_jobs=default_n_jobs(len(reduced)) if n_jobs is None else n_jobs, show=show)
    if rows is not None:
        coords = place_rows(features, rows, coords, pca, method=method, show=show, where=where)
    coords = np.asarray(coords, dtype=np.float32)
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


# openTSNE's transform runs 250 iterations; 100 place 600 digits' points against a 200-point map with a 5-NN
# accuracy of 0.924 instead of 0.934, and a million points in about half the time (docs/scale.md).
PLACE_ITERATIONS = 100


def place_rows(features, rows: np.ndarray, sample_coords, pca, *, method: str, show: bool | None,
               where: str) -> np.ndarray:
    """The (N, 2) map of all rows: the sample's `sample_coords`, and every other row projected by `pca`
    and, for t-SNE, placed on the sample's embedding (openTSNE's transform, with its defaults but
    PLACE_ITERATIONS iterations)."""
    if method == "tsne":
        # openTSNE's "auto" picks Barnes-Hut for a block under 10,000 points, which rebuilds the sample's tree at
        # every iteration: 180-280 s per 100,000 placed against 20-35 s with the interpolation grid, which
        # is computed once for the sample (5,000 sampled, blocks of 2,000 and 16,000, here).
        sample_coords.gradient_descent_params["negative_gradient_method"] = "fft"
    coords = np.empty((len(features), sample_coords.shape[1]), dtype=np.float32)
    logger.info("placing %d points on the map of %d", len(features) - len(rows), len(rows))
    with progress_bar(len(features) - len(rows), "Placing", show=show) as advance:
        for numbers, block in other_rows(features, rows, where=where):
            projected = pca.transform(block)
            coords[numbers] = projected if method == "pca" else sample_coords.transform(projected, n_iter=PLACE_ITERATIONS)
            advance(len(numbers))
    # Read last: openTSNE's transform centres the sample's embedding in place, the frame the placed points are in.
    coords[rows] = sample_coords
    return coords


def highlighted_images(path: str | Path) -> tuple[set[str], str]:
    """The images to draw on top and what they are: the deselected images of an
    image feedback CSV, else every image listed."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"image": str}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({str(error).splitlines()[0]}).") from None
    if "image" not in frame.columns:
        raise DataError(f"{path}: no 'image' column (found {', '.join(frame.columns)}); --highlight needs one.")
    if "deselect_count" not in frame.columns:
        return set(frame["image"].str.strip()), "highlighted"
    counts = pd.to_numeric(frame["deselect_count"], errors="coerce").fillna(0)
    return set(frame.loc[counts > 0, "image"].str.strip()), "deselected"


def classes_by_image(labels: str | Path, task: str | None = None) -> tuple[dict[str, str], bool]:
    """Each image's class from a label CSV or a metadata CSV (image,class,split), and whether it is multilabel.

    A multilabel image's class is its positive labels joined by ';'.
    """
    from image_toolkit.data_tools.formats.labels import csv_header, image_classes, read_labels
    from image_toolkit.data_tools.formats.metadata import read_metadata

    if task is None and "class" in csv_header(labels):
        frame = read_metadata(labels)
        return dict(zip(frame["image"], frame["class"])), False
    table = read_labels(labels, task)
    return dict(zip(table.images, image_classes(table))), table.task == "multilabel"


def draw_map(
    features_path: str | Path,
    output: str | Path,
    *,
    labels: str | Path | None = None,
    highlight: str | Path | None = None,
    coords_path: str | Path | None = None,
    method: str = "tsne",
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int | None = None,
    max_points: int = MAX_POINTS,
    task: str | None = None,
    show: bool | None = None,
) -> dict:
    """Embed a feature file (or folder) in 2-D; write the coordinates (image,x,y) and the plot, atomically.

    `n_jobs` None picks the t-SNE thread count by size; with more rows than
    `max_points`, a sample makes the map and the rest are placed on it
    (`embed_2d`); `show` draws the progress bars on stderr (None: when
    stderr is a terminal; False for --quiet).
    """
    import time

    import pandas as pd

    from image_toolkit.data_tools.atomic import atomic_path, refuse_inputs
    from image_toolkit.data_tools.formats.features import open_features
    from image_toolkit.data_tools.maps.plots import plot_embedding

    output = Path(output)
    if output.suffix.lower() != ".png":
        raise OptionError(f"-o {output}: the plot is a PNG; give a name ending in .png.")
    coords_path = Path(coords_path) if coords_path is not None else output.with_suffix(".csv")
    refuse_inputs(output, (features_path, labels, highlight), option="-o")
    refuse_inputs(coords_path, (features_path, labels, highlight), option="--coords")
    if coords_path.resolve() == output.resolve():
        raise OptionError(f"--coords {coords_path}: is the plot's name too (-o); give the coordinates CSV another name.")
    check_max_points(max_points, method, perplexity)  # Before any file is read.
    feature_set = open_features(features_path)
    classes = None
    if labels is not None:
        known, multilabel = classes_by_image(labels, task)
        missing = sum(path not in known for path in feature_set.paths)
        if missing == len(feature_set.paths):
            raise DataError(
                f"{labels}: none of its images is in {features_path} (e.g. '{next(iter(known))}' vs "
                f"'{feature_set.paths[0]}'); pass the label CSV of the same images."
            )
        if missing:
            logger.warning("%d images of %s are not in %s and are drawn as 'unknown'", missing, features_path, labels)
        classes = [known.get(path, "") for path in feature_set.paths]
        if multilabel:
            classes = [name.replace(";", "+") if name else ("" if path not in known else "none") for name, path in zip(classes, feature_set.paths)]
    marked, what = None, "highlighted"
    if highlight is not None:
        chosen, what = highlighted_images(highlight)
        marked = np.array([path in chosen for path in feature_set.paths])
        absent = len(chosen - set(feature_set.paths))
        if absent:
            logger.warning("%d highlighted images of %s are not in %s", absent, highlight, features_path)
    # Both outputs are written aside and moved into place at the end, one right after the other: an unwritable
    # folder for either fails before the map is computed, and a failed run leaves neither.
    with atomic_path(coords_path) as coords_file, atomic_path(output) as plot_file:
        started = time.monotonic()
        coords = embed_2d(feature_set.features, method=method, perplexity=perplexity, seed=seed, n_jobs=n_jobs,
                          max_points=max_points, show=show, where=str(features_path))
        seconds = time.monotonic() - started
        frame = pd.DataFrame({"image": feature_set.paths, "x": coords[:, 0].round(4), "y": coords[:, 1].round(4)})
        frame.to_csv(coords_file, index=False)
        title = f"{'t-SNE' if method == 'tsne' else 'PCA'} of {Path(features_path).name} ({len(frame)} images)"
        plot_embedding(coords, plot_file, classes=classes, highlight=marked, highlight_label=what, title=title)
    return {
        "plot": str(output),
        "coords": str(coords_path),
        "images": len(frame),
        "highlighted": int(marked.sum()) if marked is not None else 0,
        "method": method,
        "sampled": min(len(frame), max_points),
        "placed": max(len(frame) - max_points, 0),
        "seconds": round(seconds, 3),
    }
