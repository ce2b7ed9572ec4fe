"""The ingest pipeline: the one writer that puts sources' batches into the store.

Every source (JSONL tail, OTLP receiver, HTTP poll, usage APIs) and the gateway
hand their events to a :class:`Pipeline`.  For each batch, in **one
transaction**, it:

1. inserts the events as rows, idempotent on ``event_id`` (a replayed batch
   inserts nothing twice), and learns which of them were new;
2. folds only the new ones into the per-minute rollups (counters added,
   latency and TTFT sketches merged, with numpy: :func:`storage.queries.rollups.merge_rollup_rows`).
   A :class:`RowBatch` from the ingest's parser process brings its rollups
   computed ahead; they are added as they are only when every row of the
   transaction was new, else the new rows are summed here;
3. stores the batch's rejected records in the quarantine;
4. saves the batch's read positions (file sources resume from them).

After the commit it feeds the new events to the in-memory live aggregator
(:class:`app.sources.live.LiveAggregator`) that the live charts read.

Everything is written as rows (:data:`storage.queries.events.EVENT_COLUMNS`
order).  A :class:`RowBatch` brings its rows already built: the JSONL reader
makes them straight from the decoded lines of our own event format, without
an :class:`Event` per record (the ingest hot path, tests/bench/test_bench_ingest.py).
Other batches' events become rows here.  Events for the live view are only
built when there is one.

A record the store itself refuses (a NUL in a string on PostgreSQL, a value
SQLite cannot bind) is found by bisection inside the same transaction and
quarantined with the store's reason; the rest of the batch still lands.  Only
an unusable store (disk full, connection lost) raises: nothing of that batch
is committed, so the source can retry it.

Two ways in:

- :meth:`Pipeline.write` — synchronous, in the caller's thread (one-shot
  ingest, tests);
- :meth:`Pipeline.submit` / :meth:`Pipeline.submit_async` — queued to the
  writer thread (``controlroom-ingest-writer``), which coalesces small batches
  from many sources into large transactions (the store's rate lives on batch
  size).  Start it with :meth:`Pipeline.start`, stop it with :meth:`Pipeline.stop`
  (or use the pipeline as a context manager).

Example::

    with open_store(url) as store, Pipeline(store, live=LiveAggregator()) as pipeline:
        result = await pipeline.submit_async(Batch(events=[...], rejected=[...]))
        print(result.ingested, result.duplicates, result.rejected, result.reasons)
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import marshal
import threading
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, InterfaceError, InternalError, OperationalError, SQLAlchemyError

from app.core.event import Event
from app.sources.base import Batch, Position, Rejected, excerpt_of, gc_paused
from storage.engine import Store, WalCheckpointer, transaction
from storage.models import EVENTS
from storage.queries.events import EVENT_COLUMNS, event_from_row, event_rows, insert_rows
from storage.queries.positions import load_position, save_positions
from storage.queries.quarantine import insert_quarantined
from storage.queries.rollups import RowsRollup, apply_rows_rollup, merge_rollup_rows, merge_rows_rollups

if TYPE_CHECKING:
    from app.sources.live import LiveAggregator

log = logging.getLogger(__name__)

#: Events per transaction the writer thread aims for when coalescing queued batches.
DEFAULT_MAX_BATCH = 20_000
#: Events the writer thread's queue holds before ``submit`` waits (backpressure).
DEFAULT_QUEUE_EVENTS = 200_000

#: Transactions of this many events or more leave their WAL checkpoint to a thread of its own
#: (:class:`storage.engine.WalCheckpointer`); smaller ones keep SQLite's automatic checkpoint.
_DEFER_CHECKPOINT_ROWS = 5_000

# Ids checked per query when a batch holds some already-stored events.
_LOOKUP_CHUNK = 500


class StoreUnavailable(Exception):
    """The store could not take the batch (disk full, locked too long, connection lost).

    Nothing of the batch was committed; the source may retry it.  Raised from
    :meth:`Pipeline.write` and set on a :meth:`Pipeline.submit` future.
    """


class PipelineStopped(RuntimeError):
    """The batch was submitted after :meth:`Pipeline.stop` (or before :meth:`Pipeline.start`)."""


Row = tuple[Any, ...]

_EVENTS_SLOT: Any = Batch.__dict__["events"]  # the slot behind Batch.events


class RowBatch(Batch):
    """A batch whose events are already the store's rows: the JSONL reader's fast path.

    ``rows`` are in :data:`storage.queries.events.EVENT_COLUMNS` order, as
    :meth:`app.sources.formats.EventFormat.parse_rows` builds them; the
    pipeline writes them without an :class:`Event` per record.  ``events``
    still works (built from the rows on first use), for callers that want objects.
    """

    __slots__ = ("_n", "_packed", "_rows", "rollup")

    def __init__(
        self,
        rows: list[Row],
        rejected: list[Rejected] | None = None,
        positions: list[Position] | None = None,
        rollup: RowsRollup | None = None,
    ) -> None:
        Batch.__init__(self, [], rejected if rejected is not None else [], positions or [])
        self._rows = rows
        self._packed: bytes | None = None
        self._n = len(rows)
        #: The rows' rollups computed ahead (the parser process does), used when every row is
        #: new; ``None``: the writer computes them from the rows it stored.
        self.rollup = rollup

    @classmethod
    def packed(
        cls,
        data: bytes,
        n: int,
        rejected: list[Rejected] | None = None,
        positions: list[Position] | None = None,
        rollup: RowsRollup | None = None,
    ) -> RowBatch:
        """A batch of ``n`` rows still packed by :func:`pack_rows`: they are unpacked where
        first read, the writer thread, so the thread that queues them does not hold the GIL
        for it while the writer binds."""
        batch = cls([], rejected, positions, rollup)
        batch._packed, batch._n = data, n
        return batch

    @property
    def rows(self) -> list[Row]:
        if self._packed is not None:
            with gc_paused():  # tens of thousands of tuples that all survive
                rows: list[Row] = marshal.loads(self._packed)
            if len(rows) != self._n:
                raise ValueError(f"packed rows hold {len(rows)} rows, not {self._n}")
            self._rows, self._packed = rows, None
        return self._rows

    @rows.setter
    def rows(self, value: list[Row]) -> None:
        self._rows, self._packed, self._n = value, None, len(value)

    @property
    def events(self) -> list[Event]:
        built: list[Event] = _EVENTS_SLOT.__get__(self, RowBatch)
        if len(built) != len(self.rows):
            built = [event_from_row(r) for r in self.rows]
            _EVENTS_SLOT.__set__(self, built)
        return built

    @events.setter
    def events(self, value: list[Event]) -> None:
        _EVENTS_SLOT.__set__(self, value)

    def __len__(self) -> int:
        return self._n + len(self.rejected)

    def __repr__(self) -> str:
        return f"RowBatch(rows={self._n}, rejected={len(self.rejected)}, positions={self.positions!r})"


def pack_rows(rows: list[Row]) -> bytes:
    """Rows as bytes for :meth:`RowBatch.packed` (``marshal``: the fastest format CPython reads back).

    Raises ``ValueError`` for a value ``marshal`` does not take (the readers' rows never hold one).
    """
    return marshal.dumps(rows, 4)


@dataclass(slots=True)
class WriteResult:
    """What became of a batch (or, in :attr:`Pipeline.totals`, of everything so far)."""

    ingested: int = 0  # newly stored events
    duplicates: int = 0  # events already stored, or repeated within the batch
    rejected: int = 0  # records quarantined (from the source, or refused by the store)
    reasons: dict[str, int] = field(default_factory=dict)  # rejected per reason category

    def add(self, other: WriteResult) -> None:
        self.ingested += other.ingested
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v

    def copy(self) -> WriteResult:
        return WriteResult(self.ingested, self.duplicates, self.rejected, dict(self.reasons))

    def as_dict(self) -> dict[str, Any]:
        """The ``controlroom ingest --json`` shape."""
        return {
            "ingested": self.ingested,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
        }


def _is_store_failure(exc: BaseException) -> bool:
    """True when the store itself is the problem, not the record being written."""
    return isinstance(exc, OperationalError | InterfaceError | InternalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    inner = orig if orig is not None else exc
    text = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
    return f"{type(inner).__name__}: {text}"[:500]


def _event_excerpt(e: object) -> str:
    try:
        if isinstance(e, Event):
            return excerpt_of(json.dumps(e.to_dict(), ensure_ascii=False, default=repr))
        if isinstance(e, tuple) and len(e) == len(EVENT_COLUMNS):
            return excerpt_of(
                json.dumps(dict(zip(EVENT_COLUMNS, e, strict=True)), ensure_ascii=False, default=repr)
            )
    except (TypeError, ValueError):
        pass
    return excerpt_of(repr(e))


_I_ID = EVENT_COLUMNS.index("event_id")
_I_SOURCE = EVENT_COLUMNS.index("source")


def _rows_of(events: list[Event]) -> tuple[list[Row], list[Event], list[tuple[Event, str]]]:
    """Rows of events, the events they came from, and the events no row can be built of (with why)."""
    try:
        return event_rows(events), events, []
    except Exception:
        pass
    rows: list[Row] = []
    kept: list[Event] = []
    bad: list[tuple[Event, str]] = []
    for e in events:
        try:
            [row] = event_rows([e])
        except Exception as exc:
            bad.append((e, _describe(exc)))
            continue
        rows.append(row)
        kept.append(e)
    return rows, kept, bad


class Pipeline:
    """The one writer: batches into the store with rollups, quarantine and positions, then live.

    Thread-safe: :meth:`write` may be called from any thread (calls are
    serialised); :meth:`submit` queues for the writer thread.
    """

    def __init__(
        self,
        store: Store | Engine,
        *,
        live: LiveAggregator | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        queue_events: int = DEFAULT_QUEUE_EVENTS,
    ) -> None:
        self.engine: Engine = store.engine if isinstance(store, Store) else store
        self.live = live
        self.max_batch = max_batch
        self.queue_events = queue_events
        self._write_lock = threading.Lock()
        self._totals = WriteResult()
        self._totals_lock = threading.Lock()
        self._queue: collections.deque[tuple[Batch, concurrent.futures.Future[WriteResult]]] = (
            collections.deque()
        )
        self._queued_events = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # While the writer thread runs, WAL checkpoints leave its commits (SQLite files only).
        self._checkpointer = WalCheckpointer(self.engine)

    # -- synchronous --------------------------------------------------------------------
    def write(self, batch: Batch) -> WriteResult:
        """Write one batch in one transaction and return what became of it.

        Raises :class:`StoreUnavailable` when the store cannot take it (nothing
        committed).  Bad records never raise: they are counted and quarantined.
        """
        with self._write_lock:
            results, new_events = self._write_many([batch])
        if self.live is not None and new_events:
            self.live.add(new_events)
        return results[0]

    def write_events(self, events: Sequence[Event]) -> WriteResult:
        """Shorthand for ``write(Batch(events=list(events)))`` (the gateway's path)."""
        return self.write(Batch(events=list(events)))

    @property
    def totals(self) -> WriteResult:
        """Everything written through this pipeline so far."""
        with self._totals_lock:
            return self._totals.copy()

    def load_position(self, source: str) -> Position | None:
        """The committed read position of a file source, or ``None`` when it never committed one."""
        stored = load_position(self.engine, source)
        if stored is None:
            return None
        return Position(stored.source, stored.identity, stored.offset, stored.fingerprint)

    # -- the writer thread --------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="controlroom-ingest-writer", daemon=True)
            self._thread.start()
            self._checkpointer.start()

    @property
    def running(self) -> bool:
        """True while the writer thread takes submitted batches."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def stop(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the ingest writer did not finish its queue within {timeout} s")
        self._thread = None
        self._checkpointer.stop()

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(self, batch: Batch, *, block: bool = True) -> concurrent.futures.Future[WriteResult]:
        """Queue a batch for the writer thread; the future gives its :class:`WriteResult`.

        Waits while the queue is full (backpressure) unless ``block=False``, in
        which case the batch is queued anyway.  Raises :class:`PipelineStopped`
        when the writer is not running.
        """
        future: concurrent.futures.Future[WriteResult] = concurrent.futures.Future()
        size = max(len(batch), 1)
        with self._cond:
            while True:
                if self._stopping or self._thread is None:
                    raise PipelineStopped("the ingest pipeline is not running; call start() first")
                if not block or self._queued_events + size <= self.queue_events or not self._queue:
                    break
                self._cond.wait()
            self._queue.append((batch, future))
            self._queued_events += size
            self._cond.notify_all()
        return future

    async def submit_async(self, batch: Batch) -> WriteResult:
        """Queue a batch and await its result without blocking the event loop."""
        with self._cond:
            room = self._queued_events + len(batch) <= self.queue_events or not self._queue
        if room:
            future = self.submit(batch, block=False)
        else:
            future = await asyncio.to_thread(self.submit, batch)
        return await asyncio.wrap_future(future)

    async def __call__(self, batch: Batch) -> WriteResult:
        """A pipeline is a :class:`app.sources.base.BatchSink`."""
        return await self.submit_async(batch)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is written (or failed)."""
        with self._cond:
            pending = [f for _, f in self._queue]
        concurrent.futures.wait(pending, timeout=timeout)
        # The batch being written when we looked is not in the queue any more.
        with self._write_lock:
            pass

    def _take(self) -> list[tuple[Batch, concurrent.futures.Future[WriteResult]]] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            taken = [self._queue.popleft()]
            n = len(taken[0][0])
            while self._queue and n + len(self._queue[0][0]) <= self.max_batch:
                item = self._queue.popleft()
                n += len(item[0])
                taken.append(item)
            self._queued_events -= sum(max(len(b), 1) for b, _ in taken)
            self._cond.notify_all()
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            batches = [b for b, _ in taken]
            futures = [f for _, f in taken]
            try:
                with self._write_lock:
                    results, new_events = self._write_many(batches)
            except BaseException as exc:
                for f in futures:
                    if not f.cancelled():
                        f.set_exception(exc)
                if not isinstance(exc, StoreUnavailable):
                    log.exception("ingest writer failed on a batch")
                continue
            if self.live is not None and new_events:
                try:
                    self.live.add(new_events)
                except Exception:  # the live view must never stop ingest
                    log.exception("live aggregator failed")
            for f, r in zip(futures, results, strict=True):
                if not f.cancelled():
                    f.set_result(r)

    # -- the write itself ---------------------------------------------------------------
    def _write_many(self, batches: Sequence[Batch]) -> tuple[list[WriteResult], list[Event]]:
        """Write batches in one transaction; per-batch results and the newly stored events.

        Everything is written as rows (:data:`EVENT_COLUMNS` order): a
        :class:`RowBatch` brings its own, other batches' events are turned
        into rows here.  Events for the live view are only built when there is one.
        """
        results = [WriteResult() for _ in batches]
        rows: list[Row] = []
        owner: list[int] = []  # index of the batch each row came from
        unbuildable: list[tuple[object, str, int]] = []  # (event, why, batch) of events no row fits
        event_of: dict[int, Event] | None = {} if self.live is not None else None  # id(row) -> its event
        seen: set[str] = set()
        for i, b in enumerate(batches):
            if isinstance(b, RowBatch):
                brows = b.rows
            else:
                brows, events, bad = _rows_of(b.events)
                unbuildable += [(e, why, i) for e, why in bad]
                if event_of is not None:
                    event_of.update(zip(map(id, brows), events, strict=True))
            # In-batch duplicates: the first occurrence wins, across the coalesced batches.
            before = len(seen)
            seen.update([row[_I_ID] for row in brows])
            if len(seen) - before == len(brows):
                rows += brows
                owner += [i] * len(brows)
            else:  # the slow path only when the batch repeats itself
                seen_here: set[str] = set()
                for row in brows:
                    if row[_I_ID] in seen_here:
                        results[i].duplicates += 1
                        continue
                    seen_here.add(row[_I_ID])
                    rows.append(row)
                    owner.append(i)
                # seen holds the same ids; only earlier batches' repeats remain to drop.
        if len(seen) != len(rows):  # an id in two of the coalesced batches: the first one wins
            rows, owner = self._drop_cross_batch_repeats(rows, owner, results)
        try:
            with (
                gc_paused(),
                self.engine.connect() as outer,
                self._checkpointer.deferring(outer) if len(rows) >= _DEFER_CHECKPOINT_ROWS else nullcontext(),
                transaction(outer, write=True) as conn,
            ):
                new, refused = self._insert(conn, rows)
                if new:
                    self._merge_rollups(conn, batches, rows, new)
                quarantined: list[tuple[str, str, str, str, float | None, str | None]] = []
                for b, r in zip(batches, results, strict=True):
                    for rej in b.rejected:
                        quarantined.append(
                            (rej.source, rej.position, rej.reason, rej.excerpt, rej.ts, rej.key)
                        )
                        r.rejected += 1
                        cat = rej.category
                        r.reasons[cat] = r.reasons.get(cat, 0) + 1
                index_of = {id(row): k for k, row in enumerate(rows)} if refused else {}
                refusals = [(row, why, owner[index_of[id(row)]]) for row, why in refused] + unbuildable
                for item, why, i in refusals:
                    if isinstance(item, tuple):
                        event_id, source = item[_I_ID], item[_I_SOURCE]
                    else:
                        event_id, source = getattr(item, "event_id", "?"), getattr(item, "source", "")
                    source = str(source or "unknown")
                    quarantined.append(
                        (source, f"event {event_id}", f"store refused: {why}", _event_excerpt(item), None,
                         f"event:{event_id}")
                    )  # fmt: skip
                    r = results[i]
                    r.rejected += 1
                    r.reasons["store refused"] = r.reasons.get("store refused", 0) + 1
                if quarantined:
                    insert_quarantined(conn, quarantined)
                positions = [
                    (p.source, p.identity, p.offset, p.fingerprint) for b in batches for p in b.positions
                ]
                if positions:
                    save_positions(conn, positions)
        except SQLAlchemyError as exc:
            if _is_store_failure(exc):
                raise StoreUnavailable(f"the store could not take the batch: {_describe(exc)}") from exc
            raise
        # Attribute new and already-stored rows to the batches they came from.
        if len(new) == len(rows):
            if len(batches) == 1:
                results[0].ingested += len(new)
            else:
                for i, n in collections.Counter(owner).items():
                    results[i].ingested += n
        else:
            new_ids = {id(row) for row in new}
            refused_ids = {id(row) for row, _ in refused}
            for row, i in zip(rows, owner, strict=True):
                if id(row) in new_ids:
                    results[i].ingested += 1
                elif id(row) not in refused_ids:
                    results[i].duplicates += 1
        total = WriteResult()
        for r in results:
            total.add(r)
        with self._totals_lock:
            self._totals.add(total)
        new_events: list[Event] = []
        if event_of is not None and new:
            get = event_of.get
            new_events = [e if (e := get(id(r))) is not None else event_from_row(r) for r in new]
        return results, new_events

    @staticmethod
    def _merge_rollups(conn: Connection, batches: Sequence[Batch], rows: list[Row], new: list[Row]) -> None:
        """Fold the newly stored rows into the rollups: computed ahead when they are exactly the batches' rows."""
        ahead = [
            b.rollup
            for b in batches
            if isinstance(b, RowBatch) and b.rollup is not None and b.rollup.rows == len(b.rows)
        ]
        # Every batch brought its own, and every row of them was stored: none repeated within or
        # across the batches, none stored before, none refused.
        if len(ahead) == len(batches) and len(new) == len(rows) == sum(r.rows for r in ahead):
            apply_rows_rollup(conn, merge_rows_rollups(ahead))
        else:
            merge_rollup_rows(conn, new)

    @staticmethod
    def _drop_cross_batch_repeats(
        rows: list[Row], owner: list[int], results: list[WriteResult]
    ) -> tuple[list[Row], list[int]]:
        ids = [r[_I_ID] for r in rows]
        if len(set(ids)) == len(ids):
            return rows, owner
        seen: set[str] = set()
        keep_r: list[Row] = []
        keep_o: list[int] = []
        for r, i, eid in zip(rows, owner, ids, strict=True):
            if eid in seen:
                results[i].duplicates += 1
                continue
            seen.add(eid)
            keep_r.append(r)
            keep_o.append(i)
        return keep_r, keep_o

    def _insert(
        self, conn: Connection, rows: list[Row], depth: int = 0
    ) -> tuple[list[Row], list[tuple[Row, str]]]:
        """Insert rows (ids unique within the list); return (newly stored, refused with reason).

        The common cases cost one pass of multi-row inserts: all new, or all
        already stored.  A mix is rolled back to a savepoint and redone with
        only the ids the store lacks.  A failing insert is bisected down to the
        rows the store refuses; an unusable store raises.
        """
        if not rows:
            return [], []
        savepoint = conn.begin_nested()
        try:
            result = insert_rows(conn, rows)
        except (SQLAlchemyError, TypeError, ValueError, UnicodeError, OverflowError) as exc:
            savepoint.rollback()
            if isinstance(exc, SQLAlchemyError) and _is_store_failure(exc):
                raise
            if len(rows) == 1:
                return [], [(rows[0], _describe(exc))]
            mid = len(rows) // 2
            new_a, bad_a = self._insert(conn, rows[:mid], depth)
            new_b, bad_b = self._insert(conn, rows[mid:], depth)
            return new_a + new_b, bad_a + bad_b
        if result.inserted == len(rows):
            savepoint.commit()
            return rows, []
        if result.inserted == 0:
            savepoint.commit()
            return [], []
        savepoint.rollback()
        stored = self._stored_ids(conn, [r[_I_ID] for r in rows])
        fresh = [r for r in rows if r[_I_ID] not in stored]
        if depth >= 3:  # pragma: no cover - another writer keeps racing us on the same ids
            raise StoreUnavailable("another writer keeps storing the same events; retry the batch")
        return self._insert(conn, fresh, depth + 1)

    @staticmethod
    def _stored_ids(conn: Connection, ids: list[str]) -> set[str]:
        out: set[str] = set()
        col = EVENTS.c.event_id
        for i in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[i : i + _LOOKUP_CHUNK]
            out.update(conn.execute(select(col).where(col.in_(chunk))).scalars())
        return out


def ingest_iter(pipeline: Pipeline, batches: Iterable[Batch]) -> WriteResult:
    """Write batches one after another with :meth:`Pipeline.write`; the summed result."""
    total = WriteResult()
    for b in batches:
        total.add(pipeline.write(b))
    return total


__all__ = [
    "DEFAULT_MAX_BATCH",
    "Pipeline",
    "PipelineStopped",
    "RowBatch",
    "StoreUnavailable",
    "WriteResult",
    "ingest_iter",
    "pack_rows",
]
