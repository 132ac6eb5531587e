"""Plots a person would rather look at than read. Matplotlib runs headless (Agg)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from image_toolkit.data_tools.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path) -> None:
    """Write `figure` to `path` as a PNG, atomically (the file is whole or absent), and close it."""
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        _pyplot().close(figure)


def plot_training_curves(history: pd.DataFrame, path: str | Path, *, score: str | None = "val_macro_f1") -> None:
    """Training and validation loss (left axis) and the validation score (right axis) by epoch."""
    plt = _pyplot()
    epochs = history["epoch"] + 1
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    loss_axis.plot(epochs, history["loss"], label="train loss", color="tab:blue")
    if "val_loss" in history:
        loss_axis.plot(epochs, history["val_loss"], label="validation loss", color="tab:orange")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    handles, labels = loss_axis.get_legend_handles_labels()
    if score is not None and score in history:
        score_axis = loss_axis.twinx()
        score_axis.plot(epochs, history[score], label=score.replace("_", " "), color="tab:green", marker="o")
        score_axis.set_ylabel(score.replace("_", " "))
        score_axis.set_ylim(0, 1)
        more_handles, more_labels = score_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    loss_axis.legend(handles, labels, loc="center right")
    loss_axis.set_title("Training curves")
    figure.tight_layout()
    save_figure(figure, path)


def plot_trials(trials: pd.DataFrame, path: str | Path, *, score: str = "val_macro_f1") -> None:
    """The score of each trial of a hyper-parameter search (points) and the best so far (a step line)."""
    plt = _pyplot()
    numbers = range(1, len(trials) + 1)
    scores = pd.to_numeric(trials[score], errors="coerce")
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    axis.plot(numbers, scores, "o", color="tab:blue", label=score.replace("_", " "))
    axis.step(numbers, scores.cummax(), where="post", color="tab:green", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(score.replace("_", " "))
    axis.set_ylim(0, 1)
    axis.legend(loc="lower right")
    axis.set_title("Hyper-parameter search")
    figure.tight_layout()
    save_figure(figure, path)


def plot_embedding(
    coords,
    path: str | Path,
    *,
    classes: list[str] | None = None,
    highlight=None,
    highlight_label: str = "highlighted",
    title: str = "t-SNE of the image features",
) -> None:
    """A 2-D map of the images, coloured by class, with the highlighted ones drawn on top."""
    import numpy as np

    plt = _pyplot()
    coords = np.asarray(coords)
    figure, axis = plt.subplots(figsize=(8, 7), dpi=100)
    size = max(0.2, min(20.0, 20000.0 / max(len(coords), 1)))
    # Points fade as they crowd, so that a million of them still show where the classes are dense.
    alpha = max(0.1, min(0.7, 70_000 / max(len(coords), 1)))
    if classes is None:
        axis.scatter(coords[:, 0], coords[:, 1], s=size, color="tab:blue", alpha=alpha, linewidths=0)
    else:
        names = sorted(set(classes), key=lambda name: (name == "", name))
        colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        classes = np.asarray(classes, dtype=object)
        for index, name in enumerate(names):
            rows = classes == name
            axis.scatter(coords[rows, 0], coords[rows, 1], s=size, alpha=alpha, linewidths=0,
                         color="lightgrey" if name == "" else colours(index % colours.N), label=name or "unknown")
    if highlight is not None and np.any(highlight):
        rows = np.asarray(highlight, dtype=bool)
        axis.scatter(coords[rows, 0], coords[rows, 1], s=size * 3 + 10, facecolors="none", edgecolors="black",
                     linewidths=1.2, label=f"{highlight_label} ({int(rows.sum())})", zorder=3)
    if classes is not None or highlight is not None:
        axis.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=2, frameon=False)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title)
    figure.tight_layout()
    save_figure(figure, path)


def plot_class_f1(per_class: pd.DataFrame, path: str | Path, *, title: str = "Test F1 per class") -> None:
    """Bars of each class's test F1 per variant (mean over seeds, whiskers: std).

    `per_class` has columns class, variant, mean, std; the classes keep their
    order of first appearance.
    """
    import numpy as np

    plt = _pyplot()
    classes = list(dict.fromkeys(per_class["class"]))
    variants = list(dict.fromkeys(per_class["variant"]))
    width = 0.8 / max(len(variants), 1)
    positions = np.arange(len(classes))
    figure, axis = plt.subplots(figsize=(max(6, 0.7 * len(classes) + 2), 4), dpi=100)
    for index, variant in enumerate(variants):
        rows = per_class[per_class["variant"] == variant].set_index("class").reindex(classes)
        axis.bar(positions + (index - (len(variants) - 1) / 2) * width, rows["mean"], width,
                 yerr=rows["std"].fillna(0), capsize=2, label=variant)
    axis.set_xticks(positions, classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("F1 on the test split")
    axis.legend()
    axis.set_title(title)
    figure.tight_layout()
    save_figure(figure, path)


def plot_sweep(sweep: pd.DataFrame, path: str | Path, *, group: str = "ratio", title: str = "Δ test macro-F1 by ratio") -> None:
    """Each comparison's mean Δ macro-F1 against the swept ratio, whiskers its 95 % interval; a line at 0.

    `sweep` has columns comparison, ratio, mean, low, high; an undecidable
    point (NaN interval, e.g. one seed) is drawn without whiskers.
    """
    import numpy as np

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    comparisons = list(dict.fromkeys(sweep["comparison"]))
    spread = 0.03 * (sweep["ratio"].max() - sweep["ratio"].min() or 1)
    for index, name in enumerate(comparisons):
        rows = sweep[sweep["comparison"] == name].sort_values("ratio")
        x = rows["ratio"].to_numpy(float) + (index - (len(comparisons) - 1) / 2) * spread
        mean = rows["mean"].to_numpy(float)
        errors = np.nan_to_num(np.vstack([mean - rows["low"].to_numpy(float), rows["high"].to_numpy(float) - mean]))
        axis.errorbar(x, mean, yerr=errors, marker="o", capsize=3, label=name)
    axis.axhline(0, color="grey", linewidth=1, linestyle="--")
    axis.set_xlabel(f"{group} ratio")
    axis.set_ylabel("Δ test macro-F1")
    axis.legend()
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def plot_pr_curves(labels, probabilities, names: list[str], path: str | Path) -> None:
    """Each label's precision-recall curve over its known cells, its average precision in the legend."""
    import numpy as np
    from sklearn.metrics import PrecisionRecallDisplay

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5), dpi=100)
    for j, name in enumerate(names):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j].astype(int)
        if len(np.unique(y)) == 2:
            PrecisionRecallDisplay.from_predictions(y, probabilities[known, j], name=name, ax=axis)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.05)
    axis.set_title("Precision-recall per label (test list)")
    figure.tight_layout()
    save_figure(figure, path)


