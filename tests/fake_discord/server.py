"""``FakeDiscord``: a loopback Discord (REST + gateway) for the unmodified discord.py client.

See the package docstring (``tests/fake_discord/__init__.py``) for a guided tour.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import WSMsgType, web

from . import rules
from .interactions import (
    AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    MODAL,
    UPDATE_MESSAGE,
    FakeInteraction,
)
from .models import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    GatewayFrame,
    MessageVersion,
    P,
    RecordedRequest,
    UserLike,
    as_permissions,
    emoji_payload,
    iso_now,
    snowflake,
    user_id,
)
from .options import OptionBuilder
from .rules import ApiError

API_PREFIX = "/api/v10"

# Gateway intents the fake honours when deciding what to dispatch.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_MESSAGE_CONTENT = 1 << 15  # privileged
MESSAGE_REPLY = 19  # the message type of a reply

_active: FakeDiscord | None = None  # Route.BASE is global: one fake at a time.


@dataclass
class RateLimit:
    """A fixed-window limit: ``limit`` requests per ``per`` seconds per route and major id."""

    limit: int = 50
    per: float = 1.0


@dataclass
class _Window:
    start: float
    used: int = 0


@dataclass
class _Injection:
    pattern: str
    count: int
    retry_after: float
    is_global: bool


@dataclass
class _Call:
    """One REST request as a handler sees it."""

    request: web.Request
    match: Mapping[str, str]
    body: Any
    rec: RecordedRequest

    @property
    def json(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


@dataclass
class _Session:
    """One gateway session (survives reconnects through RESUME)."""

    id: str
    intents: int
    shard: list[int]
    seq: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None


Handler = Callable[[_Call], Awaitable[tuple[int, Any]]]
WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _walk_components(components: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component with a custom_id, inside action rows and labels too."""
    for component in components:
        if component.get("custom_id") is not None:
            yield component
        yield from _walk_components(component.get("components") or [])
        if isinstance(component.get("component"), dict):
            yield from _walk_components([component["component"]])


def _route_matches(pattern: str, method: str, path: str, template: str) -> bool:
    """``"PATCH /webhooks/*/messages/@original"``: fnmatch on the path or the route template."""
    want_method, sep, rest = pattern.partition(" ")
    if not sep:
        want_method, rest = "*", pattern
    if not fnmatchcase(method, want_method.upper()):
        return False
    return fnmatchcase(path, rest) or fnmatchcase(template, rest)


