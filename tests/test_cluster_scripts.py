"""scripts/cluster: the SLURM and SGE job arrays, run here as the schedulers would run their tasks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from image_toolkit.cli.extract import get_transfer_layer
from image_toolkit.data_tools.formats.features import read_features
from image_toolkit.data_tools.make_demo_data import write_digits_dataset

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "cluster"
TOOLKIT = f"{sys.executable} -m image_toolkit.cli.main"
PIXELS = ["--model", "pixels", "--image-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_dataset(root, n_images=10, image_size=16, blank_fraction=0.0, seed=4)
    return root / "images"


def run_script(script, tmp_path, **env):
    environment = {**os.environ, "TOOLKIT": TOOLKIT, "MODEL": "pixels", "EXTRACT_ARGS": "--image-size 8 --quiet", **env}
    return subprocess.run(["bash", str(SCRIPTS / script)], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)


def single_process(images, tmp_path, runner):
    path = tmp_path / "single.npz"
    result = runner.invoke(get_transfer_layer, [str(images), str(path), *PIXELS])
    assert result.exit_code == 0, result.output
    return read_features(path)


def assert_same_features(merged, single):
    """The same images and the same rows, whatever order the shards came in."""
    assert sorted(merged.paths) == sorted(single.paths) and len(merged.paths) == len(single.paths)
    order = {path: row for row, path in enumerate(single.paths)}
    np.testing.assert_allclose(merged.features, single.features[[order[path] for path in merged.paths]], rtol=1e-6)


@pytest.mark.parametrize("script, task_env", [
    ("extract_array.sbatch", lambda i: {"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": "2"}),
    # qsub -t 1-3:2 runs tasks 1 and 3: shards 0 and 1 of 2.
    ("extract_array.sge",
     lambda i: {"SGE_TASK_ID": str(2 * i + 1), "SGE_TASK_FIRST": "1", "SGE_TASK_LAST": "3", "SGE_TASK_STEPSIZE": "2"}),
])
def test_array_tasks_then_merge_equal_one_extraction(images, tmp_path, runner, script, task_env):
    out = tmp_path / "out"
    for index in range(2):
        done = run_script(script, tmp_path, IMAGES=str(images), OUT=str(out), **task_env(index))
        assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in out.iterdir()) == ["shard-0.feat", "shard-1.feat"]
    assert [len(read_features(out / f"shard-{i}.feat").paths) for i in range(2)] == [5, 5]
    done = run_script("merge_shards.sh", tmp_path, SHARDS="2", OUT=str(out))
    assert done.returncode == 0, done.stderr
    assert_same_features(read_features(out / "features.feat"), single_process(images, tmp_path, runner))


@pytest.mark.parametrize("script, task_env, says", [
    ("extract_array.sbatch", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3"}, "sbatch --array=0-"),
    ("extract_array.sbatch", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1", "SHARDS": "1"}, "sbatch --array=0-"),
    ("extract_array.sbatch", {}, "sbatch --array=0-"),
    ("extract_array.sge", {"SGE_TASK_ID": "4", "SGE_TASK_FIRST": "1", "SGE_TASK_LAST": "3", "SGE_TASK_STEPSIZE": "1"}, "qsub -t 1-"),
    ("extract_array.sge", {"SGE_TASK_ID": "undefined"}, "qsub -t 1-"),
])
def test_a_task_outside_the_shards_is_one_line_and_writes_nothing(images, tmp_path, monkeypatch, script, task_env, says):
    out = tmp_path / "out"
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SGE_TASK_ID", "SGE_TASK_LAST", "SHARDS"):
        monkeypatch.delenv(name, raising=False)  # only this test's scheduler variables
    done = run_script(script, tmp_path, IMAGES=str(images), OUT=str(out), **task_env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {script}: array task") and says in lines[0], done.stderr
    assert not out.exists()


def test_merge_with_a_missing_shard_is_one_line_and_writes_nothing(images, tmp_path):
    """SGE's -hold_jid starts the merge even after a failed task: the merge itself refuses."""
    out = tmp_path / "out"
    task = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert run_script("extract_array.sbatch", tmp_path, IMAGES=str(images), OUT=str(out), **task).returncode == 0  # task 1 failed
    done = run_script("merge_shards.sh", tmp_path, SHARDS="2", OUT=str(out))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "shard-1.feat" in lines[0], done.stderr
    assert not (out / "features.feat").exists()


def test_merge_of_shards_from_a_run_with_more_tasks_is_one_line_and_writes_nothing(images, tmp_path):
    """SHARDS=2 given to the merge of a 3-task run: the shards say they are 2 of 3."""
    out = tmp_path / "out"
    for index in range(2):
        task = {"SLURM_ARRAY_TASK_ID": str(index), "SLURM_ARRAY_TASK_COUNT": "3"}
        assert run_script("extract_array.sbatch", tmp_path, IMAGES=str(images), OUT=str(out), **task).returncode == 0
    done = run_script("merge_shards.sh", tmp_path, SHARDS="2", OUT=str(out))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "shard-0.feat: 2 of 3 shards given (missing shard_index 2)" in lines[0], done.stderr
    assert not (out / "features.feat").exists()


@pytest.mark.parametrize("scheduler, tool, job_id, array, hold", [
    ("slurm", "sbatch", "4242", "--array=0-3", "--dependency=afterok:4242"),
    ("sge", "qsub", "4242.1-4:1", "-t 1-4", "-hold_jid 4242"),
])
def test_submit_chains_the_merge_after_the_array(tmp_path, scheduler, tool, job_id, array, hold):
    """A stand-in scheduler records each submission and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / tool).write_text(f'#!/bin/bash\necho "$*" >> "{tmp_path}/submitted"\necho "{job_id}"\n')
    (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SHARDS": "4"}
    done = subprocess.run(["bash", str(SCRIPTS / "submit_extract.sh"), scheduler], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    first, second = (tmp_path / "submitted").read_text().splitlines()
    assert array in first and first.endswith(f"extract_array.{'sbatch' if scheduler == 'slurm' else 'sge'}")
    assert hold in second and second.endswith("merge_shards.sh")
