"""The reindex gate: replay golden questions against the new version and the live one.

The golden set is every verified answer's question (its expected source: the verified answer
itself) plus, when REINDEX_GATE_QUESTIONS names one, a question file in the eval format
(answerable questions only). A new version is held back when its recall@5 falls more than
REINDEX_GATE_MAX_DROP below the live one's, or when a verified answer the live version finds is
no longer found: the report names the questions that lost their sources and the pages the run
changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..config import Settings
from ..golden import DEPTH, GateReport, GoldenQuestion, LostQuestion
from ..questions import first_rank, load_questions, page_url
from ..search.retrieval import Retriever, fold_near_duplicates
from ..search.verified import VerifiedAnswer, VerifiedIndex

log = logging.getLogger(__name__)


def golden_questions(
    settings: Settings, verified: Sequence[VerifiedAnswer]
) -> list[GoldenQuestion]:
    """The verified answers' questions, then the answerable ones of REINDEX_GATE_QUESTIONS."""
    golden = [GoldenQuestion(f"verified-{v.id}", v.question, (v.url,), True) for v in verified]
    path = settings.reindex_gate_questions
    if path and _has_lines(Path(path)):  # an empty export (no golden answers yet) gates nothing
        questions = load_questions(path, base_url=settings.docs_base_url).questions
        golden += [
            GoldenQuestion(q.id, q.question, q.expected_sources) for q in questions if q.answerable
        ]
    return golden


def _has_lines(path: Path) -> bool:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return True  # load_questions reports it
    return any(line.strip() and not line.lstrip().startswith("#") for line in lines)


async def ranks(
    retriever: Retriever, questions: Sequence[GoldenQuestion], collection: str
) -> list[int | None]:
    """Rank (1..DEPTH) of each question's first expected page in `collection`, or None."""

    async def one(q: GoldenQuestion) -> int | None:
        retrieval = await retriever.retrieve(q.question, top_k=DEPTH, collection=collection)
        pages = [page_url(h.url) for h in fold_near_duplicates(retrieval.hits)][:DEPTH]
        return first_rank(pages, q.expected)

    # Together: the embedder and the store batch questions that arrive at once.
    return list(await asyncio.gather(*(one(q) for q in questions)))


async def check(
    retriever: Retriever,
    questions: Sequence[GoldenQuestion],
    *,
    live: str,
    new: str,
    max_drop: float,
    changed_pages: Iterable[str] = (),
) -> GateReport:
    """Compare recall@5 of `questions` on version `new` with the `live` one."""
    live_ranks = await ranks(retriever, questions, live)
    new_ranks = await ranks(retriever, questions, new)
    n = len(questions)
    report = GateReport(
        questions=n,
        live_recall=sum(r is not None for r in live_ranks) / n if n else 1.0,
        new_recall=sum(r is not None for r in new_ranks) / n if n else 1.0,
        max_drop=max_drop,
        changed_pages=sorted(changed_pages),
    )
    for q, before, after in zip(questions, live_ranks, new_ranks, strict=True):
        if before is not None and after is None:
            report.lost.append(LostQuestion(q.id, q.question, q.expected, before, q.verified))
    return report


class ReindexGate:
    """The check the indexer runs before publishing (wired in by runtime.open_rag): the golden
    set (verified answers, REINDEX_GATE_QUESTIONS, the caller's `extra`) on both versions."""

    def __init__(self, settings: Settings, retriever: Retriever, verified: VerifiedIndex) -> None:
        self.settings = settings
        self.retriever = retriever
        self.verified = verified

    async def __call__(
        self,
        live: str,
        new: str,
        extra: Sequence[GoldenQuestion] = (),
        changed_pages: Iterable[str] = (),
    ) -> GateReport | None:
        """The report of replaying the golden set on `live` and `new`; None when there is none."""
        verified = await self.verified.listed(live)
        questions = golden_questions(self.settings, verified) + list(extra)
        if not questions:
            return None
        report = await check(
            self.retriever,
            questions,
            live=live,
            new=new,
            max_drop=self.settings.reindex_gate_max_drop,
            changed_pages=changed_pages,
        )
        log.info("%s", report.summary())
        return report
