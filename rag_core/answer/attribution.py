"""Attribution: prove each sentence of an answer against the passages it was given.

Models cite the wrong passage, cite nothing, or write sentences no passage supports. After
generation, each prose sentence is scored against every passage by meaning (cosine of the
embedder's vectors) and by words (the share of the sentence's content words found in the
passage). Then:

- a citation whose passage does not support its sentence is moved to the passage that does,
  or removed when none does;
- a sentence without a citation gains one when a passage clearly supports it;
- the sources are the passages that support something;
- an answer that is mostly unsupported is flagged `low_support`.

Code blocks, headings and very short sentences ("Sure!") are left as they are and not counted.
Scoring needs one embedder call for the sentences and one for the passages: bounded work,
done after the stream ends, so it never delays the text the user sees.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# A sentence is supported by a passage scoring at least SUPPORTED; a passage must score
# CLEAR to add a citation the model left out (and beat the cited one by MOVE_MARGIN to take
# its place). Chosen on hand-written answers over the Milvus docs with all-MiniLM-L6-v2:
# supported pairs score 0.5-0.9, unrelated ones 0.1-0.35.
SUPPORTED = 0.42
CLEAR = 0.55
MOVE_MARGIN = 0.08
# Below this share of checked text supported, the answer is flagged for moderators.
LOW_SUPPORT_SHARE = 0.5
MIN_WORDS = 4  # shorter sentences are not judged

_CITATION = re.compile(r"\s?\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`*_(\[\"'])")
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*[A-Za-z0-9_]|[A-Za-z0-9]")
_STOPWORDS = frozenset(
    """a about above after again all also an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having here how if in into is it its itself just more most no nor
    not now of off on once only or other our out over own same should so some such than that
    the their them then there these they this those through to too under until up very was
    we were what when where which while who whom why will with would you your yes use used
    using set sets can't don't it's i me my""".split()
)

Embed = Callable[[list[str]], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class SentenceCheck:
    """One sentence of the answer and what the check found."""

    text: str  # without citation markers
    cited: tuple[int, ...]  # as the model wrote them
    supported: tuple[int, ...]  # what the final text cites
    best: int | None  # the best-scoring passage
    score: float  # that passage's support
    checked: bool  # False: code, a heading or too short to judge

    @property
    def is_supported(self) -> bool:
        return self.checked and self.score >= SUPPORTED


@dataclass
class Attribution:
    text: str  # the answer with its citations corrected
    sentences: list[SentenceCheck]
    used: list[int]  # passages that support something, in order of first citation
    supported_share: float  # of the checked text, by characters (1.0 when nothing was checked)
    low_support: bool
    moved: int = 0
    added: int = 0
    removed: int = 0
    seconds: float = 0.0
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)


def content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOPWORDS and len(w) > 1}


def lexical_support(sentence: str, passage_words: set[str]) -> float:
    """The share of the sentence's content words that the passage contains."""
    words = content_words(sentence)
    if not words:
        return 0.0
    return len(words & passage_words) / len(words)


@dataclass
class _Piece:
    """A run of the answer: a sentence to check (with its citations) or text kept as is."""

    text: str
    check: bool
    cited: tuple[int, ...] = ()
    trailing: str = ""  # whitespace/punctuation after the citations


def split_answer(text: str, n_passages: int) -> list[_Piece]:
    """The answer as pieces whose texts, joined, rebuild it (citations aside)."""
    pieces: list[_Piece] = []
    in_code = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_code = not in_code
            pieces.append(_Piece(line, False))
            continue
        stripped = line.strip()
        if in_code or not stripped or stripped.startswith("#") or stripped.startswith("|"):
            pieces.append(_Piece(line, False))
            continue
        # A list marker or indentation stays outside the sentence.
        lead = re.match(r"\s*(?:[-*+]\s+|\d+[.)]\s+)?", line)
        start = lead.end() if lead else 0
        if start:
            pieces.append(_Piece(line[:start], False))
        body, newline = line[start:].rstrip("\n"), "\n" if line.endswith("\n") else ""
        parts = _SENTENCE_END.split(body)
        for i, part in enumerate(parts):
            sep = " " if i < len(parts) - 1 else newline
            pieces.append(_sentence_piece(part, sep, n_passages))
    return pieces


