"""Build the history tiers from the minute rollups and the events; apply retention.

The ingest pipeline writes ``rollup_minute`` (one row per minute and key) and
the events.  Triggers on ``rollup_minute`` mark the 5-minute block of every
row written in ``rollup_dirty``, whichever process wrote it.  Compaction then
rebuilds, per dirty block:

- ``rollup_tier`` at grains 60 and 300 from the block's minute rows, as a cube
  (each dimension a value or ``*``), with the percentiles of each row's sketch;
- ``rollup_user`` at grains 60 and 300 from the block's events;
- the block's outliers (requests far above their route's usual tokens or latency);

then the block's hour from its twelve 300-rows, and marks the day, whose rows
are rebuilt from its 24 hour rows at the end of the pass.  A block's work and
the removal of its mark commit together, so a crash loses nothing: the block
stays marked and is done again.  Queries read the minute rows of blocks that
are still marked (storage/queries/series.py), so a chart is never stale.

Data older than a tier's retention horizon is gone, so it cannot be rebuilt
from: a late record for such an old block (a replayed month-old log) is
*added* to the tier rows that still exist, and its minute rows and events are
then deleted, so it is never counted twice.

Retention horizons are whole UTC days, so a bucket of any grain is either
entirely kept or entirely dropped.
"""

from __future__ import annotations

import itertools
import math
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, Table, and_, delete, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from app.core.event import Failure
from app.core.sketch import LatencySketch
from storage.engine import transaction
from storage.models import (
    ALL,
    DIRTY_BLOCK_S,
    EVENTS,
    FAILURE_COUNT_COLUMNS,
    OUTLIERS,
    ROLLUP_DIRTY,
    ROLLUP_MINUTE,
    ROLLUP_TIER,
    ROLLUP_USER,
)
from storage.queries.events import delete_events_before
from storage.queries.rollups import SUM_COLUMNS, lock_rollups
from storage.queries.sketch_batch import merge_blobs

DAY = 86_400
HOUR = 3_600
BLOCK = DIRTY_BLOCK_S
#: The grains of ``rollup_tier`` and ``rollup_user``, finest first.
TIER_GRAINS: tuple[int, ...] = (60, BLOCK, HOUR, DAY)
DIMS: tuple[str, ...] = ("provider", "model", "route", "feature")
USER_DIMS: tuple[str, ...] = ("user", *DIMS)
MEASURES: tuple[str, ...] = SUM_COLUMNS
SKETCHES: tuple[str, ...] = ("latency_sketch", "ttft_sketch")
PERCENTILES: tuple[int, ...] = (50, 95, 99)
PERCENTILE_COLUMNS: tuple[str, ...] = tuple(f"{m}_p{q}" for m in ("latency", "ttft") for q in PERCENTILES)
_FLOAT_MEASURES = frozenset({"cost_usd", "latency_sum_ms", "ttft_sum_ms"})
_INT_MEASURE_INDEX = tuple(i for i, c in enumerate(MEASURES) if c not in _FLOAT_MEASURES)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


