"""Run a Keras forward pass with OpenVINO on the CPU: `--runtime openvino`.

OpenVINO's CPU plugin ran ResNet50 1.3x faster than TensorFlow in fp32 and
2.8x faster in bf16 on a CPU with native bf16 (issue 18), with features
within cosine 0.9999 of TensorFlow's. The Keras model (cut at `--layer`) is
converted in process with `openvino.convert_model` and compiled for the CPU.

Converting takes seconds (TensorFlow traces and freezes the graph), so the
converted model is saved as OpenVINO IR in a cache folder named by a hash of
what decides its result: the model file's bytes (or a named network and its
weights), the layer, the input size, the precision and OpenVINO's version.
The compiled blob is cached there too, by OpenVINO's own `CACHE_DIR`
property, with the cosine check's result and what the caller needs besides
the model (the features' metadata, the preprocessing). A second run with the
same key skips the conversion, the compilation, the check and building the
Keras network; a changed model file gets a new folder. The cache lives under
`~/.cache/image-toolkit/openvino`, or under `$TOOLKIT_OPENVINO_CACHE`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.atomic import staging_folder, write_text
from image_toolkit.data_tools.errors import DataError, require_package
from image_toolkit.models.runtime import keras, tf

logger = logging.getLogger(__name__)

CACHE_ENV = "TOOLKIT_OPENVINO_CACHE"
# OpenVINO's names for our precisions (INFERENCE_PRECISION_HINT).
HINTS = {"fp32": "f32", "bf16": "bf16"}
# CPU flags of native bf16 arithmetic (Cooper Lake and later, Sapphire Rapids' AMX).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# OpenVINO's performance hints, by what a run feeds the model. Batches (extraction, predict): THROUGHPUT, with the
# batch split across its streams, one request each, in flight together; on 2 cores it ran 1.02-1.06x LATENCY's one
# synchronous request on an idle machine (benchmarks/bench_extract.py) and 0.98-2.4x on a busy one, where a stream per
# core loses less to other programs (InceptionV3 1.3-2.4x, ResNet50 1.0-1.3x). One query image at a time
# (search --image, serve): LATENCY, one stream on every core, where THROUGHPUT's streams would leave cores idle.
BATCHES, QUERIES = "THROUGHPUT", "LATENCY"
IR_FILE = "model.xml"
# The cosine of a cached model's outputs to TensorFlow fp32's, measured when it was converted.
PARITY_FILE = "parity.json"
# What the caller needs besides the compiled model (its features' metadata, its preprocessing), so a run that finds
# its entry never builds the Keras network.
FACTS_FILE = "extractor.json"
# Least cosine similarity to TensorFlow fp32 per probe image: below it, nearest neighbours change (issue 18).
MIN_COSINE = 0.999


def require_openvino():
    """The `openvino` module, or a one-line error naming the extra to install."""
    require_package("openvino", "--runtime openvino", "the openvino package", "openvino")
    import openvino

    return openvino


def native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether the CPU does bf16 arithmetic natively: its flags, else OpenVINO's OPTIMIZATION_CAPABILITIES.

    OpenVINO lists BF16 on CPUs that only emulate it (AVX-512 without
    avx512_bf16), where bf16 is slower than fp32; the flags say which is
    which, so they decide where they can be read.
    """
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return "BF16" in require_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return any(flag in flags for flag in BF16_FLAGS)


def resolve_precision(precision: str) -> str:
    """`auto` as fp32 or bf16 for this CPU; fp32 and bf16 as given."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: a retrained model at the same path is another model."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file_key(path: str | os.PathLike, **request) -> dict:
    """The cache key of a toolkit model file: its bytes and what was asked of it (output, layer, input size, ...)."""
    return {"model_sha256": file_digest(path), **request}


def cache_folder(key: dict) -> Path:
    """The cache folder of one converted model: a hash of `key` (what decides the result) and OpenVINO's version."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "image-toolkit" / "openvino")
    text = json.dumps({**key, "openvino": require_openvino().__version__}, sort_keys=True)
    return root / hashlib.sha256(text.encode()).hexdigest()[:24]


def convert(model: keras.Model):
    """`model` as an OpenVINO model with a free batch size, by `openvino.convert_model` of its traced forward pass."""
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")
    forward = tf.function(lambda images: tf.cast(model(images, training=False), tf.float32), input_signature=[spec])
    return require_openvino().convert_model(forward)


