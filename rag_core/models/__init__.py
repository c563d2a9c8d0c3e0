"""Models: fetching them for offline use and adapting the embedder to the docs."""
