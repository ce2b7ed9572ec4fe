"""The Events page: every request as a row, searchable and sortable, outlier presets, and a detail panel."""

from __future__ import annotations

import html
from collections.abc import Callable
from functools import partial
from typing import Any

from app.core import format as fmt
from app.core.event import FAILURE_TYPES, Event, Failure
from app.sources.live import split_prompt
from app.ui.models.event_query import PRESETS, EventQuery, count_rows, fetch_rows, preset
from app.ui.models.events_model import (
    COL_COST,
    COL_FAILURE,
    COL_FEATURE,
    COL_MODEL,
    COL_PROVIDER,
    COL_ROUTE,
    COL_STATUS,
    COL_TIME,
    COL_TOKENS,
    COL_USER,
    HEADERS,
    ROW_ROLE,
    SORT_COLUMN,
    EventsModel,
    full_time,
)
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtCore, QtGui, QTimer, QtWidgets
from app.ui.theme import FAILURE_COLORS, current_colors
from storage.queries.events import EventFilter, get_event

#: How often "4 min ago" is brought up to date.
RELATIVE_TIME_REFRESH_MS = 30_000
#: How often a live range (or an empty table) reads the newest events again.
FOLLOW_MS = 3000
#: Rows a page reads at a time.
PAGE_ROWS = 500
#: Text columns (names) may shrink to this many average characters, elided, before columns hide.
_SHRUNK_CHARS = 7
#: Columns that may shrink (their text elides); the others keep the width their values need.
_SHRINKABLE = (COL_PROVIDER, COL_MODEL, COL_ROUTE, COL_FEATURE, COL_USER)
#: The columns an operator scans first (display order up to Cost): names shrink to keep them.
_LAST_CORE = COL_COST

SEARCH_HELP = (
    "Words match the id, provider, model, route, feature, user and error message. "
    "Fields match exactly: provider:openai model:gpt-4o route:search feature:chat user:ana "
    "source:gateway failure:timeout status:429 target:fast prompt:ticket-summary@2 id:… — "
    'quote a phrase: "rate limit".'
)


def chip_text_color(background: str) -> QtGui.QColor:
    """Dark text on light chips, white on dark ones (WCAG relative luminance)."""
    c = QtGui.QColor(background)
    lum = 0.2126 * c.redF() ** 2.2 + 0.7152 * c.greenF() ** 2.2 + 0.0722 * c.blueF() ** 2.2
    return QtGui.QColor("#111111" if lum > 0.22 else "#ffffff")


class FailureChipDelegate(QtWidgets.QStyledItemDelegate):
    """The failure cell as a chip in the failure palette (ui.md: same colours in every table)."""

    def paint(self, painter: QtGui.QPainter, option: QtWidgets.QStyleOptionViewItem, index: Any) -> None:
        text = index.data()
        if not text:
            super().paint(painter, option, index)
            return
        self.initStyleOption(option, index)
        style = option.widget.style() if option.widget is not None else QtWidgets.QApplication.style()
        option.text = ""
        style.drawControl(QtWidgets.QStyle.ControlElement.CE_ItemViewItem, option, painter, option.widget)
        colour = FAILURE_COLORS.get(Failure(text), "#888888")
        metrics = option.fontMetrics
        width = min(metrics.horizontalAdvance(text) + 14, option.rect.width() - 6)
        height = metrics.height() + 4
        rect = QtCore.QRect(option.rect.x() + 4, option.rect.center().y() - height // 2 + 1, width, height)
        painter.save()
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QtGui.QColor(colour))
        painter.drawRoundedRect(rect, height / 2, height / 2)
        painter.setPen(chip_text_color(colour))
        elided = metrics.elidedText(text, Qt.TextElideMode.ElideRight, rect.width() - 10)
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignCenter), elided)
        painter.restore()

    def sizeHint(self, option: QtWidgets.QStyleOptionViewItem, index: Any) -> QtCore.QSize:
        size = super().sizeHint(option, index)
        return QtCore.QSize(size.width() + 16, size.height())


