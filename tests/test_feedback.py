"""The feedback store against a real SQLite file in a temp folder."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from bot.cogs.feedback import review_card
from bot.feedback import (
    FLAG,
    GOOD,
    AnswerRecord,
    FeedbackStore,
    FeedbackStoreClosed,
    SourceRecord,
    default_path,
)
from bot.feedback.schema import MIGRATIONS, SCHEMA_VERSION
from bot.feedback.store import stale_answer_ids
from bot.stale import with_stale_footer
from tests.fake_discord import clickable_links

ROOT = Path(__file__).resolve().parents[1]
GUILD, CHANNEL, ASKER = 111, 222, 333
SOURCES = (
    SourceRecord(1, "Index", "https://milvus.io/docs/index.md#FLAT", 0.03, 0.71),
    SourceRecord(2, "GPU index", "https://milvus.io/docs/gpu_index.md", 0.02, 0.64),
)


class Clock:
    """Deterministic time, so "most recent" is well defined."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return default_path(tmp_path / "data")


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[FeedbackStore]:
    async with FeedbackStore.open(db_path, clock=Clock()) as s:
        yield s


async def _answer(store: FeedbackStore, message_id: int, **kw: object) -> int:
    fields: dict[str, object] = {
        "channel_id": CHANNEL,
        "user_id": ASKER,
        "guild_id": GUILD,
        "question": f"question {message_id}?",
        "answer": f"answer {message_id} [1]",
        "sources": SOURCES,
        "model": "tiny",
        "latency_ms": 1234,
    }
    fields.update(kw)
    return await store.record_answer(message_id=message_id, **fields)  # type: ignore[arg-type]


@pytest.fixture
def raw(db_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db_path)
    yield conn
    conn.close()


async def test_opens_in_wal_mode_with_schema_version(
    store: FeedbackStore, db_path: Path, raw: sqlite3.Connection
) -> None:
    assert db_path.name == "feedback.db"
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"answers", "votes", "answer_messages"} <= tables


async def test_a_version_1_database_gains_the_low_support_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO answers (message_id, channel_id, user_id, question, answer, created_at) "
        "VALUES (7, 1, 2, 'q', 'a', 0)"
    )
    conn.execute("INSERT INTO answer_messages (message_id, answer_id) VALUES (7, 1)")
    conn.commit()
    conn.close()
    async with FeedbackStore.open(path) as store:
        old = await store.answer_by_message(7)
        assert old is not None and not old.low_support
        await store.record_answer(
            message_id=8, channel_id=1, user_id=2, question="q", answer="a", low_support=True
        )
        assert (await store.stats())["low_support"] == 1


async def test_a_version_2_database_keeps_its_answers_and_gains_conversations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    for statements in MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO answers (message_id, channel_id, user_id, question, answer, created_at) "
        "VALUES (7, 1, 2, 'What is HNSW?', 'A graph index.', 0)"
    )
    conn.execute("INSERT INTO answer_messages (message_id, answer_id) VALUES (7, 1)")
    conn.commit()
    conn.close()
    async with FeedbackStore.open(path) as store:
        assert await store.conversation(message_id=7) is None  # answered before conversations
        conversation_id = await store.record_turn(1, standalone="What is HNSW?")
        found = await store.conversation(message_id=7)
        assert found is not None and found.id == conversation_id and found.channel_id == 1
        assert [t.question for t in found.turns] == ["What is HNSW?"]


