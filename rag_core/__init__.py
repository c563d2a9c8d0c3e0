"""rag_core: sources -> chunks -> embeddings -> Milvus; question -> search -> prompt -> vLLM."""
