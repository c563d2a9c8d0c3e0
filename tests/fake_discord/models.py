"""The data of the fake's world (users, guilds, roles, channels, members, messages) and its records.

Everything here is plain data that a test sets up or inspects; the server turns it into the JSON
payloads Discord would send (``to_payload``). Permissions use discord.py's own flag values.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord

DISCORD_EPOCH_MS = 1_420_070_400_000
ALL_PERMISSIONS = discord.Permissions.all().value
P = discord.Permissions

#: What a fresh guild's @everyone role may do (text-channel permissions a real server grants).
DEFAULT_EVERYONE_PERMISSIONS = P(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    use_external_emojis=True,
    read_message_history=True,
    use_application_commands=True,
).value

#: What the bot's managed role grants by default (what an invite link would typically ask for).
DEFAULT_BOT_PERMISSIONS = P(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    read_message_history=True,
    use_external_emojis=True,
).value

_counter = itertools.count()


def snowflake() -> int:
    """A new, unique, time-based Discord id (discord.py derives ``created_at`` from it)."""
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | (next(_counter) & 0x3FFFFF)


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


def as_permissions(value: int | discord.Permissions | None, default: int = 0) -> int:
    if value is None:
        return default
    return value.value if isinstance(value, discord.Permissions) else int(value)


# --------------------------------------------------------------------------- users and guilds


@dataclass(eq=False)
class FakeUser:
    """A Discord user (human or bot)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class FakeRole:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    name: str
    permissions: int = 0
    position: int = 0
    mentionable: bool = False
    managed: bool = False
    bot_id: int | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": self.mentionable,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass
