"""The feedback store: lasso / select / deselect events of people labelling images, in SQLite.

An event is what a web page sends when someone works on one class:

    {"user": "ann", "session": "s1", "timestamp": "2024-05-01T12:30:00Z",
     "query_class": "kitchen", "action": "deselect", "images": ["0012.png", "0040.png"]}

`lasso` adds every image inside a drawn region to the selection, `select`
adds single images, `deselect` removes images that do not belong to the
query class: those are the "decision boundary" images of the experiment.

The store is one SQLite file (default `feedback.sqlite`) in WAL mode, so a
reader never blocks the writer. Its schema version is SQLite's
`PRAGMA user_version`; a file written by a newer toolkit is refused, not
guessed at, and one of schema 1 is migrated to 2 in one transaction by the
first toolkit that opens it. The data set (image -> class) is registered in
the store at import, so every event is checked against real image names and
exported with the images' classes.

Schema 2 is built for millions of events: images and events have integer
ids, so `event_images` is three integers a row (schema 1 repeated the event's
32-character id and the image's name in every row and in its indexes), and
an import writes each batch with two `executemany` of rows it numbered
itself. A 1,000,000-event import of 1,000,000 images took 297 s with schema 1;
it takes 39 s (36 s CPU) on a shared 2-core machine, after the 5 s that
registering the label CSV takes, and its export 6 s
(`benchmarks/bench_feedback_import.py`).

An event's id is its `id` field when it has one, else a stable hash of its
content, so importing the same file twice adds nothing. An import commits
its events in batches (`BATCH_EVENTS`), each a short write transaction, so
the web app's posts get in between; a run cut short keeps what it
committed, and running it again adds exactly the rest.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import gc
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from image_toolkit.data_tools.atomic import atomic_path, cannot_write, make_folder, refuse_inputs, remove_empty, user_umask
from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.csv_files import first_binary_line, read_csv_header
from image_toolkit.data_tools.formats.labels import SEPARATOR, LabelTable, image_classes, read_labels

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
ACTIONS = ("lasso", "select", "deselect")
EVENT_FIELDS = ("user", "session", "timestamp", "query_class", "action", "images")
EXPORT_COLUMNS = ["image", "class", "query_class", "lasso_count", "deselect_count", "select_count", "users"]
DEFAULT_WAIT_S = 10.0
# Longest user, session or event id kept: names, not payloads (a 20 MiB user name was once stored).
MAX_NAME_LENGTH = 200

# `events.key` is the event's id (its `id` field, else its content hash); `events.id` numbers the rows.
_TABLES = """
CREATE TABLE images (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, class TEXT NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL,
    user TEXT NOT NULL,
    session TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    query_class TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('lasso', 'select', 'deselect')),
    source TEXT NOT NULL,
    imported_at TEXT NOT NULL
);
CREATE TABLE event_images (
    event INTEGER NOT NULL REFERENCES events (id),
    position INTEGER NOT NULL,
    image INTEGER NOT NULL REFERENCES images (id),
    PRIMARY KEY (event, position)
) WITHOUT ROWID;
"""
_SCHEMA = "CREATE TABLE dataset (key TEXT PRIMARY KEY, value TEXT NOT NULL);" + _TABLES
# The column queries look up: a class's events (the web page's votes for a query). Schema 1 also indexed
# event_images by image: no query looks an image's events up (the export groups them with one sort), and
# as image ids are random, each batch of an import rewrote most of that index's pages: a quarter of its time.
_INDEXES = ("CREATE INDEX IF NOT EXISTS events_by_query_class ON events (query_class)",)
# Schema 1 -> 2: the old tables step aside, the new ones are filled from them by name, the old ones go.
# Images that events name but the data set lacks (schema 1 allowed it) are kept with no class.
_MIGRATION_1_TO_2 = (
    "DROP INDEX IF EXISTS event_images_by_image",
    "DROP INDEX IF EXISTS events_by_query_class",
    "ALTER TABLE images RENAME TO images_v1",
    "ALTER TABLE events RENAME TO events_v1",
    "ALTER TABLE event_images RENAME TO event_images_v1",
    *filter(str.strip, _TABLES.split(";")),
    "INSERT INTO images (name, class) SELECT image, class FROM images_v1 ORDER BY image",
    "INSERT OR IGNORE INTO images (name, class) SELECT DISTINCT image, '' FROM event_images_v1",
    "INSERT INTO events (key, content_hash, user, session, timestamp, query_class, action, source, imported_at) "
    "SELECT id, substr(content_hash, 1, 32), user, session, timestamp, query_class, action, source, imported_at "
    "FROM events_v1 ORDER BY rowid",
    "INSERT INTO event_images (event, position, image) "
    "SELECT events.id, old.position, images.id FROM event_images_v1 AS old "
    "JOIN events ON events.key = old.event_id JOIN images ON images.name = old.image ORDER BY events.id, old.position",
    "DROP TABLE event_images_v1",
    "DROP TABLE events_v1",
    "DROP TABLE images_v1",
    *_INDEXES,
)
# Events per write transaction of an import: the write lock is held for one batch, so a web post waits that
# long at most (0.8-1.0 s measured on a busy 2-core machine, in a store of 1M events), where a 200,000-event
# import in one transaction made it wait 10 s and fail. The lock time hardly grows with the batch: a commit
# writes the key index's pages that the batch changed, and random keys change most of them whatever the
# batch's size; so 20,000 events a batch took a 1M-event import's commits from 18 s (5,000 a batch) to 8 s.
BATCH_EVENTS = 20_000
# SQLite's page cache for an import (its default is 2 MB): the batches' inserts into the indexes hit it.
IMPORT_CACHE_KIB = 64 * 1024


# --- Events -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An event left out of an import, and why."""

    line: int
    reason: str