async def test_conversations_keep_their_turns_across_a_restart(db_path: Path) -> None:
    async with FeedbackStore.open(db_path, clock=Clock()) as store:
        first = await _answer(store, 1001, extra_message_ids=[1002])
        conversation_id = await store.record_turn(first, standalone="question 1001?")
        await store.set_conversation_thread(conversation_id, 5000)
        second = await _answer(store, 2001, question="and for IVF?", channel_id=5000)
        again = await store.record_turn(
            second, standalone="question 1001? and for IVF?", conversation_id=conversation_id
        )
        assert again == conversation_id
        with pytest.raises(ValueError, match="not recorded"):
            await store.record_turn(999, standalone="?")
    # A new process: the thread, and any part of any answer, lead to the whole conversation.
    async with FeedbackStore.open(db_path) as store:
        by_thread = await store.conversation(thread_id=5000)
        assert by_thread is not None and by_thread.thread_id == 5000
        assert (by_thread.guild_id, by_thread.channel_id, by_thread.user_id) == (
            GUILD,
            CHANNEL,
            ASKER,
        )
        assert [(t.position, t.question, t.standalone) for t in by_thread.turns] == [
            (0, "question 1001?", "question 1001?"),
            (1, "and for IVF?", "question 1001? and for IVF?"),
        ]
        assert by_thread.turns[0].answer == "answer 1001 [1]"
        assert await store.conversation(message_id=1002) == by_thread
        assert await store.conversation(message_id=2001) == by_thread
        assert await store.conversation(thread_id=4999) is None
        # A flagged follow-up is exported with the conversation before it.
        await store.set_vote(2001, 10, FLAG)
        await store.set_vote(1001, 10, FLAG)
        buffer = io.StringIO()
        assert await store.export_jsonl(buffer) == 2
        first, follow_up = (json.loads(line) for line in buffer.getvalue().splitlines())
        assert "conversation" not in first and "standalone" not in first
        assert follow_up["question"] == "and for IVF?"
        assert follow_up["standalone"] == "question 1001? and for IVF?"
        assert follow_up["conversation"] == [
            {"question": "question 1001?", "answer": "answer 1001 [1]"}
        ]
        # A thread belongs to one conversation.
        other = await _answer(store, 3001)
        with pytest.raises(sqlite3.IntegrityError):
            await store.record_turn(other, standalone="q", thread_id=5000)


async def test_record_and_look_up_an_answer(store: FeedbackStore) -> None:
    answer_id = await _answer(store, 1001, extra_message_ids=[1002], refused=False)
    record = await store.answer_by_message(1001)
    assert record is not None
    assert record.id == answer_id
    assert (record.guild_id, record.channel_id, record.user_id) == (GUILD, CHANNEL, ASKER)
    assert record.sources == SOURCES
    assert record.latency_ms == 1234 and record.model == "tiny" and not record.refused
    assert record.created_at.tzinfo is not None
    assert record.jump_url == f"https://discord.com/channels/{GUILD}/{CHANNEL}/1001"
    # A continuation message of a split answer resolves to the same answer.
    assert (await store.answer_by_message(1002)) == record
    assert await store.answer_by_message(9999) is None
    with pytest.raises(ValueError):
        await _answer(store, 1001)


async def test_one_vote_per_user_and_revote_replaces(store: FeedbackStore) -> None:
    await _answer(store, 1)
    first = await store.set_vote(1, 10, GOOD)
    assert first is not None
    assert (first.previous, first.vote, first.good, first.flags) == (None, GOOD, 1, 0)
    assert first.changed and not first.post_review_card
    same = await store.set_vote(1, 10, GOOD)
    assert same is not None and not same.changed and same.good == 1
    flipped = await store.set_vote(1, 10, FLAG)
    assert flipped is not None
    assert (flipped.previous, flipped.good, flipped.flags) == (GOOD, 0, 1)
    assert flipped.post_review_card
    assert await store.stats() == {
        "answers": 1,
        "refused": 0,
        "low_support": 0,
        "flags": 1,
        "good": 0,
        "flagged_answers": 1,
        "stale": 0,
        "corrected": 0,
        "handoffs": 0,
        "candidates": 0,
        "candidates_added": 0,
    }
    assert await store.set_vote(12345, 10, GOOD) is None  # not an answer: ignored
    with pytest.raises(ValueError):
        await store.set_vote(1, 10, 0)


async def test_removal_withdraws_only_the_current_vote(store: FeedbackStore) -> None:
    await _answer(store, 1, extra_message_ids=[2])
    await store.set_vote(1, 10, FLAG)
    await store.set_vote(1, 10, GOOD)  # the 👎 reaction is still on the message
    assert await store.remove_vote(1, 10, FLAG) is False  # removing the old 👎 changes nothing
    assert (await store.stats())["good"] == 1
    assert await store.remove_vote(2, 10, GOOD) is True  # via the continuation message
    assert (await store.stats())["good"] == 0
    assert await store.remove_vote(1, 10, GOOD) is False
    assert await store.remove_vote(777, 10, GOOD) is False


