"""The quarantined records, newest first, read a page at a time as the view scrolls (style.md item 3).

A bad line is never dropped silently: it is kept with its source, where it was
in the source, why it was refused and a bounded excerpt.  The store may hold
millions of them after a bad day, so the model never reads them all: it loads
:data:`PAGE_SIZE` rows, and Qt's ``canFetchMore``/``fetchMore`` asks for the
next page (keyed by the last id: no OFFSET scans) when the view nears the end.
Reads go through a runner (off the GUI thread in the app; ``run_now`` in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.core import format as fmt
from app.ui.models.runner import Runner
from app.ui.qt import QObject, Qt, QtCore, Signal
from storage.queries.quarantine import QuarantinedRecord, count_quarantined, fetch_quarantined

#: Records read per page.
PAGE_SIZE = 100
#: Characters of the excerpt shown in the table cell (the detail pane shows all of it).
CELL_EXCERPT = 160

HEADERS = ("When", "Source", "Where", "Reason", "Excerpt")
COL_WHEN, COL_SOURCE, COL_POSITION, COL_REASON, COL_EXCERPT = range(len(HEADERS))
RECORD_ROLE = Qt.ItemDataRole.UserRole + 1


def one_line(text: str, limit: int) -> str:
    """The excerpt on one line: line breaks and tabs shown as ⏎/→, cut at ``limit`` characters."""
    flat = text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎").replace("\t", "→")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def fmt_when(ts: float, now: float | None = None) -> str:
    """Local time: ``19:04:11`` today, ``Nov 28 19:04`` before (the tooltip has the UTC time)."""
    now = time.time() if now is None else now
    local = time.localtime(ts)
    if time.strftime("%Y%m%d", local) == time.strftime("%Y%m%d", time.localtime(now)):
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%b %d %H:%M", local)


class QuarantineModel(QtCore.QAbstractTableModel):
    """Quarantined records of some sources (or all), loaded lazily."""

    #: Emitted after each load: rows loaded, total in the store for the filter.
    loaded = Signal(int, int)
    #: A read failed: the message.
    failed = Signal(str)

    def __init__(
        self,
        engine: Callable[[], Any] | None = None,
        runner: Runner | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._engine: Callable[[], Any] = engine or (lambda: None)
        self._runner: Runner | None = runner
        self._records: list[QuarantinedRecord] = []
        self._sources: tuple[str, ...] | None = None
        self._names: dict[str, str] = {}
        self._exhausted = False
        self._loading = False
        self._generation = 0  # a reply for an older filter is dropped
        self.total: int | None = None
        self.page_size = PAGE_SIZE

    def attach(self, engine: Callable[[], Any], runner: Runner) -> None:
        """``engine``: a getter of the store's engine (``None`` until the store is open)."""
        self._engine = engine
        self._runner = runner

    # -- what to show -----------------------------------------------------------------------
    def set_names(self, names: Mapping[str, str]) -> None:
        """Quarantine source keys -> the source names the operator knows them by (``jsonl:/x`` -> ``app-log``)."""
        self._names = dict(names)
        if self._records:
            self.dataChanged.emit(self.index(0, COL_SOURCE), self.index(len(self._records) - 1, COL_SOURCE))

    def set_sources(self, sources: Sequence[str] | None) -> None:
        """Show only records of these quarantine source keys (``None``: every source), from the newest."""
        self._sources = tuple(sources) if sources is not None else None
        self.reload()

    @property
    def sources(self) -> tuple[str, ...] | None:
        return self._sources

    def reload(self) -> None:
        """Forget what is loaded and read the first page again."""
        self._generation += 1
        self.beginResetModel()
        self._records = []
        self._exhausted = False
        self._loading = False
        self.total = None
        self.endResetModel()
        self._load(first=True)

    # -- lazy paging (Qt asks) ---------------------------------------------------------------------
    def canFetchMore(self, parent: Any = None) -> bool:
        if parent is not None and parent.isValid():
            return False
        return not self._exhausted and not self._loading and self._engine() is not None

    def fetchMore(self, parent: Any = None) -> None:
        if self.canFetchMore(parent):
            self._load(first=False)

    def _load(self, *, first: bool) -> None:
        engine = self._engine()
        runner = self._runner
        if engine is None or runner is None or self._loading or self._exhausted:
            return
        self._loading = True
        generation = self._generation
        sources = self._sources
        before = self._records[-1].id if self._records and not first else None
        limit = self.page_size

        def work() -> tuple[list[QuarantinedRecord], int | None]:
            if sources is not None and not sources:
                return [], 0
            page = fetch_quarantined(engine, sources=sources, limit=limit, before_id=before)
            total = None
            if first:
                if sources is None:
                    total = count_quarantined(engine)
                else:
                    total = sum(count_quarantined(engine, s) for s in sources)
            return page, total

        def done(result: tuple[list[QuarantinedRecord], int | None]) -> None:
            if generation != self._generation:
                return
            page, total = result
            self._loading = False
            if total is not None:
                self.total = total
            if len(page) < limit:
                self._exhausted = True
            if page:
                start = len(self._records)
                self.beginInsertRows(QtCore.QModelIndex(), start, start + len(page) - 1)
                self._records.extend(page)
                self.endInsertRows()
            self.loaded.emit(len(self._records), self.total if self.total is not None else len(self._records))

        def failed(exc: BaseException) -> None:
            if generation != self._generation:
                return
            self._loading = False
            self.failed.emit(str(exc) or type(exc).__name__)

        runner(work, done, failed)

    # -- rows --------------------------------------------------------------------------------------
    def record_at(self, row: int) -> QuarantinedRecord:
        return self._records[row]

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def rowCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._records)

    def columnCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(HEADERS)

    def headerData(self, section: int, orientation: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        return None

    def data(self, index: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._records):
            return None
        rec = self._records[index.row()]
        col = index.column()
        if role == RECORD_ROLE:
            return rec
        if role == Qt.ItemDataRole.DisplayRole:
            if col == COL_WHEN:
                return f"{fmt_when(rec.ts)}  ·  {fmt.fmt_relative_time(time.time() - rec.ts)}"
            if col == COL_SOURCE:
                return self._names.get(rec.source, rec.source)
            if col == COL_POSITION:
                return rec.position
            if col == COL_REASON:
                return one_line(rec.reason, 200)
            if col == COL_EXCERPT:
                return one_line(rec.excerpt, CELL_EXCERPT)
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == COL_SOURCE:
                return rec.source
            if col == COL_REASON:
                return rec.reason
            if col == COL_EXCERPT:
                return rec.excerpt[:600] + ("…" if len(rec.excerpt) > 600 else "")
            if col == COL_WHEN:
                return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.ts))
        return None


__all__ = [
    "COL_EXCERPT",
    "COL_POSITION",
    "COL_REASON",
    "COL_SOURCE",
    "COL_WHEN",
    "HEADERS",
    "PAGE_SIZE",
    "RECORD_ROLE",
    "QuarantineModel",
    "one_line",
]
