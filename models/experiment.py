"""Baseline vs feedback ("meta") training on one fixed test split: `toolkit experiment`.

The question: does repeating the images people deselected (the decision
boundary images, `image_toolkit.data_tools.feedback.store`) in the training list help? The run,
in the order of the work:

1. Read the label CSV; drop rows without a class and unreadable images.
2. Fix the test split (`--test-csv`, or a stratified split drawn with
   `split_seed`) and the validation split of the rest, with `split_seed`,
   independent of the training seeds. Neither is ever resampled.
3. For each training seed: the baseline trains on the training list as it
   is; the meta model on the same list resampled by the ratios
   (`image_toolkit.data_tools.feedback.resample`, drawn with that seed). All other options are
   identical. Both are scored on the same test split, loading each run's
   best_model.h5.
4. Append one row per run to ExperimentLog.csv and per-class precision,
   recall and F1 plus macro-F1 to Results.csv as each run ends; draw
   experiment.png.
5. Report mean ± std of test macro-F1 per variant and the paired difference
   (meta - baseline, by seed) with scipy's paired t 95 % interval, whatever
   it says; a NaN score or a single seed is reported as not decidable.

Everything goes to `output_dir`: lists/<experiment>/ (the exact CSVs trained
and scored on), runs/<experiment>/<variant>_seed<N>/ (each training's
outputs), the two logs (appended to, one experiment id per run of the
command, so the folders of every logged run stay), experiment.png and
experiment.json (of the latest experiment).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import atomic_path, write_text
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.feedback.resample import resample_table
from image_toolkit.data_tools.feedback.store import read_image_feedback
from image_toolkit.data_tools.formats.images import check_images
from image_toolkit.data_tools.formats.labels import LabelTable, read_label_csv, split_table, write_label_csv
from image_toolkit.data_tools.maps.plots import plot_class_f1
from image_toolkit.data_tools.progress import progress_bar
from image_toolkit.models.evaluation import MACRO, score_predictions
from image_toolkit.models.inference import predict_images
from image_toolkit.models.training import TrainOptions, train_classifier

logger = logging.getLogger(__name__)

VARIANTS = ("baseline", "meta")
LOG_COLUMNS = [
    "time", "experiment", "variant", "seed", "epochs", "best_epoch", "wall_time_s", "best_val_macro_f1",
    "test_macro_f1", "train_rows", "train_images", "val_images", "test_images", "ratios", "feedback", "options",
]
RESULT_COLUMNS = ["time", "experiment", "variant", "seed", "class", "precision", "recall", "f1", "support"]
# Options of TrainOptions that the experiment sets per run, so not part of "the options" of a run.
PER_RUN = ("output_dir", "seed", "train_csv", "val_csv", "resume")


@dataclasses.dataclass(frozen=True)
class ExperimentOptions:
    """What the experiment adds to the training options."""

    feedback: str
    ratios: dict[str, float]
    seeds: int = 3
    seed_base: int = 0
    test_split: float = 0.2
    split_seed: int = 12345
    test_csv: str | None = None
    min_test_per_class: int = 3

    def check(self) -> None:
        check_range("--seeds", self.seeds, low=1)
        check_range("--test-split", self.test_split, low=0, high=1, low_open=True, high_open=True)
        check_range("--min-test-per-class", self.min_test_per_class, low=1)
        if not self.ratios:
            raise OptionError("--ratio: give at least one, e.g. --ratio deselected=3.")


# --- Lists --------------------------------------------------------------------------------------


def _usable(table: LabelTable, image_dir: Path, source: str) -> LabelTable:
    """The rows with a known class (multiclass) whose image decodes."""
    keep = np.ones(len(table), dtype=bool)
    if table.task == "multiclass":
        keep &= ~np.isnan(table.labels).any(axis=1)
    usable, skipped = check_images([image_dir / name for name in table.images])
    keep &= np.asarray(usable)
    if (~keep).any():
        logger.warning("%s: %d rows without a class or a readable image are left out", source, int((~keep).sum()))
    if not keep.any():
        raise DataError(f"{source}: no row has a class and a readable image in {image_dir}; check --img-directory.")
    return table.subset(np.flatnonzero(keep))


def check_test_split(test: LabelTable, minimum: int, source: str) -> None:
    """Refuse a test split that holds fewer than `minimum` images of some class (positives, for multilabel)."""
    positives = (test.labels == 1).sum(axis=0)
    for name, count in zip(test.label_names, positives):
        if count < minimum:
            raise DataError(
                f"{source}: the test split holds {count} image(s) of class '{name}'; scoring a class needs at least "
                f"{minimum} (--min-test-per-class). Raise --test-split or pass a larger --test-csv, or label more '{name}' images."
            )


def fixed_lists(training: TrainOptions, options: ExperimentOptions) -> tuple[LabelTable, LabelTable, LabelTable]:
    """The training, validation and test lists, fixed by `split_seed` (or `test_csv`) alone."""
    image_dir = Path(training.img_directory)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found; pass --img-directory with the folder of your images.")
    table = _usable(read_label_csv(training.data_csv, training.task), image_dir, training.data_csv)
    if options.test_csv is not None:
        test = read_label_csv(options.test_csv, training.task, label_names=table.label_names)
        test = _usable(test, image_dir, options.test_csv)
        leaked = sorted(set(test.images) & set(table.images))
        if leaked:
            raise DataError(
                f"{options.test_csv}: image '{leaked[0]}' is also in {training.data_csv}; the test list must be held out. "
                f"Remove it from {training.data_csv}."
            )
        pool, source = table, options.test_csv
    else:
        pool, test = split_table(table, options.test_split, options.split_seed)
        source = f"{training.data_csv} (--test-split {options.test_split})"
    check_test_split(test, options.min_test_per_class, source)
    train, val = split_table(pool, training.val_split, options.split_seed)
    return train, val, test


# --- Scores -------------------------------------------------------------------------------------


def evaluate(model_path: str | Path, test: LabelTable, image_dir: Path, *, batch_size: int = 32) -> pd.DataFrame:
    """Score a trained model on the test list (argmax for multiclass, 0.5 per label for multilabel)."""
    paths = [image_dir / name for name in test.images]
    predictions, skipped = predict_images(paths, model_path, batch_size=batch_size)
    if skipped:
        raise DataError(f"{skipped[0][0]}: {skipped[0][1]}; the test images must stay readable during the experiment.")
    predicted = np.array([[name in prediction.labels for name in test.label_names] for prediction in predictions], dtype=float)
    return score_predictions(test, predicted)


# --- Logs and summary ---------------------------------------------------------------------------


def read_log(path: Path, columns: list[str]) -> pd.DataFrame | None:
    """The rows of an existing CSV log, or None; a log with other columns is refused, not mixed."""
    if not path.is_file():
        return None
    existing = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(existing.columns) != columns:
        raise DataError(
            f"{path}: its columns ({', '.join(existing.columns)}) are not those of this experiment's log; "
            "move the file aside or pass another --output-dir."
        )
    return existing


def append_csv(path: Path, rows: pd.DataFrame) -> None:
    """Append rows to a CSV log, atomically."""
    existing = read_log(path, list(rows.columns))
    if existing is not None:
        rows = pd.concat([existing, rows.astype(str)], ignore_index=True)
    with atomic_path(path) as temporary:
        rows.to_csv(temporary, index=False)


def paired_difference(baseline: np.ndarray, meta: np.ndarray, seeds=None) -> dict:
    """Mean of meta - baseline over seeds, with scipy's paired t 95 % interval.

    Undecidable cases say so and why, in `verdict`, with `decidable` False and
    no interval: a seed whose score is missing or NaN (a run that failed, or a
    macro-F1 that could not be computed), or fewer than 2 seeds. They never
    read as "no clear difference".
    """
    from scipy import stats

    baseline, meta = np.asarray(baseline, dtype=float), np.asarray(meta, dtype=float)
    seeds = list(range(len(baseline))) if seeds is None else [int(seed) for seed in seeds]
    differences = meta - baseline
    n = len(differences)
    result = {"mean": None, "low": None, "high": None, "n": n, "decidable": False}
    unscored = [seed for seed, difference in zip(seeds, differences) if not np.isfinite(difference)]
    if unscored:
        listed = ", ".join(map(str, unscored))
        return {**result, "verdict": f"not decidable: no test macro-F1 (NaN or missing) for seed(s) {listed}; "
                                     "check those runs in ExperimentLog.csv and run the experiment again"}
    if n < 2:
        mean = float(differences.mean()) if n else None
        return {**result, "mean": mean, "verdict": f"not decidable: {n} seed, no interval; run with --seeds 3 or more"}
    interval = stats.ttest_rel(meta, baseline).confidence_interval(0.95)
    low, high = float(interval.low), float(interval.high)
    mean = float(differences.mean())
    if not (np.isfinite(low) and np.isfinite(high)):
        return {**result, "mean": mean, "verdict": "not decidable: the t interval is undefined for these scores"}
    if low > 0:
        verdict = "meta better than baseline (the 95 % interval is above 0)"
    elif high < 0:
        verdict = "meta worse than baseline (the 95 % interval is below 0)"
    else:
        verdict = "no clear difference (the 95 % interval includes 0)"
    return {"mean": mean, "low": low, "high": high, "n": n, "decidable": True, "verdict": verdict}


def summarise(log: pd.DataFrame, results: pd.DataFrame) -> dict:
    """Mean ± std of test macro-F1 per variant, the paired difference, and per-class F1 per variant."""
    by_seed = log.pivot(index="seed", columns="variant", values="test_macro_f1").reindex(columns=list(VARIANTS))
    variants = {}
    for variant in VARIANTS:
        runs = log[log["variant"] == variant]
        scores = runs["test_macro_f1"].astype(float)
        variants[variant] = {
            "test_macro_f1_mean": float(scores.mean()),
            "test_macro_f1_std": float(scores.std(ddof=1)) if len(scores) > 1 else None,
            "best_val_macro_f1_mean": float(runs["best_val_macro_f1"].astype(float).mean()),
            "train_rows": int(runs["train_rows"].iloc[0]) if len(runs) else 0,
            "runs": len(runs),
        }
    per_class = (
        results.astype({"f1": float}).groupby(["class", "variant"], sort=False)["f1"]
        .agg(mean="mean", std=lambda values: values.std(ddof=1) if len(values) > 1 else 0.0).reset_index()
    )
    return {
        "variants": variants,
        "by_seed": [{"seed": int(seed), **{v: float(row[v]) for v in VARIANTS}} for seed, row in by_seed.iterrows()],
        "difference": paired_difference(by_seed["baseline"].to_numpy(), by_seed["meta"].to_numpy(), by_seed.index),
        "per_class": per_class.to_dict(orient="records"),
    }


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def format_report(summary: dict, *, per_class: bool = False) -> str:
    """The summary as Markdown tables (they read well on a terminal too)."""
    n = summary["difference"]["n"]
    lines = [
        f"| variant | test macro-F1, mean ± std over {n} seed{'s' if n != 1 else ''} | best val macro-F1 (mean) | training rows |",
        "|---|---|---|---|",
    ]
    for variant, stats in summary["variants"].items():
        std = "n/a" if stats["test_macro_f1_std"] is None else f"{stats['test_macro_f1_std']:.4f}"
        lines.append(f"| {variant} | {stats['test_macro_f1_mean']:.4f} ± {std} | {stats['best_val_macro_f1_mean']:.4f} | {stats['train_rows']} |")
    lines += ["", "| seed | baseline | meta | meta − baseline |", "|---|---|---|---|"]
    for row in summary["by_seed"]:
        lines.append(f"| {row['seed']} | {row['baseline']:.4f} | {row['meta']:.4f} | {row['meta'] - row['baseline']:+.4f} |")
    difference = summary["difference"]
    interval = "" if difference["low"] is None else f", 95 % interval [{difference['low']:+.4f}, {difference['high']:+.4f}]"
    lines += ["", f"Paired difference meta − baseline: {_signed(difference['mean'])}{interval}: {difference['verdict']}."]
    if per_class:
        table = pd.DataFrame(summary["per_class"])
        lines += ["", "| class | baseline F1 | meta F1 |", "|---|---|---|"]
        for name in dict.fromkeys(table["class"]):
            cells = [table[(table["class"] == name) & (table["variant"] == v)] for v in VARIANTS]
            lines.append(f"| {name} | " + " | ".join(f"{c['mean'].iloc[0]:.3f} ± {c['std'].iloc[0]:.3f}" for c in cells) + " |")
    return "\n".join(lines)


# --- The experiment -----------------------------------------------------------------------------


def run_experiment(training: TrainOptions, options: ExperimentOptions, *, verbose: int = 0, show: bool | None = None) -> dict:
    """Train and score baseline and meta for every seed; append the logs; return the summary.

    `show` draws a bar of the finished runs (2 per seed) on stderr, advanced
    between runs (None: when stderr is a terminal; False for --quiet).
    """
    training.check()
    options.check()
    if training.train_csv is not None or training.resume:
        raise OptionError("the experiment makes its own training lists; leave out --train-csv, --val-csv and --resume.")
    started = datetime.now(timezone.utc)
    experiment = started.strftime("%Y%m%dT%H%M%SZ")
    output_dir = Path(training.output_dir)
    image_dir = Path(training.img_directory)
    read_log(output_dir / "ExperimentLog.csv", LOG_COLUMNS)
    read_log(output_dir / "Results.csv", RESULT_COLUMNS)
    feedback = read_image_feedback(options.feedback)
    train, val, test = fixed_lists(training, options)
    lists = output_dir / "lists" / experiment
    base_csv, val_csv, test_csv = lists / "train_baseline.csv", lists / "val.csv", lists / "test.csv"
    for table, path in ((train, base_csv), (val, val_csv), (test, test_csv)):
        write_label_csv(table, path)
    logger.info("Experiment %s: %d training, %d validation, %d test images; ratios %s",
                experiment, len(train), len(val), len(test), options.ratios)
    shared = {key: value for key, value in dataclasses.asdict(training).items() if key not in PER_RUN}
    log_rows, result_rows = [], []
    with progress_bar(2 * options.seeds, "Experiment runs", show=show) as advance:
        for seed in range(options.seed_base, options.seed_base + options.seeds):
            meta = resample_table(train, feedback, options.ratios, seed=seed,
                                  held_out={str(val_csv): val.images, str(test_csv): test.images}, source=str(base_csv))
            grouped = meta.counts[~meta.counts["group"].isin(["other", "total"])]
            if grouped["rows_before"].sum() == 0:
                raise DataError(
                    f"{options.feedback}: no training image is in a group of --ratio {options.ratios}, so the meta model "
                    "would train on the baseline list; check that the feedback CSV names the images of --data-csv."
                )
            meta_csv = lists / f"train_meta_seed{seed}.csv"
            write_label_csv(meta.table, meta_csv)
            logger.info("Seed %d, meta list:\n%s", seed, meta.counts.to_string(index=False))
            for variant, train_csv, rows in (("baseline", base_csv, train), ("meta", meta_csv, meta.table)):
                run_options = dataclasses.replace(
                    training, output_dir=str(output_dir / "runs" / experiment / f"{variant}_seed{seed}"), seed=seed,
                    train_csv=str(train_csv), val_csv=str(val_csv),
                )
                logger.info("Training %s, seed %d, on %d rows", variant, seed, len(rows))
                run_started = time.time()
                summary = train_classifier(run_options, verbose=verbose)
                scores = evaluate(summary["model"], test, image_dir, batch_size=training.batch_size)
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                macro_f1 = float(scores.loc[scores["class"] == MACRO, "f1"].iloc[0])
                logger.info("%s seed %d: test macro-F1 %.4f", variant, seed, macro_f1)
                run_log = {
                    "time": now, "experiment": experiment, "variant": variant, "seed": seed,
                    "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
                    "wall_time_s": round(time.time() - run_started, 2), "best_val_macro_f1": summary["best_val_macro_f1"],
                    "test_macro_f1": round(macro_f1, 6), "train_rows": len(rows), "train_images": len(set(rows.images)),
                    "val_images": len(val), "test_images": len(test), "ratios": json.dumps(options.ratios),
                    "feedback": options.feedback, "options": json.dumps(shared, default=str),
                }
                run_results = [{"time": now, "experiment": experiment, "variant": variant, "seed": seed, **row}
                               for row in scores.round(6).to_dict(orient="records")]
                # Logged run by run, so an interrupted experiment keeps the runs it finished.
                append_csv(output_dir / "ExperimentLog.csv", pd.DataFrame([run_log], columns=LOG_COLUMNS))
                append_csv(output_dir / "Results.csv", pd.DataFrame(run_results, columns=RESULT_COLUMNS))
                log_rows.append(run_log)
                result_rows.extend(run_results)
                advance(1)
    log = pd.DataFrame(log_rows, columns=LOG_COLUMNS)
    results = pd.DataFrame(result_rows, columns=RESULT_COLUMNS)
    summary = {
        "experiment": experiment,
        "output_dir": str(output_dir),
        "task": training.task,
        "seeds": list(range(options.seed_base, options.seed_base + options.seeds)),
        "ratios": options.ratios,
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        **summarise(log, results),
    }
    plot_class_f1(pd.DataFrame(summary["per_class"]), output_dir / "experiment.png",
                  title=f"Test F1 per class, mean ± std over {options.seeds} seed(s)")
    write_text(output_dir / "experiment.json", json.dumps(summary, indent=2, default=str))
    return summary
