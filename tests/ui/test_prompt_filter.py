"""The filter bar's prompt filter: choosing a prompt version narrows Traffic (live and history) and Events.

A seeded store holds the registry prompt ``ticket-summary`` (versions 1 and 2)
and a few hundred events of the last minutes, some through each version, some
through no prompt; the same events feed a live aggregator.  The operator picks
``ticket-summary@2`` (then ``ticket-summary``, every version) in the combo, and
every figure shown is checked against the store's own count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.core.event import Event
from app.runtime import Runtime
from app.sources.base import Batch
from app.sources.live import LiveAggregator
from app.sources.pipeline import Pipeline
from app.ui.bridge import Bridge
from app.ui.filters import FilterBar, FilterState, prompt_choices
from app.ui.livefeed import SPARK_BUCKET_S, history_frame, overview_snapshot
from app.ui.main_window import MainWindow
from app.ui.models.runner import run_now
from app.ui.pages.events import EventsPage
from app.ui.pages.traffic import TrafficPage
from app.ui.qt import QtWidgets
from storage.engine import Store, open_store
from storage.queries.events import EventFilter, count_events
from storage.queries.prompts import add_version, create_prompt
from tests.ui.traffic_data import synthetic_events

pytestmark = pytest.mark.gui

VERSIONS = [("ticket-summary", 1), ("ticket-summary", 2), ("ticket-summary", 2), (None, None)]


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Store, list[Event]]]:
    store = open_store(f"sqlite:///{tmp_path / 'prompts.sqlite3'}")
    create_prompt(store.engine, "ticket-summary", actor="test")
    add_version(store.engine, "ticket-summary", template="Summarize: {{ticket}}", actor="test")
    add_version(store.engine, "ticket-summary", template="Summarize in {{n}} words: {{ticket}}", actor="test")
    rng = random.Random(4)
    now = time.time()
    events = []
    for e in synthetic_events(now - 240, 230, per_second=1.0, seed=9):
        name, version = rng.choice(VERSIONS)
        events.append(replace(e, prompt_name=name, prompt_version=version))
    with Pipeline(store) as pipeline:
        pipeline.write(Batch(events=events))
    yield store, events
    store.close()


def _stored(store: Store, name: str, version: int | None) -> int:
    return count_events(store.engine, EventFilter(prompt_name=name, prompt_version=version))


def test_choosing_a_prompt_version_narrows_traffic_and_events(
    qtbot: object, seeded: tuple[Store, list[Event]]
) -> None:
    store, events = seeded
    v1, v2 = _stored(store, "ticket-summary", 1), _stored(store, "ticket-summary", 2)
    assert v1 > 0 and v2 > 0 and v1 + v2 < len(events)
    live = LiveAggregator()
    live.add(events)
    runtime = Runtime()
    runtime.start()
    window = MainWindow()
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    try:
        window.resize(1280, 800)
        window.show()
        window.show_page("traffic")
        parent = QtWidgets.QWidget()
        qtbot.addWidget(parent)  # type: ignore[attr-defined]
        # The traffic pages through the feed (store reads on the runtime), the Events page reads the
        # store in place (run_now): no other page is attached, so none keeps asking after the test.
        window.feed.attach(live=live, bridge=Bridge(runtime, parent), store=lambda: store)
        events_page = window.pages["events"]
        assert isinstance(events_page, EventsPage)
        events_page.attach_store(lambda: store, run_now)
        events_page.set_filter_state(window.filters.state)
        page = window.pages["traffic"]
        assert isinstance(page, TrafficPage)
        combo = window.filters.combos["prompt"]
        # The registry's versions and each name (every version) are offered.
        qtbot.waitUntil(lambda: combo.findData("ticket-summary@2") > 0, timeout=15000)  # type: ignore[attr-defined]
        assert combo.findData("ticket-summary@1") > 0 and combo.findData("ticket-summary") > 0
        assert combo.itemText(combo.findData("ticket-summary")) == "ticket-summary · all versions"
        qtbot.waitUntil(lambda: page.frame is not None, timeout=15000)  # type: ignore[attr-defined]
        assert page.frame is not None and float(np.nansum(page.frame.requests)) == len(events)

        # Live: one version.
        combo.setCurrentIndex(combo.findData("ticket-summary@2"))
        assert window.filters.state.prompt == "ticket-summary@2"
        assert combo.shown_text() == "prompt: ticket-summary@2"
        qtbot.waitUntil(  # type: ignore[attr-defined]
            lambda: page.frame is not None and page.frame.state.prompt == "ticket-summary@2", timeout=15000
        )
        frame = page.frame
        assert frame is not None and frame.live
        assert float(np.nansum(frame.requests)) == v2
        assert float(np.nansum(page.charts["requests"].values["requests"])) == v2  # what the chart holds
        want_cost = sum(e.cost_usd or 0.0 for e in events if e.prompt_version == 2)
        assert float(np.nansum(frame.cost_usd)) == pytest.approx(want_cost, rel=1e-9)

        # The Overview reads the same live filter: its sparkline holds the version's requests.
        snap = overview_snapshot(live, window.filters.state.live_filter(), None)
        assert float(np.nansum(snap.sparks["requests_per_s"])) * SPARK_BUCKET_S == pytest.approx(v2)

        # Live: every version of the prompt.
        combo.setCurrentIndex(combo.findData("ticket-summary"))
        assert combo.shown_text() == "prompt: ticket-summary (all versions)"
        qtbot.waitUntil(  # type: ignore[attr-defined]
            lambda: page.frame is not None and page.frame.state.prompt == "ticket-summary", timeout=15000
        )
        assert float(np.nansum(page.frame.requests)) == v1 + v2

        # The Events page follows the same choice: the store's rows of that version, and only those.
        combo.setCurrentIndex(combo.findData("ticket-summary@2"))
        window.show_page("events")

        def rows_match() -> bool:
            m = events_page.model
            return m is not None and m.query.filters.prompt_version == 2 and m.rowCount() == v2

        qtbot.waitUntil(rows_match, timeout=15000)  # type: ignore[attr-defined]
        model = events_page.model
        assert model is not None
        assert {model.row_at(i).prompt for i in range(model.rowCount())} == {"ticket-summary@2"}
        assert model.query.filters.prompt_name == "ticket-summary"

        # History (1 hour): read from the events table, the same count, and the page says so.
        window.show_page("traffic")
        window.filters.range_combo.setCurrentIndex(window.filters.range_combo.findData("1h"))
        qtbot.waitUntil(  # type: ignore[attr-defined]
            lambda: (
                page.frame is not None
                and not page.frame.live
                and page.frame.state.prompt == "ticket-summary@2"
            ),
            timeout=15000,
        )
        frame = page.frame
        assert frame is not None and frame.source == "events" and frame.step_s == 60
        in_range = [
            e
            for e in events
            if e.prompt_version == 2 and frame.t[0] <= e.ts_start < frame.t[-1] + frame.step_s
        ]
        assert float(frame.requests.sum()) == len(in_range) > 0
        assert "events (rollups have no prompt)" in page.context.text()

        # 30 days is longer than the events are read for: the chart says why it is empty.
        window.filters.range_combo.setCurrentIndex(window.filters.range_combo.findData("30d"))
        qtbot.waitUntil(  # type: ignore[attr-defined]
            lambda: page.frame is not None and page.frame.state.range_key == "30d", timeout=15000
        )
        assert page.frame.note is not None and "up to 7 days" in page.frame.note
        assert page.empty.isVisibleTo(page) and "up to 7 days" in page.empty.label.text()
    finally:
        window.feed.stop()
        runtime.stop()


def test_history_frames_by_prompt_match_the_store(seeded: tuple[Store, list[Event]]) -> None:
    store, events = seeded
    now = time.time()
    for prompt, keep in (
        ("ticket-summary@1", lambda e: e.prompt_version == 1),
        ("ticket-summary", lambda e: e.prompt_name == "ticket-summary"),
    ):
        frame = history_frame(store.engine, FilterState(prompt=prompt, range_key="6h"), now=now)
        assert frame.source == "events" and frame.note is None
        end = frame.t[-1] + frame.step_s
        want = [e for e in events if keep(e) and frame.t[0] <= e.ts_start < end]
        assert frame.requests.sum() == len(want) > 0
        assert frame.input_tokens.sum() == sum(e.input_tokens for e in want)
        assert frame.cost_usd.sum() == pytest.approx(sum(e.cost_usd or 0 for e in want), rel=1e-9)
    plain = history_frame(store.engine, FilterState(range_key="6h"), now=now)
    end = plain.t[-1] + plain.step_s
    shown = [e for e in events if plain.t[0] <= e.ts_start < end]  # whole minutes only
    assert plain.source == "rollups" and plain.requests.sum() == len(shown) > 0


def test_the_prompt_choice_persists_and_names_offer_every_version(qtbot: object) -> None:
    assert prompt_choices(["a@1", "a@2", "label", ""]) == ["a", "a@1", "a@2", "label"]
    first = FilterBar()
    qtbot.addWidget(first)  # type: ignore[attr-defined]
    first.set_state(FilterState(prompt="ticket-summary@2", range_key="24h"))
    assert first.state.prompt_parts() == ("ticket-summary", 2)
    assert first.clear_button.isVisibleTo(first)
    second = FilterBar()
    qtbot.addWidget(second)  # type: ignore[attr-defined]
    second.restore()
    assert second.state.prompt == "ticket-summary@2"
    assert second.state.series_filter() == FilterState().series_filter()  # the rollups get no prompt
    second.set_dimension_values({"prompt": ["faq@1"]})
    combo = second.combos["prompt"]
    offered = [combo.itemData(i) for i in range(1, combo.count())]
    assert offered == ["faq", "faq@1", "ticket-summary@2"]  # the current choice stays
