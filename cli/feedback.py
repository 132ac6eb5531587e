"""`toolkit feedback import|export|simulate`: the lasso / select / deselect events of labellers."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from image_toolkit.cli.common import command, echo_json, group, json_option, quiet_option, start
from image_toolkit.data_tools.names import TASKS

DB_OPTION = click.option("--db", default="feedback.sqlite", show_default=True, type=click.Path(dir_okay=False, path_type=Path), help="The SQLite feedback database.")
WAIT_OPTION = click.option("--wait", type=click.FloatRange(min=0), default=10.0, show_default=True, help="Seconds to wait for another writer of the database before giving up.")
TASK_OPTION = click.option("--task", type=click.Choice(TASKS), default=None, help="Layout of the label CSV (default: multiclass if it has a 'label' column, else multilabel).")


@group("feedback")
def feedback() -> None:
    """Record what labellers lasso, select and deselect, and export it per image.

    An event is {user, session, timestamp, query_class, action, images}, with
    action lasso, select or deselect. Images deselected from a lasso are the
    "decision boundary" images that 'toolkit resample' can upsample.

    \b
    Example:
      toolkit feedback simulate --data-csv label.txt --features features.npz -o events.jsonl
      toolkit feedback import events.jsonl --data-csv label.txt --db feedback.sqlite
      toolkit feedback export --db feedback.sqlite -o image_feedback.csv
    """


@command("import")
@click.argument("events", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@DB_OPTION
@click.option("--data-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Label CSV of the images the events name (needed on the first import; registers the data set and its classes).")
@TASK_OPTION
@WAIT_OPTION
@quiet_option
@json_option
def import_events(events: Path, db: Path, data_csv: Path | None, task: str | None, wait: float, quiet: bool, as_json: bool) -> None:
    """Check the events of EVENTS (.jsonl or .csv) and add the good ones to the database.

    A bad event (malformed JSON, unknown action or class, an image not in the
    data set, a malformed timestamp) is left out and reported with its line
    number; the good ones are kept. Importing the same file again adds
    nothing: an event's id is its 'id' field or a hash of its content.
    Events are committed 20,000 at a time, so the web app records feedback
    while a long import runs; an import cut short keeps what it committed,
    and the same command again adds exactly the rest.
    A CSV has the columns user,session,timestamp,query_class,action,images
    with the images joined by ';'.

    \b
    Example:
      toolkit feedback import events.jsonl --data-csv label.txt --db feedback.sqlite
    """
    start(quiet)
    from image_toolkit.data_tools.feedback.store import import_events as run_import

    summary = run_import(events, db, data_csv=data_csv, task=task, wait=wait)
    if as_json:
        echo_json(summary)
        return
    if quiet:
        return
    rejected = summary["rejected"]
    click.echo(
        f"{summary['read']} events read from {events.name}: {summary['added']} added, "
        f"{summary['already_stored']} already stored, {len(rejected)} rejected; "
        f"{summary['events_in_db']} events in {db}"
    )


@command("export")
@DB_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="image_feedback.csv", show_default=True, help="The CSV to write.")
@WAIT_OPTION
@quiet_option
@json_option
def export_events(db: Path, output: Path, wait: float, quiet: bool, as_json: bool) -> None:
    """Write one row per image that any event names, with its class and counts.

    Columns: image, class, query_class, lasso_count, deselect_count,
    select_count, users (distinct users who acted on the image). A multilabel
    image's class is its positive labels joined by ';'; query_class lists the
    classes the image was shown for, most frequent first.

    \b
    Example:
      toolkit feedback export --db feedback.sqlite -o image_feedback.csv
    """
    start(quiet)
    from image_toolkit.data_tools.feedback.store import export_image_feedback

    counts = {"output": str(output), **export_image_feedback(db, output, wait=wait)}
    if as_json:
        echo_json(counts)
    elif not quiet:
        click.echo(
            f"Wrote {counts['images']} images to {output}: {counts['lassoed_images']} lassoed, "
            f"{counts['deselected_images']} deselected, {counts['selected_images']} selected"
        )


@command("simulate")
@click.option("--data-csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Label CSV: the true labels the simulated users know.")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Feature file (.npz, .h5, .pkl) of the same images, mapped to 2-D for the users to lasso on.")
@click.option("--suggest", "suggestions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A suggestions CSV of 'toolkit suggest': the users judge these images for their query_class instead of lassoing a map.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The events file to write (.jsonl).")
@click.option("--users", type=click.IntRange(min=1), default=20, show_default=True, help="Simulated users; each works on one class.")
@click.option("--noise", type=click.FloatRange(0, 0.5, max_open=True), default=0.05, show_default=True, help="Error rate of a deselect: a wrong image missed, or a right one deselected.")
@click.option("--method", type=click.Choice(["tsne", "pca"]), default="tsne", show_default=True, help="The 2-D map the users lasso on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-jobs", type=int, default=None, help="Threads for t-SNE (default: 1 below 10,000 points, all cores from there, as measured; -1: all cores).")
@TASK_OPTION
@quiet_option
@json_option
def simulate(data_csv: Path, features_path: Path | None, suggestions: Path | None, output: Path, users: int, noise: float,
             method: str, seed: int, n_jobs: int | None, task: str | None, quiet: bool, as_json: bool) -> None:
    """Simulate users who lasso a class on a 2-D map and deselect the images of other classes.

    Each user picks a class, lassoes a disc around its centre on the t-SNE
    (or PCA) map of the features, deselects the caught images whose true
    label is another class (with error rate --noise) and selects a few of the
    class's images just outside. The result is decision-boundary feedback
    derived from real labels, for measuring the loop without a crowd.

    With --suggest SUGGESTIONS_CSV (of 'toolkit suggest') the users judge
    what the model asked for instead: one user per query class of the list
    deselects its suggested images whose true label is another class and
    selects the right ones (error rate --noise); --users and --method do
    not apply. The same CSV can be judged by people on 'toolkit serve
    --suggest', so lassoing freely and judging the model's doubts compare
    on one list.

    \b
    Example:
      toolkit feedback simulate --data-csv label.txt --features features.npz \\
                                -o events.jsonl --users 20 --noise 0.05
      toolkit feedback simulate --data-csv label.txt --suggest suggestions.csv -o suggested.jsonl
    """
    if (features_path is None) == (suggestions is None):
        raise click.UsageError("give --features (users lasso a map) or --suggest (users judge suggested images), not "
                               + ("both." if features_path else "neither."))
    start(quiet)
    logging.getLogger("openTSNE").setLevel(logging.WARNING)  # It logs each step of its optimisation.
    from image_toolkit.data_tools.feedback.simulate import simulate_feedback, simulate_suggested

    if suggestions is not None:
        summary = simulate_suggested(data_csv, suggestions, output, task=task, noise=noise, seed=seed)
    else:
        summary = simulate_feedback(data_csv, features_path, output, task=task, users=users, noise=noise,
                                    method=method, seed=seed, n_jobs=n_jobs,
                                    show=False if quiet else None)
    if as_json:
        echo_json(summary)
    elif not quiet:
        share = summary["deselects_of_another_class"]
        judged = (f"{summary['suggested_images']} suggested images judged, {summary['selected_images']} selected"
                  if suggestions else f"{summary['lassoed_images']} images lassoed")
        click.echo(
            f"Wrote {summary['events']} events of {summary['users']} users to {output}: {judged}, "
            f"{summary['deselected_images']} deselected"
            + (f" ({share:.0%} of deselects truly another class)" if share is not None else "")
        )


feedback.add_command(import_events)
feedback.add_command(export_events)
feedback.add_command(simulate)
