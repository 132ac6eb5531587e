"""Turn images into CNN features: `toolkit get-inception-output` and `toolkit get-transfer-layer`.

The original scripts loaded and predicted one image at a time. Here images
stream through the training pipeline (parallel decode, batch, prefetch) into
one compiled forward pass per batch; the last batch is padded to full size so
the pass is traced once. Each batch's features go straight to the writer,
so no run holds all its features in memory. Extending an image set (`append`) computes only the
new images, and a large set can be split into shards for a job array and
merged afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from image_toolkit.data_tools.checks import check_range
from image_toolkit.data_tools.errors import DataError, OptionError
from image_toolkit.data_tools.formats.background import background_name, model_background, parse_background
from image_toolkit.data_tools.formats.csv_files import read_checked_csv
from image_toolkit.data_tools.formats.features import (
    EXTRACTION_KEYS,
    MODEL_FILE_WEIGHTS,
    comparable,
    feature_blocks,
    open_features,
    shown_model,
    write_feature_blocks,
)
from image_toolkit.data_tools.formats.images import IMAGE_SUFFIXES, check_images, find_images, report_skipped, require_readable
from image_toolkit.data_tools.formats.metadata import ROOT_COLUMN
from image_toolkit.data_tools.names import check_runtime, default_precision
from image_toolkit.models.backbones import NO_WEIGHTS, PIXELS, build_backbone, get_backbone, preprocessing, unit_range
from image_toolkit.models.inference import load_classifier, load_embedding_model
from image_toolkit.models.openvino_runtime import (
    BATCHES,
    QUERIES,
    cached_facts,
    file_digest,
    model_file_key,
    openvino_forward,
)
from image_toolkit.models.pipeline import image_dataset
from image_toolkit.models.runtime import keras, precision_policy, tf

logger = logging.getLogger(__name__)

OUTPUTS = ("scores", "pooled")
NAMED_MODELS = ("inceptionv3", "resnet50")
PIXELS_DEFAULT_SIZE = 32
# XLA-compiled inference, by model, where it measured faster (benchmarks/bench_extract.py).
# On 2 CPU cores it lost for both: ResNet50 23.8 -> 20.3 images/s, InceptionV3 34.4 -> 28.0.
XLA_INFERENCE = {"resnet50": False, "inceptionv3": False}


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A model cut at the wanted layer, its traced forward pass, the input it expects and how it was made.

    `load_model` gives the Keras network, built on first use of `model`: an
    OpenVINO extractor read from its cache runs without it, and skips the
    1-2 s that building ResNet50 or InceptionV3 and loading their weights take.
    """

    load_model: Callable[[], keras.Model]
    forward: object
    preprocess: object
    image_size: int
    metadata: dict

    @functools.cached_property
    def model(self) -> keras.Model:
        return self.load_model()


def keras_extractor(network: keras.Model, preprocess: Callable, image_size: int, metadata: dict, *,
                    jit_compile: bool = False) -> FeatureExtractor:
    """An extractor that runs `network` in TensorFlow: its traced forward pass (XLA if `jit_compile`)."""
    return FeatureExtractor(lambda: network, traced_forward(network, jit_compile), preprocess, image_size, metadata)


def _penultimate(model: keras.Model) -> str:
    return model.layers[-2].name


def _layer_output(model: keras.Model, name: str):
    """The symbolic output of layer `name` within `model`'s graph.

    A nested model (the backbone of a toolkit classifier) keeps its own inner
    graph as `.output`; it is called again on the outer input instead, which
    shares its weights.
    """
    layer = model.get_layer(name)
    if isinstance(layer, keras.Model):
        return layer(model.inputs[0], training=False)
    return layer.output


def pixel_network(image_size: int) -> keras.Model:
    """An image batch (float RGB, 0-255) to its pixels in [0, 1], flattened row by row, RGB innermost."""
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    return keras.Model(inputs, keras.layers.Flatten(name=PIXELS)(inputs), name=f"pixels_{image_size}")


