"""The live aggregator: the last 15 minutes at 1-second resolution, in memory.

The live charts (architecture.md, Threads) read this, never the store.  The
ingest pipeline feeds it every newly stored event after each commit; the UI
asks for a :class:`LiveSeries` (numpy arrays, one point per second) for any
filter on provider, model, route, feature, prompt and user, on a timer.

Everything per second lives in numpy arrays, not in Python objects.  A full
pass of Python's cyclic garbage collector walks every tracked container, and
with the GIL held: when each (second, cell) was a list of counters holding
lists of latencies, 15 minutes of busy traffic were a few hundred thousand
containers and one full pass stalled the GUI thread for ~170 ms
(``tests/bench/test_bench_gui.py``).  Now the whole window is 900 small slot
objects, each holding a handful of arrays, whatever the traffic:

- a *cell* is one (provider, model, route, feature, prompt), the prompt as
  ``name@version`` (``name`` for a label without a version, ``""`` for none:
  docs/prompts.md); cells are interned to
  small integer ids (``uint16``) once, so a second stores ids, not tuples;
- a slot (one second of the ring) holds the sorted ids of the cells seen in
  it, their counters as one ``(cells, columns)`` float64 array, and the
  latency and TTFT DDSketch bins of every cell as two parallel arrays
  (``uint32`` cell-and-key, ``int32`` count), sorted.  Values are binned when
  they arrive, with the rollups' mapping at 1% relative accuracy, so live
  p50/p95/p99 are within 1% of exact, like the history's;
- :meth:`LiveAggregator.add` groups a batch by second and cell with numpy
  (``bincount``) and merges it into the slot's sorted arrays (``searchsorted``),
  a few microseconds per event; :meth:`LiveAggregator.add_columns` takes the
  same figures as columns, for a caller that already has them;
- :meth:`LiveAggregator.series` caches each second's figures per filter and
  recomputes only the seconds that changed since the last call, so a timer
  that asks once a second pays for the current second, not for 900.
  Percentiles come from a histogram of bin keys (``bincount`` and a cumulative
  sum, no sort).

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

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.event import CacheHit, Event, Failure
from app.core.sketch import LatencySketch

log = logging.getLogger(__name__)

WINDOW_S = 900
#: Recent events that name a user kept for user filters (about 40 bytes each).
DEFAULT_USER_ROWS = 500_000
# Seconds ahead of the clock an event may be and still be shown (clock skew between hosts).
_FUTURE_SLACK_S = 5
#: Distinct cells (provider, model, route, feature, prompt) the ids can name; when more have been seen,
#: the ids are re-assigned to the cells the window still holds.
MAX_CELLS = 65_535

DIMENSIONS: tuple[str, ...] = ("provider", "model", "route", "feature", "prompt", "user")

_FAILURES: tuple[Failure, ...] = tuple(Failure)
_FAILURE_INDEX = {f: i for i, f in enumerate(_FAILURES)}
_FAILURE_BY_VALUE = {f.value: i for i, f in enumerate(_FAILURES)}
_N_FAILURES = len(_FAILURES)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
U32Array = npt.NDArray[np.uint32]
I32Array = npt.NDArray[np.int32]
U16Array = npt.NDArray[np.uint16]

# The rollups' sketch mapping (app.core.sketch, 1% relative accuracy), applied to numpy arrays.
_MAPPING = LatencySketch()._sketch._mapping
_LOG2_MULTIPLIER = float(_MAPPING._multiplier)  # key = ceil(log2(v) * multiplier) + offset
_KEY_OFFSET = int(_MAPPING._offset)
_ZERO_KEY = np.iinfo(np.int64).min  # values <= 0 (a cached answer in 0 ms)
# Stored keys are 16 bits, shifted to be non-negative: 0 is the zero key, 1..65535 stand for
# keys -32767..32767 (1e-280 ms .. 1e280 ms: anything beyond is clamped to the end bins).
_KEY_SHIFT = 32768
_KEY_LIMIT = 32767


def bin_keys(values: FloatArray) -> IntArray:
    """DDSketch keys of non-negative values (as ``LatencySketch`` maps them); 0 maps to a zero key."""
    keys = np.full(values.shape, _ZERO_KEY, dtype=np.int64)
    positive = values > 0
    keys[positive] = np.ceil(np.log2(values[positive]) * _LOG2_MULTIPLIER).astype(np.int64) + _KEY_OFFSET
    return keys


def key_value(key: int) -> float:
    """The value a key stands for (within 1% of every value mapped to it)."""
    return 0.0 if key == _ZERO_KEY else float(_MAPPING.value(int(key)))


def _packed_keys(values: FloatArray) -> IntArray:
    """Keys of finite, non-negative values in the stored 16-bit form (0: the zero key)."""
    packed = np.zeros(values.shape, dtype=np.int64)
    positive = values > 0
    keys = np.ceil(np.log2(values[positive]) * _LOG2_MULTIPLIER).astype(np.int64) + _KEY_OFFSET
    packed[positive] = np.clip(keys, -_KEY_LIMIT, _KEY_LIMIT) + _KEY_SHIFT
    return packed


def _packed_value(packed: int) -> float:
    return 0.0 if packed == 0 else float(_MAPPING.value(packed - _KEY_SHIFT))


# Columns of a slot's counters; a filter cache row starts with the same columns (their sums).
_V_N = 0
_V_FAIL = 1  # _N_FAILURES counters follow, in Failure order (index 0 = none)
_V_IN = _V_FAIL + _N_FAILURES
_V_OUT = _V_IN + 1
_V_COST = _V_OUT + 1
_V_COST_UNKNOWN = _V_COST + 1
_V_CACHE = _V_COST_UNKNOWN + 1
_N_COUNTERS = _V_CACHE + 1
_V_LAT = _N_COUNTERS  # len(QUANTILES) follow
QUANTILES = (0.5, 0.95, 0.99)
_V_TTFT = _V_LAT + len(QUANTILES)
_V_WIDTH = _V_TTFT + len(QUANTILES)

CellKey = tuple[str, str, str, str, str]  # provider, model, route, feature, prompt ("name@version")


def prompt_key(name: str | None, version: int | None) -> str:
    """The prompt part of a cell: ``name@version``, ``name`` (a label without a version), ``""`` (none)."""
    if not name:
        return ""
    return name if version is None else f"{name}@{version}"


def split_prompt(value: str) -> tuple[str, int | None]:
    """``"ticket-summary@2"`` -> ``("ticket-summary", 2)``; ``"ticket-summary"`` -> ``(name, None)``.

    A prompt name has no ``@`` (app.core.prompts.NAME), so the last one separates the version;
    a value whose part after it is not a whole number is taken as a name.
    """
    name, sep, version = value.rpartition("@")
    if sep and version.isdigit():
        return name, int(version)
    return value, None


def _prompt_matches(wanted: str, key: str) -> bool:
    """``name@2`` matches that version only; ``name`` matches every version of it (and the bare label)."""
    if key == wanted:
        return True
    return "@" not in wanted and key.startswith(wanted) and key[len(wanted) : len(wanted) + 1] == "@"


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """Which traffic a series covers; ``None`` means any.  Hashable: series are cached per filter."""

    provider: str | None = None
    model: str | None = None
    route: str | None = None
    feature: str | None = None
    #: ``name@version`` for one version, ``name`` for every version of a prompt.
    prompt: str | None = None
    user: str | None = None

    def matches(self, key: CellKey) -> bool:
        """Whether a cell (provider, model, route, feature, prompt) matches; ``user`` is checked elsewhere."""
        return (
            (self.provider is None or self.provider == key[0])
            and (self.model is None or self.model == key[1])
            and (self.route is None or self.route == key[2])
            and (self.feature is None or self.feature == key[3])
            and (self.prompt is None or _prompt_matches(self.prompt, key[4]))
        )

    @property
    def is_all(self) -> bool:
        return all(getattr(self, d) is None for d in DIMENSIONS)

    @property
    def cell_filter(self) -> LiveFilter:
        """This filter without its user."""
        return LiveFilter(
            provider=self.provider,
            model=self.model,
            route=self.route,
            feature=self.feature,
            prompt=self.prompt,
        )


ALL = LiveFilter()


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


_NO_IDS: U16Array = np.zeros(0, dtype=np.uint16)
_NO_COUNTERS: FloatArray = np.zeros((0, _N_COUNTERS), dtype=np.float64)
_NO_BINS: U32Array = np.zeros(0, dtype=np.uint32)
_NO_COUNTS: I32Array = np.zeros(0, dtype=np.int32)


class _Slot:
    """One second of the ring: numpy arrays only, and a version that changes whenever they do.

    ``ids`` (sorted cell ids) and ``counters`` (one row per id) go together;
    ``lat``/``ttft`` are sorted ``cell << 16 | packed key`` with their counts
    in ``lat_n``/``ttft_n``.
    """

    __slots__ = ("counters", "ids", "lat", "lat_n", "second", "ttft", "ttft_n", "version")

    def __init__(self) -> None:
        self.second = -1
        self.version = 0
        self.empty()

    def empty(self) -> None:
        self.ids = _NO_IDS
        self.counters = _NO_COUNTERS
        self.lat = _NO_BINS
        self.lat_n = _NO_COUNTS
        self.ttft = _NO_BINS
        self.ttft_n = _NO_COUNTS


class _FilterCache:
    """Per-slot figures for one filter, valid while the slot's version is unchanged."""

    __slots__ = ("last_used", "match", "values", "versions")

    def __init__(self, window: int, width: int) -> None:
        self.versions = np.full(window, -1, dtype=np.int64)
        self.values = np.zeros((window, width), dtype=np.float64)
        self.last_used = 0.0
        self.match = np.zeros(0, dtype=bool)  # by cell id: does the cell match the filter


