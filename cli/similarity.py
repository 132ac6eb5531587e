"""Similarity learning commands: make-metadata, filter-images, train-siamese, train-simclr, assess."""

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
from image_toolkit.cli.inspect import DUPLICATE_DISTANCE
from image_toolkit.data_tools import names


@command("make-metadata")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("output_csv", type=click.Path(dir_okay=False))
@click.option("--balanced", is_flag=True, help="Sample the same number of images from every class.")
@click.option("--test-split", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
@json_option
def make_metadata(image_dir: str, output_csv: str, balanced: bool, test_split: float, seed: int, quiet: bool, as_json: bool) -> None:
    """Write a metadata CSV (image, class, split, root) from a folder of class sub-folders.

    \b
    Example:
      toolkit make-metadata photos/ metadata.csv --balanced --test-split 0.2
    """
    start(quiet)
    from image_toolkit.data_tools.formats.metadata import make_metadata as make

    frame = make(image_dir, output_csv, balanced=balanced, test_split=test_split, seed=seed)
    counts = frame.groupby("split").size().to_dict()
    if as_json:
        echo_json({"output": output_csv, "rows": len(frame), "classes": int(frame["class"].nunique()),
                   "splits": {str(split): int(n) for split, n in counts.items()}})
    elif not quiet:
        click.echo(f"Wrote {len(frame)} rows ({frame['class'].nunique()} classes; "
               + ", ".join(f"{split} {n}" for split, n in counts.items()) + f") to {output_csv}")


@command("filter-images")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--min-size", type=click.IntRange(min=1), default=100, show_default=True, help="Smallest side, in pixels.")
@click.option("--min-per-class", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Keep this many images at random.")
@click.option("--resize", type=click.IntRange(min=8), default=None, help="Resize kept images to this square size.")
@background_option("white; used by --resize, which writes RGB copies", default="white")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--drop-duplicates", is_flag=True, help="Keep only the first image of each group of duplicates (as toolkit inspect finds them).")
@click.option("--drop-outliers", type=click.FloatRange(0, 1, max_open=True), default=None, metavar="FRACTION",
              help="Drop this fraction of the images, the most unusual of their class (toolkit inspect's outlier score).")
@click.option("--features", default=None, type=click.Path(exists=True),
              help="For the two above: a feature file of IMAGE_DIR (matched by name); default: pixel features.")
@click.option("--duplicate-distance", type=click.FloatRange(0, 2, max_open=True), default=DUPLICATE_DISTANCE, show_default=True,
              help="Cosine distance under which two images are duplicates.")
@quiet_option
@json_option
def filter_images(image_dir: str, output_dir: str, min_size: int, min_per_class: int, sample: int | None, resize: int | None,
                  background: str, seed: int, drop_duplicates: bool, drop_outliers: float | None, features: str | None,
                  duplicate_distance: float, quiet: bool, as_json: bool) -> None:
    """Copy the images large enough, of classes with enough images, plus a metadata CSV.

    The count left after each step is printed.

    \b
    Example:
      toolkit filter-images faces/ faces_clean/ --min-size 100 --min-per-class 50 --resize 224
      toolkit filter-images photos/ photos_clean/ --min-size 32 --min-per-class 5 --drop-duplicates --drop-outliers 0.05
    """
    start(quiet)
    from image_toolkit.data_tools.formats.metadata import filter_images as run
    from image_toolkit.data_tools.inspect.cleaning import cleaning_filters

    filters = cleaning_filters(image_dir, drop_duplicates=drop_duplicates, drop_outliers=drop_outliers,
                               features=features, duplicate_distance=duplicate_distance)
    steps = []
    for step, count in run(image_dir, output_dir, min_size=min_size, min_per_class=min_per_class, sample=sample,
                           resize=resize, background=background, seed=seed, filters=filters):
        steps.append({"step": step, "images": int(count)})
        if not (quiet or as_json):
            click.echo(f"{count:8d}  {step}")
    if as_json:
        echo_json({"output_dir": output_dir, "steps": steps})
    elif not quiet:
        click.echo(f"Wrote the images and metadata.csv to {output_dir}")


# Options both embedding trainings share.
training_options = option_group(
    click.option("--img-directory", default=None, help="Folder the CSV's image paths are relative to (default: the CSV's folder)."),
    click.option("--backbone", type=click.Choice(names.BACKBONES), default="resnet18", show_default=True),
    click.option("--weights", default="none", show_default=True, help="imagenet (not for resnet18 or small_cnn), none, or a weights file."),
    click.option("--embedding-dim", type=click.IntRange(min=1), default=128, show_default=True),
    click.option("--classes-per-batch", type=click.IntRange(min=1), default=None,
                 help="Balanced batches: this many classes... (the batch then replaces --batch-size)"),
    click.option("--examples-per-class", type=click.IntRange(min=1), default=None, help="...times this many images of each."),
    click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
    click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True),
    click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
    click.option("--image-size", type=click.IntRange(min=8), default=224, show_default=True),
    click.option("--output-dir", default=".", show_default=True, type=OUTPUT_DIR),
    click.option("--resume", is_flag=True, help="Continue the run in --output-dir; refused if other options differ."),
    click.option("--seed", type=int, default=42, show_default=True),
    strategy_option,
    tensorboard_option,
    background_option("white; recorded in run.json, which extraction and assess then use", default="white"),
    quiet_option,
    json_option,
)


def run_training(method: str, data: str, quiet: bool, as_json: bool, **options) -> None:
    start(quiet)
    from image_toolkit.models.runtime import progress_verbosity
    from image_toolkit.models.similarity import SimilarityOptions, train_embedding

    with progress_to_stderr(as_json):
        summary = train_embedding(SimilarityOptions(method=method, data=data, **options), verbose=progress_verbosity(quiet))
    if as_json:
        echo_json(summary)
    elif not quiet:
        scores = ", ".join(f"{name[4:]} {value:.4f}" for name, value in summary.items() if name.startswith("val_"))
        click.echo(f"Best epoch {summary['best_epoch']}{': ' + scores if scores else ''}; {saved(summary, 'tower')}")


@command("train-siamese")
@config_option("train-siamese", recorded_only=("method", "data", "projection_dim", "temperature"))
@click.argument("metadata_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--type", "siamese_type", type=click.Choice(["b", "c", "d"]), default="b", show_default=True,
              help="b: contrastive loss; c: b + class softmax per branch; d: c with L2-normalised embeddings, cosine distance.")
@click.option("--margin", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Contrastive margin.")
@click.option("--positive-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True)
@training_options
def train_siamese(metadata_csv: str, **options) -> None:
    """Train a Siamese network (Bell & Bala types B, C, D) on same-class / other-class pairs.

    Every epoch the held-out split is embedded and recall@1/5/10, mAP@R and
    kNN accuracy are logged; the best tower by recall@1 is saved as
    embedding_model.keras (for get-transfer-layer --model and index build).

    \b
    Example:
      toolkit train-siamese metadata.csv --type d --backbone resnet18 --image-size 64 --epochs 20
      toolkit train-siamese metadata.csv --config runs/tune-siamese/run.json   (the best of 'toolkit tune --task siamese')
    """
    run_training("siamese", metadata_csv, **options)


@command("train-simclr")
@click.argument("image_dir_or_csv", type=click.Path(exists=True))
@click.option("--temperature", type=float, default=0.1, show_default=True, help="NT-Xent temperature (> 0).")
@click.option("--projection-dim", type=click.IntRange(min=1), default=128, show_default=True)
@training_options
def train_simclr(image_dir_or_csv: str, **options) -> None:
    """Learn an embedding without labels by SimCLR contrastive learning on two random views.

    With a metadata CSV whose held-out split has classes, retrieval is
    evaluated every epoch; with a plain folder, the lowest loss is kept.

    \b
    Example:
      toolkit train-simclr metadata.csv --temperature 0.1 --image-size 64 --epochs 50
    """
    run_training("simclr", image_dir_or_csv, **options)


@command("assess")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("metadata_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--img-directory", default=None, help="Folder the CSV's image paths are relative to (default: the CSV's folder).")
@click.option("--split", default="test", show_default=True)
@click.option("--metric", type=click.Choice(["cosine", "euclidean"]), default=None,
              help="Distance to rank by. Default: the one the model was trained for (run.json beside it), else cosine.")
@click.option("--output-dir", default=".", show_default=True, type=OUTPUT_DIR, help="Where similarity_heatmap.png and query_grid.png go.")
@click.option("--linear-probe", is_flag=True, help="Also the linear evaluation: a logistic regression fitted on half the split's embeddings, scored on the other half.")
@click.option("--search", "search_index", type=click.Path(exists=True, file_okay=False), default=None,
              help="Also score the split's images as queries of this index (toolkit index build of the model's embeddings): "
                   "index_* from its answers, exact_* from an exhaustive search of the same rows.")
@quiet_option
@json_option
def assess(model: str, metadata_csv: str, img_directory: str | None, split: str, metric: str | None, output_dir: str,
           linear_probe: bool, search_index: str | None, quiet: bool, as_json: bool) -> None:
    """Score an embedding model on a split: kNN accuracy, recall@1/5/10, mAP@R, k-means NMI and ARI, plus pictures.

    With --search, the split's images also query a built index; the answers'
    classes are read from the metadata CSV by image name (indexed images it
    does not list count as wrong answers), a query's own image is skipped.

    \b
    Example:
      toolkit assess runs/siamese/embedding_model.keras metadata.csv --split test --linear-probe
      toolkit assess runs/siamese/embedding_model.keras metadata.csv --search siamese_index/
    """
    start(quiet)
    from image_toolkit.models.similarity import assess as run

    with progress_to_stderr(as_json):
        scores = run(model, metadata_csv, img_directory=img_directory, split=split, output_dir=output_dir, metric=metric,
                     linear_probe=linear_probe, search_index=search_index)
    if as_json:
        echo_json(scores)
    else:  # the scores are the answer: printed with --quiet too
        width = max(14, *map(len, scores))
        for name, value in scores.items():
            click.echo(f"{name:>{width}}: {value}")
