"""Coverage gaps: the questions the docs could not answer, grouped by meaning.

Questions are embedded with the knowledge base's own embedder and grouped greedily: each joins
the group whose centre (the normalised mean of its members) is closest, when that cosine reaches
the threshold, else starts a group of its own. Groups come back most asked first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AskedQuestion:
    """A question the bot refused ("not in the docs") or whose answer was flagged."""

    text: str
    asked_at: float  # unix seconds
    refused: bool
    flagged: bool


@dataclass
class Gap:
    """Questions that ask the same thing."""

    questions: list[AskedQuestion] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.questions)

    @property
    def last_asked(self) -> float:
        return max(q.asked_at for q in self.questions)

    @property
    def refused(self) -> int:
        return sum(q.refused for q in self.questions)

    @property
    def flagged(self) -> int:
        return sum(q.flagged for q in self.questions)

    def examples(self, limit: int = 3) -> list[str]:
        """Up to `limit` different wordings, most recent first."""
        seen: dict[str, str] = {}
        for q in sorted(self.questions, key=lambda q: q.asked_at, reverse=True):
            seen.setdefault(" ".join(q.text.casefold().split()), q.text)
            if len(seen) == limit:
                break
        return list(seen.values())


def cluster(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Greedy grouping of the rows of `vectors` by cosine to each group's centre; the groups
    as row indices, in order of their first member."""
    groups: list[list[int]] = []
    sums: list[np.ndarray] = []  # sum of each group's unit vectors: its centre's direction
    for i, vector in enumerate(np.asarray(vectors, dtype=np.float32)):
        norm = float(np.linalg.norm(vector))
        unit = vector / norm if norm > 0 else vector
        best, best_cos = -1, threshold
        for g, total in enumerate(sums):
            length = float(np.linalg.norm(total))
            cos = float(unit @ total) / length if length > 0 else 0.0
            if cos >= best_cos:
                best, best_cos = g, cos
        if best < 0:
            groups.append([i])
            sums.append(unit.copy())
        else:
            groups[best].append(i)
            sums[best] += unit
    return groups


async def find_gaps(
    questions: Sequence[AskedQuestion],
    embed: Callable[[Sequence[str]], Awaitable[np.ndarray]],
    *,
    threshold: float,
) -> list[Gap]:
    """Group `questions` (oldest first) by meaning; the groups, most asked first (then the most
    recently asked). `embed`: the embedder's `aembed_passages`."""
    if not questions:
        return []
    vectors = await embed([q.text for q in questions])
    gaps = [Gap([questions[i] for i in members]) for members in cluster(vectors, threshold)]
    return sorted(gaps, key=lambda g: (-g.count, -g.last_asked))
