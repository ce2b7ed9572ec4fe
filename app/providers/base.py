"""The one shape every provider adapter has (architecture.md: app/providers).

A request goes in as a :class:`ChatRequest` in OpenAI's chat shape (the
gateway speaks OpenAI's wire format, so that is the lingua franca; the
Anthropic adapter translates it, and passes Anthropic-native content blocks
through untouched).  An answer comes back as a :class:`ChatResult`, or, when
streaming, as :class:`StreamEvent` objects ending in :class:`StreamDone`.
Anything that goes wrong is a :class:`~app.providers.errors.ProviderError`
carrying its :class:`~app.core.event.Failure`.

Usage accounting (decided here, for every adapter): ``Usage.input_tokens`` is
the TOTAL input, cache reads and cache writes included, as OpenTelemetry's
``gen_ai.usage.input_tokens`` and OpenAI's ``prompt_tokens`` count it.
Anthropic reports input *excluding* cache, so its adapter adds the cache
figures in.  ``output_tokens`` includes reasoning tokens.  To price a
``Usage`` call ``price_call(..., input_excludes_cache=False)``.  A ``None``
usage means the provider did not report one (some OpenAI-compatible
servers): estimate it, never take it as zero.

Each adapter holds ONE pooled ``httpx.AsyncClient`` for its provider.  The
pure halves (``build_request``, ``parse_response``, the stream parsers) do no
I/O, so they are unit-tested and benchmarked without a socket.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from app.core.event import Failure
from app.core.tokens import TokenCount, count_messages
from app.providers.errors import ProviderError, classify_error, redact
from app.providers.ratelimits import RateLimitInfo, parse_rate_limits
from app.providers.sse import SSEError, SSEMessage, SSEParser

JSON = dict[str, Any]


class FinishReason(StrEnum):
    """Why the model stopped, in OpenAI's words (the gateway's wire format), plus ``refusal`` and ``other``."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    REFUSAL = "refusal"
    OTHER = "other"


@dataclass(slots=True)
class ChatRequest:
    """A chat call in OpenAI's shape.  ``extra`` is merged into the body last (provider-specific knobs)."""

    model: str
    messages: list[JSON]
    system: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    tools: list[JSON] | None = None
    tool_choice: str | JSON | None = None
    response_format: JSON | None = None
    stream: bool = False
    user: str | None = None
    metadata: dict[str, str] | None = None
    extra: JSON = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    """Tokens of one call.  ``input_tokens`` is the total input, cache reads and writes included."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return max(self.input_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)


@dataclass(slots=True)
class ToolCall:
    """A tool call as OpenAI writes it: ``arguments`` is a JSON string (possibly partial in a broken stream)."""

    id: str | None
    name: str | None
    arguments: str = ""


@dataclass(slots=True)
class ChatResult:
    """One answer, or (as ``ProviderError.partial``) what a broken stream delivered before it broke."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    native_finish_reason: str | None = None
    refusal: str | None = None
    response_model: str | None = None
    response_id: str | None = None
    usage: Usage | None = None
    status_code: int | None = None
    request_id: str | None = None
    rate_limits: RateLimitInfo | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    #: The provider's response body as parsed JSON (non-streaming calls), for same-format passthrough.
    raw: JSON | None = None

    @property
    def produced_output(self) -> bool:
        """Whether the provider generated anything (a billed call, even if it then failed)."""
        return bool(self.text or self.tool_calls or self.refusal or (self.usage and self.usage.output_tokens))


# --- stream events ---------------------------------------------------------------
# Plain slotted classes: thousands are made per second, and frozen dataclasses are slower to build.


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of tool call ``index`` (0-based, in order of appearance); ``id``/``name`` come with the first."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(slots=True)
class UsageUpdate:
    """The provider reported usage (cumulative so far)."""

    usage: Usage


@dataclass(slots=True)
class StreamDone:
    """The stream ended properly; always the last event."""

    result: ChatResult


