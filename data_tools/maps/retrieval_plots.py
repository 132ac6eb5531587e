"""Pictures of an embedding a person reads at a glance: a similarity heatmap and query grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from image_toolkit.data_tools.formats.background import to_rgb
from image_toolkit.data_tools.maps.plots import _pyplot, save_figure


def plot_similarity_heatmap(embeddings: np.ndarray, classes: np.ndarray, path: str | Path, *, per_class: int = 10, seed: int = 0) -> None:
    """Cosine similarity of a class-sorted sample: a good embedding shows bright diagonal blocks."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    labels = np.unique(classes)
    rows = np.concatenate([rng.permutation(np.flatnonzero(classes == label))[:per_class] for label in labels])
    sample = embeddings[rows] / np.maximum(np.linalg.norm(embeddings[rows], axis=1, keepdims=True), 1e-12)
    figure, axis = plt.subplots(figsize=(7, 6), dpi=100)
    image = axis.imshow(sample @ sample.T, cmap="viridis", vmin=-1, vmax=1)
    edges = np.cumsum([min(per_class, int((classes == label).sum())) for label in labels])
    centres = edges - np.diff(np.concatenate([[0], edges])) / 2
    axis.set_xticks(centres - 0.5, labels, rotation=90)
    axis.set_yticks(centres - 0.5, labels)
    for edge in edges[:-1]:
        axis.axhline(edge - 0.5, color="white", linewidth=0.5)
        axis.axvline(edge - 0.5, color="white", linewidth=0.5)
    figure.colorbar(image, ax=axis, label="cosine similarity")
    axis.set_title("Similarity of a class-sorted sample")
    figure.tight_layout()
    save_figure(figure, path)


def plot_query_grid(paths: list[Path], classes: np.ndarray, neighbors: np.ndarray, queries: np.ndarray, path: str | Path,
                    *, background: str | None = None) -> None:
    """Each query (left) with its nearest neighbours; a red title marks a neighbour of another class.

    Transparent images are shown on `background` (default white), as the model saw them.
    """
    plt = _pyplot()
    n_columns = neighbors.shape[1] + 1
    figure, axes = plt.subplots(len(queries), n_columns, figsize=(1.6 * n_columns, 1.8 * len(queries)), dpi=100, squeeze=False)
    for row, query in enumerate(queries):
        for column, index in enumerate([query, *neighbors[query]]):
            axis = axes[row, column]
            with Image.open(paths[index]) as image:
                axis.imshow(to_rgb(image, background))
            same = classes[index] == classes[query]
            axis.set_title(("query: " if column == 0 else "") + str(classes[index]), fontsize=8,
                           color="black" if column == 0 or same else "red")
            axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)
