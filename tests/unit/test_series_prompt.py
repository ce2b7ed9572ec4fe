"""Traffic of one prompt over time, read from the events table (the rollups have no prompt dimension).

Every figure of :func:`storage.queries.series.query_series_from_events` is
checked against a brute-force computation over the same events, stored
through the real ingest pipeline: counts and sums exactly, percentiles exactly
(the query ranks ``q * (n - 1)`` rounded down, as DDSketch does).  The same
checks run on PostgreSQL through the ``pg_url`` fixture.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.core.event import Event, Failure
from app.sources.pipeline import Pipeline
from storage import Store, open_store
from storage.queries.compaction import DAY, HOUR
from storage.queries.series import (
    EVENTS_MAX_WINDOW_S,
    QueryError,
    SeriesFilter,
    WindowTooLong,
    query_series,
    query_series_from_events,
)

NOW = math.floor(1.7e9 / DAY) * DAY + 12 * HOUR
METRICS = (
    "requests",
    "failure:timeout",
    "failures",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cost_unknown",
    "cache_hits",
    "failure_rate",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "ttft_p50",
    "latency_mean",
)


def prompt_events(rng: random.Random, start: float, end: float, n: int) -> list[Event]:
    out = []
    for _ in range(n):
        ts = rng.uniform(start, end)
        latency = rng.lognormvariate(6, 0.6) if rng.random() > 0.05 else None
        name, version = rng.choice(
            [("ticket-summary", 1), ("ticket-summary", 2), ("ticket-summary", 2), ("faq", 1), (None, None)]
        )
        out.append(
            Event(
                ts_start=ts,
                ts_end=ts + (latency or 0) / 1000,
                source="test",
                provider="openai",
                model=rng.choice(["gpt-4o", "gpt-4o-mini"]),
                route=rng.choice(["summarize", None]),
                feature="tickets",
                prompt_name=name,
                prompt_version=version,
                failure=rng.choices([Failure.NONE, Failure.TIMEOUT, Failure.SERVER_ERROR], [90, 6, 4])[0],
                latency_ms=latency,
                ttft_ms=latency * 0.3 if latency is not None and rng.random() < 0.5 else None,
                input_tokens=rng.randint(50, 2000),
                output_tokens=rng.randint(10, 500),
                cost_usd=None if rng.random() < 0.05 else rng.uniform(1e-4, 1e-2),
            )
        )
    return out


def _rank(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    v = sorted(values)
    return v[int(q * (len(v) - 1))]


def expected(events: list[Event], start: float, step: int, n: int, keep: object) -> dict[str, np.ndarray]:
    by: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        b = math.floor((e.ts_start - start) / step)
        if 0 <= b < n and keep(e):  # type: ignore[operator]
            by[b].append(e)
    out = {m: np.zeros(n) for m in METRICS}
    for m in ("failure_rate", "latency_p50", "latency_p95", "latency_p99", "ttft_p50", "latency_mean"):
        out[m][:] = np.nan
    for b, evs in by.items():
        lat = [e.latency_ms for e in evs if e.latency_ms is not None]
        ttft = [e.ttft_ms for e in evs if e.ttft_ms is not None]
        failed = sum(e.failure is not Failure.NONE for e in evs)
        out["requests"][b] = len(evs)
        out["failure:timeout"][b] = sum(e.failure is Failure.TIMEOUT for e in evs)
        out["failures"][b] = failed
        out["input_tokens"][b] = sum(e.input_tokens for e in evs)
        out["output_tokens"][b] = sum(e.output_tokens for e in evs)
        out["cost_usd"][b] = sum(e.cost_usd or 0.0 for e in evs)
        out["cost_unknown"][b] = sum(e.cost_usd is None for e in evs)
        out["failure_rate"][b] = failed / len(evs)
        out["latency_p50"][b] = _rank(lat, 0.5)
        out["latency_p95"][b] = _rank(lat, 0.95)
        out["latency_p99"][b] = _rank(lat, 0.99)
        out["ttft_p50"][b] = _rank(ttft, 0.5)  # type: ignore[arg-type]
        out["latency_mean"][b] = sum(lat) / len(lat) if lat else math.nan  # type: ignore[arg-type]
    return out


def check_prompt_series(store: Store) -> None:
    rng = random.Random(5)
    events = prompt_events(rng, NOW - 2 * DAY, NOW - 1, 1500)
    Pipeline(store).write_events(events)
    since, until = NOW - 2 * DAY, NOW
    cases = [
        (
            ("ticket-summary", 2),
            SeriesFilter(),
            lambda e: e.prompt_name == "ticket-summary" and e.prompt_version == 2,
        ),
        (("ticket-summary", None), SeriesFilter(), lambda e: e.prompt_name == "ticket-summary"),
        (
            ("ticket-summary", 1),
            SeriesFilter(model="gpt-4o", route=""),
            lambda e: (
                e.prompt_version == 1
                and e.prompt_name == "ticket-summary"
                and e.model == "gpt-4o"
                and e.route is None
            ),
        ),
    ]
    for (name, version), flt, keep in cases:
        res = query_series_from_events(
            store.engine, since, until, METRICS, prompt_name=name, prompt_version=version, filters=flt
        )
        plan = res.plan
        assert plan.step == 120  # two days in at most 1,500 points: 2-minute steps
        assert len(res.buckets) == plan.points and res.buckets[0] == plan.start
        want = expected(events, plan.start, plan.step, plan.points, keep)
        got = res.total()
        assert got is not None and got.key is None and len(res.series) == 1
        assert res.rows_read == int(want["requests"].sum()) > 0
        for m in METRICS:
            np.testing.assert_allclose(
                got.values[m], want[m], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=m
            )
    # Hourly steps: the same totals, fewer buckets.
    hourly = query_series_from_events(
        store.engine, since, until, ("requests", "cost_usd"), prompt_name="ticket-summary", step=HOUR
    )
    total = hourly.total()
    assert total is not None and len(hourly.buckets) == 48
    assert total.values["requests"].sum() == sum(e.prompt_name == "ticket-summary" for e in events)
    # Without a prompt filter the rollups agree with the events for the same selection.
    whole = query_series(store.engine, since, until, ("requests",), step=HOUR, now=NOW).total()
    assert whole is not None
    per_prompt = sum(
        query_series_from_events(store.engine, since, until, ("requests",), prompt_name=p, step=HOUR)
        .series[0]
        .values["requests"]
        for p in ("ticket-summary", "faq")
    )
    assert float(np.sum(whole.values["requests"] - per_prompt)) == sum(e.prompt_name is None for e in events)
    # An unknown prompt: zeros, not an error.
    none = query_series_from_events(store.engine, since, until, ("requests",), prompt_name="nope").series[0]
    assert not none.values["requests"].any()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


def test_prompt_series_from_events_match_the_raw_events_on_sqlite(store: Store) -> None:
    check_prompt_series(store)


@pytest.mark.postgres
def test_prompt_series_from_events_match_the_raw_events_on_postgresql(pg_url: str) -> None:
    with open_store(pg_url) as s:
        check_prompt_series(s)


def test_prompt_series_is_bounded_to_seven_days(store: Store) -> None:
    with pytest.raises(WindowTooLong, match="at most 7 days"):
        query_series_from_events(store.engine, NOW - 8 * DAY, NOW, prompt_name="ticket-summary")
    assert EVENTS_MAX_WINDOW_S == 7 * DAY
    res = query_series_from_events(store.engine, NOW - 7 * DAY, NOW, prompt_name="ticket-summary")
    assert res.plan.points <= 1500
    with pytest.raises(QueryError, match="prompt_name is empty"):
        query_series_from_events(store.engine, NOW - HOUR, NOW, prompt_name="")
    with pytest.raises(QueryError, match="from 1"):
        query_series_from_events(store.engine, NOW - HOUR, NOW, prompt_name="x", prompt_version=0)
    with pytest.raises(QueryError, match="whole number of minutes"):
        query_series_from_events(store.engine, NOW - HOUR, NOW, prompt_name="x", step=90)
