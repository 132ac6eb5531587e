"""Feedback store at scale: `feedback import` of --n events and `feedback export` of every image they name.

Synthetic, offline: a multiclass label CSV of --n_images images and --n
events of 1-3 random images each (ids from their content hash, as most
files have). Times, in seconds (wall and CPU, since the machine may be shared):

- register: the first import's registration of the label CSV (read, classes, insert);
- import: the events, in batches of BATCH_EVENTS, into that store;
- again: the same file again (idempotent: every event already stored);
- export: the per-image CSV (one GROUP BY query streamed to the file);
- sqlite: the import's inserts alone, raw `executemany` of the same rows in the
  same batches into a fresh store: the floor the import's SQL work has;
- baseline (with --baseline FILE, a store.py of an earlier version): its import
  of the first --baseline_n events into a fresh store, scaled to --n (labelled so).

    python benchmarks/bench_feedback_import.py --n 1000000 [--n_images 1000000]
    git show 8d83855:data_tools/feedback/store.py > /tmp/store_v1.py
    python benchmarks/bench_feedback_import.py --n 200000 --baseline /tmp/store_v1.py --baseline_n 100000
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ["three", "eight", "nine"]


def write_data(folder: Path, n_events: int, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """The label CSV and the events file (.jsonl); returns their paths."""
    labels, events = folder / "labels.csv", folder / "events.jsonl"
    with labels.open("w") as handle:
        handle.write("image,label\n")
        handle.writelines(f"{i:07d}.png,{CLASSES[i % 3]}\n" for i in range(n_images))
    rng = random.Random(seed)
    with events.open("w") as handle:
        for i in range(n_events):
            images = [f"{rng.randrange(n_images):07d}.png" for _ in range(rng.randint(1, 3))]
            handle.write(json.dumps({"user": f"u{i % 97}", "session": f"s{i // 40}",
                                     "timestamp": f"2024-05-01T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}Z",
                                     "query_class": rng.choice(CLASSES), "action": rng.choice(["lasso", "select", "deselect"]),
                                     "images": images}) + "\n")
    return labels, events


@contextlib.contextmanager
def timed(results: dict, name: str):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    results[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def raw_sqlite(store, db: Path, labels: Path, events: Path) -> dict:
    """The import's inserts alone: the same rows, made beforehand, in the same batches, into a fresh store.

    As the import runs them: no per-row foreign-key checks, no cycle collection.
    """
    import gc

    from image_toolkit.data_tools.formats.labels import read_labels

    connection = store.connect(db, create=True)
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("PRAGMA foreign_keys = OFF")
    with store.transaction(connection):
        store.register_dataset(connection, read_labels(labels), labels)
    images = store.image_ids(connection)
    checked = [store.check_event(raw, images, set(CLASSES)) for _, raw in store.read_event_lines(events)]
    batches = []
    for start in range(0, len(checked), store.BATCH_EVENTS):
        batch = list(enumerate(sorted(checked[start:start + store.BATCH_EVENTS], key=lambda e: e["id"]), start=start + 1))
        batches.append((
            [(number, e["id"], e["content_hash"], e["user"], e["session"], e["timestamp"], e["query_class"], e["action"])
             for number, e in batch],
            [(number, position, images[image]) for number, e in batch for position, image in enumerate(e["images"])],
        ))
    del checked
    results: dict = {}
    gc.disable()
    with timed(results, "sqlite"):
        for event_rows, image_rows in batches:
            with store.transaction(connection):
                connection.executemany(
                    "INSERT INTO events (id, key, content_hash, user, session, timestamp, query_class, action, source, "
                    "imported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'events.jsonl', 'now')", event_rows)
                connection.executemany("INSERT INTO event_images (event, position, image) VALUES (?, ?, ?)", image_rows)
    gc.enable()
    connection.close()
    return results["sqlite"]


def baseline(path: Path, folder: Path, labels: Path, events: Path, n: int, n_events: int) -> dict:
    """An earlier store.py's import (registration included) of the first `n` events, and that scaled to `n_events`."""
    spec = importlib.util.spec_from_file_location("baseline_store", path)
    old = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(old)
    subset = folder / "baseline.jsonl"
    with events.open() as source, subset.open("w") as target:
        target.writelines(line for _, line in zip(range(n), source))
    results: dict = {}
    with timed(results, "register"):
        old.import_events(folder / "none.jsonl", folder / "baseline.sqlite", data_csv=labels)
    with timed(results, "import"):
        old.import_events(subset, folder / "baseline.sqlite")
    scale = n_events / n
    return {"events_timed": n, **results,
            "import_extrapolated_to_n": {key: round(value * scale, 1) for key, value in results["import"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="Events to import.")
    parser.add_argument("--n_images", "--n-images", type=int, default=None, help="Images in the label CSV (default: --n).")
    parser.add_argument("--baseline", type=Path, default=None, help="A store.py of an earlier version to compare with.")
    parser.add_argument("--baseline_n", "--baseline-n", type=int, default=100_000, help="Events the baseline imports.")
    parser.add_argument("--no_raw", "--no-raw", action="store_true", help="Skip the raw SQLite floor.")
    args = parser.parse_args()
    from image_toolkit.data_tools.feedback import store

    n_images = args.n_images or args.n
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        labels, events = write_data(folder, args.n, n_images)
        (folder / "none.jsonl").write_text("")
        db = folder / "feedback.sqlite"
        results: dict = {"events": args.n, "images": n_images}
        with timed(results, "register"):
            store.import_events(folder / "none.jsonl", db, data_csv=labels)
        with timed(results, "import"):
            summary = store.import_events(events, db)
        with timed(results, "again"):
            again = store.import_events(events, db)
        with timed(results, "export"):
            exported = store.export_image_feedback(db, folder / "image_feedback.csv")
        assert summary["added"] == args.n and again["already_stored"] == args.n, (summary["added"], again["already_stored"])
        results["exported_images"] = exported["images"]
        results["db_mib"] = round(db.stat().st_size / 2**20)
        if not args.no_raw:
            results["sqlite"] = raw_sqlite(store, folder / "raw.sqlite", labels, events)
            results["import_over_sqlite"] = round(results["import"]["wall_s"] / results["sqlite"]["wall_s"], 1)
        if args.baseline is not None:
            results["baseline"] = baseline(args.baseline, folder, labels, events, min(args.baseline_n, args.n), args.n)
            old = results["baseline"]["import_extrapolated_to_n"]["wall_s"]
            results["baseline_over_import"] = round(old / results["import"]["wall_s"], 1)
    print(json.dumps(results))
    print(f"{args.n:,} events of {n_images:,} images: import {results['import']['wall_s']} s "
          f"(CPU {results['import']['cpu_s']} s; registering the labels {results['register']['wall_s']} s), "
          f"again {results['again']['wall_s']} s, export of {results['exported_images']:,} images "
          f"{results['export']['wall_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
