"""Start and stop the desktop app: QApplication, theme, runtime thread, store, main window."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import __version__
from app.runtime import Runtime
from app.ui.bridge import Bridge
from app.ui.demo_control import DemoControl
from app.ui.main_window import MainWindow
from app.ui.qt import QtCore, QTimer, QtWidgets
from app.ui.theme import Scheme, apply_theme

log = logging.getLogger(__name__)

#: How long --smoke waits for the background start-up work before it paints anyway.
SMOKE_WAIT_S = 60.0
#: How long --smoke waits for the shown page's background reads before it paints anyway.
SMOKE_PAGE_WAIT_S = 5.0
#: How long --smoke --demo waits for live demo events before it paints anyway (and fails).
DEMO_SMOKE_WAIT_S = 20.0
#: Live demo events --smoke --demo waits for: a few seconds of traffic, so the charts show a shape.
DEMO_SMOKE_EVENTS = 10
#: How often the status bar and the Sources page get the collector's source statuses.
SOURCE_STATUS_MS = 1000


@dataclass
class UiOptions:
    store_url: str | None = None
    smoke: bool = False
    screenshot: Path | None = None
    page: str | None = None
    theme: Scheme = Scheme.SYSTEM
    demo: bool = False
    demo_if_empty: bool = False
    #: A window size (width, height) that wins over the saved one: screenshots at a known size.
    size: tuple[int, int] | None = None


class ControlRoom(QtCore.QObject):
    """The running app: owns the runtime, the bridge, the store handle and the window."""

    def __init__(self, qapp: QtWidgets.QApplication, options: UiOptions) -> None:
        super().__init__()
        self.qapp = qapp
        self.options = options
        self.runtime = Runtime()
        self.bridge = Bridge(self.runtime, self)
        self.window = MainWindow()
        # The live charts' source: whatever feeds the ingest pipeline (the demo, sources) adds to it.
        from app.sources.live import LiveAggregator

        self.live = LiveAggregator()
        self.store: Any = None
        self.store_error: str | None = None
        self.keyring_ok: bool | None = None
        self.smoke_check: dict[str, Any] | None = None
        self._startup_pending = 0
        # The configured sources and rollup maintenance (the code `controlroom collect` runs), on the
        # runtime thread, writing through one pipeline that the demo shares: one writer per store.
        self.pipeline: Any = None
        self.collector: Any = None
        self.collector_error: str | None = None
        self._status_pending = False
        self._sources_step = False
        self._sources_timer = QTimer(self)
        self._sources_timer.setInterval(SOURCE_STATUS_MS)
        self._sources_timer.timeout.connect(self._poll_sources)
        # Demo mode (--demo / --demo-if-empty): feeds the live aggregator the charts read.
        self.demo = DemoControl(self.bridge, self.window, getattr(self, "live", None))

    # -- start-up ---------------------------------------------------------------
    def start(self) -> None:
        self.runtime.start()
        self.window.status.set_runtime(self.runtime.state.value)
        self.window.restore_state()
        if self.options.size is not None:
            self.window.resize(*self.options.size)
        if self.options.page:
            self.window.show_page(self.options.page)
        self.window.show()
        # The store, the keyring check, the token/price check, and the sources' first statuses.
        self._startup_pending = 4
        self._sources_step = True
        self.bridge.run(_open_store(self.options.store_url), self._on_store_open, self._on_store_error)
        self.window.attach_data(
            live=self.live,
            bridge=self.bridge,
            store=lambda: self.store,
            # The demo's in-process gateway, once it runs: live breaker snapshots for the Breakers page.
            gateway=lambda: getattr(self.demo.demo, "gateway", None),
        )
        self.bridge.run(_keyring_status(), self._on_keyring, lambda exc: self._on_keyring(None))
        self.bridge.run(_tokens_and_price(), self._on_smoke_check, self._on_smoke_check_error)

    def _step_done(self) -> None:
        self._startup_pending -= 1

    @property
    def started(self) -> bool:
        return self._startup_pending <= 0

    def _on_store_open(self, store: Any) -> None:
        self.store = store
        self.window.status.set_store(store_label(store), store.url)
        self._start_collector(store)
        self.demo.start_if_wanted(store, demo=self.options.demo, demo_if_empty=self.options.demo_if_empty)
        self._step_done()

    # -- sources ------------------------------------------------------------------
    def _start_collector(self, store: Any) -> None:
        """Run the configured sources and the history compaction, as `controlroom collect` does."""
        from app.sources.collector import Collector
        from app.sources.pipeline import Pipeline

        self.pipeline = Pipeline(store, live=self.live)
        self.pipeline.start()
        # The demo's events take the same pipeline (it leaves starting and stopping it to us).
        self.demo.demo_kwargs.setdefault("pipeline", self.pipeline)
        self.collector = Collector(store, pipeline=self.pipeline)
        self.bridge.run(self.collector.start(), self._on_collector_started, self._on_collector_error)

    def _on_collector_started(self, _result: object) -> None:
        self.collector_error = None
        self._poll_sources()
        self._sources_timer.start()

    def _on_collector_error(self, exc: BaseException) -> None:
        self.collector_error = f"{type(exc).__name__}: {exc}"
        log.error("the sources could not start: %s", self.collector_error)
        self.window.status.set_sources(0, 1, f"The sources could not start: {self.collector_error}")
        self._sources_timer.start()  # its reload keeps trying; statuses show what runs
        self._sources_step_done()

    def _poll_sources(self) -> None:
        collector = self.collector
        if collector is None or self._status_pending:
            return
        self._status_pending = True

        async def reports() -> Any:
            return collector.reports()

        def done(result: Any) -> None:
            self._status_pending = False
            self.window.show_source_statuses(result)
            self._sources_step_done()

        def failed(exc: BaseException) -> None:
            self._status_pending = False
            log.debug("source statuses unavailable: %s", exc)
            self._sources_step_done()

        self.bridge.run(reports(), done, failed)

    def _on_store_error(self, exc: BaseException) -> None:
        self.store_error = f"{type(exc).__name__}: {exc}"
        self.window.status.set_store("unavailable ⚠", self.store_error)
        log.error("the store could not be opened: %s", self.store_error)
        self._step_done()
        self._sources_step_done()  # no store, no sources

    def _sources_step_done(self) -> None:
        if self._sources_step:
            self._sources_step = False
            self._step_done()

    def _on_keyring(self, status: Any) -> None:
        if status is None:
            self.keyring_ok = False
            self.window.status.set_keyring("unavailable", False, "The keyring could not be queried.")
        else:
            self.keyring_ok = status.available
            self.window.status.set_keyring(
                status.backend if status.available else "none", status.available, status.message
            )
        self._step_done()

    def _on_smoke_check(self, result: dict[str, Any]) -> None:
        self.smoke_check = result
        self._step_done()

    def _on_smoke_check_error(self, exc: BaseException) -> None:
        self.smoke_check = {"error": f"{type(exc).__name__}: {exc}"}
        self._step_done()

    # -- shut-down ----------------------------------------------------------------
    def shutdown(self) -> None:
        self.window.save_state()
        self._sources_timer.stop()
        self.demo.shutdown()
        self.window.feed.stop()
        self._stop_collector()
        if self.store is not None:
            self.runtime.run(asyncio.to_thread(self.store.close), timeout=10)
        self.runtime.stop()
        self.window.status.set_runtime(self.runtime.state.value)

    def _stop_collector(self) -> None:
        """Stop the sources (in-flight writes finish), then the pipeline once nothing feeds it.  Blocks."""
        collector, self.collector = self.collector, None
        if collector is not None:
            try:
                self.runtime.run(collector.aclose(), timeout=30)
            except Exception as exc:
                log.warning("the sources did not stop cleanly: %s", exc)
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop(timeout=30)
            except Exception as exc:
                log.warning("the ingest writer did not stop cleanly: %s", exc)


def store_label(store: Any) -> str:
    """A short name for the status bar: the SQLite file (home as ~), or the PostgreSQL server and database."""
    from storage.engine import sqlite_path

    path = sqlite_path(store.engine.url)
    if path is not None:
        home = Path.home()
        shown = f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)
        return f"SQLite · {shown}"
    url = store.engine.url
    return f"PostgreSQL · {url.host or 'local'}/{url.database}"


async def _open_store(url: str | None) -> Any:
    from storage.engine import open_store

    return await asyncio.to_thread(open_store, url)


async def _keyring_status() -> Any:
    from app.secrets import backend_status

    return await asyncio.to_thread(backend_status)


async def _tokens_and_price() -> dict[str, Any]:
    """Count tokens with the real tiktoken and price one call: proves a (frozen) build carries both."""

    def work() -> dict[str, Any]:
        from app.core.pricing import price_call
        from app.core.tokens import count_messages

        count = count_messages([{"role": "user", "content": "How many tokens is this sentence?"}], "gpt-4o")
        price = price_call("gpt-4o", provider="openai", input_tokens=count.tokens, output_tokens=100)
        return {"tokens": count.tokens, "cost_usd": price.cost_usd, "price_source": price.source}

    return await asyncio.to_thread(work)


def _wait_until(qapp: QtWidgets.QApplication, predicate: Any, timeout: float) -> bool:
    """Run the event loop until ``predicate()`` holds or ``timeout`` passes.

    A nested event loop woken every 20 ms, not a processEvents() spin: that one
    returns at once when nothing is pending and burns a core while it waits.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        loop = QtCore.QEventLoop()
        QTimer.singleShot(20, loop.quit)
        loop.exec()
    return True


