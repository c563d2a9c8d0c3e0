"""Stale-answer notices: after a reindex publishes, recent answers whose cited passages changed
or left the index say so in their footer.

Which answers are stale is decided by the feedback database (the cited chunk hashes each answer
kept) against the live index (`KnowledgeStore.present_chunk_hashes`); this module only edits
the Discord messages. An edit that fails (message deleted, no access, Discord errors) is
logged and skipped: the answer stays marked stale and counted by /stats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord

from .feedback import StaleAnswer
from .feedback.store import stale_answer_ids
from .streaming import MESSAGE_LIMIT
from .utils import NO_MENTIONS

if TYPE_CHECKING:
    from .client import RagBot

log = logging.getLogger(__name__)

FOOTER_START = "-# Answered in"  # the footer render_answer writes
STALE_NOTE = "-# ⚠️ The docs this answer cites changed on {date}: ask again for the current answer."


def stale_note(answer: StaleAnswer) -> str:
    return STALE_NOTE.format(date=discord.utils.format_dt(answer.stale_at, "D"))


def with_stale_footer(content: str, note: str) -> str | None:
    """`content` with its footer replaced by `note` (appended when it has none); None when it
    says so already or the result would not fit a message."""
    if note in content:
        return None
    lines = content.split("\n")
    if lines and lines[-1].startswith(FOOTER_START):
        lines[-1] = note
    else:
        lines.append(note)
    edited = "\n".join(lines)
    return edited if len(edited) <= MESSAGE_LIMIT else None


async def mark_stale_answers(bot: RagBot) -> list[StaleAnswer]:
    """Mark the answers of the last STALE_WINDOW_DAYS whose cited passages the live index no
    longer has; the ones newly marked."""
    days = bot.settings.stale_window_days
    if days <= 0:
        return []
    cited = await bot.feedback.cited_since(time.time() - days * 86400)
    store = bot.rag.store
    if not cited or await asyncio.to_thread(store.live) is None:
        return []  # no live index (a new database): nothing to compare with
    hashes = set().union(*cited.values())
    present = await asyncio.to_thread(store.present_chunk_hashes, hashes)
    stale = await bot.feedback.mark_stale(stale_answer_ids(cited, present))
    if stale:
        log.info("%d recent answers cite passages that changed: marking their footers", len(stale))
    return stale


async def edit_footers(
    bot: RagBot, answers: list[StaleAnswer], note: Callable[[StaleAnswer], str] = stale_note
) -> int:
    """Edit each answer's last message to carry `note` (the stale note by default) as its
    footer; how many were edited."""
    edited = 0
    for answer in answers:
        if await _edit_footer(bot, answer, note(answer)):
            edited += 1
    return edited


async def _edit_footer(bot: RagBot, answer: StaleAnswer, note: str) -> bool:
    if not answer.message_ids:
        return False
    channel = bot.get_partial_messageable(answer.channel_id, guild_id=answer.guild_id)
    message_id = answer.message_ids[-1]
    try:
        message = await channel.fetch_message(message_id)
        content = with_stale_footer(message.content, note)
        if content is None:
            return False
        await message.edit(content=content, allowed_mentions=NO_MENTIONS)
    except discord.NotFound:
        log.info("stale answer %s: its message %s is gone", answer.answer_id, message_id)
    except discord.Forbidden:
        log.warning(
            "stale answer %s: no access to message %s in channel %s",
            answer.answer_id,
            message_id,
            answer.channel_id,
        )
    except discord.HTTPException as exc:
        log.warning(
            "stale answer %s: could not edit message %s (HTTP %s)",
            answer.answer_id,
            message_id,
            exc.status,
        )
    else:
        return True
    return False
