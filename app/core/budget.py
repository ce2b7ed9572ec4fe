"""Budgets: limits on spend per scope and period, warning levels, and what happens at 100% (semantics.md 7).

A budget applies to a request when every key of its scope matches (``{}`` is
all traffic).  Periods are calendar days, weeks (Monday first) and months in
the budget's time zone, or a rolling window of hours or days.  Each warning
level fires once per period, worded the way an operator reads it: "feature
`search` has spent $80.00 of $100.00 (80%) today".  At 100% the action is
``alert_only``, ``block`` or ``downgrade`` to a named cheaper chain; every
budget that applies must pass.

Spend itself lives in the store; :func:`evaluate` takes lookups so this module
stays pure and testable.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.core.format import fmt_tokens
from app.core.routing import RequestContext

_ROLLING = re.compile(r"^rolling_([1-9][0-9]*)([hd])$")
CALENDAR_PERIODS = ("day", "week", "month")

# Scope keys with their own wording; any other key is a tag (team, tier, ...).
_SCOPE_ORDER = ("provider", "model", "route", "feature", "user")


class BudgetAction(StrEnum):
    ALERT_ONLY = "alert_only"
    BLOCK = "block"
    DOWNGRADE = "downgrade"


@dataclass(frozen=True, slots=True)
class Period:
    kind: str  # "day" | "week" | "month" | "rolling"
    hours: int = 0  # rolling windows only
    unit: str = "h"  # how the operator wrote the rolling window: "h" or "d"

    @property
    def phrase(self) -> str:
        """How a message says the period: "today", "this week", "in the last 6 hours"."""
        if self.kind == "day":
            return "today"
        if self.kind in ("week", "month"):
            return f"this {self.kind}"
        if self.unit == "d":
            days = self.hours // 24
            return "in the last day" if days == 1 else f"in the last {days} days"
        return "in the last hour" if self.hours == 1 else f"in the last {self.hours} hours"


def parse_period(text: str) -> Period:
    """``day``, ``week``, ``month``, ``rolling_<N>h`` or ``rolling_<N>d``; ``ValueError`` otherwise."""
    if text in CALENDAR_PERIODS:
        return Period(text)
    m = _ROLLING.match(text)
    if m is None:
        raise ValueError(f"unknown period `{text}`: use day, week, month, rolling_<N>h or rolling_<N>d")
    n = int(m.group(1))
    return Period("rolling", n * 24 if m.group(2) == "d" else n, m.group(2))


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    scope: Mapping[str, str] = field(default_factory=dict)
    period: str = "day"
    timezone: str = "UTC"
    limit_usd: float | None = None
    limit_tokens: int | None = None
    warn_at: tuple[float, ...] = (0.5, 0.8, 0.95)
    action: BudgetAction = BudgetAction.ALERT_ONLY
    downgrade_to: tuple[str, ...] = ()

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not self.name.strip():
            out.append(("name", "a budget needs a name"))
        try:
            parse_period(self.period)
        except ValueError as exc:
            out.append(("period", str(exc)))
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            out.append(("timezone", f"unknown time zone `{self.timezone}`"))
        if self.limit_usd is None and self.limit_tokens is None:
            out.append(("limit_usd", "a budget needs limit_usd, limit_tokens or both"))
        if self.limit_usd is not None and not self.limit_usd > 0:
            out.append(("limit_usd", "must be more than 0"))
        if self.limit_tokens is not None and self.limit_tokens < 1:
            out.append(("limit_tokens", "must be at least 1"))
        for level in self.warn_at:
            if not 0 < level < 1:
                out.append(
                    ("warn_at", f"warn_at level {level:g} is not a fraction between 0 and 1 (0.8 means 80%)")
                )
        if len(set(self.warn_at)) != len(self.warn_at):
            out.append(("warn_at", "warn_at lists a level twice"))
        if self.action is BudgetAction.DOWNGRADE and not self.downgrade_to:
            out.append(("downgrade_to", "action downgrade needs downgrade_to: the cheaper chain to use"))
        if self.action is not BudgetAction.DOWNGRADE and self.downgrade_to:
            out.append(
                (
                    "downgrade_to",
                    f"downgrade_to is only used with action downgrade (action is {self.action.value})",
                )
            )
        for key, value in self.scope.items():
            if not str(value).strip():
                out.append(("scope", f"scope `{key}` needs a value"))
        return out

    @property
    def scope_noun(self) -> str:
        """Who the budget is about: "all traffic", "feature `search`", "team `ml`, user `u-1`"."""
        if not self.scope:
            return "all traffic"
        keys = sorted(self.scope, key=lambda k: (_SCOPE_ORDER.index(k) if k in _SCOPE_ORDER else 99, k))
        return ", ".join(f"{k} `{self.scope[k]}`" for k in keys)


@dataclass(frozen=True, slots=True)
class Spend:
    """What a scope has used within a period."""

    usd: float = 0.0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """One alert to raise now (named ``Warning`` in the brief; renamed so it does not shadow the builtin)."""

    budget: str
    level: float  # the warning level crossed; 1.0 for "limit reached"
    message: str
    period_start: float  # the alert period this level is fired in (once per period)
    ratio: float


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget's standing now: for the budgets page and for :func:`evaluate`."""

    budget: Budget
    spend: Spend
    ratio: float  # the higher of usd and token use against their limits
    period_start: float
    period_end: float
    over: bool  # at or past 100%

    @property
    def message(self) -> str:
        return spend_message(self.budget, self.spend)


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    allowed: bool
    action: BudgetAction | None  # the strongest action in force (block > downgrade > alert_only), if any
    downgrade_chain: tuple[str, ...]
    warnings_to_fire: list[BudgetWarning]
    states: list[BudgetState]  # every budget that applied
    reason: str = ""  # why it was blocked or downgraded, in plain words


