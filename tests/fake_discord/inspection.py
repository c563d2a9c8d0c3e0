"""What the client did, as the fake records it, and how a test inspects, asserts on and awaits it.

``Inspection`` holds the records (REST requests, unknown routes, gateway frames); the REST and
gateway parts append to them and call ``_notify()``, which wakes every ``wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from .models import FakeMessage, GatewayFrame, MessageVersion, RecordedRequest
from .world import World


def route_matches(pattern: str, method: str, path: str, template: str) -> bool:
    """``"PATCH /webhooks/*/messages/@original"``: fnmatch on the path or the route template."""
    want_method, sep, rest = pattern.partition(" ")
    if not sep:
        want_method, rest = "*", pattern
    if not fnmatchcase(method, want_method.upper()):
        return False
    return fnmatchcase(path, rest) or fnmatchcase(template, rest)


class Inspection(World):
    """The records of what the client did, queries over them, ``assert_clean`` and waits."""

    def _init_records(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []
        self.gateway_frames: list[GatewayFrame] = []
        self._changed = asyncio.Event()

    # ================================================================== queries

    def requests_to(self, pattern: str) -> list[RecordedRequest]:
        """Recorded requests matching ``pattern`` (same syntax as ``inject_429``)."""
        return [r for r in self.requests if route_matches(pattern, r.method, r.path, r.route)]

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
        """Something was recorded: wake the waiters so they re-check."""
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
