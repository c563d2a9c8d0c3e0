"""Candidate answers: a person's answer proposed to the moderators as a verified answer.

The moderators' card shows the question, the person's answer and a link to it, with two
buttons: "Add as verified answer" (a form to edit both first) and "Dismiss". The buttons are
dynamic items (`candidate:<action>:<id>`), so a card works after a restart; who may press them
is checked at every click with the rule review cards use (bot/cogs/review.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord

from rag_core.errors import RagError

from .checks import NotAdmin, moderator_check
from .feedback.records import Candidate
from .streaming import fit, plain_links, plain_text
from .utils import GENERIC_ERROR, hand_to_cog, send_error

if TYPE_CHECKING:
    from .client import RagBot

log = logging.getLogger(__name__)

QUESTION_MAX = 1000
ANSWER_MAX = 1800  # a verified answer is quoted whole in prompts: keep it a passage's size
CARD_COLOUR = discord.Colour.blurple()

REASONS = {
    "solved": "the poster marked it as the solution",
    "saved": "a helper saved it",
}

# action -> (label, style)
_BUTTONS: dict[str, tuple[str, discord.ButtonStyle]] = {
    "add": ("Add as verified answer", discord.ButtonStyle.primary),
    "dismiss": ("Dismiss", discord.ButtonStyle.secondary),
}


def candidate_card(candidate: Candidate) -> discord.Embed:
    """The moderators' card. Names and texts are members' words: shown as plain text; the
    mentions in fields never ping (embeds cannot)."""
    embed = discord.Embed(
        title=f"💡 An answer from {fit(plain_text, candidate.author_name, 80)}",
        url=candidate.jump_url,
        description=fit(plain_links, candidate.answer, 2000) or "(empty)",
        colour=CARD_COLOUR,
        timestamp=candidate.created_at,
    )
    question = fit(plain_text, candidate.question, 1024) or "(empty)"
    embed.add_field(name="Question", value=question, inline=False)
    embed.add_field(name="Answered by", value=f"<@{candidate.author_id}>", inline=True)
    reason = REASONS.get(candidate.reason, candidate.reason)
    embed.add_field(name="Proposed", value=f"{reason} (<@{candidate.proposed_by}>)", inline=True)
    embed.add_field(
        name="Message", value=f"[Jump to the answer]({candidate.jump_url})", inline=True
    )
    embed.set_footer(
        text=f"candidate #{candidate.id} · added, it answers this question citing the person"
    )
    return embed


class CandidateButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"candidate:(?P<action>add|dismiss):(?P<id>[0-9]{1,19})",
):
    """One of the card's buttons, rebuilt from its custom_id whenever it is pressed."""

    def __init__(self, action: str, candidate_id: int) -> None:
        label, style = _BUTTONS[action]
        super().__init__(
            discord.ui.Button(
                label=label, style=style, custom_id=f"candidate:{action}:{candidate_id}"
            )
        )
        self.action = action
        self.candidate_id = candidate_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
        /,
    ) -> CandidateButton:
        return cls(match["action"], int(match["id"]))

    async def interaction_check(  # type: ignore[override]
        self, interaction: discord.Interaction[RagBot], /
    ) -> bool:
        return await moderator_check(interaction)

    async def callback(self, interaction: discord.Interaction[RagBot]) -> None:  # type: ignore[override]
        what = f"candidate button {self.action} on #{self.candidate_id}"
        await hand_to_cog(
            interaction, "Learning", "on_button", self.action, self.candidate_id, what=what
        )


def candidate_view(candidate_id: int) -> discord.ui.View:
    """The card's buttons (persistent: they work after a restart)."""
    view = discord.ui.View(timeout=None)
    for action in _BUTTONS:
        view.add_item(CandidateButton(action, candidate_id))
    return view


class AddCandidateModal(discord.ui.Modal):
    """The question and the person's answer, as the moderator wants them verified."""

    def __init__(self, cog: Any, candidate: Candidate, user_id: int) -> None:
        super().__init__(
            title="Add a verified answer",
            custom_id=f"candidate:form:{candidate.id}:{user_id}",
            timeout=900,
        )
        self.cog = cog
        self.candidate = candidate
        self.user_id = user_id
        self.question: discord.ui.TextInput[AddCandidateModal] = discord.ui.TextInput(
            label="Question",
            style=discord.TextStyle.paragraph,
            default=candidate.question[:QUESTION_MAX],
            max_length=QUESTION_MAX,
        )
        self.answer: discord.ui.TextInput[AddCandidateModal] = discord.ui.TextInput(
            label="The answer",
            style=discord.TextStyle.paragraph,
            default=candidate.answer[:ANSWER_MAX],
            max_length=ANSWER_MAX,
        )
        self.add_item(self.question)
        self.add_item(self.answer)

    async def interaction_check(  # type: ignore[override]
        self, interaction: discord.Interaction[RagBot], /
    ) -> bool:
        """Only the moderator who opened the form, still allowed, in the candidate's server.
        A refused submission leaves the form open (as the correction form's does)."""
        if interaction.user.id != self.user_id:
            await send_error(interaction, str(NotAdmin()))
            return False
        return await moderator_check(interaction, self.candidate.guild_id)

    async def on_submit(self, interaction: discord.Interaction[RagBot]) -> None:  # type: ignore[override]
        await self.cog.on_add(self, interaction)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[RagBot], error: Exception
    ) -> None:
        if isinstance(error, RagError):
            log.warning("adding candidate %d failed: %s", self.candidate.id, error.detail)
            await send_error(interaction, error.user_message)
        else:
            log.error("adding candidate %d failed", self.candidate.id, exc_info=error)
            await send_error(interaction, GENERIC_ERROR)
