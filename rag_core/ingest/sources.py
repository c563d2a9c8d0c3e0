"""Load documentation sources as Documents: local folders, web pages, sitemaps, site crawls.

A source is given as one spec string (Settings.docs_sources, the `index` command, /reindex):

- `docs/` or `docs/page.md`: a local folder (read recursively) or one file. Markdown
  (.md .mdx .markdown, YAML front matter aware), HTML (.html .htm) and text (.txt .rst); hidden
  files and folders and other suffixes are skipped. A file's public URL is Settings.docs_base_url
  plus its front-matter `id`, else plus its path relative to the folder; without a base URL it is
  the file's `file://` URI. doc_id is the file's absolute path.
- `https://site/page`: one page. It is read as a sitemap instead when the URL path ends in `.xml`
  or the reply is XML whose root is <urlset> or <sitemapindex>; sitemap indexes are followed
  (nested up to MAX_SITEMAP_DEPTH levels, Settings.sitemap_max_fetches sitemap files in all)
  and the listed pages are loaded, up to Settings.source_max_pages.
- `crawl:https://site/docs/`: a crawl from that page following <a href> links that stay on the
  same scheme, host and port and under the root's folder (`/docs/` here), up to
  Settings.source_max_pages pages.
- anything else with a scheme (`ftp://`, `file://`) is refused, and so is a malformed URL.

A sitemap or crawl cut short by a cap yields a SourceFailure for the whole spec that names the
setting ("stopped at 5000 pages (SOURCE_MAX_PAGES)"); the pages loaded up to then are kept, and
so are indexed pages the run did not reach. Sitemaps are parsed incrementally and parsing stops
at a cap, so a huge sitemap costs neither the memory nor the time of URLs never loaded.

Web pages: doc_id and url are the final URL (after redirects) without its fragment. Only HTML,
Markdown and plain text are read; HTML becomes Markdown (see html_text.py).

Each page becomes a Document or a SourceFailure, yielded as soon as it is ready; nothing raises
out of load_sources. Any error on one file or page fails that file or page only, with a one-line
reason (an unexpected one is logged as one line; its traceback only at DEBUG). A failure's
`gone` is True only for a page answering 404/410, so a flaky network or a missing sitemap never
deletes indexed pages.

Pages are fetched by web.py (polite, capped, retried; see there) behind the SSRF guard of
url_guard.py; files and pages are decoded and parsed by formats.py. Sitemaps and pages are parsed
off the event loop: a huge file stalls no other fetch. HTML is converted in worker processes
(parse_pool.py), each page or file under Settings.page_parse_cpu_s seconds of CPU; the workers
live as long as the load_sources call, so a cancelled run stops converting at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias
from urllib.parse import quote, urldefrag, urlsplit

from ..config import Settings
from ..documents import Document, SourceFailure
from .formats import (
    HTML_SUFFIXES,
    MARKDOWN_SUFFIXES,
    TEXT_SUFFIXES,
    PageError,
    decode,
    kind_from_suffix,
    non_empty,
    parse_markdown,
)
from .html_text import HtmlPage, html_to_page
from .parse_pool import ParsePool, default_workers
from .url_guard import split_url, url_problem
from .web import Reply, Web

log = logging.getLogger(__name__)

LoadResult: TypeAlias = Document | SourceFailure

MAX_SITEMAP_DEPTH = 5
# Sitemap XML is fed to the parser in pieces: each piece is one short hold of the GIL, so the
# event loop's thread keeps running while a thread parses megabytes.
_PARSE_CHUNK = 64 * 1024
# Crawl links to these are not pages: don't spend the page budget on them.
_NOT_PAGE_SUFFIXES = (
    ".pdf", ".zip", ".gz", ".tgz", ".tar", ".whl", ".exe", ".dmg", ".png", ".jpg", ".jpeg",
    ".gif", ".svg", ".webp", ".ico", ".css", ".js", ".json", ".xml", ".mp3", ".mp4", ".webm",
    ".woff", ".woff2", ".ttf",
)  # fmt: skip


async def load_sources(
    specs: Sequence[str], settings: Settings
) -> AsyncGenerator[LoadResult, None]:
    """Load every spec (see the module docstring) concurrently, yielding pages as they are ready."""
    # Bounded, so a slow consumer (the embedder) holds back the fetchers instead of memory filling.
    queue: asyncio.Queue[LoadResult | None] = asyncio.Queue(maxsize=2 * settings.fetch_concurrency)

    # Closing the pool (also when the consumer stops early) kills its workers mid-page.
    parsing = ParsePool(settings.page_parse_cpu_s, default_workers(settings.fetch_concurrency))
    async with Web(settings) as fetcher, parsing:
        web = _WebSpecs(fetcher, parsing)

        async def run(spec: str) -> None:
            try:
                await _load_spec(spec, settings, web, queue.put)
            except Exception as exc:  # a bug in one source must not end the others
                await queue.put(SourceFailure(spec, _unexpected(spec, exc), spec))
            await queue.put(None)  # this spec is done

        tasks = [asyncio.create_task(run(spec)) for spec in specs]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                else:
                    yield item
        finally:  # also when the consumer stops early
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _load_spec(
    spec: str, settings: Settings, web: _WebSpecs, emit: Callable[[LoadResult], Awaitable[None]]
) -> None:
    if spec.startswith("crawl:"):
        root = spec.removeprefix("crawl:").strip()
        if not root.startswith(("http://", "https://")):
            await emit(SourceFailure(spec, "a crawl needs an http(s) root URL", spec))
        elif problem := url_problem(root):
            await emit(SourceFailure(spec, problem, spec))
        else:
            await web.crawl(root, spec, emit)
    elif match := re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", spec):
        if match.group(1).lower() not in ("http", "https"):
            await emit(SourceFailure(spec, f"refused: unsupported URL scheme {match[1]!r}", spec))
        elif problem := url_problem(spec):
            await emit(SourceFailure(spec, problem, spec))
        else:
            await web.load_url(spec, emit)
    else:
        files = _read_folder(Path(spec), spec, settings.docs_base_url, settings.fetch_max_bytes)
        for item in await asyncio.to_thread(list, files):  # file reads off the event loop
            await emit(await item.convert(web.parsing) if isinstance(item, _HtmlFile) else item)


def _unexpected(where: str, exc: BaseException) -> str:
    """A one-line reason for an error nobody planned for; the traceback is logged at DEBUG only.

    A RecursionError's traceback alone is thousands of lines: one bad page must not flood the log.
    """
    lines = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
    log.warning("%s: unexpected error: %s", where, detail)
    log.debug("%s: traceback of the unexpected error", where, exc_info=exc)
    return f"unexpected error: {detail}"


# --- local files ---


@dataclass
class _HtmlFile:
    """A local HTML file, read and decoded; converting it to text is still to do."""

    doc_id: str
    url: str
    stem: str
    html: str
    spec: str

    async def convert(self, parsing: ParsePool) -> LoadResult:
        """Its Document, converted in a worker process under the CPU budget."""
        try:
            return self.document(await parsing.run(html_to_page, self.html, self.url))
        except Exception as exc:
            return _file_failure(self.doc_id, self.spec, exc)

    def convert_here(self) -> LoadResult:
        """Its Document, converted in this thread."""
        try:
            return self.document(html_to_page(self.html, self.url))
        except Exception as exc:
            return _file_failure(self.doc_id, self.spec, exc)

    def document(self, page: HtmlPage) -> Document:
        title = page.title or self.stem
        return non_empty(
            Document(self.doc_id, self.url, title, page.text, "markdown", self.spec, page.anchors)
        )


def load_folder(root: Path, spec: str, base_url: str, max_bytes: int) -> Iterator[LoadResult]:
    """Every supported file under `root` (or `root` itself if it is a file), in sorted order.

    HTML is converted in this thread, without a CPU budget (load_sources converts it in a
    worker process under one).
    """
    for item in _read_folder(root, spec, base_url, max_bytes):
        yield item.convert_here() if isinstance(item, _HtmlFile) else item


def _read_folder(
    root: Path, spec: str, base_url: str, max_bytes: int
) -> Iterator[LoadResult | _HtmlFile]:
    """load_folder's files, HTML files read but not converted."""
    root = root.expanduser().resolve()
    if root.is_file():
        yield _load_file(root, root.name, spec, base_url, max_bytes)
        return
    if not root.is_dir():
        yield SourceFailure(spec, "no such file or folder", spec)
        return
    suffixes = (*MARKDOWN_SUFFIXES, *HTML_SUFFIXES, *TEXT_SUFFIXES)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(suffixes):
                continue
            path = Path(folder, name)
            yield _load_file(path, path.relative_to(root).as_posix(), spec, base_url, max_bytes)