async def test_review_card_is_claimed_once(store: FeedbackStore) -> None:
    answer_id = await _answer(store, 1)
    claims = [await store.set_vote(1, user, FLAG) for user in (10, 11)]
    assert [c.post_review_card for c in claims if c] == [True, False]
    await store.mark_reviewed_card(answer_id, 5555)
    record = await store.answer_by_message(1)
    assert record is not None and record.review_message_id == 5555
    # Withdrawn and flagged again: still no second card.
    await store.remove_vote(1, 10, FLAG)
    again = await store.set_vote(1, 10, FLAG)
    assert again is not None and not again.post_review_card


async def test_failed_card_can_be_released(store: FeedbackStore) -> None:
    answer_id = await _answer(store, 1)
    first = await store.set_vote(1, 10, FLAG)
    assert first is not None and first.post_review_card
    await store.release_review_card(answer_id)  # posting the card failed
    retry = await store.set_vote(1, 11, FLAG)
    assert retry is not None and retry.post_review_card


async def test_flagged_order_counts_and_guild_filter(store: FeedbackStore) -> None:
    for message_id in (1, 2, 3, 4):
        await _answer(store, message_id, guild_id=GUILD if message_id != 4 else 999)
    await store.set_vote(1, 10, FLAG)
    await store.set_vote(2, 10, FLAG)
    await store.set_vote(2, 11, FLAG)
    await store.set_vote(2, 12, GOOD)
    await store.set_vote(3, 10, GOOD)  # only good votes: not flagged
    await store.set_vote(4, 10, FLAG)
    await store.set_vote(1, 11, FLAG)  # answer 1 is now the most recently flagged

    flagged = await store.flagged(guild_id=GUILD)
    assert [(f.answer.message_id, f.flags, f.good) for f in flagged] == [(1, 2, 0), (2, 2, 1)]
    everywhere = await store.flagged()
    assert [f.answer.message_id for f in everywhere] == [1, 4, 2]
    assert all(a.last_flagged_at >= b.last_flagged_at for a, b in pairwise(everywhere))
    assert [f.answer.message_id for f in await store.flagged(limit=1)] == [1]
    assert (await store.stats(guild_id=999))["flags"] == 1


async def test_export_jsonl(store: FeedbackStore, tmp_path: Path) -> None:
    await _answer(store, 1, question="How do I build a GPU index?")
    await _answer(store, 2)
    await _answer(store, 3, guild_id=None)  # a DM
    await store.set_vote(1, 10, FLAG)
    await store.set_vote(1, 11, GOOD)
    await store.set_vote(2, 10, GOOD)
    await store.set_vote(3, 10, FLAG)

    out = tmp_path / "exports" / "flags.jsonl"
    assert await store.export_jsonl(out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    first = records[0]
    assert first["question"] == "How do I build a GPU index?"
    assert first["answer"] == "answer 1 [1]"
    assert first["sources"][0] == {
        "n": 1,
        "title": "Index",
        "url": "https://milvus.io/docs/index.md#FLAT",
        "score": 0.03,
        "similarity": 0.71,
    }
    assert (first["flags"], first["good"]) == (1, 1)
    assert first["expected_sources"] == [] and first["notes"] == ""
    assert first["message_link"] == f"https://discord.com/channels/{GUILD}/{CHANNEL}/1"
    assert first["asked_at"].endswith("+00:00")
    assert records[1]["message_link"] == f"https://discord.com/channels/@me/{CHANNEL}/3"
    assert not list(out.parent.glob(".*tmp"))  # the atomic write left no temp file

    buffer = io.StringIO()
    assert await store.export_jsonl(buffer, guild_id=GUILD) == 1
    assert json.loads(buffer.getvalue())["question"] == "How do I build a GPU index?"


async def test_data_survives_reopen_and_is_shared(db_path: Path) -> None:
    first = FeedbackStore.open(db_path)
    await _answer(first, 1)
    await first.set_vote(1, 10, FLAG)
    # A second store on the same file sees committed data while the first is still open.
    with FeedbackStore.open(db_path) as second:
        assert (await second.answer_by_message(1)) is not None
        change = await second.set_vote(1, 11, FLAG)
        assert change is not None and change.flags == 2 and not change.post_review_card
    assert (await first.stats())["flags"] == 2
    first.close()
    first.close()  # idempotent
    with pytest.raises(FeedbackStoreClosed):
        await first.stats()
    with FeedbackStore.open(db_path) as reopened:
        assert (await reopened.stats())["flags"] == 2


async def test_committed_data_survives_a_crash(db_path: Path) -> None:
    # A process that writes and dies without closing anything: WAL keeps what was committed.
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from bot.feedback import FeedbackStore, FLAG

        async def main():
            store = FeedbackStore.open({str(db_path)!r})
            await store.record_answer(
                message_id=1, channel_id=2, user_id=3, question="q", answer="a"
            )
            await store.set_vote(1, 10, FLAG)
            os._exit(0)

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=ROOT)
    assert await proc.wait() == 0
    with FeedbackStore.open(db_path) as store:
        record = await store.answer_by_message(1)
        assert record is not None and record.question == "q"
        assert (await store.stats())["flags"] == 1


