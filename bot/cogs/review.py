"""Moderator review: the buttons on a review card, the correction modal, and /verified.

The buttons are dynamic items: their custom_id carries the answer's id
(`review:<action>:<answer id>`), so a card keeps working after the bot restarts. Who may press
them is checked at every click (and again when a correction is submitted), with the rule admin
commands use, in the answer's own server only: a custom_id can be replayed from anywhere.

A correction becomes a verified answer: stored in the feedback database, then indexed into the
knowledge base (rag_core.search.verified), where it answers the same question asked in other words.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from rag_core.errors import RagError
from rag_core.search.verified import VerifiedAnswer

from ..checks import NotAdmin, admin_only, is_admin_member, moderator_check
from ..corrections import reach_back
from ..feedback import AnswerRecord
from ..home import OTHER_GUILD, same_guild
from ..streaming import fit, plain_text, safe_truncate
from ..utils import GENERIC_ERROR, NO_MENTIONS, hand_to_cog, send_error

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

QUESTION_MAX = 1000
ANSWER_MAX = 1800  # a verified answer is quoted whole in prompts: keep it a passage's size
VERIFIED_SHOWN = 15
REVIEW_FIELD = "Review"

# action -> (label, style)
_BUTTONS: dict[str, tuple[str, discord.ButtonStyle]] = {
    "correct": ("Correct it", discord.ButtonStyle.primary),
    "fine": ("Answer is fine", discord.ButtonStyle.success),
    "dismiss": ("Dismiss", discord.ButtonStyle.secondary),
}


class ReviewButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"review:(?P<action>correct|fine|dismiss):(?P<answer>[0-9]{1,19})",
):
    """One of the card's buttons, rebuilt from its custom_id whenever it is pressed."""

    def __init__(self, action: str, answer_id: int) -> None:
        label, style = _BUTTONS[action]
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"review:{action}:{answer_id}")
        )
        self.action = action
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
        /,
    ) -> ReviewButton:
        return cls(match["action"], int(match["answer"]))

    async def interaction_check(  # type: ignore[override]
        self, interaction: discord.Interaction[RagBot], /
    ) -> bool:
        return await moderator_check(interaction)

    async def callback(self, interaction: discord.Interaction[RagBot]) -> None:  # type: ignore[override]
        what = f"review button {self.action} on answer {self.answer_id}"
        await hand_to_cog(
            interaction, "Review", "on_button", self.action, self.answer_id, what=what
        )


def review_view(answer_id: int) -> discord.ui.View:
    """The card's buttons for `answer_id` (persistent: they work after a restart)."""
    view = discord.ui.View(timeout=None)
    for action in _BUTTONS:
        view.add_item(ReviewButton(action, answer_id))
    return view


def with_verdict(embed: discord.Embed, text: str, colour: discord.Colour) -> discord.Embed:
    """The card with its review line set (replacing an earlier verdict)."""
    embed = embed.copy()
    embed.colour = colour
    for i, field in enumerate(embed.fields):
        if field.name == REVIEW_FIELD:
            embed.set_field_at(i, name=REVIEW_FIELD, value=text, inline=False)
            return embed
    embed.add_field(name=REVIEW_FIELD, value=text, inline=False)
    return embed


async def update_card(
    interaction: discord.Interaction[Any],
    text: str,
    colour: discord.Colour,
    view: discord.ui.View | None,
) -> None:
    """Set a moderators' card's verdict (its buttons `view`, None: none left), answering the
    click or, once deferred, editing after; without a card to edit, `text` goes privately."""
    message = interaction.message
    deferred = interaction.response.is_done()
    if message is None or not message.embeds:
        send = interaction.followup.send if deferred else interaction.response.send_message
        await send(safe_truncate(text, 2000), ephemeral=True, allowed_mentions=NO_MENTIONS)
        return
    embed = with_verdict(message.embeds[0], safe_truncate(text, 1024), colour)
    if deferred:
        await interaction.edit_original_response(
            embed=embed, view=view, allowed_mentions=NO_MENTIONS
        )
    else:
        await interaction.response.edit_message(
            embed=embed, view=view, allowed_mentions=NO_MENTIONS
        )


