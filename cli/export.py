"""`toolkit export`: a trained model as a SavedModel, ONNX, LiteRT or OpenVINO file that takes raw RGB."""

from __future__ import annotations

from pathlib import Path

import click

from image_toolkit.cli.common import command, echo_json, json_option, quiet_option, start

# The choices of --format (models.export.FORMATS, kept here so `--help` imports no TensorFlow; a test checks they agree).
FORMAT_NAMES = ("savedmodel", "onnx", "litert", "openvino")


@command("export")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "format_name", type=click.Choice(FORMAT_NAMES), required=True,
              help="savedmodel (TensorFlow), onnx (onnxruntime), litert (.tflite) or openvino; onnx and openvino need "
                   'their extra: pip install "image-toolkit[onnx]".')
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write it. Default: beside MODEL, e.g. best_model.onnx, best_model_savedmodel/.")
@quiet_option
@json_option
def export(model: Path, format_name: str, output: Path | None, quiet: bool, as_json: bool) -> None:
    """Export MODEL with its preprocessing inside, so the exported model takes raw RGB.

    MODEL is a best_model.h5 from 'toolkit train' (or an embedding_model.keras
    from train-siamese / train-simclr). The exported model takes float32 RGB
    0-255, NHWC at the model's image size, and returns what the Keras model
    returns (a probability per label). The label names and the input spec
    are written beside it (labels.json in a folder, NAME.json by a file).

    \b
    Example:
      toolkit export runs/demo/best_model.h5 --format onnx
      toolkit export runs/demo/best_model.h5 --format openvino --output exported/demo_openvino
    """
    start(quiet)
    from image_toolkit.models.export import export_model

    record = export_model(model, format_name, output=output)
    if as_json:
        echo_json(record)
    elif not quiet:
        size = record["input"]["shape"][1]
        click.echo(f"Exported {model} as {format_name} to {record['path']}: input 'rgb' float32 (batch, {size}, {size}, 3) "
                   f"raw RGB 0-255, output (batch, {record['output']['shape'][1]}); labels in {record['labels']}")
