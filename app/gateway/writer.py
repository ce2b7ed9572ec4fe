"""The gateway's store writer: events and breaker transitions in batches, off the request path.

A request only appends to an in-memory queue (:meth:`StoreWriter.enqueue`, O(1),
never blocks, never awaits).  One task on the event loop takes whatever has
queued up and hands it to a single executor thread (``controlroom-writer``),
so under load batches grow by themselves and the loop never waits for the
database.  Other store work that must be ordered with the writes (the budget
spend refresh reads the events this process has written) runs on the same
thread through :meth:`StoreWriter.call`, after every event queued before it.

Nothing is lost silently: a failed batch is retried with backoff while new
events keep queueing; only past ``max_pending`` are the oldest dropped, and
that is counted and logged as an error.  :meth:`aclose` writes everything left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from app.core.event import Event
from storage.engine import Store
from storage.queries.control import BreakerTransition, append_breaker_transitions
from storage.queries.events import insert_events

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreWriter:
    """Batches events and breaker transitions into the store on one thread of its own."""

    def __init__(
        self,
        store: Store | None,
        *,
        batch_max: int = 2000,
        linger_s: float = 0.1,
        max_pending: int = 200_000,
        retry_s: float = 0.2,
        max_retry_s: float = 5.0,
        write_events: bool = True,
    ) -> None:
        self._store = store
        self._write_events = write_events and store is not None
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._lingering = False  # the writer waits for a batch to gather: new events don't wake it
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._events: deque[Event] = deque()
        self._transitions: deque[BreakerTransition] = deque()
        self._jobs: deque[tuple[int, Callable[[], Any], asyncio.Future[Any]]] = deque()
        self._enqueued = 0  # events ever enqueued (the order stamp of jobs)
        self._taken = 0  # events taken off the queue for writing (or dropped)
        self.written = 0
        self.batches = 0  # transactions that wrote events
        self.dropped = 0
        self.failed_batches = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        if self._store is not None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="controlroom-writer")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="controlroom-writer")

    async def aclose(self, timeout_s: float = 30.0) -> None:
        """Write everything queued (bounded by ``timeout_s``), then stop the thread."""
        if self._task is None:
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            left = len(self._events)
            self._task.cancel()
            if left:
                log.error("the store writer could not write %d event(s) before closing: they are lost", left)
                self.dropped += left
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        finally:
            self._task = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    # --- the request path ---------------------------------------------------------------------

    def enqueue(self, event: Event) -> None:
        """Queue one event for the store.  O(1); never blocks."""
        if not self._write_events:
            return
        self._events.append(event)
        self._enqueued += 1
        if len(self._events) > self._max_pending:
            self._events.popleft()
            self._taken += 1
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error(
                    "the store is not keeping up: %d event(s) dropped so far (queue limit %d)",
                    self.dropped,
                    self._max_pending,
                )
        wake = self._wake
        if wake is not None and not wake.is_set():
            if self._lingering and len(self._events) < self._batch_max:
                return
            wake.set()

    def enqueue_transition(self, transition: BreakerTransition) -> None:
        if self._store is None:
            return
        self._transitions.append(transition)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    @property
    def pending(self) -> int:
        return len(self._events)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer thread after every event queued so far has been written."""
        if self._store is None or self._task is None:
            raise RuntimeError("the store writer is not running")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.append((self._enqueued, fn, fut))
        assert self._wake is not None
        self._wake.set()
        return await fut

    async def flush(self) -> None:
        """Wait until everything queued so far is in the store."""
        if self._store is None or self._task is None:
            return
        await self.call(lambda: None)

    # --- the writer task ------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        backoff = self._retry_s
        while True:
            if not (self._events or self._transitions or self._jobs):
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._store is None:
                # Nowhere to write: events are only counted; jobs cannot run.
                self._taken += len(self._events)
                self._events.clear()
                self._transitions.clear()
                while self._jobs:
                    _, _, fut = self._jobs.popleft()
                    if not fut.done():
                        fut.set_exception(RuntimeError("no store"))
                continue
            # Jobs whose turn has come (every event queued before them is written) run first.
            while self._jobs and self._jobs[0][0] <= self._taken:
                _, fn, fut = self._jobs.popleft()
                try:
                    result = await loop.run_in_executor(self._executor, fn)
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(result)
            if not (self._events or self._transitions):
                continue
            if (
                self._linger_s > 0
                and not self._closing
                and not self._jobs
                and not self._transitions
                and len(self._events) < self._batch_max
            ):
                # Let a batch gather: one transaction per linger instead of one per few events
                # (at 400 requests/s that is 10 commits/s instead of hundreds, and the writer
                # thread's share of the GIL and the cores drops with it).  A job (``flush``),
                # a breaker transition, a full batch or closing cuts the wait short.
                self._wake.clear()
                self._lingering = True
                try:
                    await asyncio.wait_for(self._wake.wait(), self._linger_s)
                except TimeoutError:
                    pass
                finally:
                    self._lingering = False
                if self._jobs or self._transitions or self._closing:
                    continue
            n = min(len(self._events), self._batch_max)
            if self._jobs:
                # Never write past a waiting job's place in line: it must see exactly what came before it.
                n = min(n, self._jobs[0][0] - self._taken)
            batch = [self._events.popleft() for _ in range(n)]
            transitions = list(self._transitions)
            try:
                await loop.run_in_executor(self._executor, self._write, batch, transitions)
            except Exception as exc:
                self._events.extendleft(reversed(batch))  # back at the front, in order
                self.failed_batches += 1
                if self.failed_batches == 1 or self.failed_batches % 50 == 0:
                    log.warning(
                        "writing %d event(s) to the store failed (%s: %s); retrying in %.1f s",
                        len(batch),
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                if self._closing and backoff >= self._max_retry_s:
                    # Closing and the store stays down: give up rather than hang the shutdown.
                    log.error("the store is unavailable: %d event(s) not written", len(self._events))
                    self.dropped += len(self._events)
                    self._taken += len(self._events)
                    self._events.clear()
                    self._transitions.clear()
                    continue
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_retry_s)
                continue
            backoff = self._retry_s
            for _ in range(len(transitions)):
                self._transitions.popleft()
            self._taken += n
            self.written += n
            self.batches += 1 if n else 0

    def _write(self, events: list[Event], transitions: list[BreakerTransition]) -> None:
        assert self._store is not None
        engine = self._store.engine
        started = time.perf_counter()
        if events:
            insert_events(engine, events)
        if transitions:
            append_breaker_transitions(engine, transitions)
        elapsed = time.perf_counter() - started
        if elapsed > 1.0:
            log.warning("writing %d event(s) to the store took %.1f s", len(events), elapsed)
