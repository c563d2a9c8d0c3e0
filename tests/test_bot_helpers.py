"""Helpers in the loop, through the loopback fake Discord and the real answer path: "Ask a
helper" pings the helper role once, and the bot steps back where people are answering."""

from __future__ import annotations

import asyncio
from pathlib import Path

import discord

from bot.cogs.helpers import ASKED, ASKED_BEFORE, NOT_YOURS, PINGED_HERE
from bot.metrics import METRICS
from tests.bot_fixtures import Indexed, ShapedGenerator, World, running_bot
from tests.fake_discord import FakeChannel, FakeInteraction, FakeMessage

FOOTER = "-# Answered in"
QUESTION = "How do I configure a GPU index such as CAGRA?"
# What a hostile asker might type: none of it may ping anyone through the hand-off.
HOSTILE = "@everyone <@{user}> [click](https://evil.example) How do I use CAGRA on a GPU?"
COVERED = ("GPU index with CAGRA", QUESTION)
TALK = {"discord_message_content": True, "conversation_rewrite": "rules"}
GATE = {"relevance_threshold": 0.44}  # the offline embedder's calibrated gate


def buttons(message: FakeMessage) -> dict[str, bool]:
    """custom_id -> disabled, for the message's buttons."""
    return {
        c["custom_id"]: bool(c.get("disabled"))
        for row in message.components
        for c in row.get("components", [])
    }


def bot_texts(w: World, channel: FakeChannel) -> list[str]:
    fake = w.fake
    return [
        m.content
        for m in fake.channel_messages(channel)
        if m.author is fake.bot_user and not m.deleted
    ]


def ephemeral_text(inter: FakeInteraction) -> str:
    return "\n".join(m.content for m in [inter.original, *inter.followups] if m is not None)


async def ask(w: World, question: str, user=None) -> tuple[FakeInteraction, FakeMessage]:
    inter = await w.fake.invoke("ask", {"question": question}, user=user or w.alice)
    await inter.wait_for(
        lambda i: i.original is not None and FOOTER in i.original.content, timeout=120
    )
    message = inter.original
    assert message is not None
    await w.fake.wait_for(lambda: any(k.startswith("handoff:") for k in buttons(message)))
    return inter, message


async def turns(w: World, thread: FakeChannel, count: int) -> None:
    """Until the thread's conversation holds `count` turns (recorded right after an answer)."""
    async with asyncio.timeout(30):
        while True:
            found = await w.store.conversation(thread_id=thread.id)
            if found is not None and len(found.turns) >= count:
                return
            await asyncio.sleep(0.05)


def helpers(w: World):
    return w.guild.add_role("Helpers", discord.Permissions.none(), mentionable=True)


