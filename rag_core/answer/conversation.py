"""Conversations: earlier turns, packed within a token budget, and the standalone question.

A follow-up ("and for IVF?") means little to retrieval on its own. The `Rewriter` turns it into
a standalone question with a short prompt to the answer engine, and falls back to rules when
the engine fails, says something unusable, or rewriting by the model is switched off. The
answer prompt then gets the last turns as data, newest kept, oldest dropped first.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import RagError

if TYPE_CHECKING:
    from ..config import Settings
    from .llm import Generator

log = logging.getLogger(__name__)

REWRITE_MAX_TOKENS = 64
REWRITE_TIMEOUT_S = 15.0
_CITATION = re.compile(r"\s?\[\d+\](?:\[\d+\])*")
_WORD = re.compile(r"[^\W_]+(?:[-_.][^\W_]+)*", re.UNICODE)
# Words that carry no topic: a follow-up made only of these (plus pronouns) needs the context.
_STOPWORDS = frozenset(
    """a an and are as at be but by can could do does for from how i if in into is it its me my
    of on or should so than that the their them then there these they this those to too was we
    what when where which who why will with would you your about also else more other same such
    just only please thanks thank ok okay yes no not""".split()
)
_BACK_REFERENCES = frozenset(
    "it its it's this that these those they them their there one ones same above".split()
)
_CONTINUATIONS = re.compile(
    r"^(and|or|but|also|what about|how about|same for|same with|and what about|then|so)\b",
    re.IGNORECASE,
)
Method = Literal["none", "rules", "llm"]


@dataclass(frozen=True)
class Turn:
    """One exchange of a conversation: the question as asked and the answer given."""

    question: str
    answer: str


@dataclass(frozen=True)
class Rewrite:
    """The question retrieval uses, and how it was made (with the cost of the model call)."""

    standalone: str
    method: Method
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _plain_answer(text: str) -> str:
    """An earlier answer as context: its citation numbers referred to other passages."""
    return _CITATION.sub("", text).strip()


def render_turn(turn: Turn) -> str:
    return f"User: {turn.question.strip()}\nAssistant: {_plain_answer(turn.answer)}"


def render_history(turns: Sequence[Turn]) -> str:
    return "\n\n".join(render_turn(t) for t in turns)


def pack_history(
    turns: Sequence[Turn], budget: int, count_tokens: Callable[[str], int]
) -> list[Turn]:
    """The latest turns whose rendered text fits `budget` tokens, in order; oldest dropped first.

    When even the latest turn alone is too long, its answer is shortened (its start is kept):
    the turn right before a follow-up is the one it most likely refers to.
    """
    kept: list[Turn] = []
    for turn in reversed(turns):
        candidate = [turn, *kept]
        if count_tokens(render_history(candidate)) <= budget:
            kept = candidate
            continue
        if not kept:
            shortened = _shorten(turn, budget, count_tokens)
            if shortened is not None:
                kept = [shortened]
        break
    return kept


def _shorten(turn: Turn, budget: int, count_tokens: Callable[[str], int]) -> Turn | None:
    answer = _plain_answer(turn.answer)
    while answer:
        answer = answer[: int(len(answer) * 0.8)].rsplit(" ", 1)[0]
        candidate = Turn(turn.question, answer + " …")
        if count_tokens(render_turn(candidate)) <= budget:
            return candidate
    return None


# -- the standalone question -------------------------------------------------------------------


def _topic_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1]


def needs_context(question: str) -> bool:
    """Whether `question` leans on an earlier turn: it continues one ("and for IVF?"), points
    back at it ("how do I delete it?"), or is too short to name its topic."""
    words = _WORD.findall(question.lower())
    if _CONTINUATIONS.match(question.strip()):
        return True
    if any(w in _BACK_REFERENCES for w in words):
        return True
    return len(_topic_words(question)) < 2


def rewrite_by_rules(question: str, history: Sequence[Turn]) -> str:
    """The follow-up joined to the question it continues, when it needs one; else unchanged.

    Retrieval is hybrid (dense + BM25): the earlier question supplies the topic words, the
    follow-up what changed, and both count.
    """
    if not history or not needs_context(question):
        return question
    previous = history[-1].question.strip()
    return f"{previous.rstrip(' ?.!')}? {question.strip()}"


class Rewriter:
    """Follow-up -> standalone question: the answer engine, else the rules.

    `settings.conversation_rewrite`: "llm" (the model, rules as the fallback), "rules", or
    "off" (the follow-up as typed).
    """

    def __init__(
        self, settings: Settings, generator: Generator | None, prompt: tuple[str, str]
    ) -> None:
        """`prompt`: the [system] and [user] parts of prompts/rewrite.txt (see load_prompt)."""
        self.settings = settings
        self.generator = generator
        self.system_prompt, self.user_template = prompt

    async def rewrite(self, question: str, history: Sequence[Turn]) -> Rewrite:
        mode = self.settings.conversation_rewrite
        if not history or mode == "off":
            return Rewrite(question, "none")
        started = time.perf_counter()
        usage = [0, 0]  # prompt, completion tokens of the model call, as far as it got
        if mode == "llm" and self.generator is not None and needs_context(question):
            try:
                text = await self._by_model(question, history, usage)
                previous = history[-1].question
                line = usable_rewrite(text, question, previous, self.settings.max_question_chars)
                return Rewrite(line, "llm", time.perf_counter() - started, *usage)
            except (RagError, TimeoutError, ValueError) as exc:
                # The answer itself may still work: retrieval falls back to the rules.
                log.info("rewriting by the model failed (%s): using the rules", exc)
        standalone = rewrite_by_rules(question, history)
        method: Method = "rules" if standalone != question else "none"
        # A model call that failed or was not usable still cost its time and tokens.
        return Rewrite(standalone, method, time.perf_counter() - started, *usage)

    def prompt(self, question: str, history: Sequence[Turn]) -> str:
        assert self.generator is not None
        budget = self.settings.conversation_history_tokens
        turns = pack_history(history, budget, self.generator.count_tokens)
        user = self.user_template.format(history=render_history(turns), question=question)
        return self.generator.render(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        )

    async def _by_model(self, question: str, history: Sequence[Turn], usage: list[int]) -> str:
        """The model's text for the rewrite prompt; `usage` follows its [prompt, completion]
        token counts as they arrive."""
        assert self.generator is not None
        prompt = self.prompt(question, history)
        parts: list[str] = []
        async with asyncio.timeout(min(REWRITE_TIMEOUT_S, self.settings.llm_timeout_s)):
            async for chunk in self.generator.stream(
                prompt,
                max_tokens=REWRITE_MAX_TOKENS,
                request_id=f"rewrite-{uuid.uuid4().hex[:12]}",
            ):
                parts.append(chunk.text)
                usage[0] = chunk.prompt_tokens or usage[0]
                usage[1] = chunk.completion_tokens
                if "\n" in "".join(parts).strip():
                    break  # one line is all we read: stop the engine early
        return "".join(parts)


_LABEL = re.compile(r"^(standalone question|question|rewritten question)\s*:\s*", re.IGNORECASE)


def usable_rewrite(text: str, question: str, previous: str, max_chars: int) -> str:
    """The model's rewrite, cleaned; ValueError when it cannot be trusted for retrieval.

    Trusted: one line, not longer than a question may be, keeping the follow-up's own topic
    words (a rewrite that drops "IVF" from "and for IVF?" searches for something else) and
    naming a topic of the follow-up or of the question before it.
    """
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip().strip("\"'`").strip()
    if not line:
        raise ValueError("empty rewrite")
    if len(line) > max_chars:
        raise ValueError("rewrite longer than a question may be")
    own = set(_topic_words(question))
    kept = own & set(_topic_words(line))
    if own and len(kept) * 2 < len(own):
        raise ValueError("rewrite lost the follow-up's topic")
    if not set(_topic_words(line)) & (own | set(_topic_words(previous))):
        raise ValueError("rewrite names no topic of the conversation")
    return line
