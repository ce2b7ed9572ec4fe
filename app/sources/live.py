"""The live aggregator: the last 15 minutes at 1-second resolution, in memory.

The live charts (architecture.md, Threads) read this, never the store.  The
ingest pipeline feeds it every newly stored event after each commit; the UI
asks for a :class:`LiveSeries` (numpy arrays, one point per second) for any
filter on provider, model, route, feature and user, on a timer.

Cost model, measured in ``tests/bench/test_bench_sketch.py``:

- :meth:`LiveAggregator.add` is a few microseconds per event: one dict lookup
  for the (second, provider, model, route, feature, user) cell, a handful of
  additions, and the latency and TTFT appended to the cell's list.
- Seconds a few seconds old are compacted: each cell's raw values become
  DDSketch bins (the same logarithmic mapping at 1% relative accuracy as the
  rollups' sketches) held as two small numpy arrays, so 15 minutes at 20,000
  events/s take tens of megabytes, not a list of every latency, and live
  p50/p95/p99 are within 1% of exact like the history's.
- :meth:`LiveAggregator.series` caches each second's figures per filter and
  recomputes only the seconds that changed since the last call, so a timer
  that asks 20 times a second pays for the current second, not for 900.

Users are many (thousands), so they are not a dimension of the per-second
cells: 15 minutes x users x cells would not fit in memory at 20,000 events/s.
A filter on ``user`` is answered instead from a ring of the most recent
events that name a user (``user_rows`` of them, about 40 bytes each, exact
percentiles); when the ring holds less than the window, the seconds before
its oldest complete second are ``nan`` (not known) and
:attr:`LiveSeries.complete_from` says where knowledge starts.

Events are placed by ``ts_end`` (when they finished): the rightmost second
then counts what completed in it, the way request-rate dashboards read.
Events older than the window, or more than a few seconds in the future, are
not shown live (they are still stored).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.event import CacheHit, Event, Failure
from app.core.sketch import LatencySketch

WINDOW_S = 900
#: Recent events that name a user kept for user filters (about 40 bytes each).
DEFAULT_USER_ROWS = 500_000
# Seconds after which a second's raw values are compacted into bins (late events still land).
_COMPACT_AFTER_S = 2
# Seconds ahead of the clock an event may be and still be shown (clock skew between hosts).
_FUTURE_SLACK_S = 5

DIMENSIONS: tuple[str, ...] = ("provider", "model", "route", "feature", "user")

_FAILURES: tuple[Failure, ...] = tuple(Failure)
_FAILURE_INDEX = {f: i for i, f in enumerate(_FAILURES)}
_N_FAILURES = len(_FAILURES)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# The rollups' sketch mapping (app.core.sketch, 1% relative accuracy), applied to numpy arrays.
_MAPPING = LatencySketch()._sketch._mapping
_LOG2_MULTIPLIER = float(_MAPPING._multiplier)  # key = ceil(log2(v) * multiplier) + offset
_KEY_OFFSET = int(_MAPPING._offset)
_ZERO_KEY = np.iinfo(np.int64).min  # values <= 0 (a cached answer in 0 ms)


def bin_keys(values: FloatArray) -> IntArray:
    """DDSketch keys of non-negative values (as ``LatencySketch`` maps them); 0 maps to a zero key."""
    keys = np.full(values.shape, _ZERO_KEY, dtype=np.int64)
    positive = values > 0
    keys[positive] = np.ceil(np.log2(values[positive]) * _LOG2_MULTIPLIER).astype(np.int64) + _KEY_OFFSET
    return keys


def key_value(key: int) -> float:
    """The value a key stands for (within 1% of every value mapped to it)."""
    return 0.0 if key == _ZERO_KEY else float(_MAPPING.value(int(key)))


# Cell layout (a list, for speed): counters first, then the latency and TTFT values: a raw list
# while the second is recent, then compacted bins (keys, counts).
_C_N = 0
_C_FAIL = 1  # _N_FAILURES counters follow, in Failure order (index 0 = none)
_C_IN = _C_FAIL + _N_FAILURES
_C_OUT = _C_IN + 1
_C_COST = _C_OUT + 1
_C_COST_UNKNOWN = _C_COST + 1
_C_CACHE = _C_COST_UNKNOWN + 1
_C_LAT = _C_CACHE + 1  # raw latencies (list)
_C_TTFT = _C_LAT + 1  # raw TTFTs (list)
_C_LAT_BINS = _C_TTFT + 1  # (keys, counts) or None
_C_TTFT_BINS = _C_LAT_BINS + 1
_C_SIZE = _C_TTFT_BINS + 1

CellKey = tuple[str, str, str, str]  # provider, model, route, feature


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """Which traffic a series covers; ``None`` means any.  Hashable: series are cached per filter."""

    provider: str | None = None
    model: str | None = None
    route: str | None = None
    feature: str | None = None
    user: str | None = None

    def matches(self, key: CellKey) -> bool:
        """Whether a cell (provider, model, route, feature) matches; ``user`` is checked elsewhere."""
        return (
            (self.provider is None or self.provider == key[0])
            and (self.model is None or self.model == key[1])
            and (self.route is None or self.route == key[2])
            and (self.feature is None or self.feature == key[3])
        )

    @property
    def is_all(self) -> bool:
        return all(getattr(self, d) is None for d in DIMENSIONS)

    @property
    def cell_filter(self) -> LiveFilter:
        """This filter without its user."""
        return LiveFilter(self.provider, self.model, self.route, self.feature)


ALL = LiveFilter()

QUANTILES = (0.5, 0.95, 0.99)


@dataclass(slots=True)
class LiveSeries:
    """One point per second, oldest first, ending at the second before ``now`` (inclusive).

    Percentiles are ``nan`` for a second without a value.  ``failures`` holds
    one array per failure type other than ``none``, in legend order.
    """

    t: FloatArray  # epoch seconds of each second's start
    requests: FloatArray
    failures: dict[Failure, FloatArray]
    input_tokens: FloatArray
    output_tokens: FloatArray
    cost_usd: FloatArray
    cost_unknown: FloatArray
    cache_hits: FloatArray
    latency_ms: dict[float, FloatArray]  # quantile -> values
    ttft_ms: dict[float, FloatArray]
    extra: dict[str, FloatArray] = field(default_factory=dict)
    #: The first second whose figures are complete (``-inf``: all of them).  Only a ``user``
    #: filter, answered from the bounded ring of recent events, can start later.
    complete_from: float = -math.inf

    @property
    def errors(self) -> FloatArray:
        """Failed requests per second (every failure type)."""
        total = np.zeros_like(self.requests)
        for a in self.failures.values():
            total += a
        return total


class _Slot:
    """One second: its cells, and a version that changes whenever the second does."""

    __slots__ = ("cells", "raw", "second", "version")

    def __init__(self) -> None:
        self.second = -1
        self.version = 0
        self.raw = False  # some cell holds raw values not compacted yet
        self.cells: dict[CellKey, list[Any]] = {}


class _FilterCache:
    """Per-slot figures for one filter, valid while the slot's version is unchanged."""

    __slots__ = ("last_used", "values", "versions")

    def __init__(self, window: int, width: int) -> None:
        self.versions = np.full(window, -1, dtype=np.int64)
        self.values = np.zeros((window, width), dtype=np.float64)
        self.last_used = 0.0


