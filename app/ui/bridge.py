"""The Qt <-> asyncio bridge: run a coroutine on the runtime thread, get the answer as a signal.

The future's done-callback fires on the runtime thread; it only emits a
signal of a QObject that lives on the GUI thread, so Qt queues the call and
the callbacks run on the GUI thread.  Widgets are never touched from the
runtime thread (pyqtgraph#1398 shows what happens otherwise).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from app.runtime import Runtime, RuntimeNotRunning
from app.ui.qt import QObject, Signal

ResultCallback = Callable[[Any], None]
ErrorCallback = Callable[[BaseException], None]


log = logging.getLogger(__name__)


class TaskHandle:
    """A running piece of background work; ``cancel()`` asks the coroutine to stop."""

    def __init__(self, task_id: int, future: concurrent.futures.Future[Any] | None) -> None:
        self.id = task_id
        self._future = future

    def cancel(self) -> None:
        if self._future is not None:
            self._future.cancel()

    def done(self) -> bool:
        return self._future is None or self._future.done()


class Bridge(QObject):
    """Submit coroutines from the GUI thread; results and errors come back as signals."""

    #: task id, result
    finished = Signal(int, object)
    #: task id, exception
    failed = Signal(int, object)
    _completed = Signal(int, bool, object)

    def __init__(self, runtime: Runtime, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runtime = runtime
        self._ids = itertools.count(1)
        self._callbacks: dict[int, tuple[ResultCallback | None, ErrorCallback | None]] = {}
        self._completed.connect(self._deliver)

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def pending(self) -> int:
        return len(self._callbacks)

    def run(
        self,
        coro: Coroutine[Any, Any, Any],
        on_result: ResultCallback | None = None,
        on_error: ErrorCallback | None = None,
    ) -> TaskHandle:
        task_id = next(self._ids)
        self._callbacks[task_id] = (on_result, on_error)
        try:
            future = self._runtime.submit(coro)
        except RuntimeNotRunning as exc:
            self._completed.emit(task_id, False, exc)
            return TaskHandle(task_id, None)
        future.add_done_callback(lambda f, tid=task_id: self._on_done(tid, f))
        return TaskHandle(task_id, future)

    def _on_done(self, task_id: int, future: concurrent.futures.Future[Any]) -> None:
        # Runs on the runtime thread: only emit, the slot runs on the GUI thread.
        if future.cancelled():
            self._completed.emit(task_id, False, concurrent.futures.CancelledError())
            return
        exc = future.exception()
        if exc is not None:
            self._completed.emit(task_id, False, exc)
        else:
            self._completed.emit(task_id, True, future.result())

    def _deliver(self, task_id: int, ok: bool, payload: object) -> None:
        on_result, on_error = self._callbacks.pop(task_id, (None, None))
        try:
            if ok:
                self.finished.emit(task_id, payload)
                if on_result is not None:
                    on_result(payload)
            else:
                self.failed.emit(task_id, payload)
                if on_error is not None and isinstance(payload, BaseException):
                    on_error(payload)
        except RuntimeError as exc:
            # The widget that asked closed while the work ran (a page torn down at quit while its
            # read was in flight): nobody is left to tell.  Anything else is a real error.
            if "already deleted" not in str(exc):
                raise
            log.debug("task %d finished after its widget was deleted: %s", task_id, exc)
