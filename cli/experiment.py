"""`toolkit experiment`: baseline vs feedback-upsampled ("meta") training over several seeds."""

from __future__ import annotations

import click

from image_toolkit.cli.common import OUTPUT_DIR, command, echo_json, json_option, progress_to_stderr, quiet_option, start
from image_toolkit.cli.train import classifier_options
from image_toolkit.data_tools.names import EXPERIMENT_SEEDS, EXPERIMENT_VARIANTS, FEEDBACK_USES


@command("experiment")
@click.option("--data-csv", default="./label.txt", show_default=True, help="Label CSV of every image (test, validation and training lists are drawn from it).")
@click.option("--img-directory", default="./images", show_default=True, help="Folder the 'image' paths are relative to.")
@click.option("--feedback", required=True, type=click.Path(exists=True, dir_okay=False), help="Image feedback CSV from 'toolkit feedback export'.")
@click.option("--ratio", "ratios", multiple=True, metavar="GROUP=RATIO[,RATIO...]", help="How the meta list repeats (or weights) rows, as for 'toolkit resample' (e.g. deselected=3); repeatable; a comma list sweeps that group (deselected=1,2,3,5). Refused with --use relabel.")
@click.option("--variants", default=",".join(EXPERIMENT_VARIANTS), show_default=True, help="Arms to train: baseline and meta, and the controls random (as many extra rows, on random images) and steps (the baseline list repeated to meta's length).")
@click.option("--use", type=click.Choice(FEEDBACK_USES), default="upsample", show_default=True, help="How feedback enters training: repeated rows, a loss weight (the ratio), or (multilabel) a known 0 for the query class of deselected images.")
@click.option("--seeds", type=click.IntRange(min=1), default=EXPERIMENT_SEEDS, show_default=True, help="Training seeds: --seed-base, --seed-base + 1, ... The summary says how many an interval of ±0.02 needs.")
@click.option("--seed-base", type=int, default=0, show_default=True)
@click.option("--test-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True, help="Share of --data-csv held out as the fixed test split (stratified for multiclass).")
@click.option("--test-csv", type=click.Path(exists=True, dir_okay=False), default=None, help="A fixed test list instead of --test-split (its images must not be in --data-csv).")
@click.option("--split-seed", type=int, default=12345, show_default=True, help="Seed of the test and validation splits, independent of the training seeds.")
@click.option("--min-test-per-class", type=click.IntRange(min=1), default=3, show_default=True, help="Refuse a test split with fewer images of some class.")
@click.option("--output-dir", default="experiment", show_default=True, type=OUTPUT_DIR, help="Where lists/, runs/, ExperimentLog.csv, Results.csv and experiment.png go.")
@classifier_options(task="multiclass")
@quiet_option
@json_option
def experiment(feedback: str, ratios: tuple[str, ...], variants: str, use: str, seeds: int, seed_base: int, test_split: float, test_csv: str | None,
               split_seed: int, min_test_per_class: int, quiet: bool, as_json: bool, **training) -> None:
    """Does feedback on the images labellers deselected help? Train and score with controls.

    Fixes one test split, then for each seed trains the baseline (the
    training list as it is), the meta model (the list resampled by --ratio,
    or weighted, or relabelled: --use) and the controls random (the same
    extra rows on random images) and steps (the baseline for meta's number
    of gradient steps), with identical options, and scores all on the test
    split. A comma list in --ratio sweeps it (the baseline trains once per
    seed) and draws sweep.png. Appends a row per run to ExperimentLog.csv and
    per-class precision, recall and F1 to Results.csv; prints mean ± std of
    test macro-F1 per arm, each arm against baseline and meta against random
    with paired 95 % intervals, and the minimum detectable difference. The
    result is reported as it is: if feedback does not help, it says so.

    \b
    Example (the digit folders of toolkit demo-data, multiclass, CPU; README
    makes metadata.csv and image_feedback.csv):
      toolkit experiment --data-csv metadata.csv --img-directory photos \\
          --feedback image_feedback.csv --ratio deselected=2,3 --seeds 3 \\
          --backbone small_cnn --weights none --image-size 32 --epochs 20
    """
    start(quiet)
    from image_toolkit.data_tools.feedback.controls import parse_variants
    from image_toolkit.data_tools.feedback.resample import parse_ratio_sweep
    from image_toolkit.models.experiment import ExperimentOptions, format_report, run_experiment
    from image_toolkit.models.runtime import progress_verbosity
    from image_toolkit.models.training import TrainOptions

    ratio_sets = [{}] if use == "relabel" and not ratios else parse_ratio_sweep(ratios)
    options = ExperimentOptions(feedback=feedback, ratios=ratio_sets, seeds=seeds, seed_base=seed_base,
                                test_split=test_split, split_seed=split_seed, test_csv=test_csv,
                                min_test_per_class=min_test_per_class, variants=parse_variants(variants, use), use=use)
    with progress_to_stderr(as_json):
        summary = run_experiment(TrainOptions(**training), options, verbose=progress_verbosity(quiet),
                                 show=False if quiet else None)
    if as_json:
        echo_json(summary)
        return
    click.echo(format_report(summary))  # the answer, printed with --quiet too; the line after is a summary
    if not quiet:
        plots = "experiment.png" + (", sweep.png" if "sweep_plot" in summary else "")
        click.echo(f"Logs: {summary['output_dir']}/ExperimentLog.csv, Results.csv; plots: {summary['output_dir']}/{plots}")
