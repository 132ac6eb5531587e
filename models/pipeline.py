"""tf.data input pipelines shared by training, inference and feature extraction.

Files are read and decoded in parallel (JPEG, PNG, BMP and the first frame of
a GIF), converted to RGB whatever their mode (grayscale, palette, alpha),
resized, passed through the backbone's own preprocessing, batched and
prefetched, so the model never waits on the disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from image_toolkit.models.runtime import tf

AUTOTUNE = tf.data.AUTOTUNE


def decode_rgb(path: tf.Tensor) -> tf.Tensor:
    """Decode one file into a uint8 RGB tensor at its own size.

    TensorFlow's BMP decoder reads a palette BMP's colour indices as grey
    levels and refuses 1-bit ones, so BMPs of fewer than 24 bits per pixel
    (the bit count is at byte 28 of the header) are decoded by Pillow.
    """
    raw = tf.io.read_file(path)

    def palette_bmp() -> tf.Tensor:
        return tf.io.decode_raw(tf.strings.substr(raw, 28, 2), tf.uint16)[0] < 24

    is_bmp = tf.logical_and(tf.strings.length(raw) >= 30, tf.strings.substr(raw, 0, 2) == b"BM")
    image = tf.cond(
        tf.cond(is_bmp, palette_bmp, lambda: tf.constant(False)),
        # Pillow reads the file again: numpy would strip the trailing NUL bytes of `raw`.
        lambda: tf.numpy_function(_pillow_rgb, [path], tf.uint8, stateful=False),
        lambda: tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8),
    )
    image.set_shape([None, None, 3])
    return image


def _pillow_rgb(path: np.ndarray) -> np.ndarray:
    from PIL import Image

    with Image.open(os.fsdecode(np.asarray(path).item())) as image:  # bytes in a graph, an array eagerly.
        return np.asarray(image.convert("RGB"))


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode one file into a float32 RGB tensor of `image_size` x `image_size`."""
    return tf.image.resize(decode_rgb(path), [image_size, image_size], antialias=True)


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
) -> tf.data.Dataset:
    """Batches of preprocessed images (and labels, when given), in file order unless shuffled.

    `cache` keeps the decoded, resized images in memory after the first epoch:
    right for training sets that fit in RAM, where decoding would otherwise be
    repeated every epoch.
    """
    dataset = tf.data.Dataset.from_tensor_slices(list(map(str, paths)))
    if labels is not None:
        dataset = tf.data.Dataset.zip(
            dataset, tf.data.Dataset.from_tensor_slices(np.asarray(labels, dtype=np.float32))
        )
    else:
        dataset = dataset.map(lambda path: (path,))

    def decode(path, *rest):
        return (load_image(path, image_size), *rest)

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
) -> tf.data.Dataset:
    """Batches of image pairs `{"image_a", "image_b"}` with per-pair `targets` (same class, classes)."""
    paths = tf.constant(list(map(str, paths)))
    dataset = tf.data.Dataset.from_tensor_slices(((first, second), targets))

    def decode(rows, target):
        images = {
            "image_a": load_image(tf.gather(paths, rows[0]), image_size),
            "image_b": load_image(tf.gather(paths, rows[1]), image_size),
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
) -> tf.data.Dataset:
    """Batches `(view_a, view_b)`: two random views of the same images, for contrastive learning.

    Images are decoded at their stored size; each view is drawn afresh
    every epoch.
    """
    paths = tf.constant(list(map(str, paths)))
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(order))

    def decode(row):
        return tf.cast(decode_rgb(tf.gather(paths, row)), tf.float32)

    def two_views(image):
        return view(image, image_size), view(image, image_size)

    dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE).map(two_views, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    return dataset.map(lambda a, b: (preprocess(a), preprocess(b)), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
