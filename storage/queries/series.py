"""History queries for the UI: time series, top-N, outliers, reconciliation — from rollups only.

Where the rows come from
    ``rollup_tier`` (a cube per grain of 60 s, 5 min, 1 h, 1 day: see
    storage/queries/compaction.py) for provider / model / route / feature,
    ``rollup_user`` when a user is filtered on or split by.  A 5-minute block
    whose minute rows changed since the tiers were built (``rollup_dirty``)
    is read from ``rollup_minute`` (or, for users, from its events) instead,
    and the coarser buckets around it from the next finer tier: a chart is
    never stale, and never scans more raw rows than the few blocks written
    since the last compaction.

How the step is chosen (:func:`plan_series`)
    The finest step from a fixed ladder (1, 2, 5, 10, 15, 30 min, 1, 2, 3, 6,
    12 h, 1, 2, 7 days) that gives at most ``max_points`` buckets and reads
    at most ``max_rows`` source rows per series, from the coarsest tier whose
    grain divides the step and whose retention covers the window.  30 days:
    1-hour steps from the hour tier (720 points, 720 rows per series);
    24 hours: 1-minute steps; 90 days: 2-hour steps.

Percentiles
    Counts and sums are added with numpy.  Latency and TTFT percentiles come
    from the tier rows' stored percentiles when one row makes one point (the
    step is the tier's grain and the filter picks one cube cell); otherwise
    the sketches of the rows behind each point are merged, all at once, by
    storage/queries/sketch_batch.py.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, Integer, Table, and_, case, cast, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from storage.engine import transaction
from storage.models import (
    ALL,
    EVENTS,
    FAILURE_COUNT_COLUMNS,
    OUTLIERS,
    PROVIDER_USAGE,
    PROVIDERS,
    ROLLUP_DIRTY,
    ROLLUP_MINUTE,
    ROLLUP_TIER,
    ROLLUP_USER,
)
from storage.queries.compaction import (
    BLOCK,
    DAY,
    DEFAULT_OUTLIER_RULES,
    DEFAULT_RETENTION,
    DIMS,
    HOUR,
    MEASURES,
    TIER_GRAINS,
    USER_DIMS,
    OutlierRules,
    RetentionPolicy,
    RowBatch,
    detect_outliers,
    read_minute_rows,
    read_user_cells,
)
from storage.queries.sketch_batch import merge_blobs

F64 = npt.NDArray[np.float64]

#: The dimensions a series can be filtered on or split by.
DIMENSIONS: tuple[str, ...] = ("provider", "model", "route", "feature", "user")

#: Steps a chart may use, in seconds.
STEP_LADDER: tuple[int, ...] = (
    60, 120, 300, 600, 900, 1800, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY,
)  # fmt: skip
MAX_POINTS = 1500
MAX_ROWS_PER_SERIES = 3000
MIN_WINDOW_S = 60
MAX_WINDOW_S = 400 * DAY

_M = {name: i for i, name in enumerate(MEASURES)}
_FAILURE_INDEXES = [_M[c] for c in FAILURE_COUNT_COLUMNS.values()]
_QUANTILE_RE = re.compile(r"^(latency|ttft)_p(\d{1,2}(?:\.\d+)?)$")
_STORED_PERCENTILES = {50.0: "p50", 95.0: "p95", 99.0: "p99"}


class QueryError(ValueError):
    """A query the store cannot answer as asked: the message says what to change."""


# --- metrics -----------------------------------------------------------------------------

_SUMS: dict[str, tuple[str, ...]] = {
    "requests": ("n_requests",),
    "failures": tuple(FAILURE_COUNT_COLUMNS.values()),
    "cache_hits": ("n_cache_hits",),
    "cost_unknown": ("n_cost_unknown",),
    "input_tokens": ("input_tokens",),
    "output_tokens": ("output_tokens",),
    "cache_read_tokens": ("cache_read_tokens",),
    "cache_write_tokens": ("cache_write_tokens",),
    "reasoning_tokens": ("reasoning_tokens",),
    "tokens": ("input_tokens", "output_tokens"),
    "cost_usd": ("cost_usd",),
    **{f"failure:{f.value}": (col,) for f, col in FAILURE_COUNT_COLUMNS.items()},
}
_RATIOS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "failure_rate": (tuple(FAILURE_COUNT_COLUMNS.values()), ("n_requests",)),
    "cache_hit_rate": (("n_cache_hits",), ("n_requests",)),
    "latency_mean": (("latency_sum_ms",), ("latency_n",)),
    "ttft_mean": (("ttft_sum_ms",), ("ttft_n",)),
}


@dataclass(frozen=True)
class Metric:
    """A parsed metric name: a sum of measures, a ratio of sums, or a quantile of a sketch."""

    name: str
    kind: str  # sum | ratio | quantile
    numerator: tuple[int, ...] = ()
    denominator: tuple[int, ...] = ()
    sketch: int = 0  # 0 latency, 1 ttft
    q: float = 0.0


def parse_metric(name: str) -> Metric:
    """``requests``, ``failures``, ``failure:<type>``, ``cache_hits``, ``cost_unknown``, token sums,
    ``tokens``, ``cost_usd``, ``failure_rate``, ``cache_hit_rate``, ``latency_mean``, ``ttft_mean``,
    ``latency_pNN`` and ``ttft_pNN`` (any percentile, e.g. ``latency_p95``, ``ttft_p99.9``)."""
    if name in _SUMS:
        return Metric(name, "sum", tuple(_M[c] for c in _SUMS[name]))
    if name in _RATIOS:
        num, den = _RATIOS[name]
        return Metric(name, "ratio", tuple(_M[c] for c in num), tuple(_M[c] for c in den))
    m = _QUANTILE_RE.match(name)
    if m:
        q = float(m.group(2))
        if not 0 < q < 100:
            raise QueryError(f"metric {name!r}: a percentile must be between 0 and 100")
        return Metric(name, "quantile", sketch=0 if m.group(1) == "latency" else 1, q=q)
    known = sorted(
        [*_SUMS, *_RATIOS, "latency_p50", "latency_p95", "latency_p99", "ttft_p50", "ttft_p95", "ttft_p99"]
    )
    raise QueryError(f"unknown metric {name!r}; known: {', '.join(known)} (any latency_pNN / ttft_pNN)")


# --- filters and plans -------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesFilter:
    """What the filter bar selects.  A value is one name or a tuple of names (any of them)."""

    provider: str | tuple[str, ...] | None = None
    model: str | tuple[str, ...] | None = None
    route: str | tuple[str, ...] | None = None
    feature: str | tuple[str, ...] | None = None
    user: str | tuple[str, ...] | None = None

    def items(self) -> list[tuple[str, tuple[str, ...]]]:
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            values = (value,) if isinstance(value, str) else tuple(value)
            if not values:
                raise QueryError(f"filter {f.name}: an empty list matches nothing; leave it unset for all")
            out.append((f.name, values))
        return out

    def with_(self, dim: str, values: tuple[str, ...]) -> SeriesFilter:
        kwargs: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs[dim] = values
        return SeriesFilter(**kwargs)


NO_FILTER = SeriesFilter()


@dataclass(frozen=True)
class Plan:
    """Buckets of ``step`` seconds over ``[start, end)``, read from the tier of ``grain`` seconds."""

    start: float
    end: float
    step: int
    grain: int

    @property
    def points(self) -> int:
        return round((self.end - self.start) / self.step)


def plan_series(
    since: float,
    until: float,
    *,
    max_points: int = MAX_POINTS,
    max_rows: int = MAX_ROWS_PER_SERIES,
    step: int | None = None,
    now: float | None = None,
    policy: RetentionPolicy = DEFAULT_RETENTION,
) -> Plan:
    """The step and source tier for a chart of ``[since, until)``."""
    _check_window(since, until)
    now = time.time() if now is None else now
    usable = [g for g in TIER_GRAINS if _within(policy.tier_horizon(g, now), since)]
    if not usable:  # older than every tier but the day tier's horizon: days are all there is
        usable = [DAY]
    if step is not None:
        if step < 60 or step % 60:
            raise QueryError(f"step must be a whole number of minutes (>= 60 s), got {step}")
        grains = [g for g in usable if step % g == 0]
        if not grains:
            raise QueryError(
                f"no rollup tier is kept long enough for a {step} s step from {since:.0f}; use a step that is "
                f"a multiple of {usable[0]} s"
            )
        return _aligned(since, until, step, grains[-1])
    for s in STEP_LADDER:
        grains = [g for g in usable if s % g == 0]
        if not grains:
            continue
        grain = grains[-1]
        plan = _aligned(since, until, s, grain)
        if plan.points <= max_points and (plan.end - plan.start) / grain <= max_rows:
            return plan
    last = STEP_LADDER[-1]
    return _aligned(since, until, last, max(g for g in usable if last % g == 0))


def _aligned(since: float, until: float, step: int, grain: int) -> Plan:
    start = math.floor(since / step) * step
    end = math.ceil(until / step) * step
    if end <= start:
        end = start + step
    return Plan(float(start), float(end), step, grain)


def _check_window(since: float, until: float) -> None:
    for name, v in (("since", since), ("until", until)):
        if not isinstance(v, int | float) or math.isnan(v) or math.isinf(v):
            raise QueryError(f"{name} must be epoch seconds, got {v!r}")
    if until <= since:
        raise QueryError(f"the window is empty: until ({until}) must be after since ({since})")
    if until - since > MAX_WINDOW_S:
        raise QueryError(
            f"the window is {((until - since) / DAY):.0f} days; at most {MAX_WINDOW_S // DAY} days"
        )


def _within(horizon: float | None, t: float) -> bool:
    return horizon is None or t >= horizon


# --- which rows cover a window -----------------------------------------------------------


@dataclass
class Cover:
    """The sources that cover a window: tier rows per grain, and raw ranges for dirty blocks."""

    tiers: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    raw: list[tuple[float, float]] = field(default_factory=list)
    dirty_blocks: int = 0

    def add(self, grain: int | None, a: float, b: float) -> None:
        spans = self.raw if grain is None else self.tiers.setdefault(grain, [])
        if spans and spans[-1][1] == a:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))


def cover(
    a: float,
    b: float,
    coarsest: int,
    *,
    dirty: Sequence[float],
    pending_days: Iterable[float] = (),
    usable: Sequence[int] = TIER_GRAINS,
) -> Cover:
    """Split ``[a, b)`` (minute-aligned) into tier ranges (coarsest first) and raw ranges for dirty blocks.

    A bucket is read from its tier when it is whole inside the window, holds
    no dirty block, is not a day awaiting its rebuild, and its tier is
    ``usable`` (kept for that long); otherwise it is split into the next finer
    grain.  A dirty block is read raw.  When no finer tier is usable, a
    partial bucket is read whole (the window widens to it).
    """
    out = Cover()
    dirty_set = {float(d) for d in dirty}
    pending = {float(d) for d in pending_days}
    levels = [g for g in TIER_GRAINS if g <= coarsest and g in usable]
    if not levels:
        levels = [coarsest]
    levels.sort(reverse=True)
    out.dirty_blocks = sum(1 for d in dirty_set if a - BLOCK < d < b)

    def bucket_dirty(g: int, x: float) -> bool:
        if g >= BLOCK:
            first = x - x % BLOCK
            return any(first + k * BLOCK in dirty_set for k in range(max(1, g // BLOCK))) or (
                g == DAY and x in pending
            )
        return (x - x % BLOCK) in dirty_set

    def walk(lo: float, hi: float, level: int) -> None:
        g = levels[level]
        finer = level + 1 < len(levels)
        x = math.floor(lo / g) * g
        while x < hi:
            y = x + g
            whole = x >= lo and y <= hi
            if whole and not bucket_dirty(g, x):
                out.add(g, x, y)
            elif finer:
                walk(max(x, lo), min(y, hi), level + 1)
            elif bucket_dirty(g, x):
                # The finest usable tier is stale here: read the block's raw rows.
                blk = x - x % BLOCK
                out.add(None, max(x, blk), min(y, blk + BLOCK))
            else:
                out.add(g, x, y)
            x = y

    walk(a, b, 0)
    return out


def _dirty(conn: Connection, a: float, b: float, horizon: float | None) -> tuple[list[float], list[float]]:
    """Dirty blocks overlapping ``[a, b)`` and newer than ``horizon``; pending days in it."""
    c = ROLLUP_DIRTY.c
    rows = conn.execute(
        select(c.grain, c.bucket).where(
            or_(
                and_(c.grain == BLOCK, c.bucket > a - BLOCK, c.bucket < b),
                and_(c.grain == DAY, c.bucket >= a - DAY, c.bucket < b),
            )
        )
    ).all()
    blocks = [float(r[1]) for r in rows if r[0] == BLOCK and _within(horizon, r[1])]
    days = [float(r[1]) for r in rows if r[0] == DAY]
    return blocks, days


# --- fetching rows -----------------------------------------------------------------------


@dataclass
class _Fetched:
    """Rows behind a query: their bucket, group label, measures, sketches, and stored percentiles."""

    bucket: F64
    group: list[str]
    measures: F64
    sketches: tuple[list[bytes | None], list[bytes | None]]
    stored: F64  # (n, 6): latency p50 p95 p99, ttft p50 p95 p99; NaN where not stored
    grain: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.bucket)


def _dims_where(
    table: Table, dims: Sequence[str], filters: SeriesFilter, group_by: str | None, *, cube: bool
) -> list[ColumnElement[bool]]:
    given = dict(filters.items())
    out: list[ColumnElement[bool]] = []
    for d in dims:
        col = table.c[d]
        if d in given:
            values = given[d]
            out.append(col == values[0] if len(values) == 1 else col.in_(values))
        elif d == group_by:
            if cube:
                out.append(col != ALL)
        elif cube:
            out.append(col == ALL)
    return out


def _fetch(
    conn: Connection,
    cov: Cover,
    *,
    user_family: bool,
    filters: SeriesFilter,
    group_by: str | None,
    sketches: bool,
    stored_only_grain: int | None = None,
) -> _Fetched:
    """The rows behind a query.  ``stored_only_grain``: rows of that tier grain are each alone in their
    point and only their stored percentiles are needed, so their sketches are not read at all."""
    table = ROLLUP_USER if user_family else ROLLUP_TIER
    dims = USER_DIMS if user_family else DIMS
    parts: list[_Fetched] = []
    base: list[Any] = [table.c.grain, table.c.bucket, table.c[group_by] if group_by else table.c.grain]
    base += [table.c[m] for m in MEASURES]
    blobs = [table.c.latency_sketch, table.c.ttft_sketch]
    stored = [] if user_family else [table.c[f"{m}_p{q}"] for m in ("latency", "ttft") for q in (50, 95, 99)]
    where = _dims_where(table, dims, filters, group_by, cube=not user_family)
    for grain, spans in cov.tiers.items():
        with_blobs = sketches and grain != stored_only_grain
        cols = base + (blobs if with_blobs else []) + (stored if sketches else [])
        for chunk in _chunks(spans, 200):
            ranges = or_(*[and_(table.c.bucket >= x, table.c.bucket < y) for x, y in chunk])
            rows = conn.execute(select(*cols).where(table.c.grain == grain, ranges, *where)).all()
            parts.append(_from_tier_rows(rows, group_by, blobs=with_blobs, stored=sketches and bool(stored)))
    if cov.raw:
        if user_family:
            batch = read_user_cells(conn, cov.raw, _event_where(filters))
        else:
            batch = read_minute_rows(
                conn, cov.raw, _dims_where(ROLLUP_MINUTE, DIMS, filters, None, cube=False)
            )
        parts.append(_from_batch(batch, group_by))
    return _concat(parts)


def _event_where(filters: SeriesFilter) -> list[ColumnElement[bool]]:
    """Filters on the events table, where a missing route or feature is NULL rather than ``""``."""
    out: list[ColumnElement[bool]] = []
    for d, values in filters.items():
        col = EVENTS.c[d]
        cond: ColumnElement[bool] = col.in_(values)
        if d in ("route", "feature") and "" in values:
            cond = or_(cond, col.is_(None))
        out.append(cond)
    return out


def _chunks(spans: list[tuple[float, float]], n: int) -> Iterable[list[tuple[float, float]]]:
    for i in range(0, len(spans), n):
        yield spans[i : i + n]


def _from_tier_rows(rows: Sequence[Any], group_by: str | None, *, blobs: bool, stored: bool) -> _Fetched:
    n = len(rows)
    if not n:
        return _empty_fetched()
    cols = list(zip(*rows, strict=True))
    m0 = 3
    measures = np.array(cols[m0 : m0 + len(MEASURES)], dtype=np.float64).T.reshape(n, len(MEASURES))
    p0 = m0 + len(MEASURES)
    sk: tuple[list[bytes | None], list[bytes | None]] = ([None] * n, [None] * n)
    if blobs:
        sk = (list(cols[p0]), list(cols[p0 + 1]))
        p0 += 2
    if stored:
        st = np.array(
            [[np.nan if v is None else v for v in cols[p0 + k]] for k in range(6)], dtype=np.float64
        ).T.reshape(n, 6)
    else:
        st = np.full((n, 6), np.nan)
    return _Fetched(
        np.asarray(cols[1], dtype=np.float64),
        [str(v) for v in cols[2]] if group_by else [""] * n,
        measures,
        sk,
        st,
        np.asarray(cols[0], dtype=np.int64),
    )


def _from_batch(batch: RowBatch, group_by: str | None) -> _Fetched:
    n = len(batch)
    if not n:
        return _empty_fetched()
    return _Fetched(
        batch.bucket,
        [str(v) for v in batch.dims[group_by]] if group_by else [""] * n,
        batch.measures,
        batch.sketches,
        np.full((n, 6), np.nan),
        np.full(n, 60, dtype=np.int64),
    )


def _empty_fetched() -> _Fetched:
    return _Fetched(
        np.zeros(0), [], np.zeros((0, len(MEASURES))), ([], []), np.zeros((0, 6)), np.zeros(0, dtype=np.int64)
    )


def _concat(parts: list[_Fetched]) -> _Fetched:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_fetched()
    if len(parts) == 1:
        return parts[0]
    return _Fetched(
        np.concatenate([p.bucket for p in parts]),
        [g for p in parts for g in p.group],
        np.vstack([p.measures for p in parts]),
        ([s for p in parts for s in p.sketches[0]], [s for p in parts for s in p.sketches[1]]),
        np.vstack([p.stored for p in parts]),
        np.concatenate([p.grain for p in parts]),
    )


# --- evaluating metrics over cells -------------------------------------------------------


def _evaluate(
    fetched: _Fetched,
    cell: npt.NDArray[np.int64],
    n_cells: int,
    metrics: Sequence[Metric],
    *,
    exact_grain: int | None,
) -> dict[str, F64]:
    """Each metric per cell.  ``exact_grain``: rows of that grain that are alone in their cell may use
    their stored percentiles."""
    sums = np.zeros((n_cells, len(MEASURES)))
    if len(fetched):
        for j in range(len(MEASURES)):
            sums[:, j] = np.bincount(cell, weights=fetched.measures[:, j], minlength=n_cells)
    out: dict[str, F64] = {}
    quantile_metrics = [m for m in metrics if m.kind == "quantile"]
    for m in metrics:
        if m.kind == "sum":
            out[m.name] = sums[:, list(m.numerator)].sum(axis=1)
        elif m.kind == "ratio":
            num = sums[:, list(m.numerator)].sum(axis=1)
            den = sums[:, list(m.denominator)].sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[m.name] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    if not quantile_metrics:
        return out
    rows_per_cell = (
        np.bincount(cell, minlength=n_cells) if len(fetched) else np.zeros(n_cells, dtype=np.int64)
    )
    merged: dict[tuple[int, bytes], Any] = {}
    for m in quantile_metrics:
        values = np.full(n_cells, np.nan)
        need_merge = rows_per_cell > 0
        if m.q in _STORED_PERCENTILES and exact_grain is not None and len(fetched):
            col = m.sketch * 3 + (50.0, 95.0, 99.0).index(m.q)
            alone = (rows_per_cell[cell] == 1) & (fetched.grain == exact_grain)
            use = alone & ~np.isnan(fetched.stored[:, col])
            values[cell[use]] = fetched.stored[use, col]
            need_merge[cell[use]] = False
            # A cell whose only row has no latencies at all stays empty, no merge needed.
            empty = alone & np.array([s is None for s in fetched.sketches[m.sketch]], dtype=bool)
            need_merge[cell[empty]] = False
        if need_merge.any():
            key = (m.sketch, need_merge.tobytes())
            if key not in merged:
                rows = np.flatnonzero(need_merge[cell])
                blobs = [fetched.sketches[m.sketch][i] for i in rows]
                merged[key] = merge_blobs(blobs, cell[rows], n_cells)
            q = merged[key].quantiles([m.q / 100])[:, 0]
            values[need_merge] = q[need_merge]
        out[m.name] = values
    return out


# --- time series -------------------------------------------------------------------------


@dataclass
class Series:
    """One line of a chart: ``key`` is the group's value (``None`` for the whole selection)."""

    key: str | None
    values: dict[str, F64]