_quoted = json.encoder.encode_basestring_ascii  # A JSON string, as json.dumps writes it (C code).


def canonical_json(event: dict) -> str:
    """The text an event's content hash is of: `json.dumps(event, sort_keys=True, separators=(",", ":"))`.

    Written out field by field, 3.5 times faster than the encoder
    sorting keys per event, and gives the same text, so the ids of events
    stored by earlier versions stay the same.
    """
    return (f'{{"action":{_quoted(event["action"])},"images":[{",".join(map(_quoted, event["images"]))}],'
            f'"query_class":{_quoted(event["query_class"])},"session":{_quoted(event["session"])},'
            f'"timestamp":{_quoted(event["timestamp"])},"user":{_quoted(event["user"])}}}')


def _normalised_timestamp(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"malformed timestamp {value!r} (expected ISO 8601, e.g. 2024-05-01T12:30:00Z)")
    return _utc_timestamp(value.strip())


@functools.lru_cache(maxsize=1 << 16)  # Events come in runs from one moment: each moment is parsed once.
def _utc_timestamp(text: str) -> str:
    try:
        # Python 3.10's fromisoformat does not read the 'Z' (UTC) that browsers and our simulator write.
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "zZ" else text)
    except ValueError:
        raise ValueError(f"malformed timestamp {text!r} (expected ISO 8601, e.g. 2024-05-01T12:30:00Z)") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat()


