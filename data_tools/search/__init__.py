"""Finding neighbours: exact all-against-all search, the faiss index, keyword search, Rocchio refinement, retrieval scores."""
