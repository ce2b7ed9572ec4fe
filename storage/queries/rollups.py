"""Per-minute rollups: accumulate a batch of events in Python, merge into the stored rows.

A rollup row is one minute x provider x model x route x feature
(:class:`storage.models.RollupMinute`).  Counters add up in SQL just fine, but
the latency and TTFT sketches must be merged in Python, so a batch is written
in three steps, inside the caller's write transaction:

1. :func:`accumulate` folds the batch's events into one :class:`RollupDelta`
   per key (pure Python, no SQL);
2. :func:`merge_rollups` reads the stored rows for those keys, merges each
   delta into its row (counters added, sketches merged), and
3. writes every merged row back with one ``INSERT ... ON CONFLICT DO UPDATE``
   ``executemany``.

Read-merge-write is only correct if no one else writes the same rows in
between: SQLite's ``BEGIN IMMEDIATE`` (``transaction(write=True)``) already
serialises writers; on PostgreSQL a transaction-level advisory lock does it,
so a fleet of writers cannot lose each other's counts.

Only events that were newly inserted may be accumulated (the pipeline knows
which): a replayed event must not count twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from app.core.event import CacheHit, Event, Failure
from app.core.sketch import LatencySketch
from storage.engine import transaction
from storage.models import FAILURE_COUNT_COLUMNS, ROLLUP_MINUTE

#: The dimensions of a rollup row, in key order.
KEY_COLUMNS: tuple[str, ...] = ("minute", "provider", "model", "route", "feature")

#: Failure counter columns, in :class:`Failure` order (without ``none``).
FAILURE_COLUMNS: tuple[str, ...] = tuple(FAILURE_COUNT_COLUMNS.values())

#: Additive integer/float columns, in the order of :attr:`RollupDelta.sums`.
SUM_COLUMNS: tuple[str, ...] = (
    "n_requests", *FAILURE_COLUMNS, "n_cache_hits", "n_cost_unknown",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost_usd", "latency_n", "latency_sum_ms", "ttft_n", "ttft_sum_ms",
)  # fmt: skip

SKETCH_COLUMNS: tuple[str, ...] = ("latency_sketch", "ttft_sketch")

#: Every column written by :func:`merge_rollups`, in row-tuple order.
ROW_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, *SUM_COLUMNS, *SKETCH_COLUMNS)

# Positions in RollupDelta.sums.
_I_REQUESTS = 0
_FAILURE_INDEX: dict[Failure, int] = {f: 1 + i for i, f in enumerate(FAILURE_COUNT_COLUMNS)}
_I_CACHE_HITS = 1 + len(FAILURE_COLUMNS)
_I_COST_UNKNOWN = _I_CACHE_HITS + 1
_I_TOKENS = _I_COST_UNKNOWN + 1  # five token sums follow
_I_COST = _I_TOKENS + 5
_I_LAT_N = _I_COST + 1
_I_LAT_SUM = _I_LAT_N + 1
_I_TTFT_N = _I_LAT_SUM + 1
_I_TTFT_SUM = _I_TTFT_N + 1
assert len(SUM_COLUMNS) - 1 == _I_TTFT_SUM
_INT_INDEXES = tuple(i for i in range(len(SUM_COLUMNS)) if i not in (_I_COST, _I_LAT_SUM, _I_TTFT_SUM))

# Keyed lookups per read: SQLite allows 32,766 bound parameters, PostgreSQL 65,535.
_READ_CHUNK = 500

# pg_advisory_xact_lock key for rollup writers ("rollups" in ASCII); any constant works.
_PG_ROLLUP_LOCK = 0x726F6C6C757073

RollupKey = tuple[float, str, str, str, str]


def minute_of(ts: float) -> float:
    """The start (epoch seconds) of the minute holding ``ts``."""
    return ts - ts % 60.0


class RollupDelta:
    """What one batch adds to one rollup row: sums, plus the raw latencies for the sketches."""

    __slots__ = ("latencies", "sums", "ttfts")

    def __init__(self) -> None:
        self.sums: list[float] = [0] * len(SUM_COLUMNS)
        self.latencies: list[float] = []
        self.ttfts: list[float] = []

    @property
    def requests(self) -> int:
        return int(self.sums[_I_REQUESTS])

    def as_dict(self) -> dict[str, float]:
        return dict(zip(SUM_COLUMNS, self.sums, strict=True))


def accumulate(
    events: Iterable[Event], into: dict[RollupKey, RollupDelta] | None = None
) -> dict[RollupKey, RollupDelta]:
    """Fold events into one delta per rollup key (minute, provider, model, route, feature).

    Missing route or feature is the empty string (the key's convention).  A
    latency that is not a finite non-negative number is left out of the
    latency figures (the event still counts as a request).
    """
    out: dict[RollupKey, RollupDelta] = {} if into is None else into
    get = out.get
    fail_index = _FAILURE_INDEX
    none = Failure.NONE
    no_cache = CacheHit.NONE
    isfinite = math.isfinite
    for e in events:
        ts = e.ts_start
        key = (ts - ts % 60.0, e.provider, e.model, e.route or "", e.feature or "")
        d = get(key)
        if d is None:
            d = out[key] = RollupDelta()
        s = d.sums
        s[0] += 1
        if e.failure is not none:
            s[fail_index[e.failure]] += 1
        if e.cache_hit is not no_cache:
            s[_I_CACHE_HITS] += 1
        cost = e.cost_usd
        if cost is None:
            s[_I_COST_UNKNOWN] += 1
        else:
            s[_I_COST] += cost
        s[_I_TOKENS] += e.input_tokens
        s[_I_TOKENS + 1] += e.output_tokens
        s[_I_TOKENS + 2] += e.cache_read_tokens
        s[_I_TOKENS + 3] += e.cache_write_tokens
        s[_I_TOKENS + 4] += e.reasoning_tokens
        lat = e.latency_ms
        if lat is not None and lat >= 0 and isfinite(lat):
            d.latencies.append(lat)
        ttft = e.ttft_ms
        if ttft is not None and ttft >= 0 and isfinite(ttft):
            d.ttfts.append(ttft)
    return out


def _sketch_bytes(stored: bytes | None, values: Sequence[float]) -> bytes | None:
    """The stored sketch with ``values`` added, serialized; ``None`` when both are empty."""
    if not values:
        return stored
    sketch = LatencySketch.from_bytes(stored) if stored else LatencySketch()
    add = sketch._sketch.add  # the checked LatencySketch.add costs a third more; values are finite here
    for v in values:
        add(v)
    return sketch.to_bytes()


def _compiled_upsert(conn: Connection) -> str:
    dialect = conn.dialect
    cached = _upserts.get(dialect.name)
    if cached is not None:
        return cached
    table = ROLLUP_MINUTE
    stmt: Any
    if dialect.name == "postgresql":
        stmt = postgresql.insert(table)
    elif dialect.name == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover - normalize_store_url refuses other backends
        raise NotImplementedError(dialect.name)
    # The merged values were computed in Python under the writer lock: overwrite.
    stmt = stmt.on_conflict_do_update(
        index_elements=list(KEY_COLUMNS),
        set_={c: stmt.excluded[c] for c in (*SUM_COLUMNS, *SKETCH_COLUMNS)},
    )
    compiled = stmt.compile(dialect=dialect, column_keys=list(ROW_COLUMNS))
    sql: str = compiled.string
    if compiled.positional:
        # The driver wants the table's column order; rows are built in ROW_COLUMNS order.
        order = tuple(compiled.positiontup or ())
        assert sorted(order) == sorted(ROW_COLUMNS), f"compiled binds {order} differ from ROW_COLUMNS"
        perm = tuple(ROW_COLUMNS.index(c) for c in order)
        _positional[dialect.name] = None if perm == tuple(range(len(perm))) else perm
    else:
        _positional[dialect.name] = False
    _upserts[dialect.name] = sql
    return sql


_upserts: dict[str, str] = {}
# Per dialect: False for named binds, None for positional in ROW_COLUMNS order, else the permutation.
_positional: dict[str, tuple[int, ...] | bool | None] = {}


def lock_rollups(conn: Connection) -> None:
    """Serialise rollup writers for the rest of the transaction (PostgreSQL; SQLite already is)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_ROLLUP_LOCK})")


