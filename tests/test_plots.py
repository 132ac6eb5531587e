"""Plots: every one is saved by `save_figure`, a whole PNG or no file, and leaves no figure open."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_toolkit.data_tools.maps.plots import (
    _pyplot,
    plot_class_f1,
    plot_embedding,
    plot_training_curves,
    save_figure,
)
from image_toolkit.data_tools.maps.retrieval_plots import plot_query_grid, plot_similarity_heatmap

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    plt = _pyplot()
    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    save_figure(figure, tmp_path / "line.png")
    assert is_png(tmp_path / "line.png")
    assert not plt.fignum_exists(figure.number)
    assert [path.name for path in tmp_path.iterdir()] == ["line.png"]


def test_a_failed_save_leaves_no_file_and_closes_the_figure(tmp_path, monkeypatch):
    plt = _pyplot()
    figure, _ = plt.subplots()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save_figure(figure, tmp_path / "broken.png")
    assert list(tmp_path.iterdir()) == []
    assert not plt.fignum_exists(figure.number)


def test_every_plot_writes_a_png_and_leaves_no_figure_open(tmp_path):
    plt = _pyplot()
    plt.close("all")
    rng = np.random.default_rng(0)
    history = pd.DataFrame({"epoch": range(3), "loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7],
                            "val_macro_f1": [0.3, 0.5, 0.6]})
    plot_training_curves(history, tmp_path / "curves.png")
    plot_embedding(rng.standard_normal((20, 2)), tmp_path / "map.png", classes=["a", "b", ""] * 6 + ["a", "b"],
                   highlight=np.arange(20) < 3)
    per_class = pd.DataFrame({"class": ["a", "b", "a", "b"], "variant": ["x", "x", "y", "y"],
                              "mean": [0.5, 0.6, 0.7, 0.8], "std": [0.1, 0.1, np.nan, 0.0]})
    plot_class_f1(per_class, tmp_path / "f1.png")
    classes = np.array(["a", "a", "b", "b"])
    plot_similarity_heatmap(rng.standard_normal((4, 8)), classes, tmp_path / "heatmap.png")
    images = []
    for i in range(4):
        images.append(tmp_path / f"image{i}.png")
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(images[-1])
    plot_query_grid(images, classes, np.array([[1, 2], [0, 3], [3, 0], [2, 1]]), np.array([0, 2]), tmp_path / "grid.png")
    for name in ("curves", "map", "f1", "heatmap", "grid"):
        assert is_png(tmp_path / f"{name}.png"), name
    assert plt.get_fignums() == []
