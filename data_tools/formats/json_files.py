"""Read a JSON file the toolkit wrote (an index's manifest and metadata, a run's state) and check its top-level type.

Such files are damaged by hand edits, copies cut short and disks that fill
up; each way is one DataError line naming the file, with the fix the caller
knows (rebuild the index, run without --resume).
"""

from __future__ import annotations

import json
from pathlib import Path

from image_toolkit.data_tools.errors import DataError


def read_json(path: str | Path, expected: type, *, fix: str) -> dict | list:
    """The content of `path`, which must be JSON of the `expected` type (dict or list); else a DataError ending in `fix`."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not readable JSON ({error}). {fix}") from None
    if not isinstance(content, expected):
        raise DataError(f"{path}: expected a JSON {expected.__name__}, found a {type(content).__name__}. {fix}")
    return content
