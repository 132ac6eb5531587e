"""`toolkit train` (also `python train.py`): transfer-learning classifier from a label CSV."""

from __future__ import annotations

import click

from image_toolkit.cli.common import (
    OUTPUT_DIR,
    background_option,
    command,
    config_option,
    echo_json,
    json_option,
    option_group,
    progress_to_stderr,
    quiet_option,
    saved,
    start,
    strategy_option,
    tensorboard_option,
)
from image_toolkit.data_tools import names


# One option for every training command: mirrored over this machine's GPUs, multiworker over the machines in TF_CONFIG.
def classifier_options(*, task: str = "multilabel"):
    """The model and training options `train` and `experiment` share."""
    return option_group(
        click.option("--task", type=click.Choice(names.TASKS), default=task, show_default=True),
        click.option("--backbone", type=click.Choice(names.BACKBONES), default="resnet50", show_default=True),
        click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or the path of a local weights file for the backbone."),
        click.option("--head-units", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--image-size", type=click.IntRange(min=8), default=224, show_default=True),
        click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
        click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True, help="Dropout rate before the output layer (0: none)."),
        click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True, help="Share of the labelled images held out for validation (the best epoch is chosen on it)."),
        click.option("--missing-labels", type=click.Choice(names.MISSING_LABELS), default="mask", show_default=True, help="Blank label cells: leave out of the loss (mask), fill with the label mean, or by matrix factorisation (mf)."),
        click.option("--class-weight", type=click.Choice(names.CLASS_WEIGHTS), default="none", show_default=True),
        click.option("--fine-tune", is_flag=True, help="Unfreeze the pretrained backbone."),
        click.option("--augment", is_flag=True, help="Random flips, rotations and zooms of training images."),
        click.option("--precision", type=click.Choice(names.PRECISIONS), default="fp32", show_default=True),
        background_option("white; recorded in run.json and the model, which predict, evaluate and extraction then use",
                          default="white"),
    )


@command("train")
@config_option("train")
@click.option("--data-csv", default="./label.txt", show_default=True, help="Label CSV: an 'image' column, then one 0/1 column per label (or 'label' for --task multiclass).")
@click.option("--img-directory", default="./images", show_default=True, help="Folder the 'image' paths are relative to.")
@click.option("--output-dir", default=".", show_default=True, type=OUTPUT_DIR, help="Where best_model.h5, loss_curve.png, history.csv and run.json go.")
@classifier_options()
@click.option("--seed", type=int, default=42, show_default=True)
@strategy_option
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its last epoch.")
@click.option("--train-csv", default=None, help="A ready training list (rows may repeat, e.g. from 'toolkit resample'); needs --val-csv.")
@click.option("--val-csv", default=None, help="A ready validation list; needs --train-csv.")
@click.option("--thresholds", type=click.Choice(names.THRESHOLDS), default="fixed", show_default=True,
              help="Multi-label: 0.5 for every label (fixed), or each label's best F1 on the validation list, stored in the model (tuned).")
@tensorboard_option
@quiet_option
@json_option
def train(quiet: bool, as_json: bool, **options) -> None:
    """Train a multi-label (or multi-class) image classifier by transfer learning.

    The best epoch by validation macro-F1 is saved to best_model.h5 in
    --output-dir, with its label names, for 'toolkit predict'.
    --config RUN_JSON trains again with the options of an earlier run.

    \b
    Example (the demo data, CPU, ten seconds):
      toolkit train --backbone small_cnn --weights none --image-size 32 \\
                    --epochs 30 --output-dir runs/demo
      toolkit train --config runs/demo/run.json --epochs 40 --output-dir runs/longer
    """
    start(quiet)
    from image_toolkit.models.runtime import progress_verbosity
    from image_toolkit.models.training import TrainOptions, train_classifier

    with progress_to_stderr(as_json):
        summary = train_classifier(TrainOptions(**options), verbose=progress_verbosity(quiet))
    if as_json:
        echo_json(summary)
    elif not quiet:
        click.echo(
            f"Best epoch {summary['best_epoch']}: validation macro-F1 {summary['best_val_macro_f1']:.4f}, "
            f"micro-F1 {summary['best_val_micro_f1']:.4f}; {saved(summary, 'model')}"
        )
        if "thresholds" in summary:
            click.echo(f"Tuned thresholds {', '.join(f'{t:.2f}' for t in summary['thresholds'])}: "
                       f"validation macro-F1 {summary['val_macro_f1_tuned']:.4f}")
