"""open_rag(settings): builds every rag_core resource once and closes them in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .answer.answering import Answerer
from .answer.llm import Generator, create_generator
from .config import Settings
from .ingest.chunking import Chunker
from .ingest.indexer import Indexer
from .quality.gate import ReindexGate
from .search.embedding import Embedder
from .search.rerank import make_reranker
from .search.retrieval import Retriever
from .search.store import Fusion, KnowledgeStore
from .search.verified import VerifiedIndex

log = logging.getLogger(__name__)


@dataclass
class Rag:
    """The opened resources; the bot and the CLI hold one of these for their lifetime."""

    settings: Settings
    embedder: Embedder
    store: KnowledgeStore
    indexer: Indexer
    retriever: Retriever
    generator: Generator | None = None
    answerer: Answerer | None = None

    @property
    def verified(self) -> VerifiedIndex:
        """Verified answers in the knowledge base (added, removed, carried over by reindexes)."""
        return self.indexer.verified

    def require_answerer(self) -> Answerer:
        if self.answerer is None:
            raise RuntimeError("open_rag(..., with_llm=True) is needed to answer")
        return self.answerer


def _open_store(settings: Settings) -> KnowledgeStore:
    if settings.is_milvus_lite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return KnowledgeStore(
        settings.milvus_target,
        token=settings.milvus_token.get_secret_value(),
        alias=settings.collection,
        fusion=Fusion(
            candidates=settings.search_candidates,
            rrf_k=settings.fusion_rrf_k,
            dense_weight=settings.fusion_dense_weight,
        ),
    )


def open_embedder(settings: Settings) -> Embedder:
    """The embedding model as the settings name it (backend, device, ONNX cache under DATA_DIR)."""
    return Embedder(
        settings.embedding_model,
        device=settings.embedding_device,
        batch_size=settings.embedding_batch_size,
        backend=settings.embedding_backend,
        onnx_cache=settings.data_dir / "models" / "onnx",
    )


def live_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every passage of the live index (no vectors), without loading any model; none when a
    Milvus Lite file does not exist yet (and none is created)."""
    if settings.is_milvus_lite and not Path(settings.milvus_target).exists():
        return []
    store = _open_store(settings)
    try:
        return store.rows("")
    finally:
        store.close()


@asynccontextmanager
async def open_rag(
    settings: Settings,
    *,
    with_llm: bool = False,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> AsyncIterator[Rag]:
    """Open the store first (it fails fast when the database is locked), then the models.

    A Milvus Lite file that does not exist yet is created last, once the models have loaded,
    so a model that cannot be had leaves no empty database behind.
    `with_llm` also starts the answer engine (or uses `generator`, which the caller then owns).
    """
    new_lite_file = settings.is_milvus_lite and not await asyncio.to_thread(
        Path(settings.milvus_target).exists
    )
    store = None if new_lite_file else await asyncio.to_thread(_open_store, settings)
    owned: Generator | None = None
    owned_embedder: Embedder | None = None
    try:
        if embedder is None:
            embedder = owned_embedder = await asyncio.to_thread(open_embedder, settings)
        chunker = Chunker(
            embedder.count_tokens,
            max_tokens=embedder.max_tokens,
            chunk_tokens=settings.chunk_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
        )
        if with_llm and generator is None:
            generator = owned = await create_generator(settings)
        if store is None:
            store = await asyncio.to_thread(_open_store, settings)
        # RERANK=llm needs the answer model: without it (indexing, `search`) the order stands.
        retriever = Retriever(settings, store, embedder, make_reranker(settings, generator))
        verified = VerifiedIndex(store, embedder)
        yield Rag(
            settings=settings,
            embedder=embedder,
            store=store,
            indexer=Indexer(
                settings,
                store,
                embedder,
                chunker,
                verified,
                # The gate searches without the reranker: both versions ranked alike, no engine.
                check=ReindexGate(settings, Retriever(settings, store, embedder), verified),
            ),
            retriever=retriever,
            generator=generator,
            answerer=Answerer(settings, retriever, generator) if generator else None,
        )
    finally:
        if owned is not None:
            await owned.aclose()
        if owned_embedder is not None:
            await asyncio.to_thread(owned_embedder.close)
        if store is not None:
            await asyncio.to_thread(store.close)
