"""Moderators teach the bot, end to end: review buttons, the correction modal, verified answers
and the reindex gate, with the real discord.py client against the loopback fake Discord and the
real rag_core (Milvus Lite, the offline embedder, the tiny vLLM engine).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from bot.answer_path import indexed_ago
from bot.client import RagBot
from bot.feedback import FeedbackStore
from rag_core.search.verified import TITLE
from tests.bot_fixtures import Indexed, ShapedGenerator, World, populate, running_bot
from tests.fake_discord import FakeDiscord, FakeInteraction, FakeMember, FakeMessage

QUESTION = "How many replicas can a single collection have loaded in memory?"
PARAPHRASE = "What is the maximum number of in-memory replicas for one collection?"
CORRECTION = "Each replica needs its own query node, so at most one replica per query node."
FOOTER = "-# Answered in"


def answered(inter: FakeInteraction) -> bool:
    messages = [inter.original, *inter.followups] if inter.original else []
    return any(FOOTER in m.content or m.content.startswith("⚠️") for m in messages)


async def ask(fake: FakeDiscord, user: FakeMember, question: str) -> FakeInteraction:
    inter = await fake.invoke("ask", {"question": question}, user=user)
    await inter.wait_for(answered, timeout=120)
    assert inter.original is not None
    message = inter.original
    await fake.wait_for(lambda: len(message.reactions) == 2)
    return inter


def answer_text(inter: FakeInteraction) -> str:
    assert inter.original is not None
    return "\n".join(m.content for m in [inter.original, *inter.followups] if not m.deleted)


def buttons(message: FakeMessage) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row.get("components", [])]


def fields(message: FakeMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0].get("fields", [])}


async def flagged_card(w: World, answer: FakeMessage) -> FakeMessage:
    await w.fake.add_reaction(w.general, answer, w.bob, "👎")
    await w.fake.wait_for(lambda: len(w.fake.channel_messages(w.moderators)) == 1)
    [card] = w.fake.channel_messages(w.moderators)
    return card


async def test_a_moderator_correction_answers_the_next_paraphrase(
    indexed: Indexed, tmp_path: Path
) -> None:
    # The "model" repeats what its first passage says and cites it.
    scripted = ShapedGenerator(indexed.rag.generator, max_tokens=8, prefix=f"{CORRECTION} [1]\n")
    rag = indexed.with_settings(scripted)
    async with running_bot(rag, tmp_path) as w:
        first = await ask(w.fake, w.alice, QUESTION)
        assert TITLE not in answer_text(first)
        assert re.search(
            r"-# Answered in [\d.]+ s · docs indexed (just now|\d+ min ago)", answer_text(first)
        )
        assert first.original is not None
        # Asked in other words before the correction (and something else): see below.
        earlier = await ask(w.fake, w.bob, PARAPHRASE)
        unrelated = await ask(w.fake, w.dana, "How do I enable TLS for the Milvus proxy?")
        card = await flagged_card(w, first.original)
        [answer_id] = {int(c.rsplit(":", 1)[1]) for c in buttons(card)}
        assert buttons(card) == [f"review:{a}:{answer_id}" for a in ("correct", "fine", "dismiss")]

        # Someone without the admin rule is refused at click time; nothing opens.
        denied = await w.fake.click(card, f"review:correct:{answer_id}", user=w.carol)
        await denied.wait_done()
        assert denied.ephemeral and "Only server admins" in (denied.content or "")
        assert denied.modal is None

        # A moderator who is also an admin opens the modal (question prefilled) and writes the
        # right answer.
        lead = w.fake.add_member(w.guild, "lead", [w.mods_role, w.guild.role("Admins")])
        opened = await w.fake.click(card, f"review:correct:{answer_id}", user=lead)
        await opened.wait_done()
        assert opened.modal is not None, opened.content
        inputs = {c["custom_id"]: c for row in opened.modal["components"] for c in _inputs(row)}
        question_id, answer_input = list(inputs)
        assert inputs[question_id]["value"] == QUESTION
        # A reindex publishing meanwhile holds the verified answers' lock for as long as its
        # gate runs: the submission is acknowledged within Discord's 3 s all the same.
        async with w.bot.rag.verified.lock:
            submitted = await w.fake.submit_modal(opened, {answer_input: CORRECTION})
            await asyncio.sleep(w.fake.ack_deadline + 0.5)
            assert submitted.response_type == 6, submitted.summary()  # deferred card update
            assert "Corrected" not in fields(card).get("Review", "")
        await w.fake.wait_for(lambda: "Corrected" in fields(card).get("Review", ""))
        review = fields(card)["Review"]
        assert "Corrected" in review and f"<@{lead.id}>" in review and CORRECTION in review
        assert buttons(card) == []  # corrected: nothing left to decide
        [verified] = await w.store.verified()
        assert (verified.question, verified.answer) == (QUESTION, CORRECTION)
        link = f"https://discord.com/channels/{w.guild.id}/{w.general.id}/{first.original.id}"
        assert verified.message_link == link
        assert verified.created_by == lead.id and verified.answer_id == answer_id

        # The correction reaches back: the flagged answer and the earlier paraphrase's answer
        # point to it in their footer; the unrelated answer does not change.
        reached = "Moderators corrected the answer to this question on "
        for inter in (first, earlier):
            await w.fake.wait_for(lambda i=inter: reached in answer_text(i), timeout=30)
            assert f"<{verified.message_link}>" in answer_text(inter)
        await w.fake.wait_quiet()
        assert reached not in answer_text(unrelated) and FOOTER in answer_text(unrelated)
        assert (await w.store.stats())["corrected"] == 2

        # The next paraphrase is answered from it, cited as verified with a link to the thread.
        second = await ask(w.fake, w.bob, PARAPHRASE)
        text = answer_text(second)
        assert f"[1] [{TITLE}" in text and f"(<{verified.message_link}>)" in text

        # /verified list and remove (admins only); a removed one is gone for the next question.
        refused = await w.fake.invoke("verified list", user=w.alice)
        await refused.wait_done()
        assert "Only server admins" in (refused.content or "")
        listing = await w.fake.invoke("verified list", user=w.admin)
        await listing.wait_done()
        assert listing.ephemeral and f"**#{verified.id}**" in listing.embeds[0]["description"]
        removed = await w.fake.invoke("verified remove", {"id": verified.id}, user=w.admin)
        await removed.wait_done()
        assert "was removed" in (removed.followups[-1].content or "")
        missing = await w.fake.invoke("verified remove", {"id": 999}, user=w.admin)
        await missing.wait_done()
        assert "no verified answer #999" in (missing.followups[-1].content or "")
        assert await w.store.verified() == []
        third = await ask(w.fake, w.bob, PARAPHRASE)
        assert TITLE not in answer_text(third)
    w.fake.assert_clean()


def _inputs(component: dict[str, Any]) -> list[dict[str, Any]]:
    if component.get("type") == 18:
        return [component["component"]]
    return list(component.get("components") or [])


async def test_review_buttons_work_after_a_restart(indexed: Indexed, tmp_path: Path) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    async with FakeDiscord() as fake:
        people = populate(fake)
        settings = rag.settings.model_copy(
            update={
                "moderators_channel_id": people["moderators"].id,
                "discord_home_guild_ids": [people["guild"].id],
            }
        )
        with FeedbackStore.open(tmp_path / "feedback.db") as store:
            first = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(first):
                await first.tree.sync()
                inter = await ask(fake, people["alice"], "What is a bitset?")
                assert inter.original is not None
                await fake.add_reaction(people["general"], inter.original, people["bob"], "👎")
                await fake.wait_for(lambda: bool(fake.channel_messages(people["moderators"])))
            [card] = fake.channel_messages(people["moderators"])
            answer_id = int(buttons(card)[0].rsplit(":", 1)[1])

            # A new process: nothing in memory knows the card, its custom_ids are enough.
            lead = fake.add_member(
                people["guild"], "lead", [people["mods_role"], people["guild"].role("Admins")]
            )
            second = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(second):
                fine = await fake.click(card, f"review:fine:{answer_id}", user=lead)
                await fine.wait_done()
                assert fine.response_type == 7 and "Answer is fine" in fields(card)["Review"]
                assert len(buttons(card)) == 3  # a later verdict may still replace this one
                [golden] = await store.golden_answers()
                assert golden.id == answer_id

                dismiss = await fake.click(card, f"review:dismiss:{answer_id}", user=lead)
                await dismiss.wait_done()
                assert "Dismissed" in fields(card)["Review"]
                assert "Answer is fine" not in fields(card)["Review"]
                assert await store.golden_answers() == []
    fake.assert_clean()


async def test_a_reindex_that_loses_a_golden_answer_is_held_back_until_forced(
    indexed: Indexed, tmp_path: Path
) -> None:
    extra = tmp_path / "extra-docs"
    extra.mkdir()
    page = extra / "zebra.md"
    page.write_text(
        "# Zebra tuning\n\nThe zebra_stripes setting sets how many stripes each zebra "
        "segment gets when Milvus compacts striped segments.\n",
        encoding="utf-8",
    )
    question = "What does the zebra_stripes setting control?"
    sources = [*indexed.settings.docs_sources, str(extra)]
    # The answer says what the page says and cites it: the page is the source it vouches for.
    said = "The zebra_stripes setting sets how many stripes each zebra segment gets [1].\n"
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8, prefix=said))
    async with running_bot(rag, tmp_path, docs_sources=sources) as w:

        async def reindex(**options: Any) -> str:
            run = await w.fake.invoke("reindex", {"source": str(extra), **options}, user=w.admin)
            await run.wait_for(lambda i: any(m in (i.content or "") for m in "✅⛔❌"), 180)
            return run.content or ""

        assert "✅" in await reindex()
        inter = await ask(w.fake, w.alice, question)
        assert "zebra" in answer_text(inter)
        assert inter.original is not None
        # Two people vouch for the answer: it joins the golden set with the page it cited.
        for member in (w.bob, w.carol):
            await w.fake.add_reaction(w.general, inter.original, member, "👍")
        deadline = time.monotonic() + 5
        while not await w.store.golden_answers():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        page.unlink()
        live = await asyncio.to_thread(rag.store.live)
        held = await reindex()
        assert "not published" in held and "live index is unchanged" in held
        assert question.replace("_", "\\_") in held  # shown as plain text, escaped
        assert "answer-" in held and "zebra.md" in held and "force:true" in held
        assert await asyncio.to_thread(rag.store.live) == live

        forced = await reindex(force=True)
        assert "✅" in forced and "Published with force" in forced
        assert await asyncio.to_thread(rag.store.live) != live
    w.fake.assert_clean()


async def test_a_changed_page_marks_the_answers_that_cited_it_stale(
    indexed: Indexed, tmp_path: Path
) -> None:
    extra = tmp_path / "stale-docs"
    extra.mkdir()
    page = extra / "otter.md"
    page.write_text(
        "# Otter paddles\n\nThe otter_paddles setting sets how many paddles each otter shard "
        "keeps when Milvus rebalances otter shards.\n",
        encoding="utf-8",
    )
    sources = [*indexed.settings.docs_sources, str(extra)]
    said = "The otter_paddles setting sets how many paddles each otter shard keeps [1].\n"
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8, prefix=said))
    async with running_bot(rag, tmp_path, docs_sources=sources) as w:

        async def reindex() -> str:
            run = await w.fake.invoke("reindex", {"source": str(extra)}, user=w.admin)
            await run.wait_for(lambda i: any(m in (i.content or "") for m in "✅⛔❌"), 180)
            return run.content or ""

        assert "✅" in await reindex()
        otter = await ask(w.fake, w.alice, "What does the otter_paddles setting control?")
        bitset = await ask(w.fake, w.bob, "What is a bitset?")
        gone = await ask(w.fake, w.carol, "How many paddles does an otter shard keep?")
        records = {}
        for name, inter in (("otter", otter), ("bitset", bitset), ("gone", gone)):
            assert inter.original is not None
            record = await w.store.answer_by_message(inter.original.id)
            assert record is not None
            records[name] = record
        # The premise: two answers cite the otter page, the third does not.
        assert any("otter" in s.url for s in records["otter"].sources)
        assert any("otter" in s.url for s in records["gone"].sources)
        assert not any("otter" in s.url for s in records["bitset"].sources)
        assert otter.original is not None and bitset.original is not None
        assert gone.original is not None
        bitset_before = bitset.original.content
        gone.original.deleted_at = w.fake.now()  # someone deleted that answer meanwhile

        page.write_text(
            "# Otter paddles\n\nThe otter_paddles setting is gone: shards keep four paddles.\n",
            encoding="utf-8",
        )
        report = await reindex()
        assert "✅" in report and "2 recent answers cite passages that changed" in report

        message = otter.original
        await w.fake.wait_for(lambda: "changed on <t:" in message.content, timeout=30)
        footer = message.content.rsplit("\n", 1)[1]
        assert footer.startswith("-# ⚠️ The docs this answer cites changed on <t:")
        assert footer.endswith(":D>: ask again for the current answer.")
        assert message.history[-1].allowed_mentions == {"parse": []}
        assert "Sources" in message.content  # only the footer changed
        await w.fake.wait_quiet()
        assert bitset.original.content == bitset_before  # its pages did not change
        assert (await w.store.stats())["stale"] == 2  # the deleted one was skipped, still counted

        stats = await w.fake.invoke("stats", user=w.admin)
        await stats.wait_done()
        feedback = {f["name"]: f["value"] for f in stats.embeds[0]["fields"]}
        assert "stale (docs changed since) **2**" in feedback["Feedback (this server)"]

        # Answers already marked are not marked (nor edited) again by the next change.
        page.write_text("# Otter paddles\n\nShards keep five paddles now.\n", encoding="utf-8")
        again = await reindex()
        assert "✅" in again and "recent answers" not in again
    w.fake.assert_clean(allow=(10008,))


async def test_a_reindex_while_the_bot_was_stopped_is_noticed_at_start(
    indexed: Indexed, tmp_path: Path
) -> None:
    extra = tmp_path / "cli-docs"
    extra.mkdir()
    page = extra / "beaver.md"
    page.write_text(
        "# Beaver dams\n\nThe beaver_dams setting caps how many dams a beaver node builds.\n",
        encoding="utf-8",
    )
    said = "The beaver_dams setting caps how many dams a beaver node builds [1].\n"
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8, prefix=said))
    assert (await rag.indexer.run([str(extra)])).published
    async with FakeDiscord() as fake:
        people = populate(fake)
        settings = rag.settings.model_copy(update={"discord_home_guild_ids": [people["guild"].id]})
        with FeedbackStore.open(tmp_path / "feedback.db") as store:
            first = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(first):
                await first.tree.sync()
                inter = await ask(fake, people["alice"], "How many dams can a beaver node build?")
            assert inter.original is not None
            record = await store.answer_by_message(inter.original.id)
            assert record is not None and any("beaver" in s.url for s in record.sources)

            # `python -m rag_core index` while the bot is down publishes a changed page.
            page.write_text("# Beaver dams\n\nBeavers build no dams any more.\n", "utf-8")
            assert (await rag.indexer.run([str(extra)])).published
            message = inter.original
            assert "changed on" not in message.content

            second = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(second):
                await fake.wait_for(lambda: "changed on <t:" in message.content, timeout=30)
            assert (await store.stats())["stale"] == 1
    fake.assert_clean()


BACKUP_QUESTIONS = [
    "How do I back up a Milvus collection to S3?",
    "What's the way to make a backup of my collection into an S3 bucket? @everyone",
    "Can I back up collections to S3, and how?",
]


async def test_gaps_groups_the_refused_questions_that_ask_the_same_thing(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(relevance_threshold=0.99)  # nothing is in these docs
    async with running_bot(rag, tmp_path, gaps_similarity=0.65) as w:
        empty = await w.fake.invoke("gaps", user=w.admin)
        await empty.wait_done()
        assert "No question was refused or flagged" in (empty.content or "")

        for member, question in zip((w.alice, w.bob, w.carol), BACKUP_QUESTIONS, strict=True):
            await ask(w.fake, member, question)
        await ask(w.fake, w.alice, "Does Milvus run on Windows ARM laptops?")
        assert (await w.store.stats())["refused"] == 4

        denied = await w.fake.invoke("gaps", user=w.alice)
        await denied.wait_done()
        assert "Only server admins" in (denied.content or "")

        report = await w.fake.invoke("gaps", {"days": 7}, user=w.admin)
        await report.wait_done()
        assert report.ephemeral
        text = "\n".join(m.content for m in [report.original, *report.followups] if m)
        assert "the last 7 days" in text and "4 questions" in text and "in 2 groups" in text
        first, second = text.split("**1. ")[1].split("**2. ")
        assert first.startswith("Asked 3 times** · 3 not in the docs")
        assert "Windows ARM" not in first and "Can I back up collections to S3" in first
        assert "\\@everyone" in first  # a user's text is escaped: shown, never a ping
        assert second.startswith("Asked once** · 1 not in the docs")
        assert "Windows ARM laptops" in second
        assert all(len(m.content) <= 2000 for m in report.followups)
    w.fake.assert_clean()


def test_the_footer_says_how_old_the_docs_are() -> None:
    assert indexed_ago(None, 100.0) == ""
    assert indexed_ago(1000.0, 1030.0) == "docs indexed just now"
    assert indexed_ago(0.0, 7300.0) == "docs indexed 2 h ago"
    assert indexed_ago(0.0, 3 * 86400 + 5.0) == "docs indexed 3 d ago"
