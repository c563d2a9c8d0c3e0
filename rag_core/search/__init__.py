"""Search: the embedder, the Milvus store, and retrieval over them (cleaning, fusion, reranking,
verified answers first)."""
