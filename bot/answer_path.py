"""The one path from a question to a delivered answer, shared by every entry point.

A slash command, a thread message or a reply differ only in how the question arrives and where
the answer goes: the caller picks an `AnswerWriter` (bot/writers.py) for the destination (an
interaction response, or a channel/thread message) and `AnswerPath.deliver` does the rest:
retrieval, the answer queue, streaming into place, the final render with sources, the log line
and the record in the feedback database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from rag_core.answer.answering import (
    REFUSAL,
    Answer,
    AnswerStream,
    EmptyQuestionError,
    Prepared,
    Source,
    is_blank,
)
from rag_core.answer.conversation import Turn
from rag_core.errors import RagError

from . import metrics
from .feedback import SourceRecord
from .handoff import handoff_view
from .home import Home
from .streaming import MESSAGE_LIMIT, plain_links, render_sources, safe_truncate, split_message
from .utils import GENERIC_ERROR, AnswerQueue, QueueFull, queue_text
from .writers import PART_LIMIT, AnswerWriter, InteractionExpired

if TYPE_CHECKING:
    from rag_core.config import Settings
    from rag_core.runtime import Rag

    from .feedback import FeedbackStore

log = logging.getLogger(__name__)

SEARCHING = "🔎 Searching the docs…"
NOTHING_FOUND = "I couldn't find anything about this in the documentation."
EMPTY_ANSWER = "The model returned an empty answer. Please ask again, maybe in other words."
LOW_SUPPORT = "-# ⚠️ Parts of this answer are not backed by the docs: check the sources below."
NOT_BACKED = "-# ⚠️ This answer is not backed by the docs: no passage below supports it."
BUSY = "Too many questions are waiting right now. Please ask again in a minute."
SHUTTING_DOWN = "The bot is restarting and stopped this answer. Please ask again in a minute."
MIN_SOURCES_ROOM = 300  # below this, the sources get a message of their own
THREAD_NAME_LIMIT = 100  # Discord's limit on a thread name
_MENTION_SYNTAX = re.compile(r"<(?:@[!&]?|#)\d+>|@(?:everyone|here)")


@dataclass(frozen=True)
class Asker:
    """Who asked, and where: for the log line and the feedback record."""

    user_id: int
    guild_id: int | None
    channel_id: int | None

    @classmethod
    def of_interaction(cls, interaction: discord.Interaction) -> Asker:
        return cls(interaction.user.id, interaction.guild_id, interaction.channel_id)

    @classmethod
    def of_message(cls, message: discord.Message) -> Asker:
        guild_id = message.guild.id if message.guild is not None else None
        return cls(message.author.id, guild_id, message.channel.id)


@dataclass(frozen=True)
class Delivered:
    """An answer as it was shown: the messages it fills and its row in the feedback database."""

    answer: Answer
    messages: list[discord.Message]
    answer_id: int | None  # None when it could not be recorded


# -- rendering ---------------------------------------------------------------------------------


def _label(source: Source) -> str:
    return f"{source.title} › {source.heading_path}" if source.heading_path else source.title


def indexed_ago(indexed_at: float | None, now: float) -> str:
    """How old the knowledge base is, for the footer: "docs indexed 2 h ago"."""
    if indexed_at is None:
        return ""
    age = max(0.0, now - indexed_at)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= size:
            return f"docs indexed {age // size:.0f} {unit} ago"
    return "docs indexed just now"


def render_answer(
    answer: Answer, *, seconds: float, votes_hint: bool, freshness: str = ""
) -> list[str]:
    """The final messages: the answer split within limits, then sources and a footer."""
    items = [(s.n, _label(s), s.url) for s in answer.sources]
    if answer.refused:
        body, header = (answer.text or REFUSAL, "") if items else (NOTHING_FOUND, "")
    else:
        # Links the model wrote are shown as text: only the sources below are clickable.
        body, header = plain_links(answer.text.strip()) or EMPTY_ANSWER, "**Sources**\n"
        if answer.low_support:
            backed = answer.attribution is not None and bool(answer.attribution.used)
            body += "\n\n" + (LOW_SUPPORT if backed else NOT_BACKED)
    footer = f"-# Answered in {seconds:.1f} s"
    if freshness:
        footer += f" · {freshness}"
    if votes_hint:
        footer += " · react 👍 if this helped, 👎 if it is wrong"
    parts = split_message(body, PART_LIMIT) or [EMPTY_ANSWER]
    if not items:
        tail_room = MESSAGE_LIMIT - len(parts[-1]) - 1 - len(footer)
        if tail_room >= 0:
            parts[-1] += "\n" + footer
        else:
            parts.append(footer)
        return parts
    room = MESSAGE_LIMIT - len(parts[-1]) - 2 - len(header) - 1 - len(footer)
    if room >= MIN_SOURCES_ROOM:
        parts[-1] += "\n\n" + header + render_sources(items, room) + "\n" + footer
    else:
        room = MESSAGE_LIMIT - len(header) - 1 - len(footer)
        parts.append(header + render_sources(items, room) + "\n" + footer)
    if answer.refused:
        # The refusal and its closest pages read as one: no blank line between them.
        parts[-1] = parts[-1].replace(body + "\n\n", body + "\n", 1)
    return parts


def thread_name(question: str) -> str:
    """A thread name from a question: its first line, mention syntax removed, within limits."""
    line = next((ln for ln in question.splitlines() if ln.strip()), "")
    line = " ".join(_MENTION_SYNTAX.sub("", line).split())
    return safe_truncate(line, THREAD_NAME_LIMIT) or "Question"


# -- the path ------------------------------------------------------------------------------------


class AnswerPath:
    """Question -> delivered answer, with the answer queue every entry point shares."""

    def __init__(
        self,
        settings: Settings,
        rag: Rag,
        feedback: FeedbackStore,
        dispatch: Callable[..., None],
    ) -> None:
        """`dispatch(event, *args)` tells the bot's listeners (discord.py's `Client.dispatch`)."""
        self.settings = settings
        self.rag = rag
        self.feedback = feedback
        self.dispatch = dispatch
        self.home = Home(settings)  # which verified answers may answer where
        self.queue = AnswerQueue(settings.max_concurrent_answers, settings.max_queued_answers)
        self.answering: set[asyncio.Task[object]] = set()
        self.stopped = False  # set by stop(): no new work should start
        self._cooldowns: dict[int, app_commands.Cooldown] = {}
        self._told_to_wait: dict[int, float] = {}  # user -> end of the window they were told of
        self._told: set[int] = set()  # channels whose missing permission was logged

    def take_cooldown(self, user_id: int) -> float | None:
        """Count a question of `user_id`: None if allowed, else seconds until the next one.

        One cooldown per person across /ask, follow-ups, replies and mentions."""
        per = self.settings.ask_cooldown_s
        if per <= 0:
            return None
        if len(self._cooldowns) > 10_000:  # forget windows that have passed
            self._cooldowns = {u: c for u, c in self._cooldowns.items() if c.get_tokens() < c.rate}
        cooldown = self._cooldowns.setdefault(user_id, app_commands.Cooldown(1, per))
        return cooldown.update_rate_limit()

    def give_back_cooldown(self, user_id: int) -> None:
        """Undo `take_cooldown` for a question the bot kept silent on (a forum post left to
        people): the poster's next question to the bot is not made to wait for it."""
        cooldown = self._cooldowns.get(user_id)
        if cooldown is not None:
            cooldown.reset()

    def first_wait_notice(self, user_id: int, retry_after: float) -> bool:
        """Whether to tell `user_id` to wait `retry_after` s: once per cooldown window, so a
        flood of messages gets one notice, not one per message."""
        now = time.monotonic()
        if len(self._told_to_wait) > 10_000:  # forget windows that have passed
            self._told_to_wait = {u: t for u, t in self._told_to_wait.items() if t > now}
        if self._told_to_wait.get(user_id, 0.0) > now:
            return False
        self._told_to_wait[user_id] = now + retry_after
        return True

    async def open_thread(self, message: discord.Message, question: str) -> discord.Thread | None:
        """A thread under `message` for an answer and its follow-ups; None: answer inline."""
        try:
            return await message.create_thread(name=thread_name(question))
        except discord.Forbidden:
            self.missing_permission(message.channel, "Create Public Threads")
        except (discord.HTTPException, ValueError):
            log.warning("could not start a thread under message %s", message.id, exc_info=True)
        return None

    def missing_permission(self, channel: object, permission: str) -> None:
        """Said once per channel, not on every message: the bot answers inline meanwhile."""
        channel_id = getattr(channel, "id", 0)
        if channel_id in self._told:
            return
        self._told.add(channel_id)
        log.warning(
            "the bot lacks the %s permission in channel %s: grant it to the bot's role "
            "(answers there go inline or are skipped meanwhile)",
            permission,
            channel_id,
        )

    async def remember(
        self,
        delivered: Delivered,
        conversation_id: int | None,
        thread: discord.Thread | None,
        *,
        reservation: int | None = None,
    ) -> int | None:
        """Record `delivered` as the next turn of `conversation_id` (None: a new conversation,
        in `thread` when the bot started one), the turn `reservation` held for it; the
        conversation's id."""
        if delivered.answer_id is None:
            return None
        try:
            return await self.feedback.record_turn(
                delivered.answer_id,
                standalone=delivered.answer.standalone or delivered.answer.question,
                conversation_id=conversation_id,
                thread_id=thread.id if thread is not None else None,
                reservation=reservation,
            )
        except Exception:
            log.exception("could not record the turn of answer %s", delivered.answer_id)
            return None

    def refusal(self, question: str, asker: Asker) -> str | None:
        """Why `question` is refused before any work starts (empty, too long, busy), or None.

        Cheap enough to run before an interaction is acknowledged."""
        invalid = self.invalid(question)
        if invalid is not None:
            return invalid
        if self.queue.full():
            metrics.observe_error("busy")
            _log_question(asker, "error", None, 0.0, error="busy")
            return BUSY
        return None

    def invalid(self, question: str) -> str | None:
        """Why `question` cannot be answered however long it waits (empty, too long), or None."""
        limit = self.settings.max_question_chars
        if is_blank(question):
            return EmptyQuestionError.user_message
        if len(question) > limit:
            return f"That question is too long: please keep it under {limit} characters."
        return None

    async def stop(self) -> None:
        """Shutdown: stop answers in flight (aborting their generation) while HTTP still works,
        so each user sees a clear message instead of a message stuck half-way."""
        self.stopped = True
        tasks = [t for t in self.answering if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def deliver(
        self,
        question: str,
        writer: AnswerWriter,
        asker: Asker,
        *,
        history: Sequence[Turn] = (),
        votes: bool = True,
        refusals: bool = True,
        threshold: float | None = None,
    ) -> Delivered | None:
        """Answer `question` into `writer`; None when it ended in an error shown to the user
        (or, with `refusals` off, when the docs do not cover it). `threshold`: the relevance
        bar for this question (None: RELEVANCE_THRESHOLD).

        `history`: the conversation's earlier turns, oldest first (a follow-up).
        `votes`: add the 👍/👎 reactions (public answers only).
        `refusals`: post the "not in the docs" reply; off, such a question gets no message."""
        task = asyncio.current_task()
        if task is not None:
            self.answering.add(task)
        try:
            return await self._deliver(
                question,
                writer,
                asker,
                history,
                votes=votes,
                refusals=refusals,
                threshold=threshold,
            )
        finally:
            if task is not None:
                self.answering.discard(task)

    @contextlib.asynccontextmanager
    async def _slot(self, writer: AnswerWriter) -> AsyncIterator[None]:
        """A place among the answers generated at once, the wait shown in `writer`."""
        try:
            async with self.queue.slot(_queue_display(writer, self.queue)):
                yield
        finally:  # released, or gave up waiting: one fewer either way
            metrics.set_queue_depth(self.queue.waiting)

    async def _freshness(self) -> str:
        """The footer's "docs indexed … ago"; nothing when the store cannot say."""
        try:
            since = await asyncio.to_thread(self.rag.store.live_since)
        except Exception:
            log.debug("no index age for the footer", exc_info=True)
            return ""
        return indexed_ago(since, time.time())

    async def _deliver(
        self,
        question: str,
        writer: AnswerWriter,
        asker: Asker,
        history: Sequence[Turn],
        *,
        votes: bool,
        refusals: bool,
        threshold: float | None,
    ) -> Delivered | None:
        started = time.perf_counter()
        log.debug("question by %s: %r", asker.user_id, question)
        prepared: Prepared | None = None
        try:
            writer.status(SEARCHING)
            answerer = self.rag.require_answerer()
            # When preparing calls the engine too (a rewrite, the reranker, the answerability
            # check), the question takes its slot first: MAX_CONCURRENT_ANSWERS bounds every
            # engine call.
            engine_first = answerer.prepare_uses_engine(history)
            async with contextlib.AsyncExitStack() as held:
                if engine_first:
                    await held.enter_async_context(self._slot(writer))
                scope = self.home.verified_scope(asker.guild_id)
                prepared = await answerer.prepare(
                    question, history, verified_scope=scope, threshold=threshold
                )
                if prepared.refused and not refusals:
                    _log_question(asker, "skipped", prepared, _since(started))
                    await self._record_unanswered(asker, prepared)
                    return None
                stream = answerer.stream(prepared)
                if prepared.refused or engine_first:
                    # A refusal needs no generation (the gate decided), so no slot either.
                    await _consume(stream, writer)
                else:
                    async with self._slot(writer):
                        await _consume(stream, writer)
            answer = stream.result
            assert answer is not None
            metrics.observe_answer(answer)
            seconds = time.perf_counter() - started
            contents = render_answer(
                answer, seconds=seconds, votes_hint=votes, freshness=await self._freshness()
            )
            messages = await writer.finish(contents)
        except asyncio.CancelledError:
            _log_question(asker, "error", prepared, _since(started), error="shutdown")
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(writer.fail(SHUTTING_DOWN)), timeout=3)
            raise
        except QueueFull:
            # Filled up after the deferral: the public placeholder goes, only the asker is told.
            metrics.observe_error("busy")
            _log_question(asker, "error", prepared, _since(started), error="busy")
            await writer.fail_privately(BUSY)
            return None
        except RagError as exc:
            kind = type(exc).__name__
            metrics.observe_error(kind)
            log.warning("answer for %s failed: %s", asker.user_id, exc.detail, exc_info=exc)
            _log_question(asker, "error", prepared, _since(started), error=kind)
            await writer.fail(exc.user_message)
            return None
        except InteractionExpired:
            metrics.observe_error("expired")
            log.warning("the answer for %s outlived its interaction token", asker.user_id)
            _log_question(asker, "error", prepared, _since(started), error="expired")
            return None
        except Exception:
            metrics.observe_error("unexpected")
            log.exception("answer for %s failed", asker.user_id)
            _log_question(asker, "error", prepared, _since(started), error="unexpected")
            await writer.fail(GENERIC_ERROR)
            return None
        if not messages:  # held back by its writer: people answered first (step_back.py)
            _log_question(asker, "skipped", prepared, seconds)
            return None
        _log_question(
            asker,
            "refused" if answer.refused else "answered",
            prepared,
            seconds,
            answer=answer,
            extra=f"edits={writer.edits} messages={len(messages)}",
        )
        answer_id = await self._record(asker, answer, messages, seconds)
        if votes and messages:
            await self._add_vote_reactions(messages[-1])
            if answer_id is not None and self.settings.helper_role_id and asker.guild_id:
                await self._offer_helpers(messages[-1], answer_id)
        return Delivered(answer, messages, answer_id)

    async def _record(
        self, asker: Asker, answer: Answer, messages: Sequence[discord.Message], seconds: float
    ) -> int | None:
        if not messages:
            return None
        generator = self.rag.generator
        try:
            answer_id = await self.feedback.record_answer(
                message_id=messages[0].id,
                extra_message_ids=[m.id for m in messages[1:]],
                guild_id=asker.guild_id,
                channel_id=messages[0].channel.id,
                user_id=asker.user_id,
                question=answer.question,
                answer=answer.text,
                sources=[
                    SourceRecord(s.n, s.title, s.url, s.score, s.similarity) for s in answer.sources
                ],
                model=generator.model_name if generator is not None else "",
                refused=answer.refused,
                latency_ms=round(seconds * 1000),
                low_support=answer.low_support,
                # A refusal's pages are suggestions, not what an answer rests on.
                cited_hashes=() if answer.refused else [s.chunk_hash for s in answer.sources],
            )
        except Exception:
            log.exception("could not record the answer to %s", asker.user_id)
            return None
        # Reactions that came while it streamed are waiting for this (bot/cogs/feedback.py).
        self.dispatch("answer_recorded", [m.id for m in messages])
        return answer_id

    async def _record_unanswered(self, asker: Asker, prepared: Prepared) -> None:
        """A question left without a reply still counts as a coverage gap (/gaps)."""
        try:
            await self.feedback.record_unanswered(
                guild_id=asker.guild_id,
                channel_id=asker.channel_id or 0,
                user_id=asker.user_id,
                question=prepared.standalone,
            )
        except Exception:
            log.exception("could not record the unanswered question of %s", asker.user_id)

    async def _offer_helpers(self, message: discord.Message, answer_id: int) -> None:
        """The "Ask a helper" button under a public answer (bot/handoff.py)."""
        try:
            await message.edit(view=handoff_view(answer_id))
        except discord.HTTPException:
            log.warning("could not offer 'Ask a helper' on answer %s", answer_id, exc_info=True)

    async def _add_vote_reactions(self, message: discord.Message) -> None:
        settings = self.settings
        for emoji in (*settings.good_emojis[:1], *settings.flag_emojis[:1]):
            try:
                await message.add_reaction(emoji)
            except discord.HTTPException:
                # No Add Reactions permission: users can still react themselves.
                log.warning("could not add %s to answer %s", emoji, message.id, exc_info=True)
                return


