"""The bot end to end: the real discord.py client against the loopback fake Discord, answering
with the real rag_core (Milvus Lite, the offline embedder, the tiny vLLM engine on CPU).

The tiny model's text is noise: tests assert mechanics (acknowledgement, streaming, limits,
sources, votes, errors), never wording.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import sqlite3
import time
from pathlib import Path

import discord
import pytest

from bot.__main__ import export_flags
from bot.answer_path import BUSY, SEARCHING, SHUTTING_DOWN, render_answer
from bot.feedback import AnswerRecord
from bot.utils import AnswerQueue, QueueFull
from bot.writers import LIVE_MARKER
from rag_core.answer.answering import REFUSAL, Answer, Source, Timings, refusal_text
from rag_core.answer.llm import Generator
from tests.bot_fixtures import (
    DOCS_BASE,
    PINGED_ROLE,
    PINGED_USER,
    Indexed,
    ShapedGenerator,
    World,
    running_bot,
)
from tests.conftest import FIXTURES
from tests.fake_discord import FakeInteraction, FakeMember, FakeMessage, clickable_links
from tests.llm_fixtures import engine_processes

QUESTION = "How do I configure a GPU index such as CAGRA?"
LINK = re.compile(r"\[(\d+)\] \[[^\]]+\]\(<https://milvus\.io/docs/[^>]+>\)")


FOOTER = "-# Answered in"


def finished(inter: FakeInteraction) -> bool:
    """The answer's final state is shown: its footer, or an error."""
    messages = [inter.original, *inter.followups] if inter.original else []
    return any(FOOTER in m.content or m.content.startswith("⚠️") for m in messages)


async def wait_answered(inter: FakeInteraction, timeout: float = 120) -> FakeInteraction:
    """Wait for the end of an answer (generous: the shared 2-core host is often busy)."""
    return await inter.wait_for(finished, timeout=timeout)


async def wait_recorded(w: World, message_id: int) -> AnswerRecord:
    """The answer's feedback record: written just after its final edit, so poll for it."""
    deadline = time.monotonic() + 10
    while (record := await w.store.answer_by_message(message_id)) is None:
        assert time.monotonic() < deadline, f"no answer record for message {message_id}"
        await asyncio.sleep(0.05)
    return record


def final_text(inter: FakeInteraction) -> str:
    """Everything the answer shows: the original message and its follow-ups."""
    return "\n".join(m.content for m in answer_messages(inter))


def answer_messages(inter: FakeInteraction) -> list[FakeMessage]:
    assert inter.original is not None
    return [inter.original, *(m for m in inter.followups if not m.deleted)]


def assert_within_limits(inter: FakeInteraction) -> None:
    for message in answer_messages(inter):
        for version in message.history:
            assert len(version.content) <= 2000
        assert message.content.count("```") % 2 == 0, "a message leaves a code block open"


# --------------------------------------------------------------------------- /ask


async def test_ask_acknowledges_streams_and_cites(indexed: Indexed, tmp_path: Path) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=120, pace=0.02))
    async with running_bot(rag, tmp_path) as w:
        inter = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await wait_answered(inter)
        assert inter.deferred and not inter.ephemeral
        assert inter.ack_latency is not None and inter.ack_latency < 1.0
        # It showed that it was looking, then the answer grew in place.
        contents = [v.content for v in inter.edits]
        assert contents[0] == SEARCHING
        growing = [c for c in contents if c.endswith(LIVE_MARKER)]
        assert len(growing) >= 2, contents
        assert all(len(a) < len(b) for a, b in itertools.pairwise(growing))
        # Throttled: about one edit per interval, never a burst.
        times = [v.at for v in inter.edits]
        assert min(b - a for a, b in itertools.pairwise(times)) >= 0.45
        # Ends with numbered source links (no previews) and a footer.
        content = inter.content or ""
        assert not content.endswith(LIVE_MARKER)
        assert "**Sources**" in content and LINK.search(content)
        assert re.search(r"-# Answered in \d+\.\d s", content)
        assert_within_limits(inter)
        assert all(v.allowed_mentions == {"parse": []} for v in inter.edits)
        # Vote reactions on the finished answer, and the answer recorded.
        assert inter.original is not None
        await w.fake.wait_for(lambda: len(inter.original.reactions) == 2)  # type: ignore[union-attr]
        assert set(inter.original.reactions) == {"👍", "👎"}
        record = await w.store.answer_by_message(inter.original.id)
        assert record is not None and record.question == QUESTION
        assert record.user_id == w.alice.id and record.sources and not record.refused
        assert record.sources[0].score is not None
    w.fake.assert_clean()


async def test_not_in_the_docs_lists_the_closest_pages(indexed: Indexed, tmp_path: Path) -> None:
    rag = indexed.with_settings(relevance_threshold=2.0)  # nothing is similar enough
    async with running_bot(rag, tmp_path) as w:
        inter = await w.fake.invoke(
            "ask", {"question": "Where can I buy a sourdough starter?", "private": True}, user=w.bob
        )
        await wait_answered(inter)
        assert inter.deferred and inter.ephemeral
        content = inter.content or ""
        assert content.startswith(REFUSAL + "\n[1] ")
        assert LINK.search(content) and "**Sources**" not in content
        assert not inter.followups
        assert inter.original is not None and not inter.original.reactions  # private: no votes
        record = await wait_recorded(w, inter.original.id)
        assert record.refused
    w.fake.assert_clean()


