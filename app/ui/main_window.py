"""The main window: navigation rail, page stack, status bar (ui.md, "The window")."""

from __future__ import annotations

from app.core import paths
from app.ui.filters import FilterBar
from app.ui.livefeed import LiveFeed
from app.ui.pages import PAGES, page_spec
from app.ui.pages.overview import OverviewPage
from app.ui.pages.placeholder import PlaceholderPage
from app.ui.qt import QSettings, Qt, QtCore, QtGui, QtWidgets, Signal


def settings() -> QSettings:
    """Window state lives in an ini file in our config dir (never in the store: it is per desktop)."""
    return QSettings(str(paths.config_dir() / "ui.ini"), QSettings.Format.IniFormat)


class StatusBar(QtWidgets.QStatusBar):
    """store · runtime · keyring · DEMO — each a label another part of the app can update."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeGripEnabled(False)
        self.store = QtWidgets.QLabel("store: opening…")
        self.runtime = QtWidgets.QLabel("runtime: starting")
        self.keyring = QtWidgets.QLabel("keyring: checking")
        self.demo = QtWidgets.QLabel("DEMO", objectName="badgeDemo")
        self.demo.setVisible(False)
        self.addWidget(self.store, 1)
        for widget in (self.runtime, self.keyring, self.demo):
            self.addPermanentWidget(widget)

    def set_store(self, text: str, tooltip: str = "") -> None:
        self.store.setText(f"store: {text}")
        self.store.setToolTip(tooltip or text)

    def set_runtime(self, state: str) -> None:
        self.runtime.setText(f"runtime: {state}")

    def set_keyring(self, text: str, ok: bool, tooltip: str) -> None:
        self.keyring.setText(f"keyring: {text}" if ok else f"keyring: {text} ⚠")
        self.keyring.setToolTip(tooltip)


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
        return PlaceholderPage(page_spec(key))

    def _open_tile_chart(self, tile: str) -> None:
        self.show_page("traffic")
        page = self.pages.get("traffic")
        if hasattr(page, "focus_chart"):
            page.focus_chart(tile)

    def attach_data(self, *, live: object = None, bridge: object = None, store: object = None) -> None:
        """Connect the traffic pages to the live aggregator and (through the bridge) the store."""
        self.feed.attach(live=live, bridge=bridge, store=store)  # type: ignore[arg-type]

    # Pages that show traffic read the filter bar; elsewhere it is greyed out (ui.md).
    FILTERED_PAGES: frozenset[str] = frozenset({"overview", "traffic"})

    def _page_actions(self) -> None:
        def key_action(text: str, keys: str, slot: object) -> None:
            action = QtGui.QAction(text, self)
            action.setShortcut(QtGui.QKeySequence(keys))
            action.triggered.connect(slot)
            self.addAction(action)

        key_action("Focus the filters", "Ctrl+F", self.filters.focus_filters)
        key_action("Pause or resume live", "Space", self._toggle_pause)
        key_action("Export the visible data", "Ctrl+E", self._export_current)
        key_action("Refresh", "Ctrl+R", self.feed.refresh)

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
        self.feed.stop()
        super().closeEvent(event)
