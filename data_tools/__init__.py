"""Data handling for image-toolkit: label CSVs, image files, tf.data pipelines, feature files."""