@dataclass
class SeriesResult:
    """Buckets (start times, epoch seconds) and one :class:`Series` per group, each metric an array.

    Counts and sums are 0 in an empty bucket; ratios and percentiles are NaN.
    ``raw_blocks`` says how many 5-minute blocks were read from the minute
    rollups because their tiers were not built yet.
    """

    plan: Plan
    buckets: F64
    series: list[Series]
    metrics: tuple[str, ...]
    raw_blocks: int = 0
    rows_read: int = 0

    def total(self) -> Series | None:
        return next((s for s in self.series if s.key is None), None)


def query_series(
    bind: Engine | Connection,
    since: float,
    until: float,
    metrics: Sequence[str] = ("requests",),
    *,
    filters: SeriesFilter = NO_FILTER,
    group_by: str | None = None,
    top: int = 10,
    rank_by: str = "requests",
    step: int | None = None,
    max_points: int = MAX_POINTS,
    now: float | None = None,
    policy: RetentionPolicy = DEFAULT_RETENTION,
) -> SeriesResult:
    """Metrics over ``[since, until)`` as a time series: one series, or the ``top`` groups by ``rank_by``.

    ``group_by`` is one of :data:`DIMENSIONS`; the groups are ranked over the
    whole window first (:func:`top_n`) and only the top ones are read.
    """
    parsed = [parse_metric(m) for m in metrics]
    if not parsed:
        raise QueryError("ask for at least one metric")
    if group_by is not None and group_by not in DIMENSIONS:
        raise QueryError(f"cannot split by {group_by!r}; by one of {', '.join(DIMENSIONS)}")
    now = time.time() if now is None else now
    plan = plan_series(since, until, max_points=max_points, step=step, now=now, policy=policy)
    user_family = group_by == "user" or filters.user is not None
    needs_sketches = any(m.kind == "quantile" for m in parsed)
    with transaction(bind) as conn:
        keys: list[str] | None = None
        query_filters = filters
        if group_by is not None:
            ranked = _top(
                conn,
                plan.start,
                plan.end,
                group_by,
                parse_metric(rank_by),
                n=top,
                filters=filters,
                now=now,
                policy=policy,
            )
            keys = [r.key for r in ranked]
            if not keys:
                return SeriesResult(plan, _bucket_starts(plan), [], tuple(metrics))
            query_filters = filters.with_(group_by, tuple(keys))
        horizon = policy.horizon(policy.events_days if user_family else policy.minute_days, now)
        blocks, days = _dirty(conn, plan.start, plan.end, horizon)
        usable = [g for g in TIER_GRAINS if _within(policy.tier_horizon(g, now), plan.start)] or [DAY]
        cov = cover(plan.start, plan.end, plan.grain, dirty=blocks, pending_days=days, usable=usable)
        # One tier row per point (the step is the grain, one value per filtered dimension) and only
        # stored percentiles asked: those rows' sketches need not be read at all.
        single = all(len(v) == 1 for d, v in filters.items() if d != group_by)
        stored_only = (
            plan.grain
            if not user_family
            and plan.step == plan.grain
            and single
            and all(m.q in _STORED_PERCENTILES for m in parsed if m.kind == "quantile")
            else None
        )
        fetched = _fetch(
            conn,
            cov,
            user_family=user_family,
            filters=query_filters,
            group_by=group_by,
            sketches=needs_sketches,
            stored_only_grain=stored_only,
        )
    labels = keys if keys is not None else [""]
    index = {k: i for i, k in enumerate(labels)}
    n_buckets = plan.points
    bucket_idx = np.floor((fetched.bucket - plan.start) / plan.step).astype(np.int64)
    group_idx = np.array([index.get(g, -1) for g in fetched.group], dtype=np.int64)
    ok = (bucket_idx >= 0) & (bucket_idx < n_buckets) & (group_idx >= 0)
    fetched = _select(fetched, ok)
    cell = group_idx[ok] * n_buckets + bucket_idx[ok]
    exact = plan.grain if plan.step == plan.grain else None
    values = _evaluate(fetched, cell, len(labels) * n_buckets, parsed, exact_grain=exact)
    series = [
        Series(
            None if keys is None else label,
            {name: v[i * n_buckets : (i + 1) * n_buckets] for name, v in values.items()},
        )
        for i, label in enumerate(labels)
    ]
    return SeriesResult(plan, _bucket_starts(plan), series, tuple(metrics), cov.dirty_blocks, len(fetched))


