"""`toolkit index build | add | info`: an approximate nearest-neighbour index of image features.

The commands import faiss and numpy inside their bodies, and never TensorFlow.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from image_toolkit.cli.common import FeaturePath, OutputFolder, echo_json, group, json_option, quiet_option, start

# The same as image_toolkit.data_tools.search.index.KINDS and METRICS (a test checks): repeated so that --help loads no faiss.
KINDS = ("hnsw", "ivf", "ivfpq", "flat")
METRICS = ("cosine", "euclidean", "inner_product")
BACKENDS = ("faiss", "milvus")  # image_toolkit.data_tools.search.backends.BACKENDS, repeated for the same reason.
SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

threads_option = click.option(
    "--n-jobs", "n_threads", type=int, default=-1, show_default=True, help="Threads for faiss and BLAS (-1: all cores)."
)


def _start(quiet: bool) -> None:
    start(quiet)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # Its loader logs every CPU feature it tries.


@group("index")
def index() -> None:
    """Build, grow and describe an approximate index of image features, for toolkit search.

    An index folder holds the faiss index (index.faiss), the image paths
    (paths.json) and metadata.json: how the features were made, the metric,
    the faiss parameters, and the recall measured when the index tuned itself.
    They sit in a sub-folder (set-1, set-2, ...) that index.json names: a
    build or add writes a new set and then switches index.json to it, so an
    interrupted run leaves the previous index whole.

    \b
    Example:
      toolkit get-transfer-layer images/ features.npz
      toolkit index build features.npz my_index/
      toolkit get-transfer-layer new_images/ more.npz
      toolkit index add my_index/ more.npz
      toolkit index info my_index/
    """


@index.command("build", context_settings=SETTINGS, aliases={"--M": "--m"})
@click.argument("features", type=FeaturePath(exists=True))
@click.argument("index_dir", type=OutputFolder(path_type=Path))
@click.option("--kind", type=click.Choice(KINDS), default="ivf", show_default=True,
              help="ivf: k-means lists, fastest to build and search on the benchmarks; hnsw: graph; "
                   "ivfpq: lists of 4-bit codes re-ranked exactly, small codes for large D; flat: exact.")
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True,
              help="cosine: inner product of L2-normalised rows; inner_product ranks larger first.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Raise efSearch (hnsw) or nprobe (ivf, ivfpq) until recall@10 on held-out images reaches this.")
@click.option("--m", "m", type=click.IntRange(min=2), default=24, show_default=True, help="hnsw: links per node.")
@click.option("--ef-construction", type=click.IntRange(min=1), default=48, show_default=True, help="hnsw: build-time search depth.")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="ivf, ivfpq: number of lists (default: 4 sqrt(N), at most N/39).")
@click.option("--pq-m", "pq_m", type=click.IntRange(min=1), default=None,
              help="ivfpq: 4-bit sub-quantizers, a divisor of the feature count (default: the largest up to half of it).")
@click.option("--k-factor", "k_factor", type=click.IntRange(min=1), default=None,
              help="ivfpq: rows proposed by the codes per result, re-ranked on the exact features (default: tuned).")
@click.option("--overwrite", is_flag=True, help="Replace an index already in INDEX_DIR.")
@click.option("--backend", type=click.Choice(BACKENDS), default="faiss", show_default=True,
              help="faiss: the index file in INDEX_DIR; milvus: a Milvus collection (--kind hnsw, ivf or flat), "
                   'INDEX_DIR keeping its paths and settings. Needs pip install "image-toolkit[milvus]".')
@click.option("--uri", default=None,
              help="--backend milvus: a Milvus Lite file ending .db, run in-process (default: INDEX_DIR/milvus.db), "
                   "or a server, http://host:19530.")
@threads_option
@quiet_option
@json_option
def build(features: Path, index_dir: Path, kind: str, metric: str, target_recall: float, m: int, ef_construction: int,
          nlist: int | None, pq_m: int | None, k_factor: int, overwrite: bool, backend: str, uri: str | None, n_threads: int,
          quiet: bool, as_json: bool) -> None:
    """Index the features in FEATURES (.npz, .h5, .pkl, or a feature folder) into the folder INDEX_DIR.

    The features are read a block at a time: a feature folder (features.npy
    memory-mapped) or an .h5 file larger than memory can be indexed.

    The index tunes itself: it holds out a sample of the images (a tenth, at
    least 100 or half of a small set, at most 1000), indexes the rest, and raises efSearch / nprobe until the
    sample's recall@10 against exact search reaches --target-recall; then it
    adds the sample too. The chosen value and the recall are stored and
    shown by toolkit index info.

    \b
    Example:
      toolkit index build features.npz my_index/
      toolkit index build features.npz my_index/ --kind hnsw --target-recall 0.99
      toolkit index build features.npz my_index/ --backend milvus --kind hnsw
      toolkit index build features.npz my_index/ --backend milvus --uri http://localhost:19530
    """
    _start(quiet)
    from image_toolkit.data_tools.atomic import writable_folder
    from image_toolkit.data_tools.errors import DataError
    from image_toolkit.data_tools.formats.features import open_features
    from image_toolkit.data_tools.search.backends import new_index
    from image_toolkit.data_tools.search.index import check_index_options, holds_index
    from image_toolkit.data_tools.search.keywords import with_class_names

    check_index_options(kind=kind, metric=metric, target_recall=target_recall, n_threads=n_threads)
    image_index = new_index(backend, index_dir=index_dir, uri=uri, kind=kind, metric=metric, target_recall=target_recall,
                            m=m, ef_construction=ef_construction, nlist=nlist, pq_m=pq_m, k_factor=k_factor, n_threads=n_threads)
    if holds_index(index_dir) and not overwrite:
        raise DataError(f"{index_dir} already holds an index; grow it with toolkit index add, or give --overwrite to replace it.")
    writable_folder(index_dir)
    feature_set = open_features(features)
    feature_set = type(feature_set)(feature_set.paths, feature_set.features,
                                    with_class_names(feature_set.metadata, feature_set.features.shape[1]))
    started = time.monotonic()
    image_index.fit(feature_set, show=False if quiet else None)
    seconds = time.monotonic() - started
    image_index.save(index_dir)
    image_index.close()
    _report(image_index, index_dir, as_json, quiet, f"Built {index_dir} in {seconds:.1f} s", seconds=round(seconds, 3))


@index.command("add", context_settings=SETTINGS)
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("features", type=FeaturePath(exists=True))
@threads_option
@quiet_option
@json_option
def add(index_dir: Path, features: Path, n_threads: int, quiet: bool, as_json: bool) -> None:
    """Add the images of FEATURES to the index in INDEX_DIR, without a rebuild.

    Images already in the index are skipped. The features must come from
    the same model and layer. Adding at least 100 images at once tunes the
    index again, on a sample of them; fewer keep the tuned setting.

    \b
    Example:
      toolkit get-transfer-layer new_images/ more.npz
      toolkit index add my_index/ more.npz
    """
    _start(quiet)
    from image_toolkit.data_tools.formats.features import open_features
    from image_toolkit.data_tools.search.backends import load_index

    image_index = load_index(index_dir, n_threads=n_threads, mmap=False)  # A mapped index is read-only.
    before = image_index.size
    image_index.add(open_features(features), where=features.name, show=False if quiet else None)
    if image_index.size > before:
        image_index.save(index_dir)
    image_index.close()
    _report(image_index, index_dir, as_json, quiet, f"Added {image_index.size - before} images to {index_dir}",
            added=image_index.size - before)


@index.command("info", context_settings=SETTINGS)
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@quiet_option
@json_option
def info(index_dir: Path, quiet: bool, as_json: bool) -> None:
    """Show the size, kind, metric, parameters and measured recall of the index in INDEX_DIR.

    \b
    Example:
      toolkit index info my_index/
      toolkit index info my_index/ --json
    """
    _start(quiet)
    from image_toolkit.data_tools.search.backends import load_index

    _report(load_index(index_dir, mmap=True), index_dir, as_json, False, None)  # Mapped: nothing read but the header.


def _report(image_index, index_dir: Path, as_json: bool, quiet: bool, headline: str | None, **extra) -> None:
    """The index's description, as JSON or as a few lines for people (none with --quiet; info shows them anyway)."""
    from image_toolkit.data_tools.formats.features import shown_model
    from image_toolkit.data_tools.search.index import index_set

    description = {"backend": "faiss", **image_index.info()}
    size_bytes = sum(path.stat().st_size for path in index_set(index_dir).iterdir() if path.is_file())
    if as_json:
        echo_json({"index_dir": str(index_dir), **extra, **description, "bytes": size_bytes})
        return
    if quiet:
        return
    params = ", ".join(f"{key}={value}" for key, value in description["params"].items())
    tuning = description["tuning"]
    features = description["features"]
    lines = [headline] if headline else []
    lines.append(f"{index_dir}: {description['size']:,} images x {description['dim']} features, "
                 f"{description['kind']}{f' ({params})' if params else ''}, metric {description['metric']}, "
                 f"{size_bytes / 2**20:.1f} MB")
    if description.get("uri"):
        lines.append(f"backend: {description['backend']} at {description['uri']}, collection {description['collection']}")
    if tuning.get("exact"):
        lines.append("recall: 1 (exact search)")
    elif tuning.get("recall") is not None:
        lines.append(f"recall@{tuning['k']}: {tuning['recall']:.3f} with {tuning['parameter']}={tuning['value']}, "
                     f"measured on {tuning['sample']:,} held-out images against {tuning['indexed']:,} "
                     f"(target {tuning['target_recall']})")
    elif tuning:
        lines.append(f"recall: not measured (too few images); {tuning['parameter']}={tuning['value']}")
    features = shown_model(features)
    shown = [f"{key} {features[key]}" for key in ("model", "output", "layer", "image_size", "weights") if features.get(key) is not None]
    lines.append(f"features: {', '.join(shown) if shown else 'no metadata (search --image unavailable)'}")
    click.echo("\n".join(lines))
