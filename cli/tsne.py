"""`toolkit tsne`: a 2-D map of image features, coloured by class, with chosen images on top."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from image_toolkit.cli.common import FeaturePath, command, echo_json, json_option, quiet_option, start
from image_toolkit.data_tools.maps import MAX_POINTS
from image_toolkit.data_tools.names import TASKS


@command("tsne", aliases={"--labels": "--data-csv"})
@click.argument("features", type=FeaturePath(exists=True))
@click.option("--data-csv", "labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Label CSV (as for train), or a metadata CSV (image,class,split, as for train-siamese): colour the points by class.")
@click.option("--highlight", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="CSV with an 'image' column to draw on top; an image feedback CSV highlights its deselected images.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="tsne.png", show_default=True, help="The plot (.png).")
@click.option("--coords", type=click.Path(dir_okay=False, path_type=Path), default=None, help="The coordinates CSV (image,x,y); default: the plot's name with .csv.")
@click.option("--method", type=click.Choice(["tsne", "pca"]), default="tsne", show_default=True)
@click.option("--perplexity", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-jobs", type=int, default=None, help="Threads for t-SNE (default: 1 below 10,000 points, all cores from there, as measured; -1: all cores).")
@click.option("--max-points", type=int, default=MAX_POINTS, show_default=True,
              help="Images that make the map: with more, a random sample (by --seed) of this many is embedded and the others are placed on it.")
@click.option("--task", type=click.Choice(TASKS), default=None, help="Layout of --data-csv (default: multiclass if it has a 'label' column).")
@quiet_option
@json_option
def tsne(features: Path, labels: Path | None, highlight: Path | None, output: Path, coords: Path | None, method: str,
         perplexity: float, seed: int, n_jobs: int | None, max_points: int, task: str | None, quiet: bool,
         as_json: bool) -> None:
    """Map the images of FEATURES to 2-D with t-SNE (openTSNE, after PCA to 50-d) and plot them.

    Points are coloured by class (--data-csv; a multilabel image by its set of
    positive labels); --highlight draws images on top, e.g. the images
    labellers deselected. The coordinates go to a CSV (image,x,y), the map of
    a web app.

    FEATURES is a feature file (.npz, .h5, .pkl) or a feature folder
    (features.npy, paths.txt, metadata.json), read block by block. The sample
    defines the map, the rest are placed: with more images than --max-points,
    a random sample of --max-points (the same for the same --seed) is mapped,
    then every other image is placed on that map without moving it
    (openTSNE's transform; PCA: projected): about 1-2 min per 100,000 images on
    2 cores, after some 3.5 min for a sample of 50,000. The CSV and the plot
    hold every image.

    \b
    Example:
      toolkit tsne features.npz --data-csv label.txt --highlight image_feedback.csv -o tsne.png
    """
    start(quiet)
    logging.getLogger("openTSNE").setLevel(logging.WARNING)  # It logs each step of its optimisation.
    from image_toolkit.data_tools.maps.embedding import draw_map

    summary = draw_map(features, output, labels=labels, highlight=highlight, coords_path=coords, method=method,
                       perplexity=perplexity, seed=seed, n_jobs=n_jobs, max_points=max_points, task=task,
                       show=False if quiet else None)
    if as_json:
        echo_json(summary)
    elif not quiet:
        click.echo(
            f"Mapped {summary['images']} images ({method}, {summary['seconds']:.1f} s"
            + (f"; {summary['sampled']} sampled, {summary['placed']} placed" if summary["placed"] else "")
            + f"): {summary['plot']} and {summary['coords']}"
            + (f"; {summary['highlighted']} highlighted" if highlight else "")
        )