# --- policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of row is kept, in days (``None``: for ever).

    Raw events go first, minute rollups later, coarse tiers much later
    (architecture.md: raw events have a retention period, rollups are kept
    longer).  The order is enforced: a tier is never kept for less time than
    the finer data it is rebuilt from.
    """

    events_days: float | None = 30
    minute_days: float | None = 35
    tier_days: Mapping[int, float | None] = field(
        default_factory=lambda: {60: 3, BLOCK: 35, HOUR: 400, DAY: None}
    )
    outlier_days: float | None = 35

    def __post_init__(self) -> None:
        chain = [
            ("events_days", self.events_days),
            ("minute_days", self.minute_days),
            (f"tier_days[{BLOCK}]", self.tier_days.get(BLOCK)),
            (f"tier_days[{HOUR}]", self.tier_days.get(HOUR)),
            (f"tier_days[{DAY}]", self.tier_days.get(DAY)),
        ]
        for (name_a, a), (name_b, b) in itertools.pairwise(chain):
            if _days(a) > _days(b):
                raise ValueError(f"retention: {name_b} ({b}) must not be shorter than {name_a} ({a})")
        for name, value in [
            *chain,
            ("tier_days[60]", self.tier_days.get(60)),
            ("outlier_days", self.outlier_days),
        ]:
            if value is not None and value <= 0:
                raise ValueError(f"retention: {name} must be positive days or None (for ever), got {value}")
        missing = set(TIER_GRAINS) - set(self.tier_days)
        if missing:
            raise ValueError(f"retention: tier_days needs every grain, missing {sorted(missing)}")

    def horizon(self, days: float | None, now: float) -> float | None:
        """The UTC midnight before which rows are dropped; ``None`` when kept for ever."""
        if days is None:
            return None
        return math.floor((now - days * DAY) / DAY) * DAY

    def tier_horizon(self, grain: int, now: float) -> float | None:
        return self.horizon(self.tier_days[grain], now)


def _days(value: float | None) -> float:
    return math.inf if value is None else value


DEFAULT_RETENTION = RetentionPolicy()


@dataclass(frozen=True)
class OutlierRules:
    """What makes a request an outlier against its route's usual (trailing ``baseline_days``).

    ``tokens``: input + output tokens at least ``tokens_factor`` times the
    route's mean per request.  ``latency``: at least ``latency_factor`` times
    the route's median latency.  A route needs ``min_baseline`` requests of
    history (or, with no history yet, in the block itself) to be judged.
    """

    tokens_factor: float = 10.0
    latency_factor: float = 5.0
    min_baseline: int = 20
    baseline_days: float = 7.0


DEFAULT_OUTLIER_RULES = OutlierRules()


@dataclass
class CompactionResult:
    blocks: int = 0
    hours: int = 0
    days: int = 0
    tier_rows: int = 0
    user_rows: int = 0
    outliers: int = 0
    late_blocks: int = 0  # blocks older than the minute or event retention, added rather than rebuilt
    seconds: float = 0.0
    remaining: int = 0  # dirty blocks left for the next pass (max_blocks reached)


@dataclass
class RetentionResult:
    events: int = 0
    minute_rows: int = 0
    tier_rows: int = 0
    user_rows: int = 0
    outliers: int = 0


# --- columnar batches of rollup rows -----------------------------------------------------


@dataclass
class RowBatch:
    """Rollup rows as columns: bucket starts, dimension values, measures, sketches, and a source grain."""

    bucket: F64
    dims: dict[str, npt.NDArray[Any]]
    measures: F64  # (n, len(MEASURES))
    sketches: tuple[list[bytes | None], list[bytes | None]]

    def __len__(self) -> int:
        return len(self.bucket)

    @classmethod
    def empty(cls, dims: Sequence[str]) -> RowBatch:
        return cls(
            np.zeros(0),
            {d: np.zeros(0, dtype=object) for d in dims},
            np.zeros((0, len(MEASURES))),
            ([], []),
        )

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]], dims: Sequence[str]) -> RowBatch:
        """From rows shaped ``(bucket, *dims, *MEASURES, latency_sketch, ttft_sketch, ...)``."""
        if not rows:
            return cls.empty(dims)
        nd = len(dims)
        cols = list(zip(*rows, strict=False))
        m0 = 1 + nd
        measures = np.array(cols[m0 : m0 + len(MEASURES)], dtype=np.float64).T.reshape(
            len(rows), len(MEASURES)
        )
        return cls(
            np.asarray(cols[0], dtype=np.float64),
            {d: np.asarray(cols[1 + i], dtype=object) for i, d in enumerate(dims)},
            measures,
            (list(cols[m0 + len(MEASURES)]), list(cols[m0 + len(MEASURES) + 1])),
        )

    def concat(self, other: RowBatch) -> RowBatch:
        if not len(other):
            return self
        if not len(self):
            return other
        return RowBatch(
            np.concatenate((self.bucket, other.bucket)),
            {d: np.concatenate((v, other.dims[d])) for d, v in self.dims.items()},
            np.vstack((self.measures, other.measures)),
            (self.sketches[0] + other.sketches[0], self.sketches[1] + other.sketches[1]),
        )


@dataclass
class Aggregate:
    """Rows grouped by (bucket, key): summed measures and merged sketches per group."""

    bucket: F64
    keys: list[tuple[str, ...]]
    measures: F64
    latency: Any  # MergedSketches
    ttft: Any

    def __len__(self) -> int:
        return len(self.bucket)


def aggregate(batch: RowBatch, grain: int, dims: Sequence[str], *, cube: bool) -> Aggregate:
    """Group a batch into ``grain``-second buckets by ``dims``; with ``cube``, also into every roll-up.

    Cube: each row counts towards ``2**len(dims)`` groups, each dimension
    either kept or replaced by :data:`ALL`.  Dimension values are coded as
    integers and the groups found with ``np.unique``: no per-row Python.
    """
    n = len(batch)
    if n == 0:
        return Aggregate(
            np.zeros(0), [], np.zeros((0, len(MEASURES))), merge_blobs([], [], 0), merge_blobs([], [], 0)
        )
    bucket = np.floor(batch.bucket / grain) * grain
    b_labels, b_codes = np.unique(bucket, return_inverse=True)
    codes: list[I64] = []
    labels: list[npt.NDArray[Any]] = []
    for d in dims:
        lab, code = np.unique(batch.dims[d].astype(str), return_inverse=True)
        labels.append(lab)
        codes.append(code.astype(np.int64))
    # Mixed radix: every dimension has its values plus one more code meaning ALL.
    radix = [len(lab) + 1 for lab in labels]
    masks = range(1 << len(dims)) if cube else [(1 << len(dims)) - 1]
    composites = []
    for mask in masks:
        c = b_codes.astype(np.int64)
        for i, d_codes in enumerate(codes):
            kept = d_codes if mask >> i & 1 else np.full(n, radix[i] - 1, dtype=np.int64)
            c = c * radix[i] + kept
        composites.append(c)
    stacked = np.stack(composites)  # (masks, n)
    unique, inverse = np.unique(stacked.reshape(-1), return_inverse=True)
    groups = inverse.reshape(stacked.shape).astype(np.int64)
    g = len(unique)
    flat = groups.reshape(-1)
    measures = np.empty((g, len(MEASURES)))
    for j in range(len(MEASURES)):
        measures[:, j] = np.bincount(flat, weights=np.tile(batch.measures[:, j], len(groups)), minlength=g)
    # Decode the composite back into a bucket and dimension values.
    rest = unique.copy()
    values: list[list[str]] = []
    for i in reversed(range(len(dims))):
        code = rest % radix[i]
        rest //= radix[i]
        lab = labels[i]
        values.append([ALL if c == radix[i] - 1 else str(lab[c]) for c in code.tolist()])
    values.reverse()
    keys: list[tuple[str, ...]] = list(zip(*values, strict=True)) if dims else [() for _ in range(g)]
    return Aggregate(
        b_labels[rest],
        keys,
        measures,
        merge_blobs(batch.sketches[0], groups, g),
        merge_blobs(batch.sketches[1], groups, g),
    )


def _tier_rows(agg: Aggregate, grain: int, *, percentiles: bool) -> list[tuple[Any, ...]]:
    """Row tuples in ``(grain, bucket, *dims, *MEASURES, *SKETCHES[, *PERCENTILE_COLUMNS])`` order."""
    n = len(agg)
    if not n:
        return []
    columns: list[list[Any]] = [[grain] * n, agg.bucket.tolist()]
    columns += [list(c) for c in zip(*agg.keys, strict=True)]
    ints = set(_INT_MEASURE_INDEX)
    for j in range(len(MEASURES)):
        col = agg.measures[:, j]
        columns.append(np.rint(col).astype(np.int64).tolist() if j in ints else col.tolist())
    columns += [agg.latency.to_bytes(), agg.ttft.to_bytes()]
    if percentiles:
        qs = [q / 100 for q in PERCENTILES]
        for merged in (agg.latency, agg.ttft):
            values = merged.quantiles(qs)
            for k in range(len(qs)):
                columns.append([None if math.isnan(v) else v for v in values[:, k].tolist()])
    return list(zip(*columns, strict=True))


# --- reading sources ---------------------------------------------------------------------

_MINUTE_COLUMNS = [ROLLUP_MINUTE.c.minute, *(ROLLUP_MINUTE.c[d] for d in DIMS)] + [
    ROLLUP_MINUTE.c[m] for m in (*MEASURES, *SKETCHES)
]


def read_minute_rows(
    conn: Connection, ranges: Iterable[tuple[float, float]], where: Sequence[ColumnElement[bool]] = ()
) -> RowBatch:
    """Minute rollup rows in the given ``[start, end)`` ranges (and matching ``where``)."""
    spans = list(ranges)
    if not spans:
        return RowBatch.empty(DIMS)
    c = ROLLUP_MINUTE.c
    cond = or_(*[and_(c.minute >= a, c.minute < b) for a, b in spans])
    rows = conn.execute(select(*_MINUTE_COLUMNS).where(cond, *where)).all()
    return RowBatch.from_rows(rows, DIMS)


def _tier_columns(table: Table, dims: Sequence[str]) -> list[Any]:
    return [table.c.bucket, *(table.c[d] for d in dims), *(table.c[m] for m in (*MEASURES, *SKETCHES))]


def _user_cells(rows: Sequence[Any]) -> RowBatch:
    """Per-minute (user, provider, model, route, feature) cells from event rows, sketches built here."""
    cells: dict[tuple[Any, ...], list[Any]] = {}
    fail_index = {f.value: 1 + i for i, f in enumerate(FAILURE_COUNT_COLUMNS)}
    i_cache = 1 + len(FAILURE_COUNT_COLUMNS)
    i_tokens = i_cache + 2
    i_cost = i_tokens + 5
    i_lat_n = i_cost + 1
    isfinite = math.isfinite
    for r in rows:
        ts, user, provider, model, route, feature, failure, cache_hit, cost, *tokens, lat, ttft = r
        key = (ts - ts % 60.0, user, provider, model, route or "", feature or "")
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = [[0.0] * len(MEASURES), [], []]
        s = cell[0]
        s[0] += 1
        if failure != Failure.NONE.value and failure in fail_index:
            s[fail_index[failure]] += 1
        if cache_hit != "none":
            s[i_cache] += 1
        if cost is None:
            s[i_cache + 1] += 1
        else:
            s[i_cost] += cost
        for k in range(5):
            s[i_tokens + k] += tokens[k] or 0
        if lat is not None and lat >= 0 and isfinite(lat):
            cell[1].append(lat)
        if ttft is not None and ttft >= 0 and isfinite(ttft):
            cell[2].append(ttft)
    out_rows = []
    for key, (s, lats, ttfts) in cells.items():
        s[i_lat_n] = len(lats)
        s[i_lat_n + 1] = math.fsum(lats)
        s[i_lat_n + 2] = len(ttfts)
        s[i_lat_n + 3] = math.fsum(ttfts)
        out_rows.append(
            (
                *key,
                *s,
                LatencySketch(lats).to_bytes() if lats else None,
                LatencySketch(ttfts).to_bytes() if ttfts else None,
            )
        )
    return RowBatch.from_rows(out_rows, USER_DIMS)


_EVENT_USER_COLUMNS = [
    EVENTS.c[c]
    for c in (
        "ts_start", "user", "provider", "model", "route", "feature", "failure", "cache_hit", "cost_usd",
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
        "latency_ms", "ttft_ms",
    )
]  # fmt: skip


def read_user_cells(
    conn: Connection, ranges: Iterable[tuple[float, float]], where: Sequence[ColumnElement[bool]] = ()
) -> RowBatch:
    """Per-minute per-user cells computed from the events in the given ranges (events with a user)."""
    spans = list(ranges)
    if not spans:
        return RowBatch.empty(USER_DIMS)
    c = EVENTS.c
    cond = or_(*[and_(c.ts_start >= a, c.ts_start < b) for a, b in spans])
    rows = conn.execute(select(*_EVENT_USER_COLUMNS).where(cond, c.user.is_not(None), *where)).all()
    return _user_cells(rows)


# --- writing -----------------------------------------------------------------------------

_TIER_WRITE = ("grain", "bucket", *DIMS, *MEASURES, *SKETCHES, *PERCENTILE_COLUMNS)
_USER_WRITE = ("grain", "bucket", *USER_DIMS, *MEASURES, *SKETCHES)
_compiled: dict[tuple[str, str], tuple[str, list[int] | None]] = {}


def _insert(conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> int:
    """Insert row tuples (in ``columns`` order) with one driver ``executemany``."""
    if not rows:
        return 0
    key = (conn.dialect.name, table.name)
    compiled = _compiled.get(key)
    if compiled is None:
        c = insert(table).compile(dialect=conn.dialect, column_keys=list(columns))
        # Positional drivers take the table's column order: map our tuples onto it.
        order = [list(columns).index(name) for name in c.positiontup or ()] if c.positional else None
        compiled = _compiled[key] = (c.string, order)
    sql, order = compiled
    params: list[Any]
    if order is None:
        params = [dict(zip(columns, r, strict=True)) for r in rows]
    elif order == list(range(len(columns))):
        params = rows
    else:
        pick = operator.itemgetter(*order)
        params = [pick(r) for r in rows]
    conn.exec_driver_sql(sql, params)
    return len(rows)


def _replace(
    conn: Connection, table: Table, grain: int, span: tuple[float, float], rows: list[tuple[Any, ...]]
) -> int:
    c = table.c
    conn.execute(delete(table).where(c.grain == grain, c.bucket >= span[0], c.bucket < span[1]))
    return _insert(conn, table, _TIER_WRITE if table is ROLLUP_TIER else _USER_WRITE, rows)


def _read_tier(conn: Connection, table: Table, grain: int, start: float, end: float) -> RowBatch:
    dims = DIMS if table is ROLLUP_TIER else USER_DIMS
    c = table.c
    rows = conn.execute(
        select(*_tier_columns(table, dims)).where(c.grain == grain, c.bucket >= start, c.bucket < end)
    ).all()
    return RowBatch.from_rows(rows, dims)


def _rebuild(conn: Connection, table: Table, grain: int, start: float, source: RowBatch) -> int:
    """Replace the ``grain`` rows of ``[start, start + grain)`` with ``source`` (finer tier rows) regrouped.

    Tier rows already hold their roll-ups, so they are grouped as they are, not cubed again.
    """
    cube = table is ROLLUP_TIER
    agg = aggregate(source, grain, DIMS if cube else USER_DIMS, cube=False)
    return _replace(conn, table, grain, (start, start + grain), _tier_rows(agg, grain, percentiles=cube))


def _add_into(conn: Connection, table: Table, grain: int, span: tuple[float, float], delta: RowBatch) -> int:
    """Add ``delta`` (finer rows) into the stored ``grain`` rows of ``[start, end)``: late data."""
    cube = table is ROLLUP_TIER
    dims = DIMS if cube else USER_DIMS
    expanded = aggregate(delta, grain, dims, cube=cube)
    if not len(expanded):
        return 0
    stored = _read_tier(conn, table, grain, *span)
    rows = _tier_rows(expanded, grain, percentiles=False)
    fresh = RowBatch.from_rows([r[1:] for r in rows], dims)
    merged = aggregate(stored.concat(fresh), grain, dims, cube=False)
    return _replace(conn, table, grain, span, _tier_rows(merged, grain, percentiles=cube))


# --- compaction --------------------------------------------------------------------------


def dirty_blocks(
    bind: Engine | Connection, *, since: float | None = None, until: float | None = None
) -> list[float]:
    """Starts of the 5-minute blocks whose minute rows changed since the tiers were built."""
    c = ROLLUP_DIRTY.c
    stmt = select(c.bucket).where(c.grain == BLOCK)
    if since is not None:
        stmt = stmt.where(c.bucket >= since - BLOCK)
    if until is not None:
        stmt = stmt.where(c.bucket < until)
    with transaction(bind) as conn:
        return [float(b) for b in conn.execute(stmt.order_by(c.bucket)).scalars()]


def pending_days(bind: Engine | Connection) -> list[float]:
    """Days whose day rows wait for a rebuild from their hour rows."""
    c = ROLLUP_DIRTY.c
    with transaction(bind) as conn:
        return [
            float(b)
            for b in conn.execute(select(c.bucket).where(c.grain == DAY).order_by(c.bucket)).scalars()
        ]


def compact_rollups(
    bind: Engine | Connection,
    *,
    now: float | None = None,
    policy: RetentionPolicy = DEFAULT_RETENTION,
    rules: OutlierRules = DEFAULT_OUTLIER_RULES,
    max_blocks: int | None = None,
    days_before: float | None = None,
) -> CompactionResult:
    """Bring the tiers up to date with every dirty block (oldest first; at most ``max_blocks``).

    Each hour's blocks are done in one write transaction (the pipeline's
    writer waits for it: keep passes short with ``max_blocks`` when a big
    backfill is pending), then each touched day in one more.  Safe to run
    from several processes: a block is done by whoever removes its mark.

    ``days_before``: rebuild only the pending days that start before it
    (e.g. today's midnight, so the day still being written is rebuilt now and
    then rather than on every pass: until then queries read its hours).
    """
    t0 = time.perf_counter()
    now = time.time() if now is None else now
    result = CompactionResult()
    c = ROLLUP_DIRTY.c
    with transaction(bind) as conn:
        stmt = select(c.bucket).where(c.grain == BLOCK).order_by(c.bucket)
        blocks = [float(b) for b in conn.execute(stmt).scalars()]
    if max_blocks is not None and len(blocks) > max_blocks:
        result.remaining = len(blocks) - max_blocks
        blocks = blocks[:max_blocks]
    baselines: dict[float, dict[str, tuple[float, float, float | None]]] = {}
    by_hour: dict[float, list[float]] = {}
    for b in blocks:
        by_hour.setdefault(b - b % HOUR, []).append(b)
    for hour, hour_blocks in sorted(by_hour.items()):
        with transaction(bind, write=True) as conn:
            lock_rollups(conn)
            still = [
                float(b)
                for b in conn.execute(
                    select(c.bucket).where(c.grain == BLOCK, c.bucket.in_(hour_blocks))
                ).scalars()
            ]
            if not still:
                continue
            conn.execute(delete(ROLLUP_DIRTY).where(c.grain == BLOCK, c.bucket.in_(still)))
            rebuilt_cube, rebuilt_user = _compact_blocks(
                conn, sorted(still), now=now, policy=policy, rules=rules, result=result, baselines=baselines
            )
            if rebuilt_cube:
                result.tier_rows += _rebuild(
                    conn, ROLLUP_TIER, HOUR, hour, _read_tier(conn, ROLLUP_TIER, BLOCK, hour, hour + HOUR)
                )
            if rebuilt_user:
                result.user_rows += _rebuild(
                    conn, ROLLUP_USER, HOUR, hour, _read_tier(conn, ROLLUP_USER, BLOCK, hour, hour + HOUR)
                )
            if rebuilt_cube or rebuilt_user:
                _mark_day(conn, hour - hour % DAY)
                result.hours += 1
            result.blocks += len(still)
    for day in pending_days(bind):
        if days_before is not None and day >= days_before:
            continue
        with transaction(bind, write=True) as conn:
            lock_rollups(conn)
            gone = conn.execute(delete(ROLLUP_DIRTY).where(c.grain == DAY, c.bucket == day)).rowcount
            if not gone:
                continue
            horizon = policy.tier_horizon(HOUR, now)
            if horizon is not None and day < horizon:
                continue  # its hours are gone; late data was added into the day rows directly
            for table in (ROLLUP_TIER, ROLLUP_USER):
                n = _rebuild(conn, table, DAY, day, _read_tier(conn, table, HOUR, day, day + DAY))
                if table is ROLLUP_TIER:
                    result.tier_rows += n
                else:
                    result.user_rows += n
            result.days += 1
    result.seconds = time.perf_counter() - t0
    return result


def _mark_day(conn: Connection, day: float) -> None:
    c = ROLLUP_DIRTY.c
    exists = conn.execute(select(c.id).where(c.grain == DAY, c.bucket == day)).first()
    if exists is None:
        conn.execute(insert(ROLLUP_DIRTY).values(grain=DAY, bucket=day))


def _spans(block: float) -> list[tuple[int, float, float]]:
    """Per grain, the bucket range a block's rows fall in: the block itself up to 300 s, else its hour or day."""
    out = []
    for grain in TIER_GRAINS:
        if grain <= BLOCK:
            out.append((grain, block, block + BLOCK))
        else:
            start = block - block % grain
            out.append((grain, start, start + grain))
    return out


