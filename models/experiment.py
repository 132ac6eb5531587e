"""Baseline vs feedback ("meta") training, with controls, on one fixed test split: `toolkit experiment`.

The question: does feedback on the images people deselected (the decision
boundary images, `image_toolkit.data_tools.feedback.store`) help training?
The run, in the order of the work:

1. Read the label CSV; drop rows without a class and unreadable images.
2. Fix the test split (`--test-csv`, or a stratified split drawn with
   `split_seed`) and the validation split of the rest, with `split_seed`,
   independent of the training seeds. Neither is ever resampled.
3. Draw, for each training seed and ratio set, the lists of meta and its
   controls (`image_toolkit.data_tools.feedback.controls`: random for
   *which* images, steps for *how many* gradient steps), before any
   training, so a feedback CSV that names no training image fails at once.
4. For each seed: the baseline once (it does not depend on the ratio), then
   every other arm at every ratio of the sweep. All other options are
   identical. Every run is scored on the same test split, from its
   best_model.h5.
5. Append one row per run to ExperimentLog.csv (the columns of old logs;
   the run's ratios in `ratios`, `--use` in `options`) and per-class
   precision, recall and F1 plus macro-F1 to Results.csv as each run ends;
   draw experiment.png, and sweep.png for a sweep.
6. Report mean ± std of test macro-F1 per arm, each arm against baseline and
   meta against random (paired by seed, scipy's paired t 95 % interval),
   whatever they say, and the minimum detectable difference of the run; a
   NaN score or a single seed is reported as not decidable.

Everything goes to `output_dir`: lists/<experiment>/ (the exact CSVs trained
and scored on), runs/<experiment>/<variant>[_r<K>]_seed<N>/ (each training's
outputs), the two logs (appended to, one experiment id per run of the
command, so the folders of every logged run stay), experiment.png,
sweep.png and experiment.json (of the latest experiment).
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
from image_toolkit.data_tools.feedback.controls import RELABEL_WHY, VARIANTS, arm_lists, check_variants
from image_toolkit.data_tools.feedback.store import read_image_feedback
from image_toolkit.data_tools.formats.images import check_images
from image_toolkit.data_tools.formats.labels import LabelTable, read_label_csv, split_table, write_label_csv
from image_toolkit.data_tools.maps.plots import plot_class_f1, plot_sweep
from image_toolkit.data_tools.names import EXPERIMENT_SEEDS as DEFAULT_SEEDS
from image_toolkit.data_tools.progress import progress_bar
from image_toolkit.models.evaluation import MACRO, score_predictions
from image_toolkit.models.inference import predict_images
from image_toolkit.models.training import TrainOptions, train_classifier

logger = logging.getLogger(__name__)

LOG_COLUMNS = [
    "time", "experiment", "variant", "seed", "epochs", "best_epoch", "wall_time_s", "best_val_macro_f1",
    "test_macro_f1", "train_rows", "train_images", "val_images", "test_images", "ratios", "feedback", "options",
]
RESULT_COLUMNS = ["time", "experiment", "variant", "seed", "class", "precision", "recall", "f1", "support"]
# Options of TrainOptions that the experiment sets per run, so not part of "the options" of a run.
PER_RUN = ("output_dir", "seed", "train_csv", "val_csv", "resume")


@dataclasses.dataclass(frozen=True)
class ExperimentOptions:
    """What the experiment adds to the training options.

    `ratios` is one ratio set ({"deselected": 3.0}) or a list of them (a
    sweep, from `parse_ratio_sweep`); `variants` the arms (baseline and meta,
    and the controls random, steps); `use` how feedback enters training.
    """

    feedback: str
    ratios: dict[str, float] | list[dict[str, float]]
    seeds: int = DEFAULT_SEEDS
    seed_base: int = 0
    test_split: float = 0.2
    split_seed: int = 12345
    test_csv: str | None = None
    min_test_per_class: int = 3
    variants: tuple[str, ...] = VARIANTS
    use: str = "upsample"

    @property
    def ratio_sets(self) -> list[dict[str, float]]:
        return [self.ratios] if isinstance(self.ratios, dict) else list(self.ratios)

    def check(self, task: str = "multiclass") -> None:
        check_range("--seeds", self.seeds, low=1)
        check_range("--test-split", self.test_split, low=0, high=1, low_open=True, high_open=True)
        check_range("--min-test-per-class", self.min_test_per_class, low=1)
        check_variants(self.variants, self.use)
        if self.use == "relabel" and task != "multilabel":
            raise OptionError(RELABEL_WHY)
        if self.use == "relabel" and any(self.ratio_sets):
            raise OptionError("--ratio: --use relabel gives a deselected image one known 0, not a ratio; leave out --ratio.")
        if self.use != "relabel" and (not self.ratio_sets or not all(self.ratio_sets)):
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


def paired_difference(baseline: np.ndarray, meta: np.ndarray, seeds=None, *, names: tuple[str, str] = ("meta", "baseline")) -> dict:
    """Mean of meta - baseline over seeds, with scipy's paired t 95 % interval.

    `names` (first, second) name the two arms in the verdict: meta - random
    reads "meta better than random".

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
    first, second = names
    if low > 0:
        verdict = f"{first} better than {second} (the 95 % interval is above 0)"
    elif high < 0:
        verdict = f"{first} worse than {second} (the 95 % interval is below 0)"
    else:
        verdict = "no clear difference (the 95 % interval includes 0)"
    return {"mean": mean, "low": low, "high": high, "n": n, "decidable": True, "verdict": verdict}


