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

Fetching is polite and guarded: bounded concurrency, per-request timeouts, retries with
exponential backoff (Settings.fetch_backoff_s, doubled each time) on 429/5xx/timeouts/connection
errors (a Retry-After up to MAX_RETRY_AFTER_S is honoured; a longer one fails the page), a total
time per page over its tries and redirects (Settings.fetch_page_deadline_s; waiting for a free
connection slot does not count), robots.txt (Settings.user_agent; only its first
ROBOTS_MAX_BYTES are read, as RFC 9309 allows), a size cap, bounded redirects. Parsing
robots.txt, sitemaps and pages runs off the event loop: a huge file stalls no other fetch.
URLs resolving to loopback, private, link-local or other non-public addresses are refused
unless Settings.allow_private_urls (SSRF guard); unspecified, multicast and reserved addresses
are refused always. The check runs in the connection's DNS resolver, so it covers redirect
targets and DNS answers that change between a check and the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal, TypeAlias
from urllib.parse import SplitResult, quote, urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from rag_core.config import Settings
from rag_core.documents import Document, SourceFailure
from rag_core.ingest.html_text import html_to_page

log = logging.getLogger(__name__)

LoadResult: TypeAlias = Document | SourceFailure
Kind: TypeAlias = Literal["markdown", "html", "text", "xml"]

MARKDOWN_SUFFIXES = (".md", ".mdx", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
TEXT_SUFFIXES = (".txt", ".rst")
MAX_SITEMAP_DEPTH = 5
MAX_RETRY_AFTER_S = 30.0  # a server asking for a longer pause gets a failure, not a stalled index
# RFC 9309 lets crawlers ignore what follows the first 500 KiB (Google does): a bigger robots.txt
# would only cost parsing time and a slower check per page.
ROBOTS_MAX_BYTES = 500 * 1024

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPT = "text/html, application/xhtml+xml, text/markdown, text/plain;q=0.9, */*;q=0.5"
_READ_CHUNK = 64 * 1024
# Sitemap XML is fed to the parser in pieces: each piece is one short hold of the GIL, so the
# event loop's thread keeps running while a thread parses megabytes.
_PARSE_CHUNK = 64 * 1024
# Below this size, checking a URL against robots.txt takes well under a millisecond: no thread.
_ROBOTS_INLINE_BYTES = 32 * 1024
# Crawl links to these are not pages: don't spend the page budget on them.
_NOT_PAGE_SUFFIXES = (
    ".pdf", ".zip", ".gz", ".tgz", ".tar", ".whl", ".exe", ".dmg", ".png", ".jpg", ".jpeg",
    ".gif", ".svg", ".webp", ".ico", ".css", ".js", ".json", ".xml", ".mp3", ".mp4", ".webm",
    ".woff", ".woff2", ".ttf",
)  # fmt: skip


async def load_sources(specs: Sequence[str], settings: Settings) -> AsyncIterator[LoadResult]:
    """Load every spec (see the module docstring) concurrently, yielding pages as they are ready."""
    # Bounded, so a slow consumer (the embedder) holds back the fetchers instead of memory filling.
    queue: asyncio.Queue[LoadResult | None] = asyncio.Queue(maxsize=2 * settings.fetch_concurrency)

    async with _Web(settings) as web:

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
    spec: str, settings: Settings, web: _Web, emit: Callable[[LoadResult], Awaitable[None]]
) -> None:
    if spec.startswith("crawl:"):
        root = spec.removeprefix("crawl:").strip()
        if not root.startswith(("http://", "https://")):
            await emit(SourceFailure(spec, "a crawl needs an http(s) root URL", spec))
        elif problem := _url_problem(root):
            await emit(SourceFailure(spec, problem, spec))
        else:
            await web.crawl(root, spec, emit)
    elif match := re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", spec):
        if match.group(1).lower() not in ("http", "https"):
            await emit(SourceFailure(spec, f"refused: unsupported URL scheme {match[1]!r}", spec))
        elif problem := _url_problem(spec):
            await emit(SourceFailure(spec, problem, spec))
        else:
            await web.load_url(spec, emit)
    else:
        folder = load_folder(Path(spec), spec, settings.docs_base_url, settings.fetch_max_bytes)
        for item in await asyncio.to_thread(list, folder):  # file reads off the event loop
            await emit(item)


# --- local files ---


def load_folder(root: Path, spec: str, base_url: str, max_bytes: int) -> Iterator[LoadResult]:
    """Every supported file under `root` (or `root` itself if it is a file), in sorted order."""
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


