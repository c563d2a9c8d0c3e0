"""Conversations end to end: follow-ups in the bot's threads, replies to answers, @mentions,
what is ignored, the Message Content intent, and a restart between two turns. The real
discord.py client against the loopback fake Discord, answering with the real rag_core (Milvus
Lite, the offline embedder, the tiny vLLM engine; its text is noise: mechanics only)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import discord
import pytest

from bot import metrics
from bot.answer_path import thread_name
from bot.client import RagBot
from bot.cogs.conversations import TOO_LONG
from bot.feedback import Conversation, FeedbackStore
from bot.forum_queue import ForumQueue
from rag_core.answer.answering import REFUSAL, Answerer
from rag_core.answer.conversation import Turn, rewrite_by_rules
from rag_core.answer.llm import GenerationChunk
from rag_core.runtime import Rag
from rag_core.search.retrieval import Retrieval, Retriever
from tests.bot_fixtures import Indexed, ShapedGenerator, World, populate, running_bot
from tests.fake_discord import (
    FakeChannel,
    FakeDiscord,
    FakeInteraction,
    FakeMember,
    FakeMessage,
)

FIRST = "How do I configure a GPU index such as CAGRA?"
FOLLOW_UP = "and what about IVF_PQ?"
FOOTER = "-# Answered in"
INTENT_MESSAGE_CONTENT = 1 << 15
TALK = {"discord_message_content": True, "conversation_rewrite": "rules"}


class PromptSpy(ShapedGenerator):
    """The shared engine, keeping every prompt it is asked to complete."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.prompts: list[str] = []
        self.started: list[float] = []  # per prompt, when the engine was asked
        self.done: dict[int, float] = {}  # prompt index -> when its stream was read to the end

    async def stream(  # type: ignore[override]
        self, prompt: str, *, max_tokens: int | None = None, request_id: str | None = None
    ) -> AsyncIterator[GenerationChunk]:
        n = len(self.prompts)
        self.prompts.append(prompt)
        self.started.append(time.monotonic())
        async for chunk in super().stream(prompt, max_tokens=max_tokens, request_id=request_id):
            yield chunk
        self.done[n] = time.monotonic()


class QuerySpy(Retriever):
    """The real retriever, keeping every question it searched with."""

    def __init__(self, inner: Retriever) -> None:
        super().__init__(inner.settings, inner.store, inner.embedder)
        self.queries: list[str] = []

    async def retrieve(
        self,
        question: str,
        *,
        top_k: int | None = None,
        filter: str | None = None,
        verified_scope: Sequence[str] | None = None,
    ) -> Retrieval:
        self.queries.append(question)
        return await super().retrieve(
            question, top_k=top_k, filter=filter, verified_scope=verified_scope
        )


def spied(
    indexed: Indexed, *, pace: float = 0.0, **overrides: object
) -> tuple[Rag, PromptSpy, QuerySpy]:
    """The module's rag_core under `overrides`, its engine (`pace` s per token) and retriever
    watched."""
    assert indexed.rag.generator is not None
    generator = PromptSpy(indexed.rag.generator, max_tokens=8, pace=pace)
    retriever = QuerySpy(indexed.rag.retriever)
    rag = indexed.with_settings(generator, **overrides)
    answerer = Answerer(rag.settings, retriever, generator)
    return dataclasses.replace(rag, retriever=retriever, answerer=answerer), generator, retriever


def answers_in(w: World | FakeDiscord, channel: FakeChannel) -> list[FakeMessage]:
    """The bot's finished answers in a channel or thread, oldest first."""
    fake = w if isinstance(w, FakeDiscord) else w.fake
    return [
        m
        for m in fake.channel_messages(channel)
        if m.author is fake.bot_user and not m.deleted and FOOTER in m.content
    ]


async def wait_answers(w: World | FakeDiscord, channel: FakeChannel, count: int = 1) -> None:
    fake = w if isinstance(w, FakeDiscord) else w.fake
    await fake.wait_for(lambda: len(answers_in(w, channel)) >= count, timeout=180)