def cited_numbers(text: str, n_sources: int) -> list[int]:
    """The source numbers a text cites ([1], [2][3], [1, 4]) in first-use order, in range only."""
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        for part in match.group(1).split(","):
            n = int(part)
            if 1 <= n <= n_sources and n not in seen:
                seen.append(n)
    return seen


def _sentence_piece(raw: str, sep: str, n_passages: int) -> _Piece:
    cited = cited_numbers(raw, n_passages)
    plain = _CITATION.sub("", raw)
    # Keep the sentence's final punctuation after the citations we put back: "text [1]."
    core = plain.rstrip()
    end = ""
    while core and core[-1] in ".!?:;":
        end = core[-1] + end
        core = core[:-1]
    core = core.rstrip()
    check = len(content_words(core)) >= MIN_WORDS - 1 and len(core.split()) >= MIN_WORDS
    return _Piece(core, check, tuple(cited), end + sep)


def _cite(numbers: Sequence[int]) -> str:
    return "".join(f"[{n}]" for n in numbers)


async def attribute(answer: str, passages: Sequence[str], embed: Embed) -> Attribution:
    """Check `answer` against `passages` (numbered from 1, as in the prompt) and fix citations.

    `embed` turns texts into unit vectors (the retriever's embedder: same space as retrieval).
    """
    started = time.perf_counter()
    pieces = split_answer(answer, len(passages))
    checked = [p for p in pieces if p.check]
    scores = np.zeros((len(checked), len(passages)), dtype=np.float32)
    if checked and passages:
        vectors = await embed([p.text for p in checked] + list(passages))
        sent, pas = vectors[: len(checked)], vectors[len(checked) :]
        cosine = np.clip(sent @ pas.T, 0.0, 1.0)
        words = [content_words(p) for p in passages]
        lexical = np.array(
            [[lexical_support(p.text, w) for w in words] for p in checked], dtype=np.float32
        )
        scores = 0.5 * cosine + 0.5 * lexical

    out: list[str] = []
    checks: list[SentenceCheck] = []
    used: list[int] = []
    moved = added = removed = 0
    total = supported_chars = 0
    row = 0
    for piece in pieces:
        if not piece.check:
            text = piece.text if not piece.cited else f"{piece.text} {_cite(piece.cited)}"
            out.append(text + piece.trailing)
            checks.append(SentenceCheck(piece.text, piece.cited, piece.cited, None, 0.0, False))
            used.extend(n for n in piece.cited if n not in used)
            continue
        row_scores = scores[row] if passages else np.zeros(0)
        row += 1
        best = int(np.argmax(row_scores)) + 1 if len(row_scores) else None
        best_score = float(row_scores[best - 1]) if best else 0.0
        keep = tuple(n for n in piece.cited if row_scores[n - 1] >= SUPPORTED)
        final: tuple[int, ...] = keep
        for n in piece.cited:
            if n in keep:
                continue
            if best is not None and best_score >= SUPPORTED and best not in final:
                if best_score >= row_scores[n - 1] + MOVE_MARGIN:
                    final = (*final, best)
                    moved += 1
                    continue
            removed += 1
        if not piece.cited and best is not None and best_score >= CLEAR:
            final = (best,)
            added += 1
        total += len(piece.text)
        if best_score >= SUPPORTED:
            supported_chars += len(piece.text)
        used.extend(n for n in final if n not in used)
        out.append(piece.text + (" " + _cite(final) if final else "") + piece.trailing)
        checks.append(SentenceCheck(piece.text, piece.cited, final, best, best_score, True))
    share = supported_chars / total if total else 1.0
    return Attribution(
        text="".join(out),
        sentences=checks,
        used=used,
        supported_share=share,
        low_support=share < LOW_SUPPORT_SHARE,
        moved=moved,
        added=added,
        removed=removed,
        seconds=time.perf_counter() - started,
        scores=scores,
    )
