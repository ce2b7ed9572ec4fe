"""Requests-per-minute and tokens-per-minute limits, as continuously refilled token buckets.

Both providers describe their limits this way: the full per-minute capacity is
available at once and refills evenly over the minute.  A request takes one
request and its tokens (input plus the output it will produce); when either
bucket is short, it gets a 429 whose ``retry-after`` is the time until enough
has refilled.  The figures feed the real ``x-ratelimit-*`` (OpenAI) and
``anthropic-ratelimit-*`` headers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from app.sim.scenario import Limits


@dataclass(slots=True)
class Bucket:
    capacity: float
    level: float
    updated: float

    @property
    def rate(self) -> float:  # per second
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (infinite if it exceeds the capacity)."""
        if amount <= self.level:
            return 0.0
        if amount > self.capacity:
            return math.inf
        return (amount - self.level) / self.rate

    def until_full(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    kind: str | None  # "requests" or "tokens" when refused
    retry_after: float
    rpm: int | None
    rpm_remaining: int
    rpm_reset: float  # seconds until the bucket is full again
    tpm: int | None
    tpm_remaining: int
    tpm_reset: float


class RateLimiter:
    """One pair of buckets per (provider, model)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._buckets: dict[tuple[str, str], tuple[Bucket | None, Bucket | None]] = {}
        self._clock = clock or time.monotonic

    def admit(
        self, provider: str, model: str, limits: Limits, tokens: int, *, consume: bool = True
    ) -> Verdict:
        now = self._clock()
        key = (provider, model)
        pair = self._buckets.get(key)
        if pair is None:
            pair = (
                Bucket(limits.rpm, limits.rpm, now) if limits.rpm else None,
                Bucket(limits.tpm, limits.tpm, now) if limits.tpm else None,
            )
            self._buckets[key] = pair
        req, tok = pair
        for b in pair:
            if b is not None:
                b.refill(now)
        wait_req = req.wait_for(1) if req else 0.0
        wait_tok = tok.wait_for(tokens) if tok else 0.0
        allowed = wait_req == 0.0 and wait_tok == 0.0
        if allowed and consume:
            if req:
                req.level -= 1
            if tok:
                tok.level -= tokens
        kind = None if allowed else ("requests" if wait_req >= wait_tok else "tokens")
        return Verdict(
            allowed=allowed,
            kind=kind,
            retry_after=max(wait_req, wait_tok),
            rpm=limits.rpm,
            rpm_remaining=max(int(req.level), 0) if req else 0,
            rpm_reset=req.until_full() if req else 0.0,
            tpm=limits.tpm,
            tpm_remaining=max(int(tok.level), 0) if tok else 0,
            tpm_reset=tok.until_full() if tok else 0.0,
        )


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"``."""
    if seconds < 1.0:
        return f"{max(round(seconds * 1000), 0)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def rfc3339_after(seconds: float) -> str:
    """Anthropic's reset format: the moment the bucket is full again."""
    at = datetime.fromtimestamp(time.time() + seconds, tz=UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_headers(v: Verdict) -> dict[str, str]:
    headers: dict[str, str] = {}
    if v.rpm:
        headers["x-ratelimit-limit-requests"] = str(v.rpm)
        headers["x-ratelimit-remaining-requests"] = str(v.rpm_remaining)
        headers["x-ratelimit-reset-requests"] = go_duration(v.rpm_reset)
    if v.tpm:
        headers["x-ratelimit-limit-tokens"] = str(v.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(v.tpm_remaining)
        headers["x-ratelimit-reset-tokens"] = go_duration(v.tpm_reset)
    return headers


def anthropic_headers(v: Verdict) -> dict[str, str]:
    headers: dict[str, str] = {}
    if v.rpm:
        headers["anthropic-ratelimit-requests-limit"] = str(v.rpm)
        headers["anthropic-ratelimit-requests-remaining"] = str(v.rpm_remaining)
        headers["anthropic-ratelimit-requests-reset"] = rfc3339_after(v.rpm_reset)
    if v.tpm:
        headers["anthropic-ratelimit-tokens-limit"] = str(v.tpm)
        headers["anthropic-ratelimit-tokens-remaining"] = str(v.tpm_remaining)
        headers["anthropic-ratelimit-tokens-reset"] = rfc3339_after(v.tpm_reset)
    return headers
