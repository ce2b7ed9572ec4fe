"""The feed behind the traffic pages: a QTimer that turns the live aggregator (or the store) into frames.

Nothing here waits on the GUI thread:

- live frames are read from :class:`~app.sources.live.LiveAggregator` on one
  worker thread (``controlroom-livefeed``): the aggregator's lock may be held
  by the ingest writer for a whole batch, and the GUI must not queue behind it;
- history frames, spend today, budgets, open breakers and the values the filter
  combos offer come from the store through :class:`~app.ui.bridge.Bridge`.
  History and spend come from the rollups, except with a prompt chosen: the
  rollups have no prompt, so they are read from the events table
  (:func:`storage.queries.series.query_series_from_events`, up to 7 days; a
  longer range gives an empty frame whose ``note`` says why).  The prompt
  combo offers the prompts seen live and every version in the store's registry.

Results come back as signals, so pages only ever run ``setData`` with arrays
that are already built: the worker also derives every chart's series
(:meth:`TrafficFrame.chart_series`: rates, hit rate, cost per minute), so a
refresh on the GUI thread is ``setData`` and a header per chart, nothing else.

The first time a live aggregator is attached the app has finished starting
up, and :func:`freeze_startup_objects` moves everything allocated so far
(modules, widgets, pyqtgraph's items: a couple of hundred thousand objects)
out of the cyclic garbage collector's reach.  A full collection holds the GIL
for as long as it walks, about 0.6 us an object: over everything, that was a
GUI stall of 100+ ms whenever one ran; over what the app allocates after
start-up, it is a few ms.  A request is dropped when a newer one was made in the
meantime (the operator changed a filter), so a slow answer never overwrites
a fresh one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.budget import Budget, period_bounds
from app.core.event import FAILURE_TYPES, Failure
from app.sources.live import DIMENSIONS, LiveAggregator, LiveFilter, LiveSeries
from app.ui.filters import FilterState
from app.ui.qt import QObject, QTimer, Signal

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
DAY = 86400

#: How often live charts refresh: they move in 1-second steps, so once a second (more only costs the GUI).
LIVE_INTERVAL_MS = 1000
#: How often the store is asked again: history charts, spend today, budgets, breakers.
STORE_INTERVAL_S = 15.0
#: How often the filter combos learn the values seen in live traffic (a pass over every cell of
#: the window: at 20,000 events/s that is hundreds of thousands, so not often).
DIMS_INTERVAL_S = 60.0
#: How often the Overview's p95 is merged again, and over how many seconds (merging a minute of
#: every cell's latency bins takes a few ms at 20,000 events/s: a histogram of bin keys).  Until
#: a value is known it is asked on every refresh, so the tile reads from the first seconds seen.
PERCENTILES_INTERVAL_S = 5.0
P95_WINDOW_S = 60
#: Seconds per period of the Overview's "change against the previous period".
OVERVIEW_PERIOD_S = 300
#: Sparkline points on the Overview (the live window in buckets of 15 s).
SPARK_BUCKET_S = 15

HISTORY_METRICS: tuple[str, ...] = (
    "requests",
    *(f"failure:{f.value}" for f in FAILURE_TYPES),
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cache_hits",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "ttft_p50",
    "ttft_p95",
)


@dataclass(frozen=True)
class BudgetLine:
    name: str
    limit_usd: float
    warn_at: tuple[float, ...] = ()
    #: The time zone the budget's day runs in (docs/semantics.md: UTC unless it says otherwise).
    timezone: str = "UTC"


def day_zone(budgets: list[BudgetLine]) -> str:
    """The time zone "today" is counted in: the daily budget's shown against it (the tightest),
    so the Overview's spend and the budget the gateway enforces mean the same day; UTC without one."""
    return min(budgets, key=lambda b: b.limit_usd).timezone if budgets else "UTC"


def day_bounds(ts: float, zone: str) -> tuple[float, float]:
    """``[start, end)`` of the day ``ts`` falls in, between midnights in ``zone`` (23 or 25 hours
    across a DST change); a zone this machine does not know counts as UTC."""
    try:
        return period_bounds(Budget("today", period="day", timezone=zone), ts)
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        return period_bounds(Budget("today", period="day"), ts)


