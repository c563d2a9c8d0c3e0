"""The coverage-gaps report: what the docs are missing, from the questions the bot refused or
whose answers were flagged, grouped by meaning (rag_core/quality/gaps.py), most asked first.

The same Markdown serves `/gaps` (split into messages within Discord's limit) and
`python -m bot gaps` (a file or the terminal, for a docs team).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import numpy as np

from rag_core.quality.gaps import Gap, find_gaps

from .feedback import FeedbackStore
from .streaming import MESSAGE_LIMIT, fit, plain_text, split_message

EXAMPLES = 3
EXAMPLE_CHARS = 200


async def coverage_gaps(
    feedback: FeedbackStore,
    embed: Callable[[Sequence[str]], Awaitable[np.ndarray]],
    *,
    days: float,
    threshold: float,
    guild_id: int | None = None,
    now: float | None = None,
) -> list[Gap]:
    """The refused and flagged questions of the last `days` days, grouped, most asked first."""
    since = (time.time() if now is None else now) - days * 86400
    questions = await feedback.gap_questions(since, guild_id)
    return await find_gaps(questions, embed, threshold=threshold)


def iso_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def render_gaps(
    gaps: Sequence[Gap],
    days: float,
    *,
    when: Callable[[float], str] = iso_day,
    limit: int | None = None,
    more: str = "",
) -> str:
    """The report as Markdown: a summary line, then each group (at most `limit`) with its
    count and up to three examples. Questions are users' text: shown escaped, links inert.
    `more` follows the note on groups left out."""
    asked = sum(g.count for g in gaps)
    span = f"{days:g} day" + ("" if days == 1 else "s")
    lines = [f"## Coverage gaps: the last {span}", ""]
    if not gaps:
        lines.append("No question was refused or flagged in that time.")
        return "\n".join(lines)
    lines.append(
        f"{asked} questions the docs did not answer (refused, or flagged by readers) "
        f"in {len(gaps)} groups, most asked first."
    )
    shown = gaps if limit is None else gaps[:limit]
    for n, gap in enumerate(shown, 1):
        kinds = []
        if gap.refused:
            kinds.append(f"{gap.refused} not in the docs")
        if gap.flagged:
            kinds.append(f"{gap.flagged} flagged")
        times = "once" if gap.count == 1 else f"{gap.count} times"
        lines += ["", f"**{n}. Asked {times}** · {', '.join(kinds)} · last {when(gap.last_asked)}"]
        lines += [f"- {fit(plain_text, q, EXAMPLE_CHARS)}" for q in gap.examples(EXAMPLES)]
    if len(shown) < len(gaps):
        lines += ["", f"… and {len(gaps) - len(shown)} more groups. {more}".rstrip()]
    return "\n".join(lines)


def gap_messages(gaps: Sequence[Gap], days: float, *, limit: int = 25) -> list[str]:
    """`/gaps`: the report in messages within Discord's limit, dates in each reader's time."""
    text = render_gaps(
        gaps,
        days,
        when=lambda ts: f"<t:{int(ts)}:R>",
        limit=limit,
        more="`python -m bot gaps` lists them all.",
    )
    return split_message(text, MESSAGE_LIMIT)
