"""The main window: navigation rail, page stack, status bar (ui.md, "The window")."""

from __future__ import annotations

import importlib
import time

from app.core import paths
from app.core.format import fmt_rate
from app.ui.filters import FilterBar
from app.ui.livefeed import LiveFeed
from app.ui.models.runner import Runner, bridge_runner
from app.ui.pages import PAGES, page_spec
from app.ui.pages.overview import OverviewPage
from app.ui.pages.placeholder import PlaceholderPage
from app.ui.qt import QSettings, Qt, QtCore, QtGui, QtWidgets, Signal
from app.ui.theme import current_colors


def settings() -> QSettings:
    """Window state lives in an ini file in our config dir (never in the store: it is per desktop)."""
    return QSettings(str(paths.config_dir() / "ui.ini"), QSettings.Format.IniFormat)


class StatusBar(QtWidgets.QStatusBar):
    """store · runtime · keyring · DEMO — each a label another part of the app can update."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeGripEnabled(False)
        self.store = QtWidgets.QLabel("store: opening…")
        # A long store path gives way (its tooltip has it all) rather than push the badges off screen.
        self.store.setMinimumWidth(120)
        self.store.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.runtime = QtWidgets.QLabel("runtime: starting")
        self.keyring = QtWidgets.QLabel("keyring: checking")
        self.ingest = QtWidgets.QLabel("ingest: —")
        self.ingest.setToolTip("Events recorded per second, live")
        self.sources = QtWidgets.QLabel("sources: none")
        self.sources.setToolTip("No log sources are configured")
        self.gateway = QtWidgets.QLabel("gateway: none")
        self.gateway.setToolTip("No gateway runs in this app")
        self.demo = QtWidgets.QLabel("DEMO", objectName="badgeDemo")
        self.demo.setVisible(False)
        self.addWidget(self.store, 1)
        for widget in (self.ingest, self.sources, self.gateway, self.runtime, self.keyring, self.demo):
            self.addPermanentWidget(widget)

    def set_store(self, text: str, tooltip: str = "") -> None:
        self.store.setText(f"store: {text}")
        self.store.setToolTip(tooltip or text)

    def set_runtime(self, state: str) -> None:
        """Shown only when it is news: a running runtime is the normal case (its tooltip stays)."""
        self.runtime.setText(f"runtime: {state}")
        self.runtime.setToolTip(f"The background runtime thread is {state}")
        self.runtime.setVisible(state != "running")

    def set_keyring(self, text: str, ok: bool, tooltip: str) -> None:
        self.keyring.setText(f"keyring: {text}" if ok else f"keyring: {text} ⚠")
        self.keyring.setToolTip(tooltip)

    def set_ingest(self, events_per_s: float | None) -> None:
        """Live ingest rate (ui.md: ``/s`` for live); ``None`` when nothing is measured."""
        self.ingest.setText(
            f"ingest: {fmt_rate(events_per_s, 's')}" if events_per_s is not None else "ingest: —"
        )

    def set_sources(self, healthy: int, total: int, tooltip: str = "") -> None:
        """``sources 3/3 ok``, or ``sources 2/3 ok ⚠`` in the bad colour when one is failing."""
        if total == 0:
            self.sources.setText("sources: none")
            self.sources.setStyleSheet("")
        else:
            ok = healthy == total
            self.sources.setText(f"sources: {healthy}/{total} ok" + ("" if ok else " ⚠"))
            self.sources.setStyleSheet("" if ok else f"color: {current_colors().bad};")
        self.sources.setToolTip(
            tooltip or ("No log sources are configured" if total == 0 else self.sources.text())
        )

    def set_gateway(self, state: str | None, ok: bool = True, tooltip: str = "") -> None:
        """``gateway ●`` green when serving, red when in trouble; ``gateway: none`` when none runs here."""
        if state is None:
            self.gateway.setText("gateway: none")
            self.gateway.setStyleSheet("")
        else:
            colors = current_colors()
            dot = f"<span style='color:{colors.ok if ok else colors.bad}'>●</span>"
            self.gateway.setText(f"gateway {dot} {state}")
        self.gateway.setToolTip(tooltip or self.gateway.text())


class MainWindow(QtWidgets.QMainWindow):
    page_changed = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Control Room")
        self.setMinimumSize(960, 600)

        central = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)

        self.rail = QtWidgets.QListWidget(objectName="rail")
        self.rail.setFixedWidth(168)
        self.rail.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.rail.setAccessibleName("Pages")
        self.stack = QtWidgets.QStackedWidget()
        self.pages: dict[str, QtWidgets.QWidget] = {}
        # The shared filter bar and the feed every traffic page reads (ui.md "The window").
        self.filters = FilterBar()
        self.feed = LiveFeed(self)
        self.filters.changed.connect(self.feed.set_state)
        self.feed.dimensions_ready.connect(self.filters.set_dimension_values)
        for index, spec in enumerate(PAGES):
            item = QtWidgets.QListWidgetItem(spec.title)
            item.setData(Qt.ItemDataRole.UserRole, spec.key)
            if index < 9:
                item.setToolTip(f"{spec.title} (Ctrl+{index + 1})")
            self.rail.addItem(item)
            page = self._make_page(spec.key)
            page.setObjectName(f"page-{spec.key}")
            self.pages[spec.key] = page
            self.stack.addWidget(page)
        self.rail.currentRowChanged.connect(self._on_row_changed)
        layout.addWidget(self.rail)
        right = QtWidgets.QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.setSpacing(0)
        right.addWidget(self.filters)
        right.addWidget(self.stack, 1)
        layout.addLayout(right, 1)
        self.setCentralWidget(central)

        self.status = StatusBar(self)
        self.setStatusBar(self.status)
        # Ingest rate: events the live aggregator took in over the last few seconds.
        self._ingest_samples: list[tuple[float, int]] = []
        self._gateway: object = None
        self._ingest_timer = QtCore.QTimer(self, interval=1000)
        self._ingest_timer.timeout.connect(self._sample_ingest)
        self._ingest_timer.start()
        self._install_shortcuts()
        self.rail.setCurrentRow(0)

    def _make_page(self, key: str) -> QtWidgets.QWidget:
        if key == "overview":
            page = OverviewPage()
            page.tile_clicked.connect(self._open_tile_chart)
            self.feed.overview_ready.connect(page.apply_snapshot)
            return page
        if key == "traffic":
            from app.ui.pages.traffic import TrafficPage

            traffic = TrafficPage(self.feed)
            traffic.exported.connect(lambda message: self.statusBar().showMessage(message, 8000))
            return traffic
        if key == "breakers":
            from app.ui.pages.breakers import BreakersPage

            return BreakersPage()
        if key == "events":
            from app.ui.pages.events import EventsPage

            events = EventsPage()
            self.filters.changed.connect(events.set_filter_state)
            return events
        return self._plugged_page(key) or PlaceholderPage(page_spec(key))

    def _plugged_page(self, key: str) -> QtWidgets.QWidget | None:
        """A page that lives in ``app/ui/pages/<key>.py`` and names its widget class in ``PAGE_CLASS``.

        Its constructor takes no arguments; it reads the store once ``attach_store(store, runner,
        gateway)`` is called, like the other pages.  A page not yet written shows its placeholder.
        """
        try:
            module = importlib.import_module(f"app.ui.pages.{key}")
        except ModuleNotFoundError as exc:
            if exc.name != f"app.ui.pages.{key}":
                raise
            return None
        cls = getattr(module, "PAGE_CLASS", None)
        if cls is None:
            return None
        page = cls()
        message = getattr(page, "status_message", None)
        if message is not None:  # a page's one-line results ("Saved route default") go to the status bar
            message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        return page

    def _open_tile_chart(self, tile: str) -> None:
        self.show_page("traffic")
        page = self.pages.get("traffic")
        if hasattr(page, "focus_chart"):
            page.focus_chart(tile)

    def attach_data(
        self, *, live: object = None, bridge: object = None, store: object = None, gateway: object = None
    ) -> None:
        """Connect the traffic pages to the live aggregator and (through the bridge) the store."""
        self.feed.attach(live=live, bridge=bridge, store=store)  # type: ignore[arg-type]
        if bridge is not None and store is not None:
            self.attach_store(store, bridge_runner(bridge), gateway)  # type: ignore[arg-type]

    def _sample_ingest(self) -> None:
        gateway = self._gateway() if callable(self._gateway) else self._gateway
        if gateway is not None:
            self.status.set_gateway("in-process", True, "A gateway runs inside this app (demo mode)")
        live = getattr(self.feed, "live", None)
        added = getattr(live, "added", None)
        if not isinstance(added, int):
            return
        now = time.monotonic()
        self._ingest_samples = [*self._ingest_samples[-5:], (now, added)]
        (t0, n0), (t1, n1) = self._ingest_samples[0], self._ingest_samples[-1]
        if t1 - t0 >= 0.5:
            self.status.set_ingest(max(0, n1 - n0) / (t1 - t0))

    def attach_store(self, store: object, runner: Runner, gateway: object = None) -> None:
        """Give the pages that read the store (events, breakers) their way to it.

        ``store`` may be a getter answering ``None`` until the store is open; ``gateway`` a getter of
        the in-process gateway, when there is one (its breakers are live; others come from the store).
        """
        self._gateway = gateway
        for page in self.pages.values():
            attach = getattr(page, "attach_store", None)
            if callable(attach):
                attach(store, runner, gateway)
        events = self.pages.get("events")
        if hasattr(events, "set_filter_state"):
            events.set_filter_state(self.filters.state)

    def show_source_statuses(self, reports: list[object]) -> None:
        """The collector's sources (``SourceReport``s): the status bar's count, the rail's badge, the page."""
        active = [r for r in reports if not getattr(r, "paused", False)]
        failing = [r for r in active if not getattr(r, "healthy", True)]
        lines = [
            f"{getattr(r, 'name', '?')}: {getattr(r, 'state', '')}"
            + (f" — {r.last_error}" if getattr(r, "last_error", None) else "")  # type: ignore[attr-defined]
            for r in reports
        ]
        self.status.set_sources(len(active) - len(failing), len(active), "\n".join(lines))
        for row, spec in enumerate(PAGES):
            if spec.key == "sources":  # ui.md: the rail shows a badge where a source is failing
                item = self.rail.item(row)
                item.setText(f"{spec.title}  ⚠ {len(failing)}" if failing else spec.title)
        page = self.pages.get("sources")
        apply = getattr(page, "apply_reports", None)
        if callable(apply):
            apply(reports)

    # Pages that show traffic read the filter bar; elsewhere it is greyed out (ui.md).
    FILTERED_PAGES: frozenset[str] = frozenset({"overview", "traffic", "events"})

    def _page_actions(self) -> None:
        def key_action(text: str, keys: str, slot: object) -> None:
            action = QtGui.QAction(text, self)
            action.setShortcut(QtGui.QKeySequence(keys))
            action.triggered.connect(slot)
            self.addAction(action)

        key_action("Focus the filters", "Ctrl+F", self.filters.focus_filters)
        key_action("Pause or resume live", "Space", self._toggle_pause)
        key_action("Export the visible data", "Ctrl+E", self._export_current)
        key_action("Refresh", "Ctrl+R", self._refresh_current)

    def _refresh_current(self) -> None:
        """Ctrl+R: read the live series again, and the shown page's data when it has any to read."""
        self.feed.refresh()
        page = self.stack.currentWidget()
        refresh = getattr(page, "refresh", None)
        if callable(refresh):
            refresh()

    def _toggle_pause(self) -> None:
        if self.current_page in self.FILTERED_PAGES:
            self.filters.toggle_pause()

    def _export_current(self) -> None:
        page = self.stack.currentWidget()
        if hasattr(page, "export_visible"):
            page.export_visible()

    def _install_shortcuts(self) -> None:
        self._page_actions()
        for index, spec in enumerate(PAGES[:9]):
            action = QtGui.QAction(spec.title, self)
            action.setShortcut(QtGui.QKeySequence(f"Ctrl+{index + 1}"))
            action.triggered.connect(lambda _checked=False, key=spec.key: self.show_page(key))
            self.addAction(action)
        quit_action = QtGui.QAction("Quit", self)
        quit_action.setShortcut(QtGui.QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        self.addAction(quit_action)

    # -- pages ------------------------------------------------------------------
    @property
    def current_page(self) -> str:
        item = self.rail.currentItem()
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else PAGES[0].key

    def show_page(self, key: str) -> None:
        page_spec(key)  # raises a clear KeyError for an unknown name
        for row in range(self.rail.count()):
            if self.rail.item(row).data(Qt.ItemDataRole.UserRole) == key:
                self.rail.setCurrentRow(row)
                return

    def _on_row_changed(self, row: int) -> None:
        if row < 0:
            return
        self.stack.setCurrentIndex(row)
        self.filters.setEnabled(PAGES[row].key in self.FILTERED_PAGES)
        self.page_changed.emit(PAGES[row].key)

    # -- geometry -----------------------------------------------------------------
    def restore_state(self) -> None:
        s = settings()
        geometry = s.value("window/geometry")
        if isinstance(geometry, QtCore.QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        page = s.value("window/page")
        if isinstance(page, str) and page in self.pages:
            self.show_page(page)
        self.filters.restore()

    def save_state(self) -> None:
        s = settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/page", self.current_page)
        s.sync()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.save_state()
        self._ingest_timer.stop()
        self.feed.stop()
        super().closeEvent(event)
