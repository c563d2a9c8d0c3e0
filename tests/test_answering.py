"""Answering: citations, the 'not in the docs' gate, the token budget, and streamed answers from
the real tiny vLLM engine over the real knowledge base (its text is noise: mechanics only)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from rag_core.answer.answering import (
    REFUSAL,
    Answerer,
    EmptyQuestionError,
    clean_question,
    fold_near_duplicates,
    is_blank,
    refusal_text,
)
from rag_core.answer.attribution import cited_numbers
from rag_core.answer.conversation import Turn
from rag_core.answer.llm import GenerationChunk, Generator
from rag_core.documents import Hit
from rag_core.runtime import Rag, open_rag
from rag_core.search.retrieval import Retriever

# all-MiniLM-L6-v2 on the fixture docs: in-domain questions score >= 0.30, off-topic <= 0.25.
MINILM_THRESHOLD = 0.28


def hit(n: int, text: str, similarity: float = 0.5, doc: str | None = None) -> Hit:
    return Hit(
        chunk_id=f"c{n}",
        doc_id=doc or f"d{n}",
        url=f"https://docs.example/{n}#s",
        title=f"Page {n}",
        heading_path=f"Section {n}",
        text=text,
        score=1.0 / n,
        similarity=similarity,
    )


# --- unit level: crafted text -------------------------------------------------------------


def test_citations_map_in_range_numbers_in_first_use_order() -> None:
    text = "Use HNSW [2]. M controls links [1][2]; efConstruction too [1, 3]. See [7] and [0]."
    assert cited_numbers(text, 3) == [2, 1, 3]
    assert cited_numbers(text, 2) == [2, 1]  # [3], [7] and [0] are out of range: ignored
    assert cited_numbers("no citations here, [a] [] [-1]", 5) == []


INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u3164\u2800"


def test_control_characters_are_removed_and_invisible_questions_are_blank() -> None:
    assert clean_question("\x00What\x00 is a\x07 replica?\x1b\r\n\tOK\x7f\x85 ") == (
        "What is a replica?\n\tOK"
    )
    for blank in ("", " \t\n", "\x00\x01", INVISIBLE, " \u200b \ufeff\u3000"):
        assert is_blank(clean_question(blank)), repr(blank)
    for text in ("?", "a\u200bb", "👍🏽", "\u05d0"):  # shown: punctuation, letters, emoji
        assert not is_blank(clean_question(text)), repr(text)


def test_near_duplicate_chunks_are_folded() -> None:
    base = "The HNSW index builds a multi layer graph where M sets the number of links per node"
    hits = [hit(1, base), hit(2, base + " in the graph."), hit(3, "IVF_FLAT splits vectors")]
    assert [h.chunk_id for h in fold_near_duplicates(hits)] == ["c1", "c3"]


# --- with the real engine and knowledge base ----------------------------------------------


class CountingGenerator(Generator):
    """The real engine, counting how often it is asked to generate (a spy, not a fake)."""

    def __init__(self, inner: Generator) -> None:
        super().__init__(inner.settings, inner._tokenizer, max_model_len=inner.max_model_len)
        self.inner = inner
        self.model_name = inner.model_name
        self.calls = 0

    def _generate(
        self, prompt: str, prompt_ids: list[int], max_tokens: int, request_id: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        self.calls += 1
        return self.inner._generate(prompt, prompt_ids, max_tokens, request_id)

    async def aclose(self) -> None:
        """The session fixture owns the engine."""


@pytest.fixture
async def rag(indexed_settings, embedder, local_generator) -> AsyncIterator[Rag]:
    settings = indexed_settings.model_copy(
        update={"relevance_threshold": MINILM_THRESHOLD, "llm_max_tokens": 48}
    )
    spy = CountingGenerator(local_generator)
    async with open_rag(settings, embedder=embedder, generator=spy) as r:
        yield r


async def test_answer_streams_deltas_then_cites_sources(rag: Rag) -> None:
    answerer = rag.require_answerer()
    prepared = await answerer.prepare("What do the parameters for HNSW mean?")
    assert not prepared.refused and prepared.sources and prepared.prompt
    # Sources are known before any text is generated.
    assert any(s.url.startswith("https://milvus.io/docs/index.md") for s in prepared.sources)
    stream = answerer.stream(prepared)
    arrivals: list[float] = []
    arrivals_text: list[str] = []
    async for delta in stream:
        assert delta
        arrivals.append(time.perf_counter())
        arrivals_text.append(delta)
    answer = stream.result
    assert answer is not None and not answer.refused
    assert len(arrivals) >= 3 and arrivals[0] < arrivals[-1]  # streamed, not one final blob
    assert answer.completion_tokens > 0 and answer.prompt_tokens == prepared.prompt_tokens
    # The tiny model writes noise that no passage backs: flagged, and every passage is listed
    # so the reader can check; the text keeps no citation that nothing supports.
    streamed = "".join(arrivals_text)
    if answer.finish_reason == "repetition":  # the loop guard drops repeats already streamed
        assert streamed.startswith(answer.raw_text) and len(answer.raw_text) < len(streamed)
    else:
        assert answer.raw_text == streamed
    assert answer.attribution is not None and answer.attribution.used == []
    assert answer.sources == prepared.sources
    assert cited_numbers(answer.text, len(prepared.sources)) == []
    assert answer.low_support or not any(s.checked for s in answer.attribution.sentences)
    t = answer.timings
    assert t.embed_s > 0 and t.search_s > 0 and t.first_token_s is not None
    assert t.first_token_s <= t.total_s


async def test_off_topic_question_is_refused_without_calling_the_engine(rag: Rag) -> None:
    answerer = rag.require_answerer()
    spy = rag.generator
    assert isinstance(spy, CountingGenerator)
    before = spy.calls
    prepared = await answerer.prepare("What is the capital of France?")
    assert prepared.refused and prepared.prompt is None
    stream = answerer.stream(prepared)
    text = "".join([d async for d in stream])
    assert text == REFUSAL and stream.result is not None and stream.result.refused
    # The closest pages are listed, one per page.
    pages = [s.doc_id for s in stream.result.sources]
    assert 1 <= len(pages) <= 3 and len(set(pages)) == len(pages)
    assert spy.calls == before


async def test_eight_concurrent_answers_interleave_from_one_engine(rag: Rag) -> None:
    answerer = rag.require_answerer()
    questions = [
        "What do the parameters for HNSW mean?",
        "How do I set the log level?",
        "What is a replica?",
        "How does the chunk cache work?",
        "How do I enable mmap?",
        "Which GPU indexes are supported?",
        "What does bounded staleness mean?",
        "How do I grant privileges to a role?",
    ]
    order: list[int] = []

    async def ask(i: int, q: str) -> None:
        stream = answerer.stream(await answerer.prepare(q))
        async for _ in stream:
            order.append(i)
        assert stream.result is not None and stream.result.completion_tokens > 0

    await asyncio.gather(*(ask(i, q) for i, q in enumerate(questions)))
    firsts = [order.index(i) for i in range(8)]
    lasts = [len(order) - 1 - order[::-1].index(i) for i in range(8)]
    # Continuous batching: every answer started before any finished.
    assert max(firsts) < min(lasts)


async def test_context_never_exceeds_the_token_budget(rag: Rag) -> None:
    answerer: Answerer = rag.require_answerer()
    generator = rag.generator
    assert generator is not None
    # A budget that leaves room for about 300 tokens of passages, and many long passages: the
    # best ones are kept, in rank order.
    question = "How are indexes built?"
    bare = generator.count_tokens(answerer.build_prompt(question, [])[0])
    answer_budget = generator.max_model_len - bare - 300
    answerer.settings = answerer.settings.model_copy(update={"llm_max_tokens": answer_budget})
    budget = answerer.context_budget()
    assert budget == bare + 300
    long = "Milvus builds indexes over vector fields and keeps segments in memory. " * 12
    hits = [hit(n, f"{n} {long}") for n in range(1, 10)]
    prompt, sources, tokens = answerer.build_prompt(question, hits)
    assert tokens == generator.count_tokens(prompt) <= budget
    assert 1 <= len(sources) < len(hits)
    assert [s.n for s in sources] == list(range(1, len(sources) + 1))
    assert [s.title for s in sources] == [f"Page {n}" for n in range(1, len(sources) + 1)]
    # A single passage longer than the whole budget is cut to fit, not dropped.
    huge = [hit(1, long * 20)]
    prompt, sources, tokens = answerer.build_prompt(question, huge)
    assert len(sources) == 1 and generator.count_tokens(prompt) <= budget


async def test_empty_and_huge_questions_get_clear_messages(rag: Rag) -> None:
    from rag_core.errors import RagError

    answerer = rag.require_answerer()
    for question in ("   ", INVISIBLE, "\x00 \x00", "x" * (rag.settings.max_question_chars + 1)):
        with pytest.raises(RagError) as info:
            await answerer.prepare(question)
        assert "question" in info.value.user_message
        if len(question) < 20:
            assert isinstance(info.value, EmptyQuestionError)


def test_passages_of_one_page_and_anchor_are_one_source_linked_to_the_passage() -> None:
    from rag_core.answer.answering import _source, merge_same_source

    def hit(chunk: str, url: str, text: str, similarity: float) -> Hit:
        return Hit(chunk, "mmap.md", url, "MMap", "FAQ", text, 1.0, similarity)

    faq = "https://milvus.io/docs/mmap.md#faq"
    hits = [
        hit("a", faq, "Memory mapping lets Milvus keep large collections on disk.", 0.6),
        hit("b", "https://milvus.io/docs/index.md#hnsw", "HNSW builds a layered graph.", 0.5),
        hit("c", faq, "You can toggle mmap.enabled on a collection at any time.", 0.7),
    ]
    merged = merge_same_source(hits)
    assert [h.chunk_id for h in merged] == ["a", "b"]
    assert "keep large collections" in merged[0].text and merged[0].similarity == 0.7
    # The link keeps the anchor and adds a text fragment the browser scrolls to.
    url = _source(1, merged[0]).url
    assert url.startswith(faq + ":~:text=") and "%20" in url and " " not in url


# --- conversations: follow-ups with the real engine and knowledge base ----------------------


class Scripted(Generator):
    """The real engine, with scripted text first: the tiny model's own text is noise."""

    def __init__(self, inner: Generator, script: str) -> None:
        super().__init__(inner.settings, inner._tokenizer, max_model_len=inner.max_model_len)
        self.inner = inner
        self.model_name = inner.model_name
        self.script = script
        self.prompts: list[str] = []

    async def _generate(
        self, prompt: str, prompt_ids: list[int], max_tokens: int, request_id: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        self.prompts.append(prompt)
        yield GenerationChunk(self.script, False, None, len(prompt_ids), 1)
        async for chunk in self.inner._generate(prompt, prompt_ids, max_tokens, request_id):
            yield chunk

    async def aclose(self) -> None:
        """The session fixture owns the engine."""


FIRST = Turn(
    "What do the parameters for HNSW mean?",
    "M is the maximum number of edges per node [1] and efConstruction the candidates [2].",
)


async def test_a_follow_up_searches_with_its_standalone_question_and_sees_the_history(
    rag: Rag,
) -> None:
    settings = rag.settings.model_copy(update={"conversation_rewrite": "rules"})
    assert rag.generator is not None
    answerer = Answerer(settings, rag.retriever, rag.generator)
    follow_up = "and what about IVF_FLAT?"
    prepared = await answerer.prepare(follow_up, [FIRST])
    standalone = "What do the parameters for HNSW mean? and what about IVF_FLAT?"
    assert prepared.standalone == standalone and prepared.rewrite is not None
    assert prepared.rewrite.method == "rules" and prepared.history == [FIRST]
    # Retrieval used the standalone question: the same passages as asking it outright.
    alone = await answerer.prepare(standalone)
    assert [s.url for s in prepared.sources] == [s.url for s in alone.sources]
    typed = await answerer.prepare(follow_up)
    assert [s.url for s in typed.sources] != [s.url for s in alone.sources]
    # The prompt shows the earlier turn as data (its old citation numbers gone), then the
    # passages, then the follow-up as asked; a first question's prompt has no history at all.
    assert prepared.prompt is not None and alone.prompt is not None
    assert "Earlier in this conversation" in prepared.prompt
    assert f"User: {FIRST.question}" in prepared.prompt
    assert "edges per node and efConstruction the candidates." in prepared.prompt
    assert prepared.prompt.index("Assistant: M is") < prepared.prompt.index(
        "Documentation passages"
    )
    assert f"Question: {follow_up}" in prepared.prompt
    assert "Earlier in this conversation" not in alone.prompt
    stream = answerer.stream(prepared)
    async for _ in stream:
        pass
    assert stream.result is not None and stream.result.standalone == standalone


async def test_the_model_rewrites_a_follow_up_and_noise_falls_back_to_the_rules(
    rag: Rag, local_generator: Generator
) -> None:
    settings = rag.settings.model_copy(update={"conversation_rewrite": "llm"})
    follow_up = "and for IVF_FLAT?"
    # The tiny engine's own text is noise that keeps none of the follow-up: the rules answer.
    noisy = Answerer(settings, rag.retriever, local_generator)
    rewrite = await noisy.rewriter.rewrite(follow_up, [FIRST])
    assert rewrite.method == "rules" and rewrite.standalone.endswith(follow_up)
    # The model call it did not use still cost time and tokens, and says so.
    assert rewrite.seconds > 0 and rewrite.prompt_tokens > 0 and rewrite.completion_tokens > 0
    # A usable rewrite from the model (scripted: the tiny model cannot write one) is used.
    script = "What do the parameters for IVF_FLAT mean?\n"
    scripted = Scripted(local_generator, script)
    answerer = Answerer(settings, rag.retriever, scripted)
    prepared = await answerer.prepare(follow_up, [FIRST])
    assert prepared.rewrite is not None and prepared.rewrite.method == "llm"
    assert prepared.standalone == script.strip()
    assert prepared.rewrite.prompt_tokens > 0 and prepared.timings.rewrite_s > 0
    # The rewrite prompt held the conversation and the follow-up.
    assert FIRST.question in scripted.prompts[0] and follow_up in scripted.prompts[0]
    # Off: the follow-up is searched as typed; standalone questions never call the model.
    off = Answerer(
        settings.model_copy(update={"conversation_rewrite": "off"}), rag.retriever, scripted
    )
    assert (await off.rewriter.rewrite(follow_up, [FIRST])).standalone == follow_up
    calls = len(scripted.prompts)
    full = "How do I create a collection with a dynamic schema?"
    assert (await answerer.rewriter.rewrite(full, [FIRST])).standalone == full
    assert len(scripted.prompts) == calls


async def test_a_config_key_the_docs_never_mention_is_refused_by_name(
    rag: Rag, caplog: pytest.LogCaptureFixture
) -> None:
    """Close in meaning is not enough: the made-up key's question lands on the queryNode /
    indexNode config pages, yet no passage names it, so the reply says which key was not found."""
    answerer = rag.require_answerer()
    spy = rag.generator
    assert isinstance(spy, CountingGenerator)
    before = spy.calls
    made_up = "indexNode.enableDiskCache"
    prepared = await answerer.prepare(f"what does {made_up} do and what is its default?")
    assert prepared.refused and prepared.unknown_terms == (made_up,)
    assert prepared.best_similarity >= MINILM_THRESHOLD  # the cosine gate alone would answer
    stream = answerer.stream(prepared)
    text = "".join([d async for d in stream])
    assert text == refusal_text([made_up]) and f"`{made_up}`" in text
    assert stream.result is not None and stream.result.sources  # the closest pages, as always
    assert spy.calls == before

    # A key the docs have, in any case, is not refused for its name; nor is a question naming
    # one known and one unknown key, and the check can be turned off.
    retriever = rag.retriever
    assert await retriever.unknown_terms("what is indexnode.enabledisk for?") == ()
    assert await retriever.unknown_terms(f"{made_up} or indexNode.enableDisk?") == ()
    off = Retriever(
        rag.settings.model_copy(update={"refuse_unknown_terms": False}), rag.store, rag.embedder
    )
    assert await off.unknown_terms(f"what does {made_up} do?") == ()
    # A failed lookup (here: a version that does not exist) answers rather than refuses.
    with caplog.at_level(logging.WARNING, logger="rag_core.search.retrieval"):
        assert await retriever.unknown_terms(made_up, collection="docs__v0_missing") == ()
    assert "could not look up the question's terms" in caplog.text
