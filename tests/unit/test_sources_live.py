"""The live aggregator: per-second figures for the last 15 minutes, by any filter."""

from __future__ import annotations

import math
import random
import threading

import numpy as np
import pytest

from app.core.event import CacheHit, Event, Failure
from app.sources.live import ALL, LiveAggregator, LiveFilter

NOW = 1_780_000_000.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(ts_end: float, **kw: object) -> Event:
    fields: dict[str, object] = {
        "ts_start": ts_end - 0.5,
        "ts_end": ts_end,
        "provider": "openai",
        "model": "m1",
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


def test_counts_land_in_their_second_with_every_figure() -> None:
    live = LiveAggregator(clock=Clock())
    live.add(
        [
            ev(NOW - 1.5, latency_ms=100.0, ttft_ms=20.0, input_tokens=10, output_tokens=5, cost_usd=0.5),
            ev(NOW - 1.1, failure=Failure.TIMEOUT, latency_ms=300.0, cost_usd=None, cache_hit=CacheHit.EXACT),
            ev(NOW + 0.2, failure=Failure.RATE_LIMITED, latency_ms=50.0),
        ]
    )
    s = live.series(seconds=5)
    assert s.t.tolist() == [NOW - 4, NOW - 3, NOW - 2, NOW - 1, NOW]
    assert s.requests.tolist() == [0, 0, 2, 0, 1]
    assert s.failures[Failure.TIMEOUT].tolist() == [0, 0, 1, 0, 0]
    assert s.failures[Failure.RATE_LIMITED].tolist() == [0, 0, 0, 0, 1]
    assert s.errors.tolist() == [0, 0, 1, 0, 1]
    assert Failure.NONE not in s.failures
    assert s.input_tokens[2] == 10 and s.output_tokens[2] == 5 and s.cost_usd[2] == 0.5
    assert s.cost_unknown[2] == 1 and s.cache_hits[2] == 1
    # Percentiles come from 1%-accurate bins (the rollups' sketch mapping).
    assert s.latency_ms[0.5][2] == pytest.approx(100.0, rel=0.01)
    # Ranked like DDSketch and the rollups (rank q * (n - 1)): of two values, p99 is the lower.
    assert s.latency_ms[0.99][2] == pytest.approx(100.0, rel=0.01)
    assert s.ttft_ms[0.5][2] == pytest.approx(20.0, rel=0.01) and math.isnan(s.ttft_ms[0.5][4])
    assert math.isnan(s.latency_ms[0.95][0])


def test_filters_pick_their_traffic() -> None:
    live = LiveAggregator(clock=Clock())
    live.add(
        [
            ev(NOW, provider="openai", model="a", route="r1", feature="f1", user="u1", latency_ms=10.0),
            ev(NOW, provider="anthropic", model="b", route="r2", feature="f2", user="u2", latency_ms=20.0),
            ev(NOW, provider="anthropic", model="b", route=None, feature=None, user=None, latency_ms=30.0),
        ]
    )
    assert live.series(seconds=1).requests[-1] == 3
    assert live.series(LiveFilter(provider="anthropic"), seconds=1).requests[-1] == 2
    assert live.series(LiveFilter(provider="anthropic", user="u2"), seconds=1).requests[-1] == 1
    assert live.series(LiveFilter(model="a", feature="f2"), seconds=1).requests[-1] == 0
    assert live.series(LiveFilter(route="r1"), seconds=1).latency_ms[0.5][-1] == pytest.approx(10.0, rel=0.01)
    assert live.dimension_values("provider") == ["anthropic", "openai"]
    assert live.dimension_values("user") == ["u1", "u2"]
    with pytest.raises(ValueError, match="not a live dimension"):
        live.dimension_values("colour")


def test_the_window_slides_and_old_or_future_events_are_not_shown() -> None:
    clock = Clock()
    live = LiveAggregator(window_s=10, clock=clock)
    assert live.add([ev(NOW - 9), ev(NOW - 10), ev(NOW + 60), ev(NOW)]) == 2
    assert live.skipped == 2
    clock.t = NOW + 5
    s = live.series()
    assert len(s.t) == 10 and s.t[-1] == NOW + 5
    assert s.requests.sum() == 1  # NOW - 9 slid out of the window
    # A slot of the ring re-used by a later second starts empty.
    live.add([ev(NOW + 1), ev(NOW + 1)])
    clock.t = NOW + 11
    live.add([ev(NOW + 11)])  # the slot NOW + 1 had
    assert live.series().requests.tolist() == [0] * 9 + [1]
    assert live.add([ev(NOW + 1)]) == 0  # out of the window now


def test_cached_seconds_are_recomputed_when_they_change() -> None:
    live = LiveAggregator(clock=Clock())
    live.add([ev(NOW - 1, latency_ms=100.0)])
    assert live.series(seconds=3).requests.tolist() == [0, 1, 0]
    live.add([ev(NOW - 1, latency_ms=500.0), ev(NOW - 1, latency_ms=600.0)])  # a late arrival
    s = live.series(seconds=3)
    assert s.requests.tolist() == [0, 3, 0] and s.latency_ms[0.5][1] == pytest.approx(500.0, rel=0.01)
    # Other filters are cached independently and agree.
    assert live.series(LiveFilter(provider="openai"), seconds=3).requests.tolist() == [0, 3, 0]


def test_percentiles_are_within_one_percent_raw_and_compacted() -> None:
    rng = random.Random(3)
    clock = Clock()
    live = LiveAggregator(clock=clock)
    fast = [rng.lognormvariate(5, 0.3) for _ in range(20_000)]
    slow = [rng.lognormvariate(8, 0.3) for _ in range(200)]
    live.add([ev(NOW, model="fast", latency_ms=v, ttft_ms=v / 3) for v in fast])
    live.add([ev(NOW, model="slow", latency_ms=v, ttft_ms=0.0) for v in slow])
    values = np.array(fast + slow)

    def check() -> None:
        s = live.series(seconds=10)
        assert s.requests[-1 - int(clock.t - NOW)] == 20_200
        row = -1 - int(clock.t - NOW)
        for q in (0.5, 0.95, 0.99):
            exact = float(np.quantile(values, q, method="lower"))
            assert s.latency_ms[q][row] == pytest.approx(exact, rel=0.01)
        assert s.ttft_ms[0.5][row] == pytest.approx(float(np.quantile(np.array(fast) / 3, 0.5)), rel=0.01)
        headline = live.percentiles(seconds=60)
        assert headline[0.99] == pytest.approx(float(np.quantile(values, 0.99, method="lower")), rel=0.01)

    check()
    clock.t = NOW + 5
    live.add([])
    check()  # the same answers once the second is past (and cached)
    live.add([ev(NOW, model="fast", latency_ms=1.0)])  # a late event into a past second
    assert live.series(seconds=10).requests[-6] == 20_201
    assert live.series(LiveFilter(model="fast"), seconds=10).requests[-6] == 20_001
    # Values are binned on arrival: the window holds arrays, not a Python object per value.
    slot = live._slots[int(NOW) % live.window_s]
    assert int(slot.lat_n.sum()) == 20_201 and len(slot.lat) < 2_000


def test_bin_keys_match_the_rollup_sketch_mapping() -> None:
    from app.core.sketch import LatencySketch
    from app.sources.live import bin_keys, key_value

    mapping = LatencySketch()._sketch._mapping
    values = np.array([0.001, 0.5, 1.0, 1.5, 99.9, 100.0, 12345.678, 1e7])
    assert bin_keys(values).tolist() == [mapping.key(v) for v in values]
    assert key_value(int(bin_keys(np.array([0.0]))[0])) == 0.0
    for v in values:
        assert key_value(mapping.key(v)) == pytest.approx(v, rel=0.01)


def test_add_and_series_from_two_threads() -> None:
    live = LiveAggregator(clock=Clock())
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                live.series(seconds=60)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=reader, name="controlroom-test-reader")
    t.start()
    try:
        for i in range(50):
            live.add([ev(NOW - (i % 30), latency_ms=float(j)) for j in range(200)])
    finally:
        stop.set()
        t.join()
    assert not errors
    assert live.series(ALL, seconds=60).requests.sum() == 10_000


