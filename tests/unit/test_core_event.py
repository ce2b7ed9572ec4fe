from __future__ import annotations

import json

import pytest

from app.core.event import EVENT_FIELDS, FAILURE_TYPES, CacheHit, Event, Failure, classify_status
from app.core.ids import derived_event_id, event_id_time, new_event_id


def test_event_has_every_field_of_semantics_section_9() -> None:
    required = [
        "event_id",
        "ts_start",
        "ts_end",
        "source",
        "provider",
        "model",
        "response_model",
        "route",
        "feature",
        "user",
        "tags",
        "prompt_name",
        "prompt_version",
        "stream",
        "status_code",
        "failure",
        "error_message",
        "attempts",
        "targets_tried",
        "latency_ms",
        "ttft_ms",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost_usd",
        "cost_source",
        "cache_hit",
        "breaker_state",
        "input_text",
        "output_text",
    ]
    assert set(required) <= set(EVENT_FIELDS)


def test_event_round_trips_through_json() -> None:
    e = Event(
        ts_start=1.5,
        ts_end=2.0,
        provider="openai",
        model="gpt-4o",
        tags={"team": "a"},
        failure=Failure.RATE_LIMITED,
        cache_hit=CacheHit.EXACT,
        targets_tried=["fast", "strong"],
    )
    back = Event.from_dict(json.loads(e.to_json()))
    assert back == e


@pytest.mark.parametrize(
    "record",
    [
        {"ts_start": "yesterday", "ts_end": 1},
        {"ts_end": 1},
        {"ts_start": 1, "ts_end": 2, "failure": "exploded"},
    ],
)
def test_malformed_event_is_a_clear_value_error(record: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Event.from_dict(record)


@pytest.mark.parametrize(
    ("status", "etype", "failure"),
    [
        (200, None, Failure.NONE),
        (429, None, Failure.RATE_LIMITED),
        (529, None, Failure.OVERLOADED),
        (503, None, Failure.OVERLOADED),
        (500, None, Failure.SERVER_ERROR),
        (502, None, Failure.SERVER_ERROR),
        (401, "authentication_error", Failure.CLIENT_ERROR),
        (404, None, Failure.CLIENT_ERROR),
        (400, "overloaded_error", Failure.OVERLOADED),
    ],
)
def test_classify_status(status: int, etype: str | None, failure: Failure) -> None:
    assert classify_status(status, etype) is failure


def test_retryable_failures_follow_semantics() -> None:
    assert {f for f in FAILURE_TYPES if f.retryable} == {
        Failure.TIMEOUT,
        Failure.RATE_LIMITED,
        Failure.OVERLOADED,
        Failure.SERVER_ERROR,
        Failure.CONNECTION_ERROR,
    }
    assert not Failure.CLIENT_ERROR.counts_for_breaker
    assert not Failure.QUALITY_FAIL.counts_for_breaker


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 32 for i in ids)
    assert abs(event_id_time(ids[0]) - event_id_time(ids[-1])) < 60


def test_derived_ids_are_deterministic_and_ordered_by_time() -> None:
    a = derived_event_id(1000.0, "file:/x:1")
    assert a == derived_event_id(1000.0, "file:/x:1")
    assert a != derived_event_id(1000.0, "file:/x:2")
    assert derived_event_id(999.0, "zzz") < a < derived_event_id(1001.0, "aaa")
    assert event_id_time(a) == 1000.0