# Columns of a filter cache row.
_V_N = 0
_V_FAIL = 1  # _N_FAILURES follow
_V_IN = _V_FAIL + _N_FAILURES
_V_OUT = _V_IN + 1
_V_COST = _V_OUT + 1
_V_COST_UNKNOWN = _V_COST + 1
_V_CACHE = _V_COST_UNKNOWN + 1
_V_LAT = _V_CACHE + 1  # len(QUANTILES) follow
_V_TTFT = _V_LAT + len(QUANTILES)
_V_WIDTH = _V_TTFT + len(QUANTILES)

_MAX_CACHED_FILTERS = 32


class LiveAggregator:
    """Per-second figures for the last ``window_s`` seconds, by provider/model/route/feature/user.

    Thread-safe: the pipeline's writer thread adds, a reader (a UI worker or a
    QTimer slot) asks for series.
    """

    def __init__(
        self,
        window_s: int = WINDOW_S,
        *,
        clock: Callable[[], float] = time.time,
        user_rows: int = DEFAULT_USER_ROWS,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if user_rows <= 0:
            raise ValueError("user_rows must be positive")
        self._users = _UserRing(user_rows)
        self.window_s = window_s
        self.clock = clock
        self._slots = [_Slot() for _ in range(window_s)]
        self._lock = threading.Lock()
        self._cache: dict[LiveFilter, _FilterCache] = {}
        self._compacted_to = -1  # every second up to this one has been compacted
        self._late = False  # an event arrived for a second already compacted
        self.added = 0  # events shown live so far
        self.skipped = 0  # events outside the window when added

    # -- feeding --------------------------------------------------------------------------
    def add(self, events: Iterable[Event]) -> int:
        """Count events into their seconds; return how many fell inside the window."""
        now = self.clock()
        oldest = int(now) - self.window_s + 1
        newest = int(now) + _FUTURE_SLACK_S
        window = self.window_s
        slots = self._slots
        fail_index = _FAILURE_INDEX
        no_cache = CacheHit.NONE
        isfinite = math.isfinite
        added = skipped = 0
        user_rows: list[tuple[Any, ...]] = []
        urow = user_rows.append
        with self._lock:
            for e in events:
                sec = int(e.ts_end)
                if sec < oldest or sec > newest:
                    skipped += 1
                    continue
                slot = slots[sec % window]
                if slot.second != sec:
                    if slot.second > sec:  # a newer second already holds this slot
                        skipped += 1
                        continue
                    slot.second = sec
                    slot.cells = {}
                slot.version += 1
                slot.raw = True
                if sec <= self._compacted_to:
                    self._late = True
                key = (e.provider, e.model, e.route or "", e.feature or "")
                cell = slot.cells.get(key)
                if cell is None:
                    cell = [0] * _C_LAT + [[], [], None, None]
                    slot.cells[key] = cell
                cell[0] += 1
                cell[_C_FAIL + fail_index[e.failure]] += 1
                cell[_C_IN] += e.input_tokens
                cell[_C_OUT] += e.output_tokens
                cost = e.cost_usd
                if cost is None:
                    cell[_C_COST_UNKNOWN] += 1
                else:
                    cell[_C_COST] += cost
                if e.cache_hit is not no_cache:
                    cell[_C_CACHE] += 1
                lat = e.latency_ms
                if lat is not None and lat >= 0 and isfinite(lat):
                    cell[_C_LAT].append(lat)
                ttft = e.ttft_ms
                if ttft is not None and ttft >= 0 and isfinite(ttft):
                    cell[_C_TTFT].append(ttft)
                if e.user:
                    urow((sec, e.user, key, e.failure, lat, ttft, e.input_tokens, e.output_tokens, cost,
                          e.cache_hit is not no_cache))  # fmt: skip
                added += 1
            self.added += added
            self.skipped += skipped
            if user_rows:
                self._users.append(user_rows)
            self._compact(int(now) - _COMPACT_AFTER_S)
        return added

    def _compact(self, upto: int) -> None:
        """Turn the raw values of seconds up to ``upto`` into bins (under the lock)."""
        if upto <= self._compacted_to and not self._late:
            return
        for slot in self._slots:
            if slot.raw and slot.second <= upto:
                for cell in slot.cells.values():
                    for raw, bins in ((_C_LAT, _C_LAT_BINS), (_C_TTFT, _C_TTFT_BINS)):
                        if cell[raw]:
                            cell[bins] = _merge_bins(
                                cell[bins], bin_keys(np.asarray(cell[raw], dtype=np.float64))
                            )
                            cell[raw] = []
                slot.raw = False
        self._compacted_to = max(self._compacted_to, upto)
        self._late = False

    def clear(self) -> None:
        with self._lock:
            self._slots = [_Slot() for _ in range(self.window_s)]
            self._cache.clear()
            self._users = _UserRing(self._users.capacity)

    # -- reading --------------------------------------------------------------------------
    def series(
        self, flt: LiveFilter = ALL, *, seconds: int | None = None, now: float | None = None
    ) -> LiveSeries:
        """The last ``seconds`` (default: the whole window) up to and including the current second."""
        n = self.window_s if seconds is None else max(1, min(int(seconds), self.window_s))
        now = self.clock() if now is None else now
        end = int(now)
        secs = np.arange(end - n + 1, end + 1, dtype=np.int64)
        if flt.user is not None:
            with self._lock:
                out, complete_from = self._users.figures(flt, secs)
            return _series(secs, out, complete_from)
        idx = secs % self.window_s
        with self._lock:
            cache = self._cache.get(flt)
            if cache is None:
                if len(self._cache) >= _MAX_CACHED_FILTERS:
                    stale = min(self._cache, key=lambda f: self._cache[f].last_used)
                    del self._cache[stale]
                cache = self._cache[flt] = _FilterCache(self.window_s, _V_WIDTH)
            cache.last_used = time.monotonic()
            out = np.zeros((n, _V_WIDTH), dtype=np.float64)
            out[:, _V_LAT:] = np.nan
            for row, (sec, i) in enumerate(zip(secs.tolist(), idx.tolist(), strict=True)):
                slot = self._slots[i]
                if slot.second != sec:
                    continue  # nothing recorded in this second (or it was overwritten)
                if cache.versions[i] != slot.version:
                    cache.values[i] = _figures(slot, flt)
                    cache.versions[i] = slot.version
                out[row] = cache.values[i]
        return _series(secs, out, -math.inf)

    def percentiles(
        self, flt: LiveFilter = ALL, *, seconds: int = 60, now: float | None = None, ttft: bool = False
    ) -> dict[float, float]:
        """p50/p95/p99 over the last ``seconds`` (not per second): for a headline figure."""
        now = self.clock() if now is None else now
        end = int(now)
        keys: list[IntArray] = []
        counts: list[IntArray] = []
        if flt.user is not None:
            first = end - min(seconds, self.window_s) + 1
            with self._lock:
                values = self._users.values(flt, first, end, ttft=ttft)
            if not len(values):
                return dict.fromkeys(QUANTILES, math.nan)
            return dict(zip(QUANTILES, _exact_quantiles(np.sort(values)), strict=True))
        with self._lock:
            for sec in range(end - min(seconds, self.window_s) + 1, end + 1):
                slot = self._slots[sec % self.window_s]
                if slot.second != sec:
                    continue
                for key, cell in slot.cells.items():
                    if flt.matches(key):
                        _collect(cell, ttft, keys, counts)
        return dict(zip(QUANTILES, _quantiles(keys, counts), strict=True))

    def dimension_values(self, dimension: str) -> list[str]:
        """Values of one dimension seen in the window (for filter pickers), sorted."""
        if dimension not in DIMENSIONS:
            raise ValueError(f"not a live dimension: {dimension!r}; one of {', '.join(DIMENSIONS)}")
        k = DIMENSIONS.index(dimension)
        oldest = int(self.clock()) - self.window_s + 1
        found: set[str] = set()
        with self._lock:
            if dimension == "user":
                return self._users.users_since(oldest)
            for slot in self._slots:
                if slot.second >= oldest:
                    found.update(key[k] for key in slot.cells)
        found.discard("")
        return sorted(found)


def _series(secs: IntArray, out: FloatArray, complete_from: float) -> LiveSeries:
    return LiveSeries(
        t=secs.astype(np.float64),
        requests=out[:, _V_N].copy(),
        failures={f: out[:, _V_FAIL + k].copy() for k, f in enumerate(_FAILURES) if f is not Failure.NONE},
        input_tokens=out[:, _V_IN].copy(),
        output_tokens=out[:, _V_OUT].copy(),
        cost_usd=out[:, _V_COST].copy(),
        cost_unknown=out[:, _V_COST_UNKNOWN].copy(),
        cache_hits=out[:, _V_CACHE].copy(),
        latency_ms={q: out[:, _V_LAT + k].copy() for k, q in enumerate(QUANTILES)},
        ttft_ms={q: out[:, _V_TTFT + k].copy() for k, q in enumerate(QUANTILES)},
        complete_from=complete_from,
    )


def _exact_quantiles(sorted_values: FloatArray) -> list[float]:
    """Quantiles of sorted values, ranked like DDSketch (rank q * (n - 1), rounded down)."""
    n = len(sorted_values)
    return [float(sorted_values[int(q * (n - 1))]) for q in QUANTILES]


class _UserRing:
    """The most recent events that name a user, as columns of a fixed-size ring (about 40 B a row).

    Users and cells are interned to small integers; the intern tables are
    rebuilt from what the ring still holds when they grow past a few times
    its size, so a long run with ever-new users stays bounded.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sec = np.full(capacity, np.iinfo(np.int64).min, dtype=np.int64)
        self.user = np.zeros(capacity, dtype=np.int32)
        self.cell = np.zeros(capacity, dtype=np.int32)
        self.failure = np.zeros(capacity, dtype=np.int8)
        self.lat = np.zeros(capacity, dtype=np.float32)
        self.ttft = np.zeros(capacity, dtype=np.float32)
        self.tok_in = np.zeros(capacity, dtype=np.int64)
        self.tok_out = np.zeros(capacity, dtype=np.int64)
        self.cost = np.zeros(capacity, dtype=np.float64)
        self.cache = np.zeros(capacity, dtype=np.int8)
        self.size = 0  # rows written so far (the ring is full once size >= capacity)
        self.users: dict[str, int] = {}
        self.cells: dict[CellKey, int] = {}

    def append(self, rows: list[tuple[Any, ...]]) -> None:
        if len(rows) > self.capacity:
            rows = rows[-self.capacity :]
        if len(self.users) > 4 * self.capacity:
            self._reintern()
        users, cells = self.users, self.cells
        secs, uids, cids, fails, lats, ttfts, ins, outs, costs, caches = zip(*rows, strict=True)
        uid = [users.setdefault(u, len(users)) for u in uids]
        cid = [cells.setdefault(c, len(cells)) for c in cids]
        n = len(rows)
        at = self.size % self.capacity
        first = min(n, self.capacity - at)
        for dst, src in (
            (self.sec, secs), (self.user, uid), (self.cell, cid),
            (self.failure, [_FAILURE_INDEX[f] for f in fails]),
            (self.lat, [math.nan if v is None else v for v in lats]),
            (self.ttft, [math.nan if v is None else v for v in ttfts]),
            (self.tok_in, ins), (self.tok_out, outs),
            (self.cost, [math.nan if v is None else v for v in costs]), (self.cache, caches),
        ):  # fmt: skip
            arr = np.asarray(src)
            dst[at : at + first] = arr[:first]
            if first < n:
                dst[: n - first] = arr[first:]
        self.size += n

    def _reintern(self) -> None:
        live = self.sec != np.iinfo(np.int64).min
        keep = np.unique(self.user[live])
        by_id = {i: u for u, i in self.users.items()}
        remap = np.zeros(len(self.users), dtype=np.int32)
        self.users = {}
        for new, old in enumerate(keep.tolist()):
            self.users[by_id[old]] = new
            remap[old] = new
        self.user[live] = remap[self.user[live]]

    def _rows(self, flt: LiveFilter, first: int, last: int) -> npt.NDArray[np.bool_] | None:
        uid = self.users.get(flt.user or "")
        if uid is None:
            return None
        mask: npt.NDArray[np.bool_] = (self.user == uid) & (self.sec >= first) & (self.sec <= last)
        cf = flt.cell_filter
        if not cf.is_all:
            ok = np.array([cf.matches(c) for c in self.cells], dtype=bool)
            mask &= ok[self.cell]
        return mask

    def oldest_complete(self) -> float:
        """The first second all of whose user events are still in the ring."""
        if self.size <= self.capacity:
            return -math.inf
        return float(self.sec[self.size % self.capacity]) + 1  # that second lost its earlier rows

    def figures(self, flt: LiveFilter, secs: IntArray) -> tuple[FloatArray, float]:
        n = len(secs)
        out = np.zeros((n, _V_WIDTH), dtype=np.float64)
        out[:, _V_LAT:] = np.nan
        complete_from = self.oldest_complete()
        if complete_from > secs[0]:
            out[secs < complete_from] = np.nan
        mask = self._rows(flt, int(secs[0]), int(secs[-1]))
        if mask is None or not mask.any():
            return out, complete_from
        pos = self.sec[mask] - secs[0]
        fails = self.failure[mask]
        out[:, _V_N] += np.bincount(pos, minlength=n)
        for k in range(1, _N_FAILURES):
            hit = fails == k
            if hit.any():
                out[:, _V_FAIL + k] += np.bincount(pos[hit], minlength=n)
        out[:, _V_FAIL] += np.bincount(pos[fails == 0], minlength=n)
        out[:, _V_IN] += np.bincount(pos, weights=self.tok_in[mask], minlength=n)
        out[:, _V_OUT] += np.bincount(pos, weights=self.tok_out[mask], minlength=n)
        cost = self.cost[mask]
        unknown = np.isnan(cost)
        out[:, _V_COST] += np.bincount(pos, weights=np.where(unknown, 0.0, cost), minlength=n)
        out[:, _V_COST_UNKNOWN] += np.bincount(pos, weights=unknown, minlength=n)
        out[:, _V_CACHE] += np.bincount(pos, weights=self.cache[mask], minlength=n)
        for col, values in ((_V_LAT, self.lat[mask]), (_V_TTFT, self.ttft[mask])):
            known = ~np.isnan(values)
            v, p = values[known].astype(np.float64), pos[known]
            order = np.lexsort((v, p))
            v, p = v[order], p[order]
            starts = np.searchsorted(p, np.arange(n), side="left")
            ends = np.searchsorted(p, np.arange(n), side="right")
            for row in np.nonzero(ends > starts)[0].tolist():
                out[row, col : col + len(QUANTILES)] = _exact_quantiles(v[starts[row] : ends[row]])
        if complete_from > secs[0]:
            out[secs < complete_from] = np.nan
        return out, complete_from

    def values(self, flt: LiveFilter, first: int, last: int, *, ttft: bool) -> FloatArray:
        mask = self._rows(flt, first, last)
        if mask is None:
            return np.zeros(0)
        v = (self.ttft if ttft else self.lat)[mask].astype(np.float64)
        return v[~np.isnan(v)]

    def users_since(self, oldest: int) -> list[str]:
        ids = set(np.unique(self.user[self.sec >= oldest]).tolist())
        return sorted(u for u, i in self.users.items() if i in ids)


def _figures(slot: _Slot, flt: LiveFilter) -> FloatArray:
    row = np.zeros(_V_WIDTH, dtype=np.float64)
    cells = list(slot.cells.values()) if flt.is_all else [c for k, c in slot.cells.items() if flt.matches(k)]
    if not cells:
        row[_V_LAT:] = np.nan
        return row
    # The counters share the layout of the row's first columns; sum them column-wise in C.
    row[:_V_LAT] = [sum(column) for column in zip(*(cell[:_C_LAT] for cell in cells), strict=True)]
    for first, raw_col, bins_col in ((_V_LAT, _C_LAT, _C_LAT_BINS), (_V_TTFT, _C_TTFT, _C_TTFT_BINS)):
        packed = [cell[bins_col] for cell in cells if cell[bins_col] is not None]
        raw = [v for cell in cells for v in cell[raw_col]]
        row[first : first + len(QUANTILES)] = _quantiles_of(packed, raw)
    return row


def _quantiles_of(packed: list[npt.NDArray[np.int32]], raw: list[float]) -> list[float]:
    """Quantiles of packed bins and raw values together (one conversion for all of them)."""
    keys: list[IntArray] = []
    counts: list[IntArray] = []
    if packed:
        ks = np.concatenate([b[: len(b) // 2] for b in packed])
        cs = np.concatenate([b[len(b) // 2 :] for b in packed])
        keys.append(_from_int32_keys(ks))
        counts.append(cs.astype(np.int64))
    if raw:
        keys.append(bin_keys(np.asarray(raw, dtype=np.float64)))
        counts.append(np.ones(len(raw), dtype=np.int64))
    return _quantiles(keys, counts)


def _collect(cell: list[Any], ttft: bool, keys: list[IntArray], counts: list[IntArray]) -> None:
    raw, bins = (cell[_C_TTFT], cell[_C_TTFT_BINS]) if ttft else (cell[_C_LAT], cell[_C_LAT_BINS])
    if bins is not None:
        half = len(bins) // 2
        keys.append(_from_int32_keys(bins[:half]))
        counts.append(bins[half:].astype(np.int64))
    if raw:
        keys.append(bin_keys(np.asarray(raw, dtype=np.float64)))
        counts.append(np.ones(len(raw), dtype=np.int64))


def _merge_bins(bins: npt.NDArray[np.int32] | None, new_keys: IntArray) -> npt.NDArray[np.int32]:
    """Add keys to packed bins: one int32 array, the sorted keys then their counts (one numpy
    object per metric and cell-second: most of the live view's memory is per-object overhead)."""
    if bins is None:
        keys, counts = np.unique(new_keys, return_counts=True)
    else:
        half = len(bins) // 2
        all_keys = np.concatenate((_from_int32_keys(bins[:half]), new_keys))
        weights = np.concatenate((bins[half:], np.ones(len(new_keys), dtype=np.int32)))
        keys, inverse = np.unique(all_keys, return_inverse=True)
        counts = np.bincount(inverse, weights=weights)
    return np.concatenate((_to_int32_keys(keys), counts.astype(np.int32)))


def _from_int32_keys(packed: npt.NDArray[np.int32]) -> IntArray:
    keys = packed.astype(np.int64)
    return np.where(keys == np.iinfo(np.int32).min, _ZERO_KEY, keys)


def _to_int32_keys(keys: IntArray) -> npt.NDArray[np.int32]:
    # Latency keys are small (|key| < 3,000 for 1 ns .. 1 year); the zero key maps to int32's minimum.
    return np.where(keys == _ZERO_KEY, np.iinfo(np.int32).min, keys).astype(np.int32)


def _quantiles(keys: list[IntArray], counts: list[IntArray]) -> list[float]:
    """p50/p95/p99 of binned values, ranked the way DDSketch ranks (rank = q * (n - 1))."""
    if not keys:
        return [math.nan] * len(QUANTILES)
    k = np.concatenate(keys) if len(keys) > 1 else keys[0]
    c = np.concatenate(counts) if len(counts) > 1 else counts[0]
    order = np.argsort(k, kind="stable")
    k = k[order]
    cum = np.cumsum(c[order])
    total = int(cum[-1])
    out = []
    for q in QUANTILES:
        i = int(np.searchsorted(cum, q * (total - 1), side="right"))
        out.append(key_value(int(k[min(i, len(k) - 1)])))
    return out


__all__ = [
    "ALL",
    "DIMENSIONS",
    "QUANTILES",
    "WINDOW_S",
    "LiveAggregator",
    "LiveFilter",
    "LiveSeries",
    "bin_keys",
    "key_value",
]
