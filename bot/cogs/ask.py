"""/ask: acknowledge at once, stream the answer into place, finish with numbered sources."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from rag_core.answering import (
    REFUSAL,
    Answer,
    AnswerStream,
    EmptyQuestionError,
    Prepared,
    Source,
    clean_question,
    is_blank,
)
from rag_core.errors import RagError

from .. import metrics
from ..checks import ask_cooldown
from ..feedback import SourceRecord
from ..streaming import (
    MESSAGE_LIMIT,
    ThrottledEditor,
    plain_links,
    render_sources,
    split_message,
)
from ..utils import GENERIC_ERROR, NO_MENTIONS, AnswerQueue, QueueFull, queue_text

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

LIVE_MARKER = " ▌"  # shown at the end of a message while the answer is still streaming
PART_LIMIT = MESSAGE_LIMIT - len(LIVE_MARKER)  # same cuts while streaming and at the end
SEARCHING = "🔎 Searching the docs…"
NOTHING_FOUND = "I couldn't find anything about this in the documentation."
EMPTY_ANSWER = "The model returned an empty answer. Please ask again, maybe in other words."
LOW_SUPPORT = "-# ⚠️ Parts of this answer are not backed by the docs: check the sources below."
NOT_BACKED = "-# ⚠️ This answer is not backed by the docs: no passage below supports it."
BUSY = "Too many questions are waiting right now. Please ask again in a minute."
SHUTTING_DOWN = "The bot is restarting and stopped this answer. Please ask again in a minute."
MIN_SOURCES_ROOM = 300  # below this, the sources get a message of their own
OPTION_MAX_LENGTH = 6000  # Discord's ceiling for a string option's max_length


class InteractionExpired(Exception):
    """The interaction token is about to expire and the answer cannot move to the channel."""


@dataclass
class _Part:
    """One Discord message of an answer: what it shows, and whether it lives in the channel."""

    message: discord.Message | None  # None: the interaction's original response, not yet edited
    shown: str = ""
    in_channel: bool = False  # posted with channel.send after the interaction token expired


class AnswerWriter:
    """Shows an answer as it streams: throttled edits in place, follow-ups past 2000 characters,
    and a plain channel message once the interaction token is close to expiring."""

    def __init__(
        self,
        interaction: discord.Interaction[RagBot],
        *,
        private: bool,
        interval: float,
        edit_limit_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interaction = interaction
        self.private = private
        self.interval = interval
        self.clock = clock
        self.expires_at = clock() + edit_limit_s
        self.parts: list[_Part] = [_Part(None)]
        self.editor = ThrottledEditor(self._edit_live, interval=interval)
        self.text = ""
        self.edits = 0

    # -- while streaming -----------------------------------------------------------------------

    def status(self, line: str) -> None:
        """A one-line status (searching, place in the queue) until the answer starts."""
        if not self.text:
            self.editor.update(line)

    async def append(self, delta: str) -> None:
        self.text += delta
        # Rendered exactly as the final answer will be, links made plain text included.
        parts = split_message(plain_links(self.text), PART_LIMIT)
        if not parts:
            return
        while len(parts) > len(self.parts):
            await self._roll_over(parts)
        self.editor.update(parts[-1] + LIVE_MARKER)

    async def _roll_over(self, parts: Sequence[str]) -> None:
        """The live message is full: settle it, and continue in a new follow-up."""
        live = len(self.parts) - 1
        try:
            await self.editor.finish(parts[live])
        except discord.HTTPException:
            log.warning("final edit of part %d failed; retried at the end", live, exc_info=True)
        self.parts.append(await self._send_new(parts[live + 1] + LIVE_MARKER))
        self.editor = ThrottledEditor(self._edit_live, interval=self.interval)

    # -- the end ----------------------------------------------------------------------------------

    async def finish(self, contents: Sequence[str]) -> list[discord.Message]:
        """Make the messages show exactly `contents` (one per message); the messages."""
        live = len(self.parts) - 1
        for i, content in enumerate(contents):
            if i < live:
                part = self.parts[i]
                # An expired webhook message can no longer change; reposting it would reorder.
                if part.shown != content and (part.in_channel or not self.expired()):
                    await self._edit(i, content)
            elif i == live:
                try:
                    await self.editor.finish(content)
                except discord.HTTPException:
                    # The guaranteed final edit: once more after discord.py's own retries.
                    log.warning("final edit failed; trying once more", exc_info=True)
                    await asyncio.sleep(self.interval)
                    await self._edit(i, content)
            else:
                self.parts.append(await self._send_new(content))
        if len(contents) <= live:
            await self.editor.aclose()  # the live message itself is a leftover
        for extra in self.parts[len(contents) :]:
            await self._delete(extra)  # the final split came out shorter than the live one
        del self.parts[len(contents) :]
        return [p.message for p in self.parts if p.message is not None]

    async def fail(self, message: str) -> None:
        """Replace whatever was shown by `message`: a clear end instead of a half answer."""
        await self.editor.aclose()
        try:
            await self._edit(0, f"⚠️ {message}")
        except Exception:
            log.warning("could not show the error to the user", exc_info=True)
            return
        for extra in self.parts[1:]:
            await self._delete(extra)
        del self.parts[1:]

    async def fail_privately(self, message: str) -> None:
        """Like fail(), but only the asker sees `message`.

        A public response cannot turn ephemeral: delete it, then send `message` as an
        ephemeral follow-up (the token outlives the response, and with the placeholder gone
        the follow-up is a message of its own instead of filling the public placeholder).
        """
        if self.private or self.expired():
            await self.fail(message)
            return
        await self.editor.aclose()
        try:
            await self.interaction.delete_original_response()
        except discord.HTTPException:
            log.warning("could not delete the answer's placeholder", exc_info=True)
            await self.fail(message)
            return
        self.parts[0] = _Part(None)
        for extra in self.parts[1:]:
            await self._delete(extra)
        del self.parts[1:]
        try:
            await self.interaction.followup.send(
                f"⚠️ {message}", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException:
            log.warning("could not show the error to the user", exc_info=True)

    # -- Discord calls -------------------------------------------------------------------------

    def expired(self) -> bool:
        return self.clock() >= self.expires_at

    async def _edit_live(self, text: str) -> None:
        await self._edit(len(self.parts) - 1, text)

    async def _edit(self, i: int, text: str) -> None:
        part = self.parts[i]
        if part.in_channel and part.message is not None:
            part.message = await part.message.edit(content=text, allowed_mentions=NO_MENTIONS)
        elif self.expired():
            # The webhook token dies at 15 minutes: this part moves to a channel message.
            self.parts[i] = await self._channel_send(text)
        elif part.message is None or i == 0:
            # discord.py merges the bot's default allowed mentions here, but be explicit.
            part.message = await self.interaction.edit_original_response(
                content=text, allowed_mentions=NO_MENTIONS
            )
        else:
            part.message = await part.message.edit(content=text, allowed_mentions=NO_MENTIONS)
        self.parts[i].shown = text
        self.edits += 1

    async def _send_new(self, text: str) -> _Part:
        if self.expired():
            return await self._channel_send(text)
        message = await self.interaction.followup.send(
            text, wait=True, ephemeral=self.private, allowed_mentions=NO_MENTIONS
        )
        return _Part(message, text)

    async def _channel_send(self, text: str) -> _Part:
        channel = self.interaction.channel
        if self.private or not isinstance(channel, discord.abc.Messageable):
            raise InteractionExpired("the interaction token expired before the answer was done")
        message = await channel.send(text, allowed_mentions=NO_MENTIONS)
        return _Part(message, text, in_channel=True)

    async def _delete(self, part: _Part) -> None:
        if part.message is None:
            return
        try:
            await part.message.delete()
        except discord.HTTPException:
            log.warning("could not delete a leftover answer message", exc_info=True)


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
        body, header = (REFUSAL, "") if items else (NOTHING_FOUND, "")
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
        parts[-1] = parts[-1].replace(REFUSAL + "\n\n", REFUSAL + "\n", 1)
    return parts


# -- the cog -------------------------------------------------------------------------------------


class Ask(commands.Cog):
    """Answers questions from the docs."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        settings = bot.settings
        self.queue = AnswerQueue(settings.max_concurrent_answers, settings.max_queued_answers)
        self.answering: set[asyncio.Task[object]] = set()
        # The command is built at import time; the length limit is a setting, so it goes into
        # this cog's own copy of the command (the schema sent on sync), and Discord refuses
        # longer questions in the client instead of the bot refusing them after sending.
        params = self.ask._params
        params["question"] = dataclasses.replace(
            params["question"],
            max_value=min(settings.max_question_chars, OPTION_MAX_LENGTH),
        )

    async def cog_unload(self) -> None:
        # Shutdown: stop answers in flight (aborting their generation) while HTTP still works,
        # so each user sees a clear message instead of a message stuck half-way.
        tasks = [t for t in self.answering if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _freshness(self) -> str:
        """The footer's "docs indexed … ago"; nothing when the store cannot say."""
        try:
            since = await asyncio.to_thread(self.bot.rag.store.live_since)
        except Exception:
            log.debug("no index age for the footer", exc_info=True)
            return ""
        return indexed_ago(since, time.time())

    @app_commands.command(name="ask", description="Ask a question about the documentation")
    @app_commands.describe(
        question="Your question, in a sentence or two",
        private="Only you see the answer (default: everyone in the channel)",
    )
    @app_commands.checks.dynamic_cooldown(ask_cooldown)
    async def ask(
        self, interaction: discord.Interaction[RagBot], question: str, private: bool = False
    ) -> None:
        t0 = time.perf_counter()
        settings = self.bot.settings
        # Control characters never reach the store or the model; invisible-only is empty.
        question = clean_question(question)
        # Cheap checks answered ephemerally at once; nothing slow may run before the defer.
        if is_blank(question):
            await self._refuse(interaction, EmptyQuestionError.user_message)
            return
        if len(question) > settings.max_question_chars:
            await self._refuse(
                interaction,
                f"That question is too long: please keep it under "
                f"{settings.max_question_chars} characters.",
            )
            return
        if self.queue.full():
            metrics.observe_error("busy")
            _log_question(interaction, "error", None, time.perf_counter() - t0, error="busy")
            await self._refuse(interaction, BUSY)
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        metrics.observe_ack(time.perf_counter() - t0)

        task = asyncio.current_task()
        if task is not None:
            self.answering.add(task)
        try:
            await self._answer(interaction, question, private)
        finally:
            if task is not None:
                self.answering.discard(task)

    async def _refuse(self, interaction: discord.Interaction[RagBot], message: str) -> None:
        await interaction.response.send_message(
            message, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    async def _answer(
        self, interaction: discord.Interaction[RagBot], question: str, private: bool
    ) -> None:
        settings = self.bot.settings
        started = time.perf_counter()
        log.debug("/ask by %s: %r", interaction.user.id, question)
        prepared: Prepared | None = None
        writer = AnswerWriter(
            interaction,
            private=private,
            interval=settings.edit_interval_s,
            edit_limit_s=settings.interaction_edit_limit_s,
        )
        try:
            writer.status(SEARCHING)
            answerer = self.bot.rag.require_answerer()
            prepared = await answerer.prepare(question)
            stream = answerer.stream(prepared)
            if prepared.refused:
                # No generation: the gate decided, so no slot in the queue is needed.
                await _consume(stream, writer)
            else:
                try:
                    async with self.queue.slot(_queue_display(writer, self.queue)):
                        await _consume(stream, writer)
                finally:  # released, or gave up waiting: one fewer either way
                    metrics.set_queue_depth(self.queue.waiting)
            answer = stream.result
            assert answer is not None
            metrics.observe_answer(answer)
            seconds = time.perf_counter() - started
            contents = render_answer(
                answer, seconds=seconds, votes_hint=not private, freshness=await self._freshness()
            )
            messages = await writer.finish(contents)
        except asyncio.CancelledError:
            _log_question(interaction, "error", prepared, _since(started), error="shutdown")
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(writer.fail(SHUTTING_DOWN)), timeout=3)
            raise
        except QueueFull:
            # Filled up after the deferral: the public placeholder goes, only the asker is told.
            metrics.observe_error("busy")
            _log_question(interaction, "error", prepared, _since(started), error="busy")
            await writer.fail_privately(BUSY)
            return
        except RagError as exc:
            kind = type(exc).__name__
            metrics.observe_error(kind)
            log.warning("/ask failed for %s: %s", interaction.user.id, exc.detail, exc_info=exc)
            _log_question(interaction, "error", prepared, _since(started), error=kind)
            await writer.fail(exc.user_message)
            return
        except InteractionExpired:
            metrics.observe_error("expired")
            log.warning("/ask by %s outlived its interaction token", interaction.user.id)
            _log_question(interaction, "error", prepared, _since(started), error="expired")
            return
        except Exception:
            metrics.observe_error("unexpected")
            log.exception("/ask failed for %s", interaction.user.id)
            _log_question(interaction, "error", prepared, _since(started), error="unexpected")
            await writer.fail(GENERIC_ERROR)
            return
        _log_question(
            interaction,
            "refused" if answer.refused else "answered",
            prepared,
            seconds,
            answer=answer,
            extra=f"edits={writer.edits} messages={len(messages)}",
        )
        await self._record(interaction, answer, messages, seconds)
        if not private and messages:
            await self._add_vote_reactions(messages[-1])

    async def _record(
        self,
        interaction: discord.Interaction[RagBot],
        answer: Answer,
        messages: Sequence[discord.Message],
        seconds: float,
    ) -> None:
        if not messages:
            return
        generator = self.bot.rag.generator
        try:
            await self.bot.feedback.record_answer(
                message_id=messages[0].id,
                extra_message_ids=[m.id for m in messages[1:]],
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or messages[0].channel.id,
                user_id=interaction.user.id,
                question=answer.question,
                answer=answer.text,
                sources=[
                    SourceRecord(s.n, s.title, s.url, s.score, s.similarity) for s in answer.sources
                ],
                model=generator.model_name if generator is not None else "",
                refused=answer.refused,
                latency_ms=round(seconds * 1000),
                low_support=answer.low_support,
            )
        except Exception:
            log.exception("could not record the answer to %s", interaction.user.id)

    async def _add_vote_reactions(self, message: discord.Message) -> None:
        settings = self.bot.settings
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
    interaction: discord.Interaction[RagBot],
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
        interaction.user.id,
        interaction.guild_id or "DM",
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


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Ask(bot))
