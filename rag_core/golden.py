"""Golden questions and what replaying them reports: the reindex gate (quality/gate.py) fills a
GateReport before a new index version goes live; the indexer, the CLI and the bot read it."""

from __future__ import annotations

from dataclasses import dataclass, field

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
