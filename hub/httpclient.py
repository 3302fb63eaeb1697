"""The hub's one HTTP client module: the only place that imports httpx.

Destinations get a small API (`HttpClient.request` → `HttpResponse` or `TransportFailure`)
so the library can be swapped (httpx2 is the maintained fork, stack.md §2.8) in one file.
TLS client certificates go through an `ssl.SSLContext`, never `verify=<path>, cert=…`,
which httpx 0.28 silently ignores.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportFailure(Exception):
    """No HTTP answer: `kind` is timeout, connect or protocol. The outcome is unknown for
    timeouts, so the caller must retry idempotently."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def ssl_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """Client-side TLS (1.2 or newer): `ca_file` to trust (else the system's CAs) and, for
    mutual TLS, the client certificate chain `cert_file` with its `key_file`. This context
    is what carries the client certificate to httpx (`verify=ctx`): httpx 0.28 drops
    `cert=` when `verify` is a path (stack.md §2.8)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


# httpcore re-checks every pooled connection on each request (a poll() per connection),
# so one big pool costs O(connections²); several small pools keep it linear
# (bench/RESULTS.md: 555 vs 320 deliveries/s at 16 concurrent requests).
CONNECTIONS_PER_POOL = 4


class HttpClient:
    """Up to `max_connections` concurrent requests to one base URL, spread over small
    connection pools (the least busy pool takes the next request)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, connect_timeout: float = 3.0,
                 max_connections: int = 16, verify: ssl.SSLContext | bool = True,
                 headers: Mapping[str, str] | None = None) -> None:
        self.base_url = base_url
        pools = max(1, -(-max_connections // CONNECTIONS_PER_POOL))
        per_pool = -(-max_connections // pools)
        self._clients = [
            httpx.AsyncClient(
                base_url=base_url,
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                limits=httpx.Limits(max_connections=per_pool,
                                    max_keepalive_connections=per_pool),
                verify=verify,
                headers=dict(headers or {}),
                follow_redirects=False,  # a redirect on a FHIR write is a misconfiguration
            )
            for _ in range(pools)
        ]
        self._busy = [0] * pools

    def absolute_url(self, url: str) -> str:
        """The URL a request for `url` goes to (httpx appends a relative URL to the base
        path, leading slash or not): what a DPoP proof's `htu` must name."""
        if "://" in url:
            return url
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return base + url.lstrip("/")

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> HttpResponse:
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            response = await self._clients[index].request(method, url, content=content,
                                                           headers=dict(headers or {}))
        except httpx.TimeoutException as exc:
            raise TransportFailure("timeout", type(exc).__name__) from exc
        except httpx.ConnectError as exc:
            raise TransportFailure("connect", str(exc) or type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise TransportFailure("protocol", str(exc) or type(exc).__name__) from exc
        finally:
            self._busy[index] -= 1
        return HttpResponse(response.status_code, dict(response.headers), response.content)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


def asgi_client(app: Any, base_url: str = "http://tryggbro.test") -> httpx.AsyncClient:
    """An in-process client for an ASGI app (hub.testing and tests use it)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)