def _queue_display(writer: AnswerWriter, queue: AnswerQueue) -> Callable[[int], None]:
    """Show the place in the queue: every step near the front, every fifth one further back,
    so a long queue does not turn into a storm of edits. Each move updates the depth gauge."""
    shown: list[int] = []

    def show(ahead: int) -> None:
        metrics.set_queue_depth(queue.waiting)
        if not shown or ahead < 5 or ahead % 5 == 0:
            shown.append(ahead)
            writer.status(queue_text(ahead))

    return show


def _since(started: float) -> float:
    return time.perf_counter() - started


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _log_question(
    asker: Asker,
    outcome: str,
    prepared: Prepared | None,
    total_s: float,
    *,
    answer: Answer | None = None,
    error: str | None = None,
    extra: str = "",
) -> None:
    """The one INFO line per question: outcome and timings, never the question or the answer."""
    timings = answer.timings if answer else prepared.timings if prepared else None
    prompt = answer.prompt_tokens if answer else prepared.prompt_tokens if prepared else 0
    completion = answer.completion_tokens if answer else 0
    log.info(
        "question by %s in %s: outcome=%s%s embed_ms=%s search_ms=%s first_token_ms=%s "
        "total_ms=%s prompt_tokens=%d completion_tokens=%d%s",
        asker.user_id,
        asker.guild_id or "DM",
        outcome,
        f" error={error}" if error else "",
        _ms(timings.embed_s if timings else None),
        _ms(timings.search_s if timings else None),
        _ms(timings.first_token_s if timings else None),
        _ms(total_s),
        prompt,
        completion,
        f" {extra}" if extra else "",
    )


async def _consume(stream: AnswerStream, writer: AnswerWriter) -> None:
    async for delta in stream:
        await writer.append(delta)