def check_event(raw: object, known_images: Collection[str], classes: Collection[str]) -> dict:
    """The event with its fields checked and normalised, or ValueError with the reason.

    `known_images` is anything that answers `in`: a set of names, or the
    import's dict of name -> image id.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object with fields {', '.join(EVENT_FIELDS)}, got {type(raw).__name__}")
    values = [raw.get(name) for name in EVENT_FIELDS]
    if None in values or "" in values:
        missing = [name for name, value in zip(EVENT_FIELDS, values) if value in (None, "")]
        raise ValueError(f"missing field '{missing[0]}' (an event has {', '.join(EVENT_FIELDS)})")
    user, session, timestamp, query_class, action, images = values
    action = str(action).strip()
    if action not in ACTIONS:
        raise ValueError(f"unknown action '{action}' (expected one of {', '.join(ACTIONS)})")
    query_class = str(query_class).strip()
    if query_class not in classes:
        raise ValueError(f"unknown query_class '{query_class}' (classes: {', '.join(sorted(classes))})")
    if isinstance(images, str):
        images = images.split(SEPARATOR)
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise ValueError("'images' must be a list of image names")
    images = list(dict.fromkeys(image.strip() for image in images))
    images = [image for image in images if image] if "" in images else images
    if not images:
        raise ValueError("'images' is empty")
    unknown = [image for image in images if image not in known_images]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise ValueError(f"image '{unknown[0]}'{more} not in the data set")
    given_id = raw.get("id")
    names = {"user": str(user), "session": str(session), "id": "" if given_id in (None, "") else str(given_id)}
    for name, text in names.items():
        if len(text) > MAX_NAME_LENGTH:
            raise ValueError(f"'{name}' is longer than {MAX_NAME_LENGTH} characters")
    event = {
        "user": names["user"].strip(),
        "session": names["session"].strip(),
        "timestamp": _normalised_timestamp(timestamp),
        "query_class": query_class,
        "action": action,
        "images": images,
    }
    # 128 bits of SHA-256, as unlikely to collide as the ids made of them (schema 1 stored all 256: a fifth of a row).
    event["content_hash"] = hashlib.sha256(canonical_json(event).encode("ascii")).hexdigest()[:32]
    event["id"] = names["id"].strip() or event["content_hash"]
    return event


def read_event_lines(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, raw event) for every event in a .jsonl or .csv file, read as the caller goes.

    The file is checked first (its suffix, that it is text, a CSV's columns),
    so a wrong file is refused before anything is imported; the events are
    then read one at a time, so a file of millions of events is never held
    in memory. A line that is not JSON becomes a `Rejection` in place of its
    event. CSV columns are the event's fields, `images` holding names joined by ';'.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: events file not found.")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise OptionError(f"{path.name}: expected an events file ending in .jsonl or .csv. Received: {suffix or 'no suffix'!r}")
    _check_text(path)
    if suffix == ".jsonl":
        return _json_lines(path)
    header = read_csv_header(path, kind="events CSV")
    missing = [name for name in EVENT_FIELDS if name not in header]
    if missing:
        raise DataError(
            f"{path}: no '{missing[0]}' column; an events CSV has the columns "
            f"{','.join(EVENT_FIELDS)} (images joined by ';') and optionally id."
        )
    return _csv_rows(path)


def _check_text(path: Path) -> None:
    """Refuse a file holding bytes that are not UTF-8 text, or NUL bytes (a binary file), naming the first such line."""
    found = first_binary_line(path)
    if found is not None:
        raise DataError(f"{path}: line {found[0]} {found[1]}; events are UTF-8 JSON lines or CSV.")


def _json_lines(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.strip())
            except json.JSONDecodeError as error:
                yield number, Rejection(number, f"malformed JSON ({error.msg} at column {error.colno})")


def _csv_rows(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        for row in reader:
            yield reader.line_num, {key: value for key, value in row.items() if key is not None}


# --- The store --------------------------------------------------------------------------------


def _locked(path: Path, wait: float) -> DataError:
    return DataError(
        f"{path}: the database is locked by another writer (waited {wait:g} s); "
        "let the other import finish and run again, or raise --wait."
    )


# What SQLite says when the file or its folder, not the code, is at fault (a read-only folder, a full disk).
_FILE_PROBLEMS = ("unable to open", "readonly", "disk i/o", "disk is full")


def database_error(path: Path, error: sqlite3.OperationalError, wait: float) -> DataError | None:
    """The one-line error for an SQLite failure the user can fix: another writer, or a file or folder not writable.

    None for any other failure, which the caller raises as the bug it is.
    """
    if is_locked(error):
        return _locked(path, wait)
    if any(problem in str(error).lower() for problem in _FILE_PROBLEMS):
        return DataError(
            f"{path}: SQLite cannot write the database or its folder ({error}); "
            "make them writable, or pass another --db."
        )
    return None


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any error (the error goes on).

    IMMEDIATE takes the write lock at the start, so a second writer waits
    its busy timeout there, before it has done any work, instead of failing
    at commit. The connection must be in autocommit mode (`connect` opens
    it so), where Python's sqlite3 starts no transaction of its own.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def reported(path: Path, wait: float) -> Iterator[None]:
    """Raise an SQLite failure inside as its one-line `database_error`, when it is one the user can fix."""
    try:
        yield
    except sqlite3.OperationalError as error:
        problem = database_error(path, error, wait)
        if problem is None:
            raise
        raise problem from None


def is_locked(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite gave up waiting for another writer (its "database is locked" / "busy" errors)."""
    return "locked" in str(error) or "busy" in str(error)


