"""2-D maps of features (t-SNE, PCA) and the plots the runs write."""
