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
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from app.core.event import CacheHit, Event, Failure
from app.core.sketch import LatencySketch
from storage.engine import transaction
from storage.models import FAILURE_COUNT_COLUMNS, ROLLUP_MINUTE
from storage.queries.events import EVENT_COLUMNS
from storage.queries.sketch_batch import PreparedValues, add_prepared, merge_prepared, prepare_values

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


# Positions of the columns the rollups read in an event row (storage.queries.events.EVENT_COLUMNS).
_R = {name: i for i, name in enumerate(EVENT_COLUMNS)}
_R_TS, _R_PROVIDER, _R_MODEL, _R_ROUTE, _R_FEATURE = (
    _R["ts_start"], _R["provider"], _R["model"], _R["route"], _R["feature"]
)  # fmt: skip
_R_FAILURE, _R_CACHE_HIT, _R_COST = _R["failure"], _R["cache_hit"], _R["cost_usd"]
_R_LAT, _R_TTFT = _R["latency_ms"], _R["ttft_ms"]
_R_TOKENS = tuple(_R[c] for c in ("input_tokens", "output_tokens", "cache_read_tokens",
                                  "cache_write_tokens", "reasoning_tokens"))  # fmt: skip
# A failure value (or the Failure itself: a StrEnum hashes as its value) -> its counter's position.
_FAILURE_SLOT: dict[str, int] = {f.value: i for i, f in enumerate(FAILURE_COUNT_COLUMNS)}
_FAILURE_SLOT[Failure.NONE.value] = len(FAILURE_COLUMNS)
_EXACT_FLOAT_INT = 1 << 53


def _column(rows: Sequence[Sequence[Any]], i: int) -> list[Any]:
    return list(map(itemgetter(i), rows))


def _floats(rows: Sequence[Sequence[Any]], i: int) -> npt.NDArray[np.float64]:
    return np.fromiter(map(itemgetter(i), rows), dtype=np.float64, count=len(rows))


def _optional_floats(values: list[Any]) -> npt.NDArray[np.float64]:
    """The values as floats, ``None`` as NaN."""
    if None in values:
        nan = math.nan
        values = [nan if v is None else v for v in values]
    return np.array(values, dtype=np.float64)


def _usable(values: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Which values go into the latency figures: finite and not negative."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0)


def _int_sums(gid: npt.NDArray[np.int64], rows: Sequence[Sequence[Any]], i: int, n: int) -> list[int]:
    arr = np.fromiter(map(itemgetter(i), rows), dtype=np.int64, count=len(rows))
    if len(arr) and int(np.abs(arr).sum()) < _EXACT_FLOAT_INT:  # float sums are exact below 2**53
        return [int(x) for x in np.bincount(gid, weights=arr, minlength=n).tolist()]
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, gid, arr)
    return [int(x) for x in out.tolist()]


def _fsums(gid: npt.NDArray[np.int64], values: npt.NDArray[np.float64], n: int) -> list[float]:
    """``math.fsum`` per group (the latency sums are exact sums, as :func:`merge_rollups` writes them)."""
    order = np.argsort(gid, kind="stable")
    bounds = np.searchsorted(gid[order], np.arange(n + 1)).tolist()
    ordered = values[order].tolist()
    fsum = math.fsum
    return [fsum(ordered[bounds[g] : bounds[g + 1]]) if bounds[g + 1] > bounds[g] else 0.0 for g in range(n)]


