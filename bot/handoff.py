"""'Ask a helper': the button under answers that hands a question to the community's helpers.

The button is a dynamic item (`handoff:<answer id>`): it works after a restart, and who may
press it (the asker, in the answer's own server) is checked at every click. A press posts one
message that pings HELPER_ROLE_ID, beside the answer or, with HANDOFF_FORUM_ID, as a new post in
that help forum: the only ping the bot ever makes, with allowed mentions naming that role and
nothing else.
"""

from __future__ import annotations

from typing import Any

import discord

from .feedback import AnswerRecord
from .streaming import fit, link_target, plain_links, plain_text, safe_truncate
from .utils import hand_to_cog

LABEL = "Ask a helper"
ASKED_LABEL = "Helpers asked"
QUOTE_MAX = 600  # the question quoted in the ping


class HandoffButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"handoff:(?P<answer>[0-9]{1,19})",
):
    """The button under one answer, rebuilt from its custom_id whenever it is pressed."""

    def __init__(self, answer_id: int, *, asked: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=ASKED_LABEL if asked else LABEL,
                emoji="👋",
                style=discord.ButtonStyle.secondary,
                custom_id=f"handoff:{answer_id}",
                disabled=asked,
            )
        )
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
        /,
    ) -> HandoffButton:
        return cls(int(match["answer"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:  # type: ignore[override]
        what = f"'Ask a helper' on answer {self.answer_id}"
        await hand_to_cog(interaction, "Helpers", "hand_off", self.answer_id, what=what)


def handoff_view(answer_id: int, *, asked: bool = False) -> discord.ui.View:
    """The button for `answer_id` (persistent: it works after a restart)."""
    view = discord.ui.View(timeout=None)
    view.add_item(HandoffButton(answer_id, asked=asked))
    return view


def ping_text(role_id: int, asker: str, question: str, answer_url: str | None) -> str:
    """The hand-off message: the role, who asks, the question quoted as plain text."""
    quoted = fit(plain_text, question, QUOTE_MAX)
    where = f"\n-# The bot's answer: {answer_url}" if answer_url else ""
    who = fit(plain_text, asker, 80)
    return f"<@&{role_id}> {who} would like a person's help with:\n> {quoted}{where}"


def post_text(role_id: int, asker: str, record: AnswerRecord) -> str:
    """A hand-off forum post's first message: the ping and question, then the bot's answer
    (links shown as text) and its numbered sources, within Discord's 2,000 characters."""
    head = ping_text(role_id, asker, record.question, record.jump_url)
    sources = "\n".join(
        f"[{s.n}] {fit(plain_text, s.title or s.url, 80)} <{link_target(s.url) or ''}>"
        for s in record.sources[:5]
    )
    room = 2000 - len(head) - len(sources) - 40
    answer = fit(plain_links, record.answer, max(room, 100))
    label = "Closest pages" if record.refused else "Sources"
    text = f"{head}\n\n**The bot's answer**\n{answer}"
    return safe_truncate(f"{text}\n**{label}**\n{sources}" if sources else text, 2000)


def post_title(question: str) -> str:
    """A forum post's name: the question's start, on one line (names never ping)."""
    return safe_truncate(" ".join(question.split()), 100) or "A question for the helpers"


def role_ping(role_id: int) -> discord.AllowedMentions:
    """Allowed mentions that let exactly one role be pinged."""
    return discord.AllowedMentions(
        everyone=False, users=False, roles=[discord.Object(role_id)], replied_user=False
    )
