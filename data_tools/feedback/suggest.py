"""Which images to ask people about: uncertainty scores of a model's probabilities (`toolkit suggest`).

Pure numpy and scipy: the model runs in `image_toolkit.models.suggest`,
which hands the probabilities here. Every strategy gives a score per image
and a ranking, rank 1 the image most worth a person's judgement:

- `margin`: multiclass, top-1 minus top-2 probability (small is uncertain);
  multilabel, the smallest |p - threshold| over the labels. The minimum, not
  the mean: an image is worth asking about when any one label is in doubt,
  and a mean over many confident labels would hide that one.
- `entropy`: multiclass, the entropy of the softmax (nats; large is
  uncertain); multilabel, the sum of the labels' binary entropies.
- `random`: a uniform draw from `seed`, the control arm of the experiment.

The class each image is asked about (`query_class`) is the model's top
class (multiclass) or the label nearest its threshold (multilabel): the one
judgement that would settle the model's doubt. Ties rank by input order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import entropy

from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.csv_files import read_checked_csv
from image_toolkit.data_tools.formats.labels import SEPARATOR
from image_toolkit.data_tools.names import SUGGEST_STRATEGIES

STRATEGIES = SUGGEST_STRATEGIES
SUGGESTION_COLUMNS = ["rank", "image", "score", "query_class", "probability", "predicted"]


def margin_scores(probabilities: np.ndarray, task: str, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Each image's margin: top-1 minus top-2 probability (multiclass), or min over labels of |p - threshold|."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task == "multiclass":
        top = np.sort(probabilities, axis=1)
        return top[:, -1] - top[:, -2]
    return np.abs(probabilities - np.asarray(thresholds, dtype=np.float64)).min(axis=1)


def entropy_scores(probabilities: np.ndarray, task: str) -> np.ndarray:
    """Each image's entropy in nats: of its softmax (multiclass), or the sum of its labels' binary entropies."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task == "multiclass":
        return entropy(probabilities, axis=1)
    return entropy(np.stack([probabilities, 1 - probabilities]), axis=0).sum(axis=1)


def uncertainty_scores(probabilities: np.ndarray, task: str, strategy: str, *, thresholds: np.ndarray | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(scores, order): each image's score by `strategy` and the row order from most to least worth asking about."""
    if strategy not in STRATEGIES:
        raise OptionError(f"--strategy: expected one of {', '.join(STRATEGIES)}. Received: strategy={strategy!r}.")
    if strategy == "margin":
        scores = margin_scores(probabilities, task, thresholds)
        return scores, np.argsort(scores, kind="stable")
    if strategy == "entropy":
        scores = entropy_scores(probabilities, task)
        return scores, np.argsort(-scores, kind="stable")
    scores = np.random.default_rng(seed).random(len(probabilities))
    return scores, np.argsort(scores, kind="stable")


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One image to ask about: its rank, score, the class to ask about with its probability, the predicted class(es)."""

    rank: int
    image: str
    score: float
    query_class: str
    probability: float
    predicted: str


def suggest(images: list[str], probabilities: np.ndarray, label_names: list[str], task: str, *, n: int,
            strategy: str = "margin", thresholds: np.ndarray | None = None, seed: int = 0) -> list[Suggestion]:
    """The `n` images of `images` (rows of `probabilities`, columns `label_names`) most worth asking about.

    `thresholds` (one per label) decide a multilabel image's labels; a
    multiclass image's predicted class is its top one.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if n > len(images):
        raise OptionError(f"--n {n}: only {len(images)} images are left to suggest from; pass --n {len(images)} or fewer.")
    if task == "multilabel" and thresholds is None:
        raise DataError("a multilabel model needs its label thresholds to score margins.")
    scores, order = uncertainty_scores(probabilities, task, strategy, thresholds=thresholds, seed=seed)
    names = np.array(label_names, dtype=object)
    if task == "multiclass":
        asked = probabilities.argmax(axis=1)
        predicted = names[asked].tolist()
    else:
        asked = np.abs(probabilities - thresholds).argmin(axis=1)
        predicted = [SEPARATOR.join(names[row >= thresholds]) for row in probabilities]
    return [Suggestion(rank, images[i], round(float(scores[i]), 6), str(names[asked[i]]),
                       round(float(probabilities[i, asked[i]]), 4), predicted[i])
            for rank, i in enumerate(order[:n].tolist(), start=1)]


def suggestions_csv(suggestions: list[Suggestion]) -> str:
    """The text of suggestions.csv: `SUGGESTION_COLUMNS`, one row per suggestion in rank order."""
    frame = pd.DataFrame([dataclasses.asdict(s) for s in suggestions], columns=SUGGESTION_COLUMNS)
    return frame.to_csv(index=False, lineterminator="\n")


def read_suggestions(path: str | Path) -> pd.DataFrame:
    """Read and check a suggestions CSV (the output of `toolkit suggest`), in rank order."""
    frame = read_checked_csv(path, required=SUGGESTION_COLUMNS, kind="suggestions CSV", example=",".join(SUGGESTION_COLUMNS),
                             missing_fix="write one with 'toolkit suggest MODEL IMAGES'")
    for column in ("rank", "score", "probability"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(values.isna().to_numpy().argmax())
            raise DataError(f"{path}: column '{column}' row {row + 2}: {frame[column].iloc[row]!r} is not a number; "
                            "write the file again with 'toolkit suggest'.")
        frame[column] = values
    return frame.sort_values("rank", kind="stable").reset_index(drop=True)


def listed_suggester(path: str | Path, *, n: int) -> Callable[[list[str], set[str]], list[dict]]:
    """The ranking `toolkit serve --suggest suggestions.csv` hands the web app: (names, judged names) -> the first n rows.

    Scoring a million images takes the model hours, too long for a server's
    start-up; `toolkit suggest` scores them once (on any machine, streaming)
    and the server reads its ranking in seconds (3 s at a million rows).
    Rows of judged images and of images the index lacks are left out.
    """
    frame = read_suggestions(path)
    images = frame["image"].tolist()

    def rank(names: list[str], judged: set[str]) -> list[dict]:
        # In rank order, stopping at the n-th: 0.2 s at a million rows, where matching every row took 8 s.
        indexed, chosen, known = set(names), [], False
        for row, image in enumerate(images):
            if image in indexed:
                known = True
                if image not in judged:
                    chosen.append(row)
                    if len(chosen) == n:
                        break
        if images and not known:
            raise DataError(f"{path}: none of its images ({images[0]!r}, ...) are in the index; run "
                            "toolkit suggest on the folder given as --img-directory, whose names the index uses.")
        return frame.iloc[chosen].to_dict("records")  # Python numbers, for JSON

    return rank
