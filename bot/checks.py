"""Command checks: who is an admin, who may press moderators' buttons, the question cooldown.
Each runs when a command runs or a button is pressed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import discord
from discord import app_commands

from .home import OTHER_GUILD, same_guild
from .utils import send_error

if TYPE_CHECKING:
    from .client import RagBot

T = TypeVar("T")


class NotAdmin(app_commands.CheckFailure):
    def __init__(self) -> None:
        super().__init__(
            "Only server admins can use this command (Manage Server permission or an admin role)."
        )


class NotOwner(app_commands.CheckFailure):
    def __init__(self) -> None:
        super().__init__("Only the bot's owner can use this command.")


def is_admin_member(interaction: discord.Interaction[RagBot]) -> bool:
    """Manage Server in this channel, or one of the configured admin roles."""
    if interaction.guild is None:
        return False
    if interaction.permissions.manage_guild:
        return True
    admin_roles = set(interaction.client.settings.discord_admin_role_ids)
    roles = getattr(interaction.user, "roles", [])
    return any(role.id in admin_roles for role in roles)


async def moderator_check(
    interaction: discord.Interaction[RagBot], guild_id: int | None = None
) -> bool:
    """For a moderators' button or form: a home server, an admin (is_admin_member) and, when
    `guild_id` is given, that server (a custom_id can be replayed from anywhere). A refusal is
    told to the presser."""
    refusal = None
    if not interaction.client.home.serves(interaction.guild_id):
        refusal = OTHER_GUILD
    elif not is_admin_member(interaction):
        refusal = str(NotAdmin())
    elif guild_id is not None and not same_guild(guild_id, interaction.guild_id):
        refusal = OTHER_GUILD
    if refusal is None:
        return True
    await send_error(interaction, refusal)
    return False


def admin_only() -> Callable[[T], T]:
    """Checked server-side on every run: `default_member_permissions` only hides a command."""

    def predicate(interaction: discord.Interaction[RagBot]) -> bool:
        if not is_admin_member(interaction):
            raise NotAdmin()
        return True

    return app_commands.check(predicate)


def owner_only() -> Callable[[T], T]:
    async def predicate(interaction: discord.Interaction[RagBot]) -> bool:
        if not await interaction.client.is_owner(interaction.user):
            raise NotOwner()
        return True

    return app_commands.check(predicate)


def ask_cooldown() -> Callable[[T], T]:
    """One question per user per `ask_cooldown_s` (read at run time, so tests can change it),
    shared with follow-ups, replies and mentions."""

    def predicate(interaction: discord.Interaction[RagBot]) -> bool:
        client = interaction.client
        retry_after = client.answers.take_cooldown(interaction.user.id)
        if retry_after is not None:
            cooldown = app_commands.Cooldown(1, client.settings.ask_cooldown_s)
            raise app_commands.CommandOnCooldown(cooldown, retry_after)
        return True

    return app_commands.check(predicate)
