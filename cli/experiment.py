"""`toolkit experiment`: baseline vs feedback-upsampled ("meta") training over several seeds."""

from __future__ import annotations

import click

from image_toolkit.cli.common import OUTPUT_DIR, command, echo_json, json_option, progress_to_stderr, quiet_option, start
from image_toolkit.cli.train import classifier_options


@command("experiment")
@click.option("--data-csv", default="./label.txt", show_default=True, help="Label CSV of every image (test, validation and training lists are drawn from it).")
@click.option("--img-directory", default="./images", show_default=True, help="Folder the 'image' paths are relative to.")
@click.option("--feedback", required=True, type=click.Path(exists=True, dir_okay=False), help="Image feedback CSV from 'toolkit feedback export'.")
@click.option("--ratio", "ratios", multiple=True, required=True, metavar="GROUP=RATIO", help="How the meta list repeats rows, as for 'toolkit resample' (e.g. deselected=3); repeatable.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Training seeds: --seed-base, --seed-base + 1, ...")
@click.option("--seed-base", type=int, default=0, show_default=True)
@click.option("--test-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True, help="Share of --data-csv held out as the fixed test split (stratified for multiclass).")
@click.option("--test-csv", type=click.Path(exists=True, dir_okay=False), default=None, help="A fixed test list instead of --test-split (its images must not be in --data-csv).")
@click.option("--split-seed", type=int, default=12345, show_default=True, help="Seed of the test and validation splits, independent of the training seeds.")
@click.option("--min-test-per-class", type=click.IntRange(min=1), default=3, show_default=True, help="Refuse a test split with fewer images of some class.")
@click.option("--output-dir", default="experiment", show_default=True, type=OUTPUT_DIR, help="Where lists/, runs/, ExperimentLog.csv, Results.csv and experiment.png go.")
@classifier_options(task="multiclass")
@quiet_option
@json_option
def experiment(feedback: str, ratios: tuple[str, ...], seeds: int, seed_base: int, test_split: float, test_csv: str | None,
               split_seed: int, min_test_per_class: int, quiet: bool, as_json: bool, **training) -> None:
    """Does upsampling the images labellers deselected help? Train and score both ways.

    Fixes one test split, then for each seed trains the baseline (the
    training list as it is) and the meta model (the same list resampled by
    --ratio) with identical options, and scores both on the test split.
    Appends a row per run to ExperimentLog.csv and per-class precision,
    recall and F1 to Results.csv; prints mean ± std of test macro-F1 per
    variant and the paired difference with a 95 % interval; draws
    experiment.png (per-class F1, baseline vs meta). The result is reported
    as it is: if feedback does not help, the table says so.

    \b
    Example (the digit folders of toolkit demo-data, multiclass, CPU; README
    makes metadata.csv and image_feedback.csv):
      toolkit experiment --data-csv metadata.csv --img-directory photos \\
          --feedback image_feedback.csv --ratio deselected=3 --seeds 3 \\
          --backbone small_cnn --weights none --image-size 32 --epochs 20
    """
    start(quiet)
    from image_toolkit.data_tools.feedback.resample import parse_ratios
    from image_toolkit.models.experiment import ExperimentOptions, format_report, run_experiment
    from image_toolkit.models.runtime import progress_verbosity
    from image_toolkit.models.training import TrainOptions

    options = ExperimentOptions(feedback=feedback, ratios=parse_ratios(ratios), seeds=seeds, seed_base=seed_base,
                                test_split=test_split, split_seed=split_seed, test_csv=test_csv,
                                min_test_per_class=min_test_per_class)
    with progress_to_stderr(as_json):
        summary = run_experiment(TrainOptions(**training), options, verbose=progress_verbosity(quiet),
                                 show=False if quiet else None)
    if as_json:
        echo_json(summary)
        return
    click.echo(format_report(summary))  # the answer, printed with --quiet too; the line after is a summary
    if not quiet:
        click.echo(f"Logs: {summary['output_dir']}/ExperimentLog.csv, Results.csv; plot: {summary['output_dir']}/experiment.png")
