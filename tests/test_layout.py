"""The package as installed: one name in site-packages, and layers that run one way (import-linter)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = ("cli", "models", "data_tools")


def test_the_wheel_holds_one_top_level_package(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("image_toolkit-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"image_toolkit"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "image_toolkit/data_tools/web/static/app.js" in names
    assert "image_toolkit/data_tools/search/imagenet_class_index.json" in names


def test_a_user_project_with_packages_named_like_ours_keeps_both(tmp_path):
    """A user's own `models/`, `cli/`, `data_tools/` neither break the toolkit nor get replaced by it."""
    for name in PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for command in ([str(BIN / "toolkit"), "--help"], [str(BIN / "toolkit"), "train", "--help"],
                    [sys.executable, str(REPO / "train.py"), "--help"], [sys.executable, str(REPO / "inference.py"), "--help"]):
        done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Usage:" in done.stdout, (command, done.stderr)
    own = subprocess.run([sys.executable, "-c", "import cli, models, data_tools; print(models.OWNER, cli.OWNER, data_tools.OWNER)"],
                         cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60)
    assert own.stdout.strip() == "user models user cli user data_tools", own.stderr


def _lint(config: Path, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath:
        environment["PYTHONPATH"] = pythonpath
    return subprocess.run([str(BIN / "lint-imports"), str(config)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_layers_and_acyclic_contracts_are_kept():
    done = _lint(REPO / "setup.cfg", REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" not in done.stdout.lower().replace("0 broken", "")


def test_a_wrong_way_import_breaks_the_layers_contract(tmp_path):
    """The contract can fail: a copy of the package where data_tools imports models is refused."""
    package = tmp_path / "image_toolkit"
    for name in PACKAGES:
        shutil.copytree(REPO / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    labels = package / "data_tools" / "formats" / "labels.py"
    labels.write_text(labels.read_text() + "\nfrom image_toolkit.models import runtime  # wrong way\n")
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    done = _lint(tmp_path / "setup.cfg", tmp_path, pythonpath=str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "image_toolkit.data_tools.formats.labels -> image_toolkit.models.runtime" in done.stdout
