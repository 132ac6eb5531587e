"""Shared fixtures: small real data sets built from scikit-learn's digits, and a CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pandas as pd
import pytest
from click.testing import CliRunner

from image_toolkit.data_tools.make_demo_data import write_digits_dataset

# Files run first, longest first: the README's blocks (one file, one worker, in order) take about a third of the
# suite. Left to xdist's default order (most tests first) they started late and ran on alone while the other worker
# idled; first, the other worker takes the rest meanwhile, and the long files go early so that short ones end the run.
LONGEST_FILES = ("test_readme.py", "test_kill9_train.py", "test_similarity.py", "test_train.py", "test_webapp.py",
                 "test_web_browser.py", "test_experiment.py", "test_multiworker.py", "test_cluster_scripts.py")


def pytest_collection_modifyitems(config, items):
    """Order the items so that LONGEST_FILES come first (setup.cfg turns xdist's own reordering off)."""
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))


def pytest_addoption(parser):
    parser.addoption(
        "--full", action="store_true", default=False,
        help="run every kill -9 trial (CI runs a sample of each; see tests/kill9.py)",
    )


@pytest.fixture(scope="session")
def kill_trial_count(request) -> int:
    """How many kill -9 moments each crash test tries: a sample in CI, all with `pytest --full`."""
    from tests.kill9 import FULL_TRIALS, SAMPLE_TRIALS

    return FULL_TRIALS if request.config.getoption("--full") else SAMPLE_TRIALS


@pytest.fixture(scope="session")
def digits_set(tmp_path_factory):
    """1000 digits at 32 px with four yes/no labels, 5 % of cells blank: (folder, full table)."""
    root = tmp_path_factory.mktemp("digits")
    table = write_digits_dataset(root, n_images=1000, image_size=32, blank_fraction=0.05, seed=1)
    return root, table


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    """24 digits at 32 px, for tests of behaviour rather than of learning."""
    root = tmp_path_factory.mktemp("tiny")
    table = write_digits_dataset(root, n_images=24, image_size=32, blank_fraction=0.0, seed=2)
    return root, table


SMALL = ["--backbone", "small_cnn", "--weights", "none", "--image_size", "32", "--quiet"]
# The rows of `digits_set` that `trained` learns from (split into training and validation); the rest are its test list.
TRAINED_ROWS = 800


def train_args(root, output_dir, *extra, data_csv=None):
    return ["--data_csv", str(data_csv or root / "label.txt"), "--img_directory", str(root / "images"),
            "--output_dir", str(output_dir), *SMALL, *extra]


@pytest.fixture(scope="session")
def trained(digits_set, tmp_path_factory):
    """One small_cnn run on 800 digits with tuned thresholds, shared by the tests that read its outputs.

    The other 200 digits are its held-out test list, `test.csv` beside the
    run's folder.
    """
    import json

    from image_toolkit.cli.train import train

    root, table = digits_set
    output_dir = tmp_path_factory.mktemp("run")
    labels = pd.read_csv(root / "label.txt")
    labels.iloc[:TRAINED_ROWS].to_csv(output_dir.parent / "pool.csv", index=False)
    labels.iloc[TRAINED_ROWS:].to_csv(output_dir.parent / "test.csv", index=False)
    result = CliRunner().invoke(train, train_args(root, output_dir, "--epochs", "25", "--thresholds", "tuned", "--json",
                                                  data_csv=output_dir.parent / "pool.csv"))
    assert result.exit_code == 0, result.output
    return output_dir, json.loads(result.stdout.strip().splitlines()[-1]), table


@pytest.fixture
def runner():
    return CliRunner()


def one_line_error(result) -> str:
    """The stderr of a failed command, checked to be exactly one 'Error: ...' line."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def class_folders(root, counts):
    """Class sub-folders of placeholder .png files (make-metadata lists files; it does not decode them)."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(b"png")
    return root
