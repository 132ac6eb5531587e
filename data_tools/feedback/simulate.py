"""Simulated users, so the feedback loop can be measured without a crowd: `toolkit feedback simulate`.

Each simulated user works on one class, as a person on the web page would:

1. looks at the 2-D map of the images (t-SNE or PCA of their features);
2. lassoes a disc around the densest part of the class (one of its five
   images with the closest class neighbours), widened until it holds a
   random 50-90 % of the class, or until the class's own images would no
   longer be the majority inside (a person stops at the visible edge of a
   cluster); the disc also catches the other classes' images that lie
   among them;
3. deselects the caught images whose true label is another class, missing
   each with probability `noise` and wrongly deselecting a right one with
   probability `noise`;
4. selects a few images of the class just outside the disc.

Users take the classes in turn (a shuffled order), so every class gets
feedback. The events are built from the data set's real labels and real
features, so the deselected images are the ones that a feature map puts on
the wrong side of a class boundary. Images whose label is unknown are never
deselected. Everything is drawn from `seed`.

With `--suggest` (`simulate_suggested`), the users judge what the model
asked for instead: each query class of a `toolkit suggest` list is one user,
shown its suggested images for that class, who deselects those whose true
label is another class and selects the right ones, with the same `noise`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import refuse_inputs, write_text
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.feedback.suggest import read_suggestions
from image_toolkit.data_tools.formats.features import read_features
from image_toolkit.data_tools.formats.labels import LabelTable, read_labels
from image_toolkit.data_tools.maps.embedding import embed_2d

logger = logging.getLogger(__name__)

START = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
MAX_SELECTS = 3
# The disc stops growing before the class's own images fall below this share of those inside.
MIN_PURITY = 0.5
# Neighbours that measure how dense a class is around each of its images.
DENSITY_NEIGHBOURS = 10


def dense_centres(coords: np.ndarray, members: np.ndarray, count: int = 5) -> np.ndarray:
    """The `count` members whose nearest fellow members are closest: the heart of the class on the map."""
    from sklearn.neighbors import NearestNeighbors

    k = min(DENSITY_NEIGHBOURS, len(members) - 1)
    if k < 1:
        return members
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(coords[members]).kneighbors(coords[members])
    return members[np.argsort(distances[:, 1:].mean(axis=1), kind="stable")[:count]]


def lasso(coords: np.ndarray, column: np.ndarray, centre: np.ndarray, share: float) -> np.ndarray:
    """The images inside the disc around `centre` that holds `share` of the class, purity permitting."""
    distance = np.linalg.norm(coords - centre, axis=1)
    order = np.argsort(distance, kind="stable")
    own = np.cumsum(column[order] == 1)
    inside = np.arange(1, len(order) + 1)
    target = max(1, int(np.ceil(share * own[-1])))
    allowed = np.flatnonzero((own <= target) & (own >= MIN_PURITY * inside))
    return order[: allowed[-1] + 1] if allowed.size else order[:1]


def simulate_events(table: LabelTable, coords: np.ndarray, *, users: int = 20, noise: float = 0.05, seed: int = 0) -> list[dict]:
    """The events of `users` simulated users on the map `coords` (one row per image of `table`)."""
    check_range("--users", users, low=1)
    check_range("--noise", noise, low=0, high=0.5, high_open=True, why="an error rate")
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape != (len(table), 2):
        raise DataError(f"expected one 2-D position per image ({len(table)}, 2); got {coords.shape}.")
    rng = np.random.default_rng(seed)
    classes = [j for j in range(len(table.label_names)) if (table.labels[:, j] == 1).any()]
    if not classes:
        raise DataError("no image has a known positive label; simulated users need labelled images.")
    order = rng.permutation(classes)
    images = np.array(table.images, dtype=object)
    events: list[dict] = []
    for user in range(users):
        column = table.labels[:, order[user % len(order)]]
        query_class = table.label_names[order[user % len(order)]]
        members = np.flatnonzero(column == 1)
        centre = coords[rng.choice(dense_centres(coords, members))]
        caught = np.sort(lasso(coords, column, centre, rng.uniform(0.5, 0.9)))
        distance = np.linalg.norm(coords - centre, axis=1)
        radius = distance[caught].max()
        deselected = caught[judged_wrong(column[caught], rng.random(len(caught)), noise)]
        outside = members[distance[members] > radius]
        selected = outside[np.argsort(distance[outside], kind="stable")][: rng.integers(0, MAX_SELECTS + 1)]
        events += user_events(user, seed, query_class, [("lasso", images[caught]), ("deselect", images[deselected]),
                                                        ("select", images[selected])])
    return events


def judged_wrong(column: np.ndarray, draws: np.ndarray, noise: float) -> np.ndarray:
    """Which images a user deselects: truly another class (0) unless missed, or of the class (1) by mistake.

    `draws` are uniform in [0, 1), one per image: below `noise` the user
    errs. An unknown label (NaN) is never deselected.
    """
    return ((column == 0) & (draws >= noise)) | ((column == 1) & (draws < noise))


def user_events(user: int, seed: int, query_class: str, steps: list[tuple[str, np.ndarray]]) -> list[dict]:
    """One simulated user's events: an action per step (empty ones left out), 20 s apart, users 10 min apart."""
    moment = START + timedelta(minutes=10 * user)
    base = {"user": f"sim{user:03d}", "session": f"sim-{seed}-{user:03d}", "query_class": query_class}
    events = []
    for step, (action, images) in enumerate(steps):
        if len(images):
            timestamp = (moment + timedelta(seconds=20 * step)).isoformat().replace("+00:00", "Z")
            events.append({**base, "timestamp": timestamp, "action": action, "images": list(images)})
    return events