def test_a_user_filter_is_answered_exactly_from_the_ring_of_recent_events() -> None:
    live = LiveAggregator(clock=Clock())
    live.add(
        [
            ev(NOW - 1, user="ana", latency_ms=100.0, ttft_ms=10.0, input_tokens=3, cost_usd=0.5),
            ev(NOW - 1, user="ana", latency_ms=300.0, failure=Failure.TIMEOUT, cost_usd=None),
            ev(NOW - 1, user="ana", model="other", latency_ms=900.0, cache_hit=CacheHit.EXACT),
            ev(NOW, user="bo", latency_ms=5.0),
            ev(NOW, latency_ms=7.0),  # no user: in the cells only
        ]
    )
    s = live.series(LiveFilter(user="ana"), seconds=3)
    assert s.requests.tolist() == [0, 3, 0] and s.complete_from == -math.inf
    assert s.failures[Failure.TIMEOUT].tolist() == [0, 1, 0]
    assert s.input_tokens[1] == 3 and s.cost_usd[1] == 0.5 and s.cost_unknown[1] == 2 and s.cache_hits[1] == 1
    assert s.latency_ms[0.5][1] == 300.0 and s.latency_ms[0.99][1] == 300.0  # exact, ranked like DDSketch
    assert s.ttft_ms[0.5][1] == 10.0 and math.isnan(s.ttft_ms[0.5][0])
    both = live.series(LiveFilter(user="ana", model="m1"), seconds=3)
    assert both.requests.tolist() == [0, 2, 0]
    assert live.series(LiveFilter(user="nobody"), seconds=3).requests.tolist() == [0, 0, 0]
    assert live.percentiles(LiveFilter(user="ana"))[0.5] == 300.0
    assert live.dimension_values("user") == ["ana", "bo"]
    assert live.series(seconds=3).requests.tolist() == [0, 3, 2]


