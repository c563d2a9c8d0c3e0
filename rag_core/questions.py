"""Question sets: the JSON-lines format that evaluation, the reindex gate and the bot share.

A question set is JSON lines (see docs/evaluation.md):

    {"id": "hnsw-params", "question": "...", "expected_sources": ["https://site/docs/index.md"],
     "key_facts": ["efConstruction", ["16", "sixteen"]], "lang": "en"}

`expected_sources` are page URLs (a hit matches by its URL without the `#anchor`); an empty list
means "the docs cannot answer this". Lines exported from Discord feedback
(`FeedbackStore.export_jsonl` in bot/feedback/) load too; see `parse_question` for how
unreviewed ones are told apart from unanswerable ones.

A follow-up set holds conversations instead (see `load_follow_ups`):

    {"id": "fu-alias-delete", "turns": [{"question": "how do I create an alias?"},
     {"question": "and how do i delete it?"}], "standalone": "How do I drop an alias?",
     "expected_sources": ["https://site/docs/aliases.md"]}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RagError

# Keys that mark a line exported from Discord feedback (bot/feedback/store.py `export_jsonl`).
_FEEDBACK_KEYS = ("flags", "message_link")


class QuestionSetError(RagError):
    """A question or results file that cannot be read; the message names the line."""


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


def first_rank(pages: Sequence[str], expected: Iterable[str]) -> int | None:
    """1-based rank of the first page in `expected`; None when none of them was retrieved."""
    wanted = set(expected)
    return next((i for i, page in enumerate(pages, 1) if page in wanted), None)


@dataclass(frozen=True)
class FollowUp:
    """A conversation whose last question only makes sense with the turns before it."""

    id: str
    turns: tuple[str, ...]  # the questions as asked, oldest first
    standalone: str  # the last question written out in full
    expected_sources: tuple[str, ...]
    split: str = ""


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
