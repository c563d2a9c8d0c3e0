"""Page diversity: the top passages come from several pages when several match."""

from __future__ import annotations

from rag_core.documents import Hit
from rag_core.search.diversity import diversify


def hit(chunk: str, page: str) -> Hit:
    return Hit(chunk, page, f"https://d/{page}", page, "", chunk, 0.0, 0.0)


def test_diversify_puts_every_page_first_once_then_the_rest_in_order():
    hits = [hit("a1", "a"), hit("a2", "a"), hit("b1", "b"), hit("a3", "a"), hit("c1", "c")]
    assert [h.chunk_id for h in diversify(hits, 4, 1)] == ["a1", "b1", "c1", "a2"]
    assert [h.chunk_id for h in diversify(hits, 5, 2)] == ["a1", "a2", "b1", "c1", "a3"]
    assert [h.chunk_id for h in diversify(hits, 2, 5)] == ["a1", "a2"]  # no cap: rank order


async def test_retriever_top_passages_cover_several_pages(indexed_settings, embedder):
    """On the fixture docs, mmap's page alone holds the best few chunks of an mmap question;
    with one passage per page first, the top five name five pages, and mmap's page leads."""
    from rag_core.runtime import open_rag

    question = "How do I enable mmap?"
    crowded = indexed_settings.model_copy(update={"passages_per_page": 50})
    async with open_rag(crowded, embedder=embedder) as rag:
        plain = (await rag.retriever.retrieve(question, top_k=5)).hits
    async with open_rag(indexed_settings, embedder=embedder) as rag:
        diverse = (await rag.retriever.retrieve(question, top_k=5)).hits
    assert len({h.doc_id for h in plain}) < 5  # the case the setting exists for
    assert len({h.doc_id for h in diverse}) == 5
    assert diverse[0] == plain[0] and diverse[0].doc_id.endswith("mmap.md")
