"""The runtime: one asyncio loop on its own thread (architecture.md, Threads).

The gateway, the sources, the simulator and the experiment runner all run on
this loop.  It has no Qt in it, so headless commands (`controlroom gateway`,
`controlroom collect`) use the same class; the desktop app talks to it through
``app.ui.bridge``.  The shape follows Anki's task manager: one door for
background work, results marshalled back, widgets touched only on the GUI
thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from enum import StrEnum
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class RuntimeState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class RuntimeNotRunning(RuntimeError):
    """Work was submitted to a runtime that is not running."""


class Runtime:
    """An asyncio event loop running on a dedicated, named thread."""

    def __init__(self, name: str = "controlroom-runtime") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._state = RuntimeState.STOPPED
        self._state_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------
    @property
    def state(self) -> RuntimeState:
        return self._state

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeNotRunning("the runtime is not running")
        return self._loop

    def start(self, timeout: float = 10.0) -> None:
        with self._state_lock:
            if self._state is not RuntimeState.STOPPED:
                return
            self._state = RuntimeState.STARTING
        self._started.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the runtime thread did not start")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._state = RuntimeState.RUNNING
        loop.call_soon(self._started.set)
        try:
            loop.run_forever()
        finally:
            try:
                self._cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                self._loop = None
                self._state = RuntimeState.STOPPED

    @staticmethod
    def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every task, close the loop and join the thread.  Safe to call twice."""
        with self._state_lock:
            if self._state is not RuntimeState.RUNNING or self._loop is None:
                return
            self._state = RuntimeState.STOPPING
            loop = self._loop
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("runtime thread did not stop within %.1f s", timeout)
        self._thread = None

    def __enter__(self) -> Runtime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- work --------------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        if self._state is not RuntimeState.RUNNING or self._loop is None:
            coro.close()
            raise RuntimeNotRunning("the runtime is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it.  Never call this on the GUI thread."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call_soon(self, fn: Any, *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed while we were asked
                self._loop.call_soon_threadsafe(fn, *args)
