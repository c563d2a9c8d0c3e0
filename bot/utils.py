"""Small helpers shared by the cogs: the answer queue, safe replies, a few constants."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import discord

log = logging.getLogger(__name__)

# Passed explicitly on every send/edit as well as set on the bot: nothing the bot posts pings.
NO_MENTIONS = discord.AllowedMentions.none()
GENERIC_ERROR = "Something went wrong on my side. Please try again later."


class QueueFull(Exception):
    """More questions are waiting than `max_waiting` allows."""


class _Waiter:
    __slots__ = ("future", "on_position")

    def __init__(self, future: asyncio.Future[None], on_position: Callable[[int], None]) -> None:
        self.future = future
        self.on_position = on_position


class AnswerQueue:
    """A FIFO semaphore whose waiters are told how many questions are ahead of theirs."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.active = 0
        self._waiters: list[_Waiter] = []

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def would_wait(self) -> bool:
        return self.active >= self.slots or bool(self._waiters)

    def full(self) -> bool:
        return self.would_wait() and len(self._waiters) >= self.max_waiting

    @asynccontextmanager
    async def slot(self, on_position: Callable[[int], None]) -> AsyncIterator[None]:
        """Hold one slot; while waiting, `on_position(ahead)` is called whenever `ahead` changes."""
        await self._acquire(on_position)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, on_position: Callable[[int], None]) -> None:
        if not self.would_wait():
            self.active += 1
            return
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull()
        waiter = _Waiter(asyncio.get_running_loop().create_future(), on_position)
        self._waiters.append(waiter)
        self._call(waiter, len(self._waiters) - 1)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._announce()
            elif waiter.future.done() and not waiter.future.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            raise

    def _release(self) -> None:
        self.active -= 1
        while self._waiters and self.active < self.slots:
            waiter = self._waiters.pop(0)
            if not waiter.future.done():
                self.active += 1
                waiter.future.set_result(None)
        self._announce()

    def _announce(self) -> None:
        for ahead, waiter in enumerate(self._waiters):
            self._call(waiter, ahead)

    @staticmethod
    def _call(waiter: _Waiter, ahead: int) -> None:
        try:
            waiter.on_position(ahead)
        except Exception:  # a display callback must never break the queue
            log.exception("queue position callback failed")


def queue_text(ahead: int) -> str:
    if ahead == 0:
        return "⏳ Many questions are being answered right now: yours is next."
    plural = "question" if ahead == 1 else "questions"
    return f"⏳ Many questions are being answered right now: {ahead} {plural} ahead of yours."


async def send_error(interaction: discord.Interaction, message: str) -> None:
    """Tell the user `message` on this interaction, ephemerally where Discord still allows it."""
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(
                message, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        else:
            # After a defer the first followup fills the placeholder (its flags were fixed then).
            await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException:
        log.warning("could not deliver an error message to the user", exc_info=True)


async def hand_to_cog(
    interaction: discord.Interaction, cog_name: str, method: str, *args: object, what: str
) -> None:
    """A persistent button's click, handed to `method(*args, interaction)` of cog `cog_name`
    (looked up by name: an extension reload makes new classes, so no isinstance). A missing cog
    or a failure is logged, and the presser gets the generic error."""
    handler = getattr(interaction.client.get_cog(cog_name), method, None)  # type: ignore[attr-defined]
    if handler is None:
        log.error("%s pressed but the %s cog is not loaded", what, cog_name)
        await send_error(interaction, GENERIC_ERROR)
        return
    try:
        await handler(*args, interaction)
    except Exception:
        log.exception("%s failed", what)
        await send_error(interaction, GENERIC_ERROR)
