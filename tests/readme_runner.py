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
        headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", before, flags=re.S | re.M), re.M)
        previous = before.rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append(Block(match.group(1), before.count("\n") + 1, headings[-1] if headings else "top", previous != NOT_RUN))
    return blocks


class BlockFailed(AssertionError):
    """A README block exited non-zero: the message names it and ends with what it printed."""


def run_block(block: Block, cwd: Path, *, timeout: float = 600, merged: bool = False) -> subprocess.CompletedProcess:
    """Run one block in `cwd` with the toolkit's environment first on PATH; raise BlockFailed naming it.

    `merged` sends stderr into stdout, in the order a terminal shows them.
    """
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    environment.pop("PYTHONPATH", None)
    environment["TOOLKIT_OPENVINO_CACHE"] = str(Path(cwd) / ".cache" / "openvino")  # --runtime openvino's cache stays inside
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=cwd, env=environment, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + (done.stderr or "")).strip().splitlines()[-15:])
        raise BlockFailed(f"{block.name} exited {done.returncode}:\n{block.code}\n--- output ---\n{tail}")
    return done


def fresh_checkout(repo: Path, target: Path) -> Path:
    """Copy the files git tracks (what a clone holds) into `target`; outside git, the tree without build outputs."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True)
    if listed.returncode != 0:
        ignored = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "runs", "out")
        shutil.copytree(repo, target, ignore=ignored, dirs_exist_ok=True)
        return target
    for name in filter(None, listed.stdout.split("\0")):
        source = repo / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


OUTPUT = "<!-- readme: output -->"
SHOWN_LINES = 12  # Longer outputs are shown as their first and last lines, around '...'.


def shown_output(text: str) -> str:
    """What README shows of an output: all of it, or its head and tail around a line '...'."""
    lines = text.rstrip("\n").splitlines()
    if len(lines) > 2 * SHOWN_LINES + 1:
        lines = lines[:SHOWN_LINES] + ["..."] + lines[-SHOWN_LINES:]
    return "\n".join(lines)


def fill_outputs(readme: Path, cwd: Path) -> str:
    """README's text, with every `<!-- readme: output -->` block holding what the bash block before it printed.

    Runs every block, in order, in `cwd` (a fresh checkout), the way the tests do.
    """
    text = readme.read_text(encoding="utf-8")
    blocks = {block.line: block for block in bash_blocks(text)}
    pieces, position, printed = [], 0, None
    marker = re.compile(re.escape(OUTPUT) + r"\n```text\n.*?^```\n", re.S | re.M)
    events = sorted([(block.line, "block", block) for block in blocks.values()]
                    + [(text[: m.start()].count("\n") + 1, "output", m) for m in marker.finditer(text)], key=lambda e: e[0])
    for _, kind, item in events:
        if kind == "block":
            printed = None
            if item.runs:
                printed = run_block(item, cwd, merged=True).stdout
                print(f"ran {item.name}", file=sys.stderr)
            continue
        if printed is None:
            raise BlockFailed(f"README.md line {text[: item.start()].count(chr(10)) + 1}: an output block with no run block before it")
        pieces.append(text[position: item.start()])
        pieces.append(f"{OUTPUT}\n```text\n{shown_output(printed)}\n```\n")
        position, printed = item.end(), None
    return "".join(pieces) + text[position:]


if __name__ == "__main__":
    # python -m tests.readme_runner: write what every README block prints into README.md's output blocks.
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        filled = fill_outputs(repo / "README.md", fresh_checkout(repo, Path(folder)))
    (repo / "README.md").write_text(filled, encoding="utf-8")
