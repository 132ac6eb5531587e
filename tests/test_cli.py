"""The command line as a whole: help for every command, and a start that loads no TensorFlow."""

import subprocess
import sys

import pytest

from image_toolkit.cli.main import COMMANDS, toolkit


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
