"""Evaluation: run a question set through the real pipeline and score it.

A question set is JSON lines (see docs/evaluation.md):

    {"id": "hnsw-params", "question": "...", "expected_sources": ["https://site/docs/index.md"],
     "key_facts": ["efConstruction", ["16", "sixteen"]], "lang": "en"}

`expected_sources` are page URLs (a hit matches by its URL without the `#anchor`); an empty list
means "the docs cannot answer this": the gate must refuse it. Lines exported from Discord feedback
(`bot.feedback.FeedbackStore.export_jsonl`) load too; see `load_questions` for how unreviewed
ones are told apart from unanswerable ones.

Scores: retrieval recall@1/@3/@5 and MRR over answerable questions (rank = first hit whose page
is expected, after folding near-duplicates as the answerer does), the gate's confusion, and with
an LLM the answer checks (key facts present, citations pointing at expected pages).

A follow-up set holds conversations instead (see `load_follow_ups`):

    {"id": "fu-alias-delete", "turns": [{"question": "how do I create an alias?"},
     {"question": "and how do i delete it?"}], "standalone": "How do I drop an alias?",
     "expected_sources": ["https://site/docs/aliases.md"]}

and scores retrieval of the last turn as typed, rewritten by the rules, rewritten by the answer
model (optional), and written out in full (`standalone`), side by side.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..answer.answering import fold_near_duplicates, load_prompt
from ..answer.attribution import cited_numbers
from ..answer.conversation import Rewrite, Rewriter, Turn, rewrite_by_rules
from ..errors import RagError

if TYPE_CHECKING:
    from ..runtime import Rag
    from ..search.retrieval import Retrieval

KS = (1, 3, 5)
RESULTS_VERSION = 1
# Keys that mark a line exported from Discord feedback (bot/feedback.py `export_jsonl`).
_FEEDBACK_KEYS = ("flags", "message_link")


class QuestionSetError(RagError):
    """A question or results file that cannot be read; the message names the line."""


# --- the question set -----------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    expected_sources: tuple[str, ...]  # page URLs; empty = the docs cannot answer it
    key_facts: tuple[tuple[str, ...], ...] = ()  # each fact: alternatives, any one counts
    lang: str = "en"
    split: str = ""  # "tune" or "test": tune settings on one half, report the other

    @property
    def answerable(self) -> bool:
        return bool(self.expected_sources)


@dataclass
class QuestionSet:
    questions: list[Question]
    skipped: list[str] = field(default_factory=list)  # ids of unreviewed feedback lines


def page_url(url: str) -> str:
    """A hit's or expected source's page: the URL without its `#anchor`."""
    return url.split("#", 1)[0].strip()


def _resolve(source: str, base_url: str) -> str:
    """Full page URLs pass through; a bare front-matter id is joined to the base URL."""
    source = page_url(source)
    if base_url and not re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I):
        return base_url.rstrip("/") + "/" + source.lstrip("/")
    return source


def _facts(value: Any, where: str) -> tuple[tuple[str, ...], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise QuestionSetError(f"{where}: key_facts must be a list")
    facts: list[tuple[str, ...]] = []
    for fact in value:
        alternatives = [fact] if isinstance(fact, str) else fact
        if not (
            isinstance(alternatives, list)
            and alternatives
            and all(isinstance(a, str) and a.strip() for a in alternatives)
        ):
            raise QuestionSetError(
                f"{where}: each key fact is a string or a list of alternative strings"
            )
        facts.append(tuple(alternatives))
    return tuple(facts)


def parse_question(
    record: Mapping[str, Any], *, where: str = "question", base_url: str = ""
) -> Question | None:
    """One JSON line as a Question; None for a flagged answer nobody has reviewed yet.

    - `expected_sources: [...]` (non-empty): answerable, from those pages.
    - `expected_sources: []`: the docs cannot answer it (the gate must refuse), except in a
      feedback export, where `[]` is the placeholder a reviewer has not filled: such a line is
      skipped unless it also says `"unanswerable": true`.
    - no `expected_sources` key: an error (`"unanswerable": true` alone is accepted).
    The export's `sources` (what the bot cited in its flagged answer) is never read as expected.
    """
    text = record.get("question")
    if not isinstance(text, str) or not text.strip():
        raise QuestionSetError(f"{where}: needs a non-empty 'question'")
    qid = str(record.get("id") if record.get("id") is not None else where)
    if "flags" in record and record.get("id") is not None:
        qid = f"feedback-{record['id']}"
    expected = record.get("expected_sources")
    unanswerable = record.get("unanswerable") is True
    if expected is None:
        if not unanswerable:
            raise QuestionSetError(
                f"{where}: needs 'expected_sources' (a list of page URLs; [] = the docs "
                "cannot answer it)"
            )
        expected = []
    if not isinstance(expected, list) or not all(isinstance(s, str) for s in expected):
        raise QuestionSetError(f"{where}: 'expected_sources' must be a list of URLs")
    if unanswerable and expected:
        raise QuestionSetError(f"{where}: 'unanswerable' with expected sources")
    from_feedback = any(key in record for key in _FEEDBACK_KEYS)
    if from_feedback and not expected and not unanswerable:
        return None
    lang = record.get("lang") or "en"
    return Question(
        id=qid,
        question=text.strip(),
        expected_sources=tuple(dict.fromkeys(_resolve(s, base_url) for s in expected if s)),
        key_facts=_facts(record.get("key_facts"), where),
        lang=str(lang),
        split=str(record.get("split") or ""),
    )


def _json_lines(path: str | Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "path:line", object) per line; blank lines and `#` comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise QuestionSetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionSetError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise QuestionSetError(f"{where}: each line must be a JSON object")
        yield n, where, record


def load_questions(path: str | Path, *, base_url: str = "") -> QuestionSet:
    """Read a JSON-lines question set; blank lines and `#` comments are ignored."""
    questions: list[Question] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for n, where, record in _json_lines(path):
        if record.get("id") is None:
            record = {**record, "id": f"line-{n}"}
        question = parse_question(record, where=where, base_url=base_url)
        if question is None:
            skipped.append(f"feedback-{record['id']}")
            continue
        if question.id in seen:
            raise QuestionSetError(f"{where}: duplicate id {question.id!r}")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise QuestionSetError(f"{path}: no questions to run")
    return QuestionSet(questions, skipped)


# --- scoring one question -------------------------------------------------------------------


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


def first_rank(pages: Sequence[str], expected: Iterable[str]) -> int | None:
    """1-based rank of the first page in `expected`; None when none of them was retrieved."""
    wanted = set(expected)
    return next((i for i, page in enumerate(pages, 1) if page in wanted), None)


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


def gate(retrieval: Retrieval, top_k: int, threshold: float) -> tuple[float, bool]:
    """The answerer's gate on the first `top_k` hits: (best cosine, refused)."""
    hits = fold_near_duplicates(retrieval.hits[:top_k])
    best = max((h.similarity for h in hits), default=0.0)
    return best, best < threshold or bool(retrieval.unknown_terms)