def day_starts(t: F64, zone: str) -> F64:
    """For each time in ``t`` (ascending), the start of its day in ``zone``."""
    out = np.empty_like(t)
    if not len(t):
        return out
    start, end = day_bounds(float(t[0]), zone)
    i = 0
    while i < len(t):
        j = max(int(np.searchsorted(t, end, side="left")), i + 1)
        out[i:j] = start
        i = j
        if i < len(t):
            start, end = day_bounds(float(t[i]), zone)
    return out


@dataclass(frozen=True)
class BreakerMark:
    """A breaker transition, drawn on the time axis so cause and effect sit on one picture."""

    ts: float
    target: str
    from_state: str
    to_state: str
    cause: str


@dataclass
class StoreFacts:
    """What only the store knows: spend today for the filter, the same time yesterday, budgets.

    "Today" runs from midnight in :attr:`zone`: the daily budget's time zone, UTC without one.
    """

    fetched_at: float = math.nan
    spend_today_usd: float | None = None
    spend_yesterday_usd: float | None = None
    budgets: list[BudgetLine] = field(default_factory=list)
    open_breakers: int | None = None
    dimension_values: dict[str, list[str]] = field(default_factory=dict)
    transitions: list[BreakerMark] = field(default_factory=list)

    @property
    def zone(self) -> str:
        return day_zone(self.budgets)


@dataclass
class TrafficFrame:
    """One picture of traffic: counts per bucket of ``step_s`` seconds starting at ``t``.

    Rates for the charts come from :meth:`rate` (per second live, per minute
    in history, as ui.md says).  ``spend_day_usd`` is cumulative spend within
    each day (from midnight in the daily budget's time zone, UTC without one)
    at the end of each bucket (live: today, from the store plus the live
    seconds since it was asked).
    """

    state: FilterState
    t: F64
    step_s: int
    requests: F64
    failures: dict[Failure, F64]
    input_tokens: F64
    output_tokens: F64
    cost_usd: F64
    cache_hits: F64
    latency_ms: dict[str, F64]  # p50, p95, p99
    ttft_ms: dict[str, F64]  # p50, p95
    spend_day_usd: F64
    budgets: list[BudgetLine] = field(default_factory=list)
    transitions: list[BreakerMark] = field(default_factory=list)
    #: Live: spend in the 60 s ending at each second (NaN where less than a minute is known).
    cost_min: F64 | None = None
    #: Where the figures come from: ``live`` (the aggregator), ``rollups`` or ``events`` (history).
    source: str = "live"
    #: Why a frame is empty when it is not for lack of traffic (the chart says it).
    note: str | None = None
    made_at: float = field(default_factory=time.time)
    _chart_series: dict[str, dict[str, F64]] | None = field(default=None, repr=False, compare=False)

    @property
    def live(self) -> bool:
        return self.state.live

    @property
    def rate_unit(self) -> str:
        return "s" if self.live else "min"

    def rate(self, counts: F64) -> F64:
        """Counts per bucket as a rate per second (live) or per minute (history)."""
        per = 1.0 if self.live else self.step_s / 60.0
        return counts / per

    @property
    def cost_per_min(self) -> F64:
        """Live: spend in the 60 s ending at each second; history: the bucket's spend per minute."""
        if self.cost_min is not None:
            return self.cost_min
        return self.rate(self.cost_usd)

    @property
    def errors(self) -> F64:
        total = np.zeros_like(self.requests)
        for a in self.failures.values():
            total = total + a
        return total

    def is_empty(self) -> bool:
        return not bool(np.nansum(self.requests))

    def chart_series(self) -> dict[str, dict[str, F64]]:
        """Every Traffic chart's series, by chart key and series key, as drawn (rates in this frame's unit).

        Built once per frame (the live feed builds it on its worker thread) and kept.
        """
        if self._chart_series is None:
            r = self.rate
            with np.errstate(invalid="ignore", divide="ignore"):
                hit_rate = np.where(self.requests > 0, self.cache_hits / self.requests, np.nan)
            self._chart_series = {
                "requests": {"requests": r(self.requests), "errors": r(self.errors)},
                "latency": dict(self.latency_ms),
                "ttft": dict(self.ttft_ms),
                "failures": {f.value: r(self.failures[f]) for f in FAILURE_TYPES},
                "cost": {"cost": self.cost_per_min},
                "spend": {"spend": self.spend_day_usd},
                "tokens": {"input": r(self.input_tokens), "output": r(self.output_tokens)},
                "cache": {"hits": r(self.cache_hits), "hit_rate": hit_rate},
            }
        return self._chart_series