def feature_extractor(
    model: str = "inceptionv3",
    *,
    output: str,
    layer: str | None = None,
    weights: str = "imagenet",
    image_size: int | None = None,
    precision: str = "fp32",
    background: str | None = None,
    runtime: str = "tensorflow",
    queries: bool = False,
) -> FeatureExtractor:
    """Build the network that maps a preprocessed batch to features.

    `model` is a named ImageNet network (`output` 'scores': its 1000 class
    scores; 'pooled': its pooled last convolutional layer, 2048-d) or the
    path of a toolkit model (`best_model.h5`, or an `embedding_model.keras`),
    cut at `layer` (default: a classifier's penultimate layer for 'pooled',
    the output for 'scores' and for an embedding model).

    `model` 'pixels' (with `output` 'pooled' only, no `layer`) gives each
    image's raw pixels: RGB, resized to `image_size` (default 32) by the same
    pipeline as any model, scaled to [0, 1] (pixel / 255), flattened to
    `image_size` x `image_size` x 3 float32 values in row, column, channel
    order. `weights` does not apply to it; a weights file is refused.

    `background` ('white', 'black' or 'R,G,B') is what transparent images are
    composited onto; recorded in the metadata. Default: a model file's own
    (a different one is refused: its features would not be what it learned
    from), else white.

    `runtime` 'openvino' runs the same network with OpenVINO on the CPU
    (`precision` fp32, bf16 or auto); the metadata then records the runtime
    and the precision it ran. `queries` tunes it for a few images at a time
    (a search query) rather than for batches.
    """
    if output not in OUTPUTS:
        raise OptionError(f"output: expected one of {OUTPUTS}. Received: {output!r}")
    check_runtime(runtime, precision)
    if model == PIXELS:
        if output == "scores":
            raise OptionError("--model pixels: raw pixels have no class scores; use toolkit get-transfer-layer --model pixels.")
        if layer is not None:
            raise OptionError("--layer: --model pixels has no layers to choose from; leave out --layer.")
        if weights not in (*NO_WEIGHTS, "imagenet"):
            raise OptionError(f"--weights {weights}: --model pixels has no weights; leave out --weights.")
        if runtime != "tensorflow":
            raise OptionError(f"--runtime {runtime}: --model pixels has no network to run; leave out --runtime.")
        size = image_size or PIXELS_DEFAULT_SIZE
        check_range("--image-size", size, low=1)
        network = pixel_network(size)
        metadata = {"model": PIXELS, "output": output, "layer": PIXELS, "image_size": size, "weights": "none",
                    "precision": "fp32", "background": background_name(background)}
        return keras_extractor(network, unit_range, size, metadata)
    if runtime == "tensorflow":
        network, preprocess_name, metadata, jit_compile = _network(
            model, output=output, layer=layer, weights=weights, image_size=image_size, precision=precision, background=background)
        return keras_extractor(network, preprocessing(preprocess_name), metadata["image_size"], metadata, jit_compile=jit_compile)
    key = _cache_key(model, output=output, layer=layer, weights=weights, image_size=image_size, background=background)
    # OpenVINO converts the fp32 network and applies its own precision.
    built = functools.cache(lambda: _network(model, output=output, layer=layer, weights=weights, image_size=image_size,
                                             precision="fp32", background=background))

    def load_network() -> keras.Model:
        return built()[0]

    facts = cached_facts(key, precision) if key is not None else None
    if facts is None:
        _, preprocess_name, metadata, _ = built()
        facts = {"metadata": metadata, "preprocess": preprocess_name}
    # The entry is keyed by the files' bytes: the paths recorded are this run's (a model file may have moved).
    here = {"weights": weights} if model in NAMED_MODELS else {"model": str(Path(model).resolve())}
    metadata, preprocess = {**facts["metadata"], **here}, preprocessing(facts["preprocess"])
    label = f"{Path(metadata['model']).name} ({metadata['layer']})"
    forward, ran = openvino_forward(load_network, label=label, key=key, precision=precision, preprocess=preprocess,
                                    hint=QUERIES if queries else BATCHES, facts=facts)
    return FeatureExtractor(load_network, forward, preprocess, metadata["image_size"],
                            {**metadata, "precision": ran, "runtime": runtime})


def _network(model: str, *, output: str, layer: str | None, weights: str, image_size: int | None, precision: str,
             background: str | None) -> tuple[keras.Model, str, dict, bool]:
    """The Keras network cut at the layer, the name of its preprocessing, the features' metadata, and whether XLA runs it."""
    with precision_policy(precision):
        if model in NAMED_MODELS:
            if layer is not None:
                raise OptionError(f"--layer applies to a model file; {model} gives its {output} layer.")
            size = image_size or get_backbone(model).default_size
            network = build_backbone(model, weights=weights, image_size=size, include_top=output == "scores")
            preprocess_name, layer_name, jit_compile = model, network.layers[-1].name, XLA_INFERENCE[model]
        else:
            embedding = Path(model).suffix == ".keras"
            network, saved = load_embedding_model(model) if embedding else load_classifier(model)
            if image_size not in (None, saved["image_size"]):
                raise OptionError(f"--image-size: {model} was trained at {saved['image_size']} px. Received: {image_size}.")
            size, preprocess_name = saved["image_size"], saved["backbone"]
            background = model_background(saved, background, model)
            # An embedding model's output is the embedding; a classifier's transfer layer is its penultimate.
            default = network.layers[-1].name if output == "scores" or embedding else _penultimate(network)
            layer_name = layer or default
            names = [item.name for item in network.layers]
            if layer_name not in names:
                raise OptionError(f"--layer: {model} has no layer {layer_name!r}; its layers are {', '.join(names)}.")
            network = keras.Model(network.inputs, _layer_output(network, layer_name), name=f"{network.name}_{layer_name}")
            weights, jit_compile = MODEL_FILE_WEIGHTS, False
            model = Path(model).resolve()  # Recorded absolute: the features can be used from any folder.
    metadata = {"model": str(model), "output": output, "layer": layer_name,
                "image_size": size, "weights": weights, "precision": precision, "background": background_name(background)}
    return network, preprocess_name, metadata, jit_compile


