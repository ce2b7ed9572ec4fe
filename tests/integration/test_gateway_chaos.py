"""The gateway under the simulator's fault scenarios: deadlines, retry storms, outages, breakers, streams.

Real sockets on 127.0.0.1, a real SQLite store.  The simulator's ledger counts
the calls that really reached a provider; the store holds the events.  Breaker
settings are small (a 2 s window, 5 calls, 0.5 s open) so state changes happen
within a second; every wait is a bounded loop on a condition.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.breaker import BreakerState
from app.core.event import CostSource, Failure
from app.gateway.engine import Gateway, GatewayError, GatewayRequest, GatewayStreamEnd, GatewayStreamStart
from app.providers import TextDelta
from app.sim import SimServer, SimThread, load_scenario
from storage.engine import Store, open_store
from storage.queries.control import list_breaker_transitions
from storage.queries.events import count_events, fetch_events
from tests.integration.test_gateway_engine import ask, keys, make_config, models_called, run, wait_for

SMALL_BREAKERS = """
breakers:
  default: {window_s: 2, min_requests: 5, failure_rate: 0.5, open_for_s: 0.5, max_open_for_s: 4, probe_requests: 2}
"""
SLACK_S = 0.25  # how far past its deadline a request may end


def compressed(name: str, factor: float) -> dict[str, Any]:
    """A shipped scenario with its delays scaled by ``factor`` and generation sped up as much."""
    source = copy.deepcopy(dict(load_scenario(name).source))
    for profile in [source.get("defaults") or {}, *(source.get("models") or {}).values()]:
        ttft = profile.get("ttft")
        if isinstance(ttft, dict) and "median" in ttft:
            profile["ttft"] = {k: v * factor for k, v in ttft.items()}
        tps = profile.get("tokens_per_s")
        if isinstance(tps, dict) and "median" in tps:
            profile["tokens_per_s"] = {k: v / factor for k, v in tps.items()}
    return source


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimThread("instant", seed=11) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


async def timed(coro: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    try:
        result = await coro
    except GatewayError as exc:
        result = exc
    return time.monotonic() - t0, result


async def consume(gw: Gateway, req: GatewayRequest) -> tuple[list[Any], GatewayError | None]:
    items: list[Any] = []
    try:
        async for item in gw.stream(req):
            items.append(item)
    except GatewayError as exc:
        return items, exc
    return items, None


def breaker(gw: Gateway, target: str) -> Any:
    return {s.target: s for s in gw.breaker_snapshots()}[target]


# --- deadlines ------------------------------------------------------------------------------------


def test_no_request_outlives_its_deadline_when_every_provider_hangs(sim: SimServer, store: Store) -> None:
    sim.set_scenario(
        {"name": "hangs", "defaults": {"faults": {"hang": 1.0}}, "fault_options": {"hang_seconds": 30}}
    )
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 1.0
    first_token_timeout_s: 0.4
    retry: {max_attempts: 3, base_s: 0.05, cap_s: 0.2}
    rules:
      - chain: [fast, strong]
""",
    )

    async def main() -> list[tuple[float, float, Any]]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            jobs: list[tuple[float, Any]] = []
            for i in range(20):
                jobs.append((1.0, gw.chat(ask(text=f"q{i}"))))
            for i in range(5):
                jobs.append((0.5, gw.chat(ask(text=f"short {i}", deadline_s=0.5))))
            for i in range(8):
                jobs.append((1.0, consume(gw, ask(text=f"s{i}", stream=True))))
            results = await asyncio.gather(*(timed(c) for _, c in jobs))
            return [(limit, took, res) for (limit, _), (took, res) in zip(jobs, results, strict=True)]

    outcomes = run(main)
    for limit, took, res in outcomes:
        assert took <= limit + SLACK_S, f"a request with a {limit} s deadline took {took:.3f} s"
        err = res if isinstance(res, GatewayError) else res[1]
        assert isinstance(err, GatewayError) and err.failure is Failure.TIMEOUT and err.status_code == 504
        assert err.event.latency_ms is not None and err.event.latency_ms <= (limit + SLACK_S) * 1000
    assert count_events(store.engine) == len(outcomes)