def long_answer() -> str:
    """A Markdown answer over two messages long, with a code block across a message boundary."""
    prose = " ".join(
        f"Sentence {i} explains one more detail of GPU indexes in Milvus [1]." for i in range(22)
    )
    code = "\n".join(
        f'index_params.add_index(field_name="v{i}", index_type="GPU_CAGRA")' for i in range(40)
    )
    return f"{prose}\n\n{prose}\n\n```python\n{code}\n```\n\n{prose} That is all [2].\n\n"


async def test_long_answer_continues_in_followups_within_limits(
    indexed: Indexed, tmp_path: Path
) -> None:
    # The tiny model writes noise without sentences or code: the answer's start is scripted.
    text = long_answer()
    generator = ShapedGenerator(indexed.rag.generator, max_tokens=24, prefix=text, prefix_chunk=150)
    rag = indexed.with_settings(generator)
    async with running_bot(rag, tmp_path) as w:
        inter = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await wait_answered(inter)
        messages = answer_messages(inter)
        assert len(messages) >= 3, [len(m.content) for m in messages]
        assert_within_limits(inter)
        # Messages continued while streaming, not only at the end.
        assert all(len(m.history) >= 2 for m in messages[1:-1])
        assert all(not m.content.endswith(LIVE_MARKER) for m in messages)
        # Cuts fall between sentences, or between lines of code (closed and reopened).
        answer_parts = [m for m in messages if not m.content.startswith("**Sources**")]
        for message in answer_parts[:-1]:  # the last one ends with the tiny model's noise
            assert message.content.endswith((".", "```")), message.content[-80:]
        reopened = [m for m in messages[1:] if m.content.startswith("```python\n")]
        assert reopened, "the code block did not continue with its language in the next message"
        # Nothing lost or duplicated: the parts put back together give the whole answer.
        joined = "\n".join(m.content for m in messages)
        # (Counted in the code: a source link's text fragment may quote GPU_CAGRA too.)
        assert joined.count('index_type="GPU_CAGRA")') == 40
        assert joined.count("That is all [2].") == 1
        # Sources and footer once, at the very end; votes on that last message.
        assert "**Sources**" in messages[-1].content
        assert all("**Sources**" not in m.content for m in messages[:-1])
        await w.fake.wait_for(lambda: len(messages[-1].reactions) == 2)
        record = await w.store.answer_by_message(messages[-1].id)
        assert record is not None and record.message_id == messages[0].id
        # The whole answer is stored (attribution may drop a marker a passage does not back).
        unmarked = re.compile(r" \[\d+\]")
        assert unmarked.sub("", record.answer).startswith(unmarked.sub("", text.strip())[:100])
    w.fake.assert_clean()


async def test_mentions_in_docs_question_and_answer_ping_no_one(
    indexed: Indexed, tmp_path: Path
) -> None:
    generator = ShapedGenerator(indexed.rag.generator, max_tokens=16)
    rag = indexed.with_settings(generator)
    async with running_bot(rag, tmp_path) as w:
        # The model "says" every kind of mention; the indexed page is full of them too.
        generator.prefix = (
            f"@everyone @here <@{w.bob.id}> <@!{w.bob.id}> <@&{w.mods_role.id}> "
            f"<@{PINGED_USER}> <@&{PINGED_ROLE}> "
        )
        question = f"@everyone <@{w.bob.id}> <@&{w.mods_role.id}> how do I notify about builds?"
        inter = await w.fake.invoke("ask", {"question": question}, user=w.alice)
        await wait_answered(inter)
        content = inter.content or ""
        assert "@everyone" in content and f"<@{w.bob.id}>" in content
        assert "notify" in content.lower()  # the mention page is among the sources
        await w.fake.add_reaction(w.general, inter.original, w.bob, "👎")  # a card, with mentions
        await w.fake.wait_for(lambda: bool(w.fake.channel_messages(w.moderators)))
        await w.fake.wait_quiet()
        assert w.fake.pings() == []
    w.fake.assert_clean()


# --------------------------------------------------------------------------- links

PHISHING = (
    "To configure it, first [click here to verify](https://evil.example/login) your account "
    "at https://evil.example/verify, then connect to `http://localhost:19530` [1].\n\n"
)


