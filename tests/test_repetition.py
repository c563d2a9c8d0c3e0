"""Looping answers are stopped: RepetitionGuard on hand-written streams, Generator.stream on a
scripted backend and a real aiohttp server (the request is cut), and the penalties sent along."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncGenerator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rag_core.answer.llm import GenerationChunk, Generator, RemoteGenerator
from rag_core.answer.repetition import RepetitionGuard, find_loop
from rag_core.config import Settings
from tests.conftest import FIXTURES
from tests.web_fixtures import LocalSite

LOOP = "- `m` (Memory Mapping)\n- `nbits` (Number of bits)\n"
INTRO = "The IVF_PQ index takes these parameters:\n"


def token_pieces(text: str, per_chunk: int = 2) -> list[str]:
    """`text` cut like a model's stream: word-sized tokens, a few per chunk."""
    tokens = re.findall(r"\s*\S+|\s+", text)
    return ["".join(tokens[i : i + per_chunk]) for i in range(0, len(tokens), per_chunk)]


def feed_all(
    pieces: list[str], guard: RepetitionGuard | None = None
) -> tuple[int, RepetitionGuard]:
    """Pieces fed until the guard fires: (pieces consumed, guard)."""
    guard = guard or RepetitionGuard()
    for i, piece in enumerate(pieces, 1):
        if guard.feed(piece):
            return i, guard
    return len(pieces), guard


def test_loop_of_lines_is_cut_after_the_first_copy() -> None:
    pieces = token_pieces(INTRO + LOOP * 20)
    used, guard = feed_all(pieces)
    assert guard.looping
    assert used < len(pieces) // 3  # noticed early, not at the end of the budget
    assert guard.kept == INTRO + LOOP.rstrip()
    assert guard.unit is not None and "nbits" in guard.unit


def test_loop_of_a_phrase_is_cut() -> None:
    text = "Milvus builds the index. " + "and then it rebuilds the index " * 12
    _, guard = feed_all(token_pieces(text, per_chunk=1))
    assert guard.looping
    assert guard.kept == "Milvus builds the index. and then it rebuilds the index"


def test_one_line_repeated() -> None:
    text = "Answer:\n" + "I don't know the answer to that question.\n" * 8
    _, guard = feed_all(token_pieces(text))
    assert guard.kept == "Answer:\nI don't know the answer to that question."


def test_paragraph_restated_word_for_word_is_cut() -> None:
    # What SmolLM2 wrote (greedy, no penalty): one paragraph three times, the last one cut by
    # its end-of-text token before the heading that followed the others.
    paragraph = (
        "GPU_CAGRA is a graph-based index optimized for GPUs, Using inference-grade GPUs to run "
        "the Milvus GPU version can be more cost-effective compared to using expensive "
        "training-grade GPUs."
    )
    unit = paragraph + "\n\nThe answer to the question above is:\n\n"
    text = "The " + unit * 2 + paragraph
    _, guard = feed_all(token_pieces(text, per_chunk=1))
    # Everything before the second copy stays, the line that introduced the repeat included.
    assert guard.kept == "The " + unit.rstrip()


def test_loop_found_in_any_chunking() -> None:
    text = INTRO + LOOP * 6
    for size in (1, 3, 7, 40):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        _, guard = feed_all(pieces)
        assert guard.kept == INTRO + LOOP.rstrip(), size


@pytest.mark.parametrize(
    "text",
    [
        # A numbered list, a bullet list with a shared prefix: items differ.
        "".join(f"{n}. Set `param_{n}` to tune the index.\n" for n in range(1, 30)),
        "".join(f"- `{name}` (Number of {name})\n" for name in "abcdefghijklmnopqrst"),
        # Markdown tables: rules and numeric rows repeat by design.
        "| Parameter | Value |\n" + "|---|---|---|---|---|---|\n" + "| 0 | 0 |\n" * 30,
        "Results:\n" + "=" * 200 + "\n" + "-" * 200,
        "vectors = [" + "0.0, " * 100 + "0.0]",
        # Seen in real docs: a table cell listing the same types per row, repeated arguments.
        "| Type | Dense Vector<br/>Sparse Vector<br/>Boolean<br/>JSON " * 3,
        "cv2.copyMakeBorder(\n" + "        border_size,\n" * 4 + "        value=blue,\n)",
        # A long line twice is still fine (e.g. a command shown, then run).
        "Run:\n" + "pip install -U pymilvus sentence-transformers langchain-text-splitters\n" * 2,
        # Twice is emphasis or a legit pair, not a loop.
        "print(x)\nprint(x)\nDone: the vector is printed twice, as expected.",
        "It is very very fast, and it scales to billions of vectors without trouble.",
    ],
)
def test_legit_repeated_structure_does_not_trigger(text: str) -> None:
    _, guard = feed_all(token_pieces(text, per_chunk=1))
    assert not guard.looping, guard.unit
    assert guard.kept == text
    assert find_loop(text) is None


