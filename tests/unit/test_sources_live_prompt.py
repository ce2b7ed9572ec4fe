"""The live aggregator's prompt dimension: ``name@version`` for one version, ``name`` for all of them."""

from __future__ import annotations

import random

import numpy as np
import pytest

from app.core.event import Event, Failure
from app.sources.live import DIMENSIONS, LiveAggregator, LiveFilter, prompt_key, split_prompt

NOW = 1_780_000_000.0


def ev(ts_end: float, name: str | None = None, version: int | None = None, **kw: object) -> Event:
    fields: dict[str, object] = {
        "ts_start": ts_end - 0.5,
        "ts_end": ts_end,
        "provider": "openai",
        "model": "m1",
        "prompt_name": name,
        "prompt_version": version,
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


def test_prompt_keys_and_their_parts() -> None:
    assert "prompt" in DIMENSIONS and DIMENSIONS[-1] == "user"
    assert prompt_key("ticket-summary", 2) == "ticket-summary@2"
    assert prompt_key("label", None) == "label"
    assert prompt_key(None, 3) == "" and prompt_key("", None) == ""
    assert split_prompt("ticket-summary@2") == ("ticket-summary", 2)
    assert split_prompt("ticket-summary") == ("ticket-summary", None)
    assert split_prompt("odd@x") == ("odd@x", None)


def test_a_prompt_filter_picks_one_version_or_every_version() -> None:
    live = LiveAggregator(clock=lambda: NOW)
    live.add(
        [
            ev(NOW, "ticket-summary", 1, latency_ms=100.0, cost_usd=0.01),
            ev(NOW, "ticket-summary", 2, latency_ms=200.0, cost_usd=0.02),
            ev(NOW, "ticket-summary", 2, latency_ms=300.0, cost_usd=0.02, failure=Failure.TIMEOUT),
            ev(NOW, "ticket-summary-long", 1, latency_ms=900.0),  # a name that starts like it
            ev(NOW, "label-only", None, latency_ms=50.0),  # a caller's own prompt, no version
            ev(NOW - 1, None, None, latency_ms=10.0),
            ev(NOW - 1, "ticket-summary", 2, user="ana", latency_ms=400.0),
        ]
    )

    def req(flt: LiveFilter) -> list[float]:
        return live.series(flt, seconds=2).requests.tolist()

    assert req(LiveFilter()) == [2, 5]
    assert req(LiveFilter(prompt="ticket-summary@2")) == [1, 2]
    assert req(LiveFilter(prompt="ticket-summary@1")) == [0, 1]
    assert req(LiveFilter(prompt="ticket-summary")) == [1, 3]
    assert req(LiveFilter(prompt="ticket-summary-long")) == [0, 1]
    assert req(LiveFilter(prompt="label-only")) == [0, 1]
    assert req(LiveFilter(prompt="ticket-summary@3")) == [0, 0]
    # With the other dimensions, and with a user (answered from the ring of recent events).
    assert req(LiveFilter(prompt="ticket-summary", model="m2")) == [0, 0]
    assert req(LiveFilter(prompt="ticket-summary@2", user="ana")) == [1, 0]
    assert req(LiveFilter(prompt="ticket-summary@1", user="ana")) == [0, 0]
    v2 = live.series(LiveFilter(prompt="ticket-summary@2"), seconds=1)
    assert v2.failures[Failure.TIMEOUT].tolist() == [1]
    assert v2.cost_usd[-1] == pytest.approx(0.04)
    assert v2.latency_ms[0.5][-1] == pytest.approx(200.0, rel=0.01)
    p = live.percentiles(LiveFilter(prompt="ticket-summary@1"), seconds=2)
    assert p[0.5] == pytest.approx(100.0, rel=0.01)
    assert live.dimension_values("prompt") == [
        "label-only",
        "ticket-summary-long@1",
        "ticket-summary@1",
        "ticket-summary@2",
    ]


def test_columns_with_prompts_count_like_events() -> None:
    rng = random.Random(3)
    choices = [(None, None), ("a", 1), ("a", 2), ("b", None)]
    events = [
        ev(NOW - rng.randrange(5) - rng.random(), *rng.choice(choices), latency_ms=rng.uniform(1, 500))
        for _ in range(400)
    ]
    by_events = LiveAggregator(clock=lambda: NOW)
    by_events.add(events)
    by_columns = LiveAggregator(clock=lambda: NOW)
    by_columns.add_columns(
        ts_end=[e.ts_end for e in events],
        provider=[e.provider for e in events],
        model=[e.model for e in events],
        route=[e.route for e in events],
        feature=[e.feature for e in events],
        latency_ms=[e.latency_ms for e in events],
        prompt_name=[e.prompt_name for e in events],
        prompt_version=[e.prompt_version for e in events],
    )
    for flt in ("a", "a@1", "a@2", "b", None):
        want = by_events.series(LiveFilter(prompt=flt), seconds=6)
        got = by_columns.series(LiveFilter(prompt=flt), seconds=6)
        np.testing.assert_array_equal(got.requests, want.requests)
        np.testing.assert_array_equal(got.latency_ms[0.95], want.latency_ms[0.95])
        expected = sum(
            1
            for e in events
            if flt is None
            or prompt_key(e.prompt_name, e.prompt_version) in (flt,)
            or ("@" not in flt and e.prompt_name == flt)
        )
        assert want.requests.sum() == expected
    # Without the prompt columns (the pipeline's older call) every event has no prompt.
    plain = LiveAggregator(clock=lambda: NOW)
    plain.add_columns(ts_end=[NOW], provider=["p"], model=["m"], route=[None], feature=[None])
    assert plain.series(LiveFilter(prompt="a"), seconds=1).requests.tolist() == [0]
    assert plain.dimension_values("prompt") == []
    with pytest.raises(ValueError, match="a dimension column has 2 entries"):
        plain.add_columns(
            ts_end=[NOW], provider=["p"], model=["m"], route=[None], feature=[None], prompt_name=["a", "b"]
        )