async def test_concurrent_votes_are_consistent(store: FeedbackStore) -> None:
    await _answer(store, 1)
    users = range(60)

    async def vote(user: int) -> None:
        await store.set_vote(1, user, FLAG)
        await store.set_vote(1, user, GOOD if user % 3 else FLAG)
        if user % 5 == 0:
            await store.remove_vote(1, user, GOOD if user % 3 else FLAG)

    results = await asyncio.gather(*(store.set_vote(1, u, FLAG) for u in users))
    assert sum(r.post_review_card for r in results if r) == 1
    await asyncio.gather(*(vote(u) for u in users))
    expected_flags = sum(1 for u in users if u % 3 == 0 and u % 5)
    expected_good = sum(1 for u in users if u % 3 and u % 5)
    stats = await store.stats()
    assert (stats["flags"], stats["good"]) == (expected_flags, expected_good)
    flagged = await store.flagged()
    assert (flagged[0].flags, flagged[0].good) == (expected_flags, expected_good)


async def test_newer_schema_is_refused(db_path: Path) -> None:
    FeedbackStore.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        FeedbackStore.open(db_path)


async def test_a_locked_database_is_retried_off_the_event_loop(db_path: Path) -> None:
    """Another process holds the write lock for several busy timeouts: the vote waits (the
    event loop keeps running meanwhile), then lands once the lock is released."""
    async with FeedbackStore.open(db_path, busy_timeout=0.1, patience=20) as store:
        await _answer(store, 1)
        holder = sqlite3.connect(db_path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            ticks: list[float] = []

            async def tick() -> None:
                while True:
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            vote = asyncio.create_task(store.set_vote(1, 42, FLAG))
            await asyncio.sleep(0.8)  # eight busy timeouts
            assert not vote.done()
            holder.execute("COMMIT")
            change = await asyncio.wait_for(vote, 10)
            ticker.cancel()
            assert change is not None and change.flags == 1 and change.post_review_card
            assert max(b - a for a, b in pairwise(ticks)) < 0.5  # the loop never waited

            # With no patience the same lock is an error (what the retries save a vote from).
            store.patience = 0
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await store.set_vote(1, 43, GOOD)
            holder.execute("ROLLBACK")
            assert (await store.stats())["good"] == 0  # and nothing half-written is left over
            assert await store.set_vote(1, 43, GOOD) is not None
        finally:
            holder.close()


def test_review_card_shows_only_the_bots_own_links() -> None:
    record = AnswerRecord(
        id=7,
        message_id=1,
        guild_id=GUILD,
        channel_id=CHANNEL,
        user_id=ASKER,
        question="Is it [click here to verify](https://evil.example/q) **now**?",
        answer="Please [click here to verify](https://evil.example/login) or https://evil.example",
        sources=(SourceRecord(1, "Page (v2)", "https://docs.example/a_(b)) x", 0.1, 0.5),),
        model="tiny",
        refused=False,
        created_at=datetime.now(UTC),
        latency_ms=10,
        review_message_id=None,
    )
    card = review_card(record, flagged_by=5, flags=1).to_dict()
    fields = {f["name"]: f["value"] for f in card["fields"]}
    assert clickable_links(card["description"]) == []
    assert "click here to verify (`https://evil.example/login`)" in card["description"]
    question = fields["Question"]
    assert clickable_links(question) == [] and "`https://evil.example/q`" in question
    assert r"\*\*now\*\*" in question
    # The source link is the bot's own: encoded, so the ")" cannot end it early.
    assert "[Page \\(v2\\)](https://docs.example/a_%28b%29%29%20x)" in fields["Sources"]


# -- moderator review and verified answers -----------------------------------------------------


async def test_a_version_2_database_gains_review_and_verified_answers(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    for statements in MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO answers (message_id, channel_id, user_id, question, answer, created_at) "
        "VALUES (7, 1, 2, 'q', 'a', 0)"
    )
    conn.commit()
    conn.close()
    async with FeedbackStore.open(path) as store:
        assert await store.set_review(1, "fine", by=5)
        assert [a.id for a in await store.golden_answers()] == [1]
        added = await store.add_verified(
            question="q", answer="right", message_link="https://d/1", created_by=5, answer_id=1
        )
        assert added.id == 1 and added.removed_at is None


async def test_verified_answers_are_added_listed_per_guild_and_removed(
    store: FeedbackStore,
) -> None:
    answer_id = await _answer(store, 1001)
    first = await store.add_verified(
        question="How many replicas?",
        answer="One per query node.",
        message_link="https://discord.com/channels/111/222/1001",
        created_by=9,
        guild_id=GUILD,
        answer_id=answer_id,
    )
    other = await store.add_verified(
        question="q", answer="a", message_link="https://d/2", created_by=9, guild_id=999
    )
    assert [v.id for v in await store.verified(GUILD)] == [first.id]
    assert [v.id for v in await store.verified()] == [first.id, other.id]
    assert (first.question, first.answer, first.created_by) == (
        "How many replicas?",
        "One per query node.",
        9,
    )
    # The corrected answer is no longer a golden answer, however many 👍 it had.
    await store.set_vote(1001, 1, GOOD)
    await store.set_vote(1001, 2, GOOD)
    assert await store.golden_answers() == []
    # Removal is scoped to the guild and happens once.
    assert await store.remove_verified(first.id, by=3, guild_id=999) is None
    removed = await store.remove_verified(first.id, by=3, guild_id=GUILD)
    assert removed is not None and removed.removed_at is not None
    assert await store.remove_verified(first.id, by=3) is None
    assert [v.id for v in await store.verified(GUILD)] == []
    assert [v.id for v in await store.verified(GUILD, include_removed=True)] == [first.id]


async def test_a_candidate_is_proposed_once_and_reviewed_once(store: FeedbackStore) -> None:
    proposal = {
        "message_id": 5001,
        "guild_id": GUILD,
        "channel_id": 222,
        "author_id": 7,
        "author_name": "helen",
        "question": "How many replicas?",
        "answer": "One per query node.",
        "reason": "solved",
        "proposed_by": 8,
    }
    candidate = await store.propose_candidate(**proposal)
    assert candidate is not None and candidate.status is None
    assert candidate.jump_url == f"https://discord.com/channels/{GUILD}/222/5001"
    assert await store.propose_candidate(**{**proposal, "reason": "saved"}) is None
    # A card that could not be posted takes the proposal back: a later act may propose it.
    await store.set_candidate_card(candidate.id, None)
    candidate = await store.propose_candidate(**proposal)
    assert candidate is not None
    await store.set_candidate_card(candidate.id, 6001)
    # Two moderators at once: the first wins; a failed add opens it again.
    assert await store.settle_candidate(candidate.id, "added", 3)
    assert not await store.settle_candidate(candidate.id, "dismissed", 4)
    await store.finish_candidate(candidate.id, None)
    assert await store.settle_candidate(candidate.id, "added", 4)
    verified = await store.add_verified(
        question="How many replicas?",
        answer="One per query node.",
        message_link=candidate.jump_url,
        created_by=4,
        guild_id=GUILD,
        answered_by="helen",
    )
    await store.finish_candidate(candidate.id, verified.id)
    done = await store.candidate(candidate.id)
    assert done is not None and (done.status, done.reviewed_by, done.verified_id) == (
        "added",
        4,
        verified.id,
    )
    assert done.card_message_id == 6001
    assert [v.answered_by for v in await store.verified(GUILD)] == ["helen"]
    stats = await store.stats(GUILD)
    assert (stats["candidates"], stats["candidates_added"]) == (1, 1)


async def test_golden_answers_are_vouched_for_and_never_refused_or_flagged(
    store: FeedbackStore,
) -> None:
    liked = await _answer(store, 1)
    await store.set_vote(1, 10, GOOD)
    await store.set_vote(1, 11, GOOD)
    await _answer(store, 2)
    await store.set_vote(2, 10, GOOD)  # one 👍 is not enough
    await _answer(store, 3)
    await store.set_vote(3, 10, GOOD)
    await store.set_vote(3, 11, GOOD)
    await store.set_vote(3, 12, FLAG)  # disputed
    fine = await _answer(store, 4)
    await store.set_vote(4, 12, FLAG)
    await store.set_review(fine, "fine", by=12)  # a moderator settled it
    await _answer(store, 5, refused=True)
    await store.set_vote(5, 10, GOOD)
    await store.set_vote(5, 11, GOOD)
    dismissed = await _answer(store, 6)
    await store.set_vote(6, 10, GOOD)
    await store.set_vote(6, 11, GOOD)
    await store.set_review(dismissed, "dismissed", by=12)
    assert [a.id for a in await store.golden_answers()] == [liked, fine]
    with pytest.raises(ValueError):
        await store.set_review(liked, "great", by=1)
    assert not await store.set_review(999, "fine", by=1)


async def test_the_golden_set_exports_as_eval_questions(
    store: FeedbackStore, tmp_path: Path
) -> None:
    from rag_core.questions import load_questions

    await _answer(store, 1)
    await store.set_vote(1, 10, GOOD)
    await store.set_vote(1, 11, GOOD)
    await _answer(store, 2)  # not vouched for
    await store.add_verified(
        question="How many replicas?",
        answer="One per query node.",
        message_link="https://discord.com/channels/111/222/9",
        created_by=9,
        guild_id=GUILD,
    )
    out = tmp_path / "golden.jsonl"
    assert await store.export_golden(out) == 2
    questions = load_questions(out).questions
    assert [(q.id, q.question, q.expected_sources) for q in questions] == [
        ("verified-1", "How many replicas?", ("https://discord.com/channels/111/222/9",)),
        (
            "answer-1",
            "question 1?",
            ("https://milvus.io/docs/gpu_index.md", "https://milvus.io/docs/index.md"),
        ),
    ]
    assert await store.export_golden(io.StringIO(), guild_id=999) == 0


async def test_answers_whose_cited_passages_changed_are_marked_stale_once(
    store: FeedbackStore,
) -> None:
    old = await _answer(store, 1, cited_hashes=["h-old"])
    since = store._clock() + 0.5  # answers after this are "recent"
    fresh = await _answer(store, 2, cited_hashes=["h1", "h2"], extra_message_ids=[20, 21])
    kept = await _answer(store, 3, cited_hashes=["h1"])
    await _answer(store, 4, refused=True, cited_hashes=["h2"])  # a refusal cites nothing
    await _answer(store, 5)  # recorded before answers kept their hashes
    cited = await store.cited_since(since)
    assert cited == {fresh: frozenset({"h1", "h2"}), kept: frozenset({"h1"})}
    assert old not in cited

    # The new index still has h1, not h2: only the answer citing h2 is stale.
    ids = stale_answer_ids(cited, {"h1"})
    assert ids == [fresh]
    [marked] = await store.mark_stale(ids)
    assert (marked.answer_id, marked.channel_id, marked.guild_id) == (fresh, CHANNEL, GUILD)
    assert marked.message_ids == (2, 20, 21)  # the last part carries the footer
    assert (await store.stats())["stale"] == 1
    assert (await store.stats(guild_id=999))["stale"] == 0
    # Marked once: the next reindex neither lists nor marks it again.
    assert fresh not in await store.cited_since(since)
    assert await store.mark_stale([fresh]) == []
    assert (await store.stats())["stale"] == 1


async def test_a_version_4_database_gains_cited_hashes(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path)
    for statements in MIGRATIONS[:4]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO answers (message_id, channel_id, user_id, question, answer, created_at) "
        "VALUES (7, 1, 2, 'What is HNSW?', 'A graph index.', 0)"
    )
    conn.commit()
    conn.close()
    async with FeedbackStore.open(path) as store:
        assert await store.cited_since(0) == {}  # an old answer has no hashes: never stale
        new = await store.record_answer(
            message_id=8, channel_id=1, user_id=2, question="q", answer="a", cited_hashes=["h"]
        )
        assert await store.cited_since(0) == {new: frozenset({"h"})}


