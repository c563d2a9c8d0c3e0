"""The answerability check: the answer model says whether the passages answer the question.

The tiny random model's replies are noise, so the verdicts below are scripted in front of the
real engine's output; what is checked is what the answerer does with them, and that the check
runs greedy (the same reply every time) while answers keep LLM_TEMPERATURE.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from rag_core.answer.answering import Answerer, parse_verdict
from rag_core.answer.llm import GenerationChunk, Generator
from rag_core.runtime import Rag, open_rag

QUESTION = "What do the parameters for HNSW mean?"


class Spy(Generator):
    """The real engine; records each request's temperature and text, and can put a scripted
    reply in front of the check's output (the tiny model cannot say yes or no)."""

    def __init__(self, inner: Generator, verdict: str = "") -> None:
        super().__init__(inner.settings, inner._tokenizer, max_model_len=inner.max_model_len)
        self.inner = inner
        self.model_name = inner.model_name
        self.verdict = verdict
        self.requests: list[tuple[str, float | None, str]] = []  # (id, temperature, text)

    async def _generate(
        self,
        prompt: str,
        prompt_ids: list[int],
        max_tokens: int,
        request_id: str,
        *,
        temperature: float | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        text = ""
        self.prompt = prompt
        try:
            if request_id.startswith("check-") and self.verdict:
                text = self.verdict
                yield GenerationChunk(self.verdict, False, None, len(prompt_ids), 1)
            override = {} if temperature is None else {"temperature": temperature}
            async for chunk in self.inner._generate(
                prompt, prompt_ids, max_tokens, request_id, **override
            ):
                text += chunk.text
                yield chunk
        finally:  # the stream closes this generator once the request has finished
            self.requests.append((request_id, temperature, text))

    async def aclose(self) -> None:
        """The session fixture owns the engine."""


@pytest.fixture
async def rag(indexed_settings, embedder, local_generator) -> AsyncIterator[Rag]:
    settings = indexed_settings.model_copy(
        update={"relevance_threshold": 0.28, "llm_max_tokens": 16, "answerability_check": True}
    )
    async with open_rag(settings, embedder=embedder, generator=local_generator) as r:
        yield r


def test_the_verdict_is_the_first_word() -> None:
    assert parse_verdict("Yes.") == "yes"
    assert parse_verdict("  no, the passages") == "no"
    assert parse_verdict('"No"') == "no"
    assert parse_verdict("Maybe") == parse_verdict("") == parse_verdict("nothing") == "unclear"


async def test_a_no_gives_the_refusal_with_the_closest_pages(rag: Rag) -> None:
    spy = Spy(rag.require_answerer().generator, verdict="No")
    answerer = Answerer(rag.settings, rag.retriever, spy)
    prepared = await answerer.prepare(QUESTION)
    assert prepared.refused and prepared.answerable == "no" and prepared.prompt is None
    assert prepared.sources and prepared.sources[0].url.startswith("https://milvus.io/docs/")
    assert prepared.timings.check_s > 0
    # One request, the check: greedy, with the question and the passages in its prompt.
    [(request_id, temperature, _)] = spy.requests
    assert request_id.startswith("check-") and temperature == 0.0
    assert QUESTION in spy.prompt and "[1] " in spy.prompt and "yes or no" in spy.prompt
    stream = answerer.stream(prepared)
    assert "".join([d async for d in stream]).startswith("I couldn't find this")


async def test_a_yes_or_an_unclear_reply_answers(rag: Rag) -> None:
    for verdict, expected in (("Yes", "yes"), ("Perhaps", "unclear")):
        spy = Spy(rag.require_answerer().generator, verdict=verdict)
        prepared = await Answerer(rag.settings, rag.retriever, spy).prepare(QUESTION)
        assert not prepared.refused and prepared.answerable == expected and prepared.prompt


async def test_off_means_no_check_request(rag: Rag) -> None:
    spy = Spy(rag.require_answerer().generator, verdict="No")
    settings = rag.settings.model_copy(update={"answerability_check": False})
    prepared = await Answerer(settings, rag.retriever, spy).prepare(QUESTION)
    assert not prepared.refused and prepared.answerable is None and spy.requests == []


async def test_the_check_is_greedy_while_answers_sample(rag: Rag) -> None:
    """The tiny engine samples at LLM_TEMPERATURE 0.8: its answers differ from run to run, the
    check's reply (temperature 0) is the same every time."""
    generator = rag.require_answerer().generator
    answerer = Answerer(rag.settings, rag.retriever, generator)
    hits = (await rag.retriever.retrieve(QUESTION)).hits
    prompt = answerer._render_check(QUESTION, ["[1] a passage"])

    async def reply(temperature: float | None) -> str:
        parts = [
            c.text async for c in generator.stream(prompt, max_tokens=4, temperature=temperature)
        ]
        return "".join(parts)

    greedy = {await reply(0.0) for _ in range(3)}
    sampled = {await reply(None) for _ in range(3)}
    assert len(greedy) == 1 and len(sampled) > 1
    assert await answerer.check_answerable(QUESTION, hits) == parse_verdict(greedy.pop())