def test_deadlines_hold_in_the_degraded_scenario(sim: SimServer, store: Store) -> None:
    """A bad day (slow first tokens, 5xx, 429, hangs, cut streams): whatever happens, it ends in time."""
    sim.set_scenario("degraded")
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 1.5
    retry: {max_attempts: 2, base_s: 0.05, cap_s: 0.2, max_retry_after_s: 0.5}
    rules:
      - chain: [fast, big, strong]
""",
    )

    async def main() -> list[tuple[float, Any]]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            jobs = [gw.chat(ask(text=f"q{i}")) for i in range(30)]
            jobs += [consume(gw, ask(text=f"s{i}", stream=True)) for i in range(10)]
            return await asyncio.gather(*(timed(c) for c in jobs))

    outcomes = run(main)
    for took, _ in outcomes:
        assert took <= 1.5 + SLACK_S
    assert count_events(store.engine) == len(outcomes), "exactly one event per request"


# --- retries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["rate_limit", "server_error"])
def test_retries_stay_within_the_policy_and_the_retry_budget_in_a_storm(
    sim: SimServer, store: Store, fault: str
) -> None:
    """Every call fails after 0.3 s (429 with a 50 ms hint, or 500): retries come in crisp waves."""
    sim.set_scenario(
        {
            "name": "storm",
            "defaults": {"ttft": 1.2, "faults": {fault: 1.0}},  # errors answer after ttft / 4
            "fault_options": {"retry_after": 0.05},
        }
    )
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 5
    retry: {max_attempts: 3, base_s: 0.01, cap_s: 0.02}
    rules:
      - chain: [fast]
""",
        # a breaker would stop the storm by itself: keep it out of the way to see the retry budget work
        breakers="breakers:\n  default: {min_requests: 100000}",
    )
    n = 100
    failure = Failure.RATE_LIMITED if fault == "rate_limit" else Failure.SERVER_ERROR

    async def main() -> dict[str, Any]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            results = await asyncio.gather(*(timed(gw.chat(ask(text=f"q{i}"))) for i in range(n)))
            return {"results": results, "stats": gw.stats()}

    out = run(main)
    errors = [r for _, r in out["results"]]
    assert all(isinstance(e, GatewayError) and e.failure is failure for e in errors)
    calls = len(models_called(sim))
    events = fetch_events(store.engine, limit=n + 1).events
    assert len(events) == n
    assert sum(e.attempts for e in events) == calls, "the events count every call the provider saw"
    assert max(e.attempts for e in events) <= 3, "max_attempts per target"
    retries = calls - n
    # 20% on top of first attempts, plus the floor of 3 concurrent retries in each of the two retry waves
    # (without the budget: up to 200 retries).
    assert retries <= 0.2 * n + 3 * 2, f"{retries} retries for {n} requests"
    stats = out["stats"]
    assert stats.retries.get("fast", 0) == retries
    assert stats.retries_denied.get("fast", 0) >= n - retries


def test_a_server_hint_longer_than_the_deadline_moves_on_at_once(sim: SimServer, store: Store) -> None:
    sim.set_scenario(
        {
            "name": "slow-hint",
            "outages": [{"provider": "openai", "fault": "unavailable", "rate": 1.0}],
            "fault_options": {"retry_after": 30},
        }
    )
    cfg = make_config(sim)  # deadline 10 s: a 30 s hint is not waited for

    async def main() -> Any:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            return await timed(gw.chat(ask()))

    took, resp = run(main)
    assert resp.target == "strong" and resp.attempts == 2
    assert took < 5
    assert "more than the" in (resp.event.error_message or "") or resp.event.error_message is None


# --- outages and fallbacks ---------------------------------------------------------------------------


