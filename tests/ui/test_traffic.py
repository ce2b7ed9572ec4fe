"""The Traffic page: renders demo data, filters change the series, the crosshair reads the store's numbers."""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.core.event import FAILURE_TYPES, Failure
from app.runtime import Runtime
from app.sources.base import Batch
from app.sources.live import LiveAggregator, LiveFilter
from app.sources.pipeline import Pipeline
from app.ui.bridge import Bridge
from app.ui.charts import GrowingRange, nice_ceiling
from app.ui.filters import FilterBar, FilterState
from app.ui.livefeed import LiveFeed, history_frame, live_frame, read_store_facts
from app.ui.main_window import MainWindow
from app.ui.pages.traffic import CHART_KEYS, TrafficPage
from app.ui.qt import Qt, QtGui, QtWidgets
from storage.engine import open_store
from storage.queries.control import save_object
from storage.queries.series import query_series
from tests.ui.traffic_data import synthetic_events

pytestmark = pytest.mark.gui

NOW = 1_764_400_000.25  # a fixed "now" for seeded live data: every number below is reproducible


@pytest.fixture
def seeded_live() -> LiveAggregator:
    live = LiveAggregator(clock=lambda: NOW)
    live.add(list(synthetic_events(NOW - 900, 900, seed=3)))
    return live


@pytest.fixture
def page(qtbot: object) -> Iterator[TrafficPage]:
    p = TrafficPage()
    qtbot.addWidget(p)  # type: ignore[attr-defined]
    p.resize(1200, 900)
    p.show()
    qtbot.waitExposed(p)  # type: ignore[attr-defined]
    yield p


@pytest.fixture
def window(qtbot: object) -> Iterator[MainWindow]:
    w = MainWindow()
    qtbot.addWidget(w)  # type: ignore[attr-defined]
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)  # type: ignore[attr-defined]
    yield w
    w.feed.stop()


# --- pure helpers ----------------------------------------------------------------------------


def test_nice_ceiling_and_a_range_that_only_grows() -> None:
    assert [nice_ceiling(v) for v in (0.7, 1, 1.1, 2.2, 3, 7, 420)] == [1, 1, 2, 2.5, 5, 10, 500]
    r = GrowingRange(minimum=1.0)
    assert r.fit(0.5) == 1.0
    assert r.fit(8.0) == 10.0  # 8 x 1.25 headroom -> 10
    assert r.fit(3.0) == 10.0  # never shrinks while live: no flicker
    r.reset()
    assert r.fit(3.0) == 5.0


# --- rendering ---------------------------------------------------------------------------------


def test_every_chart_renders_live_data_with_units(page: TrafficPage, seeded_live: LiveAggregator) -> None:
    page.apply_frame(live_frame(seeded_live, FilterState()))
    assert set(page.charts) == set(CHART_KEYS)
    assert page.empty.isHidden()
    for key, chart in page.charts.items():
        xs, _ys = chart.curves[chart.specs[0].key].getData()
        # Every second with a value is drawn (a second without a latency is left out of its line).
        known = np.isfinite(chart.values[chart.specs[0].key])
        assert xs is not None and len(xs) == int(known.sum()) > 800, key
        assert np.array_equal(xs, chart.t[known]), key
        assert chart.plot.getAxis("left").labelText, f"{key} has no unit on its axis"
        assert chart.plot.getViewBox().state["autoRange"] == [False, False], "live charts must not autorange"
    units = {k: c.plot.getAxis("left").labelText for k, c in page.charts.items()}
    assert (
        units["requests"] == "requests /s" and units["cost"] == "USD /min" and units["tokens"] == "tokens /s"
    )
    assert "local time" in page.charts["tokens"].plot.getAxis("bottom").labelText
    assert "Requests" in page.charts["requests"].header.text and "/s" in page.charts["requests"].header.text
    # The x range is the live window, and the y range has room above the peak.
    (x0, x1), (_y0, y1) = page.charts["requests"].plot.getViewBox().viewRange()
    assert x1 - x0 == pytest.approx(900, abs=1)
    assert y1 >= float(np.max(page.charts["requests"].values["requests"]))