def test_guard_stays_fired_and_ignores_more_text() -> None:
    guard = RepetitionGuard()
    guard.feed(INTRO + LOOP * 5)
    cut = guard.cut
    assert guard.feed("more text after the loop")
    assert guard.cut == cut


# --- Generator.stream on a scripted backend ---------------------------------------------------


class WordTokenizer:
    """Counts words as tokens: enough for Generator's prompt budget."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(range(len(text.split())))


class ScriptedGenerator(Generator):
    """Streams `script` chunk by chunk, like an engine; records an early close (an abort)."""

    def __init__(self, settings: Settings, script: list[str]) -> None:
        super().__init__(settings, WordTokenizer(), max_model_len=100_000)
        self.script = script
        self.produced = 0
        self.aborted = False

    async def _generate(
        self, prompt: str, prompt_ids: list[int], max_tokens: int, request_id: str
    ) -> AsyncGenerator[GenerationChunk, None]:
        finished = False
        try:
            for i, text in enumerate(self.script):
                await asyncio.sleep(0)
                self.produced = i + 1
                finished = i == len(self.script) - 1
                reason = "length" if finished else None
                yield GenerationChunk(text, finished, reason, len(prompt_ids), i + 1)
        finally:
            if not finished:
                self.aborted = True

    async def aclose(self) -> None:
        self._closed = True


def llm_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        llm_max_tokens=100_000,
        **overrides,  # type: ignore[arg-type]
    )


async def consume(
    generator: Generator, prompt: str = "question", **kw: object
) -> tuple[str, list[GenerationChunk]]:
    """The text a consumer shows: deltas appended, `retract` applied."""
    text, chunks = "", []
    async for chunk in generator.stream(prompt, **kw):  # type: ignore[arg-type]
        chunks.append(chunk)
        if chunk.retract:
            text = text[: -chunk.retract]
        text += chunk.text
    return text, chunks


async def test_stream_stops_a_loop_and_aborts_the_backend(tmp_path: Path) -> None:
    script = token_pieces(INTRO + LOOP * 40, per_chunk=3)
    generator = ScriptedGenerator(llm_settings(tmp_path), script)
    text, chunks = await consume(generator)
    assert text == INTRO + LOOP.rstrip()
    last = chunks[-1]
    assert last.finished and last.finish_reason == "repetition"
    assert last.retract > 0  # repeats had been streamed; the consumer drops them
    assert all(not c.finished and c.retract == 0 for c in chunks[:-1])
    assert generator.aborted
    assert generator.produced < len(script) // 4


async def test_stream_passes_loops_through_when_disabled(tmp_path: Path) -> None:
    script = token_pieces(INTRO + LOOP * 10, per_chunk=3)
    generator = ScriptedGenerator(llm_settings(tmp_path, llm_stop_on_repetition=False), script)
    text, chunks = await consume(generator)
    assert text == INTRO + LOOP * 10
    assert chunks[-1].finish_reason == "length"
    assert not generator.aborted


async def test_stream_keeps_a_normal_answer_whole(tmp_path: Path) -> None:
    answer = "".join(f"{n}. Step {n}: set `param_{n}` and rebuild.\n" for n in range(1, 25))
    generator = ScriptedGenerator(llm_settings(tmp_path), token_pieces(answer, per_chunk=2))
    text, chunks = await consume(generator)
    assert text == answer
    assert chunks[-1].finish_reason == "length" and not generator.aborted


# --- remote backend: penalties in the request body, a looping stream cut ---------------------


class LoopingServer:
    """An OpenAI-style /completions endpoint that streams LOOP forever (up to a cap)."""

    def __init__(self, events: int = 400) -> None:
        self.events = events
        self.bodies: list[dict] = []
        self.written = 0
        self.cut = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pieces = token_pieces(INTRO + LOOP * self.events)
        complete = False
        try:
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                event = {"choices": [{"text": piece, "finish_reason": "length" if last else None}]}
                await resp.write(f"data: {json.dumps(event)}\n\n".encode())
                self.written = i + 1
                await asyncio.sleep(0.002)
            await resp.write(b"data: [DONE]\n\n")
            complete = True
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            # A dropped connection (a failed write, or the handler cancelled by aiohttp) is how
            # vLLM's server learns to abort the request.
            if not complete:
                self.cut.set()
        return resp


async def remote(settings: Settings) -> RemoteGenerator:
    """A generator on LoopingServer: vLLM's /completions only (no /models to learn it from)."""
    session = aiohttp.ClientSession()
    settings = settings.model_copy(update={"llm_remote_api": "completions"})
    return RemoteGenerator(settings, WordTokenizer(), session)


