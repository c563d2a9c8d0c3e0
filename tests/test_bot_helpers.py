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
        # With a hand-off forum, a press opens a post there: the ping, the question, the bot's
        # answer and its sources; the asker is told where.
        w.bot.settings.handoff_forum_id = w.help.id
        w.bot.settings.handoff_per_thread = 5
        _, fourth = await ask(w, QUESTION, user=w.bob)
        [fourth_id] = [k for k in buttons(fourth) if k.startswith("handoff:")]
        forwarded = await w.fake.click(fourth, fourth_id, user=w.bob)
        await forwarded.wait_done()
        [post] = [t for t in w.fake.threads_of(w.help) if t.owner_id == w.fake.bot_user.id]
        assert f"<#{post.id}>" in ephemeral_text(forwarded)
        assert post.name == QUESTION
        [starter] = w.fake.channel_messages(post)
        assert starter.id == post.id and starter.content.startswith(f"<@&{role.id}> bob")
        assert "**The bot's answer**" in starter.content and "**Sources**" in starter.content
        link = f"https://discord.com/channels/{w.guild.id}/{fourth.channel_id}/{fourth.id}"
        assert link in starter.content
        assert [m.id for m, _ in w.fake.pings()] == [ping.id, starter.id]
        assert w.fake.pings()[1][1].mentions.roles == {role.id}
        stats = await w.store.stats(guild_id=w.guild.id)
        assert stats["handoffs"] == 2
        assert METRICS.handoffs._value.get() == handoffs + 2
    w.fake.assert_clean(allow_pings=True)


