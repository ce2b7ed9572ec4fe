"""The events table model without a window: a real SQLite store with 120k events, driven synchronously."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from app.core.event import Failure
from app.ui.models.event_query import PRESETS, EventQuery, SearchError, count_rows, fetch_rows
from app.ui.models.events_model import (
    COL_COST,
    COL_FAILURE,
    COL_LATENCY,
    COL_TIME,
    COL_TOKENS,
    HEADERS,
    ROW_ROLE,
    SORT_ROLE,
    EventsModel,
)
from app.ui.qt import Qt, QtCore, QtTest
from storage.engine import Store, open_store
from storage.queries.events import EventFilter, insert_events
from tests.ui.events_data import make_events

N = 120_000
END = 1_790_000_000.0

pytestmark = pytest.mark.usefixtures("qapp")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("events-model") / "store.db"
    s = open_store(f"sqlite:///{path}")
    insert_events(s.engine, make_events(N, end=END, span_s=2 * 86400))
    yield s
    s.close()


def model_for(store: Store, page_size: int = 500) -> EventsModel:
    calls: list[int] = []

    def fetch(query: EventQuery, after: object, limit: int) -> object:
        calls.append(limit)
        return fetch_rows(store.engine, query, after, limit)  # type: ignore[arg-type]

    model = EventsModel(fetch, partial(count_rows, store.engine), page_size=page_size, clock=lambda: END)
    model.fetch_calls = calls  # type: ignore[attr-defined]
    return model


def test_the_first_page_only_then_more_on_demand(store: Store) -> None:
    model = model_for(store)
    model.reload()
    assert model.rowCount() == 500
    assert model.total == N
    assert model.canFetchMore()
    model.fetchMore()
    model.fetchMore()
    assert model.rowCount() == 1500
    assert model.pages_fetched == 3
    # Newest first, no gaps or repeats across the page seams.
    times = [model.row_at(i).ts_start for i in range(model.rowCount())]
    assert times == sorted(times, reverse=True)
    assert len({model.row_at(i).id for i in range(model.rowCount())}) == 1500


def test_qt_model_tester_finds_nothing_wrong(store: Store, qtbot: object) -> None:
    # Answers arrive later, as from the bridge: the tester pokes fetchMore itself.
    queue: list[tuple[object, object, object]] = []

    def later(work: object, on_result: object, on_error: object) -> None:
        queue.append((work, on_result, on_error))

    model = EventsModel(
        partial(fetch_rows, store.engine), partial(count_rows, store.engine), runner=later, page_size=100
    )
    tester = QtTest.QAbstractItemModelTester(
        model, QtTest.QAbstractItemModelTester.FailureReportingMode.Warning
    )
    model.set_query(EventQuery(search="user:bo"))

    def answer(n: int) -> None:
        # The tester asks for more after each page; answer a bounded number of times.
        for _ in range(n):
            if not queue:
                return
            work, on_result, _ = queue.pop(0)
            on_result(work())  # type: ignore[operator]

    answer(4)
    model.sort(COL_TOKENS, Qt.SortOrder.DescendingOrder)
    answer(3)
    assert model.rowCount() >= 100
    del tester  # qt_log_level_fail turns any complaint of the tester into a failure


def test_paging_to_the_end_reads_every_row_once(store: Store) -> None:
    model = model_for(store, page_size=5000)
    model.set_query(EventQuery(filters=EventFilter(provider="anthropic", failures=(Failure.TIMEOUT,))))
    while model.canFetchMore():
        model.fetchMore()
    expected = count_rows(store.engine, model.query)
    assert model.rowCount() == expected == model.total
    assert model.exhausted and not model.canFetchMore()


def test_sort_by_tokens_goes_to_the_store(store: Store) -> None:
    model = model_for(store)
    model.sort(COL_TOKENS, Qt.SortOrder.DescendingOrder)
    assert model.query.sort == "tokens" and model.query.descending
    model.fetchMore()
    tokens = [model.index(i, COL_TOKENS).data(SORT_ROLE) for i in range(model.rowCount())]
    assert tokens == sorted(tokens, reverse=True)
    # The biggest request in the whole store is on top, not the biggest of a loaded page.
    with store.begin() as conn:
        top = conn.exec_driver_sql("select max(input_tokens + output_tokens) from events").scalar_one()
    assert tokens[0] == top
    # Keyset across the seam: ties broken by id, nothing repeated.
    ids = [model.row_at(i).id for i in range(model.rowCount())]
    assert len(set(ids)) == len(ids) == 1000


def test_sort_ascending_by_latency_and_cost_with_unknowns(store: Store) -> None:
    model = model_for(store)
    model.sort(COL_LATENCY, Qt.SortOrder.AscendingOrder)
    lat = [model.index(i, COL_LATENCY).data(SORT_ROLE) for i in range(model.rowCount())]
    assert lat == sorted(lat)
    model.sort(COL_COST, Qt.SortOrder.AscendingOrder)
    costs = [model.index(i, COL_COST).data(SORT_ROLE) for i in range(model.rowCount())]
    assert costs[0] is None  # unknown prices sort below every known one, and say so
    assert model.index(0, COL_COST).data() == "unknown"


def test_search_words_and_fields(store: Store) -> None:
    model = model_for(store)
    model.set_query(EventQuery(search="provider:anthropic failure:rate_limited"))
    assert model.rowCount() > 0
    rows = [model.row_at(i) for i in range(model.rowCount())]
    assert all(r.provider == "anthropic" and r.failure is Failure.RATE_LIMITED for r in rows)
    model.set_query(EventQuery(search="CHEN"))  # a plain word: any text column, any case
    assert model.rowCount() == 500
    assert all(model.row_at(i).user == "chen" for i in range(model.rowCount()))
    assert model.total == count_rows(store.engine, EventQuery(filters=EventFilter(user="chen")))
    model.set_query(EventQuery(search="target:haiku status:500"))
    assert model.rowCount() > 0
    assert all(model.row_at(i).status_code == 500 for i in range(model.rowCount()))
    model.set_query(EventQuery(search="no-such-thing-anywhere"))
    assert model.rowCount() == 0 and model.total == 0 and not model.canFetchMore()


def test_a_bad_search_says_how_to_fix_it(store: Store) -> None:
    model = model_for(store)
    model.set_query(EventQuery(search="failure:explode"))
    assert "not a failure type" in model.error and "timeout" in model.error
    assert model.rowCount() == 0 and not model.canFetchMore()
    with pytest.raises(SearchError, match="unknown field 'colour'"):
        fetch_rows(store.engine, EventQuery(search="colour:red"))
    with pytest.raises(SearchError, match="close the quote"):
        fetch_rows(store.engine, EventQuery(search='"open'))
    model.set_query(EventQuery())
    assert model.error == "" and model.rowCount() == 500


def test_presets_most_tokens_slowest_failed_by_type(store: Store) -> None:
    model = model_for(store)
    for preset in PRESETS:
        model.set_query(preset.query(EventFilter()))
        assert model.rowCount() > 0, preset.title
    most = next(p for p in PRESETS if p.key == "tokens").query(EventFilter())
    model.set_query(most)
    assert model.query.sort == "tokens" and model.query.descending
    slow = next(p for p in PRESETS if p.key == "slowest").query(EventFilter())
    model.set_query(slow)
    lat = [model.row_at(i).latency_ms for i in range(model.rowCount())]
    assert lat == sorted(lat, reverse=True)
    failed = next(p for p in PRESETS if p.key == "failed").query(EventFilter(), Failure.TIMEOUT)
    model.set_query(failed)
    assert {model.row_at(i).failure for i in range(model.rowCount())} == {Failure.TIMEOUT}
    assert model.index(0, COL_FAILURE).data() == "timeout"


def test_cells_read_the_way_ui_md_says(store: Store) -> None:
    model = model_for(store)
    model.reload()
    assert model.columnCount() == len(HEADERS)
    row = model.index(0, COL_TIME).data(ROW_ROLE)
    time_text = model.index(0, COL_TIME).data()
    assert "ago" in time_text and ":" in time_text  # absolute local time beside the relative one
    assert "UTC" in model.index(0, COL_TIME).data(Qt.ItemDataRole.ToolTipRole)
    assert model.index(0, COL_LATENCY).data().endswith(("ms", " s"))
    assert "→" in model.index(0, COL_TOKENS).data()
    assert model.index(0, COL_TOKENS).data(SORT_ROLE) == row.input_tokens + row.output_tokens
    align = model.index(0, COL_LATENCY).data(Qt.ItemDataRole.TextAlignmentRole)
    assert align & int(Qt.AlignmentFlag.AlignRight)


def test_relative_times_move_on_with_one_datachanged(store: Store, qtbot: object) -> None:
    now = [END]
    model = EventsModel(partial(fetch_rows, store.engine), clock=lambda: now[0])
    model.reload()
    before = model.index(0, COL_TIME).data()
    now[0] += 7200
    with qtbot.waitSignal(model.dataChanged) as blocker:  # type: ignore[attr-defined]
        model.refresh_times()
    top_left, bottom_right = blocker.args[0], blocker.args[1]
    assert (top_left.row(), top_left.column()) == (0, COL_TIME)
    assert bottom_right.row() == model.rowCount() - 1
    assert model.index(0, COL_TIME).data() != before


def test_a_late_answer_to_an_old_query_is_dropped(store: Store) -> None:
    pending: list[tuple[object, object, object]] = []

    def deferred(work: object, on_result: object, on_error: object) -> None:
        pending.append((work, on_result, on_error))

    model = EventsModel(partial(fetch_rows, store.engine), runner=deferred, page_size=50)
    model.set_query(EventQuery(search="provider:openai"))
    model.set_query(EventQuery(search="provider:anthropic"))
    assert model.loading
    for work, on_result, _ in pending:
        on_result(work())  # type: ignore[operator]
    assert model.rowCount() == 50
    assert {model.row_at(i).provider for i in range(50)} == {"anthropic"}
    assert not model.loading


def test_reset_on_reload(store: Store, qtbot: object) -> None:
    model = model_for(store)
    model.reload()
    with qtbot.waitSignals([model.modelAboutToBeReset, model.modelReset]):  # type: ignore[attr-defined]
        model.reload()
    assert model.rowCount() == 500


def test_fetch_errors_reach_the_operator() -> None:
    def broken(query: object, after: object, limit: int) -> object:
        raise OSError("disk I/O error")

    model = EventsModel(broken)  # type: ignore[arg-type]
    model.reload()
    assert model.error == "disk I/O error"
    assert not model.canFetchMore()
    _ = QtCore


def test_refresh_swaps_in_new_rows_without_a_blank_table(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'live.db'}") as live:
        insert_events(live.engine, make_events(50, end=END, span_s=60, seed=1))
        model = EventsModel(partial(fetch_rows, live.engine), partial(count_rows, live.engine), page_size=20)
        model.reload()
        assert model.total == 50
        sizes: list[int] = []
        model.modelReset.connect(lambda: sizes.append(model.rowCount()))
        insert_events(live.engine, make_events(5, end=END + 30, span_s=10, seed=2))
        model.refresh()
        assert sizes == [20]  # one reset, straight to the new first page
        assert model.row_at(0).ts_start > END and model.total == 55
