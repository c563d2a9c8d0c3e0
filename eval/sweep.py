"""Tuning sweep: one index, every search mode x top_k, scored and gate-calibrated in one process.

    python eval/sweep.py DATA_DIR [QUESTIONS] [--top-k 3 5 8] [--modes hybrid dense]

Chunk size and overlap are fixed when an index is built (CHUNK_TOKENS, CHUNK_OVERLAP_TOKENS):
build one index per chunk configuration into its own DATA_DIR, then sweep each. The threshold is
calibrated on the English questions (the targets are for English); other languages are reported
at that threshold. Settings (EMBEDDING_MODEL, DOCS_BASE_URL...) come from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from rag_core.config import load_settings  # noqa: E402
from rag_core.quality.calibration import calibrate_threshold, regate, threshold_pairs  # noqa: E402
from rag_core.quality.evaluation import run_eval  # noqa: E402
from rag_core.quality.scoring import score_group, summarize  # noqa: E402
from rag_core.questions import load_questions  # noqa: E402
from rag_core.runtime import open_rag  # noqa: E402
from rag_core.search.retrieval import Retriever  # noqa: E402


async def sweep(args: argparse.Namespace) -> None:
    settings = load_settings(data_dir=args.data_dir, docs_base_url=args.base_url)
    questions = load_questions(args.questions, base_url=settings.docs_base_url).questions
    print(f"{args.data_dir}: {len(questions)} questions, {settings.embedding_model}")
    print(
        f"{'mode':<7}{'k':>3}  {'thr':>6}{'R@1':>7}{'R@3':>7}{'R@5':>7}{'MRR':>7}"
        f"{'unans ref':>10}{'ans ref':>9}{'margin':>8}   other langs R@5 / ans ref"
    )
    async with open_rag(settings) as rag:
        for mode in args.modes:
            for top_k in args.top_k:
                rag.settings = settings.model_copy(update={"search_mode": mode, "top_k": top_k})
                rag.retriever = Retriever(rag.settings, rag.store, rag.embedder)
                results = await run_eval(rag.retriever, questions)
                english = [r for r in results if r.lang == "en"]
                pairs = threshold_pairs(english)
                cal = calibrate_threshold(pairs, max_refused_rate=args.max_refused)
                gated = regate(results, cal.threshold)
                summary = summarize(gated)["by_lang"]
                en = summary["en"]
                others = [r for r in gated if r.lang != "en"]
                o = score_group(others) if others else {}
                print(
                    f"{mode:<7}{top_k:>3}  {cal.threshold:>6.3f}{en['recall@1']:>7.3f}"
                    f"{en['recall@3']:>7.3f}{en['recall@5']:>7.3f}{en['mrr']:>7.3f}"
                    f"{en['unanswerable_refused_rate']:>10.3f}"
                    f"{en['answerable_refused_rate']:>9.3f}{cal.margin:>8.3f}   "
                    f"{o.get('recall@5') or 0:.3f} / {o.get('answerable_refused_rate') or 0:.3f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("questions", nargs="?", default=HERE / "questions.jsonl")
    parser.add_argument("--base-url", default="https://milvus.io/docs/")
    parser.add_argument("--top-k", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--modes", nargs="+", default=["hybrid", "dense"])
    parser.add_argument("--max-refused", type=float, default=0.05)
    asyncio.run(sweep(parser.parse_args()))


if __name__ == "__main__":
    main()
