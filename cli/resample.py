"""`toolkit resample`: repeat training rows by group ratios, e.g. the deselected images x3."""

from __future__ import annotations

from pathlib import Path

import click

from image_toolkit.cli.common import command, echo_json, json_option, quiet_option, start
from image_toolkit.data_tools.names import TASKS


@command("resample")
@click.argument("train_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image_feedback_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The resampled training list to write.")
@click.option("--ratio", "ratios", multiple=True, required=True, metavar="GROUP=RATIO", help="deselected, selected, feedback or class:NAME, and a ratio > 0; repeat for more groups.")
@click.option("--val-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Validation list: resampling refuses a training list that shares an image with it.")
@click.option("--test-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Test list: likewise.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draws for fractional ratios.")
@click.option("--task", type=click.Choice(TASKS), default=None, help="Layout of the lists (default: multiclass if they have a 'label' column).")
@quiet_option
@json_option
def resample(train_csv: Path, image_feedback_csv: Path, output: Path, ratios: tuple[str, ...], val_csv: Path | None,
             test_csv: Path | None, seed: int, task: str | None, quiet: bool, as_json: bool) -> None:
    """Repeat the rows of TRAIN_CSV by the ratio of their group, using IMAGE_FEEDBACK_CSV.

    Groups: 'deselected' (deselect_count > 0 in the feedback), 'selected'
    (lassoed or selected, never deselected), 'feedback' (any feedback) and
    'class:NAME'. A row in several groups gets the product of their ratios.
    A ratio r gives floor(r) copies and one more with probability
    r - floor(r), drawn with --seed: 0.5 keeps about half of a group. The
    output trains with 'toolkit train --train-csv OUTPUT --val-csv VAL'.

    \b
    Example:
      toolkit resample train.csv image_feedback.csv -o train_meta.csv \\
                       --ratio deselected=3 --ratio class:seven=2 --val-csv val.csv
    """
    start(quiet)
    from image_toolkit.data_tools.feedback.resample import parse_ratios, resample_csv

    result = resample_csv(train_csv, image_feedback_csv, output, parse_ratios(ratios), seed=seed,
                          val_csv=val_csv, test_csv=test_csv, task=task)
    counts = result.counts
    if as_json:
        echo_json({"output": str(output), "rows": len(result.table), "groups": counts.to_dict(orient="records")})
        return
    if quiet:
        return
    shown = counts.assign(ratio=counts["ratio"].map(lambda r: "" if r != r else f"{r:g}"))
    click.echo(shown.to_string(index=False))
    click.echo(f"Wrote {len(result.table)} rows ({counts['rows_before'].iloc[-1]} before) to {output}")
