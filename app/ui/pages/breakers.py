"""The Breakers page: every target's breaker, auto or forced, and a timeline of why it changed."""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.ui.editors.columns import ColumnFitter
from app.ui.editors.export import export_table
from app.ui.models.breakers_model import (
    COL_CAUSE,
    COL_FORCED,
    COL_STATE,
    COL_TARGET,
    HEADERS,
    ROW_ROLE,
    STATE_LABELS,
    STATE_ROLE,
    T_COL_CHANGE,
    BreakerBoard,
    BreakersModel,
    TransitionsModel,
    describe_cause,
    failing_reason,
    fmt_local,
    load_board,
)
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtCore, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import Colors, current_colors
from storage.queries.control import set_breaker_override

#: How often the page reads the breakers again while it is shown.
REFRESH_MS = 2000


def state_color(key: str, colors: Colors) -> QtGui.QColor:
    return QtGui.QColor({"ok": colors.ok, "warn": colors.warn, "bad": colors.bad}.get(key, colors.muted))


def draw_lock(painter: QtGui.QPainter, x: float, y: float, size: float, color: QtGui.QColor) -> None:
    """A small padlock (fonts in a frozen app may lack the emoji)."""
    painter.save()
    pen = QtGui.QPen(color, max(1.2, size / 8))
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    w = size * 0.5
    painter.drawArc(QtCore.QRectF(x + size * 0.25, y, w, size * 0.7), 0, 180 * 16)
    painter.setBrush(color)
    painter.drawRoundedRect(
        QtCore.QRectF(x + size * 0.15, y + size * 0.38, size * 0.7, size * 0.55), 1.5, 1.5
    )
    painter.restore()


class StateDelegate(QtWidgets.QStyledItemDelegate):
    """State as a pill: filled when automatic; outlined with a lock when an operator forced it (ui.md)."""

    def paint(self, painter: QtGui.QPainter, option: QtWidgets.QStyleOptionViewItem, index: Any) -> None:
        key = index.data(STATE_ROLE)
        text = index.data()
        if not key or not text:
            super().paint(painter, option, index)
            return
        self.initStyleOption(option, index)
        option.text = ""
        style = option.widget.style() if option.widget is not None else QtWidgets.QApplication.style()
        style.drawControl(QtWidgets.QStyle.ControlElement.CE_ItemViewItem, option, painter, option.widget)
        row = index.data(ROW_ROLE)
        forced = getattr(row, "forced", None) is not None and index.column() == COL_STATE
        colors = current_colors()
        colour = state_color(key, colors)
        metrics = option.fontMetrics
        lock = metrics.height() if forced else 0
        width = metrics.horizontalAdvance(text) + 18 + lock
        height = metrics.height() + 4
        rect = QtCore.QRectF(option.rect.x() + 4, option.rect.center().y() - height / 2 + 1, width, height)
        painter.save()
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        if forced:
            painter.setPen(QtGui.QPen(colour, 2))
            fill = QtGui.QColor(colour)
            fill.setAlpha(40)
            painter.setBrush(fill)
            text_colour = QtGui.QColor(colors.text)
        else:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(colour)
            text_colour = QtGui.QColor("#111111" if key == "warn" else "#ffffff")
        painter.drawRoundedRect(rect.adjusted(1, 1, -1, -1), height / 2, height / 2)
        if forced:
            draw_lock(painter, rect.x() + 8, rect.y() + 3, height - 6, colour)
        painter.setPen(text_colour)
        painter.drawText(rect.adjusted(lock + 4, 0, 0, 0), int(Qt.AlignmentFlag.AlignCenter), text)
        painter.restore()


