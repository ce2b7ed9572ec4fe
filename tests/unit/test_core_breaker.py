"""The breaker state machine (semantics.md 5), driven by a hand-moved clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.breaker import (
    Breaker,
    BreakerBoard,
    BreakerSettings,
    BreakerState,
    Cause,
    Override,
    OverrideMode,
    Transition,
)
from app.core.event import Failure

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def make(settings: BreakerSettings | None = None) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker("fast", settings, clock=clock), clock


def feed(b: Breaker, failure: Failure, n: int, **kw: float) -> None:
    for _ in range(n):
        assert b.allow()
        b.record(failure, **kw)


def trip(b: Breaker) -> None:
    feed(b, Failure.NONE, 10)
    feed(b, Failure.SERVER_ERROR, 10)
    assert b.state is BreakerState.OPEN


def test_a_new_breaker_is_closed_and_lets_calls_through() -> None:
    b, _ = make()
    assert b.state is BreakerState.CLOSED
    assert b.effective_state is BreakerState.CLOSED
    assert b.forced is None
    assert b.allow()


def test_stays_closed_below_min_requests_even_when_everything_fails() -> None:
    b, _ = make()
    feed(b, Failure.TIMEOUT, 19)
    assert b.state is BreakerState.CLOSED
    assert b.drain_transitions() == []


def test_opens_when_the_failure_rate_reaches_the_threshold() -> None:
    b, clock = make()
    feed(b, Failure.NONE, 10)
    feed(b, Failure.SERVER_ERROR, 9)
    assert b.state is BreakerState.CLOSED  # 9 of 19: below min_requests
    b.record(Failure.RATE_LIMITED)
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    [t] = b.drain_transitions()
    assert (t.from_state, t.to_state, t.cause, t.target) == (
        BreakerState.CLOSED,
        BreakerState.OPEN,
        Cause.FAILURE_RATE,
        "fast",
    )
    assert t.ts == clock.t
    assert "10 of 20 calls failed (50%) in the last 30 s" in t.detail
    assert "open for 30 s" in t.detail
    assert not t.forced


def test_a_rate_just_under_the_threshold_keeps_it_closed() -> None:
    b, _ = make()
    feed(b, Failure.NONE, 11)
    feed(b, Failure.SERVER_ERROR, 9)
    assert b.state is BreakerState.CLOSED


@pytest.mark.parametrize("failure", [Failure.CLIENT_ERROR, Failure.QUALITY_FAIL])
def test_caller_and_prompt_problems_do_not_trip_it(failure: Failure) -> None:
    b, _ = make()
    feed(b, failure, 50)
    assert b.state is BreakerState.CLOSED
    snap = b.snapshot()
    assert snap.requests == 50  # they are calls, just not failures
    assert snap.failures == 0
    assert snap.failure_rate == 0.0


@pytest.mark.parametrize("failure", [Failure.BREAKER_OPEN, Failure.BUDGET_BLOCKED, Failure.GUARDRAIL_BLOCKED])
def test_outcomes_that_never_reached_the_target_are_not_counted(failure: Failure) -> None:
    b, _ = make()
    for _ in range(30):
        b.record(failure)
    assert b.snapshot().requests == 0


@pytest.mark.parametrize(
    "failure",
    [
        Failure.TIMEOUT,
        Failure.RATE_LIMITED,
        Failure.OVERLOADED,
        Failure.SERVER_ERROR,
        Failure.CONNECTION_ERROR,
    ],
)
def test_every_counted_failure_type_trips_it(failure: Failure) -> None:
    b, _ = make()
    feed(b, failure, 20)
    assert b.state is BreakerState.OPEN


def test_the_window_slides_in_one_second_buckets() -> None:
    b, clock = make()
    clock.t = 1000.5  # bucket 1000
    feed(b, Failure.SERVER_ERROR, 15)
    clock.t = 1029.9  # still within 30 buckets of 1000
    assert b.snapshot().requests == 15
    clock.t = 1030.0  # bucket 1000 has left the window
    assert b.snapshot().requests == 0
    feed(b, Failure.SERVER_ERROR, 15)
    assert b.state is BreakerState.CLOSED  # the old 15 no longer count towards min_requests


def test_failures_spread_over_the_window_add_up() -> None:
    b, clock = make()
    for _ in range(20):
        feed(b, Failure.TIMEOUT, 1)
        if b.state is BreakerState.OPEN:
            break
        clock.advance(1.4)
    assert b.state is BreakerState.OPEN  # 20 calls within 26.6 s


def test_slow_calls_trip_it_when_the_slow_rate_is_reached() -> None:
    b, _ = make()
    # slow_call_s unset: slow means over 0.8 x the route's deadline (24 s of 30 s).
    feed(b, Failure.NONE, 4, latency_s=1.0, deadline_s=30.0)
    feed(b, Failure.NONE, 15, latency_s=25.0, deadline_s=30.0)
    assert b.state is BreakerState.CLOSED
    b.record(Failure.NONE, latency_s=25.0, deadline_s=30.0)  # 16 of 20 = 80%
    assert b.state is BreakerState.OPEN
    [t] = b.drain_transitions()
    assert t.cause is Cause.SLOW_RATE
    assert "16 of 20 calls were slow (80%)" in t.detail


def test_an_explicit_slow_call_threshold_wins_over_the_deadline() -> None:
    b, _ = make(BreakerSettings(slow_call_s=2.0))
    feed(b, Failure.NONE, 20, latency_s=3.0, deadline_s=30.0)
    assert b.state is BreakerState.OPEN


def test_without_a_threshold_or_a_deadline_no_call_is_slow() -> None:
    b, _ = make()
    feed(b, Failure.NONE, 30, latency_s=500.0)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().slow == 0


def test_open_becomes_half_open_after_open_for_and_lets_exactly_the_probes_through() -> None:
    b, clock = make()
    trip(b)
    opened_at = clock.t
    clock.advance(29.9)
    assert not b.allow()
    clock.advance(0.2)
    assert b.state is BreakerState.HALF_OPEN
    assert [b.allow() for _ in range(4)] == [True, True, True, False]
    transitions = b.drain_transitions()
    assert transitions[-1].cause is Cause.OPEN_ELAPSED
    assert transitions[-1].ts == opened_at + 30.0  # when it happened, not when it was noticed


def test_all_probes_succeeding_closes_it_with_a_fresh_window() -> None:
    b, clock = make()
    trip(b)
    clock.advance(30)
    for _ in range(3):
        assert b.allow()
    b.record(Failure.NONE)
    b.record(Failure.NONE)
    assert b.state is BreakerState.HALF_OPEN
    b.record(Failure.CLIENT_ERROR)  # the target answered: not its fault
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().requests == 0
    assert b.drain_transitions()[-1].cause is Cause.PROBES_SUCCEEDED


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_maximum() -> None:
    b, clock = make(BreakerSettings(open_for_s=30, max_open_for_s=100))
    trip(b)
    durations = []
    for _ in range(4):
        clock.advance(b.snapshot().open_for_s)
        assert b.allow()
        b.record(Failure.TIMEOUT)
        assert b.state is BreakerState.OPEN
        snap = b.snapshot()
        durations.append(snap.open_for_s)
        assert snap.open_until == pytest.approx(clock.t + snap.open_for_s)
    assert durations == [60, 100, 100, 100]
    assert b.drain_transitions()[-1].cause is Cause.PROBE_FAILED


def test_open_for_resets_after_it_closes_again() -> None:
    b, clock = make()
    trip(b)
    clock.advance(30)
    b.allow()
    b.record(Failure.TIMEOUT)  # now 60 s
    clock.advance(60)
    for _ in range(3):
        b.allow()
        b.record(Failure.NONE)
    assert b.state is BreakerState.CLOSED
    trip(b)
    assert b.snapshot().open_for_s == 30


def test_release_gives_back_an_unused_probe() -> None:
    b, clock = make()
    trip(b)
    clock.advance(30)
    assert all(b.allow() for _ in range(3))
    assert not b.allow()
    b.release()
    assert b.allow()


def test_results_of_calls_started_before_it_opened_are_not_probes() -> None:
    b, clock = make()
    trip(b)
    clock.advance(30)
    assert b.state is BreakerState.HALF_OPEN
    b.record(Failure.TIMEOUT)  # a straggler: no probe was reserved
    assert b.state is BreakerState.HALF_OPEN


def test_a_rate_limit_with_retry_after_opens_at_least_that_long() -> None:
    b, clock = make()
    feed(b, Failure.NONE, 10)
    feed(b, Failure.RATE_LIMITED, 9)
    b.record(Failure.RATE_LIMITED, retry_after_s=90)
    assert b.state is BreakerState.OPEN
    assert b.snapshot().open_until == pytest.approx(clock.t + 90)
    assert "Retry-After" in b.drain_transitions()[-1].detail
    clock.advance(60)
    assert b.state is BreakerState.OPEN
    clock.advance(31)
    assert b.state is BreakerState.HALF_OPEN


def test_a_short_retry_after_does_not_shorten_open_for() -> None:
    b, clock = make()
    feed(b, Failure.RATE_LIMITED, 20, retry_after_s=2)
    assert b.snapshot().open_until == pytest.approx(clock.t + 30)


def test_force_open_refuses_calls_and_returns_to_auto_at_its_expiry() -> None:
    b, clock = make()
    ov = b.set_override(
        OverrideMode.FORCE_OPEN, reason="provider incident", actor="alice", expires_at=T0 + 600
    )
    assert ov is not None and ov.mode is OverrideMode.FORCE_OPEN
    assert not b.allow()
    assert b.effective_state is BreakerState.OPEN
    assert b.state is BreakerState.CLOSED  # the counts alone say closed
    assert b.forced == ov
    clock.advance(700)
    assert b.forced is None
    assert b.allow()
    forced, expired = b.drain_transitions()
    assert (forced.cause, forced.to_state, forced.forced) == (Cause.FORCE_OPEN, BreakerState.OPEN, True)
    assert "alice" in forced.detail and "provider incident" in forced.detail
    assert (expired.cause, expired.from_state, expired.to_state) == (
        Cause.OVERRIDE_EXPIRED,
        BreakerState.OPEN,
        BreakerState.CLOSED,
    )
    assert expired.ts == T0 + 600
    assert not expired.forced


def test_force_closed_lets_calls_through_an_open_breaker_and_still_counts_them() -> None:
    b, clock = make()
    trip(b)
    b.drain_transitions()
    b.set_override(
        OverrideMode.FORCE_CLOSED, reason="we know it is fine", actor="bob", expires_at=clock.t + 100
    )
    assert b.effective_state is BreakerState.CLOSED
    assert b.state is BreakerState.OPEN
    feed(b, Failure.SERVER_ERROR, 5)
    assert b.snapshot().failures == 15  # counted for the operator to see
    assert [t.cause for t in b.drain_transitions()] == [Cause.FORCE_CLOSED]  # no automatic moves meanwhile
    clock.advance(100)
    # Back to auto: the open period ran out meanwhile, so it probes.
    assert b.effective_state is BreakerState.HALF_OPEN
    [t] = b.drain_transitions()
    assert (t.cause, t.from_state, t.to_state) == (
        Cause.OVERRIDE_EXPIRED,
        BreakerState.CLOSED,
        BreakerState.HALF_OPEN,
    )


def test_force_open_beats_force_closed_and_the_closed_one_takes_over_when_it_ends() -> None:
    b, clock = make()
    b.set_override(OverrideMode.FORCE_CLOSED, reason="pin", actor="bob")
    b.set_override(OverrideMode.FORCE_OPEN, reason="maintenance", actor="alice", expires_at=clock.t + 60)
    assert b.effective_state is BreakerState.OPEN
    assert b.forced is not None and b.forced.actor == "alice"
    assert {o.mode for o in b.overrides} == {OverrideMode.FORCE_OPEN, OverrideMode.FORCE_CLOSED}
    clock.advance(61)
    assert b.effective_state is BreakerState.CLOSED
    assert b.forced is not None and b.forced.actor == "bob"


def test_force_closed_set_under_a_force_open_is_kept_but_not_in_effect() -> None:
    b, _ = make()
    b.set_override(OverrideMode.FORCE_OPEN, reason="incident", actor="alice")
    now_forced = b.set_override(OverrideMode.FORCE_CLOSED, reason="oops", actor="bob")
    assert now_forced is not None and now_forced.mode is OverrideMode.FORCE_OPEN
    assert not b.allow()
    last = b.drain_transitions()[-1]
    assert last.cause is Cause.FORCE_CLOSED
    assert last.to_state is BreakerState.OPEN
    assert "wins" in last.detail


def test_auto_clears_both_overrides() -> None:
    b, _ = make()
    b.set_override(OverrideMode.FORCE_OPEN, reason="a", actor="alice")
    b.set_override(OverrideMode.FORCE_CLOSED, reason="b", actor="bob")
    assert b.set_override(OverrideMode.AUTO, reason="resolved", actor="carol") is None
    assert b.overrides == ()
    assert b.allow()
    last = b.drain_transitions()[-1]
    assert (last.cause, last.to_state) == (Cause.OVERRIDE_CLEARED, BreakerState.CLOSED)
    assert "carol" in last.detail


def test_auto_without_an_override_records_nothing() -> None:
    b, _ = make()
    b.set_override(OverrideMode.AUTO, reason="x", actor="y")
    assert b.drain_transitions() == []


@pytest.mark.parametrize(
    ("reason", "actor", "expires"),
    [("", "alice", None), ("why", " ", None), ("why", "alice", T0 - 1), ("why", "alice", T0)],
)
def test_an_override_needs_a_reason_an_actor_and_a_future_expiry(
    reason: str, actor: str, expires: float | None
) -> None:
    b, _ = make()
    with pytest.raises(ValueError):
        b.set_override(OverrideMode.FORCE_OPEN, reason=reason, actor=actor, expires_at=expires)
    assert b.forced is None


def test_no_probes_or_automatic_moves_while_forced_open() -> None:
    b, clock = make()
    trip(b)
    b.set_override(OverrideMode.FORCE_OPEN, reason="r", actor="a")
    clock.advance(1000)
    assert not b.allow()
    assert b.state is BreakerState.OPEN
    b.set_override(OverrideMode.AUTO, reason="r", actor="a")
    assert b.effective_state is BreakerState.HALF_OPEN
    assert [b.allow() for _ in range(4)] == [True, True, True, False]


def test_apply_overrides_syncs_from_control_state_and_is_idempotent() -> None:
    b, clock = make()
    old = Override(OverrideMode.FORCE_OPEN, "old", "alice", T0 - 100)
    new = Override(OverrideMode.FORCE_OPEN, "new", "bob", T0 - 10)
    stale = Override(OverrideMode.FORCE_CLOSED, "stale", "eve", T0 - 500, expires_at=T0 - 1)
    b.apply_overrides([old, new, stale])
    assert b.forced == new
    assert b.overrides == (new,)
    b.apply_overrides([new, old])
    assert len(b.drain_transitions()) == 1
    b.apply_overrides([])
    assert b.forced is None
    assert b.drain_transitions()[-1].cause is Cause.OVERRIDE_CLEARED
    clock.advance(1)


def test_transitions_go_to_the_callback_when_one_is_given() -> None:
    seen: list[Transition] = []
    clock = Clock()
    b = Breaker("strong", clock=clock, on_transition=seen.append)
    trip(b)
    assert [t.to_state for t in seen] == [BreakerState.OPEN]
    assert seen[0].target == "strong"
    assert b.drain_transitions() == []


def test_snapshot_tells_the_breakers_page_everything() -> None:
    b, clock = make()
    feed(b, Failure.NONE, 15)
    feed(b, Failure.TIMEOUT, 5)
    clock.advance(3)
    snap = b.snapshot()
    assert snap.target == "fast"
    assert snap.state is BreakerState.CLOSED
    assert snap.requests == 20
    assert snap.failures == 5
    assert snap.failure_rate == 0.25
    assert snap.window_s == 30
    assert snap.time_in_state_s == 3
    assert snap.open_until is None
    assert snap.forced is None
    b.set_override(OverrideMode.FORCE_OPEN, reason="r", actor="a")
    clock.advance(2)
    snap = b.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.auto_state is BreakerState.CLOSED
    assert snap.forced is not None
    assert snap.time_in_state_s == 2


def test_an_empty_window_has_no_failure_rate() -> None:
    b, _ = make()
    snap = b.snapshot()
    assert snap.failure_rate is None and snap.slow_rate is None


def test_invalid_settings_are_refused_with_every_reason() -> None:
    bad = BreakerSettings(window_s=0, min_requests=0, failure_rate=1.5, open_for_s=60, max_open_for_s=30)
    fields = {f for f, _ in bad.problems()}
    assert fields == {"window_s", "min_requests", "failure_rate", "max_open_for_s"}
    with pytest.raises(ValueError, match="failure_rate"):
        Breaker("x", bad)
    assert BreakerSettings().problems() == []


def test_new_settings_apply_without_losing_the_counts() -> None:
    b, _ = make()
    feed(b, Failure.TIMEOUT, 10)
    b.update_settings(BreakerSettings(min_requests=10))
    assert b.snapshot().requests == 10
    b.record(Failure.TIMEOUT)
    assert b.state is BreakerState.OPEN


def test_the_board_makes_breakers_with_per_target_settings() -> None:
    clock = Clock()
    seen: list[Transition] = []
    board = BreakerBoard(
        BreakerSettings(), {"strong": BreakerSettings(min_requests=5)}, clock=clock, on_transition=seen.append
    )
    assert board.get("strong") is board.get("strong")
    assert board.get("strong").settings.min_requests == 5
    assert board.get("fast").settings.min_requests == 20
    feed(board.get("strong"), Failure.TIMEOUT, 5)
    assert board.get("strong").state is BreakerState.OPEN
    assert seen and seen[0].target == "strong"
    board.configure(BreakerSettings(min_requests=7), {})
    assert board.get("strong").settings.min_requests == 7
    assert board.get("strong").state is BreakerState.OPEN
    assert [s.target for s in board.snapshots()] == ["fast", "strong"]
    assert "fast" in board and board.targets() == ["fast", "strong"]


_OUTCOMES = st.sampled_from([Failure.NONE, Failure.TIMEOUT, Failure.SERVER_ERROR, Failure.CLIENT_ERROR])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("call"), _OUTCOMES),
            st.tuples(st.just("wait"), st.floats(0, 40)),
            st.tuples(st.just("allow"), st.none()),
            st.tuples(st.just("release"), st.none()),
        ),
        max_size=150,
    )
)
def test_half_open_never_has_more_probes_than_allowed(ops: list[tuple[str, object]]) -> None:
    b, clock = make(BreakerSettings(min_requests=4, probe_requests=2, open_for_s=5, max_open_for_s=20))
    last_ts = clock.t
    for op, arg in ops:
        if op == "call" and b.allow():
            assert isinstance(arg, Failure)
            b.record(arg)
        elif op == "wait":
            assert isinstance(arg, float)
            clock.advance(arg)
        elif op == "allow":
            b.allow()
        elif op == "release":
            b.release()
        snap = b.snapshot()
        assert snap.probes_in_flight + snap.probes_succeeded <= 2
        assert 5 <= snap.open_for_s <= 20
        for t in b.drain_transitions():
            assert t.ts >= last_ts - 1e-9  # the timeline only moves forward
            assert t.ts <= clock.t
            last_ts = t.ts