async def test_ask_a_helper_pings_the_role_once_and_only_the_asker_may_press(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    handoffs = METRICS.handoffs._value.get()
    async with running_bot(rag, tmp_path) as w:
        # No helper role set: no button.
        plain = await w.fake.invoke("ask", {"question": QUESTION}, user=w.bob)
        await plain.wait_for(
            lambda i: i.original is not None and len(i.original.reactions) == 2, timeout=120
        )
        await w.fake.wait_quiet()  # delivered to the end (votes, then the button if any)
        role = helpers(w)
        w.bot.settings.helper_role_id = role.id
        hostile = HOSTILE.format(user=w.bob.id)
        _, answer = await ask(w, hostile)
        [custom_id] = [k for k in buttons(answer) if k.startswith("handoff:")]
        # Someone else cannot press it.
        other = await w.fake.click(answer, custom_id, user=w.bob)
        await other.wait_done()
        assert NOT_YOURS in ephemeral_text(other) and other.ephemeral
        assert w.fake.pings() == []
        # The asker can: one ping of the role, the question quoted inert, the button greyed.
        pressed = await w.fake.click(answer, custom_id, user=w.alice)
        await pressed.wait_done()
        assert ASKED in ephemeral_text(pressed)
        [(ping, version)] = w.fake.pings()
        assert version.mentions.roles == {role.id} and not version.mentions.users
        assert not version.mentions.everyone
        assert ping.content.startswith(f"<@&{role.id}> alice")
        assert "CAGRA" in ping.content and "](https://evil" not in ping.content
        assert ping.message_reference is not None  # a reply to the answer
        assert buttons(answer)[custom_id] is True
        # A second press (a stale client, a replayed id) pings nobody.
        again = await w.fake.click(answer, custom_id, user=w.alice)
        await again.wait_done()
        assert ASKED_BEFORE in ephemeral_text(again) and len(w.fake.pings()) == 1
        # Another answer in the same channel: the helpers were pinged here already.
        _, second = await ask(w, QUESTION)
        [second_id] = [k for k in buttons(second) if k.startswith("handoff:")]
        third = await w.fake.click(second, second_id, user=w.alice)
        await third.wait_done()
        assert PINGED_HERE in ephemeral_text(third) and len(w.fake.pings()) == 1
        assert plain.original is not None and buttons(plain.original) == {}
        stats = await w.store.stats(guild_id=w.guild.id)
        assert stats["handoffs"] == 1
        assert METRICS.handoffs._value.get() == handoffs + 1
    w.fake.assert_clean(allow_pings=True)


async def test_a_forum_post_a_person_answers_first_gets_no_bot_answer(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8), **TALK)
    left = METRICS.forum_left.labels("people")._value.get()
    async with running_bot(rag, tmp_path, forum_grace_s=1.5, **TALK) as w:
        # A helper replies within the grace delay: the bot leaves the post to them.
        helped, _ = await w.fake.forum_post(w.help, w.bob, *COVERED)
        await w.fake.user_message(helped, w.carol, "Did you enable the GPU build?")
        # Nobody replies to this one: it is answered after the delay.
        alone, _ = await w.fake.forum_post(w.help, w.alice, *COVERED)
        await w.fake.wait_for(lambda: any(FOOTER in t for t in bot_texts(w, alone)), timeout=120)
        await w.fake.wait_for(
            lambda: METRICS.forum_left.labels("people")._value.get() == left + 1, timeout=30
        )
        await w.fake.wait_quiet()
        assert bot_texts(w, helped) == []
        assert await w.store.queued_forum_posts() == []
    w.fake.assert_clean()


async def test_in_its_thread_the_bot_leaves_unaddressed_messages_to_a_helper(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(
        ShapedGenerator(indexed.rag.generator, max_tokens=8), **GATE, **TALK
    )
    async with running_bot(rag, tmp_path, **TALK) as w:
        me = w.fake.bot_user.id
        await w.fake.user_message(w.general, w.alice, f"<@{me}> {QUESTION}")
        await w.fake.wait_for(lambda: w.fake.threads_of(w.general), timeout=60)
        [thread] = w.fake.threads_of(w.general)
        # Finished replies: an answer, or the honest "not in the docs" one.
        answers = lambda: [t for t in bot_texts(w, thread) if "-# " in t]  # noqa: E731
        await w.fake.wait_for(lambda: len(answers()) == 1, timeout=120)
        await turns(w, thread, 1)
        # A helper joins: neither their message nor the asker's unaddressed reply is answered.
        await w.fake.user_message(thread, w.carol, "Which Milvus version are you on?")
        await w.fake.user_message(thread, w.alice, "2.5, with a T4 GPU")
        await w.fake.wait_quiet()
        await asyncio.sleep(0.5)
        assert len(answers()) == 1 and len(bot_texts(w, thread)) == 1
        # Addressed to the bot, it answers.
        await w.fake.user_message(thread, w.alice, f"<@{me}> does CAGRA need a GPU?")
        await w.fake.wait_for(lambda: len(answers()) == 2, timeout=120)
    w.fake.assert_clean()