def _stored_rows(conn: Connection, keys: Iterable[RollupKey]) -> dict[RollupKey, Any]:
    """Stored rows for these keys, read by minute (a batch holds few distinct minutes)."""
    by_minute: dict[float, set[RollupKey]] = {}
    for k in keys:
        by_minute.setdefault(k[0], set()).add(k)
    minutes = sorted(by_minute)
    cols = [ROLLUP_MINUTE.c[c] for c in ROW_COLUMNS]
    found: dict[RollupKey, Any] = {}
    for i in range(0, len(minutes), _READ_CHUNK):
        chunk = minutes[i : i + _READ_CHUNK]
        rows = conn.execute(select(*cols).where(ROLLUP_MINUTE.c.minute.in_(chunk))).all()
        for row in rows:
            key: RollupKey = (row[0], row[1], row[2], row[3], row[4])
            if key in by_minute.get(key[0], ()):
                found[key] = row
    return found


def merge_rollups(bind: Engine | Connection, deltas: dict[RollupKey, RollupDelta]) -> int:
    """Add ``deltas`` into the stored rollup rows; return how many rows were written.

    Joins the caller's transaction when given a connection in one (the
    pipeline writes events, rollups, quarantine and positions together).
    """
    if not deltas:
        return 0
    with transaction(bind, write=True) as conn:
        lock_rollups(conn)
        sql = _compiled_upsert(conn)
        stored = _stored_rows(conn, deltas.keys())
        first, last = len(KEY_COLUMNS), len(KEY_COLUMNS) + len(SUM_COLUMNS)
        rows: list[tuple[Any, ...]] = []
        for key, d in deltas.items():
            old = stored.get(key)
            latencies, ttfts = d.latencies, d.ttfts
            if old is None:
                sums = list(d.sums)
                lat_old = ttft_old = None
            else:
                sums = [a + b for a, b in zip(old[first:last], d.sums, strict=True)]
                lat_old, ttft_old = old[last], old[last + 1]
            # The latency figures come from the raw values, not from accumulate's counters.
            sums[_I_LAT_N] += len(latencies)
            sums[_I_LAT_SUM] += math.fsum(latencies)
            sums[_I_TTFT_N] += len(ttfts)
            sums[_I_TTFT_SUM] += math.fsum(ttfts)
            for i in _INT_INDEXES:
                sums[i] = int(sums[i])
            rows.append((*key, *sums, _sketch_bytes(lat_old, latencies), _sketch_bytes(ttft_old, ttfts)))
        binds = _positional[conn.dialect.name]
        params: list[Any]
        if binds is False:
            params = [dict(zip(ROW_COLUMNS, r, strict=True)) for r in rows]
        elif binds is None or binds is True:
            params = rows
        else:
            params = [tuple(r[i] for i in binds) for r in rows]
        conn.exec_driver_sql(sql, params)
    return len(rows)


