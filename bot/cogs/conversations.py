"""Conversations: follow-ups in the bot's threads, replies to its answers, and @mentions.

Which messages get an answer:
- in a thread the bot started for an answer: every message from a person (a follow-up);
- a reply to one of the bot's answers, anywhere: continues that answer's conversation;
- `@Bot question` elsewhere: a new conversation, answered in a thread under that message
  (inline where a thread is not possible).
Never: bots (the bot itself included), system messages, messages that only mention or reply to
other people, threads the bot did not start unless it is mentioned. Reading a message's text
needs the Message Content intent; without it only @mentions reach the bot (Discord sends the
text of a message that mentions it), so follow-ups and replies are off.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from rag_core.answering import clean_question
from rag_core.conversation import Turn

from ..answer_path import Asker, MessageWriter
from ..feedback import Conversation
from ..utils import NO_MENTIONS

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

TOO_LONG = (
    "This conversation is getting long, so my answers would lose track of it. "
    "Please start a new question with /ask or by mentioning me."
)
# Messages a person writes; everything else (joins, pins, thread notices, ...) is a system one.
_PERSON_MESSAGES = (discord.MessageType.default, discord.MessageType.reply)


@dataclass(frozen=True)
class _Request:
    """A message the bot answers: the question, the conversation so far, where it goes."""

    question: str
    conversation: Conversation | None
    new_thread: bool  # answer in a new thread under the message


class Conversations(commands.Cog):
    """Answers follow-ups, replies and mentions through the shared answer path."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        self.follow_ups = bot.settings.discord_message_content

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        try:
            request = await self._request(message)
        except Exception:
            log.exception("could not read message %s", message.id)
            return
        if request is not None:
            await self._answer(message, request)

    # -- which messages, and what they ask ------------------------------------------------------

    async def _request(self, message: discord.Message) -> _Request | None:
        me = self.bot.user
        if (
            me is None
            or message.author.bot
            or message.webhook_id is not None
            or message.type not in _PERSON_MESSAGES
            or message.guild is None
        ):
            return None
        mentioned = bool(re.search(rf"<@!?{me.id}>", message.content))
        if not mentioned and not self.follow_ups:
            return None  # without the Message Content intent, only mentions carry text
        question = clean_question(re.sub(rf"<@!?{me.id}>", " ", message.content))
        # Talking to someone else: a mention of another person, or a reply to one.
        others = [u for u in message.mentions if u.id != me.id] or message.role_mentions
        replied = await self._replied_to(message)
        if not mentioned and (others or (replied is not None and replied.author.id != me.id)):
            return None
        store = self.bot.feedback
        channel = message.channel
        if isinstance(channel, discord.Thread | discord.PartialMessageable):
            conversation = await store.conversation(thread_id=channel.id)
            if conversation is not None:
                return _Request(question, conversation, new_thread=False)
        if replied is not None and replied.author.id == me.id:
            conversation = await store.conversation(message_id=replied.id)
            if conversation is None and (record := await store.answer_by_message(replied.id)):
                # An answer from before conversations were kept: it becomes the first turn.
                await store.record_turn(record.id, standalone=record.question)
                conversation = await store.conversation(message_id=replied.id)
            if conversation is not None:
                return _Request(question, conversation, new_thread=False)
        if not mentioned:
            return None
        in_thread = isinstance(channel, discord.Thread)
        return _Request(question, None, new_thread=not in_thread)

    async def _replied_to(self, message: discord.Message) -> discord.Message | None:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        if isinstance(ref.resolved, discord.Message):
            return ref.resolved
        try:
            return await message.channel.fetch_message(ref.message_id)
        except discord.HTTPException:
            return None

    # -- answering ------------------------------------------------------------------------------

    async def _answer(self, message: discord.Message, request: _Request) -> None:
        path = self.bot.answers
        asker = Asker.of_message(message)
        conversation = request.conversation
        turns = conversation.turns if conversation is not None else ()
        if len(turns) >= self.bot.settings.conversation_max_turns:
            await self._reply(message, TOO_LONG)
            return
        retry_after = path.take_cooldown(asker.user_id)
        if retry_after is not None:
            await self._reply(message, f"Please wait {retry_after:.0f} s before asking again.")
            return
        channel = message.channel
        in_thread = isinstance(channel, discord.Thread)
        if not _may(channel, "send_messages_in_threads" if in_thread else "send_messages"):
            # Said once in the log; answering anyway would only collect 403s.
            path.missing_permission(channel, "Send Messages" + (" in Threads" if in_thread else ""))
            return
        refusal = path.refusal(request.question, asker)
        if refusal is not None:
            await self._reply(message, refusal)
            return
        thread = None
        if request.new_thread:
            if _may(channel, "create_public_threads", "send_messages_in_threads"):
                thread = await path.open_thread(message, request.question)
            else:
                path.missing_permission(channel, "Create Public Threads")
        interval = self.bot.settings.edit_interval_s
        if thread is not None:
            writer = MessageWriter(thread, interval=interval)
        else:
            writer = MessageWriter(message.channel, interval=interval, reply_to=message)
        history = [Turn(t.question, t.answer) for t in turns]
        delivered = await path.deliver(request.question, writer, asker, history=history)
        if delivered is not None:
            await path.remember(delivered, conversation.id if conversation else None, thread)

    async def _reply(self, message: discord.Message, text: str) -> None:
        try:
            await message.reply(text, mention_author=False, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            self.bot.answers.missing_permission(message.channel, "Send Messages")


def _may(channel: object, *permissions: str) -> bool:
    """Whether the bot holds `permissions` in `channel` (True when the cache cannot tell)."""
    guild = getattr(channel, "guild", None)
    if not isinstance(channel, discord.abc.GuildChannel | discord.Thread) or guild is None:
        return True
    granted = channel.permissions_for(guild.me)
    return all(getattr(granted, name) for name in permissions)


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Conversations(bot))
