"""Per-image latency of an exported classifier in each runtime, against Keras' predict_on_batch.

    python benchmarks/bench_export.py runs/demo/best_model.h5           # after the README's train section
    python benchmarks/bench_export.py runs/demo/best_model.h5 --repeats 50

Exports MODEL to every format whose runtime is installed (into a temporary
folder), then times batches of 1 and 32 raw RGB images of the model's size:
Keras (`predict_on_batch` on the preprocessed batch, the toolkit's own
path), onnxruntime, OpenVINO (CPU, float32) and the LiteRT interpreter, each
on one call per batch, methods taking turns so that load from elsewhere falls
on all of them; the median of --repeats turns is kept. Prints milliseconds
per image and each runtime's speed-up over Keras, and the largest absolute
difference from Keras' probabilities.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def runners(model_path: Path, folder: Path, batch: int) -> dict:
    """name -> function(raw batch) -> probabilities, for Keras and every installed runtime."""
    from image_toolkit.models.export import export_model
    from image_toolkit.models.inference import classifier_preprocess, load_classifier

    model, metadata = load_classifier(model_path)
    preprocess = classifier_preprocess(metadata)
    found = {"keras": lambda raw: model.predict_on_batch(preprocess(raw))}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("tf2onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(export_model(model_path, "onnx", output=folder / "m.onnx")["path"],
                                               providers=["CPUExecutionProvider"])
        found["onnxruntime"] = lambda raw: session.run(None, {"rgb": raw})[0]
    if importlib.util.find_spec("openvino"):
        import openvino

        exported = Path(export_model(model_path, "openvino", output=folder / "m_openvino")["path"])
        compiled = openvino.Core().compile_model(exported / "model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        found["openvino"] = lambda raw: compiled(raw)[compiled.output(0)]
    if importlib.util.find_spec("ai_edge_litert"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=export_model(model_path, "litert", output=folder / "m.tflite")["path"])
        source = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(source, (batch, metadata["image_size"], metadata["image_size"], 3))
        interpreter.allocate_tensors()

        def litert(raw):
            interpreter.set_tensor(source, raw)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

        found["litert"] = litert
    return found, metadata["image_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for batch in (1, 32):
            methods, size = runners(args.model, Path(folder), batch)
            raw = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
            reference = methods["keras"](raw)
            times = {name: [] for name in methods}
            for name, run in methods.items():  # warm-up, and parity
                difference = np.abs(run(raw) - reference).max()
                print(f"batch {batch:2d}  {name:12s} max |diff| from keras {difference:.2e}")
            for _ in range(args.repeats):
                for name, run in methods.items():
                    start = time.perf_counter()
                    run(raw)
                    times[name].append(time.perf_counter() - start)
            keras_ms = statistics.median(times["keras"]) * 1000 / batch
            for name, values in times.items():
                ms = statistics.median(values) * 1000 / batch
                print(f"batch {batch:2d}  {name:12s} {ms:8.3f} ms/image  {keras_ms / ms:6.1f}x keras")


if __name__ == "__main__":
    main()