def test_empty_range_says_what_to_do(page: TrafficPage) -> None:
    page.apply_frame(live_frame(LiveAggregator(clock=lambda: NOW), FilterState()))
    assert not page.empty.isHidden()
    assert "demo" in page.empty.label.text()


def test_crosshair_values_are_the_aggregators_numbers(page: TrafficPage, seeded_live: LiveAggregator) -> None:
    page.apply_frame(live_frame(seeded_live, FilterState()))
    s = seeded_live.series(LiveFilter(), now=NOW - 1)
    i = 500
    t = float(s.t[i])
    values = page.crosshair_values(t + 0.3)  # snaps to the second
    assert page.crosshair.x == t
    assert values["requests"]["requests"] == s.requests[i]
    assert values["requests"]["errors"] == s.errors[i]
    for f in FAILURE_TYPES:
        assert values["failures"][f.value] == s.failures[f][i]
    assert values["latency"]["p50"] == s.latency_ms[0.5][i]
    assert values["latency"]["p95"] == s.latency_ms[0.95][i]
    assert values["latency"]["p99"] == s.latency_ms[0.99][i]
    assert values["ttft"]["p95"] == s.ttft_ms[0.95][i]
    assert values["tokens"]["input"] == s.input_tokens[i]
    assert values["tokens"]["output"] == s.output_tokens[i]
    assert values["cache"]["hits"] == s.cache_hits[i]
    assert values["cost"]["cost"] == pytest.approx(float(s.cost_usd[i - 59 : i + 1].sum()), rel=1e-12)
    assert values["spend"]["spend"] == pytest.approx(float(s.cost_usd[: i + 1].sum()), rel=1e-12)
    # The same numbers are printed in the headers, formatted the app's way.
    header = page.charts["latency"].header.text
    from app.core.format import fmt_latency_ms

    assert fmt_latency_ms(s.latency_ms[0.95][i]) in header
    assert time.strftime("%H:%M:%S", time.localtime(t)) in header
    # The hover tooltip lists every chart's values at that second.
    tip = page.crosshair.tooltip_text()
    assert tip.count("<br>") == len(CHART_KEYS)
    assert f"p95 {fmt_latency_ms(s.latency_ms[0.95][i])}" in tip
    # Every chart's line sits on the same second.
    assert {c.vline.value() for c in page.charts.values()} == {t}


def test_filters_change_the_series_and_combine(page: TrafficPage, seeded_live: LiveAggregator) -> None:
    all_frame = live_frame(seeded_live, FilterState())
    one = FilterState(provider="openai", route="search")
    frame = live_frame(seeded_live, one)
    page.apply_frame(frame)
    expected = seeded_live.series(LiveFilter(provider="openai", route="search"), seconds=900, now=NOW - 1)
    np.testing.assert_array_equal(page.charts["requests"].values["requests"], expected.requests)
    assert expected.requests.sum() < all_frame.requests.sum()
    assert expected.requests.sum() > 0
    only_openai = live_frame(seeded_live, FilterState(provider="openai")).requests.sum()
    assert expected.requests.sum() < only_openai < all_frame.requests.sum()
    assert "provider=openai · route=search" in page.context.text()


def test_filter_bar_drives_the_feed(qtbot: object, window: MainWindow, seeded_live: LiveAggregator) -> None:
    live = LiveAggregator()
    live.add(list(synthetic_events(time.time() - 300, 300, seed=5)))
    window.show_page("traffic")
    window.attach_data(live=live)
    qtbot.waitUntil(lambda: window.feed.last_frame is not None, timeout=5000)  # type: ignore[attr-defined]
    page = window.pages["traffic"]
    assert isinstance(page, TrafficPage)
    before = float(page.charts["requests"].values["requests"].sum())
    # The combos learn the providers seen live, then a choice narrows every chart.
    combo = window.filters.combos["provider"]
    qtbot.waitUntil(lambda: combo.findData("anthropic") > 0, timeout=5000)  # type: ignore[attr-defined]
    combo.setCurrentIndex(combo.findData("anthropic"))
    assert window.feed.state.provider == "anthropic"
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: page.frame is not None and page.frame.state.provider == "anthropic", timeout=5000
    )
    after = float(page.charts["requests"].values["requests"].sum())
    assert 0 < after < before
    assert combo.shown_text() == "provider: anthropic"


