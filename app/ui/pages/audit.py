"""The Audit page: every control change — who, when, what (before and after), why — and its undo.

Filters (object type, name, actor, time range) read the store again through the
runner; the detail pane shows the selected change field by field and as a JSON
diff; the newest change to an object can be reverted, after a dialog that says
what will change and asks why (ui.md "Acting safely").  A revert is a new,
audited change (app.gateway.revert).
"""

from __future__ import annotations

import difflib
import getpass
import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.gateway.revert import (
    NotRevertible,
    RevertPlan,
    plan_revert,
    prompt_reverts_available,
    revert_change,
)
from app.ui.editors.columns import ColumnFitter
from app.ui.models.audit_model import (
    COL_ACTION,
    COL_CHANGES,
    COL_ID,
    COL_OBJECT,
    COL_WHEN,
    COL_WHO,
    COL_WHY,
    OBJECT_TYPES,
    SORT_ROLE,
    AuditFilter,
    AuditModel,
    AuditView,
    entry_changes,
    export_csv,
    export_json,
    fmt_local,
    fmt_utc,
    load_audit,
    object_label,
)
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import QtCore, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import current_colors
from storage.queries.control import CONTROL_KINDS, AuditEntry, ConflictError, NotFound

#: How often the page reads the log again while it is shown (others change things too).
REFRESH_MS = 10_000
#: Time range presets: label and seconds back from now (None: all time; "custom": the two date fields).
RANGES: tuple[tuple[str, float | str | None], ...] = (
    ("Last hour", 3600.0),
    ("Last 24 hours", 86400.0),
    ("Last 7 days", 7 * 86400.0),
    ("Last 30 days", 30 * 86400.0),
    ("All time", None),
    ("Custom range…", "custom"),
)
_REVERTIBLE_TYPES = (*CONTROL_KINDS, "breaker", "breaker_defaults", "source")


def why_not_revertible(entry: AuditEntry, view: AuditView) -> str | None:
    """Why the selected change cannot be reverted (for the button's tooltip); ``None`` when it can."""
    if not view.is_latest(entry):
        newest = view.latest.get((entry.object_type, entry.object_name))
        return f"Only the newest change to {object_label(entry)} can be reverted (#{newest})."
    if entry.object_type == "prompt":
        if entry.action not in ("promote", "rollback"):
            return "Prompt versions are kept for good; promote the version you want instead."
        if not prompt_reverts_available():
            return "Reverting prompt promotions needs the prompt registry, which is not installed yet."
        return None
    if entry.object_type not in _REVERTIBLE_TYPES:
        return f"Changes to {entry.object_type} cannot be reverted from here."
    return None


def changes_html(before: Any, after: Any, *, before_label: str = "Before", after_label: str = "After") -> str:
    """A field-by-field table: removed values in red, added in green (the theme's colours)."""
    colors = current_colors()
    from app.gateway.revert import field_changes

    changes = field_changes(before, after)
    if not changes:
        return f"<p style='color:{colors.muted}'>No field changed.</p>"
    rows = []
    for c in changes:
        old = (
            f"<span style='color:{colors.bad}'>{html.escape(c.before)}</span>"
            if c.before is not None
            else f"<span style='color:{colors.muted}'>—</span>"
        )
        new = (
            f"<span style='color:{colors.ok}'>{html.escape(c.after)}</span>"
            if c.after is not None
            else f"<span style='color:{colors.muted}'>—</span>"
        )
        rows.append(
            f"<tr><td style='padding:2px 10px 2px 0'><b>{html.escape(c.path)}</b></td>"
            f"<td style='padding:2px 10px 2px 0'>{old}</td><td style='padding:2px 0'>{new}</td></tr>"
        )
    head = (
        f"<tr><th align='left' style='color:{colors.muted};padding-right:10px'>Field</th>"
        f"<th align='left' style='color:{colors.muted};padding-right:10px'>{before_label}</th>"
        f"<th align='left' style='color:{colors.muted}'>{after_label}</th></tr>"
    )
    return f"<table cellspacing='0'>{head}{''.join(rows)}</table>"


def json_diff(before: Any, after: Any) -> str:
    """A unified diff of the two states as indented JSON (what a reviewer reads in git)."""

    def lines(value: Any) -> list[str]:
        if value is None:
            return []
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    diff = difflib.unified_diff(lines(before), lines(after), "before", "after", lineterm="", n=3)
    return "\n".join(diff) or "(identical)"