def _within(horizon: float | None, bucket: float) -> bool:
    return horizon is None or bucket >= horizon


def _merge_spans(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and out[-1][1] >= a:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _in_spans(bucket: F64, spans: Sequence[tuple[float, float]]) -> npt.NDArray[np.bool_]:
    mask = np.zeros(len(bucket), dtype=bool)
    for a, b in spans:
        mask |= (bucket >= a) & (bucket < b)
    return mask


def _subset(batch: RowBatch, mask: npt.NDArray[np.bool_]) -> RowBatch:
    if mask.all():
        return batch
    idx = np.flatnonzero(mask)
    return RowBatch(
        batch.bucket[idx],
        {d: v[idx] for d, v in batch.dims.items()},
        batch.measures[idx],
        ([batch.sketches[0][i] for i in idx], [batch.sketches[1][i] for i in idx]),
    )


def _replace_spans(
    conn: Connection,
    table: Table,
    grain: int,
    spans: Sequence[tuple[float, float]],
    rows: list[tuple[Any, ...]],
) -> int:
    if not spans:
        return 0
    c = table.c
    conn.execute(
        delete(table).where(c.grain == grain, or_(*[and_(c.bucket >= a, c.bucket < b) for a, b in spans]))
    )
    return _insert(conn, table, _TIER_WRITE if table is ROLLUP_TIER else _USER_WRITE, rows)


def _rebuild_fine(
    conn: Connection,
    table: Table,
    blocks: Sequence[float],
    source: RowBatch,
    *,
    now: float,
    policy: RetentionPolicy,
) -> int:
    """Replace the 60- and 300-second rows of ``blocks`` with ``source`` (minute rows or user cells) regrouped."""
    cube = table is ROLLUP_TIER
    written = 0
    for grain in (60, BLOCK):
        kept = [b for b in blocks if _within(policy.tier_horizon(grain, now), b)]
        spans = _merge_spans((b, b + BLOCK) for b in kept)
        if not spans:
            continue
        part = _subset(source, _in_spans(source.bucket, spans)) if len(kept) < len(blocks) else source
        agg = aggregate(part, grain, DIMS if cube else USER_DIMS, cube=cube)
        written += _replace_spans(conn, table, grain, spans, _tier_rows(agg, grain, percentiles=cube))
    return written


def _compact_blocks(
    conn: Connection,
    blocks: Sequence[float],
    *,
    now: float,
    policy: RetentionPolicy,
    rules: OutlierRules,
    result: CompactionResult,
    baselines: dict[float, dict[str, tuple[float, float, float | None]]],
) -> tuple[bool, bool]:
    """Blocks of one hour: cube and user tiers at 60 and 300 s, and outliers, in a few statements for all.

    Returns whether the hour's cube and user rows must be rebuilt from its 300-second rows.
    """
    minute_h = policy.horizon(policy.minute_days, now)
    events_h = policy.horizon(policy.events_days, now)
    late: set[float] = set()

    fresh = [b for b in blocks if _within(minute_h, b)]
    if fresh:
        rows = read_minute_rows(conn, _merge_spans((b, b + BLOCK) for b in fresh))
        result.tier_rows += _rebuild_fine(conn, ROLLUP_TIER, fresh, rows, now=now, policy=policy)
    for block in (b for b in blocks if not _within(minute_h, b)):
        late.add(block)
        rows = read_minute_rows(conn, [(block, block + BLOCK)])
        for grain, start, stop in _spans(block):
            if _within(policy.tier_horizon(grain, now), start):
                result.tier_rows += _add_into(conn, ROLLUP_TIER, grain, (start, stop), rows)
        m = ROLLUP_MINUTE.c
        conn.execute(delete(ROLLUP_MINUTE).where(m.minute >= block, m.minute < block + BLOCK))

    fresh_events = [b for b in blocks if _within(events_h, b)]
    if fresh_events:
        spans = _merge_spans((b, b + BLOCK) for b in fresh_events)
        cells = read_user_cells(conn, spans)
        result.user_rows += _rebuild_fine(conn, ROLLUP_USER, fresh_events, cells, now=now, policy=policy)
        o = OUTLIERS.c
        conn.execute(delete(OUTLIERS).where(or_(*[and_(o.ts >= a, o.ts < b) for a, b in spans])))
        result.outliers += _find_outliers(conn, spans, rules, baselines)
    for block in (b for b in blocks if not _within(events_h, b)):
        late.add(block)
        span = [(block, block + BLOCK)]
        cells = read_user_cells(conn, span)
        for grain, start, stop in _spans(block):
            if _within(policy.tier_horizon(grain, now), start):
                result.user_rows += _add_into(conn, ROLLUP_USER, grain, (start, stop), cells)
        result.outliers += _find_outliers(conn, span, rules, baselines)
        e = EVENTS.c
        conn.execute(delete(EVENTS).where(e.ts_start >= block, e.ts_start < block + BLOCK))
    result.late_blocks += len(late)
    return bool(fresh), bool(fresh_events)


# --- outliers ----------------------------------------------------------------------------

_OUTLIER_EVENT_COLUMNS = [
    EVENTS.c[c]
    for c in (
        "event_id",
        "ts_start",
        "provider",
        "model",
        "route",
        "feature",
        "user",
        "input_tokens",
        "output_tokens",
        "latency_ms",
    )
]


def route_baselines(
    conn: Connection, since: float, until: float
) -> dict[str, tuple[float, float, float | None]]:
    """Per route: (requests, mean tokens per request, median latency ms) from the hour tier in ``[since, until)``."""
    t = ROLLUP_TIER.c
    rows = conn.execute(
        select(t.route, t.n_requests, t.input_tokens, t.output_tokens, t.latency_sketch).where(
            t.grain == HOUR, t.bucket >= since, t.bucket < until,
            t.provider == ALL, t.model == ALL, t.feature == ALL, t.route != ALL,
        )
    ).all()  # fmt: skip
    if not rows:
        return {}
    routes = sorted({r[0] for r in rows})
    index = {r: i for i, r in enumerate(routes)}
    gids = [index[r[0]] for r in rows]
    merged = merge_blobs([r[4] for r in rows], gids, len(routes))
    p50 = merged.quantiles([0.5])[:, 0]
    requests = np.bincount(gids, weights=[r[1] for r in rows], minlength=len(routes))
    tokens = np.bincount(gids, weights=[r[2] + r[3] for r in rows], minlength=len(routes))
    return {
        route: (
            float(requests[i]),
            float(tokens[i] / requests[i]) if requests[i] else 0.0,
            None if math.isnan(p50[i]) else float(p50[i]),
        )
        for route, i in index.items()
    }


def detect_outliers(
    conn: Connection,
    spans: Sequence[tuple[float, float]],
    rules: OutlierRules,
    cache: dict[float, dict[str, tuple[float, float, float | None]]],
) -> list[dict[str, Any]]:
    """The outliers among the events in ``spans`` (``[start, end)`` ranges), as ``outliers`` rows (not written).

    Each route is judged against its usual over the ``baseline_days`` before
    the hour of the first span; ``cache`` keeps those baselines per hour
    across calls of one pass.
    """
    if not spans:
        return []
    e = EVENTS.c
    cond = or_(*[and_(e.ts_start >= a, e.ts_start < b) for a, b in spans])
    rows = conn.execute(select(*_OUTLIER_EVENT_COLUMNS).where(cond)).all()
    if not rows:
        return []
    start = min(a for a, _ in spans)
    hour = start - start % HOUR
    baselines = cache.get(hour)
    if baselines is None:
        baselines = cache[hour] = route_baselines(conn, hour - rules.baseline_days * DAY, hour)
    by_route: dict[str, list[Any]] = {}
    for r in rows:
        by_route.setdefault(r.route or "", []).append(r)
    found: list[dict[str, Any]] = []
    for route, events in by_route.items():
        base = baselines.get(route)
        if base is not None and base[0] >= rules.min_baseline:
            _, tokens_mean, latency_p50 = base
        elif len(events) >= rules.min_baseline:
            # No history yet: judge against the block itself (medians resist the outliers being sought).
            tokens_mean = float(np.median([(r.input_tokens or 0) + (r.output_tokens or 0) for r in events]))
            lats = [r.latency_ms for r in events if r.latency_ms is not None and r.latency_ms >= 0]
            latency_p50 = float(np.median(lats)) if lats else None
        else:
            continue
        for r in events:
            tokens = (r.input_tokens or 0) + (r.output_tokens or 0)
            if tokens_mean > 0 and tokens >= rules.tokens_factor * tokens_mean:
                found.append(_outlier(r, "tokens", tokens, tokens_mean))
            lat = r.latency_ms
            if (
                latency_p50
                and lat is not None
                and math.isfinite(lat)
                and lat >= rules.latency_factor * latency_p50
            ):
                found.append(_outlier(r, "latency", lat, latency_p50))
    return found


def _find_outliers(
    conn: Connection,
    spans: Sequence[tuple[float, float]],
    rules: OutlierRules,
    cache: dict[float, dict[str, tuple[float, float, float | None]]],
) -> int:
    """Record the outliers in ``spans``; one already recorded stays recorded once."""
    found = detect_outliers(conn, spans, rules, cache)
    if not found:
        return 0
    table = OUTLIERS
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=["event_id", "kind"])
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["event_id", "kind"])
    conn.execute(stmt, found)
    return len(found)