async def test_remote_sends_penalties_and_cuts_a_looping_stream(tmp_path: Path) -> None:
    server = LoopingServer()
    async with LocalSite({"/v1/completions": server.handle}) as site:
        settings = llm_settings(
            tmp_path,
            llm_remote_url=site.url("/v1"),
            llm_repetition_penalty=1.15,
            llm_frequency_penalty=0.3,
            llm_presence_penalty=0.2,
        )
        generator = await remote(settings)
        try:
            text, chunks = await consume(generator)
            await asyncio.wait_for(server.cut.wait(), timeout=5)
        finally:
            await generator.aclose()
    body = server.bodies[0]
    assert body["repetition_penalty"] == 1.15
    assert body["frequency_penalty"] == 0.3
    assert body["presence_penalty"] == 0.2
    assert text == INTRO + LOOP.rstrip()
    assert chunks[-1].finish_reason == "repetition"
    assert server.written < len(token_pieces(INTRO + LOOP * server.events)) // 4


async def test_remote_omits_a_neutral_repetition_penalty(tmp_path: Path) -> None:
    server = LoopingServer(events=1)
    async with LocalSite({"/v1/completions": server.handle}) as site:
        settings = llm_settings(
            tmp_path, llm_remote_url=site.url("/v1"), llm_repetition_penalty=1.0
        )
        generator = await remote(settings)
        try:
            text, chunks = await consume(generator)
        finally:
            await generator.aclose()
    assert "repetition_penalty" not in server.bodies[0]
    assert server.bodies[0]["frequency_penalty"] == 0.0
    assert text == INTRO + LOOP and chunks[-1].finish_reason == "length"


def test_default_penalties() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.llm_repetition_penalty == 1.05
    assert settings.llm_frequency_penalty == settings.llm_presence_penalty == 0.0
    assert settings.llm_stop_on_repetition


# --- a real model that loops ------------------------------------------------------------------


@pytest.mark.slow
async def test_real_model_loop_is_stopped_and_its_request_aborted(
    smollm2_generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2 without a repetition penalty repeats one list item over and over on this prompt:
    the stream stops after a few repeats, keeps one, and the engine drops the request."""
    monkeypatch.setattr(smollm2_generator.settings, "llm_repetition_penalty", 1.0)
    passage = (FIXTURES / "milvus-docs" / "reference" / "gpu_index.md").read_text()[:1500]
    prompt = smollm2_generator.render(
        [
            {"role": "system", "content": "Answer from the passages. Cite them as [1]."},
            {
                "role": "user",
                "content": f"Passages:\n[1] {passage}\n\n"
                "Question: What are the GPU_CAGRA parameters?",
            },
        ]
    )
    text, chunks = await consume(smollm2_generator, prompt, max_tokens=400)
    last = chunks[-1]
    print(f"\n{last.completion_tokens} tokens, retract {last.retract}: {text!r}")
    assert last.finish_reason == "repetition"
    assert last.completion_tokens < 400
    assert not RepetitionGuard().feed(text)  # what is kept no longer loops
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(a != b for a, b in itertools.pairwise(lines)), lines
    engine = smollm2_generator.engine
    for _ in range(100):
        if engine.get_num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.get_num_unfinished_requests() == 0
