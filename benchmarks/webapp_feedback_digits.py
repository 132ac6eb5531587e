"""Proof on real data: one round of Rocchio feedback on the top 20, scored on the residual collection.

Data: scikit-learn's 1,797 real handwritten digits (offline), written as 32 px
PNGs by `image_toolkit.data_tools.make_demo_data.write_digit_folders`. Two kinds of
features, each ranked with the cosine metric as `toolkit serve` does:

- `simclr`: the embedding of the similarity issue, a `small_cnn` tower
  trained by SimCLR without labels (as in `benchmarks/similarity_digits.py`:
  64-d, 60 epochs, on the 70 % training split), then applied to every image;
- `pixels`: the images' grey pixels (1,024 per image, scaled to [0, 1]).

For each of 50 query images (fixed seed), a simulated user looks at the top
20 results (the query image itself left out), selects those of the query's
digit and deselects the others, as the lasso / deselect page does. The
refined query is q' = 1.0 q + 0.75 mean(selected) - 0.15 mean(deselected)
(`image_toolkit.data_tools.search.rocchio` defaults, the same functions the app's
/api/search/refine calls). Precision@10 is measured on the residual
collection: the query and the 20 judged images are removed from both
rankings, so refinement earns no credit for re-ranking what the user saw.

    python benchmarks/webapp_feedback_digits.py [--features simclr pixels] [--queries 50] [--judge 20] [--k 10]

About two minutes on 2 CPU cores (the SimCLR training). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from image_toolkit.data_tools.make_demo_data import write_digit_folders
from image_toolkit.data_tools.search import rocchio


def digits_pixels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixel rows N x 1024, digit class names N) of the digit PNGs under `folder`."""
    paths = sorted(folder.glob("*/*.png"))
    rows = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() / 255 for p in paths])
    return rows, np.array([p.parent.name for p in paths])


def simclr_features(folder: Path, epochs: int, seed: int) -> np.ndarray:
    """Every digit's SimCLR embedding (rows in the order of `digits_pixels`), trained without labels."""
    from image_toolkit.data_tools.formats.metadata import make_metadata
    from image_toolkit.models.backbones import get_backbone
    from image_toolkit.models.extraction import compute_features, keras_extractor
    from image_toolkit.models.inference import load_embedding_model
    from image_toolkit.models.similarity import SimilarityOptions, train_embedding

    paths = sorted(folder.glob("*/*.png"))  # Before training writes anything.
    make_metadata(folder, folder / "metadata.csv", test_split=0.3, seed=seed)
    options = SimilarityOptions(method="simclr", data=str(folder / "metadata.csv"), backbone="small_cnn", image_size=32,
                                embedding_dim=64, temperature=0.2, projection_dim=64, epochs=epochs, batch_size=128,
                                seed=seed, output_dir=str(folder.parent / "simclr"))
    tower, _ = load_embedding_model(train_embedding(options, verbose=0)["model"])
    extractor = keras_extractor(tower, get_backbone("small_cnn").preprocess, 32, {})
    return compute_features(extractor, paths, verbose=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", choices=["simclr", "pixels"], default=["simclr", "pixels"])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--judge", type=int, default=20, help="Top results the simulated user judges.")
    parser.add_argument("--k", type=int, default=10, help="Precision@k on the residual collection.")
    parser.add_argument("--simclr_epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        root = write_digit_folders(Path(folder) / "digits", n_images=1797, image_size=32, seed=args.seed)
        pixels, labels = digits_pixels(root)
        features = {"pixels": pixels}
        if "simclr" in args.features:
            features["simclr"] = simclr_features(root, args.simclr_epochs, args.seed)
    queries = np.random.default_rng(args.seed).choice(len(labels), size=args.queries, replace=False)
    print(f"Digits: {len(labels)} images, cosine; {args.queries} queries, one round of feedback on the top {args.judge}; "
          f"Rocchio alpha={rocchio.ALPHA}, beta={rocchio.BETA}, gamma={rocchio.GAMMA}.")
    print()
    print(f"| features | ranking | precision@{args.k}, residual collection (mean ± sd over {args.queries} queries) | better / equal / worse |")
    print("|---|---|---|---|")
    for name in args.features:
        rows = features[name]
        pairs = np.array([rocchio.feedback_round(rows, labels, int(q), judge=args.judge, k=args.k) for q in queries])
        before, after = pairs[:, 0], pairs[:, 1]
        described = f"{name} ({rows.shape[1]}-d)"
        print(f"| {described} | without refinement | {before.mean():.3f} ± {before.std(ddof=1):.3f} | |")
        print(f"| {described} | with Rocchio refinement | {after.mean():.3f} ± {after.std(ddof=1):.3f} | "
              f"{(after > before).sum()} / {(after == before).sum()} / {(after < before).sum()} |")


if __name__ == "__main__":
    main()