def run_ui(options: UiOptions, argv: list[str] | None = None) -> int:
    QtWidgets.QApplication.setApplicationName("Control Room")
    QtWidgets.QApplication.setOrganizationName("controlroom")
    QtWidgets.QApplication.setApplicationVersion(__version__)
    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(argv or sys.argv[:1])
    assert isinstance(qapp, QtWidgets.QApplication)
    apply_theme(qapp, options.theme)
    app = ControlRoom(qapp, options)
    app.start()
    if options.smoke:
        return _smoke(qapp, app, options)
    qapp.aboutToQuit.connect(app.shutdown)
    return int(qapp.exec())


def _smoke(qapp: QtWidgets.QApplication, app: ControlRoom, options: UiOptions) -> int:
    """Paint once after start-up work has finished, save the picture, exit."""
    finished = _wait_until(qapp, lambda: app.started, SMOKE_WAIT_S)
    demo_note = ""
    demo_ok = True
    if options.demo or options.demo_if_empty:
        demo = app.demo
        _wait_until(qapp, lambda: demo.decided or app.store_error is not None, DEMO_SMOKE_WAIT_S)
        if demo.active:
            _wait_until(qapp, lambda: demo.live_events() >= DEMO_SMOKE_EVENTS, DEMO_SMOKE_WAIT_S)
            demo_ok = demo.live_events() > 0
            # A second for the live charts to take the new data in and repaint.
            _wait_until(qapp, lambda: False, 1.2)
            demo_note = f" demo={demo.state} live_events={demo.live_events()}"
            if not demo_ok:
                demo_note += " (no live demo data in time)"
        elif options.demo:
            demo_ok = False
            demo_note = f" demo={demo.state} {demo.error or ''}".rstrip()
    # The shown page's first reads run in the background: give them (bounded) time to answer, so
    # the picture shows the page, not "Reading the store…".
    window = app.window
    window.show_page(window.current_page)
    # A page whose first read found the store still opening asks again a moment later: wait until
    # the bridge has stayed idle for a short while, not just for one instant.
    deadline = time.monotonic() + SMOKE_PAGE_WAIT_S
    while time.monotonic() < deadline:
        _wait_until(qapp, lambda: app.bridge.pending == 0, max(0.0, deadline - time.monotonic()))
        _wait_until(qapp, lambda: False, 0.4)
        if app.bridge.pending == 0:
            break
    # Let layouts settle and the status bar repaint with the final texts.
    QTimer.singleShot(0, lambda: None)
    qapp.processEvents()
    window = app.window
    ok = (
        finished
        and app.store_error is None
        and bool(app.smoke_check)
        and "error" not in (app.smoke_check or {})
        and demo_ok
    )
    if options.screenshot is not None:
        options.screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab().save(str(options.screenshot)):
            print(f"smoke: could not write {options.screenshot}", file=sys.stderr)
            ok = False
    check = app.smoke_check or {}
    print(
        f"smoke {'ok' if ok else 'FAILED'}: page={window.current_page} "
        f"store={'open' if app.store is not None else app.store_error} "
        f"tokens={check.get('tokens')} cost_usd={check.get('cost_usd')} "
        f"keyring={'ok' if app.keyring_ok else 'unavailable'}"
        + demo_note
        + ("" if finished else " (start-up did not finish in time)")
    )
    if check.get("error"):
        print(f"smoke: token count or price failed: {check['error']}", file=sys.stderr)
    app.shutdown()
    window.close()
    return 0 if ok else 1
