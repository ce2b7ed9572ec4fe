"""Retry policy, server hints and the retry budget (semantics.md 4)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.event import RETRYABLE, Failure
from app.core.retry import RetryBudget, RetryPolicy, parse_retry_after

POLICY = RetryPolicy()


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@given(st.integers(0, 2000), st.integers(0, 2**32))
def test_backoff_is_full_jitter_within_the_capped_exponential(n: int, seed: int) -> None:
    wait = POLICY.backoff(n, random.Random(seed))
    assert 0 <= wait < min(8.0, 0.5 * 2.0 ** min(n, 64))


def test_backoff_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    waits = [POLICY.backoff(2, rng) for _ in range(2000)]
    assert max(waits) < 2.0
    assert max(waits) > 1.9 and min(waits) < 0.1  # full jitter: from zero to the ceiling
    capped = [POLICY.backoff(10, rng) for _ in range(2000)]
    assert max(capped) < 8.0 and max(capped) > 7.8


def test_backoff_rejects_a_negative_retry_number() -> None:
    with pytest.raises(ValueError):
        POLICY.backoff(-1, random.Random())


@pytest.mark.parametrize("failure", sorted(RETRYABLE))
def test_retryable_failures_are_retried_with_backoff(failure: Failure) -> None:
    d = POLICY.decide(failure, 1, rng=random.Random(1))
    assert d.retry and not d.next_target
    assert 0 <= d.wait_s < 0.5  # first retry: base * 2**0


def test_the_second_retry_waits_up_to_twice_as_long() -> None:
    waits = [POLICY.decide(Failure.TIMEOUT, 2, rng=random.Random(s)).wait_s for s in range(300)]
    assert max(waits) < 1.0 and max(waits) > 0.5


def test_client_errors_are_not_retried_but_the_next_target_may_serve() -> None:
    d = POLICY.decide(Failure.CLIENT_ERROR, 1)
    assert not d.retry and d.next_target
    assert "not retried" in d.reason


@pytest.mark.parametrize("failure", [Failure.BUDGET_BLOCKED, Failure.GUARDRAIL_BLOCKED])
def test_request_level_refusals_stop_everything(failure: Failure) -> None:
    d = POLICY.decide(failure, 1)
    assert not d.retry and not d.next_target


def test_success_needs_nothing_more() -> None:
    d = POLICY.decide(Failure.NONE, 1)
    assert (d.retry, d.next_target, d.reason) == (False, False, "succeeded")


def test_after_max_attempts_move_to_the_next_target() -> None:
    d = POLICY.decide(Failure.SERVER_ERROR, 3)
    assert not d.retry and d.next_target
    assert "3 attempts used" in d.reason
    assert RetryPolicy(max_attempts=1).decide(Failure.TIMEOUT, 1).next_target


def test_a_server_hint_wins_over_backoff() -> None:
    d = POLICY.decide(Failure.RATE_LIMITED, 1, retry_after_s=4.0, remaining_deadline_s=20.0)
    assert d.retry and d.wait_s == 4.0
    assert "asked to wait 4 s" in d.reason


def test_a_hint_longer_than_max_retry_after_goes_to_the_next_target_at_once() -> None:
    d = POLICY.decide(Failure.RATE_LIMITED, 1, retry_after_s=61.0)
    assert not d.retry and d.next_target and d.wait_s == 0
    assert "max_retry_after" in d.reason


def test_a_hint_longer_than_the_remaining_deadline_goes_to_the_next_target() -> None:
    d = POLICY.decide(Failure.OVERLOADED, 1, retry_after_s=10.0, remaining_deadline_s=5.0)
    assert not d.retry and d.next_target and d.wait_s == 0
    assert "deadline" in d.reason


def test_backoff_past_the_deadline_is_not_waited_for() -> None:
    d = POLICY.decide(Failure.TIMEOUT, 2, remaining_deadline_s=0.001, rng=random.Random(3))
    assert not d.retry and d.next_target


def test_nothing_is_tried_after_the_deadline() -> None:
    d = POLICY.decide(Failure.TIMEOUT, 1, remaining_deadline_s=0)
    assert not d.retry and not d.next_target


def test_policy_problems() -> None:
    assert POLICY.problems() == []
    bad = RetryPolicy(max_attempts=0, base_s=-1, cap_s=-2, max_retry_after_s=-1)
    assert {f for f, _ in bad.problems()} == {"max_attempts", "base_s", "cap_s", "max_retry_after_s"}


# -- server hints ------------------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"Retry-After-Ms": "1500", "Retry-After": "30"}, 0) == 1.5


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after({"retry-after": "7"}, 0) == 7.0
    assert parse_retry_after({"retry-after": "0.5"}, 0) == 0.5


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    header = format_datetime(datetime(2025, 3, 1, 12, 0, 20, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"Retry-After": header}, now) == pytest.approx(20.0)
    assert parse_retry_after({"Retry-After": header}, now + 60) == 0.0  # already past


@pytest.mark.parametrize(
    "headers",
    [{}, {"retry-after": "soon"}, {"retry-after": "-3"}, {"retry-after-ms": "nan"}, {"retry-after": "inf"}],
)
def test_an_odd_hint_is_no_hint(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers, 0) is None


def test_a_bad_ms_hint_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}, 0) == 2.0


# -- the retry budget --------------------------------------------------------------


def test_retries_are_capped_at_a_fifth_of_first_attempts() -> None:
    clock = Clock(100.0)
    budget = RetryBudget(ratio=0.2, window_s=10, min_concurrent=0, clock=clock)
    for _ in range(50):
        budget.record_attempt()
    granted = sum(budget.try_acquire_retry() for _ in range(30))
    assert granted == 10
    assert budget.counts() == (50, 10)


def test_a_quiet_gateway_may_still_run_a_few_retries_at_once() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_concurrent=3, clock=clock)
    budget.record_attempt()
    assert [budget.try_acquire_retry() for _ in range(4)] == [True, True, True, False]
    budget.release()
    assert budget.try_acquire_retry()
    assert budget.in_flight == 3


def test_the_budget_window_slides() -> None:
    clock = Clock(0.0)
    budget = RetryBudget(ratio=0.5, window_s=10, min_concurrent=0, clock=clock)
    for _ in range(10):
        budget.record_attempt()
    assert sum(budget.try_acquire_retry() for _ in range(10)) == 5
    clock.t = 9.9
    assert not budget.try_acquire_retry()
    clock.t = 10.0  # the attempts and retries of second 0 have left the window
    assert budget.counts() == (0, 0)
    assert not budget.try_acquire_retry()
    for _ in range(4):
        budget.record_attempt()
    assert budget.try_acquire_retry() and budget.try_acquire_retry()
    assert not budget.try_acquire_retry()


def test_release_never_goes_below_zero() -> None:
    budget = RetryBudget(clock=Clock())
    budget.release()
    assert budget.in_flight == 0


@pytest.mark.parametrize("kwargs", [{"ratio": -0.1}, {"window_s": 0}, {"min_concurrent": -1}])
def test_budget_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(["attempt", "retry", "release"]), max_size=300))
def test_retries_in_the_window_never_exceed_the_ratio_beyond_the_concurrency_floor(ops: list[str]) -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, window_s=10, min_concurrent=2, clock=clock)
    for op in ops:
        if op == "attempt":
            budget.record_attempt()
        elif op == "retry":
            before = budget.in_flight
            attempts, retries = budget.counts()
            if budget.try_acquire_retry():
                assert retries + 1 <= 0.2 * attempts or before < 2
        else:
            budget.release()
        assert budget.in_flight >= 0
