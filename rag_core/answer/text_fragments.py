"""Links that open a page scrolled to the cited passage, and one source per page section.

`passage_url(url, text)` adds a text fragment (`#:~:text=...`, WICG Text Fragments) built from a
distinctive run of prose in the passage. Browsers that support it (Chrome, Edge, Safari,
Firefox 131+) scroll to and highlight the first match; others, and pages where the phrase is not
found, ignore the directive and open the page at its anchor as before, so a missed phrase never
breaks a link.

Browsers match rendered text within one block (a paragraph, a list item, a table cell), across
inline markup: the phrase is taken from one paragraph or list item, with Markdown syntax
(emphasis, backticks, links, HTML tags, escapes) removed, and never from code blocks, tables or
headings (a heading's text also appears in tables of contents).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

T = TypeVar("T")

DIRECTIVE = ":~:"
MIN_WORDS = 4
MAX_WORDS = 8
CJK_MIN_CHARS = 6
CJK_MAX_CHARS = 40

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]|$)")
_SETEXT_RULE = re.compile(r"^[ \t]*(?:=+|-+)[ \t]*$")
_RULE = re.compile(r"^[ \t]*(?:[-*_][ \t]*){3,}$")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+")
_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+")

_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_TAG = re.compile(r"</?[A-Za-z][^>]*>|<!--.*?-->")
_BACKTICKS = re.compile(r"`+")
_STRONG_EM = re.compile(r"(?<![\w*])\*{1,3}(?=\S)(.+?)(?<=\S)\*{1,3}(?![\w*])")
_UNDERSCORE_EM = re.compile(r"(?<![\w_])_{1,3}(?=\S)(.+?)(?<=\S)_{1,3}(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_SPACE = re.compile(r"\s+")
_HIDDEN = 0xF0000  # escaped ASCII punctuation sits in a private-use plane meanwhile
_HIDDEN_CHAR = re.compile("[\U000f0021-\U000f007e]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_CJK_CLAUSE_END = re.compile(r"[。！？；，、：（）「」『』]")
_SENTENCE_END = re.compile(r"[.!?;:]['\")\]]*$")
_ABBREVIATION = re.compile(r"^\(?(?:(?:[A-Za-z]\.){2,}|(?:etc|vs|cf|approx|incl|fig|no)\.)$", re.I)
_EDGE_PUNCT = ".,;:!?"


def rendered_text(markdown: str) -> str:
    """One line of Markdown as a browser shows it: inline syntax removed, entities decoded."""
    # Escaped characters are literal text: hide them from the syntax rules below.
    text = _ESCAPE.sub(lambda m: chr(_HIDDEN + ord(m.group(1))), markdown)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _TAG.sub(" ", text)
    text = _BACKTICKS.sub("", text)
    for pattern in (_STRONG_EM, _UNDERSCORE_EM, _STRIKE):
        text = pattern.sub(r"\1", text)
    text = _HIDDEN_CHAR.sub(lambda m: chr(ord(m.group()) - _HIDDEN), text)
    text = html.unescape(text)
    return _SPACE.sub(" ", text).strip()


def prose_blocks(markdown: str) -> list[str]:
    """Paragraphs and list items of `markdown` as rendered text, without code, tables, headings."""
    blocks: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            blocks.append(rendered_text(" ".join(current)))
            current.clear()

    lines = markdown.splitlines()
    if lines and lines[0].strip() == "---" and "---" in (ln.strip() for ln in lines[1:]):
        # Front matter (`title: ...`) is metadata, not on the rendered page.
        end = next(i for i, ln in enumerate(lines[1:], 1) if ln.strip() == "---")
        lines = lines[end + 1 :]
    fence: str | None = None
    for line in lines:
        match = _FENCE.match(line)
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            continue
        if match:
            flush()
            fence = match.group(1)
            continue
        stripped = _QUOTE.sub("", line).strip()
        if (
            not stripped
            or _HEADING.match(stripped)
            or _RULE.match(stripped)
            or _SETEXT_RULE.match(stripped)
            or stripped.startswith("|")
            or (line.startswith(("    ", "\t")) and not current)
        ):
            # Blank lines end paragraphs; headings, rules, tables and indented code are skipped.
            flush()
            continue
        item = _LIST_ITEM.match(stripped)
        if item:
            flush()  # each list item is a block of its own
            stripped = stripped[item.end() :]
        current.append(stripped)
    flush()
    return [b for b in blocks if b]


def _is_prose(words: list[str]) -> bool:
    """Mostly words of letters: not a code line or a list of numbers and symbols."""
    wordy = sum(1 for w in words if sum(c.isalpha() for c in w) >= 2)
    if wordy < max(3, len(words) * 2 // 3):
        return False
    joined = "".join(words)
    symbols = sum(1 for c in joined if c in "=(){}[]<>;$/\\|@#*")
    return symbols <= len(joined) // 10


def _cjk_phrase(block: str) -> str | None:
    """Chinese or Japanese text has no spaces: its first clause, which ends at punctuation (a
    word boundary for the browser too), when it is long enough to be distinctive."""
    for clause in _CJK_CLAUSE_END.split(block):
        clause = clause.strip()
        letters = sum(c.isalpha() for c in clause)
        if letters >= CJK_MIN_CHARS and len(clause) <= CJK_MAX_CHARS:
            return clause
    return None


def _phrase_from(block: str) -> str | None:
    """The block's first sentence-ish run of MIN_WORDS..MAX_WORDS words of prose, or None.

    A block that opens with code or symbols is read from a later word (within a few).
    """
    words = block.split(" ")
    if _CJK.search(block) and len(words) < MIN_WORDS:
        return _cjk_phrase(block)
    for start in range(min(len(words) - MIN_WORDS + 1, 2 * MAX_WORDS)):
        run = words[start : start + MAX_WORDS]
        for i in range(MIN_WORDS - 1, len(run) - 1):
            if _SENTENCE_END.search(run[i]) and not _ABBREVIATION.match(run[i]):
                run = run[: i + 1]  # end at the first sentence end after enough words
                break
        if len(run) >= MIN_WORDS and _is_prose(run):
            phrase = " ".join(run).strip(_EDGE_PUNCT + " ")
            if len(phrase.split(" ")) >= MIN_WORDS:
                return phrase
    return None


def _normalized(text: str) -> str:
    return _SPACE.sub(" ", text).casefold()


def passage_phrase(markdown: str) -> str | None:
    """A distinctive phrase of prose from `markdown` as the browser renders it, or None.

    The first phrase found once in the passage wins; failing that, the first phrase at all.
    """
    blocks = prose_blocks(markdown)
    whole = _normalized(" \n ".join(blocks))
    first: str | None = None
    for block in blocks:
        phrase = _phrase_from(block)
        if phrase is None:
            continue
        if whole.count(_normalized(phrase)) == 1:
            return phrase
        first = first or phrase
    return first


def encode_directive_text(text: str) -> str:
    """Percent-encode one text directive value (UTF-8; `-`, `&`, `,` and spaces included)."""
    # Everything but ASCII letters, digits, `.` and `_`: the spec requires `&`, `-` and `,`
    # encoded (they delimit the directive's parts); browsers decode the rest.
    return quote(text, safe="").replace("-", "%2D").replace("~", "%7E")


def with_text_fragment(url: str, phrase: str) -> str:
    """`url` with `:~:text=<phrase>` after its fragment (an anchor is kept: `#anchor:~:text=`).

    A text directive already in `url` is replaced.
    """
    parts = urlsplit(url)
    anchor = parts.fragment.split(DIRECTIVE, 1)[0]
    fragment = f"{anchor}{DIRECTIVE}text={encode_directive_text(phrase)}"
    return urlunsplit(parts._replace(fragment=fragment))


def passage_url(url: str, passage: str) -> str:
    """A link to `url` that scrolls to `passage` (its Markdown text), where a phrase is found.

    Code-only or tiny passages give `url` unchanged (an anchor, when it has one, still works).
    """
    if not url:
        return url
    phrase = passage_phrase(passage)
    return with_text_fragment(url, phrase) if phrase else url


def source_key(url: str) -> str:
    """What makes two links the same source: the page and its anchor.

    Scheme and host are compared case-insensitively, an empty path equals `/`, and a text
    directive is ignored.
    """
    parts = urlsplit(url.strip())
    anchor = parts.fragment.split(DIRECTIVE, 1)[0]
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, anchor)
    )


def dedupe_sources(items: Iterable[T], url: Callable[[T], str]) -> list[T]:
    """`items` with one entry per `source_key` of their URL, the first (best) of each kept."""
    seen: set[str] = set()
    kept: list[T] = []
    for item in items:
        key = source_key(url(item))
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept
