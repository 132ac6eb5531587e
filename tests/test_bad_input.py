"""Bad input to every command: one `Error: ...` line naming the file, the right exit code, nothing left behind.

One table of cases. Each case copies a small, valid working folder (the
`workspace` below) into its own tmp_path, damages it with its `setup`, runs
its command line there through CliRunner, and asserts: the exit code (2 for
usage, 1 for data or environment), one line on stderr that contains the
expected text (the file or option at fault), no traceback, and no file or
folder added, changed or removed anywhere in the folder (the inputs included:
a refused run must not have overwritten them).

`{ro}` in a command line is a folder nobody may write into: a folder made
read-only with chmod, or, for root (whom chmod does not stop), /sys, where
even root cannot create a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from image_toolkit.cli.main import toolkit
from tests.conftest import one_line_error

Setup = Callable[[Path], None]
BINARY = bytes(range(256)) * 8  # NUL bytes and invalid UTF-8


# --- The valid workspace every case starts from ---------------------------------------------------


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A folder of small, valid inputs for every command (no TensorFlow).

    label.txt + images/ (24 digits, 32 px, multi-label), classes.csv (the
    same images, multiclass), digits/ (60 digits in class folders) with
    metadata.csv, features.npz (24 x 8) and a flat index of it, events.jsonl,
    feedback.sqlite and its export image_feedback.csv, afile (a plain file,
    for outputs under a file).
    """
    from click.testing import CliRunner

    from image_toolkit.data_tools.formats.features import FeatureSet, write_features
    from image_toolkit.data_tools.formats.metadata import make_metadata
    from image_toolkit.data_tools.make_demo_data import write_digit_folders, write_digits_dataset

    root = tmp_path_factory.mktemp("workspace")
    table = write_digits_dataset(root, n_images=24, image_size=32, blank_fraction=0.0, seed=2)
    names, classes = list(table["image"]), list(table["digit_name"])
    (root / "classes.csv").write_text("image,label\n" + "".join(f"{i},{c}\n" for i, c in zip(names, classes)))
    write_digit_folders(root / "digits", n_images=60, image_size=32)
    make_metadata(root / "digits", root / "metadata.csv")
    metadata = {"model": "pixels", "output": "pooled", "image_size": 8, "weights": "none"}
    rows = np.random.default_rng(0).random((24, 8), dtype=np.float32)
    write_features(root / "features.npz", FeatureSet(names, rows, metadata))
    events = [{"user": "ann", "session": "s1", "timestamp": "2024-05-01T12:30:00Z", "query_class": classes[0],
               "action": action, "images": names[:4]} for action in ("lasso", "deselect")]
    (root / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    (root / "afile").write_text("a file, not a folder\n")
    runner = CliRunner()
    for argv in (["index", "build", "features.npz", "index", "--kind", "flat", "--quiet"],
                 ["feedback", "import", "events.jsonl", "--data-csv", "classes.csv", "--db", "feedback.sqlite", "--quiet"],
                 ["feedback", "export", "--db", "feedback.sqlite", "-o", "image_feedback.csv", "--quiet"]):
        with _cwd(root):
            result = runner.invoke(toolkit, argv)
        assert result.exit_code == 0, result.output
    return root


class _cwd:
    """chdir for a block (monkeypatch.chdir is function-scoped; the workspace is built once)."""

    def __init__(self, path: Path):
        self.path, self.old = path, None

    def __enter__(self):
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc):
        os.chdir(self.old)


@pytest.fixture(scope="session")
def read_only() -> Callable[[Path], str]:
    """How a case gets a folder it cannot write into: chmod 555, or /sys for root."""
    if os.geteuid() != 0:
        def make(root: Path) -> str:
            folder = root / "ro"
            folder.mkdir()
            folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
            return str(folder)
        return make
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except PermissionError:
        return lambda root: "/sys"
    except OSError:  # no /sys here
        pass
    pytest.skip("running as root and /sys is writable: no folder here refuses a write")


# --- Setups: what a case writes into its copy of the workspace ------------------------------------


def text(name: str, content: str) -> Setup:
    def setup(root: Path) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return setup


def data(name: str, content: bytes) -> Setup:
    def setup(root: Path) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return setup


def folder(name: str) -> Setup:
    return lambda root: (root / name).mkdir(parents=True, exist_ok=True)


def truncated(source: str, name: str, keep: float = 0.5) -> Setup:
    """The first `keep` share of a workspace file, as `name`."""
    def setup(root: Path) -> None:
        content = (root / source).read_bytes()
        (root / name).write_bytes(content[: int(len(content) * keep)])
    return setup


def npz(name: str, **arrays) -> Setup:
    """A .npz holding exactly `arrays` (for malformed feature files)."""
    return lambda root: np.savez(root / name, **arrays)


def features(name: str, n: int = 24, dim: int = 8, **metadata) -> Setup:
    """A valid feature file of the workspace's first `n` images, `dim` wide, with its own metadata."""
    def setup(root: Path) -> None:
        from image_toolkit.data_tools.formats.features import FeatureSet, write_features

        names = sorted(path.name for path in (root / "images").iterdir())[:n]
        meta = {"model": "pixels", "output": "pooled", "image_size": 8, "weights": "none", **metadata}
        write_features(root / name, FeatureSet(names, np.ones((n, dim), np.float32) * np.arange(dim), meta))
    return setup


def corrupt_images(where: str) -> Setup:
    """Every image under `where` replaced by text."""
    def setup(root: Path) -> None:
        for path in (root / where).rglob("*.png"):
            path.write_text("not an image")
    return setup


def both(*setups: Setup) -> Setup:
    def setup(root: Path) -> None:
        for step in setups:
            step(root)
    return setup


def nothing(root: Path) -> None:
    return None


EMPTY_CSV = text("bad.csv", "")
BINARY_CSV = data("bad.csv", BINARY)
HEADER_ONLY = text("bad.csv", "image,even\n")
NO_IMAGE_COLUMN = text("bad.csv", "file,even\n0000.png,1\n")
# Two classes of 12 images (even, odd): a test split the experiment accepts.
TWO_CLASSES = text("two.csv", "image,label\n" + "".join(f"{i:04d}.png,{('even', 'odd')[i % 2]}\n" for i in range(24)))
BROKEN_CSV = text("bad.csv", 'image,even\n0000.png,1\n"0001.png,0\n0002.png,1,1,1\n')


def case(case_id: str, argv: str, code: int, expected: str, setup: Setup = nothing, *,
         needs: str | None = None, misleading: str | None = None):
    """One row of the table: `argv` is split like a shell line after `{ro}` is filled in.

    `expected` must be in the error line, `misleading` must not (a wrong
    diagnosis, e.g. "File not found" for a file that is there). `needs`
    names a trained model the case copies in (the `trained` fixture).
    """
    return pytest.param(argv, code, expected, misleading, setup, needs, id=case_id)


