"""The HTTP side every REST route shares: recording, bot-token checks, rate limits and 429s.

``Routing._serve`` wraps each REST handler (``rest.py``) so that every request is recorded
(``fake.requests``), authenticated, counted against its rate-limit bucket (``X-RateLimit-*``
headers, real 429s with ``Via``) or answered with an injected 429, and its ``ApiError``
turned into Discord's error body.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import rules
from .inspection import Inspection, route_matches
from .models import RecordedRequest
from .rules import ApiError

API_PREFIX = "/api/v10"


@dataclass
class RateLimit:
    """A fixed-window limit: ``limit`` requests per ``per`` seconds per route and major id."""

    limit: int = 50
    per: float = 1.0


@dataclass
class _Window:
    start: float
    used: int = 0


@dataclass
class _Injection:
    pattern: str
    count: int
    retry_after: float
    is_global: bool


@dataclass
class Call:
    """One REST request as a handler sees it."""

    request: web.Request
    match: Mapping[str, str]
    body: Any
    rec: RecordedRequest

    @property
    def json(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


Handler = Callable[[Call], Awaitable[tuple[int, Any]]]
WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Routing(Inspection):
    """Serves REST handlers with Discord's auth, rate limits and recording around them."""

    def _init_routing(self, rate_limit: RateLimit | None) -> None:
        self.default_rate_limit = rate_limit or RateLimit()
        self._rate_limits: list[tuple[str, RateLimit]] = []
        self._windows: dict[tuple[str, str], _Window] = {}
        self._injections: list[_Injection] = []

    def set_rate_limit(self, pattern: str, limit: int, per: float) -> None:
        """Use ``limit`` requests per ``per`` s for routes matching ``pattern`` (see inject_429)."""
        self._rate_limits.insert(0, (pattern, RateLimit(limit, per)))

    def inject_429(
        self, pattern: str, count: int = 1, retry_after: float = 0.05, *, is_global: bool = False
    ) -> None:
        """Answer the next ``count`` requests matching ``pattern`` with a 429 (with ``Via``).

        ``pattern`` is fnmatch-style, optionally prefixed by a method, matched against the
        requested path or the route template (both without ``/api/v10``), e.g.
        ``"POST /channels/*/messages"`` or ``"PATCH /webhooks/{application_id}/*"``.
        """
        self._injections.append(_Injection(pattern, count, retry_after, is_global))

    # ================================================================== serving

    def _serve(self, app: web.Application, routes: list[tuple[str, str, Handler, bool]]) -> None:
        """Add ``(method, route template, handler, needs a bot token)`` routes under
        ``/api/v10``; any other path is answered 404 and recorded as an unknown route."""
        for method, template, handler, auth in routes:
            app.router.add_route(method, API_PREFIX + template, self._wrap(template, handler, auth))
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[str]]:
        if request.content_type.startswith("multipart/"):
            body, files = None, []
            reader = await request.multipart()
            async for part in reader:
                if getattr(part, "name", None) == "payload_json":
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    await part.read()  # type: ignore[union-attr]
                    files.append(getattr(part, "filename", None) or str(getattr(part, "name", "")))
            return body, files
        text = await request.text()
        if not text:
            return None, []
        try:
            return json.loads(text), []
        except ValueError:
            return text, []

    def _record(
        self, request: web.Request, route: str, body: Any, files: list[str]
    ) -> RecordedRequest:
        path = request.path.removeprefix(API_PREFIX)
        rec = RecordedRequest(
            at=self.now(),
            method=request.method,
            path=path,
            route=route,
            params=dict(request.query),
            json=body,
            files=files,
        )
        self.requests.append(rec)
        return rec

    def _respond(
        self, rec: RecordedRequest, status: int, payload: Any, headers: dict[str, str]
    ) -> web.Response:
        rec.status, rec.response = status, payload
        if rec.interaction is not None:
            rec.interaction.requests.append(rec)
            rec.interaction.last_activity = rec.at
        self._notify()
        if status == 204 or payload is None:
            return web.Response(status=204, headers=headers)
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            headers={**headers, "Content-Type": "application/json"},
        )

    def _wrap(self, template: str, handler: Handler, auth: bool) -> WebHandler:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            body, files = await self._read_body(request)
            rec = self._record(request, template, body, files)
            rec.interaction = self._interactions_by_token.get(request.match_info.get("token", ""))
            call = Call(request, request.match_info, body, rec)
            headers: dict[str, str] = {}
            try:
                if auth:
                    self._check_auth(request)
                if (injected := self._take_injection(rec)) is not None:
                    rec.injected = True
                    return self._respond(
                        rec, 429, *self._too_many(injected.retry_after, injected.is_global)
                    )
                headers, retry_after = self._rate_limit(template, rec, request.match_info)
                if retry_after is not None:
                    body, extra = self._too_many(retry_after, False)
                    return self._respond(rec, 429, body, {**headers, **extra})
                status, payload = await handler(call)
            except ApiError as error:
                status, payload = error.status, error.payload()
            return self._respond(rec, status, payload, headers)

        return endpoint

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        body, files = await self._read_body(request)
        rec = self._record(request, "?", body, files)
        rec.unknown = True
        self.unknown_routes.append(rec)
        return self._respond(rec, 404, rules.not_found().payload(), {})

    def _check_auth(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bot" or not token or (self._token is not None and token != self._token):
            raise rules.unauthorized()

    # ================================================================== rate limits

    def _take_injection(self, rec: RecordedRequest) -> _Injection | None:
        for inj in self._injections:
            if inj.count > 0 and route_matches(inj.pattern, rec.method, rec.path, rec.route):
                inj.count -= 1
                return inj
        return None

    @staticmethod
    def _too_many(retry_after: float, is_global: bool) -> tuple[dict[str, Any], dict[str, str]]:
        body = {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": is_global,
        }
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Scope": "global" if is_global else "user",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        return body, headers

    def _rate_limit(
        self, template: str, rec: RecordedRequest, match: Mapping[str, str]
    ) -> tuple[dict[str, str], float | None]:
        limit = next(
            (rl for p, rl in self._rate_limits if route_matches(p, rec.method, rec.path, template)),
            self.default_rate_limit,
        )
        major = "/".join(
            match.get(k, "")
            for k in ("channel_id", "guild_id", "application_id", "token", "interaction_id")
        )
        bucket = hashlib.sha1(f"{rec.method} {template}".encode()).hexdigest()[:16]
        now = self.now()
        window = self._windows.get((bucket, major))
        if window is None or now >= window.start + limit.per:
            window = self._windows[(bucket, major)] = _Window(start=now)
        reset_after = max(window.start + limit.per - now, 0.001)
        over = window.used >= limit.limit
        if not over:
            window.used += 1
        headers = {
            "X-RateLimit-Limit": str(limit.limit),
            "X-RateLimit-Remaining": str(limit.limit - window.used),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket,
        }
        return headers, (reset_after if over else None)