async def test_links_from_the_model_or_the_asker_are_never_clickable(
    indexed: Indexed, tmp_path: Path
) -> None:
    generator = ShapedGenerator(
        indexed.rag.generator, max_tokens=8, prefix=PHISHING, prefix_chunk=9
    )
    rag = indexed.with_settings(generator)
    async with running_bot(rag, tmp_path, edit_interval_s=0.05) as w:
        question = "How do I [verify my account](https://evil.example/q) for a GPU index?"
        inter = await w.fake.invoke("ask", {"question": question}, user=w.alice)
        await wait_answered(inter)
        # Every state the answer went through, while streaming and at the end.
        versions = [v.content for m in answer_messages(inter) for v in m.history]
        live = [v for v in versions if v.endswith(LIVE_MARKER) and "evil.example" in v]
        assert len(live) >= 3, versions  # the links were shown while streaming, too
        for content in versions:
            assert clickable_links(LINK.sub("", content)) == [], content
        final = inter.content or ""
        assert "click here to verify (`https://evil.example/login`) your account" in final
        assert "at `https://evil.example/verify`, then" in final
        assert "`http://localhost:19530`" in final
        assert LINK.search(final)  # the sources: the only links
        # The moderators' card shows the answer and the question as text too.
        assert inter.original is not None
        await w.fake.wait_for(lambda: len(inter.original.reactions) == 2)  # type: ignore[union-attr]
        await w.fake.add_reaction(w.general, inter.original, w.bob, "👎")
        await w.fake.wait_for(lambda: bool(w.fake.channel_messages(w.moderators)))
        [card] = w.fake.channel_messages(w.moderators)[0].embeds
        fields = {f["name"]: f["value"] for f in card["fields"]}
        assert "click here to verify (`https://evil.example/login`)" in card["description"]
        assert clickable_links(card["description"]) == []
        assert clickable_links(fields["Question"]) == []
        assert "verify my account" in fields["Question"]
        targets = re.findall(r"\]\((\S+?)\)(?: |$)", fields["Sources"], re.M)
        assert targets and all(t.startswith(DOCS_BASE) for t in targets), fields["Sources"]
    w.fake.assert_clean()


# --------------------------------------------------------------------------- votes and flags


async def ask_and_wait(w: World, user: FakeMember, question: str = QUESTION) -> FakeMessage:
    """Ask, wait for the finished answer (with its vote reactions); the answer's message."""
    inter = await w.fake.invoke("ask", {"question": question}, user=user)
    await wait_answered(inter)
    message = inter.original
    assert message is not None
    await w.fake.wait_for(lambda: len(message.reactions) == 2)
    return message


async def wait_stats(w: World, **expected: int) -> None:
    """Poll the feedback store until its counts match `expected` (reactions are async)."""
    deadline = time.monotonic() + 5
    while True:
        stats = await w.store.stats()
        if all(stats[k] == v for k, v in expected.items()):
            return
        assert time.monotonic() < deadline, f"{stats} never matched {expected}"
        await asyncio.sleep(0.05)


async def test_votes_flags_review_cards_and_export(indexed: Indexed, tmp_path: Path) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=24))
    async with running_bot(rag, tmp_path) as w:
        answer = await ask_and_wait(w, w.alice)
        # The bot's own 👍/👎 are not votes.
        await wait_stats(w, answers=1, good=0, flags=0)

        await w.fake.add_reaction(w.general, answer, w.bob, "👍")
        await wait_stats(w, good=1, flags=0)

        # bob changes his mind (one vote per user): now a flag, and one review card.
        await w.fake.add_reaction(w.general, answer, w.bob, "👎")
        await wait_stats(w, good=0, flags=1)
        await w.fake.wait_for(lambda: len(w.fake.channel_messages(w.moderators)) == 1)
        [card_message] = w.fake.channel_messages(w.moderators)
        [card] = card_message.embeds
        assert card["title"] == "🚩 Flagged answer" and card["description"]
        fields = {f["name"]: f["value"] for f in card["fields"]}
        assert fields["Question"] == QUESTION
        assert "score" in fields["Sources"] and f"<@{w.alice.id}>" in fields["Asked by"]
        assert str(answer.id) in fields["Message"] and f"<@{w.bob.id}>" in fields["Flagged by"]

        # A second flag (the configurable 🚩) counts but posts no second card.
        await w.fake.add_reaction(w.general, answer, w.carol, "🚩")
        await wait_stats(w, flags=2)
        await w.fake.wait_quiet()
        assert len(w.fake.channel_messages(w.moderators)) == 1
        [flagged] = await w.store.flagged()
        assert flagged.flags == 2 and flagged.answer.review_message_id == card_message.id

        # Removing a reaction withdraws that vote; removing bob's stale 👍 changes nothing.
        await w.fake.remove_reaction(w.general, answer, w.carol, "🚩")
        await w.fake.remove_reaction(w.general, answer, w.bob, "👍")
        await wait_stats(w, flags=1, good=0)

        # Votes on anything but a recorded answer are ignored: a user's message, the card.
        other = await w.fake.user_message(w.general, w.bob, "unrelated")
        await w.fake.add_reaction(w.general, other, w.alice, "👎")
        await w.fake.add_reaction(w.moderators, card_message, w.carol, "👎")
        await w.fake.wait_quiet()
        await wait_stats(w, flags=1, flagged_answers=1)

        # /flags for admins (ephemeral), with a JSONL export attached; the CLI export too.
        listing = await w.fake.invoke("flags", {"export": True}, user=w.admin)
        await listing.wait_done()
        assert listing.ephemeral and listing.embeds
        assert QUESTION[:40] in listing.embeds[0]["description"]
        assert any("flagged-answers.jsonl" in r.files for r in listing.requests)
        out = tmp_path / "flags.jsonl"
        settings = w.bot.settings.model_copy(update={"feedback_db": str(w.store.path)})
        assert await export_flags(settings, out, None) == 1
        [line] = out.read_text(encoding="utf-8").splitlines()
        assert json.loads(line)["question"] == QUESTION
    w.fake.assert_clean()