def test_pause_holds_the_picture_and_space_resumes(
    qtbot: object, window: MainWindow, seeded_live: LiveAggregator
) -> None:
    live = LiveAggregator()
    live.add(list(synthetic_events(time.time() - 120, 120)))
    window.show_page("traffic")
    window.attach_data(live=live)
    qtbot.waitUntil(lambda: window.feed.last_frame is not None, timeout=5000)  # type: ignore[attr-defined]
    qtbot.keyClick(window, Qt.Key.Key_Space)  # type: ignore[attr-defined]
    assert window.filters.state.paused and "Paused" in window.filters.live_button.text()
    held = window.feed.last_frame
    frames: list[object] = []
    window.feed.frame_ready.connect(frames.append)
    for _ in range(3):
        window.feed.tick()
    qtbot.waitUntil(lambda: window.feed.last_snapshot is not None, timeout=5000)  # type: ignore[attr-defined]
    assert window.feed.last_frame is held and not frames
    qtbot.keyClick(window, Qt.Key.Key_Space)  # type: ignore[attr-defined]
    assert not window.filters.state.paused
    qtbot.waitUntil(lambda: window.feed.last_frame is not held, timeout=5000)  # type: ignore[attr-defined]


def test_ctrl_f_focuses_the_filters_and_other_pages_grey_them(qtbot: object, window: MainWindow) -> None:
    window.show_page("traffic")
    window.activateWindow()
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)  # type: ignore[attr-defined]
    assert QtWidgets.QApplication.focusWidget() is window.filters.combos["provider"]
    assert window.filters.isEnabled()
    window.show_page("routing")
    assert not window.filters.isEnabled()


def test_filters_persist_across_restarts(qtbot: object) -> None:
    first = FilterBar()
    qtbot.addWidget(first)  # type: ignore[attr-defined]
    first.set_state(FilterState(model="gpt-4o", user="ana", range_key="24h"))
    second = FilterBar()
    qtbot.addWidget(second)  # type: ignore[attr-defined]
    second.restore()
    assert second.state == FilterState(model="gpt-4o", user="ana", range_key="24h")
    assert second.combos["model"].currentData() == "gpt-4o"
    assert not second.live_button.isEnabled()  # history: nothing to pause


def test_zoom_stops_following_and_double_click_returns(
    page: TrafficPage, seeded_live: LiveAggregator
) -> None:
    page.apply_frame(live_frame(seeded_live, FilterState()))
    vb = page.charts["latency"].plot.getViewBox()
    vb.setXRange(NOW - 400, NOW - 300, padding=0)
    vb.sigRangeChangedManually.emit(vb.state["mouseEnabled"])
    assert not page.follow and "zoomed" in page.context.text()
    page.apply_frame(live_frame(seeded_live, FilterState()))
    (x0, x1), _ = page.charts["requests"].plot.getViewBox().viewRange()
    assert (x0, x1) == pytest.approx((NOW - 400, NOW - 300))  # linked, and not pulled back to live
    page.follow_live()
    (x0, x1), _ = page.charts["requests"].plot.getViewBox().viewRange()
    assert x1 - x0 == pytest.approx(900, abs=1)


