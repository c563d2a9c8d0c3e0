"""Helpers in the loop: an "Ask a helper" press (bot/handoff.py) becomes one ping of the helper
role, beside the answer or in a new post of the hand-off forum (HANDOFF_FORUM_ID), within limits
per member and per thread, recorded and counted."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from .. import metrics
from ..feedback import AnswerRecord
from ..handoff import HandoffButton, handoff_view, ping_text, post_text, post_title, role_ping
from ..home import OTHER_GUILD, same_guild
from ..reminders import run_reminders
from ..utils import NO_MENTIONS, send_error

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

ASKED = "I've asked the helpers: someone will reply here."
ASKED_IN = "I've asked the helpers in <#{post}>: someone will reply there."
NOT_YOURS = "Only the person who asked can ask a helper for this answer."
UNKNOWN = "I can't find that answer any more."
NO_ROLE = "No helper role is set up in this server."
ASKED_BEFORE = "The helpers were already asked about this answer."
TOO_MANY = "You asked for helpers several times recently: please wait a while before the next."
PINGED_HERE = "The helpers were pinged here recently: they will see this conversation."
UNREACHABLE = "I couldn't reach the helpers here (a permission is missing): ask them directly."


class Helpers(commands.Cog):
    """Hands questions to the community's helpers when the asker presses the button."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        self._unusable: set[int] = set()  # hand-off forums already reported as unusable
        self._reminders: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(HandoffButton)
        settings = self.bot.settings
        if self.bot.serving and settings.forum_remind_after_s:
            self._reminders = asyncio.create_task(run_reminders(self.bot), name="reminders")

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(HandoffButton)
        if self._reminders is not None:
            self._reminders.cancel()

    async def hand_off(self, answer_id: int, interaction: discord.Interaction[RagBot]) -> None:
        bot = self.bot
        settings = bot.settings
        role_id = settings.helper_role_id
        if not bot.home.serves(interaction.guild_id):
            await send_error(interaction, OTHER_GUILD)
            return
        record = await bot.feedback.answer_by_id(answer_id)
        if record is None or not same_guild(record.guild_id, interaction.guild_id):
            await send_error(interaction, UNKNOWN)
            return
        if interaction.user.id != record.user_id:
            await send_error(interaction, NOT_YOURS)
            return
        channel = interaction.channel
        if not role_id or channel is None or not isinstance(channel, discord.abc.Messageable):
            await send_error(interaction, NO_ROLE)
            return
        # An answer with a thread of its own: the helpers are pinged there, beside the talk.
        thread = await self._thread_of(record)
        if thread is not None:
            channel = thread
        claim = await bot.feedback.claim_handoff(
            answer_id=answer_id,
            guild_id=interaction.guild_id,
            channel_id=channel.id,
            user_id=interaction.user.id,
            window_s=settings.handoff_window_s,
            per_user=settings.handoff_per_user,
            per_channel=settings.handoff_per_thread,
        )
        if claim != "ok":
            refusals = {"done": ASKED_BEFORE, "user": TOO_MANY, "channel": PINGED_HERE}
            await send_error(interaction, refusals[claim])
            return
        # The button goes grey first (the interaction's answer), then the one ping.
        await interaction.response.edit_message(view=handoff_view(answer_id, asked=True))
        forum = self._forum(interaction.guild_id)
        where = forum if forum is not None else channel
        try:
            if forum is not None:  # a new post in the hand-off forum
                post = await forum.create_thread(
                    name=post_title(record.question),
                    content=post_text(role_id, interaction.user.display_name, record),
                    allowed_mentions=role_ping(role_id),
                )
                ping = post.message
            else:
                ping = await self._reply(interaction, channel, role_id, record)
        except discord.HTTPException:
            what = "Create Posts" if forum is not None else "Send Messages"
            bot.answers.missing_permission(where, f"{what} (the helpers' ping)")
            await bot.feedback.finish_handoff(answer_id, None)
            try:
                await interaction.edit_original_response(view=handoff_view(answer_id))
            except discord.HTTPException:
                log.warning("could not offer the button again on answer %s", answer_id)
            await send_error(interaction, UNREACHABLE)
            return
        await bot.feedback.finish_handoff(answer_id, ping.id)
        metrics.observe_handoff()
        log.info("answer %s handed to the helpers by %s", answer_id, interaction.user.id)
        told = ASKED if forum is None else ASKED_IN.format(post=ping.channel.id)
        await interaction.followup.send(told, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def _reply(
        self,
        interaction: discord.Interaction[RagBot],
        channel: discord.abc.Messageable,
        role_id: int,
        record: AnswerRecord,
    ) -> discord.Message:
        """The ping beside the answer, as a reply to it."""
        if isinstance(channel, discord.Thread) and channel.id == record.message_id:
            # The answer's own thread: a link to the answer instead of a reply across channels.
            text = ping_text(
                role_id, interaction.user.display_name, record.question, record.jump_url
            )
            return await channel.send(text, allowed_mentions=role_ping(role_id))
        text = ping_text(role_id, interaction.user.display_name, record.question, None)
        if interaction.message is None:
            return await channel.send(text, allowed_mentions=role_ping(role_id))
        return await channel.send(
            text,
            allowed_mentions=role_ping(role_id),
            reference=interaction.message,
            mention_author=False,
        )

    async def _thread_of(self, record: AnswerRecord) -> discord.Thread | None:
        """The thread the bot started under answer `record`, if it still sees it."""
        conversation = await self.bot.feedback.conversation(message_id=record.message_id)
        if conversation is None or conversation.thread_id != record.message_id:
            return None
        thread = self.bot.get_channel(conversation.thread_id)
        return thread if isinstance(thread, discord.Thread) else None

    def _forum(self, guild_id: int | None) -> discord.ForumChannel | None:
        """HANDOFF_FORUM_ID when it is a forum of the answer's server; else None (said once)."""
        forum_id = self.bot.settings.handoff_forum_id
        if not forum_id:
            return None
        forum = self.bot.get_channel(forum_id)
        if isinstance(forum, discord.ForumChannel) and forum.guild.id == guild_id:
            return forum
        if forum_id not in self._unusable:
            self._unusable.add(forum_id)
            log.warning(
                "HANDOFF_FORUM_ID %s is not a forum of server %s: the helpers are pinged beside "
                "the answer instead",
                forum_id,
                guild_id,
            )
        return None


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Helpers(bot))
