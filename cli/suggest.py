"""`toolkit suggest`: the images a model is least sure of, for people to judge (active learning)."""

from __future__ import annotations

from pathlib import Path

import click

from image_toolkit.cli.common import command, echo_json, json_option, quiet_option, start
from image_toolkit.data_tools.names import SUGGEST_STRATEGIES as STRATEGIES

# Rows of the ranking printed to the terminal; the CSV has all --n.
SHOWN = 10


@command("suggest")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--n", type=click.IntRange(min=1), default=40, show_default=True, help="How many images to suggest.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="margin", show_default=True,
              help="margin: smallest top-1 minus top-2 probability (multi-label: smallest |p - threshold|); "
                   "entropy: largest entropy; random: a seeded draw (the control).")
@click.option("--feedback", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Image feedback CSV (toolkit feedback export): the images it names are judged already and left out.")
@click.option("--data-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Label CSV: the images it labels fully are left out (a blank label leaves an image in).")
@click.option("--img-directory", type=click.Path(file_okay=False, path_type=Path), default=Path("./images"), show_default=True,
              help="Folder the 'image' paths are relative to, when IMAGES is a CSV.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("suggestions.csv"), show_default=True,
              help="The CSV to write: rank,image,score,query_class,probability,predicted.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Multi-label: one threshold for every label (default: the model's tuned thresholds, or 0.5).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --strategy random.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@quiet_option
@json_option
def suggest(model: Path, images: tuple[str, ...], n: int, strategy: str, feedback: Path | None, data_csv: Path | None,
            img_directory: Path, output: Path, threshold: float | None, seed: int, batch_size: int, quiet: bool,
            as_json: bool) -> None:
    """Rank the images of IMAGES by MODEL's doubt and write the --n most uncertain to --output.

    MODEL is a best_model.h5 of toolkit train. IMAGES are files or folders
    (an image is named by its path inside the folder, as in a label CSV), or
    one label or list CSV with an 'image' column under --img-directory.
    Images that --feedback names or --data-csv labels are left out: ask
    people about what nobody has judged. Each row's query_class is the class
    to ask about (the top class; multi-label: the label nearest its
    threshold), ready for 'toolkit serve --suggest' and
    'toolkit feedback simulate --suggest'.

    \b
    Example:
      toolkit suggest runs/demo/best_model.h5 images --n 40 --feedback image_feedback.csv
      toolkit suggest runs/demo/best_model.h5 unlabelled.csv --img-directory photos --strategy entropy --json
    """
    start(quiet)
    from image_toolkit.models.suggest import suggest_images

    summary = suggest_images(model, list(images), output, n=n, strategy=strategy, img_directory=img_directory,
                             feedback=feedback, data_csv=data_csv, seed=seed, threshold=threshold, batch_size=batch_size)
    for path, reason in summary["skipped"]:
        click.echo(f"Skipped {path}: {reason}", err=True)
    if as_json:
        echo_json({key: value for key, value in summary.items() if key != "skipped"})
        return
    if quiet:
        return
    rows = summary["suggestions"][:SHOWN]
    width = max(len(row["image"]) for row in rows)
    for row in rows:
        click.echo(f"{row['rank']:>4}  {row['image']:<{width}}  {strategy} {row['score']:.4f}  "
                   f"{row['query_class']} p={row['probability']:.3f}")
    if len(summary["suggestions"]) > SHOWN:
        click.echo(f"   … {len(summary['suggestions']) - SHOWN} more in {output}")
    click.echo(f"Wrote {summary['suggested']} suggestions ({strategy}) of {summary['ranked']} images ranked to {output}; "
               f"{summary['judged']} judged or labelled left out")