def _row(label: str, value: str) -> str:
    return f"<tr><td class='k'>{html.escape(label)}</td><td>{value}</td></tr>"


def _text(value: object) -> str:
    return "—" if value is None or value == "" else html.escape(str(value))


def event_html(event: Event, now: float) -> str:
    """Every field of one event, grouped the way an operator reads it."""
    colors = current_colors()
    failure = event.failure
    if failure is Failure.NONE:
        outcome = f"<span style='color:{colors.ok}'>succeeded</span>"
    else:
        bg = FAILURE_COLORS[failure]
        fg = chip_text_color(bg).name()
        outcome = f"<span style='background:{bg}; color:{fg}'>&nbsp;{failure.value}&nbsp;</span>"
    tried = event.targets_tried
    chain = " → ".join(html.escape(t) for t in tried) if tried else "—"
    tags = ", ".join(f"{html.escape(k)}={html.escape(v)}" for k, v in sorted(event.tags.items())) or "—"
    prompt = (
        f"{html.escape(event.prompt_name)} v{event.prompt_version}"
        if event.prompt_name and event.prompt_version is not None
        else _text(event.prompt_name)
    )
    sections = [
        (
            "Request",
            [
                (
                    "Started",
                    f"{html.escape(full_time(event.ts_start))} · {fmt.fmt_relative_time(now - event.ts_start)}",
                ),
                ("Ended", html.escape(full_time(event.ts_end))),
                ("Event id", f"<code>{html.escape(event.event_id)}</code>"),
                ("Source", _text(event.source)),
                ("Provider", _text(event.provider)),
                ("Model asked", _text(event.model)),
                ("Model answered", _text(event.response_model)),
                ("Route", _text(event.route)),
                ("Feature", _text(event.feature)),
                ("User", _text(event.user)),
                ("Prompt", prompt),
                ("Tags", tags),
                ("Streamed", "yes" if event.stream else "no"),
            ],
        ),
        (
            "Outcome",
            [
                ("Result", outcome),
                ("HTTP status", _text(event.status_code)),
                ("Error", _text(event.error_message)),
                ("Attempts", str(event.attempts)),
                ("Targets tried", chain),
                ("Breaker", _text(event.breaker_state)),
                ("Cache", _text(event.cache_hit.value)),
            ],
        ),
        (
            "Time",
            [
                ("Latency", fmt.fmt_latency_ms(event.latency_ms)),
                ("Time to first token", fmt.fmt_latency_ms(event.ttft_ms)),
            ],
        ),
        (
            "Tokens and cost",
            [
                ("Input", f"{event.input_tokens:,}"),
                ("Output", f"{event.output_tokens:,}"),
                ("Cache read", f"{event.cache_read_tokens:,}"),
                ("Cache write", f"{event.cache_write_tokens:,}"),
                ("Reasoning", f"{event.reasoning_tokens:,}"),
                (
                    "Cost",
                    "unknown (no price for this model)"
                    if event.cost_usd is None
                    else f"{fmt.fmt_usd(event.cost_usd)} ({event.cost_source.value})",
                ),
            ],
        ),
    ]
    parts = [
        f"<style>td {{ padding: 1px 8px 1px 0; vertical-align: top; }} td.k {{ color: {colors.muted}; }}"
        f" h4 {{ margin: 10px 0 2px 0; }}</style>"
    ]
    for title, rows in sections:
        parts.append(f"<h4>{html.escape(title)}</h4><table>")
        parts.extend(_row(k, v) for k, v in rows)
        parts.append("</table>")
    return "".join(parts)


