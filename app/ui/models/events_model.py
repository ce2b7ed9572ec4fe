"""The events table: a lazy, sortable, searchable model over millions of rows (style.md item 3).

Rows arrive a page at a time through ``canFetchMore``/``fetchMore`` as the
view scrolls; only the pages already seen are held.  Sorting and searching
go to the store (a new query, ``beginResetModel``/``endResetModel``), never
to a proxy over loaded rows, so "most tokens" means most in the store, not
most among the rows scrolled past.  Answers to an old query are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from app.core import format as fmt
from app.core.event import Failure
from app.ui.models.event_query import EventQuery, EventRow, RowCursor, RowPage
from app.ui.models.runner import Runner, run_now
from app.ui.qt import QObject, Qt, QtCore, Signal

# Column constants, in display order: what an operator scans first comes first.
COL_TIME = 0
COL_PROVIDER = 1
COL_MODEL = 2
COL_ROUTE = 3
COL_FAILURE = 4
COL_LATENCY = 5
COL_TOKENS = 6
COL_COST = 7
COL_FEATURE = 8
COL_USER = 9
COL_STATUS = 10
COL_TTFT = 11
COL_ATTEMPTS = 12
COL_CACHE = 13
COL_PROMPT = 14

_TITLES = {
    COL_TIME: "Time",
    COL_PROVIDER: "Provider",
    COL_MODEL: "Model",
    COL_ROUTE: "Route",
    COL_FAILURE: "Failure",
    COL_LATENCY: "Latency",
    COL_TOKENS: "Tokens in → out",
    COL_COST: "Cost",
    COL_FEATURE: "Feature",
    COL_USER: "User",
    COL_STATUS: "Status",
    COL_TTFT: "TTFT",
    COL_ATTEMPTS: "Attempts",
    COL_CACHE: "Cache",
    COL_PROMPT: "Prompt",
}
HEADERS: tuple[str, ...] = tuple(_TITLES[i] for i in range(len(_TITLES)))

#: The store's sort key behind each column.
COLUMN_SORT: dict[int, str] = {
    COL_TIME: "time",
    COL_PROVIDER: "provider",
    COL_MODEL: "model",
    COL_ROUTE: "route",
    COL_FEATURE: "feature",
    COL_USER: "user",
    COL_STATUS: "status",
    COL_FAILURE: "failure",
    COL_LATENCY: "latency",
    COL_TTFT: "ttft",
    COL_TOKENS: "tokens",
    COL_COST: "cost",
    COL_ATTEMPTS: "attempts",
    COL_PROMPT: "prompt",
}
SORT_COLUMN: dict[str, int] = {v: k for k, v in COLUMN_SORT.items()}

#: The raw value of a cell (numbers as numbers, times as epoch seconds).
SORT_ROLE = int(Qt.ItemDataRole.UserRole) + 1
#: The whole :class:`EventRow` of a line.
ROW_ROLE = int(Qt.ItemDataRole.UserRole) + 2

_NUMERIC = {COL_STATUS, COL_LATENCY, COL_TTFT, COL_TOKENS, COL_COST, COL_ATTEMPTS}
_NAMES = {COL_PROVIDER, COL_MODEL, COL_ROUTE, COL_FEATURE, COL_USER, COL_PROMPT}

FetchRows = Callable[[EventQuery, RowCursor | None, int], RowPage]
CountRows = Callable[[EventQuery], int]


def local_time(ts: float, now: float) -> str:
    """The operator's local time: ``14:03:12`` today, ``Nov 28 14:03:12`` before, with the year when not this one."""
    when = datetime.fromtimestamp(ts).astimezone()
    today = datetime.fromtimestamp(now).astimezone()
    if when.date() == today.date():
        return when.strftime("%H:%M:%S")
    if when.year == today.year:
        return when.strftime("%b %d %H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S")


def full_time(ts: float) -> str:
    """Local date and time with the zone, then UTC (once, when the local zone is UTC): tooltips, the detail panel."""
    local = datetime.fromtimestamp(ts).astimezone()
    utc = datetime.fromtimestamp(ts, tz=UTC)
    utc_text = f"{utc:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"
    if local.utcoffset() == utc.utcoffset():
        return utc_text
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}  ({utc_text})"


