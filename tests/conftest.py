"""Shared fixtures: small real data sets built from scikit-learn's digits, and a CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest
from click.testing import CliRunner

from image_toolkit.data_tools.make_demo_data import write_digits_dataset


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