class Timeline(QtWidgets.QWidget):
    """One lane per target over the last hours: the state as coloured bands, each change as a tick.

    Hover a tick for the time and the cause.  Forced spans are hatched.
    """

    hovered = Signal(str)

    LANE_H = 22
    LABEL_W = 120
    AXIS_H = 22

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.board: BreakerBoard | None = None
        self.span_s = 3600.0
        self._ticks: list[tuple[QtCore.QRectF, str]] = []
        self.setMinimumHeight(self.AXIS_H + self.LANE_H * 2 + 8)

    def set_board(self, board: BreakerBoard) -> None:
        self.board = board
        oldest = min((t.ts for t in board.transitions), default=board.fetched_at - 900)
        # From a little before the first change we know of to now: at least 15 min, at most the history.
        self.span_s = min(board.history_s, max(900.0, (board.fetched_at - oldest) * 1.1))
        self.setMinimumHeight(self.AXIS_H + self.LANE_H * max(1, len(board.rows)) + 8)
        self.updateGeometry()
        self.update()

    def sizeHint(self) -> QtCore.QSize:
        rows = len(self.board.rows) if self.board else 2
        return QtCore.QSize(600, self.AXIS_H + self.LANE_H * max(1, rows) + 8)

    def _x(self, ts: float, plot: QtCore.QRectF, start: float) -> float:
        return plot.left() + (ts - start) / self.span_s * plot.width()

    def paintEvent(self, _event: Any) -> None:
        painter = QtGui.QPainter(self)
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        colors = current_colors()
        painter.fillRect(self.rect(), QtGui.QColor(colors.base))
        board = self.board
        self._ticks = []
        if board is None or not board.rows:
            painter.setPen(QtGui.QColor(colors.muted))
            painter.drawText(self.rect(), int(Qt.AlignmentFlag.AlignCenter), "No breaker transitions yet.")
            return
        now = board.fetched_at
        start = now - self.span_s
        plot = QtCore.QRectF(self.LABEL_W, 4, max(10, self.width() - self.LABEL_W - 12), 0)
        plot.setHeight(self.LANE_H * len(board.rows))
        by_target: dict[str, list[Any]] = {}
        for t in board.transitions:
            by_target.setdefault(t.target, []).append(t)
        for lane, row in enumerate(board.rows):
            y = plot.top() + lane * self.LANE_H
            painter.setPen(QtGui.QColor(colors.text))
            label = painter.fontMetrics().elidedText(
                row.target, Qt.TextElideMode.ElideRight, self.LABEL_W - 12
            )
            painter.drawText(
                QtCore.QRectF(4, y, self.LABEL_W - 8, self.LANE_H),
                int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft),
                label,
            )
            changes = [t for t in by_target.get(row.target, []) if t.ts >= start]
            # The state before the first change on screen is the one it left.
            state = changes[0].from_state if changes else row.state
            x0 = plot.left()
            bounds = [(t.ts, t) for t in changes]
            for ts, t in [*bounds, (now, None)]:
                x1 = self._x(ts, plot, start)
                self._band(
                    painter, QtCore.QRectF(x0, y + 5, max(0.0, x1 - x0), self.LANE_H - 10), state, colors
                )
                if t is not None:
                    forced = bool(
                        isinstance(t.detail, dict) and t.detail.get("forced")
                    ) or t.cause.startswith("force")
                    state = t.to_state
                    painter.setPen(QtGui.QPen(QtGui.QColor(colors.text), 1.5))
                    painter.drawLine(QtCore.QPointF(x1, y + 2), QtCore.QPointF(x1, y + self.LANE_H - 2))
                    tip = (
                        f"{row.target} · {fmt_local(t.ts)}: {STATE_LABELS.get(t.from_state, t.from_state)} → "
                        f"{STATE_LABELS.get(t.to_state, t.to_state)}\n{describe_cause(t)}"
                        + ("\n(forced by an operator)" if forced else "")
                    )
                    self._ticks.append((QtCore.QRectF(x1 - 4, y, 8, self.LANE_H), tip))
                x0 = x1
            if row.forced is not None:
                # The current forced span: hatched over its band, from when it was set.
                fx = max(plot.left(), self._x(row.forced.created_at, plot, start))
                brush = QtGui.QBrush(QtGui.QColor(colors.text), Qt.BrushStyle.BDiagPattern)
                painter.fillRect(QtCore.QRectF(fx, y + 5, plot.right() - fx, self.LANE_H - 10), brush)
        # Time axis: local time, ticks at round minutes.
        axis_y = plot.bottom() + 4
        painter.setPen(QtGui.QColor(colors.border))
        painter.drawLine(QtCore.QPointF(plot.left(), axis_y), QtCore.QPointF(plot.right(), axis_y))
        step = next(s for s in (60, 300, 600, 900, 1800, 3600, 7200, 10800) if self.span_s / s <= 8)
        first = (int(start) // step + 1) * step
        painter.setPen(QtGui.QColor(colors.muted))
        metrics = painter.fontMetrics()
        for tick in range(first, int(now) + 1, step):
            x = self._x(tick, plot, start)
            text = time.strftime("%H:%M", time.localtime(tick))
            w = metrics.horizontalAdvance(text)
            painter.drawLine(QtCore.QPointF(x, axis_y), QtCore.QPointF(x, axis_y + 3))
            if x + w / 2 < plot.right():
                painter.drawText(QtCore.QPointF(x - w / 2, axis_y + 3 + metrics.ascent()), text)
        now_text = "now"
        painter.drawText(
            QtCore.QPointF(plot.right() - metrics.horizontalAdvance(now_text), axis_y + 3 + metrics.ascent()),
            now_text,
        )
        painter.end()

    @staticmethod
    def _band(painter: QtGui.QPainter, rect: QtCore.QRectF, state: str, colors: Colors) -> None:
        key = {"closed": "ok", "half_open": "warn", "open": "bad"}.get(state, "muted")
        colour = state_color(key, colors)
        if state == "closed":
            colour.setAlpha(110)  # closed is the quiet normal: let open and half-open stand out
        painter.fillRect(rect, colour)

    def mouseMoveEvent(self, event: QtGui.QMouseEvent) -> None:
        pos = event.position()
        for rect, tip in self._ticks:
            if rect.contains(pos):
                QtWidgets.QToolTip.showText(event.globalPosition().toPoint(), tip, self)
                self.hovered.emit(tip)
                return
        QtWidgets.QToolTip.hideText()

    def tick_tips(self) -> list[str]:
        return [tip for _, tip in self._ticks]


#: Expiry choices of the switch dialog (seconds; None: until set back to auto).
EXPIRIES: tuple[tuple[str, float | None], ...] = (
    ("in 15 minutes", 900.0),
    ("in 1 hour", 3600.0),
    ("in 4 hours", 4 * 3600.0),
    ("in 24 hours", 86400.0),
    ("never (until set back to auto)", None),
)

_SWITCH_VERBS = {"force_open": "Force open", "force_closed": "Force closed", "auto": "Back to auto"}
#: The switches' keys (ui.md: every action reachable by keyboard); page actions, so they work from the table.
SWITCH_KEYS = {"force_open": "Alt+O", "force_closed": "Alt+C", "auto": "Alt+A"}


def describe_switch(target: str, mode: str, fallbacks: list[tuple[str, list[str]]] | None = None) -> str:
    """What the switch will do, said before it does it (ui.md "Acting safely").

    ``fallbacks``: the stored routes that list ``target`` and where their traffic goes without it
    (:func:`route_fallbacks`); without them the text says what happens in general.
    """
    if mode == "force_open":
        if not fallbacks:
            return (
                f"Force the breaker of {target} open: no request goes to {target}; routes that list it "
                "fall back to their next target (or fail fast when it was the last)."
            )
        moving = [(r, n) for r, n in fallbacks if n]
        stranded = [r for r, n in fallbacks if not n]
        parts = [f"Force open {target}: no request goes to {target}."]
        by_dest: dict[str, list[str]] = {}
        for route, nexts in moving:
            by_dest.setdefault(", ".join(nexts), []).append(route)
        for dest, routes in by_dest.items():
            parts.append(f"Traffic on {_plural('route', routes)} will go to {dest}.")
        if stranded:
            one = len(stranded) == 1
            parts.append(
                f"{_plural('Route', stranded)} {'has' if one else 'have'} no other target: "
                f"{'its' if one else 'their'} requests will fail fast."
            )
        return " ".join(parts)
    if mode == "force_closed":
        return (
            f"Force the breaker of {target} closed: requests go to {target} whatever its failure rate "
            "(a force open still wins)."
        )
    return f"Give the breaker of {target} back to auto: its own counts decide again."


def _plural(word: str, names: list[str]) -> str:
    return f"{word}{'s' if len(names) > 1 else ''} {', '.join(names)}"


class SwitchDialog(QtWidgets.QDialog):
    """Asks for the reason and the expiry of a breaker switch, after saying what it will do.

    Forcing closed a target that is failing (``failing``: why it looks unhealthy) shows why and
    needs one more tick: traffic will go to a target the breaker was protecting callers from.
    """

    def __init__(
        self,
        target: str,
        mode: str,
        parent: QtWidgets.QWidget | None = None,
        *,
        fallbacks: list[tuple[str, list[str]]] | None = None,
        failing: str | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"{_SWITCH_VERBS[mode]} — {target}")
        self.setMinimumWidth(460)
        layout = QtWidgets.QVBoxLayout(self)
        what = QtWidgets.QLabel(describe_switch(target, mode, fallbacks))
        what.setWordWrap(True)
        layout.addWidget(what)
        self.confirm: QtWidgets.QCheckBox | None = None
        if mode == "force_closed" and failing:
            warning = QtWidgets.QLabel(f"{target} is failing: {failing}.")
            warning.setWordWrap(True)
            warning.setObjectName("warning")
            warning.setStyleSheet(f"color: {current_colors().bad}; font-weight: 600;")
            layout.addWidget(warning)
            self.confirm = QtWidgets.QCheckBox(f"Send traffic to {target} anyway")
            layout.addWidget(self.confirm)
        form = QtWidgets.QFormLayout()
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("why (shown on hover and in the audit log)")
        form.addRow("&Reason", self.reason)
        self.expiry = QtWidgets.QComboBox()
        for label, seconds in EXPIRIES:
            self.expiry.addItem(label, seconds)
        self.expiry.setCurrentIndex(1)
        if mode != "auto":
            form.addRow("&Back to auto", self.expiry)
        layout.addLayout(form)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        self.ok.setText(_SWITCH_VERBS[mode])
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        # A forced state needs a reason: the next operator must know why.
        self._needs_reason = mode != "auto"
        self.reason.textChanged.connect(self._sync_ok)
        if self.confirm is not None:
            self.confirm.toggled.connect(self._sync_ok)
        self._sync_ok()
        self.reason.setFocus()

    def _sync_ok(self, *_args: object) -> None:
        ready = (not self._needs_reason or bool(self.reason.text().strip())) and (
            self.confirm is None or self.confirm.isChecked()
        )
        self.ok.setEnabled(ready)

    def expires_in_s(self) -> float | None:
        value = self.expiry.currentData()
        return float(value) if value is not None else None


class BreakersPage(QtWidgets.QWidget):
    """Targets with their breaker state above; the timeline and the list of transitions below."""

    status_message = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._gateway_getter: Callable[[], Any] = lambda: None
        self._busy = False
        self.board: BreakerBoard | None = None
        self.error: str = ""

        spec = page_spec("breakers")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(
                spec.title,
                "Every target's circuit breaker: automatic, or forced by an operator (outlined, with a lock — "
                "hover for who and why).",
            )
        )
        self.source_label = QtWidgets.QLabel("", objectName="muted")
        self.source_label.setWordWrap(True)
        layout.addWidget(self.source_label)
        actions = QtWidgets.QHBoxLayout()
        self.switch_buttons: dict[str, QtWidgets.QPushButton] = {}
        for mode, verb in _SWITCH_VERBS.items():
            button = QtWidgets.QPushButton(f"{verb}…")
            button.setEnabled(False)
            button.setToolTip(
                f"{verb} the selected target's breaker (asks for a reason first) — {SWITCH_KEYS[mode]}"
            )
            button.clicked.connect(lambda _c=False, m=mode: self.ask_switch(m))
            action = QtGui.QAction(f"{verb}…", self)
            action.setShortcut(QtGui.QKeySequence(SWITCH_KEYS[mode]))
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            action.triggered.connect(lambda _c=False, b=button: b.click() if b.isEnabled() else None)
            self.addAction(action)
            self.switch_buttons[mode] = button
            actions.addWidget(button)
        self.switch_result = QtWidgets.QLabel("", objectName="muted")
        actions.addWidget(self.switch_result, 1)
        layout.addLayout(actions)

        self.model = BreakersModel(parent=self)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.model)
        self.table.setItemDelegateForColumn(COL_STATE, StateDelegate(self.table))
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(26)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setHighlightSections(False)
        metrics = self.table.fontMetrics()
        for col, sample in (
            (COL_TARGET, "strong  (claude-3-5-sonnet)"),
            (COL_STATE, "half-open  🔒"),
            (COL_FORCED, "closed by operator, until 14:05:00"),
        ):
            self.table.setColumnWidth(col, metrics.horizontalAdvance(sample) + 28)
        for col in range(COL_FORCED + 1, COL_CAUSE):
            self.table.setColumnWidth(col, metrics.horizontalAdvance(HEADERS[col]) + 20)
        self._preferred_widths = [self.table.columnWidth(c) for c in range(COL_CAUSE)]
        # A narrow window shrinks the two text columns (their full text is on hover), never scrolls sideways:
        # while a target is forced its override (who, until when) stays whole and the model name gives
        # way; otherwise the column of "auto"s does.
        floor = metrics.horizontalAdvance("strong  (gpt-4o)") + 12
        self._shrink_forced_first = [(COL_FORCED, floor), (COL_TARGET, floor)]
        self._shrink_target_first = [(COL_TARGET, floor), (COL_FORCED, floor)]
        self.fitter = ColumnFitter(
            self.table,
            self._preferred_widths,
            self._shrink_forced_first,
            last=metrics.horizontalAdvance(HEADERS[COL_CAUSE]) + 24,  # its header stays whole
        )

        self.table.selectionModel().selectionChanged.connect(self._sync_switch_buttons)
        self.empty = EmptyState(spec.next_step)
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.table)
        self.stack.addWidget(self.empty)
        self.stack.setCurrentWidget(self.empty)
        self.empty.setText("Opening the store…")

        lower = QtWidgets.QWidget()
        lower_layout = QtWidgets.QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 8, 0, 0)
        self.timeline_title = QtWidgets.QLabel("Timeline", objectName="sectionTitle")
        self.timeline_title.setStyleSheet("font-weight: 600;")
        lower_layout.addWidget(self.timeline_title)
        self.timeline = Timeline()
        lower_layout.addWidget(self.timeline)
        self.transitions = TransitionsModel(parent=self)
        self.transitions_view = QtWidgets.QTableView()
        self.transitions_view.setModel(self.transitions)
        self.transitions_view.setItemDelegateForColumn(T_COL_CHANGE, _ChangeDelegate(self.transitions_view))
        self.transitions_view.verticalHeader().setVisible(False)
        self.transitions_view.setShowGrid(False)
        self.transitions_view.setAlternatingRowColors(True)
        self.transitions_view.horizontalHeader().setStretchLastSection(True)
        self.transitions_view.setColumnWidth(0, metrics.horizontalAdvance("14:03:12  ·  59 min ago") + 20)
        self.transitions_view.setColumnWidth(1, metrics.horizontalAdvance("strong-fallback") + 20)
        self.transitions_view.setColumnWidth(2, metrics.horizontalAdvance("half-open → closed") + 24)
        # No transitions: say so, rather than an empty grid taking half the page.
        self.no_transitions = QtWidgets.QLabel("", objectName="muted")
        self.no_transitions.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.no_transitions.setWordWrap(True)
        self.transitions_stack = QtWidgets.QStackedWidget()
        self.transitions_stack.addWidget(self.transitions_view)
        self.transitions_stack.addWidget(self.no_transitions)
        lower_layout.addWidget(self.transitions_stack, 1)

        self.lower = lower
        split = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.stack)
        split.addWidget(lower)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        layout.addWidget(split, 1)

        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self.refresh)

    # -- data -------------------------------------------------------------------------
    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        """Read breakers from ``store`` (or a getter of it) and, when given, a getter of the in-process gateway."""
        self._runner = runner
        self._store_getter = store if callable(store) else (lambda: store)
        if gateway is not None:
            self._gateway_getter = (
                gateway
                if callable(gateway) and not hasattr(gateway, "breaker_snapshots")
                else (lambda: gateway)
            )
        self.refresh()
        self.timer.start()

    def refresh(self) -> None:
        store = self._store_getter()
        if self._runner is None or self._busy:
            return
        if store is None:  # still opening: look again shortly, not at the next tick
            QTimer.singleShot(300, self.refresh)
            return
        if not self.isVisible() and self.board is not None:
            return  # nobody is looking: read again when the page shows
        self._busy = True
        engine = store.engine
        gateway = self._gateway_getter()

        def work() -> BreakerBoard:
            snapshots = None
            if gateway is not None:
                try:
                    snapshots = gateway.breaker_snapshots()
                except RuntimeError:  # its board changed while we read it: store only this time
                    snapshots = None
            return load_board(engine, snapshots)

        self._runner(work, self._on_board, self._on_error)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()

    def _on_board(self, board: BreakerBoard) -> None:
        self._busy = False
        self.board = board
        self.error = ""
        self.model.set_board(board.rows)
        any_forced = any(r.forced is not None for r in board.rows)
        self.fitter.shrink = self._shrink_target_first if any_forced else self._shrink_forced_first
        self.fitter.fit()
        self._sync_switch_buttons()
        self.transitions.set_transitions(board.transitions)
        self.timeline.set_board(board)
        self.stack.setCurrentWidget(self.table if board.rows else self.empty)
        # Show every target without scrolling (up to a dozen); the timeline takes the rest.
        shown = min(max(len(board.rows), 2), 12)
        frame = self.table.frameWidth() * 2 + self.table.horizontalScrollBar().sizeHint().height()
        self.stack.setMinimumHeight(
            self.table.horizontalHeader().height()
            + shown * self.table.verticalHeader().defaultSectionSize()
            + frame
        )
        # No targets, no timeline: one message that says what to do, not three empty panes.
        self.lower.setVisible(bool(board.rows))
        if not board.rows:
            self.empty.setText(
                "No targets yet. Add a provider and its targets on the Providers page, apply a config "
                "file (controlroom config apply FILE.yaml), or start the demo (controlroom ui --demo)."
            )
        open_n = sum(1 for r in board.rows if r.state == "open")
        forced_n = sum(1 for r in board.rows if r.forced is not None)
        where = (
            "Live from the gateway in this app, plus what the store knows."
            if board.live
            else "From the store: recorded transitions and overrides; failure rate and requests "
            "from events recorded in the last 30 s."
        )
        self.source_label.setText(
            f"{len(board.rows)} targets · {open_n} open · {forced_n} forced · updated {fmt_local(board.fetched_at)}. "
            + where
        )
        span_min = round(self.timeline.span_s / 60)
        span = f"{span_min} min" if span_min < 120 else f"{round(span_min / 60)} h"
        n = len(board.transitions)
        self.timeline_title.setText(
            f"Timeline — last {span}, {n} transition{'' if n == 1 else 's'}"
            + (" (hover a tick for its cause)" if n else "")
        )
        self.no_transitions.setText(
            f"No breaker changed state in the last {span}. Transitions and their causes are listed here."
        )
        self.transitions_stack.setCurrentWidget(self.transitions_view if n else self.no_transitions)

    # -- the operator's switch --------------------------------------------------------------
    def selected_target(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.row_at(rows[0].row()).target if rows else None

    def _sync_switch_buttons(self, *_args: object) -> None:
        target = self.selected_target()
        row = next((r for r in (self.board.rows if self.board else []) if r.target == target), None)
        for mode, button in self.switch_buttons.items():
            current = row.forced.state if row is not None and row.forced is not None else "auto"
            button.setEnabled(row is not None and mode != current)

    def ask_switch(self, mode: str) -> None:
        target = self.selected_target()
        if target is None:
            return
        board = self.board
        row = board.row(target) if board is not None else None
        dialog = SwitchDialog(
            target,
            mode,
            self,
            fallbacks=board.fallbacks.get(target) if board is not None else None,
            failing=failing_reason(row) if row is not None else None,
        )
        if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            self.switch(target, mode, dialog.reason.text().strip(), dialog.expires_in_s())

    def switch(self, target: str, mode: str, reason: str, expires_in_s: float | None = None) -> None:
        """Write the override (audited; every gateway picks it up from the store), then read the board again."""
        store = self._store_getter()
        if self._runner is None or store is None:
            return
        engine = store.engine
        actor = getpass.getuser()

        def work() -> Any:
            expires = time.time() + expires_in_s if expires_in_s is not None and mode != "auto" else None
            return set_breaker_override(engine, target, mode, actor=actor, reason=reason, expires_at=expires)  # type: ignore[arg-type]

        def done(_override: Any) -> None:
            self.switch_result.setText(f"{_SWITCH_VERBS[mode]}: {target} — done at {fmt_local(time.time())}.")
            self.refresh()

        def failed(exc: BaseException) -> None:
            self.switch_result.setText(f"{_SWITCH_VERBS[mode]} {target} failed: {exc}")

        self._runner(work, done, failed)

    def export_visible(self, ask_path: Any = None) -> Path | None:
        """Ctrl+E: the targets table as shown, to a CSV file."""
        return export_table(self, self.model, "breakers", self._say, ask_path=ask_path)

    def _say(self, text: str) -> None:
        self.switch_result.setText(text)
        self.status_message.emit(text)

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self.error = str(exc) or type(exc).__name__
        self.source_label.setText(f"The store could not answer: {self.error}")


class _ChangeDelegate(QtWidgets.QStyledItemDelegate):
    """The new state's colour on the change text."""

    def initStyleOption(self, option: QtWidgets.QStyleOptionViewItem, index: Any) -> None:
        super().initStyleOption(option, index)
        key = index.data(STATE_ROLE)
        if key:
            option.palette.setColor(QtGui.QPalette.ColorRole.Text, state_color(key, current_colors()))


__all__ = ["BreakersPage", "StateDelegate", "Timeline"]