# --- summary --------------------------------------------------------------------------------


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


def _cell(value: Any, kind: str) -> str:
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
    body = [[label, *(_cell(s.get(key), kind) for _, key, kind in columns)] for label, s in rows]
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


# --- the gate's threshold -------------------------------------------------------------------


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


# --- running a set --------------------------------------------------------------------------

ProgressCallback = Callable[[int, int], None]


async def run_eval(
    rag: Rag,
    questions: Sequence[Question],
    *,
    answers: bool = False,
    on_progress: ProgressCallback | None = None,
) -> list[QuestionResult]:
    """Each question through the retriever and the gate (`rag.settings`: top_k, search_mode,
    relevance_threshold); with `answers`, also through the LLM (needs `open_rag(with_llm=True)`).
    """
    settings = rag.settings
    depth = max(settings.top_k, *KS)  # ranks are read up to @5 even when top_k is smaller
    answerer = rag.require_answerer() if answers else None
    results: list[QuestionResult] = []
    for i, q in enumerate(questions, 1):
        retrieval = await rag.retriever.retrieve(q.question, top_k=depth)
        pages = [page_url(h.url) for h in fold_near_duplicates(retrieval.hits)]
        best, refused = gate(retrieval, settings.top_k, settings.relevance_threshold)
        result = QuestionResult(
            id=q.id,
            question=q.question,
            lang=q.lang,
            expected=list(q.expected_sources),
            pages=pages,
            rank=first_rank(pages, q.expected_sources),
            best_similarity=round(best, 4),
            refused=refused,
            embed_ms=round(retrieval.embed_s * 1000, 2),
            search_ms=round(retrieval.search_s * 1000, 2),
            unknown_terms=list(retrieval.unknown_terms),
        )
        if answerer is not None:
            prepared = await answerer.prepare(q.question)
            stream = answerer.stream(prepared)
            async for _ in stream:
                pass
            assert stream.result is not None
            result.refused = prepared.refused  # the answerer's own decision
            result.answer = stream.result.text
            if not prepared.refused:
                answer = stream.result
                result.facts = facts_found(result.answer, q.key_facts)
                result.cited = cited_pages(result.answer, [s.url for s in prepared.sources])
                passages = [s.text for s in prepared.sources]
                result.citations_raw = citation_counts(answer.raw_text, passages)
                result.citations_checked = citation_counts(answer.text, passages)
                result.low_support = answer.low_support
        results.append(result)
        if on_progress is not None:
            on_progress(i, len(questions))
    return results


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


