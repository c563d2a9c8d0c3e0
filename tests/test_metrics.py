"""Metrics: real Answers observed, the /metrics endpoint scraped over HTTP and parsed."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot import metrics as metrics_module
from bot.metrics import Metrics, heartbeat, start_metrics_server
from rag_core.answer.answering import Answer, Timings
from rag_core.answer.conversation import Rewrite
from rag_core.ingest.indexer import IndexReport

REWRITE_NONE = {"rewrite_prompt": 0, "rewrite_completion": 0}  # no follow-ups asked


def answer(*, refused: bool = False, total_s: float = 2.0, completion: int = 40) -> Answer:
    return Answer(
        question="How do I create a collection?",
        text="" if refused else "Call create_collection [1].",
        sources=[],
        refused=refused,
        prompt_tokens=0 if refused else 900,
        completion_tokens=0 if refused else completion,
        finish_reason=None if refused else "stop",
        timings=Timings(
            embed_s=0.008,
            search_s=0.030,
            first_token_s=None if refused else 0.4,
            total_s=total_s,
        ),
    )


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_endpoint_serves_observed_figures() -> None:
    m = Metrics()
    m.observe_answer(answer(total_s=1.5))
    m.observe_answer(answer(total_s=3.0, completion=60))
    m.observe_answer(answer(refused=True, total_s=0.05))
    m.observe_ack(0.12)
    m.observe_error("GenerationTimeout")
    m.observe_error("GenerationTimeout")
    m.observe_vote("flag")
    m.observe_vote("good")
    m.observe_vote("good")
    m.set_queue_depth(3)
    m.observe_reindex(IndexReport(added=2, chunks_total=120, seconds=42.0, published=True), True)
    m.observe_reindex(None, False, seconds=5.0)
    server = start_metrics_server(0, metrics=m)
    try:
        s = scrape(server.port)
    finally:
        server.close()

    assert s[("docsbot_questions_total", ())] == 3
    assert s[("docsbot_refusals_total", ())] == 1
    assert s[("docsbot_errors_total", (("kind", "GenerationTimeout"),))] == 2
    assert s[("docsbot_generation_tokens_total", (("kind", "completion"),))] == 100
    assert s[("docsbot_generation_tokens_total", (("kind", "prompt"),))] == 1800
    assert s[("docsbot_votes_total", (("kind", "good"),))] == 2
    assert s[("docsbot_votes_total", (("kind", "flag"),))] == 1
    assert s[("docsbot_queue_depth", ())] == 3
    assert s[("docsbot_index_chunks", ())] == 120
    assert s[("docsbot_reindexes_total", (("outcome", "published"),))] == 1
    assert s[("docsbot_reindexes_total", (("outcome", "failed"),))] == 1
    assert s[("docsbot_reindex_seconds_sum", ())] == 47.0
    # Latency histograms per stage; refusals have no first token.
    assert s[("docsbot_stage_seconds_count", (("stage", "total"),))] == 3
    assert s[("docsbot_stage_seconds_count", (("stage", "first_token"),))] == 2
    assert s[("docsbot_stage_seconds_count", (("stage", "ack"),))] == 1
    assert s[("docsbot_stage_seconds_sum", (("stage", "total"),))] == pytest.approx(4.55)
    assert s[("docsbot_stage_seconds_bucket", (("le", "2.5"), ("stage", "total")))] == 2
    assert s[("docsbot_generation_finish_total", (("reason", "stop"),))] == 2
    assert ("process_resident_memory_bytes", ()) not in s  # namespaced: docsbot_process_...
    assert s[("docsbot_process_resident_memory_bytes", ())] > 0


def test_a_follow_ups_rewrite_is_timed_and_its_tokens_counted() -> None:
    m = Metrics(process=False)
    m.observe_answer(answer())  # a first question: no rewrite
    by_model = Rewrite("How do I build an IVF_PQ index?", "llm", 0.8, 310, 12)
    by_rules = Rewrite("How do I build an index? and for IVF_PQ?", "rules", 0.0002)
    m.observe_answer(dataclasses.replace(answer(), rewrite=by_model))
    m.observe_answer(dataclasses.replace(answer(refused=True), rewrite=by_rules))
    as_typed = Rewrite("and for IVF_PQ?", "none")  # CONVERSATION_REWRITE=off: no step at all
    m.observe_answer(dataclasses.replace(answer(), rewrite=as_typed))
    snap = m.snapshot()
    assert snap["latency"]["rewrite"]["count"] == 2
    assert snap["latency"]["rewrite"]["mean_ms"] == pytest.approx(400.1, abs=0.1)
    assert snap["tokens"]["rewrite_prompt"] == 310 and snap["tokens"]["rewrite_completion"] == 12
    assert snap["tokens"]["prompt"] == 3 * 900  # the answers' own prompts, apart


def test_registries_are_isolated() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    a.observe_answer(answer())
    assert a.snapshot()["questions"] == 1 and b.snapshot()["questions"] == 0
    # The module-level functions feed the process-wide default, not a test's own object.
    before = metrics_module.snapshot()["questions"]
    metrics_module.observe_answer(answer())
    assert metrics_module.snapshot()["questions"] == before + 1
    assert a.snapshot()["questions"] == 1


def test_snapshot_for_stats() -> None:
    m = Metrics(process=False)
    for total in (0.8, 1.2, 1.8, 2.2, 9.0):
        m.observe_answer(answer(total_s=total))
    m.observe_answer(answer(refused=True))
    m.observe_error("StoreError")
    m.observe_vote("flag")
    m.set_index_size(5000)
    m.observe_reindex(IndexReport(chunks_total=5000, seconds=10.0, published=False), True)
    snap = m.snapshot()
    assert snap["questions"] == 6 and snap["refusals"] == 1
    assert snap["errors"] == {"StoreError": 1}
    assert snap["votes"]["flag"] == 1 and snap["votes"]["good"] == 0
    assert snap["tokens"] == {"prompt": 4500, "completion": 200} | REWRITE_NONE
    assert snap["index_chunks"] == 5000
    assert snap["reindex"]["runs"]["unchanged"] == 1 and snap["reindex"]["mean_s"] == 10.0
    assert snap["reindex"]["last_success"] is not None
    total = snap["latency"]["total"]
    assert total["count"] == 6
    assert total["mean_ms"] == round((0.8 + 1.2 + 1.8 + 2.2 + 9.0 + 2.0) / 6 * 1000, 1)
    assert 1000 <= total["p50_ms"] <= 2500  # interpolated inside the (1, 2.5] bucket
    assert 5000 <= total["p95_ms"] <= 10000
    assert snap["latency"]["ack"] == {"count": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None}


async def test_heartbeat_stamps_the_gauge() -> None:
    m = Metrics(process=False)
    task = asyncio.create_task(heartbeat(0.01, metrics=m))
    try:
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert m.heartbeat_ts._value.get() > 0
