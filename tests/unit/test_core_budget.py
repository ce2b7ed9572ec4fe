"""Budgets: scope, periods in a time zone, warning levels, actions, projection (semantics.md 7)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.budget import (
    Budget,
    BudgetAction,
    BudgetVerdict,
    Spend,
    alert_period_start,
    applies_to,
    evaluate,
    levels_to_fire,
    parse_period,
    period_bounds,
    projection,
    spend_message,
)
from app.core.routing import RequestContext

SEARCH = Budget("search-daily", {"feature": "search"}, limit_usd=100)
NOW = datetime(2025, 3, 12, 15, 30, tzinfo=UTC).timestamp()  # a Wednesday


def ts(y: int, m: int, d: int, h: int = 0, tz: str = "UTC") -> float:
    return datetime(y, m, d, h, tzinfo=ZoneInfo(tz)).timestamp()


class Ledger:
    """Spend and fired levels as the store would hold them."""

    def __init__(self, spend: dict[str, Spend]) -> None:
        self.spend = spend
        self.fired: dict[tuple[str, float], set[float]] = {}
        self.asked: list[tuple[str, float, float]] = []

    def spend_lookup(self, b: Budget, start: float, end: float) -> Spend:
        self.asked.append((b.name, start, end))
        return self.spend.get(b.name, Spend())

    def fired_lookup(self, b: Budget, period_start: float) -> Collection[float]:
        return self.fired.get((b.name, period_start), set())

    def run(self, budgets: list[Budget], ctx: RequestContext, now: float = NOW) -> BudgetVerdict:
        v = evaluate(budgets, ctx, self.spend_lookup, self.fired_lookup, now=now)
        for w in v.warnings_to_fire:
            self.fired.setdefault((w.budget, w.period_start), set()).add(w.level)
        return v


def test_the_message_reads_like_the_semantics() -> None:
    assert spend_message(SEARCH, Spend(80.0)) == "feature `search` has spent $80.00 of $100.00 (80%) today"


@pytest.mark.parametrize(
    ("scope", "period", "expected"),
    [
        ({}, "week", "all traffic has spent $1,234.50 of $2,000.00 (61%) this week"),
        (
            {"provider": "openai-main"},
            "month",
            "provider `openai-main` has spent $1,234.50 of $2,000.00 (61%) this month",
        ),
        (
            {"user": "u-1", "team": "ml"},
            "rolling_6h",
            "user `u-1`, team `ml` has spent $1,234.50 of $2,000.00 (61%) in the last 6 hours",
        ),
        (
            {"route": "default"},
            "rolling_1h",
            "route `default` has spent $1,234.50 of $2,000.00 (61%) in the last hour",
        ),
        (
            {"model": "gpt-4o"},
            "rolling_7d",
            "model `gpt-4o` has spent $1,234.50 of $2,000.00 (61%) in the last 7 days",
        ),
    ],
)
def test_messages_name_the_scope_and_the_period(scope: dict[str, str], period: str, expected: str) -> None:
    b = Budget("b", scope, period, limit_usd=2000)
    assert spend_message(b, Spend(1234.5)) == expected


def test_a_token_budget_speaks_in_tokens() -> None:
    b = Budget("t", {"feature": "search"}, limit_tokens=1_000_000)
    assert spend_message(b, Spend(0.0, 820_000)) == "feature `search` has used 820k of 1M tokens (82%) today"


def test_the_percentage_is_never_rounded_up_to_a_level_not_yet_reached() -> None:
    assert "(79%)" in spend_message(SEARCH, Spend(79.99))
    assert "(29%)" in spend_message(SEARCH, Spend(29.0))  # 0.29 * 100 is 28.999...


def test_scope_matching() -> None:
    assert applies_to(Budget("g", limit_usd=1), RequestContext())
    assert applies_to(SEARCH, RequestContext(feature="search"))
    assert not applies_to(SEARCH, RequestContext(feature="chat"))
    team = Budget("t", {"team": "ml", "route": "default"}, limit_usd=1)
    assert applies_to(team, RequestContext(route="default", tags={"team": "ml"}))
    assert not applies_to(team, RequestContext(route="other", tags={"team": "ml"}))
    prov = Budget("p", {"provider": "openai-main"}, limit_usd=1)
    assert not applies_to(prov, RequestContext())  # before routing there is no provider
    assert applies_to(prov, RequestContext(provider="openai-main", model="gpt-4o-mini"))


def test_periods_follow_the_budgets_time_zone() -> None:
    b = Budget("b", period="day", timezone="America/New_York", limit_usd=1)
    # 03:00 UTC on 12 March is still 11 March in New York (EDT, UTC-4).
    now = datetime(2025, 3, 12, 3, 0, tzinfo=UTC).timestamp()
    assert period_bounds(b, now) == (
        ts(2025, 3, 11, tz="America/New_York"),
        ts(2025, 3, 12, tz="America/New_York"),
    )


def test_a_day_across_a_dst_change_is_23_hours() -> None:
    b = Budget("b", period="day", timezone="Europe/Berlin", limit_usd=1)
    start, end = period_bounds(b, ts(2025, 3, 30, 12, tz="Europe/Berlin"))
    assert end - start == 23 * 3600


def test_weeks_start_on_monday_and_months_on_the_first() -> None:
    week = Budget("w", period="week", limit_usd=1)
    assert period_bounds(week, NOW) == (ts(2025, 3, 10), ts(2025, 3, 17))
    month = Budget("m", period="month", limit_usd=1)
    assert period_bounds(month, NOW) == (ts(2025, 3, 1), ts(2025, 4, 1))
    december = datetime(2025, 12, 31, 23, 59, tzinfo=UTC).timestamp()
    assert period_bounds(month, december) == (ts(2025, 12, 1), ts(2026, 1, 1))


def test_rolling_windows_end_now() -> None:
    b = Budget("r", period="rolling_6h", limit_usd=1)
    assert period_bounds(b, NOW) == (NOW - 6 * 3600, NOW)
    assert parse_period("rolling_2d").hours == 48
    assert alert_period_start(b, NOW) == NOW - NOW % (6 * 3600)


@pytest.mark.parametrize("bad", ["daily", "rolling_0h", "rolling_h", "rolling_5m", ""])
def test_unknown_periods_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown period"):
        parse_period(bad)


def test_each_level_fires_once_per_period() -> None:
    ledger = Ledger({"search-daily": Spend(55.0)})
    ctx = RequestContext(feature="search")
    [w] = ledger.run([SEARCH], ctx).warnings_to_fire
    assert (w.level, w.budget) == (0.5, "search-daily")
    assert w.message == "feature `search` has spent $55.00 of $100.00 (55%) today"
    assert w.period_start == ts(2025, 3, 12)
    assert ledger.run([SEARCH], ctx).warnings_to_fire == []
    ledger.spend["search-daily"] = Spend(80.0)
    [w] = ledger.run([SEARCH], ctx).warnings_to_fire
    assert w.level == 0.8
    assert w.message == "feature `search` has spent $80.00 of $100.00 (80%) today"
    # Next day: a new period, the levels fire again.
    tomorrow = NOW + 86400
    [w] = ledger.run([SEARCH], ctx, now=tomorrow).warnings_to_fire
    assert w.level == 0.8 and w.period_start == ts(2025, 3, 13)


def test_a_jump_past_several_levels_announces_only_the_highest() -> None:
    ledger = Ledger({"search-daily": Spend(96.0)})
    ctx = RequestContext(feature="search")
    assert [w.level for w in ledger.run([SEARCH], ctx).warnings_to_fire] == [0.95]
    ledger.spend["search-daily"] = Spend(97.0)
    assert ledger.run([SEARCH], ctx).warnings_to_fire == []


def test_levels_to_fire() -> None:
    assert levels_to_fire(SEARCH, 0.49, set()) is None
    assert levels_to_fire(SEARCH, 0.5, set()) == 0.5
    assert levels_to_fire(SEARCH, 0.9, {0.5}) == 0.8
    assert levels_to_fire(SEARCH, 0.9, {0.8}) is None
    assert levels_to_fire(SEARCH, 1.2, {0.95}) == 1.0


def test_alert_only_lets_requests_through_at_the_limit_and_says_so_once() -> None:
    ledger = Ledger({"search-daily": Spend(100.0)})
    v = ledger.run([SEARCH], RequestContext(feature="search"))
    assert v.allowed and v.action is BudgetAction.ALERT_ONLY
    [w] = v.warnings_to_fire
    assert w.level == 1.0
    assert w.message == "feature `search` has spent $100.00 of $100.00 (100%) today: limit reached"


def test_block_refuses_at_100_percent() -> None:
    hard = Budget("hard", {}, limit_usd=50, action=BudgetAction.BLOCK)
    ledger = Ledger({"hard": Spend(50.01)})
    v = ledger.run([hard], RequestContext())
    assert not v.allowed and v.action is BudgetAction.BLOCK
    assert (
        v.reason == "budget `hard`: all traffic has spent $50.01 of $50.00 (100%) today; requests are blocked"
    )
    assert v.warnings_to_fire[0].message.endswith("limit reached, new requests are blocked")
    ledger.spend["hard"] = Spend(49.99)
    assert ledger.run([hard], RequestContext()).allowed


def test_downgrade_sends_requests_to_the_cheaper_chain() -> None:
    d = Budget(
        "d",
        {"feature": "search"},
        limit_usd=10,
        action=BudgetAction.DOWNGRADE,
        downgrade_to=("cheap", "fast"),
    )
    v = Ledger({"d": Spend(12.0)}).run([d], RequestContext(feature="search"))
    assert v.allowed and v.action is BudgetAction.DOWNGRADE
    assert v.downgrade_chain == ("cheap", "fast")
    assert "downgraded to cheap -> fast" in v.reason


def test_every_applicable_budget_must_pass_and_block_beats_downgrade() -> None:
    glob = Budget("global", {}, limit_usd=1000, action=BudgetAction.BLOCK)
    feat = Budget(
        "feat", {"feature": "search"}, limit_usd=10, action=BudgetAction.DOWNGRADE, downgrade_to=("cheap",)
    )
    other = Budget("other", {"feature": "chat"}, limit_usd=1, action=BudgetAction.BLOCK)
    ledger = Ledger({"global": Spend(10.0), "feat": Spend(11.0), "other": Spend(5.0)})
    v = ledger.run([glob, feat, other], RequestContext(feature="search"))
    assert v.allowed and v.action is BudgetAction.DOWNGRADE  # `other` does not apply
    assert [s.budget.name for s in v.states] == ["global", "feat"]
    ledger.spend["global"] = Spend(1000.0)
    v = ledger.run([glob, feat, other], RequestContext(feature="search"))
    assert not v.allowed and v.action is BudgetAction.BLOCK and v.downgrade_chain == ()


def test_the_lookup_is_asked_for_the_budgets_own_period() -> None:
    week = Budget("w", period="week", timezone="Asia/Tokyo", limit_usd=5)
    ledger = Ledger({})
    ledger.run([week], RequestContext())
    assert ledger.asked == [("w", ts(2025, 3, 10, tz="Asia/Tokyo"), ts(2025, 3, 17, tz="Asia/Tokyo"))]


def test_with_both_limits_the_one_nearer_its_end_counts() -> None:
    b = Budget("b", limit_usd=100, limit_tokens=1000)
    v = Ledger({"b": Spend(10.0, 960)}).run([b], RequestContext())
    assert v.states[0].ratio == pytest.approx(0.96)
    assert v.warnings_to_fire[0].message == "all traffic has used 960 of 1k tokens (96%) today"


def test_nothing_applies_nothing_happens() -> None:
    v = Ledger({}).run([SEARCH], RequestContext(feature="chat"))
    assert v.allowed and v.action is None and v.states == [] and v.warnings_to_fire == []


def test_budget_problems() -> None:
    assert SEARCH.problems() == []
    bad = Budget(
        "",
        {"feature": " "},
        period="fortnight",
        timezone="Nowhere/City",
        warn_at=(0.5, 1.5, 0.5),
        action=BudgetAction.DOWNGRADE,
    )
    fields = [f for f, _ in bad.problems()]
    assert fields == [
        "name",
        "period",
        "timezone",
        "limit_usd",
        "warn_at",
        "warn_at",
        "downgrade_to",
        "scope",
    ]
    stray = Budget("s", limit_usd=1, downgrade_to=("x",))
    assert stray.problems() == [
        ("downgrade_to", "downgrade_to is only used with action downgrade (action is alert_only)")
    ]


def test_projection_at_the_current_burn_rate() -> None:
    day0 = ts(2025, 3, 12)
    # $40 in the first 6 hours: $100 is reached after 15 hours.
    assert projection(40.0, day0, day0 + 6 * 3600, day0 + 86400, 100.0) == pytest.approx(day0 + 15 * 3600)
    # At this rate the limit is not reached today.
    assert projection(10.0, day0, day0 + 12 * 3600, day0 + 86400, 100.0) is None
    assert projection(0.0, day0, day0 + 3600, day0 + 86400, 100.0) is None
    assert projection(120.0, day0, day0 + 3600, day0 + 86400, 100.0) == day0 + 3600
    with pytest.raises(ValueError):
        projection(1.0, day0, day0 + 1, day0 + 2, 0.0)


@given(st.floats(0.01, 1e6), st.floats(1, 1e5), st.floats(0.01, 1e6))
def test_projection_lands_where_the_line_crosses_the_limit(
    spend: float, elapsed: float, limit: float
) -> None:
    start = 1_000_000.0
    now = start + elapsed
    when = projection(spend, start, now, float("inf"), limit)
    assert when is not None
    if spend < limit:
        assert spend / elapsed * (when - start) == pytest.approx(limit, rel=1e-6)
