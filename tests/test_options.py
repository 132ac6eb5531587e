"""Option names: dashed names shown, the original underscore spellings and old names kept as aliases,
one name per idea, --quiet / --json everywhere, errors naming the command typed, and toolkit demo-data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from image_toolkit.cli.common import COMMON_ALIASES, ToolkitCommand, canonical_args
from image_toolkit.cli.main import COMMANDS, toolkit
from tests.conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]


def leaf_commands() -> dict[str, click.Command]:
    """Every command a user can run, nested ones (index build, feedback import) included: path -> command."""
    context = click.Context(toolkit)
    found = {}
    for name in COMMANDS:
        command = toolkit.get_command(context, name)
        if isinstance(command, click.Group):
            for sub in command.list_commands(context):
                found[f"{name} {sub}"] = command.get_command(context, sub)
        else:
            found[name] = command
    return found


LEAVES = leaf_commands()


def options_of(command: click.Command) -> list[click.Option]:
    return [param for param in command.params if isinstance(param, click.Option)]


def parsed(path: str, args: list[str]) -> dict:
    """The parameters a command line gives the command's function, without running it."""
    return LEAVES[path].make_context(path, list(args)).params


# --- 1. Dashed names, underscore spellings accepted --------------------------------------------------


@pytest.mark.parametrize("path", list(LEAVES))
def test_every_option_is_declared_dashed_and_help_shows_no_underscore_spelling(runner, path):
    command = LEAVES[path]
    assert isinstance(command, ToolkitCommand)
    for option in options_of(command):
        for name in option.opts + option.secondary_opts:
            assert "_" not in name, f"{path}: {name}"
    result = runner.invoke(toolkit, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert not re.findall(r"(?<![\w-])--[a-z0-9]+_[a-z0-9_]+", result.output), result.output  # examples too


@pytest.mark.parametrize("path", list(LEAVES))
def test_every_dashed_option_also_takes_its_underscore_spelling(path):
    options = options_of(LEAVES[path])
    for option in options:
        for name in option.opts:
            if name.startswith("--") and "-" in name[2:]:
                old = "--" + name[2:].replace("-", "_")
                assert canonical_args([old], options, {}) == [name]
                assert canonical_args([f"{old}=3"], options, {}) == [f"{name}=3"]


def test_original_train_spelling_reaches_the_same_options():
    old = parsed("train", ["--data_csv", "a.txt", "--img_directory", "imgs", "--output_dir", "out", "--image_size", "32",
                           "--fine_tune", "--batch_size=8", "--val_split", "0.3"])
    new = parsed("train", ["--data-csv", "a.txt", "--img-directory", "imgs", "--output-dir", "out", "--image-size", "32",
                           "--fine-tune", "--batch-size=8", "--val-split", "0.3"])
    assert old == new
    assert old["data_csv"] == "a.txt" and old["image_size"] == 32 and old["batch_size"] == 8 and old["fine_tune"]


def test_values_and_everything_after_a_bare_double_dash_are_left_alone():
    options = options_of(LEAVES["search"])
    args = ["--text", "--n_threads", "--n_threads", "2", "--", "--n_threads"]
    assert canonical_args(args, options, {"--n_threads": "--n-jobs"}) == ["--text", "--n_threads", "--n-jobs", "2", "--", "--n_threads"]
    assert canonical_args(["-o", "--min_similarity", "-k", "3"], options, {}) == ["-o", "--min_similarity", "-k", "3"]


def test_an_unknown_option_is_still_one_line_no_such_option(runner):
    result = runner.invoke(toolkit, ["make-metadata", "--data_sv", "x"])
    assert result.exit_code == 2
    assert "No such option" in one_line_error(result)


def test_original_script_spelling_runs_end_to_end(runner, tmp_path):
    from image_toolkit.data_tools.make_demo_data import write_digit_folders

    write_digit_folders(tmp_path / "digits", n_images=60, image_size=8)
    for spelling in ("--test_split", "--test-split"):
        out = tmp_path / f"meta{spelling}.csv"
        result = runner.invoke(toolkit, ["make-metadata", str(tmp_path / "digits"), str(out), spelling, "0.5", "--quiet"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "meta--test_split.csv").read_text() == (tmp_path / "meta--test-split.csv").read_text()


# --- 2. One idea, one name; old names kept --------------------------------------------------------------


@pytest.mark.parametrize("path", list(LEAVES))
def test_every_alias_names_an_option_of_its_command(path):
    command = LEAVES[path]
    declared = {name for option in options_of(command) for name in option.opts}
    for old, new in command.aliases.items():
        if old in COMMON_ALIASES and new not in declared:
            continue  # a shared old name, for the commands that have its new one
        assert new in declared, f"{path}: alias {old} -> {new}"
        assert old not in declared, f"{path}: {old} is both an alias and an option"


def test_one_name_per_idea_across_commands():
    names = {path: {name for option in options_of(command) for name in option.opts} for path, command in LEAVES.items()}
    every = set().union(*names.values())
    for old in ("--model-weights", "--images", "--labels", "--n-threads", "--M", "--output-path", "--out"):
        assert old not in every, old
    for path, declared in names.items():
        assert not {"--n-threads", "--n-cores"} & declared
        if "--output" in declared:
            assert "-o" in declared, path  # -o/--output: an output file, everywhere


@pytest.mark.parametrize("path, args, param, value", [
    ("predict", ["x.png", "--model_weights", "m.h5"], "model_weights", "m.h5"),
    ("predict", ["x.png", "--model-weights", "m.h5"], "model_weights", "m.h5"),
    ("predict", ["x.png", "--model", "m.h5"], "model_weights", "m.h5"),
    ("index build", ["FEATURES", "out", "--M", "16"], "m", 16),
    ("index build", ["FEATURES", "out", "--m", "16"], "m", 16),
    ("index build", ["FEATURES", "out", "--n_threads", "2"], "n_threads", 2),
    ("index add", ["DIR", "FEATURES", "--n-jobs", "2"], "n_threads", 2),
    ("search", ["DIR", "--n_threads", "3"], "n_threads", 3),
    ("search", ["DIR", "--n_jobs", "3"], "n_threads", 3),
    ("tsne", ["FEATURES", "--n_jobs", "2"], "n_jobs", 2),
    ("tsne", ["FEATURES", "--n_threads", "2"], "n_jobs", 2),
    ("tsne", ["FEATURES", "--labels", "FILE"], "labels", "FILE"),
    ("tsne", ["FEATURES", "--data_csv", "FILE"], "labels", "FILE"),
    ("feedback simulate", ["--data-csv", "FILE", "--features", "FEATURES", "-o", "e.jsonl", "--n_jobs", "2"], "n_jobs", 2),
    ("serve", ["DIR", "--images", "DIR"], "images_dir", "DIR"),
    ("serve", ["DIR", "--img_directory", "DIR"], "images_dir", "DIR"),
    ("serve", ["DIR", "--img-directory", "DIR", "--labels", "FILE"], "labels", "FILE"),
    ("serve", ["DIR", "--img-directory", "DIR", "--max_upload_mb", "2"], "max_upload_mb", 2.0),
    ("search", ["DIR", "--text", "cat", "-o", "r.csv"], "output", "r.csv"),
])
def test_old_names_are_aliases_of_the_new_ones(tmp_path, monkeypatch, path, args, param, value):
    monkeypatch.chdir(tmp_path)
    Path("DIR").mkdir()
    Path("FILE").write_text("image\n")
    Path("FEATURES").write_text("")
    got = parsed(path, args)[param]
    assert (str(got) if isinstance(got, Path) else got) == value


def test_compute_distances_takes_n_cores_positionally_or_as_n_jobs(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("f.npz").write_text("")
    assert parsed("compute-distances", ["f.npz", "out", "cosine", "5", "-1"])["n_cores"] == -1
    assert parsed("compute-distances", ["f.npz", "out", "cosine", "5", "--n-jobs", "-1"])["n_jobs"] == -1
    assert parsed("compute-distances", ["f.npz", "out", "cosine", "5", "--n_jobs", "2"])["n_jobs"] == 2
    result = runner.invoke(toolkit, ["compute-distances", "f.npz", "out", "cosine", "5", "2", "--n-jobs", "3"])
    assert result.exit_code == 2
    assert "given twice" in one_line_error(result) and not Path("out").exists()


# --- 3. Two spellings of one option together ---------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["train", "--data-csv", "a", "--data_csv", "b"],
     "Error: --data-csv was given twice, as --data-csv and --data_csv; give it once. (see 'toolkit train --help')"),
    (["train", "--data_csv=a", "--data-csv", "b"], "Error: --data-csv was given twice, as --data_csv and --data-csv; give it once."),
    (["predict", "x.png", "--model", "a", "--model_weights", "b"], "Error: --model was given twice, as --model and --model_weights; give it once."),
    (["index", "build", "f", "out", "--M", "8", "--m", "8"], "Error: --m was given twice, as --M and --m; give it once."),
    (["feedback", "export", "-o", "a.csv", "--output", "b.csv"], "Error: --output was given twice, as -o and --output; give it once."),
])
def test_two_spellings_of_one_option_are_one_usage_error(runner, args, message):
    result = runner.invoke(toolkit, args)
    assert result.exit_code == 2
    assert one_line_error(result).startswith(message)


