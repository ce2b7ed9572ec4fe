"""Numbers as the operator reads them (ui.md "Numbers")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.format import (
    fmt_change,
    fmt_latency_ms,
    fmt_percent,
    fmt_rate,
    fmt_relative_time,
    fmt_tokens,
    fmt_usd,
)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (850, "850 ms"),
        (1420, "1.42 s"),
        (999.4, "999 ms"),
        (999.6, "1.00 s"),
        (0.42, "0.4 ms"),
        (2.5, "2.5 ms"),
        (9.96, "10 ms"),
        (12_345, "12.3 s"),
        (75_000, "1 min 15 s"),
        (120_000, "2 min"),
        (3_900_000, "1 h 5 min"),
        (None, "\u2014"),
    ],
)
def test_latency(ms: float | None, text: str) -> None:
    assert fmt_latency_ms(ms) == text


@pytest.mark.parametrize(
    ("usd", "text"),
    [
        (0.0042, "$0.0042"),
        (0.00004213, "$0.000042"),
        (0.009, "$0.009"),
        (0.00999, "$0.01"),
        (12.4, "$12.40"),
        (0.5, "$0.50"),
        (999.99, "$999.99"),
        (999.999, "$1k"),
        (1200, "$1.2k"),
        (12_400, "$12.4k"),
        (3_400_000, "$3.4M"),
        (0, "$0.00"),
        (-12.4, "-$12.40"),
        (None, "cost unknown"),
    ],
)
def test_money(usd: float | None, text: str) -> None:
    assert fmt_usd(usd) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (950, "950"),
        (12_400, "12.4k"),
        (3_100_000, "3.1M"),
        (12_000, "12k"),
        (999_960, "1M"),
        (999.6, "1k"),
        (2_500_000_000, "2.5B"),
        (0, "0"),
    ],
)
def test_tokens(n: float, text: str) -> None:
    assert fmt_tokens(n) == text


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (12.4, "s", "12.4/s"),
        (0.25, "s", "0.25/s"),
        (1500, "min", "1.5k/min"),
        (0, "s", "0/s"),
        (3.0, "s", "3/s"),
    ],
)
def test_rates(value: float, unit: str, text: str) -> None:
    assert fmt_rate(value, unit) == text


def test_percent() -> None:
    assert fmt_percent(0.8) == "80%"
    assert fmt_percent(0.004) == "0.4%"
    assert fmt_percent(0.0) == "0%"
    assert fmt_percent(0.12345, 1) == "12.3%"


@pytest.mark.parametrize(
    ("cur", "prev", "higher_is_good", "text", "good"),
    [
        (112, 100, True, "\u25b2 12%", True),
        (97, 100, True, "\u25bc 3%", False),
        (112, 100, False, "\u25b2 12%", False),  # latency went up: bad
        (97, 100, False, "\u25bc 3%", True),
        (112, 100, None, "\u25b2 12%", None),
        (100.4, 100, True, "\u25b2 0.4%", True),
        (100, 100, True, "0%", None),
        (5, 0, True, "new", None),
        (0, 0, True, "0%", None),
        (None, 100, True, "\u2014", None),
        (1300, 100, True, "\u25b2 1,200%", True),
    ],
)
def test_change(
    cur: float | None, prev: float | None, higher_is_good: bool | None, text: str, good: bool | None
) -> None:
    assert fmt_change(cur, prev, higher_is_good) == (text, good)


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (0.3, "just now"),
        (12, "12 s ago"),
        (250, "4 min ago"),
        (7300, "2 h ago"),
        (200_000, "2 d ago"),
        (-250, "in 4 min"),
    ],
)
def test_relative_time(ago: float, text: str) -> None:
    assert fmt_relative_time(ago) == text


@given(st.floats(0, 1e13, allow_nan=False))
def test_compact_numbers_never_show_four_digits_before_a_suffix(n: float) -> None:
    text = fmt_tokens(n)
    if text[-1] in "kMB":
        head = text[:-1]
        assert float(head) < 1000 and not head.endswith(".0")


@given(st.floats(0, 1e9, allow_nan=False))
def test_latency_always_has_a_unit(ms: float) -> None:
    text = fmt_latency_ms(ms)
    assert text.endswith((" ms", " s", " min", " h")) and not math.isnan(ms)
