"""An httpx transport that sends through aiohttp's client: the provider adapters keep their httpx
API, the gateway gets aiohttp's connection pool and C HTTP parser.

Why: measured against the simulator (``instant``), httpx's own pool (httpcore) costs 0.8 ms of CPU
per request alone, and 2.5 to 5 ms at 50 to 200 concurrent requests: it scans every pooled
connection for each request.  Through this transport the same client costs 0.4 ms at any
concurrency, which is most of the latency the gateway adds (tests/bench/test_bench_gateway.py).

Semantics kept from httpx, because the adapters classify failures by httpx's exception types:
connect failures raise ``httpx.ConnectError`` / ``httpx.ConnectTimeout``; no bytes for the read
timeout raise ``httpx.ReadTimeout`` (per read, as httpx does: a stream that keeps producing is not
timed out); a body cut short raises ``httpx.RemoteProtocolError``; a reset ``httpx.ReadError``.
Bodies pass as received (``auto_decompress`` off): httpx decodes them by their headers.

Bind it to one event loop: the aiohttp session is created on first use, on the running loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx

# Headers aiohttp computes itself from the URL and the body.
_DROP = frozenset({b"host", b"content-length", b"transfer-encoding"})


def _connect_error(exc: BaseException) -> httpx.TransportError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "timed out connecting")
    return httpx.ConnectError(str(exc) or type(exc).__name__)


def _read_error(exc: BaseException) -> httpx.TransportError:
    """A failure after the request went out, while waiting for or reading the answer."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "timed out connecting")
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp.SocketTimeoutError is one
        return httpx.ReadTimeout(str(exc) or "timed out reading")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(exc) or "the server closed the connection mid-message")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError | OSError):
        return httpx.ReadError(str(exc) or type(exc).__name__)
    return httpx.RemoteProtocolError(str(exc) or type(exc).__name__)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _read_error(exc) from None

    async def aclose(self) -> None:
        # A body read to the end gives the connection back to the pool; anything else closes it.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AiohttpTransport(max_connections=...))``."""

    def __init__(self, *, max_connections: int = 100, keepalive_s: float = 15.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                raise RuntimeError("the transport is closed")
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive_s, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                # httpx already set every header it wants: add none of aiohttp's defaults.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t: dict[str, Any] = request.extensions.get("timeout") or {}
        connect = t.get("connect")
        pool = t.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=t.get("read"),
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _DROP
        ]
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        session = self._client()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ClientConnectorError as exc:
            raise _connect_error(exc) from None
        except aiohttp.InvalidURL as exc:
            raise httpx.InvalidURL(str(exc)) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _read_error(exc) from None
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1"),
            },
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
