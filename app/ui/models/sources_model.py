"""The sources table (style.md item 3): configured sources with their live status and quarantined count.

Three things meet in a row: the source's config in the store (what the
operator can edit), the running collector's report (state, events/s, lag, last
error: pushed by the app every second) and the quarantine's count of its bad
records.  Sources that come from a config file, ``--otlp`` or a provider's
admin key have a report but no stored config: they are shown, read-only, with
where they come from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.core import format as fmt
from app.sources.base import SourceState
from app.sources.collector import SourceReport, quarantine_keys
from app.ui.qt import QObject, Qt, QtCore
from storage.queries.source_configs import SourceConfig

KIND_LABELS = {
    "jsonl": "JSONL file",
    "otlp": "OTLP/HTTP",
    "http_poll": "HTTP poll",
    "usage_api": "Usage API",
}

HEADERS = ("Name", "Kind", "State", "Events/s", "Lag", "Quarantined", "Last error", "Reads from")
(
    COL_NAME,
    COL_KIND,
    COL_STATE,
    COL_RATE,
    COL_LAG,
    COL_QUARANTINED,
    COL_ERROR,
    COL_WHERE,
) = range(len(HEADERS))

ROW_ROLE = Qt.ItemDataRole.UserRole + 1
#: "ok" | "warn" | "bad" | "muted": the colour of the state pill.
STATE_ROLE = Qt.ItemDataRole.UserRole + 2
SORT_ROLE = Qt.ItemDataRole.UserRole + 3


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One source as the page shows it."""

    name: str
    kind: str
    origin: str  # "store" (editable here), a config file, "--otlp", "provider"
    config: SourceConfig | None
    report: SourceReport | None
    quarantined: int
    collector_running: bool

    @property
    def editable(self) -> bool:
        return self.config is not None

    @property
    def paused(self) -> bool:
        if self.config is not None:
            return self.config.paused
        return self.report.paused if self.report is not None else False

    @property
    def state(self) -> str:
        """What the State column says."""
        if self.paused:
            return "paused"
        report = self.report
        if report is None:
            return "starting" if self.collector_running else "not running"
        if report.state is SourceState.RUNNING and report.last_error:
            return "retrying"
        return report.state.value

    @property
    def state_key(self) -> str:
        state = self.state
        if state in ("error", "retrying"):
            return "bad"
        if state in ("starting", "not running"):
            return "warn"
        if state == "running":
            return "ok"
        return "muted"

    @property
    def where(self) -> str:
        settings: Mapping[str, Any] = self.config.settings if self.config is not None else {}
        if self.kind == "jsonl":
            text = str(settings.get("path", ""))
        elif self.kind == "otlp":
            text = str(settings.get("listen", "127.0.0.1:4318"))
            detail = self.report.detail if self.report is not None else ""
            if detail.startswith("listening on "):  # the port it really got (a listen on :0 picks one)
                text = detail.removeprefix("listening on ").split(" · ")[0]
        elif self.kind == "http_poll":
            text = str(settings.get("url", ""))
        elif self.kind == "usage_api":
            text = f"provider {settings.get('provider', '')}".strip()
        else:
            text = ""
        if not text and self.report is not None:
            text = self.report.detail
        if self.origin != "store":
            text = f"{text}  (from {self.origin})" if text else f"from {self.origin}"
        return text

    @property
    def quarantine_keys(self) -> tuple[str, ...]:
        if self.report is not None:
            return self.report.quarantine_keys
        return quarantine_keys(self.config) if self.config is not None else (self.name,)


def build_rows(
    configs: Sequence[SourceConfig],
    reports: Sequence[SourceReport] | None,
    quarantined: Mapping[str, int],
) -> list[SourceRow]:
    """Merge stored configs, the collector's reports (``None``: no collector runs here) and quarantine counts."""
    by_name = {r.name: r for r in reports or ()}
    rows: list[SourceRow] = []
    for config in configs:
        report = by_name.pop(config.name, None)
        keys = report.quarantine_keys if report is not None else quarantine_keys(config)
        rows.append(
            SourceRow(
                config.name,
                config.kind,
                "store",
                config,
                report,
                sum(quarantined.get(k, 0) for k in keys),
                reports is not None,
            )
        )
    for report in by_name.values():
        if report.origin == "store":
            continue  # removed from the store a moment ago: the collector has not caught up yet
        rows.append(
            SourceRow(
                report.name,
                report.kind,
                report.origin,
                None,
                report,
                sum(quarantined.get(k, 0) for k in report.quarantine_keys),
                True,
            )
        )
    rows.sort(key=lambda r: r.name)
    return rows


