"""Proof on real data: one round of Rocchio feedback on the top 20, scored on the residual collection.

Data: scikit-learn's 1,797 real handwritten digits (offline), written as 32 px
PNGs by `data_tools.make_demo_data.write_digit_folders`; features: the
images' grey pixels (1,024 per image, scaled to [0, 1]), the features
`toolkit serve` ranks by with the cosine metric.

For each of 50 query images (fixed seed), a simulated user looks at the top
20 results (the query image itself left out), selects those of the query's
digit and deselects the others, as the lasso / deselect page does. The
refined query is q' = 1.0 q + 0.75 mean(selected) - 0.15 mean(deselected)
(`data_tools.rocchio` defaults). Precision@10 is measured on the residual
collection: the query and the 20 judged images are removed from both
rankings, so refinement earns no credit for re-ranking what the user saw.

    python benchmarks/webapp_feedback_digits.py [--queries 50] [--judge 20] [--k 10]

About 10 s on 2 CPU cores. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from data_tools import rocchio
from data_tools.make_demo_data import write_digit_folders


def digits_pixels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixel rows N x 1024, digit class names N) of the digit PNGs under `folder`."""
    paths = sorted(folder.glob("*/*.png"))
    rows = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() / 255 for p in paths])
    return rows, np.array([p.parent.name for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--judge", type=int, default=20, help="Top results the simulated user judges.")
    parser.add_argument("--k", type=int, default=10, help="Precision@k on the residual collection.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        features, labels = digits_pixels(write_digit_folders(Path(folder), n_images=1797, image_size=32, seed=args.seed))
    queries = np.random.default_rng(args.seed).choice(len(features), size=args.queries, replace=False)
    pairs = np.array([rocchio.feedback_round(features, labels, int(q), judge=args.judge, k=args.k) for q in queries])
    before, after = pairs[:, 0], pairs[:, 1]
    print(f"Digits: {len(features)} images, pixel features ({features.shape[1]}), cosine; {args.queries} queries, "
          f"one round of feedback on the top {args.judge}; Rocchio alpha={rocchio.ALPHA}, beta={rocchio.BETA}, gamma={rocchio.GAMMA}.")
    print()
    print(f"| ranking | precision@{args.k}, residual collection (mean ± sd over {args.queries} queries) |")
    print("|---|---|")
    print(f"| without refinement | {before.mean():.3f} ± {before.std():.3f} |")
    print(f"| with Rocchio refinement | {after.mean():.3f} ± {after.std():.3f} |")
    print()
    print(f"Refinement better on {(after > before).sum()} queries, equal on {(after == before).sum()}, worse on {(after < before).sum()}.")


if __name__ == "__main__":
    main()