def test_a_primary_outage_with_a_healthy_fallback_costs_no_client_visible_failure(
    sim: SimServer, store: Store
) -> None:
    """primary-outage: OpenAI answers 503 (retry-after 5 s) to everything, Anthropic is healthy."""
    sim.set_scenario(compressed("primary-outage", 0.2))
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 20
    retry: {max_attempts: 2, base_s: 0.05, cap_s: 0.2, max_retry_after_s: 1}
    rules:
      - chain: [fast, strong]
""",
        breakers=SMALL_BREAKERS,
    )

    async def main() -> dict[str, Any]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            chats = [gw.chat(ask(text=f"q{i}")) for i in range(24)]
            streams = [consume(gw, ask(text=f"s{i}", stream=True)) for i in range(8)]
            results = await asyncio.gather(*chats, *streams, return_exceptions=True)
            later = await gw.chat(ask(text="after the breaker opened"))
            return {"results": results, "later": later, "fast": breaker(gw, "fast")}

    out = run(main)
    failures = [r for r in out["results"] if isinstance(r, BaseException)]
    assert not failures, f"client-visible failures: {failures[:3]}"
    for r in out["results"]:
        if isinstance(r, tuple):
            items, err = r
            assert err is None and isinstance(items[-1], GatewayStreamEnd)
            assert items[-1].response.target == "strong"
        else:
            assert r.target == "strong" and r.event.failure is Failure.NONE
    assert out["fast"].auto_state is not BreakerState.CLOSED, "the primary's breaker opened"
    later = out["later"]
    assert later.target == "strong" and later.event.targets_tried in (["strong"], ["fast", "strong"])
    events = fetch_events(store.engine, limit=100).events
    assert len(events) == 33 and all(e.failure is Failure.NONE for e in events)


def test_every_target_open_fails_fast_or_is_tried_anyway(sim: SimServer) -> None:
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 5
    rules:
      - chain: [fast, strong]
  - name: stubborn
    deadline_s: 5
    on_all_open: try_anyway
    rules:
      - chain: [fast, strong]
  - name: polite
    deadline_s: 5
    fallback_response: "We are busy; please try again in a minute."
    rules:
      - chain: [fast, strong]
""",
    )

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(None, config=cfg, key_resolver=keys) as gw:
            for t in ("fast", "strong"):
                gw.set_breaker_override(t, "force_open", reason="drill", actor="ops")
            with pytest.raises(GatewayError) as info:
                await gw.chat(ask())
            out["fail_fast"] = info.value
            out["anyway"] = await gw.chat(ask(route="stubborn"))
            out["polite"] = await gw.chat(ask(route="polite"))
        return out

    out = run(main)
    err = out["fail_fast"]
    assert err.failure is Failure.BREAKER_OPEN and err.status_code == 503
    assert err.message == "every target of route default is open (fast, strong)"
    assert err.event.attempts == 0 and err.event.targets_tried == []
    assert out["anyway"].target == "fast" and out["anyway"].event.failure is Failure.NONE
    polite = out["polite"]
    assert polite.target == "fallback" and polite.result.text.startswith("We are busy")
    assert polite.event.failure is Failure.BREAKER_OPEN and polite.event.status_code == 200
    assert len(models_called(sim)) == 1


# --- breakers --------------------------------------------------------------------------------------


def test_breaker_opens_half_opens_reopens_doubled_and_closes(sim: SimServer, store: Store) -> None:
    sim.set_scenario(
        {"name": "openai-down", "outages": [{"provider": "openai", "fault": "server_error", "rate": 1.0}]}
    )
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 5
    retry: {max_attempts: 1}
    rules:
      - chain: [fast, strong]