def live_frame(
    live: LiveAggregator, state: FilterState, facts: StoreFacts | None = None, *, now: float | None = None
) -> TrafficFrame:
    """The live window for ``state`` (1-second buckets) from the aggregator."""
    # End at the last complete second: the current one is still filling and would always dip.
    now = (live.clock() if now is None else now) - 1.0
    # A minute more than shown, so the first seconds' "cost in the last minute" is whole.
    wide = live.series(state.live_filter(), seconds=state.seconds + 59, now=now)
    c = np.concatenate([[0.0], np.cumsum(wide.cost_usd)])
    ends = np.arange(1, len(wide.t) + 1)
    per_min = c[ends] - c[np.maximum(ends - 60, 0)]
    per_min[:59] = np.nan  # less than a minute behind it (the aggregator keeps 15 minutes)
    w = slice(len(wide.t) - state.seconds, None)
    s = _slice_series(wide, w)
    cost = s.cost_usd
    cum = np.cumsum(cost)
    offset = 0.0
    if facts is not None and facts.spend_today_usd is not None and math.isfinite(facts.fetched_at):
        # The store's figure covers everything stored up to fetched_at; live seconds after it add on.
        i = int(np.searchsorted(s.t, math.floor(facts.fetched_at), side="right")) - 1
        offset = facts.spend_today_usd - (float(cum[i]) if 0 <= i < len(cum) else 0.0)
    spend = offset + cum
    day_start = day_bounds(float(s.t[-1]), facts.zone if facts else "UTC")[0] if len(s.t) else 0.0
    spend = np.where(s.t >= day_start, np.maximum(spend, 0.0), np.nan)
    # Seconds before the aggregator was watching are not known, not zero: right after start-up
    # the lines begin where the app began, instead of a flat "no traffic" across the window.
    unseen = s.t < live.watching_since

    def known(a: F64) -> F64:
        return np.where(unseen, np.nan, a) if unseen[0] else a

    return TrafficFrame(
        state=state,
        t=s.t,
        step_s=1,
        requests=known(s.requests),
        failures={f: known(s.failures[f]) for f in FAILURE_TYPES},
        input_tokens=known(s.input_tokens),
        output_tokens=known(s.output_tokens),
        cost_usd=known(cost),
        cache_hits=known(s.cache_hits),
        latency_ms={"p50": s.latency_ms[0.5], "p95": s.latency_ms[0.95], "p99": s.latency_ms[0.99]},
        ttft_ms={"p50": s.ttft_ms[0.5], "p95": s.ttft_ms[0.95]},
        spend_day_usd=known(spend),
        budgets=list(facts.budgets) if facts is not None else [],
        transitions=list(facts.transitions) if facts is not None else [],
        cost_min=known(per_min[w]),
    )


def _slice_series(s: LiveSeries, w: slice) -> LiveSeries:
    return LiveSeries(
        t=s.t[w],
        requests=s.requests[w],
        failures={f: a[w] for f, a in s.failures.items()},
        input_tokens=s.input_tokens[w],
        output_tokens=s.output_tokens[w],
        cost_usd=s.cost_usd[w],
        cost_unknown=s.cost_unknown[w],
        cache_hits=s.cache_hits[w],
        latency_ms={q: a[w] for q, a in s.latency_ms.items()},
        ttft_ms={q: a[w] for q, a in s.ttft_ms.items()},
    )


def _query_history(
    engine: Any,
    state: FilterState,
    since: float,
    until: float,
    metrics: tuple[str, ...],
    *,
    step: int | None = None,
    now: float | None = None,
) -> Any:
    """A :class:`~storage.queries.series.SeriesResult`: from the rollups, or with a prompt from events."""
    from storage.queries.series import query_series, query_series_from_events

    parts = state.prompt_parts()
    if parts is None:
        return query_series(engine, since, until, metrics, filters=state.series_filter(), step=step, now=now)
    name, version = parts
    return query_series_from_events(
        engine,
        since,
        until,
        metrics,
        prompt_name=name,
        prompt_version=version,
        filters=state.series_filter(),
        step=step,
    )