def seeds_for_halfwidth(sd: float, halfwidth: float = 0.02, *, confidence: float = 0.95) -> int | None:
    """Seeds n whose paired t interval is at most ±`halfwidth`: n = (t(n-1) * sd / halfwidth)^2, iterated to a fixed point.

    Starts from the normal quantile and raises n until t_{n-1} * sd / sqrt(n)
    fits; None for a spread that is not a finite number.
    """
    from scipy import stats

    if sd is None or not np.isfinite(sd):
        return None
    if sd == 0:
        return 2
    n = max(2, int(np.ceil((stats.norm.ppf(0.5 + confidence / 2) * sd / halfwidth) ** 2)))
    while stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n) > halfwidth:
        n += 1
    return n


def minimum_detectable_difference(sd: float, n: int, *, power: float = 0.8, alpha: float = 0.05) -> float | None:
    """The smallest true mean difference a paired t test of n seeds finds with `power` (two-sided `alpha`).

    Exact for the t test: the noncentrality d * sqrt(n) / sd at which the
    noncentral t (scipy.stats.nct, n - 1 degrees of freedom) exceeds the
    critical t with probability `power`, solved with brentq. None below 2 seeds.
    """
    from scipy import optimize, stats

    if n < 2 or sd is None or not np.isfinite(sd):
        return None
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(ncp: float) -> float:
        # The lower tail is tiny (< 1e-8 here) and scipy returns NaN for some of its values: count it as 0 then.
        return stats.nct.sf(critical, df, ncp) + np.nan_to_num(stats.nct.cdf(-critical, df, ncp)) - power

    ncp = optimize.brentq(shortfall, 0.0, 100.0)
    return float(ncp * sd / np.sqrt(n))


def _ratio_text(ratios: dict[str, float]) -> str:
    return ",".join(f"{group}={value:g}" for group, value in ratios.items())


def _label(variant: str, ratios: str, sweep: bool) -> str:
    """How a run is named in the summary: its variant, and its ratios in a sweep (the baseline has none)."""
    if not sweep or variant == "baseline":
        return variant
    return f"{variant} {_ratio_text(json.loads(ratios))}"


def comparison_pairs(variants) -> list[tuple[str, str]]:
    """(first, second) of each reported difference: every arm against baseline, and meta against random."""
    pairs = [(variant, "baseline") for variant in variants if variant != "baseline"]
    return pairs + ([("meta", "random")] if "random" in variants else [])


