"""Prometheus metrics: what the bot answered, how fast, and how the knowledge base is doing.

Everything lives in a dedicated `CollectorRegistry` held by a `Metrics` object, so tests build
their own and never see each other's numbers. The bot uses the module-level default through the
small functions below (`observe_answer`, `observe_ack`, ...), which the cogs call; the same
figures come back as a plain dict from `snapshot()` for an admin `/stats` command.

`start_metrics_server(port)` serves `/metrics` from a daemon thread (prometheus-client's own
WSGI server), so scrapes never wait on the bot's event loop. `heartbeat()` is the exception on
purpose: it runs *on* the event loop and stamps a gauge, so a stalled loop shows up as a stale
timestamp, which `python -m bot.doctor --quick` (the container health check) reads.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from rag_core.answer.answering import Answer
    from rag_core.ingest.indexer import IndexReport

PREFIX = "docsbot"
HEARTBEAT_METRIC = f"{PREFIX}_heartbeat_timestamp_seconds"

Stage = Literal["rewrite", "embed", "search", "rerank", "first_token", "total", "ack"]
STAGES: tuple[Stage, ...] = (
    "rewrite",
    "embed",
    "search",
    "rerank",
    "first_token",
    "total",
    "ack",
)
VoteKind = Literal["flag", "good", "unflag", "ungood"]

# Seconds: embedding and search are milliseconds, first token and totals are seconds, a cold
# engine or a long answer can take a minute or two.
_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
_REINDEX_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """Every metric of the bot, registered on its own registry."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:  # RSS, CPU seconds, open fds (Linux): a leak shows here first
            ProcessCollector(namespace=PREFIX, registry=r)
        self.questions = Counter(f"{PREFIX}_questions", "Questions answered or refused", registry=r)
        self.refusals = Counter(
            f"{PREFIX}_refusals", "Questions refused as 'not in the docs'", registry=r
        )
        self.errors = Counter(
            f"{PREFIX}_errors", "Failed questions and operations, by kind", ["kind"], registry=r
        )
        self.latency = Histogram(
            f"{PREFIX}_stage_seconds",
            "Latency per stage: rewrite (a follow-up made standalone), embed, search, "
            "rerank (RERANK=llm), first_token (from the start), total, ack",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            f"{PREFIX}_generation_tokens",
            "LLM tokens, by kind (prompt, completion, and rewrite_prompt, rewrite_completion "
            "for making follow-ups standalone)",
            ["kind"],
            registry=r,
        )
        self.finish = Counter(
            f"{PREFIX}_generation_finish", "Generations by finish reason", ["reason"], registry=r
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Questions waiting for a generation slot", registry=r
        )
        self.forum_queue_depth = Gauge(
            f"{PREFIX}_forum_queue_depth",
            "New forum posts waiting for an answer (FORUM_MAX_QUEUED), those being answered "
            "included",
            registry=r,
        )
        self.forum_left = Counter(
            f"{PREFIX}_forum_posts_left",
            "Forum posts left to people without an answer, by reason (waited: no answer slot "
            "within FORUM_MAX_WAIT_S; full: the forum queue was full; people: someone helping "
            "replied first)",
            ["reason"],
            registry=r,
        )
        self.votes = Counter(
            f"{PREFIX}_votes", "Reactions on answers (flag, good, and their removals)", ["kind"],
            registry=r,
        )  # fmt: skip
        self.handoffs = Counter(
            f"{PREFIX}_handoffs", "Questions handed to helpers ('Ask a helper')", registry=r
        )
        self.candidates = Counter(
            f"{PREFIX}_candidates",
            "People's answers proposed to the moderators as verified answers (solved: a solved "
            "forum post; saved: a helper's save reaction)",
            ["reason"],
            registry=r,
        )
        self.index_chunks = Gauge(
            f"{PREFIX}_index_chunks", "Chunks in the live knowledge base", registry=r
        )
        self.reindex_seconds = Histogram(
            f"{PREFIX}_reindex_seconds", "Duration of reindex runs", buckets=_REINDEX_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.reindexes = Counter(
            f"{PREFIX}_reindexes",
            "Reindex runs by outcome (published, unchanged, failed)",
            ["outcome"],
            registry=r,
        )
        self.reindex_last_success = Gauge(
            f"{PREFIX}_reindex_last_success_timestamp_seconds",
            "Unix time of the last successful reindex",
            registry=r,
        )
        self.heartbeat_ts = Gauge(
            HEARTBEAT_METRIC, "Unix time the event loop last ran the heartbeat", registry=r
        )
        self.connected = Gauge(
            f"{PREFIX}_discord_connected", "1 while the Discord gateway is connected", registry=r
        )
        # Pre-create the label sets a dashboard expects, so they read 0 rather than missing.
        for stage in STAGES:
            self.latency.labels(stage)
        for kind in ("prompt", "completion", "rewrite_prompt", "rewrite_completion"):
            self.tokens.labels(kind)
        for outcome in ("published", "unchanged", "failed"):
            self.reindexes.labels(outcome)
        for vote in ("flag", "good"):
            self.votes.labels(vote)
        for reason in ("waited", "full", "people"):
            self.forum_left.labels(reason)

    # -- what the cogs call ---------------------------------------------------------------------

    def observe_answer(self, answer: Answer) -> None:
        """One finished answer (or refusal): counts, per-stage latencies, tokens."""
        self.questions.inc()
        t = answer.timings
        self.latency.labels("embed").observe(t.embed_s)
        self.latency.labels("search").observe(t.search_s)
        if t.rerank_s:
            self.latency.labels("rerank").observe(t.rerank_s)
        self.latency.labels("total").observe(t.total_s)
        rewrite = answer.rewrite
        if rewrite is not None and (rewrite.method != "none" or rewrite.prompt_tokens):
            # A follow-up that was rewritten, or whose model rewrite was tried and not used.
            self.latency.labels("rewrite").observe(rewrite.seconds)
            self.tokens.labels("rewrite_prompt").inc(rewrite.prompt_tokens)
            self.tokens.labels("rewrite_completion").inc(rewrite.completion_tokens)
        if answer.refused:
            self.refusals.inc()
            return
        if t.first_token_s is not None:
            self.latency.labels("first_token").observe(t.first_token_s)
        self.tokens.labels("prompt").inc(answer.prompt_tokens)
        self.tokens.labels("completion").inc(answer.completion_tokens)
        self.finish.labels(answer.finish_reason or "unknown").inc()

    def observe_ack(self, seconds: float) -> None:
        """Time from the interaction's arrival to Discord acknowledging our defer/first reply."""
        self.latency.labels("ack").observe(seconds)

    def observe_error(self, kind: str) -> None:
        """A failure, by a short stable kind: e.g. the RagError class name, 'discord', 'busy'."""
        self.errors.labels(kind).inc()

    def observe_handoff(self) -> None:
        self.handoffs.inc()

    def observe_candidate(self, reason: str) -> None:
        self.candidates.labels(reason).inc()

    def observe_vote(self, kind: VoteKind | str) -> None:
        self.votes.labels(kind).inc()

    def set_queue_depth(self, n: int) -> None:
        self.queue_depth.set(n)

    def set_forum_queue_depth(self, n: int) -> None:
        self.forum_queue_depth.set(n)

    def observe_forum_left(self, reason: Literal["waited", "full", "people"]) -> None:
        """A forum post left to people without an answer: it waited too long, found the forum
        queue full, or someone helping replied before the answer was ready."""
        self.forum_left.labels(reason).inc()

    def set_index_size(self, n: int) -> None:
        self.index_chunks.set(n)

    def set_connected(self, connected: bool) -> None:
        self.connected.set(1 if connected else 0)

    def observe_reindex(self, report: IndexReport | None, ok: bool, *, seconds: float = 0) -> None:
        """A finished reindex run. `report` is None when the run raised (then pass `seconds`)."""
        if not ok or report is None:
            self.reindexes.labels("failed").inc()
            if seconds:
                self.reindex_seconds.observe(seconds)
            return
        self.reindex_seconds.observe(report.seconds)
        self.reindexes.labels("published" if report.published else "unchanged").inc()
        self.reindex_last_success.set(time.time())
        self.index_chunks.set(report.chunks_total)

    def beat(self) -> None:
        self.heartbeat_ts.set(time.time())

    # -- reading back ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The same figures as plain numbers, for `/stats` (latencies in milliseconds)."""
        values: dict[str, float] = {}
        buckets: dict[str, list[tuple[float, float]]] = {}
        labelled: dict[str, dict[str, float]] = {}
        for family in self.registry.collect():
            for s in family.samples:
                if s.name.endswith("_bucket") and "stage" in s.labels:
                    le = float(s.labels["le"])
                    buckets.setdefault(s.labels["stage"], []).append((le, s.value))
                    continue
                label = s.labels.get("kind") or s.labels.get("outcome") or s.labels.get("stage")
                if label is not None and not s.name.endswith(("_bucket", "_created")):
                    labelled.setdefault(s.name, {})[label] = s.value
                elif not s.labels:
                    values[s.name] = s.value

        def count(name: str) -> int:
            return int(values.get(f"{PREFIX}_{name}_total", 0))

        latency: dict[str, dict[str, float | int | None]] = {}
        counts = labelled.get(f"{PREFIX}_stage_seconds_count", {})
        sums = labelled.get(f"{PREFIX}_stage_seconds_sum", {})
        for stage in STAGES:
            n = int(counts.get(stage, 0))
            latency[stage] = {
                "count": n,
                "mean_ms": round(sums.get(stage, 0.0) / n * 1000, 1) if n else None,
                "p50_ms": _quantile_ms(buckets.get(stage, []), 0.5),
                "p95_ms": _quantile_ms(buckets.get(stage, []), 0.95),
            }
        reindex_count = int(values.get(f"{PREFIX}_reindex_seconds_count", 0))
        return {
            "questions": count("questions"),
            "refusals": count("refusals"),
            "errors": {k: int(v) for k, v in labelled.get(f"{PREFIX}_errors_total", {}).items()},
            "votes": {k: int(v) for k, v in labelled.get(f"{PREFIX}_votes_total", {}).items()},
            "tokens": {
                k: int(v) for k, v in labelled.get(f"{PREFIX}_generation_tokens_total", {}).items()
            },
            "queue_depth": int(values.get(f"{PREFIX}_queue_depth", 0)),
            "index_chunks": int(values.get(f"{PREFIX}_index_chunks", 0)),
            "reindex": {
                "runs": {
                    k: int(v) for k, v in labelled.get(f"{PREFIX}_reindexes_total", {}).items()
                },
                "mean_s": (
                    round(values.get(f"{PREFIX}_reindex_seconds_sum", 0.0) / reindex_count, 1)
                    if reindex_count
                    else None
                ),
                "last_success": values.get(f"{PREFIX}_reindex_last_success_timestamp_seconds")
                or None,
            },
            "latency": latency,
        }


def _quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Estimate a quantile from cumulative histogram buckets, as PromQL's histogram_quantile."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):  # beyond the last finite bucket: its bound is the best we know
                return round(prev_le * 1000, 1)
            width = cum - prev_count
            frac = (rank - prev_count) / width if width else 1.0
            return round((prev_le + (le - prev_le) * frac) * 1000, 1)
        prev_le, prev_count = le, cum
    return None


# -- the HTTP endpoint --------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running /metrics endpoint; `close()` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(
    port: int, host: str = "127.0.0.1", *, metrics: Metrics | None = None
) -> MetricsServer:
    """Serve /metrics on host:port from a daemon thread; port 0 picks a free port (tests).

    The bot calls this only when settings.metrics_port > 0.
    """
    registry = (metrics or METRICS).registry
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)


async def heartbeat(interval_s: float = 5.0, *, metrics: Metrics | None = None) -> None:
    """Stamp the heartbeat gauge every `interval_s` until cancelled (run it as a task)."""
    m = metrics or METRICS
    while True:
        m.beat()
        await asyncio.sleep(interval_s)


# -- the process-wide default, and the functions the cogs call ---------------------------------

METRICS = Metrics()

observe_answer = METRICS.observe_answer
observe_ack = METRICS.observe_ack
observe_error = METRICS.observe_error
observe_vote = METRICS.observe_vote
set_queue_depth = METRICS.set_queue_depth
set_forum_queue_depth = METRICS.set_forum_queue_depth
observe_forum_left = METRICS.observe_forum_left
observe_handoff = METRICS.observe_handoff
observe_candidate = METRICS.observe_candidate
set_index_size = METRICS.set_index_size
set_connected = METRICS.set_connected
observe_reindex = METRICS.observe_reindex
snapshot = METRICS.snapshot