def history_frame(engine: Any, state: FilterState, *, now: float | None = None) -> TrafficFrame:
    """The range in ``state`` from the store's rollups, or its events with a prompt chosen (blocking:
    call it off the GUI thread)."""
    from storage.queries.series import EVENTS_MAX_WINDOW_S, plan_series

    now = time.time() if now is None else now
    # Whole buckets only: a bucket still filling would always dip at the right edge.
    step = plan_series(now - state.seconds, now, now=now).step
    until = math.floor(now / step) * step
    from_events = state.prompt is not None
    if from_events and state.seconds > EVENTS_MAX_WINDOW_S:
        return _unanswered_frame(
            state,
            until,
            step,
            f"Traffic by prompt is read from the events table (the rollups have no prompt), for "
            f"ranges up to {EVENTS_MAX_WINDOW_S // DAY} days: choose Last 7 days or shorter, or "
            f"clear the prompt filter.",
        )
    res = _query_history(engine, state, until - state.seconds, until, HISTORY_METRICS, step=step, now=now)
    series = res.total() or res.series[0]
    v = series.values
    cost = v["cost_usd"]
    budgets = daily_budgets(engine, state)  # the frame's days run from their budget's midnight
    day = day_starts(res.buckets, day_zone(budgets))
    spend = np.zeros_like(cost)
    running = 0.0
    for i in range(len(cost)):  # a few hundred buckets: a plain loop is clearer than a segmented cumsum
        if i and day[i] != day[i - 1]:
            running = 0.0
        running += float(cost[i])
        spend[i] = running
    return TrafficFrame(
        state=state,
        t=res.buckets,
        step_s=res.plan.step,
        requests=v["requests"],
        failures={f: v[f"failure:{f.value}"] for f in FAILURE_TYPES},
        input_tokens=v["input_tokens"],
        output_tokens=v["output_tokens"],
        cost_usd=cost,
        cache_hits=v["cache_hits"],
        latency_ms={"p50": v["latency_p50"], "p95": v["latency_p95"], "p99": v["latency_p99"]},
        ttft_ms={"p50": v["ttft_p50"], "p95": v["ttft_p95"]},
        spend_day_usd=spend,
        budgets=budgets,
        source="events" if from_events else "rollups",
    )