# --- reads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollupTotals:
    """Sums over rollup rows (tests and summaries; the UI's series queries live elsewhere)."""

    requests: int
    failures: dict[str, int]
    cache_hits: int
    cost_unknown: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_n: int
    ttft_n: int
    rows: int


def rollup_totals(
    bind: Engine | Connection, *, since: float | None = None, until: float | None = None
) -> RollupTotals:
    """Totals over minutes in ``[since, until)`` (all when unset)."""
    c = ROLLUP_MINUTE.c
    names = ("n_requests", *FAILURE_COLUMNS, "n_cache_hits", "n_cost_unknown", "input_tokens",
             "output_tokens", "cost_usd", "latency_n", "ttft_n")  # fmt: skip
    stmt = select(*[func.coalesce(func.sum(c[n]), 0) for n in names], func.count())
    if since is not None:
        stmt = stmt.where(c.minute >= since)
    if until is not None:
        stmt = stmt.where(c.minute < until)
    with transaction(bind) as conn:
        row = conn.execute(stmt).one()
    v = dict(zip(names, row[:-1], strict=True))
    return RollupTotals(
        requests=int(v["n_requests"]),
        failures={f.value: int(v[col]) for f, col in FAILURE_COUNT_COLUMNS.items()},
        cache_hits=int(v["n_cache_hits"]),
        cost_unknown=int(v["n_cost_unknown"]),
        input_tokens=int(v["input_tokens"]),
        output_tokens=int(v["output_tokens"]),
        cost_usd=float(v["cost_usd"]),
        latency_n=int(v["latency_n"]),
        ttft_n=int(v["ttft_n"]),
        rows=int(row[-1]),
    )


def merged_sketch(
    bind: Engine | Connection,
    column: str = "latency_sketch",
    *,
    since: float | None = None,
    until: float | None = None,
    **where: str,
) -> LatencySketch:
    """One sketch merged from the rollup rows in ``[since, until)`` matching ``where`` (e.g. model=...)."""
    if column not in SKETCH_COLUMNS:
        raise ValueError(f"not a sketch column: {column!r}")
    c = ROLLUP_MINUTE.c
    stmt = select(c[column]).where(c[column].is_not(None))
    if since is not None:
        stmt = stmt.where(c.minute >= since)
    if until is not None:
        stmt = stmt.where(c.minute < until)
    for name, value in where.items():
        if name not in KEY_COLUMNS[1:]:
            raise ValueError(f"not a rollup dimension: {name!r}")
        stmt = stmt.where(c[name] == value)
    with transaction(bind) as conn:
        blobs = conn.execute(stmt).scalars().all()
    return LatencySketch.merged(LatencySketch.from_bytes(b) for b in blobs)


__all__ = [
    "KEY_COLUMNS",
    "ROW_COLUMNS",
    "SKETCH_COLUMNS",
    "SUM_COLUMNS",
    "RollupDelta",
    "RollupKey",
    "RollupTotals",
    "accumulate",
    "lock_rollups",
    "merge_rollups",
    "merged_sketch",
    "minute_of",
    "rollup_totals",
]
