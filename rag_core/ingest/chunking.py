"""Chunker: Documents -> Chunks sized in the embedding model's tokens, split at headings first.

Markdown is cut into sections at its headings by langchain's ExperimentalMarkdownSyntaxTextSplitter,
then sections too long for the encoder are cut by a RecursiveCharacterTextSplitter that measures
in tokens. Every chunk's `embed_text` fits the encoder, so nothing is silently truncated.

Why the experimental splitter: both langchain header splitters skip `# comments` inside fenced
code, but MarkdownHeaderTextSplitter strips every line (and drops tabs), which flattens Python
and YAML indentation; the experimental one keeps the text byte for byte.
HTML left in Markdown (Milvus' `<div class="alert note">`) is kept: a few tokens, and stripping
tags safely would need a parser that knows about code.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ..documents import Chunk, Document, sha256

log = logging.getLogger(__name__)

# The same heading and fence rules as ExperimentalMarkdownSyntaxTextSplitter, so our reading of
# its pieces agrees with its own.
_HEADING = re.compile(r"^(#{1,6}) (.*)")
_SPLITTER_FENCE = re.compile(r"^(?:```|~~~)", re.MULTILINE)
# CommonMark fences, indented ones too (Milvus docs put code inside list items).
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")
_EXPLICIT_ID = re.compile(r"\s*\{#([^}\s]+)\}\s*$")
_CLOSING_HASHES = re.compile(r"(?:^|\s+)#+\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"<[^>]+>")
_SLUG_DROP = re.compile(r"[^\w\- ]")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_TABLE_RULE = re.compile(
    r"^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)+(?:[ \t]*:?-+:?[ \t]*)?$", re.MULTILINE
)
_DASHES = re.compile(r"-{4,}")
# Stands in for newlines inside code blocks while the recursive splitter runs, so a code block
# is one unit at the paragraph and line levels and is cut (at its own lines) only when it alone
# is too long. A private-use character: never meaningful in docs, removed from input first.
_CODE_NL = "\ue000"


@dataclass(frozen=True)
class _Section:
    headings: tuple[str, ...]
    anchor: str | None
    text: str


class Chunker:
    """Splits Documents into Chunks whose `embed_text` never exceeds the encoder's limit."""

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        *,
        max_tokens: int,
        chunk_tokens: int,
        overlap_tokens: int,
    ) -> None:
        if max_tokens < 16 or chunk_tokens < 16 or overlap_tokens < 0:
            raise ValueError(
                f"bad chunk sizes: max_tokens={max_tokens} chunk_tokens={chunk_tokens} "
                f"overlap_tokens={overlap_tokens}"
            )
        self._count = count_tokens
        self.max_tokens = max_tokens
        # Chunks aim at `size` tokens, embed_text (title and heading path) included.
        self.size = min(chunk_tokens, max_tokens)
        self.overlap_tokens = overlap_tokens
        # count_tokens includes special tokens ([CLS], [SEP]); pieces the splitter adds up don't.
        self._specials = count_tokens("")
        # Room always left for text, however long a title or heading path is.
        self._min_body = max(8, self.size // 4)

    def split(self, doc: Document) -> list[Chunk]:
        """The chunks of one document, in reading order; empty pieces are dropped."""
        text = doc.text.replace("\r\n", "\n").replace(_CODE_NL, "")
        if doc.format == "markdown":
            sections = _markdown_sections(text, doc.title, doc.anchors)
        else:
            sections = [_Section((), None, text)]
        page_url = doc.url.split("#", 1)[0]
        id_prefix = sha256(doc.doc_id)[:16]
        doc_hash = doc.content_hash  # a property that hashes the whole page: once, not per chunk
        chunks: list[Chunk] = []
        for section in sections:
            url = f"{page_url}#{section.anchor}" if section.anchor else doc.url
            title, headings = self._fit_context(doc.title, section.headings)
            for piece in self._split_section(title, headings, section.text, doc.format):
                chunks.append(
                    Chunk(
                        chunk_id=f"{id_prefix}-{len(chunks):04d}",
                        doc_id=doc.doc_id,
                        url=url,
                        title=title,
                        headings=headings,
                        text=piece,
                        doc_hash=doc_hash,
                        source=doc.source,
                    )
                )
        return chunks

    def _context(self, title: str, headings: tuple[str, ...]) -> str:
        """The part of Chunk.embed_text before the text itself."""
        context = " > ".join(h for h in (title, *headings) if h)
        return f"{context}\n\n" if context else ""

    def _fit_context(self, title: str, headings: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """Shorten a pathological title or heading path so it leaves room for text."""
        limit = self.size - self._min_body
        while self._count(self._context(title, headings)) > limit:
            if headings:  # outer headings say least about this passage
                headings = headings[1:]
            else:
                title = title[: len(title) * 3 // 4]
        return title, headings

    def _split_section(
        self, title: str, headings: tuple[str, ...], text: str, fmt: str
    ) -> list[str]:
        text = _trim(text)
        if not text:
            return []
        head = self._context(title, headings)
        budget = self.size - self._count(head)  # tokens left for text, specials already paid

        def fits(piece: str) -> bool:
            return self._count(head + piece) <= self.size

        # Tokenizing is most of the cost. A piece with more words than the budget is too long
        # whatever its exact count (every whitespace-separated word is at least one token).
        if len(text.split()) <= budget and fits(text):
            return [text]
        cache: dict[str, int] = {}

        def length(piece: str) -> int:
            words = len(piece.split())
            if words > budget:  # a lower bound is enough to know it must be split further
                return words
            if piece not in cache:  # the splitter measures each piece several times
                cache[piece] = self._count(piece.replace(_CODE_NL, "\n")) - self._specials
            return cache[piece]

        masked = _mask_code(text) if fmt == "markdown" else text
        pieces: list[str] = []
        for piece in self._recursive(masked, budget, length):
            # Token counts don't add up exactly across joins, and a single word longer than the
            # budget comes back whole: check the real thing and cut by tokens where needed.
            pieces.extend([piece] if fits(piece) else self._hard_split(piece, fits))
        return pieces

    def _recursive(self, text: str, budget: int, length: Callable[[str], int]) -> list[str]:
        """Paragraphs, then lines, then code lines, then words, packed up to `budget`."""
        # Imported here: langchain takes seconds to import, and searching never splits.
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter(
            separators=["\n\n", "\n", _CODE_NL, " "],
            chunk_size=budget,
            chunk_overlap=min(self.overlap_tokens, budget // 2),
            length_function=length,
            strip_whitespace=False,  # keeps the indentation of a chunk's first line
        )
        pieces = (_trim(p.replace(_CODE_NL, "\n")) for p in splitter.split_text(text))
        return [p for p in pieces if p]

    def _hard_split(self, text: str, fits: Callable[[str], bool]) -> list[str]:
        """Last resort: the longest prefixes that fit, cut at a line or space where possible."""
        pieces: list[str] = []
        rest = text
        cap = self.size * 16  # chars; bounds the tokenizer's work on a huge line
        while rest:
            if fits(rest):
                pieces.append(rest)
                break
            lo, hi = 0, min(len(rest), cap)
            while lo < hi:  # largest n with fits(rest[:n])
                mid = (lo + hi + 1) // 2
                if fits(rest[:mid]):
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:  # one character alone is too long (never with real tokenizers): drop it
                log.warning("dropping a character that alone exceeds %d tokens", self.size)
                rest = rest[1:]
                continue
            cut = lo
            for sep in ("\n", " "):
                at = rest.rfind(sep, 0, lo)
                if at > lo // 2:
                    cut = at
                    break
            piece = _trim(rest[:cut])
            if piece:
                pieces.append(piece)
            rest = _trim(rest[cut:])
        return pieces


def _markdown_sections(text: str, title: str, anchors: dict[str, str]) -> list[_Section]:
    """Cut Markdown at its headings; each section knows its heading path and anchor."""
    # The splitter silently drops everything after an unclosed fence: close it.
    if len(_SPLITTER_FENCE.findall(text)) % 2:
        text += "\n```\n"
    # Headings kept in the pieces: a piece that starts with one starts a new section, which
    # tells sibling sections with the same heading path apart (metadata alone would not).
    from langchain_text_splitters import ExperimentalMarkdownSyntaxTextSplitter

    splitter = ExperimentalMarkdownSyntaxTextSplitter(strip_headers=False)
    pieces = [p.page_content for p in splitter.split_text(text)]

    sections: list[_Section] = []
    stack: list[tuple[int, str]] = []  # (level, heading text) of the current heading path
    anchor: str | None = None
    body: list[str] = []
    slugs: Counter[str] = Counter()
    seen_h1 = False

    def flush() -> None:
        # Headings are not repeated in the text: embed_text already starts with the title and
        # heading path, and a heading line again would spend encoder tokens saying it twice.
        # Pieces meet at code fences and horizontal rules, so a blank line separates them.
        joined = "\n\n".join(t for t in (_trim(b) for b in body) if t)
        if joined:
            sections.append(_Section(tuple(h for _, h in stack if h), anchor, joined))
        body.clear()

    for piece in pieces:
        match = _HEADING.match(piece)
        if not _SPLITTER_FENCE.match(piece):
            piece = _shrink_table_rules(piece)
        if not match:
            body.append(piece)
            continue
        flush()
        level = len(match.group(1))
        name, plain, explicit = _parse_heading(match.group(2))
        base = _slug(plain)
        # GitHub numbers repeated slugs: foo, foo-1, foo-2.
        slug = f"{base}-{slugs[base]}" if slugs[base] else base
        slugs[base] += 1
        while stack and stack[-1][0] >= level:
            stack.pop()
        if level == 1 and not seen_h1:
            # The page's own H1 links to the page itself, and is dropped from the heading path
            # when it just repeats the title (embed_text starts with the title already).
            seen_h1 = True
            anchor = None
            stack.append((level, "" if _same(plain, title) else plain))
        else:
            # The page's own ids (HTML ids, `{#id}` moved out by the loader) win over a slug.
            anchor = anchors.get(name) or anchors.get(plain) or explicit or slug
            stack.append((level, plain))
        body.append(piece[match.end() :])
    flush()
    return sections


def _shrink_table_rules(text: str) -> str:
    """`| ------ | --- |` -> `| --- | --- |`: each dash is a token, and padding says nothing."""
    return _TABLE_RULE.sub(lambda m: _DASHES.sub("---", m.group(0)), text)


def _parse_heading(raw: str) -> tuple[str, str, str | None]:
    """(text as written, plain text, explicit `{#id}`) of an ATX heading's content."""
    text = _CLOSING_HASHES.sub("", raw.strip())
    explicit = None
    if match := _EXPLICIT_ID.search(text):
        explicit = match.group(1)
        text = text[: match.start()]
    text = text.strip()
    plain = _TAG.sub("", _LINK.sub(r"\1", text)).replace("`", "").replace("**", "").strip()
    return text, plain, explicit


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation but - and _ dropped, each space a -.

    GitHub (github-slugger) is the renderer most Markdown docs are read on, so its anchors are
    the ones most likely to exist; sites with their own ids reach us through Document.anchors.
    """
    return _SLUG_DROP.sub("", heading.strip().lower()).replace(" ", "-")


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _trim(text: str) -> str:
    """Drop blank lines at the start (not a first line's indentation) and whitespace at the end."""
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def _mask_code(text: str) -> str:
    """Join the lines of each closed fenced code block with _CODE_NL instead of newlines."""
    out: list[str] = []
    block: list[str] = []
    fence = ""
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if not block:
            if match:
                block, fence = [line], match.group(1)
            else:
                out.append(line)
            continue
        block.append(line)
        if (
            match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not match.group(2).strip()
        ):
            out.append(_CODE_NL.join(block))
            block = []
    out.extend(block)  # an unclosed fence is left as plain lines
    return "\n".join(out)
