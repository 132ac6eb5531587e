"""Label and metadata CSVs, image files, feature files, model-file metadata and missing labels."""
