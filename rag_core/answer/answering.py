"""Answering: `prepare()` retrieves and decides, then `stream()` generates with citations.

The split lets a caller show the sources (or the refusal) before any text is generated, and
surfaces retrieval errors before generation starts:

    prepared = await answerer.prepare(question)  # or prepare(follow_up, history=turns)
    stream = answerer.stream(prepared)
    async for delta in stream:
        ...
    answer = stream.result
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources

from ..config import Settings
from ..documents import Hit
from ..errors import ContextLengthError, GenerationError, RagError
from ..search.retrieval import Retriever, fold_near_duplicates
from ..search.verified import is_verified
from .attribution import Attribution, attribute
from .conversation import Rewrite, Rewriter, Turn, pack_history, render_history
from .llm import GenerationChunk, Generator
from .text_fragments import passage_url, source_key

log = logging.getLogger(__name__)

REFUSAL = (
    "I couldn't find this in the documentation, so I won't guess. "
    "These pages are the closest matches:"
)


def refusal_text(unknown_terms: Sequence[str] = ()) -> str:
    """The 'not in the docs' reply; it names the config keys the docs never mention when
    that is the reason (rag_core/search/named_terms.py)."""
    if not unknown_terms:
        return REFUSAL
    names = ", ".join(f"`{term[:80]}`" for term in unknown_terms[:3])
    return (
        f"I couldn't find {names} anywhere in the documentation, so I won't guess. "
        "These pages are the closest matches:"
    )


@dataclass(frozen=True)
class Source:
    """A numbered passage as the prompt shows it, and where it links."""

    n: int
    title: str
    url: str
    heading_path: str
    doc_id: str
    score: float
    similarity: float
    text: str = field(repr=False, default="")
    chunk_hash: str = ""  # of the passage as indexed: stale answers are found by it


@dataclass
class Timings:
    rewrite_s: float = 0.0  # turning a follow-up into a standalone question
    check_s: float = 0.0  # asking the model whether the passages answer the question
    embed_s: float = 0.0
    search_s: float = 0.0
    rerank_s: float = 0.0  # the answer model reordering the passages (RERANK=llm)
    first_token_s: float | None = None  # from the start of prepare()
    attribution_s: float = 0.0  # checking the sources after the stream ended
    total_s: float = 0.0


@dataclass
class Prepared:
    """The outcome of retrieval and the relevance gate, before any generation."""

    question: str
    sources: list[Source]  # the numbered passages in the prompt, or the closest pages if refused
    refused: bool
    prompt: str | None
    prompt_tokens: int
    timings: Timings
    started: float  # perf_counter at the start of prepare()
    best_similarity: float
    rewrite: Rewrite | None = None  # a follow-up: the standalone question retrieval used
    history: list[Turn] = field(default_factory=list)  # the earlier turns in the prompt
    # The answerability check's verdict: "yes", "no", "unclear" (answered), None (not asked).
    answerable: str | None = None
    unknown_terms: tuple[str, ...] = ()  # refused: the docs name none of these (named_terms.py)
    hits: list[Hit] = field(default_factory=list)  # the passages the prompt was built from

    @property
    def standalone(self) -> str:
        return self.rewrite.standalone if self.rewrite is not None else self.question


@dataclass
class Answer:
    question: str
    text: str  # citations corrected by attribution (see rag_core/answer/attribution.py)
    sources: list[Source]  # passages that back something it says; all of them if none does
    refused: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    timings: Timings
    raw_text: str = ""  # the model's own text, citations as it wrote them
    low_support: bool = False  # most of the text is backed by no passage
    attribution: Attribution | None = field(default=None, repr=False)
    standalone: str = ""  # the question retrieval used (a follow-up rewritten), else question
    rewrite: Rewrite | None = None  # a follow-up: how it was made standalone, and its cost


class EmptyQuestionError(RagError):
    user_message = "Please ask a question (it was empty)."


class QuestionTooLongError(RagError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"That question is too long: please keep it under {limit} characters.")


# Letters that render as nothing (Hangul fillers, the braille blank): invisible, like format
# characters, so a question made of them is empty too.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def clean_question(text: str) -> str:
    """`text` without control characters (newline and tab kept), surrounding blanks stripped.

    NUL and other control bytes mean nothing in a question and must not reach the model, the
    logs or the feedback database.
    """
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc").strip()


def is_blank(text: str) -> bool:
    """True if `text` shows nothing: only whitespace, control and format characters (zero-width
    spaces and joiners, word joiner, BOM, ...) or invisible fillers."""
    return all(
        c.isspace() or c in _BLANK_LETTERS or unicodedata.category(c) in ("Cc", "Cf", "Zs")
        for c in text
    )


def _prompt_file(name: str) -> str:
    return resources.files("rag_core.answer.prompts").joinpath(name).read_text(encoding="utf-8")


def load_prompt(name: str = "answer.txt") -> tuple[str, str]:
    """The template file's [system] and [user] parts."""
    text = _prompt_file(name)
    match = re.search(r"^\[system\]\n(.*?)^\[user\]\n(.*)\Z", text, re.S | re.M)
    if match is None:
        raise ValueError(f"prompt {name} needs [system] and [user] sections")
    return match.group(1).strip(), match.group(2).strip()