CASES = [
    # --- demo-data ---
    case("demo-onto-file", "demo-data afile", 2, "afile"),
    case("demo-under-file", "demo-data afile/sub", 2, "afile"),
    case("demo-into-read-only", "demo-data {ro}", 1, "{ro}"),
    case("demo-read-only", "demo-data {ro}/demo", 1, "{ro}"),
    case("demo-existing-labels", "demo-data .", 1, "label.txt"),
    case("demo-folders-not-empty", "demo-data digits --layout folders", 1, "digits"),
    case("demo-folders-onto-file", "demo-data afile --layout folders", 2, "afile"),
    case("demo-folders-under-file", "demo-data afile/sub --layout folders", 2, "afile"),
    case("demo-folders-read-only", "demo-data {ro}/d --layout folders", 1, "{ro}"),
    case("demo-folders-zero-images", "demo-data new --layout folders --n-images 0", 2, "--n-images"),
    case("demo-unknown-layout", "demo-data new --layout grid", 2, "--layout"),
    case("demo-zero-images", "demo-data new --n-images 0", 2, "--n-images"),
    case("demo-too-many-images", "demo-data new --n-images 5000", 2, "--n-images"),
    case("demo-tiny-images", "demo-data new --image-size 4", 2, "--image-size"),
    case("demo-seed-not-int", "demo-data new --seed one", 2, "--seed"),
    case("demo-two-spellings", "demo-data new --n-images 5 --n_images 6", 2, "given twice"),
    case("demo-no-folder", "demo-data", 2, "OUTPUT_DIR"),
    # --- train (all refused before a model is built) ---
    case("train-csv-missing", "train --data-csv missing.csv --output-dir out", 1, "missing.csv"),
    case("train-csv-empty", "train --data-csv bad.csv --output-dir out", 1, "bad.csv", EMPTY_CSV),
    case("train-csv-binary", "train --data-csv bad.csv --output-dir out", 1, "bad.csv", BINARY_CSV),
    case("train-csv-header-only", "train --data-csv bad.csv --output-dir out", 1, "bad.csv", HEADER_ONLY),
    case("train-csv-no-image-column", "train --data-csv bad.csv --output-dir out", 1, "bad.csv", NO_IMAGE_COLUMN),
    case("train-csv-broken-rows", "train --data-csv bad.csv --output-dir out", 1, "bad.csv", BROKEN_CSV),
    case("train-csv-bad-label", "train --data-csv bad.csv --output-dir out", 1, "bad.csv",
         text("bad.csv", "image,even\n0000.png,1\n0001.png,yes\n")),
    case("train-csv-duplicate-image", "train --data-csv bad.csv --output-dir out", 1, "bad.csv",
         text("bad.csv", "image,even\n0000.png,1\n0000.png,0\n")),
    case("train-csv-repeated-column", "train --data-csv bad.csv --output-dir out", 1, "bad.csv",
         text("bad.csv", "image,even,even\n0000.png,1,0\n0001.png,0,1\n")),
    case("train-csv-unnamed-column", "train --data-csv bad.csv --output-dir out", 1, "bad.csv",
         text("bad.csv", "image,even,\n0000.png,1,\n0001.png,0,\n")),
    case("train-multiclass-no-label-column", "train --task multiclass --output-dir out", 1, "label.txt"),
    case("train-background-malformed", "train --output-dir out --background pink", 2, "--background"),
    case("train-background-out-of-range", "train --output-dir out --background 0,0,256", 2, "--background"),
    case("train-img-directory-missing", "train --img-directory nowhere --output-dir out", 1, "nowhere"),
    case("train-images-all-corrupt", "train --output-dir out --backbone small_cnn --weights none --image-size 32",
         1, "no readable image", corrupt_images("images")),
    case("train-img-directory-is-file", "train --img-directory afile --output-dir out", 1, "afile"),
    case("train-data-csv-is-folder", "train --data-csv images --output-dir out", 1, "images"),
    case("train-val-csv-missing", "train --train-csv label.txt --val-csv nowhere.csv --output-dir out", 1, "nowhere.csv"),
    case("train-val-csv-shares-images", "train --train-csv label.txt --val-csv label.txt --output-dir out", 1, "label.txt"),
    case("train-output-onto-file", "train --output-dir afile", 2, "afile"),
    case("train-output-under-file", "train --output-dir afile/sub", 2, "afile"),
    case("train-output-read-only", "train --output-dir {ro}/out --backbone small_cnn --weights none --image-size 32",
         1, "{ro}"),
    case("train-head-units-zero", "train --head-units 0", 2, "--head-units"),
    case("train-image-size-tiny", "train --image-size 4", 2, "--image-size"),
    case("train-unknown-class-weight", "train --class-weight heavy", 2, "--class-weight"),
    case("train-unknown-strategy", "train --strategy tpu", 2, "--strategy"),
    case("train-epochs-zero", "train --epochs 0", 2, "--epochs"),
    case("train-batch-size-zero", "train --batch-size 0", 2, "--batch-size"),
    case("train-learning-rate-zero", "train --learning-rate 0", 2, "--learning-rate"),
    case("train-val-split-one", "train --val-split 1", 2, "--val-split"),
    case("train-val-split-text", "train --val-split half", 2, "--val-split"),
    case("train-unknown-backbone", "train --backbone vgg99", 2, "--backbone"),
    case("train-unknown-task", "train --task regression", 2, "--task"),
    case("train-unknown-missing-labels", "train --missing-labels guess", 2, "--missing-labels"),
    case("train-unknown-precision", "train --precision fp8", 2, "--precision"),
    case("train-image-size-too-small-for-backbone", "train --backbone inceptionv3 --image-size 64", 2, "inceptionv3"),
    case("train-weights-file-missing", "train --backbone small_cnn --weights nowhere.h5 --output-dir out", 2, "nowhere.h5"),
    case("train-train-csv-without-val", "train --train-csv label.txt", 2, "--val-csv"),
    case("train-two-spellings", "train --data-csv label.txt --data_csv classes.csv", 2, "given twice"),
    case("train-resume-nothing", "train --resume --output-dir out --backbone small_cnn --weights none", 1, "out"),
    case("train-resume-run-damaged", "train --resume --output-dir out --backbone small_cnn --weights none", 1,
         "run.json", text("out/run.json", '{"options": {"epo')),
    case("train-resume-state-damaged", "train --resume --output-dir out --backbone small_cnn --weights none", 1,
         "train_state.json", both(text("out/run.json", "{}"), text("out/train_state.json", "[1, 2"))),
    case("train-resume-old-state-without-history", "train --resume --output-dir out --backbone small_cnn --weights none",
         1, "history.csv", both(text("out/run.json", "{}"), text("out/train_state.json", '{"epoch": 1, "best_score": 0.5}'))),
    case("train-unknown-option", "train --epoch 3", 2, "--epoch"),
    # --- predict ---
    case("predict-model-missing", "predict images --model nowhere.h5", 1, "nowhere.h5"),
    case("predict-model-text", "predict images --model fake.h5", 1, "fake.h5", text("fake.h5", "not a model")),
    case("predict-model-binary", "predict images --model fake.h5", 1, "fake.h5", data("fake.h5", BINARY)),
    case("predict-model-wrong-suffix", "predict images --model label.txt", 1, "label.txt"),
    case("predict-model-truncated-keras", "predict images --model cut.keras", 1, "cut.keras",
         data("cut.keras", b"PK\x03\x04" + BINARY[:200])),
    case("predict-model-is-folder", "predict images --model images", 1, "images"),
    case("predict-image-missing", "predict nowhere.png --model best_model.h5", 1, "nowhere.png", needs="classifier"),
    case("predict-folder-empty", "predict empty --model best_model.h5", 1, "empty", folder("empty"), needs="classifier"),
    case("predict-images-all-corrupt", "predict images --model best_model.h5", 1, "images",
         corrupt_images("images"), needs="classifier"),
    case("predict-model-is-an-image", "predict images --model images/0000.png", 1, "0000.png"),
    case("predict-unknown-runtime", "predict images --model best_model.h5 --runtime onnx", 2, "--runtime"),
    case("predict-precision-not-tensorflows", "predict images --model best_model.h5 --precision bf16", 2, "--precision bf16",
         needs="classifier"),
    case("predict-threshold-above-one", "predict images --threshold 2", 2, "--threshold"),
    case("predict-threshold-text", "predict images --threshold high", 2, "--threshold"),
    case("predict-batch-size-zero", "predict images --batch-size 0", 2, "--batch-size"),
    case("predict-two-spellings", "predict images --model a.h5 --model_weights b.h5", 2, "given twice"),
    case("predict-no-images", "predict", 2, "IMAGES"),
    # --- evaluate ---
    case("evaluate-model-missing", "evaluate nowhere.h5 label.txt", 2, "nowhere.h5"),
    case("evaluate-csv-missing", "evaluate best_model.h5 nowhere.csv", 2, "nowhere.csv", needs="classifier"),
    case("evaluate-model-text", "evaluate fake.h5 label.txt --output-dir out", 1, "fake.h5", text("fake.h5", "no")),
    case("evaluate-csv-binary", "evaluate best_model.h5 bad.csv --output-dir out", 1, "bad.csv", BINARY_CSV,
         needs="classifier"),
    case("evaluate-labels-differ", "evaluate best_model.h5 bad.csv --output-dir out", 1, "bad.csv",
         text("bad.csv", "image,seven\n0000.png,1\n"), needs="classifier"),
    case("evaluate-threshold-above-one", "evaluate best_model.h5 label.txt --threshold 1.5", 2, "--threshold"),
    case("evaluate-threshold-negative", "evaluate best_model.h5 label.txt --threshold -0.1", 2, "--threshold"),
    case("evaluate-output-onto-file", "evaluate best_model.h5 label.txt --output-dir afile", 2, "afile",
         needs="classifier"),
    case("evaluate-output-read-only", "evaluate best_model.h5 label.txt --output-dir {ro}/out", 1, "{ro}",
         needs="classifier"),
    # --- tune ---
    case("tune-max-trials-zero", "tune --max-trials 0", 2, "--max-trials"),
    case("tune-max-trials-alias-zero", "tune --max_trials 0", 2, "--max-trials"),
    case("tune-unknown-tuner", "tune --tuner random", 2, "--tuner"),
    case("tune-executions-zero", "tune --executions-per-trial 0", 2, "--executions-per-trial"),
    case("tune-csv-missing", "tune --data-csv missing.csv --output-dir out", 1, "missing.csv"),
    case("tune-csv-binary", "tune --data-csv bad.csv --output-dir out --backbone small_cnn --weights none", 1, "bad.csv",
         BINARY_CSV),
    case("tune-output-onto-file", "tune --output-dir afile", 2, "afile"),
    # --- export ---
    case("model-export-unknown-format", "export best_model.h5 --format tflite", 2, "--format", needs="classifier"),
    case("model-export-no-format", "export best_model.h5", 2, "--format", needs="classifier"),
    case("model-export-model-missing", "export nowhere.h5 --format onnx", 2, "nowhere.h5"),
    case("model-export-model-text", "export fake.h5 --format savedmodel", 1, "fake.h5", text("fake.h5", "no")),
    case("model-export-output-under-file", "export best_model.h5 --format onnx -o afile/m.onnx", 1, "afile",
         needs="classifier"),
    # --- probe ---
    case("probe-features-missing", "probe nowhere.npz", 2, "nowhere.npz"),
    case("probe-features-garbage", "probe bad.npz --output-dir out", 1, "bad.npz", data("bad.npz", BINARY)),
    case("probe-rows-do-not-match", "probe few.npz --data-csv classes.csv --task multiclass --output-dir out", 1,
         "few.npz", features("few.npz", n=3)),
    case("probe-csv-binary", "probe features.npz --data-csv bad.csv --output-dir out", 1, "bad.csv", BINARY_CSV),
    case("probe-output-onto-file", "probe features.npz --output-dir afile", 2, "afile"),
    case("probe-val-split-one", "probe features.npz --val-split 1", 2, "--val-split"),
    # --- make-metadata ---
    case("metadata-dir-missing", "make-metadata nowhere out.csv", 2, "nowhere"),
    case("metadata-dir-is-file", "make-metadata afile out.csv", 2, "afile"),
    case("metadata-dir-empty", "make-metadata empty out.csv", 1, "empty", folder("empty")),
    case("metadata-no-class-folders", "make-metadata images out.csv", 1, "images"),
    case("metadata-output-is-folder", "make-metadata digits images", 2, "images"),
    case("metadata-output-under-file", "make-metadata digits afile/out.csv", 1, "afile"),
    case("metadata-output-read-only", "make-metadata digits {ro}/out.csv", 1, "{ro}"),
    case("metadata-output-onto-an-image", "make-metadata digits digits/five/0004.png", 2, "0004.png"),
    case("metadata-test-split-one", "make-metadata digits out.csv --test-split 1", 2, "--test-split"),
    case("metadata-test-split-negative", "make-metadata digits out.csv --test-split -0.1", 2, "--test-split"),
    case("metadata-seed-text", "make-metadata digits out.csv --seed x", 2, "--seed"),
    case("metadata-two-spellings", "make-metadata digits out.csv --test-split 0.1 --test_split 0.2", 2, "given twice"),
    # --- filter-images ---
    case("filter-output-is-input", "filter-images digits digits --resize 16 --min-size 1 --min-per-class 1", 2, "digits"),
    case("filter-output-inside-input", "filter-images digits digits/sub --min-size 1 --min-per-class 1", 2, "digits"),
    case("filter-output-contains-input", "filter-images digits . --min-size 1 --min-per-class 1", 2, "digits"),
    case("filter-dir-missing", "filter-images nowhere out", 2, "nowhere"),
    case("filter-dir-empty", "filter-images empty out", 1, "empty", folder("empty")),
    case("filter-output-onto-file", "filter-images digits afile", 2, "afile"),
    case("filter-output-under-file", "filter-images digits afile/out --min-size 1 --min-per-class 1", 1, "afile"),
    case("filter-output-read-only", "filter-images digits {ro}/out --min-size 1 --min-per-class 1", 1, "{ro}"),
    case("filter-nothing-passes", "filter-images digits out --min-size 1000", 1, "--min-size"),
    case("filter-images-all-corrupt", "filter-images digits out --min-size 1 --min-per-class 1", 1, "digits",
         corrupt_images("digits")),
    case("filter-min-size-zero", "filter-images digits out --min-size 0", 2, "--min-size"),
    case("filter-min-per-class-zero", "filter-images digits out --min-per-class 0", 2, "--min-per-class"),
    case("filter-drop-outliers-one", "filter-images digits out --drop-outliers 1", 2, "--drop-outliers"),
    case("filter-drop-duplicates-other-features", "filter-images digits out --min-size 1 --min-per-class 1 --drop-duplicates "
         "--features features.npz", 1, "features.npz"),
    # --- inspect ---
    case("inspect-dir-missing", "inspect nowhere", 2, "nowhere"),
    case("inspect-dir-empty", "inspect empty", 1, "empty", folder("empty")),
    case("inspect-all-unreadable", "inspect digits", 1, "digits", corrupt_images("digits")),
    case("inspect-features-of-other-images", "inspect digits --features features.npz", 1, "features.npz"),
    case("inspect-csv-of-other-images", "inspect digits --data-csv label.txt", 1, "file not found"),
    case("inspect-metadata-csv-and-data-csv", "inspect metadata.csv --data-csv label.txt", 2, "--data-csv"),
    case("inspect-output-onto-file", "inspect images --data-csv label.txt --output-dir afile", 2, "afile"),
    case("inspect-output-read-only", "inspect images --data-csv label.txt --output-dir {ro}/out", 1, "{ro}"),
    case("inspect-duplicate-distance-two", "inspect images --duplicate-distance 2", 2, "--duplicate-distance"),
    case("inspect-k-zero", "inspect images --k 0", 2, "--k"),
    case("filter-sample-zero", "filter-images digits out --sample 0", 2, "--sample"),
    case("filter-resize-tiny", "filter-images digits out --resize 4", 2, "--resize"),
    # --- train-siamese (refused before a model is built, but for the single class) ---
    case("siamese-csv-missing", "train-siamese nowhere.csv", 2, "nowhere.csv"),
    case("siamese-csv-empty", "train-siamese bad.csv --output-dir out", 1, "bad.csv", EMPTY_CSV),
    case("siamese-csv-binary", "train-siamese bad.csv --output-dir out", 1, "bad.csv", BINARY_CSV),
    case("siamese-csv-no-class-column", "train-siamese bad.csv --output-dir out", 1, "bad.csv",
         text("bad.csv", "image,split\nfive/0004.png,train\n")),
    case("siamese-csv-broken-rows", "train-siamese bad.csv --output-dir out", 1, "bad.csv", BROKEN_CSV),
    case("siamese-images-missing", "train-siamese bad.csv --output-dir out --backbone small_cnn --image-size 32", 1, "bad.csv",
         text("bad.csv", "image,class,split\na.png,x,train\nb.png,y,train\nc.png,x,test\nd.png,y,test\n")),
    case("siamese-single-class", "train-siamese bad.csv --output-dir out --backbone small_cnn --image-size 32 --epochs 1",
         1, "bad.csv", text("bad.csv", "image,class,split,root\n" + "".join(
             f"five/{n},five,{s},digits\n" for n, s in (("0004.png", "train"), ("0016.png", "train"), ("0017.png", "test"))))),
    case("siamese-output-onto-file", "train-siamese metadata.csv --output-dir afile", 2, "afile"),
    case("siamese-output-under-file", "train-siamese metadata.csv --output-dir afile/sub", 2, "afile"),
    case("siamese-output-read-only", "train-siamese metadata.csv --output-dir {ro}/out --backbone small_cnn --image-size 32",
         1, "{ro}"),
    case("siamese-unknown-type", "train-siamese metadata.csv --type z", 2, "--type"),
    case("siamese-margin-zero", "train-siamese metadata.csv --margin 0", 2, "--margin"),
    case("siamese-positive-ratio-one", "train-siamese metadata.csv --positive-ratio 1", 2, "--positive-ratio"),
    case("siamese-epochs-zero", "train-siamese metadata.csv --epochs 0", 2, "--epochs"),
    case("siamese-batch-size-one", "train-siamese metadata.csv --batch-size 1", 2, "--batch-size"),
    case("siamese-unknown-backbone", "train-siamese metadata.csv --backbone vgg99", 2, "--backbone"),
    case("siamese-classes-per-batch-zero", "train-siamese metadata.csv --classes-per-batch 0", 2, "--classes-per-batch"),
    case("siamese-img-directory-missing", "train-siamese metadata.csv --img-directory nowhere --output-dir out", 1, "nowhere"),
    case("siamese-examples-without-classes", "train-siamese metadata.csv --examples-per-class 2 --output-dir out", 2,
         "--classes-per-batch"),
    # --- train-simclr ---
    case("siamese-background-malformed", "train-siamese metadata.csv --background 0,-1,0", 2, "--background"),
    case("simclr-path-missing", "train-simclr nowhere", 2, "nowhere"),
    case("simclr-folder-empty", "train-simclr empty --output-dir out", 1, "empty", folder("empty")),
    case("simclr-images-all-corrupt", "train-simclr images --output-dir out --backbone small_cnn --image-size 32", 1, "images",
         corrupt_images("images")),
    case("simclr-csv-binary", "train-simclr bad.csv --output-dir out", 1, "bad.csv", BINARY_CSV),
    case("simclr-temperature-zero", "train-simclr images --temperature 0 --output-dir out", 2, "temperature"),
    case("simclr-temperature-text", "train-simclr images --temperature warm", 2, "--temperature"),
    case("simclr-temperature-negative", "train-simclr images --temperature -1 --output-dir out", 2, "temperature"),
    case("simclr-projection-dim-zero", "train-simclr images --projection-dim 0", 2, "--projection-dim"),
    case("simclr-output-onto-file", "train-simclr images --output-dir afile", 2, "afile"),
    case("simclr-embedding-dim-zero", "train-simclr images --embedding-dim 0", 2, "--embedding-dim"),
    # --- assess ---
    case("assess-model-missing", "assess nowhere.keras metadata.csv", 2, "nowhere.keras"),
    case("assess-model-text", "assess fake.keras metadata.csv --output-dir out", 1, "fake.keras", text("fake.keras", "no"),
         misleading="File not found"),
    case("assess-model-truncated", "assess cut.keras metadata.csv --output-dir out", 1, "cut.keras",
         truncated("embedding_model.keras", "cut.keras"), needs="embedding", misleading="File not found"),
    case("assess-model-binary", "assess fake.h5 metadata.csv --output-dir out", 1, "fake.h5", data("fake.h5", BINARY)),
    case("assess-csv-missing", "assess fake.keras nowhere.csv", 2, "nowhere.csv", text("fake.keras", "no")),
    case("assess-csv-no-class-column", "assess embedding_model.keras bad.csv --output-dir out", 1, "bad.csv",
         text("bad.csv", "image,split\nfive/0004.png,test\n"), needs="embedding"),
    case("assess-unknown-split", "assess embedding_model.keras metadata.csv --split holdout --output-dir out", 1, "holdout",
         needs="embedding"),
    case("assess-img-directory-missing", "assess embedding_model.keras metadata.csv --img-directory nowhere "
         "--output-dir out", 1, "nowhere", needs="embedding"),
    case("assess-unknown-metric", "assess fake.keras metadata.csv --metric jaccard", 2, "--metric", text("fake.keras", "no")),
    case("assess-output-onto-file", "assess fake.keras metadata.csv --output-dir afile", 2, "afile", text("fake.keras", "no")),
    case("assess-output-read-only", "assess embedding_model.keras metadata.csv --output-dir {ro}/out", 1, "{ro}",
         needs="embedding"),
    case("assess-output-under-file", "assess embedding_model.keras metadata.csv --output-dir afile/out", 2, "afile",
         needs="embedding"),
    case("assess-search-missing", "assess fake.keras metadata.csv --search nowhere", 2, "nowhere", text("fake.keras", "no")),
    case("assess-search-other-features", "assess embedding_model.keras metadata.csv --search index --output-dir out", 1,
         "--search index", needs="embedding"),
]

