"""Stepping back: in forum posts and the bot's threads, people who help come first.

A reply by someone other than the asker (or, with STEP_BACK_FOR=helpers, by a member with
HELPER_ROLE_ID) before the bot's forum answer is ready keeps that answer unposted; in a thread,
such a reply makes the bot leave messages not addressed to it (no mention, no reply to it) to
people for STEP_BACK_S.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import discord

from rag_core.config import Settings

log = logging.getLogger(__name__)

# Messages a person writes; everything else (joins, pins, thread notices, ...) is a system one.
PERSON_MESSAGES = (discord.MessageType.default, discord.MessageType.reply)
_HISTORY = 50  # a forum post's first replies read when deciding whether people answered


class StepBack:
    """Which threads people are talking in, and whether a reply counts as a helper's."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._spoke: dict[int, float] = {}  # thread -> when a helping reply last came

    def helps(self, author: discord.abc.User, asker_id: int) -> bool:
        """Whether a message by `author` in `asker_id`'s thread is someone helping them."""
        mode = self.settings.step_back_for
        if mode == "off" or author.bot or author.id == asker_id:
            return False
        if mode == "anyone":
            return True
        role = self.settings.helper_role_id
        return bool(role) and any(r.id == role for r in getattr(author, "roles", ()))

    async def _helps(self, message: discord.Message, poster_id: int) -> bool:
        """`helps` for a message read back from Discord: its author comes without roles (no
        member data in history), so STEP_BACK_FOR=helpers asks Discord for the member."""
        author: discord.abc.User = message.author
        guild = message.guild
        if (
            self.settings.step_back_for == "helpers"
            and not isinstance(author, discord.Member)
            and not author.bot
            and guild is not None
        ):
            try:
                author = guild.get_member(author.id) or await guild.fetch_member(author.id)
            except discord.HTTPException:
                return False  # no longer a member: not one of the helpers
        return self.helps(author, poster_id)

    def heard(self, thread_id: int) -> None:
        if len(self._spoke) > 10_000:  # forget threads that went quiet
            cutoff = self.clock() - self.settings.step_back_s
            self._spoke = {t: at for t, at in self._spoke.items() if at > cutoff}
        self._spoke[thread_id] = self.clock()

    def leave_to_people(self, message: discord.Message, asker_id: int) -> bool:
        """For a message in a thread not addressed to the bot: whether to leave it to people
        (it is a helper's, or a helper spoke there within STEP_BACK_S)."""
        thread_id = message.channel.id
        if self.helps(message.author, asker_id):
            self.heard(thread_id)
            return True
        spoke = self._spoke.get(thread_id)
        return spoke is not None and self.clock() - spoke < self.settings.step_back_s

    async def people_answered(self, post: discord.Thread, poster_id: int) -> bool:
        """Whether someone helping has replied in forum post `post` (read from Discord, so a
        post queued before a restart is judged the same)."""
        if self.settings.step_back_for == "off":
            return False
        try:
            async for message in post.history(limit=_HISTORY, after=discord.Object(post.id)):
                if message.type in PERSON_MESSAGES and await self._helps(message, poster_id):
                    return True
        except discord.HTTPException:  # no Read Message History: answer as before
            log.warning("could not read forum post %s to step back", post.id, exc_info=True)
        return False