def _discard(connection: sqlite3.Connection | None, made: Path | None, folders: list[Path]) -> None:
    """Close a connection that failed to open; remove the database file and folders this attempt made."""
    if connection is not None:
        connection.close()
    if made is not None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{made}{suffix}").unlink(missing_ok=True)
    remove_empty(folders)


def _write_schema(connection: sqlite3.Connection) -> None:
    """The tables, indexes and schema version of a new store, in WAL mode, unless another process wrote them first."""
    connection.execute("PRAGMA journal_mode = WAL")
    with transaction(connection):
        if connection.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in [*filter(str.strip, _SCHEMA.split(";")), *_INDEXES]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Rewrite a schema-1 store as schema 2 in one write transaction, unless another process did it meanwhile.

    One transaction: a kill -9 half way leaves the schema-1 store as it was,
    and the next open migrates it again. Event ids, content hashes and
    import times are kept, so an export is the same and a re-import adds
    nothing. Foreign keys are off here (`connect` turns them on after), so
    the old tables can go in any order.
    """
    with transaction(connection):
        if connection.execute("PRAGMA user_version").fetchone()[0] != 1:
            return
        logger.info("%s: migrating the feedback store from schema 1 to %d (once).", path, SCHEMA_VERSION)
        for statement in _MIGRATION_1_TO_2:
            connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _create(path: Path) -> bool:
    """Make a new, empty store at `path` in one step; False if another process made one there first.

    The schema is written to a temporary file beside `path`, which is then
    hard-linked into place, so a kill -9 at any moment leaves no store or a
    complete one, never a file without its schema. A link, unlike a rename,
    never replaces a store that another process made meanwhile.
    """
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    temporary = Path(name)
    try:
        temporary.chmod(0o666 & ~user_umask())  # mkstemp's 0600 would keep a teammate out
        connection = sqlite3.connect(temporary, isolation_level=None)
        try:
            _write_schema(connection)
        finally:
            connection.close()
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:  # A file system without hard links: a rename, if no store appeared meanwhile.
            if path.exists():
                return False
            os.replace(temporary, path)
        return True
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{temporary}{suffix}").unlink(missing_ok=True)


def connect(path: str | Path, *, create: bool = False, wait: float = DEFAULT_WAIT_S) -> sqlite3.Connection:
    """Open the store, creating it when `create`; migrate an older schema; refuse a newer one or a foreign file.

    `wait` is SQLite's busy timeout: how long a write waits for another writer
    before giving up with a clear error.
    """
    path = Path(path)
    if not path.is_file() and not create:
        raise DataError(f"{path}: feedback database not found; create it with 'toolkit feedback import EVENTS --db {path}'.")
    check_range("--wait", wait, low=0, why="seconds")
    created = make_folder(path.parent) if create else []
    made = connection = None
    try:
        if create and not path.exists():
            made = path if _create(path) else None
        connection = sqlite3.connect(path, timeout=wait, isolation_level=None)
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > SCHEMA_VERSION:
            raise DataError(
                f"{path}: schema version {version} is newer than this toolkit's {SCHEMA_VERSION}; "
                "upgrade image-toolkit to read it, or pass another --db."
            )
        if version == 0 and tables:
            raise DataError(f"{path}: an SQLite file but not a feedback database (tables: {', '.join(sorted(tables))}); pass another --db.")
        if version == 0:
            if not create:
                raise DataError(
                    f"{path}: an empty feedback database (no data set registered); import events first with "
                    f"'toolkit feedback import EVENTS --db {path} --data-csv LABEL_CSV'."
                )
            _write_schema(connection)  # An empty file someone made: the store is made in it.
        elif version < SCHEMA_VERSION:
            _migrate(connection, path)
    except OSError as error:  # The temporary file of a new store, in a folder it may not write.
        _discard(connection, made, created)
        raise cannot_write(path.parent, error, option="--db") from None
    except sqlite3.OperationalError as error:
        _discard(connection, made, created)
        raise database_error(path, error, wait) or DataError(f"{path}: cannot open the feedback database ({error}).") from None
    except sqlite3.DatabaseError as error:
        _discard(connection, made, created)
        raise DataError(f"{path}: not an SQLite database ({error}); pass another --db.") from None
    except DataError:
        _discard(connection, made, created)
        raise
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


class EventConflict(ValueError):
    """An event's id is already stored with other content."""