def test_the_stale_note_replaces_the_footer() -> None:
    note = "-# ⚠️ The docs this answer cites changed on <t:1:D>: ask again for the current answer."
    answer = "HNSW is a graph [1].\n\n**Sources**\n[1] Index\n-# Answered in 1.0 s · react 👍"
    edited = with_stale_footer(answer, note)
    assert edited == answer.rsplit("\n", 1)[0] + "\n" + note
    assert with_stale_footer(edited, note) is None  # says so already: no edit
    assert with_stale_footer("no footer here", note) == "no footer here\n" + note
    assert with_stale_footer("x" * 1990, note) is None  # would not fit a message


async def test_concurrent_answers_cannot_pass_a_conversations_turn_limit(
    store: FeedbackStore,
) -> None:
    first = await _answer(store, 1)
    conversation = await store.record_turn(first, standalone="q")
    # 30 answers start at once in a conversation of 1 turn with room for 4: 3 get a turn.
    taken = await asyncio.gather(*(store.reserve_turn(conversation, 4) for _ in range(30)))
    reserved = [r for r in taken if r is not None]
    assert len(reserved) == 3
    # One answer fails: its turn is given back and the next message may have it.
    await store.release_turn(reserved.pop())
    freed = await store.reserve_turn(conversation, 4)
    assert freed is not None and await store.reserve_turn(conversation, 4) is None
    reserved.append(freed)
    for n, reservation in enumerate(reserved, 2):
        answer_id = await _answer(store, n)
        await store.record_turn(
            answer_id, standalone="q", conversation_id=conversation, reservation=reservation
        )
        await store.release_turn(reservation)  # after the record: a no-op
        assert await store.reserve_turn(conversation, 4) is None
    found = await store.conversation(message_id=1)
    assert found is not None and len(found.turns) == 4
    # The "too long" notice is claimed once per conversation, whoever asks first.
    claims = await asyncio.gather(*(store.claim_too_long(conversation) for _ in range(10)))
    assert sum(claims) == 1


