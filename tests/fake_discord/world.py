"""The fake's world: the bot's account, users, guilds, messages and commands, with their builders.

``World`` is the first part of ``FakeDiscord`` (see ``server.py``): everything the other parts
read or change lives here, and so do the ways a test creates it (``add_guild``, ``add_member``)
and the ways the fake creates and edits messages (``_new_message``, ``_apply``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import discord

from . import rules
from .models import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    P,
    as_permissions,
    iso_now,
    snowflake,
)

if TYPE_CHECKING:
    from .interactions import FakeInteraction

#: Message flags a bot may set when it sends: SUPPRESS_EMBEDS, SUPPRESS_NOTIFICATIONS,
#: IS_COMPONENTS_V2 (and EPHEMERAL, only in an interaction response or followup).
SENDABLE_FLAGS = 4 | 4096 | 32768
SENDABLE_RESPONSE_FLAGS = FakeMessage.EPHEMERAL | SENDABLE_FLAGS


class World:
    """What exists on the fake Discord, and its clock (``now()``)."""

    _token: str | None  # FakeDiscord's ``token``: when set, the only bot token accepted

    def _init_world(self, bot_name: str) -> None:
        self.application_id = snowflake()
        self.bot_user = FakeUser(id=self.application_id, username=bot_name, bot=True)
        self.owner = FakeUser(id=snowflake(), username="bot-owner")
        self.users: dict[int, FakeUser] = {
            self.bot_user.id: self.bot_user,
            self.owner.id: self.owner,
        }
        self.guilds: dict[int, FakeGuild] = {}
        self.left_guilds: list[FakeGuild] = []  # guilds the bot left
        self.messages: dict[int, FakeMessage] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.interactions: list[FakeInteraction] = []
        self._interactions_by_id: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Seconds since this fake was created (the clock of every recorded time)."""
        return time.monotonic() - self._t0

    # ================================================================== building

    def add_user(self, username: str, *, bot: bool = False) -> FakeUser:
        user = FakeUser(id=snowflake(), username=username, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        channels: Iterable[str] = ("general",),
        everyone_permissions: int | discord.Permissions = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int | discord.Permissions = DEFAULT_BOT_PERMISSIONS,
    ) -> FakeGuild:
        """Add a guild owned by ``fake.owner``, with the bot as a member (its own managed role)."""
        gid = snowflake()
        everyone = FakeRole(
            id=gid, name="@everyone", permissions=as_permissions(everyone_permissions)
        )
        guild = FakeGuild(id=gid, name=name, owner_id=self.owner.id, everyone=everyone)
        bot_role = FakeRole(
            id=snowflake(),
            name=self.bot_user.username,
            permissions=as_permissions(bot_permissions),
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        guild.add_member(self.bot_user, [bot_role])
        guild.add_member(self.owner)
        for channel in channels:
            guild.add_channel(channel)
        self.guilds[gid] = guild
        return guild

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser | str,
        roles: Iterable[FakeRole] = (),
        *,
        nick: str | None = None,
    ) -> FakeMember:
        """Add ``user`` (or a new user with that name) to ``guild``."""
        if isinstance(user, str):
            user = self.add_user(user)
        self.users.setdefault(user.id, user)
        return guild.add_member(user, roles, nick=nick)

    def _add_thread(
        self,
        guild: FakeGuild,
        parent: FakeChannel,
        name: str,
        *,
        owner_id: int,
        thread_id: int | None = None,
        applied_tags: Iterable[int] = (),
    ) -> FakeChannel:
        """Start a public thread in ``parent`` (a thread started from a message has its id)."""
        thread = FakeChannel(
            id=snowflake() if thread_id is None else thread_id,
            guild_id=guild.id,
            name=name,
            type=FakeChannel.PUBLIC_THREAD,
            parent_id=parent.id,
            owner_id=owner_id,
            applied_tags=list(applied_tags),
        )
        guild.threads[thread.id] = thread
        return thread

    # ================================================================== lookups

    def bot_member(self, guild: FakeGuild) -> FakeMember:
        member = guild.member(self.bot_user)
        assert member is not None
        return member

    def bot_permissions(self, channel: FakeChannel) -> discord.Permissions:
        """The bot's effective permissions in ``channel``."""
        return discord.Permissions(
            self.guilds[channel.guild_id].permissions_in(channel, self.bot_user)
        )

    def channel_messages(self, channel: FakeChannel) -> list[FakeMessage]:
        """Messages in ``channel`` (oldest first), deleted ones included (see ``.deleted``)."""
        return [m for m in self.messages.values() if m.channel_id == channel.id]

    def threads_of(self, channel: FakeChannel) -> list[FakeChannel]:
        """The threads started in ``channel``, oldest first."""
        guild = self.guilds[channel.guild_id]
        return [t for t in guild.threads.values() if t.parent_id == channel.id]

    # ================================================================== messages

    def _apply(
        self,
        msg: FakeMessage,
        body: dict[str, Any],
        guild: FakeGuild,
        channel: FakeChannel,
        *,
        source: str,
        notifies: bool,
        files: int = 0,
    ) -> None:
        """Apply a create/edit body to ``msg`` (after validation) and record the new version."""
        if "content" in body:
            msg.content = "" if body["content"] is None else str(body["content"])
        if "embeds" in body:
            msg.embeds = list(body["embeds"] or [])
        if "components" in body:
            msg.components = list(body["components"] or [])
        if "allowed_mentions" in body:
            msg.allowed_mentions = body["allowed_mentions"]
        if source in ("edit", "followup"):
            rules.require_not_empty(msg.content, msg.embeds, msg.components, files)
        replied = None
        if msg.message_reference and (
            ref := self.messages.get(int(msg.message_reference["message_id"]))
        ):
            replied = ref.author.id
        can_everyone = bool(guild.permissions_in(channel, msg.author) & P.mention_everyone.flag)
        msg.mentions = rules.compute_mentions(
            msg.content,
            msg.allowed_mentions,
            can_mention_everyone=can_everyone,
            role_is_mentionable=lambda rid: rid in guild.roles and guild.roles[rid].mentionable,
            replied_user=replied,
        )
        if source == "edit" and not msg.loading:  # filling a placeholder is not an "edit"
            msg.edited_timestamp = iso_now()
        if source in ("edit", "followup"):
            msg.flags &= ~FakeMessage.LOADING
        msg.history.append(
            MessageVersion(
                at=self.now(),
                source=source,
                content=msg.content,
                embeds=list(msg.embeds),
                flags=msg.flags,
                components=list(msg.components),
                allowed_mentions=msg.allowed_mentions,
                mentions=msg.mentions,
                notifies=notifies,
            )
        )

    def _add_message(
        self,
        guild: FakeGuild,
        channel: FakeChannel,
        author: FakeUser,
        body: dict[str, Any],
        *,
        source: str,
        notifies: bool,
        msg_id: int | None = None,
        msg_type: int = 0,
        flags: int = 0,
    ) -> FakeMessage:
        """A new message by ``author`` in ``channel``: ``body`` (a message create body) applied
        and the message kept in ``messages``."""
        msg = FakeMessage(
            id=snowflake() if msg_id is None else msg_id,
            channel_id=channel.id,
            guild_id=guild.id,
            author=author,
            created_at=self.now(),
            type=msg_type,
            flags=flags,
            message_reference=body.get("message_reference"),
        )
        self._apply(msg, body, guild, channel, source=source, notifies=notifies)
        self.messages[msg.id] = msg
        return msg

    def _new_message(
        self,
        guild: FakeGuild,
        channel: FakeChannel,
        body: dict[str, Any],
        *,
        files: int,
        flags: int,
        interaction: FakeInteraction | None = None,
        msg_type: int = 0,
        source: str = "create",
    ) -> FakeMessage:
        """A message the bot sends (``source="loading"``: a deferred response's placeholder)."""
        if source == "create":
            rules.require_body_not_empty(body, files)
        msg = self._add_message(
            guild,
            channel,
            self.bot_user,
            body,
            source=source,
            notifies=source == "create",
            msg_type=msg_type,
            flags=flags,
        )
        if interaction is not None:
            msg.webhook_id = msg.application_id = self.application_id
            msg.interaction_id = interaction.id
        return msg

    # ================================================================== payloads

    def _payload(self, msg: FakeMessage, inter: FakeInteraction | None = None) -> dict[str, Any]:
        """``msg`` as the bot sees it (its own reactions marked ``me``)."""
        return msg.to_payload(
            me_id=self.bot_user.id, interaction_user=inter.user if inter else None
        )

    def _me_payload(self) -> dict[str, Any]:
        """The bot's own user object (``GET /users/@me`` and READY)."""
        return {**self.bot_user.to_payload(), "verified": True, "mfa_enabled": False, "flags": 0}