async def ask(
    w: World | FakeDiscord, store: FeedbackStore, user: FakeMember, question: str = FIRST
) -> FakeInteraction:
    """/ask, and wait until the answer and its conversation are stored."""
    fake = w if isinstance(w, FakeDiscord) else w.fake
    inter = await fake.invoke("ask", {"question": question}, user=user)
    await inter.wait_for(
        lambda i: i.original is not None and FOOTER in i.original.content, timeout=180
    )
    assert inter.original is not None
    async with asyncio.timeout(30):
        while await store.conversation(message_id=inter.original.id) is None:
            await asyncio.sleep(0.05)
    return inter


async def wait_turns(
    store: FeedbackStore, count: int, *, thread_id: int | None = None, message_id: int | None = None
) -> Conversation:
    """The conversation once it holds `count` turns (recorded right after the answer)."""
    async with asyncio.timeout(30):
        while True:
            found = await store.conversation(thread_id=thread_id, message_id=message_id)
            if found is not None and len(found.turns) >= count:
                return found
            await asyncio.sleep(0.05)


def only_thread(fake: FakeDiscord, channel: FakeChannel) -> FakeChannel:
    [thread] = fake.threads_of(channel)
    return thread


# --------------------------------------------------------------------------- follow-ups


async def test_a_follow_up_in_the_answers_thread_is_answered_with_the_first_turn(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, engine, retriever = spied(indexed, **TALK)
    async with running_bot(rag, tmp_path, **TALK) as w:
        inter = await ask(w, w.store, w.alice)
        assert inter.original is not None
        # The public answer got a thread, named from the question, started on the answer.
        thread = await wait_thread(w, w.general)
        assert thread.id == inter.original.id and thread.name == thread_name(FIRST)
        assert thread.owner_id == w.fake.bot_user.id
        first_prompt = len(engine.prompts)

        # The asker's follow-up (another person's is left to people: test_bot_helpers.py).
        follow_up = await w.fake.user_message(thread, w.alice, FOLLOW_UP)
        await wait_answers(w, thread)
        [answer] = answers_in(w, thread)
        assert answer.message_reference is not None
        assert int(answer.message_reference["message_id"]) == follow_up.id
        # The engine's prompt held the first turn (as data), then the follow-up as asked.
        prompt = engine.prompts[first_prompt]
        assert "Earlier in this conversation" in prompt and f"User: {FIRST}" in prompt
        assert f"Question: {FOLLOW_UP}" in prompt
        # Retrieval searched with the standalone question, not with the follow-up as typed.
        standalone = rewrite_by_rules(FOLLOW_UP, [Turn(FIRST, "")])
        assert retriever.queries[-1] == standalone != FOLLOW_UP
        conversation = await wait_turns(w.store, 2, thread_id=thread.id)
        assert [(t.question, t.standalone) for t in conversation.turns] == [
            (FIRST, FIRST),
            (FOLLOW_UP, standalone),
        ]
        # The follow-up's answer can be voted on like any answer.
        await w.fake.wait_for(lambda: len(answer.reactions) == 2)
    w.fake.assert_clean()


async def test_a_reply_to_an_answer_continues_its_conversation(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, engine, retriever = spied(indexed, **TALK)
    async with running_bot(rag, tmp_path, ask_threads=False, **TALK) as w:
        inter = await ask(w, w.store, w.alice)
        assert inter.original is not None and not w.fake.threads_of(w.general)
        reply = await w.fake.user_message(w.general, w.alice, FOLLOW_UP, reply_to=inter.original)
        await wait_answers(w, w.general, 2)
        answer = answers_in(w, w.general)[-1]
        assert answer.message_reference is not None
        assert int(answer.message_reference["message_id"]) == reply.id
        assert f"User: {FIRST}" in engine.prompts[-1]
        assert retriever.queries[-1] == rewrite_by_rules(FOLLOW_UP, [Turn(FIRST, "")])
        conversation = await wait_turns(w.store, 2, message_id=answer.id)
        assert [t.question for t in conversation.turns] == [
            FIRST,
            FOLLOW_UP,
        ]
        # Replying to the follow-up's answer continues the same conversation.
        await w.fake.user_message(w.general, w.bob, "Why?", reply_to=answer)
        await wait_answers(w, w.general, 3)
        assert engine.prompts[-1].count("User: ") == 2
        again = await wait_turns(w.store, 3, message_id=answers_in(w, w.general)[-1].id)
        assert again.id == conversation.id
    w.fake.assert_clean()


async def test_a_mention_is_answered_in_a_new_thread_under_it(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rag, engine, _ = spied(indexed, **TALK)
    async with running_bot(rag, tmp_path, **TALK) as w:
        me = w.fake.bot_user.id
        question = f"<@{me}> how do I build a GPU index with CAGRA?"
        asked = await w.fake.user_message(w.general, w.alice, question)
        thread = await wait_thread(w, w.general)
        assert thread.id == asked.id and thread.name == "how do I build a GPU index with CAGRA?"
        await wait_answers(w, thread)
        assert "Question: how do I build a GPU index with CAGRA?" in engine.prompts[-1]
        # Where the bot may not start threads it answers inline, and says why once, in the log.
        locked = w.guild.add_channel("no-threads")
        no_threads = discord.PermissionOverwrite(create_public_threads=False)
        w.guild.set_overwrite(locked, w.fake.bot_member(w.guild), no_threads)
        await w.fake.dispatch("CHANNEL_CREATE", locked.to_payload())
        with caplog.at_level(logging.WARNING, logger="bot.answer_path"):
            for n in (1, 2):
                await w.fake.user_message(locked, w.bob, f"<@{me}> what is CAGRA?")
                await wait_answers(w, locked, n)
        assert not w.fake.threads_of(locked)
        told = [m for m in caplog.messages if "Create Public Threads" in m]
        assert len(told) == 1, told
    w.fake.assert_clean()


async def test_an_ask_where_threads_are_not_allowed_is_continued_by_replies(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rag, engine, _ = spied(indexed, **TALK)
    async with running_bot(rag, tmp_path, **TALK) as w:
        no_threads = discord.PermissionOverwrite(create_public_threads=False)
        w.guild.set_overwrite(w.general, w.fake.bot_member(w.guild), no_threads)
        with caplog.at_level(logging.WARNING, logger="bot.answer_path"):
            first = await ask(w, w.store, w.alice)
            await ask(w, w.store, w.bob, "What is CAGRA?")
        assert not w.fake.threads_of(w.general)
        assert len([m for m in caplog.messages if "Create Public Threads" in m]) == 1
        # No thread, but the answer is still a conversation: a reply continues it.
        assert first.original is not None
        await w.fake.user_message(w.general, w.alice, FOLLOW_UP, reply_to=first.original)
        await wait_answers(w, w.general, 3)
        assert f"User: {FIRST}" in engine.prompts[-1]
    w.fake.assert_clean()


async def test_a_follow_ups_model_rewrite_waits_for_a_free_answer_slot(
    indexed: Indexed, tmp_path: Path
) -> None:
    by_model = {"discord_message_content": True, "conversation_rewrite": "llm"}
    rag, engine, _ = spied(indexed, pace=0.4, **by_model)
    async with running_bot(rag, tmp_path, max_concurrent_answers=1, **by_model) as w:
        await ask(w, w.store, w.alice)
        thread = await wait_thread(w, w.general)
        # Bob's answer holds the only slot (8 tokens at 0.4 s each) when the follow-up comes.
        await w.fake.invoke("ask", {"question": "What is a replica?"}, user=w.bob)
        await w.fake.wait_for(lambda: "Question: What is a replica?" in engine.prompts[-1])
        await w.fake.user_message(thread, w.alice, FOLLOW_UP)
        await wait_answers(w, thread)
        busy = next(i for i, p in enumerate(engine.prompts) if "What is a replica?" in p)
        rewrite = next(i for i, p in enumerate(engine.prompts) if "standalone search" in p)
        assert rewrite > busy and engine.started[rewrite] >= engine.done[busy]
    w.fake.assert_clean()


# --------------------------------------------------------------------------- never noisy


async def test_bots_system_messages_other_people_and_other_threads_are_ignored(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, engine, _ = spied(indexed, **TALK)
    async with running_bot(rag, tmp_path, **TALK) as w:
        await ask(w, w.store, w.alice)
        thread = await wait_thread(w, w.general)
        prompts = len(engine.prompts)
        other_bot = w.fake.add_user("helper-bot", bot=True)
        w.fake.add_member(w.guild, other_bot)
        await w.fake.user_message(thread, other_bot, "and for IVF?")  # a bot
        await w.fake.user_message(thread, w.bob, "", msg_type=7)  # a system message
        await w.fake.user_message(thread, w.bob, f"<@{w.carol.id}> can you check this?")
        await w.fake.user_message(w.general, w.bob, "how do I build an IVF index?")  # no mention
        people = FakeChannel(
            id=9_000_001,
            guild_id=w.guild.id,
            name="chat",
            type=11,
            parent_id=w.general.id,
            owner_id=w.bob.id,
        )
        w.guild.threads[people.id] = people
        await w.fake.dispatch("THREAD_CREATE", {**people.to_payload(), "newly_created": True})
        await w.fake.user_message(people, w.bob, "what is an IVF index?")  # not the bot's
        # A mention in that thread is answered, inline; by then the rest would have been too.
        await w.fake.user_message(people, w.alice, f"<@{w.fake.bot_user.id}> what is IVF_PQ?")
        await wait_answers(w, people)
        await w.fake.wait_quiet()
        assert len(engine.prompts) == prompts + 1
        assert not answers_in(w, thread) and len(answers_in(w, w.general)) == 1
        assert [m for m in w.fake.channel_messages(thread) if m.author is w.fake.bot_user] == []
    w.fake.assert_clean()


async def test_a_long_thread_asks_for_a_new_question_and_the_cooldown_is_shared(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, engine, _ = spied(indexed, **TALK)
    async with running_bot(rag, tmp_path, conversation_max_turns=1, ask_cooldown_s=60, **TALK) as w:
        await ask(w, w.store, w.alice)
        thread = await wait_thread(w, w.general)
        prompts = len(engine.prompts)
        await w.fake.user_message(thread, w.alice, FOLLOW_UP)
        await w.fake.wait_for(lambda: bool(bot_messages(w, thread)))
        assert bot_messages(w, thread)[0].content == TOO_LONG
        # One cooldown per person, whichever way the question arrives.
        await w.fake.user_message(w.general, w.alice, f"<@{w.fake.bot_user.id}> what is IVF?")
        await w.fake.wait_for(lambda: len(bot_messages(w, w.general)) >= 2)
        assert "Please wait" in bot_messages(w, w.general)[-1].content
        await w.fake.wait_quiet()
        assert len(engine.prompts) == prompts
    w.fake.assert_clean()


# --------------------------------------------------------------------------- the intent


async def test_without_the_message_content_intent_follow_ups_are_off_and_ask_works(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rag, engine, _ = spied(indexed, conversation_rewrite="rules")
    with caplog.at_level(logging.INFO, logger="bot.client"):
        async with running_bot(rag, tmp_path, conversation_rewrite="rules") as w:
            [identify] = [f for f in w.fake.gateway_frames if f.op == 2]
            assert isinstance(identify.data, dict)
            assert not identify.data["intents"] & INTENT_MESSAGE_CONTENT
            inter = await ask(w, w.store, w.alice)  # /ask works, with no thread to follow up in
            assert inter.original is not None and not w.fake.threads_of(w.general)
            prompts = len(engine.prompts)
            # A reply is no follow-up without the intent (even if its ping carries its text).
            await w.fake.user_message(w.general, w.bob, FOLLOW_UP, reply_to=inter.original)
            # Neither is a forum post (its text is blank without the intent).
            await w.fake.forum_post(w.help, w.alice, *COVERED)
            # A mention carries its text even without the intent: answered.
            me = w.fake.bot_user.id
            await w.fake.user_message(w.general, w.alice, f"<@{me}> what is IVF_PQ?")
            thread = await wait_thread(w, w.general)
            await wait_answers(w, thread)
            await w.fake.wait_quiet()
            assert len(engine.prompts) == prompts + 1
            assert "User: " not in engine.prompts[-1]
    assert any(
        "Message Content intent off" in m and "new forum posts" in m and "Developer Portal" in m
        for m in caplog.messages
    )
    w.fake.assert_clean()


async def test_the_intent_is_requested_when_the_setting_asks_for_it(
    indexed: Indexed, tmp_path: Path
) -> None:
    async with running_bot(indexed.rag, tmp_path, discord_message_content=True) as w:
        [identify] = [f for f in w.fake.gateway_frames if f.op == 2]
        assert isinstance(identify.data, dict)
        assert identify.data["intents"] & INTENT_MESSAGE_CONTENT
    w.fake.assert_clean()


# --------------------------------------------------------------------------- help forums

COVERED = ("GPU index with CAGRA", "How do I configure a GPU index such as CAGRA?")
UNCOVERED = ("Sourdough", "Where can I buy a sourdough starter?")
GATE = {"relevance_threshold": 0.44}  # the offline embedder's calibrated gate


async def test_a_forum_post_the_docs_cover_gets_one_answer_and_one_they_dont_gets_none(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, engine, _ = spied(indexed, **GATE, **TALK)
    async with running_bot(rag, tmp_path, **TALK) as w:
        me = w.fake.bot_user.id
        post, _ = await w.fake.forum_post(w.help, w.alice, *COVERED)
        await wait_answers(w, post)
        # The answer is the post's first reply, and the only message the bot posted there:
        # no "searching" line came and went.
        [answer] = bot_messages(w, post)
        assert FOOTER in answer.content and answer.message_reference is None
        assert f"Question: {COVERED[0]}\n{COVERED[1]}" in engine.prompts[-1]
        await w.fake.wait_for(lambda: "✅" in answer.reactions)  # how to mark it solved
        # The rest of the post is the poster's conversation with people...
        prompts = len(engine.prompts)
        await w.fake.user_message(post, w.bob, "Did you set the GPU memory pool?")
        await w.fake.user_message(post, w.alice, "Yes, still the same error")
        uncovered, _ = await w.fake.forum_post(w.help, w.bob, *UNCOVERED)
        await w.fake.wait_quiet()
        assert len(engine.prompts) == prompts and len(bot_messages(w, post)) == 1
        assert bot_messages(w, uncovered) == []  # a post the docs don't cover: left to people
        # ...and counted as a coverage gap (/gaps).
        gaps = [q.text for q in await w.store.gap_questions(0)]
        assert gaps == [f"{UNCOVERED[0]}\n{UNCOVERED[1]}"]
        # ...until someone mentions the bot: a follow-up of the first answer.
        await w.fake.user_message(post, w.alice, f"<@{me}> and for IVF_PQ?")
        await wait_answers(w, post, 2)
        assert f"User: {COVERED[0]}" in engine.prompts[-1]
        conversation = await wait_turns(w.store, 2, thread_id=post.id)
        assert conversation.turns[0].question == f"{COVERED[0]}\n{COVERED[1]}"
        # A mention in the uncovered post is a direct question: it gets the honest refusal.
        await w.fake.user_message(uncovered, w.bob, f"<@{me}> {UNCOVERED[1]}")
        refused = lambda: [m.content.startswith(REFUSAL) for m in bot_messages(w, uncovered)]  # noqa: E731
        await w.fake.wait_for(lambda: refused() == [True], timeout=60)
        # A post in a forum the bot does not watch is not answered.
        other = w.guild.add_forum("offtopic")
        await w.fake.dispatch("CHANNEL_CREATE", other.to_payload())
        elsewhere, _ = await w.fake.forum_post(other, w.alice, *COVERED)
        await w.fake.wait_quiet()
        assert bot_messages(w, elsewhere) == []
        # A higher bar for new posts (FORUM_RELEVANCE_THRESHOLD) leaves even a covered one to
        # people; it is a gap like the uncovered one.
        w.bot.settings.forum_relevance_threshold = 0.99
        strict, _ = await w.fake.forum_post(w.help, w.dana, *COVERED)
        covered = f"{COVERED[0]}\n{COVERED[1]}"
        async with asyncio.timeout(60):
            while covered not in [q.text for q in await w.store.gap_questions(0)]:
                await asyncio.sleep(0.1)
        assert bot_messages(w, strict) == []
    w.fake.assert_clean()


async def test_a_forum_can_get_the_closest_pages_for_posts_the_docs_dont_cover(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, _, _ = spied(indexed, **GATE, **TALK)
    async with running_bot(rag, tmp_path, forum_uncovered="closest", **TALK) as w:
        post, _ = await w.fake.forum_post(w.help, w.bob, *UNCOVERED)
        await w.fake.wait_for(lambda: FOOTER in "".join(m.content for m in bot_messages(w, post)))
        await w.fake.wait_quiet()
        [reply] = bot_messages(w, post)
        assert reply.content.startswith(REFUSAL + "\n[1] ")
        assert "✅" not in reply.reactions  # nothing to mark as the solution
    w.fake.assert_clean()


async def test_a_post_the_bot_stays_silent_on_does_not_spend_the_posters_cooldown(
    indexed: Indexed, tmp_path: Path
) -> None:
    """The forum queue takes the poster's cooldown to start an answer; when nothing is posted
    (the docs don't cover it), the poster's next question to the bot is not made to wait."""
    rag, _, _ = spied(indexed, **GATE, **TALK)
    async with running_bot(rag, tmp_path, ask_cooldown_s=30, **TALK) as w:
        me = w.fake.bot_user.id
        uncovered, _ = await w.fake.forum_post(w.help, w.bob, *UNCOVERED)
        while not await w.store.gap_questions(0):  # the silent outcome is recorded
            await asyncio.sleep(0.05)
        await w.fake.wait_quiet()
        assert bot_messages(w, uncovered) == []
        await w.fake.user_message(uncovered, w.bob, f"<@{me}> {UNCOVERED[1]}")
        said = lambda: [m.content[:20] for m in bot_messages(w, uncovered)]  # noqa: E731
        await w.fake.wait_for(lambda: said() == [REFUSAL[:20]], timeout=60)
    w.fake.assert_clean()


async def test_the_poster_marks_the_answer_solved_which_tags_the_post(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rag, _, _ = spied(indexed, **TALK)
    async with running_bot(rag, tmp_path, **TALK) as w:
        solved = w.help.tag("Solved")
        post, _ = await w.fake.forum_post(w.help, w.alice, *COVERED, tags=["Question"])
        await wait_answers(w, post)
        [answer] = bot_messages(w, post)
        await w.fake.add_reaction(post, answer, w.bob, "✅")  # not the poster: nothing
        await w.fake.wait_quiet()
        assert post.applied_tags == [w.help.tag("Question")]
        await w.fake.add_reaction(post, answer, w.alice, "✅")
        await w.fake.wait_for(lambda: solved in post.applied_tags)
        assert post.applied_tags == [w.help.tag("Question"), solved]
        # Without Manage Threads the bot cannot tag: it says so once, in the log.
        w.guild.set_overwrite(w.help, w.fake.bot_member(w.guild), discord.PermissionOverwrite())
        await w.fake.dispatch("CHANNEL_UPDATE", w.help.to_payload())
        with caplog.at_level(logging.WARNING, logger="bot.answer_path"):
            for user in (w.bob, w.carol):
                other, _ = await w.fake.forum_post(w.help, user, *COVERED)
                await wait_answers(w, other)
                await w.fake.add_reaction(other, bot_messages(w, other)[0], user, "✅")
                await w.fake.wait_quiet()
                assert other.applied_tags == []
        assert len([m for m in caplog.messages if "Manage Threads" in m]) == 1
        assert len([e for e in w.fake.errors if e.code == 50013]) == 2  # one try per click
    w.fake.assert_clean(allow=[50013])


# --------------------------------------------------------------------------- floods and bursts


async def test_a_flood_from_one_person_gets_one_answer_and_one_wait_notice(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, _, _ = spied(indexed, **TALK)
    # Bob floods Alice's thread (asking the bot: no stepping back for him).
    async with running_bot(rag, tmp_path, ask_cooldown_s=20, step_back_for="off", **TALK) as w:
        await ask(w, w.store, w.alice)
        thread = await wait_thread(w, w.general)
        for n in range(30):  # 30 messages in a second or two
            await w.fake.user_message(thread, w.bob, f"{FOLLOW_UP} ({n})")
        await wait_answers(w, thread)
        await w.fake.wait_quiet()
        said = bot_messages(w, thread)
        assert len(said) == 2, [m.content for m in said]
        assert len(answers_in(w, thread)) == 1
        assert [m.content.startswith("Please wait") for m in said].count(True) == 1
    w.fake.assert_clean()


async def test_concurrent_posters_cannot_pass_the_turn_limit(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, _, _ = spied(indexed, **TALK)
    # Everyone in the thread asks the bot (no stepping back for the others' messages).
    async with running_bot(
        rag, tmp_path, conversation_max_turns=4, step_back_for="off", **TALK
    ) as w:
        await ask(w, w.store, w.alice)
        thread = await wait_thread(w, w.general)
        posters = [w.member(f"poster{n}") for n in range(30)]
        await asyncio.gather(
            *(w.fake.user_message(thread, p, f"and IVF_PQ ({n})?") for n, p in enumerate(posters))
        )
        await wait_answers(w, thread, 3)
        await w.fake.wait_quiet(1.0)
        conversation = await w.store.conversation(thread_id=thread.id)
        assert conversation is not None and len(conversation.turns) == 4
        assert len(answers_in(w, thread)) == 3
        # The rest hear once, all together, that the conversation is full.
        assert [m.content for m in bot_messages(w, thread)].count(TOO_LONG) == 1
        assert len(bot_messages(w, thread)) == 4
    w.fake.assert_clean()


def _forum_left(reason: str) -> float:
    found = metrics.METRICS.registry.get_sample_value(
        "docsbot_forum_posts_left_total", {"reason": reason}
    )
    return found or 0.0


async def test_a_forum_burst_is_answered_or_left_to_people_never_dropped(
    indexed: Indexed, tmp_path: Path
) -> None:
    # Answers paced (8 tokens, 0.8 s each) so the queued posts outlast FORUM_MAX_WAIT_S
    # whatever the host's speed: forum answers are posted whole, with no edits to slow them.
    rag, _, _ = spied(indexed, pace=0.1, **TALK)
    small = {
        "max_concurrent_answers": 2,
        "max_queued_answers": 2,
        "forum_max_queued": 12,
        "forum_max_wait_s": 2.0,
        "ask_cooldown_s": 1.0,  # a poster's next post waits for their cooldown
    }
    full, waited = _forum_left("full"), _forum_left("waited")
    async with running_bot(rag, tmp_path, **small, **TALK) as w:
        people = [w.member(f"poster{n}") for n in range(10)]
        posts = [
            (await w.fake.forum_post(w.help, people[n % 10], f"Post {n}", f"{COVERED[1]} #{n}"))[0]
            for n in range(100)
        ]
        cog = w.bot.get_cog("Conversations")
        forum = getattr(cog, "forum", None)  # the extension's own module: no isinstance(cog)
        assert isinstance(forum, ForumQueue)
        async with asyncio.timeout(60):
            while True:
                answered = {p.name for p in posts if answers_in(w, p)}
                left = [q.text.split("\n")[0] for q in await w.store.gap_questions(0)]
                if len(answered) + len(left) >= len(posts) and not forum.waiting:
                    break
                await asyncio.sleep(0.2)
        await w.fake.wait_quiet()
        # Every post: answered (once), or recorded as left to people (once); never both.
        assert sorted([*answered, *left]) == sorted(p.name for p in posts)
        assert all(len(bot_messages(w, p)) <= 1 for p in posts)
        assert await w.store.queued_forum_posts() == []
        assert len(answered) >= 2
        assert _forum_left("full") - full >= 1 and _forum_left("waited") - waited >= 1
        assert _forum_left("full") - full + _forum_left("waited") - waited == len(left)
    w.fake.assert_clean()


# --------------------------------------------------------------------------- restarts


async def test_a_restart_between_two_turns_keeps_the_history(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, engine, _ = spied(indexed, **TALK)
    settings = rag.settings.model_copy(update=TALK)
    rag = dataclasses.replace(rag, settings=settings)
    db = tmp_path / "feedback.db"
    async with FakeDiscord() as fake:
        people = populate(fake)
        settings = settings.model_copy(update={"discord_home_guild_ids": [people["guild"].id]})
        general = people["general"]
        with FeedbackStore.open(db) as store:
            bot = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(bot):
                await bot.tree.sync()
                await ask(fake, store, people["alice"])
                thread = await wait_thread(fake, general)
        # A new process: a new client, the same database and the same Discord.
        with FeedbackStore.open(db) as store:
            bot = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(bot):
                await fake.user_message(thread, people["alice"], FOLLOW_UP)
                await wait_answers(fake, thread)
                assert f"User: {FIRST}" in engine.prompts[-1]
                await wait_turns(store, 2, thread_id=thread.id)
        fake.assert_clean()


async def test_a_queued_forum_post_is_answered_after_a_restart(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag, _, _ = spied(indexed, **TALK)
    db = tmp_path / "feedback.db"
    async with FakeDiscord() as fake:
        people = populate(fake)
        settings = rag.settings.model_copy(
            update={
                **TALK,
                "discord_home_guild_ids": [people["guild"].id],
                "forum_channel_ids": [people["help"].id],
                "ask_cooldown_s": 600,
            }
        )
        rag = dataclasses.replace(rag, settings=settings)
        with FeedbackStore.open(db) as store:
            bot = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(bot):
                await bot.tree.sync()
                await ask(fake, store, people["alice"])
                # Alice's cooldown holds her post back: it waits, it is not dropped.
                post, _ = await fake.forum_post(people["help"], people["alice"], *COVERED)
                async with asyncio.timeout(30):
                    while not await store.queued_forum_posts():
                        await asyncio.sleep(0.05)
                await fake.wait_quiet()
                assert not [m for m in fake.channel_messages(post) if m.author is fake.bot_user]
        # A new process finds the post waiting and answers it.
        with FeedbackStore.open(db) as store:
            bot = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(bot):
                await wait_answers(fake, post)
                await fake.wait_quiet()
                assert len(answers_in(fake, post)) == 1
                assert await store.queued_forum_posts() == []
        fake.assert_clean()


# --------------------------------------------------------------------------- helpers


def bot_messages(w: World, channel: FakeChannel) -> list[FakeMessage]:
    return [m for m in w.fake.channel_messages(channel) if m.author is w.fake.bot_user]


async def wait_thread(w: World | FakeDiscord, channel: FakeChannel) -> FakeChannel:
    fake = w if isinstance(w, FakeDiscord) else w.fake
    await fake.wait_for(lambda: bool(fake.threads_of(channel)), timeout=60)
    return only_thread(fake, channel)