def test_the_user_ring_is_bounded_and_says_what_it_no_longer_knows() -> None:
    live = LiveAggregator(clock=Clock(), user_rows=100)
    live.add([ev(NOW - 5, user=f"u{i}") for i in range(60)])
    live.add([ev(NOW - 2, user="u1") for _ in range(60)])  # wraps: 20 rows of NOW - 5 remain
    s = live.series(LiveFilter(user="u1"), seconds=6)
    assert s.complete_from == NOW - 4
    assert np.isnan(s.requests[0]) and s.requests[1:].tolist() == [0, 0, 60, 0, 0]
    # Ever-new users do not grow the intern table without bound.
    for k in range(10):
        live.add([ev(NOW, user=f"new{k}-{i}") for i in range(100)])
    assert len(live._users.users) <= 5 * 100
    assert "new9-99" in live.dimension_values("user")
    # The ring holds only part of the current second now: not known, rather than too low.
    s = live.series(LiveFilter(user="new9-99"), seconds=1)
    assert s.complete_from == NOW + 1 and np.isnan(s.requests[0])


def _figures(live: LiveAggregator, flt: LiveFilter = ALL) -> list[list[float]]:
    s = live.series(flt, seconds=10)
    rows = [s.requests, s.errors, s.input_tokens, s.output_tokens, s.cost_usd, s.cost_unknown, s.cache_hits]
    rows += [s.latency_ms[q] for q in (0.5, 0.95, 0.99)] + [s.ttft_ms[0.5]]
    return [np.nan_to_num(r, nan=-1.0).tolist() for r in rows]


