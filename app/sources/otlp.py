"""The OTLP/HTTP trace receiver: OpenTelemetry GenAI spans in, events out.

``POST /v1/traces`` with an ``ExportTraceServiceRequest``, as protobuf
(``application/x-protobuf``, what the official exporters send) or JSON
(``application/json``), optionally ``gzip`` or ``deflate`` compressed
(wire-formats.md; the OTLP specification, "OTLP/HTTP").

- A GenAI span (any ``gen_ai.*`` attribute naming the operation, provider or
  model; current names and the older ``prompt_tokens`` / ``completion_tokens``)
  becomes one event, through the same mapping the file reader uses
  (:func:`app.sources.formats.otlp_request_to_events`); a protobuf body is
  decoded to the same dict shape with ``MessageToDict``.  Its id derives from
  the trace and span ids, so a retried export stores nothing twice.
- Other spans (HTTP, database, the app's own) are not LLM calls: ignored and
  counted.
- A malformed GenAI span is rejected alone, kept in the quarantine with its
  reason, and reported back as a *partial success*: HTTP 200 with
  ``rejected_spans`` and an ``error_message``, as the specification says.
- An undecodable body is HTTP 400 with a ``google.rpc.Status`` saying why; an
  unsupported content type or encoding 415; a body over the size limit 413.
  When the store cannot take the batch the answer is 503 with
  ``Retry-After``: the exporter retries, nothing is lost.
- The answer comes after the events are committed to the store.

It runs on whatever asyncio loop calls :meth:`OtlpReceiver.start` — the app's
runtime thread or ``controlroom collect`` — and listens on loopback unless
told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from app.sources.base import Batch, BatchSink, SourceState, SourceStatus
from app.sources.formats import Parsed, otlp_request_to_events

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318
#: Largest request body accepted as sent (compressed): the exporters' own default cap is far below.
DEFAULT_MAX_BODY_BYTES = 16 << 20
#: Largest body accepted once decompressed (a gzip bomb stops here).
DEFAULT_MAX_DECODED_BYTES = 64 << 20
#: Seconds an exporter is told to wait before retrying when the store is unavailable.
RETRY_AFTER_S = 5
# Rejection reasons quoted in a partial-success message before "and N more".
_REASONS_QUOTED = 3

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class OtlpRequestError(Exception):
    """A request that cannot be taken as sent: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class OtlpStats:
    """What the receiver has seen since it started."""

    requests: int = 0
    bad_requests: int = 0  # answered 4xx
    spans: int = 0  # spans in accepted requests
    genai_spans: int = 0  # became events
    ignored_spans: int = 0  # not GenAI calls
    rejected_spans: int = 0  # malformed GenAI spans (quarantined)
    store_failures: int = 0  # answered 503


@dataclass(slots=True)
class Decoded:
    """One request body made into events: what :meth:`OtlpReceiver.decode` returns."""

    parsed: Parsed
    spans: int


