"""Learning from helpers: people's answers become verified-answer candidates for moderators.

A candidate is proposed when
- a forum poster reacts with a solved emoji (SOLVED_EMOJIS) to a person's reply in their post,
- a watched forum post gets FORUM_SOLVED_TAG and a person's reply is its last word (newer than
  any of the bot's messages there), or
- a helper (HELPER_ROLE_ID, or an admin) reacts with a save emoji (SAVE_EMOJIS) to a person's
  message that answers something: a reply to a question, or a message in a forum post or thread.

Each message is proposed once, as a card in MODERATORS_CHANNEL_ID of its own server. Added, it
is a verified answer like a correction (kept across reindexes, searched first), cited as the
person's answer with a link to their message; their name is shown, never pinged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from rag_core.answer.answering import clean_question, is_blank

from .. import metrics
from ..candidates import (
    ANSWER_MAX,
    AddCandidateModal,
    CandidateButton,
    candidate_card,
    candidate_view,
)
from ..feedback.records import Candidate
from ..home import OTHER_GUILD, same_guild
from ..step_back import PERSON_MESSAGES
from ..streaming import fit, plain_text
from ..utils import NO_MENTIONS, send_error
from .review import update_card

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

_HISTORY = 50  # a solved post's latest messages searched for the person's answer
REVIEWED = "That candidate was already reviewed."
GONE = "That candidate is no longer in the feedback database."


def _normalise(emoji: str) -> str:
    return emoji.replace("\ufe0f", "").strip()


class Learning(commands.Cog):
    """Proposes people's answers to the moderators; adds the ones they accept."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        settings = bot.settings
        self.saves = {_normalise(e) for e in settings.save_emojis}
        self.solved = {_normalise(e) for e in settings.solved_emojis}

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CandidateButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CandidateButton)

    @property
    def learning(self) -> bool:
        settings = self.bot.settings
        return settings.learn_from_helpers and bool(settings.moderators_channel_id)

    # -- proposing ------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        try:
            await self._on_reaction(payload)
        except Exception:
            log.exception("could not consider message %s as an answer", payload.message_id)

    async def _on_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        bot, settings = self.bot, self.bot.settings
        me = bot.user
        emoji = _normalise(str(payload.emoji))
        if (
            not self.learning
            or me is None
            or emoji not in self.saves | self.solved
            or payload.guild_id is None
            or not bot.home.serves(payload.guild_id)
            or payload.message_author_id == me.id  # the bot's answers are voted on elsewhere
        ):
            return
        channel = bot.get_channel(payload.channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            return
        if emoji in self.saves and self._is_helper(payload.member):
            reason = "saved"
        elif (
            emoji in self.solved
            and isinstance(channel, discord.Thread)
            and channel.parent_id in settings.forum_channel_ids
            and payload.user_id == channel.owner_id  # only the poster says what solved it
        ):
            reason = "solved"
        else:
            return
        try:
            message = await channel.fetch_message(payload.message_id)
        except discord.HTTPException:
            log.info("message %s is gone or out of sight: not proposed", payload.message_id)
            return
        if reason == "solved" and (
            message.id == channel.id or message.author.id == payload.user_id
        ):
            return  # the post itself, or the poster's own words
        await self.propose(message, reason, payload.user_id)

    @commands.Cog.listener()
    async def on_thread_update(self, before: discord.Thread, after: discord.Thread) -> None:
        try:
            await self._on_solved_tag(before, after)
        except Exception:
            log.exception("could not look for the answer that solved post %s", after.id)

    async def _on_solved_tag(self, before: discord.Thread, after: discord.Thread) -> None:
        """FORUM_SOLVED_TAG newly on a watched post: the last person's reply, if it is the
        post's last word (the bot's own answer, when newer, is what solved it)."""
        settings = self.bot.settings
        name = settings.forum_solved_tag.casefold()
        me = self.bot.user
        if (
            not self.learning
            or me is None
            or not name
            or after.parent_id not in settings.forum_channel_ids
            or not self.bot.home.serves(after.guild.id)
        ):
            return
        tagged = {t.name.casefold() for t in after.applied_tags}
        if name not in tagged or name in {t.name.casefold() for t in before.applied_tags}:
            return
        async for message in after.history(limit=_HISTORY):
            if message.author.id == me.id:
                return
            if (
                message.type in PERSON_MESSAGES
                and not message.author.bot
                and message.author.id != after.owner_id
                and message.id != after.id
            ):
                await self.propose(message, "solved", after.owner_id or 0)
                return

    def _is_helper(self, member: discord.Member | None) -> bool:
        """A member with HELPER_ROLE_ID, Manage Server or an admin role (DISCORD_ADMIN_ROLE_IDS)."""
        if member is None:
            return False
        settings = self.bot.settings
        roles = {r.id for r in member.roles}
        helper = settings.helper_role_id
        admin = roles & set(settings.discord_admin_role_ids)
        return bool((helper and helper in roles) or admin or member.guild_permissions.manage_guild)

    async def propose(self, message: discord.Message, reason: str, by: int) -> Candidate | None:
        """Post a candidate card for `message` (once per message); None when it is not one."""
        bot = self.bot
        if (
            message.guild is None
            or message.author.bot
            or message.webhook_id is not None
            or message.type not in PERSON_MESSAGES
        ):
            return None
        answer = clean_question(message.content)
        if is_blank(answer):
            # Without the Message Content intent only mentions of the bot carry text.
            log.info("message %s has no text the bot can read: not proposed", message.id)
            return None
        question = await self._question_of(message)
        if question is None or is_blank(question):
            log.info("message %s answers no question the bot can tell: not proposed", message.id)
            return None
        channel = await self._moderators(message.guild.id)
        if channel is None:
            return None
        candidate = await bot.feedback.propose_candidate(
            message_id=message.id,
            guild_id=message.guild.id,
            channel_id=message.channel.id,
            author_id=message.author.id,
            author_name=message.author.display_name,
            question=question,
            answer=answer[:ANSWER_MAX],
            reason=reason,
            proposed_by=by,
        )
        if candidate is None:
            return None  # proposed before
        try:
            card = await channel.send(
                embed=candidate_card(candidate),
                view=candidate_view(candidate.id),
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException:
            bot.answers.missing_permission(channel, "Send Messages (candidate cards)")
            await bot.feedback.set_candidate_card(candidate.id, None)
            return None
        await bot.feedback.set_candidate_card(candidate.id, card.id)
        metrics.observe_candidate(reason)
        log.info("message %s proposed as candidate #%d (%s)", message.id, candidate.id, reason)
        return candidate

    async def _question_of(self, message: discord.Message) -> str | None:
        """What `message` answers: the message it replies to; else its forum post (title and
        first message) or the bot's thread (its first question); else None."""
        bot = self.bot
        channel = message.channel
        ref = message.reference
        if ref is not None and ref.message_id is not None and ref.message_id != channel.id:
            record = await bot.feedback.answer_by_message(ref.message_id)
            if record is not None:
                return record.question  # a reply to the bot's answer: its question
            replied = ref.resolved
            if not isinstance(replied, discord.Message):
                try:
                    replied = await channel.fetch_message(ref.message_id)
                except discord.HTTPException:
                    replied = None
            if replied is not None and not replied.author.bot and replied.content.strip():
                return clean_question(replied.content)
        if not isinstance(channel, discord.Thread):
            return None
        if isinstance(channel.parent, discord.ForumChannel):
            try:
                starter = await channel.fetch_message(channel.id)
            except discord.HTTPException:
                starter = None
            text = starter.content if starter is not None else ""
            return clean_question(f"{channel.name}\n{text}")
        conversation = await bot.feedback.conversation(thread_id=channel.id)
        if conversation is not None and conversation.turns:
            return conversation.turns[0].question
        return None

    async def _moderators(self, guild_id: int) -> discord.abc.Messageable | None:
        """MODERATORS_CHANNEL_ID, if it is in `guild_id`: a member's words go only to their own
        server's moderators."""
        channel_id = self.bot.settings.moderators_channel_id
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except discord.HTTPException:
                log.warning("the moderators channel %s cannot be reached", channel_id)
                return None
        if not isinstance(channel, discord.abc.Messageable) or not same_guild(
            getattr(getattr(channel, "guild", None), "id", None), guild_id
        ):
            log.info("no moderators channel in server %s: no candidate card", guild_id)
            return None
        return channel

    # -- the card's buttons ---------------------------------------------------------------------

    async def on_button(
        self, action: str, candidate_id: int, interaction: discord.Interaction[RagBot]
    ) -> None:
        store = self.bot.feedback
        candidate = await store.candidate(candidate_id)
        if candidate is None:
            await send_error(interaction, GONE)
            return
        if not same_guild(candidate.guild_id, interaction.guild_id):
            await send_error(interaction, OTHER_GUILD)
            return
        if candidate.status is not None:
            await send_error(interaction, REVIEWED)
            return
        if action == "add":
            await interaction.response.send_modal(
                AddCandidateModal(self, candidate, interaction.user.id)
            )
            return
        if not await store.settle_candidate(candidate_id, "dismissed", interaction.user.id):
            await send_error(interaction, REVIEWED)
            return
        log.info("candidate #%d dismissed by %s", candidate_id, interaction.user.id)
        await update_card(
            interaction, f"Dismissed · <@{interaction.user.id}>", discord.Colour.light_grey(), None
        )

    async def on_add(self, modal: AddCandidateModal, interaction: discord.Interaction[Any]) -> None:
        candidate = modal.candidate
        question = " ".join(modal.question.value.split()) or candidate.question
        answer = modal.answer.value.strip()
        if not answer:
            await send_error(interaction, "The answer was empty: nothing was added.")
            return
        store = self.bot.feedback
        by = interaction.user.id
        if not await store.settle_candidate(candidate.id, "added", by):
            await send_error(interaction, REVIEWED)
            return
        review: Any = self.bot.get_cog("Review")
        # Indexing can wait on a reindex's publish step: acknowledge first, edit the card after.
        await interaction.response.defer()
        try:
            verified = await review.add_verified(
                question=question,
                answer=answer,
                link=candidate.jump_url,
                by=by,
                guild_id=candidate.guild_id,
                answered_by=candidate.author_name,
            )
        except BaseException:
            await store.finish_candidate(candidate.id, None)
            raise
        await store.finish_candidate(candidate.id, verified.id)
        log.info("candidate #%d added as verified answer %d by %s", candidate.id, verified.id, by)
        text = (
            f"✅ Added · <@{by}> · verified answer #{verified.id}, cited as "
            f"{fit(plain_text, candidate.author_name, 80)}'s answer"
        )
        await update_card(interaction, text, discord.Colour.green(), None)


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Learning(bot))
