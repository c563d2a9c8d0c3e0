"""What a test does as Discord's users: slash commands, clicks, modals, messages, posts, reactions.

Each action changes the world and sends the client the gateway event Discord would send; the
client must be connected (``fake.running(bot)``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import discord

from .gateway import INTENT_GUILDS, Gateway
from .interactions import FakeInteraction
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    UserLike,
    as_permissions,
    snowflake,
    user_id,
)
from .options import OptionBuilder

MESSAGE_REPLY = 19  # the message type of a reply


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component with a custom_id, inside action rows and labels too."""
    for component in components:
        if component.get("custom_id") is not None:
            yield component
        yield from _walk_components(component.get("components") or [])
        if isinstance(component.get("component"), dict):
            yield from _walk_components([component["component"]])


class Actions(Gateway):
    """Discord's users acting: each method sends the client what Discord would."""

    strict_commands: bool  # FakeDiscord's: refuse commands the client never synced

    # ================================================================== guilds

    async def invite_bot(self, name: str = "Another Guild") -> FakeGuild:
        """Someone adds the bot to a new guild (owned by ``fake.owner``): GUILD_CREATE."""
        guild = self.add_guild(name)
        payload = guild.to_payload()
        # A join carries no "unavailable" (false would mean an outage ended: guild_available).
        payload.pop("unavailable", None)
        await self._dispatch("GUILD_CREATE", payload)
        return guild

    # ================================================================== interactions

    async def invoke(
        self,
        command: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: UserLike | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        member_permissions: int | discord.Permissions | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Send a slash command (INTERACTION_CREATE type 2) as ``user`` typed it.

        ``command`` may name a subcommand: ``"config set"``. ``options`` maps option names to
        Python values (str, int, float, bool, FakeUser/FakeMember, FakeChannel, FakeRole);
        they are typed from the schema the client synced. Defaults: the first guild, its first
        channel, its first human member. ``member_permissions`` overrides the permissions the
        member has in the channel (e.g. to simulate a server's override of a command's
        ``default_member_permissions``, which the fake does not enforce).
        """
        self._require_session()
        guild = guild or self._default_guild()
        channel = channel or next(iter(guild.channels.values()))
        member = self._resolve_member(guild, user)
        names = command.split()
        schema, is_guild_command = self._find_command(names[0], guild)
        if schema is None and self.strict_commands:
            raise LookupError(
                f"/{names[0]} was never synced to the fake (await bot.tree.sync() first, "
                "or FakeDiscord(strict_commands=False))"
            )
        values = dict(options or {})
        builder = OptionBuilder(guild, self.users, self.bot_user)
        opts = builder.build(schema.get("options", []) if schema else None, names[1:], values)
        resolved = builder.resolved
        data: dict[str, Any] = {
            "id": schema["id"] if schema else str(snowflake()),
            "name": names[0],
            "type": 1,
            "options": opts,
        }
        if resolved:
            data["resolved"] = resolved
        if is_guild_command:
            data["guild_id"] = str(guild.id)
        return await self._send_interaction(
            2, data, member, guild, channel, command, values, member_permissions, locale
        )

    async def click(
        self,
        message: FakeMessage,
        custom_id: str,
        *,
        user: UserLike | None = None,
        component_type: int = 2,
        values: list[str] | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Press a button (or pick ``values`` in a select) on ``message``: interaction type 3.

        As in Discord's client, only a component the message shows can be used.
        """
        shown = {c.get("custom_id") for c in _walk_components(message.components)}
        if custom_id not in shown:
            raise LookupError(f"message {message.id} has no component {custom_id!r}: {shown}")
        guild = self.guilds[message.guild_id or 0]
        # A message in a thread or forum post: the interaction comes from that thread.
        channel = guild.channels.get(message.channel_id) or guild.threads[message.channel_id]
        member = self._resolve_member(guild, user)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        return await self._send_interaction(
            3, data, member, guild, channel, custom_id, {}, None, locale, message=message
        )

    async def submit_modal(
        self,
        opened: FakeInteraction,
        values: Mapping[str, str] | None = None,
        *,
        user: UserLike | None = None,
        locale: str = "en-US",
    ) -> FakeInteraction:
        """Submit the modal that ``opened`` answered with (callback type 9): interaction type 5.

        ``values`` maps text inputs' custom_ids to what the user typed; an input left out
        keeps its prefilled value. Discord's client rules apply: a required input cannot be
        empty and lengths must fit (ValueError otherwise). The submission carries the message
        of the component that opened the modal, as Discord sends it.
        """
        modal = opened.modal
        if modal is None:
            raise LookupError(f"interaction {opened.name!r} did not answer with a modal")
        values = dict(values or {})
        inputs = {c["custom_id"]: c for c in _walk_components(modal.get("components", []))}
        unknown = set(values) - set(inputs)
        if unknown:
            raise LookupError(f"the modal has no text input {sorted(unknown)}")
        for custom_id, spec in inputs.items():
            value = values.get(custom_id, spec.get("value") or "")
            if spec.get("required", True) and not value:
                raise ValueError(f"text input {custom_id!r} is required")
            low, high = spec.get("min_length", 0), spec.get("max_length", 4000)
            if value and not low <= len(value) <= high:
                raise ValueError(f"text input {custom_id!r}: {len(value)} characters don't fit")
            values[custom_id] = value

        def submitted(component: dict[str, Any]) -> dict[str, Any]:
            if component["type"] == 1:
                return {"type": 1, "components": [submitted(c) for c in component["components"]]}
            if component["type"] == 18:
                return {"type": 18, "component": submitted(component["component"])}
            custom_id = component["custom_id"]
            return {"type": component["type"], "custom_id": custom_id, "value": values[custom_id]}

        data = {
            "custom_id": modal["custom_id"],
            "components": [submitted(c) for c in modal.get("components", [])],
        }
        guild, channel = opened.guild, opened.channel
        member = self._resolve_member(guild, user or opened.user)
        return await self._send_interaction(
            5,
            data,
            member,
            guild,
            channel,
            modal["custom_id"],
            values,
            None,
            locale,
            message=opened.source_message,
        )

    # ================================================================== messages and reactions

    async def user_message(
        self,
        channel: FakeChannel,
        user: UserLike,
        content: str,
        *,
        reply_to: FakeMessage | None = None,
        msg_type: int | None = None,
    ) -> FakeMessage:
        """A member posts ``content`` in ``channel`` or a thread (MESSAGE_CREATE, if the intent
        allows), replying to ``reply_to`` when given; ``msg_type`` makes it a system message
        (e.g. 7, a member joined). Without the Message Content intent the bot receives the
        text only when it is mentioned, as on Discord."""
        guild = self.guilds[channel.guild_id]
        member = self._resolve_member(guild, user)
        if channel.type == FakeChannel.FORUM:
            raise ValueError("a forum takes posts, not messages: use fake.forum_post()")
        reference = None
        if reply_to is not None:
            reference = {
                "message_id": str(reply_to.id),
                "channel_id": str(reply_to.channel_id),
                "guild_id": str(guild.id),
            }
        body = {"content": content, "message_reference": reference}
        msg_type = msg_type if msg_type is not None else MESSAGE_REPLY if reply_to else 0
        msg = self._add_message(
            guild, channel, member.user, body, source="create", notifies=True, msg_type=msg_type
        )
        await self._dispatch_message("MESSAGE_CREATE", msg, guild)
        return msg

    async def forum_post(
        self,
        forum: FakeChannel,
        user: UserLike,
        title: str,
        content: str,
        *,
        tags: Iterable[str] = (),
    ) -> tuple[FakeChannel, FakeMessage]:
        """A member opens a post in ``forum``: a thread called ``title`` (THREAD_CREATE), then its
        starter message, which has the thread's id, with ``content`` (MESSAGE_CREATE)."""
        if forum.type != FakeChannel.FORUM:
            raise ValueError(f"{forum.name} is not a forum")
        guild = self.guilds[forum.guild_id]
        member = self._resolve_member(guild, user)
        post = self._add_thread(
            guild, forum, title, owner_id=member.id, applied_tags=[forum.tag(t) for t in tags]
        )
        await self._dispatch_thread_create(post)
        body = {"content": content}
        msg = self._add_message(
            guild, post, member.user, body, source="create", notifies=True, msg_id=post.id
        )
        await self._dispatch_message("MESSAGE_CREATE", msg, guild)
        return post, msg

    async def tag_post(self, post: FakeChannel, user: UserLike, *tags: str) -> None:
        """``user`` (the poster, who may tag their own post) sets the post's tags to ``tags``,
        the forum's own by name: THREAD_UPDATE."""
        guild = self.guilds[post.guild_id]
        member = self._resolve_member(guild, user)
        if member.id != post.owner_id:
            raise ValueError("only the poster tags a post here (others need Manage Threads)")
        forum = guild.channels[post.parent_id or 0]
        post.applied_tags = [forum.tag(t) for t in tags]
        await self._dispatch_intent(INTENT_GUILDS, "THREAD_UPDATE", post.to_payload())

    async def add_reaction(
        self,
        channel: FakeChannel | None,
        message: FakeMessage | int,
        user: UserLike,
        emoji: str,
        *,
        with_message_author: bool = True,
    ) -> None:
        """``user`` reacts with ``emoji`` ("👍" or "name:id"): MESSAGE_REACTION_ADD.

        ``with_message_author=False`` leaves out the optional ``message_author_id``, as Discord
        may.
        """
        msg = self._message_for_test(channel, message)
        member = self._resolve_member(self.guilds[msg.guild_id or 0], user)
        await self._react(msg, member, emoji, add=True, with_message_author=with_message_author)

    async def remove_reaction(
        self,
        channel: FakeChannel | None,
        message: FakeMessage | int,
        user: UserLike,
        emoji: str,
    ) -> None:
        """``user`` removes their ``emoji`` reaction: MESSAGE_REACTION_REMOVE."""
        msg = self._message_for_test(channel, message)
        member = self._resolve_member(self.guilds[msg.guild_id or 0], user)
        await self._react(msg, member, emoji, add=False)

    # ================================================================== helpers

    def _default_guild(self) -> FakeGuild:
        if not self.guilds:
            raise LookupError("the fake has no guild: call fake.add_guild() first")
        return next(iter(self.guilds.values()))

    def _resolve_member(self, guild: FakeGuild, user: UserLike | None) -> FakeMember:
        """``user``'s membership of ``guild``; by default the first human who is not the owner."""
        if user is None:
            humans = [
                m for m in guild.members.values() if not m.user.bot and m.id != guild.owner_id
            ]
            if not humans:
                raise LookupError(f"no member to act as in {guild.name}: fake.add_member(...)")
            return humans[0]
        member = guild.member(user)
        if member is None:
            raise LookupError(f"user {user_id(user)} is not a member of {guild.name}")
        return member

    def _message_for_test(
        self, channel: FakeChannel | None, message: FakeMessage | int
    ) -> FakeMessage:
        msg = message if isinstance(message, FakeMessage) else self.messages[message]
        if channel is not None and msg.channel_id != channel.id:
            raise LookupError(f"message {msg.id} is not in channel {channel.name}")
        return msg

    def _find_command(self, name: str, guild: FakeGuild) -> tuple[dict[str, Any] | None, bool]:
        """The synced chat-input command called ``name`` (guild commands first), and whether
        it is a guild command."""
        for cmd in self.guild_commands.get(guild.id, []):
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd, True
        for cmd in self.global_commands:
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd, False
        return None, False

    async def _send_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        member: FakeMember,
        guild: FakeGuild,
        channel: FakeChannel,
        name: str,
        options: dict[str, Any],
        member_permissions: int | discord.Permissions | None,
        locale: str,
        *,
        message: FakeMessage | None = None,
    ) -> FakeInteraction:
        """Dispatch INTERACTION_CREATE and register the interaction (its id and token)."""
        session = self._require_session()
        perms = as_permissions(member_permissions, guild.permissions_in(channel, member))
        interaction_id = snowflake()
        token = f"aW50ZXJhY3Rpb24{secrets.token_urlsafe(48)}"
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "token": token,
            "version": 1,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
            "guild_locale": guild.locale,
            "channel_id": str(channel.id),
            "channel": {**channel.to_payload(), "permissions": str(perms)},
            "member": member.to_payload(permissions=perms),
            "app_permissions": str(guild.permissions_in(channel, self.bot_user)),
            "locale": locale,
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if message is not None:
            payload["message"] = message.to_payload(me_id=self.bot_user.id)
        inter = FakeInteraction(
            fake=self,
            id=interaction_id,
            token=token,
            type=kind,
            name=name,
            options=options,
            user=member.user,
            guild=guild,
            channel=channel,
            payload=payload,
            source_message=message,
        )
        self.interactions.append(inter)
        self._interactions_by_id[interaction_id] = inter
        self._interactions_by_token[token] = inter
        inter.sent_at = inter.last_activity = self.now()
        await self._dispatch("INTERACTION_CREATE", payload, session)
        return inter