def test_the_same_spelling_twice_keeps_clicks_behaviour(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("FILE").write_text("image\n")
    assert parsed("train", ["--seed", "1", "--seed", "2"])["seed"] == 2
    assert parsed("resample", ["FILE", "FILE", "--ratio", "a=1", "--ratio", "b=2", "-o", "x"])["ratios"] == ("a=1", "b=2")


# --- 4. --quiet and --json ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(LEAVES))
def test_every_command_has_quiet_and_json(path):
    names = {name for option in options_of(LEAVES[path]) for name in option.opts}
    assert {"--quiet", "--json"} <= names, path


def test_quiet_runs_print_nothing_and_json_prints_json_alone(runner, tmp_path):
    digits, labelled = tmp_path / "digits", tmp_path / "labelled"
    runs = [
        ["demo-data", str(digits), "--layout", "folders", "--n-images", "80", "--image-size", "8"],
        ["demo-data", str(labelled), "--n-images", "20", "--image-size", "8"],
        ["make-metadata", str(digits), str(tmp_path / "metadata.csv")],
        ["filter-images", str(digits), str(tmp_path / "kept"), "--min-size", "8", "--min_per_class", "2"],
    ]
    for args in runs:
        result = runner.invoke(toolkit, [*args, "--quiet"])
        assert result.exit_code == 0, result.output
        assert result.stdout == "" and result.stderr == "", (args, result.output)
    assert (tmp_path / "kept" / "metadata.csv").exists()
    result = runner.invoke(toolkit, ["make-metadata", str(digits), str(tmp_path / "again.csv"), "--quiet", "--json"])
    assert result.exit_code == 0 and result.stderr == ""
    record = json.loads(result.stdout)
    assert record["rows"] == 80 and record["classes"] == 10
    result = runner.invoke(toolkit, ["filter-images", str(digits), str(tmp_path / "kept2"), "--min-size", "8",
                                     "--min-per-class", "2", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["steps"][0] == {"step": "found in class folders", "images": 80}


def test_serve_json_prints_one_line_with_the_url(runner, tmp_path, monkeypatch):
    import types

    import uvicorn

    import image_toolkit.data_tools.web.app as web

    fake = types.SimpleNamespace(state=types.SimpleNamespace(collection=types.SimpleNamespace(names=["a.png", "b.png"])))
    monkeypatch.setattr(web, "missing_extra", lambda: None)
    monkeypatch.setattr(web, "create_app", lambda *args, **kwargs: fake)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr("image_toolkit.cli.serve.check_port", lambda host, port: None)  # 8123 and 8000 stay unbound.
    (tmp_path / "index").mkdir()
    result = runner.invoke(toolkit, ["serve", str(tmp_path / "index"), "--images", str(tmp_path), "--port", "8123", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"url": "http://127.0.0.1:8123/", "images": 2, "db": "feedback.sqlite"}
    assert result.stderr == ""
    result = runner.invoke(toolkit, ["serve", str(tmp_path / "index"), "--img-directory", str(tmp_path), "--quiet"])
    assert result.exit_code == 0 and result.output == ""


# --- 5. toolkit demo-data -------------------------------------------------------------------------------------


def test_demo_data_writes_the_shipped_layout_and_class_folders(runner, tmp_path):
    from PIL import Image

    result = runner.invoke(toolkit, ["demo-data", str(tmp_path / "demo"), "--n-images", "12", "--image-size", "16", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and "12 digit images" in result.stdout
    lines = (tmp_path / "demo" / "label.txt").read_text().splitlines()
    assert lines[0] == "image,even,prime,five_or_more,closed_loop" and len(lines) == 13
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["images", "label.txt"]  # no staging folder left
    assert Image.open(tmp_path / "demo" / "images" / "0000.png").size == (16, 16)

    result = runner.invoke(toolkit, ["demo-data", str(tmp_path / "folders"), "--layout", "folders", "--n-images", "50", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 50
    classes = sorted(p.name for p in (tmp_path / "folders").iterdir())
    assert len(classes) == 10 and "zero" in classes
    assert sum(1 for _ in (tmp_path / "folders").rglob("*.png")) == 50
    assert not list(tmp_path.glob(".folders.*"))


def test_demo_data_refuses_to_mix_into_existing_data(runner, tmp_path):
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    result = runner.invoke(toolkit, ["demo-data", str(tmp_path / "photos"), "--layout", "folders"])
    assert result.exit_code == 1 and "not an empty folder" in one_line_error(result)
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cats"]
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "label.txt").write_text("precious")
    result = runner.invoke(toolkit, ["demo-data", str(tmp_path / "here")])
    assert result.exit_code == 1 and "already holds label.txt" in one_line_error(result)
    assert (tmp_path / "here" / "label.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()  # an empty folder is fine, and so is a folder holding other files (labels layout)
    assert runner.invoke(toolkit, ["demo-data", str(tmp_path / "empty"), "--layout", "folders", "--n-images", "10", "--quiet"]).exit_code == 0
    assert runner.invoke(toolkit, ["demo-data", str(tmp_path / "here" / ".."), "--n-images", "5", "--quiet"]).exit_code == 0


@pytest.mark.parametrize("layout", ["folders", "labels"])
def test_demo_data_leaves_nothing_behind_when_it_fails(tmp_path, monkeypatch, layout):
    import image_toolkit.data_tools.make_demo_data as demo
    from image_toolkit.cli.demo import demo_data

    calls = []

    def failing(scan, size):
        calls.append(size)
        if len(calls) > 5:
            raise OSError("disk full")
        return original(scan, size)

    original = demo.digit_image
    monkeypatch.setattr(demo, "digit_image", failing)
    target = tmp_path / "new" / "demo"
    with pytest.raises(OSError, match="disk full"):
        demo_data.main([str(target), "--layout", layout, "--n-images", "20", "--quiet"], standalone_mode=False)
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


# --- 6. Errors name the command the user typed -----------------------------------------------------------------


@pytest.mark.parametrize("command, shown", [
    ([sys.executable, "train.py", "--zzz"], "train.py"),
    ([sys.executable, "inference.py", "x.png", "--zzz"], "inference.py"),
    ([sys.executable, "-m", "image_toolkit.cli.main", "train", "--zzz"], "toolkit train"),
    ([sys.executable, "-m", "image_toolkit.cli.main", "index", "build", "--zzz"], "toolkit index build"),
])
def test_usage_errors_name_the_command_typed(command, shown):
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"Error: No such option '--zzz'. (see '{shown} --help')"
