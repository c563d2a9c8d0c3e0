"""Fetching web pages for one load_sources call: one aiohttp session, polite and capped.

Bounded concurrency, per-request timeouts, retries with exponential backoff
(Settings.fetch_backoff_s, doubled each time) on 429/5xx/timeouts/connection errors (a
Retry-After up to MAX_RETRY_AFTER_S is honoured; a longer one fails the page), a total time per
page over its tries and redirects (Settings.fetch_page_deadline_s; waiting for a free connection
slot does not count), robots.txt (Settings.user_agent; only its first ROBOTS_MAX_BYTES are read,
as RFC 9309 allows), a size cap, bounded redirects; every URL and address passes the SSRF guard
(url_guard.py). Parsing robots.txt runs off the event loop: a huge file stalls no other fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp

from ..config import Settings
from .formats import Kind, PageError, kind_from_suffix
from .url_guard import GuardedResolver, RefusedAddress, check_url

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 30.0  # a server asking for a longer pause gets a failure, not a stalled index
# RFC 9309 lets crawlers ignore what follows the first 500 KiB (Google does): a bigger robots.txt
# would only cost parsing time and a slower check per page.
ROBOTS_MAX_BYTES = 500 * 1024

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPT = "text/html, application/xhtml+xml, text/markdown, text/plain;q=0.9, */*;q=0.5"
_READ_CHUNK = 64 * 1024
# Below this size, checking a URL against robots.txt takes well under a millisecond: no thread.
_ROBOTS_INLINE_BYTES = 32 * 1024


@dataclass(frozen=True)
class Reply:
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

    def expired(self, last_error: str = "") -> PageError:
        ran_out = f"page deadline of {self.limit:g} s reached (FETCH_PAGE_DEADLINE_S)"
        return PageError(f"{last_error}; {ran_out}" if last_error else f"timed out: {ran_out}")


@dataclass
class _Robots:
    """A site's robots.txt rules, and their size (a big file makes each check slow)."""

    rules: RobotFileParser
    size: int = 0


class Web:
    """The HTTP side of one load_sources call: one session, shared limits and robots.txt cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.fetch_concurrency)
        self._robots: dict[str, asyncio.Task[_Robots | str]] = {}

    async def __aenter__(self) -> Web:
        self._resolver = GuardedResolver(allow_private=self.settings.allow_private_urls)
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

    async def fetch(
        self,
        url: str,
        *,
        check_robots: bool = True,
        max_bytes: int | None = None,
        truncate: bool = False,
    ) -> Reply:
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
                raise PageError("redirect loop")
            visited.add(url)
            check_url(url, allow_private=self.settings.allow_private_urls)
            if check_robots:
                await self._check_robots(url)
            result = await self._get_with_retries(url, clock, limit, truncate)
            if isinstance(result, Reply):
                return result
            url = result
        raise PageError(f"too many redirects (more than {self.settings.fetch_max_redirects})")

    async def _get_with_retries(
        self, url: str, clock: _Clock, limit: int, truncate: bool
    ) -> Reply | str:
        attempt = 0
        while True:
            try:
                return await self._get(url, clock, limit, truncate)
            except PageError as exc:
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

    async def _get(self, url: str, clock: _Clock, limit: int, truncate: bool) -> Reply | str:
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
                raise PageError(
                    f"timed out after {self.settings.fetch_timeout_s:g} s", retryable=True
                ) from None
            finally:
                clock.left -= time.monotonic() - start

    async def _request(self, url: str, limit: int, truncate: bool) -> Reply | str:
        try:
            async with self.session.get(url, allow_redirects=False) as resp:
                status = resp.status
                if status in _REDIRECT_STATUSES and "Location" in resp.headers:
                    try:
                        return _defrag(urljoin(url, resp.headers["Location"]))
                    except ValueError:
                        raise PageError("invalid redirect URL") from None
                if status == 429 or status >= 500:
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    raise PageError(
                        f"HTTP {status}", status=status, retryable=True, retry_after=retry_after
                    )
                if not 200 <= status < 300:
                    raise PageError(f"HTTP {status}", status=status)
                declared = resp.headers.get("Content-Type", "")
                kind = _kind_from_content_type(resp.content_type if declared else "", url)
                if kind is None:
                    raise PageError(f"unsupported content type: {resp.content_type}")
                body, truncated = await _read_capped(resp, limit, truncate=truncate)
                return Reply(url, kind, resp.charset, body, truncated)
        except TimeoutError:
            raise  # _get tells a slow try from the page's deadline
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise PageError(str(exc.os_error)) from None
            if isinstance(exc, aiohttp.ClientSSLError):
                raise PageError(f"TLS error: {exc}") from None
            raise PageError(f"cannot connect: {exc}", retryable=True) from None
        except (aiohttp.InvalidURL, ValueError):
            raise PageError("invalid URL") from None
        except aiohttp.ClientError as exc:
            raise PageError(f"network error: {exc or type(exc).__name__}", retryable=True) from None

    async def _check_robots(self, url: str) -> None:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._robots:  # one fetch per site, shared by concurrent pages
            self._robots[origin] = asyncio.create_task(self._load_robots(origin))
        # shield: a cancelled page must not cancel the fetch other pages wait on
        robots = await asyncio.shield(self._robots[origin])
        if isinstance(robots, str):
            raise PageError(robots)
        agent = self.settings.user_agent
        if robots.size <= _ROBOTS_INLINE_BYTES:
            allowed = robots.rules.can_fetch(agent, url)
        else:  # each check walks every rule: milliseconds on a big file
            allowed = await asyncio.to_thread(robots.rules.can_fetch, agent, url)
        if not allowed:
            raise PageError("disallowed by robots.txt")

    async def _load_robots(self, origin: str) -> _Robots | str:
        """The site's rules, or why nothing may be fetched (RFC 9309: unreachable = disallow)."""
        try:
            reply = await self.fetch(
                origin + "/robots.txt",
                check_robots=False,
                max_bytes=ROBOTS_MAX_BYTES,
                truncate=True,
            )
        except PageError as exc:
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


def _defrag(url: str) -> str:
    try:
        return urldefrag(url).url
    except ValueError as exc:
        raise PageError(f"invalid URL: {exc}") from None


async def _read_capped(
    resp: aiohttp.ClientResponse, limit: int, *, truncate: bool = False
) -> tuple[bytes, bool]:
    """The body, refusing to read past `limit` bytes (decompressed), or with `truncate` cut
    there; and whether it was cut."""
    if not truncate and resp.content_length is not None and resp.content_length > limit:
        raise PageError(f"too large: {resp.content_length} bytes (limit {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            if not truncate:
                raise PageError(f"too large: over {limit} bytes")
            chunks.append(chunk[: len(chunk) - (size - limit)])
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def _kind_from_content_type(content_type: str, url: str) -> Kind | None:
    """What a reply holds; None for anything that is not a text format we read."""
    by_name = kind_from_suffix(urlsplit(url).path)
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