def _cache_key(model: str, *, output: str, layer: str | None, weights: str, image_size: int | None,
               background: str | None) -> dict | None:
    """What decides a converted network and the metadata of its features: the request, with the model file's bytes.

    Keyed by what was asked (not by the layer and size it resolves to), so
    that a second run finds its entry before building the network. None for
    a named network without weights (each build has new random weights,
    which no cached copy has) and for a model file that is not there (the
    build names the fix).
    """
    request = {"output": output, "layer": layer, "image_size": image_size, "background": background}
    if model in NAMED_MODELS:
        if weights in NO_WEIGHTS:
            return None
        return {"model": model, "weights": file_digest(weights) if Path(weights).is_file() else weights, **request}
    if not Path(model).is_file():
        return None
    return model_file_key(model, **request)


def extractor_from_metadata(metadata: dict, *, runtime: str | None = None, precision: str | None = None,
                            queries: bool = False) -> FeatureExtractor:
    """Rebuild the extractor that made a feature file, from its metadata (to embed a query image).

    `runtime` and `precision` (None: the recorded ones) run the same network
    another way: OpenVINO's outputs are checked to be within cosine 0.999 of
    TensorFlow fp32's, so a query embedded by one finds the rows the other made.
    """
    recorded = metadata.get("runtime", "tensorflow")
    if precision is None:
        precision = metadata.get("precision", "fp32") if runtime in (None, recorded) else default_precision(runtime, None)
    missing = sorted({"model", "output", "layer", "image_size", "weights"} - metadata.keys())
    if missing:
        raise DataError(f"the features' metadata lacks {', '.join(missing)}; re-extract them with this toolkit version.")
    from_file = metadata["weights"] == MODEL_FILE_WEIGHTS
    return feature_extractor(
        metadata["model"],
        output=metadata["output"],
        layer=metadata["layer"] if from_file else None,
        weights="none" if from_file else metadata["weights"],
        image_size=None if from_file else metadata["image_size"],
        precision=precision,
        background=metadata.get("background"),
        runtime=runtime or recorded,
        queries=queries,
    )


def list_images(image_path: str | os.PathLike) -> tuple[Path, list[str]]:
    """The image root and the image paths relative to it, from a folder, an image or a CSV."""
    image_path = Path(image_path)
    if image_path.is_dir():
        paths = [path.relative_to(image_path).as_posix() for path in find_images(image_path)]
        if not paths:
            raise DataError(f"{image_path}: no image files (JPEG, PNG, BMP, GIF) in this folder or below it.")
        return image_path, paths
    if not image_path.is_file():
        raise DataError(f"{image_path}: no such file or folder; give a folder of images, an image or a CSV with an 'image' column.")
    if image_path.suffix.lower() in IMAGE_SUFFIXES:
        return image_path.parent, [image_path.name]
    frame = read_checked_csv(image_path, required=("image",), kind="image list CSV", example="image")
    roots = set(frame[ROOT_COLUMN].str.strip()) if ROOT_COLUMN in frame.columns else {""}
    if len(roots) == 1:  # A metadata CSV names its image folder in `root` (relative to the CSV): paths stay under it.
        return image_path.parent / roots.pop(), list(dict.fromkeys(frame["image"]))
    return image_path.parent, list(dict.fromkeys(f"{root}/{image}" if root else image
                                                 for root, image in zip(frame[ROOT_COLUMN].str.strip(), frame["image"])))


def traced_forward(model: keras.Model, jit_compile: bool):
    """The forward pass as one traced (optionally XLA-compiled) graph returning float32 features.

    Traced once per extractor and reused for every batch and every call.
    """

    def forward(images):
        return tf.cast(model(images, training=False), tf.float32)

    return tf.function(forward, jit_compile=jit_compile, reduce_retracing=True)


