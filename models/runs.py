"""The record of a training run in its output folder: `run.json`, the epoch state `--resume` continues from.

Each epoch of a run is committed in one step, the replacement of
`train_state.json` (`commit_epoch`). Before it, the epoch's checkpoint and,
when the epoch is the best so far, its best model are written under
epoch-numbered names (`last_checkpoint.epoch0003.keras`,
`best_model.epoch0003.h5`); the state names them and holds every committed
epoch's history row. After it, the best model is moved into place,
`history.csv` is rewritten from the state, and the files of older epochs
are removed (`publish`). A run killed at any moment thus leaves the state of
its last committed epoch with the files it names; `best_model.h5` and
`history.csv` are complete at every moment and lag the state by at most
that epoch, until `--resume` publishes it again. Nothing the state does not
name is trusted: an epoch cut short is trained again, once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from image_toolkit.data_tools.atomic import write_text
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.json_files import read_json
from image_toolkit.data_tools.formats.model_file import model_file_format
from image_toolkit.data_tools.provenance import library_versions

logger = logging.getLogger(__name__)

# Options that may change between a run and its `--resume`. The strategy changes where the steps run, not the
# model: a run started on a cluster can be continued on one machine. TensorBoard logs and the thresholds chosen
# after the last epoch do not change the epochs either.
RESUMABLE_CHANGES = frozenset({"epochs", "resume", "strategy", "tensorboard", "thresholds"})
# How a user names the recorded options that are not spelled as their flag.
SPELLED = {"siamese_type": "--type", "method": "the method", "data": "the data argument"}
LAST_CHECKPOINT = "last_checkpoint.keras"
STATE_FILE = "train_state.json"
HISTORY_FILE = "history.csv"
RESUME_FIX = "Run without --resume to start again."
# An epoch's file before a later epoch replaces it: last_checkpoint.epoch0003.keras, best_model.epoch0003.h5.
EPOCH_FILE = re.compile(r".+\.epoch\d{4,}\.(keras|h5)")


def epoch_file(name: str, epoch: int) -> str:
    """The name of epoch `epoch`'s version of the output `name` (1-based: after that many epochs)."""
    stem, suffix = os.path.splitext(name)
    return f"{stem}.epoch{epoch:04d}{suffix}"


def write_run_record(output_dir: Path, options: dict, **fields) -> None:
    """Write `run.json`: every option, the library versions, and what the run reports."""
    record = {"options": options, "versions": library_versions(), **fields}
    write_text(output_dir / "run.json", json.dumps(record, indent=2, default=str))


def begin_run(output_dir: Path, options: dict, state: dict | None, **fields) -> None:
    """Write `run.json` of a run starting to fit; a run that continues no state first drops an earlier run's.

    Otherwise a new run killed before its first epoch would leave the
    earlier run's state for `--resume` to continue under the new options.
    """
    if state is None and (output_dir / STATE_FILE).is_file():
        (output_dir / STATE_FILE).unlink()
    write_run_record(output_dir, options, status="running", **fields)


def commit_epoch(output_dir: Path, state: dict) -> None:
    """Commit an epoch: replace `train_state.json` (one os.replace), then publish what it names.

    `state` holds `epoch`, `checkpoint` (a file already written), the best
    score and epoch, `publish` ({staged file: final name} for a new best
    model) and `history` (one row per committed epoch).
    """
    write_text(output_dir / STATE_FILE, json.dumps(state, indent=2))
    publish(output_dir, state)


def publish(output_dir: Path, state: dict) -> None:
    """Bring the outputs up to the committed state: the best model in place, `history.csv`, no older epoch's files.

    Idempotent, so `--resume` runs it again for a run killed midway.
    """
    for staged, target in state.get("publish", {}).items():
        if (output_dir / staged).is_file():
            os.replace(output_dir / staged, output_dir / target)
    write_text(output_dir / HISTORY_FILE, pd.DataFrame(state["history"]).to_csv(index=False))
    for path in output_dir.iterdir():
        stale = EPOCH_FILE.fullmatch(path.name) or path.name == LAST_CHECKPOINT
        if stale and path.name != state["checkpoint"]:
            path.unlink(missing_ok=True)


def check_resumable(options: dict, output_dir: Path) -> dict | None:
    """The committed state of the run to resume, published again, after checking it was made with the same options.

    None when the run in `output_dir` finished no epoch (killed early): it
    starts again from the first. Partial files that a killed run left are
    removed.
    """
    state_path, run_path = output_dir / STATE_FILE, output_dir / "run.json"
    if not run_path.is_file() and not state_path.is_file():
        raise DataError(f"{output_dir}: nothing to resume (no {STATE_FILE} or run.json); run without --resume.")
    previous = read_json(run_path, dict, fix=RESUME_FIX).get("options", {}) if run_path.is_file() else {}
    for name, value in options.items():
        if name not in RESUMABLE_CHANGES and name in previous and previous[name] != value:
            raise OptionError(
                f"--resume: the run in {output_dir} used {SPELLED.get(name, '--' + name.replace('_', '-'))} {previous[name]}, this one {value}; "
                "resume with the same options or use a new --output-dir."
            )
    for partial in output_dir.glob(".*.partial*"):
        if partial.is_file():
            partial.unlink()
    if not state_path.is_file():
        logger.info("%s: the run finished no epoch; training from the first.", output_dir)
        return None
    state = _read_state(state_path)
    checkpoint = output_dir / state["checkpoint"]
    if not checkpoint.is_file():
        raise DataError(f"{state_path}: names {checkpoint.name}, which is missing; run without --resume to start again.")
    model_file_format(checkpoint)
    publish(output_dir, state)
    return state


def _read_state(state_path: Path) -> dict:
    """`train_state.json`, with what a state written before epochs were committed whole lacks.

    Such a state named no checkpoint (it was `last_checkpoint.keras`) and
    held no history: its rows are those of `history.csv` up to its epoch.
    """
    state = read_json(state_path, dict, fix=RESUME_FIX)
    state.setdefault("checkpoint", LAST_CHECKPOINT)
    if "history" not in state:
        history_path = state_path.parent / HISTORY_FILE
        if not history_path.is_file():
            raise DataError(f"{state_path}: an older run's state without its {HISTORY_FILE}; run without --resume to start again.")
        history = pd.read_csv(history_path)
        state["history"] = history[history["epoch"] < state["epoch"]].to_dict(orient="records")
    return state
