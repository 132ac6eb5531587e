"""kill -9 at random moments of `index add` and `get-transfer-layer --append`: what was there still loads.

After each kill the index loads (index info, a search) at its old size or
its new one, and the feature file holds the old rows or the old and the new
ones, nothing else. A run to the end afterwards gives the full result. The
moments are drawn over the length of one whole run, measured first; CI runs
a sample of them (`kill_trial_count`), `pytest --full` all.
"""

import json
import shutil
import time

import numpy as np
import pytest
from click.testing import CliRunner

from image_toolkit.cli.extract import get_transfer_layer
from image_toolkit.cli.index import index
from image_toolkit.cli.search import search
from image_toolkit.data_tools.formats.features import FeatureSet, read_features, write_features
from image_toolkit.data_tools.search.index import ImageIndex
from tests.kill9 import kill_at, kill_trials, toolkit_command

METADATA = {"model": "pixels", "output": "pooled", "layer": "pixels", "image_size": 32, "weights": "none"}
OLD, NEW = 3000, 1000


def timed_run(command, cwd) -> float:
    """Run the command to its end once (its result is the reference) and return how long it took."""
    started = time.monotonic()
    finished, code = kill_at(command, 600, cwd=cwd)
    assert finished and code == 0, f"{command} failed with exit code {code}"
    return time.monotonic() - started


def test_kill_9_during_index_add_leaves_the_old_or_the_new_index(tmp_path, kill_trial_count):
    rows = np.random.default_rng(0).standard_normal((OLD + NEW, 32)).astype(np.float32)
    names = [f"{i:05d}.png" for i in range(OLD + NEW)]
    write_features(tmp_path / "old.npz", FeatureSet(names[:OLD], rows[:OLD], METADATA))
    write_features(tmp_path / "new.npz", FeatureSet(names[OLD:], rows[OLD:], METADATA))
    runner = CliRunner()
    assert runner.invoke(index, ["build", str(tmp_path / "old.npz"), str(tmp_path / "pristine"), "--quiet"]).exit_code == 0
    folder = tmp_path / "index"
    command = toolkit_command("index", "add", str(folder), str(tmp_path / "new.npz"), "--quiet")

    def prepare():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(tmp_path / "pristine", folder)

    def check(trial):
        info = runner.invoke(index, ["info", str(folder), "--json"])
        assert info.exit_code == 0, f"refused after a kill at {trial.delay_s:.2f} s: {info.output}"
        size = json.loads(info.stdout)["size"]
        assert size in (OLD, NEW + OLD), size
        found = runner.invoke(search, [str(folder), "--features", str(tmp_path / "old.npz"), "-k", "1", "--json", "--quiet"])
        assert found.exit_code == 0, found.output

    prepare()
    window = timed_run(command, tmp_path)
    assert ImageIndex.load(folder).size == OLD + NEW
    kill_trials(command, window_s=window, trials=kill_trial_count, cwd=tmp_path, check=check, prepare=prepare)
    result = runner.invoke(index, ["add", str(folder), str(tmp_path / "new.npz"), "--quiet"])  # The rerun, to its end.
    assert result.exit_code == 0, result.output
    rerun = ImageIndex.load(folder)
    assert rerun.size == OLD + NEW and sorted(rerun.paths_) == names


@pytest.fixture
def image_folders(tiny_set, tmp_path):
    """The 24 tiny images, and the first 12 of them: the images a feature file held before it was extended."""
    everything = tmp_path / "all"
    shutil.copytree(tiny_set[0] / "images", everything)
    first = tmp_path / "first"
    first.mkdir()
    for image in sorted(everything.iterdir())[:12]:
        shutil.copy(image, first / image.name)
    return first, everything


def test_kill_9_during_transfer_layer_append_leaves_the_old_rows_or_all(image_folders, tmp_path, kill_trial_count):
    first, everything = image_folders
    runner = CliRunner()
    old_file, output = tmp_path / "old.npz", tmp_path / "features.npz"
    result = runner.invoke(get_transfer_layer, [str(first), str(old_file), "--model", "pixels", "--quiet"])
    assert result.exit_code == 0, result.output
    old = read_features(old_file)
    command = toolkit_command("get-transfer-layer", str(everything), str(output), "--model", "pixels", "--append", "--quiet")

    def prepare():
        shutil.copy(old_file, output)

    prepare()
    window = timed_run(command, tmp_path)
    full = read_features(output)
    assert full.paths[:12] == old.paths and len(full.paths) == 24

    def check(trial):
        now = read_features(output)  # Refused or damaged: the test fails here.
        expected = old if len(now.paths) == len(old.paths) else full
        assert now.paths == expected.paths, f"after a kill at {trial.delay_s:.2f} s: {len(now.paths)} rows"
        np.testing.assert_array_equal(now.features, expected.features)

    kill_trials(command, window_s=window, trials=kill_trial_count, cwd=tmp_path, check=check, prepare=prepare)
    result = runner.invoke(get_transfer_layer, [str(everything), str(output), "--model", "pixels", "--append", "--quiet"])
    assert result.exit_code == 0, result.output
    rerun = read_features(output)
    assert rerun.paths == full.paths
    np.testing.assert_allclose(rerun.features, full.features, rtol=1e-6)
