"""A run's results as a JSON document, read back, and compared with an earlier run."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..questions import QuestionSetError
from .calibration import Calibration
from .scoring import QuestionResult, cell, rank_text, summarize

RESULTS_VERSION = 1


def to_json(
    results: Sequence[QuestionResult],
    *,
    settings: Mapping[str, Any],
    questions_file: str = "",
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """The run as a JSON document: what `--compare` reads back."""
    doc: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "questions_file": questions_file,
        "settings": dict(settings),
        "summary": summarize(results),
        "results": [asdict(r) for r in results],
    }
    if calibration is not None:
        doc["calibration"] = asdict(calibration)
    return doc


def results_from_json(doc: Mapping[str, Any]) -> list[QuestionResult]:
    return [QuestionResult(**r) for r in doc.get("results", [])]


_COMPARED = [
    "recall@1",
    "recall@3",
    "recall@5",
    "mrr",
    "unanswerable_refused_rate",
    "answerable_refused_rate",
    "key_facts_rate",
    "cited_expected_rate",
    "citation_precision_checked",
]


_LOWER_IS_BETTER = {"answerable_refused_rate"}


def _changes(old: QuestionResult, new: QuestionResult) -> list[tuple[int, str]]:
    """(+1 better / -1 worse, what changed) for one question present in both runs."""
    out: list[tuple[int, str]] = []
    if new.answerable and old.rank != new.rank:
        before, after = old.rank or math.inf, new.rank or math.inf
        out.append(
            (1 if after < before else -1, f"rank {rank_text(old.rank)} -> {rank_text(new.rank)}")
        )
    if old.gate_ok != new.gate_ok:
        what = "refused" if new.refused else "answered"
        out.append((1 if new.gate_ok else -1, f"now {what} (cos {new.best_similarity:.3f})"))
    if old.facts is not None and new.facts is not None and sum(old.facts) != sum(new.facts):
        out.append(
            (
                1 if sum(new.facts) > sum(old.facts) else -1,
                f"key facts {sum(old.facts)}/{len(old.facts)} -> {sum(new.facts)}/{len(new.facts)}",
            )
        )
    if old.cited_expected is not None and new.cited_expected is not None:
        if old.cited_expected != new.cited_expected:
            state = "cites" if new.cited_expected else "no longer cites"
            out.append((1 if new.cited_expected else -1, f"{state} an expected page"))
    return out


def compare(old_doc: Mapping[str, Any], new_doc: Mapping[str, Any]) -> str:
    """What got better or worse between two runs: summary deltas, then per question."""
    lines = ["metric                        before   after   change"]
    old_s, new_s = old_doc["summary"]["all"], new_doc["summary"]["all"]
    for key in _COMPARED:
        a, b = old_s.get(key), new_s.get(key)
        if a is None and b is None:
            continue
        delta = "" if a is None or b is None else f"{b - a:+.3f}"
        if a is not None and b is not None and abs(b - a) > 1e-9:
            improved = (b < a) if key in _LOWER_IS_BETTER else (b > a)
            delta += "  better" if improved else "  worse"
        lines.append(f"{key:<28}{cell(a, 'f'):>8}{cell(b, 'f'):>8}   {delta}".rstrip())
    old_by_id = {r.id: r for r in results_from_json(old_doc)}
    new_by_id = {r.id: r for r in results_from_json(new_doc)}
    better: list[str] = []
    worse: list[str] = []
    for qid, new in new_by_id.items():
        old = old_by_id.get(qid)
        if old is None:
            continue
        for sign, what in _changes(old, new):
            (better if sign > 0 else worse).append(f"  {qid}: {what}")
    lines += ["", f"better ({len(better)}):", *(better or ["  -"])]
    lines += [f"worse ({len(worse)}):", *(worse or ["  -"])]
    added = [q for q in new_by_id if q not in old_by_id]
    removed = [q for q in old_by_id if q not in new_by_id]
    if added:
        lines.append(f"only in the new run: {', '.join(added)}")
    if removed:
        lines.append(f"only in the old run: {', '.join(removed)}")
    return "\n".join(lines)


def load_results(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QuestionSetError(f"cannot read results {path}: {exc}") from exc
    if not isinstance(doc, dict) or "summary" not in doc or "results" not in doc:
        raise QuestionSetError(f"{path} is not the JSON of an eval run")
    return doc