async def test_a_flag_export_over_the_upload_limit_is_described_not_attached(
    indexed: Indexed, tmp_path: Path
) -> None:
    """Discord refuses an upload over the server's limit (10 MiB without boosts), and the
    listing with it: the export says how to get the file instead."""
    async with running_bot(indexed.rag, tmp_path) as w:
        long_answer_text = "x" * 2**20
        for i in range(11):  # 11 MiB of flagged answers
            await w.store.record_answer(
                message_id=10_000 + i,
                channel_id=w.general.id,
                user_id=w.bob.id,
                question=f"question {i}",
                answer=long_answer_text,
                guild_id=w.guild.id,
            )
            await w.store.set_vote(10_000 + i, w.alice.id, -1)
        listing = await w.fake.invoke("flags", {"export": True}, user=w.admin)
        # Building 11 MiB takes a while on a loaded host: wait for the listing itself.
        await listing.wait_for(lambda i: bool(i.embeds), timeout=60)
        assert listing.embeds and not any(r.files for r in listing.requests)
        [export] = [f for f in listing.embeds[0]["fields"] if f["name"] == "Export"]
        assert "11 flagged answers" in export["value"] and "10 MiB upload limit" in export["value"]
        assert "python -m bot export-flags" in export["value"]
    w.fake.assert_clean()


async def test_reactions_while_the_answer_streams_count_once_it_is_recorded(
    indexed: Indexed, tmp_path: Path
) -> None:
    """A vote on the answer before it is finished (so before it is stored) waits for it."""
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=48, pace=0.05))
    async with running_bot(rag, tmp_path) as w:
        inter = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await inter.wait_for(lambda i: i.original is not None)
        answer = inter.original
        assert answer is not None
        await w.fake.add_reaction(w.general, answer, w.bob, "👎")
        await w.fake.add_reaction(w.general, answer, w.carol, "👍")
        await w.fake.add_reaction(w.general, answer, w.dana, "👍")
        await w.fake.remove_reaction(w.general, answer, w.dana, "👍")  # in order: withdrawn
        await asyncio.sleep(0.5)  # the bot reads the reactions while it streams (2.4 s)
        # The reactions really came first: nothing is stored for this message yet.
        assert await w.store.answer_by_message(answer.id) is None
        await wait_answered(inter)
        await wait_stats(w, answers=1, flags=1, good=1)
        await w.fake.wait_for(lambda: len(w.fake.channel_messages(w.moderators)) == 1)
        [flagged] = await w.store.flagged()
        assert flagged.answer.message_id == answer.id and flagged.flags == 1
    w.fake.assert_clean()