class EventDetail(QtWidgets.QFrame):
    """The side panel: every field of one event, and its text when the route stored it.  Esc closes."""

    closed = QtCore.Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="detailPanel")
        self.setMinimumWidth(340)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        top = QtWidgets.QHBoxLayout()
        self.title = QtWidgets.QLabel("Event", objectName="detailTitle")
        close = QtWidgets.QToolButton(text="✕")
        close.setToolTip("Close (Esc)")
        close.setAutoRaise(True)
        close.clicked.connect(self.close_panel)
        top.addWidget(self.title, 1)
        top.addWidget(close)
        layout.addLayout(top)
        self.fields = QtWidgets.QTextBrowser()
        self.fields.setOpenLinks(False)
        self.fields.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        layout.addWidget(self.fields, 3)
        self.input_label = QtWidgets.QLabel("Input (sanitized)", objectName="muted")
        self.input_text = QtWidgets.QPlainTextEdit(readOnly=True)
        self.output_label = QtWidgets.QLabel("Output (sanitized)", objectName="muted")
        self.output_text = QtWidgets.QPlainTextEdit(readOnly=True)
        self.no_text = QtWidgets.QLabel(
            "No text stored: this route does not keep request and response text.", objectName="muted"
        )
        self.no_text.setWordWrap(True)
        for w in (self.input_label, self.input_text, self.output_label, self.output_text, self.no_text):
            layout.addWidget(w, 1 if isinstance(w, QtWidgets.QPlainTextEdit) else 0)
        self.shown_event: Event | None = None

    def show_loading(self, event_id: str) -> None:
        self.title.setText("Event")
        self.fields.setPlainText(f"Reading event {event_id}…")

    def show_error(self, message: str) -> None:
        self.fields.setPlainText(f"Could not read the event: {message}")

    def show_event(self, event: Event | None, now: float) -> None:
        self.shown_event = event
        if event is None:
            self.fields.setPlainText("This event is no longer in the store (retention removed it).")
            for w in (self.input_label, self.input_text, self.output_label, self.output_text):
                w.setVisible(False)
            return
        summary = f"{event.provider} · {event.model}"
        self.title.setText(summary if event.failure is Failure.NONE else f"{summary} · {event.failure.value}")
        self.fields.setHtml(event_html(event, now))
        has_in = event.input_text is not None
        has_out = event.output_text is not None
        self.input_label.setVisible(has_in)
        self.input_text.setVisible(has_in)
        self.output_label.setVisible(has_out)
        self.output_text.setVisible(has_out)
        self.no_text.setVisible(not has_in and not has_out)
        self.input_text.setPlainText(event.input_text or "")
        self.output_text.setPlainText(event.output_text or "")

    def close_panel(self) -> None:
        self.setVisible(False)
        self.closed.emit()


