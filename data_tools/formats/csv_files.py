"""Read a CSV the toolkit is given (label, metadata or image list) and check it, in one place.

Every cell is read as text, exactly as written: no 'NA' or blank turned into
NaN (a blank label cell means unknown, and the readers decide that), spaces
after the commas and around header names and image paths dropped. Whatever
goes wrong (a missing file, an empty one, a broken row, bytes that are not
UTF-8, a required column absent, no rows) is one DataError line naming the
file and the fix.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from image_toolkit.data_tools.errors import DataError


def read_checked_csv(
    path: str | os.PathLike,
    *,
    required: Sequence[str] = ("image",),
    kind: str = "CSV",
    example: str = "image",
    missing_fix: str = "check the path",
) -> pd.DataFrame:
    """The rows of the CSV at `path`, all cells text, with every `required` column present.

    `kind` names the file in messages ("label CSV"), `example` is a header row
    to show ("image,even,prime"), and `missing_fix` says what to do when the
    file is not there ("pass --data-csv with the path of your label file").
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} not found; {missing_fix}.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file is empty; expected a header row such as '{example}' and one row per image."
        ) from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except pd.errors.ParserError as error:
        raise DataError(
            f"{path}: not a readable CSV ({str(error).splitlines()[0]}); expected a header row such as '{example}'."
        ) from None
    _check_header_names(read_csv_header(path, kind=kind, missing_fix=missing_fix), path, kind)
    frame.columns = [str(column).strip() for column in frame.columns]
    for column in required:
        if column not in frame.columns:
            raise DataError(
                f"{path}: no '{column}' column (found {', '.join(frame.columns)}); "
                f"the header row of a {kind} must name {' and '.join(repr(name) for name in required)}, e.g. '{example}'."
            )
    if frame.empty:
        raise DataError(f"{path}: the header is there but no image rows follow.")
    if "image" in frame.columns:
        frame["image"] = frame["image"].str.strip()
    return frame


def read_csv_header(path: str | os.PathLike, *, kind: str = "CSV", missing_fix: str = "check the path") -> list[str]:
    """The column names of a CSV (spaces around them dropped), with the same one-line errors as `read_checked_csv`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {kind} not found; {missing_fix}.")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return [cell.strip() for cell in next(csv.reader(handle), [])]
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _check_header_names(header: list[str], path: Path, kind: str) -> None:
    """Refuse a blank or repeated column name, which pandas would quietly rename ('Unnamed: 2', 'even.1').

    A label CSV would then train a label named 'even.1', or one of nothing
    but blanks from a trailing comma.
    """
    blank = [number for number, name in enumerate(header, start=1) if not name]
    if blank:
        raise DataError(f"{path}: column {blank[0]} of the header has no name; name every column of a {kind} "
                        "or delete the empty one (a trailing comma makes one).")
    repeated = sorted({name for name in header if header.count(name) > 1}, key=header.index)
    if repeated:
        raise DataError(f"{path}: the header names column '{repeated[0]}' {header.count(repeated[0])} times; "
                        f"a {kind} names each column once.")


def first_binary_line(path: str | os.PathLike) -> tuple[int, str] | None:
    """(line number, what is wrong) for the first line that is not UTF-8 text or holds a NUL byte; None if every line is text.

    Read by lines from the start, since pandas' own position of a bad byte
    counts from its read buffer, not the file.
    """
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number, "is not UTF-8 text"
            if b"\x00" in line:
                return number, "holds a NUL byte (a binary file?)"
    return None


def _not_utf8(path: Path) -> DataError:
    found = first_binary_line(path)
    where = f"line {found[0]} {found[1]}" if found else "a line is not UTF-8 text"
    return DataError(f"{path}: {where}; save the file as CSV UTF-8.")
