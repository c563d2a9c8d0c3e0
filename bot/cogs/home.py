"""Servers that are not home: named in the log at start and on invite, and left on request."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)


class HomeServers(commands.Cog):
    """Says which servers the bot serves; leaves the others with DISCORD_LEAVE_OTHER_GUILDS."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        self.listed = False  # on_ready fires again after reconnects: list once

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self.listed:
            return
        self.listed = True
        home = self.bot.home
        if not home.guild_ids:
            log.error(
                "no home server is set: the bot answers nowhere. Set DISCORD_HOME_GUILD_IDS to "
                "your server's id (`python -m bot doctor` lists the servers the bot is in)"
            )
        others = [g for g in self.bot.guilds if not home.serves(g.id)]
        served = [g for g in self.bot.guilds if home.serves(g.id)]
        log.info("serving %d home server(s): %s", len(served), _names(served))
        if others:
            log.warning("in %d server(s) that are not home: %s", len(others), _names(others))
        for guild in others:
            await self._leave_if_asked(guild)

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        if self.bot.home.serves(guild.id):
            log.info("joined home server %s", _names([guild]))
            return
        log.warning("invited to %s, not a home server: it gets no answers", _names([guild]))
        await self._leave_if_asked(guild)

    async def _leave_if_asked(self, guild: discord.Guild) -> None:
        if not self.bot.settings.discord_leave_other_guilds:
            return
        try:
            await guild.leave()
        except discord.HTTPException:
            log.warning("could not leave server %s", guild.id, exc_info=True)
        else:
            log.warning("left server %s: it is not a home server", _names([guild]))


def _names(guilds: list[discord.Guild]) -> str:
    """`name (id)` for the log; a server's name is its owner's text, so it is quoted."""
    return ", ".join(f"{g.name!r} ({g.id})" for g in guilds) or "none"


async def setup(bot: RagBot) -> None:
    await bot.add_cog(HomeServers(bot))
