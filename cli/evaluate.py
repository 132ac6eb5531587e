"""`toolkit evaluate`: score a trained classifier on a labelled test list."""

from __future__ import annotations

import click

from image_toolkit.cli.common import OUTPUT_DIR, command, echo_json, json_option, quiet_option, start


@command("evaluate")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("test_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--img-directory", default="./images", show_default=True, help="Folder the 'image' paths of TEST_CSV are relative to.")
@click.option("--output-dir", default="evaluation", show_default=True, type=OUTPUT_DIR, help="Where evaluation.json, per_label.csv, pr_curves.png and confusion.png go.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="One threshold for every label (default: the model's tuned thresholds, or 0.5).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@quiet_option
@json_option
def evaluate(model: str, test_csv: str, img_directory: str, output_dir: str, threshold: float | None, batch_size: int,
             quiet: bool, as_json: bool) -> None:
    """Score MODEL (a best_model.h5) on TEST_CSV, a label CSV in training's layout.

    Per label: precision, recall, F1 and support at the model's thresholds,
    ROC-AUC and average precision; micro and macro averages; for a
    multi-class model the accuracy and confusion matrix. Blank label cells
    are left out, as in training.

    \b
    Example:
      toolkit evaluate runs/demo/best_model.h5 runs/demo/val.csv --output-dir runs/demo/evaluation
    """
    start(quiet)
    from image_toolkit.models.evaluation import evaluate_classifier

    summary = evaluate_classifier(model, test_csv, img_directory=img_directory, output_dir=output_dir,
                                  threshold=threshold, batch_size=batch_size)
    if as_json:
        echo_json(summary)
    elif not quiet:
        width = max(len(row["class"]) for row in summary["per_label"])
        click.echo(f"{'label':<{width}}  precision  recall     f1  support  roc_auc     ap")
        for row in summary["per_label"]:
            numbers = "  ".join(" " * 5 + "-" if row[key] is None else f"{row[key]:6.3f}"
                                for key in ("precision", "recall", "f1"))
            ranks = "  ".join("     -" if row[key] is None else f"{row[key]:6.3f}" for key in ("roc_auc", "average_precision"))
            click.echo(f"{row['class']:<{width}}     {numbers}  {row['support']:7d}   {ranks}")
        accuracy = f", accuracy {summary['accuracy']:.4f}" if "accuracy" in summary else ""
        click.echo(f"{summary['n_images']} images: macro-F1 {summary['macro_f1']:.4f}, micro-F1 {summary['micro_f1']:.4f}"
                   f"{accuracy}; written to {summary['output_dir']}")
