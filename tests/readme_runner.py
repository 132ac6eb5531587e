"""Run README.md's bash blocks in order, as a newcomer would type them, and name the block that fails.

A block is a fenced ```bash block. The set-up blocks (install, test) say so
with an HTML comment on the line before them, `<!-- readme: not run -->`:
running the test suite from inside the test suite would recurse. Every other
block runs with `bash -e -o pipefail`, in one working folder that holds a
fresh copy of the checkout, so what one block makes the next can use, and
nothing outside that folder is read or written.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

NOT_RUN = "<!-- readme: not run -->"
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


@dataclasses.dataclass(frozen=True)
class Block:
    """One bash block: its code, the line it starts on, the section it sits in, and whether it runs."""

    code: str
    line: int
    section: str
    runs: bool

    @property
    def name(self) -> str:
        return f"README.md line {self.line} ({self.section})"


def bash_blocks(markdown: str) -> list[Block]:
    """The bash blocks of a markdown text, in order."""
    blocks = []
    for match in FENCE.finditer(markdown):
        before = markdown[: match.start()]
        headings = re.findall(r"^#+ (.+)$", before, re.M)
        previous = before.rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append(Block(match.group(1), before.count("\n") + 1, headings[-1] if headings else "top", previous != NOT_RUN))
    return blocks


class BlockFailed(AssertionError):
    """A README block exited non-zero: the message names it and ends with what it printed."""


def run_block(block: Block, cwd: Path, *, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one block in `cwd` with the toolkit's environment first on PATH; raise BlockFailed naming it."""
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BlockFailed(f"{block.name} exited {done.returncode}:\n{block.code}\n--- output ---\n{tail}")
    return done


def fresh_checkout(repo: Path, target: Path) -> Path:
    """Copy the files git tracks (what a clone holds) into `target`."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source = repo / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target