# --- comparing two runs ---------------------------------------------------------------------

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


def _rank_text(rank: int | None) -> str:
    return f"#{rank}" if rank else "not found"


def _changes(old: QuestionResult, new: QuestionResult) -> list[tuple[int, str]]:
    """(+1 better / -1 worse, what changed) for one question present in both runs."""
    out: list[tuple[int, str]] = []
    if new.answerable and old.rank != new.rank:
        before, after = old.rank or math.inf, new.rank or math.inf
        out.append(
            (1 if after < before else -1, f"rank {_rank_text(old.rank)} -> {_rank_text(new.rank)}")
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
        lines.append(f"{key:<28}{_cell(a, 'f'):>8}{_cell(b, 'f'):>8}   {delta}".rstrip())
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


def failures(results: Sequence[QuestionResult], k: int = 5) -> list[str]:
    """One line per question that missed: not retrieved within k, or the gate got it wrong."""
    lines = []
    for r in results:
        problems = []
        if r.answerable and (r.rank is None or r.rank > k):
            problems.append(f"expected page {_rank_text(r.rank)}")
        if not r.gate_ok:
            what = "refused" if r.refused else "answered"
            problems.append(f"{what} (cos {r.best_similarity:.3f})")
        if problems:
            lines.append(f"{r.id} [{r.lang}]: {'; '.join(problems)}")
    return lines


# --- follow-ups -------------------------------------------------------------------------------

FOLLOW_UP_WAYS = ("typed", "rules", "llm", "standalone")


@dataclass(frozen=True)
class FollowUp:
    """A conversation whose last question only makes sense with the turns before it."""

    id: str
    turns: tuple[str, ...]  # the questions as asked, oldest first
    standalone: str  # the last question written out in full
    expected_sources: tuple[str, ...]
    split: str = ""


@dataclass
class FollowUpRun:
    """Retrieval results per way of asking the last question, and the model's rewrites."""

    results: dict[str, list[QuestionResult]]
    rewrites: list[Rewrite] = field(default_factory=list)


def is_follow_up_set(path: str | Path) -> bool:
    """Whether the set's first question has `turns` (a follow-up set)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return False
            return isinstance(record, dict) and "turns" in record
    return False


def _turn_text(turn: Any) -> str | None:
    text = turn.get("question") if isinstance(turn, dict) else turn
    return text.strip() if isinstance(text, str) and text.strip() else None


def load_follow_ups(path: str | Path, *, base_url: str = "") -> list[FollowUp]:
    """Read a follow-up set: `turns` (two or more questions), `standalone`, `expected_sources`."""
    cases: list[FollowUp] = []
    seen: set[str] = set()
    for n, where, record in _json_lines(path):
        raw_turns = record.get("turns")
        turns = [_turn_text(t) for t in raw_turns] if isinstance(raw_turns, list) else []
        if len(turns) < 2 or not all(turns):
            raise QuestionSetError(f"{where}: 'turns' needs two or more questions")
        standalone = record.get("standalone")
        if not isinstance(standalone, str) or not standalone.strip():
            raise QuestionSetError(f"{where}: needs 'standalone' (the last question in full)")
        expected = record.get("expected_sources")
        if not isinstance(expected, list) or not expected:
            raise QuestionSetError(f"{where}: needs 'expected_sources' (page URLs)")
        if not all(isinstance(s, str) for s in expected):
            raise QuestionSetError(f"{where}: 'expected_sources' must be a list of URLs")
        case_id = str(record.get("id") or f"line-{n}")
        if case_id in seen:
            raise QuestionSetError(f"{where}: duplicate id {case_id!r}")
        seen.add(case_id)
        cases.append(
            FollowUp(
                id=case_id,
                turns=tuple(t for t in turns if t),
                standalone=standalone.strip(),
                expected_sources=tuple(dict.fromkeys(_resolve(s, base_url) for s in expected)),
                split=str(record.get("split") or ""),
            )
        )
    if not cases:
        raise QuestionSetError(f"{path}: no follow-ups to run")
    return cases


async def run_follow_up_eval(
    rag: Rag,
    cases: Sequence[FollowUp],
    *,
    model: bool = False,
    on_progress: ProgressCallback | None = None,
) -> FollowUpRun:
    """Retrieve for each case's last question as typed, rewritten by the rules, rewritten by
    the answer model (`model`, needs `open_rag(with_llm=True)`) and in full (`standalone`).

    Earlier turns are given without their answers, as a reader of the set sees them."""
    settings = rag.settings
    depth = max(settings.top_k, *KS)
    rewriter = None
    if model:
        llm_settings = settings.model_copy(update={"conversation_rewrite": "llm"})
        rewriter = Rewriter(
            llm_settings, rag.require_answerer().generator, load_prompt("rewrite.txt")
        )
    run = FollowUpRun({way: [] for way in FOLLOW_UP_WAYS if way != "llm" or model})
    for i, case in enumerate(cases, 1):
        history = [Turn(q, "") for q in case.turns[:-1]]
        last = case.turns[-1]
        queries = {"typed": last, "rules": rewrite_by_rules(last, history)}
        if rewriter is not None:
            rewrite = await rewriter.rewrite(last, history)
            run.rewrites.append(rewrite)
            queries["llm"] = rewrite.standalone
        queries["standalone"] = case.standalone
        for way, query in queries.items():
            retrieval = await rag.retriever.retrieve(query, top_k=depth)
            pages = [page_url(h.url) for h in fold_near_duplicates(retrieval.hits)]
            best, refused = gate(retrieval, settings.top_k, settings.relevance_threshold)
            run.results[way].append(
                QuestionResult(
                    id=case.id,
                    question=query,
                    lang="en",
                    expected=list(case.expected_sources),
                    pages=pages,
                    rank=first_rank(pages, case.expected_sources),
                    best_similarity=round(best, 4),
                    refused=refused,
                    embed_ms=round(retrieval.embed_s * 1000, 2),
                    search_ms=round(retrieval.search_s * 1000, 2),
                )
            )
        if on_progress is not None:
            on_progress(i, len(cases))
    return run


def format_follow_ups(run: FollowUpRun) -> str:
    """One row per way of asking the follow-up, and what the model's rewrites cost."""
    lines = [format_rows([(way, score_group(rs)) for way, rs in run.results.items()], "way")]
    if run.rewrites:
        by_model = [r for r in run.rewrites if r.method == "llm"]
        ms = sum(r.seconds for r in by_model) * 1000 / max(len(by_model), 1)
        prompt = sum(r.prompt_tokens for r in by_model) / max(len(by_model), 1)
        completion = sum(r.completion_tokens for r in by_model) / max(len(by_model), 1)
        lines.append(
            f"\nmodel rewrites used: {len(by_model)}/{len(run.rewrites)} (the rest: rules); "
            f"per rewrite {ms:.0f} ms, {prompt:.0f} prompt + {completion:.0f} completion tokens"
        )
    return "\n".join(lines)


def follow_ups_to_json(
    run: FollowUpRun, *, settings: Mapping[str, Any], questions_file: str = ""
) -> dict[str, Any]:
    return {
        "version": RESULTS_VERSION,
        "kind": "follow-ups",
        "questions_file": questions_file,
        "settings": dict(settings),
        "summary": {way: score_group(rs) for way, rs in run.results.items()},
        "results": {way: [asdict(r) for r in rs] for way, rs in run.results.items()},
        "rewrites": [asdict(r) for r in run.rewrites],
    }