""",
        breakers=SMALL_BREAKERS,
    )

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            served = [(await gw.chat(ask(text=f"q{i}"))).target for i in range(5)]
            out["served"] = served
            out["opened"] = breaker(gw, "fast")
            skipped = await gw.chat(ask(text="while open"))
            out["skipped"] = (skipped.event.targets_tried, skipped.event.breaker_state)
            assert await wait_for(lambda: breaker(gw, "fast").state is BreakerState.HALF_OPEN, 3.0)
            probe = await gw.chat(ask(text="probe that fails"))
            out["probe"] = probe.event.targets_tried
            out["reopened"] = breaker(gw, "fast")
            sim.set_scenario("instant")
            assert await wait_for(lambda: breaker(gw, "fast").state is BreakerState.HALF_OPEN, 3.0)
            probes = [(await gw.chat(ask(text=f"good probe {i}"))).target for i in range(2)]
            out["probes"] = probes
            out["closed"] = breaker(gw, "fast")
        return out

    out = run(main)
    assert out["served"] == ["strong"] * 5, "the fallback answered every request"
    opened = out["opened"]
    assert opened.state is BreakerState.OPEN and opened.failures == 5 and opened.open_for_s == 0.5
    assert out["skipped"] == (["strong"], "open")
    assert out["probe"] == ["fast", "strong"]
    reopened = out["reopened"]
    assert reopened.state is BreakerState.OPEN and reopened.open_for_s == 1.0, (
        "open_for doubles after a failed probe"
    )
    assert out["probes"] == ["fast", "fast"]
    assert out["closed"].state is BreakerState.CLOSED and out["closed"].open_for_s == 0.5
    timeline = [
        (t.from_state, t.to_state, t.cause) for t in list_breaker_transitions(store.engine, target="fast")
    ]
    assert timeline == [
        ("closed", "open", "failure_rate"),
        ("open", "half_open", "open_elapsed"),
        ("half_open", "open", "probe_failed"),
        ("open", "half_open", "open_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]
    first = list_breaker_transitions(store.engine, target="fast")[0]
    assert first.detail is not None and "5 of 5 calls failed" in first.detail["detail"]


def test_slow_calls_open_the_breaker(sim: SimServer) -> None:
    sim.set_scenario({"name": "slow-openai", "models": {"gpt-4o-mini": {"provider": "openai", "ttft": 0.15}}})
    cfg = make_config(
        sim,
        breakers="""
breakers:
  default: {window_s: 2, min_requests: 5, slow_call_s: 0.1, slow_rate: 0.8, open_for_s: 5}
""",
    )

    async def main() -> Any:
        async with Gateway(None, config=cfg, key_resolver=keys) as gw:
            for i in range(5):
                await gw.chat(ask(text=f"q{i}"))
            snap = breaker(gw, "fast")
            nxt = await gw.chat(ask(text="after"))
            return snap, nxt, list(gw.transitions)

    snap, nxt, transitions = run(main)
    assert snap.state is BreakerState.OPEN and snap.slow == 5 and snap.failures == 0
    assert transitions[-1].cause.value == "slow_rate"
    assert nxt.target == "strong"


def test_a_rate_limit_hint_keeps_the_breaker_open_at_least_that_long(sim: SimServer) -> None:
    sim.set_scenario(
        {
            "name": "limited",
            "outages": [{"provider": "openai", "fault": "rate_limit", "rate": 1.0}],
            "fault_options": {"retry_after": 4},
        }
    )
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 5
    retry: {max_attempts: 1}
    rules:
      - chain: [fast, strong]
""",
        breakers=SMALL_BREAKERS,
    )

    async def main() -> Any:
        async with Gateway(None, config=cfg, key_resolver=keys) as gw:
            for i in range(5):
                await gw.chat(ask(text=f"q{i}"))
            return breaker(gw, "fast")

    snap = run(main)
    assert snap.state is BreakerState.OPEN
    assert snap.open_until is not None and snap.open_until - snap.since >= 3.9


# --- streams ----------------------------------------------------------------------------------------


