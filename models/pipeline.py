"""tf.data input pipelines shared by training, inference and feature extraction.

Files are read and decoded in parallel (JPEG, PNG, BMP and the first frame of
a GIF), converted to RGB whatever their mode (grayscale, palette), with
transparent parts composited onto the run's `--background`,
resized, passed through the backbone's own preprocessing, batched and
prefetched, so the model never waits on the disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from image_toolkit.data_tools.formats.background import Background, parse_background, to_rgb
from image_toolkit.models.runtime import tf

AUTOTUNE = tf.data.AUTOTUNE


def decode_rgb(path: tf.Tensor, background: Background | None = None) -> tf.Tensor:
    """Decode one file into a uint8 RGB tensor at its own size, transparency composited onto `background`.

    PNGs are decoded with their alpha channel (a palette or grey PNG's
    transparent colour becomes alpha) and blended onto `background` (default
    white) by `data_tools.formats.background`'s formula. TensorFlow's GIF
    decoder ignores transparency, and its BMP decoder reads a palette BMP's
    colour indices as grey levels and refuses 1-bit ones, so GIFs and BMPs of
    fewer than 24 bits per pixel (the bit count is at byte 28 of the header)
    are decoded by Pillow.
    """
    background = parse_background(None) if background is None else tuple(background)
    raw = tf.io.read_file(path)

    def palette_bmp() -> tf.Tensor:
        return tf.io.decode_raw(tf.strings.substr(raw, 28, 2), tf.uint16)[0] < 24

    magic = tf.strings.substr(raw, 0, 4)
    is_bmp = tf.logical_and(tf.strings.length(raw) >= 30, tf.strings.substr(raw, 0, 2) == b"BM")
    by_pillow = tf.logical_or(magic == b"GIF8", tf.cond(is_bmp, palette_bmp, lambda: tf.constant(False)))

    def decode() -> tf.Tensor:
        return tf.cond(
            magic == b"\x89PNG",
            lambda: _composite(tf.io.decode_png(raw, channels=4), background),
            lambda: tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8),
        )

    image = tf.cond(
        by_pillow,
        # Pillow reads the file again: numpy would strip the trailing NUL bytes of `raw`.
        lambda: tf.numpy_function(_pillow_rgb, [path, tf.constant(background, tf.int32)], tf.uint8, stateful=False),
        decode,
    )
    image.set_shape([None, None, 3])
    return image


def _composite(rgba: tf.Tensor, background: Background) -> tf.Tensor:
    """`data_tools.formats.background.composite` in TensorFlow: the same float32 steps, the same rounding."""
    alpha = tf.cast(rgba[..., 3:], tf.float32) / 255.0
    blended = tf.cast(rgba[..., :3], tf.float32) * alpha + tf.constant(background, tf.float32) * (1.0 - alpha)
    return tf.cast(tf.round(blended), tf.uint8)


def _pillow_rgb(path: np.ndarray, background: np.ndarray) -> np.ndarray:
    from PIL import Image

    with Image.open(os.fsdecode(np.asarray(path).item())) as image:  # bytes in a graph, an array eagerly.
        return np.asarray(to_rgb(image, tuple(int(value) for value in background)))


def load_image(path: tf.Tensor, image_size: int, background: Background | None = None) -> tf.Tensor:
    """Decode one file into a float32 RGB tensor of `image_size` x `image_size`."""
    return tf.image.resize(decode_rgb(path, background), [image_size, image_size], antialias=True)


def image_dataset(
    paths: Sequence[str],
    labels: np.ndarray | None = None,
    *,
    image_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    cache: bool = False,
    background: Background | None = None,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed images (and labels, when given), in file order unless shuffled.

    `weights` (with labels) adds a per-image loss weight as the third element,
    which Keras `fit` takes as `sample_weight`.

    `cache` keeps the decoded, resized images in memory after the first epoch:
    right for training sets that fit in RAM, where decoding would otherwise be
    repeated every epoch.
    """
    dataset = tf.data.Dataset.from_tensor_slices(list(map(str, paths)))
    if labels is not None:
        columns = [np.asarray(labels, dtype=np.float32)]
        if weights is not None:
            columns.append(np.asarray(weights, dtype=np.float32))
        dataset = tf.data.Dataset.zip(dataset, *map(tf.data.Dataset.from_tensor_slices, columns))
    else:
        dataset = dataset.map(lambda path: (path,))

    def decode(path, *rest):
        return (load_image(path, image_size, background), *rest)

    dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(min(len(paths), 10_000), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, num_parallel_calls=AUTOTUNE)

    def finish(images, *rest):
        if augment is not None:
            images = augment(images)
        images = preprocess(images)
        return (images, *rest) if rest else images

    return dataset.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def random_augmentation(seed: int | None = None):
    """Mild label-preserving changes for photos: flips, small rotations and zooms.

    Built from Keras preprocessing layers, which run as TensorFlow ops inside
    the tf.data graph (on the CPU, overlapping with training).
    """
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, seed=seed),
            keras.layers.RandomZoom(0.1, seed=seed),
        ],
        name="augmentation",
    )


def pair_dataset(
    paths: Sequence[str],
    first: np.ndarray,
    second: np.ndarray,
    targets: dict[str, np.ndarray],
    *,
    image_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    batch_size: int,
    background: Background | None = None,
) -> tf.data.Dataset:
    """Batches of image pairs `{"image_a", "image_b"}` with per-pair `targets` (same class, classes)."""
    paths = tf.constant(list(map(str, paths)))
    dataset = tf.data.Dataset.from_tensor_slices(((first, second), targets))

    def decode(rows, target):
        images = {
            "image_a": load_image(tf.gather(paths, rows[0]), image_size, background),
            "image_b": load_image(tf.gather(paths, rows[1]), image_size, background),
        }
        return images, target

    dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE).batch(batch_size, num_parallel_calls=AUTOTUNE)

    def finish(images, target):
        return {name: preprocess(batch) for name, batch in images.items()}, target

    return dataset.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def views_dataset(
    paths: Sequence[str],
    order: np.ndarray,
    *,
    image_size: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    batch_size: int,
    view: Callable[[tf.Tensor, int], tf.Tensor],
    background: Background | None = None,
) -> tf.data.Dataset:
    """Batches `(view_a, view_b)`: two random views of the same images, for contrastive learning.

    Images are decoded at their stored size; each view is drawn afresh
    every epoch.
    """
    paths = tf.constant(list(map(str, paths)))
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(order))

    def decode(row):
        return tf.cast(decode_rgb(tf.gather(paths, row), background), tf.float32)

    def two_views(image):
        return view(image, image_size), view(image, image_size)

    dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE).map(two_views, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    return dataset.map(lambda a, b: (preprocess(a), preprocess(b)), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
