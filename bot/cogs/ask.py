"""/ask: acknowledge at once, stream the answer into place, finish with numbered sources."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from rag_core.answer.answering import clean_question

from .. import metrics
from ..answer_path import Asker
from ..checks import ask_cooldown
from ..utils import NO_MENTIONS
from ..writers import InteractionWriter

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

OPTION_MAX_LENGTH = 6000  # Discord's ceiling for a string option's max_length


class Ask(commands.Cog):
    """Answers questions from the docs."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        settings = bot.settings
        # The command is built at import time; the length limit is a setting, so it goes into
        # this cog's own copy of the command (the schema sent on sync), and Discord refuses
        # longer questions in the client instead of the bot refusing them after sending.
        params = self.ask._params
        params["question"] = dataclasses.replace(
            params["question"],
            max_value=min(settings.max_question_chars, OPTION_MAX_LENGTH),
        )

    @app_commands.command(name="ask", description="Ask a question about the documentation")
    @app_commands.describe(
        question="Your question, in a sentence or two",
        private="Only you see the answer (default: everyone in the channel)",
    )
    @ask_cooldown()
    async def ask(
        self, interaction: discord.Interaction[RagBot], question: str, private: bool = False
    ) -> None:
        t0 = time.perf_counter()
        settings = self.bot.settings
        path = self.bot.answers
        asker = Asker.of_interaction(interaction)
        # Control characters never reach the store or the model; invisible-only is empty.
        question = clean_question(question)
        # Cheap checks answered ephemerally at once; nothing slow may run before the defer.
        refusal = path.refusal(question, asker)
        if refusal is not None:
            await interaction.response.send_message(
                refusal, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        metrics.observe_ack(time.perf_counter() - t0)
        writer = InteractionWriter(
            interaction,
            private=private,
            interval=settings.edit_interval_s,
            edit_limit_s=settings.interaction_edit_limit_s,
        )
        delivered = await path.deliver(question, writer, asker, votes=not private)
        if delivered is None or private or not delivered.messages:
            return
        # A public answer starts a conversation: replies to it, and messages in its thread
        # (when follow-ups are on), continue it.
        thread = None
        if self.threads_here(interaction):
            granted = interaction.app_permissions
            if granted.create_public_threads and granted.send_messages_in_threads:
                thread = await path.open_thread(delivered.messages[0], question)
            else:  # said once per channel; the answer stays a plain reply target
                path.missing_permission(interaction.channel, "Create Public Threads")
        await path.remember(delivered, None, thread)

    def threads_here(self, interaction: discord.Interaction[RagBot]) -> bool:
        """Whether an answer here gets a thread: a server text channel, with follow-ups on."""
        settings = self.bot.settings
        return (
            settings.ask_threads
            and settings.discord_message_content
            and isinstance(interaction.channel, discord.TextChannel)
        )


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Ask(bot))
