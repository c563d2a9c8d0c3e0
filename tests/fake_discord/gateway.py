"""The websocket gateway: HELLO, heartbeats, IDENTIFY -> READY, RESUME, and the events it sends.

``Gateway`` keeps one session (it survives reconnects through RESUME) and sends DISPATCH events
only when the client asked for their intent, as Discord does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .inspection import Inspection
from .models import FakeChannel, FakeGuild, FakeMember, FakeMessage, GatewayFrame, emoji_payload

# Gateway intents the fake honours when deciding what to dispatch.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_MESSAGE_CONTENT = 1 << 15  # privileged


@dataclass
class _Session:
    """One gateway session (survives reconnects through RESUME)."""

    id: str
    intents: int
    shard: list[int]
    seq: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None


class Gateway(Inspection):
    """The gateway side of the fake: connections, the session, and DISPATCH events."""

    def _init_gateway(self, heartbeat_interval_ms: int) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.port = 0  # where FakeDiscord serves (HTTP and the gateway), once started
        self.identify_count = 0
        self.resume_count = 0
        self.gateway_connections = 0
        self._session: _Session | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._send_lock = asyncio.Lock()
        self._ready = asyncio.Event()

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ================================================================== test controls

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until a client identified and got READY plus every GUILD_CREATE.

        discord.py fires ``on_ready`` a little later (``guild_ready_timeout`` after the last
        GUILD_CREATE); use ``client.wait_until_ready()`` for that.
        """
        async with asyncio.timeout(timeout):
            await self._ready.wait()

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

    def _require_session(self) -> _Session:
        session = self._session
        if session is None or session.ws is None or session.ws.closed:
            raise RuntimeError(
                "no client is connected to the fake gateway (await fake.wait_ready())"
            )
        return session

    async def _close_sockets(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)

    # ================================================================== sending

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

    # ================================================================== events

    async def _dispatch_message(self, event: str, msg: FakeMessage, guild: FakeGuild) -> None:
        """MESSAGE_CREATE, MESSAGE_UPDATE or MESSAGE_DELETE about ``msg`` (never ephemeral)."""
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

    async def _react(
        self,
        msg: FakeMessage,
        member: FakeMember,
        emoji: str,
        *,
        add: bool,
        with_message_author: bool = True,
    ) -> None:
        """``member`` adds or removes their ``emoji`` reaction on ``msg``; a change dispatches
        MESSAGE_REACTION_ADD or MESSAGE_REACTION_REMOVE (which carries no member or author)."""
        users = msg.reactions.setdefault(emoji, []) if add else msg.reactions.get(emoji, [])
        if (member.id in users) == add:
            return
        data = {
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
        if add:
            users.append(member.id)
            if not with_message_author:
                del data["message_author_id"]
        else:
            users.remove(member.id)
            del data["member"], data["message_author_id"], data["burst_colors"]
        event = "MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE"
        await self._dispatch_intent(INTENT_GUILD_MESSAGE_REACTIONS, event, data)

    async def _dispatch_thread_create(self, thread: FakeChannel) -> None:
        await self._dispatch_intent(
            INTENT_GUILDS, "THREAD_CREATE", {**thread.to_payload(), "newly_created": True}
        )

    # ================================================================== connection

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        """The websocket endpoint: HELLO, then one frame at a time until the client leaves."""
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
