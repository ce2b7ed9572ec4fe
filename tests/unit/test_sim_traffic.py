"""The demo traffic generator: deterministic mix, a rate that rises and falls, long prompts, clean stop."""

from __future__ import annotations

import asyncio
import collections
import math

import pytest

from app.core.tokens import count_text
from app.sim.traffic import (
    USERS,
    WORKLOADS,
    RequestSpec,
    SpecMaker,
    TrafficGenerator,
    TrafficProfile,
    rate_at,
)


def test_same_seed_same_sequence_other_seed_other_sequence() -> None:
    a = [SpecMaker(3).next() for _ in range(1)]
    first = SpecMaker(3)
    second = SpecMaker(3)
    other = SpecMaker(4)
    seq1 = [first.next() for _ in range(300)]
    seq2 = [second.next() for _ in range(300)]
    seq3 = [other.next() for _ in range(300)]
    assert seq1 == seq2
    assert seq1 != seq3
    assert a[0] == seq1[0]


def test_mix_covers_routes_features_users_and_streams() -> None:
    maker = SpecMaker(11)
    specs = [maker.next() for _ in range(3000)]
    routes = collections.Counter(s.route for s in specs)
    features = collections.Counter(s.feature for s in specs)
    users = collections.Counter(s.user for s in specs)
    assert set(routes) == {"default", "search", "summarize"}
    assert set(features) == {w.feature for w in WORKLOADS}
    assert len(users) >= 25 and set(users) <= set(USERS)
    # A skewed user mix: the top user sends several times what the median one does.
    counts = sorted(users.values(), reverse=True)
    assert counts[0] > 3 * counts[len(counts) // 2]
    streamed = sum(s.stream for s in specs)
    assert 0.1 * len(specs) < streamed < 0.7 * len(specs)
    assert all(s.feature != "search" or not s.stream for s in specs)
    assert all(s.messages and s.messages[0]["role"] == "user" for s in specs)


def test_long_prompts_are_rare_and_really_long() -> None:
    maker = SpecMaker(5, long_prompt_share=0.02)
    specs = [maker.next() for _ in range(2000)]
    long_ones = [s for s in specs if s.long_prompt]
    assert 10 <= len(long_ones) <= 80
    tokens = count_text(long_ones[0].messages[0]["content"], "gpt-4o").tokens
    assert tokens > 4000  # beyond the demo routes' input_tokens_over threshold
    short = next(s for s in specs if not s.long_prompt)
    assert count_text(short.messages[0]["content"], "gpt-4o").tokens < 200


def test_rate_rises_and_falls_between_base_and_peak() -> None:
    p = TrafficProfile(base_rps=2.0, peak_rps=10.0, period_s=60.0)
    assert rate_at(0.0, p) == pytest.approx(2.0)
    assert rate_at(30.0, p) == pytest.approx(10.0)
    assert rate_at(60.0, p) == pytest.approx(2.0)
    assert rate_at(10.0, p) < rate_at(20.0, p) < rate_at(30.0, p) > rate_at(45.0, p)
    values = [rate_at(t, p) for t in range(0, 120)]
    assert min(values) >= 2.0 - 1e-9 and max(values) <= 10.0 + 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_rps": -1.0},
        {"base_rps": 5.0, "peak_rps": 1.0},
        {"period_s": 0.0},
        {"long_prompt_share": 1.5},
        {"max_in_flight": 0},
    ],
)
def test_bad_profile_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrafficProfile(**kwargs)  # type: ignore[arg-type]


def test_generator_sends_through_the_injected_callable_and_stops() -> None:
    sent: list[RequestSpec] = []

    async def send(spec: RequestSpec) -> object:
        sent.append(spec)
        await asyncio.sleep(0)
        if len(sent) % 5 == 0:
            raise RuntimeError("a failed request is part of the traffic")
        return None

    async def main() -> TrafficGenerator:
        gen = TrafficGenerator(send, seed=1, profile=TrafficProfile(base_rps=200.0, peak_rps=400.0))
        task = asyncio.create_task(gen.run())
        async with asyncio.timeout(10):
            while len(sent) < 60:  # noqa: ASYNC110 - a bounded poll on a plain counter
                await asyncio.sleep(0.01)
        assert gen.running
        await gen.stop()
        await task
        assert not gen.running
        n = len(sent)
        await asyncio.sleep(0.1)
        assert len(sent) == n, "requests were sent after stop()"
        return gen

    gen = asyncio.run(main())
    st = gen.stats
    assert st.sent == len(sent) == st.completed + st.failed
    assert st.failed == len(sent) // 5
    assert st.in_flight == 0


def test_slow_requests_are_bounded_and_cancelled_on_stop() -> None:
    started = 0
    cancelled = 0

    async def send(spec: RequestSpec) -> object:
        nonlocal started, cancelled
        started += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return None

    async def main() -> TrafficGenerator:
        profile = TrafficProfile(base_rps=500.0, peak_rps=500.0, max_in_flight=8)
        gen = TrafficGenerator(send, seed=2, profile=profile)
        task = asyncio.create_task(gen.run())
        async with asyncio.timeout(10):
            while gen.stats.skipped < 5:  # noqa: ASYNC110 - a bounded poll on a plain counter
                await asyncio.sleep(0.01)
        await gen.stop(grace_s=0.05)
        await task
        return gen

    gen = asyncio.run(main())
    assert started == 8 == cancelled
    assert gen.stats.sent == 8 and gen.stats.skipped >= 5
    assert gen.stats.in_flight == 0


def test_current_rate_follows_the_curve_on_the_injected_clock() -> None:
    now = [100.0]

    async def send(spec: RequestSpec) -> object:
        return None

    async def main() -> list[float]:
        gen = TrafficGenerator(
            send, profile=TrafficProfile(base_rps=1.0, peak_rps=3.0, period_s=40.0), clock=lambda: now[0]
        )
        task = asyncio.create_task(gen.run())
        await asyncio.sleep(0)
        seen = []
        for t in (0.0, 10.0, 20.0, 30.0):
            now[0] = 100.0 + t
            seen.append(gen.current_rate())
        await gen.stop()
        await task
        return seen

    seen = asyncio.run(main())
    assert seen[0] == pytest.approx(1.0)
    assert seen[2] == pytest.approx(3.0)
    assert math.isclose(seen[1], seen[3])


def test_a_stopped_generator_runs_again_and_keeps_counting() -> None:
    sent: list[RequestSpec] = []

    async def send(spec: RequestSpec) -> object:
        sent.append(spec)
        return None

    async def main() -> TrafficGenerator:
        gen = TrafficGenerator(send, seed=9, profile=TrafficProfile(base_rps=300.0, peak_rps=300.0))
        for target in (20, 40):
            task = asyncio.create_task(gen.run())
            async with asyncio.timeout(10):
                while len(sent) < target:  # noqa: ASYNC110 - a bounded poll on a plain counter
                    await asyncio.sleep(0.01)
            await gen.stop()
            await task
        return gen

    gen = asyncio.run(main())
    assert gen.stats.sent == len(sent) >= 40
    assert len(set(map(id, sent))) == len(sent)