def register_dataset(connection: sqlite3.Connection, table: LabelTable, data_csv: str | Path) -> None:
    """Record (or update) the images, their classes and the label names events are checked against."""
    connection.executemany(  # A class that did not change is not written again: re-registering 1M images stays cheap.
        "INSERT INTO images (name, class) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET class = excluded.class WHERE class != excluded.class",
        zip(table.images, image_classes(table)),
    )
    connection.executemany(
        "INSERT OR REPLACE INTO dataset (key, value) VALUES (?, ?)",
        [("task", table.task), ("label_names", json.dumps(table.label_names)), ("data_csv", str(data_csv))],
    )


def registered(connection: sqlite3.Connection) -> tuple[dict[str, str], list[str], str | None]:
    """The registered images with their classes, the label names, and the label file they came from."""
    # One string per distinct class, not per image: a million rows of 10 classes held 143 MB of copies (bench_webapp.py).
    images = {name: sys.intern(text) if isinstance(text, str) else text
              for name, text in connection.execute("SELECT name, class FROM images")}
    meta = dict(connection.execute("SELECT key, value FROM dataset"))
    classes = list(json.loads(meta.get("label_names", "[]")))
    return images, classes, meta.get("data_csv")


def image_ids(connection: sqlite3.Connection, names: Iterable[str] | None = None) -> dict[str, int]:
    """Image name -> id in the store, of `names` (one query), or of every registered image when None."""
    if names is None:
        return dict(connection.execute("SELECT name, id FROM images"))
    query = "SELECT name, id FROM images WHERE name IN (SELECT value FROM json_each(?))"
    return dict(connection.execute(query, (json.dumps(sorted(set(names))),)))


ADDED, ALREADY_STORED, CONFLICT = "added", "already stored", "conflict"


def _conflict(event_id: str) -> str:
    return f"event id '{event_id}' is already stored with other content"


