"""The linear probe on real data: scikit-learn's digits, on raw pixels and on a small_cnn's head features.

All 1,797 digits (32 px), ten classes; 20 % held out as a test list no model
sees. A small_cnn is trained on the rest (multiclass, from scratch), then
the probe (`toolkit probe`: logistic regression, C by 5-fold cross-validation)
is fitted on the same rest, on pixels and on the CNN's 64-unit head (its penultimate layer), and
scored on the test list. Prints the test macro-F1 and accuracy of each.

    python benchmarks/probe_digits.py [--epochs 15]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pandas as pd

from image_toolkit.data_tools.formats.labels import read_label_csv, split_table, write_label_csv
from image_toolkit.data_tools.make_demo_data import write_digits_dataset
from image_toolkit.models.extraction import extract, feature_extractor
from image_toolkit.models.inference import classifier_probabilities, load_classifier
from image_toolkit.models.probe import ProbeOptions, f1_scores, train_probe
from image_toolkit.models.training import TrainOptions, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        table = write_digits_dataset(root, n_images=1797, image_size=32, blank_fraction=0.0, seed=0)
        pd.DataFrame({"image": table["image"], "label": table["digit_name"]}).to_csv(root / "digits.csv", index=False)
        rest, test = split_table(read_label_csv(root / "digits.csv", "multiclass"), 0.2, seed=0)
        write_label_csv(rest, root / "rest.csv")
        write_label_csv(test, root / "test.csv")
        images = root / "images"
        train_classifier(TrainOptions(data_csv=str(root / "rest.csv"), img_directory=str(images), output_dir=str(root / "cnn"),
                                      task="multiclass", backbone="small_cnn", weights="none", image_size=32,
                                      epochs=args.epochs), verbose=0)
        model, metadata = load_classifier(root / "cnn" / "best_model.h5")
        cnn = f1_scores(test.labels, classifier_probabilities([images / i for i in test.images], model, metadata), "multiclass")
        results = {f"small_cnn trained ({args.epochs} epochs)": cnn}
        for name, model_name in (("probe on pixels", "pixels"), ("probe on small_cnn head (64-d)", str(root / "cnn" / "best_model.h5"))):
            features = root / f"{name.replace(' ', '_')}.npz"
            extract(images, features, feature_extractor(model_name, output="pooled", image_size=32 if model_name == "pixels" else None), verbose=0)
            summary = train_probe(ProbeOptions(features=str(features), task="multiclass", output_dir=str(root / name.replace(" ", "_")),
                                               train_csv=str(root / "rest.csv"), val_csv=str(root / "test.csv")))
            results[name] = {"macro_f1": summary["val_macro_f1"], "micro_f1": summary["val_micro_f1"]}
        print(f"digits: {len(rest)} images to fit, {len(test)} held out (10 classes, 32 px)")
        for name, scores in results.items():
            print(f"{name:>32}: test macro-F1 {scores['macro_f1']:.3f}, accuracy {scores['micro_f1']:.3f}")


if __name__ == "__main__":
    main()
