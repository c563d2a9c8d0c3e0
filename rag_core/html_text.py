"""HTML -> Markdown text for indexing, with BeautifulSoup (the stdlib `html.parser` backend).

Only the reading content is kept: navigation, page chrome, scripts and forms are dropped, and
`<main>`/`<article>` is preferred when the page has one. Headings become `#` lines, lists
`- item` / `1. item`, tables Markdown pipe rows, `<pre>` fenced blocks (whitespace kept as is),
inline `<code>` backticks. Links keep only their text: URLs are noise for embeddings.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urljoin

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

# Page chrome: never part of the reading content.
_DROP_TAGS = (
    "nav", "aside", "footer", "script", "style", "noscript", "template", "form", "button",
    "input", "select", "textarea", "svg", "canvas", "iframe", "object", "embed", "dialog",
)  # fmt: skip
_INLINE_TAGS = frozenset(
    "a abbr b bdi bdo big cite code data del dfn em font i img ins kbd label mark q s samp small "
    "span strong sub sup time tt u var wbr".split()
)
_CODE_TAGS = frozenset({"code", "kbd", "samp", "tt"})
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Permalink markers that sites append to headings ("Install¶"); not part of the heading text.
_PERMALINK_TEXTS = frozenset({"", "#", "¶", "§", "🔗", "link"})
_SPACE = re.compile(r"[ \t\n\r\f\v\xa0]+")
_BR = "\x00"  # stands for <br> while whitespace is squashed
_LANG_CLASS = re.compile(r"^(?:language|lang|highlight|sourceCode)-(.+)$")


@dataclass
class HtmlPage:
    """What a page holds for indexing."""

    title: str  # <title>, else the first <h1>, else ""
    text: str  # Markdown
    anchors: dict[str, str] = field(default_factory=dict)  # heading text -> element id
    links: list[str] = field(default_factory=list)  # absolute http(s) URLs, no fragment, in order


def html_to_page(html: str, url: str = "") -> HtmlPage:
    """Convert one HTML document; `url` resolves relative links (only used for `links`)."""
    soup = BeautifulSoup(html, "html.parser")
    # One walk over the tree; bs4's find_all per question would walk it again each time.
    tags: dict[str, list[Tag]] = defaultdict(list)
    for tag in soup.find_all(True):
        tags[tag.name].append(tag)
    title = _squash(tags["title"][0].get_text()) if tags["title"] else ""
    title = title or (_squash(tags["h1"][0].get_text()) if tags["h1"] else "")
    # Links come from the whole page: a crawl finds pages through the navigation dropped below.
    links = _links(tags, url)

    everything = [tag for group in tags.values() for tag in group]
    chrome = [tag for name in (*_DROP_TAGS, "head") for tag in tags[name]]
    chrome += [tag for tag in everything if _is_hidden_or_navigation(tag)]
    # A site header is chrome, but an article's own <header> often holds its <h1>.
    chrome += [tag for tag in tags["header"] if not tag.find_parent(["main", "article"])]
    mains = tags["main"] + [tag for tag in everything if tag.get("role") == "main"]
    for tag in chrome:
        if not tag.decomposed:  # not inside chrome removed already
            tag.decompose()

    mains = [tag for tag in mains if not tag.decomposed]
    articles = [tag for tag in tags["article"] if not tag.decomposed]
    root = mains[0] if mains else articles[0] if len(articles) == 1 else soup.body or soup

    renderer = _Renderer()
    text = "\n\n".join(renderer.blocks(root))
    return HtmlPage(title=title, text=text, anchors=renderer.anchors, links=links)


def _is_hidden_or_navigation(tag: Tag) -> bool:
    return (
        tag.get("role") == "navigation"
        or tag.has_attr("hidden")
        or tag.get("aria-hidden") == "true"
    )


def _links(tags: dict[str, list[Tag]], url: str) -> list[str]:
    bases = [tag for tag in tags["base"] if tag.get("href")]
    base = urljoin(url, str(bases[0]["href"])) if bases else url
    seen: dict[str, None] = {}  # ordered set
    for a in tags["a"]:
        if href := a.get("href"):
            link = urldefrag(urljoin(base, str(href).strip())).url
            if link.startswith(("http://", "https://")):
                seen.setdefault(link, None)
    return list(seen)


def _squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _inline_text(text: str) -> str:
    """Squash whitespace like a browser does, keeping <br> line breaks."""
    lines = (_squash(line) for line in _SPACE.sub(" ", text).split(_BR))
    return "\n".join(line for line in lines if line)


class _Renderer:
    """Walks the tree once, producing Markdown blocks and collecting heading anchors."""

    def __init__(self) -> None:
        self.anchors: dict[str, str] = {}

    def blocks(self, node: Tag) -> list[str]:
        """Render a container: runs of inline content become paragraphs between child blocks."""
        out: list[str] = []
        inline: list[str] = []

        def flush() -> None:
            text = _inline_text("".join(inline))
            inline.clear()
            if text:
                out.append(text)

        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, Comment | Declaration | Doctype | ProcessingInstruction):
                    inline.append(str(child))
            elif isinstance(child, Tag):
                if child.name == "br":
                    inline.append(_BR)
                elif child.name in _INLINE_TAGS and not _has_block(child):
                    inline.append(self.inline(child))
                else:
                    flush()
                    out.extend(self.block(child))
        flush()
        return out

    def block(self, tag: Tag) -> list[str]:
        name = tag.name
        if name in _HEADINGS:
            return self.heading(tag)
        if name == "pre":
            return [_fenced(tag)]
        if name in ("ul", "ol"):
            return self.list_block(tag)
        if name == "li":  # an item outside a list
            return _prefixed(self.blocks(tag), "- ")
        if name == "table":
            return self.table(tag)
        if name == "blockquote":
            quoted = "\n\n".join(self.blocks(tag))
            return ["\n".join(f"> {line}".rstrip() for line in quoted.splitlines())]
        if name in ("hr", "img"):
            return []
        return self.blocks(tag)  # div, section, p, dl, figure, details, unknown elements...

    def inline(self, tag: Tag) -> str:
        if tag.name in _CODE_TAGS:
            code = _squash(tag.get_text())
            if not code:
                return ""
            fence = "``" if "`" in code else "`"
            return f"{fence}{code}{fence}"
        if tag.name == "img":
            return ""
        parts: list[str] = []
        for child in tag.children:
            if isinstance(child, Tag):
                parts.append(_BR if child.name == "br" else self.inline(child))
            elif not isinstance(child, Comment):
                parts.append(str(child))
        return "".join(parts)

    def heading(self, tag: Tag) -> list[str]:
        anchor = _heading_anchor(tag)
        for a in tag.find_all("a"):
            if str(a.get("href", "")).startswith("#") and _squash(a.get_text()) in _PERMALINK_TEXTS:
                a.decompose()
        text = _squash(self.inline(tag).replace(_BR, " "))
        if not text:
            return []
        if anchor:
            self.anchors.setdefault(text, anchor)
        return [f"{'#' * int(tag.name[1])} {text}"]

    def list_block(self, tag: Tag) -> list[str]:
        ordered = tag.name == "ol"
        start = str(tag.get("start", "1"))
        number = int(start) if start.isdigit() else 1
        items: list[str] = []
        for li in _children(tag, "li"):
            marker = f"{number}. " if ordered else "- "
            number += 1
            # Tight list: an item's paragraphs and nested lists are joined by single newlines.
            body = "\n".join(self.blocks(li))
            if body:
                items.append(_prefixed([body], marker)[0])
        return ["\n".join(items)] if items else []

    def table(self, tag: Tag) -> list[str]:
        rows: list[list[str]] = []
        sections = [tag, *_children(tag, "thead", "tbody", "tfoot")]
        for tr in (tr for section in sections for tr in _children(section, "tr")):
            cells = _children(tr, "th", "td")
            row = [self.cell(cell).replace("|", "\\|") for cell in cells]
            if any(row):
                rows.append(row)
        if not rows:
            return []
        width = max(len(row) for row in rows)
        lines = ["| " + " | ".join(row + [""] * (width - len(row))) + " |" for row in rows]
        # The first row is the header row Markdown needs; real tables almost always have one.
        lines.insert(1, "|" + " --- |" * width)
        return ["\n".join(lines)]

    def cell(self, cell: Tag) -> str:
        """A table cell on one line; a table nested in it becomes plain text."""
        if any(isinstance(node, Tag) and node.name == "table" for node in cell.descendants):
            return _squash(cell.get_text(" "))
        return " ".join(self.blocks(cell)).replace("\n", " ")


def _has_block(tag: Tag) -> bool:
    """Whether an inline element wraps blocks (`<a><div>...</div></a>` cards)."""
    return any(
        isinstance(node, Tag) and node.name not in _INLINE_TAGS and node.name != "br"
        for node in tag.descendants
    )


def _children(tag: Tag, *names: str) -> list[Tag]:
    return [child for child in tag.children if isinstance(child, Tag) and child.name in names]


def _prefixed(blocks: list[str], marker: str) -> list[str]:
    """Prefix the first line with a list marker and indent the rest under it."""
    text = "\n".join(blocks)
    indent = " " * len(marker)
    lines = text.splitlines() or [""]
    rest = [f"{indent}{line}" if line else "" for line in lines[1:]]
    return ["\n".join([marker + lines[0], *rest])]


def _fenced(pre: Tag) -> str:
    code = pre.get_text()
    # Browsers ignore one newline right after <pre>; trailing blank lines carry nothing.
    code = code.removeprefix("\n").rstrip("\n")
    fence = "```"
    while fence in code:
        fence += "`"
    return f"{fence}{_code_language(pre)}\n{code}\n{fence}"


def _code_language(pre: Tag) -> str:
    inner = pre.find("code")
    candidates = [pre, pre.parent] + ([inner] if isinstance(inner, Tag) else [])
    for tag in candidates:
        if not isinstance(tag, Tag):
            continue
        for cls in tag.get_attribute_list("class"):
            match = _LANG_CLASS.match(cls or "")
            if match and match.group(1) not in ("default", "none"):
                return match.group(1)
    return ""


def _heading_anchor(heading: Tag) -> str:
    """The id a deep link can target for this heading, if the page has one."""
    if heading.get("id"):
        return str(heading["id"])
    for a in heading.find_all("a"):
        if a.get("id") or a.get("name"):
            return str(a.get("id") or a.get("name"))
    # `<a id="x"></a><h2>..</h2>`: an empty anchor just before the heading.
    previous = heading.find_previous_sibling()
    if (
        isinstance(previous, Tag)
        and previous.name == "a"
        and (previous.get("id") or previous.get("name"))
        and not _squash(previous.get_text())
    ):
        return str(previous.get("id") or previous.get("name"))
    # Sphinx: `<section id="x"><h2>..<a class="headerlink" href="#x">¶</a></h2>`.
    parent = heading.parent
    if isinstance(parent, Tag) and parent.name == "section" and parent.get("id"):
        if parent.find(True) is heading:
            return str(parent["id"])
    for a in heading.find_all("a", href=True):
        href = str(a["href"])
        if href.startswith("#") and len(href) > 1 and _squash(a.get_text()) in _PERMALINK_TEXTS:
            return href[1:]
    return ""
