"""History queries over the rollup tiers: every figure checked against the raw events it came from.

Events go in through the real ingest pipeline (events, minute rollups, the
dirty-block triggers), the tiers are built by the real compaction, and each
answer of ``storage.queries.series`` is compared with a brute-force
computation over the same events: counts and sums exactly, percentiles
exactly as a :class:`LatencySketch` of the raw values gives them (sketches
merge without loss).  The same contract runs on PostgreSQL in
``test_series_postgres.py``.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.event import Event, Failure
from app.core.sketch import LatencySketch
from app.sources.pipeline import Pipeline
from storage import Store, open_store
from storage.queries import compaction, series
from storage.queries.compaction import (
    DAY,
    HOUR,
    RetentionPolicy,
    apply_retention,
    compact_rollups,
    dirty_blocks,
)
from storage.queries.events import count_events
from storage.queries.provider_usage import UsageFigure, replace_usage
from storage.queries.series import (
    QueryError,
    SeriesFilter,
    cover,
    find_outliers,
    model_family,
    parse_metric,
    plan_series,
    query_series,
    reconcile,
    top_n,
)
from storage.queries.sketch_batch import merge_blobs

NOW = (
    math.floor(1.7e9 / DAY) * DAY + 12 * HOUR
)  # a fixed "now": horizons and plans do not move under the test
MODELS = {"openai": ("gpt-4o", "gpt-4o-mini"), "anthropic": ("claude-sonnet-4-5",)}


def make_events(rng: random.Random, start: float, end: float, n: int) -> list[Event]:
    out = []
    for _ in range(n):
        ts = rng.uniform(start, end)
        provider = rng.choice(sorted(MODELS))
        latency = rng.lognormvariate(6, 0.6) if rng.random() > 0.03 else None
        out.append(
            Event(
                ts_start=ts,
                ts_end=ts + (latency or 0) / 1000,
                source="test",
                provider=provider,
                model=rng.choice(MODELS[provider]),
                route=rng.choice(["chat", "search", None]),
                feature=rng.choice(["summary", "qa", None]),
                user=rng.choice(["ana", "bo", "cy", None]),
                failure=rng.choices(
                    [Failure.NONE, Failure.TIMEOUT, Failure.RATE_LIMITED, Failure.SERVER_ERROR], [90, 4, 4, 2]
                )[0],
                latency_ms=latency,
                ttft_ms=latency * 0.3 if latency is not None and rng.random() < 0.5 else None,
                input_tokens=rng.randint(50, 2000),
                output_tokens=rng.randint(10, 500),
                cost_usd=None if rng.random() < 0.02 else rng.uniform(1e-4, 1e-2),
            )
        )
    return out


# --- brute force over raw events -------------------------------------------------------------


def brute(
    events: Sequence[Event],
    plan: series.Plan,
    metric: str,
    keep: Callable[[Event], bool] = lambda e: True,
) -> np.ndarray:
    buckets: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        if keep(e) and plan.start <= e.ts_start < plan.end:
            buckets[int((e.ts_start - plan.start) // plan.step)].append(e)
    out = np.full(plan.points, np.nan)
    for i in range(plan.points):
        es = buckets.get(i, [])
        out[i] = value_of(es, metric)
    return out


def value_of(es: Sequence[Event], metric: str) -> float:
    if metric == "requests":
        return len(es)
    if metric == "failures":
        return sum(e.failure is not Failure.NONE for e in es)
    if metric == "failure:timeout":
        return sum(e.failure is Failure.TIMEOUT for e in es)
    if metric == "tokens":
        return sum(e.input_tokens + e.output_tokens for e in es)
    if metric == "cost_usd":
        return sum(e.cost_usd or 0.0 for e in es)
    if metric == "cost_unknown":
        return sum(e.cost_usd is None for e in es)
    if metric == "failure_rate":
        return sum(e.failure is not Failure.NONE for e in es) / len(es) if es else math.nan
    if metric == "latency_mean":
        lats = [e.latency_ms for e in es if e.latency_ms is not None]
        return sum(lats) / len(lats) if lats else math.nan
    field, q = metric.split("_p")
    values = [getattr(e, f"{field}_ms") for e in es if getattr(e, f"{field}_ms") is not None]
    if not values:
        return math.nan
    v = LatencySketch(values).quantile(float(q) / 100)
    return math.nan if v is None else v


def assert_series(got: np.ndarray, want: np.ndarray, metric: str) -> None:
    if metric.endswith(("_p50", "_p95", "_p99", "_p90")):
        # Same bins, same rank rule: the merged sketch answers exactly what one sketch of the values does.
        np.testing.assert_array_equal(got, want, err_msg=metric)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=metric)


METRICS = ("requests", "failures", "failure:timeout", "tokens", "cost_usd", "cost_unknown", "failure_rate",
           "latency_mean", "latency_p50", "latency_p95", "latency_p99", "ttft_p95")  # fmt: skip


# --- checks shared by the SQLite tests here and the PostgreSQL ones in test_series_postgres.py ----


def check_series(
    store: Store, events: list[Event], since: float, until: float, **kw: Any
) -> series.SeriesResult:
    result = query_series(store.engine, since, until, METRICS, now=NOW, **kw)
    total = result.total()
    assert total is not None
    for m in METRICS:
        assert_series(total.values[m], brute(events, result.plan, m), m)
    return result


def check_splits(store: Store, events: list[Event]) -> None:
    since = NOW - 2 * DAY
    r = query_series(
        store.engine, since, NOW, ["requests", "latency_p95", "cost_usd"], filters=SeriesFilter(provider="openai"),
        group_by="model", now=NOW,
    )  # fmt: skip
    assert sorted(s.key or "" for s in r.series) == ["gpt-4o", "gpt-4o-mini"]
    for s in r.series:
        for m in ("requests", "latency_p95", "cost_usd"):
            want = brute(events, r.plan, m, lambda e, k=s.key: e.provider == "openai" and e.model == k)
            assert_series(s.values[m], want, m)
    # Several values of one dimension, and a missing route ("") as a value of its own.
    r = query_series(
        store.engine,
        since,
        NOW,
        ["requests", "latency_p99"],
        filters=SeriesFilter(route=("chat", "")),
        now=NOW,
    )
    total = r.total()
    assert total is not None
    for m in ("requests", "latency_p99"):
        assert_series(total.values[m], brute(events, r.plan, m, lambda e: e.route in ("chat", None)), m)


def check_users(store: Store, events: list[Event]) -> None:
    since = NOW - 6 * HOUR
    r = query_series(store.engine, since, NOW, ["requests", "latency_p50"], group_by="user", top=2, now=NOW)
    counts: dict[str, int] = defaultdict(int)
    for e in events:
        if e.user and r.plan.start <= e.ts_start < r.plan.end:
            counts[e.user] += 1
    assert [s.key for s in r.series] == sorted(counts, key=lambda u: (-counts[u], u))[:2]
    for s in r.series:
        for m in ("requests", "latency_p50"):
            assert_series(s.values[m], brute(events, r.plan, m, lambda e, u=s.key: e.user == u), m)
    r = query_series(
        store.engine, since, NOW, ["requests"], filters=SeriesFilter(user="ana", model="gpt-4o"), now=NOW
    )
    total = r.total()
    assert total is not None
    want = brute(events, r.plan, "requests", lambda e: e.user == "ana" and e.model == "gpt-4o")
    assert_series(total.values["requests"], want, "requests")


def check_top_n(store: Store, events: list[Event]) -> None:
    since, until = NOW - 50 * HOUR - 17 * 60, NOW - 3 * HOUR - 5 * 60  # whole days, hours, blocks and minutes
    a, b = math.floor(since / 60) * 60, math.ceil(until / 60) * 60
    inside = [e for e in events if a <= e.ts_start < b]
    for metric in ("requests", "cost_usd", "latency_p95"):
        rows = top_n(store.engine, since, until, "route", metric, n=3, now=NOW)
        assert rows
        for row in rows:
            es = [e for e in inside if (e.route or "") == row.key]
            assert row.requests == len(es)
            assert row.value == pytest.approx(value_of(es, metric), rel=1e-9)
        values = [r.value for r in rows]
        assert values == sorted(values, reverse=True)
    assert sum(r.share for r in top_n(store.engine, since, until, "provider", now=NOW)) == pytest.approx(1.0)


def check_late_record(store: Store, events: list[Event]) -> None:
    late = make_events(random.Random(5), NOW - 40 * HOUR, NOW - 39 * HOUR, 30)
    Pipeline(store).write_events(late)
    assert dirty_blocks(store.engine)
    r = check_series(store, events + late, NOW - 3 * DAY, NOW)
    assert r.raw_blocks > 0
    compact_rollups(store.engine, now=NOW)
    r = check_series(store, events + late, NOW - 3 * DAY, NOW)
    assert r.raw_blocks == 0


def check_reconciliation(store: Store) -> None:
    day = NOW - NOW % DAY - DAY
    ours = [
        Event(ts_start=day + 3600 + i, ts_end=day + 3601 + i, source="test", provider="openai", model="gpt-4o-mini",
              input_tokens=100, output_tokens=50, cost_usd=0.01)
        for i in range(10)
    ] + [
        Event(ts_start=day + 7200, ts_end=day + 7201, source="test", provider="openai", model="gpt-4o",
              input_tokens=10, output_tokens=5, cost_usd=None)
    ]  # fmt: skip
    Pipeline(store).write_events(ours)
    replace_usage(
        store.engine, "openai-main", day, day + DAY,
        [UsageFigure("openai-main", day, DAY, "gpt-4o-mini-2024-07-18", input_tokens=1000, output_tokens=500,
                     requests=10, cost_usd=0.08),
         UsageFigure("openai-main", day, DAY, "gpt-4o-2024-08-06", input_tokens=10, output_tokens=5, requests=1,
                     cost_usd=0.0002)],
    )  # fmt: skip
    for compacted in (False, True):
        if compacted:
            compact_rollups(store.engine, now=NOW)
        rec = reconcile(
            store.engine, day, day + DAY, provider="openai-main", our_providers=["openai"], now=NOW
        )
        rows = {r.model: r for r in rec.rows}
        mini = rows["gpt-4o-mini"]
        assert (mini.our_requests, mini.provider_requests) == (10, 10)
        assert mini.our_cost_usd == pytest.approx(0.1) and mini.provider_cost_usd == pytest.approx(0.08)
        assert mini.drift_usd == pytest.approx(0.02) and mini.drift_pct == pytest.approx(25.0)
        assert rows["gpt-4o"].our_cost_unknown == 1
        assert rec.drift_usd == pytest.approx(0.1 - 0.0802)


class Loaded:
    """A store holding events, the answers it gave before compaction, then compacted."""

    def __init__(self, store: Store, events: list[Event]) -> None:
        self.store = store
        self.events = events
        self.fresh: dict[int, series.SeriesResult] = {}


# --- SQLite: one loaded store shared by the read-only tests ------------------------------------

WINDOWS_H = (1, 24, 72)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    path = tmp_path_factory.mktemp("series") / "store.sqlite3"
    with open_store(f"sqlite:///{path}") as store:
        rng = random.Random(11)
        events = make_events(rng, NOW - 3 * DAY, NOW - 60, 900)
        events += make_events(rng, NOW - 2 * HOUR, NOW - 60, 300)  # a busy recent stretch
        Pipeline(store).write_events(events)
        world = Loaded(store, events)
        for hours in WINDOWS_H:  # before compaction: every block is read from the minute rows
            world.fresh[hours] = check_series(store, events, NOW - hours * HOUR, NOW)
        check_users(store, events)
        result = compact_rollups(store.engine, now=NOW)
        assert result.blocks > 0 and result.hours > 0 and result.days > 0
        assert not dirty_blocks(store.engine)
        yield world


@pytest.mark.parametrize("hours", WINDOWS_H)
def test_series_match_raw_events_before_and_after_compaction(loaded: Loaded, hours: int) -> None:
    before = loaded.fresh[hours]
    assert before.raw_blocks > 0
    after = check_series(loaded.store, loaded.events, NOW - hours * HOUR, NOW)
    assert after.raw_blocks == 0 and after.plan == before.plan


def test_filters_and_splits_match_raw_events(loaded: Loaded) -> None:
    check_splits(loaded.store, loaded.events)


def test_user_series_and_ranking(loaded: Loaded) -> None:
    check_users(loaded.store, loaded.events)


def test_top_n_over_an_unaligned_window(loaded: Loaded) -> None:
    check_top_n(loaded.store, loaded.events)


def test_a_wide_window_reads_few_rows(loaded: Loaded) -> None:
    r = query_series(loaded.store.engine, NOW - 30 * DAY, NOW, ["requests", "latency_p95"], now=NOW)
    assert (r.plan.step, r.plan.grain) == (HOUR, HOUR)
    assert r.rows_read <= r.plan.points  # one cube row per hour at most
    total = r.total()
    assert total is not None
    assert_series(total.values["latency_p95"], brute(loaded.events, r.plan, "latency_p95"), "latency_p95")


# --- SQLite: tests that change the store ---------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


def test_a_late_record_in_a_compacted_block_is_read_at_once_and_compacted_later(store: Store) -> None:
    events = make_events(random.Random(8), NOW - 3 * DAY, NOW - 60, 200)
    Pipeline(store).write_events(events)
    compact_rollups(store.engine, now=NOW)
    check_late_record(store, events)


def test_data_older_than_retention_is_added_into_the_coarse_tiers(store: Store) -> None:
    policy = RetentionPolicy(
        events_days=1, minute_days=1, tier_days={60: 1, 300: 1, HOUR: 30, DAY: None}, outlier_days=1
    )
    old = make_events(random.Random(3), NOW - 5 * DAY, NOW - 5 * DAY + 3 * HOUR, 160)
    pipeline = Pipeline(store)
    pipeline.write_events(old[:80])
    compact_rollups(
        store.engine, now=NOW, policy=policy
    )  # late already: added, minute rows and events dropped
    assert count_events(store.engine) == 0
    pipeline.write_events(old[80:])  # more, even later
    result = compact_rollups(store.engine, now=NOW, policy=policy)
    assert result.late_blocks > 0
    r = query_series(store.engine, NOW - 6 * DAY, NOW, ["requests", "latency_p95"], now=NOW, policy=policy)
    assert r.plan.grain == HOUR
    total = r.total()
    assert total is not None
    assert_series(total.values["requests"], brute(old, r.plan, "requests"), "requests")
    assert_series(total.values["latency_p95"], brute(old, r.plan, "latency_p95"), "latency_p95")
    day = query_series(
        store.engine, NOW - 6 * DAY, NOW, ["requests"], step=DAY, now=NOW, policy=policy
    ).total()
    assert day is not None and day.values["requests"].sum() == len(old)


def test_retention_drops_by_tier_and_keeps_what_is_not_compacted(store: Store) -> None:
    Pipeline(store).write_events(make_events(random.Random(2), NOW - 8 * DAY, NOW, 150))
    compact_rollups(store.engine, now=NOW)  # built while everything was young enough
    policy = RetentionPolicy(
        events_days=2, minute_days=2, tier_days={60: 1, 300: 2, HOUR: 10, DAY: None}, outlier_days=2
    )
    pending = make_events(random.Random(4), NOW - 3 * DAY, NOW - 3 * DAY + 600, 10)
    Pipeline(store).write_events(pending)  # not compacted yet: kept whatever its age
    result = apply_retention(store.engine, now=NOW, policy=policy)
    assert result.events > 0 and result.minute_rows > 0 and result.tier_rows > 0 and result.user_rows > 0
    horizon = policy.horizon(2, NOW)
    with store.begin() as conn:
        kept = conn.exec_driver_sql(f"SELECT count(*) FROM events WHERE ts_start < {horizon}").scalar_one()
        assert kept == len(pending)
        for grain, days in ((60, 1), (300, 2), (HOUR, 10)):
            h = policy.horizon(days, NOW)
            n = conn.exec_driver_sql(
                f"SELECT count(*) FROM rollup_tier WHERE grain = {grain} AND bucket < {h}"
            ).scalar_one()
            assert n == 0
        assert conn.exec_driver_sql(f"SELECT count(*) FROM rollup_tier WHERE grain = {DAY}").scalar_one() > 0
    with pytest.raises(ValueError, match="must not be shorter"):
        RetentionPolicy(events_days=10, minute_days=5)


def test_outliers_are_found_fresh_and_after_compaction(store: Store) -> None:
    events = make_events(random.Random(9), NOW - 2 * DAY, NOW - 60, 300)
    Pipeline(store).write_events(events)
    compact_rollups(store.engine, now=NOW)
    ts = NOW - 30 * 60
    huge = Event(ts_start=ts, ts_end=ts + 1, source="test", provider="openai", model="gpt-4o", route="chat",
                 input_tokens=400_000, output_tokens=100, latency_ms=900.0, cost_usd=1.0)  # fmt: skip
    slow = Event(ts_start=ts + 5, ts_end=ts + 95, source="test", provider="openai", model="gpt-4o", route="search",
                 input_tokens=300, output_tokens=100, latency_ms=90_000.0, cost_usd=0.01)  # fmt: skip
    Pipeline(store).write_events([huge, slow])
    for _ in range(2):  # fresh (judged from the block's events), then recorded by compaction
        found = find_outliers(store.engine, NOW - HOUR, NOW, now=NOW)
        by_event = {(o.event_id, o.kind) for o in found}
        assert (huge.event_id, "tokens") in by_event
        assert (slow.event_id, "latency") in by_event
        assert found[0].event_id in (huge.event_id, slow.event_id) and found[0].ratio > 50
        only = find_outliers(
            store.engine, NOW - HOUR, NOW, kind="latency", filters=SeriesFilter(route="search"), now=NOW
        )
        assert [o.event_id for o in only][:1] == [slow.event_id]
        compact_rollups(store.engine, now=NOW)


def test_reconciliation_sets_our_cost_beside_the_providers(store: Store) -> None:
    check_reconciliation(store)


def test_a_provider_total_without_models_is_set_beside_our_whole_day(store: Store) -> None:
    day = NOW - NOW % DAY - DAY
    Pipeline(store).write_events(
        [Event(ts_start=day + i, ts_end=day + i + 1, source="t", provider="anthropic", model=m, cost_usd=0.5)
         for i, m in enumerate(["a", "b", "b"])]
    )  # fmt: skip
    replace_usage(store.engine, "claude", day, day + DAY, [UsageFigure("claude", day, DAY, "", cost_usd=1.2)])
    rec = reconcile(store.engine, day, day + DAY, provider="claude", our_providers=["anthropic"], now=NOW)
    assert [(r.model, r.our_cost_usd, r.provider_cost_usd) for r in rec.rows] == [("", 1.5, 1.2)]


# --- plans, covers, metrics (no store) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "step", "grain"),
    [
        (15 * 60, 60, 60),
        (HOUR, 60, 60),
        (24 * HOUR, 60, 60),
        (3 * DAY, 300, 300),
        (7 * DAY, 600, 300),
        (30 * DAY, HOUR, HOUR),
        (90 * DAY, 2 * HOUR, HOUR),
    ],
)
def test_plans_keep_charts_under_the_point_and_row_budgets(window: int, step: int, grain: int) -> None:
    plan = plan_series(NOW - window, NOW, now=NOW)
    assert (plan.step, plan.grain) == (step, grain)
    assert plan.points <= series.MAX_POINTS
    assert plan.start <= NOW - window and plan.end >= NOW
    assert plan.start % plan.step == 0 and plan.end % plan.step == 0


def test_plans_use_only_tiers_kept_that_long() -> None:
    # 24 hours that ended 10 days ago: the 1-minute tier is kept 3 days, so 5-minute steps.
    plan = plan_series(NOW - 11 * DAY, NOW - 10 * DAY, now=NOW)
    assert plan.grain == 300
    old = plan_series(NOW - 500 * DAY, NOW - 499 * DAY, now=NOW)
    assert old.grain == DAY
    assert plan_series(NOW - DAY, NOW, step=HOUR, now=NOW).grain == HOUR


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        (NOW, NOW, "empty"),
        (NOW, NOW - 1, "empty"),
        (NOW - 500 * DAY, NOW, "at most"),
        (math.nan, NOW, "epoch"),
    ],
)
def test_bad_windows_are_refused(since: float, until: float, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        plan_series(since, until, now=NOW)


def test_bad_steps_metrics_and_filters_are_refused() -> None:
    with pytest.raises(QueryError, match="whole number of minutes"):
        plan_series(NOW - DAY, NOW, step=90, now=NOW)
    with pytest.raises(QueryError, match="unknown metric 'latency'"):
        parse_metric("latency")
    with pytest.raises(QueryError, match="between 0 and 100"):
        parse_metric("latency_p0")
    assert parse_metric("ttft_p99.9").q == 99.9
    assert parse_metric("failure:rate_limited").kind == "sum"
    with pytest.raises(QueryError, match="empty list"):
        SeriesFilter(model=()).items()


def test_cover_reads_dirty_blocks_raw_and_the_rest_from_the_coarsest_clean_tier() -> None:
    day0 = NOW - NOW % DAY - 2 * DAY
    dirty_block = day0 + DAY + 5 * HOUR + 600  # in the second day, sixth hour
    c = cover(day0 + 30 * 60, day0 + 2 * DAY, DAY, dirty=[dirty_block], pending_days=[day0])
    assert c.raw == [(dirty_block, dirty_block + 300)]
    hours = c.tiers[HOUR]
    assert (
        day0 + DAY + 5 * HOUR,
        day0 + DAY + 6 * HOUR,
    ) not in hours  # the hour with the dirty block is split
    assert c.tiers.get(DAY, []) == []  # day0 is partial and pending, day1 holds a dirty block
    assert (day0 + 30 * 60, day0 + HOUR) in c.tiers[300]
    covered = sorted(span for spans in c.tiers.values() for span in spans) + c.raw
    total = sum(b - a for a, b in covered)
    assert total == 2 * DAY - 30 * 60  # every second once


def test_model_families_drop_snapshot_dates() -> None:
    assert model_family("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"
    assert model_family("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5"
    assert model_family("gpt-4o") == "gpt-4o"


# --- numpy sketch merging is exact ----------------------------------------------------------------

_values = st.lists(
    st.one_of(st.floats(0.01, 1e6, allow_nan=False), st.just(0.0), st.floats(1e-6, 0.5)), max_size=40
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_values, min_size=1, max_size=12), st.integers(1, 4), st.randoms(use_true_random=False))
def test_batch_merge_equals_merging_sketches(
    values: list[list[float]], groups: int, rnd: random.Random
) -> None:
    sketches = [LatencySketch(v) for v in values]
    gids = [rnd.randrange(groups) for _ in sketches]
    merged = merge_blobs([s.to_bytes() if s.count else None for s in sketches], gids, groups)
    qs = [0.0, 0.01, 0.5, 0.95, 0.99, 1.0]
    got = merged.quantiles(qs)
    blobs = merged.to_bytes()
    for g in range(groups):
        ref = LatencySketch.merged(s for s, x in zip(sketches, gids, strict=True) if x == g)
        if ref.count == 0:
            assert np.isnan(got[g]).all() and blobs[g] is None
            continue
        assert list(got[g]) == ref.quantiles(qs)
        back = LatencySketch.from_bytes(blobs[g])  # type: ignore[arg-type]
        assert back.same_bins(ref) and back.count == ref.count and (back.min, back.max) == (ref.min, ref.max)


def test_batch_merge_falls_back_for_sketches_it_cannot_read_in_bulk() -> None:
    weighted = LatencySketch()
    weighted.add(5.0, 0.5)  # float counts: the general decoder
    weighted.add(10.0, 2.0)
    plain = LatencySketch([1.0, 2.0, 3.0])
    merged = merge_blobs([weighted.to_bytes(), plain.to_bytes()], [0, 0], 1)
    ref = LatencySketch.merged([weighted, plain])
    assert list(merged.quantiles([0.5, 0.9])[0]) == ref.quantiles([0.5, 0.9])
    with pytest.raises(ValueError, match="out of range"):
        merge_blobs([plain.to_bytes()], [3], 2)


def test_cube_aggregation_counts_each_row_in_every_rollup() -> None:
    rows = [
        (60.0, "openai", "gpt-4o", "chat", "qa", *([1] + [0] * (len(compaction.MEASURES) - 1)), None, None),
        (
            60.0,
            "openai",
            "gpt-4o-mini",
            "chat",
            "",
            *([2] + [0] * (len(compaction.MEASURES) - 1)),
            None,
            None,
        ),
    ]
    batch = compaction.RowBatch.from_rows(rows, compaction.DIMS)
    agg = compaction.aggregate(batch, 60, compaction.DIMS, cube=True)
    requests = {k: agg.measures[i][0] for i, k in enumerate(agg.keys)}
    assert requests[("*", "*", "*", "*")] == 3
    assert requests[("openai", "*", "chat", "*")] == 3
    assert requests[("*", "gpt-4o-mini", "*", "")] == 2
    assert len(agg) == 16 + 16 - 4  # the roll-ups the two rows share (model and feature both *) count once


def test_todays_day_rows_may_wait_while_charts_read_its_hours(store: Store) -> None:
    today = NOW - NOW % DAY
    events = make_events(random.Random(6), today, NOW - 60, 120)
    Pipeline(store).write_events(events)
    compact_rollups(store.engine, now=NOW, days_before=today)
    assert compaction.pending_days(store.engine) == [today] and not dirty_blocks(store.engine)
    r = query_series(store.engine, today - DAY, today + DAY, ["requests", "latency_p95"], step=DAY, now=NOW)
    total = r.total()
    assert total is not None and r.plan.grain == DAY
    for m in ("requests", "latency_p95"):
        assert_series(total.values[m], brute(events, r.plan, m), m)
    compact_rollups(store.engine, now=NOW)
    assert compaction.pending_days(store.engine) == []
    again = query_series(
        store.engine, today - DAY, today + DAY, ["requests", "latency_p95"], step=DAY, now=NOW
    ).total()
    assert again is not None
    np.testing.assert_array_equal(again.values["latency_p95"], total.values["latency_p95"])
