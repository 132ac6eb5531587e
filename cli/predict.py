"""`toolkit predict` (also `python inference.py`): labels of new images from a trained model."""

from __future__ import annotations

import click

from image_toolkit.cli.common import command, echo_json, json_option, quiet_option, runtime_options, start
from image_toolkit.data_tools import names


@command("predict", aliases={"--model_weights": "--model"})
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_weights", default="./best_model.h5", show_default=True, help="A best_model.h5 written by 'toolkit train'.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="Probability at or above which a label is given (multi-label; default: the model's tuned thresholds, or 0.5).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@runtime_options(names.OPENVINO_PRECISIONS)
@quiet_option
@json_option
def predict(images: tuple[str, ...], model_weights: str, threshold: float | None, batch_size: int, runtime: str,
            precision: str | None, quiet: bool, as_json: bool) -> None:
    """Print each image's probability per label and the labels above --threshold.

    IMAGES are files or folders (searched recursively); any size or colour
    mode is fine. Unreadable files are skipped and named on stderr.

    \b
    Example:
      toolkit predict images/0000.png images/0001.png --model runs/demo/best_model.h5
      toolkit predict images/ --json > predictions.jsonl
      toolkit predict images/ --model runs/demo/best_model.h5 --runtime openvino
    """
    start(quiet)
    from image_toolkit.models.inference import predict_images

    predictions, skipped = predict_images(list(images), model_weights, threshold=threshold, batch_size=batch_size,
                                          runtime=runtime, precision=names.default_precision(runtime, precision))
    for path, reason in skipped:
        click.echo(f"Skipped {path}: {reason}", err=True)
    for prediction in predictions:
        if as_json:
            echo_json({"image": prediction.image, "probabilities": prediction.probabilities, "labels": prediction.labels})
        else:
            scores = "  ".join(f"{name}={p:.3f}" for name, p in prediction.probabilities.items())
            click.echo(f"{prediction.image}  {scores}  -> {', '.join(prediction.labels) or '(none)'}")