class RevertDialog(QtWidgets.QDialog):
    """Says what the revert will change, asks why; Enter reverts once a reason is given, Esc cancels."""

    def __init__(self, plan: RevertPlan, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.plan = plan
        entry = plan.entry
        self.setWindowTitle(f"Revert #{entry.id} — {object_label(entry)}")
        self.setMinimumWidth(520)
        layout = QtWidgets.QVBoxLayout(self)
        what = QtWidgets.QLabel(plan.summary)
        what.setWordWrap(True)
        layout.addWidget(what)
        made = QtWidgets.QLabel(
            f"#{entry.id} ({entry.action}) was made by {entry.actor} at {fmt_local(entry.ts)}"
            + (f": “{entry.reason}”" if entry.reason else "."),
            objectName="muted",
        )
        made.setWordWrap(True)
        layout.addWidget(made)
        self.changes = QtWidgets.QTextBrowser()
        self.changes.setHtml(
            changes_html(plan.current, plan.result, before_label="Now", after_label="After revert")
        )
        self.changes.setMinimumHeight(120)
        layout.addWidget(self.changes, 1)
        form = QtWidgets.QFormLayout()
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("why (written to the audit log as “revert of #ID: …”)")
        form.addRow("Reason", self.reason)
        self.reason_error = QtWidgets.QLabel("Required: the next operator must know why.", objectName="muted")
        form.addRow("", self.reason_error)
        layout.addLayout(form)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("Revert")
        self.ok.setEnabled(False)
        self.ok.setDefault(True)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.reason.textChanged.connect(self._check)
        self.reason.returnPressed.connect(self._missing_reason)
        self.reason.setFocus()

    def _missing_reason(self) -> None:
        if not self.reason.text().strip():  # Enter with no reason: say why at the field
            self.reason_error.setStyleSheet(f"color: {current_colors().bad};")

    def _check(self, text: str) -> None:
        ok = bool(text.strip())
        self.ok.setEnabled(ok)
        self.reason_error.setVisible(not ok)

    def accept(self) -> None:
        if not self.reason.text().strip():
            # Enter with no reason: stay, and say why at the field.
            self.reason_error.setStyleSheet(f"color: {current_colors().bad};")
            return
        super().accept()


class AuditPage(QtWidgets.QWidget):
    """Filters above; the log on the left, the selected change on the right; revert and export."""

    status_message = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._busy = False
        self._pending = False
        self._select_after_load: int | None = None
        self._first_view = True
        self.revert_dialog: RevertDialog | None = None
        self.error = ""

        spec = page_spec("audit")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(
                spec.title,
                "Every control change: who made it, when, what changed and why. The newest change to an "
                "object (in bold) can be reverted; a revert is itself a new, audited change.",
            )
        )

        # The log with its filters and detail; or, before anything was ever changed, one message.
        self.body = QtWidgets.QWidget()
        body_layout = QtWidgets.QVBoxLayout(self.body)
        body_layout.setContentsMargins(0, 0, 0, 0)
        self.blank = QtWidgets.QWidget()
        blank_layout = QtWidgets.QVBoxLayout(self.blank)
        blank_layout.setContentsMargins(0, 8, 0, 0)
        self.blank_state = EmptyState("Opening the store…")
        blank_layout.addWidget(self.blank_state)
        blank_layout.addStretch(1)
        self.pages = QtWidgets.QStackedWidget()
        self.pages.addWidget(self.body)
        self.pages.addWidget(self.blank)
        self.pages.setCurrentWidget(self.blank)

        # -- filters ---------------------------------------------------------------------------
        filters = QtWidgets.QHBoxLayout()
        self.type_filter = QtWidgets.QComboBox()
        self.type_filter.addItem("All objects", None)
        for kind in OBJECT_TYPES:
            self.type_filter.addItem("breaker defaults" if kind == "breaker_defaults" else kind, kind)
        self.type_filter.setAccessibleName("Object type")
        self.name_filter = QtWidgets.QLineEdit()
        self.name_filter.setPlaceholderText("object name contains…")
        self.name_filter.setClearButtonEnabled(True)
        self.name_filter.setAccessibleName("Object name")
        self.actor_filter = QtWidgets.QComboBox()
        self.actor_filter.addItem("Anyone", None)
        self.actor_filter.setAccessibleName("Actor")
        self.range_filter = QtWidgets.QComboBox()
        for label, value in RANGES:
            self.range_filter.addItem(label, value)
        self.range_filter.setCurrentIndex(4)  # all time: an audit log is read whole by default
        self.range_filter.setAccessibleName("Time range")
        now = QtCore.QDateTime.currentDateTime()
        self.since_edit = QtWidgets.QDateTimeEdit(now.addDays(-7))
        self.until_edit = QtWidgets.QDateTimeEdit(now.addSecs(3600))
        for edit, name in ((self.since_edit, "From"), (self.until_edit, "To")):
            edit.setCalendarPopup(True)
            edit.setDisplayFormat("yyyy-MM-dd HH:mm")
            edit.setAccessibleName(name)
            edit.setVisible(False)
        for label, widget in (
            ("Type", self.type_filter),
            ("Name", self.name_filter),
            ("Who", self.actor_filter),
            ("When", self.range_filter),
        ):
            caption = QtWidgets.QLabel(label, objectName="muted")
            caption.setBuddy(widget)
            filters.addWidget(caption)
            filters.addWidget(widget, 2 if widget is self.name_filter else 0)
        filters.addWidget(self.since_edit)
        filters.addWidget(self.until_edit)
        body_layout.addLayout(filters)
        self.filter_error = QtWidgets.QLabel("")
        self.filter_error.setStyleSheet(f"color: {current_colors().bad};")
        self.filter_error.setVisible(False)
        body_layout.addWidget(self.filter_error)

        # -- actions ---------------------------------------------------------------------------
        actions = QtWidgets.QHBoxLayout()
        self.count_label = QtWidgets.QLabel("", objectName="muted")
        actions.addWidget(self.count_label, 1)
        self.revert_button = QtWidgets.QPushButton("Revert…")
        self.revert_button.setEnabled(False)
        self.revert_button.setToolTip("Select a change to revert")
        self.revert_button.clicked.connect(self.ask_revert)
        self.export_csv_button = QtWidgets.QPushButton("Export CSV…")
        self.export_json_button = QtWidgets.QPushButton("Export JSON…")
        self.export_csv_button.setToolTip("The rows shown (the filters apply), times in UTC; never any key")
        self.export_json_button.setToolTip(self.export_csv_button.toolTip())
        self.export_csv_button.clicked.connect(lambda: self.export_visible("csv"))
        self.export_json_button.clicked.connect(lambda: self.export_visible("json"))
        for b in (self.revert_button, self.export_csv_button, self.export_json_button):
            actions.addWidget(b)
        body_layout.addLayout(actions)
        self.result_label = QtWidgets.QLabel("", objectName="muted")
        self.result_label.setWordWrap(True)
        self.result_label.setVisible(False)
        layout.addWidget(self.result_label)

        # -- the log and the detail --------------------------------------------------------------
        self.model = AuditModel(parent=self)
        self.proxy = QtCore.QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COL_ID, QtCore.Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setHighlightSections(False)
        self.table.setAccessibleName("Audit log")
        metrics = self.table.fontMetrics()
        for col, sample in (
            (COL_ID, "#00000"),
            (COL_WHEN, "2026-11-29 14:03  ·  59 min ago"),
            (COL_WHO, "operator"),
            (COL_ACTION, "force_closed"),
            (COL_OBJECT, "breaker defaults default"),
            (COL_CHANGES, "settings.deadline_s 20 → 12; +2 more"),
        ):
            self.table.setColumnWidth(col, metrics.horizontalAdvance(sample) + 24)
        # At 960 px the log fits without sideways scrolling: what changed, when and the object give way.
        self.fitter = ColumnFitter(
            self.table,
            [self.table.columnWidth(c) for c in range(COL_WHY)],
            [
                (COL_CHANGES, metrics.horizontalAdvance("version 2 added") + 12),
                (COL_WHEN, metrics.horizontalAdvance("14:03:12  ·  59 min ago") + 24),
                (COL_OBJECT, metrics.horizontalAdvance("route default") + 24),
                (COL_ID, metrics.horizontalAdvance("#9999") + 24),
            ],
        )
        self.table.selectionModel().selectionChanged.connect(self._on_selection)

        self.empty = EmptyState("Opening the store…")
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.table)
        self.stack.addWidget(self.empty)
        self.stack.setCurrentWidget(self.empty)

        detail = QtWidgets.QWidget()
        detail_layout = QtWidgets.QVBoxLayout(detail)
        detail_layout.setContentsMargins(0, 8, 0, 0)
        self.detail_title = QtWidgets.QLabel("Select a change to see before and after.", objectName="muted")
        self.detail_title.setWordWrap(True)
        self.detail_title.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        detail_layout.addWidget(self.detail_title)
        self.detail_tabs = QtWidgets.QTabWidget()
        self.detail_changes = QtWidgets.QTextBrowser()
        self.detail_changes.setAccessibleName("Fields that changed")
        self.detail_diff = QtWidgets.QPlainTextEdit()
        self.detail_diff.setReadOnly(True)
        self.detail_diff.setAccessibleName("Before and after as a JSON diff")
        mono = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
        self.detail_diff.setFont(mono)
        self.detail_tabs.addTab(self.detail_changes, "Changed fields")
        self.detail_tabs.addTab(self.detail_diff, "Before → after (JSON)")
        detail_layout.addWidget(self.detail_tabs, 1)

        # The log on top at full width (its columns need it), the selected change below.
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        split.addWidget(self.stack)
        split.addWidget(detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setChildrenCollapsible(False)
        body_layout.addWidget(split, 1)
        layout.addWidget(self.pages, 1)

        # -- behaviour -----------------------------------------------------------------------------
        self._debounce = QTimer(self, singleShot=True, interval=300)
        self._debounce.timeout.connect(self.reload)
        self.type_filter.currentIndexChanged.connect(self.reload)
        self.actor_filter.currentIndexChanged.connect(self.reload)
        self.range_filter.currentIndexChanged.connect(self._on_range)
        self.name_filter.textChanged.connect(lambda _t: self._debounce.start())
        self.name_filter.returnPressed.connect(self.reload)
        self.since_edit.dateTimeChanged.connect(lambda _d: self._debounce.start())
        self.until_edit.dateTimeChanged.connect(lambda _d: self._debounce.start())
        self._retry = QTimer(self, singleShot=True, interval=500)
        self._retry.timeout.connect(self._tick)
        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self._tick)
        self.table.installEventFilter(self)
        self.setTabOrder(self.type_filter, self.name_filter)
        self.setTabOrder(self.name_filter, self.actor_filter)
        self.setTabOrder(self.actor_filter, self.range_filter)
        self.setTabOrder(self.range_filter, self.since_edit)
        self.setTabOrder(self.since_edit, self.until_edit)
        self.setTabOrder(self.until_edit, self.revert_button)
        self.setTabOrder(self.revert_button, self.export_csv_button)
        self.setTabOrder(self.export_csv_button, self.export_json_button)
        self.setTabOrder(self.export_json_button, self.table)
        self.setTabOrder(self.table, self.detail_tabs)

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        # Esc in the log closes the detail (ui.md keys); Enter on a revertible row asks to revert.
        if watched is self.table and event.type() == QtCore.QEvent.Type.KeyPress:
            key = event.key()  # type: ignore[attr-defined]
            if key == QtCore.Qt.Key.Key_Escape and self.selected_entry() is not None:
                self.table.clearSelection()
                return True
            if key in (QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Enter) and self.revert_button.isEnabled():
                self.ask_revert()
                return True
        return super().eventFilter(watched, event)

    # -- data --------------------------------------------------------------------------------------
    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        self._runner = runner
        self._store_getter = store if callable(store) else (lambda: store)
        self.reload()
        self.timer.start()

    def _tick(self) -> None:
        if self.isVisible() or self.model.view.fetched_at == 0.0:
            self.reload()

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        self.reload()

    def current_filter(self) -> AuditFilter:
        value = self.range_filter.currentData()
        since = until = None
        if value == "custom":
            since = float(self.since_edit.dateTime().toSecsSinceEpoch())
            until = float(self.until_edit.dateTime().toSecsSinceEpoch())
        elif isinstance(value, float):
            since = time.time() - value
        return AuditFilter(
            object_type=self.type_filter.currentData(),
            name_contains=self.name_filter.text(),
            actor=self.actor_filter.currentData(),
            since=since,
            until=until,
        )

    def _on_range(self) -> None:
        custom = self.range_filter.currentData() == "custom"
        self.since_edit.setVisible(custom)
        self.until_edit.setVisible(custom)
        self.reload()

    def refresh(self) -> None:
        """Ctrl+R: read the log again."""
        self.reload()

    def reload(self) -> None:
        """Read the log again with the current filters (off the GUI thread)."""
        store = self._store_getter()
        if self._runner is None:
            return
        if store is None:  # the store is still opening: look again soon
            self._retry.start()
            return
        flt = self.current_filter()
        problem = flt.problem()
        self.filter_error.setText(f"Time range: {problem}." if problem else "")
        self.filter_error.setVisible(bool(problem))
        for edit in (self.since_edit, self.until_edit):
            edit.setStyleSheet(f"border: 1px solid {current_colors().bad};" if problem else "")
        if problem:
            return
        if self._busy:
            self._pending = True  # read again when the current read answers
            return
        self._busy = True
        engine = store.engine
        self._runner(lambda: load_audit(engine, flt), self._on_view, self._on_error)

    def _on_view(self, view: AuditView) -> None:
        self._busy = False
        selected = self._select_after_load or self.selected_id()
        self._select_after_load = None
        self.error = ""
        self.model.set_view(view)
        self._sync_actors(view.actors)
        has_rows = bool(view.entries)
        self.stack.setCurrentWidget(self.table if has_rows else self.empty)
        never = not view.latest  # not one change in the whole log, whatever the filters
        self.pages.setCurrentWidget(self.blank if never else self.body)
        if never:
            self.blank_state.setText(
                "No control change has been made yet.\n\nEvery change will be listed here — who made it, "
                "when, what changed and why — as soon as something is configured: a provider added on the "
                "Providers page, a breaker switched on the Breakers page, or a config file applied with "
                "controlroom config apply FILE.yaml (the demo applies its own, audited as demo)."
            )
        elif not has_rows:
            self.empty.setText(
                "No change matches these filters. Widen the time range, or clear the name or actor filter."
            )
        for button in (self.export_csv_button, self.export_json_button):
            button.setEnabled(has_rows)
        shown = f"{len(view.entries)} change{'s' if len(view.entries) != 1 else ''}"
        if view.truncated:
            shown = f"the newest {len(view.entries)} changes (narrow the filters to see older ones)"
        self.count_label.setText(f"{shown} · read {fmt_local(view.fetched_at)}")
        if selected is None and self._first_view and view.entries:
            selected = view.entries[0].id  # open on the newest change, so the detail is never blank
        self._first_view = False
        if selected is not None:
            self.select_id(selected)
        self._on_selection()
        if self._pending:
            self._pending = False
            self.reload()

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self._pending = False
        self.error = str(exc) or type(exc).__name__
        self.count_label.setText(f"The store could not answer: {self.error}")

    def _sync_actors(self, actors: list[str]) -> None:
        current = self.actor_filter.currentData()
        known = [self.actor_filter.itemData(i) for i in range(1, self.actor_filter.count())]
        if known == actors:
            return
        self.actor_filter.blockSignals(True)
        self.actor_filter.clear()
        self.actor_filter.addItem("Anyone", None)
        for actor in actors:
            self.actor_filter.addItem(actor, actor)
        index = self.actor_filter.findData(current) if current is not None else 0
        self.actor_filter.setCurrentIndex(max(0, index))
        self.actor_filter.blockSignals(False)

    # -- selection and detail ------------------------------------------------------------------------
    def selected_entry(self) -> AuditEntry | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.model.entry_at(self.proxy.mapToSource(rows[0]).row())

    def selected_id(self) -> int | None:
        entry = self.selected_entry()
        return entry.id if entry is not None else None

    def select_id(self, audit_id: int) -> bool:
        row = self.model.row_of(audit_id)
        if row is None:
            return False
        index = self.proxy.mapFromSource(self.model.index(row, 0))
        self.table.selectRow(index.row())
        self.table.scrollTo(index)
        return True

    def _on_selection(self, *_args: object) -> None:
        entry = self.selected_entry()
        if entry is None:
            self.detail_title.setText("Select a change to see before and after.")
            self.detail_changes.setHtml("")
            self.detail_diff.setPlainText("")
            self.revert_button.setEnabled(False)
            self.revert_button.setToolTip("Select a change to revert")
            return
        why = f" — “{html.escape(entry.reason)}”" if entry.reason else ""
        self.detail_title.setText(
            f"<b>#{entry.id} · {html.escape(entry.action)} {html.escape(object_label(entry))}</b><br>"
            f"by {html.escape(entry.actor)} at {fmt_local(entry.ts)} local ({fmt_utc(entry.ts)}){why}"
        )
        if entry.before is None and entry.after is not None:
            lead = "<p>Created with:</p>"
        elif entry.after is None and entry.before is not None:
            lead = "<p>Deleted; it was:</p>"
        else:
            lead = ""
        n = len(entry_changes(entry))
        self.detail_tabs.setTabText(0, f"Changed fields ({n})")
        self.detail_changes.setHtml(lead + changes_html(entry.before, entry.after))
        self.detail_diff.setPlainText(json_diff(entry.before, entry.after))
        reason = why_not_revertible(entry, self.model.view)
        self.revert_button.setEnabled(reason is None)
        self.revert_button.setToolTip(reason or f"Undo #{entry.id} with a new, audited change")

    # -- revert --------------------------------------------------------------------------------------
    def _say(self, text: str, *, bad: bool = False) -> None:
        colors = current_colors()
        self.result_label.setStyleSheet(f"color: {colors.bad};" if bad else "")
        self.result_label.setText(text)
        self.result_label.setVisible(bool(text))
        if text:
            self.status_message.emit(text)

    def ask_revert(self) -> None:
        """Plan the revert off the GUI thread, then show what it will do and ask why."""
        entry = self.selected_entry()
        store = self._store_getter()
        if entry is None or store is None or self._runner is None:
            return
        engine = store.engine
        self._runner(lambda: plan_revert(engine, entry.id), self._show_revert_dialog, self._revert_failed)

    def _show_revert_dialog(self, plan: RevertPlan) -> None:
        dialog = RevertDialog(plan, self)
        dialog.accepted.connect(lambda: self.revert(plan.entry.id, dialog.reason.text()))
        dialog.finished.connect(lambda _r: setattr(self, "revert_dialog", None))
        self.revert_dialog = dialog
        dialog.open()

    def revert(self, audit_id: int, reason: str) -> None:
        """Write the revert (a new audited change) off the GUI thread, then read the log again."""
        store = self._store_getter()
        if store is None or self._runner is None:
            return
        engine = store.engine
        actor = getpass.getuser()

        def done(entry: AuditEntry) -> None:
            self._say(f"Reverted #{audit_id}: {entry.action} {object_label(entry)} written as #{entry.id}.")
            self._select_after_load = entry.id
            self.reload()

        self._runner(
            lambda: revert_change(engine, audit_id, actor=actor, reason=reason), done, self._revert_failed
        )

    def _revert_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ConflictError | NotFound):
            self._say(f"Not reverted: {exc}. The log has been read again.", bad=True)
            self.reload()
        elif isinstance(exc, NotRevertible | ValueError):
            self._say(f"Not reverted: {exc}.", bad=True)
        else:
            self._say(f"Not reverted: {type(exc).__name__}: {exc}", bad=True)

    # -- export --------------------------------------------------------------------------------------
    def export_visible(self, fmt: str = "csv") -> None:
        """Ask where, then write the rows shown (Ctrl+E from the window lands here)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        filters = "CSV (*.csv)" if fmt == "csv" else "JSON (*.json)"
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self,
            "Export the audit rows shown",
            str(Path.home() / f"controlroom-audit-{stamp}.{fmt}"),
            filters,
        )
        if path:
            self.export_to(Path(path))

    def export_to(self, path: Path) -> None:
        """Write the rows shown to ``path`` (CSV, or JSON when it ends in .json), off the GUI thread."""
        if self._runner is None:
            return
        entries = list(self.model.view.entries)
        flt = self.model.view.filter
        as_json = path.suffix.lower() == ".json"

        def work() -> int:
            return export_json(entries, path, flt) if as_json else export_csv(entries, path)

        self._runner(
            work,
            lambda n: self._say(f"Exported {n} audit row{'s' if n != 1 else ''} to {path}."),
            lambda exc: self._say(f"Export failed: {exc}", bad=True),
        )


__all__ = ["AuditPage", "RevertDialog", "changes_html", "json_diff", "why_not_revertible"]

PAGE_CLASS = AuditPage
