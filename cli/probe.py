"""`toolkit probe`: a linear model (logistic regression) on extracted features, saved as a classifier."""

from __future__ import annotations

import click

from image_toolkit.cli.common import OUTPUT_DIR, FeaturePath, command, echo_json, json_option, quiet_option, start
from image_toolkit.data_tools import names


@command("probe")
@click.argument("features", type=FeaturePath(exists=True))
@click.option("--data-csv", default="./label.txt", show_default=True, help="Label CSV: an 'image' column (as the features name the images), then one 0/1 column per label (or 'label' for --task multiclass).")
@click.option("--output-dir", default=".", show_default=True, type=OUTPUT_DIR, help="Where best_model.h5, train.csv, val.csv and run.json go.")
@click.option("--task", type=click.Choice(names.TASKS), default="multilabel", show_default=True)
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True, help="Share of the labelled images held out for validation, split as toolkit train splits.")
@click.option("--class-weight", type=click.Choice(names.CLASS_WEIGHTS), default="none", show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--train-csv", default=None, help="A ready training list (rows may repeat); needs --val-csv.")
@click.option("--val-csv", default=None, help="A ready validation list; needs --train-csv.")
@click.option("--n-jobs", type=int, default=1, show_default=True, help="Processes for the cross-validation of C (-1: all cores).")
@quiet_option
@json_option
def probe(features, quiet: bool, as_json: bool, **options) -> None:
    """Fit a linear probe: logistic regression on extracted features, C chosen by cross-validation.

    The features' rows are matched to the label CSV by image name. The probe
    is saved with the extractor that made the features as best_model.h5, which
    'toolkit predict' takes as any trained classifier.

    \b
    Example (pixels of the demo data, seconds):
      toolkit get-transfer-layer images pixels.npz --model pixels --image-size 32
      toolkit probe pixels.npz --data-csv label.txt --output-dir runs/probe
    """
    start(quiet)
    from image_toolkit.models.probe import ProbeOptions, train_probe

    summary = train_probe(ProbeOptions(features=str(features), **options))
    if as_json:
        echo_json(summary)
    elif not quiet:
        click.echo(
            f"Linear probe: validation macro-F1 {summary['val_macro_f1']:.4f}, "
            f"micro-F1 {summary['val_micro_f1']:.4f}; model saved to {summary['model']}"
        )