async def test_flag_without_a_reachable_moderators_channel_is_kept(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    async with running_bot(rag, tmp_path, moderators_channel_id=1234) as w:  # no such channel
        answer = await ask_and_wait(w, w.alice)
        await w.fake.add_reaction(w.general, answer, w.bob, "👎")
        await wait_stats(w, flags=1)
        await w.fake.wait_quiet()
        [flagged] = await w.store.flagged()
        assert flagged.answer.review_message_id is None  # the claim was given back
    w.fake.assert_clean(allow=[10003])  # the bot looked the channel up once


async def test_votes_survive_a_locked_database_and_a_missing_message_author(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    store_options = {"busy_timeout": 0.1, "patience": 30.0}
    async with running_bot(rag, tmp_path, store_options=store_options) as w:
        answer = await ask_and_wait(w, w.alice)
        # Discord may leave out message_author_id: the answers table knows the bot's answers.
        await w.fake.add_reaction(w.general, answer, w.bob, "👍", with_message_author=False)
        await wait_stats(w, good=1)

        # Another process holds the write lock for ten busy timeouts, then lets go.
        holder = sqlite3.connect(w.store.path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            await w.fake.add_reaction(w.general, answer, w.carol, "👎")
            await asyncio.sleep(1.0)
            assert not w.fake.channel_messages(w.moderators)
            holder.execute("COMMIT")
            await w.fake.wait_for(lambda: len(w.fake.channel_messages(w.moderators)) == 1)
            await wait_stats(w, good=1, flags=1)

            # Locked past the store's patience: logged, kept, and written with the next vote.
            w.store.patience = 0.3
            holder.execute("BEGIN EXCLUSIVE")

            def logged() -> list[str]:
                return [m for m in caplog.messages if m.startswith("could not store")]

            with caplog.at_level(logging.ERROR, logger="bot.cogs.feedback"):
                await w.fake.add_reaction(w.general, answer, w.dana, "🚩")
                await w.fake.wait_for(lambda: bool(logged()), timeout=10)
            holder.execute("COMMIT")
            [message] = logged()
            assert f"vote -1 by user {w.dana.id} on message {answer.id}" in message
            w.store.patience = 30.0
            await w.fake.add_reaction(w.general, answer, w.admin, "👍")
            await wait_stats(w, good=2, flags=2)
        finally:
            holder.close()
    w.fake.assert_clean()


async def test_a_queue_filled_after_the_deferral_tells_only_the_asker(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=48, pace=0.05))
    async with running_bot(rag, tmp_path, max_concurrent_answers=1, max_queued_answers=0) as w:
        # Both pass the check before deferring (nothing is answering yet); after retrieval one
        # takes the only slot and the other finds no room to wait.
        first = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        second = await w.fake.invoke("ask", {"question": QUESTION}, user=w.bob)

        def busy_messages() -> list[FakeMessage]:
            return [
                m for m in w.fake.messages.values() if any(BUSY in v.content for v in m.history)
            ]

        await w.fake.wait_for(lambda: bool(busy_messages()), timeout=120)
        [notice] = busy_messages()
        assert notice.ephemeral and all(BUSY in v.content for v in notice.history)
        busy, other = (first, second) if notice in first.followups else (second, first)
        assert busy.deferred and busy.original is not None and busy.original.deleted
        await wait_answered(other)
        assert "**Sources**" in (other.content or "") and not other.ephemeral
        await w.fake.wait_quiet()
        assert busy_messages() == [notice]  # nothing public ever said it
    w.fake.assert_clean()


# --------------------------------------------------------------------------- admin commands


async def test_admin_commands_are_checked_when_they_run(indexed: Indexed, tmp_path: Path) -> None:
    async with running_bot(indexed.rag, tmp_path) as w:
        schemas = {c["name"]: c for c in w.fake.global_commands}
        assert schemas["reindex"]["default_member_permissions"] == "32"  # manage_guild
        assert schemas["flags"]["default_member_permissions"] == "32"
        assert schemas["ask"]["default_member_permissions"] is None
        # A server that overrides the default permissions lets bob run them: still refused.
        for command in ("reindex", "flags"):
            inter = await w.fake.invoke(
                command, user=w.bob, member_permissions=discord.Permissions(send_messages=True)
            )
            await inter.wait_done()
            assert inter.response_type == 4 and inter.ephemeral
            assert "Only server admins" in (inter.content or "")
        assert not w.bot.rag.indexer.running
        # A configured admin role is enough.
        w.bot.settings.discord_admin_role_ids = [w.docs_team.id]
        inter = await w.fake.invoke("flags", user=w.dana)
        await inter.wait_done()
        assert inter.ephemeral and inter.embeds and inter.embeds[0]["title"] == "Flagged answers"
    w.fake.assert_clean()


async def test_reindex_reports_progress_while_ask_keeps_answering(
    indexed: Indexed, tmp_path: Path
) -> None:
    extra = tmp_path / "more-docs"
    extra.mkdir()
    for path in sorted((FIXTURES / "milvus-docs" / "reference").glob("*.md"))[:4]:
        text = path.read_text(encoding="utf-8")
        (extra / path.name).write_text(text.replace("Milvus", "Milvus (copy)"), encoding="utf-8")
    sources = [*indexed.settings.docs_sources, str(extra)]
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=16))
    async with running_bot(rag, tmp_path, docs_sources=sources) as w:
        run = await w.fake.invoke("reindex", {"source": str(extra)}, user=w.admin)
        await run.wait_for(lambda i: "Reindexing" in (i.content or ""), timeout=10)
        assert run.ephemeral and run.ack_latency is not None and run.ack_latency < 1
        # /ask answers from the current index meanwhile; a second /reindex shows the running one.
        ask = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        again = await w.fake.invoke("reindex", user=w.admin)
        await ask.wait_acked()
        await again.wait_for(lambda i: "already running" in (i.content or ""))
        await wait_answered(ask)
        assert "**Sources**" in (ask.content or "")
        # The report, in place, in both messages.
        for inter in (run, again):
            await inter.wait_for(lambda i: "✅" in (i.content or ""), timeout=180)
        # The /ask was acknowledged before the reindex was done (an idle host reindexes these
        # four pages in about a second, so this is checked on the fake's clock, not by polling).
        done_at = min(v.at for v in run.edits if "✅" in v.content)
        assert ask.acked_at is not None and ask.acked_at < done_at
        report = run.content or ""
        assert "added **4**" in report and "failed **0**" in report
        assert any("fetched **" in v.content for v in run.edits)
        # An unknown local path is refused: server admins are not host admins.
        bad = await w.fake.invoke("reindex", {"source": "/etc"}, user=w.admin)
        await bad.wait_done()
        assert "configured sources" in (bad.content or "")
    w.fake.assert_clean()