def _save_ir(model: keras.Model, folder: Path) -> None:
    """Convert `model` and save it as IR in `folder`, written whole or not at all."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder.parent, folder.name)
    try:
        require_openvino().save_model(convert(model), staging / IR_FILE)
        os.replace(staging, folder)
    except OSError:
        if not folder.exists():  # Another run won the race: its copy is the same model.
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def probe_batch(model: keras.Model, preprocess: Callable, *, count: int = 4, seed: int = 0) -> np.ndarray:
    """A few smooth random pictures (coarse noise, resized up) at the model's input size, preprocessed as photos are.

    Inputs in the range and texture of real images, so that the parity check
    sees the activations real images give, not those of white noise.
    """
    size = model.input_shape[1:3]
    coarse = np.random.default_rng(seed).integers(0, 256, (count, 8, 8, 3)).astype(np.float32)
    pictures = tf.image.resize(coarse, size, method="bicubic")
    return np.asarray(preprocess(tf.clip_by_value(pictures, 0, 255)), np.float32)


def cosine_to_tensorflow(model: keras.Model, forward: Callable, probe: np.ndarray) -> float:
    """The least cosine similarity, over the probe's rows, of `forward`'s outputs to the Keras model's own in fp32."""
    # A tensor, not the array: Keras warns that an array "doesn't match the expected structure" of a cut model's inputs.
    reference = np.asarray(model(tf.constant(probe), training=False), np.float64).reshape(len(probe), -1)
    ours = np.asarray(forward(probe), np.float64).reshape(len(probe), -1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(ours, axis=1)
    same = np.all(reference == ours, axis=1)  # All-zero rows (a ReLU output) are equal, with no angle to measure.
    cosine = np.where(same, 1.0, np.sum(reference * ours, axis=1) / np.where(norms > 0, norms, 1.0))
    return float(cosine.min())


def _runner(compiled, hint: str) -> Callable[[object], np.ndarray]:
    """A batch to outputs: one synchronous request (LATENCY), or the batch split over the streams, run together."""
    if hint == QUERIES:
        request, output = compiled.create_infer_request(), compiled.output(0)
        return lambda images: request.infer([np.asarray(images, np.float32)], share_inputs=True)[output]
    openvino = require_openvino()
    queue = openvino.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    parts: dict[int, np.ndarray] = {}
    queue.set_callback(lambda request, part: parts.__setitem__(part, request.get_output_tensor(0).data.copy()))

    def forward(images) -> np.ndarray:
        chunks = [chunk for chunk in np.array_split(np.asarray(images, np.float32), len(queue)) if len(chunk)]
        parts.clear()
        for part, chunk in enumerate(chunks):
            queue.start_async([chunk], userdata=part, share_inputs=True)  # No copy: `images` outlives the requests.
        queue.wait_all()
        return np.concatenate([parts[part] for part in range(len(chunks))])

    return forward


def cached_facts(key: dict, precision: str) -> dict | None:
    """The facts stored with a converted model whose conversion and parity check are done, else None (build it)."""
    folder = cache_folder({**key, "precision": resolve_precision(precision)})
    if all((folder / name).is_file() for name in (IR_FILE, PARITY_FILE, FACTS_FILE)):
        return json.loads((folder / FACTS_FILE).read_text())
    return None


def _compile(load: Callable[[], keras.Model], label: str, key: dict | None, precision: str, preprocess: Callable,
             hint: str, facts: dict | None) -> tuple[Callable, float]:
    """The compiled forward pass at `precision`, and its cosine to TensorFlow fp32 (kept in the cache folder).

    The Keras network (`load`) is built only for what the cache lacks: the
    conversion, or the parity check.
    """
    openvino = require_openvino()
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": hint}
    folder = None
    if key is None:
        compiled = openvino.Core().compile_model(convert(load()), "CPU", config)
    else:
        folder = cache_folder({**key, "precision": precision})
        if (folder / IR_FILE).is_file():
            logger.debug("OpenVINO: converted model from the cache %s", folder)
        else:
            logger.info("OpenVINO: converting %s for the CPU (once: later runs read it from the cache)", label)
            logger.debug("OpenVINO: cache folder %s", folder)
            _save_ir(load(), folder)
        compiled = openvino.Core().compile_model(folder / IR_FILE, "CPU", {**config, "CACHE_DIR": str(folder)})
    forward = _runner(compiled, hint)
    if folder is not None and facts is not None and not (folder / FACTS_FILE).is_file():
        write_text(folder / FACTS_FILE, json.dumps(facts))
    parity = folder / PARITY_FILE if folder is not None else None
    if parity is not None and parity.is_file():
        return forward, json.loads(parity.read_text())["min_cosine"]
    cosine = cosine_to_tensorflow(load(), forward, probe_batch(load(), preprocess))
    if parity is not None:
        write_text(parity, json.dumps({"min_cosine": cosine, "probe_images": 4}))
    return forward, cosine


def openvino_forward(load: Callable[[], keras.Model], *, label: str, key: dict | None, precision: str,
                     preprocess: Callable, hint: str = BATCHES,
                     facts: dict | None = None) -> tuple[Callable[[object], np.ndarray], str]:
    """A Keras network's forward pass compiled by OpenVINO for the CPU (a batch, NHWC float32, to float32), and its precision.

    `load` gives the network (cut at the layer), called only when the cache
    lacks what it is needed for; `label` names it in messages. `key` names
    the network for the cache (see `cache_folder`); None for one no key
    names (random weights), converted anew. `precision` is fp32, bf16 or
    auto (`resolve_precision`). `hint` is BATCHES for runs over many images,
    QUERIES for one at a time. `facts` (JSON) are stored beside the model,
    for `cached_facts` to give a later run.

    Before any image goes through it, the compiled pass runs a probe batch
    (`preprocess`ed pictures) beside TensorFlow fp32: a precision whose
    outputs fall below MIN_COSINE of TensorFlow's is refused, as its
    neighbours would no longer be TensorFlow's; `auto` then falls back to
    fp32. The cosine is measured once per cached model.
    """
    chosen = resolve_precision(precision)
    forward, cosine = _compile(load, label, key, chosen, preprocess, hint, facts)
    if cosine < MIN_COSINE and precision == "auto" and chosen != "fp32":
        logger.warning("OpenVINO %s: outputs only cosine %.5f from TensorFlow fp32's (below %s); running fp32",
                       chosen, cosine, MIN_COSINE)
        chosen = "fp32"
        forward, cosine = _compile(load, label, key, chosen, preprocess, hint, facts)
    if cosine < MIN_COSINE:
        fix = "run --precision fp32" if chosen != "fp32" else "run --runtime tensorflow"
        raise DataError(f"--runtime openvino --precision {chosen}: {label}'s outputs are only cosine {cosine:.5f} "
                        f"from TensorFlow fp32's on probe images (at least {MIN_COSINE} keeps the same neighbours); {fix}.")
    return forward, chosen
