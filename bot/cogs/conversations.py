"""Conversations: follow-ups in the bot's threads, replies to its answers, and @mentions.

Which messages get an answer:
- in a thread the bot started for an answer: every message from a person (a follow-up);
- a reply to one of the bot's answers, anywhere: continues that answer's conversation;
- `@Bot question` elsewhere: a new conversation, answered in a thread under that message
  (inline where a thread is not possible);
- a new post in a forum listed in FORUM_CHANNEL_IDS: one answer as its first reply, only when
  the docs cover it (FORUM_UNCOVERED=closest also posts the "closest pages" reply), so posts
  that people should answer are not buried. Posts wait for an answer slot in the forum queue
  (bot/forum_queue.py), kept across restarts. Later messages in the post are the poster's
  conversation with people: the bot answers them only when mentioned or replied to. The poster
  reacting with a solved emoji (✅) to the bot's answer applies the forum's solved tag.
Never: bots (the bot itself included), system messages, messages that only mention or reply to
other people, threads the bot did not start unless it is mentioned. Reading a message's text
needs the Message Content intent; without it only @mentions reach the bot (Discord sends the
text of a message that mentions it), so follow-ups, replies and forum posts are off.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from rag_core.answer.answering import clean_question
from rag_core.answer.conversation import Turn
from rag_core.config import Settings

from .. import metrics
from ..answer_path import Asker
from ..feedback import Conversation
from ..feedback.records import QueuedPost
from ..forum_queue import ForumQueue
from ..step_back import PERSON_MESSAGES, StepBack
from ..utils import NO_MENTIONS
from ..writers import MessageWriter

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

TOO_LONG = (
    "This conversation is getting long, so my answers would lose track of it. "
    "Please start a new question with /ask or by mentioning me."
)


@dataclass(frozen=True)
class _Request:
    """A message the bot answers: the question, the conversation so far, where it goes."""

    question: str
    conversation: Conversation | None
    new_thread: bool  # answer in a new thread under the message
    forum_post: bool = False  # the first message of a new post in a watched forum


class Conversations(commands.Cog):
    """Answers follow-ups, replies and mentions through the shared answer path."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        self.follow_ups = bot.settings.discord_message_content
        self.forum: ForumQueue | None = None
        self.step_back = StepBack(bot.settings)

    async def cog_load(self) -> None:
        if not self.bot.serving:
            return
        bot = self.bot
        self.forum = ForumQueue(bot.settings, bot.answers, bot.feedback, self._answer_post)
        await self.forum.start(bot.wait_until_ready)  # posts queued before a restart too

    async def cog_unload(self) -> None:
        if self.forum is not None:
            await self.forum.close()

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
            or message.type not in PERSON_MESSAGES
            or message.guild is None
        ):
            return None
        if not self.bot.home.serves(message.guild.id):
            self.bot.home.ignored(message.guild.id, "messages")
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
        if self._is_new_post(message):
            if await store.conversation(thread_id=channel.id) is not None:
                return None  # answered already (the event came twice)
            title = getattr(channel, "name", "")
            return _Request(clean_question(f"{title}\n{question}"), None, False, forum_post=True)
        if isinstance(channel, discord.Thread | discord.PartialMessageable):
            conversation = await store.conversation(thread_id=channel.id)
            # In a thread someone else started (a forum post) people talk among themselves.
            owner = getattr(channel, "owner_id", me.id)
            if conversation is not None and (mentioned or owner == me.id):
                to_me = mentioned or (replied is not None and replied.author.id == me.id)
                if not to_me and self.step_back.leave_to_people(message, conversation.user_id):
                    return None  # a helper is answering in this thread
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

    def _is_new_post(self, message: discord.Message) -> bool:
        """The starter message of a post in a watched forum (it has the post's id)."""
        post = message.channel
        return (
            isinstance(post, discord.Thread)
            and post.parent_id in self.bot.settings.forum_channel_ids
            and message.id == post.id
        )

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
        if request.forum_post:
            await self._queue_post(message, request.question)
            return
        path = self.bot.answers
        store = self.bot.feedback
        asker = Asker.of_message(message)
        conversation = request.conversation
        limit = self.bot.settings.conversation_max_turns
        if conversation is not None and len(conversation.turns) >= limit:
            await self._too_long(message, conversation)  # before the cooldown: said once
            return
        retry_after = path.take_cooldown(asker.user_id)
        if retry_after is not None:
            # Once per cooldown window: a flood of messages is not answered by a flood.
            if path.first_wait_notice(asker.user_id, retry_after):
                await self._reply(message, f"Please wait {retry_after:.0f} s before asking again.")
            return
        reservation = None
        if conversation is not None:
            # The turn is taken before the answer starts, checked and taken in one transaction:
            # concurrent messages cannot pass the limit (the count above may be stale).
            reservation = await store.reserve_turn(conversation.id, limit)
            if reservation is None:
                await self._too_long(message, conversation)
                return
        try:
            await self._answer_turn(message, request, asker, reservation)
        finally:  # an answer that did not come gives its turn back (a no-op once recorded)
            if reservation is not None:
                try:
                    await store.release_turn(reservation)
                except Exception:  # it expires on its own (store.RESERVATION_TTL_S)
                    log.warning("could not release turn reservation %s", reservation, exc_info=True)

    async def _too_long(self, message: discord.Message, conversation: Conversation) -> None:
        """Ask for a new question: once per conversation, however many messages come."""
        if await self.bot.feedback.claim_too_long(conversation.id):
            await self._reply(message, TOO_LONG)

    async def _answer_turn(
        self, message: discord.Message, request: _Request, asker: Asker, reservation: int | None
    ) -> None:
        path = self.bot.answers
        conversation = request.conversation
        turns = conversation.turns if conversation is not None else ()
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
            conversation_id = conversation.id if conversation else None
            await path.remember(delivered, conversation_id, thread, reservation=reservation)

    async def _queue_post(self, message: discord.Message, question: str) -> None:
        """A new forum post waits in the forum queue for an answer slot (bot/forum_queue.py)."""
        invalid = self.bot.answers.invalid(question)
        if invalid is not None:
            log.info("forum post %s left to people: %s", message.channel.id, invalid)
            return
        assert self.forum is not None  # loaded with the cog whenever the bot answers
        await self.forum.add(
            post_id=message.channel.id,
            guild_id=message.guild.id if message.guild is not None else None,
            user_id=message.author.id,
            question=question,
        )

    async def _answer_post(self, queued: QueuedPost) -> bool:
        """The first reply to a queued forum post, when the docs cover it; False when no answer
        slot was free after all (it waits again). Nobody asked the bot here, so it never posts
        a status line, a "please wait" or an error into the post; a post it stays silent on
        gives the poster's cooldown back (the queue took it to start the answer)."""
        outcome = _Post.SILENT
        try:
            outcome = await self._post_answer(queued)
        finally:
            if outcome is not _Post.ANSWERED:
                self.bot.answers.give_back_cooldown(queued.user_id)
        return outcome is not _Post.RETRY

    async def _post_answer(self, queued: QueuedPost) -> _Post:
        path = self.bot.answers
        settings = self.bot.settings
        try:
            post = await self._post(queued.post_id)
        except discord.HTTPException:  # Discord did not answer: the post waits
            log.warning("could not look up forum post %s", queued.post_id, exc_info=True)
            return _Post.RETRY
        if post is None:
            return _Post.SILENT  # deleted or out of sight: nothing to answer
        if await self.bot.feedback.conversation(thread_id=post.id) is not None:
            return _Post.SILENT  # answered before a restart, not yet out of the queue
        if not _may(post, "send_messages_in_threads"):
            path.missing_permission(post.parent or post, "Send Messages in Threads")
            return _Post.SILENT
        if await self.step_back.people_answered(post, queued.user_id):
            return self._left_to_people(post)
        people_first = lambda: self.step_back.people_answered(post, queued.user_id)  # noqa: E731
        writer = _PostWriter(post, interval=settings.edit_interval_s, people_first=people_first)
        asker = Asker(queued.user_id, queued.guild_id, post.id)
        refusals = settings.forum_uncovered == "closest"
        delivered = await path.deliver(
            queued.question,
            writer,
            asker,
            refusals=refusals,
            threshold=settings.forum_relevance_threshold,
        )
        if writer.stepped_back:
            return self._left_to_people(post)
        if delivered is None:
            return _Post.RETRY if writer.busy else _Post.SILENT
        await path.remember(delivered, None, post)
        if delivered.messages and not delivered.answer.refused and _solved_tag(post, settings):
            try:
                await delivered.messages[-1].add_reaction(settings.solved_emojis[0])
            except (discord.HTTPException, IndexError):
                log.warning("could not offer the solved reaction in post %s", post.id)
        return _Post.ANSWERED if delivered.messages else _Post.SILENT

    def _left_to_people(self, post: discord.Thread) -> _Post:
        metrics.observe_forum_left("people")
        log.info("forum post %s: someone replied first, the bot steps back", post.id)
        return _Post.SILENT

    async def _post(self, post_id: int) -> discord.Thread | None:
        """The forum post `post_id`, from the cache or (after a restart) from Discord; None when
        it was deleted or the bot no longer sees it."""
        channel = self.bot.get_channel(post_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(post_id)
            except (discord.NotFound, discord.Forbidden):
                log.info("forum post %s is gone or out of sight: not answered", post_id)
                return None
        return channel if isinstance(channel, discord.Thread) else None

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        try:
            await self._mark_solved(payload)
        except Exception:
            log.exception("could not handle a reaction on message %s", payload.message_id)

    async def _mark_solved(self, payload: discord.RawReactionActionEvent) -> None:
        """The poster's solved emoji on the bot's answer in their post: the solved tag."""
        settings = self.bot.settings
        me = self.bot.user
        post = self.bot.get_channel(payload.channel_id)
        if (
            me is None
            or str(payload.emoji) not in settings.solved_emojis
            or payload.message_author_id not in (None, me.id)
            or not isinstance(post, discord.Thread)
            or not self.bot.home.serves(payload.guild_id)
            or post.parent_id not in settings.forum_channel_ids
            or payload.user_id != post.owner_id  # only the poster says their post is solved
        ):
            return
        tag = _solved_tag(post, settings)
        if tag is None or tag in post.applied_tags:
            return
        if await self.bot.feedback.answer_by_message(payload.message_id) is None:
            return  # not one of the bot's answers
        try:
            await post.add_tags(tag, reason="the poster marked the bot's answer as the solution")
        except discord.Forbidden:  # said once per forum
            self.bot.answers.missing_permission(post.parent or post, "Manage Threads")
        except discord.HTTPException:
            log.warning("could not tag post %s as solved", post.id, exc_info=True)

    async def _reply(self, message: discord.Message, text: str) -> None:
        try:
            await message.reply(text, mention_author=False, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            self.bot.answers.missing_permission(message.channel, "Send Messages")


class _Post(enum.Enum):
    """How a queued forum post ended."""

    ANSWERED = "a reply was posted"
    SILENT = "left to people (nothing posted)"
    RETRY = "no answer slot after all: it waits again"


class _PostWriter(MessageWriter):
    """A forum answer's writer: the answer is posted whole when it is ready (nobody watches it
    stream), unless someone helping replied meanwhile (`people_first`); a "busy" end (the
    answer queue filled up before the post got its slot) is noted, so the post waits again."""

    busy = False
    stepped_back = False

    def __init__(
        self,
        post: discord.Thread,
        *,
        interval: float,
        people_first: Callable[[], Awaitable[bool]],
    ) -> None:
        super().__init__(post, interval=interval, quiet=True)
        self.people_first = people_first

    async def append(self, delta: str) -> None:
        self.text += delta  # held until finish()

    async def finish(self, contents: Sequence[str]) -> list[discord.Message]:
        if await self.people_first():
            self.stepped_back = True
            return []
        return await super().finish(contents)

    async def fail_privately(self, message: str) -> None:
        self.busy = True
        await super().fail_privately(message)


def _solved_tag(post: discord.Thread, settings: Settings) -> discord.ForumTag | None:
    """The forum's tag named FORUM_SOLVED_TAG (case ignored), if it offers one."""
    forum = post.parent
    name = settings.forum_solved_tag.casefold()
    if not name or not isinstance(forum, discord.ForumChannel):
        return None
    return next((t for t in forum.available_tags if t.name.casefold() == name), None)


def _may(channel: object, *permissions: str) -> bool:
    """Whether the bot holds `permissions` in `channel` (True when the cache cannot tell)."""
    guild = getattr(channel, "guild", None)
    if not isinstance(channel, discord.abc.GuildChannel | discord.Thread) or guild is None:
        return True
    granted = channel.permissions_for(guild.me)
    return all(getattr(granted, name) for name in permissions)


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Conversations(bot))
