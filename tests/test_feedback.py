"""The feedback store and simulated users, on real digits: import, export, and every bad input."""

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.feedback.store import SCHEMA_VERSION, image_feedback
from image_toolkit.data_tools.formats.features import FeatureSet, write_features
from tests.conftest import one_line_error

REPO = Path(__file__).resolve().parents[1]


def pixel_features(root: Path, images: list[str], path: Path) -> Path:
    """A feature file of the images' grey pixels: real features that need no network."""
    rows = [np.asarray(Image.open(root / "images" / name).convert("L"), dtype=np.float32).ravel() / 255 for name in images]
    write_features(path, FeatureSet(list(images), np.stack(rows), {"model": "pixels"}))
    return path


def class_csv(table: pd.DataFrame, path: Path) -> Path:
    """The digits as a multiclass label CSV (image, label)."""
    pd.DataFrame({"image": table["image"], "label": table["digit_name"]}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def digits(digits_set, tmp_path_factory):
    """200 of the session's digits: a multiclass label CSV and pixel features."""
    root, table = digits_set
    work = tmp_path_factory.mktemp("feedback")
    table = table.iloc[:200]
    return {
        "root": root,
        "table": table,
        "labels": class_csv(table, work / "classes.csv"),
        "features": pixel_features(root, list(table["image"]), work / "features.npz"),
    }


@pytest.fixture(scope="module")
def simulated(digits, tmp_path_factory):
    """Events of 10 simulated users on the PCA map of the digits."""
    from click.testing import CliRunner

    events = tmp_path_factory.mktemp("events") / "events.jsonl"
    args = ["feedback", "simulate", "--data_csv", str(digits["labels"]), "--features", str(digits["features"]),
            "-o", str(events), "--users", "10", "--method", "pca", "--seed", "3", "--json"]
    result = CliRunner().invoke(toolkit, args)
    assert result.exit_code == 0, result.output
    return events, json.loads(result.stdout)


def write_events(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def event(images, action="deselect", query_class="three", **extra):
    return {"user": "ann", "session": "s1", "timestamp": "2024-05-01T12:30:00Z", "query_class": query_class,
            "action": action, "images": images, **extra}


def import_args(events, db, labels=None, *extra):
    return ["feedback", "import", str(events), "--db", str(db), *(["--data_csv", str(labels)] if labels else []), *extra]


def test_simulated_users_deselect_other_classes_inside_their_lasso(simulated, digits):
    events_path, summary = simulated
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    assert summary["users"] == 10 and summary["events"] == len(events)
    assert {e["action"] for e in events} <= {"lasso", "select", "deselect"} and "deselect" in {e["action"] for e in events}
    classes = dict(zip(digits["table"]["image"], digits["table"]["digit_name"]))
    lassoed = {(e["user"], image) for e in events if e["action"] == "lasso" for image in e["images"]}
    deselects = [(e["user"], e["query_class"], image) for e in events if e["action"] == "deselect" for image in e["images"]]
    assert all((user, image) in lassoed for user, _, image in deselects)  # only what the user had lassoed
    wrong_class = np.mean([classes[image] != query for _, query, image in deselects])
    assert wrong_class >= 0.8  # noise 0.05: nearly every deselect is an image of another class
    assert summary["deselects_of_another_class"] == pytest.approx(wrong_class, abs=0.05)


def test_simulation_is_deterministic_with_its_seed(simulated, digits, runner, tmp_path):
    events_path, _ = simulated
    again = tmp_path / "again.jsonl"
    args = ["feedback", "simulate", "--data_csv", str(digits["labels"]), "--features", str(digits["features"]),
            "-o", str(again), "--users", "10", "--method", "pca", "--seed", "3"]
    assert runner.invoke(toolkit, args).exit_code == 0
    assert again.read_text() == events_path.read_text()


def test_import_export_round_trip_is_idempotent(simulated, digits, runner, tmp_path):
    events_path, summary = simulated
    db = tmp_path / "feedback.sqlite"
    first = runner.invoke(toolkit, import_args(events_path, db, digits["labels"], "--json"))
    assert first.exit_code == 0, first.output
    record = json.loads(first.stdout)
    assert record["added"] == summary["events"] and record["rejected"] == []
    second = runner.invoke(toolkit, import_args(events_path, db, None, "--json"))
    assert json.loads(second.stdout)["added"] == 0 and json.loads(second.stdout)["already_stored"] == summary["events"]

    output = tmp_path / "image_feedback.csv"
    result = runner.invoke(toolkit, ["feedback", "export", "--db", str(db), "-o", str(output)])
    assert result.exit_code == 0, result.output
    exported = pd.read_csv(output, keep_default_na=False)
    assert list(exported.columns) == ["image", "class", "query_class", "lasso_count", "deselect_count", "select_count", "users"]
    assert exported["image"].is_unique
    # Every count agrees with the events file, and every class with the label CSV.
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    for action in ("lasso", "deselect", "select"):
        expected = pd.Series([i for e in events if e["action"] == action for i in e["images"]]).value_counts()
        got = exported.set_index("image")[f"{action}_count"]
        assert (got[got > 0].sort_index() == expected.sort_index()).all()
    classes = dict(zip(digits["table"]["image"], digits["table"]["digit_name"]))
    assert all(classes[image] == name for image, name in zip(exported["image"], exported["class"]))
    assert set(";".join(exported["query_class"]).split(";")) <= set(classes.values())


def test_store_is_wal_with_a_schema_version(digits, runner, tmp_path):
    db = tmp_path / "feedback.sqlite"
    events = write_events(tmp_path / "events.jsonl", [event(["0003.png"])])
    assert runner.invoke(toolkit, import_args(events, db, digits["labels"])).exit_code == 0
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_bad_events_are_rejected_with_line_numbers_and_good_ones_kept(digits, runner, tmp_path):
    images = list(digits["table"]["image"])
    events = write_events(tmp_path / "events.jsonl", [
        event(images[:2]),
        '{"user": "ann", "session": "s1", "timestamp": ',  # line 2: malformed JSON
        event(images[2:4], action="lassoo"),  # line 3: unknown action
        event(["9999.png"]),  # line 4: not in the data set
        event(images[4:5], timestamp="yesterday"),  # line 5: malformed timestamp
        "",
        event(images[5:7], action="lasso"),  # line 7: good
        event(images[7:8], query_class="kitchen"),  # line 8: unknown class
    ])
    result = runner.invoke(toolkit, import_args(events, tmp_path / "f.sqlite", digits["labels"], "--json"))
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["added"] == 2
    reasons = {item["line"]: item["reason"] for item in record["rejected"]}
    assert sorted(reasons) == [2, 3, 4, 5, 8]
    assert reasons[2].startswith("malformed JSON")
    assert "unknown action 'lassoo'" in reasons[3] and "lasso, select, deselect" in reasons[3]
    assert "image '9999.png' not in the data set" in reasons[4] and "classes.csv" in reasons[4]
    assert "malformed timestamp 'yesterday'" in reasons[5] and "ISO 8601" in reasons[5]
    assert "unknown query_class 'kitchen'" in reasons[8]


def test_csv_events_are_read_with_their_line_numbers(digits, runner, tmp_path):
    images = list(digits["table"]["image"])
    events = tmp_path / "events.csv"
    events.write_text(
        "user,session,timestamp,query_class,action,images\n"
        f"ann,s1,2024-05-01T12:30:00+02:00,three,lasso,{images[0]};{images[1]}\n"
        f"bob,s2,2024-05-01T12:31:00Z,three,erase,{images[2]}\n"
    )
    result = runner.invoke(toolkit, import_args(events, tmp_path / "f.sqlite", digits["labels"], "--json"))
    record = json.loads(result.stdout)
    assert record["added"] == 1 and [r["line"] for r in record["rejected"]] == [3]


def test_an_id_reused_for_other_content_is_rejected(digits, runner, tmp_path):
    db = tmp_path / "f.sqlite"
    first = write_events(tmp_path / "a.jsonl", [event(["0001.png"], id="e1")])
    other = write_events(tmp_path / "b.jsonl", [event(["0002.png"], id="e1")])
    assert runner.invoke(toolkit, import_args(first, db, digits["labels"])).exit_code == 0
    record = json.loads(runner.invoke(toolkit, import_args(other, db, None, "--json")).stdout)
    assert record["added"] == 0 and "already stored with other content" in record["rejected"][0]["reason"]
    assert set(image_feedback(db)["image"]) == {"0001.png"}


def test_first_import_needs_the_data_set_and_leaves_no_database(runner, tmp_path):
    events = write_events(tmp_path / "events.jsonl", [event(["0001.png"])])
    result = runner.invoke(toolkit, import_args(events, tmp_path / "new" / "f.sqlite"))
    assert result.exit_code == 1
    assert "--data-csv" in one_line_error(result)
    assert not (tmp_path / "new").exists()


def test_a_database_path_through_a_file_is_one_line(digits, runner, tmp_path):
    events = write_events(tmp_path / "events.jsonl", [event(["0001.png"])])
    result = runner.invoke(toolkit, import_args(events, events / "f.sqlite", digits["labels"]))
    assert result.exit_code == 1
    assert "events.jsonl: is a file, not a folder" in one_line_error(result)


def test_locked_database_waits_then_fails_clearly(digits, runner, tmp_path):
    db = tmp_path / "f.sqlite"
    events = write_events(tmp_path / "events.jsonl", [event(["0001.png"])])
    assert runner.invoke(toolkit, import_args(events, db, digits["labels"])).exit_code == 0
    other_writer = sqlite3.connect(db, isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    try:
        more = write_events(tmp_path / "more.jsonl", [event(["0002.png"])])
        started = time.monotonic()
        result = runner.invoke(toolkit, import_args(more, db, None, "--wait", "0.5"))
        waited = time.monotonic() - started
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()
    assert result.exit_code == 1
    message = one_line_error(result)
    assert "locked by another writer (waited 0.5 s)" in message and str(db) in message
    assert waited >= 0.45
    # Once the other writer is done, the same import goes through.
    assert runner.invoke(toolkit, import_args(more, db)).exit_code == 0


def test_database_of_a_newer_schema_is_refused(digits, runner, tmp_path):
    db = tmp_path / "f.sqlite"
    events = write_events(tmp_path / "events.jsonl", [event(["0001.png"])])
    assert runner.invoke(toolkit, import_args(events, db, digits["labels"])).exit_code == 0
    with sqlite3.connect(db) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for args in (["feedback", "export", "--db", str(db), "-o", str(tmp_path / "x.csv")], import_args(events, db)):
        result = runner.invoke(toolkit, args)
        assert result.exit_code == 1
        assert f"schema version {SCHEMA_VERSION + 1} is newer than this toolkit's {SCHEMA_VERSION}" in one_line_error(result)
    assert not (tmp_path / "x.csv").exists()


def test_foreign_files_are_not_databases(runner, tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, just some text long enough to have a header" * 10)
    result = runner.invoke(toolkit, ["feedback", "export", "--db", str(text)])
    assert result.exit_code == 1 and "not an SQLite database" in one_line_error(result)
    missing = runner.invoke(toolkit, ["feedback", "export", "--db", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 1 and "toolkit feedback import" in one_line_error(missing)


def test_feedback_commands_load_no_tensorflow(simulated, digits, tmp_path):
    events_path, _ = simulated
    code = (
        "import sys, time; started = time.monotonic(); from click.testing import CliRunner; from image_toolkit.cli.main import toolkit; "
        f"r = CliRunner().invoke(toolkit, ['feedback', 'import', {str(events_path)!r}, '--db', {str(tmp_path / 'f.sqlite')!r}, "
        f"'--data_csv', {str(digits['labels'])!r}]); "
        f"r2 = CliRunner().invoke(toolkit, ['feedback', 'export', '--db', {str(tmp_path / 'f.sqlite')!r}, '-o', {str(tmp_path / 'x.csv')!r}]); "
        "print(r.exit_code, r2.exit_code, 'tensorflow' in sys.modules, round(time.monotonic() - started, 2))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    codes_and_tf = done.stdout.split()[:3]
    assert codes_and_tf == ["0", "0", "False"], done.stdout + done.stderr
    assert float(done.stdout.split()[3]) < 3.0  # import and export, start to finish, Python start-up aside


def test_a_transaction_commits_all_or_rolls_back_all(tmp_path):
    from image_toolkit.data_tools.feedback.store import connect, transaction

    connection = connect(tmp_path / "f.sqlite", create=True)
    try:
        with transaction(connection):
            connection.execute("INSERT INTO dataset (key, value) VALUES ('kept', '1')")
        with pytest.raises(RuntimeError), transaction(connection):
            connection.execute("INSERT INTO dataset (key, value) VALUES ('lost', '2')")
            raise RuntimeError("an error half way")
        assert not connection.in_transaction
        assert dict(connection.execute("SELECT key, value FROM dataset")) == {"kept": "1"}
    finally:
        connection.close()


def test_import_builds_the_set_of_known_images_once(digits, tmp_path, monkeypatch):
    """Every event is checked against one set of the data set's images, not one rebuilt per event (O(events x images))."""
    from image_toolkit.data_tools.feedback import store

    seen = []

    def recording_check(raw, known_images, classes):
        seen.append((known_images, classes))  # The objects themselves, so a freed set's id cannot be reused.
        return check(raw, known_images, classes)

    check = store.check_event
    monkeypatch.setattr(store, "check_event", recording_check)
    images = list(digits["table"]["image"])
    events = write_events(tmp_path / "events.jsonl", [event(images[i : i + 2], session=f"s{i}") for i in range(5)])
    assert store.import_events(events, tmp_path / "f.sqlite", data_csv=digits["labels"])["added"] == 5
    assert len(seen) == 5 and all(known is seen[0][0] and classes is seen[0][1] for known, classes in seen)
    assert len(seen[0][0]) == 200