def merge_same_source(hits: Sequence[Hit]) -> list[Hit]:
    """One passage per page and anchor, the best one: else the answer would list one link
    twice ([1] and [4]), and a long section would crowd other pages out of the context."""
    best: dict[str, Hit] = {}
    for hit in hits:
        key = source_key(hit.url)
        if key not in best:
            best[key] = hit
        elif hit.similarity > best[key].similarity:  # the gate reads the best cosine
            best[key] = replace(best[key], similarity=hit.similarity)
    return list(best.values())


class Answerer:
    """Retrieval, the 'not in the docs' gate, the grounded prompt and the streamed answer."""

    def __init__(self, settings: Settings, retriever: Retriever, generator: Generator) -> None:
        self.settings = settings
        self.retriever = retriever
        self.generator = generator
        self.system_prompt, self.user_template = load_prompt()
        self.history_template = _prompt_file("history.txt")
        self.rewriter = Rewriter(settings, generator, load_prompt("rewrite.txt"))
        self.check_system, self.check_template = load_prompt("answerable.txt")

    def prepare_uses_engine(self, history: Sequence[Turn] = ()) -> bool:
        """Whether `prepare` may call the answer model (a follow-up rewritten by the model, the
        reranker, the answerability check), so a caller bounding engine calls holds its slot
        through `prepare` too."""
        return (
            self.settings.answerability_check
            or self.retriever.reranker is not None
            or (bool(history) and self.settings.conversation_rewrite == "llm")
        )

    async def prepare(
        self,
        question: str,
        history: Sequence[Turn] = (),
        *,
        verified_scope: Sequence[str] | None = None,
        threshold: float | None = None,
    ) -> Prepared:
        """Retrieve and decide. With `history` (earlier turns, oldest first) the question is a
        follow-up: retrieval uses its standalone rewrite, the prompt shows the latest turns.
        `verified_scope`: the link prefixes of the verified answers that may answer (None: all).
        `threshold`: the relevance bar for this question (None: RELEVANCE_THRESHOLD).
        """
        started = time.perf_counter()
        question = clean_question(question)
        if is_blank(question):
            raise EmptyQuestionError()
        if len(question) > self.settings.max_question_chars:
            raise QuestionTooLongError(self.settings.max_question_chars)
        rewrite = await self.rewriter.rewrite(question, history) if history else None
        query = rewrite.standalone if rewrite is not None else question
        retrieval = await self.retriever.retrieve(query, verified_scope=verified_scope)
        timings = Timings(
            rewrite_s=rewrite.seconds if rewrite else 0.0,
            embed_s=retrieval.embed_s,
            search_s=retrieval.search_s,
            rerank_s=retrieval.rerank_s,
        )
        hits = merge_same_source(fold_near_duplicates(retrieval.hits))
        bar = self.settings.relevance_threshold if threshold is None else threshold
        best, refused = retrieval.gate(bar)

        def refusal(unknown_terms: tuple[str, ...] = (), verdict: str | None = None) -> Prepared:
            # "Not in the docs": no prompt, the closest pages as sources.
            return Prepared(
                question,
                _closest_pages(hits),
                True,
                None,
                0,
                timings,
                started,
                best,
                rewrite,
                answerable=verdict,
                unknown_terms=unknown_terms,
            )

        if refused:
            return refusal(unknown_terms=retrieval.unknown_terms)
        verdict = None
        if self.settings.answerability_check:
            t0 = time.perf_counter()
            verdict = await self.check_answerable(query, hits)
            timings.check_s = time.perf_counter() - t0
            if verdict == "no":
                return refusal(verdict=verdict)
        turns = pack_history(
            history, self.settings.conversation_history_tokens, self.generator.count_tokens
        )
        prompt, sources, tokens = self.build_prompt(question, hits, turns)
        return Prepared(
            question,
            sources,
            False,
            prompt,
            tokens,
            timings,
            started,
            best,
            rewrite,
            turns,
            answerable=verdict,
            hits=list(hits),
        )

    async def check_answerable(self, question: str, hits: Sequence[Hit]) -> str:
        """Ask the model whether the passages answer `question`: "yes", "no" or "unclear".

        Greedy, a few tokens, the passages that fit the answer prompt's budget. Anything but a
        clear "no" (an unclear reply, a failed request) lets the answer go ahead: the check can
        only spare a wrong answer, never block the right one on its own error.
        """
        blocks: list[str] = []
        for n, hit in enumerate(hits, 1):
            candidate = [*blocks, _passage_block(n, hit)]
            if (
                blocks
                and self.generator.count_tokens(self._render_check(question, candidate))
                > self.context_budget()
            ):
                break
            blocks = candidate
        try:
            reply = ""
            async for chunk in self.generator.stream(
                self._render_check(question, blocks),
                max_tokens=_CHECK_TOKENS,
                request_id=f"check-{uuid.uuid4().hex[:12]}",
                temperature=0.0,
            ):
                reply += chunk.text
        except (RagError, TimeoutError) as exc:
            log.info("answerability check failed (%s): answering", exc)
            return "unclear"
        return parse_verdict(reply)

    def _render_check(self, question: str, blocks: Sequence[str]) -> str:
        user = self.check_template.format(context="\n\n".join(blocks), question=question)
        return self.generator.render(
            [{"role": "system", "content": self.check_system}, {"role": "user", "content": user}]
        )

    def context_budget(self) -> int:
        """Prompt tokens available: the context window minus the answer's budget."""
        return self.generator.max_model_len - self.settings.llm_max_tokens

    def build_prompt(
        self,
        question: str,
        hits: Sequence[Hit],
        history: Sequence[Turn] = (),
        *,
        budget: int | None = None,
    ) -> tuple[str, list[Source], int]:
        """Number passages best-first and keep as many as fit the LLM's token budget
        (`budget`: fewer prompt tokens than the context allows)."""
        budget = self.context_budget() if budget is None else min(budget, self.context_budget())
        sources: list[Source] = []
        blocks: list[str] = []
        prompt = self._render(question, blocks, history)
        tokens = self.generator.count_tokens(prompt)
        for hit in hits:
            n = len(sources) + 1
            block = _passage_block(n, hit)
            candidate = self._render(question, [*blocks, block], history)
            candidate_tokens = self.generator.count_tokens(candidate)
            if candidate_tokens > budget:
                if sources:
                    break  # the best passages are already in; lower-ranked ones are dropped
                block = self._truncate_to_fit(question, n, hit, budget, history)
                candidate = self._render(question, [block], history)
                candidate_tokens = self.generator.count_tokens(candidate)
            blocks.append(block)
            prompt, tokens = candidate, candidate_tokens
            sources.append(_source(n, hit))
        return prompt, sources, tokens

    def _truncate_to_fit(
        self, question: str, n: int, hit: Hit, budget: int, history: Sequence[Turn]
    ) -> str:
        """The best passage alone is too long: keep its head, cut at a word boundary."""
        text = hit.text
        while text:
            text = text[: int(len(text) * 0.8)].rsplit(" ", 1)[0]
            block = _passage_block(n, hit, text + " …")
            if self.generator.count_tokens(self._render(question, [block], history)) <= budget:
                return block
        raise GenerationError(
            "This question is too long for the answer engine's context window.",
            detail="question alone exceeds the context budget",
        )

    def _render(self, question: str, blocks: Sequence[str], history: Sequence[Turn] = ()) -> str:
        user = self.user_template.format(context="\n\n".join(blocks), question=question)
        if history:
            # Earlier turns go before the passages, marked as data like the passages are.
            user = self.history_template.format(history=render_history(history)) + user
        return self.generator.render(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        )

    def stream(self, prepared: Prepared) -> AnswerStream:
        return AnswerStream(self, prepared)