class SourcesModel(QtCore.QAbstractTableModel):
    """Rows of :class:`SourceRow`; live columns change in place (``dataChanged``), no reset per tick."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[SourceRow] = []

    # -- data in ----------------------------------------------------------------------------
    def set_rows(self, rows: list[SourceRow]) -> None:
        if [r.name for r in rows] == [r.name for r in self._rows]:
            self._rows = rows
            if rows:
                self.dataChanged.emit(self.index(0, 0), self.index(len(rows) - 1, len(HEADERS) - 1))
            return
        self.beginResetModel()
        self._rows = rows
        self.endResetModel()

    def rows(self) -> list[SourceRow]:
        return list(self._rows)

    def row_at(self, row: int) -> SourceRow:
        return self._rows[row]

    def row_of(self, name: str) -> int:
        return next((i for i, r in enumerate(self._rows) if r.name == name), -1)

    # -- Qt ------------------------------------------------------------------------------------
    def rowCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def columnCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(HEADERS)

    def headerData(self, section: int, orientation: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            return {
                COL_RATE: "Events read per second over the last few seconds",
                COL_LAG: "How far behind its input the source is: unread bytes of a file, a poller catching up",
                COL_QUARANTINED: "Records that could not be read, kept aside with the reason (listed below)",
            }.get(section)
        return None

    def data(self, index: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        col = index.column()
        if role == ROW_ROLE:
            return row
        if role == STATE_ROLE:
            return row.state_key if col == COL_STATE else None
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
        if role == SORT_ROLE:
            return self._sort_value(row, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(row, col)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_RATE, COL_QUARANTINED):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _display(row: SourceRow, col: int) -> str:
        report = row.report
        live = report is not None and not row.paused
        if col == COL_NAME:
            return row.name
        if col == COL_KIND:
            return KIND_LABELS.get(row.kind, row.kind)
        if col == COL_STATE:
            return row.state
        if col == COL_RATE:
            return fmt.fmt_rate(report.events_per_s, "s") if live and report is not None else "—"
        if col == COL_LAG:
            return (report.lag or "—") if live and report is not None else "—"
        if col == COL_QUARANTINED:
            return f"{row.quarantined:,}"
        if col == COL_ERROR:
            error = report.last_error if report is not None else None
            return (error or "").splitlines()[0][:200] if error else ""
        if col == COL_WHERE:
            return row.where
        return ""

    @staticmethod
    def _sort_value(row: SourceRow, col: int) -> Any:
        report = row.report
        if col == COL_RATE:
            return report.events_per_s if report is not None else -1.0
        if col == COL_QUARANTINED:
            return row.quarantined
        return SourcesModel._display(row, col).lower()

    @staticmethod
    def _tooltip(row: SourceRow, col: int) -> str | None:
        report = row.report
        if col == COL_ERROR and report is not None and report.last_error:
            return report.last_error
        if col == COL_STATE:
            lines = [f"{row.name}: {row.state}"]
            if report is not None:
                lines.append(report.detail)
                lines.append(
                    f"{report.ingested:,} read · {report.duplicates:,} duplicates · {report.rejected:,} rejected"
                )
                if report.last_event_at:
                    lines.append(f"last record {fmt.fmt_relative_time(time.time() - report.last_event_at)}")
                if report.restarts:
                    lines.append(f"restarted {report.restarts} times after failures")
            if not row.editable:
                lines.append(f"Configured in {row.origin}: edit it there.")
            return "\n".join(x for x in lines if x)
        if col == COL_WHERE:
            return row.where
        return None


__all__ = [
    "COL_ERROR",
    "COL_KIND",
    "COL_LAG",
    "COL_NAME",
    "COL_QUARANTINED",
    "COL_RATE",
    "COL_STATE",
    "COL_WHERE",
    "HEADERS",
    "KIND_LABELS",
    "ROW_ROLE",
    "SORT_ROLE",
    "STATE_ROLE",
    "SourceRow",
    "SourcesModel",
    "build_rows",
]