async def test_an_admin_cancels_a_running_reindex(indexed: Indexed, tmp_path: Path) -> None:
    """`/reindex cancel:True` stops the run; the live index stays exactly as it was."""
    from tests.web_fixtures import LocalSite, Reply

    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    chunks = await asyncio.to_thread(rag.store.count)
    async with (
        LocalSite({"/slow": Reply.html("<h1>Late</h1><p>text</p>", delay_s=60)}) as site,
        running_bot(rag, tmp_path, reindex_allowed_hosts=["127.0.0.1"]) as w,
    ):
        site.routes["/robots.txt"] = Reply(status=404)
        run = await w.fake.invoke("reindex", {"source": site.url("/slow")}, user=w.admin)
        await run.wait_for(lambda i: "Reindexing" in (i.content or ""), timeout=10)
        # Only admins may cancel; the check runs before the command does anything.
        denied = await w.fake.invoke("reindex", {"cancel": True}, user=w.alice)
        await denied.wait_done()
        assert w.bot.rag.indexer.running
        stop = await w.fake.invoke("reindex", {"cancel": True}, user=w.admin)
        await stop.wait_done()
        assert stop.ephemeral
        assert "cancelled; the live index is unchanged" in (stop.followups[-1].content or "")
        await run.wait_for(lambda i: "❌" in (i.content or ""), timeout=10)
        assert "cancelled by an admin" in (run.content or "")
        assert not w.bot.rag.indexer.running
        again = await w.fake.invoke("reindex", {"cancel": True}, user=w.admin)
        await again.wait_done()
        assert "No reindex is running" in (again.followups[-1].content or "")
    assert await asyncio.to_thread(rag.store.count) == chunks
    w.fake.assert_clean()


async def test_cancel_stops_converting_hostile_pages_while_ask_answers(
    indexed: Indexed, tmp_path: Path
) -> None:
    """Pages built to take minutes to convert use CPU in worker processes, not in the bot:
    /ask is answered meanwhile, and `/reindex cancel:True` kills the workers within seconds."""
    import psutil

    from tests.test_html_bounds import converting, parse_workers, tag_soup
    from tests.web_fixtures import LocalSite, Reply

    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    hostile = Reply.html(tag_soup(4_900_000))  # under FETCH_MAX_BYTES; 20 s of CPU each
    async with (
        LocalSite({"/robots.txt": Reply(status=404)}) as site,
        running_bot(rag, tmp_path, reindex_allowed_hosts=["127.0.0.1"]) as w,
    ):
        pages = [f"/hostile{i}" for i in range(4)]
        site.routes.update({path: hostile for path in pages})
        urls = "".join(f"<url><loc>{site.url(path)}</loc></url>" for path in pages)
        site.routes["/sitemap.xml"] = Reply.xml(f"<urlset>{urls}</urlset>")
        run = await w.fake.invoke("reindex", {"source": site.url("/sitemap.xml")}, user=w.admin)
        await run.wait_for(lambda i: "Reindexing" in (i.content or ""), timeout=10)
        await converting()
        ask = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await wait_answered(ask)
        assert "**Sources**" in (ask.content or "")
        busy = await converting()  # still at it: the pages take far longer than the answer
        stop = await w.fake.invoke("reindex", {"cancel": True}, user=w.admin)
        cancelled = time.monotonic()
        _, alive = await asyncio.to_thread(psutil.wait_procs, busy, timeout=5)
        assert not alive and time.monotonic() - cancelled < 5
        await stop.wait_done()
        await run.wait_for(lambda i: "cancelled by an admin" in (i.content or ""), timeout=10)
        assert not parse_workers()
    w.fake.assert_clean()


# --------------------------------------------------------------------------- abuse control, load


async def test_cooldown_and_question_checks_are_ephemeral_refusals(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    async with running_bot(rag, tmp_path, ask_cooldown_s=60, max_question_chars=50) as w:
        # The length limit is in the synced command: Discord refuses longer questions itself.
        schemas = {c["name"]: c for c in w.fake.global_commands}
        options = {o["name"]: o for o in schemas["ask"]["options"]}
        assert options["question"]["max_length"] == 50
        with pytest.raises(ValueError, match="length"):
            await w.fake.invoke("ask", {"question": "why " * 20}, user=w.bob)
        # Only zero-width, format or control characters: an empty question.
        blanks = ["\u200b\u200c\u200d\u2060\ufeff", " \x00\x07\t"]
        for user, blank in zip((w.bob, w.carol), blanks, strict=True):
            inter = await w.fake.invoke("ask", {"question": blank}, user=user)
            await inter.wait_done()
            assert inter.response_type == 4 and inter.ephemeral
            assert "it was empty" in (inter.content or "")
        # Control characters never reach the model or the feedback database.
        first = await w.fake.invoke("ask", {"question": "What is\x00 a replica?\x1b"}, user=w.alice)
        await wait_answered(first)
        assert first.original is not None
        record = await wait_recorded(w, first.original.id)
        assert record.question == "What is a replica?"
        second = await w.fake.invoke("ask", {"question": "What is a bitset?"}, user=w.alice)
        await second.wait_done()
        assert second.response_type == 4 and second.ephemeral
        assert "Please wait" in (second.content or "")
    w.fake.assert_clean()


async def test_thirty_concurrent_asks_are_acknowledged_queued_and_answered(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=24))
    async with running_bot(rag, tmp_path, max_concurrent_answers=3) as w:
        users = [w.member(f"user{i}") for i in range(30)]
        inters = await asyncio.gather(
            *(w.fake.invoke("ask", {"question": QUESTION}, user=u) for u in users)
        )
        for inter in inters:
            await wait_answered(inter, timeout=300)
        latencies = [i.ack_latency for i in inters]
        assert all(lat is not None and lat < 3.0 for lat in latencies), latencies
        for inter in inters:
            assert "**Sources**" in (inter.content or ""), inter.summary()
            assert_within_limits(inter)
        queued = [i for i in inters if any("ahead of yours" in v.content for v in i.edits)]
        assert queued, "with 3 slots, some of 30 questions must have waited in the queue"
    w.fake.assert_clean()


