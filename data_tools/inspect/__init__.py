"""Look at an image set before training on it: counts, sizes, unreadable files, duplicates, outliers (no TensorFlow)."""

from image_toolkit.data_tools.inspect.report import ImageSet, features_for, image_set, inspect_images
from image_toolkit.data_tools.inspect.scan import ImageInfo, scan_images
from image_toolkit.data_tools.inspect.similar import (
    DUPLICATE_DISTANCE,
    near_duplicate_groups,
    outlier_scores,
    pixel_features,
)

__all__ = [
    "DUPLICATE_DISTANCE", "ImageInfo", "ImageSet", "features_for", "image_set", "inspect_images",
    "near_duplicate_groups", "outlier_scores", "pixel_features", "scan_images",
]
