"""Budget outlook: the projection for the budgets page (money and tokens, calendar and rolling)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.budget import Budget, Spend, budget_outlook

DAY0 = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC


def test_usd_limit_reached_at_the_burn_rate_and_the_ratio_the_day_ends_at() -> None:
    b = Budget("d", limit_usd=100.0)
    out = budget_outlook(b, Spend(40.0, 0), DAY0 + 6 * 3600)
    assert out.period_start == DAY0 and out.period_end == DAY0 + 86400
    assert out.reach_at == pytest.approx(DAY0 + 15 * 3600)
    assert out.end_ratio == pytest.approx(1.6)
    assert out.usd_per_hour == pytest.approx(40 / 6)


def test_the_earlier_of_money_and_tokens_wins() -> None:
    b = Budget("d", limit_usd=100.0, limit_tokens=1000)
    out = budget_outlook(b, Spend(10.0, 500), DAY0 + 6 * 3600)
    assert out.reach_at == pytest.approx(DAY0 + 12 * 3600)  # tokens: half used in 6 h
    assert out.end_ratio == pytest.approx(2.0)


def test_not_reached_this_period_and_nothing_spent() -> None:
    b = Budget("d", limit_usd=100.0)
    slow = budget_outlook(b, Spend(10.0, 0), DAY0 + 12 * 3600)
    assert slow.reach_at is None and slow.end_ratio == pytest.approx(0.2)
    idle = budget_outlook(b, Spend(), DAY0 + 3600)
    assert idle.reach_at is None and idle.end_ratio == 0.0 and idle.usd_per_hour == 0.0


def test_already_over_is_now() -> None:
    b = Budget("d", limit_usd=10.0)
    now = DAY0 + 3600
    assert budget_outlook(b, Spend(12.0, 0), now).reach_at == now


def test_rolling_window_keeps_its_ratio_and_is_reached_only_when_over() -> None:
    b = Budget("r", period="rolling_6h", limit_usd=10.0)
    now = DAY0 + 20 * 3600
    out = budget_outlook(b, Spend(5.0, 0), now)
    assert (out.period_start, out.period_end) == (now - 6 * 3600, now)
    assert out.reach_at is None and out.end_ratio == pytest.approx(0.5)
    assert out.usd_per_hour == pytest.approx(5 / 6)
    assert budget_outlook(b, Spend(10.0, 0), now).reach_at == now
