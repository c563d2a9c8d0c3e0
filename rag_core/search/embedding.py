"""Embedder: sentence-transformers (BGE by default), normalized vectors, batched, GPU if any.

On CPU hosts EMBEDDING_BACKEND=onnx runs the same model in ONNX Runtime (onnx_encoder.py).

One worker thread owns the model and serves two queues. Queries go first and all the queries
waiting are encoded in one call (concurrent questions share a forward pass); passages are encoded
one batch at a time, so a question asked during a reindex waits for one batch, not the whole job.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import tempfile
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbeddingError
from ..model_source import check_model_available
from .onnx_encoder import BACKENDS, OnnxEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFamily:
    """What the embedder does differently for a family of models."""

    name: str
    query_prefix: str = ""  # the retrieval instruction put before each question
    passage_prefix: str = ""
    multilingual: bool = False  # questions in other languages find English passages


# Matched in order against the model's name (the last part of a path or hub id, lowercased).
# BGE English v1.5 models want their instruction on queries only; bge-m3 (XLM-RoBERTa, 100+
# languages, an 8192-token window that the model's own config sets) wants none; E5 wants a
# prefix on both sides; MiniLM and most others want none.
FAMILIES: tuple[tuple[str, ModelFamily], ...] = (
    ("bge-m3", ModelFamily("bge-m3", multilingual=True)),
    (
        "bge-",
        ModelFamily("bge-en", "Represent this sentence for searching relevant passages: "),
    ),
    ("multilingual-e5", ModelFamily("e5", "query: ", "passage: ", multilingual=True)),
    ("e5-", ModelFamily("e5", "query: ", "passage: ")),
)
PLAIN = ModelFamily("plain")


def model_family(model_name: str) -> ModelFamily:
    """The family of `model_name` (a hub id or a local folder named after the model)."""
    name = model_name.lower().rstrip("/").rsplit("/", 1)[-1]
    return next((family for marker, family in FAMILIES if marker in name), PLAIN)


# Queries are short: one call can take many of them.
_MAX_QUERIES_PER_CALL = 64


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: Future[np.ndarray]
    # Passages are encoded longest first (less padding per batch), then put back in order.
    order: list[int] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)
    done: int = 0


def _settle(future: Future[np.ndarray], result: np.ndarray | BaseException) -> None:
    """Resolve a future unless its caller already cancelled it."""
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """Turns passages and queries into unit-length vectors (cosine = inner product)."""

    def __init__(
        self,
        model_name: str,
        *,
        device: str = "auto",
        batch_size: int = 0,
        backend: str = "torch",
        onnx_cache: Path | None = None,
    ) -> None:
        """`backend` onnx or onnx-int8 runs the model in ONNX Runtime on CPU (onnx_encoder.py),
        exported once into `onnx_cache` (DATA_DIR/models/onnx)."""
        check_model_available(model_name, setting="EMBEDDING_MODEL", what="embedding model")
        from sentence_transformers import SentenceTransformer

        if backend not in BACKENDS:
            raise EmbeddingError(detail=f"unknown embedding backend {backend!r}: {BACKENDS}")
        self.model_name = model_name
        self.backend = backend
        # ONNX Runtime runs here on CPU only (the GPU path stays torch, fp16).
        self.device = "cpu" if backend != "torch" else resolve_device(device)
        # Measured (docs/benchmarks.md): on an H100 batches of 128 are 1.5-2.6x faster than 32;
        # on CPU batches of 8 are 1.15x faster than 32 (less padding) and keep queries' wait short.
        self.batch_size = batch_size or (128 if self.device.startswith("cuda") else 8)
        try:
            self._model = SentenceTransformer(model_name, device=self.device)
        except Exception as exc:  # download refused, missing files, bad name, CUDA errors
            raise EmbeddingError(
                detail=f"cannot load embedding model {model_name!r} on {self.device}: {exc}"
            ) from exc
        if self.device.startswith("cuda"):
            self._model.half()  # fp16 on GPU: ~2x throughput, same rankings for BGE
        self._onnx: OnnxEncoder | None = None
        if backend != "torch":
            cache = onnx_cache or Path(tempfile.gettempdir()) / "rag-core-onnx"
            self._onnx = OnnxEncoder(self._model, model_name, backend, cache)
        # int8 quantizes activations per run: a question's vector would depend on the questions
        # encoded beside it (cosine down to 0.976 to itself alone). Encoded alone, it is the
        # same vector at any load; sharing calls measured no clear gain with int8
        # (docs/benchmarks.md: 81 vs 76 q/s at 32 concurrent, within the run-to-run noise).
        self.queries_per_call = 1 if backend == "onnx-int8" else _MAX_QUERIES_PER_CALL
        self.dim = int(self._model.get_embedding_dimension() or 0)
        # The encoder truncates past this many tokens: chunks are sized to stay under it.
        self.max_tokens = int(self._model.max_seq_length or 512)
        self.family = model_family(model_name)
        self.query_prefix = self.family.query_prefix
        self.passage_prefix = self.family.passage_prefix
        # Counting tokens runs tens of thousands of times per reindex: go straight to the Rust
        # tokenizer (same ids as the transformers wrapper, ~1/3 of the cost per call).
        rust = getattr(self._model.tokenizer, "backend_tokenizer", None)
        self._counter = None
        if rust is not None:
            self._counter = copy.deepcopy(rust)
            self._counter.no_truncation()
            self._counter.no_padding()
        self._cond = threading.Condition()
        self._queries: deque[_Job] = deque()
        self._passages: deque[_Job] = deque()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="embedder", daemon=True)
        self._worker.start()
        log.info(
            "embedding model %s (%s%s) on %s%s: dim=%d max_tokens=%d",
            model_name,
            self.family.name,
            ", multilingual" if self.family.multilingual else "",
            self.device,
            f" ({backend})" if backend != "torch" else "",
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

    # --- callers: sync (threads, CLI) and async (the event loop; no thread is held) ---------

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """One normalized float32 row per passage."""
        return self.submit_passages(texts).result()

    def embed_query(self, text: str) -> np.ndarray:
        return self.submit_query(text).result()

    async def aembed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.wrap_future(self.submit_passages(texts))

    async def aembed_query(self, text: str) -> np.ndarray:
        return await asyncio.wrap_future(self.submit_query(text))

    def submit_passages(self, texts: Sequence[str]) -> Future[np.ndarray]:
        prefixed = [self.passage_prefix + t for t in texts]
        order = sorted(range(len(prefixed)), key=lambda i: -len(prefixed[i]))
        return self._submit(self._passages, [prefixed[i] for i in order], order)

    def submit_query(self, text: str) -> Future[np.ndarray]:
        return self._submit(self._queries, [self.query_prefix + text], [])

    def close(self) -> None:
        """Stop the worker after the batch in hand; waiting callers get an EmbeddingError."""
        with self._cond:
            self._closed = True
            waiting = [*self._queries, *self._passages]
            self._queries.clear()
            self._passages.clear()
            self._cond.notify_all()
        for job in waiting:
            _settle(job.future, EmbeddingError(detail="the embedder was closed"))
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout=60)

    def _submit(self, queue: deque[_Job], texts: list[str], order: list[int]) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        if not texts:
            future.set_result(np.zeros((0, self.dim), dtype=np.float32))
            return future
        with self._cond:
            if self._closed:
                raise EmbeddingError(detail="the embedder was closed")
            queue.append(_Job(texts, future, order))
            self._cond.notify()
        return future

    # --- the worker ------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            jobs: list[_Job] = []
            passage: _Job | None = None
            with self._cond:
                while not (self._queries or self._passages or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                if self._queries:
                    while self._queries and len(jobs) < self.queries_per_call:
                        job = self._queries.popleft()
                        if not job.future.cancelled():
                            jobs.append(job)
                else:
                    passage = self._passages[0]
                    start = passage.done
                    passage.done = min(start + self.batch_size, len(passage.texts))
                    if passage.done == len(passage.texts) or passage.future.cancelled():
                        self._passages.popleft()
            if passage is not None:
                if not passage.future.cancelled():
                    self._encode_slice(passage, start)
            elif jobs:
                self._encode_queries(jobs)

    def _encode_queries(self, jobs: list[_Job]) -> None:
        try:
            vectors = self._encode([j.texts[0] for j in jobs], batch_size=len(jobs))
        except EmbeddingError as exc:
            for job in jobs:
                _settle(job.future, exc)
            return
        for job, vector in zip(jobs, vectors, strict=True):
            _settle(job.future, vector)

    def _encode_slice(self, job: _Job, start: int) -> None:
        try:
            job.parts.append(self._encode(job.texts[start : job.done], batch_size=self.batch_size))
        except EmbeddingError as exc:
            with self._cond:
                if self._passages and self._passages[0] is job:
                    self._passages.popleft()
            _settle(job.future, exc)
            return
        if job.done == len(job.texts):
            vectors = np.empty((len(job.texts), self.dim), dtype=np.float32)
            vectors[job.order] = np.concatenate(job.parts)
            _settle(job.future, vectors)

    def _encode(self, texts: list[str], *, batch_size: int) -> np.ndarray:
        try:
            if self._onnx is not None:  # callers pass one batch: one padded run
                return self._onnx.encode(texts)
            vectors = self._model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except Exception as exc:
            raise EmbeddingError(detail=f"encoding failed: {exc}") from exc
        return np.asarray(vectors, dtype=np.float32)
