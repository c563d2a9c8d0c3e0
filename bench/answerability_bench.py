"""The answerability check on a question set: what it refuses, what it costs.

    LLM_MODEL=<folder> ... .venv/bin/python bench/answerability_bench.py eval/community.jsonl \\
        --split test --data-dir D [--every 5]

For each question: retrieval and the cosine gate as the answerer runs them, then (when the gate
lets it through) the check (ANSWERABILITY_CHECK's prompt, greedy, 4 tokens). Reports, for the
unanswerable and the answerable questions, how many the gate refused, how many the check
refused after it, the verdicts, and the seconds the check added per question. `--every N` keeps
every unanswerable question and every Nth answerable one (a CPU-sized subset).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import machine, pct  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("questions")
    ap.add_argument("--split", choices=["tune", "test"])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--base-url", default="https://milvus.io/docs/")
    ap.add_argument("--every", type=int, default=1, help="every Nth answerable question")
    args = ap.parse_args()

    from rag_core.config import load_settings
    from rag_core.questions import load_questions
    from rag_core.runtime import open_rag

    os.environ["DATA_DIR"] = args.data_dir
    settings = load_settings(answerability_check=True)
    qs = [
        q
        for q in load_questions(args.questions, base_url=args.base_url).questions
        if not args.split or q.split == args.split
    ]
    answerable = [q for q in qs if q.answerable]
    chosen = [q for q in qs if not q.answerable] + answerable[:: args.every]
    rows: dict[str, Counter[str]] = {"unanswerable": Counter(), "answerable": Counter()}
    seconds: list[float] = []
    started = time.perf_counter()
    async with open_rag(settings, with_llm=True) as rag:
        answerer = rag.require_answerer()
        for i, q in enumerate(chosen, 1):
            prepared = await answerer.prepare(q.question)
            row = rows["answerable" if q.answerable else "unanswerable"]
            row["n"] += 1
            if prepared.answerable is None:
                row["gate refused"] += 1
            else:
                seconds.append(prepared.timings.check_s)
                row[f"check {prepared.answerable}"] += 1
            print(
                f"{i}/{len(chosen)} {q.id}: {prepared.answerable or 'gate'} "
                f"{prepared.timings.check_s:.1f}s",
                file=sys.stderr,
            )
    total = time.perf_counter() - started
    print(f"Machine: {machine()}")
    print(
        f"{args.questions}{' split ' + args.split if args.split else ''}: {len(chosen)} questions "
        f"(all {len(qs) - len(answerable)} unanswerable, every {args.every}. of "
        f"{len(answerable)} answerable); model {Path(settings.llm_model).name}, top_k "
        f"{settings.top_k}, threshold {settings.relevance_threshold:g}; {total:.0f} s in all"
    )
    print("| questions | n | gate refused | check: no (refused) | check: yes | check: unclear |")
    print("|---|---|---|---|---|---|")
    for name, c in rows.items():
        print(
            f"| {name} | {c['n']} | {c['gate refused']} | {c['check no']} | {c['check yes']} "
            f"| {c['check unclear']} |"
        )
    if seconds:
        print(
            f"check: {sum(seconds) / len(seconds):.2f} s per question on average "
            f"(p50 {pct(seconds, 0.5):.2f}, p90 {pct(seconds, 0.9):.2f}), {len(seconds)} checks"
        )


if __name__ == "__main__":
    asyncio.run(main())
