"""Circuit breakers, one per target (semantics.md section 5).

A breaker counts calls in a sliding time window of 1-second buckets and opens
when, with enough calls in the window, too many failed or were slow.  After
``open_for`` it lets exactly ``probe_requests`` calls through (half-open); all
succeed -> closed, any fails -> open again for twice as long (up to
``max_open_for``).

The operator's switch sits on top: ``force_open`` and ``force_closed`` are two
independent slots, each with a reason, an actor and an optional expiry, and
``force_open`` beats ``force_closed`` (anchor: Hystrix's forceOpen /
forceClosed properties).  That lets an operator pin a target closed and still
force it open for a maintenance window that ends by itself.  While an override
is active the calls are still counted (the UI shows the real failure rate) but
the automatic machine does not move; when the override ends it resumes where it
was, with the open timer having run meanwhile.

Everything here is pure: time comes from an injected clock (epoch seconds,
because override expiries and the timeline are wall-clock), and every change of
the effective state or of an override is reported as a :class:`Transition`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from app.core.event import Failure

Clock = Callable[[], float]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class OverrideMode(StrEnum):
    AUTO = "auto"
    FORCE_OPEN = "force_open"
    FORCE_CLOSED = "force_closed"


class Cause(StrEnum):
    """Why a transition happened (the timeline's legend)."""

    FAILURE_RATE = "failure_rate"
    SLOW_RATE = "slow_rate"
    OPEN_ELAPSED = "open_elapsed"
    PROBES_SUCCEEDED = "probes_succeeded"
    PROBE_FAILED = "probe_failed"
    FORCE_OPEN = "force_open"
    FORCE_CLOSED = "force_closed"
    OVERRIDE_CLEARED = "override_cleared"
    OVERRIDE_EXPIRED = "override_expired"


# Outcomes that never reached the target say nothing about its health.
_NOT_A_CALL = frozenset({Failure.BREAKER_OPEN, Failure.BUDGET_BLOCKED, Failure.GUARDRAIL_BLOCKED})


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Thresholds of one breaker.  ``slow_call_s=None`` means 0.8 x the deadline of the route making the call."""

    window_s: float = 30.0
    bucket_s: float = 1.0
    min_requests: int = 20
    failure_rate: float = 0.5
    slow_rate: float = 0.8
    slow_call_s: float | None = None
    open_for_s: float = 30.0
    max_open_for_s: float = 300.0
    probe_requests: int = 3

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid setting as ``(field, message)``; empty when the settings are usable."""
        out: list[tuple[str, str]] = []
        if not self.window_s > 0:
            out.append(("window_s", "must be more than 0 seconds"))
        if not self.bucket_s > 0:
            out.append(("bucket_s", "must be more than 0 seconds"))
        elif self.window_s > 0 and self.bucket_s > self.window_s:
            out.append(("bucket_s", f"must not be longer than window_s ({self.window_s:g} s)"))
        if self.min_requests < 1:
            out.append(("min_requests", "must be at least 1"))
        if not 0 < self.failure_rate <= 1:
            out.append(("failure_rate", "must be a fraction in (0, 1], e.g. 0.5 for 50%"))
        if not 0 < self.slow_rate <= 1:
            out.append(("slow_rate", "must be a fraction in (0, 1], e.g. 0.8 for 80%"))
        if self.slow_call_s is not None and not self.slow_call_s > 0:
            out.append(("slow_call_s", "must be more than 0 seconds"))
        if not self.open_for_s > 0:
            out.append(("open_for_s", "must be more than 0 seconds"))
        if self.max_open_for_s < self.open_for_s:
            out.append(("max_open_for_s", f"must be at least open_for_s ({self.open_for_s:g} s)"))
        if self.probe_requests < 1:
            out.append(("probe_requests", "must be at least 1"))
        return out


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's forced state: who, why, until when (``None`` = until set back to auto)."""

    mode: OverrideMode
    reason: str
    actor: str
    set_at: float
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def describe(self) -> str:
        until = f" until {_utc(self.expires_at)}" if self.expires_at is not None else ""
        return f"{self.mode.value} by {self.actor}: {self.reason}{until}"


@dataclass(frozen=True, slots=True)
class Transition:
    """One point on the breaker timeline.  ``forced`` tells whether ``to_state`` is the operator's."""

    ts: float
    target: str
    from_state: BreakerState
    to_state: BreakerState
    cause: Cause
    detail: str
    forced: bool = False


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What the breakers page shows for one target."""

    target: str
    state: BreakerState  # effective: what callers get
    auto_state: BreakerState  # what the counts alone say
    forced: Override | None
    overrides: tuple[Override, ...]
    requests: int  # calls in the window
    failures: int
    slow: int
    failure_rate: float | None  # None when the window is empty
    slow_rate: float | None
    window_s: float
    since: float  # when the effective state began
    time_in_state_s: float
    open_until: float | None  # when an automatic open ends (None when not open by itself)
    open_for_s: float  # the current open duration (doubles after failed probes)
    probes_in_flight: int
    probes_succeeded: int


class _Window:
    """Call counts over the last ``window_s`` seconds in fixed buckets, with running sums."""

    __slots__ = ("_bucket_s", "_buckets", "_n", "failed", "slow", "total")

    def __init__(self, window_s: float, bucket_s: float) -> None:
        self._bucket_s = bucket_s
        self._n = max(1, math.ceil(window_s / bucket_s - 1e-9))
        self._buckets: deque[list[int]] = deque()  # [bucket index, total, failed, slow]
        self.total = self.failed = self.slow = 0

    def _evict(self, idx: int) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] <= idx - self._n:
            _, t, f, s = buckets.popleft()
            self.total -= t
            self.failed -= f
            self.slow -= s

    def add(self, now: float, failed: bool, slow: bool) -> None:
        idx = math.floor(now / self._bucket_s)
        self._evict(idx)
        buckets = self._buckets
        # A clock that stepped back lands in the newest bucket rather than re-ordering the window.
        if buckets and buckets[-1][0] >= idx:
            b = buckets[-1]
        else:
            b = [idx, 0, 0, 0]
            buckets.append(b)
        b[1] += 1
        b[2] += failed
        b[3] += slow
        self.total += 1
        self.failed += failed
        self.slow += slow

    def advance(self, now: float) -> None:
        self._evict(math.floor(now / self._bucket_s))

    def clear(self) -> None:
        self._buckets.clear()
        self.total = self.failed = self.slow = 0


@dataclass(slots=True)
class _Slots:
    force_open: Override | None = None
    force_closed: Override | None = None

    def effective(self) -> Override | None:
        return self.force_open or self.force_closed

    def all(self) -> tuple[Override, ...]:
        return tuple(o for o in (self.force_open, self.force_closed) if o is not None)


class Breaker:
    """The breaker of one target.  Not thread-safe: the gateway uses it from its event loop."""

    def __init__(
        self,
        target: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Clock = time.time,
        on_transition: Callable[[Transition], None] | None = None,
        keep_transitions: int = 1000,
    ) -> None:
        self.target = target
        self._settings = settings or BreakerSettings()
        _check(self._settings)
        self._clock = clock
        self._on_transition = on_transition
        self._pending: deque[Transition] = deque(maxlen=keep_transitions)
        now = clock()
        self._window = _Window(self._settings.window_s, self._settings.bucket_s)
        self._auto = BreakerState.CLOSED
        self._open_for = self._settings.open_for_s
        self._open_until = 0.0
        self._hint_until = 0.0  # a rate-limit Retry-After: do not call before this
        self._probes_in_flight = 0
        self._probes_ok = 0
        self._slots = _Slots()
        self._since = now

    # -- reading ---------------------------------------------------------------
    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    @property
    def state(self) -> BreakerState:
        """The automatic state, from the counts alone (ignores any override)."""
        self._tick(self._clock())
        return self._auto

    @property
    def effective_state(self) -> BreakerState:
        """What callers get: the override when one is active, else the automatic state."""
        self._tick(self._clock())
        return self._effective()

    @property
    def forced(self) -> Override | None:
        """The override in force (``force_open`` beats ``force_closed``), or ``None`` in auto."""
        self._tick(self._clock())
        return self._slots.effective()

    @property
    def overrides(self) -> tuple[Override, ...]:
        """Both override slots that are set (a ``force_closed`` may sit under a ``force_open``)."""
        self._tick(self._clock())
        return self._slots.all()

    def snapshot(self) -> BreakerSnapshot:
        now = self._clock()
        self._tick(now)
        self._window.advance(now)
        w = self._window
        auto_open = self._auto is BreakerState.OPEN and self._slots.effective() is None
        return BreakerSnapshot(
            target=self.target,
            state=self._effective(),
            auto_state=self._auto,
            forced=self._slots.effective(),
            overrides=self._slots.all(),
            requests=w.total,
            failures=w.failed,
            slow=w.slow,
            failure_rate=w.failed / w.total if w.total else None,
            slow_rate=w.slow / w.total if w.total else None,
            window_s=self._settings.window_s,
            since=self._since,
            time_in_state_s=max(0.0, now - self._since),
            open_until=self._open_until if auto_open else None,
            open_for_s=self._open_for,
            probes_in_flight=self._probes_in_flight,
            probes_succeeded=self._probes_ok,
        )

    def drain_transitions(self) -> list[Transition]:
        """Transitions since the last drain (only collected when no ``on_transition`` callback is set)."""
        self._tick(self._clock())
        out = list(self._pending)
        self._pending.clear()
        return out

    # -- the call path -----------------------------------------------------------
    def allow(self) -> bool:
        """May a call go to this target now?  In half-open this reserves one of the probes.

        A caller that got ``True`` must later :meth:`record` the outcome, or :meth:`release`
        the reservation when it never made the call.
        """
        self._tick(self._clock())
        forced = self._slots.effective()
        if forced is not None:
            return forced.mode is OverrideMode.FORCE_CLOSED
        if self._auto is BreakerState.CLOSED:
            return True
        if self._auto is BreakerState.OPEN:
            return False
        if self._probes_in_flight + self._probes_ok < self._settings.probe_requests:
            self._probes_in_flight += 1
            return True
        return False

    def release(self) -> None:
        """Give back a half-open probe reserved by :meth:`allow` for a call that was never made."""
        self._tick(self._clock())
        if self._auto is BreakerState.HALF_OPEN and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    def record(
        self,
        failure: Failure,
        *,
        latency_s: float | None = None,
        deadline_s: float | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """Count the outcome of one call to this target.

        ``latency_s`` is the call's duration (for a stream: its time to first token, since a
        stream that keeps producing is not slow).  A call is slow when it took longer than
        ``slow_call_s``, or 0.8 x ``deadline_s`` when the settings leave that to the route.
        ``retry_after_s`` is the server's hint on a ``rate_limited`` answer: if the breaker
        opens while it stands, it opens for at least that long.
        """
        if failure in _NOT_A_CALL:
            return
        now = self._clock()
        self._tick(now)
        s = self._settings
        failed = failure.counts_for_breaker
        threshold = s.slow_call_s if s.slow_call_s is not None else (0.8 * deadline_s if deadline_s else None)
        slow = latency_s is not None and threshold is not None and latency_s > threshold
        if failure is Failure.RATE_LIMITED and retry_after_s is not None and retry_after_s > 0:
            self._hint_until = max(self._hint_until, now + retry_after_s)
        self._window.add(now, failed, slow)
        if self._slots.effective() is not None:
            return
        if self._auto is BreakerState.CLOSED:
            self._maybe_trip(now)
        elif self._auto is BreakerState.HALF_OPEN and self._probes_in_flight > 0:
            # Results of calls that started before the breaker opened carry no probe; they are
            # counted above and otherwise ignored here.
            self._probes_in_flight -= 1
            if failed:
                self._open_for = min(self._open_for * 2, s.max_open_for_s)
                self._open(now, Cause.PROBE_FAILED, f"a probe call failed ({failure.value})")
            else:
                self._probes_ok += 1
                if self._probes_ok >= s.probe_requests:
                    self._open_for = s.open_for_s
                    self._window.clear()
                    self._set_auto(
                        now,
                        BreakerState.CLOSED,
                        Cause.PROBES_SUCCEEDED,
                        f"all {s.probe_requests} probe calls succeeded",
                    )

    # -- the operator's switch ----------------------------------------------------
    def set_override(
        self,
        mode: OverrideMode,
        *,
        reason: str,
        actor: str,
        expires_at: float | None = None,
    ) -> Override | None:
        """Force open, force closed, or back to auto.  Returns the override now in force.

        ``auto`` clears both slots.  ``force_closed`` under an active ``force_open`` is kept but
        does not take effect until the ``force_open`` ends (``force_open`` beats ``force_closed``).
        """
        if not reason.strip():
            raise ValueError("an override needs a reason")
        if not actor.strip():
            raise ValueError("an override needs the operator's name")
        now = self._clock()
        self._tick(now)
        if expires_at is not None and expires_at <= now:
            raise ValueError("the expiry is not in the future")
        if mode is OverrideMode.AUTO:
            if not self._slots.all():
                return None
            self._change_slots(now, _Slots(), Cause.OVERRIDE_CLEARED, f"back to auto by {actor}: {reason}")
            return None
        ov = Override(mode, reason, actor, now, expires_at)
        if mode is OverrideMode.FORCE_OPEN:
            new = _Slots(ov, self._slots.force_closed)
            cause = Cause.FORCE_OPEN
        else:
            new = _Slots(self._slots.force_open, ov)
            cause = Cause.FORCE_CLOSED
        detail = ov.describe()
        if mode is OverrideMode.FORCE_CLOSED and self._slots.force_open is not None:
            detail += f" (not in effect: {self._slots.force_open.describe()} wins)"
        self._change_slots(now, new, cause, detail)
        return self._slots.effective()

    def apply_overrides(self, overrides: Iterable[Override]) -> None:
        """Make the override slots equal the control state's (fleet sync); a no-op when unchanged.

        For each mode the most recently set active override wins.
        """
        now = self._clock()
        self._tick(now)
        latest: dict[OverrideMode, Override] = {}
        for ov in overrides:
            if ov.mode is OverrideMode.AUTO or not ov.active(now):
                continue
            cur = latest.get(ov.mode)
            if cur is None or ov.set_at >= cur.set_at:
                latest[ov.mode] = ov
        new = _Slots(latest.get(OverrideMode.FORCE_OPEN), latest.get(OverrideMode.FORCE_CLOSED))
        if new == self._slots:
            return
        eff = new.effective()
        if eff is None:
            self._change_slots(now, new, Cause.OVERRIDE_CLEARED, "back to auto (control state)")
        else:
            cause = Cause.FORCE_OPEN if eff.mode is OverrideMode.FORCE_OPEN else Cause.FORCE_CLOSED
            self._change_slots(now, new, cause, eff.describe())

    def update_settings(self, settings: BreakerSettings) -> None:
        """New thresholds apply from now on; the window restarts only if its shape changed."""
        _check(settings)
        now = self._clock()
        self._tick(now)
        old = self._settings
        self._settings = settings
        if (old.window_s, old.bucket_s) != (settings.window_s, settings.bucket_s):
            self._window = _Window(settings.window_s, settings.bucket_s)
        self._open_for = min(max(self._open_for, settings.open_for_s), settings.max_open_for_s)

    # -- internals -----------------------------------------------------------------
    def _effective(self) -> BreakerState:
        forced = self._slots.effective()
        if forced is None:
            return self._auto
        return BreakerState.OPEN if forced.mode is OverrideMode.FORCE_OPEN else BreakerState.CLOSED

    def _tick(self, now: float) -> None:
        """Apply what time alone changes: override expiries, then the end of an open period."""
        while True:
            expiring = [o for o in self._slots.all() if o.expires_at is not None and o.expires_at <= now]
            if not expiring:
                break
            first = min(expiring, key=lambda o: o.expires_at or 0.0)
            at = first.expires_at if first.expires_at is not None else now
            new = _Slots(
                None if first is self._slots.force_open else self._slots.force_open,
                None if first is self._slots.force_closed else self._slots.force_closed,
            )
            self._change_slots(at, new, Cause.OVERRIDE_EXPIRED, f"{first.describe()} expired")
        if self._slots.effective() is None and self._auto is BreakerState.OPEN and now >= self._open_until:
            at = max(self._open_until, self._since)
            self._probes_in_flight = self._probes_ok = 0
            self._set_auto(
                at,
                BreakerState.HALF_OPEN,
                Cause.OPEN_ELAPSED,
                f"open for {self._open_for:g} s; letting {self._settings.probe_requests} probe calls through",
            )

    def _maybe_trip(self, now: float) -> None:
        w = self._window
        s = self._settings
        if w.total < s.min_requests:
            return
        window = f"in the last {s.window_s:g} s"
        if w.failed / w.total >= s.failure_rate:
            pct = round(100 * w.failed / w.total)
            self._open(now, Cause.FAILURE_RATE, f"{w.failed} of {w.total} calls failed ({pct}%) {window}")
        elif w.slow / w.total >= s.slow_rate:
            pct = round(100 * w.slow / w.total)
            self._open(now, Cause.SLOW_RATE, f"{w.slow} of {w.total} calls were slow ({pct}%) {window}")

    def _open(self, now: float, cause: Cause, detail: str) -> None:
        duration = self._open_for
        hint = self._hint_until - now
        if hint > duration:
            duration = hint
            detail += f"; the provider asked for {hint:.0f} s (Retry-After)"
        self._open_until = now + duration
        self._probes_in_flight = self._probes_ok = 0
        self._set_auto(now, BreakerState.OPEN, cause, f"{detail}; open for {duration:g} s")

    def _set_auto(self, at: float, to: BreakerState, cause: Cause, detail: str) -> None:
        before = self._effective()
        self._auto = to
        if self._slots.effective() is None:
            self._since = at
            self._emit(Transition(at, self.target, before, to, cause, detail, forced=False))

    def _change_slots(self, at: float, new: _Slots, cause: Cause, detail: str) -> None:
        before = self._effective()
        was_forced = self._slots.effective() is not None
        self._slots = new
        now_forced = new.effective() is not None
        if was_forced and not now_forced:
            # Back to auto: the open timer ran meanwhile.
            self._probes_in_flight = self._probes_ok = 0
            if self._auto is BreakerState.OPEN and at >= self._open_until:
                self._auto = BreakerState.HALF_OPEN
                detail += f"; open period over, letting {self._settings.probe_requests} probe calls through"
        elif now_forced and not was_forced:
            self._probes_in_flight = self._probes_ok = 0
        after = self._effective()
        if after is not before or was_forced != now_forced:
            self._since = at
        self._emit(Transition(at, self.target, before, after, cause, detail, forced=now_forced))

    def _emit(self, t: Transition) -> None:
        if self._on_transition is not None:
            self._on_transition(t)
        else:
            self._pending.append(t)


@dataclass(slots=True)
class BreakerBoard:
    """The breakers of all targets, made on first use with per-target settings."""

    default: BreakerSettings = field(default_factory=BreakerSettings)
    per_target: dict[str, BreakerSettings] = field(default_factory=dict)
    clock: Clock = time.time
    on_transition: Callable[[Transition], None] | None = None
    _breakers: dict[str, Breaker] = field(default_factory=dict)

    def settings_for(self, target: str) -> BreakerSettings:
        return self.per_target.get(target, self.default)

    def get(self, target: str) -> Breaker:
        b = self._breakers.get(target)
        if b is None:
            b = Breaker(target, self.settings_for(target), clock=self.clock, on_transition=self.on_transition)
            self._breakers[target] = b
        return b

    def configure(self, default: BreakerSettings, per_target: dict[str, BreakerSettings]) -> None:
        """New settings from the control config; existing breakers keep their state."""
        self.default = default
        self.per_target = dict(per_target)
        for name, b in self._breakers.items():
            b.update_settings(self.settings_for(name))

    def snapshots(self) -> list[BreakerSnapshot]:
        return [b.snapshot() for _, b in sorted(self._breakers.items())]

    def __contains__(self, target: object) -> bool:
        return target in self._breakers

    def targets(self) -> list[str]:
        return sorted(self._breakers)


def settings_with(base: BreakerSettings, changes: dict[str, float | int | None]) -> BreakerSettings:
    """``base`` with some fields changed (a per-target override from the config)."""
    return replace(base, **changes)  # type: ignore[arg-type]


def _check(settings: BreakerSettings) -> None:
    problems = settings.problems()
    if problems:
        raise ValueError("; ".join(f"{k}: {m}" for k, m in problems))


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