def _display(row: EventRow, column: int, now: float) -> str:
    if column == COL_TIME:
        return f"{local_time(row.ts_start, now)}  ·  {fmt.fmt_relative_time(now - row.ts_start)}"
    if column == COL_PROVIDER:
        return row.provider
    if column == COL_MODEL:
        return row.model
    if column == COL_ROUTE:
        return row.route or "—"
    if column == COL_FEATURE:
        return row.feature or "—"
    if column == COL_USER:
        return row.user or "—"
    if column == COL_STATUS:
        return "—" if row.status_code is None else str(row.status_code)
    if column == COL_FAILURE:
        return "" if row.failure is Failure.NONE else row.failure.value
    if column == COL_LATENCY:
        return fmt.fmt_latency_ms(row.latency_ms)
    if column == COL_TTFT:
        return fmt.fmt_latency_ms(row.ttft_ms)
    if column == COL_TOKENS:
        return f"{fmt.fmt_tokens(row.input_tokens)} → {fmt.fmt_tokens(row.output_tokens)}"
    if column == COL_COST:
        return "unknown" if row.cost_usd is None else fmt.fmt_usd(row.cost_usd)
    if column == COL_ATTEMPTS:
        return str(row.attempts)
    if column == COL_CACHE:
        return "" if row.cache_hit == "none" else row.cache_hit
    if column == COL_PROMPT:
        return row.prompt or "—"
    return ""


def _raw(row: EventRow, column: int) -> Any:
    return {
        COL_TIME: row.ts_start,
        COL_PROVIDER: row.provider,
        COL_MODEL: row.model,
        COL_ROUTE: row.route,
        COL_FEATURE: row.feature,
        COL_USER: row.user,
        COL_STATUS: row.status_code,
        COL_FAILURE: row.failure.value,
        COL_LATENCY: row.latency_ms,
        COL_TTFT: row.ttft_ms,
        COL_TOKENS: row.tokens,
        COL_COST: row.cost_usd,
        COL_ATTEMPTS: row.attempts,
        COL_CACHE: row.cache_hit,
        COL_PROMPT: row.prompt,
    }.get(column)