def test_add_columns_counts_what_add_counts() -> None:
    rng = random.Random(5)
    events = [
        ev(
            NOW - rng.randrange(6) - rng.random(),
            provider=rng.choice(("openai", "anthropic")),
            model=rng.choice(("a", "b")),
            route=rng.choice(("r1", None)),
            feature=rng.choice(("f1", None)),
            user=rng.choice(("ana", "bo", None)),
            failure=rng.choice((Failure.NONE, Failure.TIMEOUT, Failure.RATE_LIMITED)),
            latency_ms=rng.choice((None, rng.uniform(1, 900))),
            ttft_ms=rng.choice((None, rng.uniform(1, 90))),
            input_tokens=rng.randrange(100),
            output_tokens=rng.randrange(50),
            cost_usd=rng.choice((None, rng.random())),
            cache_hit=rng.choice((CacheHit.NONE, CacheHit.EXACT)),
        )
        for _ in range(500)
    ]
    by_events = LiveAggregator(clock=Clock())
    assert by_events.add(events) == 500
    by_columns = LiveAggregator(clock=Clock())
    added = by_columns.add_columns(
        ts_end=[e.ts_end for e in events],
        provider=[e.provider for e in events],
        model=[e.model for e in events],
        route=[e.route for e in events],
        feature=[e.feature for e in events],
        user=[e.user for e in events],
        failure=[e.failure for e in events],
        latency_ms=[e.latency_ms for e in events],
        ttft_ms=[e.ttft_ms for e in events],
        input_tokens=[e.input_tokens for e in events],
        output_tokens=[e.output_tokens for e in events],
        cost_usd=[e.cost_usd for e in events],
        cache_hit=[e.cache_hit is not CacheHit.NONE for e in events],
    )
    assert added == 500
    for flt in (ALL, LiveFilter(provider="openai", route="r1"), LiveFilter(user="ana")):
        assert _figures(by_columns, flt) == _figures(by_events, flt)
    assert by_columns.series(seconds=10).requests.sum() == 500
    with pytest.raises(ValueError, match="latency_ms has 2 entries"):
        by_columns.add_columns(
            ts_end=[NOW], provider=["p"], model=["m"], route=[None], feature=[None], latency_ms=[1.0, 2.0]
        )
    with pytest.raises(ValueError, match="not a failure type: 'melted'"):
        by_columns.add_columns(
            ts_end=[NOW], provider=["p"], model=["m"], route=[None], feature=[None], failure=["melted"]
        )


def test_many_cells_reuse_ids_of_cells_that_left_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.sources.live as live_module

    monkeypatch.setattr(live_module, "MAX_CELLS", 8)
    clock = Clock()
    live = LiveAggregator(window_s=10, clock=clock)
    live.add([ev(NOW, model=f"old{i}", latency_ms=10.0, user="u") for i in range(6)])
    clock.t = NOW + 20  # the old cells left the window
    live.add([ev(NOW + 20, model=f"new{i}", latency_ms=float(20 + i), user="u") for i in range(6)])
    s = live.series(seconds=1)
    assert s.requests[-1] == 6 and live.skipped == 0
    assert live.dimension_values("model") == [f"new{i}" for i in range(6)]
    assert live.series(LiveFilter(model="new3"), seconds=1).latency_ms[0.5][-1] == pytest.approx(
        23.0, rel=0.01
    )
    assert live.series(LiveFilter(model="new3", user="u"), seconds=1).requests[-1] == 1
    # More distinct cells inside the window than ids: the excess is counted as skipped, not mixed up.
    live.add([ev(NOW + 20, model=f"more{i}") for i in range(4)])
    assert live.series(seconds=1).requests[-1] == 6 + 2 and live.skipped == 2


def test_the_window_is_a_few_arrays_per_second_not_objects_per_event() -> None:
    """Few objects for the cyclic GC to walk, however busy: a full pass over them stalls the GUI."""
    import gc

    live = LiveAggregator(clock=Clock())
    before = len(gc.get_objects())
    for k in range(300):
        live.add(
            [
                ev(NOW - k, provider=f"p{i % 3}", model=f"m{i % 4}", route=f"r{i % 5}", latency_ms=float(i))
                for i in range(200)
            ]
        )
    # 300 seconds x 60 cells: per-second Python objects would be tens of thousands.
    assert len(gc.get_objects()) - before < 2_000
    assert live.series(seconds=300).requests.sum() == 60_000
