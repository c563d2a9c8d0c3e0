"""Corrections reach back: when moderators correct an answer or add a verified answer, the
recent answers (STALE_WINDOW_DAYS) to questions close to it, by the rule that lets a verified
answer answer a question (VERIFIED_MIN_SIMILARITY), get a footer pointing to the correction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord
import numpy as np

from rag_core.search.verified import VerifiedAnswer

from .feedback import StaleAnswer
from .stale import edit_footers

if TYPE_CHECKING:
    from .client import RagBot

log = logging.getLogger(__name__)

CORRECTED_NOTE = "-# ✏️ Moderators corrected the answer to this question on {date}: <{link}>"


def corrected_note(link: str) -> Callable[[StaleAnswer], str]:
    def note(answer: StaleAnswer) -> str:
        date = discord.utils.format_dt(answer.stale_at, "D")
        return CORRECTED_NOTE.format(date=date, link=link)

    return note


async def reach_back(bot: RagBot, verified: VerifiedAnswer, guild_id: int | None) -> int:
    """Mark and footnote the recent answers close to `verified`'s question; how many were
    marked (also counted by /stats)."""
    settings = bot.settings
    if settings.stale_window_days <= 0:
        return 0
    since = time.time() - settings.stale_window_days * 86400
    scope = None if settings.verified_shared else guild_id
    recent = await bot.feedback.recent_questions(since, scope)
    if not recent:
        return 0
    embedder = bot.rag.embedder
    target = await embedder.aembed_query(verified.question)
    # Asked together: the embedder shares calls between questions that wait at once.
    vectors = await asyncio.gather(*(embedder.aembed_query(q) for _, q in recent))
    close = [
        answer_id
        for (answer_id, _), vector in zip(recent, vectors, strict=True)
        if float(np.dot(target, vector)) >= settings.verified_min_similarity
    ]
    marked = await bot.feedback.mark_corrected(close, verified.id)
    if marked:
        log.info("verified answer %d reaches %d recent answers", verified.id, len(marked))
        await edit_footers(bot, marked, corrected_note(verified.url))
    return len(marked)