def summarise(log: pd.DataFrame, results: pd.DataFrame, *, variants=("baseline", "meta"), ratio_sets=None) -> dict:
    """Mean ± std of test macro-F1 per run label, the paired differences per ratio set, the power, and per-class F1."""
    ratio_sets = ratio_sets or [{}]
    sweep = len(ratio_sets) > 1
    log = log.assign(label=[_label(v, r, sweep) for v, r in zip(log["variant"], log["ratios"])])
    labels = list(dict.fromkeys(log["label"]))
    by_seed = log.pivot_table(index="seed", columns="label", values="test_macro_f1", aggfunc="first").reindex(columns=labels)
    runs = {}
    for label in labels:
        rows = log[log["label"] == label]
        scores = rows["test_macro_f1"].astype(float)
        runs[label] = {
            "test_macro_f1_mean": float(scores.mean()),
            "test_macro_f1_std": float(scores.std(ddof=1)) if len(scores) > 1 else None,
            "best_val_macro_f1_mean": float(rows["best_val_macro_f1"].astype(float).mean()),
            "train_rows": int(rows["train_rows"].iloc[0]) if len(rows) else 0,
            "runs": len(rows),
        }
    comparisons = []
    for ratios in ratio_sets:
        ratio_json = json.dumps(ratios)
        for first, second in comparison_pairs(variants):
            a, b = (_label(v, ratio_json, sweep) for v in (first, second))
            if a not in by_seed or b not in by_seed:
                continue
            difference = paired_difference(by_seed[b].to_numpy(float), by_seed[a].to_numpy(float), by_seed.index, names=(first, second))
            differences = by_seed[a].to_numpy(float) - by_seed[b].to_numpy(float)
            sd = float(np.std(differences, ddof=1)) if len(differences) > 1 else None
            comparisons.append({"first": first, "second": second, "ratios": ratios, "sd": sd,
                                "mde": minimum_detectable_difference(sd, len(differences)),
                                "seeds_for_0.02": seeds_for_halfwidth(sd), **difference})
    per_class = (
        results.astype({"f1": float}).assign(variant=results["label"]).groupby(["class", "variant"], sort=False)["f1"]
        .agg(mean="mean", std=lambda values: values.std(ddof=1) if len(values) > 1 else 0.0).reset_index()
    )
    main = next((c for c in comparisons if (c["first"], c["second"]) == ("meta", "baseline")), None)
    return {
        "variants": runs,
        "by_seed": [{"seed": int(seed), **{label: float(row[label]) for label in labels}} for seed, row in by_seed.iterrows()],
        "comparisons": comparisons,
        "difference": main,
        "per_class": per_class.to_dict(orient="records"),
    }


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _comparison_line(comparison: dict, sweep: bool) -> str:
    at = f" at {_ratio_text(comparison['ratios'])}" if sweep and comparison.get("ratios") else ""
    interval = "" if comparison["low"] is None else f", 95 % interval [{comparison['low']:+.4f}, {comparison['high']:+.4f}]"
    return (f"Paired difference {comparison.get('first', 'meta')} − {comparison.get('second', 'baseline')}{at}: "
            f"{_signed(comparison['mean'])}{interval}: {comparison['verdict']}.")


def power_line(comparisons: list[dict]) -> str | None:
    """The minimum detectable difference of the run, from the spread of meta − random (else meta − baseline).

    In a sweep, the ratio whose spread is largest: the seeds it asks for are enough at every ratio.
    """
    chosen = [c for c in comparisons if (c.get("first"), c.get("second")) == ("meta", "random")] or \
             [c for c in comparisons if (c.get("first"), c.get("second")) == ("meta", "baseline")]
    chosen = [c for c in chosen if c.get("sd") is not None]
    if not chosen:
        return None
    c = max(chosen, key=lambda comparison: comparison["sd"])
    if c["mde"] is None:
        mde = "n/a"
    else:  # A macro-F1 difference lies in [-1, 1]: beyond it, no difference is detectable at all.
        mde = f"±{c['mde']:.4f}" if c["mde"] <= 1 else f"more than any (±{c['mde']:.2f}, past macro-F1's range of ±1)"
    at = f" at {_ratio_text(c['ratios'])}" if len(chosen) > 1 and c.get("ratios") else ""
    return (f"Power: seed-to-seed sd of {c['first']} − {c['second']}{at} {c['sd']:.4f}; with {c['n']} seeds the minimum detectable "
            f"difference (paired t, 80 % power, α 0.05, noncentral t) is {mde}; an interval of ±0.02 needs "
            f"{c['seeds_for_0.02']} seeds (--seeds).")


