"""Proof on real data: does upsampling deselected images help? simulate -> import -> export -> resample -> experiment.

Data: scikit-learn's 1,797 real handwritten digits (offline), one class per
image (multiclass, the scene project's case), 32 px PNGs.

The training set is made harder, in this documented way:

1. A fixed, stratified test list of 40 % of the digits (split seed 12345),
   passed to the experiment as --test_csv, so every run is scored on the
   same ~720 images.
2. Of the other digits, only `--per_class` (15) per class keep their label,
   and the class `--rare_class` ('eight', which people and CNNs confuse with
   one, three and nine) only `--rare_count` (5). The rest are unlabelled:
   the experiment never trains on them, as in a project with few labels.
   The experiment holds 25 % of these labelled images out for validation.

Simulated users (`toolkit feedback simulate`, 20 users, error rate 0.05)
lasso classes on the t-SNE map of the images' pixels (all 1,797: on the web
page people see the whole collection) and deselect what does not belong.

For each way feedback enters training (`--uses`, default upsample and
weight) one experiment trains, per seed and per ratio of the sweep
(`--ratio deselected=2,3`): the baseline (the list as it is, once per seed),
meta (deselected training images repeated, or weighted, by the ratio), and
the controls random (as many extra rows, or as much weight, on random
images) and steps (upsample only: the baseline list repeated to meta's
length, so the same gradient steps). small_cnn, identical options. Each use
writes to its own folder under --output_dir (<use>/ExperimentLog.csv, ...,
sweep.png). Last, "users judge what the model asked for" (`--suggest`, 40):
a model trained on the labelled list suggests the labelled images it is
least sure of, simulated users judge them, and their deselected images are
upsampled by the sweep's last ratio, against random (suggested/).

    python benchmarks/feedback_experiment_digits.py [--epochs 80] [--seeds 12] [--output_dir runs/feedback_digits]

It prints each command, its output and, last, the result tables (Markdown).
Runs per use: seeds x (1 + ratios x (arms - 1)); one run of 80 epochs took
35 s on average on 2 shared CPU cores (measured: --uses upsample --variants
baseline,meta,random --ratio deselected=3 --seeds 5, 15 runs, 556 s in all),
so the default (12 seeds, the number a meta - random interval of +-0.03
needs at the sd of 0.045 measured there; 2 ratios; upsample and weight; the
suggested arm) is 12 x (7 + 5 + 3) + 1 = 181 runs, about 105 minutes.
`--seeds 4` (61 runs) took 1,733 s on 2 cores shared with other work; its
tables are in README ("Proof on real digits").
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.formats.features import FeatureSet, write_features
from image_toolkit.data_tools.make_demo_data import write_digits_dataset


def run(*args: str) -> None:
    """One toolkit command, in this process, printed as a user would type it."""
    print(f"\n$ toolkit {shlex.join(args)}", flush=True)
    toolkit.main(args=list(args), prog_name="toolkit", standalone_mode=False)
    sys.stdout.flush()


def harder_label_lists(table: pd.DataFrame, root: Path, *, test_share: float, per_class: int, rare_class: str,
                       rare_count: int, split_seed: int) -> tuple[Path, Path]:
    """The fixed test list and the few labelled training images (module docstring)."""
    rng = np.random.default_rng(split_seed)
    test_rows, labelled_rows = [], []
    for name in sorted(table["digit_name"].unique()):
        rows = rng.permutation(np.flatnonzero(table["digit_name"].to_numpy() == name))
        n_test = int(round(len(rows) * test_share))
        test_rows.extend(rows[:n_test])
        labelled_rows.extend(rows[n_test: n_test + (rare_count if name == rare_class else per_class)])
    frame = pd.DataFrame({"image": table["image"], "label": table["digit_name"]})
    test_csv, labelled_csv = root / "test.csv", root / "labelled.csv"
    frame.iloc[sorted(test_rows)].to_csv(test_csv, index=False)
    frame.iloc[sorted(labelled_rows)].to_csv(labelled_csv, index=False)
    frame.to_csv(root / "all_labels.csv", index=False)
    return test_csv, labelled_csv


def last_ratio(sweep: str) -> str:
    """The last ratio of a sweep: `deselected=2,3` -> `deselected=3`."""
    group, values = sweep.split("=")
    return f"{group}={values.split(',')[-1]}"


def experiment_args(root: Path, labelled_csv: Path, test_csv: Path, feedback: Path, args, use: str, ratio: str,
                    variants: str, output_dir: Path) -> list[str]:
    """The `toolkit experiment` command line of one arm of the proof."""
    return ["experiment", "--data_csv", str(labelled_csv), "--img_directory", str(root / "images"), "--feedback", str(feedback),
            "--ratio", ratio, "--use", use, "--variants", variants, "--seeds", str(args.seeds),
            "--test_csv", str(test_csv), "--val_split", "0.25",
            "--task", "multiclass", "--backbone", "small_cnn", "--weights", "none", "--image_size", str(args.image_size),
            "--epochs", str(args.epochs), "--batch_size", "16", "--output_dir", str(output_dir), "--quiet"]


def suggested_experiment(root: Path, labelled_csv: Path, test_csv: Path, args) -> float:
    """"Users judge what the model asked for": feedback on `--suggest` images a model is least sure of, then the experiment.

    A model trained on the labelled list (one seed) ranks the labelled
    images by margin; simulated users (error rate --noise) deselect the
    suggested ones whose predicted class is wrong. The experiment then
    upsamples those deselected images by the sweep's last ratio, against
    the random control, as the lasso arm does.
    """
    started = time.time()
    folder = root / "suggested"
    model_dir, suggestions = folder / "model", folder / "suggestions.csv"
    events, db, feedback = folder / "events.jsonl", folder / "feedback.sqlite", folder / "image_feedback.csv"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), folder / "ExperimentLog.csv", folder / "Results.csv"):
        stale.unlink(missing_ok=True)
    run("train", "--data_csv", str(labelled_csv), "--img_directory", str(root / "images"), "--task", "multiclass",
        "--backbone", "small_cnn", "--weights", "none", "--image_size", str(args.image_size), "--epochs", str(args.epochs),
        "--batch_size", "16", "--val_split", "0.25", "--output_dir", str(model_dir), "--quiet")
    run("suggest", str(model_dir / "best_model.h5"), str(labelled_csv), "--img_directory", str(root / "images"),
        "--n", str(args.suggest), "-o", str(suggestions), "--quiet")
    run("feedback", "simulate", "--data_csv", str(root / "all_labels.csv"), "--suggest", str(suggestions), "-o", str(events),
        "--noise", str(args.noise), "--seed", "0", "--quiet")
    run("feedback", "import", str(events), "--data_csv", str(root / "all_labels.csv"), "--db", str(db), "--quiet")
    run("feedback", "export", "--db", str(db), "-o", str(feedback), "--quiet")
    run(*experiment_args(root, labelled_csv, test_csv, feedback, args, "upsample", last_ratio(args.ratio), "baseline,meta,random", folder))
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/feedback_digits")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--ratio", default="deselected=2,3", help="a comma list sweeps the ratio")
    parser.add_argument("--uses", default="upsample,weight", help="comma list of --use values, one experiment each")
    parser.add_argument("--variants", default="baseline,meta,random,steps")
    parser.add_argument("--per_class", type=int, default=15)
    parser.add_argument("--rare_class", default="eight")
    parser.add_argument("--rare_count", type=int, default=5)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--suggest", type=int, default=40,
                        help="images a model asks about (toolkit suggest), judged by simulated users; 0: no such arm")
    args = parser.parse_args()
    started = time.time()
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)

    table = write_digits_dataset(root, n_images=1797, image_size=args.image_size, blank_fraction=0.0, seed=0)
    test_csv, labelled_csv = harder_label_lists(table, root, test_share=0.4, per_class=args.per_class,
                                                rare_class=args.rare_class, rare_count=args.rare_count, split_seed=12345)
    pixels = np.stack([np.asarray(Image.open(root / "images" / name).convert("L"), dtype=np.float32).ravel() / 255
                       for name in table["image"]])
    write_features(root / "pixels.npz", FeatureSet(list(table["image"]), pixels, {"model": "pixels", "image_size": args.image_size}))
    labelled = pd.read_csv(labelled_csv)
    print(f"{len(table)} digits: {len(pd.read_csv(test_csv))} in the fixed test list, {len(labelled)} labelled for "
          f"training and validation ({args.per_class} per class, {args.rare_count} '{args.rare_class}'), "
          f"{len(table) - len(labelled) - len(pd.read_csv(test_csv))} unlabelled")

    db, events, feedback = root / "feedback.sqlite", root / "events.jsonl", root / "image_feedback.csv"
    uses = args.uses.split(",")
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), *(root / use / name for use in uses for name in ("ExperimentLog.csv", "Results.csv"))):
        stale.unlink(missing_ok=True)
    run("feedback", "simulate", "--data_csv", str(root / "all_labels.csv"), "--features", str(root / "pixels.npz"),
        "-o", str(events), "--users", str(args.users), "--noise", str(args.noise), "--seed", "0", "--quiet")
    run("feedback", "import", str(events), "--data_csv", str(root / "all_labels.csv"), "--db", str(db), "--quiet")
    run("feedback", "export", "--db", str(db), "-o", str(feedback), "--quiet")
    run("tsne", str(root / "pixels.npz"), "--labels", str(root / "all_labels.csv"), "--highlight", str(feedback),
        "-o", str(root / "tsne.png"), "--quiet")
    run("resample", str(labelled_csv), str(feedback), "-o", str(root / "labelled_meta.csv"), "--ratio", last_ratio(args.ratio),
        "--test_csv", str(test_csv), "--quiet")
    timings = {}
    for use in uses:
        use_started = time.time()
        run(*experiment_args(root, labelled_csv, test_csv, feedback, args, use, args.ratio, args.variants, root / use))
        timings[use] = time.time() - use_started
    if args.suggest:
        timings["suggested"] = suggested_experiment(root, labelled_csv, test_csv, args)
        uses.append("suggested")

    from image_toolkit.models.experiment import format_report

    print(f"\nResult ({time.time() - started:.0f} s in all; outputs in {root}):")
    for use in uses:
        summary = json.loads((root / use / "experiment.json").read_text())
        print(f"\n{'feedback on suggested images, --use upsample' if use == 'suggested' else '--use ' + use} "
              f"({timings[use]:.0f} s):\n")
        print(format_report(summary, per_class=True))


if __name__ == "__main__":
    main()
