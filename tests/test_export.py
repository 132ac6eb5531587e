"""`toolkit export`: every format runs in its own runtime and agrees with Keras on real images."""

import importlib.util
import json

import numpy as np
import pytest

from image_toolkit.cli.export import FORMAT_NAMES, export
from image_toolkit.data_tools.formats.images import find_images
from image_toolkit.models.backbones import build_backbone
from image_toolkit.models.callbacks import save_h5_with_metadata
from image_toolkit.models.classifier import ImageClassifier
from image_toolkit.models.export import FORMATS, with_preprocessing
from image_toolkit.models.inference import classifier_probabilities, load_classifier
from image_toolkit.models.pipeline import image_dataset
from image_toolkit.models.runtime import keras
from tests.conftest import one_line_error

LABELS = ["even", "prime", "five_or_more", "closed_loop"]
SIZE = 32
# The bar: an exported model may differ from Keras by float rounding only.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def classifier(tiny_set, tmp_path_factory):
    """A small_cnn classifier saved as training saves it, its first 8 digit images, and Keras' probabilities on them."""
    keras.utils.set_random_seed(0)
    model = ImageClassifier("small_cnn", weights=None, image_size=SIZE, head_units=16, classes=len(LABELS))
    # Random weights give probabilities all near 0.5; a larger output kernel spreads them over (0, 1), so that a
    # runtime that ignored the preprocessing or the input could not pass by giving 0.5 everywhere.
    head = model.get_layer("predictions")
    head.set_weights([head.get_weights()[0] * 100, head.get_weights()[1]])
    metadata = {"format_version": 1, "task": "multilabel", "label_names": LABELS, "backbone": "small_cnn",
                "image_size": SIZE, "head_units": 16, "weights": None}
    path = tmp_path_factory.mktemp("export") / "best_model.h5"
    save_h5_with_metadata(model, path, metadata)
    paths = find_images(tiny_set[0] / "images")[:8]
    model, metadata = load_classifier(path)
    expected = classifier_probabilities(paths, model, metadata, batch_size=8)
    raw = next(iter(image_dataset(paths, image_size=SIZE, preprocess=lambda images: images, batch_size=8))).numpy()
    return path, raw, expected


def run_savedmodel(path, raw):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: its function's variables die with it
    return loaded.serve(tf.constant(raw)).numpy()


def run_onnx(path, raw):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [tensor.name for tensor in session.get_inputs()] == ["rgb"]
    return session.run(None, {"rgb": raw})[0]


def run_litert(path, raw):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    source = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(source, raw.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source, raw)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def run_openvino(path, raw):
    import openvino

    # OpenVINO's CPU plugin computes in bfloat16 where the CPU has it (AMX, AVX-512 BF16): ask for float32.
    compiled = openvino.Core().compile_model(path / "model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(raw)[compiled.output(0)]


RUNTIMES = {"savedmodel": run_savedmodel, "onnx": run_onnx, "litert": run_litert, "openvino": run_openvino}


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_exported_model_takes_raw_rgb_and_matches_keras(classifier, format_name, runner, tmp_path):
    model_path, raw, expected = classifier
    output = tmp_path / f"exported{FORMATS[format_name].suffix}"
    result = runner.invoke(export, [str(model_path), "--format", format_name, "--output", str(output), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["path"] == str(output) and record["input"]["shape"] == [None, SIZE, SIZE, 3]
    assert json.loads(open(record["labels"]).read())["label_names"] == LABELS
    got = RUNTIMES[format_name](output, raw)
    assert got.shape == (8, len(LABELS))
    assert np.abs(got - expected).max() <= TOLERANCE
    # Not a constant output: the images give different probabilities, so the comparison tests something.
    assert expected.std(axis=0).max() > 0.05, expected
    # The model and its labels, and nothing else: no staging folder left behind.
    beside = set() if FORMATS[format_name].folder else {output.name + ".json"}
    assert {p.name for p in tmp_path.iterdir()} == {output.name} | beside


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16", "pixels"])
def test_wrapper_applies_the_backbones_preprocessing(backbone):
    """ResNet50's and VGG16's preprocessing (BGR, mean subtracted) and 'pixels' (/255) without building either."""
    identity = keras.Sequential([keras.Input((4, 4, 3))], name="identity")
    metadata = {"backbone": "small_cnn", "image_size": 4}
    metadata = {**metadata, "preprocess": backbone} if backbone == "pixels" else {**metadata, "backbone": backbone}
    raw = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    caffe = {"resnet50": keras.applications.resnet50.preprocess_input, "vgg16": keras.applications.vgg16.preprocess_input}
    wanted = caffe[backbone](raw.copy()) if backbone in caffe else raw / 255.0
    got = with_preprocessing(identity, metadata).predict_on_batch(raw)
    np.testing.assert_allclose(got, wanted, atol=1e-4)


def test_default_output_is_beside_the_model(classifier, runner):
    model_path = classifier[0]
    result = runner.invoke(export, [str(model_path), "--format", "litert"])
    assert result.exit_code == 0, result.output
    assert (model_path.parent / "best_model.tflite").is_file()
    assert json.loads((model_path.parent / "best_model.tflite.json").read_text())["format"] == "litert"
    assert "best_model.tflite" in result.stdout


def test_embedding_model_exports_too(tmp_path, runner, classifier):
    raw = classifier[1]
    inputs = keras.Input((SIZE, SIZE, 3))
    tower = keras.Model(inputs, keras.layers.UnitNormalization()(build_backbone("small_cnn", weights=None, image_size=SIZE)(inputs)))
    tower.save(tmp_path / "embedding_model.keras")
    result = runner.invoke(export, [str(tmp_path / "embedding_model.keras"), "--format", "savedmodel", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["kind"] == "embedding" and "label_names" not in record
    got = run_savedmodel(tmp_path / "embedding_model_savedmodel", raw)
    np.testing.assert_allclose(got, tower.predict_on_batch(raw / 127.5 - 1), atol=TOLERANCE)


def test_format_names_agree_with_the_library():
    assert FORMAT_NAMES == tuple(FORMATS)


def test_unknown_format_is_a_usage_error(classifier, runner):
    result = runner.invoke(export, [str(classifier[0]), "--format", "coreml"])
    assert result.exit_code == 2
    assert "'coreml' is not one of 'savedmodel', 'onnx', 'litert', 'openvino'" in one_line_error(result)


def test_missing_extra_names_the_pip_command(classifier, runner, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    result = runner.invoke(export, [str(classifier[0]), "--format", "onnx", "--output", str(tmp_path / "out" / "m.onnx")])
    assert result.exit_code == 1
    assert one_line_error(result) == 'Error: --format onnx needs onnxruntime (not installed): pip install "image-toolkit[onnx]"'
    assert list(tmp_path.iterdir()) == []


def test_not_a_toolkit_model_is_one_line(tmp_path, runner):
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.h5")
    result = runner.invoke(export, [str(tmp_path / "plain.h5"), "--format", "savedmodel"])
    assert result.exit_code == 1
    assert "not an image-toolkit model" in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.h5"]


def test_failed_conversion_leaves_nothing(classifier, runner, monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(keras.Model, "export", fail)
    result = runner.invoke(export, [str(classifier[0]), "--format", "onnx", "--output", str(tmp_path / "new" / "m.onnx")])
    assert isinstance(result.exception, RuntimeError)
    assert list(tmp_path.iterdir()) == []
