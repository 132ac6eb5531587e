"""Run a classifier over images nobody has judged yet and rank them by its doubt: `toolkit suggest`, `serve --suggest`.

The scoring (margin, entropy, random) is `image_toolkit.data_tools.feedback.suggest`;
this module lists the images, leaves out the judged or labelled ones and
runs the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.atomic import refuse_inputs, write_text
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.feedback.store import read_image_feedback
from image_toolkit.data_tools.feedback.suggest import Suggestion, suggest, suggestions_csv
from image_toolkit.data_tools.formats.csv_files import read_checked_csv
from image_toolkit.data_tools.formats.images import check_images, require_readable
from image_toolkit.data_tools.formats.labels import SEPARATOR, read_labels
from image_toolkit.models.inference import classifier_probabilities, label_thresholds, load_classifier, named_inputs

logger = logging.getLogger(__name__)

# An IMAGES argument with one of these endings is a list of images (a label CSV), not an image.
LIST_SUFFIXES = (".csv", ".txt")


def listed_images(inputs: list[str | os.PathLike], img_directory: str | os.PathLike) -> list[tuple[Path, str]]:
    """(file, name) of each image: a folder's images named relative to it, or a CSV's `image` rows under `img_directory`."""
    if len(inputs) == 1 and Path(inputs[0]).is_file() and Path(inputs[0]).suffix.lower() in LIST_SUFFIXES:
        frame = read_checked_csv(inputs[0], kind="image list CSV", missing_fix="pass a folder of images or a label CSV")
        if not Path(img_directory).is_dir():
            raise DataError(f"{img_directory}: image folder not found; pass --img-directory with the folder "
                            f"the 'image' paths of {inputs[0]} are relative to.")
        names = list(dict.fromkeys(frame["image"]))
        return [(Path(img_directory) / name, name) for name in names]
    return named_inputs(inputs)


def _mismatch(source: str | os.PathLike, classes: set[str], model_labels: list[str], fix: str) -> DataError | None:
    """A one-line error when `classes` has names the model does not know, else None."""
    unknown = sorted(classes - set(model_labels))
    if not unknown:
        return None
    return DataError(f"{source}: its classes do not match the model's ({', '.join(unknown[:5])} unknown to it); "
                     f"the model knows {', '.join(model_labels)}. {fix}")


def judged_images(feedback: str | os.PathLike, model_labels: list[str]) -> set[str]:
    """The images an image feedback CSV names (any lasso, select or deselect); its classes must be the model's."""
    frame = read_image_feedback(feedback)
    classes = {name for column in ("class", "query_class") for cell in frame[column] for name in cell.split(SEPARATOR) if name}
    problem = _mismatch(feedback, classes, model_labels, "Pass the feedback of the data set the model was trained on.")
    if problem:
        raise problem
    return set(frame["image"])


def labelled_images(data_csv: str | os.PathLike, model_labels: list[str], task: str) -> set[str]:
    """The images of a label CSV whose every label is known; its labels must be the model's."""
    table = read_labels(data_csv, task)
    problem = _mismatch(data_csv, set(table.label_names), model_labels, "Pass the label CSV the model was trained on.")
    if problem:
        raise problem
    if task == "multilabel" and set(table.label_names) != set(model_labels):
        raise DataError(f"{data_csv}: its labels ({', '.join(table.label_names)}) are not the model's "
                        f"({', '.join(model_labels)}); pass the label CSV the model was trained on.")
    known = ~np.isnan(table.labels).any(axis=1)
    return {image for image, whole in zip(table.images, known) if whole}