#: ``SSEMessage`` events (the upstream's raw events) appear only with ``passthrough=True``,
#: each just before the events parsed from it.
StreamEvent = TextDelta | ToolCallDelta | UsageUpdate | StreamDone | SSEMessage


# --- helpers the adapters share ---------------------------------------------------


def usage_int(value: Any, name: str) -> int:
    """A token count from a provider's usage object; absent is 0, nonsense is an error (never a silent 0)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise invalid_response(f"usage field {name} is {value!r}, not a token count")


def invalid_response(message: str, *, partial: ChatResult | None = None) -> ProviderError:
    return ProviderError(Failure.SERVER_ERROR, message, error_type="invalid_response", partial=partial)


def truncated_tail(data: bytes, partial: ChatResult) -> ProviderError:
    """The body ended inside an event whose lines were complete but whose data is not (a cut stream)."""
    return ProviderError(
        Failure.CONNECTION_ERROR,
        f"the stream ended in the middle of an event: {data[:120]!r}",
        error_type="stream_truncated",
        partial=partial,
    )


def dumps(body: JSON) -> bytes:
    """Compact JSON, UTF-8 (msgspec's encoder: about 5x json.dumps, on every provider call)."""
    return _encode_json(body)


_encode_json = msgspec.json.encode
_decode_json = msgspec.json.decode

#: Extra headers whose values are masked in messages like the API key (a custom auth header, a cookie).
_CREDENTIAL_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie|signature|password")


def _safe_url(url: str) -> str:
    """The URL without user-info or query (either could hold a credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_raw_decode = json.JSONDecoder().raw_decode


class StreamParser(ABC):
    """A provider's stream, parsed incrementally from byte chunks cut anywhere.

    ``feed`` returns the events each chunk completed.  ``close`` (at the end
    of the body) returns the events the end completed, the last being
    :class:`StreamDone` with the final :class:`ChatResult`, or raises a
    :class:`ProviderError` naming what was wrong.  ``partial()`` is what has
    arrived so far, for billed failures.  Subclasses say what one event means
    (``_handle``) and whether the stream is complete (``_unfinished``).
    """

    __slots__ = ("_done", "_passthrough", "_sse")

    def __init__(self, *, passthrough: bool = False) -> None:
        self._sse = SSEParser()
        self._passthrough = passthrough
        self._done = False  # the terminator arrived; anything after it is ignored

    @abstractmethod
    def _handle(self, event: str | None, obj: Any, out: list[StreamEvent]) -> None:
        """Take one upstream event (its data decoded); append what it means to ``out``.

        Set ``_done`` at the terminator.  Raise TypeError/KeyError/AttributeError for a shape
        that makes no sense: the caller turns them into an ``invalid_stream`` error.
        """

    @abstractmethod
    def _unfinished(self) -> str | None:
        """Why the stream, ending now, is incomplete; ``None`` if it is complete."""

    @abstractmethod
    def partial(self) -> ChatResult: ...

    def _result(self) -> ChatResult:
        return self.partial()

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        try:
            events = self._sse.feed_raw(chunk)
        except SSEError as exc:
            raise ProviderError(
                Failure.SERVER_ERROR, str(exc), error_type="invalid_stream", partial=self.partial()
            ) from None
        out: list[StreamEvent] = []
        passthrough = self._passthrough
        handle = self._handle
        for event, data in events:
            if self._done:
                break
            if passthrough:
                out.append(SSEMessage(event, data))
            # The JSON decode is inlined here: it is most of the work per event.  raw_decode on str
            # skips json.loads' encoding sniffing (about 40% cheaper); it refuses leading whitespace
            # and ignores trailing data, so anything unusual goes the careful way.
            try:
                text = data.decode()
                obj, end = _raw_decode(text)
                if end != len(text):
                    obj = self._load(event, data)
            except ValueError:
                obj = self._load(event, data)
            try:
                handle(event, obj, out)
            except (AttributeError, TypeError, KeyError) as exc:
                raise self._bad_shape(event, data, exc) from None
        return out

    def close(self) -> list[StreamEvent]:
        try:
            tail = self._sse.close_raw()
        except SSEError as exc:
            raise ProviderError(
                Failure.CONNECTION_ERROR, str(exc), error_type="stream_truncated", partial=self.partial()
            ) from None
        out: list[StreamEvent] = []
        for event, data in tail:
            if self._done:
                break
            if self._passthrough:
                out.append(SSEMessage(event, data))
            # The body ended inside this event (its closing blank line never came): if its data
            # does not parse, the event was cut off, which is a truncated stream, not a bad one.
            try:
                self._handle(event, self._load(event, data), out)
            except (AttributeError, TypeError, KeyError):
                raise truncated_tail(data, self.partial()) from None
            except ProviderError as exc:
                if exc.error_type != "invalid_stream":
                    raise
                raise truncated_tail(data, self.partial()) from None
        missing = self._unfinished()
        if missing is not None:
            raise ProviderError(
                Failure.CONNECTION_ERROR, missing, error_type="stream_truncated", partial=self.partial()
            )
        out.append(StreamDone(self._result()))
        return out

    def _load(self, event: str | None, data: bytes) -> Any:
        """One event's data as JSON (the careful way), or an ``invalid_stream`` error quoting it.

        Subclasses with a non-JSON sentinel (OpenAI's ``[DONE]``) return a marker for it.
        """
        try:
            return json.loads(data)
        except ValueError:
            raise ProviderError(
                Failure.SERVER_ERROR,
                f"stream event {event or 'data'} is not valid JSON: {data[:120]!r}",
                error_type="invalid_stream",
                partial=self.partial(),
            ) from None

    def _bad_shape(self, event: str | None, data: bytes, exc: Exception) -> ProviderError:
        return ProviderError(
            Failure.SERVER_ERROR,
            f"stream event {event or 'data'} has an unexpected shape "
            f"({type(exc).__name__}: {exc}): {data[:120]!r}",
            error_type="invalid_stream",
            partial=self.partial(),
        )


def parse_error_body(
    status: int | None, headers: httpx.Headers | Mapping[str, str], body: bytes, *, now: float | None = None
) -> ProviderError:
    """The error an HTTP error response describes.

    Both APIs put ``{"error": {"type", "message"}}`` in the body (Anthropic
    wraps it in ``{"type": "error", ...}``, OpenAI adds ``code``); Ollama and
    others send ``{"error": "text"}``; proxies send HTML.
    """
    error_type = error_code = None
    message = ""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        error_type = err.get("type")
        error_code = err.get("code")
        message = str(err.get("message") or "")
    elif isinstance(err, str):
        message = err
    elif body:
        message = body[:300].decode("utf-8", "replace").strip()
    rate_limits = parse_rate_limits(headers, now=now)
    should_retry = headers.get("x-should-retry")
    kind = error_type or error_code
    return ProviderError(
        classify_error(status, error_type, error_code),
        f"{kind}: {message}" if kind and message else (message or str(kind or f"HTTP {status}")),
        status_code=status,
        error_type=str(error_type) if error_type is not None else None,
        error_code=str(error_code) if error_code is not None else None,
        retry_after_s=rate_limits.retry_after_s if rate_limits else None,
        rate_limits=rate_limits,
        request_id=headers.get("x-request-id") or headers.get("request-id"),
        should_retry={"true": True, "false": False}.get(should_retry.lower()) if should_retry else None,
    )


def result_events(result: ChatResult) -> list[StreamEvent]:
    """A complete answer as the events a stream of it would have produced."""
    events: list[StreamEvent] = []
    if result.text:
        events.append(TextDelta(result.text))
    for i, call in enumerate(result.tool_calls):
        events.append(ToolCallDelta(i, call.id, call.name, call.arguments))
    if result.usage is not None:
        events.append(UsageUpdate(result.usage))
    events.append(StreamDone(result))
    return events


# --- the adapter -------------------------------------------------------------------


class ProviderAdapter(ABC):
    """One provider endpoint: its base URL, its key, and one pooled HTTP client.

    Timeouts: ``connect_timeout`` bounds opening a connection; ``read_timeout``
    bounds each wait for bytes, which for a stream is the gap between chunks
    (semantics.md ``idle_timeout``); ``pool_timeout`` bounds waiting for a free
    pooled connection (``None``: only the caller's deadline bounds it).  The
    caller's total deadline and time-to-first-token limit are the gateway's
    (``asyncio.timeout`` around the call or the first event).
    """

    kind: ClassVar[str]
    #: Path of the chat endpoint, relative to ``base_url``.
    chat_path: ClassVar[str]

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        pool_timeout: float | None = None,
        max_connections: int = 100,
        extra_headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"provider {name!r}: base_url must be an http(s) URL, got {_safe_url(base_url)!r}"
            )
        if parts.query or parts.fragment:
            # httpx would glue the paths after the query; and a query is where some put keys.
            raise ValueError(f"provider {name!r}: base_url must not carry a query string or fragment")
        self.name = name
        self.base_url = base_url.rstrip("/")
        credentials = [v for k, v in (extra_headers or {}).items() if _CREDENTIAL_HEADER.search(k)]
        self._secrets = tuple(s for s in (api_key, *credentials) if s and len(s) >= 8)
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=pool_timeout
        )
        headers = {"accept": "application/json", **self.auth_headers(api_key), **(extra_headers or {})}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            trust_env=trust_env,
        )
        # An explicit transport and no environment (the gateway's case): of what httpx's client adds
        # to a call, only the URL, the default headers and the timeout apply (no proxies from the
        # environment, redirects are not followed anyway, and a provider API needs no cookies: keeping
        # them would carry one caller's state into the next call).  So chat calls go straight to the
        # transport: measured 0.43 -> 0.25 ms of CPU per call against the simulator (bare aiohttp:
        # 0.17), most of it the client's URL merging and cookie extraction; the gateway process went
        # from 1.05 to 0.81 ms per request (tests/bench/test_bench_gateway.py::test_bench_adapter_cpu_per_call).
        self._direct: httpx.AsyncBaseTransport | None = (
            transport if transport is not None and not trust_env else None
        )
        # The gateway's transport can also POST and read a whole answer without httpx's request and
        # response objects (non-streaming chat): about a fifth of the gateway's CPU per request.
        self._whole: Any = self._direct if hasattr(self._direct, "post_whole") else None
        self._default_headers: dict[str, str] = dict(self._client.headers.items())  # keys lower-case
        self._urls: dict[str, tuple[httpx.URL, str]] = {}  # path -> the URL, and as text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={_safe_url(self.base_url)!r})"

    async def __aenter__(self) -> ProviderAdapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- the pure half, per provider ----------------------------------------------

    @abstractmethod
    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """Headers that authenticate every call (set once on the client, never returned by build_request)."""

    @abstractmethod
    def build_request(
        self, req: ChatRequest, *, stream: bool | None = None
    ) -> tuple[str, dict[str, str], JSON]:
        """``(path relative to base_url, per-request headers, JSON body)`` for a chat call.  Pure."""

    @abstractmethod
    def parse_response(self, data: Any, headers: httpx.Headers | Mapping[str, str]) -> ChatResult:
        """A non-streaming response body (parsed JSON) and its headers -> the result.  Pure."""

    @abstractmethod
    def new_stream_parser(self, *, passthrough: bool = False) -> StreamParser:
        """A fresh incremental parser for this provider's stream."""

    @abstractmethod
    async def list_models(self) -> list[str]: ...

    async def count_tokens(self, req: ChatRequest) -> TokenCount:
        """Input tokens of ``req``; ``estimate`` says whether the figure is exact for this model."""
        return await asyncio.to_thread(self.estimate_tokens, req)

    def estimate_tokens(self, req: ChatRequest) -> TokenCount:
        """A local tiktoken count (exact for OpenAI models, labelled an estimate otherwise).  No I/O."""
        return count_messages(req.messages, req.model, req.system)

    # --- calls ------------------------------------------------------------------------

    async def chat(
        self, req: ChatRequest, *, connect_timeout: float | None = None, read_timeout: float | None = None
    ) -> ChatResult:
        """One non-streaming call."""
        path, headers, body = self.build_request(req, stream=False)
        started = time.perf_counter()
        if self._whole is not None:
            response = await self._post_whole(
                path, headers, dumps(body), self._timeout_for(connect_timeout, read_timeout)
            )
        elif self._direct is not None:
            response = await self._send_direct(
                self._direct_request(
                    path, headers, dumps(body), self._timeout_for(connect_timeout, read_timeout)
                )
            )
        else:
            response = await self._request(
                "POST",
                path,
                headers=headers,
                content=dumps(body),
                http_timeout=self._timeout_for(connect_timeout, read_timeout),
            )
        data = self._json_body(response)
        try:
            result = self.parse_response(data, response.headers)
        except ProviderError as exc:
            raise self._with_context(exc, response) from None
        result.latency_ms = (time.perf_counter() - started) * 1000.0
        result.status_code = response.status_code
        return result

    def stream(
        self,
        req: ChatRequest,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        passthrough: bool = False,
    ) -> ChatStream:
        """A streaming call: iterate the returned :class:`ChatStream` (best inside ``async with``)."""
        return ChatStream(self, req, self._timeout_for(connect_timeout, read_timeout), passthrough)

    # --- plumbing ---------------------------------------------------------------------

    def _timeout_for(self, connect: float | None, read: float | None) -> httpx.Timeout:
        if connect is None and read is None:
            return self._timeout
        t = self._timeout
        return httpx.Timeout(
            connect=t.connect if connect is None else connect,
            read=t.read if read is None else read,
            write=t.write if read is None else read,
            pool=t.pool,
        )

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _transport_error(self, exc: httpx.HTTPError, partial: ChatResult | None = None) -> ProviderError:
        """An httpx failure (no HTTP answer, or the body broke off) in the taxonomy."""
        if isinstance(exc, httpx.TimeoutException):
            failure, error_type = Failure.TIMEOUT, type(exc).__name__
        elif isinstance(exc, httpx.DecodingError):
            failure, error_type = Failure.SERVER_ERROR, "invalid_response"
        elif isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            failure, error_type = Failure.CLIENT_ERROR, "invalid_url"
        else:  # ConnectError (refused, DNS, TLS), ReadError (reset), RemoteProtocolError (cut off)
            failure, error_type = Failure.CONNECTION_ERROR, type(exc).__name__
        detail = str(exc) or type(exc).__name__
        return ProviderError(
            failure,
            self._redact(f"{type(exc).__name__} talking to {_safe_url(self.base_url)}: {detail}"),
            provider=self.name,
            error_type=error_type,
            partial=partial,
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        http_timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Send and read a whole response; HTTP errors become ProviderErrors."""
        try:
            response = await self._client.request(
                method,
                path,
                headers=headers,
                content=content,
                params=params,
                timeout=http_timeout or self._timeout,
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise self._http_error(response, response.content)
        return response

    def _target(
        self, path: str, headers: Mapping[str, str] | None
    ) -> tuple[tuple[httpx.URL, str], Mapping[str, str]]:
        """Where a direct call goes (the URL, and as text) and its headers: the client's defaults,
        then ``headers`` (keys lower-cased), as the client would merge them."""
        url = self._urls.get(path)
        if url is None:
            # The client's rule: base_url ends in one "/" and the path's leading "/" goes.
            u = httpx.URL(f"{self.base_url}/{path.lstrip('/')}")
            url = self._urls[path] = (u, str(u))
        merged = self._default_headers
        if headers:
            merged = {**merged, **{k.lower(): v for k, v in headers.items()}}
        return url, merged

    def _direct_request(
        self, path: str, headers: Mapping[str, str], content: bytes, http_timeout: httpx.Timeout
    ) -> httpx.Request:
        """A POST to ``base_url + path`` as the client would build it (its headers, then ``headers``)."""
        url, merged = self._target(path, headers)
        return httpx.Request(
            "POST", url[0], headers=merged, content=content, extensions={"timeout": http_timeout.as_dict()}
        )

    async def _post_whole(
        self, path: str, headers: Mapping[str, str], content: bytes, http_timeout: httpx.Timeout
    ) -> Any:
        """:meth:`_send_direct` through the transport's ``post_whole``: the same URL and headers,
        HTTP errors as ProviderErrors; the answer has ``status_code``, ``headers`` and ``content``."""
        url, merged = self._target(path, headers)
        try:
            response = await self._whole.post_whole(url[1], merged, content, http_timeout)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise self._http_error(response, response.content)
        return response

    async def _open_direct(self, request: httpx.Request) -> httpx.Response:
        """Send through the transport itself; the body is left to read (``httpx.HTTPError`` as is)."""
        assert self._direct is not None
        response = await self._direct.handle_async_request(request)
        response.request = request
        return response

    async def _send_direct(self, request: httpx.Request) -> httpx.Response:
        """:meth:`_request` without the client: send, read the whole body, HTTP errors as ProviderErrors."""
        try:
            response = await self._open_direct(request)
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise self._http_error(response, response.content)
        return response

    def _http_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        exc = parse_error_body(response.status_code, response.headers, body)
        exc.message = self._redact(exc.message)
        exc.args = (exc.message,)
        exc.provider = self.name
        return exc

    def _with_context(self, exc: ProviderError, response: httpx.Response) -> ProviderError:
        """Fill in what a pure parser could not know: provider, status, request id, rate limits."""
        exc.provider = self.name
        if exc.status_code is None:
            exc.status_code = response.status_code
        exc.request_id = (
            exc.request_id or response.headers.get("x-request-id") or response.headers.get("request-id")
        )
        if exc.rate_limits is None:
            exc.rate_limits = parse_rate_limits(response.headers)
            if exc.retry_after_s is None and exc.rate_limits is not None:
                exc.retry_after_s = exc.rate_limits.retry_after_s
        exc.message = self._redact(exc.message)
        exc.args = (exc.message,)
        return exc

    def _json_body(self, response: httpx.Response) -> Any:
        """The body of a 2xx response as JSON, or a clear server_error saying what came instead."""
        ctype = response.headers.get("content-type", "")
        body = response.content
        if ctype and "json" not in ctype:
            raise self._with_context(
                invalid_response(f"expected a JSON body, got content-type {ctype!r}: {_snippet(body)}"),
                response,
            )
        try:
            return _decode_json(body)
        except ValueError:  # msgspec.DecodeError is one
            raise self._with_context(
                invalid_response(f"the body is not valid JSON: {_snippet(body)}"), response
            ) from None


def _snippet(body: bytes) -> str:
    text = body[:120].decode("utf-8", "replace")
    return repr(text + ("\u2026" if len(body) > 120 else ""))


class ChatStream:
    """One streaming call.

    Iterate it for :data:`StreamEvent` objects; the last is :class:`StreamDone`,
    whose result is also ``.result``.  ``async with`` opens the connection on
    entry (so an HTTP error is raised before any event, while the gateway can
    still fall back) and always releases it on exit.  Failures raise
    :class:`ProviderError` with ``partial`` set to what arrived before them.
    ``ttft_ms`` is stamped at the first content (text or tool-call) delta.
    """

    def __init__(
        self, adapter: ProviderAdapter, req: ChatRequest, timeout: httpx.Timeout, passthrough: bool
    ) -> None:
        self._adapter = adapter
        self._req = req
        self._timeout = timeout
        self._parser = adapter.new_stream_parser(passthrough=passthrough)
        self._response: httpx.Response | None = None
        self._started = 0.0
        self._gen: AsyncGenerator[StreamEvent, None] | None = None
        self.result: ChatResult | None = None
        self.ttft_ms: float | None = None
        self.status_code: int | None = None
        self.request_id: str | None = None
        self.rate_limits: RateLimitInfo | None = None

    def __repr__(self) -> str:
        return f"ChatStream(provider={self._adapter.name!r}, model={self._req.model!r}, status={self.status_code!r})"

    async def __aenter__(self) -> ChatStream:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._gen is None:
            self._gen = self._events()
        return self._gen

    def partial(self) -> ChatResult:
        """What has arrived so far."""
        return self._parser.partial()

    async def open(self) -> None:
        """Send the request and check the status; raises ProviderError for an HTTP error."""
        if self._response is not None:
            return
        adapter = self._adapter
        path, headers, body = adapter.build_request(self._req, stream=True)
        client = adapter._client
        self._started = time.perf_counter()
        try:
            if adapter._direct is not None:
                response = await adapter._open_direct(
                    adapter._direct_request(path, headers, dumps(body), self._timeout)
                )
            else:
                request = client.build_request(
                    "POST", path, headers=headers, content=dumps(body), timeout=self._timeout
                )
                response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise adapter._transport_error(exc) from None
        self.status_code = response.status_code
        self.request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
        self.rate_limits = parse_rate_limits(response.headers)
        if response.status_code >= 400:
            try:
                body_bytes = await response.aread()
            except httpx.HTTPError:
                body_bytes = b""
            finally:
                await response.aclose()
            raise adapter._http_error(response, body_bytes)
        self._response = response

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def _events(self) -> AsyncGenerator[StreamEvent, None]:
        await self.open()
        response = self._response
        assert response is not None
        adapter = self._adapter
        parser = self._parser
        try:
            ctype = response.headers.get("content-type", "")
            if "json" in ctype:
                # A server that ignored stream=true (some OpenAI-compatible ones do): the whole answer at once.
                await response.aread()
                result = adapter.parse_response(adapter._json_body(response), response.headers)
                self.ttft_ms = (time.perf_counter() - self._started) * 1000.0
                self._finish(result, response)
                for event in result_events(result):
                    yield event
                return
            if "text/event-stream" not in ctype:
                await response.aread()
                raise invalid_response(
                    f"expected a text/event-stream body, got content-type {ctype!r}: {_snippet(response.content)}"
                )
            async for chunk in response.aiter_bytes():
                events = parser.feed(chunk)
                if events:
                    if self.ttft_ms is None:
                        for event in events:
                            if type(event) is TextDelta or type(event) is ToolCallDelta:
                                self.ttft_ms = (time.perf_counter() - self._started) * 1000.0
                                break
                    for event in events:
                        yield event
            for event in parser.close():
                if type(event) is StreamDone:
                    self._finish(event.result, response)
                yield event
        except ProviderError as exc:
            if exc.partial is None:
                exc.partial = parser.partial()
            raise adapter._with_context(exc, response) from None
        except httpx.HTTPError as exc:
            raise adapter._with_context(adapter._transport_error(exc, parser.partial()), response) from None
        finally:
            await response.aclose()

    def _finish(self, result: ChatResult, response: httpx.Response) -> None:
        result.ttft_ms = self.ttft_ms
        result.latency_ms = (time.perf_counter() - self._started) * 1000.0
        result.status_code = response.status_code
        result.request_id = self.request_id
        result.rate_limits = result.rate_limits or self.rate_limits
        self.result = result