# The two extraction commands take the same options: the same cases for both.
for name in ("get-inception-output", "get-transfer-layer"):
    short = "inception" if name == "get-inception-output" else "transfer"
    # A model that builds in no time: raw pixels have no class scores, so get-inception-output reads the classifier's.
    model, needs = ("--model best_model.h5", "classifier") if short == "inception" else ("--model pixels", None)
    CASES += [
        case(f"{short}-images-missing", f"{name} nowhere out.npz", 2, "nowhere"),
        case(f"{short}-output-is-folder", f"{name} images images", 2, "images"),
        case(f"{short}-output-suffix", f"{name} images out.txt {model}", 2, "out.txt", needs=needs),
        case(f"{short}-output-under-file", f"{name} images afile/out.npz {model}", 1, "afile", needs=needs),
        case(f"{short}-output-read-only", f"{name} images {{ro}}/out.npz {model}", 1, "{ro}", needs=needs),
        case(f"{short}-unknown-model", f"{name} images out.npz --model vgg99", 1, "vgg99"),
        case(f"{short}-model-text", f"{name} images out.npz --model fake.h5", 1, "fake.h5", text("fake.h5", "no")),
        case(f"{short}-model-truncated-keras", f"{name} images out.npz --model cut.keras", 1, "cut.keras",
             truncated("embedding_model.keras", "cut.keras"), needs="embedding", misleading="File not found"),
        case(f"{short}-image-size-tiny", f"{name} images out.npz --image-size 4", 2, "--image-size"),
        case(f"{short}-batch-size-zero", f"{name} images out.npz --batch-size 0", 2, "--batch-size"),
        case(f"{short}-unknown-precision", f"{name} images out.npz --precision fp8", 2, "--precision"),
        case(f"{short}-unknown-runtime", f"{name} images out.npz --runtime onnx", 2, "--runtime"),
        case(f"{short}-precision-not-tensorflows", f"{name} images out.npz --precision bf16", 2, "--precision bf16"),
        case(f"{short}-shard-out-of-range", f"{name} images out.npz {model} --num-shards 2 --shard-index 2", 2,
             "--shard-index", needs=needs),
        case(f"{short}-folder-empty", f"{name} empty out.npz {model}", 1, "empty", folder("empty"), needs=needs),
        case(f"{short}-images-all-corrupt", f"{name} images out.npz {model}", 1, "images", corrupt_images("images"),
             needs=needs),
        case(f"{short}-csv-no-image-column", f"{name} bad.csv out.npz {model}", 1, "bad.csv", NO_IMAGE_COLUMN, needs=needs),
        case(f"{short}-append-onto-garbage", f"{name} images bad.npz {model} --append", 1, "bad.npz",
             data("bad.npz", BINARY), needs=needs),
        case(f"{short}-weights-missing", f"{name} images out.npz --model resnet50 --weights nowhere.h5", 2, "nowhere.h5"),
        case(f"{short}-two-spellings", f"{name} images out.npz --image-size 32 --image_size 64", 2, "given twice"),
        case(f"{short}-background-malformed", f"{name} images out.npz --background 1,2", 2, "--background"),
    ]

