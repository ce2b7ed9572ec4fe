"""The breakers table and the transitions list (style.md item 3), and the one read that feeds both.

What a breaker is doing is known two ways.  A gateway in this process has live
snapshots (state, counts in the window, time in state).  Gateways in other
processes tell only the store: their transitions, the operator's overrides,
and the events they recorded.  :func:`load_board` merges both and says which
one each row comes from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, case, func, select

from app.core import format as fmt
from app.core.breaker import BreakerSnapshot
from app.core.event import Failure
from app.core.routing import Route, Split
from app.gateway.control import load_config
from app.ui.qt import QObject, Qt, QtCore
from storage.engine import transaction
from storage.models import EVENTS
from storage.queries.control import (
    BreakerOverride,
    BreakerTransition,
    list_breaker_overrides,
    list_breaker_transitions,
    list_objects,
)

#: Failures a breaker counts (semantics.md section 5); client errors and quality fails are not the target's fault.
BREAKER_FAILURES: tuple[Failure, ...] = (
    Failure.TIMEOUT,
    Failure.RATE_LIMITED,
    Failure.OVERLOADED,
    Failure.SERVER_ERROR,
    Failure.CONNECTION_ERROR,
)
#: The breakers' window when no live gateway says otherwise [30 s].
DEFAULT_WINDOW_S = 30.0
#: How far back the timeline reaches.
HISTORY_S = 6 * 3600.0

CAUSE_LABELS = {
    "failure_rate": "failure rate over the limit",
    "slow_rate": "too many slow calls",
    "open_elapsed": "open time over, probing",
    "probes_succeeded": "probes succeeded",
    "probe_failed": "a probe failed",
    "force_open": "forced open by an operator",
    "force_closed": "forced closed by an operator",
    "override_cleared": "operator set it back to auto",
    "override_expired": "the override expired",
}


def describe_cause(t: BreakerTransition) -> str:
    """``failure rate over the limit (62% of 31 calls)``: the cause in words, with the gateway's detail."""
    text = CAUSE_LABELS.get(t.cause, t.cause)
    detail = t.detail.get("detail") if isinstance(t.detail, dict) else None
    if isinstance(detail, str) and detail:
        return f"{text} — {detail}"
    if isinstance(t.detail, dict):
        extra = ", ".join(f"{k} {v}" for k, v in t.detail.items() if k not in ("detail", "forced"))
        if extra:
            return f"{text} ({extra})"
    return text


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """One target as the breakers page shows it."""

    target: str
    provider: str | None
    model: str | None
    state: str  # closed | open | half_open | unknown
    forced: BreakerOverride | None
    failure_rate: float | None
    requests: int | None
    failures: int | None
    window_s: float
    since: float | None  # when the current state began (None: never changed while we watched)
    last_cause: str | None
    live: bool  # from a gateway in this process (else: what the store knows)


@dataclass(frozen=True, slots=True)
class BreakerBoard:
    rows: list[BreakerRow]
    transitions: list[BreakerTransition]  # the timeline, oldest first
    fetched_at: float
    history_s: float
    live: bool
    #: Per target, the stored routes that send it traffic and where that traffic goes without it.
    fallbacks: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)

    def row(self, target: str) -> BreakerRow | None:
        return next((r for r in self.rows if r.target == target), None)


def route_fallbacks(routes: Sequence[Route], target: str) -> list[tuple[str, list[str]]]:
    """For each route that lists ``target``: the targets its traffic goes to when ``target`` is open.

    Those are the other targets of a split ``target`` is in, then the steps after it in the chain
    (semantics.md section 6), for every rule that names it, in order and without repeats.
    """
    out: list[tuple[str, list[str]]] = []
    for route in routes:
        found = False
        nexts: list[str] = []
        for rule in route.rules:
            steps = list(rule.chain)
            for i, step in enumerate(steps):
                members = list(step.weights) if isinstance(step, Split) else [step]
                if target not in members:
                    continue
                found = True
                after = [m for m in members if m != target]
                for later in steps[i + 1 :]:
                    after.extend(later.weights if isinstance(later, Split) else [later])
                nexts.extend(t for t in after if t != target and t not in nexts)
        if found:
            out.append((route.name, nexts))
    return out


