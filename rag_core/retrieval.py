"""Retriever: question -> query vector -> hybrid (or dense) search -> hits, with timings."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .config import Settings
from .documents import Hit
from .embedding import Embedder
from .store import KnowledgeStore


@dataclass(frozen=True)
class Retrieval:
    hits: list[Hit]
    embed_s: float
    search_s: float


class Retriever:
    def __init__(self, settings: Settings, store: KnowledgeStore, embedder: Embedder) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder

    async def retrieve(
        self, question: str, *, top_k: int | None = None, filter: str | None = None
    ) -> Retrieval:
        """Embed (the embedder's own thread) and search (a worker thread): the loop stays free."""
        t0 = time.perf_counter()
        vector = await self.embedder.aembed_query(question)
        t1 = time.perf_counter()
        hits = await asyncio.to_thread(
            self.store.search,
            vector,
            question,
            top_k=top_k or self.settings.top_k,
            mode=self.settings.search_mode,
            filter=filter,
        )
        t2 = time.perf_counter()
        return Retrieval(hits=hits, embed_s=t1 - t0, search_s=t2 - t1)
