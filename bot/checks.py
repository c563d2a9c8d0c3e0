"""Command checks: who is an admin, the question cooldown. Each runs when a command runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import discord
from discord import app_commands

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
