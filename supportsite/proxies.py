"""The client's address, as every per-address limit and lockout sees it: ``scope["client"]``.

``X-Forwarded-For`` is believed only from the proxies in ``TRUSTED_PROXIES`` (IPs or networks): when the
direct peer is one of them, the header is walked from the right (each proxy appends the address it saw)
and the first address that is not a trusted proxy is the client. Anything that is not an IP address is
never taken. Without trusted proxies the peer is the client, whatever the headers say; so run daphne
without ``--proxy-headers``, and let this middleware, which wraps HTTP and WebSocket alike, decide.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def ip_or_none(value: str | None) -> str | None:
    """``value`` as a normalised IP address (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        address = ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


@functools.cache
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def trusted_networks() -> tuple[Network, ...]:
    """The ``TRUSTED_PROXIES`` setting, parsed (a bad entry raises ``ValueError``)."""
    return _networks(tuple(getattr(settings, "TRUSTED_PROXIES", ())))


def _trusted(address: str, networks: Iterable[Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: list[str]) -> str | None:
    """The client behind ``peer``, given the ``X-Forwarded-For`` entries as received (left to right)."""
    address = ip_or_none(peer)
    networks = trusted_networks()
    for entry in reversed(forwarded_for):
        if address is None or not _trusted(address, networks):
            break
        forwarded = ip_or_none(entry)
        if forwarded is None:
            break  # garbage where a proxy should have written an address: keep the last proxy's
        address = forwarded
    return address


def _forwarded_for(scope: Scope) -> list[str]:
    values = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"x-forwarded-for"]
    return [entry for value in values for entry in value.split(",")]


class TrustedProxyMiddleware:
    """Sets ``scope["client"]`` to the client's address (or None) for HTTP and WebSocket scopes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        trusted_networks()  # a malformed TRUSTED_PROXIES fails at start-up, not at the first request

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in {"http", "websocket"}:
            peer, port = scope.get("client") or (None, None)
            address = client_address(peer, _forwarded_for(scope))
            scope = dict(scope, client=(address, port or 0) if address else None)
        await self.app(scope, receive, send)


def request_client_address(request: Any) -> str | None:
    """For django-axes: the address this middleware resolved (Django's ``REMOTE_ADDR``)."""
    return ip_or_none(request.META.get("REMOTE_ADDR"))