SpendLookup = Callable[[Budget, float, float], Spend]
"""``(budget, period_start, period_end) -> Spend`` in that budget's scope."""
FiredLookup = Callable[[Budget, float], Collection[float]]
"""``(budget, alert_period_start) -> levels already fired in that period``."""


def applies_to(budget: Budget, ctx: RequestContext) -> bool:
    """Every scope key must match the request (``{}`` matches all traffic).

    ``provider`` and ``model`` match the target about to be called, so a context without them
    (before routing) is not in a provider's or model's budget.
    """
    return all(ctx.tag(k) == v for k, v in budget.scope.items())


def period_bounds(budget: Budget, now: float) -> tuple[float, float]:
    """The period ``now`` falls in, as epoch seconds ``[start, end)``, in the budget's time zone.

    Calendar periods follow local midnights, so a day across a DST change is 23 or 25 hours.
    A rolling window is ``(now - N hours, now]``.
    """
    p = parse_period(budget.period)
    if p.kind == "rolling":
        return now - p.hours * 3600.0, now
    tz = ZoneInfo(budget.timezone)
    today = datetime.fromtimestamp(now, tz).date()
    if p.kind == "day":
        first, nxt = today, today + timedelta(days=1)
    elif p.kind == "week":
        first = today - timedelta(days=today.weekday())
        nxt = first + timedelta(days=7)
    else:
        first = today.replace(day=1)
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    return _midnight(first, tz), _midnight(nxt, tz)


def alert_period_start(budget: Budget, now: float) -> float:
    """The period a warning level fires once in: the calendar period, or for a rolling window
    the aligned block of its length (a rolling_24h budget alerts at most once per UTC day)."""
    p = parse_period(budget.period)
    if p.kind != "rolling":
        return period_bounds(budget, now)[0]
    span = p.hours * 3600.0
    return math.floor(now / span) * span


