"""Training throughput from image files through tf.data, against the same model on in-memory tensors.

Prints, measured in one run:
* files / in-memory: images/s of training steps fed by the real pipeline
  (read, decode, resize, preprocess, shuffle, batch, prefetch; no cache)
  divided by images/s of the same model on the same images already decoded
  and preprocessed in memory (goal >= 0.90);
* XLA / plain: images/s of the XLA-compiled training step divided by the
  plain one, both in memory, and XLA's one-off compile time.

Timings on a shared 2-core machine wander by tens of per cent from call to
call, so the sources are measured in alternating rounds and the best round
of each is compared.

    python benchmarks/bench_input_pipeline.py [--backbone resnet50] [--image_size 224] [--steps 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from image_toolkit.models.backbones import get_backbone
from image_toolkit.models.classifier import ImageClassifier
from image_toolkit.models.losses import MaskedBinaryCrossentropy
from image_toolkit.models.pipeline import image_dataset
from image_toolkit.models.runtime import keras, tf


def write_jpegs(folder: Path, count: int, size: int) -> list[Path]:
    """Photo-sized JPEGs of smooth random content (decoding cost like real photos)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size + 32, size), Image.BICUBIC)
        path = folder / f"{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def build(args, jit_compile: bool) -> keras.Model:
    model = ImageClassifier(args.backbone, weights="none", image_size=args.image_size, classes=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=MaskedBinaryCrossentropy(), jit_compile=jit_compile)
    return model


def images_per_second(model: keras.Model, dataset, steps: int, batch_size: int) -> tuple[float, float]:
    """(images/s over `steps` timed steps, seconds of the untimed warm-up that compiles the step)."""
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    return steps * batch_size / (time.perf_counter() - started), warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    preprocess = get_backbone(args.backbone).preprocess
    n_images = args.batch_size * (args.steps + 2)

    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), n_images, max(args.image_size, 256))
        labels = np.random.default_rng(1).integers(0, 2, (n_images, 4)).astype(np.float32)
        from_files = image_dataset(
            paths, labels, image_size=args.image_size, preprocess=preprocess, batch_size=args.batch_size, shuffle=True, seed=0
        ).repeat()
        decoded = np.concatenate([images.numpy() for images, _ in from_files.take(n_images // args.batch_size)])
        in_memory = tf.data.Dataset.from_tensor_slices((decoded, labels)).batch(args.batch_size).repeat()

        plain, xla = build(args, jit_compile=False), build(args, jit_compile=True)
        rates = {"files": [], "memory": [], "xla": []}
        xla_compile = 0.0
        for _ in range(args.rounds):
            rates["files"].append(images_per_second(plain, from_files, args.steps, args.batch_size)[0])
            rates["memory"].append(images_per_second(plain, in_memory, args.steps, args.batch_size)[0])
            xla_rate, warmup = images_per_second(xla, in_memory, args.steps, args.batch_size)
            rates["xla"].append(xla_rate)
            xla_compile = max(xla_compile, warmup)
        files_rate, memory_rate, xla_rate = (max(rates[key]) for key in ("files", "memory", "xla"))

    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, best of {args.rounds} rounds of {args.steps} training steps, "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
    print(f"training from JPEG files (tf.data): {files_rate:8.2f} images/s")
    print(f"training on in-memory tensors:      {memory_rate:8.2f} images/s")
    print(f"files / in-memory:                  {files_rate / memory_rate:8.3f}   (goal >= 0.90)")
    print(f"XLA training step, in memory:       {xla_rate:8.2f} images/s  (one-off compile + 2 steps: {xla_compile:.1f} s)")
    print(f"XLA / plain:                        {xla_rate / memory_rate:8.3f}")


if __name__ == "__main__":
    main()