def _load_file(
    path: Path, rel: str, spec: str, base_url: str, max_bytes: int
) -> LoadResult | _HtmlFile:
    doc_id = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return SourceFailure(doc_id, f"too large: {size} bytes (limit {max_bytes})", spec)
        data = path.read_bytes()
        kind = kind_from_suffix(path.name) or "text"
        text = decode(data, None, html=kind == "html")
        if kind == "markdown":
            md = parse_markdown(text)
            url = _public_url(base_url, md.meta.get("id") or rel, path)
            title = md.meta.get("title") or md.h1 or path.stem
            doc = Document(doc_id, url, title, md.body, "markdown", spec, md.anchors)
        elif kind == "html":
            return _HtmlFile(doc_id, _public_url(base_url, rel, path), path.stem, text, spec)
        else:
            url = _public_url(base_url, rel, path)
            doc = Document(doc_id, url, path.stem, text.strip(), "text", spec)
        return non_empty(doc)
    except OSError as exc:
        return SourceFailure(doc_id, f"unreadable: {exc.strerror or exc}", spec)
    except Exception as exc:  # a bug on one file must not stop the rest of the folder
        return _file_failure(doc_id, spec, exc)


def _file_failure(doc_id: str, spec: str, exc: Exception) -> SourceFailure:
    if isinstance(exc, PageError):
        return SourceFailure(doc_id, exc.reason, spec)
    return SourceFailure(doc_id, _unexpected(doc_id, exc), spec)


