"""Embedder: sentence-transformers (BGE by default), normalized vectors, batched, GPU if any."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import EmbeddingError

log = logging.getLogger(__name__)

# Retrieval instructions per model family. BGE v1.5 English models want theirs on queries only;
# E5 wants a prefix on both sides; bge-m3, MiniLM and most others want none.
_QUERY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("bge-m3", ""),
    ("bge-", "Represent this sentence for searching relevant passages: "),
    ("e5-", "query: "),
)
_PASSAGE_PREFIXES: tuple[tuple[str, str], ...] = (("e5-", "passage: "),)


def _prefix(model_name: str, table: tuple[tuple[str, str], ...]) -> str:
    name = model_name.lower().rsplit("/", 1)[-1]
    for marker, prefix in table:
        if marker in name:
            return prefix
    return ""


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """Turns passages and queries into unit-length vectors (cosine = inner product)."""

    def __init__(self, model_name: str, *, device: str = "auto", batch_size: int = 0) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model_name
        self.device = resolve_device(device)
        # Measured on an H100 (docs/benchmarks.md): batches of 128 are 1.5-2.6x faster than 32;
        # on CPU larger batches only add padding.
        self.batch_size = batch_size or (128 if self.device.startswith("cuda") else 32)
        try:
            self._model = SentenceTransformer(model_name, device=self.device)
        except Exception as exc:  # download refused, missing files, bad name, CUDA errors
            raise EmbeddingError(
                detail=f"cannot load embedding model {model_name!r} on {self.device}: {exc}"
            ) from exc
        if self.device.startswith("cuda"):
            self._model.half()  # fp16 on GPU: ~2x throughput, same rankings for BGE
        self.dim = int(self._model.get_embedding_dimension() or 0)
        # The encoder truncates past this many tokens: chunks are sized to stay under it.
        self.max_tokens = int(self._model.max_seq_length or 512)
        self.query_prefix = _prefix(model_name, _QUERY_PREFIXES)
        self.passage_prefix = _prefix(model_name, _PASSAGE_PREFIXES)
        # Counting tokens runs tens of thousands of times per reindex: go straight to the Rust
        # tokenizer (same ids as the transformers wrapper, ~1/3 of the cost per call).
        backend = getattr(self._model.tokenizer, "backend_tokenizer", None)
        self._counter = None
        if backend is not None:
            self._counter = copy.deepcopy(backend)
            self._counter.no_truncation()
            self._counter.no_padding()
        # The model is shared by the indexer and searchers running in threads.
        self._lock = threading.Lock()
        log.info(
            "embedding model %s on %s: dim=%d max_tokens=%d",
            model_name,
            self.device,
            self.dim,
            self.max_tokens,
        )

    @property
    def tokenizer(self) -> Any:
        return self._model.tokenizer

    def count_tokens(self, text: str) -> int:
        """Tokens the encoder sees for `text`, special tokens included."""
        if self._counter is not None:
            return len(self._counter.encode(text, add_special_tokens=True).ids)
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """One normalized float32 row per passage."""
        return self._encode([self.passage_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([self.query_prefix + text])[0]

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            with self._lock:
                vectors = self._model.encode(
                    texts,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        except Exception as exc:
            raise EmbeddingError(detail=f"encoding failed: {exc}") from exc
        return np.asarray(vectors, dtype=np.float32)
