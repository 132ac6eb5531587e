"""One progress bar for the slow steps of the library (t-SNE, index building, experiment runs).

A bar is drawn with Click on stderr, so stdout keeps the command's result
(and its `--json`). `show=None`, the default everywhere, draws it only when
stderr is a terminal: piped into a log or run by a test, nothing is written.
`show=False` (a command's `--quiet`) never draws it; `show=True` always does,
terminal or not.

    with progress_bar(total=750, label="t-SNE") as advance:
        for ...:
            advance(1)

    for run in track(runs, label="Runs"):
        ...
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def should_show(show: bool | None = None) -> bool:
    """Whether to draw: `show` when given, else whether stderr is a terminal."""
    if show is not None:
        return bool(show)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _AsTerminal:
    """A text stream that says it is a terminal, so Click draws its bar there."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _ignore(steps: int = 1) -> None:
    """The `advance` of a hidden bar."""


@contextlib.contextmanager
def progress_bar(total: int, label: str, *, show: bool | None = None) -> Iterator[Callable[[int], None]]:
    """A bar of `total` steps on stderr; yields `advance(steps=1)`. Hidden, it writes nothing."""
    if not should_show(show):
        yield _ignore
        return
    import click

    # Click draws only the label on a stream that is not a terminal; a caller that asks for the bar gets it.
    stream = sys.stderr if sys.stderr.isatty() else _AsTerminal(sys.stderr)
    with click.progressbar(length=max(int(total), 1), label=label, file=stream, show_eta=True, show_pos=True) as bar:
        yield bar.update


def track(items: Iterable[Item], label: str, *, show: bool | None = None, total: int | None = None) -> Iterator[Item]:
    """Iterate over `items`, advancing a bar by one per item (`total` defaults to `len(items)`)."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, label, show=show) as advance:
        for item in items:
            yield item
            advance(1)