def _public_url(base_url: str, rel: str, path: Path) -> str:
    if not base_url:
        return path.as_uri()
    # surrogateescape: a file name that is not UTF-8 (`caf\xe9.md`) keeps its bytes, %-escaped.
    return base_url.rstrip("/") + "/" + quote(rel.lstrip("/"), safe="/#", errors="surrogateescape")


# --- web pages ---


class _WebSpecs:
    """The web specs (a page, a sitemap, a crawl) of one load_sources call, fetched by one Web."""

    def __init__(self, web: Web, parsing: ParsePool) -> None:
        self.web = web
        self.settings = web.settings
        self.parsing = parsing  # converts HTML, for the local folders too

    async def load_url(self, spec: str, emit: Callable[[LoadResult], Awaitable[None]]) -> None:
        """A page, or a sitemap whose pages are loaded."""
        sitemap_by_name = urlsplit(spec).path.lower().endswith(".xml")
        try:
            reply = await self.web.fetch(spec)
        except PageError as exc:
            # A missing sitemap is not a missing page: nothing gets deleted for it.
            gone = exc.gone and not sitemap_by_name
            await emit(SourceFailure(spec, exc.reason, spec, gone=gone))
            return
        if reply.kind != "xml":
            await emit(await self._to_result(reply, spec))
            return
        pages = await self._sitemap_pages(reply, spec, emit)
        await self._load_pages(pages, spec, emit)

    async def crawl(
        self, root: str, spec: str, emit: Callable[[LoadResult], Awaitable[None]]
    ) -> None:
        """Follow links from `root` within its site and folder, up to source_max_pages pages."""
        await self._load_pages([urldefrag(root).url], spec, emit, follow=_crawl_scope(root))

    async def _sitemap_pages(
        self, top: Reply, spec: str, emit: Callable[[LoadResult], Awaitable[None]]
    ) -> list[str]:
        """Page URLs of a sitemap, following sitemap indexes, within the source's caps.

        Failing sitemaps are reported, and so is a cap that cut the list short.
        """
        found = _SitemapWalk(
            max_pages=self.settings.source_max_pages,
            max_sitemaps=self.settings.sitemap_max_fetches,
            sitemaps={top.url},
        )
        parsing = asyncio.Lock()  # one parse at a time: it reads and extends `found`
        # Bounds the sitemap bodies held at once (each up to fetch_max_bytes).
        fetching = asyncio.Semaphore(self.settings.fetch_concurrency)

        async def read(reply: Reply, depth: int) -> list[str]:
            """Parse one sitemap into `found`; the new child sitemaps of an index."""
            async with parsing:
                try:
                    # Off the event loop: a sitemap of megabytes takes a good part of a second.
                    return await asyncio.to_thread(
                        _read_sitemap, reply.body, found, index_allowed=depth < MAX_SITEMAP_DEPTH
                    )
                except PageError as exc:
                    failure = SourceFailure(spec if depth == 0 else reply.url, exc.reason, spec)
            await emit(failure)
            return []

        async def walk(children: list[str], depth: int) -> None:
            await asyncio.gather(*(child(url, depth) for url in children))

        async def child(url: str, depth: int) -> None:
            async with fetching:
                if found.pages_cut:
                    return  # the page cap is reached: this sitemap could add nothing
                try:
                    reply = await self.web.fetch(url)
                except PageError as exc:
                    await emit(SourceFailure(url, exc.reason, spec))
                    return
                children = await read(reply, depth)
                del reply  # the body is parsed: don't hold it while the children load
            await walk(children, depth + 1)

        await walk(await read(top, 0), 1)
        if found.sitemaps_cut:
            reason = f"stopped at {found.max_sitemaps} sitemaps (SITEMAP_MAX_FETCHES)"
            await emit(SourceFailure(spec, reason, spec))
        if found.pages_cut:
            await emit(SourceFailure(spec, _pages_cap_reason(found.max_pages), spec))
        return list(found.pages)

    async def _load_pages(
        self,
        urls: list[str],
        spec: str,
        emit: Callable[[LoadResult], Awaitable[None]],
        *,
        follow: Callable[[str], bool] | None = None,
    ) -> None:
        """Fetch pages with a pool of workers; with `follow`, also the links it accepts."""
        todo: asyncio.Queue[str] = asyncio.Queue()
        queued: set[str] = set()  # URLs asked for, and the final URLs they redirected to
        loaded: set[str] = set()  # final URLs: two links redirecting to one page load it once
        max_pages = self.settings.source_max_pages
        budget = max_pages
        cut = False  # a page was left out for the cap

        def add(url: str) -> None:
            nonlocal budget, cut
            if url in queued:
                return
            if budget <= 0:
                cut = True
                return
            budget -= 1
            queued.add(url)
            todo.put_nowait(url)

        async def worker() -> None:
            while True:
                url = await todo.get()
                try:
                    result, links = await self._load_page(url, spec)
                    if isinstance(result, Document):
                        if result.doc_id in loaded:
                            continue
                        loaded.add(result.doc_id)
                        queued.add(result.doc_id)  # `/docs` -> `/docs/`: no second fetch
                        if follow and not follow(result.url):
                            result = SourceFailure(url, "redirected outside the crawl", spec)
                            links = []
                    await emit(result)
                    if follow:
                        for link in filter(follow, links):
                            add(link)
                finally:
                    todo.task_done()

        for url in urls:
            add(url)
        workers = [asyncio.create_task(worker()) for _ in range(self.settings.fetch_concurrency)]
        try:
            await todo.join()
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if cut:
            await emit(SourceFailure(spec, _pages_cap_reason(max_pages), spec))

    async def _load_page(self, url: str, spec: str) -> tuple[LoadResult, list[str]]:
        """One page as a Document (and its links), or a SourceFailure; never raises."""
        try:
            reply = await self.web.fetch(url)
            if reply.kind == "xml":
                raise PageError("unsupported content type: XML")
            return await _reply_to_document(reply, spec, self.parsing)
        except PageError as exc:
            return SourceFailure(url, exc.reason, spec, gone=exc.gone), []
        except Exception as exc:  # a parser bug on one page must not stop the others
            return SourceFailure(url, _unexpected(url, exc), spec), []

    async def _to_result(self, reply: Reply, spec: str) -> LoadResult:
        try:
            doc, _ = await _reply_to_document(reply, spec, self.parsing)
            return doc
        except PageError as exc:
            return SourceFailure(reply.url, exc.reason, spec)
        except Exception as exc:
            return SourceFailure(reply.url, _unexpected(reply.url, exc), spec)


