"""Answering: prepare (retrieve, decide), then stream from the model with checked citations."""
