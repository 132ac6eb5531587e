"""Macro-F1 of the three missing-label strategies when 20 % of training label cells are blank.

Real data: scikit-learn's 1,797 handwritten digits with the demo's four
yes/no labels. The validation list keeps every label, so the three runs are
scored on the same, complete answers; only the training labels have holes.

    python benchmarks/bench_missing_labels.py [--drop 0.2] [--epochs 20]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.formats.labels import read_label_csv, split_table, write_label_csv
from image_toolkit.data_tools.make_demo_data import write_digits_dataset
from image_toolkit.models.training import TrainOptions, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drop", type=float, default=0.2, help="fraction of training label cells made blank")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_digits_dataset(root, n_images=1797, image_size=args.image_size, blank_fraction=0.0, seed=args.seed)
        train, val = split_table(read_label_csv(root / "label.txt"), 0.2, args.seed)
        rng = np.random.default_rng(args.seed)
        holes = rng.random(train.labels.shape) < args.drop
        train = type(train)(train.images, np.where(holes, np.nan, train.labels).astype(np.float32), train.label_names, train.task)
        write_label_csv(train, root / "train_holes.csv")
        write_label_csv(val, root / "val.csv")
        print(f"digits: {len(train)} training images ({holes.mean():.1%} of label cells blank), {len(val)} validation images")
        print(f"small_cnn, {args.image_size} px, {args.epochs} epochs, seed {args.seed}")
        print(f"{'strategy':<10}{'best val macro-F1':>20}{'micro-F1':>12}{'best epoch':>12}{'seconds':>10}")
        for strategy in ("mask", "mean", "mf"):
            options = TrainOptions(
                train_csv=str(root / "train_holes.csv"),
                val_csv=str(root / "val.csv"),
                img_directory=str(root / "images"),
                output_dir=str(root / strategy),
                backbone="small_cnn",
                weights="none",
                image_size=args.image_size,
                epochs=args.epochs,
                seed=args.seed,
                missing_labels=strategy,
            )
            summary = train_classifier(options, verbose=0)
            print(
                f"{strategy:<10}{summary['best_val_macro_f1']:>20.4f}{summary['best_val_micro_f1']:>12.4f}"
                f"{summary['best_epoch']:>12}{summary['wall_time_s']:>10.1f}"
            )


if __name__ == "__main__":
    main()
