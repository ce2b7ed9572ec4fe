"""The Budgets page: every budget with its spend so far against the limit (warning levels marked,
the ones already fired filled in), where the current burn rate takes it, and an editor for scope,
period and time zone, limits, warning levels and the action at 100%.

Saving writes the budget row in one transaction that checks the whole configuration still loads,
at the revision the form was loaded from (a concurrent save is refused, with Reload), audited
with the OS user and the reason typed; every gateway applies it within a second.
"""

from __future__ import annotations

import getpass
import itertools
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.core import format as fmt
from app.core.budget import Budget, BudgetAction, parse_period
from app.ui.editors import FieldError, ProblemBanner, SaveBar, ask_confirmation, export_config
from app.ui.editors.control_page import ControlObjectPage
from app.ui.models import budgets_model as bm
from app.ui.models import routes_model as rm
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtCore, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import Colors, current_colors

Confirm = Callable[[str, str, str], bool]

#: How often spend is read again while the page is shown.
REFRESH_MS = 5000

COLUMNS = ("Budget", "Scope", "Period", "Used", "Spent / limit", "Projection")


def bar_colour(ratio: float, levels: tuple[float, ...], colors: Colors) -> str:
    """Green below the first warning level, amber past one, red at the limit (ui.md)."""
    if ratio >= 1.0:
        return colors.bad
    if levels and ratio >= min(levels):
        return colors.warn
    return colors.ok


def paint_bar(  # noqa: PLR0917 - one picture, drawn in two places
    painter: QtGui.QPainter,
    rect: QtCore.QRectF,
    ratio: float,
    levels: tuple[float, ...],
    fired: tuple[float, ...],
    end_ratio: float | None,
    colors: Colors,
    labels: bool = True,
) -> None:
    """The spend bar: the track is the limit (100% at its right end, room beyond for overspend),
    the fill is spent so far, the dashed outline where the period ends at this rate, and a tick
    per warning level (solid and labelled in bold once fired)."""
    painter.save()
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    label_h = painter.fontMetrics().height() if labels else 0
    track = QtCore.QRectF(rect.x(), rect.y() + 2, rect.width(), rect.height() - label_h - 4)
    scale_max = max(1.0, min(ratio, 2.0), min(end_ratio or 0.0, 2.0)) * (
        1.08 if ratio > 1 or (end_ratio or 0) > 1 else 1
    )
    width = track.width()

    def x(r: float) -> float:
        return track.left() + min(r, scale_max) / scale_max * width

    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QtGui.QColor(colors.alt_base))
    painter.drawRoundedRect(track, 3, 3)
    if end_ratio is not None and end_ratio > ratio:
        ghost = QtCore.QRectF(track.left(), track.top(), x(end_ratio) - track.left(), track.height())
        pen = QtGui.QPen(QtGui.QColor(colors.muted), 1, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRoundedRect(ghost.adjusted(0.5, 0.5, -0.5, -0.5), 3, 3)
    if ratio > 0:
        fill = QtCore.QRectF(track.left(), track.top(), max(2.0, x(ratio) - track.left()), track.height())
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QtGui.QColor(bar_colour(ratio, levels, colors)))
        painter.drawRoundedRect(fill, 3, 3)
    # The limit.
    painter.setPen(QtGui.QPen(QtGui.QColor(colors.bad), 2))
    painter.drawLine(QtCore.QPointF(x(1.0), track.top() - 2), QtCore.QPointF(x(1.0), track.bottom() + 2))
    metrics = painter.fontMetrics()
    marks = [(lv, f"{lv * 100:g}%") for lv in levels] + [(1.0, "limit")]
    right_edge = track.right()
    # Right to left, so a label never overlaps the one to its right ("95%" beside "limit").
    for lv, text in sorted(marks, reverse=True):
        done = any(abs(lv - f) < 1e-9 for f in fired) or (lv >= 1.0 and ratio >= 1.0)
        colour = QtGui.QColor(colors.text if done else colors.muted)
        if lv < 1.0:
            pen = QtGui.QPen(
                colour, 2 if done else 1, Qt.PenStyle.SolidLine if done else Qt.PenStyle.DashLine
            )
            painter.setPen(pen)
            painter.drawLine(QtCore.QPointF(x(lv), track.top()), QtCore.QPointF(x(lv), track.bottom()))
        if labels:
            font = painter.font()
            font.setBold(done)
            painter.setFont(font)
            w = QtGui.QFontMetricsF(font).horizontalAdvance(text)
            tx = min(max(track.left(), x(lv) - w / 2), right_edge - w)
            if tx < track.left():
                continue  # no room left of its neighbour: the tooltip still lists it
            painter.setPen(colour)
            painter.drawText(QtCore.QPointF(tx, track.bottom() + 2 + metrics.ascent()), text)
            right_edge = tx - 6
    painter.restore()