def _load_file(path: Path, rel: str, spec: str, base_url: str, max_bytes: int) -> LoadResult:
    doc_id = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return SourceFailure(doc_id, f"too large: {size} bytes (limit {max_bytes})", spec)
        data = path.read_bytes()
        kind = _kind_from_suffix(path.name) or "text"
        text = _decode(data, None, html=kind == "html")
        if kind == "markdown":
            md = parse_markdown(text)
            url = _public_url(base_url, md.meta.get("id") or rel, path)
            title = md.meta.get("title") or md.h1 or path.stem
            doc = Document(doc_id, url, title, md.body, "markdown", spec, md.anchors)
        elif kind == "html":
            url = _public_url(base_url, rel, path)
            page = html_to_page(text, url)
            title = page.title or path.stem
            doc = Document(doc_id, url, title, page.text, "markdown", spec, page.anchors)
        else:
            url = _public_url(base_url, rel, path)
            doc = Document(doc_id, url, path.stem, text.strip(), "text", spec)
        return _non_empty(doc)
    except OSError as exc:
        return SourceFailure(doc_id, f"unreadable: {exc.strerror or exc}", spec)
    except _PageError as exc:
        return SourceFailure(doc_id, exc.reason, spec)
    except Exception as exc:  # a bug on one file must not stop the rest of the folder
        return SourceFailure(doc_id, _unexpected(doc_id, exc), spec)


def _public_url(base_url: str, rel: str, path: Path) -> str:
    if not base_url:
        return path.as_uri()
    # surrogateescape: a file name that is not UTF-8 (`caf\xe9.md`) keeps its bytes, %-escaped.
    return base_url.rstrip("/") + "/" + quote(rel.lstrip("/"), safe="/#", errors="surrogateescape")


# --- text formats ---


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


def _kind_from_suffix(name: str) -> Kind | None:
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


def _decode(data: bytes, charset: str | None, *, html: bool = False) -> str:
    """Bytes -> str: the declared charset (for HTML also a <meta charset>), else strict UTF-8."""
    if not data.strip():
        raise _PageError("empty")
    if html and not charset and (meta := _META_CHARSET.search(data[:4096])):
        charset = meta.group(1).decode("ascii")
    if not charset and b"\x00" in data[:8192]:
        raise _PageError("binary content, not text")
    charset = charset or "utf-8"
    try:
        # utf-8-sig also drops a byte order mark.
        text = data.decode("utf-8-sig" if charset.lower() in ("utf-8", "utf8") else charset)
    except LookupError:
        raise _PageError(f"unknown charset {charset!r}") from None
    except UnicodeError:  # also the idna codec's errors, which are not UnicodeDecodeError
        raise _PageError(f"not valid {charset} text") from None
    return text.replace("\r\n", "\n")


def _non_empty(doc: Document) -> Document:
    if not doc.text.strip():
        raise _PageError("empty: no text")
    return doc


# --- the web ---


class _PageError(Exception):
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


def _unexpected(where: str, exc: BaseException) -> str:
    """A one-line reason for an error nobody planned for; the traceback is logged at DEBUG only.

    A RecursionError's traceback alone is thousands of lines: one bad page must not flood the log.
    """
    lines = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
    log.warning("%s: unexpected error: %s", where, detail)
    log.debug("%s: traceback of the unexpected error", where, exc_info=exc)
    return f"unexpected error: {detail}"


def _split(url: str) -> SplitResult:
    """urlsplit, refusing what cannot be a URL (`http://[host]/`, a port that is not a number)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: raises here on a bad port
    except ValueError as exc:
        raise _PageError(f"invalid URL: {exc}") from None
    return parts


def _url_problem(url: str) -> str | None:
    """Why `url` is not a usable URL, or None."""
    try:
        if not _split(url).hostname:
            return "invalid URL: no host"
    except _PageError as exc:
        return exc.reason
    return None


@dataclass(frozen=True)
class _Reply:
    """A successful (2xx) response, read in full (or up to a cap, when `truncated`)."""

    url: str  # final URL, no fragment
    kind: Kind
    charset: str | None
    body: bytes
    truncated: bool = False


@dataclass
class _Clock:
    """The time one page has left, over all its tries and redirects."""

    limit: float
    left: float = field(init=False)

    def __post_init__(self) -> None:
        self.left = self.limit

    def expired(self, last_error: str = "") -> _PageError:
        ran_out = f"page deadline of {self.limit:g} s reached (FETCH_PAGE_DEADLINE_S)"
        return _PageError(f"{last_error}; {ran_out}" if last_error else f"timed out: {ran_out}")


@dataclass
class _Robots:
    """A site's robots.txt rules, and their size (a big file makes each check slow)."""

    rules: RobotFileParser
    size: int = 0


