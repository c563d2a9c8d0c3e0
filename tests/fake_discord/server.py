"""``FakeDiscord``: a loopback Discord (REST + gateway) for the unmodified discord.py client.

See the package docstring (``tests/fake_discord/__init__.py``) for a guided tour. The class is
put together from parts, one file each, every part building on those it uses::

    World        world.py       users, guilds, channels, members, messages; builders; clock
    Inspection   inspection.py  records of what the client did; queries, assert_clean, waits
    Gateway      gateway.py     the websocket gateway and the events it dispatches
    Routing      routing.py     recording, auth, rate limits and 429s around every REST route
    Rest         rest.py        the REST route handlers
    Actions      actions.py     what a test does as Discord's users (invoke, click, ...)
    FakeDiscord  server.py      settings, start/stop, ``running(client)``
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from .actions import Actions
from .rest import Rest
from .routing import API_PREFIX, RateLimit

__all__ = ["FakeDiscord", "RateLimit"]

_active: FakeDiscord | None = None  # Route.BASE is global: one fake at a time.


class FakeDiscord(Actions, Rest):
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
        self.strict_commands = strict_commands
        self._token = token
        self._init_world(bot_name)
        self._init_records()
        self._init_routing(rate_limit)
        self._init_gateway(heartbeat_interval_ms)
        self._runner: web.AppRunner | None = None
        self._saved: tuple[str, yarl.URL] | None = None

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
        await self._close_sockets()
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

    @asynccontextmanager
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
