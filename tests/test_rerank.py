"""Reranking by query likelihood (RERANK=llm): the order rule, a real model's reading, failures.

The model is SmolLM2-135M-Instruct through the product's vLLM engine: the passage that answers
the question must come first even when retrieval ranked it third.
"""

from __future__ import annotations

import logging

from rag_core.config import Settings
from rag_core.documents import Hit
from rag_core.search.rerank import Reranker, passage_prompt, rerank_order


def hit(n: int, title: str, text: str) -> Hit:
    return Hit(
        chunk_id=f"c{n}",
        doc_id=f"d{n}",
        url=f"https://docs.example/{n}",
        title=title,
        heading_path="",
        text=text,
        score=1 / (n + 1),
        similarity=0.5,
    )


PASSAGES = [
    hit(
        1,
        "Install Milvus on Windows",
        "Download Docker Desktop, enable WSL 2 and run the installation script in PowerShell. "
        "The script pulls the images and creates the volumes folder.",
    ),
    hit(
        2,
        "Monitoring with Grafana",
        "Import the Milvus dashboard JSON into Grafana and point it at the Prometheus data "
        "source to see query latency and memory per node.",
    ),
    hit(
        3,
        "Connect to Milvus",
        "By default Milvus listens on port 19530 for gRPC clients; connect with "
        'MilvusClient(uri="http://localhost:19530"). The web UI uses port 9091.',
    ),
]
QUESTION = "Which port does Milvus listen on by default for clients?"


def test_order_rule_trades_the_models_score_against_the_retrieval_rank() -> None:
    assert rerank_order([-3.0, -3.0, -3.0], weight=2.0) == [0, 1, 2]  # no preference: kept
    assert rerank_order([-3.0, -3.0, -1.0], weight=2.0) == [2, 0, 1]  # clear winner moves up
    # A small difference does not beat the rank: ln 3 - ln 1 = 1.1 > 2 x 0.2.
    assert rerank_order([-3.0, -3.0, -2.8], weight=2.0) == [0, 1, 2]
    assert rerank_order([-1.0, -5.0], weight=0.0) == [0, 1]  # weight 0 = retrieval order


def test_passage_prompt_shows_title_and_caps_the_text() -> None:
    long = hit(9, "Title", "x" * 5000)
    prompt = passage_prompt(long)
    assert prompt.startswith("Passage: Title\n") and prompt.endswith("asked:")
    assert len(prompt) < 1300


async def test_a_real_model_puts_the_answering_passage_first(smollm2_generator) -> None:
    reranker = Reranker(smollm2_generator, Settings.model_fields["rerank_weight"].default)
    order = await reranker.rerank(QUESTION, PASSAGES)
    assert order[0].chunk_id == "c3"
    assert sorted(h.chunk_id for h in order) == ["c1", "c2", "c3"]  # nothing lost or added


async def test_scoring_failure_keeps_the_retrieval_order(smollm2_generator, monkeypatch, caplog):
    async def broken(*args, **kwargs):
        from rag_core.errors import GenerationError

        raise GenerationError(detail="engine gone")

    monkeypatch.setattr(smollm2_generator, "continuation_logprob", broken)
    reranker = Reranker(smollm2_generator, 2.0)
    with caplog.at_level(logging.WARNING, logger="rag_core.search.rerank"):
        order = await reranker.rerank(QUESTION, PASSAGES)
    assert order == PASSAGES
    assert "keeping the retrieval order" in caplog.text


async def test_the_product_retriever_reranks_what_it_found(
    indexed_settings, embedder, smollm2_generator
) -> None:
    """open_rag wires the reranker in when RERANK=llm and an answer model is loaded."""
    from rag_core.runtime import open_rag
    from rag_core.search.retrieval import Retriever

    settings = indexed_settings.model_copy(update={"rerank": "llm"})
    question = "How do I keep vectors on disk with memory-mapped files?"
    async with open_rag(settings, embedder=embedder, generator=smollm2_generator) as rag:
        assert rag.retriever.reranker is not None
        reranked = await rag.retriever.retrieve(question)
        plain = await Retriever(settings, rag.store, embedder).retrieve(question)
    assert reranked.rerank_s > 0 and plain.rerank_s == 0
    # The same passages, the model's order.
    assert sorted(h.chunk_id for h in reranked.hits) == sorted(h.chunk_id for h in plain.hits)
    async with open_rag(settings, embedder=embedder) as rag:  # no answer model: no reranker
        assert rag.retriever.reranker is None
