"""Keras model builders, losses, metrics and callbacks of image-toolkit.

Importing any module of this package imports TensorFlow, quietly (see `models.runtime`).
"""

from models import runtime  # noqa: F401  (silences TensorFlow before Keras loads it)
