"""The gate's threshold chosen from a run's results, and the run as another threshold gives it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise

from .scoring import QuestionResult


@dataclass(frozen=True)
class Calibration:
    threshold: float
    unanswerable_answered: int  # unanswerable questions that would get an answer
    answerable_refused: int
    margin: float  # distance from the threshold to the nearest score on either side


def threshold_pairs(results: Iterable[QuestionResult]) -> list[tuple[float, bool]]:
    """(best similarity, answerable) of the questions the threshold decides: those refused
    for naming only unknown terms are refused at any threshold."""
    return [(r.best_similarity, r.answerable) for r in results if not r.unknown_terms]


def calibrate_threshold(
    pairs: Iterable[tuple[float, bool]], *, max_refused_rate: float = 0.05
) -> Calibration:
    """The gate threshold for (best similarity, answerable) pairs.

    Refuse at most `max_refused_rate` of the answerable questions; within that, answer as few
    unanswerable ones as possible, then refuse as few answerable ones as possible, then keep the
    widest margin. The threshold sits midway between the two scores around it.
    """
    items = sorted(pairs)
    n_answerable = sum(1 for _, ok in items if ok)
    if not n_answerable or n_answerable == len(items):
        raise ValueError("calibration needs answerable and unanswerable questions")
    allowed = math.floor(max_refused_rate * n_answerable + 1e-9)
    scores = sorted({s for s, _ in items})
    # Candidates: below everything, between each pair of neighbours, above everything.
    cuts = [(scores[0] - 0.05, scores[0])]
    cuts += list(pairwise(scores))
    cuts += [(scores[-1], scores[-1] + 0.05)]
    best: tuple[tuple[int, int, float], Calibration] | None = None
    for low, high in cuts:
        threshold = (low + high) / 2
        rounded = round(threshold, 3)
        if low < rounded <= high:  # a tidy number when it stays inside the gap
            threshold = rounded
        refused = sum(1 for s, ok in items if ok and s < threshold)
        answered = sum(1 for s, ok in items if not ok and s >= threshold)
        if refused > allowed:
            continue
        margin = min(threshold - low, high - threshold)
        key = (answered, refused, -margin)
        if best is None or key < best[0]:
            best = (key, Calibration(threshold, answered, refused, margin))
    assert best is not None  # the lowest cut refuses nothing
    return best[1]


def regate(results: Sequence[QuestionResult], threshold: float) -> list[QuestionResult]:
    """The results as a run with another threshold would give them (retrieval unchanged).

    Answer checks are dropped: a different gate would have generated different answers.
    """
    out = []
    for r in results:
        out.append(
            QuestionResult(
                **{
                    **asdict(r),
                    "refused": r.best_similarity < threshold or bool(r.unknown_terms),
                    "answer": None,
                    "facts": None,
                    "cited": None,
                }
            )
        )
    return out