def failing_reason(row: BreakerRow) -> str | None:
    """Why a target looks unhealthy right now (None when it does not): said before forcing it closed."""
    parts: list[str] = []
    if row.state in ("open", "half_open") and (row.forced is None or row.forced.state != "force_open"):
        since = f" since {fmt_local(row.since)}" if row.since is not None else ""
        cause = f" ({row.last_cause})" if row.last_cause else ""
        parts.append(f"its breaker is {STATE_LABELS.get(row.state, row.state)}{since}{cause}")
    if row.failure_rate is not None and row.requests and row.failure_rate >= FAILING_RATE:
        parts.append(
            f"{row.failures} of {row.requests} requests failed in the last {round(row.window_s)} s "
            f"({row.failure_rate:.0%})"
        )
    return "; ".join(parts) or None


#: A failure rate at which forcing a target closed asks for confirmation.
FAILING_RATE = 0.2


def _window_counts(engine: Engine, since: float) -> dict[tuple[str, str], tuple[int, int]]:
    """Recorded requests and breaker-counted failures per provider and model since ``since``."""
    c = EVENTS.c
    failed = func.sum(case((c.failure.in_([f.value for f in BREAKER_FAILURES]), 1), else_=0))
    stmt = (
        select(c.provider, c.model, func.count(), failed)
        .where(and_(c.ts_start >= since))
        .group_by(c.provider, c.model)
    )
    with transaction(engine) as conn:
        return {(p, m): (int(n), int(f or 0)) for p, m, n, f in conn.execute(stmt)}


def load_board(
    engine: Engine,
    snapshots: Sequence[BreakerSnapshot] | None = None,
    *,
    now: float | None = None,
    history_s: float = HISTORY_S,
) -> BreakerBoard:
    """Every target known to the store or the live gateway, with its state and its recent transitions."""
    now = time.time() if now is None else now
    targets = {t["name"]: t for t in list_objects(engine, "target")}
    overrides = {o.target: o for o in list_breaker_overrides(engine, now=now)}
    transitions = list_breaker_transitions(engine, since=now - history_s, limit=5000)
    live = {s.target: s for s in snapshots or ()}
    names = sorted({*targets, *overrides, *live, *(t.target for t in transitions)})
    last: dict[str, BreakerTransition] = {}
    for tr in transitions:
        last[tr.target] = tr
    for name in names:
        if name not in last:  # older than the timeline: one more read, only for this target
            older = list_breaker_transitions(engine, target=name, until=now - history_s, limit=1)
            if older:
                last[name] = older[-1]
    counts = _window_counts(engine, now - DEFAULT_WINDOW_S)
    rows: list[BreakerRow] = []
    for name in names:
        spec = targets.get(name, {})
        provider, model = spec.get("provider"), spec.get("model")
        override = overrides.get(name)
        t = last.get(name)
        snap = live.get(name)
        if snap is not None:
            forced = override
            if snap.forced is not None and forced is None:
                forced = BreakerOverride(
                    name,
                    snap.forced.mode.value,
                    snap.forced.reason,
                    snap.forced.actor,
                    snap.forced.set_at,
                    snap.forced.expires_at,
                )
            rows.append(
                BreakerRow(
                    name,
                    provider,
                    model,
                    snap.state.value,
                    forced,
                    snap.failure_rate,
                    snap.requests,
                    snap.failures,
                    snap.window_s,
                    snap.since,
                    describe_cause(t) if t else None,
                    True,
                )
            )
            continue
        state = t.to_state if t is not None else ("closed" if name in targets else "unknown")
        if override is not None:
            state = "open" if override.state == "force_open" else "closed"
        # Without the target's provider and model (not in the store) its events cannot be told apart.
        n: int | None = None
        failed: int | None = None
        if provider and model:
            n, failed = counts.get((provider, model), (0, 0))
        rate = failed / n if n and failed is not None else None
        rows.append(
            BreakerRow(
                name,
                provider,
                model,
                state,
                override,
                rate,
                n,
                failed,
                DEFAULT_WINDOW_S,
                t.ts if t is not None else None,
                describe_cause(t) if t else None,
                False,
            )
        )
    try:
        routes = load_config(engine).routes
    except Exception:  # a store whose routes cannot be read still shows its breakers
        routes = ()
    fallbacks = {row.target: route_fallbacks(routes, row.target) for row in rows}
    return BreakerBoard(rows, transitions, now, history_s, bool(live), fallbacks)


