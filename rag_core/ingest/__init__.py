"""Ingestion: sources -> load -> chunk -> embed -> write, published as a new index version.

Never imports answering or quality: the check before publishing is handed to the Indexer.
"""