async def test_a_reservation_left_by_a_stopped_process_expires(db_path: Path) -> None:
    clock = Clock()
    async with FeedbackStore.open(db_path, clock=clock) as store:
        conversation = await store.record_turn(await _answer(store, 1), standalone="q")
        assert await store.reserve_turn(conversation, 2) is not None
        assert await store.reserve_turn(conversation, 2) is None
        clock.now += 3600
        assert await store.reserve_turn(conversation, 2) is not None


async def test_queued_forum_posts_are_bounded_and_left_to_people_as_gaps(
    db_path: Path,
) -> None:
    clock = Clock()
    async with FeedbackStore.open(db_path, clock=clock) as store:
        post = {"guild_id": GUILD, "user_id": ASKER, "limit": 2}
        first = await store.queue_forum_post(post_id=10, question="Title\nfirst?", **post)
        assert first is not None and first.question == "Title\nfirst?"
        assert await store.queue_forum_post(post_id=10, question="again", **post) == first
        assert await store.queue_forum_post(post_id=11, question="second?", **post) is not None
        # The queue is full: the post is recorded as left to people at once.
        assert await store.queue_forum_post(post_id=12, question="third?", **post) is None
        assert [q.text for q in await store.gap_questions(0)] == ["third?"]
        await store.unqueue_forum_post(11)  # answered
        assert await store.leave_forum_post(11) is False
    # A restart finds the posts still waiting, oldest first.
    async with FeedbackStore.open(db_path, clock=clock) as store:
        assert [p.post_id for p in await store.queued_forum_posts()] == [10]
        assert await store.leave_forum_post(10) is True  # waited too long
        assert await store.queued_forum_posts() == []
        gaps = await store.gap_questions(0, GUILD)
        assert [(q.text, q.refused) for q in gaps] == [("third?", True), ("Title\nfirst?", True)]
