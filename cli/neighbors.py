"""`toolkit compute-distances`: the exact nearest neighbours of every image in a feature file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from image_toolkit.cli.common import OutputFolder, command, echo_json, json_option, quiet_option, start


@command("compute-distances")
@click.argument("features_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output_dir_path", type=OutputFolder(path_type=Path))
@click.argument("distance_metric")
@click.argument("n_neighbors", type=int)
@click.argument("n_cores", type=int, default=None, required=False)
@click.option("--include-self", is_flag=True, help="Let an image be its own nearest neighbour.")
@click.option(
    "--queries",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Feature file of other images: find their neighbours in FEATURES_PATH instead.",
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
    max_memory: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Find the N_NEIGHBORS nearest images of every image in FEATURES_PATH, exactly.

    FEATURES_PATH is a feature file (.npz, .h5 or .pkl) written by the
    extraction commands or by merge-features. DISTANCE_METRIC is one of
    cosine (1 - cosine similarity), euclidean, sqeuclidean, manhattan, or
    inner_product (larger is nearer). N_CORES (or --n-jobs) bounds the
    threads (-1: all cores; default 4).

    OUTPUT_DIR_PATH receives neighbors.npy (int64, one row per image: the
    row numbers of its neighbours, nearest first, itself excluded),
    distances.npy (float32, same shape) and neighbors.csv (query, rank,
    neighbor, distance).

    \b
    Example:
      toolkit compute-distances features.npz out/ cosine 50 --n-jobs -1
      toolkit compute-distances features.npz out/ cosine 50 -1     # the original script's spelling
    """
    if n_cores is not None and n_jobs is not None:
        raise click.UsageError(f"the thread count was given twice, as N_CORES {n_cores} and --n-jobs {n_jobs}; give it once.")
    n_cores = next((n for n in (n_cores, n_jobs) if n is not None), 4)
    start(quiet)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # Its loader logs every CPU feature it tries.
    from image_toolkit.data_tools.atomic import writable_folder
    from image_toolkit.data_tools.errors import DataError
    from image_toolkit.data_tools.formats.features import read_features
    from image_toolkit.data_tools.search.neighbors import check_options, exact_neighbors, write_neighbors

    max_bytes = max_memory * 2**20
    check_options(metric=distance_metric, n_threads=n_cores, max_memory=max_bytes)
    writable_folder(output_dir_path)
    gallery = read_features(features_path)
    query_set = read_features(queries) if queries else None
    if query_set is not None and query_set.features.shape[1] != gallery.features.shape[1]:
        raise DataError(
            f"{queries}: {query_set.features.shape[1]} features per row, but {features_path} has "
            f"{gallery.features.shape[1]}; extract both with the same model and layer."
        )
    started = time.monotonic()
    distances, indices = exact_neighbors(
        gallery.features,
        k=n_neighbors,
        metric=distance_metric,
        queries=None if query_set is None else query_set.features,
        include_self=include_self,
        max_memory=max_bytes,
        n_threads=n_cores,
    )
    seconds = time.monotonic() - started
    query_paths = gallery.paths if query_set is None else query_set.paths
    files = write_neighbors(output_dir_path, distances, indices, query_paths, gallery.paths)
    if as_json:
        echo_json(
            {
                "output_dir": str(output_dir_path),
                "files": [file.name for file in files],
                "queries": len(indices),
                "n_neighbors": n_neighbors,
                "metric": distance_metric,
                "seconds": round(seconds, 3),
            }
        )
    elif not quiet:
        click.echo(
            f"{len(indices):,} images x {n_neighbors} neighbours ({distance_metric}, {seconds:.1f} s): "
            f"{', '.join(file.name for file in files)} in {output_dir_path}"
        )


# N_CORES may be -1: let the parser keep an unknown "-1" as an argument instead of refusing it as an option.
compute_distances.context_settings["ignore_unknown_options"] = True
