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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..answer.answering import fold_near_duplicates
from ..config import Settings
from ..search.retrieval import Retriever
from ..search.verified import VerifiedAnswer
from .evaluation import first_rank, load_questions, page_url

DEPTH = 5  # recall@5


@dataclass(frozen=True)
class GoldenQuestion:
    id: str
    question: str
    expected: tuple[str, ...]  # page URLs (a verified answer's: its Discord link)
    verified: bool = False


@dataclass(frozen=True)
class LostQuestion:
    """A golden question the live version answers from its sources and the new one does not."""

    id: str
    question: str
    expected: tuple[str, ...]
    live_rank: int
    verified: bool


@dataclass
class GateReport:
    questions: int
    live_recall: float
    new_recall: float
    max_drop: float
    lost: list[LostQuestion] = field(default_factory=list)
    changed_pages: list[str] = field(default_factory=list)  # added, updated or removed

    @property
    def passed(self) -> bool:
        verified_lost = any(q.verified for q in self.lost)
        return not verified_lost and self.live_recall - self.new_recall <= self.max_drop + 1e-9

    def summary(self) -> str:
        verdict = "passed" if self.passed else "held back"
        return (
            f"reindex gate {verdict}: recall@{DEPTH} {self.live_recall:.3f} live -> "
            f"{self.new_recall:.3f} new over {self.questions} golden questions "
            f"(max drop {self.max_drop:g}); {len(self.lost)} lost their sources"
        )

    def details(self, limit: int = 10) -> list[str]:
        """One line per lost question, then the changed pages (at most `limit` of each)."""
        lines = []
        for q in self.lost[:limit]:
            kind = "verified answer" if q.verified else "question"
            lines.append(
                f"lost {kind} {q.id}: {q.question!r} (was rank {q.live_rank}; "
                f"expected {', '.join(q.expected)})"
            )
        if len(self.lost) > limit:
            lines.append(f"... and {len(self.lost) - limit} more lost questions")
        for page in self.changed_pages[:limit]:
            lines.append(f"changed page: {page}")
        if len(self.changed_pages) > limit:
            lines.append(f"... and {len(self.changed_pages) - limit} more changed pages")
        return lines


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
