"""`feedback import` of large files: batches that let other writers in, the same result as one transaction,
and one-line errors for binary files, read-only folders and a database without a data set."""

import contextlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.feedback import store
from image_toolkit.data_tools.formats.features import FeatureSet, write_features
from tests.conftest import one_line_error
from tests.kill9 import toolkit_command

CLASSES = ["three", "eight", "nine"]


def label_csv(path: Path, n_images: int = 300) -> Path:
    """A multiclass label CSV of `n_images` names (the store never opens the images)."""
    path.write_text("image,label\n" + "".join(f"{i:04d}.png,{CLASSES[i % 3]}\n" for i in range(n_images)))
    return path


def many_events(path: Path, n: int, *, n_images: int = 300, seed: int = 0) -> Path:
    """`n` events of one or two images, with a bad line, a repeated event and an id reused for other content."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        images = [f"{rng.randrange(n_images):04d}.png" for _ in range(rng.randint(1, 2))]
        lines.append({"user": f"u{i % 13}", "session": f"s{i // 40}", "timestamp": f"2024-05-01T12:{i % 60:02d}:{i % 59:02d}Z",
                      "query_class": rng.choice(CLASSES), "action": rng.choice(["lasso", "select", "deselect"]), "images": images})
    lines[7]["id"] = lines[n // 2]["id"] = "reused"  # the second is another event under a stored id
    lines[n // 3] = lines[11]  # the same event again
    text = [json.dumps(line) for line in lines]
    text[5] = '{"user": "ann", '  # malformed
    path.write_text("".join(line + "\n" for line in text))
    return path


def stored(db: Path, source: str) -> tuple[list, list]:
    """The events a file added, and their images: everything but when they were imported."""
    with sqlite3.connect(db) as connection:
        events = connection.execute(
            "SELECT key, content_hash, user, session, timestamp, query_class, action FROM events WHERE source = ? ORDER BY key",
            (source,)).fetchall()
        images = connection.execute(
            "SELECT events.key, position, images.name FROM event_images JOIN events ON events.id = event "
            "JOIN images ON images.id = event_images.image WHERE source = ? ORDER BY events.key, position", (source,)).fetchall()
    return events, images


def one_shot(events: Path, labels: Path, db: Path, monkeypatch) -> dict:
    """The import as one transaction (a batch larger than the file), as imports were before batches."""
    with monkeypatch.context() as patch:
        patch.setattr(store, "BATCH_EVENTS", 10**9)
        return store.import_events(events, db, data_csv=labels)


def test_a_writer_gets_in_between_the_batches_of_a_long_import(tmp_path, monkeypatch):
    labels = label_csv(tmp_path / "labels.csv")
    events = many_events(tmp_path / "events.jsonl", 50_000)
    db = tmp_path / "f.sqlite"
    (tmp_path / "none.jsonl").write_text("")
    store.import_events(tmp_path / "none.jsonl", db, data_csv=labels)  # the data set, registered
    importing, finished = threading.Event(), threading.Event()
    posted, failed = [], []

    def post_events():
        """A web page posting events with a short busy timeout, as the server does, until the import is done."""
        connection = store.connect(db, wait=2.0)
        try:
            for number in range(100_000):
                if finished.is_set():
                    return
                raw = {"id": f"web-{number}", "user": "web", "session": "w", "timestamp": "2024-05-02T09:00:00Z",
                       "query_class": "three", "action": "deselect", "images": ["0003.png"]}
                try:
                    with store.transaction(connection):
                        store.store_event(connection, store.check_event(raw, {"0003.png"}, {"three"}),
                                          source="web", imported_at="now")
                except sqlite3.OperationalError as error:  # the server answers 503 to this
                    failed.append(str(error))
                    return
                if importing.is_set():
                    posted.append(time.monotonic())
                time.sleep(0.01)
        finally:
            connection.close()

    poster = threading.Thread(target=post_events)
    poster.start()
    try:
        importing.set()
        started = time.monotonic()
        summary = store.import_events(events, db)
        ended = time.monotonic()
    finally:
        finished.set()
        poster.join()
    assert failed == []
    assert sum(started < moment < ended for moment in posted) >= 3  # posts went in while the import ran
    reference = one_shot(events, labels, tmp_path / "reference.sqlite", monkeypatch)
    assert stored(db, "events.jsonl") == stored(tmp_path / "reference.sqlite", "events.jsonl")
    assert (summary["added"], summary["already_stored"], summary["rejected"]) == (
        reference["added"], reference["already_stored"], reference["rejected"])


def test_batches_give_the_one_shot_result_with_repeats_across_batches(tmp_path, monkeypatch):
    labels = label_csv(tmp_path / "labels.csv")
    events = many_events(tmp_path / "events.jsonl", 200)
    reference = one_shot(events, labels, tmp_path / "reference.sqlite", monkeypatch)
    monkeypatch.setattr(store, "BATCH_EVENTS", 7)  # the repeated event and the reused id fall in other batches
    summary = store.import_events(events, tmp_path / "f.sqlite", data_csv=labels)
    assert {key: value for key, value in summary.items() if key != "db"} == {
        key: value for key, value in reference.items() if key != "db"}
    assert summary["already_stored"] == 1 and [r["line"] for r in summary["rejected"]] == [6, 101]
    assert "'reused' is already stored with other content" in summary["rejected"][1]["reason"]
    assert stored(tmp_path / "f.sqlite", "events.jsonl") == stored(tmp_path / "reference.sqlite", "events.jsonl")
    assert store.image_feedback(tmp_path / "f.sqlite").equals(store.image_feedback(tmp_path / "reference.sqlite"))


def indexes(db: Path) -> set[str]:
    with sqlite3.connect(db) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_the_queried_columns_are_indexed_in_new_and_older_databases(tmp_path):
    labels = label_csv(tmp_path / "labels.csv")
    events = many_events(tmp_path / "events.jsonl", 20)
    db = tmp_path / "f.sqlite"
    store.import_events(events, db, data_csv=labels)
    assert "events_by_query_class" in indexes(db)
    with sqlite3.connect(db) as connection:  # a file written before the index
        connection.execute("DROP INDEX events_by_query_class")
        plan = connection.execute("EXPLAIN QUERY PLAN SELECT key FROM events WHERE query_class = 'three'").fetchall()
    assert "USING INDEX" not in str(plan)
    store.import_events(events, db)
    assert "events_by_query_class" in indexes(db)


def test_a_new_database_appears_only_once_its_schema_is_written(tmp_path, monkeypatch):
    """While the schema is written nothing is at --db yet, so a kill -9 then cannot leave a file without its schema."""
    db = tmp_path / "f.sqlite"
    present_while_writing = []
    real = store.transaction

    @contextlib.contextmanager
    def spying(connection):
        present_while_writing.append(db.exists())
        with real(connection) as inside:
            yield inside

    monkeypatch.setattr(store, "transaction", spying)
    store.connect(db, create=True).close()
    assert present_while_writing[0] is False
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert not [path.name for path in tmp_path.iterdir() if ".partial" in path.name]  # the temporary file is gone


# --- One line, exit 1, nothing left behind ------------------------------------------------------------


@pytest.mark.parametrize("content, reason", [
    (bytes(range(255, 0, -1)) * 4, "line 1 is not UTF-8 text"),
    (b'{"user": "ann"}\n\x00\x01\x02\n', "line 2 holds a NUL byte"),
    (b'{"user": "ann"}\n' * 3 + b"caf\xe9\n", "line 4 is not UTF-8 text"),
], ids=["binary", "nul-bytes", "latin-1-line"])
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_binary_events_file_is_one_line_and_imports_nothing(runner, tmp_path, content, reason, suffix):
    labels = label_csv(tmp_path / "labels.csv")
    events = tmp_path / f"events{suffix}"
    events.write_bytes(b"user,session,timestamp,query_class,action,images\n" + content if suffix == ".csv" else content)
    if suffix == ".csv":
        reason = reason.replace(reason.split()[1], str(int(reason.split()[1]) + 1))  # the header is line 1
    result = runner.invoke(toolkit, ["feedback", "import", str(events), "--db", str(tmp_path / "f.sqlite"), "--data_csv", str(labels)])
    assert result.exit_code == 1
    message = one_line_error(result)
    assert str(events) in message and reason in message and "UTF-8 JSON lines or CSV" in message
    assert not (tmp_path / "f.sqlite").exists()


def test_a_binary_label_csv_is_one_line_and_creates_no_database(runner, tmp_path):
    events = many_events(tmp_path / "events.jsonl", 20)
    labels = tmp_path / "labels.csv"
    labels.write_bytes(bytes(range(255, 0, -1)) * 4)
    result = runner.invoke(toolkit, ["feedback", "import", str(events), "--db", str(tmp_path / "f.sqlite"), "--data_csv", str(labels)])
    assert result.exit_code == 1
    assert "labels.csv" in one_line_error(result) and "UTF-8" in one_line_error(result)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["events.jsonl", "labels.csv"]


def test_an_empty_database_file_without_a_data_set_is_left_as_it_was(runner, tmp_path):
    events = many_events(tmp_path / "events.jsonl", 20)
    db = tmp_path / "f.sqlite"
    db.touch()  # e.g. left by a tool that was stopped
    result = runner.invoke(toolkit, ["feedback", "import", str(events), "--db", str(db)])
    assert result.exit_code == 1
    assert "--data-csv" in one_line_error(result) and str(db) in one_line_error(result)
    assert db.stat().st_size == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["events.jsonl", "f.sqlite"]


def without_write_permission(args: list[str], cwd: Path) -> SimpleNamespace:
    """Run toolkit where folder modes bind: as root, without the capabilities that let root write anywhere."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: a read-only folder cannot be made")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    done = subprocess.run([*prefix, *toolkit_command(*args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return SimpleNamespace(exit_code=done.returncode, stderr=done.stderr, output=done.stdout + done.stderr)


@pytest.fixture
def read_only_setup(tmp_path):
    """A label CSV, events, a database and its export, features, a validation list; and a read-only folder."""
    labels = label_csv(tmp_path / "labels.csv", n_images=30)
    events = many_events(tmp_path / "events.jsonl", 20, n_images=30)
    store.import_events(events, tmp_path / "f.sqlite", data_csv=labels)
    store.export_image_feedback(tmp_path / "f.sqlite", tmp_path / "fb.csv")
    names = [f"{i:04d}.png" for i in range(30)]
    write_features(tmp_path / "features.npz", FeatureSet(names, np.random.default_rng(0).random((30, 8), dtype=np.float32), {"model": "random"}))
    (tmp_path / "val.csv").write_text("image,label\n0100.png,three\n0101.png,eight\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(tmp_path / "f.sqlite", locked / "old.sqlite")
    locked.chmod(0o555)
    yield tmp_path
    locked.chmod(0o755)


@pytest.mark.parametrize("args", [
    ["feedback", "import", "events.jsonl", "--db", "locked/f.sqlite", "--data_csv", "labels.csv"],
    ["feedback", "import", "events.jsonl", "--db", "locked/old.sqlite"],
    ["feedback", "export", "--db", "f.sqlite", "-o", "locked/fb.csv"],
    ["feedback", "simulate", "--data_csv", "labels.csv", "--features", "features.npz", "--method", "pca", "-o", "locked/e.jsonl"],
    ["resample", "labels.csv", "fb.csv", "--ratio", "deselected=2", "--val_csv", "val.csv", "-o", "locked/train.csv"],
], ids=["import-new-db", "import-old-db", "export", "simulate", "resample"])
def test_an_output_in_a_read_only_folder_is_one_line(read_only_setup, args):
    before = sorted(path.name for path in (read_only_setup / "locked").iterdir())
    result = without_write_permission(args, read_only_setup)
    assert result.exit_code == 1, result.output
    message = one_line_error(result)
    assert "locked" in message and ("writable" in message or "cannot write" in message)
    assert sorted(path.name for path in (read_only_setup / "locked").iterdir()) == before


# --- Schema 2, and stores of schema 1 -----------------------------------------------------------------

# The tables and indexes of a schema-1 store, as toolkit versions before schema 2 wrote them.
SCHEMA_1 = """
CREATE TABLE dataset (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (image TEXT PRIMARY KEY, class TEXT NOT NULL);
CREATE TABLE events (id TEXT PRIMARY KEY, content_hash TEXT NOT NULL, user TEXT NOT NULL, session TEXT NOT NULL,
    timestamp TEXT NOT NULL, query_class TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('lasso', 'select', 'deselect')), source TEXT NOT NULL, imported_at TEXT NOT NULL);
CREATE TABLE event_images (event_id TEXT NOT NULL REFERENCES events (id), position INTEGER NOT NULL, image TEXT NOT NULL,
    PRIMARY KEY (event_id, position));
CREATE INDEX event_images_by_image ON event_images (image);
CREATE INDEX events_by_query_class ON events (query_class);
PRAGMA user_version = 1;
"""


def schema_1_store(db: Path, labels: Path, events: Path) -> int:
    """A store as schema-1 toolkits wrote it, of the good events of `events`; the number of events stored."""
    known = {f"{i:04d}.png" for i in range(300)}
    checked = {}
    for _, raw in store.read_event_lines(events):
        with contextlib.suppress(ValueError):
            event = store.check_event(raw, known, set(CLASSES))
            checked.setdefault(event["id"], event)
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.executescript(SCHEMA_1)
        connection.executemany("INSERT INTO images VALUES (?, ?)",
                               [line.split(",") for line in labels.read_text().splitlines()[1:]])
        connection.executemany("INSERT INTO dataset VALUES (?, ?)",
                               [("task", "multiclass"), ("label_names", json.dumps(sorted(CLASSES))), ("data_csv", str(labels))])
        connection.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, 'events.jsonl', '2024-06-01T00:00:00+00:00')",
                               [(e["id"], e["content_hash"], e["user"], e["session"], e["timestamp"], e["query_class"],
                                 e["action"]) for e in checked.values()])
        connection.executemany("INSERT INTO event_images VALUES (?, ?, ?)",
                               [(e["id"], p, image) for e in checked.values() for p, image in enumerate(e["images"])])
        connection.commit()
    return len(checked)


def test_a_schema_1_store_is_migrated_once_on_open_with_the_same_export(tmp_path):
    labels = label_csv(tmp_path / "labels.csv")
    events = many_events(tmp_path / "events.jsonl", 500)
    old = tmp_path / "old.sqlite"
    n_events = schema_1_store(old, labels, events)
    store.import_events(events, tmp_path / "new.sqlite", data_csv=labels)
    expected = store.image_feedback(tmp_path / "new.sqlite")
    assert store.image_feedback(old).equals(expected)  # the first open migrates it
    with contextlib.closing(sqlite3.connect(old)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 2
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = [row[1] for row in connection.execute("PRAGMA table_info(event_images)")]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    assert tables == {"dataset", "images", "events", "event_images"} and columns == ["event", "position", "image"]
    assert stored(old, "events.jsonl") == stored(tmp_path / "new.sqlite", "events.jsonl")  # same ids and hashes
    again = store.import_events(events, old)  # so the events it held are known by their ids
    assert again["added"] == 0 and again["already_stored"] == n_events + 1  # the file repeats one event
    assert store.image_feedback(old).equals(expected)


def test_a_migration_that_fails_half_way_leaves_the_schema_1_store_as_it_was(tmp_path, monkeypatch):
    labels = label_csv(tmp_path / "labels.csv")
    old = tmp_path / "old.sqlite"
    schema_1_store(old, labels, many_events(tmp_path / "events.jsonl", 100))
    with contextlib.closing(sqlite3.connect(old)) as connection:
        before = list(connection.iterdump())
    broken = (*store._MIGRATION_1_TO_2[:-2], "SELECT no_such_function()")  # as if killed after copying the rows
    monkeypatch.setattr(store, "_MIGRATION_1_TO_2", broken)
    with pytest.raises(store.DataError, match="cannot open the feedback database"):
        store.connect(old)
    with contextlib.closing(sqlite3.connect(old)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
        assert list(connection.iterdump()) == before


@pytest.mark.parametrize("text", ["ann", 'say "hi"\\', "café ☕ 日本", "tab\tnew\nline\x01", "</script>"])
def test_the_content_hash_is_of_the_same_text_as_before(text):
    """Ids of events stored by earlier versions (a hash of json.dumps with sorted keys) must not change."""
    event = {"user": text, "session": text, "timestamp": "2024-05-01T12:30:00+00:00", "query_class": text,
             "action": "lasso", "images": [text, "b.png"]}
    assert store.canonical_json(event) == json.dumps(event, sort_keys=True, separators=(",", ":"))


def test_the_export_streams_one_row_per_image_with_classes_by_frequency(tmp_path, runner):
    labels = label_csv(tmp_path / "labels.csv")
    lines = [{"user": user, "session": "s", "timestamp": f"2024-05-01T12:0{n}:00Z", "query_class": query_class,
              "action": action, "images": images}
             for n, (user, query_class, action, images) in enumerate([
                 ("ann", "nine", "lasso", ["0002.png", "0001.png"]), ("bob", "eight", "deselect", ["0001.png"]),
                 ("bob", "eight", "select", ["0001.png"]), ("ann", "three", "lasso", ["0002.png"]),
             ])]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    db = tmp_path / "f.sqlite"
    store.import_events(events, db, data_csv=labels)
    result = runner.invoke(toolkit, ["feedback", "export", "--db", str(db), "-o", str(tmp_path / "fb.csv"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"output": str(tmp_path / "fb.csv"), "images": 2, "deselected_images": 1,
                                         "lassoed_images": 2, "selected_images": 1}
    assert (tmp_path / "fb.csv").read_text() == (
        "image,class,query_class,lasso_count,deselect_count,select_count,users\n"
        "0001.png,eight,eight;nine,1,1,1,2\n"  # eight twice, nine once; ann and bob
        "0002.png,nine,nine;three,2,0,0,1\n"  # a tie: by name
    )
    assert store.image_feedback(db).to_csv(index=False) == (tmp_path / "fb.csv").read_text()
