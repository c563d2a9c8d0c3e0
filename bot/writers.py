"""Where an answer goes on Discord: an interaction response or channel messages, filled as the
answer streams (throttled edits in place, more messages past 2000 characters)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import discord

from .streaming import MESSAGE_LIMIT, ThrottledEditor, plain_links, split_message
from .utils import NO_MENTIONS

log = logging.getLogger(__name__)

LIVE_MARKER = " ▌"  # shown at the end of a message while the answer is still streaming
PART_LIMIT = MESSAGE_LIMIT - len(LIVE_MARKER)  # same cuts while streaming and at the end


class InteractionExpired(Exception):
    """The interaction token is about to expire and the answer cannot move to the channel."""


@dataclass
class _Part:
    """One Discord message of an answer: what it shows, and whether it lives in the channel."""

    message: discord.Message | None  # None: not posted yet (or the interaction's placeholder)
    shown: str = ""
    in_channel: bool = False  # posted with channel.send after the interaction token expired


class AnswerWriter:
    """Shows an answer as it streams: throttled edits in place, more messages past 2000
    characters. Subclasses decide how a part is first posted and later edited."""

    private = False

    def __init__(self, *, interval: float, quiet: bool = False) -> None:
        self.interval = interval
        # Quiet: nothing is posted before the answer's text (no status lines), and an error
        # before then stays in the log: for answers nobody asked the bot for (forum posts).
        self.quiet = quiet
        self.parts: list[_Part] = [_Part(None)]
        self.editor = ThrottledEditor(self._edit_live, interval=interval)
        self.text = ""
        self.edits = 0

    # -- while streaming -----------------------------------------------------------------------

    def status(self, line: str) -> None:
        """A one-line status (searching, place in the queue) until the answer starts."""
        if not self.text and not self.quiet:
            self.editor.update(line)

    async def append(self, delta: str) -> None:
        self.text += delta
        # Rendered exactly as the final answer will be, links made plain text included.
        parts = split_message(plain_links(self.text), PART_LIMIT)
        if not parts:
            return
        while len(parts) > len(self.parts):
            await self._roll_over(parts)
        self.editor.update(parts[-1] + LIVE_MARKER)

    async def _roll_over(self, parts: Sequence[str]) -> None:
        """The live message is full: settle it, and continue in a new message."""
        live = len(self.parts) - 1
        try:
            await self.editor.finish(parts[live])
        except discord.HTTPException:
            log.warning("final edit of part %d failed; retried at the end", live, exc_info=True)
        self.parts.append(await self._send_new(parts[live + 1] + LIVE_MARKER))
        self.editor = ThrottledEditor(self._edit_live, interval=self.interval)

    # -- the end ----------------------------------------------------------------------------------

    async def finish(self, contents: Sequence[str]) -> list[discord.Message]:
        """Make the messages show exactly `contents` (one per message); the messages."""
        live = len(self.parts) - 1
        for i, content in enumerate(contents):
            if i < live:
                part = self.parts[i]
                # An expired webhook message can no longer change; reposting it would reorder.
                if part.shown != content and (part.in_channel or not self.expired()):
                    await self._edit(i, content)
            elif i == live:
                try:
                    await self.editor.finish(content)
                except discord.HTTPException:
                    # The guaranteed final edit: once more after discord.py's own retries.
                    log.warning("final edit failed; trying once more", exc_info=True)
                    await asyncio.sleep(self.interval)
                    await self._edit(i, content)
            else:
                self.parts.append(await self._send_new(content))
        if len(contents) <= live:
            await self.editor.aclose()  # the live message itself is a leftover
        for extra in self.parts[len(contents) :]:
            await self._delete(extra)  # the final split came out shorter than the live one
        del self.parts[len(contents) :]
        return [p.message for p in self.parts if p.message is not None]

    async def fail(self, message: str) -> None:
        """Replace whatever was shown by `message`: a clear end instead of a half answer."""
        await self.editor.aclose()
        if self.quiet and self.parts[0].message is None:
            return  # nothing shown yet, and nobody waits for this answer
        try:
            await self._edit(0, f"⚠️ {message}")
        except Exception:
            log.warning("could not show the error to the user", exc_info=True)
            return
        for extra in self.parts[1:]:
            await self._delete(extra)
        del self.parts[1:]

    async def fail_privately(self, message: str) -> None:
        """Like fail(), but only the asker sees `message` where the destination allows it."""
        await self.fail(message)

    # -- Discord calls -------------------------------------------------------------------------

    def expired(self) -> bool:
        return False

    async def _edit_live(self, text: str) -> None:
        await self._edit(len(self.parts) - 1, text)

    async def _edit(self, i: int, text: str) -> None:
        self.parts[i] = await self._show(i, self.parts[i], text)
        self.parts[i].shown = text
        self.edits += 1

    async def _show(self, i: int, part: _Part, text: str) -> _Part:
        """Make part `i` show `text` (posting it if it is not there yet); the part."""
        raise NotImplementedError

    async def _send_new(self, text: str) -> _Part:
        raise NotImplementedError

    async def _delete(self, part: _Part) -> None:
        if part.message is None:
            return
        try:
            await part.message.delete()
        except discord.HTTPException:
            log.warning("could not delete a leftover answer message", exc_info=True)


class InteractionWriter(AnswerWriter):
    """An answer in a (deferred) interaction response: its follow-ups past 2000 characters,
    and plain channel messages once the interaction token is close to expiring."""

    def __init__(
        self,
        interaction: discord.Interaction,
        *,
        private: bool,
        interval: float,
        edit_limit_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval=interval)
        self.interaction = interaction
        self.private = private
        self.clock = clock
        self.expires_at = clock() + edit_limit_s

    def expired(self) -> bool:
        return self.clock() >= self.expires_at

    async def fail_privately(self, message: str) -> None:
        """A public response cannot turn ephemeral: delete it, then send `message` as an
        ephemeral follow-up (the token outlives the response, and with the placeholder gone
        the follow-up is a message of its own instead of filling the public placeholder).
        """
        if self.private or self.expired():
            await self.fail(message)
            return
        await self.editor.aclose()
        try:
            await self.interaction.delete_original_response()
        except discord.HTTPException:
            log.warning("could not delete the answer's placeholder", exc_info=True)
            await self.fail(message)
            return
        self.parts[0] = _Part(None)
        for extra in self.parts[1:]:
            await self._delete(extra)
        del self.parts[1:]
        try:
            await self.interaction.followup.send(
                f"⚠️ {message}", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException:
            log.warning("could not show the error to the user", exc_info=True)

    async def _show(self, i: int, part: _Part, text: str) -> _Part:
        if part.in_channel and part.message is not None:
            part.message = await part.message.edit(content=text, allowed_mentions=NO_MENTIONS)
        elif self.expired():
            # The webhook token dies at 15 minutes: this part moves to a channel message.
            return await self._channel_send(text)
        elif part.message is None or i == 0:
            # discord.py merges the bot's default allowed mentions here, but be explicit.
            part.message = await self.interaction.edit_original_response(
                content=text, allowed_mentions=NO_MENTIONS
            )
        else:
            part.message = await part.message.edit(content=text, allowed_mentions=NO_MENTIONS)
        return part

    async def _send_new(self, text: str) -> _Part:
        if self.expired():
            return await self._channel_send(text)
        message = await self.interaction.followup.send(
            text, wait=True, ephemeral=self.private, allowed_mentions=NO_MENTIONS
        )
        return _Part(message, text)

    async def _channel_send(self, text: str) -> _Part:
        channel = self.interaction.channel
        if self.private or not isinstance(channel, discord.abc.Messageable):
            raise InteractionExpired("the interaction token expired before the answer was done")
        message = await channel.send(text, allowed_mentions=NO_MENTIONS)
        return _Part(message, text, in_channel=True)


class MessageWriter(AnswerWriter):
    """An answer as plain messages in a channel or thread; the first one replies to
    `reply_to` when given (without pinging its author)."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        interval: float,
        reply_to: discord.Message | None = None,
        quiet: bool = False,
    ) -> None:
        super().__init__(interval=interval, quiet=quiet)
        self.channel = channel
        self.reply_to = reply_to

    async def _show(self, i: int, part: _Part, text: str) -> _Part:
        if part.message is None:
            reference = self.reply_to if i == 0 else None
            part.message = await self._post(text, reference)
        else:
            part.message = await part.message.edit(content=text, allowed_mentions=NO_MENTIONS)
        return part

    async def _send_new(self, text: str) -> _Part:
        return _Part(await self._post(text, None), text)

    async def _post(self, text: str, reference: discord.Message | None) -> discord.Message:
        if reference is None:
            return await self.channel.send(text, allowed_mentions=NO_MENTIONS)
        return await self.channel.send(
            text,
            reference=reference,
            mention_author=False,
            allowed_mentions=NO_MENTIONS,
        )
