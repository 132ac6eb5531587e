"""Kill a command with SIGKILL at random moments, then check that what it had written still loads.

A trial starts the command as a child process, waits a random time drawn
from [0, `window`) seconds, and sends SIGKILL (or finds it already done).
The caller's `check` then asserts that earlier outputs load and, where the
command can resume, that resuming continues exactly. CI runs `SAMPLE_TRIALS`
moments per command; `pytest --full` runs `FULL_TRIALS`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

SAMPLE_TRIALS = 2
FULL_TRIALS = 10


@dataclass
class Trial:
    """One kill: when it was sent, and whether the command had already finished by then."""

    seed: int
    delay_s: float
    finished: bool
    returncode: int


def toolkit_command(*args: str) -> list[str]:
    """The `toolkit` command line run through this interpreter (the venv's), so no PATH lookup is needed."""
    return [sys.executable, "-c", "from image_toolkit.cli.main import toolkit; toolkit()", *args]


def kill_at(command: Sequence[str], delay_s: float, *, cwd: str | os.PathLike, env: dict | None = None) -> tuple[bool, int]:
    """Run `command`, SIGKILL it after `delay_s` seconds; (finished before the kill, return code)."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    process = subprocess.Popen(
        list(command), cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + delay_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return True, process.returncode
        time.sleep(0.01)
    if process.poll() is not None:
        return True, process.returncode
    process.send_signal(signal.SIGKILL)
    return False, process.wait()


def kill_trials(
    command: Sequence[str],
    *,
    window_s: float,
    trials: int,
    cwd: str | os.PathLike,
    check: Callable[[Trial], None],
    prepare: Callable[[], None] | None = None,
    env: dict | None = None,
    seed: int = 0,
) -> list[Trial]:
    """Run `trials` kills at moments drawn uniformly from [0, window_s); `prepare` resets the outputs before each."""
    generator = random.Random(seed)
    done = []
    for number in range(trials):
        if prepare is not None:
            prepare()
        delay = generator.uniform(0.0, window_s)
        finished, code = kill_at(command, delay, cwd=Path(cwd), env=env)
        trial = Trial(seed=number, delay_s=delay, finished=finished, returncode=code)
        check(trial)
        done.append(trial)
    return done
