"""Reactions on answers: 👍 marks one good, 👎 (or a flag emoji) flags it for moderators."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from .. import metrics
from ..feedback import FLAG, GOOD, AnswerRecord, VoteChange
from ..streaming import escape_markdown, safe_truncate
from ..utils import NO_MENTIONS

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

CARD_COLOUR = discord.Colour.orange()


def _normalise(emoji: str) -> str:
    return emoji.replace("\ufe0f", "").strip()


def review_card(record: AnswerRecord, *, flagged_by: int, flags: int) -> discord.Embed:
    """The moderators' card: question, answer, sources with scores, who asked, a link."""
    embed = discord.Embed(
        title="🚩 Flagged answer",
        url=record.jump_url,
        description=safe_truncate(record.answer, 2000),
        colour=CARD_COLOUR,
        timestamp=record.created_at,
    )
    embed.add_field(name="Question", value=safe_truncate(record.question, 1024), inline=False)
    lines = []
    for s in record.sources:
        scores = []
        if s.score is not None:
            scores.append(f"score {s.score:.3f}")
        if s.similarity is not None:
            scores.append(f"similarity {s.similarity:.2f}")
        title = escape_markdown(safe_truncate(s.title or s.url, 80))
        link = f"[{title}]({s.url})" if s.url.startswith(("http://", "https://")) else title
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

    def _vote(self, payload: discord.RawReactionActionEvent) -> int | None:
        """The vote a reaction means, or None when it is not one the bot counts."""
        me = self.bot.user
        if me is None or payload.user_id == me.id or payload.guild_id is None:
            return None
        emoji = payload.emoji
        vote = self.votes.get(_normalise(str(emoji)))
        if vote is None and emoji.name:
            vote = self.votes.get(_normalise(emoji.name))
        return vote

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        vote = self._vote(payload)
        me = self.bot.user
        if vote is None or me is None or payload.message_author_id != me.id:
            return
        if payload.member is not None and payload.member.bot:
            return  # other bots don't vote
        # set_vote ignores messages that are not recorded answers (returns None).
        change = await self.bot.feedback.set_vote(payload.message_id, payload.user_id, vote)
        if change is None:
            return
        metrics.observe_vote("flag" if vote == FLAG else "good")
        log.info(
            "vote %+d by %s on answer %d (%d flags, %d good)",
            vote,
            payload.user_id,
            change.answer_id,
            change.flags,
            change.good,
        )
        if change.post_review_card:
            await self._post_review_card(payload, change)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        # Removal events carry no message author; the store only knows the bot's answers.
        vote = self._vote(payload)
        if vote is None:
            return
        if await self.bot.feedback.remove_vote(payload.message_id, payload.user_id, vote):
            metrics.observe_vote("unflag" if vote == FLAG else "ungood")
            log.info(
                "vote %+d by %s on message %d withdrawn", vote, payload.user_id, payload.message_id
            )

    async def _post_review_card(
        self, payload: discord.RawReactionActionEvent, change: VoteChange
    ) -> None:
        """Post the card once per answer; on any failure give the claim back (the flag stays)."""
        store = self.bot.feedback
        channel_id = self.bot.settings.moderators_channel_id
        if not channel_id:
            await store.release_review_card(change.answer_id)
            return
        try:
            record = await store.answer_by_message(payload.message_id)
            if record is None:
                await store.release_review_card(change.answer_id)
                return
            channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                raise TypeError(f"moderators channel {channel_id} cannot receive messages")
            card = review_card(record, flagged_by=payload.user_id, flags=change.flags)
            message = await channel.send(embed=card, allowed_mentions=NO_MENTIONS)
            await store.mark_reviewed_card(change.answer_id, message.id)
        except Exception:
            log.exception("could not post the review card for answer %d", change.answer_id)
            await store.release_review_card(change.answer_id)


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Feedback(bot))
