"""The A/B runner's rate gate on a fake clock: paces to the limit, learns from headers, backs off when
someone else uses the key."""

from __future__ import annotations

import asyncio

from app.experiments.runner import RateGate
from app.providers.ratelimits import RateLimitInfo, RateWindow


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def headers(limit: int, remaining: int) -> RateLimitInfo:
    return RateLimitInfo(requests=RateWindow(limit, remaining, None))


def test_paces_to_the_configured_rpm_when_starting_cautious() -> None:
    t = FakeTime()
    gate = RateGate("p", 60, None, clock=t.clock, sleep=t.sleep)

    async def go() -> list[float]:
        times = []
        for _ in range(5):
            await gate.acquire(0)
            times.append(t.now - 1000.0)
        return times

    assert asyncio.run(go()) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_learns_the_limit_and_the_burst_from_headers() -> None:
    t = FakeTime()
    gate = RateGate("p", None, None, clock=t.clock, sleep=t.sleep)

    async def go() -> float:
        seq = await gate.acquire(0)  # unknown limit: goes at once
        gate.settle(seq, 0, None, headers(60, 59))  # the provider has 59 left of 60/min
        start = t.now
        for _ in range(59):
            await gate.acquire(0)
        assert t.now == start  # the burst the provider allows
        await gate.acquire(0)
        return t.now - start

    assert asyncio.run(go()) == 1.0  # then one a second
    assert gate.rpm == 60


def test_backs_off_when_someone_else_uses_the_key() -> None:
    t = FakeTime()
    gate = RateGate("p", 60, None, clock=t.clock, sleep=t.sleep, start_full=True)

    async def go() -> float:
        seq = await gate.acquire(0)
        others = await gate.acquire(0)
        gate.settle(seq, 0, None, headers(60, 59))  # what we know: fine
        gate.settle(others, 0, None, headers(60, 0))  # the provider says nothing is left: others took it
        start = t.now
        await gate.acquire(0)
        return t.now - start

    assert asyncio.run(go()) >= 1.0


def test_tokens_per_minute_are_paced_and_corrected() -> None:
    t = FakeTime()
    gate = RateGate("p", None, 6000, clock=t.clock, sleep=t.sleep, start_full=True)

    async def go() -> float:
        for _ in range(6):
            seq = await gate.acquire(1000)
            gate.settle(seq, 1000, 1000, None)
        start = t.now
        await gate.acquire(1000)  # the minute's tokens are spent: 10 s for 1000 more
        return t.now - start

    assert asyncio.run(go()) == 10.0


def test_tokens_start_cautious_until_headers_say_what_is_left() -> None:
    t = FakeTime()
    gate = RateGate("p", None, 6000, clock=t.clock, sleep=t.sleep)

    async def go() -> tuple[float, float]:
        seq = await gate.acquire(500)  # the first call goes at once, to learn from its headers
        assert t.now == 1000.0
        gate.settle(seq, 500, 400, RateLimitInfo(tokens=RateWindow(6000, 5600, None)))
        start = t.now
        for _ in range(11):  # 5600 left: eleven calls of 500 at once
            await gate.acquire(500)
        burst = t.now - start
        await gate.acquire(500)  # 100 left: 400 more take 4 s at 100 tokens/s
        return burst, t.now - start

    assert asyncio.run(go()) == (0.0, 4.0)