async def test_an_uncovered_post_nobody_answers_reminds_the_helpers_once(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(
        ShapedGenerator(indexed.rag.generator, max_tokens=8), **GATE, **TALK
    )
    async with running_bot(rag, tmp_path, forum_remind_after_s=1.0, **TALK) as w:
        w.bot.settings.helper_role_id = w.mods_role.id
        bread = ("Sourdough", "What is the best recipe for sourdough bread?")
        alone, _ = await w.fake.forum_post(w.help, w.alice, *bread)
        helped, _ = await w.fake.forum_post(w.help, w.dana, *bread)
        await w.fake.user_message(helped, w.bob, "Try a baking forum!")
        await w.fake.wait_for(lambda: len(w.fake.pings()) == 1, timeout=60)
        [(reminder, version)] = w.fake.pings()
        assert reminder.channel_id == alone.id and version.mentions.roles == {w.mods_role.id}
        assert "no reply" in reminder.content
        await asyncio.sleep(2.5)  # later sweeps: still one reminder, none for the helped post
        assert len(w.fake.pings()) == 1 and bot_texts(w, helped) == []
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
        # STEP_BACK_FOR=helpers: only a reply by the helper role counts (read back from Discord,
        # where messages carry no roles), not anyone's.
        w.bot.settings.step_back_for = "helpers"
        w.bot.settings.helper_role_id = w.mods_role.id
        chatted, _ = await w.fake.forum_post(w.help, w.alice, *COVERED)
        await w.fake.user_message(chatted, w.bob, "Same problem here!")
        by_helper, _ = await w.fake.forum_post(w.help, w.dana, *COVERED)
        await w.fake.user_message(by_helper, w.carol, "Did you enable the GPU build?")
        await w.fake.wait_for(lambda: any(FOOTER in t for t in bot_texts(w, chatted)), timeout=120)
        await w.fake.wait_for(
            lambda: METRICS.forum_left.labels("people")._value.get() == left + 2, timeout=60
        )
        assert bot_texts(w, by_helper) == []
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


# --- learning from helpers ----------------------------------------------------------------------

REPLICAS = "How many replicas can a single collection have loaded in memory?"
REPLICAS_AGAIN = "What is the maximum number of in-memory replicas for one collection?"
HELPER_ANSWER = "One replica per query node: each replica needs its own query node."


def card_fields(card: FakeMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in card.embeds[0].get("fields", [])}


def modal_inputs(opened: FakeInteraction) -> list[str]:
    assert opened.modal is not None, opened.content
    return [c["custom_id"] for row in opened.modal["components"] for c in row["components"]]


async def test_people_s_answers_become_candidates_and_added_ones_are_cited_as_theirs(
    indexed: Indexed, tmp_path: Path
) -> None:
    """A solved post (the poster's ✅ on a reply, or the solved tag) and a helper's 🧩 propose
    a card each, once; an admin adds one, and the next paraphrase cites the person by name
    with a link to their message; nobody is pinged."""
    # "The model" repeats what its first passage says and cites it.
    scripted = ShapedGenerator(indexed.rag.generator, max_tokens=8, prefix=f"{HELPER_ANSWER} [1]\n")
    rag = indexed.with_settings(scripted, **TALK)
    async with running_bot(rag, tmp_path, forum_grace_s=1.5, **TALK) as w:
        fake = w.fake
        # The helper role must be one the bot's cache knows (created before it connected).
        w.bot.settings.helper_role_id = w.mods_role.id
        helen = fake.add_member(w.guild, "helen <@&1> [x](https://evil.example)", [w.mods_role])
        cards = lambda: fake.channel_messages(w.moderators)  # noqa: E731

        # A post a helper answers (the bot steps back); the poster's ✅ on her reply proposes it.
        post, _ = await fake.forum_post(w.help, w.alice, "Replicas in memory", REPLICAS)
        reply = await fake.user_message(post, helen, HELPER_ANSWER)
        await fake.add_reaction(post, reply, w.bob, "✅")  # not the poster: nothing
        await fake.add_reaction(post, reply, w.alice, "✅")
        await fake.wait_for(lambda: len(cards()) == 1, timeout=30)
        [card] = cards()
        shown = card_fields(card)
        assert REPLICAS in shown["Question"] and "Replicas in memory" in shown["Question"]
        assert HELPER_ANSWER in card.embeds[0]["description"]
        assert shown["Answered by"] == f"<@{helen.id}>" and "solution" in shown["Proposed"]
        assert "](https://evil" not in card.embeds[0]["title"]
        # Saved again by a helper: one card per message.
        await fake.add_reaction(post, reply, helen, "🧩")

        # A helper's 🧩 on a person's reply to a question in a channel; a non-helper's does not.
        asked = await fake.user_message(w.general, w.dana, "Can I rename a collection?")
        answer = await fake.user_message(
            w.general, w.bob, "Yes: rename_collection() does it.", reply_to=asked
        )
        await fake.add_reaction(w.general, answer, w.alice, "🧩")
        await fake.add_reaction(w.general, answer, helen, "🧩")
        await fake.wait_for(lambda: len(cards()) == 2, timeout=30)
        saved = cards()[1]
        assert card_fields(saved)["Question"] == "Can I rename a collection?"

        # The solved tag on a post whose last word is a person's reply.
        tagged, _ = await fake.forum_post(w.help, w.dana, "Drop a partition", "How?")
        await fake.user_message(tagged, w.bob, "drop_partition() after releasing it.")
        await fake.tag_post(tagged, w.dana, "Solved")
        await fake.wait_for(lambda: len(cards()) == 3, timeout=30)
        assert "drop_partition" in cards()[2].embeds[0]["description"]

        # Only admins review; an admin who sees the moderators' channel adds the first one (the
        # question cleaned up) and dismisses the second.
        lead = fake.add_member(w.guild, "lead", [w.mods_role, w.guild.role("Admins")])
        [add_id, _] = list(buttons(card))
        denied = await fake.click(card, add_id, user=helen)
        await denied.wait_done()
        assert "Only server admins" in (denied.content or "") and denied.modal is None
        opened = await fake.click(card, add_id, user=lead)
        await opened.wait_done()
        # A second admin opens the form at the same time; the first submission wins.
        lead2 = fake.add_member(w.guild, "lead2", [w.mods_role, w.guild.role("Admins")])
        rival = await fake.click(card, add_id, user=lead2)
        await rival.wait_done()
        question_input, _ = modal_inputs(opened)
        await fake.submit_modal(opened, {question_input: REPLICAS})
        await fake.wait_for(lambda: "Added" in card_fields(card).get("Review", ""), timeout=30)
        assert buttons(card) == {}
        [verified] = await w.store.verified()
        link = f"https://discord.com/channels/{w.guild.id}/{post.id}/{reply.id}"
        assert (verified.question, verified.answer) == (REPLICAS, HELPER_ANSWER)
        assert verified.message_link == link and verified.answered_by == helen.user.username
        late = await fake.submit_modal(rival)
        await late.wait_done()
        assert "already reviewed" in (late.content or "") and len(await w.store.verified()) == 1
        [_, dismiss_saved] = list(buttons(saved))
        dismissed = await fake.click(saved, dismiss_saved, user=lead)
        await dismissed.wait_done()
        assert "Dismissed" in card_fields(saved)["Review"]

        # The next paraphrase is answered from it, citing the helper by name and her message.
        inter = await fake.invoke("ask", {"question": REPLICAS_AGAIN}, user=w.bob)
        await inter.wait_for(
            lambda i: i.original is not None and FOOTER in i.original.content, timeout=120
        )
        assert inter.original is not None
        text = inter.original.content
        assert "[1] [Answered by helen" in text and f"(<{link}>)" in text
        assert "](https://evil" not in text and "<@&1>" not in text  # shown escaped, inert
        stats = await w.store.stats(guild_id=w.guild.id)
        assert (stats["candidates"], stats["candidates_added"]) == (3, 1)
        await fake.wait_quiet()
        assert bot_texts(w, post) == [] and fake.pings() == []
    w.fake.assert_clean()
