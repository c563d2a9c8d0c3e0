"""The embedder's worker: queries before passages, concurrent queries in one call, order kept."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from rag_core.errors import EmbeddingError
from rag_core.search.embedding import Embedder

from .conftest import FIXTURES, offline_model_path

QUESTIONS = [
    "What do the parameters for HNSW mean?",
    "How do I configure the log level?",
    "What is a replica?",
    "bitset",
]


@pytest.fixture(scope="module")
def passages() -> list[str]:
    """Real doc paragraphs of very different lengths (the worker sorts them by length)."""
    texts = []
    for path in sorted((FIXTURES / "milvus-docs").rglob("*.md")):
        texts += [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    return texts[:48]


@pytest.fixture
def own_embedder() -> Iterator[Embedder]:
    """A private embedder: these tests spy on and close it."""
    embedder = Embedder(offline_model_path(), device="cpu", batch_size=4)
    yield embedder
    embedder.close()


class EncodeCalls:
    """Records the texts per call into sentence-transformers (the real call still runs)."""

    def __init__(self, embedder: Embedder) -> None:
        self.sizes: list[int] = []
        real = embedder._model.encode

        def encode(texts, *args, **kwargs):
            self.sizes.append(len(texts))
            return real(texts, *args, **kwargs)

        embedder._model.encode = encode  # type: ignore[method-assign]


def test_passages_come_back_in_order_and_match_one_by_one(embedder, passages) -> None:
    together = embedder.embed_passages(passages)
    alone = np.stack([embedder.embed_passages([t])[0] for t in passages[:12]])
    assert together.shape == (len(passages), embedder.dim)
    np.testing.assert_allclose(together[:12], alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_passages([]).shape == (0, embedder.dim)


async def test_concurrent_queries_share_one_call_and_match_serial(own_embedder, passages) -> None:
    serial = [own_embedder.embed_query(q) for q in QUESTIONS * 4]
    calls = EncodeCalls(own_embedder)
    # A passage job keeps the worker busy, so all 16 questions are waiting when it looks.
    busy = own_embedder.submit_passages(passages[:8])
    vectors = await asyncio.gather(*(own_embedder.aembed_query(q) for q in QUESTIONS * 4))
    busy.result()
    assert 16 in calls.sizes, calls.sizes
    np.testing.assert_allclose(np.stack(vectors), np.stack(serial), atol=1e-5)


def test_a_query_overtakes_a_long_passage_job(own_embedder, passages) -> None:
    finished: list[str] = []
    lock = threading.Lock()

    def record(name: str):
        def done(_future) -> None:
            with lock:
                finished.append(name)

        return done

    job = own_embedder.submit_passages(passages)  # 12 batches of 4
    job.add_done_callback(record("passages"))
    query = own_embedder.submit_query(QUESTIONS[0])
    query.add_done_callback(record("query"))
    job.result(timeout=120)
    assert finished == ["query", "passages"]
    assert query.result().shape == (own_embedder.dim,)


async def test_a_cancelled_passage_job_is_dropped(own_embedder, passages) -> None:
    calls = EncodeCalls(own_embedder)
    task = asyncio.create_task(own_embedder.aembed_passages(passages))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    vector = await own_embedder.aembed_query(QUESTIONS[1])
    assert vector.shape == (own_embedder.dim,)
    # At most the batch in hand when it was cancelled, not all 12 batches.
    assert sum(calls.sizes) - 1 < len(passages), calls.sizes


def test_close_fails_waiting_callers_and_refuses_new_work(own_embedder, passages) -> None:
    job = own_embedder.submit_passages(passages)
    own_embedder.close()
    with pytest.raises(EmbeddingError):
        job.result(timeout=60)
    with pytest.raises(EmbeddingError):
        own_embedder.embed_query(QUESTIONS[0])
