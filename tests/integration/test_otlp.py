"""The OTLP/HTTP receiver, fed by the official OpenTelemetry SDK and exporter, and by hand-made requests.

The receiver runs on a real runtime thread, writes through the real ingest
pipeline into a real SQLite store; the SDK's ``OTLPSpanExporter`` (HTTP,
protobuf) sends to it over loopback exactly as an instrumented service would.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.core.event import Event, Failure
from app.runtime import Runtime
from app.sources.otlp import OtlpReceiver, parse_listen
from app.sources.pipeline import Pipeline
from storage import Store, open_store
from storage.queries.events import count_events, fetch_events
from storage.queries.quarantine import count_quarantined, fetch_quarantined

T0_NS = 1_700_000_000_000_000_000


@dataclass
class Rig:
    store: Store
    pipeline: Pipeline
    runtime: Runtime
    receiver: OtlpReceiver

    def events(self) -> list[Event]:
        return fetch_events(self.store.engine, limit=1000, newest_first=False).events


def _rig(tmp_path: Path, **kwargs: Any) -> Iterator[Rig]:
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    pipeline = Pipeline(store)
    pipeline.start()
    runtime = Runtime()
    runtime.start()
    receiver = OtlpReceiver("127.0.0.1", 0, **kwargs)
    runtime.run(receiver.start(pipeline), timeout=10)
    try:
        yield Rig(store, pipeline, runtime, receiver)
    finally:
        runtime.run(receiver.aclose(), timeout=10)
        runtime.stop()
        pipeline.stop()
        store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(tmp_path)


def _provider(rig: Rig) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=rig.receiver.url, timeout=10)))
    return provider


def test_genai_spans_from_the_sdk_exporter_become_events(rig: Rig) -> None:
    provider = _provider(rig)
    tracer = provider.get_tracer("llm-app", "1.0")
    with tracer.start_as_current_span("POST /answer", kind=SpanKind.SERVER):  # the app's own span: ignored
        with tracer.start_as_current_span(
            "chat gpt-4o",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.response.id": "chatcmpl-1",
                "gen_ai.response.finish_reasons": ["stop"],
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 40,
                "gen_ai.usage.cache_read.input_tokens": 100,
                "gen_ai.request.stream": True,
                "server.address": "api.openai.com",
            },
        ):
            pass
        # An older instrumentation: gen_ai.system and prompt/completion tokens.
        with tracer.start_as_current_span(
            "chat claude",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4-5",
                "gen_ai.usage.prompt_tokens": 30,
                "gen_ai.usage.completion_tokens": 7,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "error.type": "RateLimitError",
            },
        ) as failed:
            failed.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))
    assert provider.force_flush(10_000)
    provider.shutdown()

    events = {e.model: e for e in rig.events()}
    assert set(events) == {"gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini"}
    chat = events["gpt-4o"]
    assert (chat.provider, chat.response_model, chat.source) == ("openai", "gpt-4o-2024-08-06", "otlp")
    assert (chat.input_tokens, chat.output_tokens, chat.cache_read_tokens) == (120, 40, 100)
    assert chat.stream and chat.failure is Failure.NONE and chat.latency_ms is not None
    assert chat.tags["service"] == "checkout" and chat.tags["finish_reason"] == "stop"
    assert chat.cost_usd is not None and chat.cost_usd > 0
    old = events["claude-sonnet-4-5"]
    assert (old.provider, old.input_tokens, old.output_tokens) == ("anthropic", 30, 7)
    failed_event = events["gpt-4o-mini"]
    assert failed_event.failure is Failure.RATE_LIMITED
    assert failed_event.error_message == "429 Too Many Requests"
    stats = rig.receiver.stats
    assert (stats.genai_spans, stats.ignored_spans, stats.rejected_spans) == (3, 1, 0)
    status = rig.receiver.status()
    assert status.ingested == 3 and "1 other spans ignored" in status.detail


def test_a_retried_export_stores_nothing_twice(rig: Rig) -> None:
    body = json.dumps(_request([_span("a1")])).encode()
    with httpx.Client() as client:
        for _ in range(3):
            r = client.post(rig.receiver.url, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.json() == {"partialSuccess": {}}
    assert count_events(rig.store.engine) == 1
    assert rig.receiver.status().duplicates == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_json_with_compression(rig: Rig, encoding: str) -> None:
    raw = json.dumps(_request([_span("b1"), _span("b2"), _span("b3", genai=False)])).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    r = httpx.post(
        rig.receiver.url,
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert r.status_code == 200 and r.json() == {"partialSuccess": {}}
    assert count_events(rig.store.engine) == 2


def test_malformed_spans_are_a_partial_success_and_kept_in_the_quarantine(rig: Rig) -> None:
    spans = [
        _span("c1"),
        _span("c2", end_before_start=True),
        _span("c3", attrs=[_attr("gen_ai.usage.input_tokens", {"intValue": "-5"})]),
        _span("c4", genai=False),
    ]
    r = httpx.post(rig.receiver.url, json=_request(spans))
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2
    assert "2 of 4 spans rejected" in partial["errorMessage"]
    assert "endTimeUnixNano is before startTimeUnixNano" in partial["errorMessage"]
    assert count_events(rig.store.engine) == 1
    assert count_quarantined(rig.store.engine) == 2
    reasons = sorted(q.reason for q in fetch_quarantined(rig.store.engine))
    assert reasons[0].startswith("bad value")
    # The same request again (an exporter retry) quarantines nothing twice.
    httpx.post(rig.receiver.url, json=_request(spans))
    assert count_quarantined(rig.store.engine) == 2

    # The protobuf answer carries the same partial success.
    message = trace_service_pb2.ExportTraceServiceRequest()
    rs = message.resource_spans.add()
    good = rs.scope_spans.add().spans.add()
    good.trace_id, good.span_id, good.name = b"\x01" * 16, b"\x02" * 8, "chat x"
    good.start_time_unix_nano, good.end_time_unix_nano = T0_NS, T0_NS + 10**9
    good.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o"
    bad = rs.scope_spans[0].spans.add()
    bad.CopyFrom(good)
    bad.span_id, bad.end_time_unix_nano = b"\x03" * 8, T0_NS - 1
    r = httpx.post(
        rig.receiver.url,
        content=message.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_spans == 1
    assert "endTimeUnixNano" in answer.partial_success.error_message


@pytest.mark.parametrize(
    ("content", "headers", "status", "says"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "must be a JSON object"),
        (b'{"resourceSpans": {}}', {"Content-Type": "application/json"}, 400, "resourceSpans must be a list"),
        (
            b"\xff\xff\xff",
            {"Content-Type": "application/x-protobuf"},
            400,
            "not a protobuf ExportTraceServiceRequest",
        ),
        (
            gzip.compress(b"{}", mtime=0)[:-6],  # mtime=0: both xdist workers must collect the same ids
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            400,
            "gzip",
        ),
        (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported Content-Type"),
        (b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"}, 415, "Content-Encoding"),
    ],
)
def test_malformed_requests_get_a_clear_error(
    rig: Rig, content: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    r = httpx.post(rig.receiver.url, content=content, headers=headers)
    assert r.status_code == status
    if headers["Content-Type"] == "application/x-protobuf":
        err = status_pb2.Status.FromString(r.content)
        code, message = err.code, err.message
    else:
        code, message = r.json()["code"], r.json()["message"]
    assert code == code_pb2.INVALID_ARGUMENT and says in message
    assert count_events(rig.store.engine) == 0


def test_other_paths_and_methods(rig: Rig) -> None:
    base = rig.receiver.url.removesuffix("/v1/traces")
    assert httpx.get(rig.receiver.url).status_code == 405
    r = httpx.post(base + "/v1/metrics", json={})
    assert r.status_code == 404 and "traces only" in r.json()["message"]
    r = httpx.post(rig.receiver.url, json={})  # an empty export is a valid one
    assert r.status_code == 200 and r.json() == {"partialSuccess": {}}


def test_bodies_over_the_limits_are_refused(tmp_path: Path) -> None:
    for rig in _rig(tmp_path, max_body_bytes=4096, max_decoded_bytes=64 * 1024):
        r = httpx.post(rig.receiver.url, content=b"x" * 10_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "larger than 4,096 bytes" in r.json()["message"]
        bomb = gzip.compress(b" " * 1_000_000)  # 1 MB of spaces in about 1 kB
        r = httpx.post(
            rig.receiver.url,
            content=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 413 and "decompresses to more than" in r.json()["message"]


def test_a_store_that_cannot_take_the_spans_asks_the_exporter_to_retry(rig: Rig) -> None:
    rig.pipeline.stop()  # the writer is gone: batches are refused, nothing is written
    r = httpx.post(rig.receiver.url, json=_request([_span("d1")]))
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["code"] == code_pb2.UNAVAILABLE and "retry" in r.json()["message"]
    assert rig.receiver.status().last_error is not None
    rig.pipeline.start()
    r = httpx.post(rig.receiver.url, json=_request([_span("d1")]))
    assert r.status_code == 200 and count_events(rig.store.engine) == 1


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:4318") == ("127.0.0.1", 4318)
    assert parse_listen(":9999") == ("127.0.0.1", 9999)
    assert parse_listen("[::1]:4318") == ("::1", 4318)
    assert parse_listen("localhost") == ("localhost", 4318)
    with pytest.raises(ValueError, match="not a port"):
        parse_listen("127.0.0.1:http")


# --- hand-made OTLP JSON -----------------------------------------------------------------------


def _attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def _span(
    span_id: str,
    *,
    genai: bool = True,
    end_before_start: bool = False,
    attrs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    start = T0_NS + 10**9
    end = start - 1 if end_before_start else start + 2 * 10**9
    attributes = [_attr("http.route", {"stringValue": "/x"})]
    if genai:
        attributes = [
            _attr("gen_ai.operation.name", {"stringValue": "chat"}),
            _attr("gen_ai.provider.name", {"stringValue": "openai"}),
            _attr("gen_ai.request.model", {"stringValue": "gpt-4o-mini"}),
            _attr("gen_ai.usage.input_tokens", {"intValue": "12"}),
            _attr("gen_ai.usage.output_tokens", {"intValue": "3"}),
            *(attrs or []),
        ]
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": span_id.encode().hex().ljust(16, "0")[:16],
        "name": "chat gpt-4o-mini" if genai else "GET /x",
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": attributes,
        "status": {"code": 0},
    }


def _request(spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", {"stringValue": "svc"})]},
                "scopeSpans": [{"scope": {"name": "test", "version": "1"}, "spans": spans}],
            }
        ]
    }
