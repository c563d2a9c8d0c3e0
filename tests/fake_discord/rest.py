"""The REST API's route handlers: login, users, guilds, channels, messages, reactions, threads,
application commands, interaction callbacks and their webhooks.

Each handler takes a ``Call`` and returns ``(status, payload)`` or raises ``ApiError``; the
route table (``_add_routes``) says which route each serves. Recording, auth and rate limits
are ``routing.py``'s; the events a change causes go out through ``gateway.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import discord
from aiohttp import web

from . import rules
from .gateway import INTENT_GUILDS, Gateway
from .interactions import (
    AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    MODAL,
    UPDATE_MESSAGE,
    FakeInteraction,
)
from .models import FakeChannel, FakeGuild, FakeMessage, P, snowflake
from .routing import Call, Handler, Routing
from .world import SENDABLE_FLAGS, SENDABLE_RESPONSE_FLAGS

_T = TypeVar("_T")

#: The callback types Discord accepts for each interaction type.
_CALLBACKS = {
    2: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    3: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE, MODAL},
    4: {AUTOCOMPLETE_RESULT},
    5: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE},
}


def _by_id(table: Mapping[int, _T], raw_id: str) -> _T | None:
    """``table``'s entry for an id taken from a path (None when it is not a number)."""
    return table.get(int(raw_id)) if raw_id.isdigit() else None


def _is_true(value: str | None) -> bool:
    """A boolean query parameter (``?wait=true``, ``?with_response=1``)."""
    return value in ("1", "true", "True")


