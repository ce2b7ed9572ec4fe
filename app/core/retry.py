"""Retries: when to try again, how long to wait, and the guard against retry storms (semantics.md 4).

:class:`RetryPolicy` answers, after a failed attempt on a target, "retry here,
move on to the next target, or stop?".  Server hints win over our backoff; a
hint longer than the remaining deadline or ``max_retry_after_s`` means: do not
wait, go to the next target.  :class:`RetryBudget` caps retries at a fraction
of first attempts over a sliding window (anchor: Envoy's retry budget, gRPC
retry throttling), with a floor of concurrent retries so a quiet gateway can
still retry.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from app.core.event import Failure

Clock = Callable[[], float]

# Failures that are about the request itself: another target would refuse it too.
_STOP = frozenset({Failure.BUDGET_BLOCKED, Failure.GUARDRAIL_BLOCKED})


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """``retry``: try the same target again after ``wait_s``.  ``next_target``: move on now."""

    retry: bool
    wait_s: float
    reason: str
    next_target: bool


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3  # per target, the first attempt included
    base_s: float = 0.5
    cap_s: float = 8.0
    max_retry_after_s: float = 60.0

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.max_attempts < 1:
            out.append(("max_attempts", "must be at least 1 (1 means no retries)"))
        if self.base_s < 0:
            out.append(("base_s", "must not be negative"))
        if self.cap_s < self.base_s:
            out.append(("cap_s", f"must be at least base_s ({self.base_s:g} s)"))
        if self.max_retry_after_s < 0:
            out.append(("max_retry_after_s", "must not be negative"))
        return out

    def backoff(self, n: int, rng: random.Random) -> float:
        """Full jitter: a uniform wait in ``[0, min(cap, base * 2**n))`` before retry number ``n`` (0-based)."""
        if n < 0:
            raise ValueError("retry number must be 0 or more")
        # 2**n overflows a float past n ~ 1000; the cap is reached long before.
        ceiling = self.cap_s if n >= 64 else min(self.cap_s, self.base_s * 2.0**n)
        return rng.random() * ceiling

    def decide(
        self,
        failure: Failure,
        attempt: int,
        retry_after_s: float | None = None,
        remaining_deadline_s: float | None = None,
        *,
        rng: random.Random | None = None,
    ) -> RetryDecision:
        """What to do after attempt number ``attempt`` (1-based) on a target ended in ``failure``."""
        if failure is Failure.NONE:
            return RetryDecision(False, 0.0, "succeeded", False)
        if failure in _STOP:
            return RetryDecision(False, 0.0, f"{failure.value} is not retried", False)
        if remaining_deadline_s is not None and remaining_deadline_s <= 0:
            return RetryDecision(False, 0.0, "the deadline has passed", False)
        if not failure.retryable:
            return RetryDecision(False, 0.0, f"{failure.value} is not retried; trying the next target", True)
        if attempt >= self.max_attempts:
            used = f"{attempt} attempt{'s' if attempt != 1 else ''}"
            return RetryDecision(False, 0.0, f"{used} used (max_attempts {self.max_attempts})", True)
        if retry_after_s is not None and retry_after_s >= 0:
            if retry_after_s > self.max_retry_after_s:
                return RetryDecision(
                    False,
                    0.0,
                    f"the server asked to wait {retry_after_s:g} s, more than max_retry_after "
                    f"{self.max_retry_after_s:g} s; trying the next target",
                    True,
                )
            if remaining_deadline_s is not None and retry_after_s >= remaining_deadline_s:
                return RetryDecision(
                    False,
                    0.0,
                    f"the server asked to wait {retry_after_s:g} s, more than the "
                    f"{remaining_deadline_s:.3g} s left before the deadline; trying the next target",
                    True,
                )
            return RetryDecision(True, retry_after_s, f"the server asked to wait {retry_after_s:g} s", False)
        wait = self.backoff(attempt - 1, rng if rng is not None else _rng)
        if remaining_deadline_s is not None and wait >= remaining_deadline_s:
            return RetryDecision(
                False,
                0.0,
                f"backoff {wait:.3g} s would pass the deadline ({remaining_deadline_s:.3g} s left); "
                "trying the next target",
                True,
            )
        return RetryDecision(
            True, wait, f"{failure.value}: retry {attempt} after {wait:.3g} s backoff", False
        )


_rng = random.Random()


class RetryBudget:
    """Retries may add at most ``ratio`` on top of first attempts over ``window_s``.

    ``min_concurrent`` retries in flight are always allowed, so low traffic can still retry.
    Call :meth:`record_attempt` for every first attempt, :meth:`try_acquire_retry` before a
    retry, and :meth:`release` when that retry attempt has finished.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        window_s: float = 10.0,
        min_concurrent: int = 3,
        *,
        clock: Clock = time.monotonic,
        bucket_s: float = 1.0,
    ) -> None:
        if ratio < 0:
            raise ValueError("ratio must not be negative")
        if window_s <= 0 or bucket_s <= 0:
            raise ValueError("window_s and bucket_s must be positive")
        if min_concurrent < 0:
            raise ValueError("min_concurrent must not be negative")
        self.ratio = ratio
        self.window_s = window_s
        self.min_concurrent = min_concurrent
        self._clock = clock
        self._bucket_s = bucket_s
        self._n = max(1, math.ceil(window_s / bucket_s - 1e-9))
        self._buckets: deque[list[int]] = deque()  # [bucket index, first attempts, retries]
        self._attempts = 0
        self._retries = 0
        self._in_flight = 0

    def _bucket(self) -> list[int]:
        idx = math.floor(self._clock() / self._bucket_s)
        b = self._buckets
        while b and b[0][0] <= idx - self._n:
            _, a, r = b.popleft()
            self._attempts -= a
            self._retries -= r
        if b and b[-1][0] >= idx:
            return b[-1]
        new = [idx, 0, 0]
        b.append(new)
        return new

    def record_attempt(self) -> None:
        """A first attempt was made (retries are counted by :meth:`try_acquire_retry`)."""
        self._bucket()[1] += 1
        self._attempts += 1

    def try_acquire_retry(self) -> bool:
        """May a retry start now?  When ``True``, call :meth:`release` once it has finished."""
        bucket = self._bucket()
        within_ratio = self._retries + 1 <= self.ratio * self._attempts
        if not (within_ratio or self._in_flight < self.min_concurrent):
            return False
        bucket[2] += 1
        self._retries += 1
        self._in_flight += 1
        return True

    def release(self) -> None:
        if self._in_flight > 0:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def counts(self) -> tuple[int, int]:
        """``(first attempts, retries)`` in the window."""
        self._bucket()
        return self._attempts, self._retries


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The server's wait hint in seconds: ``retry-after-ms`` first, then ``retry-after``.

    ``retry-after`` may be seconds or an HTTP date (RFC 9110).  ``now`` is epoch seconds, used
    for the date form.  Unparseable or negative values give ``None`` (no hint), never an error:
    a provider's odd header must not fail the request.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms.strip())
        except ValueError:
            value = -1.0
        if value >= 0 and math.isfinite(value):
            return value / 1000.0
    raw = lower.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    return seconds if seconds >= 0 and math.isfinite(seconds) else None
