"""Coverage gaps: the questions the docs could not answer, grouped by meaning.

Questions are embedded with the knowledge base's own embedder and grouped greedily: each joins
the group whose centre (the normalised mean of its members) is closest, when that cosine reaches
the threshold, else starts a group of its own. Groups come back most asked first.
"""

from __future__ import annotations

import asyncio
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
    rows = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    units = rows / np.where(norms > 0, norms, 1.0)
    groups: list[list[int]] = []
    # Row g: the sum of group g's unit vectors (its centre's direction) and that sum's length;
    # all groups are compared in one product, thousands of questions take a second or two.
    sums = np.zeros_like(units)
    lengths = np.zeros(len(units), dtype=np.float32)
    for i, unit in enumerate(units):
        n = len(groups)
        best = -1
        if n:
            cos = (sums[:n] @ unit) / np.where(lengths[:n] > 0, lengths[:n], 1.0)
            g = int(np.argmax(cos))
            if cos[g] >= threshold:
                best = g
        if best < 0:
            best = n
            groups.append([])
        groups[best].append(i)
        sums[best] += unit
        lengths[best] = np.linalg.norm(sums[best])
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
    # A worker thread: a year of a busy server's questions must not stall the event loop.
    groups = await asyncio.to_thread(cluster, vectors, threshold)
    gaps = [Gap([questions[i] for i in members]) for members in groups]
    return sorted(gaps, key=lambda g: (-g.count, -g.last_asked))
