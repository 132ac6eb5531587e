"""kill -9 during `feedback import`: the database opens, exports, and the same import again gives the one-shot result."""

import time
from pathlib import Path

import pandas as pd

from image_toolkit.cli.main import toolkit
from image_toolkit.data_tools.feedback import store
from tests.kill9 import kill_at, kill_trials, toolkit_command
from tests.test_feedback_import import label_csv, many_events, one_shot, stored

N_EVENTS = 5 * store.BATCH_EVENTS // 2  # three batches: a kill can fall between commits


def remove_database(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def test_a_killed_import_leaves_a_database_that_a_rerun_completes(tmp_path, runner, monkeypatch, kill_trial_count):
    labels = label_csv(tmp_path / "labels.csv")
    events = many_events(tmp_path / "events.jsonl", N_EVENTS)
    reference = one_shot(events, labels, tmp_path / "reference.sqlite", monkeypatch)
    expected_rows = stored(tmp_path / "reference.sqlite", "events.jsonl")
    expected_export = store.image_feedback(tmp_path / "reference.sqlite")
    db = tmp_path / "f.sqlite"
    command = toolkit_command("feedback", "import", str(events), "--db", str(db), "--data_csv", str(labels), "--quiet")
    started = time.monotonic()
    finished, code = kill_at(command, 600, cwd=tmp_path)  # once to the end: the window is this machine's run time
    assert finished and code == 0
    window = time.monotonic() - started

    def check(trial):
        if db.exists():
            connection = store.connect(db)  # opens: no lock left, no half-written page
            connection.close()
            export = runner.invoke(toolkit, ["feedback", "export", "--db", str(db), "-o", str(tmp_path / "x.csv")])
            assert export.exit_code == 0, export.output
            partial = pd.read_csv(tmp_path / "x.csv", keep_default_na=False)
            assert set(partial["image"]) <= set(expected_export["image"])
        again = store.import_events(events, db, data_csv=labels)
        assert again["added"] + again["already_stored"] == reference["added"] + reference["already_stored"]
        assert again["rejected"] == reference["rejected"] and again["events_in_db"] == reference["events_in_db"]
        assert stored(db, "events.jsonl") == expected_rows  # nothing twice, nothing missing
        assert store.image_feedback(db).equals(expected_export)

    trials = kill_trials(command, window_s=window, trials=kill_trial_count, cwd=tmp_path, check=check,
                         prepare=lambda: remove_database(db), seed=13)
    assert len(trials) == kill_trial_count
