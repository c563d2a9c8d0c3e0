"""What the fake tracks about one interaction it sent, and ways for a test to wait on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models import FakeChannel, FakeGuild, FakeMessage, FakeUser, MessageVersion, RecordedRequest

if TYPE_CHECKING:
    from .server import FakeDiscord

#: Interaction callback types (Discord's InteractionCallbackType).
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the fake dispatched (``FakeDiscord.invoke`` / ``click``) and its fate.

    Times are seconds on the fake's clock (``FakeDiscord.now()``); ``sent_at`` is when
    INTERACTION_CREATE went out, which starts Discord's 3 s and 15 min clocks.
    """

    fake: FakeDiscord = field(repr=False)
    id: int
    token: str = field(repr=False)
    type: int  # 2 application command, 3 component
    name: str  # command name ("group sub") or component custom_id
    options: dict[str, Any]
    user: FakeUser
    guild: FakeGuild = field(repr=False)
    channel: FakeChannel = field(repr=False)
    payload: dict[str, Any] = field(repr=False)
    sent_at: float = 0.0
    acked_at: float | None = None
    response_type: int | None = None
    original: FakeMessage | None = field(default=None, repr=False)
    followups: list[FakeMessage] = field(default_factory=list, repr=False)
    modal: dict[str, Any] | None = field(default=None, repr=False)
    choices: list[dict[str, Any]] | None = field(default=None, repr=False)
    requests: list[RecordedRequest] = field(default_factory=list, repr=False)
    last_activity: float = 0.0
    source_message: FakeMessage | None = field(default=None, repr=False)  # clicked message

    # -- state

    @property
    def acked(self) -> bool:
        return self.response_type is not None

    @property
    def ack_latency(self) -> float | None:
        """Seconds between dispatch and the (successful) callback."""
        return None if self.acked_at is None else self.acked_at - self.sent_at

    @property
    def deferred(self) -> bool:
        return self.response_type in (DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE)

    @property
    def ephemeral(self) -> bool:
        """Whether the response message is ephemeral (fixed when it was created or deferred)."""
        return self.original is not None and self.original.ephemeral

    @property
    def content(self) -> str | None:
        """The response message's current content (None without a response message)."""
        return None if self.original is None else self.original.content

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return [] if self.original is None else self.original.embeds

    @property
    def history(self) -> list[MessageVersion]:
        """Every state of the response message: creation/placeholder, then each edit."""
        return [] if self.original is None else self.original.history

    @property
    def edits(self) -> list[MessageVersion]:
        """The edits of the response message (PATCH @original, or a followup filling a defer)."""
        return [v for v in self.history if v.source in ("edit", "followup")]

    @property
    def errors(self) -> list[RecordedRequest]:
        """Requests about this interaction that got a 4xx/5xx (injected 429s excluded)."""
        return [r for r in self.requests if r.status >= 400 and not r.injected]

    @property
    def error_codes(self) -> list[int | None]:
        return [r.code for r in self.errors]

    def summary(self) -> str:
        lines = [
            f"interaction {self.name!r} (type {self.type}) sent at {self.sent_at:.3f}",
            f"  acked: {self.acked} type={self.response_type} latency={self.ack_latency}",
            f"  content: {self.content!r}",
            f"  edits: {len(self.edits)}, followups: {len(self.followups)}",
        ]
        lines += [f"  request: {r.describe()}" for r in self.requests]
        return "\n".join(lines)

    # -- waiting

    async def wait_for(
        self, predicate: Callable[[FakeInteraction], bool], timeout: float = 10.0
    ) -> FakeInteraction:
        """Wait until ``predicate(self)`` holds (re-checked on every request the fake gets)."""
        try:
            await self.fake.wait_for(lambda: predicate(self), timeout=timeout)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout} s waiting on\n{self.summary()}"
            ) from None
        return self

    async def wait_acked(self, timeout: float = 5.0) -> FakeInteraction:
        """Wait for the first acknowledgement (or an error about this interaction)."""
        return await self.wait_for(lambda i: i.acked or bool(i.errors), timeout)

    async def wait_done(self, timeout: float = 10.0, quiet: float = 0.3) -> FakeInteraction:
        """Wait until acknowledged (or refused) and then ``quiet`` seconds without activity.

        The fake cannot see the bot's handler finish; "no request about this interaction for
        ``quiet`` seconds" stands in for it. Raise ``quiet`` for handlers with long pauses.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.wait_acked(timeout)
        while True:
            idle_for = self.fake.now() - self.last_activity
            if idle_for >= quiet:
                return self
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"interaction never went quiet:\n{self.summary()}")
            await asyncio.sleep(min(quiet - idle_for, left) + 0.001)