def test_export_writes_the_visible_series_in_utc_and_a_png(
    page: TrafficPage, seeded_live: LiveAggregator, tmp_path: Path
) -> None:
    frame = live_frame(seeded_live, FilterState())
    page.apply_frame(frame)
    page.charts["requests"].plot.getViewBox().setXRange(frame.t[100], frame.t[160], padding=0)
    rows = page.export_csv(tmp_path / "visible.csv")
    with (tmp_path / "visible.csv").open(encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert rows == len(table) and 55 <= rows <= 62
    assert "latency_p95_ms" in table[0] and "requests_requests_per_s" in table[0]
    first = table[0]
    t0 = time.mktime(time.strptime(first["ts_utc"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    i = int(np.searchsorted(frame.t, t0))
    assert first["ts_utc"].endswith("Z")
    assert float(first["requests_requests_per_s"]) == frame.requests[i]
    assert page.export_png(tmp_path / "charts.png")
    image = QtGui.QImage(str(tmp_path / "charts.png"))
    assert not image.isNull() and image.width() > 600


# --- history from the store --------------------------------------------------------------------


@pytest.fixture
def seeded_store(tmp_path: Path) -> Iterator[object]:
    store = open_store(f"sqlite:///{tmp_path / 'hist.sqlite3'}")
    now = time.time()
    start = math.floor((now - 3 * 3600) / 60) * 60
    events = list(synthetic_events(start, 3 * 3600 - 120, per_second=0.5, seed=11))
    with Pipeline(store) as pipeline:
        pipeline.write(Batch(events=events))
    save_object(
        store.engine,
        "budget",
        {"name": "daily", "scope": {}, "period": "day", "limit_usd": 50.0, "warn_at": [0.8]},
        expected_revision=None,
        actor="test",
    )
    store.events = events  # type: ignore[attr-defined]
    yield store
    store.close()


def test_history_crosshair_matches_the_store_and_raw_events(page: TrafficPage, seeded_store: object) -> None:
    engine = seeded_store.engine  # type: ignore[attr-defined]
    events = seeded_store.events  # type: ignore[attr-defined]
    now = time.time()
    state = FilterState(provider="anthropic", range_key="6h")
    frame = history_frame(engine, state, now=now)
    page.apply_frame(frame)
    assert frame.step_s == 60 and page.charts["requests"].plot.getAxis("left").labelText == "requests /min"
    ref = query_series(
        engine,
        now - 6 * 3600,
        now,
        ("requests", "latency_p95", "cost_usd"),
        filters=state.series_filter(),
        now=now,
    )
    busy = int(np.argmax(ref.series[0].values["requests"]))
    t = float(ref.buckets[busy])
    values = page.crosshair_values(t)
    assert values["requests"]["requests"] == ref.series[0].values["requests"][busy]
    assert values["latency"]["p95"] == ref.series[0].values["latency_p95"][busy]
    # ... and the store's count is the raw events' count in that minute.
    raw = [e for e in events if e.provider == "anthropic" and t <= e.ts_end < t + 60]
    assert values["requests"]["requests"] == len(raw) > 0
    assert values["failures"]["timeout"] == sum(1 for e in raw if e.failure is Failure.TIMEOUT)
    assert values["cost"]["cost"] == pytest.approx(sum(e.cost_usd for e in raw), rel=1e-9)
    assert values["tokens"]["input"] == sum(e.input_tokens for e in raw)


def test_feed_reads_history_and_budgets_through_the_bridge(
    qtbot: object, seeded_store: object, tmp_path: Path
) -> None:
    runtime = Runtime()
    runtime.start()
    try:
        feed = LiveFeed(bridge_parent := QtWidgets.QWidget())
        qtbot.addWidget(bridge_parent)  # type: ignore[attr-defined]
        page = TrafficPage(feed)
        qtbot.addWidget(page)  # type: ignore[attr-defined]
        page.show()
        feed.set_state(FilterState(range_key="24h"))
        feed.attach(bridge=Bridge(runtime, bridge_parent), store=lambda: seeded_store)
        qtbot.waitUntil(lambda: page.frame is not None and bool(page.frame.budgets), timeout=15000)  # type: ignore[attr-defined]
        assert page.frame is not None and not page.frame.live
        assert [a.value for a in page.charts["spend"].annotations] == [50.0, 40.0]
        assert "budget daily $50.00" in page.charts["spend"].annotations[0].item.label.toPlainText()
        assert page.frame.requests.sum() == len(seeded_store.events)  # type: ignore[attr-defined]
        assert "1-minute steps" in page.context.text()
        feed.stop()
    finally:
        runtime.stop()


def test_today_runs_from_midnight_in_the_daily_budgets_time_zone(page: TrafficPage, tmp_path: Path) -> None:
    """A daily budget in Asia/Tokyo: "spend today", "yesterday by now" and the spend chart's daily
    reset follow Tokyo's midnight (15:00 UTC), as the budget the gateway enforces does."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from app.core.event import Event

    tokyo = ZoneInfo("Asia/Tokyo")
    now = datetime(2026, 6, 10, 14, 0, tzinfo=tokyo).timestamp()  # 05:00 UTC
    midnight = datetime(2026, 6, 10, tzinfo=tokyo).timestamp()
    events = [
        Event(ts_start=t, ts_end=t + 1, provider="openai", model="m", cost_usd=0.01 * (1 + i % 7))
        for i, t in enumerate(np.arange(now - 40 * 3600, now - 60, 600.0))
    ]
    store = open_store(f"sqlite:///{tmp_path / 'tokyo.sqlite3'}")
    try:
        with Pipeline(store) as pipeline:
            pipeline.write(Batch(events=events))
        save_object(
            store.engine,
            "budget",
            {"name": "tokyo-daily", "scope": {}, "period": "day", "timezone": "Asia/Tokyo", "limit_usd": 5.0},
            expected_revision=None,
            actor="test",
        )
        facts = read_store_facts(store.engine, FilterState(), now=now)
        assert facts.zone == "Asia/Tokyo" and [b.timezone for b in facts.budgets] == ["Asia/Tokyo"]
        today = sum(e.cost_usd for e in events if e.ts_start >= midnight)
        assert facts.spend_today_usd == pytest.approx(today, rel=1e-9)
        since = midnight - 86400
        yesterday = sum(e.cost_usd for e in events if since <= e.ts_start < since + (now - midnight))
        assert facts.spend_yesterday_usd == pytest.approx(yesterday, rel=1e-9)
        assert today != pytest.approx(sum(e.cost_usd for e in events if e.ts_start >= now // 86400 * 86400))

        frame = history_frame(store.engine, FilterState(range_key="24h"), now=now)
        k = int(np.searchsorted(frame.t, midnight))
        assert frame.t[k] == midnight
        # The running total starts again at Tokyo's midnight and ends at today's spend.
        assert frame.spend_day_usd[k] == pytest.approx(frame.cost_usd[k])
        assert frame.spend_day_usd[k - 1] > frame.spend_day_usd[k]
        assert frame.spend_day_usd[-1] == pytest.approx(today, rel=1e-9)
        utc_midnight = now // 86400 * 86400
        u = int(np.searchsorted(frame.t, utc_midnight))
        assert frame.spend_day_usd[u] > frame.cost_usd[u], "no reset at UTC midnight"
        assert frame.budgets == facts.budgets  # read with the frame's days, so title and resets agree
        page.apply_frame(frame)
        assert "Spend today (Asia/Tokyo day) vs budget" in page.charts["spend"].header.text
    finally:
        store.close()


def test_day_starts_follow_local_midnights_across_a_dst_change() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from app.ui.livefeed import day_bounds, day_starts

    ny = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, tzinfo=ny).timestamp()  # clocks go back: a 25-hour day
    second = datetime(2026, 11, 2, tzinfo=ny).timestamp()
    assert second - first == 25 * 3600
    t = np.arange(first - 3600, second + 7200, 1800.0)
    starts = day_starts(t, "America/New_York")
    assert set(starts[t < first]) == {first - 24 * 3600}
    assert set(starts[(t >= first) & (t < second)]) == {first}
    assert set(starts[t >= second]) == {second}
    assert day_bounds(first + 10, "America/New_York") == (first, second)
    assert day_bounds(first + 10, "Not/AZone") == (first // 86400 * 86400, first // 86400 * 86400 + 86400)


def test_a_wall_clock_set_back_does_not_stop_the_store_being_asked(
    qtbot: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An NTP step or a hand correction sets the wall clock back an hour: the feed still asks the
    store every STORE_INTERVAL_S, measured on the monotonic clock, and no more often."""
    import types

    from app.ui import livefeed

    wall, mono = [1_800_000_000.0], [1000.0]
    fake_time = types.SimpleNamespace(
        time=lambda: wall[0], monotonic=lambda: mono[0], perf_counter=time.perf_counter
    )
    monkeypatch.setattr(livefeed, "time", fake_time)

    class RecordingBridge:
        def __init__(self) -> None:
            self.asked = 0

        def run(self, coro: object, ok: object, err: object) -> None:
            self.asked += 1
            coro.close()  # type: ignore[attr-defined]  # never run: only the asking is under test
            ok(livefeed.StoreFacts(fetched_at=wall[0]))  # type: ignore[operator]

    feed = LiveFeed()
    bridge = RecordingBridge()
    feed.bridge = bridge
    feed.attach(store=lambda: types.SimpleNamespace(engine=None))
    feed.timer.stop()
    assert bridge.asked == 1

    def advance(seconds: float, *, wall_step: float = 0.0) -> int:
        wall[0] += seconds + wall_step
        mono[0] += seconds
        feed.tick()
        return bridge.asked

    assert advance(5.0) == 1
    assert advance(livefeed.STORE_INTERVAL_S, wall_step=-3600.0) == 2
    assert advance(5.0) == 2
    assert advance(livefeed.STORE_INTERVAL_S) == 3
    feed.stop()


def test_store_facts_spend_today_budgets_and_breakers(seeded_store: object) -> None:
    from storage.queries.control import append_breaker_transition

    engine = seeded_store.engine  # type: ignore[attr-defined]
    append_breaker_transition(
        engine, "fast", ts=time.time() - 5, from_state="closed", to_state="open", cause="t"
    )
    now = time.time()
    facts = read_store_facts(engine, FilterState(), now=now)
    day = math.floor(now / 86400) * 86400
    # An event counts in the minute it started, as everywhere in the store (a call that began before
    # midnight and ended after it is yesterday's).
    expected = sum(e.cost_usd for e in seeded_store.events if e.ts_start >= day)  # type: ignore[attr-defined]
    assert facts.spend_today_usd == pytest.approx(expected, rel=1e-9)
    assert [b.name for b in facts.budgets] == ["daily"]
    assert facts.open_breakers == 1
    assert [(m.target, m.to_state) for m in facts.transitions] == [("fast", "open")]
    assert set(facts.dimension_values["provider"]) == {"openai", "anthropic"}
    # The store holds the last 3 hours: no "yesterday by now" to compare today's spend with.
    assert facts.spend_yesterday_usd is None
    old = seeded_store.events[0]  # type: ignore[attr-defined]
    with Pipeline(seeded_store) as pipeline:  # type: ignore[arg-type]
        pipeline.write(
            Batch(
                events=[
                    dataclasses.replace(
                        old,
                        event_id="0" * 31 + "a",
                        ts_start=day - 2 * 86400,
                        ts_end=day - 2 * 86400 + 1,
                        cost_usd=0.0,
                    ),
                    dataclasses.replace(
                        old,
                        event_id="0" * 31 + "b",
                        ts_start=day - 86400 + 1,
                        ts_end=day - 86400 + 2,
                        cost_usd=0.25,
                    ),
                ]
            )
        )
    assert read_store_facts(engine, FilterState(), now=now).spend_yesterday_usd == pytest.approx(0.25)
    # A budget scoped to another feature does not apply to a filter on this one.
    save_object(
        engine,
        "budget",
        {"name": "chat-only", "scope": {"feature": "chat"}, "period": "day", "limit_usd": 5.0},
        expected_revision=None,
        actor="test",
    )
    assert [b.name for b in read_store_facts(engine, FilterState(feature="summarize"), now=now).budgets] == [
        "daily"
    ]
    assert {b.name for b in read_store_facts(engine, FilterState(feature="chat"), now=now).budgets} == {
        "daily",
        "chat-only",
    }


def test_breaker_transitions_are_drawn_on_the_time_axis(
    page: TrafficPage, seeded_live: LiveAggregator
) -> None:
    from app.ui.livefeed import BreakerMark

    frame = live_frame(seeded_live, FilterState())
    frame.transitions = [
        BreakerMark(NOW - 300, "fast", "closed", "open", "failure_rate 0.62 over 31 requests"),
        BreakerMark(NOW - 5000, "old", "closed", "open", "before the window"),
    ]
    page.apply_frame(frame)
    markers = page.charts["requests"].markers
    assert [m.value() for m in markers] == [NOW - 300]
    assert markers[0].label.toPlainText() == "fast open"
    assert "failure_rate 0.62" in markers[0].toolTip()
    assert [m.value() for m in page.charts["failures"].markers] == [NOW - 300]


def test_a_failure_type_that_did_not_happen_draws_no_layer(
    page: TrafficPage, seeded_live: LiveAggregator
) -> None:
    frame = live_frame(seeded_live, FilterState())
    chart = page.charts["failures"]
    page.apply_frame(frame)
    absent = [f.value for f in FAILURE_TYPES if not frame.failures[f].any()]
    present = [f.value for f in FAILURE_TYPES if frame.failures[f].any()]
    assert absent and present
    for key in absent:
        xs, _ys = chart.curves[key].getData()
        assert xs is None or len(xs) == 0, key
        assert chart.value_at(len(frame.t) - 1)[key] == 0.0  # still read out as zero
    for key in present:
        xs, _ys = chart.curves[key].getData()
        assert xs is not None and len(xs) == len(frame.t), key


def test_seconds_before_the_app_was_watching_are_unknown_not_zero(page: TrafficPage) -> None:
    """Right after start-up the lines begin where the app began, not as a flat zero across the window."""
    clock = [NOW - 120]
    live = LiveAggregator(clock=lambda: clock[0])  # started watching two minutes ago
    clock[0] = NOW
    live.add(list(synthetic_events(NOW - 100, 100, seed=8)))
    assert live.watching_since == NOW - 120 - 0.25  # the whole second it started in
    frame = live_frame(live, FilterState())
    before = frame.t < live.watching_since
    assert before.any() and not before.all()
    assert np.isnan(frame.requests[before]).all() and np.isnan(frame.spend_day_usd[before]).all()
    s = live.series(LiveFilter(), seconds=len(frame.t), now=NOW - 1)
    np.testing.assert_array_equal(frame.requests[~before], s.requests[~before])  # the rest as counted
    page.apply_frame(frame)
    assert page.empty.isHidden()
    assert math.isnan(page.crosshair_values(float(frame.t[0]))["requests"]["requests"])  # read out as "—"
    # Events older than the aggregator (a source replaying history): no start is known.
    live.add(list(synthetic_events(NOW - 600, 10, seed=9)))
    assert live.watching_since == -math.inf


def test_a_sparse_latency_line_joins_short_gaps_only(page: TrafficPage) -> None:
    from app.ui.charts import MAX_GAP_STEPS

    chart = page.charts["latency"]
    t = np.arange(100.0) + NOW
    y = np.full(100, np.nan)
    y[[0, 1, 3, 3 + MAX_GAP_STEPS + 1, 3 + MAX_GAP_STEPS + 2]] = [100.0, 200.0, 300.0, 400.0, 500.0]
    chart.set_data(t, {"p50": y, "p95": y, "p99": y})
    curve = chart.curves["p50"]
    xs, ys = curve.xData, curve.yData  # the data set (getData is clipped to the view)
    assert ys.tolist() == [100.0, 200.0, 300.0, 400.0, 500.0] and xs[2] == NOW + 3
    joined = chart.curves["p50"].opts["connect"]
    assert joined.tolist() == [True, True, False, True, False]  # 1 -> 3 joined; 3 -> 14 is a gap
    assert math.isnan(chart.value_at(2)["p50"])  # the crosshair still says "no value in that second"
