"""The Events page with a real store: renders, searches, presets, the detail panel (Esc closes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.event import Failure
from app.ui.main_window import MainWindow
from app.ui.models.events_model import COL_FAILURE, COL_TIME, COL_TOKENS
from app.ui.models.runner import run_now
from app.ui.pages.events import EventsPage
from app.ui.qt import Qt
from storage.engine import Store, open_store
from storage.queries.events import insert_events
from tests.ui.events_data import make_events

pytestmark = pytest.mark.gui


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    insert_events(s.engine, make_events(3000, end=time.time() - 1, span_s=1800))
    yield s
    s.close()


@pytest.fixture
def page(qtbot: object, store: Store) -> EventsPage:
    p = EventsPage()
    qtbot.addWidget(p)  # type: ignore[attr-defined]
    p.resize(1200, 700)
    p.show()
    p.attach_store(store, run_now)
    return p


def test_renders_rows_and_count(page: EventsPage) -> None:
    assert page.model is not None
    assert page.model.rowCount() == 500
    assert page.count_label.text().startswith("3,000 events")
    assert page.table_stack.currentWidget() is page.table
    assert page.model.index(0, COL_TIME).data().endswith("ago")


def test_search_box_and_bad_search(page: EventsPage, qtbot: object) -> None:
    page.search.setText("user:chen")
    page.search.returnPressed.emit()
    assert page.model is not None
    assert {page.model.row_at(i).user for i in range(page.model.rowCount())} == {"chen"}
    page.search.setText("failure:melted")
    page.search.returnPressed.emit()
    assert page.error_label.isVisibleTo(page)
    assert "not a failure type" in page.error_label.text()
    page.search.clear()
    page.search.returnPressed.emit()
    assert not page.error_label.isVisibleTo(page)


def test_presets_and_failure_type(page: EventsPage) -> None:
    model = page.model
    assert model is not None
    page.preset_buttons["tokens"].click()
    assert model.query.sort == "tokens"
    assert page.table.horizontalHeader().sortIndicatorSection() == COL_TOKENS
    page.preset_buttons["slowest"].click()
    assert model.query.sort == "latency"
    page.failure_box.setCurrentIndex(page.failure_box.findData("rate_limited"))
    assert page.preset_buttons["failed"].isChecked()
    assert {model.row_at(i).failure for i in range(model.rowCount())} == {Failure.RATE_LIMITED}
    assert model.index(0, COL_FAILURE).data() == "rate_limited"
    page.apply_preset("newest")
    assert model.query.filters.only_failures is False


def test_detail_panel_shows_every_field_and_esc_closes(page: EventsPage, qtbot: object) -> None:
    model = page.model
    assert model is not None
    page.search.setText("id:" + _event_with_text_id(page))
    page.search.returnPressed.emit()
    assert model.rowCount() == 1
    page.table.setFocus()
    page._open_index(model.index(0, 0))
    detail = page.detail
    assert detail.isVisible()
    text = detail.fields.toPlainText()
    for label in (
        "Event id",
        "Targets tried",
        "Attempts",
        "Latency",
        "Input",
        "Output",
        "Cost",
        "Model answered",
    ):
        assert label in text, label
    assert detail.input_text.isVisibleTo(detail) and "meeting notes" in detail.input_text.toPlainText()
    assert "Launch moved" in detail.output_text.toPlainText()
    qtbot.keyClick(page.table, Qt.Key.Key_Escape)  # type: ignore[attr-defined]
    assert not detail.isVisible()


def test_a_failed_event_shows_its_chain_and_no_text_note(page: EventsPage) -> None:
    model = page.model
    assert model is not None
    page.apply_preset("failed", Failure.SERVER_ERROR)
    page._open_index(model.index(0, 0))
    text = page.detail.fields.toPlainText()
    assert "server_error" in text and "→" in text  # the targets tried, in order
    assert page.detail.no_text.isVisibleTo(page.detail) or page.detail.input_text.isVisibleTo(page.detail)


def test_an_empty_store_says_what_to_do(qtbot: object, tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'empty.db'}") as empty:
        p = EventsPage()
        qtbot.addWidget(p)  # type: ignore[attr-defined]
        p.attach_store(lambda: empty, run_now)
        assert p.table_stack.currentWidget() is p.empty
        assert "demo" in p.empty.label.text()


def test_the_window_wires_the_page_and_follows_the_filter_bar(qtbot: object, store: Store) -> None:
    w = MainWindow()
    qtbot.addWidget(w)  # type: ignore[attr-defined]
    page = w.pages["events"]
    assert isinstance(page, EventsPage)
    w.attach_store(store, run_now)
    assert page.model is not None and page.model.rowCount() > 0
    state = w.filters.state.with_(provider="anthropic", range_key="24h")
    w.filters.set_state(state)
    assert page.model.query.filters.provider == "anthropic"
    assert {page.model.row_at(i).provider for i in range(page.model.rowCount())} == {"anthropic"}
    w.show_page("events")
    assert w.filters.isEnabled()
    w.status.set_ingest(1234.0)
    assert w.status.ingest.text() == "ingest: 1.2k/s"
    w.status.set_sources(2, 3, "jsonl: file missing")
    assert "2/3" in w.status.sources.text() and "⚠" in w.status.sources.text()
    w.status.set_gateway("in-process", True)
    assert "in-process" in w.status.gateway.text()
    w.feed.stop()


def _event_with_text_id(page: EventsPage) -> str:
    with page._engine.connect() as conn:
        return str(
            conn.exec_driver_sql(
                "select event_id from events where input_text is not null limit 1"
            ).scalar_one()
        )


def test_the_table_fits_its_width_instead_of_scrolling_sideways(page: EventsPage, qtbot: object) -> None:
    from app.ui.models.events_model import COL_CACHE, COL_LATENCY, COL_MODEL, COL_PROMPT, HEADERS

    table = page.table
    header = table.horizontalHeader()

    def fits() -> bool:
        shown = [c for c in range(len(HEADERS)) if not header.isSectionHidden(c)]
        return sum(table.columnWidth(c) for c in shown) <= table.viewport().width()

    page.resize(1600, 700)
    qtbot.waitUntil(lambda: not page.hidden_columns(), timeout=3000)  # type: ignore[attr-defined]
    assert fits()  # wide: every column, and no room left over
    page.resize(760, 700)  # the page inside a 960 px window
    qtbot.waitUntil(lambda: table.viewport().width() < 760, timeout=3000)  # type: ignore[attr-defined]
    assert fits() and not table.horizontalScrollBar().isVisible()
    hidden = page.hidden_columns()
    assert hidden and hidden[-1] == HEADERS[COL_PROMPT]  # the end of the display order gives way first
    for column in (COL_TIME, COL_MODEL, COL_FAILURE, COL_LATENCY):
        assert not header.isSectionHidden(column), HEADERS[column]
    # A name cut short shows whole on hover.
    assert page.model is not None
    assert page.model.index(0, COL_MODEL).data(Qt.ItemDataRole.ToolTipRole) == page.model.row_at(0).model
    # The operator may ask for a column anyway (it then scrolls), and go back to fitting.
    page.set_column_shown(COL_CACHE, True)
    assert not header.isSectionHidden(COL_CACHE)
    page.set_column_shown(COL_TIME, False)
    assert header.isSectionHidden(COL_TIME)
    page.fit_columns_to_width()
    assert fits() and not header.isSectionHidden(COL_TIME) and header.isSectionHidden(COL_CACHE)
    page.resize(1600, 700)
    qtbot.waitUntil(lambda: not page.hidden_columns(), timeout=3000)  # type: ignore[attr-defined]


def test_ctrl_r_reads_the_newest_events_with_the_range_ending_now(qtbot: object, store: Store) -> None:
    from storage.queries.events import insert_events as insert

    w = MainWindow()
    qtbot.addWidget(w)  # type: ignore[attr-defined]
    w.resize(1280, 800)
    w.show()
    with qtbot.waitActive(w):  # type: ignore[attr-defined]  # window shortcuts need an active window
        w.activateWindow()
    page = w.pages["events"]
    assert isinstance(page, EventsPage)
    w.attach_store(store, run_now)
    w.show_page("events")
    now = [time.time()]
    page._clock = lambda: now[0]
    w.filters.set_state(w.filters.state.with_(range_key="1h"))
    assert page.model is not None
    first_since = page.model.query.filters.since
    before = page.model.total
    insert(store.engine, make_events(7, end=time.time(), span_s=1, seed=99))
    now[0] += 60  # a minute later: the range must end then, not when it was chosen
    qtbot.keyClick(w, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # type: ignore[attr-defined]
    qtbot.waitUntil(lambda: page.model is not None and page.model.total == before + 7, timeout=3000)  # type: ignore[attr-defined]
    assert page.model.query.filters.since is not None and first_since is not None
    assert page.model.query.filters.since > first_since
    w.feed.stop()