class SpendBar(QtWidgets.QWidget):
    """A budget's spend against its limit, with the warning levels marked (see :func:`paint_bar`)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.ratio = 0.0
        self.levels: tuple[float, ...] = ()
        self.fired: tuple[float, ...] = ()
        self.end_ratio: float | None = None
        self.setMinimumHeight(44)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)

    def set_values(
        self, ratio: float, levels: tuple[float, ...], fired: tuple[float, ...], end_ratio: float | None
    ) -> None:
        self.ratio, self.levels, self.fired, self.end_ratio = ratio, levels, fired, end_ratio
        self.setToolTip(
            f"{pct(ratio)} used; warning levels {', '.join(f'{lv * 100:g}%' for lv in levels) or 'none'}"
            f"; fired this period: {', '.join(f'{lv * 100:g}%' for lv in fired) or 'none'}"
        )
        self.update()

    def sizeHint(self) -> QtCore.QSize:
        return QtCore.QSize(400, 44)

    def paintEvent(self, _event: Any) -> None:
        painter = QtGui.QPainter(self)
        paint_bar(
            painter,
            QtCore.QRectF(self.rect()).adjusted(1, 1, -1, -1),
            self.ratio,
            self.levels,
            self.fired,
            self.end_ratio,
            current_colors(),
        )
        painter.end()


class _BarDelegate(QtWidgets.QStyledItemDelegate):
    """The "Used" column: a small spend bar with the percentage beside it."""

    def paint(self, painter: QtGui.QPainter, option: QtWidgets.QStyleOptionViewItem, index: Any) -> None:
        rec = index.data(Qt.ItemDataRole.UserRole)
        st = getattr(rec, "standing", None)
        self.initStyleOption(option, index)
        style = option.widget.style() if option.widget is not None else QtWidgets.QApplication.style()
        text = option.text
        option.text = ""
        style.drawControl(QtWidgets.QStyle.ControlElement.CE_ItemViewItem, option, painter, option.widget)
        if st is None:
            painter.drawText(
                option.rect.adjusted(6, 0, 0, 0), int(Qt.AlignmentFlag.AlignVCenter), text or "—"
            )
            return
        colors = current_colors()
        metrics = option.fontMetrics
        tw = metrics.horizontalAdvance("100%") + 8
        r = QtCore.QRectF(option.rect).adjusted(
            6, option.rect.height() / 2 - 6, -tw - 4, -(option.rect.height() / 2 - 6)
        )
        paint_bar(painter, r, st.ratio, st.budget.warn_at, st.fired, None, colors, labels=False)
        painter.save()
        painter.setPen(
            QtGui.QColor(bar_colour(st.ratio, st.budget.warn_at, colors) if st.ratio >= 1 else colors.text)
        )
        painter.drawText(
            QtCore.QRectF(option.rect.right() - tw, option.rect.top(), tw, option.rect.height()),
            int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight),
            pct(st.ratio),
        )
        painter.restore()


def describe_spend(st: bm.BudgetStandingView) -> str:
    b = st.budget
    parts = []
    if b.limit_usd:
        parts.append(f"{fmt.fmt_usd(st.spend.usd)} / {fmt.fmt_usd(b.limit_usd)}")
    if b.limit_tokens:
        parts.append(f"{fmt.fmt_tokens(st.spend.tokens)} / {fmt.fmt_tokens(b.limit_tokens)} tok")
    return " · ".join(parts)


def describe_projection(st: bm.BudgetStandingView, *, short: bool = False) -> str:
    """Where the burn rate takes the budget, in plain words."""
    o = st.outlook
    b = st.budget
    rolling = parse_period(b.period).kind == "rolling"
    if st.ratio >= 1.0:
        return "limit reached" if short else "The limit is reached: " + _action_words(b)
    if o.reach_at is not None:
        when = time.strftime("%H:%M", time.localtime(o.reach_at))
        days = int((o.reach_at - st.now) // 86400)
        if days >= 1:
            when = time.strftime("%a %H:%M", time.localtime(o.reach_at))
        rel = fmt.fmt_relative_time(st.now - o.reach_at)
        if short:
            return f"limit at {when} ({rel})"
        return f"At the current rate the limit is reached at {when} ({rel}); then " + _action_words(b)
    if st.spend.usd == 0 and st.spend.tokens == 0:
        return "nothing spent yet" if short else "Nothing spent yet this period."
    if rolling:
        return (
            f"steady at {pct(st.ratio)}"
            if short
            else f"A rolling window: at a steady rate it stays around {pct(st.ratio)} of the limit."
        )
    end = pct(o.end_ratio)
    if short:
        return f"{end} by period end"
    phrase = {"day": "the day", "week": "the week", "month": "the month"}.get(b.period, "the period")
    return f"At the current rate {phrase} ends at {end} of the limit: not reached this period."


def _action_words(b: Budget) -> str:
    if b.action is BudgetAction.BLOCK:
        return "new requests are blocked (budget_blocked)."
    if b.action is BudgetAction.DOWNGRADE:
        return f"requests go to {' → '.join(b.downgrade_to)}."
    return "alerts only (traffic goes on)."


def pct(ratio: float) -> str:
    """Used share, floored like the warning messages ("80%" only once 80% is reached)."""
    if 0 < ratio < 0.01:
        return fmt.fmt_percent(ratio)
    return f"{math.floor(ratio * 100 + 1e-9)}%"


def _num(value: float | int | None) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


class BudgetsPage(ControlObjectPage, QtWidgets.QWidget):
    """Budgets with their standing above; the selected budget's spend bar and editor below."""

    KIND = "budget"

    status_message = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._gateway_getter: Callable[[], Any] = lambda: None
        self.confirm: Confirm = lambda title, text, ok: ask_confirmation(self, title, text, ok)
        self.snapshot: bm.BudgetsSnapshot | None = None
        self.record: bm.BudgetRecord | None = None
        self.budget: Budget | None = None
        self._loaded_state: Any = None
        self._loading = False
        self._busy = False
        self._reading = False

        spec = page_spec("budgets")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(
                spec.title,
                "Spend so far this period against each limit, where the current burn rate takes it, and "
                "the warnings already fired. Every budget that applies to a request must pass.",
            )
        )
        self.note = QtWidgets.QLabel("", objectName="muted")
        self.note.setWordWrap(True)
        self.note.hide()
        layout.addWidget(self.note)

        top = QtWidgets.QHBoxLayout()
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setAccessibleName("Budgets")
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(26)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setMinimumSectionSize(60)
        self.table.setItemDelegateForColumn(3, _BarDelegate(self.table))
        header = self.table.horizontalHeader()
        # Fit the viewport (no sideways scrolling): names and periods as wide as they need, the
        # texts share the rest and elide (the full text is in the tooltip).
        mode = QtWidgets.QHeaderView.ResizeMode
        for col, m in enumerate(
            (
                mode.ResizeToContents,
                mode.Stretch,
                mode.ResizeToContents,
                mode.Fixed,
                mode.Stretch,
                mode.Stretch,
            )
        ):
            header.setSectionResizeMode(col, m)
        self.table.setColumnWidth(3, 150)
        self.table.itemSelectionChanged.connect(self._on_pick)
        self.empty = EmptyState(spec.next_step)
        self.empty.setText("Opening the store…")
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.table)
        self.stack.addWidget(self.empty)
        self.stack.setCurrentWidget(self.empty)
        top.addWidget(self.stack, 1)
        side = QtWidgets.QVBoxLayout()
        self.new_button = QtWidgets.QPushButton("New budget")
        self.new_button.clicked.connect(self.new_budget)
        side.addWidget(self.new_button)
        side.addStretch(1)
        top.addLayout(side)
        upper = QtWidgets.QWidget()
        upper.setLayout(top)
        top.setContentsMargins(0, 0, 0, 0)

        # -- standing of the selected budget
        lower = QtWidgets.QWidget()
        low = QtWidgets.QVBoxLayout(lower)
        low.setContentsMargins(0, 8, 0, 0)
        self.standing_title = QtWidgets.QLabel("")
        self.standing_title.setStyleSheet("font-weight: 600;")
        low.addWidget(self.standing_title)
        self.bar = SpendBar()
        self.bar.setAccessibleName("Spend against the limit")
        low.addWidget(self.bar)
        self.spend_text = QtWidgets.QLabel("")
        self.spend_text.setWordWrap(True)
        low.addWidget(self.spend_text)
        self.projection_text = QtWidgets.QLabel("")
        self.projection_text.setWordWrap(True)
        low.addWidget(self.projection_text)
        self.fired_text = QtWidgets.QLabel("", objectName="muted")
        self.fired_text.setWordWrap(True)
        low.addWidget(self.fired_text)

        # -- the editor
        self.banner = ProblemBanner()
        self.banner.action.connect(self.reload_current)
        low.addWidget(self.banner)
        self.editor = QtWidgets.QGroupBox("Edit budget")
        grid = QtWidgets.QGridLayout(self.editor)
        self.fields: dict[str, FieldError] = {}

        def add(
            row: int, col: int, label: str, key: str, w: QtWidgets.QWidget, *, tip: str = "", span: int = 1
        ) -> None:
            w.setAccessibleName(label)
            f = FieldError(w, tip)
            self.fields[key] = f
            lab = QtWidgets.QLabel(label)
            lab.setFixedHeight(QtWidgets.QLineEdit().sizeHint().height())
            lab.setAlignment(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft)
            lab.setBuddy(w)
            grid.addWidget(lab, row, col * 2, Qt.AlignmentFlag.AlignTop)
            grid.addWidget(f, row, col * 2 + 1, 1, span, Qt.AlignmentFlag.AlignTop)

        self.name = QtWidgets.QLineEdit()
        self.name.setPlaceholderText("e.g. search-daily")
        self.scope = QtWidgets.QLineEdit()
        self.scope.setPlaceholderText("all traffic (or e.g. feature=search, team=ml)")
        self.period = QtWidgets.QComboBox()
        self.period.setEditable(True)
        self.period.addItems(list(bm.PERIODS))
        self.timezone = QtWidgets.QComboBox()
        self.timezone.setEditable(True)
        self.timezone.addItems(list(bm.TIMEZONES))
        self.limit_usd = QtWidgets.QLineEdit()
        self.limit_usd.setPlaceholderText("no USD limit")
        self.limit_tokens = QtWidgets.QLineEdit()
        self.limit_tokens.setPlaceholderText("no token limit")
        self.levels = QtWidgets.QLineEdit()
        self.levels.setPlaceholderText("50, 80, 95")
        self.action = QtWidgets.QComboBox()
        for value, label in bm.ACTIONS:
            self.action.addItem(label, value)
        self.downgrade = QtWidgets.QLineEdit()
        self.downgrade.setPlaceholderText("cheaper chain, e.g. fast, quick")
        add(0, 0, "Name", "name", self.name)
        add(
            0,
            1,
            "Scope",
            "scope",
            self.scope,
            tip="Keys: provider, model, route, feature, user, or any tag (team, tier...)",
        )
        add(
            1,
            0,
            "Period",
            "period",
            self.period,
            tip="day, week, month (calendar, in the time zone) or rolling_<N>h / rolling_<N>d",
        )
        add(
            1,
            1,
            "Time zone",
            "timezone",
            self.timezone,
            tip="Where the day, week or month starts (IANA name)",
        )
        add(
            2,
            0,
            "Limit (USD)",
            "limit_usd",
            self.limit_usd,
            tip="Money per period; leave empty for tokens only",
        )
        add(2, 1, "Limit (tokens)", "limit_tokens", self.limit_tokens, tip="Input + output tokens per period")
        add(3, 0, "Warn at (%)", "warn_at", self.levels, tip="Each level alerts once per period")
        add(3, 1, "At 100%", "action", self.action, tip="What happens when the limit is reached")
        add(
            4,
            0,
            "Downgrade to",
            "downgrade_to",
            self.downgrade,
            tip="Targets tried instead, in order",
            span=3,
        )
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        low.addWidget(self.editor)
        self.save_bar = SaveBar("budget")
        self.save_bar.save.clicked.connect(self.save)
        self.save_bar.revert.clicked.connect(self.revert)
        self.save_bar.delete.clicked.connect(self.delete)
        self.save_bar.reason.textChanged.connect(lambda _t: self.save_bar.reason_field.clear_problem())
        low.addWidget(self.save_bar)
        self.result = QtWidgets.QLabel("", objectName="muted")
        self.result.setWordWrap(True)
        low.addWidget(self.result)
        low.addStretch(1)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setWidget(lower)

        split = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        split.addWidget(upper)
        split.addWidget(scroll)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setChildrenCollapsible(False)
        layout.addWidget(split, 1)

        for edit in (self.name, self.scope, self.limit_usd, self.limit_tokens, self.levels, self.downgrade):
            edit.textChanged.connect(self._edited)
        for combo in (self.period, self.timezone):
            combo.currentTextChanged.connect(self._edited)
        self.action.currentIndexChanged.connect(self._edited)
        self._validate_timer = QTimer(self, interval=120, singleShot=True)
        self._validate_timer.timeout.connect(self.validate)
        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self._tick)
        #: Where "now" comes from for the standing (spend this period, projection); a test pins it.
        self.clock: Callable[[], float] = time.time

        save = QtGui.QShortcut(QtGui.QKeySequence.StandardKey.Save, self)
        save.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        save.activated.connect(self.save)
        esc = QtGui.QShortcut(QtGui.QKeySequence(Qt.Key.Key_Escape), self)
        esc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        esc.activated.connect(self.revert)
        chain: list[QtWidgets.QWidget] = [
            self.table,
            self.new_button,
            self.name,
            self.scope,
            self.period,
            self.timezone,
            self.limit_usd,
            self.limit_tokens,
            self.levels,
            self.action,
            self.downgrade,
            self.save_bar.reason,
            self.save_bar.save,
            self.save_bar.revert,
            self.save_bar.delete,
        ]
        for a, b in itertools.pairwise(chain):
            QtWidgets.QWidget.setTabOrder(a, b)
        self._show_standing(None)
        self._set_editing(False)

    # -- store -----------------------------------------------------------------------
    def _tick(self) -> None:
        if self.isVisible():
            self.refresh()

    def export_visible(self, ask_path: Any = None) -> None:
        """Ctrl+E: the store's configuration (budgets with the rest) as a file `config apply` reads."""
        store = self._store_getter()
        if store is None or self._runner is None:
            return
        export_config(self, store.engine, self._runner, self._tell, what="budgets", ask_path=ask_path)

    def refresh(self, select: str | None = None) -> None:
        store = self._store_getter()
        if self._runner is None or self._reading:
            return
        if store is None:  # still opening: look again shortly
            QTimer.singleShot(300, lambda: self.refresh(select))
            return
        engine = store.engine
        gateway_config = self._gateway_config()
        self._reading = True

        now = self.clock()

        def work() -> bm.BudgetsSnapshot:
            return bm.load_budgets(engine, gateway_config, now=now)

        def failed(exc: BaseException) -> None:
            self._reading = False
            self.empty.setText(f"The store could not answer: {exc}")
            self.result.setText(f"The store could not answer: {exc}")

        self._runner(work, lambda snap: self._on_snapshot(snap, select), failed)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if self.snapshot is not None:
            self.refresh()

    def _on_snapshot(self, snap: bm.BudgetsSnapshot, select: str | None) -> None:
        self._reading = False
        self.snapshot = snap
        self.note.setText(snap.note)
        self.note.setVisible(bool(snap.note))
        self.new_button.setEnabled(not snap.read_only)
        self.table.blockSignals(True)
        self.table.setRowCount(len(snap.budgets))
        for i, rec in enumerate(snap.budgets):
            b, st = rec.budget, rec.standing
            cells = [
                rec.name,
                (b.scope_noun if b is not None else ""),
                (
                    f"{b.period} ({b.timezone})"
                    if b is not None and parse_period_ok(b) and b.period in ("day", "week", "month")
                    else (b.period if b else "")
                ),
                (pct(st.ratio) if st is not None else "—"),
                (describe_spend(st) if st is not None else rec.error or "does not load"),
                (describe_projection(st, short=True) if st is not None else ""),
            ]
            for col, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, rec)
                if st is not None and col == 5 and st.outlook.reach_at is not None:
                    item.setForeground(
                        QtGui.QColor(current_colors().warn if st.ratio < 1 else current_colors().bad)
                    )
                item.setToolTip(rec.error or text)
                self.table.setItem(i, col, item)
        self.table.blockSignals(False)
        if not snap.budgets:
            self.empty.setText(
                "No budgets yet. Add one with New budget, or in a config file (budgets:) applied with "
                "controlroom config apply FILE.yaml."
            )
            self.stack.setCurrentWidget(self.empty)
        else:
            self.stack.setCurrentWidget(self.table)
            # Every budget visible without scrolling (up to ten); the standing and editor take the rest.
            shown = min(max(len(snap.budgets), 2), 10)
            height = (
                self.table.horizontalHeader().sizeHint().height()
                + shown * self.table.verticalHeader().defaultSectionSize()
                + self.table.frameWidth() * 2
                + 4
            )
            self.stack.setMinimumHeight(height)
            self.stack.setMaximumHeight(height if len(snap.budgets) <= 10 else 16777215)
        names = [r.name for r in snap.budgets]
        current = select or (self.record.name if self.record is not None else None)
        if self.record is not None and self.record.revision is None and not snap.read_only and not select:
            return  # a new budget being written: keep it
        if self.dirty and self.record is not None:
            if self.record.name in names:
                self._select_row(names.index(self.record.name))
            rec = next((r for r in snap.budgets if r.name == self.record.name), None)
            self._show_standing(rec)  # the spend moves on; the edits stay
            return
        if not names:
            self._show_standing(None)
            return
        row = names.index(current) if current in names else 0
        self._select_row(row)
        rec = snap.budgets[row]
        old = self.record
        if old is not None and (rec.name, rec.revision, rec.budget) == (old.name, old.revision, old.budget):
            self.record = rec  # unchanged in the store: new standing only; the form keeps its focus
            self._set_editing(True)
            self._show_standing(rec)
            return
        self.load_record(rec)

    def _select_row(self, row: int) -> None:
        self.table.blockSignals(True)
        self.table.selectRow(row)
        self.table.blockSignals(False)

    # -- the form -----------------------------------------------------------------------
    def _on_pick(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or self.snapshot is None:
            return
        rec = self.snapshot.budgets[rows[0].row()]
        if self.record is not None and rec.name == self.record.name:
            return
        if self.dirty and not self.confirm(
            "Discard edits?",
            f"Budget {self.record.name if self.record else ''} has unsaved edits. Discard them?",
            "Discard",
        ):
            names = [r.name for r in self.snapshot.budgets]
            if self.record is not None and self.record.name in names:
                self._select_row(names.index(self.record.name))
            return
        self.load_record(rec)

    def select_budget(self, name: str) -> None:
        assert self.snapshot is not None
        self.table.selectRow([r.name for r in self.snapshot.budgets].index(name))

    def new_budget(self) -> None:
        if self.dirty and not self.confirm(
            "Discard edits?", "The budget being edited has unsaved edits. Discard them?", "Discard"
        ):
            return
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.blockSignals(False)
        self.load_record(bm.BudgetRecord("", None, Budget("", limit_usd=None), None))
        self.name.setFocus()

    def load_record(self, rec: bm.BudgetRecord) -> None:
        self._loading = True
        try:
            self.record = rec
            self.banner.clear()
            b = rec.budget or Budget(rec.name)
            self.name.setText(b.name)
            self.name.setReadOnly(
                rec.revision is not None or (self.snapshot is not None and self.snapshot.read_only)
            )
            self.scope.setText(bm.format_scope(b.scope))
            self.period.setCurrentText(b.period)
            self.timezone.setCurrentText(b.timezone)
            self.limit_usd.setText(_num(b.limit_usd))
            self.limit_tokens.setText(_num(b.limit_tokens))
            self.levels.setText(bm.format_levels(b.warn_at))
            self.action.setCurrentIndex(self.action.findData(b.action.value))
            self.downgrade.setText(", ".join(b.downgrade_to))
            if rec.error:
                self.banner.show_message(f"The stored budget does not load: {rec.error}")
        finally:
            self._loading = False
        self._set_editing(True)
        self.validate()
        self._loaded_state = self.form_state()
        self._sync_buttons()
        self._show_standing(rec)

    def _show_standing(self, rec: bm.BudgetRecord | None) -> None:
        st = rec.standing if rec is not None else None
        if rec is None or st is None:
            self.standing_title.setText(
                "New budget" if rec is not None and rec.revision is None and not rec.name else ""
            )
            self.bar.setVisible(False)
            self.spend_text.setText(
                "" if rec is None or not rec.name else "No standing: the budget does not validate."
            )
            self.projection_text.setText("")
            self.fired_text.setText("")
            return
        b = st.budget
        self.bar.setVisible(True)
        if parse_period(b.period).kind == "rolling":
            since = f"the last {b.period.removeprefix('rolling_')}"
        else:
            start = datetime.fromtimestamp(st.outlook.period_start, ZoneInfo(b.timezone))
            since = f"this {b.period}, from {start:%a %d %b %H:%M} {b.timezone}"
        self.standing_title.setText(f"{b.name} — {b.scope_noun}, {since}")
        self.bar.set_values(st.ratio, b.warn_at, st.fired, st.outlook.end_ratio)
        colors = current_colors()
        colour = colors.bad if st.ratio >= 1 else colors.text
        self.spend_text.setStyleSheet(f"color: {colour};")
        rate = []
        if b.limit_usd:
            rate.append(f"{fmt.fmt_usd(st.outlook.usd_per_hour)}/h")
        if b.limit_tokens:
            rate.append(f"{fmt.fmt_tokens(st.outlook.tokens_per_hour)} tokens/h")
        self.spend_text.setText(f"{st.message[0].upper()}{st.message[1:]} · burn rate {' · '.join(rate)}")
        self.projection_text.setText(describe_projection(st))
        if st.fired:
            fired = ", ".join(f"{lv * 100:g}%" if lv < 1 else "limit" for lv in st.fired)
            self.fired_text.setText(
                f"Warnings already fired this period: {fired} (each fires once per period)."
            )
        else:
            self.fired_text.setText("No warning fired this period yet.")

    def _set_editing(self, on: bool) -> None:
        read_only = self.snapshot is not None and self.snapshot.read_only
        self.editor.setEnabled(on and not read_only)
        self.save_bar.setEnabled(on and not read_only)

    def form_state(self) -> Any:
        return (
            self.name.text(),
            self.scope.text(),
            self.period.currentText(),
            self.timezone.currentText(),
            self.limit_usd.text(),
            self.limit_tokens.text(),
            self.levels.text(),
            self.action.currentData(),
            self.downgrade.text(),
        )

    @property
    def dirty(self) -> bool:
        if self.record is None or self._loaded_state is None:
            return False
        if self.snapshot is not None and self.snapshot.read_only:
            return False
        return bool(self.record.revision is None or self.form_state() != self._loaded_state)

    def _edited(self, *_args: object) -> None:
        if self._loading:
            return
        self.downgrade.setEnabled(self.action.currentData() == "downgrade" or bool(self.downgrade.text()))
        self._validate_timer.start()
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        saved = self.record is not None and self.record.revision is not None
        self.save_bar.save.setEnabled(self.dirty)
        self.save_bar.revert.setEnabled(self.dirty and saved)
        self.save_bar.delete.setEnabled(saved)

    def messages(self) -> dict[str, str]:
        return {k: f.message for k, f in self.fields.items() if f.message}

    @property
    def error_count(self) -> int:
        return sum(1 for f in self.fields.values() if f.severity == "error")

    def validate(self) -> Budget | None:
        """Check the form now; every problem at its field.  The budget when it has no error."""
        for f in self.fields.values():
            f.clear_problem()
        errors: list[tuple[str, str]] = []
        warnings: list[tuple[str, str]] = []

        def parse(key: str, fn: Callable[[], Any], default: Any) -> Any:
            try:
                return fn()
            except ValueError as exc:
                errors.append((key, str(exc)))
                return default

        scope = parse("scope", lambda: bm.parse_scope(self.scope.text()), {})
        usd = parse(
            "limit_usd",
            lambda: rm.parse_number(self.limit_usd.text(), "the USD limit", optional=True),
            None,
        )
        tokens = parse(
            "limit_tokens",
            lambda: rm.parse_number(self.limit_tokens.text(), "the token limit", integer=True, optional=True),
            None,
        )
        levels = parse("warn_at", lambda: bm.parse_levels(self.levels.text()), ())
        action = BudgetAction(self.action.currentData())
        chain = bm.parse_chain(self.downgrade.text())
        budget = Budget(
            name=self.name.text().strip(),
            scope=scope,
            period=self.period.currentText().strip(),
            timezone=self.timezone.currentText().strip(),
            limit_usd=float(usd) if usd is not None else None,
            limit_tokens=int(tokens) if tokens is not None else None,
            warn_at=levels,
            action=action,
            downgrade_to=chain,
        )
        bad = {k for k, _ in errors}
        for key, message in budget.problems():
            if key in bad or (
                key == "limit_usd" and "needs limit_usd" in message and bad & {"limit_usd", "limit_tokens"}
            ):
                continue
            noun = {"limit_usd": "the USD limit", "limit_tokens": "the token limit"}.get(key, key)
            errors.append((key, message if not message.startswith("must") else f"{noun} {message}"))
        snap = self.snapshot
        if snap is not None:
            for t in chain:
                if t not in snap.targets:
                    errors.append(("downgrade_to", f"unknown target `{t}`"))
            for key, known in (("route", snap.routes), ("provider", snap.providers)):
                if key in scope and scope[key] not in known:
                    errors.append(("scope", f"scope {key} `{scope[key]}` does not exist in the store"))
            taken = {r.name for r in snap.budgets}
            if (
                self.record is not None
                and self.record.revision is None
                and budget.name in taken
                and not snap.read_only
            ):
                errors.append(("name", f"a budget called `{budget.name}` already exists"))
            rolling = "period" not in {k for k, _ in errors} and parse_period(budget.period).kind == "rolling"
            if rolling and budget.timezone != "UTC":
                warnings.append(("timezone", "a rolling window ignores the time zone"))
        for key, message in errors:
            self.fields[key].set_problem(message)
        for key, message in warnings:
            self.fields[key].set_problem(message, "warning")
        self.budget = budget if not errors else None
        return self.budget

    # -- save, revert, delete -----------------------------------------------------------------
    def save(self) -> None:
        if self.record is None or (self.snapshot is not None and self.snapshot.read_only) or self._busy:
            return
        self._validate_timer.stop()
        budget = self.validate()
        if budget is None:
            n = self.error_count
            self.banner.show_message(
                f"Not saved: fix the {n} problem{'s' if n != 1 else ''} marked in red first."
            )
            first = next((f for f in self.fields.values() if f.severity == "error"), None)
            if first is not None:
                first.editor.setFocus()
            return
        reason = self.save_bar.required_reason()
        if reason is None:
            return
        store = self._store_getter()
        if self._runner is None or store is None:
            return
        engine = store.engine
        row = bm.budget_to_row(budget)
        expected = self.record.revision
        actor = getpass.getuser()
        self._busy = True

        def work() -> dict[str, Any]:
            return rm.save_row(engine, "budget", row, expected_revision=expected, actor=actor, reason=reason)

        self._runner(work, self._on_saved, self._on_save_error)

    def _on_saved(self, stored: dict[str, Any]) -> None:
        self._busy = False
        self.banner.clear()
        self.save_bar.reason.clear()
        text = (
            f"Saved budget {stored['name']} (revision {stored['revision']}) at {time.strftime('%H:%M:%S')}; "
            "every gateway applies it within a second."
        )
        self.result.setText(text)
        self.status_message.emit(text)
        self.record = bm.BudgetRecord(stored["name"], stored["revision"], bm.budget_from_row(stored), None)
        self._loaded_state = self.form_state()
        self.name.setReadOnly(True)
        self._sync_buttons()
        self.refresh(select=stored["name"])

    def reload_current(self) -> None:
        if self.record is None:
            return
        name = self.record.name or self.name.text().strip()
        self.banner.clear()
        self._loaded_state = None
        self.record = bm.BudgetRecord(name, -1, None, None)
        self.refresh(select=name)

    def revert(self) -> None:
        if self.record is None:
            return
        if self.dirty and not self.confirm(
            "Revert edits?",
            f"Throw away the unsaved edits to budget {self.record.name or '(new)'}?",
            "Revert",
        ):
            return
        if self.record.revision is None:
            self.record = None
            self._loaded_state = None
            self.refresh()
            return
        rec = next(
            (r for r in (self.snapshot.budgets if self.snapshot else []) if r.name == self.record.name),
            self.record,
        )
        self.load_record(rec)

    def delete_consequence(self, name: str) -> str:
        return "Its limit stops applying in every gateway within a second (its spend stays in the events)."


def parse_period_ok(b: Budget) -> bool:
    try:
        parse_period(b.period)
        ZoneInfo(b.timezone)
    except (ValueError, ZoneInfoNotFoundError):
        return False
    return True


PAGE_CLASS = BudgetsPage

__all__ = ["PAGE_CLASS", "BudgetsPage", "SpendBar", "paint_bar"]
