"""Retriever: question -> cleaned query -> vector -> hybrid (or dense) search -> diverse hits
(-> reordered by the answer model, RERANK=llm)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Settings
from ..documents import Hit
from ..errors import StoreError
from . import verified
from .embedding import Embedder
from .named_terms import mentions, named_terms
from .query_text import clean_query
from .rerank import Reranker
from .store import KnowledgeStore

log = logging.getLogger(__name__)

# Candidates ranked per hit kept, so the top ones can come from several pages.
_DIVERSITY_POOL = 4
# BM25's first passages for a dotted config key: if the docs name it, these do.
_TERM_PASSAGES = 10


@dataclass(frozen=True)
class Retrieval:
    hits: list[Hit]
    embed_s: float
    search_s: float
    query: str = ""  # what was searched: the question, cleaned of pasted noise
    rerank_s: float = 0.0  # the answer model reordering the hits (RERANK=llm)
    # The dotted config keys the question names, when the docs name none of them.
    unknown_terms: tuple[str, ...] = ()

    def gate(self, threshold: float, top_k: int | None = None) -> tuple[float, bool]:
        """The 'not in the docs' gate on the first `top_k` hits: (best cosine, refused).

        Refused when no passage reaches `threshold`, or when the docs never name a config key
        the question asks about."""
        hits = fold_near_duplicates(self.hits[:top_k])
        best = max((h.similarity for h in hits), default=0.0)
        return best, best < threshold or bool(self.unknown_terms)


def _shingles(text: str, size: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + size]) for i in range(max(1, len(words) - size + 1))}


def fold_near_duplicates(hits: Sequence[Hit], threshold: float = 0.8) -> list[Hit]:
    """Drop hits whose text mostly repeats a better one (same page versions, copied sections)."""
    kept: list[tuple[Hit, set[tuple[str, ...]]]] = []
    for hit in hits:
        sh = _shingles(hit.text)
        if any(len(sh & other) / max(1, len(sh | other)) >= threshold for _, other in kept):
            continue
        kept.append((hit, sh))
    return [h for h, _ in kept]


class Retriever:
    def __init__(
        self,
        settings: Settings,
        store: KnowledgeStore,
        embedder: Embedder,
        reranker: Reranker | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.reranker = reranker

    async def retrieve(
        self,
        question: str,
        *,
        top_k: int | None = None,
        filter: str | None = None,
        collection: str | None = None,
        verified_scope: Sequence[str] | None = None,
    ) -> Retrieval:
        """Embed (the embedder's own thread) and search (a worker thread): the loop stays free.

        A verified answer whose question is close enough to this one comes first.
        `collection` searches a version other than the live one (a reindex being checked).
        `verified_scope`: only verified answers whose link starts with one of these prefixes
        (a community's own) may answer; None: every one.
        """
        top_k = top_k or self.settings.top_k
        query = clean_query(question) if self.settings.query_cleaning else question
        t0 = time.perf_counter()
        vector = await self.embedder.aembed_query(query)
        t1 = time.perf_counter()
        docs_filter, keep = filter, None
        if filter is None and verified_scope is not None:
            docs_filter, keep = (
                verified.docs_filter(verified_scope),
                verified.given_in(verified_scope),
            )

        def search() -> tuple[list[Hit], list[Hit]]:
            hits = self.store.search(
                vector,
                query,
                top_k=top_k,
                mode=self.settings.search_mode,
                filter=docs_filter,
                collection=collection,
                pool=top_k * _DIVERSITY_POOL,
                per_page=self.settings.passages_per_page,
            )
            if filter is not None or (verified_scope is not None and not verified_scope):
                return hits, []
            # The closest verified answer (few rows: searched in memory, no Milvus call).
            best = self.store.search_held(
                vector, verified.FILTER, top_k=1, collection=collection, keep=keep
            )
            return hits, best

        hits, best = await asyncio.to_thread(search)
        t2 = time.perf_counter()
        rerank_s = 0.0
        if self.reranker is not None:
            hits = await self.reranker.rerank(query, hits)
            rerank_s = time.perf_counter() - t2
        # After reranking: a verified answer close enough to the question stays first.
        hits = promote_verified(hits, best, self.settings.verified_min_similarity, top_k)
        unknown = await self.unknown_terms(question, collection) if filter is None else ()
        return Retrieval(
            hits=hits,
            embed_s=t1 - t0,
            search_s=t2 - t1,
            query=query,
            rerank_s=rerank_s,
            unknown_terms=unknown,
        )

    async def unknown_terms(self, question: str, collection: str | None = None) -> tuple[str, ...]:
        """The dotted config keys `question` names, when the docs mention none of them (one
        BM25 search for all); empty when it names none or the docs know one (named_terms.py).
        """
        terms = named_terms(question) if self.settings.refuse_unknown_terms else []
        if not terms:
            return ()
        try:
            found = await asyncio.to_thread(
                self.store.lexical_texts, terms, _TERM_PASSAGES, collection
            )
        except StoreError as exc:  # the search itself worked: answer rather than fail on this
            log.warning("could not look up the question's terms: %s", exc)
            return ()
        if any(mentions(term, texts) for term, texts in zip(terms, found, strict=True)):
            return ()
        return tuple(terms)


def promote_verified(
    hits: Sequence[Hit], verified: Sequence[Hit], min_similarity: float, top_k: int
) -> list[Hit]:
    """`hits` with the best verified answer first when it matches the question closely enough.

    Moderators wrote it for this question: it outranks any passage that merely resembles it.
    """
    best = verified[0] if verified else None
    if best is None or best.similarity < min_similarity:
        return list(hits)
    return [best, *(h for h in hits if h.chunk_id != best.chunk_id)][:top_k]
