"""Reminders: a help-forum post the bot left to people that nobody has replied to, after
FORUM_REMIND_AFTER_S, pings the helper role in the post, once.

Posts left to people are the feedback database's `unanswered` rows (not in the docs with
FORUM_UNCOVERED=silent, or no answer slot in time). A sweep claims the due ones (marking them, so
each post is reminded of once even across restarts or two processes), then reads each post: one
that got a reply from anyone but the poster is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import discord

from .handoff import role_ping
from .step_back import PERSON_MESSAGES

if TYPE_CHECKING:
    from .client import RagBot

log = logging.getLogger(__name__)

REMINDER = "<@&{role}> This question has had no reply for {waited}: can someone help?"
_MAX_AGE_S = 7 * 86400  # older posts left to people are not reminded of (e.g. after an upgrade)
_HISTORY = 20


def waited_text(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes >= 120:
        return f"{round(minutes / 60)} hours"
    return f"{minutes} minutes" if minutes >= 2 else f"{max(1, round(seconds))} seconds"


async def remind_due(bot: RagBot) -> int:
    """Remind the helpers of the posts due now; how many pings were sent."""
    settings = bot.settings
    after = settings.forum_remind_after_s
    role = settings.helper_role_id
    if not after or not role:
        return 0
    now = time.time()
    sent = 0
    for guild_id, post_id in await bot.feedback.claim_reminders(now - after, now - _MAX_AGE_S):
        if not bot.home.serves(guild_id):
            continue
        post = bot.get_channel(post_id)
        if post is None:
            try:
                post = await bot.fetch_channel(post_id)
            except discord.HTTPException:
                continue  # deleted, or out of sight
        if not isinstance(post, discord.Thread) or post.parent_id not in settings.forum_channel_ids:
            continue
        if await _replied(post):
            continue
        try:
            await post.send(
                REMINDER.format(role=role, waited=waited_text(after)),
                allowed_mentions=role_ping(role),
            )
        except discord.HTTPException:
            bot.answers.missing_permission(post, "Send Messages in Threads (helper reminders)")
            continue
        sent += 1
        log.info("reminded the helpers of forum post %s", post_id)
    return sent


async def _replied(post: discord.Thread) -> bool:
    """Whether anyone but the poster (and bots) wrote in the post."""
    try:
        async for message in post.history(limit=_HISTORY, after=discord.Object(post.id)):
            if (
                message.type in PERSON_MESSAGES
                and not message.author.bot
                and message.author.id != post.owner_id
            ):
                return True
    except discord.HTTPException:
        log.warning("could not read forum post %s: no reminder", post.id, exc_info=True)
        return True
    return False


async def run_reminders(bot: RagBot) -> None:
    """Sweep for due reminders until cancelled (a quarter of FORUM_REMIND_AFTER_S apart, at
    most a minute)."""
    every = min(60.0, max(0.2, bot.settings.forum_remind_after_s / 4))
    while True:
        await asyncio.sleep(every)
        try:
            await remind_due(bot)
        except Exception:
            log.exception("helper reminders failed; trying again in %.0f s", every)
