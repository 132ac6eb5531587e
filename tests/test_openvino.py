"""`--runtime openvino`: the same features and labels as TensorFlow, the disk cache, the missing extra."""

import json
import shutil
import sys

import h5py
import numpy as np
import pytest

from image_toolkit.cli.extract import get_transfer_layer
from image_toolkit.data_tools.formats.features import read_features
from tests.conftest import one_line_error

pytest.importorskip("openvino")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("TOOLKIT_OPENVINO_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def images(tiny_set):
    return tiny_set[0] / "images"


def transfer(runner, images, output, model, *extra):
    result = runner.invoke(get_transfer_layer, [str(images), str(output), "--model", str(model), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return read_features(output)


def entries(cache) -> dict:
    """Each cache folder's files and their modification times."""
    return {folder.name: {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} for folder in cache.iterdir()}


def test_a_toolkit_model_gives_tensorflows_features_and_its_conversion_is_cached(runner, trained, images, cache, tmp_path):
    model = trained[0] / "best_model.h5"
    reference = transfer(runner, images, tmp_path / "tf.npz", model)
    for precision, bar in (("fp32", 0.99999), ("bf16", 0.999)):
        features = transfer(runner, images, tmp_path / f"{precision}.npz", model, "--runtime", "openvino", "--precision", precision)
        assert features.paths == reference.paths
        assert cosine(features.features, reference.features).min() >= bar, precision
        assert features.metadata["runtime"] == "openvino" and features.metadata["precision"] == precision
    first = entries(cache)
    assert len(first) == 2  # one converted model per precision, with OpenVINO's compiled blob beside it
    assert all({"model.xml", "parity.json", "extractor.json"} <= set(files) and any(name.endswith(".blob") for name in files)
               for files in first.values())

    def no_build(*args, **kwargs):
        raise AssertionError("a cached model was built again")

    from image_toolkit.models import extraction

    with pytest.MonkeyPatch.context() as patch:  # A cache hit needs no Keras network: its metadata is stored with it.
        patch.setattr(extraction, "load_classifier", no_build)
        again = transfer(runner, images, tmp_path / "again.npz", model, "--runtime", "openvino", "--precision", "fp32")
    assert entries(cache) == first  # nothing converted, compiled or written again
    assert again.metadata == read_features(tmp_path / "fp32.npz").metadata
    np.testing.assert_allclose(again.features, read_features(tmp_path / "fp32.npz").features, rtol=1e-5, atol=1e-6)

    moved = tmp_path / "moved" / "best_model.h5"  # the same bytes elsewhere: the same entry, the new path recorded
    moved.parent.mkdir()
    shutil.copy(model, moved)
    assert transfer(runner, images, tmp_path / "moved.npz", moved, "--runtime", "openvino", "--precision", "fp32"
                    ).metadata["model"] == str(moved.resolve())
    assert entries(cache) == first

    changed = tmp_path / "changed.h5"
    shutil.copy(model, changed)
    with h5py.File(changed, "a") as handle:
        handle.attrs["note"] = "retrained"
    transfer(runner, images, tmp_path / "changed.npz", changed, "--runtime", "openvino", "--precision", "fp32")
    assert len(entries(cache)) == 3


def test_a_keras_application_gives_tensorflows_features(images):
    from image_toolkit.models.backbones import get_backbone
    from image_toolkit.models.openvino_runtime import openvino_forward
    from image_toolkit.models.pipeline import image_dataset
    from image_toolkit.models.runtime import keras

    network = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False, pooling="avg")
    preprocess = get_backbone("mobilenetv2").preprocess
    # Random weights: converted anew, not cached.
    forward, precision = openvino_forward(lambda: network, label=network.name, key=None, precision="fp32", preprocess=preprocess)
    assert precision == "fp32"
    batch = next(iter(image_dataset(sorted(images.iterdir()), image_size=32, preprocess=preprocess, batch_size=8)))
    assert cosine(forward(batch), network(batch, training=False).numpy()).min() >= 0.999


def test_auto_precision_is_bf16_only_with_native_bf16(tmp_path):
    from image_toolkit.models.openvino_runtime import native_bf16

    (tmp_path / "bf16").write_text("flags\t\t: fpu sse avx512f avx512_bf16\n")
    (tmp_path / "plain").write_text("flags\t\t: fpu sse avx512f avx512bw\n")
    assert native_bf16(tmp_path / "bf16") and not native_bf16(tmp_path / "plain")


def test_without_the_extra_one_line_names_the_pip_command(runner, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = runner.invoke(get_transfer_layer, [str(images), str(tmp_path / "out.npz"), "--model", "resnet50", "--runtime", "openvino"])
    assert result.exit_code == 1
    assert 'pip install "image-toolkit[openvino]"' in one_line_error(result)
    assert not (tmp_path / "out.npz").exists()


def test_a_tensorflow_only_precision_is_refused_for_openvino(runner, images, tmp_path):
    result = runner.invoke(get_transfer_layer, [str(images), str(tmp_path / "out.npz"), "--model", "resnet50",
                                                "--runtime", "openvino", "--precision", "mixed_bfloat16"])
    assert result.exit_code == 2
    assert "--precision mixed_bfloat16" in one_line_error(result)


def test_predict_gives_tensorflows_labels(trained, digits_set, cache):
    import pandas as pd

    from image_toolkit.models.inference import predict_images

    run, _, _ = trained
    held_out = [digits_set[0] / "images" / name for name in pd.read_csv(run.parent / "test.csv")["image"]]
    model = run / "best_model.h5"
    expected, _ = predict_images(held_out, model)
    fp32, _ = predict_images(held_out, model, runtime="openvino", precision="fp32")
    assert [p.labels for p in fp32] == [p.labels for p in expected]
    from image_toolkit.models.runtime import keras

    def no_load(*args, **kwargs):
        raise AssertionError("a cached model was loaded again")

    with pytest.MonkeyPatch.context() as patch:  # The second run reads the cache: no Keras model is loaded.
        patch.setattr(keras.models, "load_model", no_load)
        again, _ = predict_images(held_out, model, runtime="openvino", precision="fp32")
    assert [p.probabilities for p in again] == [p.probabilities for p in fp32]
    gaps = [abs(p.probabilities[name] - q.probabilities[name]) for p, q in zip(fp32, expected) for name in p.probabilities]
    assert max(gaps) <= 1e-3
    bf16, _ = predict_images(held_out, model, runtime="openvino", precision="bf16")
    assert np.mean([p.labels == q.labels for p, q in zip(bf16, expected)]) >= 0.98


def test_a_precision_below_the_cosine_bar_is_refused_before_any_image(runner, trained, images, cache, tmp_path, monkeypatch):
    from image_toolkit.models import openvino_runtime

    monkeypatch.setattr(openvino_runtime, "MIN_COSINE", 1.5)  # no precision reaches it
    for precision, fix in (("bf16", "run --precision fp32"), ("fp32", "run --runtime tensorflow")):
        output = tmp_path / f"{precision}.npz"
        result = runner.invoke(get_transfer_layer, [str(images), str(output), "--model", str(trained[0] / "best_model.h5"),
                                                    "--runtime", "openvino", "--precision", precision])
        assert result.exit_code == 1, result.output
        line = one_line_error(result)
        assert f"--precision {precision}" in line and "cosine" in line and fix in line
        assert not output.exists()


def test_auto_falls_back_to_fp32_when_bf16_misses_the_bar(monkeypatch, caplog):
    from image_toolkit.models import openvino_runtime

    compiled = []

    def fake_compile(load, label, key, precision, preprocess, hint, facts):
        compiled.append(precision)
        return (lambda images: images), {"bf16": 0.99, "fp32": 1.0}[precision]

    monkeypatch.setattr(openvino_runtime, "_compile", fake_compile)
    monkeypatch.setattr(openvino_runtime, "native_bf16", lambda: True)
    _, precision = openvino_runtime.openvino_forward(None, label="m", key=None, precision="auto", preprocess=None)
    assert precision == "fp32" and compiled == ["bf16", "fp32"]
    assert "running fp32" in caplog.text


def test_append_refuses_rows_of_another_runtime(runner, trained, images, cache, tmp_path):
    model = trained[0] / "best_model.h5"
    output = tmp_path / "features.npz"
    transfer(runner, images, output, model)
    before = output.read_bytes()
    result = runner.invoke(get_transfer_layer, [str(images), str(output), "--model", str(model), "--append",
                                                "--runtime", "openvino", "--precision", "fp32"])
    assert result.exit_code == 1
    assert "runtime='tensorflow'" in one_line_error(result) and "runtime='openvino'" in result.stderr
    assert output.read_bytes() == before


def test_search_embeds_a_query_with_another_runtime(runner, trained, images, cache, tmp_path):
    from image_toolkit.cli.main import toolkit

    transfer(runner, images, tmp_path / "features.npz", trained[0] / "best_model.h5")
    built = runner.invoke(toolkit, ["index", "build", str(tmp_path / "features.npz"), str(tmp_path / "index"), "--quiet"])
    assert built.exit_code == 0, built.output
    query = sorted(images.iterdir())[3]
    results = {}
    for runtime in ("tensorflow", "openvino"):
        result = runner.invoke(toolkit, ["search", str(tmp_path / "index"), "--image", str(query), "-k", "3",
                                         "--runtime", runtime, "--json"])
        assert result.exit_code == 0, result.output
        results[runtime] = json.loads(result.stdout)["results"]
    assert results["openvino"][0]["path"] == query.name  # the query itself, found by OpenVINO's embedding
    assert [r["path"] for r in results["openvino"]] == [r["path"] for r in results["tensorflow"]]
    assert results["openvino"][0]["distance"] == pytest.approx(0, abs=1e-4)