class _Web:
    """The HTTP side of one load_sources call: one session, shared limits and robots.txt cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.fetch_concurrency)
        self._robots: dict[str, asyncio.Task[_Robots | str]] = {}

    async def __aenter__(self) -> _Web:
        self._resolver = _GuardedResolver(allow_private=self.settings.allow_private_urls)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=self._resolver),
            headers={"User-Agent": self.settings.user_agent, "Accept": _ACCEPT},
            timeout=aiohttp.ClientTimeout(total=self.settings.fetch_timeout_s),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._robots.values():
            task.cancel()
        await asyncio.gather(*self._robots.values(), return_exceptions=True)
        await self.session.close()
        await self._resolver.close()

    # -- specs --

    async def load_url(self, spec: str, emit: Callable[[LoadResult], Awaitable[None]]) -> None:
        """A page, or a sitemap whose pages are loaded."""
        sitemap_by_name = urlsplit(spec).path.lower().endswith(".xml")
        try:
            reply = await self.fetch(spec)
        except _PageError as exc:
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
        self, top: _Reply, spec: str, emit: Callable[[LoadResult], Awaitable[None]]
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

        async def read(reply: _Reply, depth: int) -> list[str]:
            """Parse one sitemap into `found`; the new child sitemaps of an index."""
            async with parsing:
                try:
                    # Off the event loop: a sitemap of megabytes takes a good part of a second.
                    return await asyncio.to_thread(
                        _read_sitemap, reply.body, found, index_allowed=depth < MAX_SITEMAP_DEPTH
                    )
                except _PageError as exc:
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
                    reply = await self.fetch(url)
                except _PageError as exc:
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
            reply = await self.fetch(url)
            if reply.kind == "xml":
                raise _PageError("unsupported content type: XML")
            # Parsing a big page takes a while: off the event loop, so other fetches keep going.
            return await asyncio.to_thread(_reply_to_document, reply, spec)
        except _PageError as exc:
            return SourceFailure(url, exc.reason, spec, gone=exc.gone), []
        except Exception as exc:  # a parser bug on one page must not stop the others
            return SourceFailure(url, _unexpected(url, exc), spec), []

    async def _to_result(self, reply: _Reply, spec: str) -> LoadResult:
        try:
            doc, _ = await asyncio.to_thread(_reply_to_document, reply, spec)
            return doc
        except _PageError as exc:
            return SourceFailure(reply.url, exc.reason, spec)
        except Exception as exc:
            return SourceFailure(reply.url, _unexpected(reply.url, exc), spec)

    # -- HTTP --

    async def fetch(
        self,
        url: str,
        *,
        check_robots: bool = True,
        max_bytes: int | None = None,
        truncate: bool = False,
    ) -> _Reply:
        """GET a URL: guarded, robots-checked, retried, following a bounded number of redirects.

        The body is capped at `max_bytes` (default fetch_max_bytes): a longer one fails the
        page, or with `truncate` is cut there. All tries and redirects share one deadline.
        """
        clock = _Clock(self.settings.fetch_page_deadline_s)
        limit = max_bytes or self.settings.fetch_max_bytes
        url = _defrag(url)
        visited: set[str] = set()
        for _ in range(self.settings.fetch_max_redirects + 1):
            if url in visited:
                raise _PageError("redirect loop")
            visited.add(url)
            _check_url(url, allow_private=self.settings.allow_private_urls)
            if check_robots:
                await self._check_robots(url)
            result = await self._get_with_retries(url, clock, limit, truncate)
            if isinstance(result, _Reply):
                return result
            url = result
        raise _PageError(f"too many redirects (more than {self.settings.fetch_max_redirects})")

    async def _get_with_retries(
        self, url: str, clock: _Clock, limit: int, truncate: bool
    ) -> _Reply | str:
        attempt = 0
        while True:
            try:
                return await self._get(url, clock, limit, truncate)
            except _PageError as exc:
                if not exc.retryable or attempt >= self.settings.fetch_retries:
                    if exc.retryable and self.settings.fetch_retries:
                        exc.reason += f" (after {attempt} retries)"
                    raise
                delay = self.settings.fetch_backoff_s * 2**attempt
                if exc.retry_after is not None:
                    if exc.retry_after > MAX_RETRY_AFTER_S:
                        exc.reason += f" (Retry-After {exc.retry_after:.0f} s is too long)"
                        raise
                    delay = max(delay, exc.retry_after)
                if delay >= clock.left:  # no time left for another try
                    raise clock.expired(f"{exc.reason} (after {attempt} retries)") from None
                log.debug("%s: %s, retrying in %.2f s", url, exc.reason, delay)
                attempt += 1
                await asyncio.sleep(delay)
                clock.left -= delay

    async def _get(self, url: str, clock: _Clock, limit: int, truncate: bool) -> _Reply | str:
        """One GET within the page's time left: the page, or where a redirect points to."""
        async with self._slots:  # waiting for a free slot is not the page's time
            if clock.left <= 0:
                raise clock.expired()
            start = time.monotonic()
            deadline = asyncio.timeout(clock.left)
            try:
                async with deadline:
                    return await self._request(url, limit, truncate)
            except TimeoutError:
                if deadline.expired():
                    raise clock.expired() from None
                raise _PageError(
                    f"timed out after {self.settings.fetch_timeout_s:g} s", retryable=True
                ) from None
            finally:
                clock.left -= time.monotonic() - start

    async def _request(self, url: str, limit: int, truncate: bool) -> _Reply | str:
        try:
            async with self.session.get(url, allow_redirects=False) as resp:
                status = resp.status
                if status in _REDIRECT_STATUSES and "Location" in resp.headers:
                    try:
                        return _defrag(urljoin(url, resp.headers["Location"]))
                    except ValueError:
                        raise _PageError("invalid redirect URL") from None
                if status == 429 or status >= 500:
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    raise _PageError(
                        f"HTTP {status}", status=status, retryable=True, retry_after=retry_after
                    )
                if not 200 <= status < 300:
                    raise _PageError(f"HTTP {status}", status=status)
                declared = resp.headers.get("Content-Type", "")
                kind = _kind_from_content_type(resp.content_type if declared else "", url)
                if kind is None:
                    raise _PageError(f"unsupported content type: {resp.content_type}")
                body, truncated = await _read_capped(resp, limit, truncate=truncate)
                return _Reply(url, kind, resp.charset, body, truncated)
        except TimeoutError:
            raise  # _get tells a slow try from the page's deadline
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _RefusedAddress):
                raise _PageError(str(exc.os_error)) from None
            if isinstance(exc, aiohttp.ClientSSLError):
                raise _PageError(f"TLS error: {exc}") from None
            raise _PageError(f"cannot connect: {exc}", retryable=True) from None
        except (aiohttp.InvalidURL, ValueError):
            raise _PageError("invalid URL") from None
        except aiohttp.ClientError as exc:
            raise _PageError(
                f"network error: {exc or type(exc).__name__}", retryable=True
            ) from None

    async def _check_robots(self, url: str) -> None:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._robots:  # one fetch per site, shared by concurrent pages
            self._robots[origin] = asyncio.create_task(self._load_robots(origin))
        # shield: a cancelled page must not cancel the fetch other pages wait on
        robots = await asyncio.shield(self._robots[origin])
        if isinstance(robots, str):
            raise _PageError(robots)
        agent = self.settings.user_agent
        if robots.size <= _ROBOTS_INLINE_BYTES:
            allowed = robots.rules.can_fetch(agent, url)
        else:  # each check walks every rule: milliseconds on a big file
            allowed = await asyncio.to_thread(robots.rules.can_fetch, agent, url)
        if not allowed:
            raise _PageError("disallowed by robots.txt")

    async def _load_robots(self, origin: str) -> _Robots | str:
        """The site's rules, or why nothing may be fetched (RFC 9309: unreachable = disallow)."""
        try:
            reply = await self.fetch(
                origin + "/robots.txt",
                check_robots=False,
                max_bytes=ROBOTS_MAX_BYTES,
                truncate=True,
            )
        except _PageError as exc:
            if exc.reason.startswith("refused"):
                return exc.reason
            if exc.retryable:  # 5xx, timeouts, network errors, after the retries
                return f"robots.txt unreachable: {exc.reason}"
            return _Robots(_parse_robots(origin, b""))  # missing (4xx): everything is allowed
        if reply.kind not in ("text", "markdown"):  # e.g. an HTML "not found" page served as 200
            return _Robots(_parse_robots(origin, b""))
        body = reply.body
        if reply.truncated:  # the last line may be cut in the middle of a path
            body = body[: body.rfind(b"\n") + 1]
        # Off the event loop: the stdlib parser takes about a second per megabyte.
        return _Robots(await asyncio.to_thread(_parse_robots, origin, body), len(body))


