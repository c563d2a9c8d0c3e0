"""The text formats documentation comes in, and why one file or page cannot be read.

A file's kind comes from its name (Markdown .md .mdx .markdown, HTML .html .htm, text .txt .rst,
sitemap .xml); bytes are decoded by their declared charset, else as strict UTF-8; Markdown gives
up its YAML front matter (`key: value` lines), its first H1 and its `{#id}` heading anchors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from ..documents import Document

Kind: TypeAlias = Literal["markdown", "html", "text", "xml"]

MARKDOWN_SUFFIXES = (".md", ".mdx", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
TEXT_SUFFIXES = (".txt", ".rst")


class PageError(Exception):
    """Why a page (or a file) cannot be loaded; becomes a SourceFailure."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def gone(self) -> bool:
        return self.status in (404, 410)


@dataclass
class Markdown:
    """A Markdown text split into front matter and body, with its first H1 and heading ids."""

    meta: dict[str, str]
    body: str  # without front matter and without `{#id}` heading attributes
    h1: str
    anchors: dict[str, str] = field(default_factory=dict)  # heading text -> `{#id}`


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^---[ \t]*$\n?", re.MULTILINE | re.DOTALL)
_ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_HEADING_ID = re.compile(r"[ \t]*\{#([^\s}]+)\}$")
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")


def parse_markdown(text: str) -> Markdown:
    """Front matter (`key: value` lines), first `# H1`, and `## Heading {#id}` anchors."""
    meta: dict[str, str] = {}
    original = text
    if match := _FRONT_MATTER.match(text):
        text = text[match.end() :]
        for line in match.group(1).splitlines():
            key, sep, value = line.partition(":")
            if not line.strip() or line[0].isspace() or line.startswith(("#", "- ")):
                continue  # nested values and comments: not needed for a title or an id
            if not sep or not key.strip():
                # Not YAML: a Markdown page that starts with a `---` rule keeps all its text.
                return _scan_markdown({}, original)
            meta[key.strip()] = _unquote(value.strip())
    return _scan_markdown(meta, text)


def _scan_markdown(meta: dict[str, str], text: str) -> Markdown:
    """Find the first H1 and move `{#id}` heading attributes into anchors (outside code)."""
    h1 = ""
    anchors: dict[str, str] = {}
    lines = text.split("\n")
    fence = ""  # the open code fence; `# comment` lines inside code are not headings
    for i, line in enumerate(lines):
        if found := _FENCE.match(line):
            if not fence:
                fence = found.group(1)
            elif found.group(1).startswith(fence):
                fence = ""
            continue
        if fence or not (heading := _ATX_HEADING.match(line)):
            continue
        title = heading.group(2)
        if anchor := _HEADING_ID.search(title):
            title = title[: anchor.start()]
            anchors.setdefault(title, anchor.group(1))
            lines[i] = f"{heading.group(1)} {title}"
        if not h1 and len(heading.group(1)) == 1:
            h1 = title.strip()
    body = "\n".join(lines) if anchors else text
    return Markdown(meta=meta, body=body.strip("\n"), h1=h1, anchors=anchors)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        return inner.replace('\\"', '"') if value[0] == '"' else inner.replace("''", "'")
    return value


def kind_from_suffix(name: str) -> Kind | None:
    name = name.lower()
    if name.endswith(MARKDOWN_SUFFIXES):
        return "markdown"
    if name.endswith(HTML_SUFFIXES):
        return "html"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(".xml"):
        return "xml"
    return None


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([\w.:-]+)""", re.IGNORECASE)


def decode(data: bytes, charset: str | None, *, html: bool = False) -> str:
    """Bytes -> str: the declared charset (for HTML also a <meta charset>), else strict UTF-8."""
    if not data.strip():
        raise PageError("empty")
    if html and not charset and (meta := _META_CHARSET.search(data[:4096])):
        charset = meta.group(1).decode("ascii")
    if not charset and b"\x00" in data[:8192]:
        raise PageError("binary content, not text")
    charset = charset or "utf-8"
    try:
        # utf-8-sig also drops a byte order mark.
        text = data.decode("utf-8-sig" if charset.lower() in ("utf-8", "utf8") else charset)
    except LookupError:
        raise PageError(f"unknown charset {charset!r}") from None
    except UnicodeError:  # also the idna codec's errors, which are not UnicodeDecodeError
        raise PageError(f"not valid {charset} text") from None
    return text.replace("\r\n", "\n")


def non_empty(doc: Document) -> Document:
    if not doc.text.strip():
        raise PageError("empty: no text")
    return doc