class EventsModel(QtCore.QAbstractTableModel):
    """Events of one :class:`EventQuery`, fetched lazily in pages of ``page_size``."""

    #: True while a page or a count is being read.
    loading_changed = Signal(bool)
    #: How many events match the query (arrives after the first page; -1 while unknown).
    total_changed = Signal(int)
    #: A query failed: the message for the operator ("" when the next one succeeds).
    error_changed = Signal(str)

    def __init__(
        self,
        fetch: FetchRows,
        count: CountRows | None = None,
        runner: Runner = run_now,
        *,
        page_size: int = 500,
        clock: Callable[[], float] = time.time,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        self._fetch = fetch
        self._count = count
        self._runner = runner
        self._page_size = page_size
        self._clock = clock
        self._query = EventQuery()
        self._rows: list[EventRow] = []
        self._cursor: RowCursor | None = None
        self._exhausted = True  # nothing to fetch until the first load
        self._loading = False
        self._generation = 0
        self._total = -1
        self._error = ""
        self._now = clock()
        self.pages_fetched = 0

    # -- what the view asks -------------------------------------------------------
    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(HEADERS):
            if role == Qt.ItemDataRole.DisplayRole:
                return HEADERS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                if section == COL_TIME:
                    return "Start of the request, in your local time, and how long ago"
                if section == COL_TOKENS:
                    return "Input tokens → output tokens (sorts by their sum)"
                if section == COL_TTFT:
                    return "Time to first token (streamed requests)"
                if section not in COLUMN_SORT:
                    return f"{HEADERS[section]} (not sortable)"
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return _display(row, column, self._now)
        if role == SORT_ROLE:
            return _raw(row, column)
        if role == ROW_ROLE:
            return row
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if column in _NUMERIC:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == COL_TIME:
                return full_time(row.ts_start)
            if column == COL_FAILURE and row.failure is not Failure.NONE:
                return f"{row.failure.value}: {row.error_message or 'no message recorded'}"
            if column == COL_COST and row.cost_usd is None:
                return "No price is known for this model: the cost is unknown, not zero."
            if column == COL_TOKENS:
                return f"{row.input_tokens:,} input tokens, {row.output_tokens:,} output tokens"
            if column in _NAMES:
                return _display(row, column, self._now)  # the whole name where a narrow column elides it
        return None

    def canFetchMore(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and not self._exhausted and not self._loading and not self._error

    def fetchMore(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> None:  # noqa: B008
        if not self.canFetchMore(parent):
            return
        self._load_page(self._cursor)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        key = COLUMN_SORT.get(column)
        if key is None:
            return
        self.set_query(replace(self._query, sort=key, descending=order == Qt.SortOrder.DescendingOrder))

    # -- what the page asks -------------------------------------------------------
    @property
    def query(self) -> EventQuery:
        return self._query

    @property
    def total(self) -> int:
        return self._total

    @property
    def loading(self) -> bool:
        return self._loading

    @property
    def error(self) -> str:
        return self._error

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def row_at(self, row: int) -> EventRow:
        return self._rows[row]

    def set_query(self, query: EventQuery) -> None:
        """Show another set of events: drop the loaded rows and read the first page."""
        self._query = query
        self.reload()

    def reload(self) -> None:
        self._generation += 1
        self.beginResetModel()
        self._rows = []
        self._cursor = None
        self._exhausted = False
        self._loading = False
        self._now = self._clock()
        self.endResetModel()
        self._set_error("")
        self._set_total(-1)
        self._load_page(None)
        self._count_again()

    def _count_again(self) -> None:
        if self._count is not None:
            generation = self._generation
            count = self._count
            query = self._query
            self._runner(
                lambda: count(query),
                lambda n: self._on_count(generation, n),
                lambda exc: None,  # the page read reports the same problem
            )

    def refresh(self) -> None:
        """Read the first page again and swap it in at once: no blank table while it loads (live follow)."""
        if self._loading:
            return
        self._generation += 1
        self._load_page(None, replace=True)
        self._count_again()

    def refresh_times(self) -> None:
        """Relative times move on: repaint the time column without a reload."""
        self._now = self._clock()
        if self._rows:
            self.dataChanged.emit(
                self.index(0, COL_TIME),
                self.index(len(self._rows) - 1, COL_TIME),
                [Qt.ItemDataRole.DisplayRole],
            )

    # -- loading ------------------------------------------------------------------
    def _load_page(self, cursor: RowCursor | None, *, replace: bool = False) -> None:
        generation = self._generation
        query = self._query
        fetch = self._fetch
        size = self._page_size
        self._set_loading(True)
        self._runner(
            lambda: fetch(query, cursor, size),
            lambda page: self._on_page(generation, page, replace),
            lambda exc: self._on_error(generation, exc),
        )

    def _on_page(self, generation: int, page: RowPage, replace: bool = False) -> None:
        if generation != self._generation:
            return  # an answer to a query the operator has since replaced
        self.pages_fetched += 1
        if replace:
            self.beginResetModel()
            self._rows = list(page.rows)
            self._now = self._clock()
            self.endResetModel()
        elif page.rows:
            first = len(self._rows)
            self.beginInsertRows(QtCore.QModelIndex(), first, first + len(page.rows) - 1)
            self._rows.extend(page.rows)
            self.endInsertRows()
        self._cursor = page.next_cursor
        self._exhausted = page.next_cursor is None
        self._set_loading(False)
        if self._exhausted and self._count is None:
            self._set_total(len(self._rows))

    def _on_count(self, generation: int, n: int) -> None:
        if generation == self._generation:
            self._set_total(int(n))

    def _on_error(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._set_loading(False)
        self._set_error(str(exc) or type(exc).__name__)

    def _set_loading(self, loading: bool) -> None:
        if loading != self._loading:
            self._loading = loading
            self.loading_changed.emit(loading)

    def _set_total(self, total: int) -> None:
        if total != self._total:
            self._total = total
            self.total_changed.emit(total)

    def _set_error(self, message: str) -> None:
        if message != self._error:
            self._error = message
            self.error_changed.emit(message)