class FakeDiscord:
    """A loopback Discord that a real discord.py client logs in and connects to.

    Parameters mirror Discord's rules and can be shortened for tests: ``ack_deadline`` (3 s to
    acknowledge an interaction), ``token_lifetime`` (15 min of followups/edits), ``rate_limit``
    (the default bucket). ``token``: when set, only that bot token is accepted.
    ``strict_commands``: ``invoke`` refuses commands the client never synced (as Discord would).
    """

    def __init__(
        self,
        *,
        bot_name: str = "DocsBot",
        ack_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
        rate_limit: RateLimit | None = None,
        token: str | None = None,
        strict_commands: bool = True,
        heartbeat_interval_ms: int = 41_250,
    ) -> None:
        self.ack_deadline = ack_deadline
        self.token_lifetime = token_lifetime
        self.default_rate_limit = rate_limit or RateLimit()
        self.strict_commands = strict_commands
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._token = token

        self.application_id = snowflake()
        self.bot_user = FakeUser(id=self.application_id, username=bot_name, bot=True)
        self.owner = FakeUser(id=snowflake(), username="bot-owner")
        self.users: dict[int, FakeUser] = {
            self.bot_user.id: self.bot_user,
            self.owner.id: self.owner,
        }
        self.guilds: dict[int, FakeGuild] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}

        # What the client did.
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []
        self.gateway_frames: list[GatewayFrame] = []
        self.interactions: list[FakeInteraction] = []
        self.identify_count = 0
        self.resume_count = 0
        self.gateway_connections = 0

        self._interactions_by_id: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._rate_limits: list[tuple[str, RateLimit]] = []
        self._windows: dict[tuple[str, str], _Window] = {}
        self._injections: list[_Injection] = []
        self._session: _Session | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._t0 = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL] | None = None
        self.port = 0

    # ================================================================== lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Serve on 127.0.0.1 (random port) and point discord.py at it."""
        global _active
        if _active is not None:
            raise RuntimeError("another FakeDiscord is active (discord.py's URLs are global)")
        app = web.Application()
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        discord.http.Route.BASE = f"{self.base_url}{API_PREFIX}"
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        _active = self

    async def stop(self) -> None:
        """Close gateway sockets, stop serving and restore discord.py's URLs."""
        global _active
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._saved is not None:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            self._saved = None
        if _active is self:
            _active = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def now(self) -> float:
        """Seconds since this fake was created (the clock of every recorded time)."""
        return time.monotonic() - self._t0

    @contextlib.asynccontextmanager
    async def running(
        self, client: discord.Client, *, token: str = "fake.bot.token", timeout: float = 10.0
    ) -> AsyncIterator[discord.Client]:
        """Log ``client`` in, connect it, wait for ``on_ready``; close it cleanly on exit.

        Tip: build the client with ``guild_ready_timeout=0.1`` or on_ready waits 2 s after the
        last GUILD_CREATE (discord.py's default).
        """
        await client.login(token)
        task = asyncio.create_task(client.connect(reconnect=True), name="fake-discord-client")
        ready = asyncio.create_task(client.wait_until_ready())
        try:
            done, _ = await asyncio.wait(
                {task, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                raise RuntimeError("the client stopped before it was ready") from task.exception()
            if ready not in done:
                raise TimeoutError(f"the client was not ready after {timeout} s")
            yield client
        finally:
            ready.cancel()
            await client.close()
            try:
                await asyncio.wait_for(task, timeout=5)
            except (discord.ConnectionClosed, asyncio.CancelledError):
                pass

    # ================================================================== state set-up

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

    def bot_member(self, guild: FakeGuild) -> FakeMember:
        member = guild.member(self.bot_user)
        assert member is not None
        return member

    def bot_permissions(self, channel: FakeChannel) -> discord.Permissions:
        """The bot's effective permissions in ``channel``."""
        return discord.Permissions(
            self.guilds[channel.guild_id].permissions_in(channel, self.bot_user)
        )

    def set_rate_limit(self, pattern: str, limit: int, per: float) -> None:
        """Use ``limit`` requests per ``per`` s for routes matching ``pattern`` (see inject_429)."""
        self._rate_limits.insert(0, (pattern, RateLimit(limit, per)))

    def inject_429(
        self, pattern: str, count: int = 1, retry_after: float = 0.05, *, is_global: bool = False
    ) -> None:
        """Answer the next ``count`` requests matching ``pattern`` with a 429 (with ``Via``).

        ``pattern`` is fnmatch-style, optionally prefixed by a method, matched against the
        requested path or the route template (both without ``/api/v10``), e.g.
        ``"POST /channels/*/messages"`` or ``"PATCH /webhooks/{application_id}/*"``.
        """
        self._injections.append(_Injection(pattern, count, retry_after, is_global))

    # ================================================================== inspection

    def requests_to(self, pattern: str) -> list[RecordedRequest]:
        """Recorded requests matching ``pattern`` (same syntax as ``inject_429``)."""
        return [r for r in self.requests if _route_matches(pattern, r.method, r.path, r.route)]

    @property
    def errors(self) -> list[RecordedRequest]:
        """Every error the client received, except injected 429s."""
        return [r for r in self.requests if r.status >= 400 and not r.injected]

    def pings(self) -> list[tuple[FakeMessage, MessageVersion]]:
        """The bot's messages (and versions) that notified someone: @everyone/@here, users or
        roles. People's own messages (``user_message``) may mention whom they like."""
        return [
            (m, v)
            for m in self.messages.values()
            if m.author is self.bot_user
            for v in m.history
            if v.notifies and v.mentions
        ]

    def channel_messages(self, channel: FakeChannel) -> list[FakeMessage]:
        """Messages in ``channel`` (oldest first), deleted ones included (see ``.deleted``)."""
        return [m for m in self.messages.values() if m.channel_id == channel.id]

    def assert_clean(self, allow: Iterable[int] = (), *, allow_pings: bool = False) -> None:
        """Fail listing unknown routes, unexpected errors and pings.

        ``allow``: Discord error codes (e.g. 10062) or HTTP statuses (e.g. 429) a test expects.
        """
        allowed = set(allow)
        problems = [f"unknown route: {r.describe()}" for r in self.unknown_routes]
        problems += [
            f"error: {r.describe()}"
            for r in self.errors
            if not r.unknown and r.code not in allowed and r.status not in allowed
        ]
        if not allow_pings:
            problems += [
                f"ping: message {m.id} ({v.source}) notifies {v.mentions}: {v.content[:80]!r}"
                for m, v in self.pings()
            ]
        if problems:
            raise AssertionError("FakeDiscord saw problems:\n  " + "\n  ".join(problems))

    # ================================================================== waiting

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds.

        Re-checked after every request and gateway frame, and every 50 ms (for predicates on
        the client's own state).
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until a client identified and got READY plus every GUILD_CREATE.

        discord.py fires ``on_ready`` a little later (``guild_ready_timeout`` after the last
        GUILD_CREATE); use ``client.wait_until_ready()`` for that.
        """
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def wait_for_request(self, pattern: str, timeout: float = 10.0) -> RecordedRequest:
        """Wait for the first (already seen or future) request matching ``pattern``."""
        await self.wait_for(lambda: bool(self.requests_to(pattern)), timeout)
        return self.requests_to(pattern)[0]

    async def wait_quiet(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Wait until no request arrived for ``quiet`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            last = self.requests[-1].at if self.requests else 0.0
            idle = self.now() - last
            if idle >= quiet:
                return
            if loop.time() >= deadline:
                raise TimeoutError("the client never went quiet")
            await asyncio.sleep(quiet - idle + 0.001)

    # ================================================================== test-side actions

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
        channel = guild.channels[message.channel_id]
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
        msg = FakeMessage(
            id=snowflake(),
            channel_id=channel.id,
            guild_id=guild.id,
            author=member.user,
            created_at=self.now(),
            type=msg_type if msg_type is not None else MESSAGE_REPLY if reply_to else 0,
            message_reference=reference,
        )
        self._apply(msg, {"content": content}, guild, channel, source="create", notifies=True)
        self.messages[msg.id] = msg
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
        post = FakeChannel(
            id=snowflake(),
            guild_id=guild.id,
            name=title,
            type=FakeChannel.PUBLIC_THREAD,
            parent_id=forum.id,
            owner_id=member.id,
            applied_tags=[forum.tag(t) for t in tags],
        )
        guild.threads[post.id] = post
        await self._dispatch_intent(
            INTENT_GUILDS, "THREAD_CREATE", {**post.to_payload(), "newly_created": True}
        )
        msg = FakeMessage(
            id=post.id,
            channel_id=post.id,
            guild_id=guild.id,
            author=member.user,
            created_at=self.now(),
            type=0,
        )
        self._apply(msg, {"content": content}, guild, post, source="create", notifies=True)
        self.messages[msg.id] = msg
        await self._dispatch_message("MESSAGE_CREATE", msg, guild)
        return post, msg

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
        guild = self.guilds[msg.guild_id or 0]
        member = self._resolve_member(guild, user)
        users = msg.reactions.setdefault(emoji, [])
        if member.id in users:
            return
        users.append(member.id)
        data = self._reaction_event(msg, member, emoji)
        if not with_message_author:
            del data["message_author_id"]
        await self._dispatch_intent(INTENT_GUILD_MESSAGE_REACTIONS, "MESSAGE_REACTION_ADD", data)

    async def remove_reaction(
        self,
        channel: FakeChannel | None,
        message: FakeMessage | int,
        user: UserLike,
        emoji: str,
    ) -> None:
        """``user`` removes their ``emoji`` reaction: MESSAGE_REACTION_REMOVE."""
        msg = self._message_for_test(channel, message)
        guild = self.guilds[msg.guild_id or 0]
        member = self._resolve_member(guild, user)
        users = msg.reactions.get(emoji, [])
        if member.id not in users:
            return
        users.remove(member.id)
        data = self._reaction_event(msg, member, emoji)
        del data["member"], data["message_author_id"], data["burst_colors"]
        await self._dispatch_intent(INTENT_GUILD_MESSAGE_REACTIONS, "MESSAGE_REACTION_REMOVE", data)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send any gateway DISPATCH event (an escape hatch for events the fake lacks)."""
        await self._dispatch(event, data)

    async def reconnect(self, *, resume: bool = True, timeout: float = 10.0) -> None:
        """Ask the client to reconnect (op 7), or invalidate its session (op 9), and wait.

        With ``resume`` the client RESUMEs and gets the events it missed; without, it
        identifies again (a new READY, so ``on_ready`` fires again).
        """
        session = self._require_session()
        before = (self.resume_count, self.identify_count)
        op = {"op": 7, "d": None} if resume else {"op": 9, "d": False}
        await self._send(session.ws, op)
        if resume:
            await self.wait_for(lambda: self.resume_count > before[0], timeout)
        else:
            await self.wait_for(lambda: self.identify_count > before[1], timeout)

    # ================================================================== helpers (state)

    def _default_guild(self) -> FakeGuild:
        if not self.guilds:
            raise LookupError("the fake has no guild: call fake.add_guild() first")
        return next(iter(self.guilds.values()))

    def _resolve_member(self, guild: FakeGuild, user: UserLike | None) -> FakeMember:
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

    def _find_channel(self, channel_id: str) -> tuple[FakeGuild, FakeChannel]:
        cid = int(channel_id) if channel_id.isdigit() else -1
        for guild in self.guilds.values():
            if cid in guild.channels:
                return guild, guild.channels[cid]
            if cid in guild.threads:
                return guild, guild.threads[cid]
        raise rules.unknown_channel()

    def threads_of(self, channel: FakeChannel) -> list[FakeChannel]:
        """The threads started in ``channel``, oldest first."""
        guild = self.guilds[channel.guild_id]
        return [t for t in guild.threads.values() if t.parent_id == channel.id]

    def _find_guild(self, guild_id: str) -> FakeGuild:
        guild = self.guilds.get(int(guild_id)) if guild_id.isdigit() else None
        if guild is None:
            raise rules.unknown_guild()
        return guild

    def _require(
        self, guild: FakeGuild, channel: FakeChannel, *needed: discord.flags.flag_value
    ) -> int:
        perms = guild.permissions_in(channel, self.bot_user)
        if not perms & P.view_channel.flag:
            raise rules.missing_access()
        for flag in needed:
            if not perms & flag.flag:
                raise rules.missing_permissions()
        return perms

    def _find_command(self, name: str, guild: FakeGuild) -> tuple[dict[str, Any] | None, bool]:
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

    def _reaction_event(self, msg: FakeMessage, member: FakeMember, emoji: str) -> dict[str, Any]:
        return {
            "user_id": str(member.id),
            "channel_id": str(msg.channel_id),
            "message_id": str(msg.id),
            "guild_id": str(msg.guild_id),
            "member": member.to_payload(),
            "emoji": emoji_payload(emoji),
            "message_author_id": str(msg.author.id),
            "burst": False,
            "burst_colors": [],
            "type": 0,
        }

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
        msg = FakeMessage(
            id=snowflake(),
            channel_id=channel.id,
            guild_id=guild.id,
            author=self.bot_user,
            created_at=self.now(),
            type=msg_type,
            flags=flags,
            message_reference=body.get("message_reference"),
        )
        if interaction is not None:
            msg.webhook_id = msg.application_id = self.application_id
            msg.interaction_id = interaction.id
        if source == "create":
            rules.require_not_empty(
                str(body.get("content") or ""),
                body.get("embeds") or [],
                body.get("components") or [],
                files,
            )
        self._apply(msg, body, guild, channel, source=source, notifies=source == "create")
        self.messages[msg.id] = msg
        return msg

    def _payload(self, msg: FakeMessage, inter: FakeInteraction | None = None) -> dict[str, Any]:
        return msg.to_payload(
            me_id=self.bot_user.id, interaction_user=inter.user if inter else None
        )

    async def _dispatch_message(self, event: str, msg: FakeMessage, guild: FakeGuild) -> None:
        if msg.ephemeral:
            return
        data: dict[str, Any]
        if event == "MESSAGE_DELETE":
            data = {"id": str(msg.id), "channel_id": str(msg.channel_id), "guild_id": str(guild.id)}
        else:
            data = self._payload(msg)
            if member := guild.member(msg.author):
                data["member"] = member.to_payload(with_user=False)
            ref = msg.message_reference
            if ref and (replied := self.messages.get(int(ref["message_id"]))):
                data["referenced_message"] = self._payload(replied)
            if not self._reads_content(msg):
                # Without the privileged intent Discord blanks what people wrote.
                data.update(content="", embeds=[], attachments=[], components=[])
                data.get("referenced_message", {}).update(content="", embeds=[])
        await self._dispatch_intent(INTENT_GUILD_MESSAGES, event, data)

    def _reads_content(self, msg: FakeMessage) -> bool:
        """Whether the bot may see ``msg``'s text: the intent, its own message, or a mention."""
        session = self._session
        if session is not None and session.intents & INTENT_MESSAGE_CONTENT:
            return True
        return msg.author is self.bot_user or self.bot_user.id in msg.mentions.users

    # ================================================================== HTTP plumbing

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
            ("GET", "/guilds/{guild_id}", self._get_guild, True),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels, True),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member, True),
            ("GET", channel, self._get_channel, True),
            ("PATCH", channel, self._patch_thread, True),
            ("POST", channel + "/typing", self._post_typing, True),
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
        for method, template, handler, auth in routes:
            app.router.add_route(method, API_PREFIX + template, self._wrap(template, handler, auth))
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[str]]:
        if request.content_type.startswith("multipart/"):
            body, files = None, []
            reader = await request.multipart()
            async for part in reader:
                if getattr(part, "name", None) == "payload_json":
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    await part.read()  # type: ignore[union-attr]
                    files.append(getattr(part, "filename", None) or str(getattr(part, "name", "")))
            return body, files
        text = await request.text()
        if not text:
            return None, []
        try:
            return json.loads(text), []
        except ValueError:
            return text, []

    def _record(
        self, request: web.Request, route: str, body: Any, files: list[str]
    ) -> RecordedRequest:
        path = request.path.removeprefix(API_PREFIX)
        rec = RecordedRequest(
            at=self.now(),
            method=request.method,
            path=path,
            route=route,
            params=dict(request.query),
            json=body,
            files=files,
        )
        self.requests.append(rec)
        return rec

    def _respond(
        self, rec: RecordedRequest, status: int, payload: Any, headers: dict[str, str]
    ) -> web.Response:
        rec.status, rec.response = status, payload
        if rec.interaction is not None:
            rec.interaction.requests.append(rec)
            rec.interaction.last_activity = rec.at
        self._notify()
        if status == 204 or payload is None:
            return web.Response(status=204, headers=headers)
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            headers={**headers, "Content-Type": "application/json"},
        )

    def _wrap(self, template: str, handler: Handler, auth: bool) -> WebHandler:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            body, files = await self._read_body(request)
            rec = self._record(request, template, body, files)
            rec.interaction = self._interactions_by_token.get(request.match_info.get("token", ""))
            call = _Call(request, request.match_info, body, rec)
            headers: dict[str, str] = {}
            try:
                if auth:
                    self._check_auth(request)
                if (injected := self._take_injection(rec)) is not None:
                    rec.injected = True
                    return self._respond(
                        rec, 429, *self._too_many(injected.retry_after, injected.is_global)
                    )
                headers, retry_after = self._rate_limit(template, rec, request.match_info)
                if retry_after is not None:
                    body, extra = self._too_many(retry_after, False)
                    return self._respond(rec, 429, body, {**headers, **extra})
                status, payload = await handler(call)
            except ApiError as error:
                status, payload = error.status, error.payload()
            return self._respond(rec, status, payload, headers)

        return endpoint

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        body, files = await self._read_body(request)
        rec = self._record(request, "?", body, files)
        rec.unknown = True
        self.unknown_routes.append(rec)
        return self._respond(rec, 404, rules.not_found().payload(), {})

    def _check_auth(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bot" or not token or (self._token is not None and token != self._token):
            raise rules.unauthorized()

    def _take_injection(self, rec: RecordedRequest) -> _Injection | None:
        for inj in self._injections:
            if inj.count > 0 and _route_matches(inj.pattern, rec.method, rec.path, rec.route):
                inj.count -= 1
                return inj
        return None

    @staticmethod
    def _too_many(retry_after: float, is_global: bool) -> tuple[dict[str, Any], dict[str, str]]:
        body = {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": is_global,
        }
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        return body, headers

    def _rate_limit(
        self, template: str, rec: RecordedRequest, match: Mapping[str, str]
    ) -> tuple[dict[str, str], float | None]:
        limit = next(
            (
                rl
                for p, rl in self._rate_limits
                if _route_matches(p, rec.method, rec.path, template)
            ),
            self.default_rate_limit,
        )
        major = "/".join(
            match.get(k, "")
            for k in ("channel_id", "guild_id", "application_id", "token", "interaction_id")
        )
        bucket = hashlib.sha1(f"{rec.method} {template}".encode()).hexdigest()[:16]
        now = self.now()
        window = self._windows.get((bucket, major))
        if window is None or now >= window.start + limit.per:
            window = self._windows[(bucket, major)] = _Window(start=now)
        reset_after = max(window.start + limit.per - now, 0.001)
        over = window.used >= limit.limit
        if not over:
            window.used += 1
        headers = {
            "X-RateLimit-Limit": str(limit.limit),
            "X-RateLimit-Remaining": str(limit.limit - window.used),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket,
        }
        return headers, (reset_after if over else None)

    # ================================================================== REST: login, users, guilds

    def _me_payload(self) -> dict[str, Any]:
        return {**self.bot_user.to_payload(), "verified": True, "mfa_enabled": False, "flags": 0}

    async def _get_me(self, call: _Call) -> tuple[int, Any]:
        return 200, self._me_payload()

    async def _get_application(self, call: _Call) -> tuple[int, Any]:
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

    async def _get_gateway(self, call: _Call) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _get_gateway_bot(self, call: _Call) -> tuple[int, Any]:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}

    async def _get_user(self, call: _Call) -> tuple[int, Any]:
        uid = call.match["user_id"]
        user = self.users.get(int(uid)) if uid.isdigit() else None
        if user is None:
            raise rules.unknown_user()
        return 200, user.to_payload()

    async def _get_guild(self, call: _Call) -> tuple[int, Any]:
        guild = self._find_guild(call.match["guild_id"])
        payload = guild.to_payload()
        for key in ("channels", "members", "threads", "voice_states", "presences"):
            payload.pop(key)
        return 200, payload

    async def _get_guild_channels(self, call: _Call) -> tuple[int, Any]:
        guild = self._find_guild(call.match["guild_id"])
        return 200, [c.to_payload() for c in guild.channels.values()]

    async def _get_member(self, call: _Call) -> tuple[int, Any]:
        guild = self._find_guild(call.match["guild_id"])
        uid = call.match["user_id"]
        member = guild.member(int(uid)) if uid.isdigit() else None
        if member is None:
            raise rules.unknown_member()
        return 200, member.to_payload()

    # ================================================================== REST: channels

    async def _get_channel(self, call: _Call) -> tuple[int, Any]:
        guild, channel = self._find_channel(call.match["channel_id"])
        self._require(guild, channel)
        return 200, channel.to_payload()

    async def _post_typing(self, call: _Call) -> tuple[int, Any]:
        guild, channel = self._find_channel(call.match["channel_id"])
        self._require(guild, channel, P.send_messages)
        return 204, None

    async def _get_channel_messages(self, call: _Call) -> tuple[int, Any]:
        guild, channel = self._find_channel(call.match["channel_id"])
        self._require(guild, channel, P.read_message_history)
        limit = int(call.request.query.get("limit", 50))
        live = [m for m in self.channel_messages(channel) if not m.deleted and not m.ephemeral]
        return 200, [self._payload(m) for m in reversed(live)][:limit]

    def _channel_message(self, call: _Call) -> tuple[FakeGuild, FakeChannel, FakeMessage]:
        guild, channel = self._find_channel(call.match["channel_id"])
        mid = call.match["message_id"]
        msg = self.messages.get(int(mid)) if mid.isdigit() else None
        if msg is None or msg.channel_id != channel.id or msg.deleted or msg.ephemeral:
            self._require(guild, channel)
            raise rules.unknown_message()
        return guild, channel, msg

    async def _post_channel_message(self, call: _Call) -> tuple[int, Any]:
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
        flags = int(body.get("flags") or 0) & (4 | 4096 | 32768)
        msg = self._new_message(guild, channel, body, files=len(call.rec.files), flags=flags)
        await self._dispatch_message("MESSAGE_CREATE", msg, guild)
        return 200, self._payload(msg)

    async def _patch_thread(self, call: _Call) -> tuple[int, Any]:
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

    async def _start_thread_from_message(self, call: _Call) -> tuple[int, Any]:
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
        # A thread started from a message has that message's id.
        thread = FakeChannel(
            id=msg.id,
            guild_id=guild.id,
            name=name,
            type=FakeChannel.PUBLIC_THREAD,
            parent_id=channel.id,
            owner_id=self.bot_user.id,
        )
        guild.threads[thread.id] = thread
        await self._dispatch_intent(
            INTENT_GUILDS, "THREAD_CREATE", {**thread.to_payload(), "newly_created": True}
        )
        return 201, thread.to_payload()

    async def _get_channel_message(self, call: _Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        self._require(guild, channel, P.read_message_history)
        return 200, self._payload(msg)

    async def _patch_channel_message(self, call: _Call) -> tuple[int, Any]:
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

    async def _delete_channel_message(self, call: _Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        if msg.author is not self.bot_user:
            self._require(guild, channel, P.manage_messages)
        msg.deleted_at = self.now()
        await self._dispatch_message("MESSAGE_DELETE", msg, guild)
        return 204, None

    async def _put_reaction(self, call: _Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        emoji = call.match["emoji"]
        if not emoji:
            raise rules.unknown_emoji()
        users = msg.reactions.get(emoji, [])
        needed = [P.read_message_history] + ([] if users else [P.add_reactions])
        self._require(guild, channel, *needed)
        if self.bot_user.id in users:
            return 204, None
        msg.reactions.setdefault(emoji, []).append(self.bot_user.id)
        data = self._reaction_event(msg, self.bot_member(guild), emoji)
        await self._dispatch_intent(INTENT_GUILD_MESSAGE_REACTIONS, "MESSAGE_REACTION_ADD", data)
        return 204, None

    async def _delete_reaction(self, call: _Call) -> tuple[int, Any]:
        guild, channel, msg = self._channel_message(call)
        self._require(guild, channel, P.read_message_history)
        emoji = call.match["emoji"]
        users = msg.reactions.get(emoji, [])
        if self.bot_user.id in users:
            users.remove(self.bot_user.id)
            data = self._reaction_event(msg, self.bot_member(guild), emoji)
            del data["member"], data["message_author_id"], data["burst_colors"]
            await self._dispatch_intent(
                INTENT_GUILD_MESSAGE_REACTIONS, "MESSAGE_REACTION_REMOVE", data
            )
        return 204, None

    # ================================================================== REST: application commands

    def _commands_for(self, call: _Call) -> tuple[list[dict[str, Any]], FakeGuild | None]:
        if call.match["application_id"] != str(self.application_id):
            raise rules.missing_access()
        if "guild_id" not in call.match:
            return self.global_commands, None
        gid = call.match["guild_id"]
        guild = self.guilds.get(int(gid)) if gid.isdigit() else None
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

    async def _get_commands(self, call: _Call) -> tuple[int, Any]:
        commands, _ = self._commands_for(call)
        return 200, commands

    async def _put_commands(self, call: _Call) -> tuple[int, Any]:
        commands, guild = self._commands_for(call)
        body = call.body if isinstance(call.body, list) else []
        if len(body) > 100:
            errors = rules.FormErrors()
            errors.too_long([], 100)
            errors.raise_if_any()
        new = [self._normalise_command(raw, i, commands, guild) for i, raw in enumerate(body)]
        commands[:] = new
        return 200, new

    async def _post_command(self, call: _Call) -> tuple[int, Any]:
        commands, guild = self._commands_for(call)
        cmd = self._normalise_command(call.json, 0, commands, guild)
        existed = any(c["id"] == cmd["id"] for c in commands)
        commands[:] = [c for c in commands if c["id"] != cmd["id"]] + [cmd]
        return (200 if existed else 201), cmd

    # ================================================================== REST: interactions

    async def _callback(self, call: _Call) -> tuple[int, Any]:
        iid = call.match["interaction_id"]
        inter = self._interactions_by_id.get(int(iid)) if iid.isdigit() else None
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
        allowed = {
            2: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
            3: {
                CHANNEL_MESSAGE,
                DEFERRED_CHANNEL_MESSAGE,
                DEFERRED_UPDATE_MESSAGE,
                UPDATE_MESSAGE,
                MODAL,
            },
            4: {AUTOCOMPLETE_RESULT},
            5: {
                CHANNEL_MESSAGE,
                DEFERRED_CHANNEL_MESSAGE,
                DEFERRED_UPDATE_MESSAGE,
                UPDATE_MESSAGE,
            },
        }[inter.type]
        if kind not in allowed:
            errors = rules.FormErrors()
            errors.add(["type"], "BASE_TYPE_CHOICES", f"Value must be one of {sorted(allowed)}.")
            errors.raise_if_any()
        guild, channel = inter.guild, inter.channel
        flags = int(data.get("flags") or 0)
        resource: dict[str, Any] = {"type": kind}
        if kind == CHANNEL_MESSAGE:
            rules.validate_message(data, prefix=["data"])
            inter.original = self._new_message(
                guild,
                channel,
                data,
                files=len(call.rec.files),
                flags=flags & (64 | 4 | 4096 | 32768),
                interaction=inter,
                msg_type=20 if inter.type == 2 else 0,
            )
        elif kind == DEFERRED_CHANNEL_MESSAGE:
            inter.original = self._new_message(
                guild,
                channel,
                {},
                files=0,
                flags=(flags & 64) | FakeMessage.LOADING,
                interaction=inter,
                msg_type=20 if inter.type == 2 else 0,
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
        if call.request.query.get("with_response") not in ("1", "true", "True"):
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

    def _webhook_interaction(self, call: _Call) -> FakeInteraction:
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

    def _webhook_message(self, call: _Call, inter: FakeInteraction) -> FakeMessage:
        mid = call.match["message_id"]
        if mid == "@original":
            msg = inter.original
        else:
            candidates = [inter.original, *inter.followups]
            msg = next((m for m in candidates if m is not None and str(m.id) == mid), None)
        if msg is None or msg.deleted:
            raise rules.unknown_message()
        return msg

    async def _post_followup(self, call: _Call) -> tuple[int, Any]:
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
            rules.require_not_empty(
                str(body.get("content") or ""),
                body.get("embeds") or [],
                body.get("components") or [],
                files,
            )
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
            flags = int(body.get("flags") or 0) & (64 | 4 | 4096 | 32768)
            msg = self._new_message(
                inter.guild, inter.channel, body, files=files, flags=flags, interaction=inter
            )
            await self._dispatch_message("MESSAGE_CREATE", msg, inter.guild)
        inter.followups.append(msg)
        if call.request.query.get("wait") in ("1", "true", "True"):
            return 200, self._payload(msg, inter)
        return 204, None

    async def _get_webhook_message(self, call: _Call) -> tuple[int, Any]:
        inter = self._webhook_interaction(call)
        return 200, self._payload(self._webhook_message(call, inter), inter)

    async def _patch_webhook_message(self, call: _Call) -> tuple[int, Any]:
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

    async def _delete_webhook_message(self, call: _Call) -> tuple[int, Any]:
        inter = self._webhook_interaction(call)
        msg = self._webhook_message(call, inter)
        msg.deleted_at = self.now()
        await self._dispatch_message("MESSAGE_DELETE", msg, inter.guild)
        return 204, None

    # ================================================================== gateway

    def _require_session(self) -> _Session:
        session = self._session
        if session is None or session.ws is None or session.ws.closed:
            raise RuntimeError(
                "no client is connected to the fake gateway (await fake.wait_ready())"
            )
        return session

    async def _send(self, ws: web.WebSocketResponse | None, frame: dict[str, Any]) -> None:
        if ws is None or ws.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await ws.send_str(json.dumps(frame))

    async def _dispatch(self, event: str, data: Any, session: _Session | None = None) -> None:
        """Send a DISPATCH frame; kept for replay if the client resumes."""
        session = session or self._session
        if session is None:
            return
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.sent.append(frame)
        await self._send(session.ws, frame)

    async def _dispatch_intent(self, intent: int, event: str, data: Any) -> None:
        if self._session is not None and self._session.intents & intent:
            await self._dispatch(event, data)

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, timeout=2.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.gateway_connections += 1
        hello = {"heartbeat_interval": self.heartbeat_interval_ms}
        await self._send(ws, {"op": 10, "d": hello, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                await self._on_frame(ws, frame)
        finally:
            self._sockets.discard(ws)
            if self._session is not None and self._session.ws is ws:
                self._session.ws = None
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        op, raw = frame.get("op"), frame.get("d")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        logged = {k: v for k, v in data.items() if k != "token"} if data else raw
        self.gateway_frames.append(GatewayFrame(at=self.now(), op=int(op or 0), data=logged))
        self._notify()
        if op == 1:  # heartbeat
            await self._send(ws, {"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:  # identify
            await self._identify(ws, data)
        elif op == 6:  # resume
            await self._resume(ws, data)
        elif op == 8:  # request guild members
            await self._members_chunk(data)
        elif op in (3, 4):  # presence / voice state: accepted, nothing to do
            pass
        else:
            await ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        token = str(data.get("token") or "")
        if not token or (self._token is not None and token != self._token):
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        if (
            self._session is not None
            and self._session.ws is not None
            and self._session.ws is not ws
        ):
            await self._session.ws.close(code=4000)
        shard = data.get("shard") or [0, 1]
        session = _Session(
            id=secrets.token_hex(16), intents=int(data.get("intents", 0)), shard=shard
        )
        session.ws = ws
        self._session = session
        self.identify_count += 1
        ready = {
            "v": 10,
            "user": self._me_payload(),
            "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "shard": shard,
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "user_settings": {},
        }
        await self._dispatch("READY", ready, session)
        if session.intents & INTENT_GUILDS:
            for guild in self.guilds.values():
                await self._dispatch("GUILD_CREATE", guild.to_payload(), session)
        self._ready.set()
        self._notify()

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        session = self._session
        if session is None or data.get("session_id") != session.id:
            await self._send(ws, {"op": 9, "d": False, "s": None, "t": None})
            return
        if session.ws is not None and session.ws is not ws:
            await session.ws.close(code=4000)
        session.ws = ws
        seq = data.get("seq") or 0
        for frame in [f for f in session.sent if f["s"] > seq]:
            await self._send(ws, frame)
        self.resume_count += 1
        await self._dispatch("RESUMED", {}, session)
        self._notify()

    async def _members_chunk(self, data: dict[str, Any]) -> None:
        ids = data.get("guild_id")
        for gid in ids if isinstance(ids, list) else [ids]:
            guild = self.guilds.get(int(gid or 0))
            if guild is None:
                continue
            chunk = {
                "guild_id": str(guild.id),
                "members": [m.to_payload() for m in guild.members.values()],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if data.get("nonce"):
                chunk["nonce"] = data["nonce"]
            await self._dispatch("GUILD_MEMBERS_CHUNK", chunk)
