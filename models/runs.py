"""The record of a training run in its output folder: `run.json`, and the checks `--resume` makes."""

from __future__ import annotations

import json
from pathlib import Path

from image_toolkit.data_tools.atomic import write_text
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.provenance import library_versions

# Options that may change between a run and its `--resume`.
RESUMABLE_CHANGES = frozenset({"epochs", "resume"})
# How a user names the recorded options that are not spelled as their flag.
SPELLED = {"siamese_type": "--type", "method": "the method", "data": "the data argument"}
LAST_CHECKPOINT = "last_checkpoint.keras"
STATE_FILE = "train_state.json"


def write_run_record(output_dir: Path, options: dict, **fields) -> None:
    """Write `run.json`: every option, the library versions, and what the run reports."""
    record = {"options": options, "versions": library_versions(), **fields}
    write_text(output_dir / "run.json", json.dumps(record, indent=2, default=str))


def check_resumable(options: dict, output_dir: Path) -> dict:
    """The saved state of the run to resume, after checking it was made with the same options."""
    state_path, run_path = output_dir / STATE_FILE, output_dir / "run.json"
    if not (output_dir / LAST_CHECKPOINT).is_file() or not state_path.is_file():
        raise DataError(f"{output_dir}: nothing to resume (no {LAST_CHECKPOINT}); run without --resume.")
    previous = json.loads(run_path.read_text())["options"] if run_path.is_file() else {}
    for name, value in options.items():
        if name not in RESUMABLE_CHANGES and name in previous and previous[name] != value:
            raise OptionError(
                f"--resume: the run in {output_dir} used {SPELLED.get(name, '--' + name.replace('_', '-'))} {previous[name]}, this one {value}; "
                "resume with the same options or use a new --output-dir."
            )
    return json.loads(state_path.read_text())
