"""HTML -> Markdown text for indexing, with BeautifulSoup (the stdlib `html.parser` backend).

Only the reading content is kept: navigation, page chrome, scripts and forms are dropped, and
`<main>`/`<article>` is preferred when the page has one. Headings become `#` lines, lists
`- item` / `1. item`, tables Markdown pipe rows (what a table holds outside its cells comes
before it, as browsers show it), `<pre>` fenced blocks (whitespace kept as is), inline `<code>`
backticks. Links keep only their text: URLs are noise for embeddings.

The time taken grows linearly with the page, however deeply its elements nest.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import urldefrag, urljoin, urlsplit

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Declaration, Doctype, PageElement, ProcessingInstruction

# Page chrome: never part of the reading content.
_CHROME_TAGS = frozenset({
    "head", "nav", "aside", "footer", "script", "style", "noscript", "template", "form",
    "button", "input", "select", "textarea", "svg", "canvas", "iframe", "object", "embed",
    "dialog",
})  # fmt: skip
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
    """Convert one HTML document; `url` resolves relative links (only used for `links`).

    Time and memory grow linearly with the page, however deeply its elements nest: the tree is
    walked a few times in all, never once per element.
    """
    soup = BeautifulSoup(html, "html.parser")
    tags, chrome, reading = _survey(soup)
    title = _squash(tags["title"][0].get_text()) if tags["title"] else ""
    title = title or (_squash(tags["h1"][0].get_text()) if tags["h1"] else "")
    # Links come from the whole page: a crawl finds pages through the navigation dropped below.
    links = _links(tags, url)

    _remove(chrome.outermost)
    mains = [tag for tag in reading.mains if id(tag) not in chrome.inside]
    articles = [tag for tag in tags["article"] if id(tag) not in chrome.inside]
    root = mains[0] if mains else articles[0] if len(articles) == 1 else soup.body or soup

    renderer = _Renderer(root)
    text = "\n\n".join(renderer.render())
    return HtmlPage(title=title, text=text, anchors=renderer.anchors, links=links)


@dataclass
class _Chrome:
    """The page chrome: its outermost elements, and the ids of every element in or under one."""

    outermost: list[Tag] = field(default_factory=list)
    inside: set[int] = field(default_factory=set)


@dataclass
class _Reading:
    """The candidates for the reading content, and the elements inside a <main> or <article>."""

    mains: list[Tag] = field(default_factory=list)  # <main>s, then role=main elements
    inside: set[int] = field(default_factory=set)


def _survey(soup: BeautifulSoup) -> tuple[dict[str, list[Tag]], _Chrome, _Reading]:
    """The elements by name (in document order), the chrome, and the reading candidates.

    One walk in document order: an element's parent is seen before it, so whether it is inside
    chrome or inside a <main>/<article> comes from its parent, not from a walk up the tree (or
    down every subtree) per element, which costs the square of the depth on nested markup.
    """
    tags: dict[str, list[Tag]] = defaultdict(list)
    role_mains: dict[str, list[Tag]] = defaultdict(list)
    chrome, reading = _Chrome(), _Reading()
    for tag in soup.descendants:
        if not isinstance(tag, Tag):
            continue
        tags[tag.name].append(tag)
        parent = id(tag.parent)
        in_reading = parent in reading.inside
        if in_reading or tag.name in ("main", "article"):
            reading.inside.add(id(tag))
        if parent in chrome.inside:
            chrome.inside.add(id(tag))
        elif (
            tag.name in _CHROME_TAGS
            or _is_hidden_or_navigation(tag)
            # A site header is chrome, but an article's own <header> often holds its <h1>.
            or (tag.name == "header" and not in_reading)
        ):
            chrome.outermost.append(tag)
            chrome.inside.add(id(tag))
        if tag.get("role") == "main":
            role_mains[tag.name].append(tag)
    # role=main elements grouped by tag name, in the order the names first appear.
    reading.mains = tags["main"] + [tag for name in tags for tag in role_mains.get(name, ())]
    return tags, chrome, reading


def _remove(elements: list[Tag]) -> None:
    """Take elements (none inside another) out of the tree.

    bs4's extract() finds an element's place by a scan of its siblings: thousands of sibling
    elements removed would cost the square of their number. Here each parent's children are
    filtered once, then each element is unlinked from its neighbours.
    """
    by_parent: dict[int, tuple[Tag, list[Tag]]] = {}
    for tag in elements:
        if tag.parent is not None:
            by_parent.setdefault(id(tag.parent), (tag.parent, []))[1].append(tag)
    for parent, removed in by_parent.values():
        ids = {id(tag) for tag in removed}
        parent.contents = [child for child in parent.contents if id(child) not in ids]
        for tag in removed:
            tag.parent = None  # extract() then only unlinks it from its neighbours
            tag.extract()


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
    lines = (line.strip() for line in _SPACE.sub(" ", text).split(_BR))  # squashed once
    return "\n".join(line for line in lines if line)


class _Joined:
    """`head + sep.join(parts)`, written out only when needed.

    Past the indented levels a list or quote only joins its children's text: joined at once,
    every level would copy all the text below it, the square of the depth on nested markup.
    """

    __slots__ = ("empty", "head", "parts", "sep")

    def __init__(self, head: str, sep: str, parts: list[_Block]) -> None:
        self.head, self.sep, self.parts = head, sep, parts
        self.empty = not head and (not parts or (len(parts) == 1 and _is_empty(parts[0])))


_Block: TypeAlias = "str | _Joined"


def _is_empty(block: _Block) -> bool:
    return not block if isinstance(block, str) else block.empty


def _text(block: _Block) -> str:
    """A block written out, with a stack of its own: a deep block needs no deep recursion."""
    if isinstance(block, str):
        return block
    out: list[str] = []
    stack: list[_Block] = [block]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        out.append(item.head)
        for i in range(len(item.parts) - 1, -1, -1):
            stack.append(item.parts[i])
            if i:
                stack.append(item.sep)
    return "".join(out)


class _Renderer:
    """Walks the tree once, producing Markdown blocks and collecting heading anchors.

    The methods are generators run by `_run`: each yields the sub-steps it needs (a child's
    blocks, an element's inline text), so the walk keeps its stack in a list, not in Python
    frames. Documents nest arbitrarily deep: a run of `<li>`, `<p>` or `<tr><td>` without end
    tags (valid HTML) nests one level per element with html.parser. Steps write into the list
    they are handed (a container's blocks, a paragraph's inline pieces) rather than returning
    their own: a wrapper then costs nothing, however many wrap the text.
    """

    def __init__(self, root: Tag) -> None:
        self.anchors: dict[str, str] = {}
        self._nesting = 0  # lists and quotes the walk is inside
        self._root = root
        self._with_blocks, self._with_tables = _containers(root)

    def render(self) -> list[str]:
        out: list[_Block] = []
        _run(self.blocks(self._root.children, out))
        return [_text(block) for block in out]

    def blocks(self, children: Iterable[PageElement], out: list[_Block]) -> _Step[None]:
        """Render a container's children into `out`: runs of inline content become paragraphs
        between the child blocks."""
        inline: list[str] = []
        for child in children:
            if isinstance(child, NavigableString):
                if not isinstance(child, Comment | Declaration | Doctype | ProcessingInstruction):
                    inline.append(str(child))
            elif isinstance(child, Tag):
                if child.name == "br":
                    inline.append(_BR)
                elif child.name in _INLINE_TAGS and id(child) not in self._with_blocks:
                    yield self.inline(child, inline)
                else:
                    _paragraph(inline, out)
                    yield self.block(child, out)
        _paragraph(inline, out)

    def block(self, tag: Tag, out: list[_Block]) -> _Step[None]:
        name = tag.name
        if name in _HEADINGS:
            yield self.heading(tag, out)
        elif name == "pre":
            out.append(_fenced(tag))
        elif name in ("ul", "ol"):
            yield self.list_block(tag, out)
        elif name == "li":  # an item outside a list (or in an unclosed <li> before it)
            self._nesting += 1
            body: list[_Block] = []
            yield self.blocks(tag.children, body)
            self._nesting -= 1
            out.append(_prefixed(body, "- ", indent=self._indent()))
        elif name == "table":
            yield self.table(tag, out)
        elif name == "blockquote":
            self._nesting += 1
            quoted: list[_Block] = []
            yield self.blocks(tag.children, quoted)
            self._nesting -= 1
            if not self._indent():
                if not (joined := _Joined("", "\n\n", quoted)).empty:
                    out.append(joined)
            else:
                lines = _text(_Joined("", "\n\n", quoted)).splitlines()
                out.append("\n".join(f"> {line}".rstrip() for line in lines))
        elif name not in ("hr", "img"):
            # div, section, p, dl, figure, details, unknown elements...
            yield self.blocks(tag.children, out)

    def inline(self, tag: Tag, parts: list[str]) -> _Step[None]:
        """Append the inline text of `tag` to `parts`."""
        if tag.name in _CODE_TAGS:
            if code := _squash(tag.get_text()):
                fence = "``" if "`" in code else "`"
                parts.append(f"{fence}{code}{fence}")
            return
        if tag.name == "img":
            return
        for child in tag.children:
            if isinstance(child, Tag):
                if child.name == "br":
                    parts.append(_BR)
                else:
                    yield self.inline(child, parts)
            elif not isinstance(child, Comment):
                parts.append(str(child))

    def heading(self, tag: Tag, out: list[_Block]) -> _Step[None]:
        permalinks = _permalinks(tag)
        anchor = _heading_anchor(tag, permalinks)
        _remove(permalinks)
        parts: list[str] = []
        yield self.inline(tag, parts)
        text = _squash("".join(parts).replace(_BR, " "))
        if not text:
            return
        if anchor:
            self.anchors.setdefault(text, anchor)
        out.append(f"{'#' * int(tag.name[1])} {text}")

    def list_block(self, tag: Tag, out: list[_Block]) -> _Step[None]:
        ordered = tag.name == "ol"
        start = str(tag.get("start", "1"))
        number = int(start) if start.isdigit() else 1
        items: list[_Block] = []
        self._nesting += 1
        for li in _children(tag, "li"):
            marker = f"{number}. " if ordered else "- "
            number += 1
            # Tight list: an item's paragraphs and nested lists are joined by single newlines.
            body: list[_Block] = []
            yield self.blocks(li.children, body)
            if not _Joined("", "\n", body).empty:
                items.append(_prefixed(body, marker, indent=self._indent(inside=1)))
        self._nesting -= 1
        if items:
            out.append(_Joined("", "\n", items))

    def _indent(self, inside: int = 0) -> bool:
        """Whether a list or quote (`inside` levels deep in the walk) indents its content.

        Each level re-indents every line below it: past a few levels that costs the square of
        the depth and adds only spaces, so deeper content keeps the outer levels' indentation.
        """
        return self._nesting - inside < _MAX_INDENTED_LEVELS

    def table(self, tag: Tag, out: list[_Block]) -> _Step[None]:
        # Content outside the cells (text, a caption, misplaced elements) comes before the
        # table, where browsers show it.
        yield self.blocks(_outside_cells(tag), out)
        rows: list[list[str]] = []
        sections = [tag, *_children(tag, "thead", "tbody", "tfoot")]
        for tr in (tr for section in sections for tr in _children(section, "tr")):
            row: list[str] = []
            for cell in _children(tr, "th", "td"):
                row.append((yield self.cell(cell)).replace("|", "\\|"))
            if any(row):
                rows.append(row)
        if not rows:
            return
        width = max(len(row) for row in rows)
        lines = ["| " + " | ".join(row + [""] * (width - len(row))) + " |" for row in rows]
        # The first row is the header row Markdown needs; real tables almost always have one.
        lines.insert(1, "|" + " --- |" * width)
        out.append("\n".join(lines))

    def cell(self, cell: Tag) -> _Step[str]:
        """A table cell on one line; a table nested in it becomes plain text."""
        if id(cell) in self._with_tables:
            return _squash(cell.get_text(" "))
        body: list[_Block] = []
        yield self.blocks(cell.children, body)
        return " ".join(_text(block) for block in body).replace("\n", " ")


def _paragraph(inline: list[str], out: list[_Block]) -> None:
    """Move the inline pieces gathered so far into `out` as one paragraph, if they hold text."""
    if not inline:
        return
    text = _inline_text("".join(inline))
    inline.clear()
    if text:
        out.append(text)


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


def _outside_cells(table: Tag) -> list[PageElement]:
    """What a table holds outside the cells of its rows, in document order."""
    outside: list[PageElement] = []
    for child in table.children:
        in_section = isinstance(child, Tag) and child.name in ("thead", "tbody", "tfoot")
        for node in child.children if isinstance(child, Tag) and in_section else [child]:
            if isinstance(node, Tag) and node.name == "tr":
                outside += (c for c in node.children if not _is_tag(c, "th", "td"))
            else:
                outside.append(node)
    return outside


def _is_tag(node: PageElement, *names: str) -> bool:
    return isinstance(node, Tag) and node.name in names


def _prefixed(blocks: list[_Block], marker: str, *, indent: bool = True) -> _Block:
    """Prefix the first line with a list marker and indent the rest under it."""
    if not indent:
        return _Joined(marker, "\n", blocks)
    text = _text(_Joined("", "\n", blocks))
    spaces = " " * len(marker)
    lines = text.splitlines() or [""]
    rest = [f"{spaces}{line}" if line else "" for line in lines[1:]]
    return "\n".join([marker + lines[0], *rest])


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


def _permalinks(heading: Tag) -> list[Tag]:
    """The heading's permalink markers: `<a href="#...">` holding only a sign like "¶".

    An <a> holding another (invalid HTML: browsers never nest them) is not one: reading the
    text of each of a thousand nested links would cost the square of their number.
    """
    links = [a for a in heading.find_all("a") if str(a.get("href", "")).startswith("#")]
    if not links:
        return []
    holders: set[int] = set()  # ids of the elements with an <a> below them
    for node in reversed(list(heading.descendants)):
        if isinstance(node, Tag) and (node.name == "a" or id(node) in holders):
            holders.add(id(node.parent))
    return [a for a in links if id(a) not in holders and _squash(a.get_text()) in _PERMALINK_TEXTS]


def _heading_anchor(heading: Tag, permalinks: list[Tag]) -> str:
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
    for a in permalinks:
        if len(href := str(a["href"])) > 1:
            return href[1:]
    return ""