def store_events(connection: sqlite3.Connection, events: list[dict], *, source: str, imported_at: str,
                 images: Mapping[str, int] | None = None) -> list[str]:
    """Insert checked events inside the caller's transaction; the outcome of each: ADDED, ALREADY_STORED or CONFLICT.

    Idempotent by id: an event whose id is stored (or came earlier in
    `events`) with the same content adds nothing; with other content it is a
    CONFLICT and the stored one is kept. The stored ids are looked up in one
    query and the new events written by two `executemany`, so a batch of
    thousands costs a few statements, not thousands. The new events are
    numbered here, after the largest stored number (the transaction holds the
    write lock, so no one else numbers meanwhile), so their images are
    written without reading the numbers back. `images` maps image names to
    ids (an import passes the whole data set's); without it the batch's
    images are looked up.
    """
    keys = json.dumps([event["id"] for event in events])
    stored = dict(connection.execute("SELECT key, content_hash FROM events WHERE key IN (SELECT value FROM json_each(?))", (keys,)))
    outcomes, new = [], []
    for event in events:
        known = stored.get(event["id"])
        if known is None:
            stored[event["id"]] = event["content_hash"]
            new.append(event)
            outcomes.append(ADDED)
        else:
            outcomes.append(ALREADY_STORED if known == event["content_hash"] else CONFLICT)
    if not new:
        return outcomes
    if images is None:
        images = image_ids(connection, (image for event in new for image in event["images"]))
    new.sort(key=lambda event: event["id"])  # Keys in order fill the key index's pages one after another.
    (first,) = connection.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()
    connection.executemany(
        "INSERT INTO events (id, key, content_hash, user, session, timestamp, query_class, action, source, imported_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(number, event["id"], event["content_hash"], event["user"], event["session"], event["timestamp"],
          event["query_class"], event["action"], source, imported_at) for number, event in enumerate(new, start=first)],
    )
    connection.executemany(
        "INSERT INTO event_images (event, position, image) VALUES (?, ?, ?)",
        [(number, position, images[image]) for number, event in enumerate(new, start=first)
         for position, image in enumerate(event["images"])],
    )
    return outcomes


def store_event(connection: sqlite3.Connection, event: dict, *, source: str, imported_at: str) -> bool:
    """Insert one checked event inside the caller's transaction; False if the same event is already stored.

    Another event under a stored id raises EventConflict rather than overwriting it.
    """
    (outcome,) = store_events(connection, [event], source=source, imported_at=imported_at)
    if outcome == CONFLICT:
        raise EventConflict(_conflict(event["id"]))
    return outcome == ADDED


def session_votes(connection: sqlite3.Connection, query_class: str) -> dict[str, int]:
    """Net votes of every image for a class: each user session that judged it counts once, by its latest judgement.

    The session's latest event naming the image decides: -1 if that event
    deselected it, +1 if it lassoed or selected it, so a session that takes
    an image out and later puts it back votes for it. At one timestamp a
    deselect wins, since the page sends the lasso that took an image in
    together with the deselect that took it out again.
    """
    rows = connection.execute(
        "SELECT images.name, latest.action FROM ("
        " SELECT event_images.image AS image, events.action AS action, ROW_NUMBER() OVER ("
        "  PARTITION BY event_images.image, events.user, events.session"
        "  ORDER BY events.timestamp DESC, events.action = 'deselect' DESC) AS recency"
        " FROM event_images JOIN events ON events.id = event_images.event WHERE events.query_class = ?"
        ") AS latest JOIN images ON images.id = latest.image WHERE latest.recency = 1",
        (query_class,),
    )
    net: dict[str, int] = {}
    for image, action in rows:
        net[image] = net.get(image, 0) + (-1 if action == "deselect" else 1)
    return net


def _batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one shorter): `itertools.batched` of Python 3.12."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector for an import, then restore it as it was.

    An import makes millions of short-lived objects and no reference cycles;
    the collector's full passes walked the million-image dict again and again:
    16 of a 1M-event import's 52 CPU seconds.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _prepare_dataset(connection: sqlite3.Connection, db: Path, table: LabelTable | None,
                     data_csv: str | Path | None) -> tuple[dict[str, int], set[str], str]:
    """Register the data set when given, add any index an older file lacks.

    Returns the known images (name -> id: the events are checked against it
    and stored with it), the classes, and where they came from.
    """
    with transaction(connection):
        for statement in _INDEXES:
            connection.execute(statement)
        if table is not None:
            register_dataset(connection, table, data_csv)
        images = image_ids(connection)
        meta = dict(connection.execute("SELECT key, value FROM dataset"))
    if not images:
        raise DataError(f"{db}: no data set registered yet; pass --data-csv with the label file the events refer to.")
    registered_from = meta.get("data_csv")
    classes = set(json.loads(meta.get("label_names", "[]")))
    return images, classes, f"the data set ({registered_from})" if registered_from else "the data set"