def feature_batches(
    extractor: FeatureExtractor, paths: list[Path], *, batch_size: int = 32, verbose: int = 1
) -> Iterator[np.ndarray]:
    """Features of every path (all readable), in order: one float32 block (rows x D) per batch, as it is computed.

    Extraction hands these straight to the writer, so a million images never
    have their features in memory at once.
    """
    dataset = image_dataset(paths, image_size=extractor.image_size, preprocess=extractor.preprocess, batch_size=batch_size,
                            background=parse_background(extractor.metadata.get("background")))
    bar = keras.utils.Progbar(len(paths), verbose=verbose, unit_name="image", stateful_metrics=["images/s"]) if verbose else None
    started, done = time.perf_counter(), 0
    for images in dataset:
        n = int(images.shape[0])
        if n < batch_size:  # pad the last batch, so the compiled pass keeps one shape
            images = tf.concat([images, tf.zeros([batch_size - n, *images.shape[1:]], images.dtype)], axis=0)
        yield np.asarray(extractor.forward(images))[:n].reshape(n, -1)
        done += n
        if bar is not None:
            bar.update(done, values=[("images/s", done / (time.perf_counter() - started))])


def compute_features(
    extractor: FeatureExtractor, paths: list[Path], *, batch_size: int = 32, verbose: int = 1
) -> np.ndarray:
    """Features of a few paths (all readable), in order, as one float32 array (N x D): a query's images."""
    return np.concatenate(list(feature_batches(extractor, paths, batch_size=batch_size, verbose=verbose)))


def extract(
    image_path: str | os.PathLike,
    output_path: str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 32,
    append: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    verbose: int = 1,
) -> dict:
    """Extract features for the images under `image_path` into `output_path`; return a summary.

    With `append`, rows already in `output_path` are kept and only images not
    yet there are computed. With `num_shards` > 1 this run takes every
    `num_shards`-th image starting at `shard_index` (`toolkit merge-features`
    joins the shards).
    """
    check_range("--num-shards", num_shards, low=1)
    check_range("--shard-index", shard_index, low=0, high=num_shards, high_open=True, why="--num-shards")
    check_range("--batch-size", batch_size, low=1)
    output_path = Path(output_path)
    root, paths = list_images(image_path)
    paths = paths[shard_index::num_shards]
    metadata = {**extractor.metadata, **({"num_shards": num_shards, "shard_index": shard_index} if num_shards > 1 else {})}
    previous = None
    if append and output_path.exists():
        previous = open_features(output_path)
        for key in EXTRACTION_KEYS:
            if comparable(previous.metadata, key) != comparable(metadata, key):
                raise DataError(
                    f"{output_path}: made with {key}={comparable(previous.metadata, key)!r}, this run has "
                    f"{key}={comparable(metadata, key)!r}; --append only extends a file with the same model, layer, background, runtime and precision."
                )
        known = set(previous.paths)
        paths = [path for path in paths if path not in known]
        if not paths:
            logger.info("%s: all %d images are already there; nothing to compute.", output_path, len(known))
            return {"path": str(output_path), "rows": len(known), "computed": 0, "skipped": 0, "dim": previous.features.shape[1]}
    usable, skipped = check_images([root / path for path in paths])
    readable = [path for path, ok in zip(paths, usable) if ok]
    require_readable(len(readable), skipped, str(image_path), fix="give a folder or CSV of JPEG, PNG, BMP or GIF files")
    report_skipped(skipped, output_path.parent, len(paths))
    paths = readable
    started = time.perf_counter()
    batches = feature_batches(extractor, [root / path for path in paths], batch_size=batch_size, verbose=verbose)
    first = next(batches)  # Its width is the features'.
    dim, computed, blocks = first.shape[1], len(paths), itertools.chain([first], batches)
    if previous is not None:  # The old rows streamed from the file, then the new ones as they are computed.
        paths = previous.paths + paths
        blocks = itertools.chain((block for _, block in feature_blocks(previous.features, where=output_path.name)), blocks)
    # The rows are written as they are computed, moved into place once all are; Progbar shows their progress.
    write_feature_blocks(output_path, paths, blocks, dim=dim, metadata=metadata, show=False)
    seconds = time.perf_counter() - started
    return {
        "path": str(output_path),
        "rows": len(paths),
        "computed": computed,
        "skipped": len(skipped),
        "dim": int(dim),
        "images_per_second": round(computed / seconds, 2),
        **shown_model(metadata),
    }