def suggested_events(table: LabelTable, suggestions: pd.DataFrame, *, noise: float = 0.05, seed: int = 0) -> list[dict]:
    """The events of users who judge the suggested images (rows of `table`) for their `query_class`.

    One user per query class, in the order the classes first appear in the
    ranking; each deselects the images whose true label is another class and
    selects the rest of the class's ones, erring with probability `noise`.
    An image whose label for the class is unknown is not judged.
    """
    check_range("--noise", noise, low=0, high=0.5, high_open=True, why="an error rate")
    rng = np.random.default_rng(seed)
    row_of = {image: row for row, image in enumerate(table.images)}
    events: list[dict] = []
    for user, (query_class, group) in enumerate(suggestions.groupby("query_class", sort=False)):
        column = table.labels[[row_of[image] for image in group["image"]], table.label_names.index(query_class)]
        images = group["image"].to_numpy(dtype=object)
        wrong = judged_wrong(column, rng.random(len(images)), noise)
        right = ~wrong & ~np.isnan(column)
        events += user_events(user, seed, query_class, [("deselect", images[wrong]), ("select", images[right])])
    return events


def check_events_output(output: str | Path, inputs: tuple) -> None:
    """Refuse an events file that is not .jsonl, or that is one of the inputs, before any work."""
    if Path(output).suffix.lower() != ".jsonl":
        raise OptionError(f"-o {output}: simulated events are written as JSON lines; give a name ending in .jsonl.")
    refuse_inputs(output, inputs, option="-o")


def write_events(output: str | Path, events: list[dict]) -> None:
    """The events as JSON lines, written whole or not at all."""
    write_text(output, "".join(json.dumps(event) + "\n" for event in events))


def simulate_feedback(
    data_csv: str | Path,
    features_path: str | Path,
    output: str | Path,
    *,
    task: str | None = None,
    users: int = 20,
    noise: float = 0.05,
    method: str = "tsne",
    seed: int = 0,
    n_jobs: int | None = None,
    show: bool | None = None,
) -> dict:
    """Map the images' features to 2-D, simulate the users and write their events as JSON lines.

    `n_jobs` None picks the t-SNE thread count by size; `show` draws the t-SNE
    progress bar on stderr (None: when stderr is a terminal; False for --quiet).
    """
    check_events_output(output, (data_csv, features_path))
    table = read_labels(data_csv, task)
    feature_set = read_features(features_path)
    row_of = {path: row for row, path in enumerate(feature_set.paths)}
    keep = [i for i, image in enumerate(table.images) if image in row_of]
    if not keep:
        raise DataError(
            f"{features_path}: none of its paths is an image of {data_csv} (e.g. '{feature_set.paths[0]}' vs "
            f"'{table.images[0]}'); extract features of the same image folder."
        )
    if len(keep) < len(table):
        logger.warning("%d images of %s have no features in %s and are left out", len(table) - len(keep), data_csv, features_path)
    table = table.subset(keep)
    features = feature_set.features[[row_of[image] for image in table.images]]
    coords = embed_2d(features, method=method, seed=seed, n_jobs=n_jobs, show=show)
    events = simulate_events(table, coords, users=users, noise=noise, seed=seed)
    write_events(output, events)
    return {**events_summary(events, table, output), "users": users, "method": method}


def events_summary(events: list[dict], table: LabelTable, output: str | Path) -> dict:
    """What simulated events hold: counts of events and images, and the share of deselects that were right."""
    truth = {image: row for row, image in enumerate(table.images)}
    deselected = {(event["query_class"], image) for event in events if event["action"] == "deselect" for image in event["images"]}
    right = sum(table.labels[truth[image], table.label_names.index(name)] == 0 for name, image in deselected)
    return {
        "output": str(output),
        "users": len({event["user"] for event in events}),
        "events": len(events),
        "lassoed_images": len({image for event in events if event["action"] == "lasso" for image in event["images"]}),
        "deselected_images": len({image for _, image in deselected}),
        "selected_images": len({image for event in events if event["action"] == "select" for image in event["images"]}),
        "deselects_of_another_class": round(right / len(deselected), 4) if deselected else None,
    }


def simulate_suggested(data_csv: str | Path, suggestions_path: str | Path, output: str | Path, *, task: str | None = None,
                       noise: float = 0.05, seed: int = 0) -> dict:
    """Simulated users judge the images of a `toolkit suggest` list; their events are written as JSON lines."""
    check_events_output(output, (data_csv, suggestions_path))
    table = read_labels(data_csv, task)
    suggestions = read_suggestions(suggestions_path)
    known = set(table.images)
    missing = [image for image in suggestions["image"] if image not in known]
    if missing:
        raise DataError(f"{suggestions_path}: image '{missing[0]}' is not in {data_csv} ({len(missing)} such); "
                        "suggest from the images of the data set the users judge.")
    unknown = sorted(set(suggestions["query_class"]) - set(table.label_names))
    if unknown:
        raise DataError(f"{suggestions_path}: query class '{unknown[0]}' is not a class of {data_csv} "
                        f"({', '.join(table.label_names)}); suggest with a model of this data set.")
    events = suggested_events(table, suggestions, noise=noise, seed=seed)
    write_events(output, events)
    return {**events_summary(events, table, output), "method": "suggest", "suggested_images": len(suggestions)}
