"""The command line as a whole: help for every command, and a start that loads no TensorFlow."""

import subprocess
import sys

import click
import pytest

from image_toolkit.cli.main import COMMANDS, toolkit
from tests.conftest import one_line_error


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_an_example(runner, name):
    result = runner.invoke(toolkit, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_root_help_lists_every_command(runner):
    result = runner.invoke(toolkit, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_help_imports_no_tensorflow():
    code = (
        "import sys; from click.testing import CliRunner; from image_toolkit.cli.main import toolkit, COMMANDS; "
        "[CliRunner().invoke(toolkit, [name, '--help']) for name in COMMANDS]; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False False", done.stderr


def test_unknown_command_is_one_line_usage_error(runner):
    result = runner.invoke(toolkit, ["trian"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No such command 'trian'" in lines[0]


@pytest.mark.parametrize("raised", [KeyboardInterrupt, click.Abort])
def test_ctrl_c_exits_130_with_one_line_and_abort_exits_1(raised, capsys):
    from image_toolkit.cli.common import command

    @command("slow")
    def slow() -> None:
        """A command interrupted by the user (Ctrl-C) or aborted at a prompt."""
        raise raised()

    with pytest.raises(SystemExit) as stopped:
        slow.main([], prog_name="slow")
    lines = capsys.readouterr().err.strip().splitlines()
    if raised is KeyboardInterrupt:
        assert stopped.value.code == 130 and lines == ["Interrupted: outputs already in place are complete; partial ones were not kept."]
    else:
        assert stopped.value.code == 1 and lines == ["Aborted!"]


# A command line per output folder (first) or output file (second) option, the placeholder X being the wrong kind of path.
OUTPUT_PATHS = {
    "train --output_dir": (["train", "--output_dir", "X"], "file"),
    "train-siamese --output_dir": (["train-siamese", "meta.csv", "--output_dir", "X"], "file"),
    "train-simclr --output_dir": (["train-simclr", "meta.csv", "--output_dir", "X"], "file"),
    "assess --output_dir": (["assess", "model.keras", "meta.csv", "--output_dir", "X"], "file"),
    "experiment --output_dir": (["experiment", "--feedback", "feedback.csv", "--output_dir", "X"], "file"),
    "filter-images OUTPUT_DIR": (["filter-images", "images", "X"], "file"),
    "compute-distances OUTPUT_DIR": (["compute-distances", "features.npz", "X", "cosine", "5", "1"], "file"),
    "index build INDEX_DIR": (["index", "build", "features.npz", "X"], "file"),
    "make-metadata OUTPUT_CSV": (["make-metadata", "images", "X"], "folder"),
    "get-transfer-layer OUTPUT_PATH": (["get-transfer-layer", "images", "X"], "folder"),
    "merge-features OUTPUT_PATH": (["merge-features", "features.npz", "features.npz", "X"], "folder"),
    "feedback export --output": (["feedback", "export", "--output", "X"], "folder"),
    "resample --output": (["resample", "train.csv", "feedback.csv", "--ratio", "deselected=2", "--output", "X"], "folder"),
    "tsne --output": (["tsne", "features.npz", "--output", "X"], "folder"),
    "search --output": (["search", "index", "--text", "cat", "--output", "X"], "folder"),
}


@pytest.mark.parametrize("name", list(OUTPUT_PATHS))
def test_a_file_for_a_folder_or_a_folder_for_a_file_is_one_usage_error(runner, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    for folder in ("images", "index"):
        (tmp_path / folder).mkdir()
    for file in ("meta.csv", "model.keras", "feedback.csv", "features.npz", "train.csv"):
        (tmp_path / file).write_text("image\n")
    args, wrong = OUTPUT_PATHS[name]
    if wrong == "file":
        (tmp_path / "X").write_text("precious")
    else:
        (tmp_path / "X").mkdir()
    result = runner.invoke(toolkit, args)
    assert result.exit_code == 2, result.output
    assert "'X'" in one_line_error(result) and ("is a file" in result.stderr or "is a directory" in result.stderr)
    assert (tmp_path / "X").is_dir() or (tmp_path / "X").read_text() == "precious"
