"""The bot's metrics wiring end to end: real /ask through the fake Discord, the /metrics endpoint
scraped over HTTP, the admin /stats command, and the one INFO log line per question.

Metrics live in a module-level registry shared by every test in the session, so each check
compares a scrape before with one after (deltas), never absolute counts.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import discord
import pytest

from bot import metrics
from bot.cogs.admin import stats_embed
from tests.bot_fixtures import Indexed, ShapedGenerator, World, running_bot
from tests.fake_discord import FakeInteraction, FakeMessage
from tests.test_metrics import scrape  # parsed as in bot/metrics.py's unit tests

QUESTION = "How do I configure a GPU index such as CAGRA?"
FOOTER = "-# Answered in"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def ask(w: World, user: discord.abc.Snowflake, private: bool = False) -> FakeMessage:
    inter = await w.fake.invoke("ask", {"question": QUESTION, "private": private}, user=user)
    await inter.wait_for(_finished, timeout=120)
    assert "**Sources**" in (inter.content or ""), inter.summary()
    assert inter.original is not None
    return inter.original


def _finished(inter: FakeInteraction) -> bool:
    messages = [inter.original, *inter.followups] if inter.original else []
    return any(FOOTER in m.content or m.content.startswith("⚠️") for m in messages)


async def wait_metric(
    port: int, before: Samples, name: str, expected: float, **labels: str
) -> None:
    """Poll until a metric moved by `expected` (reactions arrive asynchronously)."""
    deadline = time.monotonic() + 5
    while (
        moved := delta(before, await asyncio.to_thread(scrape, port), name, **labels)
    ) < expected:
        assert time.monotonic() < deadline, f"{name}{labels} moved by {moved}, not {expected}"
        await asyncio.sleep(0.05)


async def test_rerank_llm_scores_the_passages_inside_ask(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """RERANK=llm in the bot: the engine scores the passages before the answer (its own stage,
    inside the answer's engine slot) and the answer still streams with its sources."""
    inner = indexed.rag.generator
    assert inner is not None
    rag = indexed.with_settings(ShapedGenerator(inner, max_tokens=8), rerank="llm")
    assert rag.retriever.reranker is not None
    server = metrics.start_metrics_server(0)
    try:
        before = await asyncio.to_thread(scrape, server.port)
        async with running_bot(rag, tmp_path) as w:
            await ask(w, w.alice)
        after = await asyncio.to_thread(scrape, server.port)
    finally:
        server.close()
    assert delta(before, after, "docsbot_stage_seconds_count", stage="rerank") == 1
    # Scored, not skipped: a failed scoring keeps the order and says so in the log.
    assert not [r for r in caplog.records if "reranking failed" in r.getMessage()]
    assert delta(before, after, "docsbot_stage_seconds_sum", stage="rerank") > 0
    assert not any(
        name == "docsbot_errors_total" and delta(before, after, name, **dict(labels))
        for name, labels in after
    )


async def test_asks_are_counted_scraped_and_shown_in_stats(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot")
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=16))
    server = metrics.start_metrics_server(0)
    try:
        before = await asyncio.to_thread(scrape, server.port)
        async with running_bot(rag, tmp_path) as w:
            # Connected, and the index size was published at start-up.
            after_start = await asyncio.to_thread(scrape, server.port)
            assert value(after_start, "docsbot_discord_connected") == 1
            chunks = await asyncio.to_thread(rag.store.count)
            assert chunks > 0 and value(after_start, "docsbot_index_chunks") == chunks

            answer = await ask(w, w.alice)
            await ask(w, w.bob, private=True)
            after = await asyncio.to_thread(scrape, server.port)

            assert delta(before, after, "docsbot_questions_total") == 2
            assert delta(before, after, "docsbot_refusals_total") == 0
            for stage in ("ack", "embed", "search", "first_token", "total"):
                count = delta(before, after, "docsbot_stage_seconds_count", stage=stage)
                assert count == 2, stage
                assert delta(before, after, "docsbot_stage_seconds_sum", stage=stage) > 0, stage
            # The acknowledgement is quick: both land in a bucket of at most 2.5 s.
            fast_acks = delta(before, after, "docsbot_stage_seconds_bucket", stage="ack", le="2.5")
            assert fast_acks == 2
            assert delta(before, after, "docsbot_generation_tokens_total", kind="completion") > 0
            assert delta(before, after, "docsbot_generation_tokens_total", kind="prompt") > 0
            assert value(after, "docsbot_queue_depth") == 0
            assert not any(
                name == "docsbot_errors_total" and delta(before, after, name, **dict(labels))
                for name, labels in after
            )

            # A vote and its withdrawal.
            await w.fake.add_reaction(w.general, answer, w.carol, "👎")
            await wait_metric(server.port, after, "docsbot_votes_total", 1, kind="flag")
            await w.fake.remove_reaction(w.general, answer, w.carol, "👎")
            await wait_metric(server.port, after, "docsbot_votes_total", 1, kind="unflag")

            # A resumed gateway session reads as connected again.
            await w.fake.reconnect(resume=True)
            registry = metrics.METRICS.registry
            await w.fake.wait_for(
                lambda: registry.get_sample_value("docsbot_discord_connected") == 1
            )

            # /stats for admins: the same figures, ephemeral, within Discord's embed limits.
            snap = metrics.snapshot()
            inter = await w.fake.invoke("stats", user=w.admin)
            await inter.wait_done()
            assert inter.ephemeral and len(inter.embeds) == 1
            embed = inter.embeds[0]
            fields = {f["name"]: f["value"] for f in embed["fields"]}
            assert fields["Questions"].startswith(f"**{snap['questions']}**")
            assert snap["questions"] >= 2
            assert f"completion **{snap['tokens']['completion']}**" in fields["Tokens"]
            assert f"**{chunks}** chunks" in fields["Index"]
            assert "**0** waiting" in fields["Queue"]
            latency = fields["Latency (ms)"]
            for stage in ("acknowledge", "first token", "total"):
                line = next(x for x in latency.splitlines() if x.startswith(stage))
                assert re.search(r"p50 \*\*\d+\*\* · p95 \*\*\d+\*\*", line), line
            ack = snap["latency"]["ack"]
            assert f"p95 **{ack['p95_ms']:.0f}** ({ack['count']} observed)" in latency
            assert "answers **2**" in fields["Feedback (this server)"]
            assert_embed_within_limits(embed)

            # Not for others: the command is hidden by default and refused when run anyway.
            schemas = {c["name"]: c for c in w.fake.global_commands}
            assert schemas["stats"]["default_member_permissions"] == "32"
            refused = await w.fake.invoke(
                "stats", user=w.bob, member_permissions=discord.Permissions(send_messages=True)
            )
            await refused.wait_done()
            assert refused.response_type == 4 and refused.ephemeral and not refused.embeds
            assert "Only server admins" in (refused.content or "")
        w.fake.assert_clean()
    finally:
        server.close()

    # One INFO line per question, with outcome and timings; the question only at DEBUG.
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.answer_path"
        and r.levelno == logging.INFO
        and "outcome=" in r.getMessage()
    ]
    assert len(lines) == 2, lines
    for line in lines:
        assert "outcome=answered" in line
        assert re.search(r"first_token_ms=\d+ total_ms=\d+ prompt_tokens=\d+", line), line
    ours = [r for r in caplog.records if r.name.startswith("bot")]
    assert not any(QUESTION in r.getMessage() for r in ours if r.levelno >= logging.INFO)
    assert any(QUESTION in r.getMessage() for r in ours if r.levelno == logging.DEBUG)


def assert_embed_within_limits(embed: dict[str, object]) -> None:
    fields = embed.get("fields") or []
    assert isinstance(fields, list) and len(fields) <= 25
    total = len(str(embed.get("title", ""))) + len(str(embed.get("description", "")))
    for f in fields:
        assert 0 < len(f["name"]) <= 256 and 0 < len(f["value"]) <= 1024
        total += len(f["name"]) + len(f["value"])
    assert len(str(embed.get("description", ""))) <= 4096 and total <= 6000


def test_stats_embed_stays_within_limits_with_many_error_kinds() -> None:
    m = metrics.Metrics(process=False)
    for i in range(300):
        m.observe_error(f"SomeVeryLongErrorClassNameNumber{i}Error")
    m.observe_reindex(None, False, seconds=3.0)
    embed = stats_embed(m.snapshot(), {"answers": 0}).to_dict()
    assert_embed_within_limits(embed)  # type: ignore[arg-type]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Questions"].startswith("**0**") and "failed **1**" in fields["Reindex runs"]
    assert "never" in fields["Reindex runs"] and "p50 **–**" in fields["Latency (ms)"]