def test_a_stream_cut_after_the_first_chunk_is_a_billed_failure(sim: SimServer, store: Store) -> None:
    sim.set_scenario(
        {
            "name": "cut",
            "defaults": {"faults": {"stream_cut": 1.0}},
            "fault_options": {"cut_after_chunks": [3, 3]},
            "answers": {"default_tokens": 60},
        }
    )
    cfg = make_config(sim)

    async def main() -> tuple[list[Any], GatewayError | None]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            return await consume(gw, ask(text="a long answer please", stream=True))

    items, err = run(main)
    assert any(isinstance(i, TextDelta) for i in items), "the caller got the first chunks"
    assert err is not None and err.failure is Failure.CONNECTION_ERROR
    ev = err.event
    assert ev.output_tokens > 0 and ev.cost_usd is not None and ev.cost_usd > 0, "billed, never a silent zero"
    assert ev.cost_source is CostSource.ESTIMATED
    assert ev.targets_tried == ["fast"], "no fallback once the caller has part of the answer"
    assert count_events(store.engine) == 1


def test_a_stream_that_fails_before_its_first_token_falls_back(sim: SimServer, store: Store) -> None:
    sim.set_scenario(
        {
            "name": "openai-503",
            "outages": [{"provider": "openai", "fault": "unavailable", "rate": 1.0}],
            "fault_options": {"retry_after": 30},  # longer than the deadline: straight to the fallback
        }
    )
    cfg = make_config(sim)

    async def main() -> tuple[list[Any], GatewayError | None]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            return await consume(gw, ask(text="stream please", stream=True))

    items, err = run(main)
    assert err is None
    end = items[-1]
    assert isinstance(end, GatewayStreamEnd) and end.response.target == "strong"
    assert items[0] == GatewayStreamStart("strong", 2, "off")
    assert end.response.event.targets_tried == ["fast", "strong"] and end.response.event.ttft_ms is not None


def test_a_stream_that_goes_quiet_ends_at_the_idle_timeout(sim: SimServer, store: Store) -> None:
    sim.set_scenario({"name": "trickle", "defaults": {"tokens_per_s": 2}, "answers": {"default_tokens": 40}})
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 5
    idle_timeout_s: 0.2
    rules:
      - chain: [fast]
""",
    )

    async def main() -> tuple[float, Any]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            return await timed(consume(gw, ask(text="slowly", stream=True)))

    took, (_items, err) = run(main)
    assert err is not None and err.failure is Failure.TIMEOUT
    assert "no chunk for 0.2 s" in (err.event.error_message or "")
    assert took < 2


def test_flaky_streams_each_end_in_one_event(sim: SimServer, store: Store) -> None:
    sim.set_scenario(compressed("flaky-stream", 0.2))
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 8
    rules:
      - chain: [fast, strong]
""",
    )

    async def main() -> list[tuple[list[Any], GatewayError | None]]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            return await asyncio.gather(*(consume(gw, ask(text=f"s{i}", stream=True)) for i in range(30)))

    outcomes = run(main)
    for items, err in outcomes:
        if err is None:
            assert isinstance(items[-1], GatewayStreamEnd)
            assert (
                "".join(i.text for i in items if isinstance(i, TextDelta)) == items[-1].response.result.text
            )
        else:
            assert err.event.failure is not Failure.NONE
            if any(isinstance(i, TextDelta) for i in items):
                assert err.event.output_tokens > 0
    assert count_events(store.engine) == 30


def test_a_caller_that_stops_reading_still_leaves_one_event(sim: SimServer, store: Store) -> None:
    sim.set_scenario(
        {"name": "slow", "defaults": {"ttft": 0.5, "tokens_per_s": 20}, "answers": {"default_tokens": 40}}
    )
    cfg = make_config(sim)

    async def main() -> None:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            agen = gw.stream(ask(text="go", stream=True))
            async for item in agen:
                if isinstance(item, TextDelta):
                    break
            await agen.aclose()  # type: ignore[attr-defined]
            task = asyncio.ensure_future(gw.chat(ask(text="cancel me")))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(main)
    events = fetch_events(store.engine, limit=10).events
    assert len(events) == 2
    assert all(e.failure is Failure.CLIENT_ERROR and e.status_code == 499 for e in events)
