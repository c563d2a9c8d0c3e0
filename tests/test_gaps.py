"""Coverage gaps: grouping questions by meaning, which questions count, and the Markdown report
of `python -m bot gaps` (a real feedback database, the real offline embedder)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bot import __main__ as bot_main
from bot.feedback import FLAG, FeedbackStore
from bot.gaps import gap_messages
from rag_core.quality.gaps import AskedQuestion, Gap, cluster
from tests.conftest import offline_model_path

BACKUP = [
    "How do I back up a Milvus collection to S3?",
    "What's the way to make a backup of my collection into an S3 bucket?",
    "Can I back up collections to S3, and how?",
]
UNRELATED = "Does Milvus run on Windows ARM laptops?"


def test_vectors_join_the_group_whose_centre_is_close_enough() -> None:
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0.9, 0.1, 0], [0.8, 0, 0.2], [0, 0, 1]])
    assert cluster(vectors, 0.9) == [[0, 2, 3], [1], [4]]
    assert cluster(vectors, 0.999) == [[0], [1], [2], [3], [4]]
    assert cluster(np.zeros((0, 3)), 0.5) == []


def test_examples_are_distinct_wordings_most_recent_first() -> None:
    gap = Gap(
        [
            AskedQuestion("How to back up?", 1.0, True, False),
            AskedQuestion("how to  BACK up?", 2.0, True, False),
            AskedQuestion("Backups?", 3.0, False, True),
            AskedQuestion("S3 backups?", 4.0, True, False),
            AskedQuestion("Back up to S3?", 5.0, True, False),
        ]
    )
    assert gap.examples() == ["Back up to S3?", "S3 backups?", "Backups?"]
    assert (gap.count, gap.refused, gap.flagged, gap.last_asked) == (5, 4, 1, 5.0)


async def test_refused_and_flagged_questions_count_unless_a_moderator_cleared_them(
    tmp_path: Path,
) -> None:
    async with FeedbackStore.open(tmp_path / "feedback.db") as store:

        async def answer(message_id: int, question: str, **kw: object) -> int:
            return await store.record_answer(
                message_id=message_id,
                channel_id=1,
                user_id=2,
                guild_id=kw.pop("guild_id", 10),  # type: ignore[arg-type]
                question=question,
                answer="…",
                **kw,  # type: ignore[arg-type]
            )

        await answer(1, "refused?", refused=True)
        flagged = await answer(2, "flagged?")
        await store.set_vote(2, 99, FLAG)
        fine = await answer(3, "flagged but fine?")
        await store.set_vote(3, 99, FLAG)
        await store.set_review(fine, "fine", by=5)
        await answer(4, "answered well?")
        await answer(5, "other server?", refused=True, guild_id=11)
        first = await answer(6, "What is HNSW?")
        await store.record_turn(first, standalone="What is HNSW?")
        follow = await answer(7, "and its M?", refused=True)
        conversation = await store.conversation(message_id=6)
        assert conversation is not None
        await store.record_turn(
            follow, standalone="What is M in HNSW?", conversation_id=conversation.id
        )

        # Forum posts the docs do not cover get no reply, but are gaps all the same.
        for guild_id in (10, 11):
            await store.record_unanswered(
                guild_id=guild_id, channel_id=3, user_id=4, question="Left to people?"
            )

        asked = await store.gap_questions(0, guild_id=10)
        assert [(q.text, q.refused, q.flagged) for q in asked] == [
            ("refused?", True, False),
            ("flagged?", False, True),
            ("What is M in HNSW?", True, False),  # a follow-up as retrieval understood it
            ("Left to people?", True, False),
        ]
        assert flagged and len(await store.gap_questions(0)) == 6  # every server
        assert await store.gap_questions(asked[-1].asked_at + 1) == []  # only since


def test_python_m_bot_gaps_prints_the_groups_as_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "feedback.db"

    async def fill() -> None:
        async with FeedbackStore.open(db) as store:
            for i, question in enumerate([*BACKUP, UNRELATED, BACKUP[0]]):
                await store.record_answer(
                    message_id=i + 1,
                    channel_id=1,
                    user_id=2,
                    question=question,
                    answer="…",
                    refused=True,
                )

    asyncio.run(fill())
    monkeypatch.chdir(tmp_path)  # no .env
    for name, value in {
        "DATA_DIR": str(tmp_path / "data"),
        "FEEDBACK_DB": str(db),
        "EMBEDDING_MODEL": str(offline_model_path()),
        "EMBEDDING_DEVICE": "cpu",
        "GAPS_SIMILARITY": "0.65",
    }.items():
        monkeypatch.setenv(name, value)

    assert bot_main.main(["--log-level", "CRITICAL", "gaps", "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Coverage gaps: the last 30 days\n")
    assert "5 questions the docs did not answer" in out and "in 2 groups" in out
    first, second = out.split("**1. ")[1].split("**2. ")
    assert first.startswith("Asked 4 times** · 4 not in the docs · last 20")
    # Three different wordings (the repeated one once), the newest first.
    assert first.count("\n- ") == 3 and first.index(BACKUP[0]) < first.index(BACKUP[2])
    assert second.startswith("Asked once** · 1 not in the docs") and UNRELATED in second

    written = tmp_path / "gaps.md"
    assert bot_main.main(["--log-level", "CRITICAL", "gaps", "-o", str(written)]) == 0
    assert written.read_text(encoding="utf-8").strip() == out.strip()
    with pytest.raises(SystemExit):
        bot_main.main(["gaps", "--days", "-3"])


def test_a_long_report_is_split_within_discord_limits() -> None:
    gaps = [
        Gap([AskedQuestion(f"question {n} " + "x" * 400, float(n), True, False)] * 3)
        for n in range(12)
    ]
    messages = gap_messages(gaps, 30, limit=10)
    assert len(messages) > 1 and all(len(m) <= 2000 for m in messages)
    text = "\n".join(messages)
    assert "**10. " in text and "**11. " not in text and "… and 2 more groups" in text
