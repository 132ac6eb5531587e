"""`toolkit tune`: hyper-parameter search of the classifier, or of a Siamese network, with KerasTuner."""

from __future__ import annotations

import click

from image_toolkit.cli.common import OUTPUT_DIR, command, echo_json, json_option, progress_to_stderr, quiet_option, start
from image_toolkit.data_tools import names


@command("tune")
@click.option("--data-csv", default="./label.txt", show_default=True, help="Label CSV, as for 'toolkit train'.")
@click.option("--img-directory", default="./images", show_default=True, help="Folder the 'image' paths are relative to.")
@click.option("--train-csv", default=None, help="A ready training list; needs --val-csv.")
@click.option("--val-csv", default=None, help="A ready validation list (the trials are scored on it); needs --train-csv.")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True, help="Share of --data-csv held out to score the trials.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the split, of every trial's model and of the tuner.")
@click.option("--output-dir", default="tune", show_default=True, type=OUTPUT_DIR, help="Where tuner/, search.json, trials.csv, trials.png and run.json go.")
@click.option("--task", type=click.Choice([*names.TASKS, "siamese"]), default="multilabel", show_default=True,
              help="siamese: search train-siamese's margin, embedding size and learning rate instead; --data-csv is then "
                   "a metadata CSV (make-metadata) whose held-out split scores the trials by recall@1.")
@click.option("--type", "siamese_type", type=click.Choice(["b", "c", "d"]), default="b", show_default=True,
              help="With --task siamese: the network, as train-siamese --type.")
@click.option("--backbone", type=click.Choice(names.BACKBONES), default="resnet50", show_default=True)
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a local weights file; with none, fine-tuning is not searched (a random backbone always trains).")
@click.option("--image-size", type=click.IntRange(min=8), default=224, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Epochs of each trial (Hyperband: the most a trial gets).")
@click.option("--tuner", type=click.Choice(["bayesian", "hyperband"]), default="bayesian", show_default=True,
              help="bayesian: each trial chosen from the scores so far, good for few trials of full length; "
                   "hyperband: many short trials, the best trained longer, good when --epochs is large.")
@click.option("--max-trials", type=click.IntRange(min=1), default=10, show_default=True, help="Configurations to try, the defaults first.")
@click.option("--executions-per-trial", type=click.IntRange(min=1), default=1, show_default=True, help="Trainings per configuration, scores averaged.")
@click.option("--overwrite", is_flag=True, help="Start a new search in --output-dir instead of continuing the one there.")
@quiet_option
@json_option
@click.pass_context
def tune(ctx: click.Context, tuner: str, max_trials: int, executions_per_trial: int, overwrite: bool, quiet: bool,
         as_json: bool, siamese_type: str, **options) -> None:
    """Search head units, learning rate, dropout, augmentation and fine-tuning of 'toolkit train'.

    Trials are scored by validation macro-F1 (the score train keeps its best
    epoch by); the first trial is train's defaults, so the best is at least
    as good and both are printed. Writes trials.csv, trials.png and run.json
    (the best options) in --output-dir: 'toolkit train --config
    OUTPUT_DIR/run.json' trains the best. The same command again continues
    an interrupted search (KerasTuner's tuner/ folder) or, finished, reports
    it without training; other options need a new --output-dir or --overwrite.
    With --task siamese it searches 'toolkit train-siamese' (margin, embedding
    size, learning rate) by validation recall@1, for 'train-siamese --config'.
    Needs KerasTuner: pip install "image-toolkit[tune]".

    \b
    Example (the demo data, CPU, about a minute):
      toolkit tune --backbone small_cnn --weights none --image-size 32 \\
                   --epochs 10 --max-trials 4 --output-dir runs/tune
      toolkit train --config runs/tune/run.json --output-dir runs/tuned
    """
    start(quiet)
    from image_toolkit.models.runtime import progress_verbosity
    from image_toolkit.models.tuning import TuneOptions, tune_classifier, tune_siamese

    if options["task"] != "siamese" and ctx.get_parameter_source("siamese_type") != click.core.ParameterSource.DEFAULT:
        raise click.BadParameter("only with --task siamese.", param_hint="--type")
    tuning = TuneOptions(tuner, max_trials, executions_per_trial, overwrite)
    with progress_to_stderr(as_json):
        if options["task"] == "siamese":
            summary = tune_siamese(_siamese_options(ctx, siamese_type, options), tuning, verbose=progress_verbosity(quiet))
        else:
            from image_toolkit.models.training import TrainOptions

            summary = tune_classifier(TrainOptions(**options), tuning, verbose=progress_verbosity(quiet))
    if as_json:
        echo_json(summary)
    elif not quiet:
        objective = summary["objective"]
        default = summary[f"default_{objective}"]
        best = ", ".join(f"{name} {value}" for name, value in summary["best"].items())
        click.echo(f"Best of {summary['trials']} trials: {SCORES[objective]} {summary[f'best_{objective}']:.4f} "
                   f"(defaults: {'not among the trials' if default is None else f'{default:.4f}'}) with {best}; "
                   f"options in {summary['run_json']}")


SCORES = {"val_macro_f1": "validation macro-F1", "val_recall@1": "validation recall@1"}
# The classifier's defaults that train-siamese's own defaults replace, unless typed.
SIAMESE_DEFAULTS = {"backbone": "resnet18", "weights": "none", "img_directory": None}


def _siamese_options(ctx: click.Context, siamese_type: str, options: dict):
    """train-siamese's options from tune's: the classifier-only ones refused, the classifier's defaults replaced."""
    from image_toolkit.data_tools.errors import OptionError
    from image_toolkit.models.similarity import SimilarityOptions

    def typed(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)

    for name in ("train_csv", "val_csv", "val_split"):
        if typed(name):
            raise OptionError(f"--{name.replace('_', '-')}: not used by --task siamese; the metadata CSV's 'split' column "
                              "holds the images out (make-metadata --test-split).")
    chosen = {name: options[name] if typed(name) else default for name, default in SIAMESE_DEFAULTS.items()}
    kept = ("output_dir", "image_size", "batch_size", "epochs", "seed")
    return SimilarityOptions(method="siamese", data=options["data_csv"], siamese_type=siamese_type,
                             **{name: options[name] for name in kept}, **chosen)