def _unanswered_frame(state: FilterState, until: float, step: int, note: str) -> TrafficFrame:
    """A history frame of unknown (NaN) buckets over the range, with ``note`` saying why."""
    t = until - state.seconds + step * np.arange(state.seconds // step, dtype=np.float64)
    nan = np.full(len(t), np.nan)
    return TrafficFrame(
        state=state,
        t=t,
        step_s=step,
        requests=nan.copy(),
        failures={f: nan.copy() for f in FAILURE_TYPES},
        input_tokens=nan.copy(),
        output_tokens=nan.copy(),
        cost_usd=nan.copy(),
        cache_hits=nan.copy(),
        latency_ms={"p50": nan.copy(), "p95": nan.copy(), "p99": nan.copy()},
        ttft_ms={"p50": nan.copy(), "p95": nan.copy()},
        spend_day_usd=nan.copy(),
        source="events",
        note=note,
    )


def _history_with_series(engine: Any, state: FilterState) -> TrafficFrame:
    frame = history_frame(engine, state)
    frame.chart_series()  # off the GUI thread, like live frames
    return frame


def _first_event_ts(engine: Any) -> float | None:
    """When the store's oldest event started (one index lookup), or ``None`` for an empty store."""
    from sqlalchemy import func, select

    from storage.models import EVENTS

    with engine.connect() as conn:
        first = conn.execute(select(func.min(EVENTS.c.ts_start))).scalar()
    return None if first is None else float(first)


def daily_budgets(engine: Any, state: FilterState) -> list[BudgetLine]:
    """The store's daily money budgets whose scope the filter is inside (blocking)."""
    from storage.queries.control import list_objects

    chosen = {d: v for d, v in state.dims().items() if v is not None}
    lines = []
    for b in list_objects(engine, "budget"):
        scope = b.get("scope") or {}
        if b.get("period") != "day" or b.get("limit_usd") is None:
            continue
        if all(chosen.get(k) == v for k, v in scope.items()):
            warn_at = tuple(b.get("warn_at") or ())
            lines.append(BudgetLine(b["name"], float(b["limit_usd"]), warn_at, b.get("timezone") or "UTC"))
    return lines


def read_store_facts(engine: Any, state: FilterState, *, now: float | None = None) -> StoreFacts:
    """Spend today and yesterday to this time, daily budgets that apply, open breakers (blocking)."""
    from storage.queries.control import list_breaker_overrides, list_breaker_transitions
    from storage.queries.prompts import list_prompts
    from storage.queries.series import top_n

    now = time.time() if now is None else now
    facts = StoreFacts(fetched_at=now, budgets=daily_budgets(engine, state))
    day = day_bounds(now, facts.zone)[0]
    yesterday = day_bounds(day - 1, facts.zone)[0]
    until = max(math.ceil(now / 60) * 60, day + 60)

    def spend(a: float, b: float) -> float:
        res = _query_history(engine, state, a, b, ("cost_usd",), now=now)
        total = res.total() or res.series[0]
        return float(np.nansum(total.values["cost_usd"]))

    facts.spend_today_usd = spend(day, until)
    # "Yesterday by now" only when the store reaches back to the start of yesterday: a store
    # that began recording yesterday evening (a first run, the demo's last-24-hours history)
    # would compare today with a fraction of a day.
    first = _first_event_ts(engine)
    if first is not None and first < yesterday + 60:
        facts.spend_yesterday_usd = spend(yesterday, yesterday + (until - day))
    state_by_target: dict[str, str] = {}
    for tr in list_breaker_transitions(engine, limit=1000):
        state_by_target[tr.target] = tr.to_state
    shown_from = now - max(state.seconds, 900)
    facts.transitions = [
        BreakerMark(tr.ts, tr.target, tr.from_state, tr.to_state, tr.cause)
        for tr in list_breaker_transitions(engine, since=shown_from, limit=200)
    ]
    for o in list_breaker_overrides(engine, now=now):
        state_by_target[o.target] = o.state
    facts.open_breakers = sum(1 for s in state_by_target.values() if s == "open")
    for dim in DIMENSIONS:
        if dim == "prompt":
            # The registry's prompts, every version (numbered 1..latest, never removed: docs/prompts.md).
            facts.dimension_values[dim] = [
                f"{p.name}@{v}" for p in list_prompts(engine) for v in range(1, (p.latest_version or 0) + 1)
            ]
            continue
        rows = top_n(engine, now - DAY, until, dim, n=50, now=now)
        facts.dimension_values[dim] = [r.key for r in rows if r.key]
    return facts


@dataclass
class OverviewSnapshot:
    """The Overview's vital signs: current and previous-period values, and a sparkline each."""

    values: dict[str, float | None]
    previous: dict[str, float | None]
    sparks: dict[str, F64]
    budget_today_usd: float | None = None
    #: The time zone "today" runs in (the daily budget's, UTC without one); ``None`` before the store answers.
    day_zone: str | None = None

    def as_mapping(self) -> dict[str, Any]:
        return {
            **self.values,
            "previous": self.previous,
            "budget_today_usd": self.budget_today_usd,
            "day_zone": self.day_zone,
        }


def overview_snapshot(
    live: LiveAggregator,
    flt: LiveFilter,
    facts: StoreFacts | None,
    *,
    now: float | None = None,
    p95: tuple[float, float] | None = None,
) -> OverviewSnapshot:
    """Last 5 minutes against the 5 before, from the live window; cost today from the store plus live."""
    now = live.clock() if now is None else now
    s = live.series(flt, now=now)  # the whole window, one point per second
    p = OVERVIEW_PERIOD_S
    cur = slice(len(s.t) - p, len(s.t))
    prev = slice(len(s.t) - 2 * p, len(s.t) - p)
    errors = s.errors

    def ratio(num: F64, den: F64, sl: slice) -> float | None:
        d = float(den[sl].sum())
        return float(num[sl].sum()) / d if d else None

    if p95 is None:
        p95 = overview_p95(live, flt, now=now)
    # A rate over the seconds that actually had a chance to see traffic: right
    # after start-up the window holds a few seconds, and dividing by five
    # minutes would show a busy gateway as "0.0 /s".
    seen = np.flatnonzero(s.requests)
    covered = min(p, len(s.t) - int(seen[0])) if seen.size else p
    values: dict[str, float | None] = {
        "requests_per_s": float(s.requests[cur].sum()) / max(covered, 1),
        "p95_latency_ms": _finite(p95[0]),
        "error_rate": ratio(errors, s.requests, cur),
        "cache_hit_rate": ratio(s.cache_hits, s.requests, cur),
        "cost_today_usd": None,
        "open_breakers": None,
    }
    previous: dict[str, float | None] = {
        "requests_per_s": float(s.requests[prev].sum()) / p,
        "p95_latency_ms": _finite(p95[1]),
        "error_rate": ratio(errors, s.requests, prev),
        "cache_hit_rate": ratio(s.cache_hits, s.requests, prev),
        "cost_today_usd": None,
        "open_breakers": None,
    }
    if not s.requests.any():
        values["requests_per_s"] = None
    # A period the aggregator was not watching yet has no figures, not zeros (right after start-up).
    watched_prev = len(s.t) >= 2 * p and live.watching_since <= s.t[prev.start]
    if not watched_prev:
        for key in ("requests_per_s", "error_rate", "cache_hit_rate"):
            previous[key] = None
    if live.watching_since > now - 2 * P95_WINDOW_S:
        previous["p95_latency_ms"] = None
    budget = None
    if facts is not None:
        if facts.spend_today_usd is not None:
            after = s.t > math.floor(facts.fetched_at)
            values["cost_today_usd"] = facts.spend_today_usd + float(s.cost_usd[after].sum())
            previous["cost_today_usd"] = facts.spend_yesterday_usd
        values["open_breakers"] = facts.open_breakers
        global_budgets = [b.limit_usd for b in facts.budgets]
        budget = min(global_budgets) if global_budgets else None
    sparks = _sparks(s.t, s.requests, errors, s.cache_hits, s.cost_usd, s.latency_ms[0.95])
    # Buckets from before the aggregator was watching are not known: no line there, not zero.
    b = SPARK_BUCKET_S
    bucket_end = s.t[len(s.t) - len(s.t) // b * b :][b - 1 :: b] + 1
    unseen = bucket_end <= live.watching_since
    if unseen.any():
        sparks = {k: np.where(unseen, np.nan, v) for k, v in sparks.items()}
    return OverviewSnapshot(values, previous, sparks, budget, facts.zone if facts is not None else None)


def overview_p95(live: LiveAggregator, flt: LiveFilter, *, now: float | None = None) -> tuple[float, float]:
    """p95 latency over the last minute and the minute before (merged from every cell: not cheap)."""
    now = live.clock() if now is None else now
    p = P95_WINDOW_S
    return (
        live.percentiles(flt, seconds=p, now=now)[0.95],
        live.percentiles(flt, seconds=p, now=now - p)[0.95],
    )


_frozen = False


def freeze_startup_objects() -> None:
    """Move every object allocated so far out of the cyclic GC's reach (once per process).

    They stay alive as long as they are referenced; they are just not walked by
    every full collection again.  Called when a live aggregator is first attached.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()  # what is garbage now should be freed, not frozen
    gc.freeze()


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _sparks(t: F64, req: F64, err: F64, hits: F64, cost: F64, p95: F64) -> dict[str, F64]:  # noqa: PLR0917
    b = SPARK_BUCKET_S
    n = len(t) // b * b
    start = len(t) - n

    def per_bucket(a: F64) -> F64:
        return np.asarray(a[start:].reshape(-1, b).sum(axis=1), dtype=np.float64)

    r = per_bucket(req)
    with np.errstate(invalid="ignore", divide="ignore"):
        err_rate = np.where(r > 0, per_bucket(err) / r, np.nan)
        hit_rate = np.where(r > 0, per_bucket(hits) / r, np.nan)
        lat = p95[start:].reshape(-1, b)
        finite = np.isfinite(lat)
        # The slowest second's p95 in each bucket: a spike stays visible on a tiny line.
        lat_max = np.where(finite.any(axis=1), np.nanmax(np.where(finite, lat, -np.inf), axis=1), np.nan)
    return {
        "requests_per_s": r / b,
        "p95_latency_ms": lat_max,
        "error_rate": err_rate,
        "cost_today_usd": np.cumsum(per_bucket(cost)),
        "cache_hit_rate": hit_rate,
    }


class LiveFeed(QObject):
    """Refreshes on a timer; emits :class:`TrafficFrame` for the charts and snapshots for the Overview.

    ``attach(live=..., bridge=..., store=...)`` connects the sources (any may
    be missing: no live aggregator means no live data, no store means no
    history).  ``set_state`` follows the filter bar.
    """

    frame_ready = Signal(object)  # TrafficFrame
    overview_ready = Signal(object)  # OverviewSnapshot
    dimensions_ready = Signal(object)  # dict[str, list[str]]
    error = Signal(str)
    _live_done = Signal(int, object, object)  # generation, (frame, snapshot) | None, error | None

    def __init__(self, parent: QObject | None = None, *, interval_ms: int = LIVE_INTERVAL_MS) -> None:
        super().__init__(parent)
        self.live: LiveAggregator | None = None
        self.bridge: Any = None
        self._store: Callable[[], Any] = lambda: None
        self.state = FilterState()
        self.facts: StoreFacts | None = None
        self.last_frame: TrafficFrame | None = None
        self.last_snapshot: OverviewSnapshot | None = None
        self.want_overview = True
        self.want_frames = True
        #: Time the GUI thread spent per refresh (emitting and drawing), seconds: for the benchmark.
        self.refresh_times: list[float] = []
        self._generation = 0
        self._live_busy = False
        self._history_busy = False
        self._facts_busy = False
        self._last_store_ask = -math.inf
        self._last_dims = -math.inf
        self._last_pct = -math.inf
        self._p95: tuple[float, float] | None = None
        #: Seconds the worker took per live read (frame + overview): for the benchmark.
        self.work_times: list[float] = []
        self._live_dims: dict[str, list[str]] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._live_done.connect(self._on_live_done)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.tick)

    # -- wiring -----------------------------------------------------------------------------
    def attach(
        self,
        *,
        live: LiveAggregator | None = None,
        bridge: Any = None,
        store: Callable[[], Any] | None = None,
    ) -> None:
        if live is not None:
            self.live = live
            freeze_startup_objects()
        if bridge is not None:
            self.bridge = bridge
        if store is not None:
            self._store = store
        self.start()

    def start(self) -> None:
        if not self.timer.isActive():
            self.timer.start()
        self.refresh()

    def stop(self) -> None:
        """Stop the timer and the worker thread (and wait for it: tests check no thread is left)."""
        self.timer.stop()
        self._generation += 1
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    @property
    def store(self) -> Any:
        return self._store()

    def set_state(self, state: FilterState) -> None:
        question_changed = state.query_key() != self.state.query_key()
        self.state = state
        if question_changed:
            self._generation += 1
            self._live_busy = self._history_busy = False
            self.facts = None if self.facts is None else StoreFacts(budgets=self.facts.budgets)
            self._p95 = None
            self._last_store_ask = -math.inf
        self.refresh()

    # -- refreshing -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Ask for fresh data now (Ctrl+R); the timer does this on its own."""
        self._last_store_ask = -math.inf
        self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        state = self.state
        # Intervals on the monotonic clock: a wall clock set back (an NTP step, a hand correction)
        # must not stop the store being asked until it catches up again.
        now = time.monotonic()
        if (
            self.bridge is not None
            and self.store is not None
            and (force or now - self._last_store_ask >= STORE_INTERVAL_S)
        ):
            self._last_store_ask = now
            self._ask_store(state)
        if self.live is not None and (not state.paused or force or self.want_overview):
            self._ask_live(state)

    def _ask_live(self, state: FilterState) -> None:
        if self._live_busy or self.live is None:
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="controlroom-livefeed"
            )
        self._live_busy = True
        gen = self._generation
        live = self.live
        facts = self.facts
        frames = self.want_frames and state.live and (not state.paused or self.last_frame is None)
        overview = self.want_overview
        now = time.monotonic()
        dims_due = now - self._last_dims >= DIMS_INTERVAL_S
        if dims_due:
            self._last_dims = now
        known = self._p95 is not None and math.isfinite(self._p95[0])
        pct_due = overview and (now - self._last_pct >= PERCENTILES_INTERVAL_S or not known)
        if pct_due:
            self._last_pct = now
        held_p95 = self._p95

        def work() -> tuple[Any, ...]:
            started = time.perf_counter()
            frame = live_frame(live, state, facts) if frames else None
            if frame is not None:
                frame.chart_series()  # here, not on the GUI thread
            p95 = overview_p95(live, state.live_filter()) if pct_due else held_p95
            snap = overview_snapshot(live, state.live_filter(), facts, p95=p95) if overview else None
            dims = {d: live.dimension_values(d) for d in DIMENSIONS} if dims_due else None
            return frame, snap, dims, p95, time.perf_counter() - started

        future = self._executor.submit(work)

        def done(f: concurrent.futures.Future[Any]) -> None:
            # On the worker thread: only emit; the slot runs on the GUI thread.
            if f.cancelled():
                self._live_done.emit(gen, None, None)
                return
            exc = f.exception()
            self._live_done.emit(gen, None if exc else f.result(), exc)

        future.add_done_callback(done)

    def _on_live_done(self, gen: int, result: Any, exc: Any) -> None:
        if gen != self._generation:
            return
        self._live_busy = False
        if exc is not None:
            log.error("live charts could not be read: %s", exc)
            self.error.emit(f"live data: {type(exc).__name__}: {exc}")
            return
        if result is None:
            return
        frame, snap, dims, p95, work_s = result
        self._p95 = p95
        self.work_times.append(work_s)
        started = time.perf_counter()
        if frame is not None and self.state.live and (not self.state.paused or self.last_frame is None):
            self.last_frame = frame
            self.frame_ready.emit(frame)
        if snap is not None:
            self.last_snapshot = snap
            self.overview_ready.emit(snap)
        if dims is not None:
            self._live_dims = dims
            self._emit_dimensions()
        self.refresh_times.append(time.perf_counter() - started)

    def _emit_dimensions(self) -> None:
        store_dims = self.facts.dimension_values if self.facts is not None else {}
        merged = {d: sorted(set(store_dims.get(d, [])) | set(self._live_dims.get(d, []))) for d in DIMENSIONS}
        self.dimensions_ready.emit(merged)

    def _ask_store(self, state: FilterState) -> None:
        store = self.store
        gen = self._generation
        if not self._facts_busy:
            self._facts_busy = True
            self.bridge.run(
                asyncio.to_thread(read_store_facts, store.engine, state),
                lambda facts: self._on_facts(gen, facts),
                lambda exc: self._on_store_error(gen, "store figures", exc, "facts"),
            )
        if not state.live and not self._history_busy:
            self._history_busy = True
            self.bridge.run(
                asyncio.to_thread(_history_with_series, store.engine, state),
                lambda frame: self._on_history(gen, frame),
                lambda exc: self._on_store_error(gen, "history", exc, "history"),
            )

    def _on_facts(self, gen: int, facts: StoreFacts) -> None:
        self._facts_busy = False
        if gen != self._generation:
            return
        self.facts = facts
        self._emit_dimensions()
        if self.last_frame is not None and not self.state.live:
            self.last_frame.budgets = list(facts.budgets)
            self.last_frame.transitions = list(facts.transitions)
            self.frame_ready.emit(self.last_frame)

    def _on_history(self, gen: int, frame: TrafficFrame) -> None:
        self._history_busy = False
        if gen != self._generation or self.state.live:
            return
        if self.facts is not None:  # its budgets came with it, read with its days
            frame.transitions = list(self.facts.transitions)
        started = time.perf_counter()
        self.last_frame = frame
        self.frame_ready.emit(frame)
        self.refresh_times.append(time.perf_counter() - started)

    def _on_store_error(self, gen: int, what: str, exc: BaseException, which: str) -> None:
        if which == "facts":
            self._facts_busy = False
        else:
            self._history_busy = False
        if gen != self._generation or isinstance(
            exc, concurrent.futures.CancelledError | asyncio.CancelledError
        ):
            return  # shutting down, or a newer question was asked
        log.warning("%s could not be read: %s: %s", what, type(exc).__name__, exc)
        self.error.emit(f"{what}: {type(exc).__name__}: {exc}")
