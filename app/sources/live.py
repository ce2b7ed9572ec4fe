"""The live aggregator: the last 15 minutes at 1-second resolution, in memory.

The live charts (architecture.md, Threads) read this, never the store.  The
ingest pipeline feeds it every newly stored event after each commit; the UI
asks for a :class:`LiveSeries` (numpy arrays, one point per second) for any
filter on provider, model, route, feature and user, on a timer.

Cost model, measured in ``tests/bench/test_bench_ingest.py``:

- :meth:`LiveAggregator.add` is a few microseconds per event: one dict lookup
  for the (second, provider, model, route, feature, user) cell and a handful
  of additions; latencies go into a per-cell list, sampled down to a
  reservoir of ``reservoir`` values (Algorithm R) once a cell overflows, with
  the number seen kept so merged percentiles stay weighted correctly.
- :meth:`LiveAggregator.series` caches each second's figures per filter and
  recomputes only the seconds that changed since the last call, so a timer
  that asks 20 times a second pays for the current second, not for 900.

Events are placed by ``ts_end`` (when they finished): the rightmost second
then counts what completed in it, the way request-rate dashboards read.
Events older than the window, or more than a few seconds in the future, are
not shown live (they are still stored).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.core.event import CacheHit, Event, Failure

WINDOW_S = 900
#: Latency samples kept per cell and second before sampling starts.
DEFAULT_RESERVOIR = 256
# Seconds ahead of the clock an event may be and still be shown (clock skew between hosts).
_FUTURE_SLACK_S = 5

DIMENSIONS: tuple[str, ...] = ("provider", "model", "route", "feature", "user")

_FAILURES: tuple[Failure, ...] = tuple(Failure)
_FAILURE_INDEX = {f: i for i, f in enumerate(_FAILURES)}
_N_FAILURES = len(_FAILURES)

FloatArray = npt.NDArray[np.float64]

# Cell layout (a list, for speed): counters first, then the sample lists.
_C_N = 0
_C_FAIL = 1  # _N_FAILURES counters follow, in Failure order (index 0 = none)
_C_IN = _C_FAIL + _N_FAILURES
_C_OUT = _C_IN + 1
_C_COST = _C_OUT + 1
_C_COST_UNKNOWN = _C_COST + 1
_C_CACHE = _C_COST_UNKNOWN + 1
_C_LAT_SEEN = _C_CACHE + 1
_C_TTFT_SEEN = _C_LAT_SEEN + 1
_C_LAT = _C_TTFT_SEEN + 1
_C_TTFT = _C_LAT + 1
_C_SIZE = _C_TTFT + 1

CellKey = tuple[str, str, str, str, str]  # provider, model, route, feature, user


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """Which traffic a series covers; ``None`` means any.  Hashable: series are cached per filter."""

    provider: str | None = None
    model: str | None = None
    route: str | None = None
    feature: str | None = None
    user: str | None = None

    def matches(self, key: CellKey) -> bool:
        return (
            (self.provider is None or self.provider == key[0])
            and (self.model is None or self.model == key[1])
            and (self.route is None or self.route == key[2])
            and (self.feature is None or self.feature == key[3])
            and (self.user is None or self.user == key[4])
        )

    @property
    def is_all(self) -> bool:
        return all(getattr(self, d) is None for d in DIMENSIONS)


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

    @property
    def errors(self) -> FloatArray:
        """Failed requests per second (every failure type)."""
        total = np.zeros_like(self.requests)
        for a in self.failures.values():
            total += a
        return total


class _Slot:
    """One second: its cells, and a version that changes whenever the second does."""

    __slots__ = ("cells", "second", "version")

    def __init__(self) -> None:
        self.second = -1
        self.version = 0
        self.cells: dict[CellKey, list[object]] = {}


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
        reservoir: int = DEFAULT_RESERVOIR,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if reservoir <= 0:
            raise ValueError("reservoir must be positive")
        self.window_s = window_s
        self.reservoir = reservoir
        self.clock = clock
        self._slots = [_Slot() for _ in range(window_s)]
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._cache: dict[LiveFilter, _FilterCache] = {}
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
        reservoir = self.reservoir
        fail_index = _FAILURE_INDEX
        no_cache = CacheHit.NONE
        isfinite = math.isfinite
        rand = self._rng.random
        added = skipped = 0
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
                key = (e.provider, e.model, e.route or "", e.feature or "", e.user or "")
                cell = slot.cells.get(key)
                if cell is None:
                    cell = [0] * _C_LAT + [[], []]
                    slot.cells[key] = cell
                cell[0] += 1  # type: ignore[operator]
                cell[_C_FAIL + fail_index[e.failure]] += 1  # type: ignore[operator]
                cell[_C_IN] += e.input_tokens  # type: ignore[operator]
                cell[_C_OUT] += e.output_tokens  # type: ignore[operator]
                cost = e.cost_usd
                if cost is None:
                    cell[_C_COST_UNKNOWN] += 1  # type: ignore[operator]
                else:
                    cell[_C_COST] += cost  # type: ignore[operator]
                if e.cache_hit is not no_cache:
                    cell[_C_CACHE] += 1  # type: ignore[operator]
                lat = e.latency_ms
                if lat is not None and isfinite(lat):
                    seen = cell[_C_LAT_SEEN] = cell[_C_LAT_SEEN] + 1  # type: ignore[operator]
                    samples: list[float] = cell[_C_LAT]  # type: ignore[assignment]
                    if len(samples) < reservoir:
                        samples.append(lat)
                    else:
                        j = int(rand() * seen)
                        if j < reservoir:
                            samples[j] = lat
                ttft = e.ttft_ms
                if ttft is not None and isfinite(ttft):
                    seen = cell[_C_TTFT_SEEN] = cell[_C_TTFT_SEEN] + 1  # type: ignore[operator]
                    samples = cell[_C_TTFT]  # type: ignore[assignment]
                    if len(samples) < reservoir:
                        samples.append(ttft)
                    else:
                        j = int(rand() * seen)
                        if j < reservoir:
                            samples[j] = ttft
                added += 1
            self.added += added
            self.skipped += skipped
        return added

    def clear(self) -> None:
        with self._lock:
            self._slots = [_Slot() for _ in range(self.window_s)]
            self._cache.clear()

    # -- reading --------------------------------------------------------------------------
    def series(
        self, flt: LiveFilter = ALL, *, seconds: int | None = None, now: float | None = None
    ) -> LiveSeries:
        """The last ``seconds`` (default: the whole window) up to and including the current second."""
        n = self.window_s if seconds is None else max(1, min(int(seconds), self.window_s))
        now = self.clock() if now is None else now
        end = int(now)
        secs = np.arange(end - n + 1, end + 1, dtype=np.int64)
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
        return LiveSeries(
            t=secs.astype(np.float64),
            requests=out[:, _V_N].copy(),
            failures={
                f: out[:, _V_FAIL + k].copy() for k, f in enumerate(_FAILURES) if f is not Failure.NONE
            },
            input_tokens=out[:, _V_IN].copy(),
            output_tokens=out[:, _V_OUT].copy(),
            cost_usd=out[:, _V_COST].copy(),
            cost_unknown=out[:, _V_COST_UNKNOWN].copy(),
            cache_hits=out[:, _V_CACHE].copy(),
            latency_ms={q: out[:, _V_LAT + k].copy() for k, q in enumerate(QUANTILES)},
            ttft_ms={q: out[:, _V_TTFT + k].copy() for k, q in enumerate(QUANTILES)},
        )

    def percentiles(
        self, flt: LiveFilter = ALL, *, seconds: int = 60, now: float | None = None, ttft: bool = False
    ) -> dict[float, float]:
        """p50/p95/p99 over the last ``seconds`` (not per second): for a headline figure."""
        now = self.clock() if now is None else now
        end = int(now)
        values: list[FloatArray] = []
        weights: list[FloatArray] = []
        with self._lock:
            for sec in range(end - min(seconds, self.window_s) + 1, end + 1):
                slot = self._slots[sec % self.window_s]
                if slot.second != sec:
                    continue
                _collect(slot, flt, ttft, values, weights)
        return dict(zip(QUANTILES, _weighted_quantiles(values, weights), strict=True))

    def dimension_values(self, dimension: str) -> list[str]:
        """Values of one dimension seen in the window (for filter pickers), sorted."""
        if dimension not in DIMENSIONS:
            raise ValueError(f"not a live dimension: {dimension!r}; one of {', '.join(DIMENSIONS)}")
        k = DIMENSIONS.index(dimension)
        oldest = int(self.clock()) - self.window_s + 1
        found: set[str] = set()
        with self._lock:
            for slot in self._slots:
                if slot.second >= oldest:
                    found.update(key[k] for key in slot.cells)
        found.discard("")
        return sorted(found)


def _figures(slot: _Slot, flt: LiveFilter) -> FloatArray:
    row = np.zeros(_V_WIDTH, dtype=np.float64)
    sums = [0.0] * _V_LAT
    lat_v: list[FloatArray] = []
    lat_w: list[FloatArray] = []
    ttft_v: list[FloatArray] = []
    ttft_w: list[FloatArray] = []
    match_all = flt.is_all
    for key, cell in slot.cells.items():
        if not match_all and not flt.matches(key):
            continue
        for k in range(_C_LAT_SEEN):  # the counters share the layout of the row's first columns
            sums[k] += cell[k]  # type: ignore[operator]
        _add_samples(cell, _C_LAT, _C_LAT_SEEN, lat_v, lat_w)
        _add_samples(cell, _C_TTFT, _C_TTFT_SEEN, ttft_v, ttft_w)
    row[:_V_LAT] = sums
    row[_V_LAT:_V_TTFT] = _weighted_quantiles(lat_v, lat_w)
    row[_V_TTFT:] = _weighted_quantiles(ttft_v, ttft_w)
    return row


def _collect(
    slot: _Slot, flt: LiveFilter, ttft: bool, values: list[FloatArray], weights: list[FloatArray]
) -> None:
    col, seen = (_C_TTFT, _C_TTFT_SEEN) if ttft else (_C_LAT, _C_LAT_SEEN)
    for key, cell in slot.cells.items():
        if flt.matches(key):
            _add_samples(cell, col, seen, values, weights)


def _add_samples(
    cell: list[object], col: int, seen_col: int, values: list[FloatArray], weights: list[FloatArray]
) -> None:
    samples: list[float] = cell[col]  # type: ignore[assignment]
    if not samples:
        return
    seen: int = cell[seen_col]  # type: ignore[assignment]
    values.append(np.asarray(samples, dtype=np.float64))
    # A sampled cell's values stand for seen / kept requests each.
    weights.append(np.full(len(samples), seen / len(samples), dtype=np.float64))


def _weighted_quantiles(values: list[FloatArray], weights: list[FloatArray]) -> list[float]:
    if not values:
        return [math.nan] * len(QUANTILES)
    v = np.concatenate(values)
    w = np.concatenate(weights)
    order = np.argsort(v, kind="stable")
    v = v[order]
    cw = np.cumsum(w[order])
    total = cw[-1]
    out = []
    for q in QUANTILES:
        # The smallest value whose cumulative weight reaches q of the total (the "lower" quantile
        # definition, as DDSketch and most dashboards use).
        i = int(np.searchsorted(cw, q * total, side="left"))
        out.append(float(v[min(i, len(v) - 1)]))
    return out


__all__ = ["ALL", "DIMENSIONS", "QUANTILES", "WINDOW_S", "LiveAggregator", "LiveFilter", "LiveSeries"]
