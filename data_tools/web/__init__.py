"""The web app (FastAPI) and its page; the image embedder is passed in by the caller."""