async def test_a_burst_of_429s_is_survived(indexed: Indexed, tmp_path: Path) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=120))
    async with running_bot(rag, tmp_path) as w:
        w.fake.inject_429("PATCH /webhooks/*", count=4, retry_after=0.2)
        w.fake.inject_429("PUT /channels/*", count=2, retry_after=0.1)
        w.fake.inject_429("POST /channels/*/messages", count=1, retry_after=0.1, is_global=True)
        inter = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await wait_answered(inter)
        assert "**Sources**" in (inter.content or "")
        assert inter.original is not None
        await w.fake.wait_for(lambda: len(inter.original.reactions) == 2)  # type: ignore[union-attr]
        answer = inter.original
        await w.fake.add_reaction(w.general, answer, w.bob, "👎")
        await w.fake.wait_for(lambda: len(w.fake.channel_messages(w.moderators)) == 1)
        assert sum(r.injected for r in w.fake.requests) == 7
    w.fake.assert_clean()


# --------------------------------------------------------------------------- failures, expiry


async def test_answer_moves_to_the_channel_before_the_token_expires(
    indexed: Indexed, tmp_path: Path
) -> None:
    generator = ShapedGenerator(
        indexed.rag.generator, max_tokens=16, prefix=long_answer(), prefix_chunk=100
    )
    rag = indexed.with_settings(generator)
    # Discord: tokens live 15 minutes and the bot moves on after 14; here 4 s and 0.5 s.
    async with running_bot(
        rag, tmp_path, fake_options={"token_lifetime": 4.0}, interaction_edit_limit_s=0.5
    ) as w:

        def posted() -> list[FakeMessage]:
            return [
                m
                for m in w.fake.channel_messages(w.general)
                if m.author.id == w.fake.bot_user.id and not (m.interaction_id or m.webhook_id)
            ]

        inter = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await w.fake.wait_for(lambda: any(FOOTER in m.content for m in posted()), timeout=120)
        messages = posted()
        assert "**Sources**" in messages[-1].content
        assert all(len(v.content) <= 2000 for m in messages for v in m.history)
        assert "GPU_CAGRA" in "".join(m.content for m in messages)
        await w.fake.wait_for(lambda: len(messages[-1].reactions) == 2)
        assert inter.original is not None and inter.edits  # it started in the interaction
        assert await w.store.answer_by_message(messages[-1].id) is not None
    w.fake.assert_clean()  # no edit was attempted with an expired token (50027)


async def test_shutdown_mid_answer_tells_the_user(indexed: Indexed, tmp_path: Path) -> None:
    generator = ShapedGenerator(indexed.rag.generator, max_tokens=600)
    rag = indexed.with_settings(generator, llm_max_tokens=600)
    async with running_bot(rag, tmp_path) as w:
        inter = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await inter.wait_for(lambda i: (i.content or "").endswith(LIVE_MARKER), timeout=120)
        started = time.monotonic()
    assert time.monotonic() - started < 8  # bot.close() does not wait for the answer to end
    assert SHUTTING_DOWN in (inter.content or "")
    w.fake.assert_clean()


@pytest.mark.slow
async def test_dead_engine_mid_answer_then_the_next_ask_works(
    indexed: Indexed, tmp_path: Path
) -> None:
    generator = ShapedGenerator(indexed.rag.generator, max_tokens=600)
    rag = indexed.with_settings(generator, llm_max_tokens=600)
    async with running_bot(rag, tmp_path) as w:
        inter = await w.fake.invoke("ask", {"question": QUESTION}, user=w.alice)
        await inter.wait_for(lambda i: (i.content or "").endswith(LIVE_MARKER), timeout=120)
        victims = engine_processes()
        assert victims, "no EngineCore process to kill"
        for proc in victims:
            proc.kill()  # as the OOM killer would
        await inter.wait_for(lambda i: (i.content or "").startswith("⚠️"), timeout=30)
        content = inter.content or ""
        assert "restarted" in content and "Traceback" not in content
        generator.max_tokens = 16
        after = await w.fake.invoke("ask", {"question": QUESTION}, user=w.bob)
        await wait_answered(after, timeout=300)
        assert "**Sources**" in (after.content or ""), after.summary()
    w.fake.assert_clean()


