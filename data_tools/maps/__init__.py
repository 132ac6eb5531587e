"""2-D maps of features (t-SNE, PCA) and the plots the runs write.

MAX_POINTS lives here, free of numpy, so `toolkit tsne --help` shows the default without loading the maps.
"""

# Rows embedded (t-SNE) or fitted (PCA) at most; the others are placed on that map (see maps.embedding).
MAX_POINTS = 50_000
