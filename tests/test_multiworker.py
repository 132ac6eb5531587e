"""`--strategy multiworker`: two worker processes on this machine train one model; only the chief writes it."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from image_toolkit.cli.predict import predict
from image_toolkit.cli.similarity import train_simclr
from image_toolkit.cli.train import train
from image_toolkit.data_tools.make_demo_data import write_digits_dataset
from tests.conftest import one_line_error

SMALL = ["--backbone", "small_cnn", "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "32"]
TIMEOUT_S = 150


def free_ports(n):
    """Ports the kernel just gave out and released: free for the cluster a moment later."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_cluster(tmp_path, command):
    """Run `toolkit COMMAND` as worker 0 and worker 1 of a local cluster; each gets its own --output-dir and TMPDIR."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        home = tmp_path / f"host{index}"
        (home / "tmp").mkdir(parents=True)
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config), "TMPDIR": str(home / "tmp"), "CUDA_VISIBLE_DEVICES": ""}
        args = [sys.executable, "-m", "image_toolkit.cli.main", *command, "--strategy", "multiworker",
                "--output-dir", str(home / "run"), "--json"]
        processes.append(subprocess.Popen(args, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT_S)
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_dataset(root, n_images=160, image_size=32, blank_fraction=0.0, seed=3)
    return root


def test_two_workers_train_one_model_that_the_chief_alone_writes(small_set, tmp_path, runner):
    command = ["train", "--data-csv", str(small_set / "label.txt"), "--img-directory", str(small_set / "images"), *SMALL]
    (chief_rc, chief_out, chief_err), (worker_rc, worker_out, worker_err) = run_cluster(tmp_path, command)
    assert chief_rc == 0, chief_err[-3000:]
    assert worker_rc == 0, worker_err[-3000:]
    chief_dir = tmp_path / "host0" / "run"
    for name in ["best_model.h5", "history.csv", "run.json", "train.csv", "val.csv", "loss_curve.png", "train_state.json"]:
        assert (chief_dir / name).is_file(), name
    # The worker wrote nothing where it was told to, and left no temporary folder.
    assert not (tmp_path / "host1" / "run").exists()
    assert list((tmp_path / "host1" / "tmp").iterdir()) == []
    # Both saw the same all-reduced epochs.
    chief, worker = json.loads(chief_out.splitlines()[-1]), json.loads(worker_out.splitlines()[-1])
    assert chief["epochs"] == worker["epochs"] == 2
    assert chief["best_val_macro_f1"] == pytest.approx(worker["best_val_macro_f1"], abs=1e-6)
    assert json.loads((chief_dir / "run.json").read_text())["options"]["strategy"] == "multiworker"

    # The cluster's checkpoint continues on one machine.
    resumed = runner.invoke(train, [*command[1:], "--epochs", "3", "--output-dir", str(chief_dir), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert len((chief_dir / "history.csv").read_text().splitlines()) == 1 + 3

    images = [str(small_set / "images" / f"{i:04d}.png") for i in range(3)]
    result = runner.invoke(predict, [*images, "--model", str(chief_dir / "best_model.h5"), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and all(0 <= p <= 1 for r in records for p in r["probabilities"].values())


def test_two_workers_train_simclr(small_set, tmp_path):
    command = ["train-simclr", str(small_set / "images"), "--backbone", "small_cnn", "--image-size", "32",
               "--epochs", "1", "--batch-size", "32", "--embedding-dim", "8", "--projection-dim", "8"]
    (chief_rc, _, chief_err), (worker_rc, _, worker_err) = run_cluster(tmp_path, command)
    assert chief_rc == 0, chief_err[-3000:]
    assert worker_rc == 0, worker_err[-3000:]
    assert (tmp_path / "host0" / "run" / "embedding_model.keras").is_file()
    assert not (tmp_path / "host1" / "run").exists()


@pytest.mark.parametrize("tf_config, expected", [
    (None, "TF_CONFIG is not set"),
    ("{cluster", "TF_CONFIG: not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "worker", "index": 2}}', "'task' must name"),
])
def test_a_missing_or_bad_tf_config_is_one_line(tiny_set, tmp_path, runner, monkeypatch, tf_config, expected):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    root = tiny_set[0]
    args = ["--data-csv", str(root / "label.txt"), "--img-directory", str(root / "images"), *SMALL,
            "--strategy", "multiworker", "--output-dir", str(tmp_path / "run")]
    result = runner.invoke(train, args)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert expected in line and "TF_CONFIG='{\"cluster\"" in line
    assert not (tmp_path / "run").exists()


def test_train_simclr_refuses_multiworker_without_tf_config(tiny_set, tmp_path, runner, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = runner.invoke(train_simclr, [str(tiny_set[0] / "images"), "--strategy", "multiworker", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 1 and "TF_CONFIG is not set" in one_line_error(result)


def test_worker_rows_cover_every_row_with_equal_shares():
    from image_toolkit.models.runtime import worker_rows

    shares = [worker_rows(7, 3, index) for index in range(3)]
    assert [len(share) for share in shares] == [3, 3, 3]
    assert sorted(set(np.concatenate(shares))) == list(range(7))
    assert list(shares[0]) == [0, 3, 6] and list(shares[2]) == [2, 5, 1]


@pytest.mark.parametrize("extra, says", [
    (["--resume"], "--resume does not work with --strategy multiworker"),
    (["--task", "multiclass", "--class-weight", "balanced"], "--class-weight balanced with --task multiclass"),
])
def test_what_a_cluster_cannot_do_yet_is_refused_before_it_starts(tiny_set, tmp_path, runner, extra, says):
    root = tiny_set[0]
    args = ["--data-csv", str(root / "label.txt"), "--img-directory", str(root / "images"), *SMALL,
            "--strategy", "multiworker", "--output-dir", str(tmp_path / "run"), *extra]
    result = runner.invoke(train, args)
    assert result.exit_code == 2 and says in one_line_error(result)
    assert not (tmp_path / "run").exists()