def _parse_robots(origin: str, body: bytes) -> RobotFileParser:
    rules = RobotFileParser(origin + "/robots.txt")
    rules.parse(body.decode("utf-8", errors="replace").splitlines())
    return rules


def _pages_cap_reason(max_pages: int) -> str:
    return f"stopped at {max_pages} pages (SOURCE_MAX_PAGES)"


def _defrag(url: str) -> str:
    try:
        return urldefrag(url).url
    except ValueError as exc:
        raise _PageError(f"invalid URL: {exc}") from None


async def _read_capped(
    resp: aiohttp.ClientResponse, limit: int, *, truncate: bool = False
) -> tuple[bytes, bool]:
    """The body, refusing to read past `limit` bytes (decompressed), or with `truncate` cut
    there; and whether it was cut."""
    if not truncate and resp.content_length is not None and resp.content_length > limit:
        raise _PageError(f"too large: {resp.content_length} bytes (limit {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            if not truncate:
                raise _PageError(f"too large: over {limit} bytes")
            chunks.append(chunk[: len(chunk) - (size - limit)])
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def _kind_from_content_type(content_type: str, url: str) -> Kind | None:
    """What a reply holds; None for anything that is not a text format we read."""
    by_name = _kind_from_suffix(urlsplit(url).path)
    if content_type in ("text/html", "application/xhtml+xml"):
        return "html"
    if content_type in ("text/markdown", "text/x-markdown"):
        return "markdown"
    if content_type == "text/plain":
        # Raw Markdown is often served as text/plain (raw.githubusercontent.com does).
        return by_name if by_name in ("markdown", "xml") else "text"
    if content_type in ("application/xml", "text/xml"):
        return "xml"
    if content_type in ("", "application/octet-stream", "binary/octet-stream"):
        return by_name  # no useful type given: trust the URL's suffix, if any
    return None


def _reply_to_document(reply: _Reply, spec: str) -> tuple[Document, list[str]]:
    text = _decode(reply.body, reply.charset, html=reply.kind == "html")
    url = reply.url
    fallback_title = _title_from_url(url)
    links: list[str] = []
    if reply.kind == "html":
        page = html_to_page(text, url)
        title = page.title or fallback_title
        doc = Document(url, url, title, page.text, "markdown", spec, page.anchors)
        links = page.links
    elif reply.kind == "markdown":
        md = parse_markdown(text)
        title = md.meta.get("title") or md.h1 or fallback_title
        doc = Document(url, url, title, md.body, "markdown", spec, md.anchors)
    else:
        doc = Document(url, url, fallback_title, text.strip(), "text", spec)
    return _non_empty(doc), links


def _title_from_url(url: str) -> str:
    parts = urlsplit(url)
    name = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if name else parts.hostname or url


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
                        raise _PageError(f"unsupported content type: XML <{tag}> is not a sitemap")
                    if kind == "sitemapindex" and not index_allowed:
                        raise _PageError("sitemap indexes nested too deep")
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
        raise _PageError(f"invalid XML: {exc}") from None
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
            link = _split(url)
        except _PageError:
            return False
        return (
            (link.scheme, link.hostname, link.port) == origin
            and (link.path.startswith(prefix) or url == root)
            and not link.path.lower().endswith(_NOT_PAGE_SUFFIXES)
        )

    return in_scope


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- SSRF guard ---

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why connecting to `ip` is refused ('a private address'), or None when it is allowed."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    # Never a web server: refused even when private addresses are allowed.
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    for kind, is_kind in (
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a private", ip.is_private),
    ):
        if is_kind:
            return None if allow_private else f"{kind} address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global and not allow_private:
        return "a non-public address"  # e.g. carrier-grade NAT 100.64.0.0/10
    return None


def _check_url(url: str, *, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and IP-literal hosts the guard refuses (names: see the resolver)."""
    parts = _split(url)
    if parts.scheme not in ("http", "https"):
        raise _PageError(f"refused: unsupported URL scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise _PageError("invalid URL: no host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: _GuardedResolver checks every address it resolves to
    # aiohttp does not call the resolver for IP literals, so they are checked here.
    if refusal := _refusal(ip, allow_private=allow_private):
        raise _PageError(f"refused: {host} is {refusal}")


class _RefusedAddress(OSError):
    """The resolver found only refused addresses for a host."""


class _GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, minus the addresses the SSRF guard refuses.

    Filtering at resolution time, inside the connection, means the address checked is the
    address connected to: a DNS answer that changes after a check (rebinding) gains nothing.
    """

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        allowed: list[ResolveResult] = []
        refusals: list[str] = []
        for result in await self._inner.resolve(host, port, family):
            ip = ipaddress.ip_address(result["host"].split("%", 1)[0])
            if refusal := _refusal(ip, allow_private=self._allow_private):
                refusals.append(refusal)
            else:
                allowed.append(result)
        if not allowed:
            reason = refusals[0] if refusals else "no address"
            raise _RefusedAddress(f"refused: {host} resolves to {reason}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