class Overwrite:
    """A channel permission overwrite for a role (type 0) or a member (type 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass(eq=False)
class FakeChannel:
    """A guild channel (type 0 = text, 15 = forum) or a thread (type 11 = public thread, with a
    parent; a forum's posts are such threads)."""

    id: int
    guild_id: int
    name: str
    type: int = 0
    position: int = 0
    topic: str | None = None
    overwrites: list[Overwrite] = field(default_factory=list)
    parent_id: int | None = None  # a thread's channel
    owner_id: int | None = None  # who started the thread
    archived: bool = False
    locked: bool = False
    available_tags: list[dict[str, Any]] = field(default_factory=list)  # a forum's tags
    applied_tags: list[int] = field(default_factory=list)  # a forum post's tags

    PUBLIC_THREAD = 11
    FORUM = 15

    def tag(self, name: str) -> int:
        """The id of this forum's tag called ``name``."""
        return next(int(t["id"]) for t in self.available_tags if t["name"] == name)

    @property
    def is_thread(self) -> bool:
        return self.type in (10, 11, 12)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "guild_id": str(self.guild_id),
            "name": self.name,
            "type": self.type,
            "position": self.position,
            "topic": self.topic,
            "nsfw": False,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "permission_overwrites": [o.to_payload() for o in self.overwrites],
        }
        if self.type == self.FORUM:
            payload["available_tags"] = self.available_tags
            payload["default_reaction_emoji"] = None
            payload["flags"] = 0
        if self.is_thread:
            payload.pop("permission_overwrites")  # threads follow their channel's
            payload["applied_tags"] = [str(t) for t in self.applied_tags]
            payload["owner_id"] = str(self.owner_id)
            payload["message_count"] = 0
            payload["member_count"] = 1
            payload["thread_metadata"] = {
                "archived": self.archived,
                "auto_archive_duration": 1440,
                "archive_timestamp": iso_now(),
                "locked": self.locked,
            }
        return payload

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass(eq=False)
class FakeMember:
    """A user's membership of one guild."""

    user: FakeUser
    roles: list[FakeRole] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    def to_payload(
        self, *, with_user: bool = True, permissions: int | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "roles": [str(r.id) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user.to_payload()
        if permissions is not None:
            payload["permissions"] = str(permissions)
        return payload


UserLike = FakeUser | FakeMember | int


def user_id(user: UserLike) -> int:
    return user if isinstance(user, int) else user.id


OverwriteTarget = FakeRole | FakeUser | FakeMember


@dataclass(eq=False)
class FakeGuild:
    """A guild with its roles, channels and members; the bot is always a member.

    Build it with ``FakeDiscord.add_guild`` and the ``add_*`` methods below.
    """

    id: int
    name: str
    owner_id: int
    everyone: FakeRole
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    threads: dict[int, FakeChannel] = field(default_factory=dict)
    locale: str = "en-US"

    # -- building

    def add_role(
        self,
        name: str,
        permissions: int | discord.Permissions = 0,
        *,
        mentionable: bool = False,
    ) -> FakeRole:
        """Add a role (positions grow in creation order)."""
        role = FakeRole(
            id=snowflake(),
            name=name,
            permissions=as_permissions(permissions),
            position=len(self.roles) + 1,  # above @everyone (0) and the roles before it
            mentionable=mentionable,
        )
        self.roles[role.id] = role
        return role

    def add_channel(
        self,
        name: str,
        *,
        overwrites: Mapping[OverwriteTarget, discord.PermissionOverwrite] | None = None,
        topic: str | None = None,
    ) -> FakeChannel:
        """Add a text channel; ``overwrites`` maps roles/members to ``discord.PermissionOverwrite``.

        Example, a moderators-only channel::

            guild.add_channel("moderators", overwrites={
                guild.everyone: discord.PermissionOverwrite(view_channel=False),
                mods: discord.PermissionOverwrite(view_channel=True),
                fake.bot_user: discord.PermissionOverwrite(view_channel=True),
            })
        """
        channel = FakeChannel(
            id=snowflake(), guild_id=self.id, name=name, position=len(self.channels), topic=topic
        )
        for target, overwrite in (overwrites or {}).items():
            self.set_overwrite(channel, target, overwrite)
        self.channels[channel.id] = channel
        return channel

    def add_forum(
        self,
        name: str,
        *,
        tags: Iterable[str] = (),
        overwrites: Mapping[OverwriteTarget, discord.PermissionOverwrite] | None = None,
    ) -> FakeChannel:
        """Add a forum channel (type 15) offering ``tags`` for its posts."""
        forum = self.add_channel(name, overwrites=overwrites)
        forum.type = FakeChannel.FORUM
        forum.available_tags = [
            {"id": str(snowflake()), "name": tag, "moderated": False}
            | {"emoji_id": None, "emoji_name": None}
            for tag in tags
        ]
        return forum

    def set_overwrite(
        self, channel: FakeChannel, target: OverwriteTarget, overwrite: discord.PermissionOverwrite
    ) -> None:
        """Replace the overwrite of ``target`` in ``channel``."""
        allow, deny = overwrite.pair()
        kind = 0 if isinstance(target, FakeRole) else 1
        channel.overwrites = [o for o in channel.overwrites if o.id != target.id]
        channel.overwrites.append(Overwrite(target.id, kind, allow.value, deny.value))

    def add_member(
        self, user: FakeUser, roles: Iterable[FakeRole] = (), *, nick: str | None = None
    ) -> FakeMember:
        member = FakeMember(user=user, roles=list(roles), nick=nick)
        self.members[user.id] = member
        return member

    # -- lookups

    def channel(self, name: str) -> FakeChannel:
        return next(c for c in self.channels.values() if c.name == name)

    def role(self, name: str) -> FakeRole:
        return next(r for r in self.roles.values() if r.name == name)

    def member(self, user: UserLike) -> FakeMember | None:
        return self.members.get(user_id(user))

    # -- permissions, computed like Discord does

    def base_permissions(self, member: FakeMember) -> int:
        if member.id == self.owner_id:
            return ALL_PERMISSIONS
        perms = self.everyone.permissions
        for role in member.roles:
            perms |= role.permissions
        if perms & P.administrator.flag:
            return ALL_PERMISSIONS
        return perms

    def permissions_in(self, channel: FakeChannel, user: UserLike) -> int:
        """The member's effective permissions in ``channel`` (0 for non-members)."""
        member = self.member(user)
        if member is None:
            return 0
        if channel.parent_id is not None:  # a thread: its channel's permissions
            channel = self.channels[channel.parent_id]
        perms = self.base_permissions(member)
        if perms == ALL_PERMISSIONS:
            return perms
        by_id = {o.id: o for o in channel.overwrites}
        if everyone := by_id.get(self.id):
            perms = (perms & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role in member.roles:
            if o := by_id.get(role.id):
                allow |= o.allow
                deny |= o.deny
        perms = (perms & ~deny) | allow
        if (o := by_id.get(member.id)) and o.type == 1:
            perms = (perms & ~o.deny) | o.allow
        if not perms & P.view_channel.flag:
            return 0
        return perms

    def to_payload(self) -> dict[str, Any]:
        """The GUILD_CREATE payload."""
        roles = [self.everyone, *self.roles.values()]
        return {
            "id": str(self.id),
            "name": self.name,
            "owner_id": str(self.owner_id),
            "icon": None,
            "splash": None,
            "banner": None,
            "description": None,
            "features": [],
            "preferred_locale": self.locale,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "afk_timeout": 300,
            "afk_channel_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "application_id": None,
            "joined_at": iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "roles": [r.to_payload() for r in roles],
            "channels": [c.to_payload() for c in self.channels.values()],
            "members": [m.to_payload() for m in self.members.values()],
            "emojis": [],
            "stickers": [],
            "threads": [t.to_payload() for t in self.threads.values() if not t.archived],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Mentions:
    """Who a message notifies (after ``allowed_mentions`` and permissions), like Discord."""

    everyone: bool = False
    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return self.everyone or bool(self.users) or bool(self.roles)


@dataclass
class MessageVersion:
    """One state of a message: its creation or one edit, with when it happened."""

    at: float
    source: str  # "create", "loading" (deferred placeholder), "edit", "followup" (fills a defer)
    content: str
    embeds: list[dict[str, Any]]
    flags: int
    components: list[dict[str, Any]]
    allowed_mentions: dict[str, Any] | None
    mentions: Mentions
    notifies: bool  # Discord notifies mentioned people on creation, not on later edits


@dataclass(eq=False)
class FakeMessage:
    """A message in a channel, including interaction responses and followups."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    created_at: float
    type: int = 0
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict[str, Any] | None = None
    mentions: Mentions = field(default_factory=Mentions)
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    message_reference: dict[str, Any] | None = None
    deleted_at: float | None = None
    edited_timestamp: str | None = None
    reactions: dict[str, list[int]] = field(default_factory=dict)
    history: list[MessageVersion] = field(default_factory=list)

    EPHEMERAL = 1 << 6
    LOADING = 1 << 7

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & self.EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while this is a deferred response's "thinking…" placeholder."""
        return bool(self.flags & self.LOADING)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def to_payload(
        self, *, me_id: int | None = None, interaction_user: FakeUser | None = None
    ) -> dict[str, Any]:
        """The message object; ``me_id`` (the bot) decides each reaction's ``me`` flag."""
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.type,
            "author": self.author.to_payload(),
            "content": self.content,
            "timestamp": datetime.fromtimestamp(
                ((self.id >> 22) + DISCORD_EPOCH_MS) / 1000, UTC
            ).isoformat(),
            "edited_timestamp": self.edited_timestamp,
            "tts": False,
            "mention_everyone": self.mentions.everyone,
            "mentions": [
                {"id": str(u), "username": str(u), "discriminator": "0", "avatar": None}
                for u in sorted(self.mentions.users)
            ],
            "mention_roles": [str(r) for r in sorted(self.mentions.roles)],
            "attachments": [],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "flags": self.flags,
            "reactions": [
                {
                    "emoji": emoji_payload(emoji),
                    "count": len(users),
                    "count_details": {"normal": len(users), "burst": 0},
                    "me": me_id in users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for emoji, users in self.reactions.items()
                if users
            ],
        }
        if self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        if self.interaction_id is not None and interaction_user is not None:
            payload["interaction_metadata"] = {
                "id": str(self.interaction_id),
                "type": 2,
                "user": interaction_user.to_payload(),
                "authorizing_integration_owners": {},
            }
        return payload


def emoji_payload(emoji: str) -> dict[str, Any]:
    """``"👍"`` -> unicode emoji; ``"name:123"`` -> custom emoji."""
    name, sep, emoji_id = emoji.partition(":")
    if sep and emoji_id.isdigit():
        return {"id": emoji_id, "name": name, "animated": False}
    return {"id": None, "name": emoji}


# --------------------------------------------------------------------------- recording


@dataclass(eq=False)
class RecordedRequest:
    """One HTTP request the client made, and what the fake answered."""

    at: float  # seconds since the fake started
    method: str
    path: str  # as requested, without the /api/v10 prefix
    route: str  # "METHOD /template", e.g. "POST /channels/{channel_id}/messages"
    params: dict[str, str]
    json: Any = None
    files: list[str] = field(default_factory=list)
    status: int = 0
    response: Any = None
    unknown: bool = False
    injected: bool = False  # a 429 from ``inject_429`` (expected by construction)
    interaction: Any = None  # the FakeInteraction this request concerns, if any

    @property
    def code(self) -> int | None:
        """Discord's JSON error code, for error responses."""
        if isinstance(self.response, dict) and self.status >= 400:
            return self.response.get("code")
        return None

    def describe(self) -> str:
        text = f"{self.method} {self.path} -> {self.status}"
        if isinstance(self.response, dict) and self.status >= 400:
            text += f" {self.response.get('code')} {self.response.get('message')!r}"
        return text


@dataclass
class GatewayFrame:
    """A frame the client sent over the gateway (IDENTIFY/RESUME tokens removed)."""

    at: float
    op: int
    data: Any