class EventsPage(QtWidgets.QWidget):
    """Search box and presets above a lazy table; the detail panel opens beside it."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._engine: Any = None
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._range_label = ""
        self._live_range = False
        self._fitted = False
        self._filters = EventFilter()
        self._state: Any = None
        self._preset = preset("newest")
        self._failure: Failure | None = None
        self.model: EventsModel | None = None
        self._clock: Callable[[], float] = QtCore.QDateTime.currentSecsSinceEpoch

        spec = page_spec("events")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(spec.title, "Every request as one row. Click a row for all of its fields.")
        )

        bar = QtWidgets.QHBoxLayout()
        self.search = QtWidgets.QLineEdit()
        self.search.setPlaceholderText("Search: words, or field:value (hover for help)")
        self.search.setClearButtonEnabled(True)
        self.search.setToolTip(SEARCH_HELP)
        self.search.returnPressed.connect(self._run_query)
        self._search_timer = QTimer(self, singleShot=True, interval=400)
        self._search_timer.timeout.connect(self._run_query)
        self.search.textEdited.connect(lambda _t: self._search_timer.start())
        bar.addWidget(self.search, 1)

        self.preset_buttons: dict[str, QtWidgets.QToolButton] = {}
        group = QtWidgets.QButtonGroup(self)
        group.setExclusive(True)
        for p in PRESETS:
            button = QtWidgets.QToolButton(text=p.title, checkable=True)
            button.setToolTip(p.tooltip)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            group.addButton(button)
            self.preset_buttons[p.key] = button
            button.clicked.connect(lambda _c=False, key=p.key: self.apply_preset(key))
            bar.addWidget(button)
        self.preset_buttons["newest"].setChecked(True)
        self.failure_box = QtWidgets.QComboBox()
        self.failure_box.setToolTip("Which failure type the Failed preset shows")
        self.failure_box.addItem("any failure type", None)
        for f in FAILURE_TYPES:
            pix = QtGui.QPixmap(10, 10)
            pix.fill(QtGui.QColor(FAILURE_COLORS[f]))
            self.failure_box.addItem(QtGui.QIcon(pix), f.value, f.value)
        self.failure_box.currentIndexChanged.connect(self._on_failure_type)
        bar.addWidget(self.failure_box)
        layout.addLayout(bar)

        status = QtWidgets.QHBoxLayout()
        self.count_label = QtWidgets.QLabel("", objectName="muted")
        self.error_label = QtWidgets.QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {current_colors().bad};")
        self.error_label.setVisible(False)
        self.refresh_button = QtWidgets.QToolButton(text="⟳ Refresh")
        self.refresh_button.setToolTip("Read the newest events again (Ctrl+R)")
        self.refresh_button.setAutoRaise(True)
        self.refresh_button.clicked.connect(self.refresh)
        status.addWidget(self.count_label)
        status.addWidget(self.refresh_button)
        status.addWidget(self.error_label, 1)
        layout.addLayout(status)

        self.split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        self.table = QtWidgets.QTableView()
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(False)  # enabled once a model is set: sorting goes to the store
        self.table.setWordWrap(False)
        self.table.setShowGrid(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        # Widths are laid out to the viewport (see _layout_columns): no sideways scrolling.
        header.setStretchLastSection(False)
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(self._column_menu)
        header.setToolTip("Right-click to choose the columns shown")
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        #: Preferred width of every column (what its values need), and the operator's own choices.
        self._preferred: dict[int, int] = {}
        self._user_shown: set[int] = set()
        self._user_hidden: set[int] = set()
        self._laying_out = False
        self.table.viewport().installEventFilter(self)
        self.table.setItemDelegateForColumn(COL_FAILURE, FailureChipDelegate(self.table))
        self.table.activated.connect(self._open_index)
        self.table.clicked.connect(self._open_index)
        self.empty = EmptyState("Opening the store…")
        self.table_stack = QtWidgets.QStackedWidget()
        self.table_stack.addWidget(self.table)
        self.table_stack.addWidget(self.empty)
        self.table_stack.setCurrentWidget(self.empty)
        self.detail = EventDetail()
        self.detail.setVisible(False)
        self.detail.closed.connect(self.table.setFocus)
        self.split.addWidget(self.table_stack)
        self.split.addWidget(self.detail)
        self.split.setStretchFactor(0, 3)
        self.split.setStretchFactor(1, 2)
        layout.addWidget(self.split, 1)

        escape = QtGui.QShortcut(QtGui.QKeySequence(Qt.Key.Key_Escape), self)
        escape.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        escape.activated.connect(self.detail.close_panel)
        find = QtGui.QShortcut(QtGui.QKeySequence.StandardKey.Find, self)
        find.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        find.activated.connect(self.search.setFocus)

        self._times = QTimer(self, interval=RELATIVE_TIME_REFRESH_MS)
        self._times.timeout.connect(self._refresh_times)
        self._follow = QTimer(self, interval=FOLLOW_MS)
        self._follow.timeout.connect(self._follow_live)

    # -- data access ----------------------------------------------------------------
    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        """Read events from ``store`` through ``runner`` (the bridge in the app; synchronous in tests).

        ``store`` may be a getter that answers ``None`` until the store is open: the page waits for it.
        """
        del gateway  # events come from the store only
        self._runner = runner
        self._store_getter = store if callable(store) else (lambda: store)
        self._wait_for_store()

    def _wait_for_store(self) -> None:
        store = self._store_getter()
        if store is None:
            QTimer.singleShot(200, self._wait_for_store)
            return
        self._connect(store.engine)

    def _connect(self, engine: Any) -> None:
        assert self._runner is not None
        self._engine = engine
        model = EventsModel(
            partial(fetch_rows, engine), partial(count_rows, engine), self._runner, parent=self
        )
        model.total_changed.connect(self._update_count)
        model.rowsInserted.connect(self._update_count)
        model.rowsInserted.connect(self._fit_columns_once)
        model.modelReset.connect(self._fit_columns_once)
        model.modelReset.connect(self._update_count)
        model.loading_changed.connect(self._update_count)
        model.error_changed.connect(self._show_error)
        self.model = model
        self.table.setModel(model)
        self._size_columns()
        header = self.table.horizontalHeader()
        header.setSortIndicator(COL_TIME, Qt.SortOrder.DescendingOrder)
        self.table.setSortingEnabled(True)  # sorts at once: the query below replaces that read
        self.table.selectionModel().currentRowChanged.connect(self._on_current_changed)
        header.sortIndicatorChanged.connect(self._on_sort)
        self._fitted = False
        self._times.start()
        self._follow.start()
        self._run_query()

    def set_filter_state(self, state: Any) -> None:
        """Follow the shared filter bar (``app.ui.filters.FilterState``): dimensions and time range."""
        self._state = state
        since = float(self._clock()) - state.seconds if getattr(state, "seconds", 0) else None
        self._range_label = str(state.range.label).lower() if hasattr(state, "range") else ""
        self._live_range = bool(getattr(state, "live", False))
        prompt = getattr(state, "prompt", None)
        prompt_name, prompt_version = split_prompt(prompt) if prompt else (None, None)
        self.set_filters(
            EventFilter(
                since=since,
                provider=state.provider,
                model=state.model,
                route=state.route,
                feature=state.feature,
                user=state.user,
                prompt_name=prompt_name,
                prompt_version=prompt_version,
            )
        )

    def refresh(self) -> None:
        """Read again from the top (Ctrl+R): the filter bar's time range ends now."""
        if self._state is not None:
            self.set_filter_state(self._state)  # moves ``since`` to now minus the range
        else:
            self._run_query()

    def set_filters(self, filters: EventFilter) -> None:
        """The shared filter bar's choice (provider, model, route, feature, prompt, user, time range)."""
        self._filters = filters
        self._run_query()

    # -- queries --------------------------------------------------------------------
    def apply_preset(self, key: str, failure: Failure | None = None) -> None:
        self._preset = preset(key)
        if key == "failed" and failure is not None:
            self._failure = failure
            self.failure_box.blockSignals(True)
            self.failure_box.setCurrentIndex(self.failure_box.findData(failure.value))
            self.failure_box.blockSignals(False)
        self.preset_buttons[key].setChecked(True)
        self._run_query()

    def _on_failure_type(self, _index: int) -> None:
        value = self.failure_box.currentData()
        self._failure = Failure(value) if value else None
        if self._failure is not None and self._preset.key != "failed":
            self._preset = preset("failed")
            self.preset_buttons["failed"].setChecked(True)
        self._run_query()

    def current_query(self) -> EventQuery:
        failure = self._failure if self._preset.key == "failed" else None
        return self._preset.query(self._filters, failure, self.search.text().strip())

    def _run_query(self) -> None:
        self._search_timer.stop()
        if self.model is None:
            return
        query = self.current_query()
        header = self.table.horizontalHeader()
        header.blockSignals(True)
        header.setSortIndicator(SORT_COLUMN[query.sort], Qt.SortOrder.DescendingOrder)
        header.blockSignals(False)
        self.model.set_query(query)

    def _on_sort(self, column: int, order: Qt.SortOrder) -> None:
        # A header click after a preset: keep the preset's filter, change only the order.
        if self.model is not None and self._preset.key in ("tokens", "slowest"):
            self.preset_buttons["newest"].setChecked(True)
            self._preset = preset("newest")
        del column, order

    # -- view state -----------------------------------------------------------------
    def _update_count(self, *_args: object) -> None:
        model = self.model
        if model is None:
            return
        loaded = model.rowCount()
        total = model.total
        if total < 0:
            text = f"{loaded:,} loaded · counting…" if loaded else "reading…"
        elif total == 0:
            text = "no events match"
        else:
            noun = "event" if total == 1 else "events"
            text = f"{total:,} {noun}" + (f" · {loaded:,} loaded, scroll for more" if loaded < total else "")
        self.count_label.setText(text)
        empty = total == 0 and loaded == 0 and not model.loading and not model.error
        if empty:
            query = model.query
            nothing_at_all = query == EventQuery() and self._filters == EventFilter()
            self.empty.setText(
                page_spec("events").next_step + " Start the demo (controlroom ui --demo), or ingest a file "
                "(controlroom ingest PATH)."
                if nothing_at_all
                else "No events match this search and filter"
                + (f" ({self._range_label})" if self._range_label else "")
                + ". Clear the search box, pick another preset, or widen the time range."
            )
        self.table_stack.setCurrentWidget(self.empty if empty else self.table)

    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))
        if message and not message.startswith("search:"):
            self.error_label.setText(f"The store could not answer: {message}")

    def _size_columns(self) -> None:
        metrics = self.table.fontMetrics()
        widths = {
            COL_TIME: metrics.horizontalAdvance("14:03:12  ·  59 min ago") + 16,
            COL_STATUS: metrics.horizontalAdvance("Status") + 28,
            COL_TOKENS: metrics.horizontalAdvance("12.4k → 3.1k") + 24,
            COL_FAILURE: metrics.horizontalAdvance("connection_error") + 28,
            COL_COST: metrics.horizontalAdvance("$0.000042") + 24,
        }
        for column, title in enumerate(HEADERS):
            self._preferred[column] = widths.get(column, max(metrics.horizontalAdvance(title) + 28, 72))
        self._layout_columns()

    def _fit_columns_once(self, *_args: object) -> None:
        # Widen text columns to what the first rows hold; only ever widen, and stop after a full
        # page, so later pages and live refreshes never make columns jump about.
        model = self.model
        if self._fitted or model is None or model.rowCount() == 0:
            return
        self._fitted = model.rowCount() >= PAGE_ROWS // 4
        metrics = self.table.fontMetrics()
        cap = metrics.horizontalAdvance("M") * 16
        rows = range(min(model.rowCount(), 200))
        for column in (COL_PROVIDER, COL_MODEL, COL_ROUTE, COL_FEATURE, COL_USER, COL_COST, COL_TOKENS):
            texts = [HEADERS[column], *(str(model.index(r, column).data()) for r in rows)]
            width = max(metrics.horizontalAdvance(t) for t in texts) + 24
            self._preferred[column] = min(max(width, self._preferred.get(column, 0)), cap)
        self._layout_columns()

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if watched is self.table.viewport() and event.type() == QtCore.QEvent.Type.Resize:
            self._layout_columns()
        return super().eventFilter(watched, event)

    def _layout_columns(self) -> None:
        """Fit the columns to the table's width, so it never scrolls sideways.

        Columns keep the display order's priority (what an operator scans first comes first):
        names may shrink (their text elides; the whole value is in the tooltip and the detail
        panel) to keep the columns up to Cost; the columns after it come only when they fit as
        they are, and otherwise are hidden, last first.  Right-click the header to
        show or hide any column; a column the operator asked for is shown even if it must scroll.
        """
        if self._laying_out or not self._preferred:
            return
        self._laying_out = True
        try:
            available = self.table.viewport().width()
            chars = self.table.fontMetrics().averageCharWidth()
            smallest = {
                c: min(w, chars * _SHRUNK_CHARS + 20) if c in _SHRINKABLE else w
                for c, w in self._preferred.items()
            }
            shown: list[int] = []
            stopped = False
            for column in range(len(HEADERS)):
                if column in self._user_hidden:
                    continue
                with_it = [*shown, column]
                # The first columns (up to Cost) may squeeze names to fit; later ones come only
                # when there is room for them as they are.
                need = sum((smallest if column <= _LAST_CORE else self._preferred)[c] for c in with_it)
                stopped = stopped or need > available
                if not stopped or column in self._user_shown:
                    shown.append(column)
            widths = {c: smallest[c] for c in shown}
            spare = available - sum(widths.values())
            # Give the squeezed names their room back, each in proportion to what it lacks.
            lacking = {c: self._preferred[c] - widths[c] for c in shown if self._preferred[c] > widths[c]}
            total_lacking = sum(lacking.values())
            if spare > 0 and total_lacking:
                share = min(1.0, spare / total_lacking)
                for c, short in lacking.items():
                    widths[c] += int(short * share)
                spare = available - sum(widths.values())
            if shown and spare > 0:
                widths[shown[-1]] += spare
            header = self.table.horizontalHeader()
            for column in range(len(HEADERS)):
                hidden = column not in widths
                if header.isSectionHidden(column) != hidden:
                    self.table.setColumnHidden(column, hidden)
                if not hidden and self.table.columnWidth(column) != widths[column]:
                    self.table.setColumnWidth(column, widths[column])
        finally:
            self._laying_out = False

    def hidden_columns(self) -> list[str]:
        """Titles of the columns not shown now (narrow window, or the operator's choice)."""
        header = self.table.horizontalHeader()
        return [t for c, t in enumerate(HEADERS) if header.isSectionHidden(c)]

    def _column_menu(self, pos: QtCore.QPoint) -> None:
        menu = QtWidgets.QMenu(self)
        header = self.table.horizontalHeader()
        for column, title in enumerate(HEADERS):
            action = menu.addAction(title)
            action.setCheckable(True)
            action.setChecked(not header.isSectionHidden(column))
            action.toggled.connect(lambda on, c=column: self.set_column_shown(c, on))
        menu.addSeparator()
        menu.addAction("Fit to width", self.fit_columns_to_width)
        menu.popup(header.mapToGlobal(pos))

    def set_column_shown(self, column: int, shown: bool) -> None:
        """The operator's choice for one column (kept until "Fit to width")."""
        (self._user_shown if shown else self._user_hidden).add(column)
        (self._user_hidden if shown else self._user_shown).discard(column)
        self._layout_columns()

    def fit_columns_to_width(self) -> None:
        self._user_shown.clear()
        self._user_hidden.clear()
        self._layout_columns()

    def _follow_live(self) -> None:
        """Keep a live range (or an empty table) current, but never move rows under the operator.

        Only while the page is shown, at the top of the table, with nothing selected and no panel open.
        """
        model = self.model
        if model is None or not self.isVisible() or model.loading or model.error:
            return
        empty = model.rowCount() == 0
        idle = (
            self.table.verticalScrollBar().value() == 0
            and not self.table.selectionModel().hasSelection()
            and not self.detail.isVisible()
            and model.rowCount() <= PAGE_ROWS
        )
        if empty or (self._live_range and idle and model.query.sort == "time"):
            model.refresh()

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if self.model is not None and self.model.rowCount() == 0 and not self.model.loading:
            self._run_query()

    def _refresh_times(self) -> None:
        if self.model is not None and self.isVisible():
            self.model.refresh_times()

    # -- detail ---------------------------------------------------------------------
    def _on_current_changed(self, current: Any, _previous: Any) -> None:
        if self.detail.isVisible() and current.isValid():
            self._open_index(current)

    def _open_index(self, index: Any) -> None:
        if not index.isValid() or self._runner is None:
            return
        row = index.data(ROW_ROLE)
        self.open_event(row.event_id)

    def open_event(self, event_id: str) -> None:
        """Show one event in the detail panel (also for other pages: one click opens the request)."""
        if self._runner is None:
            return
        if not self.detail.isVisible():
            # The table keeps most of the width: the panel reads fine at a third.
            total = max(self.split.width(), 600)
            self.split.setSizes([total * 62 // 100, total * 38 // 100])
        self.detail.setVisible(True)
        self.detail.show_loading(event_id)
        engine = self._engine
        self._runner(
            lambda: get_event(engine, event_id),
            lambda event: self.detail.show_event(event, float(self._clock())),
            lambda exc: self.detail.show_error(str(exc)),
        )


__all__ = ["EventDetail", "EventsPage", "FailureChipDelegate", "event_html"]