class CorrectionModal(discord.ui.Modal):
    """The right answer (and, if it needs it, a clearer question) for a flagged answer."""

    def __init__(self, cog: Review, record: AnswerRecord, user_id: int) -> None:
        # One per moderator and answer: two moderators' open forms do not replace each other.
        super().__init__(
            title="Correct the answer",
            custom_id=f"review:correction:{record.id}:{user_id}",
            timeout=900,
        )
        self.cog = cog
        self.record = record
        self.user_id = user_id
        self.question: discord.ui.TextInput[CorrectionModal] = discord.ui.TextInput(
            label="Question",
            style=discord.TextStyle.paragraph,
            default=record.question[:QUESTION_MAX],
            max_length=QUESTION_MAX,
        )
        self.answer: discord.ui.TextInput[CorrectionModal] = discord.ui.TextInput(
            label="The right answer",
            style=discord.TextStyle.paragraph,
            placeholder="What the bot should have said; it will answer this question with it.",
            max_length=ANSWER_MAX,
        )
        self.add_item(self.question)
        self.add_item(self.answer)

    async def interaction_check(  # type: ignore[override]
        self, interaction: discord.Interaction[RagBot], /
    ) -> bool:
        """Only the moderator who opened the form, still an admin, in the answer's server.
        A refused submission leaves the form open for that moderator (discord.py stops a
        modal only after a submission it let through)."""
        refusal = None
        if interaction.user.id != self.user_id or not is_admin_member(interaction):
            refusal = str(NotAdmin())
        elif not same_guild(self.record.guild_id, interaction.guild_id):
            refusal = OTHER_GUILD
        if refusal is None:
            return True
        log.warning(
            "correction of answer %d refused for %s in server %s",
            self.record.id,
            interaction.user.id,
            interaction.guild_id,
        )
        await send_error(interaction, refusal)
        return False

    async def on_submit(self, interaction: discord.Interaction[RagBot]) -> None:  # type: ignore[override]
        await self.cog.on_correction(self, interaction)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[RagBot], error: Exception
    ) -> None:
        if isinstance(error, RagError):
            log.warning("correction of answer %d failed: %s", self.record.id, error.detail)
            await send_error(interaction, error.user_message)
        else:
            log.error("correction of answer %d failed", self.record.id, exc_info=error)
            await send_error(interaction, GENERIC_ERROR)


