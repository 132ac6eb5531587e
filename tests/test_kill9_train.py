"""A `train` run cut short, at each write of an epoch or by kill -9 at random moments, resumes exactly.

After the cut: best_model.h5, if there, loads and predicts; the checkpoint
train_state.json names loads; history.csv holds the rows the state
commits, or (cut between the commit and the rewrite) all but the last.
After `--resume`: the configured epochs, each trained once (the optimizer
took one epoch of steps per epoch) and in history.csv once, and the best
model is the one the state names.
"""

import functools
import itertools
import json
import math
import os
import shutil
import time

import pandas as pd
import pytest

from image_toolkit.cli.train import train
from tests.kill9 import kill_at, kill_trials, toolkit_command

SMALL = ["--backbone", "small_cnn", "--weights", "none", "--image_size", "32", "--batch_size", "32",
         "--learning_rate", "0.01", "--quiet"]
EPOCHS = 20


def train_args(root, output_dir, epochs, *extra):
    return ["--data_csv", str(root / "label.txt"), "--img_directory", str(root / "images"), "--output_dir", str(output_dir),
            *SMALL, "--epochs", str(epochs), *extra]


def state_of(output_dir):
    path = output_dir / "train_state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_checkpoint(output_dir):
    """The checkpoint train_state.json names, its loss and metrics registered first (by importing models.training)."""
    import image_toolkit.models.training  # noqa: F401
    from image_toolkit.models.runtime import keras

    return keras.models.load_model(output_dir / state_of(output_dir)["checkpoint"])


def assert_usable(output_dir, root):
    """What a cut run leaves loads, and history.csv agrees with the committed state."""
    from image_toolkit.data_tools.formats.model_file import read_h5_metadata
    from image_toolkit.models.inference import predict_images

    state = state_of(output_dir)
    committed = state["epoch"] if state else 0
    best = output_dir / "best_model.h5"
    if best.exists():
        predictions, _ = predict_images([root / "images" / "0000.png"], best)
        assert len(predictions) == 1
        assert read_h5_metadata(best)["best_epoch"] <= committed
    if state is not None:
        load_checkpoint(output_dir)
    history = output_dir / "history.csv"
    rows = pd.read_csv(history).to_dict(orient="records") if history.exists() else []
    assert len(rows) in (committed, committed - 1), (len(rows), committed)
    assert [row["epoch"] for row in rows] == list(range(len(rows)))
    if state is not None:
        assert rows == state["history"][: len(rows)]


def assert_trained_exactly(output_dir, epochs):
    """Epochs 1..epochs each once: in history.csv, in the state, and in the optimizer's step count."""
    from image_toolkit.data_tools.formats.model_file import read_h5_metadata

    state = state_of(output_dir)
    history = pd.read_csv(output_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(epochs))
    assert state["epoch"] == epochs and history.to_dict(orient="records") == state["history"]
    steps = math.ceil(len(pd.read_csv(output_dir / "train.csv")) / 32)
    checkpoint = load_checkpoint(output_dir)
    assert int(checkpoint.optimizer.iterations.numpy()) == epochs * steps
    assert read_h5_metadata(output_dir / "best_model.h5")["best_epoch"] == state["best_epoch"]
    left = sorted(path.name for path in output_dir.iterdir() if ".epoch" in path.name or ".partial" in path.name)
    assert left == [state["checkpoint"]]


class Crash(Exception):
    """Stands for the process dying at one file replacement (tests the windows that kill -9 rarely hits)."""


@pytest.mark.parametrize("replacement", [1, 2, 3, 4, 5])
def test_a_crash_at_each_write_of_an_epoch_resumes_exactly(tiny_set, tmp_path, runner, monkeypatch, replacement):
    """The run dies at the n-th file replacement of its second epoch.

    That epoch improves on the first (this seed, this learning rate), so it
    replaces five files: its best model and checkpoint under epoch names,
    train_state.json (the commit), best_model.h5, history.csv.
    """
    from image_toolkit.models.callbacks import TrainingCheckpoints

    root, _ = tiny_set
    end_of_epoch, replace = TrainingCheckpoints.on_epoch_end, os.replace

    def replace_or_die(count, *paths):
        if next(count) == replacement:
            raise Crash
        replace(*paths)

    def dying(self, epoch, logs=None):
        if epoch == 1:
            monkeypatch.setattr(os, "replace", functools.partial(replace_or_die, itertools.count(1)))
        try:
            end_of_epoch(self, epoch, logs)
        finally:
            monkeypatch.setattr(os, "replace", replace)

    monkeypatch.setattr(TrainingCheckpoints, "on_epoch_end", dying)
    cut = runner.invoke(train, train_args(root, tmp_path, 3))
    monkeypatch.undo()
    assert isinstance(cut.exception, Crash), cut.output
    assert_usable(tmp_path, root)
    resumed = runner.invoke(train, train_args(root, tmp_path, 3, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert_trained_exactly(tmp_path, 3)


def test_a_run_killed_at_random_moments_resumes_exactly(tiny_set, tmp_path, runner, kill_trial_count):
    root, _ = tiny_set
    output_dir = tmp_path / "run"
    command = toolkit_command("train", *train_args(root, output_dir, EPOCHS))
    started = time.monotonic()
    finished, code = kill_at(command, 600, cwd=tmp_path)  # once to the end: the window is this machine's run time
    assert finished and code == 0
    window = time.monotonic() - started

    def check(trial):
        assert_usable(output_dir, root)
        if not (output_dir / "run.json").is_file():  # killed before the run wrote anything: nothing to resume
            assert not output_dir.exists() or not any(output_dir.iterdir())
            return
        resumed = runner.invoke(train, train_args(root, output_dir, EPOCHS, "--resume"))
        assert resumed.exit_code == 0, (trial, resumed.output)
        assert_trained_exactly(output_dir, EPOCHS)

    # Seed 5 draws its first moments at 0.62 and 0.74 of the window: past TensorFlow's start-up, into the
    # epochs, so CI's sample of two kills a run mid-training; --full adds moments from start to end.
    trials = kill_trials(command, window_s=window, trials=kill_trial_count, cwd=tmp_path, check=check,
                         prepare=lambda: shutil.rmtree(output_dir, ignore_errors=True), seed=5)
    assert len(trials) == kill_trial_count


def test_a_new_run_cut_before_its_first_epoch_is_not_resumed_from_the_old_one(tiny_set, tmp_path, runner, monkeypatch):
    """The old run's state would be continued under the new run's options (head_units 64 weights, run.json saying 8)."""
    from image_toolkit.models.callbacks import TrainingCheckpoints

    root, _ = tiny_set
    assert runner.invoke(train, train_args(root, tmp_path, 1)).exit_code == 0

    def die(self, epoch, logs=None):
        raise Crash

    monkeypatch.setattr(TrainingCheckpoints, "on_epoch_end", die)
    assert isinstance(runner.invoke(train, train_args(root, tmp_path, 1, "--head_units", "8")).exception, Crash)
    monkeypatch.undo()
    resumed = runner.invoke(train, train_args(root, tmp_path, 1, "--head_units", "8", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert_trained_exactly(tmp_path, 1)
    assert load_checkpoint(tmp_path).get_layer("head_dense").units == 8