class AnswerStream:
    """Async iterator of text deltas; `result` holds the final Answer once it is exhausted."""

    def __init__(self, answerer: Answerer, prepared: Prepared) -> None:
        self.answerer = answerer
        self.prepared = prepared
        self.result: Answer | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        p = self.prepared
        if p.refused:
            # No engine call: the gate decided the docs don't cover this.
            p.timings.total_s = time.perf_counter() - p.started
            text = refusal_text(p.unknown_terms)
            self.result = Answer(
                p.question,
                text,
                p.sources,
                True,
                0,
                0,
                None,
                p.timings,
                standalone=p.standalone,
                rewrite=p.rewrite,
            )
            yield text
            return
        assert p.prompt is not None
        parts: list[str] = []
        completion_tokens = 0
        prompt_tokens = p.prompt_tokens
        finish_reason: str | None = None
        request_id = f"ask-{uuid.uuid4().hex[:12]}"
        generator = self.answerer.generator
        max_tokens = self.answerer.settings.llm_max_tokens
        try:
            chunks = await _first_chunk(
                generator.stream(p.prompt, max_tokens=max_tokens, request_id=request_id)
            )
        except ContextLengthError as exc:
            # The server counts the prompt longer than it was counted here (no tokenizer of the
            # model here): fewer passages, once.
            if not p.hits:
                raise
            budget = max(_MIN_RETRY_TOKENS, p.prompt_tokens * 2 // 3)
            log.info("prompt too long for the server (%s): retrying in %d tokens", exc, budget)
            p.prompt, p.sources, p.prompt_tokens = self.answerer.build_prompt(
                p.question, p.hits, p.history, budget=budget
            )
            chunks = await _first_chunk(
                generator.stream(p.prompt, max_tokens=max_tokens, request_id=request_id + "-r")
            )
        async for chunk in chunks:
            if chunk.retract:
                # The answer started repeating itself: the repeats already shown are dropped
                # from the final text (the stream ends with finish_reason "repetition").
                kept = "".join(parts)[: -chunk.retract]
                parts = [kept]
            if chunk.text:
                if p.timings.first_token_s is None:
                    p.timings.first_token_s = time.perf_counter() - p.started
                parts.append(chunk.text)
                yield chunk.text
            completion_tokens = chunk.completion_tokens
            prompt_tokens = chunk.prompt_tokens or prompt_tokens
            finish_reason = chunk.finish_reason
        raw = "".join(parts)
        # Prove each sentence against the passages: the final text and the sources carry the
        # result (the streamed text above is the model's own).
        embedder = self.answerer.retriever.embedder
        checked = await attribute(raw, [s.text for s in p.sources], embedder.aembed_passages)
        by_number = {s.n: s for s in p.sources}
        # When no passage backs anything, all of them are listed (flagged low_support): the
        # reader can still check where the answer should have come from.
        sources = [by_number[n] for n in checked.used if n in by_number] or list(p.sources)
        p.timings.attribution_s = checked.seconds
        p.timings.total_s = time.perf_counter() - p.started
        self.result = Answer(
            p.question,
            checked.text,
            sources,
            False,
            prompt_tokens,
            completion_tokens,
            finish_reason,
            p.timings,
            raw_text=raw,
            low_support=checked.low_support,
            attribution=checked,
            standalone=p.standalone,
            rewrite=p.rewrite,
        )


_CHECK_TOKENS = 4  # "yes" / "no" and a stray token or two
_MIN_RETRY_TOKENS = 256  # a prompt retried shorter keeps at least this budget


async def _first_chunk(stream: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    """`stream` with its first chunk received: a request the backend refuses raises here,
    before any text is shown."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        return _resumed(None, stream)
    except BaseException:
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()
        raise
    return _resumed(first, stream)


async def _resumed(
    first: GenerationChunk | None, stream: AsyncIterator[GenerationChunk]
) -> AsyncIterator[GenerationChunk]:
    try:
        if first is not None:
            yield first
            async for chunk in stream:
                yield chunk
    finally:
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()


def parse_verdict(reply: str) -> str:
    """The first word of the model's reply: "yes", "no", else "unclear"."""
    match = re.match(r"\W*(\w+)", reply.strip().lower())
    word = match.group(1) if match else ""
    return word if word in ("yes", "no") else "unclear"


def _passage_block(n: int, hit: Hit, text: str | None = None) -> str:
    where = f" — {hit.heading_path}" if hit.heading_path else ""
    return f"[{n}] {hit.title}{where}\nURL: {hit.url}\n{text if text is not None else hit.text}"


def _source(n: int, hit: Hit) -> Source:
    return Source(
        n=n,
        title=hit.title,
        # The link scrolls to the passage and highlights it (a text fragment; the anchor stays).
        # (a verified answer links to its Discord message as it is).
        url=hit.url if is_verified(hit.doc_id) else passage_url(hit.url, hit.text),
        heading_path=hit.heading_path,
        doc_id=hit.doc_id,
        score=hit.score,
        similarity=hit.similarity,
        text=hit.text,
        chunk_hash=hit.chunk_hash,
    )


def _closest_pages(hits: Sequence[Hit], limit: int = 3) -> list[Source]:
    """One entry per page, best first: what a refusal points to."""
    pages: list[Source] = []
    seen: set[str] = set()
    for hit in sorted(hits, key=lambda h: h.similarity, reverse=True):
        if hit.doc_id in seen:
            continue
        seen.add(hit.doc_id)
        pages.append(_source(len(pages) + 1, hit))
        if len(pages) == limit:
            break
    return pages