def _outlier(r: Any, kind: str, value: float, baseline: float) -> dict[str, Any]:
    return {
        "event_id": r.event_id, "ts": r.ts_start, "kind": kind, "provider": r.provider, "model": r.model,
        "route": r.route or "", "feature": r.feature or "", "user": r.user, "value": float(value),
        "baseline": float(baseline), "ratio": float(value) / baseline,
    }  # fmt: skip


# --- retention ---------------------------------------------------------------------------


def apply_retention(
    bind: Engine | Connection, *, now: float | None = None, policy: RetentionPolicy = DEFAULT_RETENTION
) -> RetentionResult:
    """Drop what is older than the policy keeps.  Blocks still waiting for compaction are kept."""
    now = time.time() if now is None else now
    result = RetentionResult()
    pending = dirty_blocks(bind)

    def keep_pending(column: Any, before: float) -> list[ColumnElement[bool]]:
        return [~and_(column >= b, column < b + BLOCK) for b in pending if b < before]

    horizon = policy.horizon(policy.events_days, now)
    if horizon is not None:
        if any(b < horizon for b in pending):
            with transaction(bind, write=True) as conn:
                e = EVENTS.c
                result.events = int(
                    conn.execute(
                        delete(EVENTS).where(e.ts_start < horizon, *keep_pending(e.ts_start, horizon))
                    ).rowcount
                )
        else:
            result.events = delete_events_before(bind, horizon)
    with transaction(bind, write=True) as conn:
        horizon = policy.horizon(policy.minute_days, now)
        if horizon is not None:
            m = ROLLUP_MINUTE.c
            result.minute_rows = int(
                conn.execute(
                    delete(ROLLUP_MINUTE).where(m.minute < horizon, *keep_pending(m.minute, horizon))
                ).rowcount
            )
        for grain in TIER_GRAINS:
            horizon = policy.tier_horizon(grain, now)
            if horizon is None:
                continue
            for table in (ROLLUP_TIER, ROLLUP_USER):
                c = table.c
                n = int(conn.execute(delete(table).where(c.grain == grain, c.bucket < horizon)).rowcount)
                if table is ROLLUP_TIER:
                    result.tier_rows += n
                else:
                    result.user_rows += n
        horizon = policy.horizon(policy.outlier_days, now)
        if horizon is not None:
            result.outliers = int(conn.execute(delete(OUTLIERS).where(OUTLIERS.c.ts < horizon)).rowcount)
    return result


__all__ = [
    "ALL",
    "BLOCK",
    "DAY",
    "DEFAULT_OUTLIER_RULES",
    "DEFAULT_RETENTION",
    "DIMS",
    "HOUR",
    "MEASURES",
    "PERCENTILES",
    "PERCENTILE_COLUMNS",
    "TIER_GRAINS",
    "USER_DIMS",
    "Aggregate",
    "CompactionResult",
    "OutlierRules",
    "RetentionPolicy",
    "RetentionResult",
    "RowBatch",
    "aggregate",
    "apply_retention",
    "compact_rollups",
    "detect_outliers",
    "dirty_blocks",
    "pending_days",
    "read_minute_rows",
    "read_user_cells",
    "route_baselines",
]