# --- the targets table ----------------------------------------------------------------------

COL_TARGET = 0
COL_STATE = 1
COL_FORCED = 2
COL_FAILURE_RATE = 3
COL_REQUESTS = 4
COL_IN_STATE = 5
COL_CAUSE = 6
HEADERS: tuple[str, ...] = (
    "Target",
    "State",
    "Forced",
    "Failure rate",
    "Requests",
    "Time in state",
    "Last change",
)

SORT_ROLE = int(Qt.ItemDataRole.UserRole) + 1
ROW_ROLE = int(Qt.ItemDataRole.UserRole) + 2
#: The state's colour key for the delegate: ok | warn | bad | muted.
STATE_ROLE = int(Qt.ItemDataRole.UserRole) + 3

STATE_LABELS = {"closed": "closed", "open": "open", "half_open": "half-open", "unknown": "unknown"}
STATE_COLOUR = {"closed": "ok", "half_open": "warn", "open": "bad", "unknown": "muted"}
_STATE_ORDER = {"open": 0, "half_open": 1, "closed": 2, "unknown": 3}


def describe_override(o: BreakerOverride, now: float) -> str:
    until = (
        f" until {fmt_local(o.expires_at)} ({fmt.fmt_relative_time(now - o.expires_at)})"
        if o.expires_at is not None
        else " until set back to auto"
    )
    verb = "forced open" if o.state == "force_open" else "forced closed"
    return f"{verb} by {o.actor}{until}: {o.reason or 'no reason given'}"


def fmt_duration(seconds: float) -> str:
    """How long a breaker has been in its state: ``7 s``, ``19 min 29 s``, ``2 h 5 min``."""
    if seconds < 60:
        return f"{max(0, int(seconds))} s"
    return fmt.fmt_latency_ms(round(seconds) * 1000)