def _pages_cap_reason(max_pages: int) -> str:
    return f"stopped at {max_pages} pages (SOURCE_MAX_PAGES)"


async def _reply_to_document(
    reply: Reply, spec: str, parsing: ParsePool
) -> tuple[Document, list[str]]:
    """A page and its links. Off the event loop, so other fetches keep going: HTML in a worker
    process (under the CPU budget), the rest in a thread."""
    if reply.kind != "html":
        return await asyncio.to_thread(_text_reply_to_document, reply, spec), []
    text = await asyncio.to_thread(decode, reply.body, reply.charset, html=True)
    page = await parsing.run(html_to_page, text, reply.url)
    title = page.title or _title_from_url(reply.url)
    doc = Document(reply.url, reply.url, title, page.text, "markdown", spec, page.anchors)
    return non_empty(doc), page.links


def _text_reply_to_document(reply: Reply, spec: str) -> Document:
    text = decode(reply.body, reply.charset)
    url = reply.url
    fallback_title = _title_from_url(url)
    if reply.kind == "markdown":
        md = parse_markdown(text)
        title = md.meta.get("title") or md.h1 or fallback_title
        doc = Document(url, url, title, md.body, "markdown", spec, md.anchors)
    else:
        doc = Document(url, url, fallback_title, text.strip(), "text", spec)
    return non_empty(doc)


