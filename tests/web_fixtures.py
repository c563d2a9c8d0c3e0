"""A real HTTP server on 127.0.0.1 serving canned replies, for tests that fetch web pages.

    async with LocalSite({
        "/": Reply.html("<h1>Home</h1>"),
        "/flaky": [Reply(status=500), Reply.html("<p>ok</p>")],  # 500, then 200 from then on
        "/slow": Reply.html("<p>late</p>", delay_s=2),  # answers after 2 s (timeouts)
        "/old": Reply.redirect("/"),
        "/stream": my_handler,  # any aiohttp handler, for everything else
    }) as site:
        site.url("/flaky")  # 'http://127.0.0.1:PORT/flaky'
        site.routes["/late"] = Reply.text("added after start")  # e.g. pages that need site.url()
        ...
        site.hits["/flaky"]  # requests served per path (a Counter)

A path that has no route answers 404. A list of replies is served in order, its last one repeated.
The `site` and `web_settings` fixtures (registered in tests/conftest.py) give a test one of each.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from rag_core.config import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Reply:
    """One canned HTTP response."""

    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/html; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long before answering

    @classmethod
    def html(cls, body: str, **kwargs: Any) -> Reply:
        return cls(body=body, **kwargs)

    @classmethod
    def text(cls, body: str, **kwargs: Any) -> Reply:
        return cls(body=body, content_type="text/plain; charset=utf-8", **kwargs)

    @classmethod
    def markdown(cls, body: str, **kwargs: Any) -> Reply:
        return cls(body=body, content_type="text/markdown; charset=utf-8", **kwargs)

    @classmethod
    def xml(cls, body: str, **kwargs: Any) -> Reply:
        return cls(body=body, content_type="application/xml", **kwargs)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status=status, headers={"Location": location})


Route = Reply | list[Reply] | Handler


class LocalSite:
    """Serves `routes` (request path -> Route) on 127.0.0.1 on a free port, for `async with`."""

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: Counter[str] = Counter()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")

    async def __aenter__(self) -> LocalSite:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.close()

    @property
    def port(self) -> int:
        assert self._server.port is not None
        return self._server.port

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path_qs if request.path_qs in self.routes else request.path
        self.hits[path] += 1
        route = self.routes.get(path)
        if route is None:
            return web.Response(status=404, text="not found")
        if callable(route):
            return await route(request)
        reply = route if isinstance(route, Reply) else route[min(self.hits[path], len(route)) - 1]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        headers = {"Content-Type": reply.content_type, **reply.headers}
        return web.Response(status=reply.status, body=body, headers=headers)


@pytest.fixture
async def site() -> AsyncIterator[LocalSite]:
    async with LocalSite() as local_site:
        yield local_site


@pytest.fixture
def web_settings(settings: Settings) -> Settings:
    """Small limits so every failure mode shows up in milliseconds."""
    return settings.model_copy(
        update={
            "fetch_timeout_s": 0.5,
            "fetch_retries": 2,
            "fetch_backoff_s": 0.01,
            "fetch_max_bytes": 50_000,
            "fetch_max_redirects": 3,
        }
    )
