"""Label and metadata CSVs, image files, feature files and folders, model-file metadata and missing labels."""
