"""The audit log as a table (style.md item 3): the one read that feeds it, and its exports.

:func:`load_audit` runs off the GUI thread and answers an :class:`AuditView`:
the rows matching an :class:`AuditFilter`, which rows are the newest change to
their object (only those can be reverted), and who has made changes (for the
actor filter).  :class:`AuditModel` shows it; :func:`export_csv` and
:func:`export_json` write the rows the operator is looking at.  Exports carry
key references (``keyring:controlroom/NAME``), never keys; anything shaped like
a key is masked anyway, in case a hand-edited store holds one.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from app.core import format as fmt
from app.gateway.revert import FieldChange, field_changes
from app.ui.qt import QObject, Qt, QtCore
from storage.queries.control import AuditEntry, latest_audit_ids, list_audit_actors, search_audit

#: Rows read per load; the page says when there are more.
MAX_ROWS = 5000

COL_ID, COL_WHEN, COL_WHO, COL_ACTION, COL_OBJECT, COL_CHANGES, COL_WHY = range(7)
HEADERS = ("#", "When", "Who", "Action", "Object", "What changed", "Why")
_TIPS = {
    COL_WHEN: "Local time of the change (exports and the store use UTC)",
    COL_ACTION: "create / update / delete, a breaker switch, or a prompt promotion",
    COL_CHANGES: "The fields that changed; select the row for before and after",
}
SORT_ROLE = int(Qt.ItemDataRole.UserRole) + 1
ENTRY_ROLE = int(Qt.ItemDataRole.UserRole) + 2
LATEST_ROLE = int(Qt.ItemDataRole.UserRole) + 3

#: The object types the audit log holds, in the order the filter lists them.
OBJECT_TYPES = ("provider", "target", "route", "budget", "breaker", "breaker_defaults", "prompt", "source")

# A key's shape: masked in exports even though the store should never hold one.
_KEY_SHAPE = re.compile(
    r"(sk-(?:ant-)?[A-Za-z0-9_\-]{12,}|(?i:bearer)\s+[A-Za-z0-9_\-.=+/]{8,}|AKIA[0-9A-Z]{16})"
)
_SECRET_FIELD = re.compile(r"(?i)^(api_key|admin_key|key|secret|password|token)$")


@dataclass(frozen=True, slots=True)
class AuditFilter:
    object_type: str | None = None
    name_contains: str = ""
    actor: str | None = None
    since: float | None = None
    until: float | None = None

    def problem(self) -> str | None:
        """Why this filter cannot be run, in words for the field; ``None`` when it can."""
        if self.since is not None and self.until is not None and self.since >= self.until:
            return "the start of the range must be before its end"
        return None


@dataclass(frozen=True, slots=True)
class AuditView:
    entries: list[AuditEntry]
    latest: dict[tuple[str, str], int]  # (object_type, object_name) -> id of its newest change
    actors: list[str]
    fetched_at: float
    truncated: bool = False
    filter: AuditFilter = field(default_factory=AuditFilter)

    def is_latest(self, entry: AuditEntry) -> bool:
        return self.latest.get((entry.object_type, entry.object_name)) == entry.id


def load_audit(engine: Engine, flt: AuditFilter, *, limit: int = MAX_ROWS) -> AuditView:
    """The audit rows ``flt`` selects, newest first (blocking: call it through the runner)."""
    problem = flt.problem()
    if problem:
        raise ValueError(problem)
    entries = search_audit(
        engine,
        object_type=flt.object_type,
        name_contains=flt.name_contains.strip() or None,
        actor=flt.actor,
        since=flt.since,
        until=flt.until,
        limit=limit + 1,
    )
    truncated = len(entries) > limit
    return AuditView(
        entries[:limit], latest_audit_ids(engine), list_audit_actors(engine), time.time(), truncated, flt
    )


def fmt_local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def object_label(entry: AuditEntry) -> str:
    kind = "breaker defaults" if entry.object_type == "breaker_defaults" else entry.object_type
    return f"{kind} {entry.object_name}"


def entry_changes(entry: AuditEntry) -> list[FieldChange]:
    return field_changes(entry.before, entry.after)


def summarize(entry: AuditEntry, limit: int = 3) -> str:
    """``rpm 500 → 100; tpm added`` — the gist of a change in one cell."""
    if entry.action == "add_version" and isinstance(entry.after, dict):
        return f"version {entry.after.get('version', '?')} added"
    if entry.before is None and entry.after is not None:
        return "created"
    if entry.after is None and entry.before is not None:
        return "deleted"
    changes = entry_changes(entry)
    if not changes:
        return "no field changed"
    parts = []
    for c in changes[:limit]:
        if c.kind == "changed":
            parts.append(f"{c.path} {_short(c.before)} → {_short(c.after)}")
        else:
            parts.append(f"{c.path} {c.kind}")
    more = len(changes) - limit
    return "; ".join(parts) + (f"; +{more} more" if more > 0 else "")


def _short(text: str | None, width: int = 24) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 1] + "…"


class AuditModel(QtCore.QAbstractTableModel):
    """Audit rows, newest first; the newest change to each object is marked revertible."""

    def __init__(self, clock: Callable[[], float] = time.time, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._clock = clock
        self._view = AuditView([], {}, [], 0.0)
        self._summaries: list[str] = []

    @property
    def view(self) -> AuditView:
        return self._view

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._view.entries)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return _TIPS.get(section)
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._view.entries):
            return None
        entry = self._view.entries[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(entry, index.row(), col)
        if role == SORT_ROLE:
            return {
                COL_ID: entry.id,
                COL_WHEN: entry.ts,
                COL_WHO: entry.actor,
                COL_ACTION: entry.action,
                COL_OBJECT: object_label(entry),
                COL_CHANGES: self._summaries[index.row()],
                COL_WHY: entry.reason,
            }[col]
        if role == ENTRY_ROLE:
            return entry
        if role == LATEST_ROLE:
            return self._view.is_latest(entry)
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == COL_WHEN:
                return f"{fmt_local(entry.ts)} local · {fmt_utc(entry.ts)}"
            if col == COL_ID and self._view.is_latest(entry):
                return "The newest change to this object: it can be reverted"
            if col in (COL_CHANGES, COL_WHY):
                return self._display(entry, index.row(), col) or None
        if role == Qt.ItemDataRole.FontRole and col == COL_ID and self._view.is_latest(entry):
            from app.ui.qt import QtGui

            font = QtGui.QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and col == COL_ID:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _display(self, entry: AuditEntry, row: int, col: int) -> str:
        if col == COL_ID:
            return f"#{entry.id}"
        if col == COL_WHEN:
            now = self._clock()
            ago = fmt.fmt_relative_time(now - entry.ts)
            same_day = time.localtime(now)[:3] == time.localtime(entry.ts)[:3]
            when = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(entry.ts))
            return f"{when}  ·  {ago}"
        if col == COL_WHO:
            return entry.actor
        if col == COL_ACTION:
            return entry.action
        if col == COL_OBJECT:
            return object_label(entry)
        if col == COL_CHANGES:
            return self._summaries[row]
        return entry.reason

    def set_view(self, view: AuditView) -> None:
        self.beginResetModel()
        self._view = view
        self._summaries = [summarize(e) for e in view.entries]
        self.endResetModel()

    def entry_at(self, row: int) -> AuditEntry:
        return self._view.entries[row]

    def row_of(self, audit_id: int) -> int | None:
        for i, e in enumerate(self._view.entries):
            if e.id == audit_id:
                return i
        return None


# --- exports --------------------------------------------------------------------------------------


def scrub(value: Any, key: str = "") -> Any:
    """``value`` with anything that looks like a key masked (recursively)."""
    if isinstance(value, str):
        if _SECRET_FIELD.match(key) and value not in ("keyring", "none") and not value.startswith("env:"):
            return "***"
        return _KEY_SHAPE.sub("***", value)
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def export_rows(entries: Iterable[AuditEntry]) -> list[dict[str, Any]]:
    """The rows as plain data (UTC times), scrubbed: what both exports write."""
    return [
        {
            "id": e.id,
            "ts": e.ts,
            "time_utc": fmt_utc(e.ts),
            "actor": scrub(e.actor),
            "action": e.action,
            "object_type": e.object_type,
            "object_name": scrub(e.object_name),
            "reason": scrub(e.reason),
            "changes": scrub(summarize(e, limit=1000)),
            "before": scrub(e.before),
            "after": scrub(e.after),
        }
        for e in entries
    ]


CSV_FIELDS = (
    "id",
    "time_utc",
    "actor",
    "action",
    "object_type",
    "object_name",
    "reason",
    "changes",
    "before",
    "after",
)


def export_csv(entries: Sequence[AuditEntry], path: Path) -> int:
    """Write ``entries`` as CSV (before and after as JSON text); return the row count."""
    rows = export_rows(entries)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    **row,
                    "before": "" if row["before"] is None else json.dumps(row["before"], sort_keys=True),
                    "after": "" if row["after"] is None else json.dumps(row["after"], sort_keys=True),
                }
            )
    return len(rows)


def export_json(entries: Sequence[AuditEntry], path: Path, flt: AuditFilter | None = None) -> int:
    """Write ``entries`` as one JSON document (with the filter that chose them); return the row count."""
    rows = export_rows(entries)
    doc: dict[str, Any] = {"exported_at_utc": fmt_utc(time.time()), "count": len(rows), "entries": rows}
    if flt is not None:
        doc["filter"] = {
            "object_type": flt.object_type,
            "name_contains": flt.name_contains or None,
            "actor": flt.actor,
            "since_utc": fmt_utc(flt.since) if flt.since is not None else None,
            "until_utc": fmt_utc(flt.until) if flt.until is not None else None,
        }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(rows)
