"""Scoring: what one question got (QuestionResult), and a run's scores as numbers and tables.

Retrieval recall@1/@3/@5 and MRR over answerable questions (rank = first hit whose page is
expected, after folding near-duplicates as the answerer does), the gate's confusion, and with an
LLM the answer checks (key facts present, citations pointing at expected pages).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..answer.attribution import cited_numbers
from ..questions import page_url

KS = (1, 3, 5)


@dataclass
class QuestionResult:
    """What one question got; JSON-serialisable (see `to_json`)."""

    id: str
    question: str
    lang: str
    expected: list[str]
    pages: list[str]  # page URL of each hit, best first (after folding near-duplicates)
    rank: int | None  # 1-based rank of the first hit on an expected page; None if none
    best_similarity: float  # what the gate compares with the threshold
    refused: bool
    embed_ms: float = 0.0
    search_ms: float = 0.0
    answer: str | None = None  # only when answers were generated
    facts: list[bool] | None = None  # per key fact: stated in the answer?
    cited: list[str] | None = None  # pages of the [n] the answer cited
    # Citation precision (see `citation_counts`): [citations, precise ones], for the model's
    # own text and after attribution; and whether attribution flagged the answer low-support.
    citations_raw: list[int] | None = None
    citations_checked: list[int] | None = None
    low_support: bool | None = None
    # Refused whatever the threshold: the docs name none of these (rag_core/search/named_terms.py).
    unknown_terms: list[str] = field(default_factory=list)

    @property
    def answerable(self) -> bool:
        return bool(self.expected)

    @property
    def gate_ok(self) -> bool:
        """Unanswerable refused, answerable not refused."""
        return self.refused != self.answerable

    @property
    def cited_expected(self) -> bool | None:
        if self.cited is None or not self.answerable or self.refused:
            return None
        return any(page in self.expected for page in self.cited)


def facts_found(answer: str, facts: Sequence[Sequence[str]]) -> list[bool]:
    """Per fact: does the answer state it (any alternative, case and spacing ignored)?"""
    norm = " ".join(answer.casefold().split())
    return [any(" ".join(a.casefold().split()) in norm for a in alts) for alts in facts]


def cited_pages(text: str, source_urls: Sequence[str]) -> list[str]:
    """The pages of the numbered sources an answer cites, in first-use order, deduplicated."""
    pages = [page_url(source_urls[n - 1]) for n in cited_numbers(text, len(source_urls))]
    return list(dict.fromkeys(pages))


# The judge of a citation: the cited passage holds at least this share of the sentence's
# content words. Lexical only, so it is not the attribution's own (cosine + words) score.
PRECISE_WORD_SHARE = 0.5


def citation_counts(text: str, passages: Sequence[str]) -> list[int]:
    """[citations, precise citations] in `text`: one per (sentence, cited passage) pair; precise
    when that passage contains at least PRECISE_WORD_SHARE of the sentence's content words."""
    from ..answer.attribution import content_words, lexical_support, split_answer

    words = [content_words(p) for p in passages]
    total = precise = 0
    for piece in split_answer(text, len(passages)):
        for n in piece.cited:
            total += 1
            precise += lexical_support(piece.text, words[n - 1]) >= PRECISE_WORD_SHARE
    return [total, precise]


def summarize(results: Sequence[QuestionResult]) -> dict[str, Any]:
    """Scores for all questions, for English ones and per language."""
    by_lang: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in results:
        by_lang[r.lang].append(r)
    summary: dict[str, Any] = {"all": score_group(results)}
    summary["by_lang"] = {lang: score_group(rs) for lang, rs in sorted(by_lang.items())}
    return summary


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


