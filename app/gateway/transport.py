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
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx

# Headers aiohttp computes itself from the URL and the body.
_DROP = frozenset({b"host", b"content-length", b"transfer-encoding"})
_DROP_STR = frozenset(k.decode() for k in _DROP)


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


def _client_timeout(t: Mapping[str, Any]) -> aiohttp.ClientTimeout:
    """httpx's timeouts (``Timeout.as_dict()``) as aiohttp's: connect includes waiting for the pool."""
    connect = t.get("connect")
    pool = t.get("pool")
    return aiohttp.ClientTimeout(
        total=None,
        connect=None if connect is None or pool is None else connect + pool,
        sock_connect=connect,
        sock_read=t.get("read"),
    )


class WholeResponse:
    """A response read to the end: what the adapters look at of an ``httpx.Response``
    (``status_code``, ``headers`` with a case-insensitive ``get``, ``content`` decoded)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


def _decode(encoding: str, body: bytes) -> bytes | None:
    """``body`` decoded by its content-encoding, or ``None`` for one left to httpx (br, zstd)."""
    if encoding in ("", "identity"):
        return body
    try:
        if encoding == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:  # raw deflate, as some servers send it
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise httpx.DecodingError(f"the {encoding} body does not decode: {exc}") from None
    return None


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

    async def _send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's own per-request timeouts)
    ) -> aiohttp.ClientResponse:
        """Send and wait for the answer's head; aiohttp's failures raised as httpx's."""
        try:
            return await self._client().request(
                method,
                url,
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = _client_timeout(request.extensions.get("timeout") or {})
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _DROP
        ]
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        response = await self._send(request.method, str(request.url), headers, body, timeout)
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_Body(response),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1"),
            },
        )

    async def post_whole(
        self, url: str, headers: Mapping[str, str], body: bytes, http_timeout: httpx.Timeout
    ) -> WholeResponse | httpx.Response:
        """POST and read the whole answer, without building httpx's request and response objects.

        The gateway's non-streaming path: the same request, failures raised as the same httpx
        exceptions as :meth:`handle_async_request`; measured in tests/bench/test_bench_gateway.py,
        httpx's models and headers were about a fifth of the gateway's CPU per request.  A body in
        an encoding zlib does not speak (br, zstd) comes back as an ``httpx.Response`` httpx decoded.
        """
        response = await self._send(
            "POST",
            url,
            [(k, v) for k, v in headers.items() if k.lower() not in _DROP_STR],
            body,
            _client_timeout(http_timeout.as_dict()),
        )
        try:
            raw = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _read_error(exc) from None
        finally:
            response.release()
        headers_in = response.headers
        content = _decode(headers_in.get("content-encoding", "").strip().lower(), raw)
        if content is None:
            slow = httpx.Response(
                response.status, headers=list(response.raw_headers), stream=httpx.ByteStream(raw)
            )
            await slow.aread()
            return slow
        return WholeResponse(response.status, headers_in, content)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