def plot_confusion(matrix, names: list[str], path: str | Path) -> None:
    """The confusion matrix of a multi-class model: true class by row, predicted by column, counts in the cells."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    size = max(4, 0.5 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size, size), dpi=100)
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=axis, colorbar=False, xticks_rotation=45 if len(names) > 6 else "horizontal")
    axis.set_title("Confusion matrix (test list)")
    figure.tight_layout()
    save_figure(figure, path)


def plot_class_counts(counts: dict[str, int], path: str | Path) -> None:
    """Images per class (or per label) as horizontal bars: an imbalance shows at a glance."""
    plt = _pyplot()
    names = list(counts)
    figure, axis = plt.subplots(figsize=(6, max(2.0, 0.3 * len(names) + 1)), dpi=100)
    axis.barh(names, [counts[name] for name in names], color="tab:blue")
    axis.invert_yaxis()
    axis.set_xlabel("images")
    axis.set_title("Images per class")
    figure.tight_layout()
    save_figure(figure, path)


def plot_image_sizes(widths, heights, path: str | Path) -> None:
    """Histograms of image width, height and aspect ratio (width / height)."""
    import numpy as np

    plt = _pyplot()
    widths, heights = np.asarray(widths, dtype=float), np.asarray(heights, dtype=float)
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=100)
    for axis, values, title in zip(axes, (widths, heights, widths / heights), ("width (px)", "height (px)", "aspect ratio")):
        axis.hist(values, bins=30, color="tab:blue")
        axis.set_title(title)
        axis.set_ylabel("images")
    figure.tight_layout()
    save_figure(figure, path)


def plot_image_grid(rows: list[list[tuple[Path, str]]], path: str | Path, *, title: str) -> None:
    """Images in rows (a duplicate group, or a run of outliers per row), each with its caption."""
    from PIL import Image

    plt = _pyplot()
    n_columns = max(len(row) for row in rows)
    figure, axes = plt.subplots(len(rows), n_columns, figsize=(1.6 * n_columns, 1.8 * len(rows) + 0.4), dpi=100, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for r, row in enumerate(rows):
        for c, (image_path, caption) in enumerate(row):
            with Image.open(image_path) as image:
                axes[r, c].imshow(image.convert("RGB"))
            axes[r, c].set_title(caption, fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)
