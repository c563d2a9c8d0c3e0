"""Verified answers in the knowledge base: real Milvus Lite, the real offline embedder."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rag_core.answer.answering import _source
from rag_core.runtime import Rag, open_rag
from rag_core.search.verified import TITLE, VerifiedAnswer, doc_id_of, from_row, is_verified

from .conftest import offline_model_path

BASE = "https://milvus.io/docs/"
LINK = "https://discord.com/channels/1/2/3"
QUESTION = "How many replicas can a single collection have loaded in memory?"
PARAPHRASE = "What is the maximum number of in-memory replicas for one collection?"
ANSWER = "Up to the number of query nodes: each replica needs its own query node."


@pytest.fixture
async def rag(settings, embedder, corpus: Path):
    async with open_rag(
        settings.model_copy(update={"docs_base_url": BASE}), embedder=embedder
    ) as r:
        report = await r.indexer.run([str(corpus)])
        assert report.published
        yield r


def verified(n: int = 1, question: str = QUESTION, answer: str = ANSWER) -> VerifiedAnswer:
    return VerifiedAnswer(n, question, answer, f"{LINK}{n}")


async def first_hit(rag: Rag, question: str) -> tuple[str, float]:
    hits = (await rag.retriever.retrieve(question)).hits
    return hits[0].doc_id, hits[0].similarity


async def test_a_verified_answer_ranks_first_for_a_paraphrase_and_leaves_on_removal(
    rag: Rag,
) -> None:
    since = await asyncio.to_thread(rag.store.live_since)
    assert since is not None and abs(time.time() - since) < 900  # the footer's "indexed … ago"
    before = await first_hit(rag, PARAPHRASE)
    assert not is_verified(before[0])
    chunks = await asyncio.to_thread(rag.store.count)

    await rag.verified.add(verified(7))
    doc_id, similarity = await first_hit(rag, PARAPHRASE)
    assert doc_id == doc_id_of(7)
    assert similarity >= rag.settings.verified_min_similarity
    hit = (await rag.retriever.retrieve(PARAPHRASE)).hits[0]
    assert (hit.title, hit.url, hit.heading_path) == (TITLE, f"{LINK}7", QUESTION)
    assert ANSWER in hit.text
    # Cited as is: the Discord link gets no text fragment.
    assert _source(1, hit).url == f"{LINK}7"

    # An unrelated question is not answered by it.
    other, _ = await first_hit(rag, "What do the parameters for HNSW mean?")
    assert not is_verified(other)

    # Adding the same id again replaces it (one row), and removing takes it out at once.
    await rag.verified.add(verified(7, answer="Changed: one replica per query node."))
    listed = await rag.verified.listed()
    assert [(v.id, v.answer) for v in listed] == [(7, "Changed: one replica per query node.")]
    await rag.verified.remove(7)
    assert await rag.verified.listed() == []
    assert (await first_hit(rag, PARAPHRASE))[0] == before[0]
    assert await asyncio.to_thread(rag.store.count) == chunks


async def test_only_a_close_question_puts_a_verified_answer_first(rag: Rag) -> None:
    await rag.verified.add(verified(1))
    related = "What is a replica?"  # the same topic, another question (cosine about 0.47)
    doc_id, _ = await first_hit(rag, related)
    assert not is_verified(doc_id)
    rag.retriever.settings = rag.settings.model_copy(update={"verified_min_similarity": 0.4})
    doc_id, _ = await first_hit(rag, related)
    assert doc_id == doc_id_of(1)


async def test_verified_answers_survive_reindexes_with_prune(rag: Rag, corpus: Path) -> None:
    await rag.verified.add(verified(1))
    await rag.verified.add(verified(2, "Which port does the Discord bot listen on?", "None."))
    # A changed page publishes a new version; --prune with another source drops the docs but
    # never the verified answers.
    page = corpus / "reference" / "replica.md"
    page.write_text(page.read_text() + "\n\n## Zebra\n\nZebras replicate stripes.\n")
    report = await rag.indexer.run([str(corpus)], prune=True)
    assert report.published and report.removed == 0
    assert [v.id for v in await rag.verified.listed()] == [1, 2]
    assert (await first_hit(rag, PARAPHRASE))[0] == doc_id_of(1)

    other = corpus.parent / "other"
    other.mkdir()
    (other / "page.md").write_text("# Other\n\nSomething else entirely about zebras.\n")
    report = await rag.indexer.run([str(other)], prune=True)
    assert report.published and report.added == 1 and report.removed > 0
    assert [v.id for v in await rag.verified.listed()] == [1, 2]
    docs = await asyncio.to_thread(rag.store.documents)
    assert sorted(d for d in docs if not is_verified(d)) == [str((other / "page.md").resolve())]
    assert (await first_hit(rag, PARAPHRASE))[0] == doc_id_of(1)


async def test_verified_answers_are_re_embedded_when_the_model_changes(
    settings, embedder, corpus: Path, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"docs_base_url": BASE})
    async with open_rag(settings, embedder=embedder) as rag:
        await rag.indexer.run([str(corpus)])
        await rag.verified.add(verified(3))
    # The same model under another name counts as another model: every vector is redone.
    alias = tmp_path / "model-alias"
    alias.symlink_to(offline_model_path())
    changed = settings.model_copy(update={"embedding_model": str(alias)})
    async with open_rag(changed) as rag:
        report = await rag.indexer.run([str(corpus)])
        assert report.published
        assert [v.id for v in await rag.verified.listed()] == [3]
        assert (await first_hit(rag, PARAPHRASE))[0] == doc_id_of(3)


async def test_a_verified_answer_answers_only_in_its_scope(rag: Rag) -> None:
    """Two communities' verified answers to one question: each is found only where its link
    says it was given (both searches, the docs' and the verified one, keep the other out)."""
    ours, theirs = "https://discord.com/channels/11/", "https://discord.com/channels/22/"
    await rag.verified.add(VerifiedAnswer(1, QUESTION, ANSWER, f"{ours}5/6"))
    await rag.verified.add(VerifiedAnswer(2, QUESTION, "Their answer.", f"{theirs}5/6"))

    async def verified_ids(scope: tuple[str, ...] | None) -> set[str]:
        hits = (await rag.retriever.retrieve(PARAPHRASE, verified_scope=scope)).hits
        return {h.doc_id for h in hits if is_verified(h.doc_id)}

    assert await verified_ids((ours,)) == {doc_id_of(1)}
    assert await verified_ids((theirs,)) == {doc_id_of(2)}
    assert await verified_ids(()) == set()
    assert await verified_ids((ours, theirs)) == {doc_id_of(1), doc_id_of(2)}
    assert await verified_ids(None) >= {doc_id_of(1)}  # unscoped: the CLI and evaluation
    first = (await rag.retriever.retrieve(PARAPHRASE, verified_scope=(ours,))).hits[0]
    assert first.doc_id == doc_id_of(1)  # promoted first, as without a scope


def test_a_members_answer_keeps_its_name_in_the_index_row() -> None:
    """The title cites the person; reading the row back (a reindex with another model
    re-embeds from it) keeps who answered."""
    member = VerifiedAnswer(3, QUESTION, ANSWER, f"{LINK}3", "helen, of the docs team")
    chunk = member.chunk()
    assert chunk.title == "Answered by helen, of the docs team, verified by the moderators"
    row = {"doc_id": chunk.doc_id, "heading_path": QUESTION, "text": chunk.text}
    assert from_row({**row, "url": chunk.url, "title": chunk.title}) == member
    moderators = verified(4)
    assert moderators.chunk().title == TITLE
    assert from_row({**row, "doc_id": "verified:4", "url": moderators.url, "title": TITLE}) == (
        moderators
    )