def _checked(batch: list[tuple[int, object]], known: Mapping[str, int], classes: set[str], where: str,
             rejected: list[Rejection]) -> list[tuple[int, dict]]:
    """(line, checked event) for the good events of a batch; a rejection for each bad one is added to `rejected`."""
    checked = []
    for line, raw in batch:
        if isinstance(raw, Rejection):
            rejected.append(raw)
            continue
        try:
            checked.append((line, check_event(raw, known, classes)))
        except ValueError as error:
            rejected.append(Rejection(line, str(error).replace("the data set", where)))
    return checked


def import_events(
    events_path: str | Path,
    db: str | Path = "feedback.sqlite",
    *,
    data_csv: str | Path | None = None,
    task: str | None = None,
    wait: float = DEFAULT_WAIT_S,
) -> dict:
    """Check every event of a .jsonl / .csv file and add the good ones to the store, in batches.

    `data_csv` registers (or updates) the data set the events refer to; it is
    needed on the first import. Bad events are left out and reported with
    their line numbers; events already stored (same id) are not added again.
    An id seen before with other content is a rejection, not an overwrite.

    Each batch of BATCH_EVENTS events is one short write transaction, so
    another writer (the web page posting an event) gets in between batches
    instead of waiting out the whole import. A run cut short (kill -9,
    Ctrl-C, a lock it waited too long for) keeps the batches it committed,
    and running the same import again adds exactly the rest: events are
    idempotent by id. The summary counts the whole run.
    """
    refuse_inputs(db, (events_path, data_csv), option="--db")
    db = Path(db)
    table = read_labels(data_csv, task) if data_csv is not None else None
    if table is None and not db.is_file():
        raise DataError(f"{db}: a new feedback database, so no data set is registered; pass --data-csv with the label file the events refer to.")
    rows = read_event_lines(events_path)
    connection = connect(db, create=table is not None, wait=wait)
    # No fsync at each commit: in WAL mode a crash of the process loses nothing committed,
    # and a power cut at most the last batches, which the same import again adds.
    connection.execute(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
    connection.execute("PRAGMA synchronous = NORMAL")
    # Foreign keys are not checked row by row (a fifth of the inserts' time): the import numbers the events
    # it writes and takes the image ids from the store itself, so every reference holds by construction.
    connection.execute("PRAGMA foreign_keys = OFF")
    source = Path(events_path).name
    imported_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rejected: list[Rejection] = []
    counts = {ADDED: 0, ALREADY_STORED: 0}
    read = 0
    with contextlib.closing(connection), reported(db, wait), _no_cycle_collection():
        known, classes, where = _prepare_dataset(connection, db, table, data_csv)
        for batch in _batches(rows, BATCH_EVENTS):
            read += len(batch)
            checked = _checked(batch, known, classes, where, rejected)  # Before the transaction: no lock held meanwhile.
            with transaction(connection):
                outcomes = store_events(connection, [event for _, event in checked], source=source,
                                        imported_at=imported_at, images=known)
            for (line, event), outcome in zip(checked, outcomes):
                if outcome == CONFLICT:
                    rejected.append(Rejection(line, _conflict(event["id"])))
                else:
                    counts[outcome] += 1
        total = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    rejected.sort(key=lambda rejection: rejection.line)
    for rejection in rejected:
        logger.warning("%s line %d: %s; event left out", source, rejection.line, rejection.reason)
    return {
        "db": str(db),
        "events": str(events_path),
        "read": read,
        "added": counts[ADDED],
        "already_stored": counts[ALREADY_STORED],
        "rejected": [dataclasses.asdict(rejection) for rejection in rejected],
        "events_in_db": total,
    }


# One row per image: the action counts and distinct users in SQL, and the query classes of its events,
# joined by a byte no class name holds, for `_by_frequency`. SQLite sorts the event images once to group
# them, then the images by name.
_EXPORT_QUERY = """
SELECT images.name, images.class, counts.query_classes, counts.lasso, counts.deselect, counts.selected, counts.users
FROM (
    SELECT event_images.image AS image, group_concat(events.query_class, char(31)) AS query_classes,
           sum(events.action = 'lasso') AS lasso, sum(events.action = 'deselect') AS deselect,
           sum(events.action = 'select') AS selected, count(DISTINCT events.user) AS users
    FROM event_images JOIN events ON events.id = event_images.event
    GROUP BY event_images.image
) AS counts JOIN images ON images.id = counts.image
ORDER BY images.name
"""


def _by_frequency(query_classes: str) -> str:
    """The query classes of an image's events, each once, most frequent first (ties by name), joined by ';'."""
    if "\x1f" not in query_classes:
        return query_classes
    names = query_classes.split("\x1f")
    return SEPARATOR.join(sorted(set(names), key=lambda name: (-names.count(name), name)))


def _feedback_rows(connection: sqlite3.Connection) -> Iterator[tuple]:
    """The rows of `EXPORT_COLUMNS`, sorted by image, as SQLite gives them: never all in memory."""
    for image, image_class, query_classes, *counts in connection.execute(_EXPORT_QUERY):
        yield image, image_class, _by_frequency(query_classes), *counts


def image_feedback(db: str | Path = "feedback.sqlite", *, wait: float = DEFAULT_WAIT_S) -> pd.DataFrame:
    """One row per image any event names: its class, the query classes and the count of each action.

    `query_class` lists the classes the image was shown for, most frequent
    first, joined by ';'; `users` counts the distinct users who acted on it.
    A table in memory, for the web page and tests; `export_image_feedback`
    streams the same rows to a file.
    """
    connection = connect(db, wait=wait)
    with contextlib.closing(connection), reported(Path(db), wait):
        rows = list(_feedback_rows(connection))
    if not rows:
        return pd.DataFrame(columns=EXPORT_COLUMNS)
    return pd.DataFrame.from_records(rows, columns=EXPORT_COLUMNS)


def export_image_feedback(db: str | Path, output: str | Path, *, wait: float = DEFAULT_WAIT_S) -> dict[str, int]:
    """Write `image_feedback(db)` as CSV, atomically, one row at a time; the count of images and of each action's.

    An output that is the database itself is refused. The rows stream from
    one query to the file, so a million images cost no table in memory.
    """
    refuse_inputs(output, (db,), option="-o")
    connection = connect(db, wait=wait)
    counts = {"images": 0, "deselected_images": 0, "lassoed_images": 0, "selected_images": 0}
    with contextlib.closing(connection), reported(Path(db), wait), atomic_path(output) as temporary, \
            temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # pandas' to_csv, as written before: same file
        writer.writerow(EXPORT_COLUMNS)
        for row in _feedback_rows(connection):
            writer.writerow(row)
            counts["images"] += 1
            counts["lassoed_images"] += row[3] > 0
            counts["deselected_images"] += row[4] > 0
            counts["selected_images"] += row[5] > 0
    return counts


def read_image_feedback(path: str | Path) -> pd.DataFrame:
    """Read and check an image feedback CSV (the output of `toolkit feedback export`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image feedback CSV not found; write one with 'toolkit feedback export'.")
    try:
        frame = pd.read_csv(path, dtype={"image": str, "class": str, "query_class": str}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({str(error).splitlines()[0]}).") from None
    missing = [column for column in EXPORT_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: no '{missing[0]}' column; expected the columns {','.join(EXPORT_COLUMNS)} "
            "written by 'toolkit feedback export'."
        )
    for column in ("lasso_count", "deselect_count", "select_count", "users"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() | (values < 0).to_numpy())
        if bad.size:
            raise DataError(f"{path} line {bad[0] + 2}, column '{column}': expected a count >= 0, got '{frame[column].iat[bad[0]]}'.")
        frame[column] = values.astype(int)
    duplicated = frame["image"][frame["image"].duplicated()]
    if not duplicated.empty:
        raise DataError(f"{path}: image '{duplicated.iloc[0]}' is listed more than once; export it again with 'toolkit feedback export'.")
    return frame