_MAX_CACHED_FILTERS = 32


class LiveAggregator:
    """Per-second figures for the last ``window_s`` seconds, by provider/model/route/feature/prompt/user.

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
        self._cell_ids: dict[CellKey, int] = {}
        self._cell_keys: list[CellKey] = []
        self.added = 0  # events shown live so far
        self.skipped = 0  # events outside the window when added (or beyond MAX_CELLS cells)
        self._created = float(int(clock()))
        self._oldest_added = math.inf

    # -- feeding --------------------------------------------------------------------------
    def add(self, events: Iterable[Event]) -> int:
        """Count events into their seconds; return how many fell inside the window."""
        evs = events if isinstance(events, list | tuple) else list(events)
        if not evs:
            return 0
        no_cache = CacheHit.NONE
        fail_index = _FAILURE_INDEX
        # One comprehension per column: far cheaper than appending to ten lists per event.
        return self._add(
            ts_end=np.array([e.ts_end for e in evs], dtype=np.float64),
            cells=[
                (
                    e.provider,
                    e.model,
                    e.route or "",
                    e.feature or "",
                    # Inline (no call per event): most events name no prompt.
                    ""
                    if not e.prompt_name
                    else e.prompt_name
                    if e.prompt_version is None
                    else f"{e.prompt_name}@{e.prompt_version}",
                )
                for e in evs
            ],
            users=[e.user for e in evs],
            failure=np.array([fail_index[e.failure] for e in evs], dtype=np.int8),
            latency_ms=np.array([e.latency_ms for e in evs], dtype=np.float64),  # None -> nan
            ttft_ms=np.array([e.ttft_ms for e in evs], dtype=np.float64),
            input_tokens=np.array([e.input_tokens for e in evs], dtype=np.float64),
            output_tokens=np.array([e.output_tokens for e in evs], dtype=np.float64),
            cost_usd=np.array([e.cost_usd for e in evs], dtype=np.float64),
            cache_hit=np.array([e.cache_hit is not no_cache for e in evs], dtype=bool),
        )

    def add_columns(
        self,
        *,
        ts_end: npt.ArrayLike,
        provider: Sequence[str],
        model: Sequence[str],
        route: Sequence[str | None],
        feature: Sequence[str | None],
        user: Sequence[str | None] | None = None,
        failure: Sequence[Failure | str] | npt.ArrayLike | None = None,
        latency_ms: npt.ArrayLike | None = None,
        ttft_ms: npt.ArrayLike | None = None,
        input_tokens: npt.ArrayLike | None = None,
        output_tokens: npt.ArrayLike | None = None,
        cost_usd: npt.ArrayLike | None = None,
        cache_hit: npt.ArrayLike | None = None,
        prompt_name: Sequence[str | None] | None = None,
        prompt_version: Sequence[int | None] | None = None,
    ) -> int:
        """The same as :meth:`add` for events given as columns (one entry per event, equal lengths).

        ``prompt_name`` / ``prompt_version``: the registry prompt each event used (``None``: none);
        a version without a name is ignored.

        ``failure``: ``Failure`` members or their values (default: none);
        ``latency_ms``, ``ttft_ms`` and ``cost_usd``: ``nan`` or ``None`` where
        unknown; ``cache_hit``: true for any cache hit.  Missing numeric
        columns count as 0 (tokens), unknown (latency, TTFT, cost) or no hit.
        """
        ts = np.asarray(ts_end, dtype=np.float64)
        n = len(ts)
        columns: list[Sequence[Any]] = [provider, model, route, feature]
        for optional in (user, prompt_name, prompt_version):
            if optional is not None:
                columns.append(optional)
        for name, col in (
            ("failure", failure), ("latency_ms", latency_ms), ("ttft_ms", ttft_ms),
            ("input_tokens", input_tokens), ("output_tokens", output_tokens),
            ("cost_usd", cost_usd), ("cache_hit", cache_hit),
        ):  # fmt: skip
            if col is not None and len(col) != n:  # type: ignore[arg-type]
                raise ValueError(f"add_columns: {name} has {len(col)} entries, ts_end has {n}")  # type: ignore[arg-type]
        for col in columns:
            if len(col) != n:
                raise ValueError(f"add_columns: a dimension column has {len(col)} entries, ts_end has {n}")
        if failure is None:
            fails = np.zeros(n, dtype=np.int8)
        elif isinstance(failure, np.ndarray) and failure.dtype.kind in "iu":
            fails = failure.astype(np.int8)
        else:
            try:
                fails = np.array([_FAILURE_BY_VALUE[str(f)] for f in failure], dtype=np.int8)  # type: ignore[union-attr]
            except KeyError as exc:
                raise ValueError(f"add_columns: not a failure type: {exc.args[0]!r}") from None

        def floats(col: npt.ArrayLike | None, default: float) -> FloatArray:
            if col is None:
                return np.full(n, default, dtype=np.float64)
            return np.asarray(col, dtype=np.float64)

        if prompt_name is None:
            prompts: Iterable[str] = [""] * n
        else:
            versions = prompt_version if prompt_version is not None else [None] * n
            prompts = [prompt_key(p, v) for p, v in zip(prompt_name, versions, strict=True)]
        return self._add(
            ts_end=ts,
            cells=list(
                zip(
                    provider,
                    model,
                    (r or "" for r in route),
                    (f or "" for f in feature),
                    prompts,
                    strict=True,
                )
            ),
            users=list(user) if user is not None else [None] * n,
            failure=fails,
            latency_ms=floats(latency_ms, math.nan),
            ttft_ms=floats(ttft_ms, math.nan),
            input_tokens=floats(input_tokens, 0.0),
            output_tokens=floats(output_tokens, 0.0),
            cost_usd=floats(cost_usd, math.nan),
            cache_hit=np.zeros(n, dtype=bool) if cache_hit is None else np.asarray(cache_hit, dtype=bool),
        )

    def _add(
        self,
        *,
        ts_end: FloatArray,
        cells: list[CellKey],
        users: list[str | None],
        failure: npt.NDArray[np.int8],
        latency_ms: FloatArray,
        ttft_ms: FloatArray,
        input_tokens: FloatArray,
        output_tokens: FloatArray,
        cost_usd: FloatArray,
        cache_hit: npt.NDArray[np.bool_],
    ) -> int:
        n = len(ts_end)
        if not n:
            return 0
        now = self.clock()
        sec = np.floor(ts_end).astype(np.int64)
        with self._lock:
            keep = (sec >= int(now) - self.window_s + 1) & (sec <= int(now) + _FUTURE_SLACK_S)
            cid = self._cell_id_array(cells)
            keep &= cid >= 0
            # A slot already holding a newer second cannot take an older one: skip those too.
            seconds = np.unique(sec[keep])
            for s in seconds.tolist():
                if self._slots[s % self.window_s].second > s:
                    keep &= sec != s
            if not keep.all():
                idx = np.flatnonzero(keep)
                sec, cid = sec[idx], cid[idx]
                failure, latency_ms, ttft_ms = failure[idx], latency_ms[idx], ttft_ms[idx]
                input_tokens, output_tokens = input_tokens[idx], output_tokens[idx]
                cost_usd, cache_hit = cost_usd[idx], cache_hit[idx]
                users = [users[i] for i in idx.tolist()]
            added = len(sec)
            self.skipped += n - added
            if not added:
                return 0
            self._oldest_added = min(self._oldest_added, float(sec.min()))
            self.added += added
            cost_unknown = np.isnan(cost_usd)
            cost = np.where(cost_unknown, 0.0, cost_usd)
            lat_ok = np.isfinite(latency_ms) & (latency_ms >= 0)
            ttft_ok = np.isfinite(ttft_ms) & (ttft_ms >= 0)
            lat_keys = _packed_keys(np.where(lat_ok, latency_ms, 0.0))
            ttft_keys = _packed_keys(np.where(ttft_ok, ttft_ms, 0.0))
            for s in np.unique(sec).tolist():
                m = slice(None) if len(seconds) == 1 else (sec == s)
                slot = self._slots[s % self.window_s]
                if slot.second != s:
                    slot.second = s
                    slot.empty()
                slot.version += 1
                ids, inv = np.unique(cid[m], return_inverse=True)
                rows = _counter_rows(
                    len(ids), inv, failure[m], input_tokens[m], output_tokens[m], cost[m],
                    cost_unknown[m], cache_hit[m],
                )  # fmt: skip
                _merge_counters(slot, ids.astype(np.uint16), rows)
                c = cid[m] << 16
                ok = lat_ok[m]
                slot.lat, slot.lat_n = _merge_bins(slot.lat, slot.lat_n, (c | lat_keys[m])[ok])
                ok = ttft_ok[m]
                slot.ttft, slot.ttft_n = _merge_bins(slot.ttft, slot.ttft_n, (c | ttft_keys[m])[ok])
            named = [i for i, u in enumerate(users) if u]
            if named:
                at = np.asarray(named, dtype=np.int64)
                self._users.append(
                    sec[at], [users[i] or "" for i in named], cid[at], failure[at],
                    np.where(lat_ok, latency_ms, np.nan)[at], np.where(ttft_ok, ttft_ms, np.nan)[at],
                    input_tokens[at], output_tokens[at], cost_usd[at], cache_hit[at],
                )  # fmt: skip
        return added

    def _cell_id_array(self, cells: list[CellKey]) -> IntArray:
        """Cell ids of a batch (under the lock); -1 for a cell beyond :data:`MAX_CELLS`."""
        ids = self._cell_ids
        try:
            return np.array([ids[c] for c in cells], dtype=np.int64)
        except KeyError:
            pass
        batch = dict.fromkeys(cells)
        new = [c for c in batch if c not in ids]
        if len(self._cell_keys) + len(new) > MAX_CELLS:
            self._reintern(keep=[ids[c] for c in batch if c in ids])
        for c in new:
            if len(self._cell_keys) >= MAX_CELLS:
                log.warning(
                    "more than %d provider/model/route/feature/prompt cells in the live window", MAX_CELLS
                )
                break
            self._cell_ids[c] = len(self._cell_keys)
            self._cell_keys.append(c)
        ids = self._cell_ids
        return np.array([ids.get(c, -1) for c in cells], dtype=np.int64)

    def _reintern(self, keep: list[int]) -> None:
        """Give the cells the window still holds (and ``keep``) ids 0..n-1; forget the others (rare)."""
        oldest = int(self.clock()) - self.window_s + 1
        for slot in self._slots:
            if slot.second < oldest and len(slot.ids):
                slot.empty()  # out of the window: never read again
        in_window = self._users.sec >= oldest
        used = np.unique(
            np.concatenate(
                [s.ids.astype(np.int64) for s in self._slots]
                + [self._users.cell[in_window].astype(np.int64), np.asarray(keep, dtype=np.int64)]
            )
        )
        remap = np.zeros(len(self._cell_keys), dtype=np.int64)
        remap[used] = np.arange(len(used))
        self._cell_keys = [self._cell_keys[i] for i in used.tolist()]
        self._cell_ids = {k: i for i, k in enumerate(self._cell_keys)}
        for slot in self._slots:
            if len(slot.ids):
                slot.ids = remap[slot.ids].astype(np.uint16)  # order kept: the remap is monotonic
                for name in ("lat", "ttft"):
                    comb = getattr(slot, name)
                    setattr(slot, name, (remap[comb >> 16].astype(np.uint32) << 16) | (comb & 0xFFFF))
                slot.version += 1
        # Rows older than the window are never read again; 0 keeps them a valid index.
        self._users.cell[:] = np.where(in_window, remap[self._users.cell], 0)
        self._cache.clear()

    @property
    def watching_since(self) -> float:
        """The first second this aggregator can speak for: the second it was made, when
        everything it was given came after (live traffic).  Before it, "no traffic" means "not
        known", and a comparison against such a period would be made up.  ``-inf`` once it was
        given older events (a source that replays recent history): then no start is known."""
        return self._created if self._oldest_added >= self._created else -math.inf

    def clear(self) -> None:
        with self._lock:
            self._slots = [_Slot() for _ in range(self.window_s)]
            self._cache.clear()
            self._users = _UserRing(self._users.capacity)

    # -- reading --------------------------------------------------------------------------
    def _match(self, flt: LiveFilter, cache: _FilterCache | None = None) -> npt.NDArray[np.bool_]:
        """Which cell ids ``flt`` matches (under the lock), extended to cells interned since."""
        have = cache.match if cache is not None else np.zeros(0, dtype=bool)
        n = len(self._cell_keys)
        if len(have) < n:
            if flt.is_all:
                more = np.ones(n - len(have), dtype=bool)
            else:
                more = np.array([flt.matches(k) for k in self._cell_keys[len(have) :]], dtype=bool)
            have = np.concatenate((have, more))
            if cache is not None:
                cache.match = have
        return have

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
                out, complete_from = self._users.figures(flt, self._match(flt.cell_filter), secs)
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
            match = self._match(flt, cache)
            slots = self._slots
            held = np.fromiter((slots[i].second for i in idx.tolist()), dtype=np.int64, count=n) == secs
            versions = np.fromiter((slots[i].version for i in idx.tolist()), dtype=np.int64, count=n)
            stale = held & (cache.versions[idx] != versions)
            for i in idx[stale].tolist():
                cache.values[i] = _figures(slots[i], match)
                cache.versions[i] = slots[i].version
            out = np.zeros((n, _V_WIDTH), dtype=np.float64)
            out[:, _V_LAT:] = np.nan
            out[held] = cache.values[idx[held]]
        return _series(secs, out, -math.inf)

    def percentiles(
        self, flt: LiveFilter = ALL, *, seconds: int = 60, now: float | None = None, ttft: bool = False
    ) -> dict[float, float]:
        """p50/p95/p99 over the last ``seconds`` (not per second): for a headline figure."""
        now = self.clock() if now is None else now
        end = int(now)
        first = end - min(seconds, self.window_s) + 1
        if flt.user is not None:
            with self._lock:
                values = self._users.values(flt, self._match(flt.cell_filter), first, end, ttft=ttft)
            if not len(values):
                return dict.fromkeys(QUANTILES, math.nan)
            return dict(zip(QUANTILES, _exact_quantiles(np.sort(values)), strict=True))
        keys: list[U32Array] = []
        counts: list[I32Array] = []
        with self._lock:
            match = self._match(flt, self._cache.get(flt))
            for sec in range(first, end + 1):
                slot = self._slots[sec % self.window_s]
                if slot.second != sec:
                    continue
                comb, n = (slot.ttft, slot.ttft_n) if ttft else (slot.lat, slot.lat_n)
                if len(comb):
                    if flt.is_all:
                        keys.append(comb)
                        counts.append(n)
                    else:
                        sel = match[comb >> 16]
                        keys.append(comb[sel])
                        counts.append(n[sel])
        if not keys:
            return dict.fromkeys(QUANTILES, math.nan)
        comb = np.concatenate(keys)
        return dict(zip(QUANTILES, _quantiles(comb & 0xFFFF, np.concatenate(counts)), strict=True))

    def dimension_values(self, dimension: str) -> list[str]:
        """Values of one dimension seen in the window (for filter pickers), sorted."""
        if dimension not in DIMENSIONS:
            raise ValueError(f"not a live dimension: {dimension!r}; one of {', '.join(DIMENSIONS)}")
        k = DIMENSIONS.index(dimension)
        oldest = int(self.clock()) - self.window_s + 1
        with self._lock:
            if dimension == "user":
                return self._users.users_since(oldest)
            held = [s.ids for s in self._slots if s.second >= oldest and len(s.ids)]
            ids = np.unique(np.concatenate(held)).tolist() if held else []
            found = {self._cell_keys[i][k] for i in ids}
        found.discard("")
        return sorted(found)


def _counter_rows(  # noqa: PLR0917
    n: int,
    inv: IntArray,
    failure: npt.NDArray[np.int8],
    tok_in: FloatArray,
    tok_out: FloatArray,
    cost: FloatArray,
    cost_unknown: npt.NDArray[np.bool_],
    cache: npt.NDArray[np.bool_],
) -> FloatArray:
    """One counters row per cell of a batch-second (``inv``: each event's row)."""
    rows = np.zeros((n, _N_COUNTERS), dtype=np.float64)
    rows[:, _V_N] = np.bincount(inv, minlength=n)
    # Failures: one bincount over (row, failure) pairs.
    flat = inv * _N_FAILURES + failure.astype(np.int64)
    rows[:, _V_FAIL : _V_FAIL + _N_FAILURES] = np.bincount(flat, minlength=n * _N_FAILURES).reshape(
        n, _N_FAILURES
    )
    rows[:, _V_IN] = np.bincount(inv, weights=tok_in, minlength=n)
    rows[:, _V_OUT] = np.bincount(inv, weights=tok_out, minlength=n)
    rows[:, _V_COST] = np.bincount(inv, weights=cost, minlength=n)
    rows[:, _V_COST_UNKNOWN] = np.bincount(inv, weights=cost_unknown, minlength=n)
    rows[:, _V_CACHE] = np.bincount(inv, weights=cache, minlength=n)
    return rows


def _merge_counters(slot: _Slot, ids: U16Array, rows: FloatArray) -> None:
    """Add ``rows`` (for sorted, unique ``ids``) into the slot's counters."""
    if not len(slot.ids):
        slot.ids, slot.counters = ids, rows
        return
    pos = np.searchsorted(slot.ids, ids)
    found = (pos < len(slot.ids)) & (slot.ids[np.minimum(pos, len(slot.ids) - 1)] == ids)
    if found.all():
        slot.counters[pos] += rows  # the usual case: cells this second has seen already
        return
    all_ids = np.union1d(slot.ids, ids).astype(np.uint16)
    counters = np.zeros((len(all_ids), _N_COUNTERS), dtype=np.float64)
    counters[np.searchsorted(all_ids, slot.ids)] = slot.counters
    counters[np.searchsorted(all_ids, ids)] += rows
    slot.ids, slot.counters = all_ids, counters


def _merge_bins(bins: U32Array, counts: I32Array, new: IntArray) -> tuple[U32Array, I32Array]:
    """Add one count per entry of ``new`` (``cell << 16 | key``) to sorted ``bins`` (as new arrays)."""
    if not len(new):
        return bins, counts
    wide, n = np.unique(new, return_counts=True)
    keys = wide.astype(np.uint32)
    if not len(bins):
        return keys, n.astype(np.int32)
    pos = np.searchsorted(bins, keys)
    found = (pos < len(bins)) & (bins[np.minimum(pos, len(bins) - 1)] == keys)
    counts = counts.copy()
    np.add.at(counts, pos[found], n[found].astype(np.int32))
    missing = ~found
    if missing.any():
        bins = np.insert(bins, pos[missing], keys[missing])
        counts = np.insert(counts, pos[missing], n[missing].astype(np.int32))
    return bins, counts


def _figures(slot: _Slot, match: npt.NDArray[np.bool_]) -> FloatArray:
    """One second's row of figures for the cells ``match`` selects."""
    row = np.zeros(_V_WIDTH, dtype=np.float64)
    row[_V_LAT:] = np.nan
    if not len(slot.ids):
        return row
    sel = match[slot.ids]
    if sel.all():
        row[:_N_COUNTERS] = slot.counters.sum(axis=0)
    elif sel.any():
        row[:_N_COUNTERS] = slot.counters[sel].sum(axis=0)
    else:
        return row
    for first, bins, counts in ((_V_LAT, slot.lat, slot.lat_n), (_V_TTFT, slot.ttft, slot.ttft_n)):
        if not len(bins):
            continue
        keep = match[bins >> 16]
        if keep.all():
            row[first : first + len(QUANTILES)] = _quantiles(bins & 0xFFFF, counts)
        elif keep.any():
            row[first : first + len(QUANTILES)] = _quantiles(bins[keep] & 0xFFFF, counts[keep])
    return row


def _quantiles(packed: npt.NDArray[Any], counts: npt.NDArray[Any]) -> list[float]:
    """p50/p95/p99 of binned values (16-bit keys), ranked the way DDSketch ranks (rank = q * (n - 1)).

    A histogram over the key range and its running sum: no sort, whatever the number of bins.
    """
    if not len(packed):
        return [math.nan] * len(QUANTILES)
    keys = packed.astype(np.int64)
    lo = int(keys.min())
    cum = np.cumsum(np.bincount(keys - lo, weights=counts))
    total = float(cum[-1])
    out = []
    for q in QUANTILES:
        i = int(np.searchsorted(cum, q * (total - 1), side="right"))
        out.append(_packed_value(lo + min(i, len(cum) - 1)))
    return out


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

    Users are interned to small integers (cells use the aggregator's ids); the
    user table is rebuilt from what the ring still holds when it grows past a
    few times the ring's size, so a long run with ever-new users stays bounded.
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

    def live(self) -> npt.NDArray[np.bool_]:
        held: npt.NDArray[np.bool_] = self.sec != np.iinfo(np.int64).min
        return held

    def append(  # noqa: PLR0917
        self,
        secs: IntArray,
        names: list[str],
        cells: IntArray,
        fails: npt.NDArray[np.int8],
        lats: FloatArray,
        ttfts: FloatArray,
        ins: FloatArray,
        outs: FloatArray,
        costs: FloatArray,
        caches: npt.NDArray[np.bool_],
    ) -> None:
        if len(secs) > self.capacity:
            k = len(secs) - self.capacity
            secs, names, cells, fails = secs[k:], names[k:], cells[k:], fails[k:]
            lats, ttfts, ins, outs, costs, caches = (
                lats[k:],
                ttfts[k:],
                ins[k:],
                outs[k:],
                costs[k:],
                caches[k:],
            )
        if len(self.users) > 4 * self.capacity:
            self._reintern()
        users = self.users
        uid = [users.setdefault(u, len(users)) for u in names]
        n = len(secs)
        at = self.size % self.capacity
        first = min(n, self.capacity - at)
        for dst, src in (
            (self.sec, secs), (self.user, uid), (self.cell, cells), (self.failure, fails),
            (self.lat, lats), (self.ttft, ttfts), (self.tok_in, ins), (self.tok_out, outs),
            (self.cost, costs), (self.cache, caches),
        ):  # fmt: skip
            arr = np.asarray(src)
            dst[at : at + first] = arr[:first]
            if first < n:
                dst[: n - first] = arr[first:]
        self.size += n

    def _reintern(self) -> None:
        live = self.live()
        keep = np.unique(self.user[live])
        by_id = {i: u for u, i in self.users.items()}
        remap = np.zeros(len(self.users), dtype=np.int32)
        self.users = {}
        for new, old in enumerate(keep.tolist()):
            self.users[by_id[old]] = new
            remap[old] = new
        self.user[live] = remap[self.user[live]]

    def _rows(
        self, flt: LiveFilter, match: npt.NDArray[np.bool_], first: int, last: int
    ) -> npt.NDArray[np.bool_] | None:
        uid = self.users.get(flt.user or "")
        if uid is None:
            return None
        mask: npt.NDArray[np.bool_] = (self.user == uid) & (self.sec >= first) & (self.sec <= last)
        if not flt.cell_filter.is_all:
            mask &= match[self.cell]
        return mask

    def oldest_complete(self) -> float:
        """The first second all of whose user events are still in the ring."""
        if self.size <= self.capacity:
            return -math.inf
        return float(self.sec[self.size % self.capacity]) + 1  # that second lost its earlier rows

    def figures(
        self, flt: LiveFilter, match: npt.NDArray[np.bool_], secs: IntArray
    ) -> tuple[FloatArray, float]:
        n = len(secs)
        out = np.zeros((n, _V_WIDTH), dtype=np.float64)
        out[:, _V_LAT:] = np.nan
        complete_from = self.oldest_complete()
        if complete_from > secs[0]:
            out[secs < complete_from] = np.nan
        mask = self._rows(flt, match, int(secs[0]), int(secs[-1]))
        if mask is None or not mask.any():
            return out, complete_from
        pos = self.sec[mask] - secs[0]
        fails = self.failure[mask].astype(np.int64)
        out[:, _V_N] += np.bincount(pos, minlength=n)
        out[:, _V_FAIL : _V_FAIL + _N_FAILURES] += np.bincount(
            pos * _N_FAILURES + fails, minlength=n * _N_FAILURES
        ).reshape(n, _N_FAILURES)
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

    def values(
        self, flt: LiveFilter, match: npt.NDArray[np.bool_], first: int, last: int, *, ttft: bool
    ) -> FloatArray:
        mask = self._rows(flt, match, first, last)
        if mask is None:
            return np.zeros(0)
        v = (self.ttft if ttft else self.lat)[mask].astype(np.float64)
        return v[~np.isnan(v)]

    def users_since(self, oldest: int) -> list[str]:
        ids = set(np.unique(self.user[self.sec >= oldest]).tolist())
        return sorted(u for u, i in self.users.items() if i in ids)


__all__ = [
    "ALL",
    "DIMENSIONS",
    "MAX_CELLS",
    "QUANTILES",
    "WINDOW_S",
    "LiveAggregator",
    "LiveFilter",
    "LiveSeries",
    "bin_keys",
    "key_value",
    "prompt_key",
    "split_prompt",
]