class Rest(Routing, Gateway):
    """Discord's REST API, route by route, with Discord's checks and error codes."""

    ack_deadline: float  # FakeDiscord's: seconds to acknowledge an interaction
    token_lifetime: float  # FakeDiscord's: seconds an interaction token stays valid

    def _add_routes(self, app: web.Application) -> None:
        channel = "/channels/{channel_id}"
        message = channel + "/messages/{message_id}"
        reaction = message + "/reactions/{emoji}/@me"
        cmds = "/applications/{application_id}"
        hook = "/webhooks/{application_id}/{token}"
        # (method, route template, handler, needs a bot token)
        routes: list[tuple[str, str, Handler, bool]] = [
            ("GET", "/users/@me", self._get_me, True),
            ("GET", "/oauth2/applications/@me", self._get_application, True),
            ("GET", "/applications/@me", self._get_application, True),
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("GET", "/users/{user_id}", self._get_user, True),
            ("GET", "/users/@me/guilds", self._get_my_guilds, True),
            ("DELETE", "/users/@me/guilds/{guild_id}", self._leave_guild, True),
            ("GET", "/guilds/{guild_id}", self._get_guild, True),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels, True),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member, True),
            ("GET", channel, self._get_channel, True),
            ("PATCH", channel, self._patch_thread, True),
            ("POST", channel + "/typing", self._post_typing, True),
            ("POST", channel + "/threads", self._start_forum_post, True),
            ("GET", channel + "/messages", self._get_channel_messages, True),
            ("POST", channel + "/messages", self._post_channel_message, True),
            ("GET", message, self._get_channel_message, True),
            ("POST", message + "/threads", self._start_thread_from_message, True),
            ("PATCH", message, self._patch_channel_message, True),
            ("DELETE", message, self._delete_channel_message, True),
            ("PUT", reaction, self._put_reaction, True),
            ("DELETE", reaction, self._delete_reaction, True),
            ("GET", cmds + "/commands", self._get_commands, True),
            ("PUT", cmds + "/commands", self._put_commands, True),
            ("POST", cmds + "/commands", self._post_command, True),
            ("GET", cmds + "/guilds/{guild_id}/commands", self._get_commands, True),
            ("PUT", cmds + "/guilds/{guild_id}/commands", self._put_commands, True),
            ("POST", cmds + "/guilds/{guild_id}/commands", self._post_command, True),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback, False),
            ("POST", hook, self._post_followup, False),
            ("GET", hook + "/messages/{message_id}", self._get_webhook_message, False),
            ("PATCH", hook + "/messages/{message_id}", self._patch_webhook_message, False),
            ("DELETE", hook + "/messages/{message_id}", self._delete_webhook_message, False),
        ]
        app.router.add_get("/gateway", self._gateway)
        self._serve(app, routes)

    # ================================================================== lookups and checks

    def _find_channel(self, channel_id: str) -> tuple[FakeGuild, FakeChannel]:
        cid = int(channel_id) if channel_id.isdigit() else -1
        for guild in self.guilds.values():
            if cid in guild.channels:
                return guild, guild.channels[cid]
            if cid in guild.threads:
                return guild, guild.threads[cid]
        raise rules.unknown_channel()

    def _find_guild(self, guild_id: str) -> FakeGuild:
        guild = _by_id(self.guilds, guild_id)
        if guild is None:
            raise rules.unknown_guild()
        return guild

    def _channel_message(self, call: Call) -> tuple[FakeGuild, FakeChannel, FakeMessage]:
        guild, channel = self._find_channel(call.match["channel_id"])
        msg = _by_id(self.messages, call.match["message_id"])
        if msg is None or msg.channel_id != channel.id or msg.deleted or msg.ephemeral:
            self._require(guild, channel)
            raise rules.unknown_message()
        return guild, channel, msg

    def _require(
        self, guild: FakeGuild, channel: FakeChannel, *needed: discord.flags.flag_value
    ) -> int:
        """The bot's permissions in ``channel``; 403 unless it sees it and has ``needed``."""
        perms = guild.permissions_in(channel, self.bot_user)
        if not perms & P.view_channel.flag:
            raise rules.missing_access()
        for flag in needed:
            if not perms & flag.flag:
                raise rules.missing_permissions()
        return perms

    # ================================================================== login, users, guilds

    async def _get_me(self, call: Call) -> tuple[int, Any]:
        return 200, self._me_payload()

    async def _get_application(self, call: Call) -> tuple[int, Any]:
        return 200, {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "description": "",
            "icon": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": self.owner.to_payload(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "summary": "",
            "rpc_origins": [],
            "bot": self.bot_user.to_payload(),
            "tags": [],
        }

    async def _get_gateway(self, call: Call) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, call: Call) -> tuple[int, Any]:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}

    async def _get_user(self, call: Call) -> tuple[int, Any]:
        user = _by_id(self.users, call.match["user_id"])
        if user is None:
            raise rules.unknown_user()
        return 200, user.to_payload()

    async def _get_guild(self, call: Call) -> tuple[int, Any]:
        guild = self._find_guild(call.match["guild_id"])
        payload = guild.to_payload()
        for key in ("channels", "members", "threads", "voice_states", "presences"):
            payload.pop(key)
        return 200, payload

    async def _get_my_guilds(self, call: Call) -> tuple[int, Any]:
        """The bot's guilds as partial guilds, paged by id like Discord (after/before/limit)."""
        query = call.request.query
        after, before = int(query.get("after", 0)), int(query.get("before", 2**64))
        found = sorted(g for g in self.guilds if after < g < before)[: int(query.get("limit", 200))]
        return 200, [
            {"id": str(gid), "name": self.guilds[gid].name, "icon": None, "owner": False}
            for gid in found
        ]

    async def _leave_guild(self, call: Call) -> tuple[int, Any]:
        """The bot leaves: the guild is gone from its world (kept in ``left_guilds``)."""
        guild = self._find_guild(call.match["guild_id"])
        del self.guilds[guild.id]
        self.left_guilds.append(guild)
        await self._dispatch("GUILD_DELETE", {"id": str(guild.id)})
        return 204, None

    async def _get_guild_channels(self, call: Call) -> tuple[int, Any]:
        guild = self._find_guild(call.match["guild_id"])
        return 200, [c.to_payload() for c in guild.channels.values()]

    async def _get_member(self, call: Call) -> tuple[int, Any]:
        guild = self._find_guild(call.match["guild_id"])
        member = _by_id(guild.members, call.match["user_id"])
        if member is None:
            raise rules.unknown_member()
        return 200, member.to_payload()

    # ================================================================== channels

    async def _get_channel(self, call: Call) -> tuple[int, Any]:
        guild, channel = self._find_channel(call.match["channel_id"])
        self._require(guild, channel)
        return 200, channel.to_payload()

    async def _post_typing(self, call: Call) -> tuple[int, Any]:
        guild, channel = self._find_channel(call.match["channel_id"])
        self._require(guild, channel, P.send_messages)
        return 204, None

    async def _get_channel_messages(self, call: Call) -> tuple[int, Any]:
        guild, channel = self._find_channel(call.match["channel_id"])
        self._require(guild, channel, P.read_message_history)
        limit = int(call.request.query.get("limit", 50))
        live = [m for m in self.channel_messages(channel) if not m.deleted and not m.ephemeral]
        return 200, [self._payload(m) for m in reversed(live)][:limit]

    async def _post_channel_message(self, call: Call) -> tuple[int, Any]:
        guild, channel = self._find_channel(call.match["channel_id"])
        if channel.is_thread:
            self._require(guild, channel, P.send_messages_in_threads)
            if channel.locked:
                raise rules.thread_locked()
            channel.archived = False  # a message unarchives a thread that is not locked
        elif channel.type == FakeChannel.FORUM:
            raise rules.wrong_channel_type()  # a forum holds posts (threads), not messages
        else:
            self._require(guild, channel, P.send_messages)
        body = call.json
        rules.validate_message(body)
        flags = int(body.get("flags") or 0) & SENDABLE_FLAGS
        msg = self._new_message(guild, channel, body, files=len(call.rec.files), flags=flags)
        await self._dispatch_message("MESSAGE_CREATE", msg, guild)
        return 200, self._payload(msg)

    async def _patch_thread(self, call: Call) -> tuple[int, Any]:
        """Edit a thread: only ``applied_tags`` of a forum post, by its owner or with Manage
        Threads, tags from the forum's own (other channel edits are outside the fake)."""
        guild, thread = self._find_channel(call.match["channel_id"])
        body = dict(call.json or {})
        if not thread.is_thread or set(body) - {"applied_tags"}:
            raise NotImplementedError(f"PATCH /channels with {sorted(body)} on type {thread.type}")
        forum = guild.channels[thread.parent_id or 0]
        if forum.type != FakeChannel.FORUM:
            raise rules.wrong_channel_type()
        if thread.owner_id == self.bot_user.id:
            self._require(guild, thread)
        else:
            self._require(guild, thread, P.manage_threads)
        offered = {int(t["id"]) for t in forum.available_tags}
        tags = [int(t) for t in body["applied_tags"]]
        if not set(tags) <= offered or len(tags) > 5:
            errors = rules.FormErrors()
            errors.add(["applied_tags"], "BASE_TYPE_CHOICES", "Value must be one of the tags.")
            errors.raise_if_any()
        thread.applied_tags = tags
        await self._dispatch_intent(INTENT_GUILDS, "THREAD_UPDATE", thread.to_payload())
        return 200, thread.to_payload()

    async def _start_thread_from_message(self, call: Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        self._require(guild, channel, P.create_public_threads)
        if channel.is_thread or channel.type != 0:
            raise rules.wrong_channel_type()
        if msg.id in guild.threads:
            raise rules.thread_already_created()
        name = str((call.json or {}).get("name") or "")
        if not 1 <= len(name) <= 100:
            errors = rules.FormErrors()
            errors.add(["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
            errors.raise_if_any()
        thread = self._add_thread(guild, channel, name, owner_id=self.bot_user.id, thread_id=msg.id)
        await self._dispatch_thread_create(thread)
        return 201, thread.to_payload()

    async def _start_forum_post(self, call: Call) -> tuple[int, Any]:
        """The bot opens a post in a forum (Send Messages there is "Create Posts"): the thread,
        then its starter message with the thread's id; the reply is the thread with ``message``."""
        guild, forum = self._find_channel(call.match["channel_id"])
        if forum.type != FakeChannel.FORUM:
            raise NotImplementedError("threads without a message outside forums")
        self._require(guild, forum, P.send_messages)
        body = dict(call.json or {})
        name = str(body.get("name") or "")
        errors = rules.FormErrors()
        if not 1 <= len(name) <= 100:
            errors.add(["name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        tags = [int(t) for t in body.get("applied_tags") or []]
        if not set(tags) <= {int(t["id"]) for t in forum.available_tags}:
            errors.add(["applied_tags"], "BASE_TYPE_CHOICES", "Value must be one of the tags.")
        errors.raise_if_any()
        message = dict(body.get("message") or {})
        rules.validate_message(message)
        rules.require_body_not_empty(message, len(call.rec.files))
        post = self._add_thread(guild, forum, name, owner_id=self.bot_user.id, applied_tags=tags)
        await self._dispatch_thread_create(post)
        msg = self._add_message(
            guild, post, self.bot_user, message, source="create", notifies=True, msg_id=post.id
        )
        await self._dispatch_message("MESSAGE_CREATE", msg, guild)
        return 201, {**post.to_payload(), "message": self._payload(msg)}

    # ================================================================== messages and reactions

    async def _get_channel_message(self, call: Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        self._require(guild, channel, P.read_message_history)
        return 200, self._payload(msg)

    async def _patch_channel_message(self, call: Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        self._require(guild, channel)
        if msg.author is not self.bot_user:
            raise rules.cannot_edit_others()
        rules.validate_message(call.json)
        self._apply(
            msg, call.json, guild, channel, source="edit", notifies=False, files=len(call.rec.files)
        )
        await self._dispatch_message("MESSAGE_UPDATE", msg, guild)
        return 200, self._payload(msg)

    async def _delete_channel_message(self, call: Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        if msg.author is not self.bot_user:
            self._require(guild, channel, P.manage_messages)
        msg.deleted_at = self.now()
        await self._dispatch_message("MESSAGE_DELETE", msg, guild)
        return 204, None

    async def _put_reaction(self, call: Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        emoji = call.match["emoji"]
        if not emoji:
            raise rules.unknown_emoji()
        users = msg.reactions.get(emoji, [])
        needed = [P.read_message_history] + ([] if users else [P.add_reactions])
        self._require(guild, channel, *needed)
        await self._react(msg, self.bot_member(guild), emoji, add=True)
        return 204, None

    async def _delete_reaction(self, call: Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        self._require(guild, channel, P.read_message_history)
        await self._react(msg, self.bot_member(guild), call.match["emoji"], add=False)
        return 204, None

    # ================================================================== application commands

    def _commands_for(self, call: Call) -> tuple[list[dict[str, Any]], FakeGuild | None]:
        if call.match["application_id"] != str(self.application_id):
            raise rules.missing_access()
        if "guild_id" not in call.match:
            return self.global_commands, None
        guild = _by_id(self.guilds, call.match["guild_id"])
        if guild is None:
            raise rules.missing_access()
        return self.guild_commands.setdefault(guild.id, []), guild

    def _normalise_command(
        self,
        raw: dict[str, Any],
        index: int,
        existing: list[dict[str, Any]],
        guild: FakeGuild | None,
    ) -> dict[str, Any]:
        errors = rules.FormErrors()
        name, kind = raw.get("name") or "", raw.get("type", 1)
        if not 1 <= len(name) <= 32 or (kind == 1 and (name != name.lower() or " " in name)):
            errors.add(
                [index, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        if kind == 1 and not 1 <= len(raw.get("description") or "") <= 100:
            errors.add(
                [index, "description"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if len(raw.get("options") or []) > 25:
            errors.too_long([index, "options"], 25)
        errors.raise_if_any()
        old = next((c for c in existing if c["name"] == name and c.get("type", 1) == kind), None)
        perms = raw.get("default_member_permissions")
        cmd = {
            "type": 1,
            "description": "",
            "options": [],
            "dm_permission": True,
            "nsfw": False,
            "name_localizations": None,
            "description_localizations": None,
            **raw,
            "id": old["id"] if old else str(snowflake()),
            "application_id": str(self.application_id),
            "version": str(snowflake()),
            "default_member_permissions": None if perms is None else str(perms),
        }
        if guild is not None:
            cmd["guild_id"] = str(guild.id)
        return cmd

    async def _get_commands(self, call: Call) -> tuple[int, Any]:
        commands, _ = self._commands_for(call)
        return 200, commands

    async def _put_commands(self, call: Call) -> tuple[int, Any]:
        commands, guild = self._commands_for(call)
        body = call.body if isinstance(call.body, list) else []
        if len(body) > 100:
            errors = rules.FormErrors()
            errors.too_long([], 100)
            errors.raise_if_any()
        new = [self._normalise_command(raw, i, commands, guild) for i, raw in enumerate(body)]
        commands[:] = new
        return 200, new

    async def _post_command(self, call: Call) -> tuple[int, Any]:
        commands, guild = self._commands_for(call)
        cmd = self._normalise_command(call.json, 0, commands, guild)
        existed = any(c["id"] == cmd["id"] for c in commands)
        commands[:] = [c for c in commands if c["id"] != cmd["id"]] + [cmd]
        return (200 if existed else 201), cmd

    # ================================================================== interactions

    async def _callback(self, call: Call) -> tuple[int, Any]:
        inter = _by_id(self._interactions_by_id, call.match["interaction_id"])
        if inter is None:
            raise rules.unknown_interaction()
        call.rec.interaction = inter
        if call.match["token"] != inter.token:
            raise rules.invalid_webhook_token()
        if inter.acked:
            raise rules.already_acknowledged()
        if self.now() - inter.sent_at > self.ack_deadline:
            raise rules.unknown_interaction()
        body = call.json
        kind = body.get("type")
        data = body.get("data") or {}
        allowed = _CALLBACKS[inter.type]
        if kind not in allowed:
            errors = rules.FormErrors()
            errors.add(["type"], "BASE_TYPE_CHOICES", f"Value must be one of {sorted(allowed)}.")
            errors.raise_if_any()
        guild, channel = inter.guild, inter.channel
        flags = int(data.get("flags") or 0)
        msg_type = 20 if inter.type == 2 else 0  # 20: a slash command's reply
        resource: dict[str, Any] = {"type": kind}
        if kind == CHANNEL_MESSAGE:
            rules.validate_message(data, prefix=["data"])
            inter.original = self._new_message(
                guild,
                channel,
                data,
                files=len(call.rec.files),
                flags=flags & SENDABLE_RESPONSE_FLAGS,
                interaction=inter,
                msg_type=msg_type,
            )
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            inter.original = self._new_message(
                guild,
                channel,
                {},
                files=0,
                flags=(flags & FakeMessage.EPHEMERAL) | FakeMessage.LOADING,
                interaction=inter,
                msg_type=msg_type,
                source="loading",
            )
        elif kind in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE):
            inter.original = inter.source_message
            if kind == UPDATE_MESSAGE and inter.original is not None:
                rules.validate_message(data, prefix=["data"])
                self._apply(inter.original, data, guild, channel, source="edit", notifies=False)
        elif kind == MODAL:
            inter.modal = data
        elif kind == AUTOCOMPLETE_RESULT:
            inter.choices = data.get("choices", [])
        inter.response_type = kind
        inter.acked_at = self.now()
        msg = inter.original
        if msg is not None:
            resource["message"] = self._payload(msg, inter)
            if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
                await self._dispatch_message("MESSAGE_CREATE", msg, guild)
            elif kind == UPDATE_MESSAGE:
                await self._dispatch_message("MESSAGE_UPDATE", msg, guild)
        if not _is_true(call.request.query.get("with_response")):
            return 204, None
        return 200, {
            "interaction": {
                "id": str(inter.id),
                "type": inter.type,
                "response_message_id": str(msg.id) if msg else None,
                "response_message_loading": bool(msg and msg.loading),
                "response_message_ephemeral": bool(msg and msg.ephemeral),
            },
            "resource": resource,
        }

    def _webhook_interaction(self, call: Call) -> FakeInteraction:
        if call.match["application_id"] != str(self.application_id):
            raise rules.unknown_webhook()
        inter = self._interactions_by_token.get(call.match["token"])
        if inter is None:
            raise rules.invalid_webhook_token()
        call.rec.interaction = inter
        if self.now() - inter.sent_at > self.token_lifetime:
            raise rules.invalid_webhook_token()
        if not inter.acked:
            raise rules.unknown_webhook()
        return inter

    def _webhook_message(self, call: Call, inter: FakeInteraction) -> FakeMessage:
        mid = call.match["message_id"]
        if mid == "@original":
            msg = inter.original
        else:
            candidates = [inter.original, *inter.followups]
            msg = next((m for m in candidates if m is not None and str(m.id) == mid), None)
        if msg is None or msg.deleted:
            raise rules.unknown_message()
        return msg

    async def _post_followup(self, call: Call) -> tuple[int, Any]:
        inter = self._webhook_interaction(call)
        body = call.json
        rules.validate_message(body)
        original = inter.original
        files = len(call.rec.files)
        if (
            inter.response_type == DEFERRED_CHANNEL_MESSAGE
            and original is not None
            and original.loading
            and not original.deleted
        ):
            # Discord: the first followup after a "thinking" defer replaces the placeholder.
            rules.require_body_not_empty(body, files)
            self._apply(
                original,
                body,
                inter.guild,
                inter.channel,
                source="followup",
                notifies=True,
                files=files,
            )
            msg = original
            await self._dispatch_message("MESSAGE_UPDATE", msg, inter.guild)
        else:
            flags = int(body.get("flags") or 0) & SENDABLE_RESPONSE_FLAGS
            msg = self._new_message(
                inter.guild, inter.channel, body, files=files, flags=flags, interaction=inter
            )
            await self._dispatch_message("MESSAGE_CREATE", msg, inter.guild)
        inter.followups.append(msg)
        if _is_true(call.request.query.get("wait")):
            return 200, self._payload(msg, inter)
        return 204, None

    async def _get_webhook_message(self, call: Call) -> tuple[int, Any]:
        inter = self._webhook_interaction(call)
        return 200, self._payload(self._webhook_message(call, inter), inter)

    async def _patch_webhook_message(self, call: Call) -> tuple[int, Any]:
        inter = self._webhook_interaction(call)
        msg = self._webhook_message(call, inter)
        rules.validate_message(call.json)
        was_loading = msg.loading
        body = {k: v for k, v in call.json.items() if k != "flags"}  # ephemeral is fixed
        self._apply(
            msg,
            body,
            inter.guild,
            inter.channel,
            source="edit",
            notifies=was_loading,
            files=len(call.rec.files),
        )
        await self._dispatch_message("MESSAGE_UPDATE", msg, inter.guild)
        return 200, self._payload(msg, inter)

    async def _delete_webhook_message(self, call: Call) -> tuple[int, Any]:
        inter = self._webhook_interaction(call)
        msg = self._webhook_message(call, inter)
        msg.deleted_at = self.now()
        await self._dispatch_message("MESSAGE_DELETE", msg, inter.guild)
        return 204, None