def score_group(results: Sequence[QuestionResult]) -> dict[str, Any]:
    answerable = [r for r in results if r.answerable]
    unanswerable = [r for r in results if not r.answerable]
    scores: dict[str, Any] = {
        "questions": len(results),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
    }
    for k in KS:
        hits = sum(1 for r in answerable if r.rank is not None and r.rank <= k)
        scores[f"recall@{k}"] = _ratio(hits, len(answerable))
    scores["mrr"] = _ratio(sum(1 / r.rank for r in answerable if r.rank), len(answerable))
    refused_ok = sum(1 for r in unanswerable if r.refused)
    refused_bad = sum(1 for r in answerable if r.refused)
    scores["unanswerable_refused"] = refused_ok
    scores["unanswerable_refused_rate"] = _ratio(refused_ok, len(unanswerable))
    scores["answerable_refused"] = refused_bad
    scores["answerable_refused_rate"] = _ratio(refused_bad, len(answerable))
    answered = [r for r in answerable if r.facts is not None and not r.refused]
    if answered:
        with_facts = [r for r in answered if r.facts]
        facts_total = sum(len(r.facts or []) for r in with_facts)
        facts_hit = sum(sum(r.facts or []) for r in with_facts)
        scores["answered"] = len(answered)
        scores["key_facts_rate"] = _ratio(facts_hit, facts_total)
        scores["all_facts_rate"] = _ratio(
            sum(1 for r in with_facts if all(r.facts or [])), len(with_facts)
        )
        scores["cited_expected_rate"] = _ratio(
            sum(1 for r in answered if r.cited_expected), len(answered)
        )
        for name, counts in (
            ("raw", [r.citations_raw for r in answered]),
            ("checked", [r.citations_checked for r in answered]),
        ):
            pairs = [c for c in counts if c is not None]
            scores[f"citations_{name}"] = sum(c[0] for c in pairs)
            scores[f"citation_precision_{name}"] = _ratio(
                sum(c[1] for c in pairs), sum(c[0] for c in pairs)
            )
        scores["low_support_rate"] = _ratio(
            sum(1 for r in answered if r.low_support), len(answered)
        )
    if results:
        scores["embed_ms_mean"] = sum(r.embed_ms for r in results) / len(results)
        scores["search_ms_mean"] = sum(r.search_ms for r in results) / len(results)
    return scores


_TABLE_COLUMNS = [
    ("n", "questions", "d"),
    ("R@1", "recall@1", "f"),
    ("R@3", "recall@3", "f"),
    ("R@5", "recall@5", "f"),
    ("MRR", "mrr", "f"),
    ("unans refused", "unanswerable_refused_rate", "f"),
    ("ans refused", "answerable_refused_rate", "f"),
    ("facts", "key_facts_rate", "f"),
    ("cites ok", "cited_expected_rate", "f"),
    ("cite prec raw", "citation_precision_raw", "f"),
    ("cite prec", "citation_precision_checked", "f"),
    ("low support", "low_support_rate", "f"),
]


def cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    return str(value) if kind == "d" else f"{value:.3f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """A plain-text table: one row for all questions, one per language."""
    rows: list[tuple[str, Mapping[str, Any]]] = [("all", summary["all"])]
    rows += [(lang, s) for lang, s in summary.get("by_lang", {}).items()]
    return format_rows(rows)


def format_rows(rows: Sequence[tuple[str, Mapping[str, Any]]], label: str = "set") -> str:
    """A plain-text table of scores, one row per (name, scores); empty columns left out."""
    columns = [c for c in _TABLE_COLUMNS if any(s.get(c[1]) is not None for _, s in rows)]
    header = [label, *(name for name, _, _ in columns)]
    body = [[label, *(cell(s.get(key), kind) for _, key, kind in columns)] for label, s in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in body]
    head = "  ".join(cell.rjust(w) for cell, w in zip(header, widths, strict=True))
    return "\n".join([head, "-" * len(head), *lines])


def language_note(langs: Iterable[str], model: str, multilingual: bool) -> str | None:
    """A line under the table when the set asks in languages the embedding model was not
    trained for: their rows measure the model outside its languages."""
    other = sorted({lang for lang in langs if lang != "en"})
    if not other or multilingual:
        return None
    return (
        f"note: {model} is an English embedding model; the {', '.join(other)} rows measure it "
        "outside its language (a multilingual model: EMBEDDING_MODEL=BAAI/bge-m3)"
    )


def failures(results: Sequence[QuestionResult], k: int = 5) -> list[str]:
    """One line per question that missed: not retrieved within k, or the gate got it wrong."""
    lines = []
    for r in results:
        problems = []
        if r.answerable and (r.rank is None or r.rank > k):
            problems.append(f"expected page {rank_text(r.rank)}")
        if not r.gate_ok:
            what = "refused" if r.refused else "answered"
            problems.append(f"{what} (cos {r.best_similarity:.3f})")
        if problems:
            lines.append(f"{r.id} [{r.lang}]: {'; '.join(problems)}")
    return lines


def rank_text(rank: int | None) -> str:
    return f"#{rank}" if rank else "not found"