# --------------------------------------------------------------------------- building blocks


async def test_answer_queue_reports_places_and_survives_cancellation() -> None:
    queue = AnswerQueue(slots=1, max_waiting=2)
    seen: dict[str, list[int]] = {"b": [], "c": []}
    release = asyncio.Event()

    async def hold(name: str) -> None:
        async with queue.slot(lambda ahead: seen[name].append(ahead) if name in seen else None):
            await release.wait()

    a = asyncio.create_task(hold("a"))
    await asyncio.sleep(0)
    b, c = asyncio.create_task(hold("b")), asyncio.create_task(hold("c"))
    await asyncio.sleep(0.01)
    assert (queue.active, queue.waiting) == (1, 2) and queue.full()
    with pytest.raises(QueueFull):
        async with queue.slot(lambda ahead: None):
            pass
    b.cancel()  # b gives up: c moves up
    await asyncio.sleep(0.01)
    assert seen == {"b": [0], "c": [1, 0]}
    release.set()
    await asyncio.gather(a, c)
    assert (queue.active, queue.waiting) == (0, 0)


def test_rendered_answers_stay_within_discord_limits() -> None:
    long_title = "A very long page title with @everyone and [brackets] " * 10
    sources = [
        Source(n, long_title, f"https://milvus.io/docs/page{n}.md#{'x' * 300}", "", "d", 0.5, 0.5)
        for n in range(1, 30)
    ]
    timings = Timings()
    for text in ("short answer [1]", "x" * 1990, long_answer() * 3):
        answer = Answer(QUESTION, text, sources, False, 1, 1, "length", timings)
        parts = render_answer(answer, seconds=1.23, votes_hint=True)
        assert all(0 < len(p) <= 2000 for p in parts)
        assert "**Sources**" in parts[-1] and parts[-1].endswith("it is wrong")
    refused = Answer(QUESTION, REFUSAL, [], True, 0, 0, None, timings)
    [only] = render_answer(refused, seconds=0.2, votes_hint=False)
    assert "couldn't find anything" in only and "👍" not in only
    # A refusal that names the key the docs lack shows that text above the closest pages.
    named = refusal_text(["queryNode.grouping.enabled"])
    refused = Answer(QUESTION, named, sources[:2], True, 0, 0, None, timings)
    [only] = render_answer(refused, seconds=0.2, votes_hint=False)
    assert only.startswith(named + "\n[1] ") and "`queryNode.grouping.enabled`" in only


@pytest.mark.slow
async def test_a_real_model_answers_in_english_with_sources_that_open_on_the_passage(
    indexed: Indexed, smollm2_generator: Generator, tmp_path: Path
) -> None:
    """SmolLM2-135M-Instruct (a real, trained model) through /ask, end to end."""
    rag = indexed.with_settings(smollm2_generator, llm_max_tokens=48, top_k=2)
    async with running_bot(rag, tmp_path) as w:
        inter = await w.fake.invoke(
            "ask", {"question": "What do the parameters for HNSW mean?"}, user=w.alice
        )
        await wait_answered(inter, timeout=600)
        content = inter.content or ""
        answer = content.split("**Sources**")[0].lower()
        words = set(re.findall(r"[a-z]+", answer))
        common = {"the", "a", "is", "of", "to", "and", "in", "for", "that", "it", "are", "you"}
        assert len(words & common) >= 3, content
        assert "**Sources**" in content and ":~:text=" in content, content
        assert inter.original is not None
        record = await wait_recorded(w, inter.original.id)
        assert record.answer.strip() and record.sources
    w.fake.assert_clean()


async def test_an_answer_the_docs_do_not_back_says_so(embedder) -> None:
    """Attribution's verdict reaches the message: partly backed, or backed by nothing."""
    from rag_core.answer.attribution import attribute

    passages = ["Replicas let Milvus load one segment on several query nodes for throughput."]
    sources = [Source(1, "Replica", "https://milvus.io/docs/replica.md", "", "d", 0.5, 0.5)]

    async def render(text: str) -> str:
        checked = await attribute(text, passages, embedder.aembed_passages)
        answer = Answer(QUESTION, checked.text, sources, False, 1, 1, "stop", Timings())
        answer.low_support, answer.attribution = checked.low_support, checked
        return "\n".join(render_answer(answer, seconds=1.0, votes_hint=False))

    backed = await render("Replicas load one segment on several query nodes for throughput [1].")
    assert "not backed" not in backed
    mixed = await render(
        "Replicas load one segment on several query nodes [1]. The moon stores backups of "
        "every vector in quantum tape libraries. Invoices arrive by carrier pigeon each week."
    )
    assert "Parts of this answer are not backed by the docs" in mixed
    nothing = await render("The moon stores backups of every vector in quantum tape libraries.")
    assert "This answer is not backed by the docs" in nothing and "**Sources**" in nothing
