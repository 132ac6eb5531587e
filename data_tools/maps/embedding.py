"""2-D maps of feature vectors: PCA (scikit-learn) or t-SNE (openTSNE).

Used by `toolkit tsne` to draw the images and by `toolkit feedback simulate`
to give simulated users a map to lasso on. t-SNE runs on the first 50
principal components (the usual first step: it removes noise and makes the
neighbour search cheap), with openTSNE on `n_jobs` threads. openTSNE picks the
gradient method: FFT-accelerated interpolation from 10,000 points on, and
Barnes-Hut below, where the FFT grid's fixed cost dominates (300 points, one
thread, here: 6 s with FFT, 0.4 s with Barnes-Hut). The default thread count
depends on the size (see `default_n_jobs`). A progress bar follows the
optimisation's iterations on a terminal (`show`). Memory: the features, their 50-d projection and openTSNE's
sparse neighbour graph (about 90 neighbours per point at perplexity 30).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
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


def reduce_pca(features: np.ndarray, n_components: int, *, seed: int = 0) -> np.ndarray:
    """The first `n_components` principal components (fewer when the data has fewer)."""
    from sklearn.decomposition import PCA

    n_components = min(n_components, features.shape[0], features.shape[1])
    return PCA(n_components=n_components, random_state=seed).fit_transform(features).astype(np.float32)


def embed_2d(
    features: np.ndarray,
    *,
    method: str = "tsne",
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int | None = None,
    show: bool | None = None,
    where: str = "features",
) -> np.ndarray:
    """An (N, 2) float32 map of N feature rows; the same seed gives the same map.

    t-SNE needs more than 3 x perplexity points; with fewer, the perplexity is
    lowered to (N - 1) / 3 with a warning. `n_jobs` None picks the thread
    count by size (`default_n_jobs`); -1 is all cores. `show` draws a bar of
    the t-SNE iterations on stderr (None: when stderr is a terminal).
    `where` names the features in errors (their file).
    """
    if method not in METHODS:
        raise OptionError(f"--method: expected one of {', '.join(METHODS)}. Received: {method!r}.")
    check_range("perplexity", perplexity, low=0, low_open=True)
    if n_jobs is not None:
        check_range("--n-jobs", n_jobs, low=1, special={-1: "all cores"})
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) < 4:
        raise DataError(f"{where}: a 2-D map needs at least 4 feature rows; got {len(features)}. "
                        "Extract features of more images.")
    if method == "pca":
        coords = reduce_pca(features, 2, seed=seed)
        if coords.shape[1] < 2:
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        return coords
    from openTSNE import TSNE

    largest = (len(features) - 1) / 3
    if perplexity > largest:
        warnings.warn(f"perplexity {perplexity:g} is too large for {len(features)} points; using {largest:.1f}", stacklevel=2)
        perplexity = largest
    reduced = reduce_pca(features, PCA_DIMS, seed=seed)
    if n_jobs is None:
        n_jobs = default_n_jobs(len(reduced))
    logger.info("t-SNE of %d points (%d-d after PCA), perplexity %g, n_jobs %d",
                len(reduced), reduced.shape[1], perplexity, n_jobs)
    with progress_bar(sum(TSNE_ITERATIONS), "t-SNE", show=show) as advance:

        def step(iteration: int, error: float, embedding) -> None:  # openTSNE stops on a true return value.
            advance(PROGRESS_EVERY)

        embedding = TSNE(
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
    return np.asarray(embedding, dtype=np.float32)


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
    task: str | None = None,
    show: bool | None = None,
) -> dict:
    """Embed a feature file in 2-D; write the coordinates (image,x,y) and the plot, atomically.

    `n_jobs` None picks the t-SNE thread count by size; `show` draws the t-SNE
    progress bar on stderr (None: when stderr is a terminal; False for --quiet).
    """
    import time

    import pandas as pd

    from image_toolkit.data_tools.atomic import atomic_path, refuse_inputs
    from image_toolkit.data_tools.formats.features import read_features
    from image_toolkit.data_tools.maps.plots import plot_embedding

    output = Path(output)
    if output.suffix.lower() != ".png":
        raise OptionError(f"-o {output}: the plot is a PNG; give a name ending in .png.")
    coords_path = Path(coords_path) if coords_path is not None else output.with_suffix(".csv")
    refuse_inputs(output, (features_path, labels, highlight), option="-o")
    refuse_inputs(coords_path, (features_path, labels, highlight), option="--coords")
    if coords_path.resolve() == output.resolve():
        raise OptionError(f"--coords {coords_path}: is the plot's name too (-o); give the coordinates CSV another name.")
    feature_set = read_features(features_path)
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
                          show=show, where=str(features_path))
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
        "seconds": round(seconds, 3),
    }
