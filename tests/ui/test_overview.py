"""The Overview: vital signs from the live window, change against the previous period, sparklines, click-through."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import pytest

from app.sources.live import LiveAggregator, LiveFilter
from app.ui.livefeed import OVERVIEW_PERIOD_S, SPARK_BUCKET_S, BudgetLine, StoreFacts, overview_snapshot
from app.ui.main_window import MainWindow
from app.ui.pages.overview import OverviewPage
from app.ui.pages.traffic import TrafficPage
from app.ui.qt import Qt
from tests.ui.traffic_data import synthetic_events

pytestmark = pytest.mark.gui

NOW = 1_764_400_000.25


@pytest.fixture
def live() -> LiveAggregator:
    agg = LiveAggregator(clock=lambda: NOW)
    agg.add(list(synthetic_events(NOW - 900, 900, seed=9)))
    return agg


@pytest.fixture
def window(qtbot: object) -> Iterator[MainWindow]:
    w = MainWindow()
    qtbot.addWidget(w)  # type: ignore[attr-defined]
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)  # type: ignore[attr-defined]
    yield w
    w.feed.stop()


def test_snapshot_numbers_are_the_live_windows(live: LiveAggregator) -> None:
    snap = overview_snapshot(live, LiveFilter(), None, now=NOW)
    s = live.series(LiveFilter(), now=NOW)
    p = OVERVIEW_PERIOD_S
    assert snap.values["requests_per_s"] == pytest.approx(s.requests[-p:].sum() / p)
    assert snap.previous["requests_per_s"] == pytest.approx(s.requests[-2 * p : -p].sum() / p)
    assert snap.values["error_rate"] == pytest.approx(s.errors[-p:].sum() / s.requests[-p:].sum())
    assert snap.values["cache_hit_rate"] == pytest.approx(s.cache_hits[-p:].sum() / s.requests[-p:].sum())
    assert snap.values["p95_latency_ms"] == live.percentiles(LiveFilter(), seconds=60, now=NOW)[0.95]
    assert snap.previous["p95_latency_ms"] == live.percentiles(LiveFilter(), seconds=60, now=NOW - 60)[0.95]
    assert snap.values["cost_today_usd"] is None  # no store yet: not a made-up zero
    assert len(snap.sparks["requests_per_s"]) == 900 // SPARK_BUCKET_S


def test_cost_today_adds_live_seconds_to_the_stores_figure(live: LiveAggregator) -> None:
    facts = StoreFacts(
        fetched_at=NOW - 30,
        spend_today_usd=12.0,
        spend_yesterday_usd=10.0,
        budgets=[BudgetLine("daily", 50.0)],
        open_breakers=2,
    )
    snap = overview_snapshot(live, LiveFilter(), facts, now=NOW)
    s = live.series(LiveFilter(), now=NOW)
    after = s.cost_usd[s.t > math.floor(NOW - 30)].sum()
    assert snap.values["cost_today_usd"] == pytest.approx(12.0 + after)
    assert snap.previous["cost_today_usd"] == 10.0
    assert snap.budget_today_usd == 50.0
    assert snap.values["open_breakers"] == 2


def test_tiles_show_values_changes_and_sparklines(qtbot: object, live: LiveAggregator) -> None:
    page = OverviewPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    page.show()
    facts = StoreFacts(
        fetched_at=NOW, spend_today_usd=12.0, spend_yesterday_usd=10.0, budgets=[BudgetLine("d", 50.0)]
    )
    page.apply_snapshot(overview_snapshot(live, LiveFilter(), facts, now=NOW))
    assert page.empty.isHidden()
    assert page.tiles["cost_today_usd"].value.text().endswith("of $50.00")
    assert "vs yesterday by now" in page.tiles["cost_today_usd"].change.text()
    # The title says which day "today" is: the daily budget's (here the default, UTC).
    assert page.tiles["cost_today_usd"].title.text() == "Cost today (UTC)"
    tokyo = StoreFacts(fetched_at=NOW, spend_today_usd=1.0, budgets=[BudgetLine("d", 50.0, (), "Asia/Tokyo")])
    page.apply_snapshot(overview_snapshot(live, LiveFilter(), tokyo, now=NOW))
    assert page.tiles["cost_today_usd"].title.text() == "Cost today (Asia/Tokyo)"
    assert "vs previous 5 min" in page.tiles["requests_per_s"].change.text()
    assert page.tiles["requests_per_s"].value.text().endswith("/s")
    spark = page.tiles["p95_latency_ms"].spark.values
    assert len(spark) == 60 and np.isfinite(spark).any()
    # The latency spike in the seeded data shows on the sparkline as its tallest point.
    assert int(np.nanargmax(spark)) in range(30, 45)
    # Colour says good or bad: a higher p95 is bad, a higher cache hit rate is good.
    page.apply_snapshot(
        {
            "p95_latency_ms": 900.0,
            "cache_hit_rate": 0.3,
            "previous": {"p95_latency_ms": 600.0, "cache_hit_rate": 0.2},
        }
    )
    from app.ui.theme import current_colors

    colors = current_colors()
    assert colors.bad in page.tiles["p95_latency_ms"].change.styleSheet()
    assert colors.ok in page.tiles["cache_hit_rate"].change.styleSheet()


def test_feed_updates_the_overview_and_a_tile_opens_its_chart(qtbot: object, window: MainWindow) -> None:
    live = LiveAggregator()
    live.add(list(synthetic_events(time.time() - 700, 700)))
    window.show_page("overview")
    window.attach_data(live=live)
    page = window.pages["overview"]
    assert isinstance(page, OverviewPage)
    qtbot.waitUntil(lambda: page.tiles["requests_per_s"].value.text() != "—", timeout=5000)  # type: ignore[attr-defined]
    assert page.tiles["error_rate"].value.text().endswith("%")
    window.resize(960, 600)  # the smallest window: the Traffic charts need scrolling
    qtbot.mouseClick(page.tiles["cache_hit_rate"], Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
    assert window.current_page == "traffic"
    traffic = window.pages["traffic"]
    assert isinstance(traffic, TrafficPage)
    assert traffic.focused_chart == "cache"

    # The cache chart (bottom row) is scrolled into view.
    def cache_chart_visible() -> bool:
        plot = traffic.charts["cache"].plot
        rect = traffic.graphics.mapFromScene(plot.sceneBoundingRect()).boundingRect()
        top = traffic.scroll_area.verticalScrollBar().value()
        return (
            top > 0
            and rect.top() >= top - 1
            and rect.bottom() <= top + traffic.scroll_area.viewport().height() + 1
        )

    qtbot.waitUntil(cache_chart_visible, timeout=3000)  # type: ignore[attr-defined]


def test_rate_right_after_start_counts_only_the_seconds_seen() -> None:
    """Ten seconds of traffic must not read as a five-minute average ("0.0 /s" on first paint)."""
    agg = LiveAggregator(clock=lambda: NOW)
    events = list(synthetic_events(NOW - 10, 10, seed=3))
    agg.add(events)
    s = agg.series(LiveFilter(), now=NOW)
    first = int(np.flatnonzero(s.requests)[0])
    covered = len(s.t) - first
    assert covered <= 12
    snap = overview_snapshot(agg, LiveFilter(), None, now=NOW)
    assert snap.values["requests_per_s"] == pytest.approx(s.requests.sum() / covered)
    assert snap.values["requests_per_s"] > s.requests.sum() / OVERVIEW_PERIOD_S


def test_right_after_start_there_is_no_previous_period_to_compare_with(qtbot: object) -> None:
    """The live window was not watching five minutes ago: no "▲ 100%" against a made-up zero."""
    clock = [NOW]
    agg = LiveAggregator(clock=lambda: clock[0])
    clock[0] = NOW + 20
    agg.add(list(synthetic_events(NOW, 20, seed=5)))
    snap = overview_snapshot(agg, LiveFilter(), None, now=clock[0])
    assert snap.values["requests_per_s"] is not None and snap.values["p95_latency_ms"] is not None
    assert snap.previous["requests_per_s"] is None and snap.previous["error_rate"] is None
    assert snap.previous["p95_latency_ms"] is None
    spark = snap.sparks["requests_per_s"]
    assert np.isnan(spark[:-3]).all() and np.isfinite(spark[-2:]).all()  # no flat zero before start
    page = OverviewPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    page.apply_snapshot(snap)
    assert page.tiles["requests_per_s"].change.text() == ""
    assert page.tiles["p95_latency_ms"].value.text().endswith(("ms", "s"))
    # A store that had nothing yesterday: said in words, not "new vs yesterday by now".
    page.apply_snapshot({"cost_today_usd": 1.5, "previous": {"cost_today_usd": 0.0}})
    assert page.tiles["cost_today_usd"].change.text() == "none yesterday by now"


def test_the_feed_shows_p95_as_soon_as_there_is_a_latency(
    qtbot: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "—" for the first minute: while p95 is unknown it is asked again on every refresh."""
    from app.ui import livefeed

    monkeypatch.setattr(livefeed, "PERCENTILES_INTERVAL_S", 3600.0)  # only "ask until known" can show it
    feed = livefeed.LiveFeed(interval_ms=50)
    agg = LiveAggregator()
    feed.attach(live=agg)
    try:
        qtbot.waitUntil(lambda: feed.last_snapshot is not None, timeout=5000)  # type: ignore[attr-defined]
        assert feed.last_snapshot is not None and feed.last_snapshot.values["p95_latency_ms"] is None
        agg.add(list(synthetic_events(time.time() - 3, 3, seed=2)))
        qtbot.waitUntil(  # type: ignore[attr-defined]
            lambda: (
                feed.last_snapshot is not None and feed.last_snapshot.values["p95_latency_ms"] is not None
            ),
            timeout=5000,
        )
    finally:
        feed.stop()