class OtlpReceiver:
    """An OTLP/HTTP receiver for GenAI spans.  A :class:`app.sources.base.Source`.

    ``await receiver.start(sink)`` binds and serves (``port=0`` picks a free
    port; :attr:`port` says which); ``await receiver.aclose()`` stops.  Or run
    it like any source: ``await receiver.run(sink)`` until :meth:`stop`.
    """

    kind = "otlp"

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        name: str = "otlp",
        source: str = "otlp",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.name = name
        self.source = source
        self.max_body_bytes = max_body_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self.stats = OtlpStats()
        self._status = SourceStatus(name=name, kind=self.kind)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sink: BatchSink | None = None
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    # -- the Source protocol --------------------------------------------------------------
    def status(self) -> SourceStatus:
        s, st = self._status, self.stats
        detail = (
            f"listening on {self.url}"
            if self._port is not None
            else f"not listening ({self.host}:{self.requested_port})"
        )
        detail += (
            f" · {st.requests:,} requests · {st.genai_spans:,} GenAI spans · {st.ignored_spans:,} other spans ignored"
            f" · {st.rejected_spans:,} rejected"
        )
        return SourceStatus(
            s.name,
            s.kind,
            s.state,
            s.ingested,
            s.duplicates,
            s.rejected,
            s.last_error,
            s.last_event_at,
            detail,
        )

    async def run(self, sink: BatchSink) -> None:
        """Serve until :meth:`stop`.  Raises ``OSError`` when the address cannot be bound."""
        self._stopped = asyncio.Event()
        await self.start(sink)
        try:
            await self._stopped.wait()
        finally:
            await self.aclose()

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from any thread)."""
        loop, stopped = self._loop, self._stopped
        if loop is None or stopped is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stopped.set)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the OTLP receiver is not listening; call start() first")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1/traces"

    def make_app(self) -> web.Application:
        # The body limit is enforced by aiohttp on the bytes as sent; decompression is ours (bounded).
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_route("*", "/v1/traces", self._method_not_allowed)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(self, sink: BatchSink) -> None:
        if self._runner is not None:
            raise RuntimeError("the OTLP receiver is already running")
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        if not _is_loopback(self.host):
            log.warning("the OTLP receiver listens on %s: reachable from other machines", self.host)
        runner = web.AppRunner(self.make_app(), access_log=None, auto_decompress=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.requested_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._status.state = SourceState.ERROR
            self._status.last_error = (
                f"cannot listen on {self.host}:{self.requested_port}: {exc.strerror or exc}"
            )
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._status.state = SourceState.RUNNING
        self._status.last_error = None
        log.info("OTLP receiver listening on %s", self.url)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            pending = [t for t in self._inflight if not t.done()]
            if pending:  # let requests in flight finish their writes (bounded)
                await asyncio.wait(pending, timeout=5.0)
            await runner.cleanup()
        self._port = None
        self._status.state = SourceState.STOPPED

    async def __aenter__(self) -> OtlpReceiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- decoding (pure: no I/O) ------------------------------------------------------------
    def decode(self, body: bytes, content_type: str, encoding: str, *, position: str) -> Decoded:
        """A request body to events and rejections.  Raises :class:`OtlpRequestError`."""
        raw = _decompress(body, encoding, self.max_decoded_bytes)
        if content_type == PROTOBUF:
            try:
                message = trace_service_pb2.ExportTraceServiceRequest.FromString(raw)
            except DecodeError as exc:
                raise OtlpRequestError(
                    400, f"the body is not a protobuf ExportTraceServiceRequest: {exc}"
                ) from None
            request: Any = json_format.MessageToDict(message)
        else:
            try:
                request = json.loads(raw)
            except UnicodeDecodeError as exc:
                raise OtlpRequestError(400, f"the JSON body is not UTF-8 (byte {exc.start})") from None
            except json.JSONDecodeError as exc:
                raise OtlpRequestError(
                    400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
                ) from None
            except RecursionError:
                raise OtlpRequestError(400, "the JSON body is nested too deeply") from None
            if not isinstance(request, dict):
                raise OtlpRequestError(
                    400,
                    f"the body must be a JSON object (an ExportTraceServiceRequest), not a {type(request).__name__}",
                )
        if "resourceSpans" not in request:
            return Decoded(Parsed(), 0)  # an empty export is a valid one
        if not isinstance(request["resourceSpans"], list):
            raise OtlpRequestError(400, "resourceSpans must be a list")
        # A stable name for the request, so a retried export quarantines its bad spans once.
        key = "otlp-request:" + hashlib.sha1(raw, usedforsecurity=False).hexdigest()
        parsed = otlp_request_to_events(request, source=self.source, position=position, key=key)
        return Decoded(parsed, _count_spans(request))

    # -- HTTP ------------------------------------------------------------------------------
    async def _traces(self, request: web.Request) -> web.Response:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            return await self._export(request)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _export(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        n = self.stats.requests
        content_type = request.content_type.lower()
        answer_as = content_type if content_type in (PROTOBUF, JSON) else JSON
        try:
            if content_type not in (PROTOBUF, JSON):
                raise OtlpRequestError(
                    415, f"unsupported Content-Type {content_type or '(none)'!r}: send {PROTOBUF} or {JSON}"
                )
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
            if encoding not in ("identity", "gzip", "deflate"):
                raise OtlpRequestError(
                    415, f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none"
                )
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise OtlpRequestError(
                    413, f"the body is larger than {self.max_body_bytes:,} bytes; export smaller batches"
                ) from None
            decoded = await asyncio.to_thread(
                self.decode, body, content_type, encoding, position=f"request {n}"
            )
        except OtlpRequestError as exc:
            self.stats.bad_requests += 1
            self._status.last_error = f"request {n}: {exc.message}"
            return _status_response(exc.status, exc.message, answer_as)
        parsed = decoded.parsed
        batch = Batch(events=parsed.events, rejected=parsed.rejected)
        if len(batch):
            assert self._sink is not None
            try:
                result: Any = await self._sink(batch)
            except Exception as exc:  # StoreUnavailable, PipelineStopped: retryable by the exporter
                self.stats.store_failures += 1
                message = f"the store could not take the spans, retry later: {exc}"
                self._status.last_error = message
                self._status.state = SourceState.ERROR
                response = _status_response(503, message, answer_as, grpc_code=_UNAVAILABLE)
                response.headers["Retry-After"] = str(RETRY_AFTER_S)
                return response
            s = self._status
            s.ingested += int(getattr(result, "ingested", 0))
            s.duplicates += int(getattr(result, "duplicates", 0))
            s.rejected += int(getattr(result, "rejected", 0))
            s.last_event_at = time.time()
            s.state = SourceState.RUNNING
        st = self.stats
        st.spans += decoded.spans
        st.genai_spans += len(parsed.events)
        st.ignored_spans += parsed.skipped
        st.rejected_spans += len(parsed.rejected)
        return _export_response(parsed, decoded.spans, answer_as)

    async def _method_not_allowed(self, request: web.Request) -> web.Response:
        response = _status_response(
            405, f"{request.method} is not allowed on /v1/traces: POST an export", JSON
        )
        response.headers["Allow"] = "POST"
        return response

    async def _not_found(self, request: web.Request) -> web.Response:
        message = f"nothing at {request.path}: this receiver takes traces at POST /v1/traces"
        if request.path in ("/v1/metrics", "/v1/logs"):
            message = f"{request.path}: this receiver takes traces only (POST /v1/traces)"
        return _status_response(404, message, JSON)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "identity":
        if len(body) > limit:
            raise OtlpRequestError(413, f"the body is larger than {limit:,} bytes")
        return body
    # gzip: a gzip header; deflate: zlib-wrapped (what HTTP calls deflate), raw deflate tolerated.
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        out = _inflate(body, wbits, limit)
    except zlib.error as exc:
        if encoding == "deflate":
            try:
                return _inflate(body, -zlib.MAX_WBITS, limit)
            except zlib.error:
                pass
        raise OtlpRequestError(400, f"the body is not valid {encoding} data: {exc}") from None
    return out


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise OtlpRequestError(413, f"the body decompresses to more than {limit:,} bytes")
    out += d.flush()
    if not d.eof:
        raise zlib.error("the stream ends early (truncated, or not compressed this way)")
    return out


def _count_spans(request: dict[str, Any]) -> int:
    n = 0
    for rs in request.get("resourceSpans") or []:
        if not isinstance(rs, dict):
            continue
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            spans = ss.get("spans") if isinstance(ss, dict) else None
            if isinstance(spans, list):
                n += len(spans)
    return n


def _export_response(parsed: Parsed, spans: int, content_type: str) -> web.Response:
    response = trace_service_pb2.ExportTraceServiceResponse()
    partial = response.partial_success
    if parsed.rejected:
        partial.rejected_spans = len(parsed.rejected)
        reasons = [f"{r.position}: {r.reason}" for r in parsed.rejected[:_REASONS_QUOTED]]
        more = len(parsed.rejected) - len(reasons)
        partial.error_message = (
            f"{len(parsed.rejected)} of {spans} spans rejected (kept in the quarantine): "
            + "; ".join(reasons)
            + (f"; and {more} more" if more else "")
        )[:2000]
    else:
        partial.SetInParent()  # {"partialSuccess": {}}: equivalent to full success (OTLP spec)
    if content_type == PROTOBUF:
        return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
    return web.json_response(json_format.MessageToDict(response))


def _status_response(
    status: int, message: str, content_type: str, *, grpc_code: int | None = None
) -> web.Response:
    """A ``google.rpc.Status`` body (the OTLP/HTTP failure response), encoded like the request."""
    code = grpc_code if grpc_code is not None else _GRPC_CODES.get(status, _UNKNOWN)
    if content_type == PROTOBUF:
        return web.Response(status=status, body=_encode_status(code, message), content_type=PROTOBUF)
    return web.json_response({"code": code, "message": message}, status=status)


def _encode_status(code: int, message: str) -> bytes:
    """``google.rpc.Status{code, message}`` in protobuf wire format.

    Written out (two fields) rather than imported: ``google.rpc`` comes with
    googleapis-common-protos, which the OTLP exporters need but we do not.
    """
    text = message.encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# gRPC status codes (google/rpc/code.proto).
_UNKNOWN, _INVALID_ARGUMENT, _NOT_FOUND, _RESOURCE_EXHAUSTED, _UNIMPLEMENTED, _UNAVAILABLE = (
    2,
    3,
    5,
    8,
    12,
    14,
)
_GRPC_CODES = {
    400: _INVALID_ARGUMENT,
    404: _NOT_FOUND,
    405: _UNIMPLEMENTED,
    413: _RESOURCE_EXHAUSTED,
    415: _INVALID_ARGUMENT,
    503: _UNAVAILABLE,
}


def parse_listen(value: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``:PORT`` (IPv6 in brackets) to ``(host, port)``.  Raises ``ValueError``."""
    text = value.strip()
    if not text:
        raise ValueError("an empty address: use HOST:PORT, e.g. 127.0.0.1:4318")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    host = host or DEFAULT_HOST
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"not a port number in {value!r}: use HOST:PORT, e.g. 127.0.0.1:4318") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range in {value!r}")
    return host, port


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "JSON",
    "PROTOBUF",
    "Decoded",
    "OtlpReceiver",
    "OtlpRequestError",
    "OtlpStats",
    "parse_listen",
]