def fmt_local(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


class BreakersModel(QtCore.QAbstractTableModel):
    """One row per target; ``set_board`` replaces rows in place when the targets are the same."""

    def __init__(self, clock: Callable[[], float] = time.time, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[BreakerRow] = []
        self._clock = clock
        self._fetched_at = clock()

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(HEADERS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return {
                COL_FAILURE_RATE: "Failures that count for the breaker (timeouts, 429, overloaded, 5xx, "
                "connection errors) over the requests in the window",
                COL_REQUESTS: "Requests in the breaker's window (30 s unless the gateway says otherwise)",
                COL_STATE: "Effective state; outlined with a lock when an operator forced it",
            }.get(section)
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row = self._rows[index.row()]
        col = index.column()
        now = self._clock()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col, now)
        if role == SORT_ROLE:
            return {
                COL_TARGET: row.target,
                COL_STATE: _STATE_ORDER.get(row.state, 9),
                COL_FORCED: row.forced.state if row.forced else "",
                COL_FAILURE_RATE: row.failure_rate,
                COL_REQUESTS: row.requests,
                COL_IN_STATE: None if row.since is None else now - row.since,
                COL_CAUSE: row.last_cause,
            }.get(col)
        if role == ROW_ROLE:
            return row
        if role == STATE_ROLE and col == COL_STATE:
            return STATE_COLOUR.get(row.state, "muted")
        if role == Qt.ItemDataRole.ToolTipRole:
            if col in (COL_STATE, COL_FORCED) and row.forced is not None:
                return describe_override(row.forced, now)
            if col == COL_TARGET:
                where = (
                    "live from the gateway in this app"
                    if row.live
                    else "from the store (recorded transitions)"
                )
                return f"{row.provider or '?'} · {row.model or '?'} — {where}"
            if col == COL_CAUSE and row.last_cause:
                return row.last_cause
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (
            COL_FAILURE_RATE,
            COL_REQUESTS,
            COL_IN_STATE,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _display(row: BreakerRow, col: int, now: float) -> str:
        if col == COL_TARGET:
            return row.target if not row.model else f"{row.target}  ({row.model})"
        if col == COL_STATE:
            return STATE_LABELS.get(row.state, row.state)
        if col == COL_FORCED:
            if row.forced is None:
                return "auto"
            # Minutes are enough in the cell (seconds are in the tooltip): it stays readable at 960 px.
            expires = row.forced.expires_at
            until = (
                f", until {time.strftime('%H:%M', time.localtime(expires))}" if expires is not None else ""
            )
            return f"{'open' if row.forced.state == 'force_open' else 'closed'} by {row.forced.actor}{until}"
        if col == COL_FAILURE_RATE:
            return fmt.fmt_percent(row.failure_rate)
        if col == COL_REQUESTS:
            if row.requests is None:
                return "—"
            return f"{fmt.fmt_count(row.requests)} in {row.window_s:g} s"
        if col == COL_IN_STATE:
            if row.since is None:
                return "—"
            return fmt_duration(now - row.since)
        if col == COL_CAUSE:
            return row.last_cause or "—"
        return ""

    def set_board(self, rows: list[BreakerRow]) -> None:
        same = [r.target for r in rows] == [r.target for r in self._rows]
        if same and rows:
            self._rows = list(rows)
            self.dataChanged.emit(self.index(0, 0), self.index(len(rows) - 1, len(HEADERS) - 1))
            return
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row_at(self, row: int) -> BreakerRow:
        return self._rows[row]


# --- the transitions list --------------------------------------------------------------------

T_COL_TIME = 0
T_COL_TARGET = 1
T_COL_CHANGE = 2
T_COL_CAUSE = 3
T_HEADERS = ("Time", "Target", "Change", "Cause")


class TransitionsModel(QtCore.QAbstractTableModel):
    """Breaker transitions, the newest first."""

    def __init__(self, clock: Callable[[], float] = time.time, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[BreakerTransition] = []
        self._clock = clock

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(T_HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return T_HEADERS[section]
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        t = self._rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == T_COL_TIME:
                return f"{fmt_local(t.ts)}  ·  {fmt.fmt_relative_time(self._clock() - t.ts)}"
            if col == T_COL_TARGET:
                return t.target
            if col == T_COL_CHANGE:
                return f"{STATE_LABELS.get(t.from_state, t.from_state)} → {STATE_LABELS.get(t.to_state, t.to_state)}"
            if col == T_COL_CAUSE:
                return describe_cause(t)
        if role == SORT_ROLE:
            return (t.ts, t.target, t.to_state, t.cause)[col]
        if role == ROW_ROLE:
            return t
        if role == STATE_ROLE and col == T_COL_CHANGE:
            return STATE_COLOUR.get(t.to_state, "muted")
        if role == Qt.ItemDataRole.ToolTipRole and col == T_COL_TIME:
            return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t.ts))
        return None

    def set_transitions(self, transitions: Sequence[BreakerTransition]) -> None:
        self.beginResetModel()
        self._rows = sorted(transitions, key=lambda t: t.ts, reverse=True)
        self.endResetModel()


__all__ = [
    "BREAKER_FAILURES",
    "BreakerBoard",
    "BreakerRow",
    "BreakersModel",
    "TransitionsModel",
    "describe_cause",
    "describe_override",
    "load_board",
]