class Review(commands.Cog):
    """Moderators correct, accept or dismiss flagged answers; admins manage verified answers."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        self.reaching_back: set[asyncio.Task[None]] = set()  # footers of answers it corrects

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ReviewButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReviewButton)
        # Footers still being edited stop with the bot (their corrections are stored; only
        # some notices are missing), not after its HTTP session closed.
        for task in self.reaching_back:
            task.cancel()
        await asyncio.gather(*self.reaching_back, return_exceptions=True)

    # -- the card's buttons -------------------------------------------------------------------

    async def on_button(
        self, action: str, answer_id: int, interaction: discord.Interaction[RagBot]
    ) -> None:
        store = self.bot.feedback
        record = await store.answer_by_id(answer_id)
        if record is None:
            await send_error(interaction, "That answer is no longer in the feedback database.")
            return
        if not same_guild(record.guild_id, interaction.guild_id):
            log.warning(
                "review button %s on answer %d pressed in server %s, not the answer's",
                action,
                answer_id,
                interaction.guild_id,
            )
            await send_error(interaction, OTHER_GUILD)
            return
        if action == "correct":
            modal = CorrectionModal(self, record, interaction.user.id)
            await interaction.response.send_modal(modal)
            return
        status = "fine" if action == "fine" else "dismissed"
        await store.set_review(answer_id, status, interaction.user.id)
        log.info("answer %d marked %s by %s", answer_id, status, interaction.user.id)
        text, colour = (
            (f"👍 Answer is fine · <@{interaction.user.id}>", discord.Colour.green())
            if status == "fine"
            else (f"Dismissed · <@{interaction.user.id}>", discord.Colour.light_grey())
        )
        await update_card(interaction, text, colour, review_view(answer_id))

    async def on_correction(
        self, modal: CorrectionModal, interaction: discord.Interaction[RagBot]
    ) -> None:
        # Who may submit was checked by the modal (CorrectionModal.interaction_check).
        question = " ".join(modal.question.value.split()) or modal.record.question
        answer = modal.answer.value.strip()
        if not answer:
            await send_error(interaction, "The answer was empty: nothing was changed.")
            return
        record = modal.record
        # Storing and indexing can wait on a reindex's publish step (it holds the verified
        # answers' lock) far past Discord's 3 s to answer: acknowledge first, edit the card after.
        await interaction.response.defer()
        verified = await self.add_verified(
            question=question,
            answer=answer,
            link=record.jump_url,
            by=interaction.user.id,
            guild_id=record.guild_id,
            answer_id=record.id,
        )
        text = (
            f"✏️ Corrected · <@{interaction.user.id}> · verified answer #{verified.id}\n"
            f"{fit(plain_text, answer, 900)}"
        )
        await update_card(interaction, text, discord.Colour.green(), None)

    async def add_verified(
        self,
        *,
        question: str,
        answer: str,
        link: str,
        by: int,
        guild_id: int | None,
        answer_id: int | None = None,
        answered_by: str = "",
    ) -> VerifiedAnswer:
        """Store, then index, a verified answer; a failed indexing takes the stored one back.
        `answered_by`: the community member whose answer it is (cited by name, never pinged)."""
        store = self.bot.feedback
        record = await store.add_verified(
            question=question,
            answer=answer,
            message_link=link,
            created_by=by,
            guild_id=guild_id,
            answer_id=answer_id,
            answered_by=answered_by,
        )
        verified = VerifiedAnswer(record.id, question, answer, link, answered_by)
        try:
            await self.bot.rag.verified.add(verified)
        except BaseException:
            await store.remove_verified(record.id, by)
            raise
        log.info("verified answer %d added by %s (answer %s)", record.id, by, answer_id)
        # Earlier answers to close questions say so, in the background: many edits may follow.
        task = asyncio.create_task(self._reach_back(verified, guild_id), name="reach-back")
        self.reaching_back.add(task)
        task.add_done_callback(self.reaching_back.discard)
        return verified

    async def _reach_back(self, verified: VerifiedAnswer, guild_id: int | None) -> None:
        try:
            await reach_back(self.bot, verified, guild_id)
        except Exception:  # the correction itself stands; only the notices are missing
            log.exception("could not mark the answers verified answer %d corrects", verified.id)

    # -- /verified ----------------------------------------------------------------------------

    verified = app_commands.Group(
        name="verified",
        description="Answers moderators verified (admins)",
        default_permissions=discord.Permissions(manage_guild=True),
        guild_only=True,
    )

    @verified.command(name="list", description="The verified answers of this server")
    @admin_only()
    async def verified_list(self, interaction: discord.Interaction[RagBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        records = await self.bot.feedback.verified(interaction.guild_id)
        lines = []
        for r in records[-VERIFIED_SHOWN:]:
            question = fit(plain_text, r.question, 100)
            when = discord.utils.format_dt(r.created_at, "d")
            by = f" · by {fit(plain_text, r.answered_by, 40)}" if r.answered_by else ""
            lines.append(
                f"**#{r.id}** [{question}]({r.message_link}){by} · <@{r.created_by}> · {when}"
            )
        embed = discord.Embed(
            title="Verified answers",
            description=safe_truncate("\n".join(lines), 4000)
            if lines
            else "None yet: use “Correct it” on a review card.",
            colour=discord.Colour.green(),
        )
        if len(records) > VERIFIED_SHOWN:
            embed.set_footer(text=f"the latest {VERIFIED_SHOWN} of {len(records)}")
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @verified.command(name="remove", description="Stop using a verified answer")
    @app_commands.describe(id="The verified answer's number (see /verified list)")
    @admin_only()
    async def verified_remove(
        self, interaction: discord.Interaction[RagBot], id: app_commands.Range[int, 1]
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        store = self.bot.feedback
        if not any(r.id == id for r in await store.verified(interaction.guild_id)):
            await interaction.followup.send(
                f"There is no verified answer #{id} in this server.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        # The index first: once it is out, the next question no longer gets it.
        await self.bot.rag.verified.remove(id)
        await store.remove_verified(id, interaction.user.id, interaction.guild_id)
        log.info("verified answer %d removed by %s", id, interaction.user.id)
        await interaction.followup.send(
            f"Verified answer #{id} was removed: it no longer answers questions.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Review(bot))