def _title_from_url(url: str) -> str:
    parts = urlsplit(url)
    name = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if name else parts.hostname or url


# --- sitemaps ---


@dataclass
class _SitemapWalk:
    """What a sitemap source found so far; one parse at a time reads and extends it."""

    max_pages: int
    max_sitemaps: int
    sitemaps: set[str]  # sitemap URLs fetched or to fetch, the top one included
    pages: dict[str, None] = field(default_factory=dict)  # an ordered set of page URLs
    pages_cut: bool = False  # pages were left out for max_pages
    sitemaps_cut: bool = False  # sitemaps were left out for max_sitemaps


def _read_sitemap(body: bytes, found: _SitemapWalk, *, index_allowed: bool) -> list[str]:
    """Add a sitemap's pages to `found`; returns the new sitemaps an index lists.

    Incremental: finished elements are dropped as it goes and parsing stops at a cap, so a
    sitemap of millions of URLs costs neither a whole tree in memory nor the URLs beyond it.
    """
    # The stdlib parser resolves no external entities; expat caps entity expansion.
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    kind = ""
    depth = 0
    children: list[str] = []
    try:
        for event, element in _xml_events(parser, body):
            tag = element.tag.rsplit("}", 1)[-1]  # drop the namespace
            if event == "start":
                depth += 1
                if root is None:
                    root, kind = element, tag
                    if kind not in ("urlset", "sitemapindex"):
                        raise PageError(f"unsupported content type: XML <{tag}> is not a sitemap")
                    if kind == "sitemapindex" and not index_allowed:
                        raise PageError("sitemap indexes nested too deep")
                continue
            depth -= 1
            if tag == "loc" and (loc := (element.text or "").strip()).startswith(
                ("http://", "https://")
            ):
                if kind == "urlset":
                    try:
                        loc = urldefrag(loc).url
                    except ValueError:
                        pass  # kept as is: its fetch reports the invalid URL
                    if loc in found.pages:
                        continue
                    if len(found.pages) >= found.max_pages:
                        found.pages_cut = True
                        break
                    found.pages[loc] = None
                elif loc not in found.sitemaps:
                    if len(found.sitemaps) >= found.max_sitemaps:
                        found.sitemaps_cut = True
                        break
                    found.sitemaps.add(loc)
                    children.append(loc)
            elif depth == 1 and root is not None:
                root.clear()  # a finished <url> or <sitemap>: nothing more to read in it
    except ET.ParseError as exc:
        raise PageError(f"invalid XML: {exc}") from None
    return children


def _xml_events(
    parser: ET.XMLPullParser[ET.Element], body: bytes
) -> Iterator[tuple[str, ET.Element]]:
    """The parser's start and end events for `body`, fed a piece at a time."""
    for offset in range(0, len(body), _PARSE_CHUNK):
        parser.feed(body[offset : offset + _PARSE_CHUNK])
        yield from _elements(parser)
    parser.close()
    yield from _elements(parser)


def _elements(parser: ET.XMLPullParser[ET.Element]) -> Iterator[tuple[str, ET.Element]]:
    for item in parser.read_events():
        if len(item) == 2 and isinstance(item[1], ET.Element):  # start and end events
            yield item[0], item[1]


# --- crawl scope ---


def _crawl_scope(root: str) -> Callable[[str], bool]:
    """Accepts URLs on the root's scheme, host and port, under the root's folder."""
    parts = urlsplit(root)
    origin = (parts.scheme, parts.hostname, parts.port)
    prefix = parts.path or "/"
    if not prefix.endswith("/"):
        folder, _, last = prefix.rpartition("/")
        # `/docs` means the folder `/docs/`; `/docs/index.html` means `/docs/`.
        prefix = f"{folder}/" if "." in last else f"{prefix}/"
    root = urldefrag(root).url

    def in_scope(url: str) -> bool:
        try:
            link = split_url(url)
        except PageError:
            return False
        return (
            (link.scheme, link.hostname, link.port) == origin
            and (link.path.startswith(prefix) or url == root)
            and not link.path.lower().endswith(_NOT_PAGE_SUFFIXES)
        )

    return in_scope