CASES += [
    case("transfer-background-not-the-models", "get-transfer-layer images out.npz --model best_model.h5 --background black",
         2, "--background", needs="classifier"),
    case("transfer-append-other-model", "get-transfer-layer images features.npz --model pixels --image-size 16 --append", 1,
         "features.npz"),
    # --- compute-distances ---
    case("distances-features-missing", "compute-distances nowhere.npz out cosine 5", 2, "nowhere.npz"),
    case("distances-features-binary", "compute-distances bad.npz out cosine 5", 1, "bad.npz", data("bad.npz", BINARY)),
    case("distances-features-truncated", "compute-distances bad.npz out cosine 5", 1, "bad.npz",
         truncated("features.npz", "bad.npz")),
    case("distances-features-pickle-binary", "compute-distances bad.pkl out cosine 5", 1, "bad.pkl", data("bad.pkl", BINARY)),
    case("distances-features-h5-text", "compute-distances bad.h5 out cosine 5", 1, "bad.h5", text("bad.h5", "not hdf5")),
    case("distances-features-suffix", "compute-distances label.txt out cosine 5", 2, "label.txt"),
    case("distances-features-strings", "compute-distances bad.npz out cosine 5", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.array([["x", "y"], ["z", "w"]]))),
    case("distances-features-1d", "compute-distances bad.npz out cosine 5", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.array([1.0, 2.0], np.float32))),
    case("distances-features-3d", "compute-distances bad.npz out cosine 1", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.zeros((2, 2, 2), np.float32))),
    case("distances-features-nan", "compute-distances bad.npz out cosine 1", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.array([[1, np.nan], [0, 1]], np.float32))),
    case("distances-features-empty", "compute-distances bad.npz out cosine 1", 1, "bad.npz",
         npz("bad.npz", paths=np.array([], dtype=str), features=np.zeros((0, 4), np.float32))),
    case("distances-paths-mismatch", "compute-distances bad.npz out cosine 1", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a"]), features=np.zeros((3, 4), np.float32))),
    case("distances-no-paths", "compute-distances bad.npz out cosine 1", 1, "bad.npz",
         npz("bad.npz", features=np.zeros((3, 4), np.float32))),
    case("distances-queries-other-width", "compute-distances features.npz out cosine 5 --queries q.npz", 1, "q.npz",
         features("q.npz", n=3, dim=5)),
    case("distances-unknown-metric", "compute-distances features.npz out jaccard 5", 2, "jaccard"),
    case("distances-k-zero", "compute-distances features.npz out cosine 0", 2, "0"),
    case("distances-k-too-large", "compute-distances features.npz out cosine 500", 2, "500"),
    case("distances-k-text", "compute-distances features.npz out cosine five", 2, "five"),
    case("distances-cores-zero", "compute-distances features.npz out cosine 5 0", 2, "0"),
    case("distances-cores-twice", "compute-distances features.npz out cosine 5 2 --n-jobs 2", 2, "twice"),
    case("distances-max-memory-zero", "compute-distances features.npz out cosine 5 --max-memory 0", 2, "--max-memory"),
    case("distances-output-onto-file", "compute-distances features.npz afile cosine 5", 2, "afile"),
    case("distances-output-under-file", "compute-distances features.npz afile/out cosine 5", 2, "afile"),
    case("distances-output-read-only", "compute-distances features.npz {ro}/out cosine 5", 1, "{ro}"),
    case("distances-queries-garbage", "compute-distances features.npz out cosine 5 --queries bad.npz", 1, "bad.npz",
         data("bad.npz", BINARY)),
    case("distances-queries-nan", "compute-distances features.npz out cosine 1 --queries bad.npz", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.full((2, 8), np.nan, np.float32))),
    case("distances-threads-negative", "compute-distances features.npz out cosine 5 --n-jobs -5", 2, "-5"),
    # --- merge-features ---
    case("merge-output-suffix", "merge-features out.txt features.npz", 2, "out.txt"),
    case("merge-input-missing", "merge-features out.npz nowhere.npz", 2, "nowhere.npz"),
    case("merge-input-garbage", "merge-features out.npz bad.npz", 1, "bad.npz", data("bad.npz", BINARY)),
    case("merge-other-width", "merge-features out.npz features.npz wide.npz", 1, "wide.npz", features("wide.npz", n=3, dim=5)),
    case("merge-other-model", "merge-features out.npz features.npz other.npz", 1, "other.npz",
         features("other.npz", n=3, image_size=16)),
    case("merge-output-is-folder", "merge-features images features.npz", 2, "images"),
    case("merge-output-under-file", "merge-features afile/out.npz features.npz", 1, "afile"),
    case("merge-output-read-only", "merge-features {ro}/out.npz features.npz", 1, "{ro}"),
    case("merge-output-is-an-input", "merge-features features.npz features.npz more.npz", 2, "features.npz",
         features("more.npz", n=3)),
    case("merge-no-inputs", "merge-features out.npz", 2, "INPUT_PATHS"),
    # --- index build / add / info ---
    case("build-features-missing", "index build nowhere.npz idx", 2, "nowhere.npz"),
    case("build-features-garbage", "index build bad.npz idx", 1, "bad.npz", data("bad.npz", BINARY)),
    case("build-features-strings", "index build bad.npz idx", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.array([["x", "y"], ["z", "w"]]))),
    case("build-onto-file", "index build features.npz afile", 2, "afile"),
    case("build-under-file", "index build features.npz afile/idx", 2, "afile"),
    case("build-read-only", "index build features.npz {ro}/idx", 1, "{ro}"),
    case("build-existing-index", "index build features.npz index", 1, "index"),
    case("build-unknown-kind", "index build features.npz idx --kind lsh", 2, "--kind"),
    case("build-unknown-metric", "index build features.npz idx --metric jaccard", 2, "--metric"),
    case("build-target-recall-zero", "index build features.npz idx --target-recall 0", 2, "--target-recall"),
    case("build-m-one", "index build features.npz idx --kind hnsw --m 1", 2, "--m"),
    case("build-nlist-zero", "index build features.npz idx --nlist 0", 2, "--nlist"),
    case("build-pq-m-not-divisor", "index build features.npz idx --kind ivfpq --pq-m 3", 2, "pq"),
    case("build-threads-zero", "index build features.npz idx --n-jobs 0", 2, "n-jobs"),
    case("build-two-spellings", "index build features.npz idx --kind hnsw --M 4 --m 5", 2, "given twice"),
    case("build-unknown-subcommand", "index rebuild features.npz idx", 2, "rebuild"),
    case("add-index-missing", "index add nowhere features.npz", 2, "nowhere"),
    case("add-index-empty", "index add empty features.npz", 1, "empty", folder("empty")),
    case("add-index-garbage", "index add index features.npz", 1, "index", data("index/set-1/index.faiss", BINARY)),
    case("add-threads-zero", "index add index features.npz --n-jobs 0", 2, "n-jobs"),
    case("add-features-missing", "index add index nowhere.npz", 2, "nowhere.npz"),
    case("add-features-garbage", "index add index bad.npz", 1, "bad.npz", data("bad.npz", BINARY)),
    case("add-features-other-width", "index add index wide.npz", 1, "wide.npz", features("wide.npz", n=3, dim=5)),
    case("add-features-other-model", "index add index other.npz", 1, "other.npz", features("other.npz", n=3, image_size=16)),
    case("info-index-missing", "index info nowhere", 2, "nowhere"),
    case("info-index-empty", "index info empty", 1, "empty", folder("empty")),
    case("info-metadata-garbage", "index info index", 1, "metadata.json", data("index/set-1/metadata.json", BINARY)),
    case("info-paths-truncated", "index info index", 1, "paths.json", truncated("index/set-1/paths.json", "index/set-1/paths.json")),
    case("info-index-garbage", "index info index", 1, "index", data("index/set-1/index.faiss", BINARY)),
    # --- search ---
    case("search-no-query", "search index", 2, "--image"),
    case("search-two-queries", "search index --features features.npz --text four", 2, "--image"),
    case("search-index-missing", "search nowhere --text four", 2, "nowhere"),
    case("search-index-empty", "search empty --features features.npz", 1, "empty", folder("empty")),
    case("search-features-other-width", "search index --features wide.npz", 1, "wide.npz", features("wide.npz", n=3, dim=5)),
    case("search-features-garbage", "search index --features bad.npz", 1, "bad.npz", data("bad.npz", BINARY)),
    case("search-image-corrupt", "search index --image bad.png", 1, "bad.png", text("bad.png", "not an image")),
    case("search-features-nan", "search index --features bad.npz", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.full((2, 8), np.nan, np.float32))),
    case("search-image-is-folder", "search index --image images", 2, "images"),
    case("search-threads-zero", "search index --features features.npz --n-jobs 0", 2, "n-jobs"),
    case("search-k-text", "search index --features features.npz -k many", 2, "-k"),
    case("search-k-zero", "search index --features features.npz -k 0", 2, "-k"),
    case("search-min-similarity-two", "search index --text four --min-similarity 2", 2, "--min-similarity"),
    case("search-vectors-without-text", "search index --features features.npz --word-vectors label.txt", 2, "--text"),
    case("search-text-without-classes", "search index --text four", 1, "index"),
    case("search-scores-garbage", "search index --text four --scores bad.npz", 1, "bad.npz", data("bad.npz", BINARY)),
    case("search-output-is-folder", "search index --features features.npz -o images", 2, "images"),
    case("search-output-under-file", "search index --features features.npz -o afile/r.csv", 1, "afile"),
    case("search-output-read-only", "search index --features features.npz -o {ro}/r.csv", 1, "{ro}"),
    case("search-runtime-without-image", "search index --features features.npz --runtime openvino", 2, "--image"),
    case("search-unknown-runtime", "search index --image images/0000.png --runtime onnx", 2, "--runtime"),
    # --- feedback import / export / simulate ---
    case("import-events-missing", "feedback import nowhere.jsonl", 2, "nowhere.jsonl"),
    case("import-events-suffix", "feedback import label.txt --db fb.sqlite --data-csv classes.csv", 2, "label.txt"),
    case("import-events-binary", "feedback import bad.jsonl --db fb.sqlite --data-csv classes.csv", 1, "bad.jsonl",
         data("bad.jsonl", BINARY)),
    case("import-events-csv-wrong-columns", "feedback import bad.csv --db fb.sqlite --data-csv classes.csv", 1, "bad.csv",
         text("bad.csv", "user,action\nann,lasso\n")),
    case("import-data-csv-binary", "feedback import events.jsonl --db fb.sqlite --data-csv bad.csv", 1, "bad.csv",
         BINARY_CSV),
    case("import-data-csv-wrong-columns", "feedback import events.jsonl --db fb.sqlite --data-csv bad.csv", 1, "bad.csv",
         NO_IMAGE_COLUMN),
    case("import-new-db-without-data-csv", "feedback import events.jsonl --db fb.sqlite", 1, "--data-csv"),
    case("import-db-is-folder", "feedback import events.jsonl --db images --data-csv classes.csv", 2, "images"),
    case("import-db-under-file", "feedback import events.jsonl --db afile/fb.sqlite --data-csv classes.csv", 1, "afile"),
    case("import-db-read-only", "feedback import events.jsonl --db {ro}/fb.sqlite --data-csv classes.csv", 1, "{ro}"),
    case("import-db-not-sqlite", "feedback import events.jsonl --db label.txt", 1, "label.txt"),
    case("import-wait-negative", "feedback import events.jsonl --wait -1", 2, "--wait"),
    case("import-unknown-task", "feedback import events.jsonl --task regression", 2, "--task"),
    case("export-db-missing", "feedback export --db nowhere.sqlite -o out.csv", 1, "nowhere.sqlite"),
    case("export-db-not-sqlite", "feedback export --db label.txt -o out.csv", 1, "label.txt"),
    case("export-db-binary", "feedback export --db bad.sqlite -o out.csv", 1, "bad.sqlite", data("bad.sqlite", BINARY)),
    case("export-output-is-folder", "feedback export -o images", 2, "images"),
    case("export-output-under-file", "feedback export -o afile/out.csv", 1, "afile"),
    case("export-output-read-only", "feedback export -o {ro}/out.csv", 1, "{ro}"),
    case("export-output-is-db", "feedback export -o feedback.sqlite", 2, "feedback.sqlite"),
    case("simulate-data-csv-missing", "feedback simulate --data-csv nowhere.csv --features features.npz -o e.jsonl", 2,
         "nowhere.csv"),
    case("simulate-features-garbage", "feedback simulate --data-csv classes.csv --features bad.npz -o e.jsonl --method pca",
         1, "bad.npz", data("bad.npz", BINARY)),
    case("simulate-features-other-images", "feedback simulate --data-csv bad.csv --features features.npz -o e.jsonl "
         "--method pca", 1, "features.npz", text("bad.csv", "image,label\nx.png,one\ny.png,two\n")),
    case("simulate-data-csv-binary", "feedback simulate --data-csv bad.csv --features features.npz -o e.jsonl --method pca",
         1, "bad.csv", BINARY_CSV),
    case("simulate-users-zero", "feedback simulate --data-csv classes.csv --features features.npz -o e.jsonl --users 0",
         2, "--users"),
    case("simulate-noise-half", "feedback simulate --data-csv classes.csv --features features.npz -o e.jsonl --noise 0.5",
         2, "--noise"),
    case("simulate-unknown-method", "feedback simulate --data-csv classes.csv --features features.npz -o e.jsonl "
         "--method umap", 2, "--method"),
    case("simulate-output-read-only", "feedback simulate --data-csv classes.csv --features features.npz "
         "-o {ro}/e.jsonl --method pca", 1, "{ro}"),
    case("simulate-output-under-file", "feedback simulate --data-csv classes.csv --features features.npz "
         "-o afile/e.jsonl --method pca", 1, "afile"),
    case("simulate-output-is-data-csv", "feedback simulate --data-csv classes.csv --features features.npz "
         "-o classes.csv --method pca", 2, "classes.csv"),
    case("simulate-no-output", "feedback simulate --data-csv classes.csv --features features.npz", 2, "--output"),
    case("simulate-features-and-suggest", "feedback simulate --data-csv classes.csv --features features.npz "
         "--suggest s.csv -o e.jsonl", 2, "--suggest", text("s.csv", "rank,image,score,query_class,probability,predicted\n")),
    case("simulate-neither-features-nor-suggest", "feedback simulate --data-csv classes.csv -o e.jsonl", 2, "--features"),
    case("simulate-suggest-wrong-columns", "feedback simulate --data-csv classes.csv --suggest s.csv -o e.jsonl", 1, "s.csv",
         text("s.csv", "image,score\n0000.png,0.1\n")),
    case("feedback-unknown-subcommand", "feedback purge", 2, "purge"),
    # --- suggest ---
    case("suggest-model-missing", "suggest nowhere.h5 images", 2, "nowhere.h5"),
    case("suggest-n-above-images", "suggest best_model.h5 images --n 500", 2, "--n 500", needs="classifier",
         misleading="Traceback"),
    case("suggest-n-above-unjudged", "suggest best_model.h5 images --n 24 --data-csv part.csv", 2, "20 of them",
         text("part.csv", "image,even,prime,five_or_more,closed_loop\n" + "".join(f"{i:04d}.png,1,0,1,0\n" for i in range(4))),
         needs="classifier"),
    case("suggest-feedback-labels-mismatch", "suggest best_model.h5 images --feedback image_feedback.csv", 1,
         "do not match the model's", needs="classifier"),
    case("suggest-data-csv-labels-mismatch", "suggest best_model.h5 images --data-csv other.csv", 1, "other.csv",
         text("other.csv", "image,cat,dog\n0000.png,1,0\n"), needs="classifier"),
    case("suggest-unknown-strategy", "suggest best_model.h5 images --strategy greedy", 2, "--strategy", needs="classifier"),
    case("suggest-n-zero", "suggest best_model.h5 images --n 0", 2, "--n", needs="classifier"),
    case("suggest-output-is-model", "suggest best_model.h5 images -o best_model.h5", 2, "best_model.h5", needs="classifier"),
    case("suggest-no-images", "suggest best_model.h5", 2, "IMAGES", needs="classifier"),
    # --- resample ---
    case("resample-train-missing", "resample nowhere.csv image_feedback.csv -o out.csv --ratio deselected=3", 2,
         "nowhere.csv"),
    case("resample-train-binary", "resample bad.csv image_feedback.csv -o out.csv --ratio deselected=3", 1, "bad.csv",
         BINARY_CSV),
    case("resample-train-no-image-column", "resample bad.csv image_feedback.csv -o out.csv --ratio deselected=3", 1,
         "bad.csv", NO_IMAGE_COLUMN),
    case("resample-feedback-wrong-columns", "resample classes.csv bad.csv -o out.csv --ratio deselected=3", 1, "bad.csv",
         text("bad.csv", "image,votes\n0000.png,3\n")),
    case("resample-ratio-huge", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected=1e9", 2, "1e9"),
    case("resample-ratio-zero", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected=0", 2, "deselected"),
    case("resample-ratio-negative", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected=-1", 2,
         "deselected"),
    case("resample-ratio-text", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected=many", 2, "many"),
    case("resample-ratio-unknown-group", "resample classes.csv image_feedback.csv -o out.csv --ratio liked=2", 2, "liked"),
    case("resample-ratio-no-equals", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected", 2,
         "deselected"),
    case("resample-val-shares-images", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected=2 "
         "--val-csv classes.csv", 1, "classes.csv"),
    case("resample-val-csv-binary", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected=2 "
         "--val-csv bad.csv", 1, "bad.csv", BINARY_CSV),
    case("resample-seed-text", "resample classes.csv image_feedback.csv -o out.csv --ratio deselected=2 --seed x", 2,
         "--seed"),
    case("resample-output-is-folder", "resample classes.csv image_feedback.csv -o images --ratio deselected=2", 2, "images"),
    case("resample-output-under-file", "resample classes.csv image_feedback.csv -o afile/out.csv --ratio deselected=2", 1,
         "afile"),
    case("resample-output-read-only", "resample classes.csv image_feedback.csv -o {ro}/out.csv --ratio deselected=2", 1,
         "{ro}"),
    case("resample-output-is-train-csv", "resample classes.csv image_feedback.csv -o classes.csv --ratio deselected=2", 2,
         "classes.csv"),
    case("resample-no-ratio", "resample classes.csv image_feedback.csv -o out.csv", 2, "--ratio"),
    # --- experiment (refused before a model is built) ---
    case("experiment-feedback-missing", "experiment --data-csv classes.csv --feedback nowhere.csv --ratio deselected=3", 2,
         "nowhere.csv"),
    case("experiment-no-ratio", "experiment --data-csv classes.csv --feedback image_feedback.csv", 2, "--ratio"),
    case("experiment-ratio-bad", "experiment --data-csv classes.csv --feedback image_feedback.csv --ratio deselected=x",
         2, "deselected"),
    case("experiment-variant-unknown", "experiment --data-csv classes.csv --feedback image_feedback.csv --ratio deselected=3 "
         "--variants baseline,meta,shuffled", 2, "unknown variant 'shuffled'"),
    case("experiment-ratio-sweep-non-positive", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--ratio deselected=1,0,3", 2, "must be a positive number"),
    case("experiment-relabel-multiclass", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--use relabel --task multiclass", 2, "already has exactly one class"),
    case("experiment-relabel-ratio", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--use relabel --task multilabel --ratio deselected=3", 2, "--use relabel gives a deselected image one known 0"),
    case("experiment-data-csv-missing", "experiment --data-csv nowhere.csv --feedback image_feedback.csv "
         "--ratio deselected=3 --output-dir exp", 1, "nowhere.csv"),
    case("experiment-data-csv-binary", "experiment --data-csv bad.csv --feedback image_feedback.csv --ratio deselected=3 "
         "--output-dir exp", 1, "bad.csv", BINARY_CSV),
    case("experiment-feedback-wrong-columns", "experiment --data-csv classes.csv --feedback bad.csv --ratio deselected=3 "
         "--output-dir exp", 1, "bad.csv", text("bad.csv", "image,votes\n0000.png,3\n")),
    case("experiment-seeds-zero", "experiment --data-csv classes.csv --feedback image_feedback.csv --ratio deselected=3 "
         "--seeds 0", 2, "--seeds"),
    case("experiment-test-split-one", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--ratio deselected=3 --test-split 1", 2, "--test-split"),
    case("experiment-test-csv-overlaps", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--ratio deselected=3 --test-csv classes.csv --output-dir exp --backbone small_cnn --weights none", 1,
         "classes.csv"),
    case("experiment-test-csv-binary", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--ratio deselected=3 --test-csv bad.csv --output-dir exp", 1, "bad.csv", BINARY_CSV),
    case("experiment-output-onto-file", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--ratio deselected=3 --output-dir afile", 2, "afile"),
    case("experiment-output-under-file", "experiment --data-csv classes.csv --feedback image_feedback.csv "
         "--ratio deselected=3 --output-dir afile/exp", 2, "afile"),
    case("experiment-output-read-only", "experiment --data-csv two.csv --feedback image_feedback.csv --test-split 0.4 "
         "--ratio deselected=3 --output-dir {ro}/exp --backbone small_cnn --weights none --image-size 32", 1, "{ro}",
         TWO_CLASSES),
    # --- tsne ---
    case("tsne-features-missing", "tsne nowhere.npz", 2, "nowhere.npz"),
    case("tsne-features-garbage", "tsne bad.npz --method pca", 1, "bad.npz", data("bad.npz", BINARY)),
    case("tsne-features-nan", "tsne bad.npz --method pca", 1, "bad.npz",
         npz("bad.npz", paths=np.array(["a", "b"]), features=np.array([[1, np.nan], [0, 1]], np.float32))),
    case("tsne-output-is-folder", "tsne features.npz -o images", 2, "images"),
    case("tsne-output-under-file", "tsne features.npz -o afile/t.png --method pca", 1, "afile"),
    case("tsne-output-read-only", "tsne features.npz -o {ro}/t.png --method pca", 1, "{ro}"),
    case("tsne-output-is-features", "tsne features.npz -o features.npz --method pca", 2, "features.npz"),
    case("tsne-coords-is-features", "tsne features.npz --coords features.npz --method pca", 2, "features.npz"),
    case("tsne-coords-is-labels", "tsne features.npz --data-csv classes.csv --coords classes.csv --method pca", 2,
         "classes.csv"),
    case("tsne-coords-read-only", "tsne features.npz -o t.png --coords {ro}/t.csv --method pca", 1, "{ro}"),
    case("tsne-unknown-method", "tsne features.npz --method umap", 2, "--method"),
    case("tsne-perplexity-zero", "tsne features.npz --perplexity 0", 2, "--perplexity"),
    case("tsne-too-few-rows", "tsne few.npz --method pca", 1, "few.npz", features("few.npz", n=3)),
    case("tsne-plot-read-only-coords-not", "tsne features.npz -o {ro}/t.png --coords t.csv --method pca", 1, "{ro}"),
    case("tsne-coords-is-plot", "tsne features.npz -o t.png --coords t.png --method pca", 2, "t.png"),
    case("tsne-threads-zero", "tsne features.npz --n-jobs 0", 2, "--n-jobs"),
    case("tsne-data-csv-wrong-columns", "tsne features.npz --data-csv bad.csv --method pca", 1, "bad.csv", NO_IMAGE_COLUMN),
    case("tsne-data-csv-binary", "tsne features.npz --data-csv bad.csv --method pca", 1, "bad.csv", BINARY_CSV),
    case("tsne-data-csv-other-images", "tsne features.npz --data-csv bad.csv --method pca", 1, "bad.csv",
         text("bad.csv", "image,label\nx.png,one\ny.png,two\n")),
    case("tsne-highlight-no-image-column", "tsne features.npz --highlight bad.csv --method pca", 1, "bad.csv",
         NO_IMAGE_COLUMN),
    case("tsne-highlight-binary", "tsne features.npz --highlight bad.csv --method pca", 1, "bad.csv", BINARY_CSV),
    case("tsne-data-csv-empty", "tsne features.npz --data-csv bad.csv --method pca", 1, "bad.csv", EMPTY_CSV),
    case("tsne-coords-under-file", "tsne features.npz --coords afile/t.csv --method pca", 1, "afile"),
    case("tsne-output-not-png", "tsne features.npz -o t.jpg --method pca", 2, "t.jpg"),
    case("tsne-two-spellings", "tsne features.npz --labels classes.csv --data-csv classes.csv", 2, "given twice"),
    case("tsne-unknown-task", "tsne features.npz --task regression", 2, "--task"),
    # --- serve (only what fails before the server starts) ---
    case("serve-index-missing", "serve nowhere --img-directory images", 2, "nowhere"),
    case("serve-images-missing", "serve index --img-directory nowhere", 2, "nowhere"),
    case("serve-no-images-option", "serve index", 2, "--img-directory"),
    case("serve-index-empty", "serve empty --img-directory images", 1, "empty", folder("empty")),
    case("serve-port-out-of-range", "serve index --img-directory images --port 70000", 2, "--port"),
    case("serve-unknown-runtime", "serve index --img-directory images --runtime onnx", 2, "--runtime"),
    case("serve-unknown-precision", "serve index --img-directory images --precision fp8", 2, "--precision"),
    case("serve-precision-not-the-indexs-runtime", "serve index --img-directory images --precision bf16", 2, "--precision bf16"),
    case("serve-upload-limit-zero", "serve index --img-directory images --max-upload-mb 0", 2, "--max-upload-mb"),
    case("serve-db-read-only", "serve index --img-directory images --db {ro}/fb.sqlite --data-csv classes.csv", 1, "{ro}"),
    case("serve-db-under-file", "serve index --img-directory images --db afile/fb.sqlite --data-csv classes.csv", 1,
         "afile"),
    case("serve-db-is-folder", "serve index --img-directory images --db images", 2, "images"),
    case("serve-data-csv-wrong-columns", "serve index --img-directory images --db fb.sqlite --data-csv bad.csv", 1,
         "bad.csv", NO_IMAGE_COLUMN),
    case("serve-map-wrong-columns", "serve index --img-directory images --map bad.csv", 1, "bad.csv", NO_IMAGE_COLUMN),
    case("serve-scores-garbage", "serve index --img-directory images --scores bad.npz", 1, "bad.npz",
         data("bad.npz", BINARY)),
    case("serve-images-hold-none", "serve index --img-directory empty", 1, "empty", folder("empty")),
    case("serve-scores-other-images", "serve index --img-directory images --scores other.npz", 1, "other.npz",
         npz("other.npz", paths=np.array(["x.png", "y.png"]), features=np.ones((2, 10), np.float32))),
    case("serve-port-negative", "serve index --img-directory images --port -1", 2, "--port"),
    case("serve-background-malformed", "serve index --img-directory images --background grey", 2, "--background"),
    case("serve-two-spellings", "serve index --images images --img-directory images", 2, "given twice"),
    # --- the root group ---
    case("unknown-command", "trian", 2, "trian"),
]


# --- Trained models, for the few cases that need a real one ----------------------------------------


@pytest.fixture(scope="session")
def trained(workspace, tmp_path_factory) -> dict[str, Path]:
    """best_model.h5 (one epoch of small_cnn on the 24 digits) and embedding_model.keras (train-siamese, one epoch)."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(workspace, root, dirs_exist_ok=True)
    small = ["--backbone", "small_cnn", "--weights", "none", "--image-size", "32", "--epochs", "1", "--quiet"]
    runner = CliRunner()
    with _cwd(root):
        for argv in (["train", "--output-dir", "classifier", *small],
                     ["train-siamese", "metadata.csv", "--output-dir", "embedding", "--batch-size", "8", *small]):
            result = runner.invoke(toolkit, argv)
            assert result.exit_code == 0, result.output
    return {"classifier": root / "classifier" / "best_model.h5", "embedding": root / "embedding" / "embedding_model.keras"}


# --- The test --------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with a digest of its content ('dir' for a folder)."""
    return {
        str(path.relative_to(root)): "dir" if path.is_dir() else hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def no_server(monkeypatch):
    """A serve case that got past its checks must fail the test, not listen on a port."""
    uvicorn = pytest.importorskip("uvicorn", reason="serve needs the serve extra")

    def refuse(*args, **kwargs):
        raise AssertionError("the server started: the bad input was accepted")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setattr(uvicorn.Server, "run", refuse)


@pytest.mark.parametrize("argv, code, expected, misleading, setup, needs", CASES)
def test_bad_input(argv, code, expected, misleading, setup, needs, request, runner, workspace, tmp_path, monkeypatch):
    if argv.startswith("serve"):
        request.getfixturevalue("no_server")
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    if needs:
        model = request.getfixturevalue("trained")[needs]
        shutil.copy(model, tmp_path / model.name)
    setup(tmp_path)
    ro = request.getfixturevalue("read_only")(tmp_path) if "{ro}" in argv else ""
    argv, expected = argv.replace("{ro}", ro), expected.replace("{ro}", ro)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        result = runner.invoke(toolkit, shlex.split(argv))
    finally:
        if ro.startswith(str(tmp_path)):
            Path(ro).chmod(0o755)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    line = one_line_error(result)
    assert result.exit_code == code, line
    assert expected in line
    assert misleading is None or misleading not in line
    after = snapshot(tmp_path)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not changed, f"the refused run added, changed or removed {changed}"


def test_the_table_covers_every_command():
    """Every command and every subcommand of the groups has cases; 150 at least in all."""
    import click

    named = {tuple(shlex.split(param.values[0])[:2]) for param in CASES}
    for name in toolkit.list_commands(None):
        command = toolkit.get_command(None, name)
        wanted = [(name, sub) for sub in command.commands] if isinstance(command, click.Group) else [(name,)]
        for words in wanted:
            assert any(got[: len(words)] == words for got in named), f"no case for toolkit {' '.join(words)}"
    assert len(CASES) >= 150
