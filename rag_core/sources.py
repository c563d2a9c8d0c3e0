"""Load documentation sources as Documents: local folders, web pages, sitemaps, site crawls.

A source is given as one spec string (Settings.docs_sources, the `index` command, /reindex):

- `docs/` or `docs/page.md`: a local folder (read recursively) or one file. Markdown
  (.md .mdx .markdown, YAML front matter aware), HTML (.html .htm) and text (.txt .rst); hidden
  files and folders and other suffixes are skipped. A file's public URL is Settings.docs_base_url
  plus its front-matter `id`, else plus its path relative to the folder; without a base URL it is
  the file's `file://` URI. doc_id is the file's absolute path.
- `https://site/page`: one page. It is read as a sitemap instead when the URL path ends in `.xml`
  or the reply is XML whose root is <urlset> or <sitemapindex>; sitemap indexes are followed
  (nested up to MAX_SITEMAP_DEPTH levels) and every listed page is loaded.
- `crawl:https://site/docs/`: a crawl from that page following <a href> links that stay on the
  same scheme, host and port and under the root's folder (`/docs/` here), up to
  Settings.crawl_max_pages pages.
- anything else with a scheme (`ftp://`, `file://`) is refused.

Web pages: doc_id and url are the final URL (after redirects) without its fragment. Only HTML,
Markdown and plain text are read; HTML becomes Markdown (see html_text.py).

Each page becomes a Document or a SourceFailure, yielded as soon as it is ready; nothing raises
out of load_sources. A failure's `gone` is True only for a page answering 404/410, so a flaky
network or a missing sitemap never deletes indexed pages.

Fetching is polite and guarded: bounded concurrency, per-request timeouts, retries with
exponential backoff (Settings.fetch_backoff_s, doubled each time) on 429/5xx/timeouts/connection
errors (a Retry-After up to MAX_RETRY_AFTER_S is honoured; a longer one fails the page),
robots.txt (Settings.user_agent), a size cap, bounded redirects. URLs resolving to loopback,
private, link-local or other non-public addresses are refused unless Settings.allow_private_urls
(SSRF guard); unspecified, multicast and reserved addresses are refused always. The check runs
in the connection's DNS resolver, so it covers redirect targets and DNS answers that change
between a check and the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal, TypeAlias
from urllib.parse import quote, urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from rag_core.config import Settings
from rag_core.documents import Document, SourceFailure
from rag_core.html_text import html_to_page

log = logging.getLogger(__name__)

LoadResult: TypeAlias = Document | SourceFailure
Kind: TypeAlias = Literal["markdown", "html", "text", "xml"]

MARKDOWN_SUFFIXES = (".md", ".mdx", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
TEXT_SUFFIXES = (".txt", ".rst")
MAX_SITEMAP_DEPTH = 5
MAX_RETRY_AFTER_S = 30.0  # a server asking for a longer pause gets a failure, not a stalled index

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPT = "text/html, application/xhtml+xml, text/markdown, text/plain;q=0.9, */*;q=0.5"
_READ_CHUNK = 64 * 1024
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
                log.exception("loading %s failed", spec)
                await queue.put(SourceFailure(spec, f"unexpected error: {exc!r}", spec))
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
            return
        await web.crawl(root, spec, emit)
    elif match := re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", spec):
        if match.group(1).lower() in ("http", "https"):
            await web.load_url(spec, emit)
        else:
            await emit(SourceFailure(spec, f"refused: unsupported URL scheme {match[1]!r}", spec))
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


def _public_url(base_url: str, rel: str, path: Path) -> str:
    if not base_url:
        return path.as_uri()
    return base_url.rstrip("/") + "/" + quote(rel.lstrip("/"), safe="/#")


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
    except UnicodeDecodeError:
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


@dataclass(frozen=True)
class _Reply:
    """A successful (2xx) response, read in full."""

    url: str  # final URL, no fragment
    kind: Kind
    charset: str | None
    body: bytes


class _Web:
    """The HTTP side of one load_sources call: one session, shared limits and robots.txt cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.fetch_concurrency)
        self._robots: dict[str, asyncio.Task[RobotFileParser | str]] = {}

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
        """A page, or a sitemap whose pages are all loaded."""
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
        """Follow links from `root` within its site and folder, up to crawl_max_pages pages."""
        await self._load_pages(
            [urldefrag(root).url],
            spec,
            emit,
            follow=_crawl_scope(root),
            max_pages=self.settings.crawl_max_pages,
        )

    async def _sitemap_pages(
        self, top: _Reply, spec: str, emit: Callable[[LoadResult], Awaitable[None]]
    ) -> list[str]:
        """Page URLs of a sitemap, following sitemap indexes; failing sitemaps are reported."""
        pages: dict[str, None] = {}  # an ordered set
        seen = {top.url}

        async def walk(reply: _Reply, depth: int) -> None:
            source = spec if depth == 0 else reply.url
            try:
                root_tag, locs = _parse_sitemap(reply.body)
            except _PageError as exc:
                await emit(SourceFailure(source, exc.reason, spec))
                return
            if root_tag == "urlset":
                for loc in locs:
                    pages.setdefault(urldefrag(loc).url, None)
                return
            if depth >= MAX_SITEMAP_DEPTH:
                await emit(SourceFailure(source, "sitemap indexes nested too deep", spec))
                return
            children = [loc for loc in dict.fromkeys(locs) if loc not in seen]
            seen.update(children)
            await asyncio.gather(*(child(url, depth + 1) for url in children))

        async def child(url: str, depth: int) -> None:
            try:
                reply = await self.fetch(url)
            except _PageError as exc:
                await emit(SourceFailure(url, exc.reason, spec))
                return
            await walk(reply, depth)

        await walk(top, 0)
        return list(pages)

    async def _load_pages(
        self,
        urls: list[str],
        spec: str,
        emit: Callable[[LoadResult], Awaitable[None]],
        *,
        follow: Callable[[str], bool] | None = None,
        max_pages: int | None = None,
    ) -> None:
        """Fetch pages with a pool of workers; with `follow`, also the links it accepts."""
        todo: asyncio.Queue[str] = asyncio.Queue()
        queued: set[str] = set()  # URLs asked for, and the final URLs they redirected to
        loaded: set[str] = set()  # final URLs: two links redirecting to one page load it once
        budget = max_pages if max_pages is not None else len(urls)

        def add(url: str) -> None:
            nonlocal budget
            if url not in queued and budget > 0:
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
            log.exception("loading %s failed", url)
            return SourceFailure(url, f"unexpected error: {exc!r}", spec), []

    async def _to_result(self, reply: _Reply, spec: str) -> LoadResult:
        try:
            doc, _ = await asyncio.to_thread(_reply_to_document, reply, spec)
            return doc
        except _PageError as exc:
            return SourceFailure(reply.url, exc.reason, spec)

    # -- HTTP --

    async def fetch(self, url: str, *, check_robots: bool = True) -> _Reply:
        """GET a URL: guarded, robots-checked, retried, following a bounded number of redirects."""
        url = urldefrag(url).url
        visited: set[str] = set()
        for _ in range(self.settings.fetch_max_redirects + 1):
            if url in visited:
                raise _PageError("redirect loop")
            visited.add(url)
            _check_url(url, allow_private=self.settings.allow_private_urls)
            if check_robots:
                await self._check_robots(url)
            result = await self._get_with_retries(url)
            if isinstance(result, _Reply):
                return result
            url = result
        raise _PageError(f"too many redirects (more than {self.settings.fetch_max_redirects})")

    async def _get_with_retries(self, url: str) -> _Reply | str:
        attempt = 0
        while True:
            try:
                return await self._get(url)
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
                log.debug("%s: %s, retrying in %.2f s", url, exc.reason, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def _get(self, url: str) -> _Reply | str:
        """One GET: the page, or the absolute URL a redirect points to."""
        try:
            async with self._slots, self.session.get(url, allow_redirects=False) as resp:
                status = resp.status
                if status in _REDIRECT_STATUSES and "Location" in resp.headers:
                    return urldefrag(urljoin(url, resp.headers["Location"])).url
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
                body = await _read_capped(resp, self.settings.fetch_max_bytes)
                return _Reply(url, kind, resp.charset, body)
        except TimeoutError:
            raise _PageError(
                f"timed out after {self.settings.fetch_timeout_s:g} s", retryable=True
            ) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _RefusedAddress):
                raise _PageError(str(exc.os_error)) from None
            if isinstance(exc, aiohttp.ClientSSLError):
                raise _PageError(f"TLS error: {exc}") from None
            raise _PageError(f"cannot connect: {exc}", retryable=True) from None
        except aiohttp.InvalidURL:
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
        rules = await asyncio.shield(self._robots[origin])
        if isinstance(rules, str):
            raise _PageError(rules)
        if not rules.can_fetch(self.settings.user_agent, url):
            raise _PageError("disallowed by robots.txt")

    async def _load_robots(self, origin: str) -> RobotFileParser | str:
        """The site's rules, or why nothing may be fetched (RFC 9309: unreachable = disallow)."""
        rules = RobotFileParser(origin + "/robots.txt")
        try:
            reply = await self.fetch(origin + "/robots.txt", check_robots=False)
        except _PageError as exc:
            if exc.reason.startswith("refused"):
                return exc.reason
            if exc.retryable:  # 5xx, timeouts, network errors, after the retries
                return f"robots.txt unreachable: {exc.reason}"
            rules.parse([])  # missing (4xx) or unusable: everything is allowed
            return rules
        if reply.kind not in ("text", "markdown"):  # e.g. an HTML "not found" page served as 200
            rules.parse([])
            return rules
        rules.parse(reply.body.decode("utf-8", errors="replace").splitlines())
        return rules


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, refusing to read past `limit` bytes (decompressed)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise _PageError(f"too large: {resp.content_length} bytes (limit {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _PageError(f"too large: over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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


def _parse_sitemap(body: bytes) -> tuple[str, list[str]]:
    """('urlset' | 'sitemapindex', the <loc> URLs it lists)."""
    try:
        # The stdlib parser resolves no external entities; expat caps entity expansion.
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise _PageError(f"invalid XML: {exc}") from None
    tag = root.tag.rsplit("}", 1)[-1]  # drop the namespace
    if tag not in ("urlset", "sitemapindex"):
        raise _PageError(f"unsupported content type: XML <{tag}> is not a sitemap")
    locs = [(el.text or "").strip() for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "loc"]
    return tag, [loc for loc in locs if loc.startswith(("http://", "https://"))]


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
        link = urlsplit(url)
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
    parts = urlsplit(url)
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
