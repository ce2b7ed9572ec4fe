"""The Qt <-> asyncio bridge: results and errors arrive on the GUI thread, and the GUI never waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from app.runtime import Runtime
from app.ui.bridge import Bridge
from app.ui.qt import QtCore, QTimer

pytestmark = pytest.mark.gui


@pytest.fixture
def bridge(qapp: object) -> Iterator[Bridge]:
    runtime = Runtime()
    runtime.start()
    b = Bridge(runtime)
    yield b
    runtime.stop()


def test_result_is_delivered_on_the_gui_thread(qtbot: object, bridge: Bridge) -> None:
    seen: dict[str, object] = {}

    async def work() -> int:
        seen["worker"] = threading.current_thread().name
        return 42

    def on_result(value: object) -> None:
        seen["value"] = value
        seen["delivered_on_gui"] = (
            QtCore.QThread.currentThread() is QtCore.QCoreApplication.instance().thread()
        )

    with qtbot.waitSignal(bridge.finished, timeout=5000) as blocker:  # type: ignore[attr-defined]
        bridge.run(work(), on_result)
    assert blocker.args[1] == 42
    assert seen == {"worker": "controlroom-runtime", "value": 42, "delivered_on_gui": True}
    assert bridge.pending == 0


def test_error_is_delivered_as_a_signal(qtbot: object, bridge: Bridge) -> None:
    errors: list[BaseException] = []

    async def fail() -> None:
        raise ConnectionError("provider unreachable")

    with qtbot.waitSignal(bridge.failed, timeout=5000):  # type: ignore[attr-defined]
        bridge.run(fail(), on_error=errors.append)
    assert len(errors) == 1
    assert isinstance(errors[0], ConnectionError)


def test_a_slow_coroutine_does_not_block_the_gui_thread(qtbot: object, bridge: Bridge) -> None:
    """The coroutine finishes only after the GUI thread has handled a timer while it was pending.

    If submitting work blocked the GUI thread until the work was done, the
    timer could never fire, the coroutine would never be released, and the
    test would time out instead of passing.
    """
    gui_ticks = 0
    released = threading.Event()

    async def slow() -> str:
        await asyncio.to_thread(released.wait, 10)
        return "done" if released.is_set() else "gui thread never ran"

    def tick() -> None:
        nonlocal gui_ticks
        gui_ticks += 1
        if gui_ticks >= 3:
            released.set()

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    results: list[str] = []
    bridge.run(slow(), results.append)
    qtbot.waitUntil(lambda: results == ["done"], timeout=5000)  # type: ignore[attr-defined]
    timer.stop()
    assert gui_ticks >= 3


def test_cancel_stops_the_coroutine(qtbot: object, bridge: Bridge) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    errors: list[BaseException] = []
    handle = bridge.run(forever(), on_error=errors.append)
    qtbot.waitUntil(lambda: bridge.runtime.loop is not None, timeout=1000)  # type: ignore[attr-defined]
    handle.cancel()
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)  # type: ignore[attr-defined]
    assert handle.done()


def test_a_widget_closed_while_its_work_ran_is_not_an_error(qtbot: object, bridge: Bridge) -> None:
    """A page torn down at quit while its read is in flight: the answer has nobody to go to."""
    import shiboken6

    from app.ui.qt import QtWidgets

    label = QtWidgets.QLabel()

    async def work() -> str:
        return "late"

    shiboken6.delete(label)
    with qtbot.waitSignal(bridge.finished, timeout=5000):  # type: ignore[attr-defined]
        bridge.run(work(), lambda text: label.setText(text))
    assert bridge.pending == 0


def test_other_errors_in_a_callback_still_surface(qtbot: object, bridge: Bridge) -> None:
    async def work() -> int:
        return 1

    def broken(_value: object) -> None:
        raise RuntimeError("a real bug")

    with (
        qtbot.captureExceptions() as caught,  # type: ignore[attr-defined]
        qtbot.waitSignal(bridge.finished, timeout=5000),  # type: ignore[attr-defined]
    ):
        bridge.run(work(), broken)
    assert any("a real bug" in str(e[1]) for e in caught)