def _midnight(d: date, tz: ZoneInfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()


def use_ratio(budget: Budget, spend: Spend) -> float:
    """How much of the budget is used (the higher of money and tokens), 1.0 = the limit."""
    ratios = [0.0]
    if budget.limit_usd:
        ratios.append(spend.usd / budget.limit_usd)
    if budget.limit_tokens:
        ratios.append(spend.tokens / budget.limit_tokens)
    return max(ratios)


def spend_message(budget: Budget, spend: Spend) -> str:
    """ "feature `search` has spent $80.00 of $100.00 (80%) today" (or tokens, when those run out first)."""
    phrase = parse_period(budget.period).phrase
    usd_ratio = spend.usd / budget.limit_usd if budget.limit_usd else -1.0
    tok_ratio = spend.tokens / budget.limit_tokens if budget.limit_tokens else -1.0
    if usd_ratio >= tok_ratio and budget.limit_usd:
        pct = _pct(usd_ratio)
        return (
            f"{budget.scope_noun} has spent ${spend.usd:,.2f} of ${budget.limit_usd:,.2f} ({pct}%) {phrase}"
        )
    limit = budget.limit_tokens or 0
    pct = _pct(tok_ratio)
    return f"{budget.scope_noun} has used {fmt_tokens(spend.tokens)} of {fmt_tokens(limit)} tokens ({pct}%) {phrase}"


def _pct(ratio: float) -> int:
    # Floor, so a level is never announced as reached before it is; the epsilon absorbs 0.29*100.
    return math.floor(ratio * 100 + 1e-9)


def levels_to_fire(budget: Budget, ratio: float, fired: Collection[float]) -> float | None:
    """The level to announce now, if any: the highest level reached that is above every level
    already fired this period.  A jump from 10% to 96% announces 95% only, once."""
    reached = [lv for lv in (*budget.warn_at, 1.0) if ratio + 1e-12 >= lv]
    if not reached:
        return None
    top = max(reached)
    return top if top > max(fired, default=0.0) else None


def budget_state(budget: Budget, spend_lookup: SpendLookup, now: float) -> BudgetState:
    start, end = period_bounds(budget, now)
    spend = spend_lookup(budget, start, end)
    ratio = use_ratio(budget, spend)
    return BudgetState(budget, spend, ratio, start, end, ratio >= 1.0)


def evaluate(
    budgets: Iterable[Budget],
    ctx: RequestContext,
    spend_lookup: SpendLookup,
    fired_lookup: FiredLookup,
    *,
    now: float | None = None,
) -> BudgetVerdict:
    """Check a request against every budget that applies; all must pass.

    A ``block`` budget at 100% refuses the request; a ``downgrade`` budget at 100% sends it to
    its ``downgrade_to`` chain (the first such budget in order wins); ``block`` beats
    ``downgrade``.  ``warnings_to_fire`` holds the levels to announce now; the caller records
    them so :func:`evaluate` does not announce them again this period.
    """
    ts = now if now is not None else (ctx.ts if ctx.ts is not None else time.time())
    states: list[BudgetState] = []
    warnings: list[BudgetWarning] = []
    blockers: list[BudgetState] = []
    downgrades: list[BudgetState] = []
    alerting = False
    for budget in budgets:
        if not applies_to(budget, ctx):
            continue
        st = budget_state(budget, spend_lookup, ts)
        states.append(st)
        alert_start = alert_period_start(budget, ts)
        level = levels_to_fire(budget, st.ratio, fired_lookup(budget, alert_start))
        if level is not None:
            message = st.message
            if level >= 1.0:
                message += ": limit reached" + _action_words(budget)
            warnings.append(BudgetWarning(budget.name, level, message, alert_start, st.ratio))
        if st.over:
            if budget.action is BudgetAction.BLOCK:
                blockers.append(st)
            elif budget.action is BudgetAction.DOWNGRADE:
                downgrades.append(st)
            else:
                alerting = True
    if blockers:
        b = blockers[0]
        reason = f"budget `{b.budget.name}`: {b.message}; requests are blocked"
        return BudgetVerdict(False, BudgetAction.BLOCK, (), warnings, states, reason)
    if downgrades:
        d = downgrades[0]
        chain = d.budget.downgrade_to
        reason = f"budget `{d.budget.name}`: {d.message}; downgraded to {' -> '.join(chain)}"
        return BudgetVerdict(True, BudgetAction.DOWNGRADE, chain, warnings, states, reason)
    action = BudgetAction.ALERT_ONLY if alerting else None
    return BudgetVerdict(True, action, (), warnings, states)


def _action_words(budget: Budget) -> str:
    if budget.action is BudgetAction.BLOCK:
        return ", new requests are blocked"
    if budget.action is BudgetAction.DOWNGRADE:
        return f", requests go to {' -> '.join(budget.downgrade_to)}"
    return ""


def projection(
    spend: float, period_start: float, now: float, period_end: float, limit: float
) -> float | None:
    """When ``spend`` will reach ``limit`` at the burn rate so far this period (epoch seconds).

    ``now`` when it already has; ``None`` when nothing was spent yet, or when at this rate the
    limit is not reached before the period ends.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    if spend >= limit:
        return now
    elapsed = now - period_start
    if spend <= 0 or elapsed <= 0:
        return None
    when = now + (limit - spend) * elapsed / spend
    return when if when <= period_end else None


@dataclass(frozen=True, slots=True)
class BudgetOutlook:
    """Where a budget is heading at its burn rate so far: for the budgets page.

    ``reach_at``: when the first limit (money or tokens) is reached, ``now`` when it already is,
    ``None`` when not this period.  ``end_ratio``: the use ratio the period would end at (for a
    rolling window the window slides, so a steady rate keeps today's ratio).
    """

    period_start: float
    period_end: float
    reach_at: float | None
    end_ratio: float
    usd_per_hour: float
    tokens_per_hour: float


def budget_outlook(budget: Budget, spend: Spend, now: float) -> BudgetOutlook:
    """The projection of :func:`projection` for every limit a budget has, and the ratio it ends at."""
    start, end = period_bounds(budget, now)
    rolling = parse_period(budget.period).kind == "rolling"
    elapsed = max(now - start, 0.0)
    hours = elapsed / 3600.0
    usd_rate = spend.usd / hours if hours > 0 else 0.0
    tok_rate = spend.tokens / hours if hours > 0 else 0.0
    ratio = use_ratio(budget, spend)
    if rolling:
        reach = now if ratio >= 1.0 else None
        return BudgetOutlook(start, end, reach, ratio, usd_rate, tok_rate)
    times = []
    if budget.limit_usd:
        times.append(projection(spend.usd, start, now, end, budget.limit_usd))
    if budget.limit_tokens:
        times.append(projection(float(spend.tokens), start, now, end, float(budget.limit_tokens)))
    known = [t for t in times if t is not None]
    reach = min(known) if known else None
    if elapsed > 0:
        scale = (end - start) / elapsed
        end_ratio = use_ratio(budget, Spend(spend.usd * scale, round(spend.tokens * scale)))
    else:
        end_ratio = ratio
    return BudgetOutlook(start, end, reach, max(end_ratio, ratio), usd_rate, tok_rate)
