"""Reactions on answers: 👍 marks one good, 👎 (or a flag emoji) flags it for moderators.

The moderators' card carries buttons (bot/cogs/review.py) to correct the answer, accept it or
dismiss the flag.

Votes are written in arrival order. When the feedback database stays locked longer than the
store's patience, a vote is kept in memory (and logged) and written before the next one, or
by a retry a little later; only a shutdown with votes still waiting loses them, and says so.

A reaction can come while the answer is still streaming, before the bot has recorded it: such
votes wait (in order, for a while) and are written when the answer path announces the answer
(the `answer_recorded` event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from .. import metrics
from ..feedback import FLAG, GOOD, AnswerRecord, FeedbackStoreClosed, VoteChange
from ..feedback.store import is_busy
from ..streaming import escape_markdown, fit, link_target, plain_links, plain_text, safe_truncate
from ..utils import NO_MENTIONS
from .review import review_view

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

CARD_COLOUR = discord.Colour.orange()
MAX_PENDING_VOTES = 1000  # votes waiting for a locked database, kept in memory
RETRY_PENDING_S = 30.0  # when no new vote comes, waiting votes are retried after this
# Reactions on bot messages that are not (yet) recorded answers: kept this long, for so many
# messages, in case the message is an answer still streaming.
EARLY_VOTE_TTL_S = 600.0
MAX_EARLY_MESSAGES = 200


@dataclass(frozen=True, slots=True)
class PendingVote:
    """A reaction to write: added (a vote) or removed (a withdrawal)."""

    added: bool
    message_id: int
    user_id: int
    vote: int

    def describe(self) -> str:
        action = "vote" if self.added else "withdrawal of vote"
        return f"{action} {self.vote:+d} by user {self.user_id} on message {self.message_id}"


def _normalise(emoji: str) -> str:
    return emoji.replace("\ufe0f", "").strip()


def review_card(record: AnswerRecord, *, flagged_by: int, flags: int) -> discord.Embed:
    """The moderators' card: question, answer, sources with scores, who asked, a link.

    Only the bot's own links are clickable: the answer's links show as text (as in the
    answer itself), the question as plain escaped text, the sources with encoded URLs.
    """
    embed = discord.Embed(
        title="🚩 Flagged answer",
        url=record.jump_url,
        description=fit(plain_links, record.answer, 2000),
        colour=CARD_COLOUR,
        timestamp=record.created_at,
    )
    question = fit(plain_text, record.question, 1024) or "(empty)"
    embed.add_field(name="Question", value=question, inline=False)
    lines = []
    for s in record.sources:
        scores = []
        if s.score is not None:
            scores.append(f"score {s.score:.3f}")
        if s.similarity is not None:
            scores.append(f"similarity {s.similarity:.2f}")
        title = escape_markdown(safe_truncate(s.title or s.url, 80))
        target = link_target(s.url)
        link = f"[{title}]({target})" if target else title
        lines.append(f"[{s.n}] {link} · {' · '.join(scores)}")
    sources = safe_truncate("\n".join(lines), 1024) if lines else "(none)"
    embed.add_field(name="Sources" if not record.refused else "Closest pages", value=sources)
    embed.add_field(name="Asked by", value=f"<@{record.user_id}>", inline=True)
    embed.add_field(name="Flagged by", value=f"<@{flagged_by}> ({flags} 👎)", inline=True)
    embed.add_field(name="Message", value=f"[Jump to the answer]({record.jump_url})", inline=True)
    footer = f"answer #{record.id}"
    if record.model:
        footer += f" · {record.model}"
    if record.refused:
        footer += " · refused (not in the docs)"
    embed.set_footer(text=safe_truncate(footer, 200))
    return embed


class Feedback(commands.Cog):
    """Turns reactions on the bot's answers into votes, and flags into review cards."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        settings = bot.settings
        self.votes = {_normalise(e): GOOD for e in settings.good_emojis}
        self.votes.update({_normalise(e): FLAG for e in settings.flag_emojis})
        self.pending: deque[PendingVote] = deque()  # in arrival order, oldest first
        self._writing = False  # one writer drains `pending` at a time, keeping the order
        self._retry: asyncio.Task[None] | None = None
        # message id -> (first reaction's time, reactions in order) for messages not yet known
        # as answers; and the last messages announced as answers (see _drain).
        self.early: OrderedDict[int, tuple[float, list[PendingVote]]] = OrderedDict()
        self.recorded: deque[int] = deque(maxlen=MAX_EARLY_MESSAGES)

    async def cog_unload(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self.pending:
            log.error(
                "shutting down with %d vote(s) not stored (feedback database locked): %s",
                len(self.pending),
                "; ".join(p.describe() for p in self.pending),
            )

    def _vote(self, payload: discord.RawReactionActionEvent) -> int | None:
        """The vote a reaction means, or None when it is not one the bot counts."""
        me = self.bot.user
        if me is None or payload.user_id == me.id or not self.bot.home.serves(payload.guild_id):
            return None  # a DM, or a server the bot does not serve
        emoji = payload.emoji
        vote = self.votes.get(_normalise(str(emoji)))
        if vote is None and emoji.name:
            vote = self.votes.get(_normalise(emoji.name))
        return vote

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        vote = self._vote(payload)
        me = self.bot.user
        if vote is None or me is None:
            return
        # Discord may leave out the message's author; the store knows the bot's answers, and
        # set_vote ignores any other message.
        if payload.message_author_id is not None and payload.message_author_id != me.id:
            return
        if payload.member is not None and payload.member.bot:
            return  # other bots don't vote
        await self._submit(PendingVote(True, payload.message_id, payload.user_id, vote))

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        # Removal events carry no message author; the store only knows the bot's answers.
        vote = self._vote(payload)
        if vote is None:
            return
        await self._submit(PendingVote(False, payload.message_id, payload.user_id, vote))

    @commands.Cog.listener()
    async def on_answer_recorded(self, message_ids: list[int]) -> None:
        """An answer was stored: write the reactions its messages got while it streamed."""
        self.recorded.extend(message_ids)
        for message_id in message_ids:
            _, items = self.early.pop(message_id, (0.0, []))
            self.pending.extend(items)  # all queued before any write: a newer vote comes after
        await self._drain()

    # -- writing votes ---------------------------------------------------------------------------

    def _park(self, item: PendingVote) -> None:
        """Keep a reaction on a message not known as an answer (it may be one still streaming)."""
        now = time.monotonic()
        while self.early:
            oldest, (since, _) = next(iter(self.early.items()))
            if now - since < EARLY_VOTE_TTL_S and len(self.early) < MAX_EARLY_MESSAGES:
                break
            del self.early[oldest]  # a reaction on some other bot message, not an answer
        since, items = self.early.setdefault(item.message_id, (now, []))
        items.append(item)

    async def _submit(self, item: PendingVote) -> None:
        if len(self.pending) >= MAX_PENDING_VOTES:
            dropped = self.pending.popleft()
            log.error(
                "too many votes waiting for the feedback database; lost %s", dropped.describe()
            )
        self.pending.append(item)
        await self._drain()

    async def _drain(self) -> None:
        """Write the waiting votes in order; stop at a locked database (they stay waiting)."""
        if self._writing:
            return  # the running writer takes this vote too, after the ones before it
        self._writing = True
        try:
            while self.pending:
                item = self.pending[0]
                if item.message_id in self.early:
                    # After an earlier reaction still waiting for its answer: keep the order.
                    self.pending.popleft()
                    self._park(item)
                    continue
                try:
                    result = await self._write(item)
                    if result is None and item.added and item.message_id in self.recorded:
                        result = await self._write(item)  # announced while this write ran
                except FeedbackStoreClosed:
                    return  # shutting down: cog_unload reports what was not stored
                except Exception as exc:
                    if is_busy(exc):
                        log.error(
                            "could not store the %s: the feedback database stayed locked for "
                            "%.0f s; kept in memory with %d waiting vote(s), retried with the "
                            "next vote or in %.0f s",
                            item.describe(),
                            self.bot.feedback.patience,
                            len(self.pending),
                            RETRY_PENDING_S,
                        )
                        self._retry_later()
                        return
                    # Anything else would fail again: drop this vote, keep the others.
                    log.exception("could not store the %s; dropped", item.describe())
                    self.pending.popleft()
                    continue
                self.pending.popleft()
                if result is None and item.added:
                    self._park(item)  # not an answer, or not yet
                    continue
                await self._after(item, result)
        finally:
            self._writing = False

    async def _write(self, item: PendingVote) -> VoteChange | bool | None:
        store = self.bot.feedback
        if item.added:
            # set_vote ignores messages that are not recorded answers (returns None).
            return await store.set_vote(item.message_id, item.user_id, item.vote)
        return await store.remove_vote(item.message_id, item.user_id, item.vote)

    def _retry_later(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_pending())

    async def _retry_pending(self) -> None:
        await asyncio.sleep(RETRY_PENDING_S)
        await self._drain()

    async def _after(self, item: PendingVote, result: VoteChange | bool | None) -> None:
        """Metrics, the log line and the review card of a stored vote."""
        if not item.added:
            if result:
                metrics.observe_vote("unflag" if item.vote == FLAG else "ungood")
                log.info(
                    "vote %+d by %s on message %d withdrawn",
                    item.vote,
                    item.user_id,
                    item.message_id,
                )
            return
        if not isinstance(result, VoteChange):
            return
        metrics.observe_vote("flag" if item.vote == FLAG else "good")
        log.info(
            "vote %+d by %s on answer %d (%d flags, %d good)",
            item.vote,
            item.user_id,
            result.answer_id,
            result.flags,
            result.good,
        )
        if result.post_review_card:
            await self._post_review_card(item.message_id, item.user_id, result)

    async def _post_review_card(self, message_id: int, flagged_by: int, change: VoteChange) -> None:
        """Post the card once per answer; on any failure give the claim back (the flag stays)."""
        store = self.bot.feedback
        channel_id = self.bot.settings.moderators_channel_id
        if not channel_id:
            await store.release_review_card(change.answer_id)
            return
        try:
            record = await store.answer_by_message(message_id)
            if record is None:
                await store.release_review_card(change.answer_id)
                return
            channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                raise TypeError(f"moderators channel {channel_id} cannot receive messages")
            if getattr(channel, "guild", None) is None or channel.guild.id != record.guild_id:
                # A card shows a member's question: only to that server's own moderators.
                log.warning(
                    "answer %d was flagged in server %s, which has no moderators channel "
                    "(MODERATORS_CHANNEL_ID is in another server): no review card",
                    change.answer_id,
                    record.guild_id,
                )
                await store.release_review_card(change.answer_id)
                return
            card = review_card(record, flagged_by=flagged_by, flags=change.flags)
            message = await channel.send(
                embed=card, view=review_view(change.answer_id), allowed_mentions=NO_MENTIONS
            )
            await store.mark_reviewed_card(change.answer_id, message.id)
        except Exception:
            log.exception("could not post the review card for answer %d", change.answer_id)
            await store.release_review_card(change.answer_id)


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Feedback(bot))
