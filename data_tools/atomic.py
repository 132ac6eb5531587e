"""Write outputs to a temporary file beside the target and move it into place.

An interrupted run then leaves either the old file or the new one, never half
of one: `os.replace` is atomic within a file system. Output folders are made
when the first output is written into them, and removed again if that write
fails, so a failed run leaves no empty folder behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from image_toolkit.data_tools.errors import DataError, OptionError


def not_a_folder(part: str | os.PathLike) -> str:
    """The message for a file standing where an output folder, or a folder on the way to it, should be."""
    return f"{part}: is a file, not a folder; choose another output folder."


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """The folders `make_folder` would create, deepest first; a file on the way is a DataError naming it.

    Checked without creating anything, so the CLI can refuse `FILE/sub` as
    a usage error before any work (`cli.common.OutputFolder`).
    """
    folder = Path(folder)
    missing = []
    for part in (folder, *folder.parents):
        if part.is_dir():
            break
        if part.exists() or part.is_symlink():
            raise DataError(not_a_folder(part))
        missing.append(part)
    return missing


def make_folder(folder: str | os.PathLike) -> list[Path]:
    """Create `folder` and its missing parents; return the folders created, deepest first.

    A path part that is a file, or a folder that cannot be created, is a
    DataError naming it, not a traceback.
    """
    missing = missing_folders(folder)
    for part in reversed(missing):
        try:
            part.mkdir()
        except FileExistsError:
            if not part.is_dir():
                raise DataError(not_a_folder(part)) from None
        except OSError as error:
            remove_empty(missing[missing.index(part) + 1:])
            raise DataError(f"{part}: cannot create this folder ({error.strerror or error}); choose a writable one.") from None
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are still empty: what `make_folder` made for a failed write."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def user_umask() -> int:
    """The process's umask; read from /proc where it can be, since setting it to read it races other threads."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cannot_write(where: str | os.PathLike, error: OSError, *, option: str | None = None) -> DataError:
    """The one message for an output the run may not write (a read-only folder, a full disk, /sys...).

    `option` names the option that chose the place (`--db`), when the user
    should change that option rather than the folder's permissions.
    """
    choose = f"choose a writable folder for {option}" if option else "choose a writable folder"
    return DataError(f"{where}: cannot write here ({error.strerror or error}); {choose}.")


def staging_folder(parent: str | os.PathLike, name: str) -> Path:
    """A new hidden folder in `parent` for outputs to be moved into place whole (`.NAME.XXXX.partial`).

    `parent` must exist. An unwritable one is a DataError, not a traceback.
    mkdtemp makes the folder private; it gets the mode the user's umask
    gives a new folder, which the moved outputs keep.
    """
    try:
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".partial"))
    except OSError as error:
        raise cannot_write(Path(parent), error) from None
    staging.chmod(0o777 & ~user_umask())
    return staging


def refuse_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *, option: str) -> None:
    """Refuse an output that is one of the run's inputs: writing it would destroy what the run reads.

    `option` names the output as the user gave it ("-o", "--coords",
    "OUTPUT_CSV"). Inputs that are None (options not given) are ignored;
    paths are compared resolved, so `./a.csv` and `a.csv` are one file.
    """
    target = Path(output).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            spelled = "" if str(source) == str(output) else f" ({source})"
            raise OptionError(f"{option} {output}: is also an input of this run{spelled}; writing it would "
                              "replace it. Give the output another name.")


def writable_folder(path: str | os.PathLike) -> Path:
    """Prove a file can be written in the output folder before any long computation, leaving nothing behind.

    The folder itself appears with the first output, so a run refused after
    this check leaves no empty folder. One check for every command whose
    outputs come after minutes of work (extraction, indexing, all-kNN).
    """
    path = Path(path)
    created = make_folder(path)
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise cannot_write(path, error) from None
    finally:
        remove_empty(created)
    return path


def flush_to_disk(path: str | os.PathLike) -> None:
    """Flush a file or folder to disk (fsync): what is moved into place, or named by a manifest, survives a power cut."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (same folder, same suffix) that replaces `target` on success."""
    target = Path(target)
    if target.is_dir():
        raise DataError(f"{target}: is a folder, not a file; give a file name for this output.")
    created = make_folder(target.parent)
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".partial{target.suffix}")
    except OSError as error:
        remove_empty(created)
        raise cannot_write(target.parent, error) from None
    os.close(handle)
    temporary = Path(temporary)
    written = False
    try:
        yield temporary
        # mkstemp makes the file private (0600); an output gets the mode the user's umask gives a new file.
        temporary.chmod(0o666 & ~user_umask())
        flush_to_disk(temporary)
        os.replace(temporary, target)
        written = True
    finally:
        temporary.unlink(missing_ok=True)
        if not written:
            remove_empty(created)


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
