"""RagBot: the discord.py bot that owns the Discord side; rag_core is opened by its caller."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from rag_core.config import Settings
from rag_core.errors import RagError
from rag_core.runtime import Rag

from . import metrics
from .answer_path import AnswerPath
from .cogs import EXTENSIONS
from .doctor import message_content_notice
from .feedback import FeedbackStore
from .home import Home
from .utils import GENERIC_ERROR, NO_MENTIONS, send_error

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def bot_intents(settings: Settings) -> discord.Intents:
    """Guilds (channels, roles, threads), reactions and messages (mentions, replies); message
    text beyond mentions only when DISCORD_MESSAGE_CONTENT asks for the privileged intent.
    Slash commands need none of it."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_reactions = True
    intents.guild_messages = True
    intents.message_content = settings.discord_message_content
    return intents


class RagTree(app_commands.CommandTree["RagBot"]):
    """Commands run only in home servers (and DMs); every command error ends in a user-safe
    message, unexpected ones are logged in full."""

    async def interaction_check(self, interaction: discord.Interaction[RagBot], /) -> bool:
        home = interaction.client.home
        guild_id = interaction.guild_id
        if guild_id is None or home.serves(guild_id):
            return True
        home.ignored(guild_id, "a command")
        if interaction.type is discord.InteractionType.application_command:
            await send_error(interaction, home.notice(guild_id))
        return False

    async def on_error(
        self, interaction: discord.Interaction[RagBot], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        name = interaction.command.qualified_name if interaction.command else "?"
        if isinstance(error, app_commands.CommandOnCooldown):
            message = f"Please wait {error.retry_after:.0f} s before asking again."
        elif isinstance(error, app_commands.NoPrivateMessage):
            message = "This command only works in a server."
        elif isinstance(error, app_commands.CheckFailure):
            message = str(error) or "You are not allowed to use this command."
        elif isinstance(original, RagError):
            log.warning("/%s failed: %s", name, original.detail, exc_info=original)
            message = original.user_message
        else:
            log.error("/%s failed", name, exc_info=original)
            message = GENERIC_ERROR
        await send_error(interaction, message)


class RagBot(commands.Bot):
    """The bot: slash commands and reactions over an opened `Rag` and a `FeedbackStore`."""

    def __init__(
        self,
        settings: Settings,
        rag: Rag | None,
        feedback: FeedbackStore | None,
        *,
        sync_commands: bool = False,
        **options: Any,
    ) -> None:
        """`rag` and `feedback` are None only for `python -m bot sync`, which needs neither."""
        options.setdefault("chunk_guilds_at_startup", False)
        super().__init__(
            # No text commands: without the message content intent only mentions would work.
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=bot_intents(settings),
            allowed_mentions=NO_MENTIONS,
            tree_cls=RagTree,
            **options,
        )
        self.settings = settings
        self.home = Home(settings)
        self._rag = rag
        self._feedback = feedback
        self.sync_commands = sync_commands
        # One answer path (and one answer queue) for every way a question arrives.
        self._answers = (
            AnswerPath(settings, rag, feedback, self.dispatch)
            if rag is not None and feedback is not None
            else None
        )

    @property
    def serving(self) -> bool:
        """False when opened only to publish the commands (no knowledge base, no models)."""
        return self._rag is not None

    @property
    def rag(self) -> Rag:
        return _serving_only(self._rag)

    @property
    def feedback(self) -> FeedbackStore:
        return _serving_only(self._feedback)

    @property
    def answers(self) -> AnswerPath:
        return _serving_only(self._answers)

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            try:
                await self.load_extension(extension)
            except Exception:
                log.exception("failed to load extension %s", extension)
        if self.sync_commands:
            synced = await self.sync_app_commands()
            log.info("synced %d application commands", len(synced))
        if not self.serving:
            return
        log.info("%s", message_content_notice(self.settings))
        try:
            # 0 when nothing is published yet: the bot starts and says so when asked.
            chunks = await asyncio.to_thread(self.rag.store.count)
        except Exception:
            log.warning("could not count the chunks in the knowledge base", exc_info=True)
        else:
            metrics.set_index_size(chunks)
            if not chunks:
                log.warning("the knowledge base is empty: run /reindex or python -m rag_core index")

    async def close(self) -> None:
        # Answers in flight end with a clear message while HTTP still works.
        if self._answers is not None:
            await self._answers.stop()
        await super().close()

    async def sync_app_commands(
        self, guild: discord.abc.Snowflake | None = None
    ) -> list[app_commands.AppCommand]:
        """Publish the commands: to `guild`, else the dev guild if set, else globally."""
        if guild is None and self.settings.discord_dev_guild_id:
            guild = discord.Object(id=self.settings.discord_dev_guild_id)
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        return await self.tree.sync(guild=guild)

    async def on_message(self, message: discord.Message) -> None:
        """No text commands: messages are read by the conversations cog's listener only."""

    async def on_ready(self) -> None:
        # on_ready fires again after reconnects: only log here, never sync or load.
        log.info("connected as %s to %d servers", self.user, len(self.guilds))
        metrics.set_connected(True)

    async def on_disconnect(self) -> None:
        metrics.set_connected(False)

    async def on_resumed(self) -> None:
        metrics.set_connected(True)


def _serving_only(part: _T | None) -> _T:
    """What a serving bot has; a bot opened only to sync commands has none of it."""
    if part is None:
        raise RuntimeError("this bot was opened to sync commands only")
    return part
