"""The similarity proof on real data: Siamese type D and SimCLR on scikit-learn's digits.

All 1,797 digits (32 px) in class folders, 30 % of every class held out;
the gallery is the held-out set, every image a query against the others
(leave-one-out). Prints recall@1/5/10, mAP@R and 5-NN accuracy of raw pixels,
of an untrained tower, of Siamese type D and of SimCLR (trained without
labels).

    python benchmarks/similarity_digits.py [--siamese_epochs 20] [--simclr_epochs 60]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from image_toolkit.data_tools.formats.metadata import make_metadata
from image_toolkit.data_tools.make_demo_data import write_digit_folders
from image_toolkit.data_tools.search.retrieval import retrieval_scores
from image_toolkit.models.backbones import get_backbone
from image_toolkit.models.embedding import EmbeddingTower
from image_toolkit.models.extraction import compute_features, keras_extractor
from image_toolkit.models.inference import load_embedding_model
from image_toolkit.models.runtime import keras
from image_toolkit.models.similarity import SimilarityOptions, train_embedding


def embed(tower, paths):
    """Embeddings of the gallery by a small_cnn tower at 32 px."""
    extractor = keras_extractor(tower, get_backbone("small_cnn").preprocess, 32, {})
    return compute_features(extractor, paths, verbose=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--siamese_epochs", type=int, default=20)
    parser.add_argument("--simclr_epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        root = write_digit_folders(Path(folder) / "digits", image_size=32, seed=args.seed)
        make_metadata(root, root / "metadata.csv", test_split=0.3, seed=args.seed)
        gallery = pd.read_csv(root / "metadata.csv").query("split == 'test'")
        paths = [root / image for image in gallery["image"]]
        classes = gallery["class"].to_numpy()
        rows = {}
        pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() for p in paths])
        rows["raw pixels (euclidean)"] = retrieval_scores(pixels, classes, metric="euclidean")
        keras.utils.set_random_seed(args.seed)
        rows["untrained small_cnn tower"] = retrieval_scores(embed(EmbeddingTower("small_cnn", image_size=32, embedding_dim=64), paths), classes)
        common = dict(data=str(root / "metadata.csv"), backbone="small_cnn", image_size=32, embedding_dim=64, seed=args.seed)
        runs = {
            f"Siamese type D ({args.siamese_epochs} epochs)": SimilarityOptions(
                method="siamese", siamese_type="d", margin=0.5, epochs=args.siamese_epochs, batch_size=64,
                output_dir=str(Path(folder) / "siamese"), **common),
            f"SimCLR, no labels ({args.simclr_epochs} epochs)": SimilarityOptions(
                method="simclr", temperature=0.2, projection_dim=64, epochs=args.simclr_epochs, batch_size=128,
                output_dir=str(Path(folder) / "simclr"), **common),
        }
        for name, options in runs.items():
            summary = train_embedding(options, verbose=0)
            tower, _ = load_embedding_model(summary["model"])
            rows[name] = retrieval_scores(embed(tower, paths), classes)
            rows[name]["seconds"] = summary["wall_time_s"]
        print(f"digits: {len(gallery)} held-out images (gallery, leave-one-out), {1797 - len(gallery)} training images, 32 px")
        print(f"{'embedding':<34}{'recall@1':>9}{'recall@5':>9}{'recall@10':>10}{'mAP@R':>8}{'5-NN acc':>9}{'train s':>9}")
        for name, scores in rows.items():
            seconds = f"{scores['seconds']:.0f}" if "seconds" in scores else ""
            print(f"{name:<34}{scores['recall@1']:>9.4f}{scores['recall@5']:>9.4f}{scores['recall@10']:>10.4f}"
                  f"{scores['map@r']:>8.4f}{scores['knn_accuracy']:>9.4f}{seconds:>9}")


if __name__ == "__main__":
    main()
