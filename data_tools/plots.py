"""Plots a person would rather look at than read. Matplotlib runs headless (Agg)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_tools.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: pd.DataFrame, path: str | Path, *, score: str = "val_macro_f1") -> None:
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
    if score in history:
        score_axis = loss_axis.twinx()
        score_axis.plot(epochs, history[score], label=score.replace("_", " "), color="tab:green", marker="o")
        score_axis.set_ylabel(score.replace("_", " "))
        score_axis.set_ylim(0, 1)
        more_handles, more_labels = score_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    loss_axis.legend(handles, labels, loc="center right")
    loss_axis.set_title("Training curves")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