def _bucket_starts(plan: Plan) -> F64:
    return plan.start + plan.step * np.arange(plan.points, dtype=np.float64)


def _select(f: _Fetched, mask: npt.NDArray[np.bool_]) -> _Fetched:
    if mask.all():
        return f
    idx = np.flatnonzero(mask)
    return _Fetched(
        f.bucket[idx],
        [f.group[i] for i in idx],
        f.measures[idx],
        ([f.sketches[0][i] for i in idx], [f.sketches[1][i] for i in idx]),
        f.stored[idx],
        f.grain[idx],
    )


# --- time series from events (dimensions the rollups do not have) ------------------------

#: The longest window :func:`query_series_from_events` reads: it scans the events in it.
EVENTS_MAX_WINDOW_S = 7 * DAY


class WindowTooLong(QueryError):
    """A window longer than the events table is read for (the rollups cannot answer the filter)."""


_TOKEN_MEASURES = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def _measure_exprs() -> list[ColumnElement[Any]]:
    """One SQL sum per rollup measure (in :data:`MEASURES` order), computed from event rows."""
    c = EVENTS.c

    def count_if(cond: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.sum(case((cond, 1), else_=0))

    lat_ok = and_(c.latency_ms.is_not(None), c.latency_ms >= 0)
    ttft_ok = and_(c.ttft_ms.is_not(None), c.ttft_ms >= 0)
    by_name: dict[str, ColumnElement[Any]] = {
        "n_requests": func.count(),
        **{col: count_if(c.failure == f.value) for f, col in FAILURE_COUNT_COLUMNS.items()},
        "n_cache_hits": count_if(c.cache_hit != "none"),
        "n_cost_unknown": count_if(c.cost_usd.is_(None)),
        **{t: func.coalesce(func.sum(c[t]), 0) for t in _TOKEN_MEASURES},
        "cost_usd": func.coalesce(func.sum(c.cost_usd), 0.0),
        "latency_n": count_if(lat_ok),
        "latency_sum_ms": func.coalesce(func.sum(case((lat_ok, c.latency_ms), else_=0.0)), 0.0),
        "ttft_n": count_if(ttft_ok),
        "ttft_sum_ms": func.coalesce(func.sum(case((ttft_ok, c.ttft_ms), else_=0.0)), 0.0),
    }
    missing = [m for m in MEASURES if m not in by_name]
    if missing:  # a measure added to the rollups must be taught here too
        raise QueryError(f"no events expression for the rollup measure(s) {', '.join(missing)}")
    return [by_name[m] for m in MEASURES]


def _bucket_expr(conn: Connection, start: float, step: int) -> ColumnElement[Any]:
    """The bucket number of each event's ``ts_start`` (``ts_start >= start``), in SQL."""
    offset = (EVENTS.c.ts_start - start) / float(step)
    if conn.dialect.name == "sqlite":
        return cast(offset, Integer)  # truncates, and the offset is never negative
    return cast(func.floor(offset), Integer)  # PostgreSQL's CAST rounds


def query_series_from_events(
    bind: Engine | Connection,
    since: float,
    until: float,
    metrics: Sequence[str] = ("requests",),
    *,
    prompt_name: str,
    prompt_version: int | None = None,
    filters: SeriesFilter = NO_FILTER,
    step: int | None = None,
    max_points: int = MAX_POINTS,
    max_window_s: float = EVENTS_MAX_WINDOW_S,
) -> SeriesResult:
    """:func:`query_series` for traffic of one prompt (every version, or ``prompt_version``), from events.

    The rollups have no prompt dimension, so this reads the events table:
    one ``GROUP BY`` bucket for the sums, and exact percentiles per bucket
    from a window function (``ROW_NUMBER() OVER (PARTITION BY bucket ORDER
    BY latency_ms)``, ranked ``q * (n - 1)`` rounded down, as DDSketch ranks).
    Only windows up to ``max_window_s`` (7 days) are read: a longer one
    raises :class:`WindowTooLong`.  The result has the shape
    :func:`query_series` returns (one total series, ``key`` ``None``);
    ``rows_read`` is the number of events counted.
    """
    parsed = [parse_metric(m) for m in metrics]
    if not parsed:
        raise QueryError("ask for at least one metric")
    if not prompt_name:
        raise QueryError("name the prompt: prompt_name is empty")
    if prompt_version is not None and prompt_version < 1:
        raise QueryError(f"prompt_version must be a whole number from 1, got {prompt_version!r}")
    _check_window(since, until)
    if until - since > max_window_s:
        raise WindowTooLong(
            f"traffic by prompt is read from the events table for at most {max_window_s / DAY:g} days; "
            f"this window is {(until - since) / DAY:.1f} days: choose a shorter range"
        )
    if step is not None:
        if step < 60 or step % 60:
            raise QueryError(f"step must be a whole number of minutes (>= 60 s), got {step}")
        plan = _aligned(since, until, step, step)
    else:
        plan = next(
            (p for p in (_aligned(since, until, s, s) for s in STEP_LADDER) if p.points <= max_points),
            _aligned(since, until, STEP_LADDER[-1], STEP_LADDER[-1]),
        )
    c = EVENTS.c
    where: list[ColumnElement[bool]] = [
        c.ts_start >= plan.start,
        c.ts_start < plan.end,
        c.prompt_name == prompt_name,
        *_event_where(filters),
    ]
    if prompt_version is not None:
        where.append(c.prompt_version == prompt_version)
    n_buckets = plan.points
    quantiles = [m for m in parsed if m.kind == "quantile"]
    with transaction(bind) as conn:
        bucket = _bucket_expr(conn, plan.start, plan.step).label("b")
        rows = conn.execute(select(bucket, *_measure_exprs()).where(*where).group_by(bucket)).all()
        ranked: dict[int, list[tuple[int, int, int, float]]] = {}
        for sketch in {m.sketch for m in quantiles}:
            ranked[sketch] = _ranked_values(conn, bucket, where, sketch, [m.q for m in quantiles])
    measures = np.zeros((n_buckets, len(MEASURES)))
    for r in rows:
        b = int(r[0])
        if 0 <= b < n_buckets:
            measures[b] = [float(v or 0) for v in r[1:]]
    sums_only = [m for m in parsed if m.kind != "quantile"]
    fetched = _Fetched(
        _bucket_starts(plan),
        [""] * n_buckets,
        measures,
        ([None] * n_buckets, [None] * n_buckets),
        np.full((n_buckets, 6), np.nan),
        np.full(n_buckets, plan.step, dtype=np.int64),
    )
    values = _evaluate(fetched, np.arange(n_buckets, dtype=np.int64), n_buckets, sums_only, exact_grain=None)
    for m in quantiles:
        out = np.full(n_buckets, np.nan)
        num, den = _rank_fraction(m.q)
        for b, rn, n, v in ranked[m.sketch]:
            if 0 <= b < n_buckets and rn - 1 == (n - 1) * num // den:
                out[b] = v
        values[m.name] = out
    total = Series(None, {m: values[m] for m in metrics})
    read = int(measures[:, MEASURES.index("n_requests")].sum())
    return SeriesResult(plan, _bucket_starts(plan), [total], tuple(metrics), 0, read)


def _rank_fraction(q: float) -> tuple[int, int]:
    """Percentile ``q`` (0-100) as an integer fraction of 1, so SQL and Python rank alike (integers)."""
    f = Fraction(q / 100).limit_denominator(1_000_000)
    return f.numerator, f.denominator


def _ranked_values(
    conn: Connection,
    bucket: ColumnElement[Any],
    where: list[ColumnElement[bool]],
    sketch: int,
    qs: list[float],
) -> list[tuple[int, int, int, float]]:
    """``(bucket, rank, count, value)`` of the latency (0) or TTFT (1) at each quantile's rank, per bucket."""
    col = EVENTS.c.latency_ms if sketch == 0 else EVENTS.c.ttft_ms
    inner = (
        select(
            bucket,
            col.label("v"),
            func.row_number().over(partition_by=bucket, order_by=col).label("rn"),
            func.count().over(partition_by=bucket).label("n"),
        )
        .where(*where, col.is_not(None), col >= 0)
        .subquery()
    )
    wanted = []
    for q in qs:
        num, den = _rank_fraction(q)
        wanted.append(inner.c.rn - 1 == (inner.c.n - 1) * num // den)
    rows = conn.execute(select(inner.c.b, inner.c.rn, inner.c.n, inner.c.v).where(or_(*wanted))).all()
    return [(int(b), int(rn), int(n), float(v)) for b, rn, n, v in rows]


# --- top-N -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopRow:
    key: str
    value: float
    requests: int
    share: float  # of the window's requests


def top_n(
    bind: Engine | Connection,
    since: float,
    until: float,
    by: str,
    metric: str = "requests",
    *,
    n: int = 10,
    filters: SeriesFilter = NO_FILTER,
    now: float | None = None,
    policy: RetentionPolicy = DEFAULT_RETENTION,
) -> list[TopRow]:
    """The ``n`` values of dimension ``by`` with the highest ``metric`` over ``[since, until)``."""
    if by not in DIMENSIONS:
        raise QueryError(f"cannot rank by {by!r}; by one of {', '.join(DIMENSIONS)}")
    _check_window(since, until)
    now = time.time() if now is None else now
    with transaction(bind) as conn:
        return _top(
            conn, since, until, by, parse_metric(metric), n=n, filters=filters, now=now, policy=policy
        )


def _top(
    conn: Connection,
    since: float,
    until: float,
    by: str,
    metric: Metric,
    *,
    n: int,
    filters: SeriesFilter,
    now: float,
    policy: RetentionPolicy,
) -> list[TopRow]:
    if n <= 0:
        raise QueryError("n must be positive")
    a = math.floor(since / 60) * 60
    b = math.ceil(until / 60) * 60
    user_family = by == "user" or filters.user is not None
    horizon = policy.horizon(policy.events_days if user_family else policy.minute_days, now)
    blocks, days = _dirty(conn, a, b, horizon)
    usable = [g for g in TIER_GRAINS if _within(policy.tier_horizon(g, now), a)] or [DAY]
    cov = cover(a, b, DAY, dirty=blocks, pending_days=days, usable=usable)
    fetched = _fetch(
        conn, cov, user_family=user_family, filters=filters, group_by=by, sketches=metric.kind == "quantile"
    )
    labels = sorted(set(fetched.group))
    if not labels:
        return []
    index = {k: i for i, k in enumerate(labels)}
    cell = np.array([index[g] for g in fetched.group], dtype=np.int64)
    requests = parse_metric("requests")
    values = _evaluate(fetched, cell, len(labels), [metric, requests], exact_grain=None)
    v = values[metric.name]
    req = values["requests"]
    total = float(req.sum()) or 1.0
    order = sorted(
        range(len(labels)), key=lambda i: (-(v[i] if not math.isnan(v[i]) else -math.inf), labels[i])
    )
    return [
        TopRow(labels[i], float(v[i]), int(req[i]), float(req[i]) / total) for i in order[:n] if req[i] > 0
    ]


# --- outliers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outlier:
    """A request far above its route's usual: open it with ``storage.queries.events.get_event``."""

    event_id: str
    ts: float
    kind: str  # tokens | latency
    provider: str
    model: str
    route: str
    feature: str
    user: str | None
    value: float
    baseline: float
    ratio: float


def find_outliers(
    bind: Engine | Connection,
    since: float,
    until: float,
    *,
    filters: SeriesFilter = NO_FILTER,
    kind: str | None = None,
    limit: int = 100,
    now: float | None = None,
    policy: RetentionPolicy = DEFAULT_RETENTION,
    rules: OutlierRules = DEFAULT_OUTLIER_RULES,
) -> list[Outlier]:
    """Outliers in ``[since, until)``, the most extreme first (by ratio to the route's usual).

    Recorded outliers come from the ``outliers`` table; blocks not compacted yet
    are judged now from their events (a bounded read: only those blocks).
    """
    _check_window(since, until)
    if kind not in (None, "tokens", "latency"):
        raise QueryError(f"kind must be tokens or latency, got {kind!r}")
    if limit <= 0:
        raise QueryError("limit must be positive")
    now = time.time() if now is None else now
    o = OUTLIERS.c
    with transaction(bind) as conn:
        blocks, _ = _dirty(conn, since, until, policy.horizon(policy.events_days, now))
        stmt = select(*[o[c] for c in _OUTLIER_FIELDS]).where(o.ts >= since, o.ts < until)
        for b in blocks:
            stmt = stmt.where(~and_(o.ts >= b, o.ts < b + BLOCK))
        if kind is not None:
            stmt = stmt.where(o.kind == kind)
        stmt = stmt.where(*_dims_where(OUTLIERS, DIMENSIONS, filters, None, cube=False))
        stored = [Outlier(*r) for r in conn.execute(stmt.order_by(o.ratio.desc()).limit(limit)).all()]
        fresh: list[Outlier] = []
        cache: dict[float, Any] = {}
        for b in blocks:
            for found in detect_outliers(conn, [(max(b, since), min(b + BLOCK, until))], rules, cache):
                out = Outlier(**{k: found[k] for k in _OUTLIER_FIELDS})
                if kind is not None and out.kind != kind:
                    continue
                if all(
                    getattr(out, d) in values
                    or (d in ("route", "feature") and getattr(out, d) == "" and "" in values)
                    for d, values in filters.items()
                ):
                    fresh.append(out)
    merged = sorted([*stored, *fresh], key=lambda x: (-x.ratio, x.ts))
    return merged[:limit]


_OUTLIER_FIELDS = (
    "event_id", "ts", "kind", "provider", "model", "route", "feature", "user", "value", "baseline", "ratio",
)  # fmt: skip


# --- reconciliation ----------------------------------------------------------------------

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


def model_family(name: str) -> str:
    """A model name without its snapshot date: ``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``.

    Providers report usage under the dated snapshot that served a request,
    while our events carry the model that was asked for.
    """
    return _DATE_SUFFIX.sub("", name)


@dataclass(frozen=True)
class ReconciliationRow:
    """One day and model: our figures from the rollups beside the provider's own."""

    day: float  # UTC midnight, epoch seconds
    model: str  # "" = every model (the provider reported no split)
    our_requests: int
    our_input_tokens: int
    our_output_tokens: int
    our_cost_usd: float
    our_cost_unknown: int  # requests whose price we did not know
    provider_requests: int | None
    provider_input_tokens: int | None
    provider_output_tokens: int | None
    provider_cost_usd: float | None

    @property
    def drift_usd(self) -> float | None:
        """Ours minus theirs; ``None`` when the provider reported no cost."""
        return None if self.provider_cost_usd is None else self.our_cost_usd - self.provider_cost_usd

    @property
    def drift_pct(self) -> float | None:
        if self.provider_cost_usd is None or self.provider_cost_usd == 0:
            return None
        return 100.0 * (self.our_cost_usd - self.provider_cost_usd) / self.provider_cost_usd


@dataclass
class Reconciliation:
    provider: str
    matched: tuple[str, ...]  # the event provider names counted as ours
    rows: list[ReconciliationRow]

    @property
    def our_cost_usd(self) -> float:
        return sum(r.our_cost_usd for r in self.rows)

    @property
    def provider_cost_usd(self) -> float | None:
        costs = [r.provider_cost_usd for r in self.rows if r.provider_cost_usd is not None]
        return sum(costs) if costs else None

    @property
    def drift_usd(self) -> float | None:
        theirs = self.provider_cost_usd
        return None if theirs is None else self.our_cost_usd - theirs


def reconcile(
    bind: Engine | Connection,
    since: float,
    until: float,
    *,
    provider: str,
    our_providers: Sequence[str] | None = None,
    now: float | None = None,
    policy: RetentionPolicy = DEFAULT_RETENTION,
) -> Reconciliation:
    """Our cost per UTC day and model against the provider's reported figure, and the drift.

    ``provider`` is the name the usage source stored the provider's figures
    under (``provider_usage.provider``).  Our events are matched on
    ``our_providers`` (default: that name and, when the providers table knows
    it, its kind, e.g. ``openai``).  Model names are compared without their
    snapshot dates (:func:`model_family`).
    """
    _check_window(since, until)
    now = time.time() if now is None else now
    a = math.floor(since / DAY) * DAY
    b = math.ceil(until / DAY) * DAY
    with transaction(bind) as conn:
        if our_providers is None:
            kind = conn.execute(select(PROVIDERS.c.kind).where(PROVIDERS.c.name == provider)).scalar()
            matched = tuple(dict.fromkeys([provider, *([kind] if kind else [])]))
        else:
            matched = tuple(our_providers)
        horizon = policy.horizon(policy.minute_days, now)
        blocks, days = _dirty(conn, a, b, horizon)
        cov = cover(a, b, DAY, dirty=blocks, pending_days=days)
        fetched = _fetch(
            conn,
            cov,
            user_family=False,
            filters=SeriesFilter(provider=matched),
            group_by="model",
            sketches=False,
        )
        u = PROVIDER_USAGE.c
        theirs = conn.execute(
            select(u.bucket_start, u.model, u.requests, u.input_tokens, u.output_tokens, u.cost_usd).where(
                u.provider == provider, u.bucket_width == DAY, u.bucket_start >= a, u.bucket_start < b
            )
        ).all()
    ours: dict[tuple[float, str], list[float]] = {}
    i_req, i_in, i_out, i_cost, i_unknown = (
        _M["n_requests"], _M["input_tokens"], _M["output_tokens"], _M["cost_usd"], _M["n_cost_unknown"],
    )  # fmt: skip
    for k in range(len(fetched)):
        day = math.floor(fetched.bucket[k] / DAY) * DAY
        m = fetched.measures[k]
        acc = ours.setdefault((day, model_family(fetched.group[k])), [0.0] * 5)
        for j, col in enumerate((i_req, i_in, i_out, i_cost, i_unknown)):
            acc[j] += m[col]
    reported: dict[tuple[float, str], list[float | None]] = {}
    for r in theirs:
        key = (float(r.bucket_start), model_family(r.model) if r.model else "")
        acc2 = reported.setdefault(key, [0, 0, 0, None])
        acc2[0] = (acc2[0] or 0) + r.requests
        acc2[1] = (acc2[1] or 0) + r.input_tokens
        acc2[2] = (acc2[2] or 0) + r.output_tokens
        if r.cost_usd is not None:
            acc2[3] = (acc2[3] or 0.0) + r.cost_usd
    # A day the provider reported without a model split is compared with our whole day.
    for day in {d for d, m in reported if m == ""}:
        whole = [0.0] * 5
        for (d, _m), acc in ours.items():
            if d == day:
                whole = [x + y for x, y in zip(whole, acc, strict=True)]
        ours[(day, "")] = whole
        for key in [k for k in ours if k[0] == day and k[1] != "" and k not in reported]:
            del ours[key]
    rows = []
    for key in sorted(set(ours) | set(reported)):
        o = ours.get(key, [0.0] * 5)
        t = reported.get(key)
        rows.append(
            ReconciliationRow(
                day=key[0],
                model=key[1],
                our_requests=int(o[0]),
                our_input_tokens=int(o[1]),
                our_output_tokens=int(o[2]),
                our_cost_usd=float(o[3]),
                our_cost_unknown=int(o[4]),
                provider_requests=None if t is None else int(t[0] or 0),
                provider_input_tokens=None if t is None else int(t[1] or 0),
                provider_output_tokens=None if t is None else int(t[2] or 0),
                provider_cost_usd=None if t is None or t[3] is None else float(t[3]),
            )
        )
    return Reconciliation(provider, matched, rows)


__all__ = [
    "DIMENSIONS",
    "EVENTS_MAX_WINDOW_S",
    "MAX_POINTS",
    "STEP_LADDER",
    "Cover",
    "Metric",
    "Outlier",
    "Plan",
    "QueryError",
    "Reconciliation",
    "ReconciliationRow",
    "Series",
    "SeriesFilter",
    "SeriesResult",
    "TopRow",
    "WindowTooLong",
    "cover",
    "find_outliers",
    "model_family",
    "parse_metric",
    "plan_series",
    "query_series",
    "query_series_from_events",
    "reconcile",
    "top_n",
]
