"""`toolkit compute-distances`: the nearest neighbours of every image in a feature file, exact or at a measured recall."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
from click.core import ParameterSource

from image_toolkit.cli.common import FeaturePath, OutputFolder, command, echo_json, json_option, quiet_option, start

# The same as image_toolkit.data_tools.search.approximate_neighbors.METHODS (a test checks): repeated so that --help loads no faiss.
METHODS = ("exact", "ivf", "hnsw")


@command("compute-distances")
@click.argument("features_path", type=FeaturePath(exists=True))
@click.argument("output_dir_path", type=OutputFolder(path_type=Path))
@click.argument("distance_metric")
@click.argument("n_neighbors", type=int)
@click.argument("n_cores", type=int, default=None, required=False)
@click.option("--include-self", is_flag=True, help="Let an image be its own nearest neighbour.")
@click.option(
    "--queries",
    type=FeaturePath(exists=True),
    help="Feature file of other images: find their neighbours in FEATURES_PATH instead.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="exact",
    show_default=True,
    help="exact: every distance (fast up to about 50,000 images; above, a hint says how long it takes); "
    "ivf, hnsw: a faiss index, searched until the recall@N_NEIGHBORS measured on 2,000 images "
    "reaches --target-recall.",
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.95,
    show_default=True,
    help="ivf, hnsw: the recall@N_NEIGHBORS to reach, measured against exact search on a sample.",
)
@click.option("--n-jobs", "n_jobs", type=int, default=None,
              help="Threads (-1: all cores; default 4); the same as the positional N_CORES, give one of them.")
@click.option(
    "--max-memory", type=click.IntRange(min=1), default=512, show_default=True, help="Working memory in MB, beyond the features."
)
@quiet_option
@json_option
def compute_distances(
    features_path: Path,
    output_dir_path: Path,
    distance_metric: str,
    n_neighbors: int,
    n_cores: int | None,
    n_jobs: int | None,
    include_self: bool,
    queries: Path | None,
    method: str,
    target_recall: float,
    max_memory: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Find the N_NEIGHBORS nearest images of every image in FEATURES_PATH.

    FEATURES_PATH is a feature file (.npz, .h5 or .pkl) or folder written by
    the extraction commands or by merge-features. DISTANCE_METRIC is one of
    cosine (1 - cosine similarity), euclidean, sqeuclidean, manhattan, or
    inner_product (larger is nearer). N_CORES (or --n-jobs) bounds the
    threads (-1: all cores; default 4).

    The search is exact by default. --method ivf or hnsw builds a faiss
    index instead (not for manhattan) and raises its search setting until
    the recall@N_NEIGHBORS of 2,000 random images, against their exact
    neighbours, reaches --target-recall; the summary reports it. Fewer
    than 78 images are searched exactly.

    OUTPUT_DIR_PATH receives neighbors.npy (int64, one row per image: the
    row numbers of its neighbours, nearest first, itself excluded),
    distances.npy (float32, same shape) and neighbors.csv (query, rank,
    neighbor, distance).

    \b
    Example:
      toolkit compute-distances features.npz out/ cosine 50 --n-jobs -1
      toolkit compute-distances features.npz out/ cosine 50 --method ivf --target-recall 0.95
      toolkit compute-distances features.npz out/ cosine 50 -1     # the original script's spelling
    """
    if n_cores is not None and n_jobs is not None:
        raise click.UsageError(f"the thread count was given twice, as N_CORES {n_cores} and --n-jobs {n_jobs}; give it once.")
    n_cores = next((n for n in (n_cores, n_jobs) if n is not None), 4)
    if method == "exact" and click.get_current_context().get_parameter_source("target_recall") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--target-recall is for --method ivf or hnsw; exact search finds every neighbour (recall 1).")
    start(quiet)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # Its loader logs every CPU feature it tries.
    from image_toolkit.data_tools.atomic import writable_folder
    from image_toolkit.data_tools.errors import DataError
    from image_toolkit.data_tools.formats.features import open_features
    from image_toolkit.data_tools.search.approximate_neighbors import check_method, exact_hint, find_neighbors
    from image_toolkit.data_tools.search.neighbors import check_options, write_neighbors

    max_bytes = max_memory * 2**20
    check_options(metric=distance_metric, n_threads=n_cores, max_memory=max_bytes)
    check_method(method, distance_metric, target_recall)
    writable_folder(output_dir_path)
    gallery = open_features(features_path)
    query_set = open_features(queries) if queries else None
    if query_set is not None and query_set.features.shape[1] != gallery.features.shape[1]:
        raise DataError(
            f"{queries}: {query_set.features.shape[1]} features per row, but {features_path} has "
            f"{gallery.features.shape[1]}; extract both with the same model and layer."
        )
    n_rows, dim = gallery.features.shape
    hint = exact_hint(n_rows, dim, n_cores, None if query_set is None else len(query_set.paths))
    if method == "exact" and hint and not quiet:
        click.echo(hint, err=True)
    started = time.monotonic()
    found = find_neighbors(
        gallery.features,
        k=n_neighbors,
        method=method,
        metric=distance_metric,
        queries=None if query_set is None else query_set.features,
        include_self=include_self,
        target_recall=target_recall,
        max_memory=max_bytes,
        n_threads=n_cores,
        show=False if quiet else None,
    )
    seconds = time.monotonic() - started
    query_paths = gallery.paths if query_set is None else query_set.paths
    files = write_neighbors(output_dir_path, found.distances, found.indices, query_paths, gallery.paths)
    recall = found.recall and {key: found.recall[key] for key in ("k", "sample", "value")}
    if as_json:
        echo_json(
            {
                "output_dir": str(output_dir_path),
                "files": [file.name for file in files],
                "queries": len(found.indices),
                "n_neighbors": n_neighbors,
                "metric": distance_metric,
                "method": found.method,
                "recall": recall,
                "params": found.params,
                "seconds": round(seconds, 3),
            }
        )
    elif not quiet:
        how = distance_metric
        if recall:
            parameter = found.recall["parameter"]
            how += (f", {found.method} {parameter}={found.params[parameter]}, "
                    f"recall@{recall['k']} {recall['value']:.3f} on {recall['sample']:,} images")
        click.echo(
            f"{len(found.indices):,} images x {n_neighbors} neighbours ({how}, {seconds:.1f} s): "
            f"{', '.join(file.name for file in files)} in {output_dir_path}"
        )


# N_CORES may be -1: let the parser keep an unknown "-1" as an argument instead of refusing it as an option.
compute_distances.context_settings["ignore_unknown_options"] = True
