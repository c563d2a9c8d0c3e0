"""HTML -> Markdown text for indexing, with BeautifulSoup (the stdlib `html.parser` backend).

Only the reading content is kept: navigation, page chrome, scripts and forms are dropped, and
`<main>`/`<article>` is preferred when the page has one. Headings become `#` lines, lists
`- item` / `1. item`, tables Markdown pipe rows, `<pre>` fenced blocks (whitespace kept as is),
inline `<code>` backticks. Links keep only their text: URLs are noise for embeddings.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import urldefrag, urljoin, urlsplit

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

# Lists and quotes nested deeper than this are not indented further (see _Renderer._indent).
_MAX_INDENTED_LEVELS = 8

T = TypeVar("T")
# A step of the tree walk: yields the steps it needs, receives their results, returns its own.
_Step: TypeAlias = Generator[Any, Any, T]


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

    renderer = _Renderer(root)
    text = "\n\n".join(renderer.render())
    return HtmlPage(title=title, text=text, anchors=renderer.anchors, links=links)


def _is_hidden_or_navigation(tag: Tag) -> bool:
    return (
        tag.get("role") == "navigation"
        or tag.has_attr("hidden")
        or tag.get("aria-hidden") == "true"
    )


def _links(tags: dict[str, list[Tag]], url: str) -> list[str]:
    bases = [tag for tag in tags["base"] if tag.get("href")]
    base = (_absolute(url, str(bases[0]["href"])) or url) if bases else url
    seen: dict[str, None] = {}  # ordered set
    for a in tags["a"]:
        if (href := a.get("href")) and (link := _absolute(base, str(href))):
            if link.startswith(("http://", "https://")):
                seen.setdefault(link, None)
    return list(seen)


def _absolute(base: str, href: str) -> str:
    """`href` resolved against `base`, without fragment; "" when it is not a valid URL."""
    try:
        link = urldefrag(urljoin(base, href.strip())).url
        urlsplit(link).port  # noqa: B018 - raises on a port that is not a number
    except ValueError:  # `http://[host]/`: brackets hold an IPv6 address or nothing
        return ""
    return link


def _squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _inline_text(text: str) -> str:
    """Squash whitespace like a browser does, keeping <br> line breaks."""
    lines = (_squash(line) for line in _SPACE.sub(" ", text).split(_BR))
    return "\n".join(line for line in lines if line)


class _Renderer:
    """Walks the tree once, producing Markdown blocks and collecting heading anchors.

    The methods are generators run by `_run`: each yields the sub-steps it needs (a child's
    blocks, an element's inline text) and receives their results, so the walk keeps its stack
    in a list, not in Python frames. Documents nest arbitrarily deep: a run of `<li>`, `<p>` or
    `<tr><td>` without end tags (valid HTML) nests one level per element with html.parser.
    """

    def __init__(self, root: Tag) -> None:
        self.anchors: dict[str, str] = {}
        self._nesting = 0  # lists and quotes the walk is inside
        self._root = root
        self._with_blocks, self._with_tables = _containers(root)

    def render(self) -> list[str]:
        return _run(self.blocks(self._root))

    def blocks(self, node: Tag) -> _Step[list[str]]:
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
                elif child.name in _INLINE_TAGS and id(child) not in self._with_blocks:
                    inline.append((yield self.inline(child)))
                else:
                    flush()
                    out.extend((yield self.block(child)))
        flush()
        return out

    def block(self, tag: Tag) -> _Step[list[str]]:
        name = tag.name
        if name in _HEADINGS:
            return (yield self.heading(tag))
        if name == "pre":
            return [_fenced(tag)]
        if name in ("ul", "ol"):
            return (yield self.list_block(tag))
        if name == "li":  # an item outside a list (or in an unclosed <li> before it)
            self._nesting += 1
            body = yield self.blocks(tag)
            self._nesting -= 1
            return _prefixed(body, "- ", indent=self._indent())
        if name == "table":
            return (yield self.table(tag))
        if name == "blockquote":
            self._nesting += 1
            quoted = "\n\n".join((yield self.blocks(tag)))
            self._nesting -= 1
            if not self._indent():
                return [quoted] if quoted else []
            return ["\n".join(f"> {line}".rstrip() for line in quoted.splitlines())]
        if name in ("hr", "img"):
            return []
        # div, section, p, dl, figure, details, unknown elements...
        return (yield self.blocks(tag))

    def inline(self, tag: Tag) -> _Step[str]:
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
                parts.append(_BR if child.name == "br" else (yield self.inline(child)))
            elif not isinstance(child, Comment):
                parts.append(str(child))
        return "".join(parts)

    def heading(self, tag: Tag) -> _Step[list[str]]:
        anchor = _heading_anchor(tag)
        for a in tag.find_all("a"):
            if str(a.get("href", "")).startswith("#") and _squash(a.get_text()) in _PERMALINK_TEXTS:
                a.decompose()
        text = _squash((yield self.inline(tag)).replace(_BR, " "))
        if not text:
            return []
        if anchor:
            self.anchors.setdefault(text, anchor)
        return [f"{'#' * int(tag.name[1])} {text}"]

    def list_block(self, tag: Tag) -> _Step[list[str]]:
        ordered = tag.name == "ol"
        start = str(tag.get("start", "1"))
        number = int(start) if start.isdigit() else 1
        items: list[str] = []
        self._nesting += 1
        for li in _children(tag, "li"):
            marker = f"{number}. " if ordered else "- "
            number += 1
            # Tight list: an item's paragraphs and nested lists are joined by single newlines.
            body = "\n".join((yield self.blocks(li)))
            if body:
                items.append(_prefixed([body], marker, indent=self._indent(inside=1))[0])
        self._nesting -= 1
        return ["\n".join(items)] if items else []

    def _indent(self, inside: int = 0) -> bool:
        """Whether a list or quote (`inside` levels deep in the walk) indents its content.

        Each level re-indents every line below it: past a few levels that costs the square of
        the depth and adds only spaces, so deeper content keeps the outer levels' indentation.
        """
        return self._nesting - inside < _MAX_INDENTED_LEVELS

    def table(self, tag: Tag) -> _Step[list[str]]:
        rows: list[list[str]] = []
        sections = [tag, *_children(tag, "thead", "tbody", "tfoot")]
        for tr in (tr for section in sections for tr in _children(section, "tr")):
            row: list[str] = []
            for cell in _children(tr, "th", "td"):
                row.append((yield self.cell(cell)).replace("|", "\\|"))
            if any(row):
                rows.append(row)
        if not rows:
            return []
        width = max(len(row) for row in rows)
        lines = ["| " + " | ".join(row + [""] * (width - len(row))) + " |" for row in rows]
        # The first row is the header row Markdown needs; real tables almost always have one.
        lines.insert(1, "|" + " --- |" * width)
        return ["\n".join(lines)]

    def cell(self, cell: Tag) -> _Step[str]:
        """A table cell on one line; a table nested in it becomes plain text."""
        if id(cell) in self._with_tables:
            return _squash(cell.get_text(" "))
        return " ".join((yield self.blocks(cell))).replace("\n", " ")


def _run(step: _Step[T]) -> T:
    """Run a render step: each step it yields runs next, and its result is sent back."""
    stack: list[_Step[Any]] = [step]
    value: Any = None
    while True:
        try:
            sub = stack[-1].send(value)
        except StopIteration as done:
            stack.pop()
            if not stack:
                return cast(T, done.value)
            value = done.value
        else:
            stack.append(sub)
            value = None


def _containers(root: Tag) -> tuple[set[int], set[int]]:
    """ids of the elements holding a block element, and of those holding a <table>.

    One pass, children before parents: asking each element's descendants instead would make
    nested inline-and-block markup (`<a><div><a><div>...`) cost the square of its depth.
    """
    with_blocks: set[int] = set()
    with_tables: set[int] = set()
    for node in reversed(list(root.descendants)):
        if not isinstance(node, Tag) or node.parent is None:
            continue
        parent = id(node.parent)
        if id(node) in with_blocks or (node.name not in _INLINE_TAGS and node.name != "br"):
            with_blocks.add(parent)
        if id(node) in with_tables or node.name == "table":
            with_tables.add(parent)
    return with_blocks, with_tables


def _children(tag: Tag, *names: str) -> list[Tag]:
    return [child for child in tag.children if isinstance(child, Tag) and child.name in names]


def _prefixed(blocks: list[str], marker: str, *, indent: bool = True) -> list[str]:
    """Prefix the first line with a list marker and indent the rest under it."""
    text = "\n".join(blocks)
    if not indent:
        return [marker + text]
    spaces = " " * len(marker)
    lines = text.splitlines() or [""]
    rest = [f"{spaces}{line}" if line else "" for line in lines[1:]]
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