def rank_images(model_path: str | os.PathLike, named: list[tuple[Path, str]], *, n: int, strategy: str = "margin",
                seed: int = 0, threshold: float | None = None, batch_size: int = 32,
                loaded: tuple | None = None, clamp: bool = False) -> tuple[list[Suggestion], list[tuple[str, str]]]:
    """The `n` of the (file, name) images most worth asking about, and (path, reason) of the unreadable ones.

    `loaded` is a (model, metadata) pair already loaded from `model_path`;
    `clamp` gives all the readable images when fewer than `n` are (else an OptionError).
    """
    model, metadata = loaded or load_classifier(model_path)
    usable, skipped = check_images([path for path, _ in named])
    named = [item for item, ok in zip(named, usable) if ok]
    require_readable(len(named), skipped, "IMAGES", fix="pass JPEG, PNG, BMP or GIF files or folders")
    n = min(n, len(named)) if clamp else n
    if n > len(named):
        raise OptionError(f"--n {n}: only {len(named)} readable images are left to suggest from "
                          f"({len(skipped)} unreadable); pass --n {len(named)} or fewer.")
    probabilities = classifier_probabilities([path for path, _ in named], model, metadata, batch_size=batch_size)
    suggestions = suggest([name for _, name in named], probabilities, metadata["label_names"], metadata["task"], n=n,
                          strategy=strategy, thresholds=label_thresholds(metadata, threshold), seed=seed)
    return suggestions, skipped


def suggest_images(
    model_path: str | os.PathLike,
    inputs: list[str | os.PathLike],
    output: str | os.PathLike = "suggestions.csv",
    *,
    n: int = 40,
    strategy: str = "margin",
    img_directory: str | os.PathLike = "./images",
    feedback: str | os.PathLike | None = None,
    data_csv: str | os.PathLike | None = None,
    seed: int = 0,
    threshold: float | None = None,
    batch_size: int = 32,
) -> dict:
    """Rank the images of `inputs` that neither `feedback` names nor `data_csv` labels; write the top `n` to `output`.

    The count checks come before the model runs, so a wrong --n or a
    mismatched label file costs no prediction. The output is written
    atomically; an output that is one of the inputs is refused.
    """
    if n < 1:
        raise OptionError(f"--n {n}: expected at least 1 image to suggest.")
    refuse_inputs(output, (model_path, feedback, data_csv, *inputs), option="-o")
    model, metadata = load_classifier(model_path)
    named = listed_images(inputs, img_directory)
    judged = judged_images(feedback, metadata["label_names"]) if feedback else set()
    labelled = labelled_images(data_csv, metadata["label_names"], metadata["task"]) if data_csv else set()
    left = [(path, name) for path, name in named if name not in judged and name not in labelled]
    where = ", ".join(map(str, inputs))
    if not left:
        raise DataError(f"{where}: every one of its {len(named)} images is judged or labelled already; nothing to suggest.")
    if n > len(left):
        raise OptionError(f"--n {n}: {where} has {len(named)} images, {len(left)} of them not judged or labelled; "
                          f"pass --n {len(left)} or fewer.")
    suggestions, skipped = rank_images(model_path, left, n=n, strategy=strategy, seed=seed, threshold=threshold,
                                       batch_size=batch_size, loaded=(model, metadata))
    write_text(output, suggestions_csv(suggestions))
    return {
        "output": str(output), "strategy": strategy, "task": metadata["task"], "images": len(named),
        "judged": len(named) - len(left), "unreadable": len(skipped), "ranked": len(left) - len(skipped),
        "suggested": len(suggestions), "skipped": skipped, "suggestions": [dataclasses.asdict(s) for s in suggestions],
    }


def collection_suggester(model_path: str | os.PathLike, images_dir: str | os.PathLike, *, n: int = 40,
                         strategy: str = "margin", seed: int = 0) -> Callable[[list[str], set[str]], list[dict]]:
    """The ranking `toolkit serve --suggest` hands the web app: (names, judged names) -> rows of the n most uncertain.

    Names are relative to `images_dir`; the judged ones are left out, and
    fewer than `n` left give them all.
    """
    def rank(names: list[str], judged: set[str]) -> list[dict]:
        left = [(Path(images_dir) / name, name) for name in names if name not in judged]
        if not left:
            return []
        suggestions, skipped = rank_images(model_path, left, n=n, strategy=strategy, seed=seed, clamp=True)
        for path, reason in skipped:
            logger.warning("--suggest: skipped %s: %s", path, reason)
        return [dataclasses.asdict(s) for s in suggestions]

    return rank
