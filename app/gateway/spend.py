"""Budget spend for the gateway: a running tally per budget, seeded and corrected from the store.

The request path never queries the store.  Each budget keeps ``base`` (its
scope's spend in the store, as of the last refresh) plus this process's own
charges since then.  A refresh runs on the store writer's thread *after* every
event queued before it is written (:meth:`app.gateway.writer.StoreWriter.call`),
so at the moment it is asked for, own charges move from "own" to "in flight"
and are dropped when the answer (which includes them) arrives: nothing is
counted twice or missed, and other gateways' spend shows up at each refresh.

Cache hits cost nothing and are not spend.  Warning levels are remembered per
budget and alert period (:func:`app.core.budget.alert_period_start`), seeded
from the store so a restart does not announce a level again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, func, select

from app.core.budget import (
    Budget,
    BudgetWarning,
    Spend,
    alert_period_start,
    applies_to,
    levels_to_fire,
    parse_period,
    period_bounds,
    spend_message,
    use_ratio,
)
from app.core.routing import RequestContext
from storage.engine import transaction
from storage.models import EVENTS

_COLUMN_SCOPES = ("provider", "model", "route", "feature", "user")


def spend_in_store(bind: Engine | Connection, budget: Budget, start: float, end: float) -> Spend:
    """What the budget's scope spent in ``[start, end)`` according to the events in the store."""
    c = EVENTS.c
    stmt = select(
        func.coalesce(func.sum(c.cost_usd), 0.0),
        func.coalesce(func.sum(c.input_tokens + c.output_tokens), 0),
    ).where(c.ts_start >= start, c.ts_start < end, c.cache_hit == "none")
    for key, value in budget.scope.items():
        if key in _COLUMN_SCOPES:
            stmt = stmt.where(c[key] == value)
        else:
            stmt = stmt.where(c.tags[key].as_string() == value)
    with transaction(bind) as conn:
        usd, tokens = conn.execute(stmt).one()
    return Spend(float(usd or 0.0), int(tokens or 0))


@dataclass(slots=True)
class _Tally:
    budget: Budget
    rolling: bool
    period_start: float = 0.0
    period_end: float = 0.0
    base_usd: float = 0.0
    base_tokens: int = 0
    # (ts, usd, tokens) charged here since the last refresh was asked for / while it runs
    own: deque[tuple[float, float, int]] = field(default_factory=deque)
    in_flight: deque[tuple[float, float, int]] = field(default_factory=deque)
    refreshing: bool = False

    def new_period(self, start: float, end: float) -> None:
        self.period_start, self.period_end = start, end
        self.base_usd, self.base_tokens = 0.0, 0
        self.own.clear()
        self.in_flight.clear()

    def total(self, start: float) -> Spend:
        usd, tokens = self.base_usd, self.base_tokens
        for q in (self.in_flight, self.own):
            if self.rolling:
                while q and q[0][0] < start:
                    q.popleft()
            for _, u, t in q:
                usd += u
                tokens += t
        return Spend(usd, tokens)


@dataclass(frozen=True, slots=True)
class RefreshPlan:
    budget: Budget
    start: float
    end: float
    alert_start: float


class BudgetBook:
    """Spend so far and fired warning levels for every configured budget.  Loop-only (no locks)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tallies: dict[str, _Tally] = {}
        self._fired: dict[tuple[str, float], set[float]] = {}
        self.budgets: tuple[Budget, ...] = ()
        self.stale = True  # a period changed or budgets were reconfigured: refresh soon

    def configure(self, budgets: Iterable[Budget]) -> None:
        """New budget definitions; a budget whose definition did not change keeps its tally."""
        self.budgets = tuple(budgets)
        old = self._tallies
        self._tallies = {}
        for b in self.budgets:
            t = old.get(b.name)
            if t is None or t.budget != b:
                t = _Tally(b, parse_period(b.period).kind == "rolling")
                t.period_start = t.period_end = -1.0
                self.stale = True
            self._tallies[b.name] = t

    def _tally(self, budget: Budget, now: float) -> _Tally:
        t = self._tallies.get(budget.name)
        if t is None or (t.budget is not budget and t.budget != budget):
            t = _Tally(budget, parse_period(budget.period).kind == "rolling")
            self._tallies[budget.name] = t
            t.period_start = t.period_end = -1.0
        if not t.rolling and not (t.period_start <= now < t.period_end):
            t.new_period(*period_bounds(budget, now))
            self.stale = True
        return t

    # --- lookups for app.core.budget.evaluate --------------------------------------------------

    def spend(self, budget: Budget, start: float, end: float) -> Spend:
        t = self._tally(budget, self._clock())
        return t.total(start)

    def fired(self, budget: Budget, alert_start: float) -> Collection[float]:
        return self._fired.get((budget.name, alert_start), ())

    # --- charging --------------------------------------------------------------------------------

    def charge(self, ctx: RequestContext, usd: float, tokens: int, now: float) -> list[BudgetWarning]:
        """Add one request's cost to every budget it falls in; return warning levels reached now."""
        out: list[BudgetWarning] = []
        for b in self.budgets:
            if not applies_to(b, ctx):
                continue
            t = self._tally(b, now)
            t.own.append((now, usd, tokens))
            start = period_bounds(b, now)[0] if t.rolling else t.period_start
            spend = t.total(start)
            ratio = use_ratio(b, spend)
            alert_start = alert_period_start(b, now)
            level = levels_to_fire(b, ratio, self.fired(b, alert_start))
            if level is not None:
                message = spend_message(b, spend)
                if level >= 1.0:
                    message += ": limit reached"
                out.append(BudgetWarning(b.name, level, message, alert_start, ratio))
        return out

    def mark_fired(self, budget: str, alert_start: float, level: float) -> None:
        self._fired.setdefault((budget, alert_start), set()).add(level)

    # --- refresh from the store ------------------------------------------------------------------

    def begin_refresh(self) -> list[RefreshPlan]:
        """What to ask the store now; own charges so far become "in flight" until :meth:`end_refresh`."""
        now = self._clock()
        plans = []
        for b in self.budgets:
            t = self._tally(b, now)
            if t.refreshing:
                continue
            t.refreshing = True
            t.in_flight.extend(t.own)
            t.own.clear()
            start, end = period_bounds(b, now)
            plans.append(
                RefreshPlan(b, start, end if not t.rolling else now + 1.0, alert_period_start(b, now))
            )
        self.stale = False
        return plans

    def end_refresh(
        self, results: dict[str, tuple[Spend, list[float]]] | None, plans: list[RefreshPlan]
    ) -> None:
        """Store the answers of a refresh (``None``: it failed; the in-flight charges go back to own)."""
        for p in plans:
            t = self._tallies.get(p.budget.name)
            if t is None:
                continue
            t.refreshing = False
            got = results.get(p.budget.name) if results is not None else None
            if got is None or (not t.rolling and t.period_start != p.start):
                # Failed, or the period changed meanwhile: keep what we counted ourselves.
                t.own.extendleft(reversed(t.in_flight))
                t.in_flight.clear()
                continue
            spend, fired = got
            t.base_usd, t.base_tokens = spend.usd, spend.tokens
            t.in_flight.clear()
            for level in fired:
                self.mark_fired(p.budget.name, p.alert_start, level)

    def states(self) -> dict[str, tuple[Budget, Spend]]:
        now = self._clock()
        out = {}
        for b in self.budgets:
            t = self._tally(b, now)
            start = period_bounds(b, now)[0]
            out[b.name] = (b, t.total(start))
        return out