def format_report(summary: dict, *, per_class: bool = False) -> str:
    """The summary as Markdown tables (they read well on a terminal too)."""
    comparisons = summary.get("comparisons") or ([summary["difference"]] if summary.get("difference") else [])
    n = comparisons[0]["n"] if comparisons else len(summary["by_seed"])
    sweep = len({json.dumps(c.get("ratios")) for c in comparisons}) > 1
    lines = [
        f"| variant | test macro-F1, mean ± std over {n} seed{'s' if n != 1 else ''} | best val macro-F1 (mean) | training rows |",
        "|---|---|---|---|",
    ]
    for variant, stats in summary["variants"].items():
        std = "n/a" if stats["test_macro_f1_std"] is None else f"{stats['test_macro_f1_std']:.4f}"
        lines.append(f"| {variant} | {stats['test_macro_f1_mean']:.4f} ± {std} | {stats['best_val_macro_f1_mean']:.4f} | {stats['train_rows']} |")
    labels = list(summary["variants"])
    if summary["by_seed"]:
        pairs = [(c["first"], c["second"]) for c in comparisons if c.get("ratios") == comparisons[0].get("ratios")] if not sweep else []
        lines += ["", "| seed | " + " | ".join(labels + [f"{a} − {b}" for a, b in pairs]) + " |",
                  "|---" * (1 + len(labels) + len(pairs)) + "|"]
        for row in summary["by_seed"]:
            cells = [f"{row[label]:.4f}" for label in labels] + [f"{row[a] - row[b]:+.4f}" for a, b in pairs]
            lines.append(f"| {row['seed']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [_comparison_line(c, sweep) for c in comparisons]
    power = power_line(comparisons)
    if power:
        lines.append(power)
    if per_class:
        table = pd.DataFrame(summary["per_class"])
        lines += ["", "| class | " + " | ".join(f"{v} F1" for v in labels) + " |", "|---" * (1 + len(labels)) + "|"]
        for name in dict.fromkeys(table["class"]):
            cells = [table[(table["class"] == name) & (table["variant"] == v)] for v in labels]
            lines.append(f"| {name} | " + " | ".join(f"{c['mean'].iloc[0]:.3f} ± {c['std'].iloc[0]:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def sweep_frame(summary: dict) -> pd.DataFrame:
    """One row per comparison and swept ratio: comparison, ratio, mean, low, high (NaN where undecidable)."""
    comparisons = summary["comparisons"]
    sets = [c["ratios"] for c in comparisons]
    swept = [g for g in sets[0] if len({s[g] for s in sets}) > 1]
    return pd.DataFrame([{"comparison": f"{c['first']} − {c['second']}", "ratio": c["ratios"][swept[0]] if swept else np.nan,
                          "group": swept[0] if swept else "", "mean": c["mean"], "low": c["low"], "high": c["high"]}
                         for c in comparisons], dtype=object).astype({"ratio": float, "mean": float, "low": float, "high": float})


# --- The experiment -----------------------------------------------------------------------------


def run_experiment(training: TrainOptions, options: ExperimentOptions, *, verbose: int = 0, show: bool | None = None) -> dict:
    """Train and score every arm for every seed and ratio set; append the logs; return the summary.

    The baseline does not depend on the ratio, so it trains once per seed
    and every ratio set of a sweep is compared with that same run. `show`
    draws a bar of the finished runs on stderr, advanced between runs (None:
    when stderr is a terminal; False for --quiet).
    """
    training.check()
    options.check(training.task)
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
    ratio_sets = options.ratio_sets
    variants = [v for v in VARIANTS if v in options.variants]
    logger.info("Experiment %s: %d training, %d validation, %d test images; ratios %s; --use %s; variants %s",
                experiment, len(train), len(val), len(test), ratio_sets, options.use, ",".join(variants))
    # The use of the feedback is the same for every run, so it goes with the options (the log keeps its columns).
    shared = {**{key: value for key, value in dataclasses.asdict(training).items() if key not in PER_RUN}, "use": options.use}
    held_out = {str(val_csv): val.images, str(test_csv): test.images}
    # Every arm list is drawn before any training, so a feedback CSV that names no training image fails at once.
    plans = {(seed, index): arm_lists(train, feedback, ratios, use=options.use, variants=variants, seed=seed,
                                      held_out=held_out, source=str(base_csv), feedback_source=options.feedback)
             for seed in range(options.seed_base, options.seed_base + options.seeds) for index, ratios in enumerate(ratio_sets)}
    log_rows, result_rows = [], []
    per_seed = 1 + len(ratio_sets) * (len(variants) - 1)
    with progress_bar(per_seed * options.seeds, "Experiment runs", show=show) as advance:
        for seed in range(options.seed_base, options.seed_base + options.seeds):
            jobs = [("baseline", "baseline", base_csv, train, None, {})]
            for index, ratios in enumerate(ratio_sets):
                suffix = f"_r{index}" if len(ratio_sets) > 1 else ""
                for variant, arm in plans[(seed, index)].items():
                    path = base_csv if arm.table is train else lists / f"train_{variant}{suffix}_seed{seed}.csv"
                    if arm.table is not train:
                        write_label_csv(arm.table, path)
                    jobs.append((variant, variant + suffix, path, arm.table, arm.weights, ratios))
            for variant, name, train_csv, rows, weights, ratios in jobs:
                run_options = dataclasses.replace(
                    training, output_dir=str(output_dir / "runs" / experiment / f"{name}_seed{seed}"), seed=seed,
                    train_csv=str(train_csv), val_csv=str(val_csv),
                )
                logger.info("Training %s, seed %d, on %d rows", name, seed, len(rows))
                run_started = time.time()
                summary = train_classifier(run_options, verbose=verbose, image_weights=weights)
                scores = evaluate(summary["model"], test, image_dir, batch_size=training.batch_size)
                now = datetime.now(timezone.utc).isoformat(timespec="seconds")
                macro_f1 = float(scores.loc[scores["class"] == MACRO, "f1"].iloc[0])
                logger.info("%s seed %d: test macro-F1 %.4f", name, seed, macro_f1)
                run_log = {
                    "time": now, "experiment": experiment, "variant": variant, "seed": seed,
                    "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
                    "wall_time_s": round(time.time() - run_started, 2), "best_val_macro_f1": summary["best_val_macro_f1"],
                    "test_macro_f1": round(macro_f1, 6), "train_rows": len(rows), "train_images": len(set(rows.images)),
                    "val_images": len(val), "test_images": len(test), "ratios": json.dumps(ratios),
                    "feedback": options.feedback, "options": json.dumps(shared, default=str),
                }
                run_results = [{"time": now, "experiment": experiment, "variant": variant, "seed": seed, **row}
                               for row in scores.round(6).to_dict(orient="records")]
                # Logged run by run, so an interrupted experiment keeps the runs it finished.
                append_csv(output_dir / "ExperimentLog.csv", pd.DataFrame([run_log], columns=LOG_COLUMNS))
                append_csv(output_dir / "Results.csv", pd.DataFrame(run_results, columns=RESULT_COLUMNS))
                log_rows.append(run_log)
                result_rows.extend({**row, "ratios": run_log["ratios"],
                                    "label": _label(variant, run_log["ratios"], len(ratio_sets) > 1)} for row in run_results)
                advance(1)
    log = pd.DataFrame(log_rows, columns=LOG_COLUMNS)
    results = pd.DataFrame(result_rows)
    summary = {
        "experiment": experiment,
        "output_dir": str(output_dir),
        "task": training.task,
        "seeds": list(range(options.seed_base, options.seed_base + options.seeds)),
        "ratios": ratio_sets if len(ratio_sets) > 1 else ratio_sets[0],
        "use": options.use,
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        **summarise(log, results, variants=variants, ratio_sets=ratio_sets),
    }
    plot_class_f1(pd.DataFrame(summary["per_class"]), output_dir / "experiment.png",
                  title=f"Test F1 per class, mean ± std over {options.seeds} seed(s)")
    if len(ratio_sets) > 1:
        frame = sweep_frame(summary)
        plot_sweep(frame, output_dir / "sweep.png", group=frame["group"].iloc[0],
                   title=f"Δ test macro-F1 (--use {options.use}), mean and 95 % interval over {options.seeds} seed(s)")
        summary["sweep_plot"] = str(output_dir / "sweep.png")
    write_text(output_dir / "experiment.json", json.dumps(summary, indent=2, default=str))
    return summary
