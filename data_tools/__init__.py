"""Everything of image-toolkit that needs no neural network, one sub-package per concern.

- `formats`: label and metadata CSVs, image files, feature files, model-file metadata, missing labels;
- `search`: exact neighbours, the faiss index, keyword search, Rocchio refinement, retrieval scores;
- `feedback`: the feedback store (event checks, import, export), resampling, simulated users;
- `maps`: 2-D maps (t-SNE, PCA) and plots;
- `web`: the web app and its page.

The modules at this level (`errors`, `atomic`, `names`, `checks`, `progress`, `provenance`) are shared by
all of them; `make_demo_data` writes the demo data (`toolkit demo-data`).
Nothing here imports `image_toolkit.models` or `image_toolkit.cli` (import-linter checks it).
"""
