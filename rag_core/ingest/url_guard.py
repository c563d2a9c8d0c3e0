"""The SSRF guard: which URLs and addresses the web fetcher may connect to.

Only well-formed http(s) URLs with a host are fetched. URLs resolving to loopback, private,
link-local or other non-public addresses are refused unless Settings.allow_private_urls;
unspecified, multicast and reserved addresses are refused always. The check runs in the
connection's DNS resolver, so it covers redirect targets and DNS answers that change between a
check and the connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TypeAlias
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .formats import PageError


def split_url(url: str) -> SplitResult:
    """urlsplit, refusing what cannot be a URL (`http://[host]/`, a port that is not a number)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: raises here on a bad port
    except ValueError as exc:
        raise PageError(f"invalid URL: {exc}") from None
    return parts


def url_problem(url: str) -> str | None:
    """Why `url` is not a usable URL, or None."""
    try:
        if not split_url(url).hostname:
            return "invalid URL: no host"
    except PageError as exc:
        return exc.reason
    return None


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


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse non-http(s) URLs and IP-literal hosts the guard refuses (names: see the resolver)."""
    parts = split_url(url)
    if parts.scheme not in ("http", "https"):
        raise PageError(f"refused: unsupported URL scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise PageError("invalid URL: no host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: GuardedResolver checks every address it resolves to
    # aiohttp does not call the resolver for IP literals, so they are checked here.
    if refusal := _refusal(ip, allow_private=allow_private):
        raise PageError(f"refused: {host} is {refusal}")


class RefusedAddress(OSError):
    """The resolver found only refused addresses for a host."""


class GuardedResolver(AbstractResolver):
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
            raise RefusedAddress(f"refused: {host} resolves to {reason}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
