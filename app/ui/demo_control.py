"""The desktop side of demo mode: start it on the runtime thread, the DEMO badge, the stop button.

The demo itself (:mod:`app.demo`) is headless; this only decides when to start
it (``--demo``, or ``--demo-if-empty`` on a store with no provider), runs its
coroutines through the bridge, and shows what it is doing in the status bar.
Nothing here waits on the GUI thread except :meth:`DemoControl.shutdown`, which
the app calls while quitting.
"""

from __future__ import annotations

import logging
from typing import Any

from app.ui.bridge import Bridge
from app.ui.qt import QObject, QtCore, QtGui, QTimer, QtWidgets, Signal

log = logging.getLogger(__name__)

#: The key for "Stop demo traffic" (and "Resume" once stopped).
STOP_SHORTCUT = "Ctrl+Shift+D"


class _ClickFilter(QtCore.QObject):
    """Turns a mouse press on a label into a call (the DEMO badge is a QLabel)."""

    def __init__(self, on_click: Any, parent: QtCore.QObject) -> None:
        super().__init__(parent)
        self._on_click = on_click

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if event.type() == QtCore.QEvent.Type.MouseButtonRelease:
            self._on_click()
            return True
        return False


class DemoControl(QObject):
    """Owns the running :class:`app.demo.Demo` for the app."""

    #: "starting" | "running" | "stopped" (traffic stopped, demo still up) | "failed" | "off"
    state_changed = Signal(str)

    def __init__(self, bridge: Bridge, window: Any, live: Any | None) -> None:
        super().__init__(window)
        self.bridge = bridge
        self.window = window
        self.live = live
        self.demo: Any = None
        self.state = "off"
        self.error: str | None = None
        self.decided = False  # whether to run the demo is known (the provider check may be pending)
        self.demo_kwargs: dict[str, Any] = {}  # passed to Demo(...): tests shorten the backfill
        self._busy = False
        status = window.status
        self.badge: QtWidgets.QLabel = status.demo
        self.badge.setCursor(QtGui.QCursor(QtCore.Qt.CursorShape.PointingHandCursor))
        self.badge.installEventFilter(_ClickFilter(self.toggle_traffic, self))
        self.button = QtWidgets.QToolButton()
        self.button.setObjectName("demoStop")
        self.button.setAutoRaise(True)
        self.button.setVisible(False)
        self.action = QtGui.QAction("Stop demo traffic", window)
        self.action.setShortcut(QtGui.QKeySequence(STOP_SHORTCUT))
        self.action.setEnabled(False)
        self.action.triggered.connect(self.toggle_traffic)
        window.addAction(self.action)
        self.button.setDefaultAction(self.action)
        status.addPermanentWidget(self.button)
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._refresh)

    # -- starting ---------------------------------------------------------------------------
    def start_if_wanted(self, store: Any, *, demo: bool, demo_if_empty: bool) -> None:
        """``--demo``: start.  ``--demo-if-empty``: start when the store has no provider but the demo's."""
        if demo:
            self.start(store)
        elif demo_if_empty:
            self.bridge.run(_has_providers(store), lambda has: self._decide(store, not has), self._undecided)
            return
        self.decided = True

    def _decide(self, store: Any, start: bool) -> None:
        if start:
            self.start(store)
        self.decided = True

    def _undecided(self, exc: BaseException) -> None:
        log.warning("could not tell whether providers are configured, so no demo: %s", exc)
        self.decided = True

    def start(self, store: Any) -> None:
        if self.demo is not None:
            return
        from app.demo import Demo

        self.demo = Demo(store, self.live, **self.demo_kwargs)
        self._set_state("starting")
        self.bridge.run(self.demo.start(), lambda _r: self._set_state("running"), self._on_failed)

    def _on_failed(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        log.error("the demo could not start: %s", self.error)
        self._set_state("failed")

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "stopped")

    # -- the one click ----------------------------------------------------------------------
    def toggle_traffic(self) -> None:
        if self.demo is None or self._busy:
            return
        if self.state == "running":
            self.stop_traffic()
        elif self.state == "stopped":
            self._busy = True
            self.bridge.run(_resume(self.demo), self._resumed, self._on_failed)

    def stop_traffic(self) -> None:
        if self.demo is None or self.state != "running" or self._busy:
            return
        self._busy = True
        # Say it at once; the last requests finish in the background.
        self.badge.setText("DEMO · stopping…")
        self.bridge.run(self.demo.stop_traffic(), self._stopped, self._on_failed)

    def _stopped(self, _result: object) -> None:
        self._busy = False
        self._set_state("stopped")

    def _resumed(self, _result: object) -> None:
        self._busy = False
        self._set_state("running")

    # -- the badge ----------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        self.state = state
        self._busy = False if state != "starting" else self._busy
        shown = state in ("starting", "running", "stopped", "failed")
        self.badge.setVisible(shown)
        self.button.setVisible(state in ("running", "stopped"))
        self.action.setEnabled(state in ("running", "stopped"))
        if state == "stopped":
            self.action.setText("Resume demo traffic")
            self.action.setIconText("Resume")  # the status-bar button: short, so it fits at 960 px
            self.action.setToolTip(f"Start the demo traffic again ({STOP_SHORTCUT})")
        else:
            self.action.setText("Stop demo traffic")
            self.action.setIconText("Stop")
            self.action.setToolTip(f"Stop the simulated traffic ({STOP_SHORTCUT})")
        if state in ("starting", "running"):
            self._timer.start()
        else:
            self._timer.stop()
        self._refresh()
        self.state_changed.emit(state)

    def _refresh(self) -> None:
        texts = {
            "starting": "DEMO · starting…",
            "running": "DEMO",
            "stopped": "DEMO · traffic stopped",
            "failed": "DEMO failed ⚠",
        }
        text = texts.get(self.state, "DEMO")
        tip = [
            "Demo mode: simulated providers and synthetic traffic through an in-process gateway.",
            f"Click the badge or press {STOP_SHORTCUT} to stop or resume the traffic.",
        ]
        if self.state == "failed" and self.error:
            tip.append(self.error)
        demo = self.demo
        if demo is not None and self.state == "running":
            st = demo.status()
            if st.weather:
                text = f"DEMO · {st.weather} · {st.rate_rps:.0f} req/s"
            tip.append(f"{st.sent} requests sent, {st.written} events stored")
            if st.backfilling:
                tip.append("writing the last 24 h of simulated history…")
            elif st.backfill is not None:
                tip.append(f"history: {st.backfill.generated} simulated events over 24 h")
            tip.extend(st.errors)
        self.badge.setText(text)
        self.badge.setToolTip("\n".join(tip))

    # -- smoke and shut-down -------------------------------------------------------------------
    def live_events(self) -> int:
        """Demo events that reached the live view (or the store, without a live aggregator)."""
        if self.live is not None:
            return int(self.live.added)
        return int(self.demo.status().written) if self.demo is not None else 0

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop the demo and write what it recorded.  Blocks (the app is quitting)."""
        self._timer.stop()
        demo, self.demo = self.demo, None
        if demo is None:
            return
        try:
            self.bridge.runtime.run(demo.aclose(), timeout=timeout)
        except Exception as exc:
            log.warning("the demo did not stop cleanly: %s", exc)
        self._set_state("off")


async def _has_providers(store: Any) -> bool:
    import asyncio

    from app.demo import only_demo_providers
    from storage.queries.control import list_objects

    names = [p["name"] for p in await asyncio.to_thread(list_objects, store.engine, "provider")]
    return bool(names) and not only_demo_providers(names)  # what an earlier demo stored does not count


async def _resume(demo: Any) -> None:
    demo.start_traffic()
