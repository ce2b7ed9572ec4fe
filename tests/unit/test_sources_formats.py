"""Record formats: our event lines, OTLP GenAI spans, field mappings, detection."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from app.core.event import CacheHit, CostSource, Event, Failure
from app.core.ids import derived_event_id, new_event_id
from app.sources import formats
from app.sources.formats import (
    EventFormat,
    FieldMapping,
    MappingError,
    OtlpFormat,
    Parsed,
    RecordError,
    decode_line,
    detect_format,
    event_from_dict,
    failure_of_error_type,
    get_format,
    otlp_request_to_events,
    parse_time,
    span_to_event,
)

DATA = Path(__file__).parent.parent / "data"
T0 = 1_780_000_000.0


def full_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "ts_start": T0 + 0.25,
        "ts_end": T0 + 1.5,
        "source": "gateway",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "event_id": new_event_id(T0),
        "response_model": "claude-sonnet-4-5-20250929",
        "route": "support",
        "feature": "summarize",
        "user": "ana",
        "tags": {"team": "growth", "unicode": "café ✓"},
        "prompt_name": "support-summary",
        "prompt_version": 3,
        "stream": True,
        "status_code": 200,
        "failure": Failure.QUALITY_FAIL,
        "error_message": "empty answer",
        "attempts": 2,
        "targets_tried": ["strong", "fast"],
        "latency_ms": 1250.0,
        "ttft_ms": 310.5,
        "input_tokens": 1200,
        "output_tokens": 85,
        "cache_read_tokens": 1000,
        "cache_write_tokens": 7,
        "reasoning_tokens": 3,
        "cost_usd": 0.0042,
        "cost_source": CostSource.PROVIDER,
        "cache_hit": CacheHit.SEMANTIC,
        "breaker_state": "half_open",
        "input_text": "hello",
        "output_text": "",
    }
    fields.update(overrides)
    return Event(**fields)


def parse_one(fmt: formats.LineFormat, line: bytes, key: str = "fp:0") -> Parsed:
    out = Parsed()
    fmt.parse_line(line, source="jsonl:/x", key=key, position="byte 0", out=out)
    return out


# --- our own event format -----------------------------------------------------------------


def test_an_event_line_round_trips_every_field() -> None:
    e = full_event()
    out = parse_one(EventFormat(), e.to_json().encode())
    assert out.rejected == []
    assert out.events == [e]


def test_the_checked_path_reads_a_partial_record_and_fills_defaults() -> None:
    # Only ts_start is required; ts_end follows from the latency; no id: derived from the key.
    d = {"ts_start": T0, "latency_ms": 500, "provider": "openai", "model": "gpt-4o-mini"}
    e = event_from_dict(d, key="abc:10", source="jsonl:/x")
    assert e.ts_end == pytest.approx(T0 + 0.5)
    assert e.event_id == derived_event_id(T0, "abc:10")
    assert e.source == "jsonl:/x"
    assert (e.failure, e.cost_source, e.cache_hit) == (Failure.NONE, CostSource.ESTIMATED, CacheHit.NONE)
    assert event_from_dict(d, key="abc:10").event_id == e.event_id  # replay: the same id


def test_a_foreign_id_becomes_one_of_ours_deterministically() -> None:
    d = full_event().to_dict() | {"event_id": "chatcmpl-123"}
    a = event_from_dict(d, key="k1")
    b = event_from_dict(d, key="k2")  # another position, same record id: the same event
    assert a.event_id == b.event_id == derived_event_id(d["ts_start"], "id:chatcmpl-123")
    assert len(a.event_id) == 32


@pytest.mark.parametrize(
    ("patch", "category"),
    [
        ({"ts_start": "yesterday"}, "wrong type"),
        ({"ts_start": True}, "wrong type"),
        ({"ts_start": math.inf}, "bad value"),
        ({"latency_ms": -1.0}, "bad value"),
        ({"input_tokens": -5}, "bad value"),
        ({"input_tokens": 1.5}, "wrong type"),
        ({"output_tokens": True}, "wrong type"),
        ({"failure": "exploded"}, "bad value"),
        ({"cache_hit": "maybe"}, "bad value"),
        ({"tags": {"team": 5}}, "wrong type"),
        ({"tags": ["a"]}, "wrong type"),
        ({"targets_tried": [1]}, "wrong type"),
        ({"status_code": 1000}, "bad value"),
        ({"model": 42}, "wrong type"),
        ({"stream": "yes"}, "wrong type"),
        ({"event_id": ""}, "wrong type"),
        ({"attempts": -1}, "bad value"),
    ],
)
def test_a_bad_field_is_named_on_both_paths(patch: dict[str, Any], category: str) -> None:
    full = full_event().to_dict() | patch  # every field present: the fast path
    partial = {"ts_start": T0, "provider": "openai", "model": "m"} | patch  # the checked path
    for d in (full, partial):
        with pytest.raises(RecordError) as info:
            event_from_dict(d, key="k")
        assert info.value.category == category, d


def test_a_missing_start_time_is_a_missing_field() -> None:
    with pytest.raises(RecordError, match="missing field: ts_start"):
        event_from_dict({"provider": "openai"}, key="k")


@pytest.mark.parametrize(
    ("line", "category"),
    [
        (b'{"ts_start": 1.0', "invalid JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"ts_start": 1.0, "model": "caf\xe9"}', "invalid UTF-8"),
        (b'{"ts_start": 1.0, "model": "a\x00b"}', "NUL character"),
        (b'{"ts_start": 1.0, "model": "a\\u0000b"}', "NUL character"),
        (b'{"ts_start": 1.0, "model": "\\ud800"}', "invalid UTF-8"),
        (b"[" * 100_000, "invalid JSON"),
    ],
)
def test_a_bad_line_is_one_rejection_with_its_reason_and_excerpt(line: bytes, category: str) -> None:
    out = parse_one(EventFormat(), line, key="fp:7")
    assert out.events == []
    [rej] = out.rejected
    assert rej.category == category
    assert rej.position == "byte 0" and rej.key == "fp:7"
    assert "\x00" not in rej.excerpt and len(rej.excerpt) <= 2100
    rej.excerpt.encode("utf-8")  # storable


def test_decode_line_accepts_a_surrogate_pair_and_unicode() -> None:
    assert decode_line('{"m": "\\ud83d\\ude00 café"}'.encode()) == {"m": "😀 café"}


def test_both_json_parsers_give_the_same_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [b'{"a": 1', b'{"m": "\\ud800"}', b'{"m": "\xff"}', b'{"m": "\\u0000"}', b'{"ok": 1}']

    def reasons() -> list[str]:
        out = []
        for line in lines:
            try:
                decode_line(line)
                out.append("ok")
            except RecordError as exc:
                out.append(exc.category)
        return out

    with_fast = reasons()
    monkeypatch.setattr(formats, "_fast_loads", None)
    assert reasons() == with_fast == ["invalid JSON", "invalid UTF-8", "invalid UTF-8", "NUL character", "ok"]


# --- OTLP GenAI spans ---------------------------------------------------------------------


def _collector_lines() -> list[bytes]:
    return (DATA / "otlp_collector.jsonl").read_bytes().splitlines()


def test_collector_file_spans_map_to_events() -> None:
    out = Parsed()
    fmt = OtlpFormat()
    for i, line in enumerate(_collector_lines()):
        fmt.parse_line(line, source="jsonl:/otel", key=f"fp:{i}", position=f"line {i + 1}", out=out)
    ok, limited, streamed = out.events
    assert out.skipped == 2  # the HTTP span and the metrics line
    [bad] = out.rejected  # a GenAI span without times
    assert bad.category == "missing field" and bad.position == "line 2 span 2" and bad.key == "fp:1:span 2"

    assert (ok.provider, ok.model, ok.response_model) == ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert ok.ts_start == pytest.approx(T0) and ok.latency_ms == pytest.approx(812.0)
    assert (ok.input_tokens, ok.output_tokens, ok.cache_read_tokens) == (1200, 85, 1000)
    assert ok.failure is Failure.NONE and ok.status_code == 200
    assert ok.feature == "summarize" and ok.source == "jsonl:/otel"
    assert ok.tags == {
        "service": "support-bot",
        "operation": "chat",
        "response_id": "chatcmpl-abc",
        "server": "api.openai.com",
        "finish_reason": "stop",
    }
    assert ok.cost_usd is not None and ok.cost_usd > 0 and ok.cost_source is CostSource.ESTIMATED
    assert ok.event_id == derived_event_id(
        ok.ts_start, "otlp:5b8efff798038103d269b633813fc60c:eee19b7ec3c1b174"
    )

    # Older attribute names (gen_ai.system, prompt_tokens) and an error span.
    assert limited.provider == "anthropic" and limited.failure is Failure.RATE_LIMITED
    assert limited.error_message == "rate limit exceeded" and limited.status_code is None
    assert streamed.stream is True and (streamed.input_tokens, streamed.output_tokens) == (10, 20)


def _pb_request(error: bool = False) -> ExportTraceServiceRequest:
    def kv(k: str, v: Any) -> KeyValue:
        if isinstance(v, int):
            return KeyValue(key=k, value=AnyValue(int_value=v))
        return KeyValue(key=k, value=AnyValue(string_value=v))

    span = Span(
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        name="chat gpt-4o-mini",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=int(T0 * 1e9),
        end_time_unix_nano=int(T0 * 1e9) + 250_000_000,
        attributes=[
            kv("gen_ai.operation.name", "chat"),
            kv("gen_ai.provider.name", "openai"),
            kv("gen_ai.request.model", "gpt-4o-mini"),
            kv("gen_ai.usage.input_tokens", 12),
            kv("gen_ai.usage.output_tokens", 34),
            *([kv("error.type", "APITimeoutError")] if error else []),
        ],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK),
    )
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])


def test_a_protobuf_request_decoded_to_a_dict_maps_like_its_json_twin() -> None:
    # The OTLP/HTTP receiver decodes protobuf bodies with MessageToDict: base64 ids, enum names.
    as_dict = MessageToDict(_pb_request(error=True))
    [e] = otlp_request_to_events(as_dict, source="otlp").events
    assert (e.model, e.input_tokens, e.output_tokens) == ("gpt-4o-mini", 12, 34)
    assert e.failure is Failure.TIMEOUT and e.latency_ms == pytest.approx(250.0)
    # The same span written as OTLP JSON (hex ids) gets the same event id.
    assert e.event_id == derived_event_id(T0, "otlp:5b8efff798038103d269b633813fc60c:eee19b7ec3c1b174")


@pytest.mark.parametrize(
    ("error_type", "status", "failure"),
    [
        ("429", None, Failure.RATE_LIMITED),
        ("RateLimitError", None, Failure.RATE_LIMITED),
        ("overloaded_error", None, Failure.OVERLOADED),
        ("APITimeoutError", None, Failure.TIMEOUT),
        ("APIConnectionError", None, Failure.CONNECTION_ERROR),
        ("BadRequestError", None, Failure.CLIENT_ERROR),
        ("AuthenticationError", None, Failure.CLIENT_ERROR),
        ("_OTHER", None, Failure.SERVER_ERROR),
        (None, 503, Failure.OVERLOADED),
        (None, None, Failure.SERVER_ERROR),
    ],
)
def test_error_types_map_to_the_taxonomy(
    error_type: str | None, status: int | None, failure: Failure
) -> None:
    assert failure_of_error_type(error_type, status) is failure


def test_malformed_requests_and_spans_are_rejected_alone() -> None:
    assert otlp_request_to_events([1, 2]).rejected[0].category == "not an object"
    assert otlp_request_to_events({"foo": 1}).rejected[0].category == "missing field"
    assert otlp_request_to_events({"resourceSpans": "x"}).rejected[0].category == "wrong type"
    good = {"name": "chat m", "startTimeUnixNano": "1", "endTimeUnixNano": "2",
            "attributes": [{"key": "gen_ai.request.model", "value": {"stringValue": "m"}}]}  # fmt: skip
    bad_tokens = good | {
        "attributes": good["attributes"] + [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "-3"}}]
    }
    backwards = good | {"startTimeUnixNano": "5"}
    req = {"resourceSpans": [{"scopeSpans": [{"spans": [good, bad_tokens, backwards, "x"]}]}, 7]}
    out = otlp_request_to_events(req, key="fp:0")
    assert len(out.events) == 1
    assert [r.category for r in out.rejected] == ["bad value", "bad value", "not an object", "wrong type"]
    assert len({r.key for r in out.rejected}) == 4  # each is quarantined on its own


def test_span_to_event_ignores_non_genai_spans() -> None:
    assert span_to_event({"name": "GET /", "attributes": [], "startTimeUnixNano": "1"}) is None


# --- field mappings -----------------------------------------------------------------------


def test_a_mapping_file_reads_a_service_log_with_units_and_value_maps() -> None:
    fmt = get_format(str(DATA / "service_mapping.yaml"))
    out = Parsed()
    for i, line in enumerate((DATA / "service_log.jsonl").read_bytes().splitlines()):
        fmt.parse_line(line, source="jsonl:/svc", key=f"fp:{i}", position=f"line {i + 1}", out=out)
    ok, throttled = out.events
    assert ok.ts_start == pytest.approx(parse_time("2026-05-28T20:26:40.250Z", "iso", "t"))
    assert ok.latency_ms == pytest.approx(812.0) and ok.ts_end == pytest.approx(ok.ts_start + 0.812)
    assert (ok.provider, ok.model, ok.route, ok.user) == ("openai", "gpt-4o-mini", "search", "ana")
    assert ok.failure is Failure.NONE and ok.cost_usd is not None  # priced by us: the log has no cost
    assert throttled.failure is Failure.RATE_LIMITED and throttled.status_code == 429
    [bad] = out.rejected
    assert bad.category == "bad value" and "ISO" in bad.reason and bad.position == "line 3"
    assert ok.event_id == derived_event_id(ok.ts_start, "fp:0")


def test_the_litellm_preset_reads_standard_logging_payloads() -> None:
    fmt = detect_format((DATA / "litellm_payloads.jsonl").read_bytes().splitlines())
    assert fmt is not None and fmt.name == "litellm"
    out = Parsed()
    for i, line in enumerate((DATA / "litellm_payloads.jsonl").read_bytes().splitlines()):
        fmt.parse_line(line, source="s", key=f"fp:{i}", position="p", out=out)
    ok, timeout = out.events
    assert (ok.provider, ok.model, ok.route, ok.user) == ("openai", "gpt-4o-mini", "fast", "user-7")
    assert ok.latency_ms == pytest.approx(1250.0) and ok.cost_usd == pytest.approx(0.00042)
    assert ok.stream is True and ok.cache_hit is CacheHit.NONE and ok.failure is Failure.NONE
    assert timeout.failure is Failure.TIMEOUT and timeout.status_code == 408
    assert timeout.error_message == "litellm.Timeout: Request timed out"


def test_the_openai_response_preset() -> None:
    line = json.dumps(
        {"id": "chatcmpl-9", "object": "chat.completion", "created": 1780000000, "model": "gpt-4o-mini-2024-07-18",
         "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 64}}}
    ).encode()  # fmt: skip
    fmt = detect_format([line])
    assert fmt is not None and fmt.name == "openai-response"
    [e] = parse_one(fmt, line).events
    assert (e.provider, e.input_tokens, e.output_tokens, e.cache_read_tokens) == ("openai", 100, 7, 64)
    assert e.ts_start == T0


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        ("2026-05-28T20:26:40Z", "iso", T0),
        ("2026-05-28T20:26:40", "iso", T0),  # naive: UTC
        ("2026-05-28T22:26:40+02:00", "auto", T0),
        (T0, "auto", T0),
        (T0 * 1e3, "auto", T0),
        (T0 * 1e6, "auto", T0),
        (T0 * 1e9, "auto", T0),
        ("1780000000000", "epoch_ms", T0),
        (1780000000, "epoch_s", T0),
    ],
)
def test_times_in_every_unit(value: Any, fmt: str, expected: float) -> None:
    assert parse_time(value, fmt, "t") == pytest.approx(expected)


def test_mapping_errors_list_every_problem() -> None:
    with pytest.raises(MappingError) as info:
        FieldMapping.from_dict(
            {
                "fields": {
                    "nonsense": "a",
                    "latency_ms": {"path": "d", "unit": "weeks"},
                    "model": {"time": "iso"},
                }
            }
        )
    text = str(info.value)
    for part in ("unknown event field 'nonsense'", "unit must be one of", "exactly one of", "ts_start"):
        assert part in text
    with pytest.raises(MappingError, match="cannot read JSON path"):
        formats.compile_path("a..b[")


def test_json_paths_with_indexes_and_quoted_keys() -> None:
    assert formats.compile_path('$.a["x.y"][2].b') == ("a", "x.y", 2, "b")
    mapping = FieldMapping.from_dict(
        {"fields": {"ts_start": "t", "model": 'choices[0]["m.n"]', "input_tokens": "u.i"}}
    )
    e = mapping.to_event({"t": T0, "choices": [{"m.n": "x"}], "u": {"i": "12"}}, key="k", source="s")
    assert (e.model, e.input_tokens) == ("x", 12)


def test_unknown_format_names_are_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="event, otlp, litellm"):
        get_format("nope")
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(MappingError, match="not valid JSON"):
        get_format(str(bad))


def test_detect_format() -> None:
    assert isinstance(detect_format([b"", b"garbage", full_event().to_json().encode()]), EventFormat)
    assert isinstance(detect_format(_collector_lines()), OtlpFormat)
    assert detect_format([b'{"hello": 1}', b"[]"]) is None