def _group_ids(rows: Sequence[Sequence[Any]]) -> tuple[npt.NDArray[np.int64], list[RollupKey]]:
    """Each row's rollup key as an index into the batch's distinct keys."""
    ts = _floats(rows, _R_TS)
    minutes = ts - ts % 60.0
    # Distinct dimensions through a dict (C-level loops: dict.fromkeys, map), minutes through numpy;
    # route and feature may be None here, normalised to "" per distinct key below.
    dims = list(map(itemgetter(_R_PROVIDER, _R_MODEL, _R_ROUTE, _R_FEATURE), rows))
    dim_list = list(dict.fromkeys(dims))
    dim_id = {k: j for j, k in enumerate(dim_list)}
    dim_of_row = np.fromiter(map(dim_id.__getitem__, dims), dtype=np.int64, count=len(dims))
    unique_minutes, minute_of_row = np.unique(minutes, return_inverse=True)
    width = len(unique_minutes)
    cells, cell_of_row = np.unique(dim_of_row * width + minute_of_row.reshape(-1), return_inverse=True)
    index: dict[RollupKey, int] = {}
    remap = np.empty(len(cells), dtype=np.int64)
    minute_values = unique_minutes.tolist()
    for j, cell in enumerate(cells.tolist()):
        provider, model, route, feature = dim_list[cell // width]
        key: RollupKey = (minute_values[cell % width], provider, model, route or "", feature or "")
        remap[j] = index.setdefault(key, len(index))
    return remap[cell_of_row.reshape(-1)], list(index)


@dataclass(slots=True)
class RowsRollup:
    """The rollups of a batch of event rows, computed apart from the store (:func:`rollup_of_rows`).

    ``keys[g]`` is group ``g``'s rollup key, ``sums[g]`` its :data:`SUM_COLUMNS`
    and ``sketches`` the latency and TTFT values prepared per group.  Only
    :func:`apply_rows_rollup` touches the store, so the ingest's parser
    process makes this and the writer only adds it in.  It is picklable: plain
    lists and numpy arrays.
    """

    keys: list[RollupKey]
    sums: list[list[Any]]
    sketches: tuple[PreparedValues, PreparedValues]
    rows: int  # how many event rows it sums


def merge_rows_rollups(parts: Sequence[RowsRollup]) -> RowsRollup:
    """Several batches' rollups as one (the writer joins queued batches into one transaction).

    Keys shared by the parts (the minute where one batch ends and the next
    begins) are summed, so the store is read and written once per key.
    """
    if len(parts) == 1:
        return parts[0]
    index: dict[RollupKey, int] = {}
    sums: list[list[Any]] = []
    remaps: list[npt.NDArray[np.int64]] = []
    for part in parts:
        remap = np.empty(len(part.keys), dtype=np.int64)
        for g, (key, part_sums) in enumerate(zip(part.keys, part.sums, strict=True)):
            at = index.setdefault(key, len(index))
            if at == len(sums):
                sums.append(list(part_sums))
            else:
                sums[at] = [a + b for a, b in zip(sums[at], part_sums, strict=True)]
            remap[g] = at
        remaps.append(remap)
    n = len(index)
    sketches = tuple(
        merge_prepared([(part.sketches[j], remap) for part, remap in zip(parts, remaps, strict=True)], n)
        for j in range(len(SKETCH_COLUMNS))
    )
    return RowsRollup(list(index), sums, (sketches[0], sketches[1]), sum(p.rows for p in parts))


def rollup_of_rows(rows: Sequence[Sequence[Any]]) -> RowsRollup:
    """Sum event rows (:data:`storage.queries.events.EVENT_COLUMNS` order) per rollup key, without the store.

    Keys are found in one pass, every sum is a ``numpy.bincount`` and the
    sketch values are binned in a few numpy operations
    (:func:`storage.queries.sketch_batch.prepare_values`).
    """
    gid, keys = _group_ids(rows) if rows else (np.zeros(0, np.int64), [])
    n = len(keys)
    new: list[list[Any]] = [[0] * len(SUM_COLUMNS) for _ in range(n)]
    columns: dict[int, list[float] | list[int]] = {_I_REQUESTS: np.bincount(gid, minlength=n).tolist()}
    width = len(FAILURE_COLUMNS) + 1
    fails = np.fromiter(
        map(_FAILURE_SLOT.__getitem__, map(itemgetter(_R_FAILURE), rows)), dtype=np.int64, count=len(rows)
    )
    by_failure = np.bincount(gid * width + fails, minlength=n * width).reshape(n, width)
    for i, f in enumerate(FAILURE_COUNT_COLUMNS):
        columns[_FAILURE_INDEX[f]] = by_failure[:, i].tolist()
    hit_values = _column(rows, _R_CACHE_HIT)
    hits = np.array([c != "none" for c in hit_values], dtype=np.float64)
    columns[_I_CACHE_HITS] = np.bincount(gid, weights=hits, minlength=n).astype(np.int64).tolist()
    cost = _optional_floats(_column(rows, _R_COST))
    unknown = np.isnan(cost)
    columns[_I_COST_UNKNOWN] = np.bincount(gid[unknown], minlength=n).tolist()
    cost[unknown] = 0.0
    columns[_I_COST] = np.bincount(gid, weights=cost, minlength=n).tolist()  # in row order, as += would
    for k, i in enumerate(_R_TOKENS):
        columns[_I_TOKENS + k] = _int_sums(gid, rows, i, n)
    sketches: list[PreparedValues] = []
    for raw, i_n, i_sum in ((_R_LAT, _I_LAT_N, _I_LAT_SUM), (_R_TTFT, _I_TTFT_N, _I_TTFT_SUM)):
        values = _optional_floats(_column(rows, raw))
        usable = _usable(values)
        kept, kept_gid = values[usable], gid[usable]
        columns[i_n] = np.bincount(kept_gid, minlength=n).tolist()
        columns[i_sum] = _fsums(kept_gid, kept, n)
        sketches.append(prepare_values(kept, kept_gid, n))
    for i, col in columns.items():
        for g, v in enumerate(col):
            new[g][i] = v
    return RowsRollup(keys, new, (sketches[0], sketches[1]), len(rows))


def apply_rows_rollup(bind: Engine | Connection, rollup: RowsRollup) -> int:
    """Add a :class:`RowsRollup` into the stored rollup rows; return how many rows were written.

    Joins the caller's transaction when given a connection in one.  The stored
    rows come out as :func:`merge_rollups` writes them for the same events
    (the sketches' running sums may differ in the last bits).
    """
    keys = rollup.keys
    if not keys:
        return 0
    with transaction(bind, write=True) as conn:
        lock_rollups(conn)
        sql = _compiled_upsert(conn)
        stored = _stored_rows(conn, keys)
        first, last = len(KEY_COLUMNS), len(KEY_COLUMNS) + len(SUM_COLUMNS)
        olds = [stored.get(k) for k in keys]
        sketches = [
            add_prepared([o[last + j] if o is not None else None for o in olds], prepared)
            for j, prepared in enumerate(rollup.sketches)
        ]
        out: list[tuple[Any, ...]] = []
        for g, (key, old, new) in enumerate(zip(keys, olds, rollup.sums, strict=True)):
            sums = new if old is None else [a + b for a, b in zip(old[first:last], new, strict=True)]
            out.append((*key, *sums, sketches[0][g], sketches[1][g]))
        binds = _positional[conn.dialect.name]
        params: list[Any]
        if binds is False:
            params = [dict(zip(ROW_COLUMNS, r, strict=True)) for r in out]
        elif binds is None or binds is True:
            params = out
        else:
            params = list(map(itemgetter(*binds), out))
        conn.exec_driver_sql(sql, params)
    return len(out)


def merge_rollup_rows(bind: Engine | Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Add newly stored event rows (:data:`storage.queries.events.EVENT_COLUMNS` order) into the rollups.

    The columnar twin of ``merge_rollups(conn, accumulate(events))``, for the
    ingest path that never builds :class:`Event` objects:
    :func:`rollup_of_rows`, then :func:`apply_rows_rollup`.  The stored rows
    come out the same (the sketches' running sums may differ in the last
    bits).  Returns how many rollup rows were written.
    """
    if not rows:
        return 0
    return apply_rows_rollup(bind, rollup_of_rows(rows))


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
    "RowsRollup",
    "accumulate",
    "apply_rows_rollup",
    "lock_rollups",
    "merge_rollup_rows",
    "merge_rollups",
    "merge_rows_rollups",
    "merged_sketch",
    "minute_of",
    "rollup_of_rows",
    "rollup_totals",
]
