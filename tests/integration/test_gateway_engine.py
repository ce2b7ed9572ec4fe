"""The gateway engine against the real simulator on 127.0.0.1 and a real SQLite store.

The simulator's ledger says which calls really reached a provider; the store
says which events were recorded.  Every test drives the in-process library API
(``await gateway.chat(...)``) the way the demo mode and the A/B runner do.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from app.core.budget import BudgetWarning, alert_period_start
from app.core.config import ControlConfig, parse_config
from app.core.event import CacheHit, CostSource, Event, Failure
from app.core.pricing import price_call
from app.gateway.control import apply_config
from app.gateway.cost import Pricer
from app.gateway.engine import Gateway, GatewayError, GatewayRequest, GatewayStreamEnd, GatewayStreamStart
from app.gateway.state import config_from_rows, config_to_rows
from app.gateway.writer import StoreWriter
from app.providers import StreamDone, TextDelta
from app.sim import SimServer, SimThread
from storage.engine import Store, open_store
from storage.queries.control import (
    list_breaker_transitions,
    list_budget_warnings,
    record_budget_warning,
    save_object,
    set_breaker_override,
)
from storage.queries.events import EventFilter, count_events, fetch_events, insert_events
from tests.integration.sim_fixtures import served_records

T = TypeVar("T")

OPENAI_KEY = "sk-test-engine-OPENAI-0001"
ANTHROPIC_KEY = "sk-ant-test-engine-ANTHROPIC-0001"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimThread("instant", seed=7) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def make_config(
    sim: SimServer,
    *,
    routes: str | None = None,
    budgets: str = "",
    breakers: str = "",
    targets: str = "",
) -> ControlConfig:
    """Two providers on the simulator (OpenAI and Anthropic faces) and three targets."""
    routes = (
        routes
        or """
  - name: default
    deadline_s: 10
    rules:
      - chain: [fast, strong]
"""
    )
    text = f"""
providers:
  - {{name: sim-openai, kind: openai, base_url: "{sim.openai_base_url}", api_key: env:SIM_OPENAI_KEY}}
  - {{name: sim-anthropic, kind: anthropic, base_url: "{sim.anthropic_base_url}", api_key: env:SIM_ANTHROPIC_KEY}}
targets:
  - {{name: fast, provider: sim-openai, model: gpt-4o-mini}}
  - {{name: big, provider: sim-openai, model: gpt-4o}}
  - {{name: strong, provider: sim-anthropic, model: claude-sonnet-4-5}}
{targets}
routes:{routes}
{budgets}
{breakers}
"""
    return parse_config(text)


def keys(provider: str, ref: str) -> str:
    return ANTHROPIC_KEY if "anthropic" in provider else OPENAI_KEY


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def ask(route: str = "default", text: str = "hello there", **kw: Any) -> GatewayRequest:
    return GatewayRequest(route=route, messages=[{"role": "user", "content": text}], **kw)


def models_called(sim: SimServer, since: int = 0) -> list[str]:
    return [
        r.model for r in sim.served.records(since_seq=since) if r.endpoint in ("chat.completions", "messages")
    ]


async def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


# --- the happy path and the one event -------------------------------------------------------------


def test_chat_answers_and_records_exactly_one_event(sim: SimServer, store: Store) -> None:
    cfg = make_config(sim)

    async def main() -> Any:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            resp = await gw.chat(ask(feature="search", user="u-1", tags={"team": "growth"}))
            assert gw.stats().events_recorded == 1
            return resp

    resp = run(main)
    assert resp.target == "fast" and resp.attempts == 1 and resp.cache == "off"
    assert resp.result.text
    (served,) = sim.served.records()
    assert served.model == "gpt-4o-mini" and served.status == 200
    assert count_events(store.engine) == 1
    (ev,) = fetch_events(store.engine, limit=10).events
    assert ev.event_id == resp.event.event_id
    assert (ev.provider, ev.model, ev.route, ev.feature, ev.user) == (
        "sim-openai",
        "gpt-4o-mini",
        "default",
        "search",
        "u-1",
    )
    assert ev.tags == {"team": "growth"}
    assert ev.failure is Failure.NONE and ev.status_code == 200
    assert ev.attempts == 1 and ev.targets_tried == ["fast"]
    assert ev.input_tokens == served.input_tokens and ev.output_tokens == served.output_tokens
    expected = price_call(
        "gpt-4o-mini", provider="openai", input_tokens=served.input_tokens, output_tokens=served.output_tokens
    )
    assert ev.cost_usd == pytest.approx(expected.cost_usd)
    assert ev.cost_source is CostSource.PROVIDER
    assert ev.cache_hit is CacheHit.NONE and ev.breaker_state == "closed"
    assert ev.latency_ms is not None and ev.latency_ms > 0
    assert ev.input_text is None and ev.output_text is None  # store_text is off by default


def test_stream_yields_chunks_then_the_end_and_one_event(sim: SimServer, store: Store) -> None:
    cfg = make_config(sim)

    async def main() -> tuple[list[Any], Any]:
        items = []
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            async for item in gw.stream(ask(text="tell me a story", stream=True)):
                items.append(item)
        return items, None

    items, _ = run(main)
    assert items[0] == GatewayStreamStart("fast", 1, "off"), "what the server puts in its headers comes first"
    assert isinstance(items[-1], GatewayStreamEnd)
    assert isinstance(items[-2], StreamDone)
    text = "".join(i.text for i in items if isinstance(i, TextDelta))
    resp = items[-1].response
    assert text == resp.result.text and text
    assert resp.event.stream is True and resp.event.ttft_ms is not None
    (served,) = served_records(sim, 1)
    assert served.stream and resp.event.output_tokens == served.output_tokens
    assert count_events(store.engine) == 1


def test_every_request_is_one_event_and_close_flushes_them_all(sim: SimServer, store: Store) -> None:
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 60
    rules:
      - chain: [fast, strong]
""",
    )
    n = 200

    async def main() -> tuple[list[Any], int]:
        gw = Gateway(store, config=cfg, key_resolver=keys)
        await gw.start()
        try:
            results = await asyncio.gather(
                *(gw.chat(ask(text=f"question {i}")) for i in range(n)), return_exceptions=True
            )
        finally:
            await gw.aclose()  # nothing waited for the writer before this
        return results, gw.stats().events_written

    results, written = run(main)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert written == n
    assert count_events(store.engine) == n
    ids = {e.event_id for e in fetch_events(store.engine, limit=n + 10).events}
    assert len(ids) == n


def test_unknown_route_is_a_client_error_with_its_event(sim: SimServer, store: Store) -> None:
    cfg = make_config(sim)

    async def main() -> GatewayError:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            with pytest.raises(GatewayError) as info:
                await gw.chat(ask(route="nope"))
            with pytest.raises(GatewayError) as bad:
                await gw.chat(GatewayRequest(route="default", messages=[]))
            assert bad.value.failure is Failure.CLIENT_ERROR and bad.value.status_code == 400
            return info.value

    err = run(main)
    assert err.failure is Failure.CLIENT_ERROR and err.status_code == 404
    assert "nope" in err.message and "default" in err.message
    assert count_events(store.engine) == 2
    assert not sim.served.records()


def test_a_target_name_is_a_route_of_its_own(sim: SimServer, store: Store) -> None:
    cfg = make_config(sim)

    async def main() -> Any:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            assert set(gw.models()) == {"default", "fast", "big", "strong"}
            # the keyword form the demo mode and the A/B runner use
            return await gw.chat(
                route="strong", messages=[{"role": "user", "content": "hi"}], tags={"k": "v"}
            )

    resp = run(main)
    assert resp.target == "strong" and resp.event.provider == "sim-anthropic"
    assert models_called(sim) == ["claude-sonnet-4-5"]


# --- routing -----------------------------------------------------------------------------------


ROUTING = """
  - name: default
    deadline_s: 10
    rules:
      - when: {input_tokens_over: 200}
        chain: [strong, fast]
      - when: {feature: search}
        chain: [{split: {fast: 50, big: 50}, sticky: user}, strong]
      - when: {tier: gold}
        chain: [big]
      - chain: [fast, strong]
"""


def test_routing_rules_tags_token_thresholds_and_a_sticky_split(sim: SimServer, store: Store) -> None:
    cfg = make_config(sim, routes=ROUTING)
    long_text = "word " * 400

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            out["long"] = (await gw.chat(ask(text=long_text))).target
            out["gold"] = (await gw.chat(ask(tags={"tier": "gold"}))).target
            out["plain"] = (await gw.chat(ask())).target
            split = {}
            for u in range(40):
                picks = {
                    (await gw.chat(ask(feature="search", user=f"user-{u}", text=f"q{k}"))).target
                    for k in range(3)
                }
                assert len(picks) == 1, "a sticky split sends one user to one side"
                split[u] = picks.pop()
            out["split"] = split
            dr = gw.dry_run(ask(feature="search", user="user-3"))
            out["dry"] = dr
            before = len(sim.served.records())
            gw.dry_run(ask(text=long_text))
            out["dry_calls"] = len(sim.served.records()) - before
        return out

    out = run(main)
    assert out["long"] == "strong"
    assert out["gold"] == "big"
    assert out["plain"] == "fast"
    sides = set(out["split"].values())
    assert sides == {"fast", "big"}, "both sides of a 50/50 split get users"
    dr = out["dry"]
    assert dr.chain == [out["split"][3], "strong"]
    assert any("rule 2 matched" in line and "feature = search" in line for line in dr.explanation)
    assert any("sticky on user user-3" in line for line in dr.explanation)
    assert dr.targets[0].would_call and dr.targets[0].breaker == "closed"
    assert out["dry_calls"] == 0


def test_latency_aware_splits_prefer_the_faster_healthy_target(sim: SimServer, store: Store) -> None:
    # gpt-4o-mini (target fast) is the slow one here (a profile for gpt-4o would match gpt-4o-mini too)
    sim.set_scenario({"name": "one-slow", "models": {"gpt-4o-mini": {"provider": "openai", "ttft": 0.2}}})
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 10
    latency_aware: true
    rules:
      - chain: [{split: {fast: 50, big: 50}}]
""",
    )

    async def main() -> list[str]:
        async with Gateway(store, config=cfg, key_resolver=keys, rng=random.Random(5)) as gw:
            for i in range(12):  # both sides get enough calls for a p95
                await gw.chat(ask(route="fast" if i % 2 else "big", text=f"warm {i}"))
            picks = [(await gw.chat(ask(text=f"q{i}"))).target for i in range(40)]
            dr = gw.dry_run(ask(text="where?"))
            assert any("latency-aware" in line for line in dr.explanation)
            return picks

    picks = run(main)
    # two random candidates, the faster wins when they differ: about 3 in 4 go to the faster side
    assert picks.count("big") >= 24, picks


def test_output_cap_applies_and_a_truncated_answer_is_a_quality_fail(sim: SimServer, store: Store) -> None:
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 10
    max_output_tokens: 5
    rules:
      - chain: [fast]
""",
    )

    async def main() -> Any:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            return await gw.chat(ask(text="write a long essay", params={"max_tokens": 500}))

    resp = run(main)
    (served,) = sim.served.records()
    assert served.output_tokens <= 5
    assert resp.result.finish_reason is not None and resp.result.finish_reason.value == "length"
    assert resp.event.failure is Failure.QUALITY_FAIL
    assert "cut off" in (resp.event.error_message or "")


# --- the exact cache -------------------------------------------------------------------------------


CACHED = """
  - name: default
    deadline_s: 10
    cache: {exact_ttl_s: 60}
    rules:
      - chain: [fast, strong]
  - name: creative
    deadline_s: 10
    cache: {exact_ttl_s: 60, allow_nonzero_temperature: true}
    rules:
      - chain: [fast]
  - name: short
    deadline_s: 10
    cache: {exact_ttl_s: 0.2}
    rules:
      - chain: [fast]
"""


def test_exact_cache_hits_at_temperature_zero_and_not_above_unless_opted_in(
    sim: SimServer, store: Store
) -> None:
    cfg = make_config(sim, routes=CACHED)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            a = await gw.chat(ask(params={"temperature": 0}))
            b = await gw.chat(ask(params={"temperature": 0}))
            out["zero"] = (a, b)
            c = await gw.chat(ask(text="warm", params={"temperature": 0.7}))
            d = await gw.chat(ask(text="warm", params={"temperature": 0.7}))
            out["warm"] = (c, d)
            e = await gw.chat(ask(route="creative", text="warm", params={"temperature": 0.7}))
            f = await gw.chat(ask(route="creative", text="warm", params={"temperature": 0.7}))
            out["creative"] = (e, f)
            g = await gw.chat(ask(text="other question", params={"temperature": 0}))
            out["other"] = g
            s1 = await gw.chat(ask(route="short", text="ttl"))
            await asyncio.sleep(0.3)
            s2 = await gw.chat(ask(route="short", text="ttl"))
            out["ttl"] = (s1, s2)
            # a stream is served from the same entry
            items = [i async for i in gw.stream(ask(params={"temperature": 0}, stream=True))]
            out["stream"] = items
            out["stats"] = gw.stats()
        return out

    out = run(main)
    a, b = out["zero"]
    assert (a.cache, b.cache) == ("miss", "hit")
    assert b.result.text == a.result.text and b.attempts == 0
    assert b.event.cache_hit is CacheHit.EXACT and b.event.cost_usd == 0.0
    assert b.event.tags["cache_saved_usd"] == f"{a.event.cost_usd:.8f}"
    c, d = out["warm"]
    assert (c.cache, d.cache) == ("off", "off")
    e, f = out["creative"]
    assert (e.cache, f.cache) == ("miss", "hit")
    assert out["other"].cache == "miss"
    s1, s2 = out["ttl"]
    assert (s1.cache, s2.cache) == ("miss", "miss"), "an entry past its TTL is not served"
    end = out["stream"][-1]
    assert isinstance(end, GatewayStreamEnd) and end.response.cache == "hit"
    assert out["stream"][0] == GatewayStreamStart("fast", 0, "hit")
    assert "".join(i.text for i in out["stream"] if isinstance(i, TextDelta)) == a.result.text
    # calls that reached the simulator: zero(1) warm(2) creative(1) other(1) ttl(2)
    assert len(models_called(sim)) == 7
    assert out["stats"].cache_hits == 3
    assert count_events(store.engine) == 10
    assert count_events(store.engine, EventFilter(route="default")) == 6


# --- budgets ---------------------------------------------------------------------------------------


def midday_clock() -> Callable[[], float]:
    """A clock that reads noon UTC today and ticks on from there: a test about "today's" spend that
    happens to run at 23:59:55 does not see the day turn between seeding the store and asking."""
    start = time.monotonic()
    noon = time.time() // 86400 * 86400 + 12 * 3600
    return lambda: noon + (time.monotonic() - start)


def _budget(name: str, scope: str, limit: str, action: str, extra: str = "") -> str:
    return f"""
budgets:
  - name: {name}
    scope: {scope}
    period: day
    {limit}
    warn_at: [0.5, 0.8, 0.95]
    action: {action}
    {extra}
"""


def test_budget_warning_levels_fire_once_each_and_block_applies_at_100(sim: SimServer, store: Store) -> None:
    cfg = make_config(
        sim, budgets=_budget("search-daily", "{feature: search}", "limit_tokens: 1500", "block")
    )

    async def main() -> dict[str, Any]:
        heard: list[BudgetWarning] = []
        out: dict[str, Any] = {}
        async with Gateway(store, config=cfg, key_resolver=keys, clock=midday_clock()) as gw:
            gw.add_budget_warning_listener(heard.append)
            # traffic outside the scope is not charged
            for i in range(5):
                await gw.chat(ask(text=f"other {i}", feature="chat"))
            served = 0
            with pytest.raises(GatewayError) as info:
                for i in range(200):
                    await gw.chat(ask(text=f"search question {i}", feature="search"))
                    served += 1
            out["served"] = served
            out["error"] = info.value
            with pytest.raises(GatewayError):
                await gw.chat(ask(text="again", feature="search"))
            out["chat_ok"] = (await gw.chat(ask(text="still fine", feature="chat"))).target
            await asyncio.sleep(0)
            await gw.flush()
            await wait_for(lambda: len(gw.budget_warnings) >= 4)
            out["warnings"] = list(gw.budget_warnings)
            out["standing"] = {b.budget.name: b for b in gw.budget_standings()}
        out["heard"] = heard
        return out

    out = run(main)
    levels = [w.level for w in out["warnings"]]
    assert levels == [0.5, 0.8, 0.95, 1.0], levels
    assert [w.level for w in out["heard"]] == levels
    assert "feature `search` has used" in out["warnings"][1].message
    assert "(80%)" in out["warnings"][1].message or "(8" in out["warnings"][1].message
    err = out["error"]
    assert err.failure is Failure.BUDGET_BLOCKED and err.status_code == 429
    assert "search-daily" in err.message and err.retry_after_s is not None
    assert err.event.failure is Failure.BUDGET_BLOCKED and err.event.attempts == 0
    assert out["served"] >= 10
    assert out["chat_ok"] == "fast"
    standing = out["standing"]["search-daily"]
    assert standing.ratio >= 1.0
    # each level is claimed once in the store, so another gateway will not announce it again
    period_start = out["warnings"][0].period_start
    assert list_budget_warnings(store.engine, "search-daily", period_start) == [0.5, 0.8, 0.95, 1.0]
    blocked = count_events(store.engine, EventFilter(failures=(Failure.BUDGET_BLOCKED,)))
    assert blocked == 2
    # the simulator never saw a blocked request
    assert len(models_called(sim)) == 5 + out["served"] + 1


def test_budget_downgrade_sends_traffic_to_the_cheaper_chain_at_100(sim: SimServer, store: Store) -> None:
    cfg = make_config(
        sim,
        budgets=_budget(
            "default-route", "{route: default}", "limit_tokens: 60", "downgrade", "downgrade_to: [strong]"
        ),
    )

    async def main() -> list[str]:
        async with Gateway(store, config=cfg, key_resolver=keys) as gw:
            return [(await gw.chat(ask(text=f"question {i}"))).target for i in range(6)]

    targets = run(main)
    assert targets[0] == "fast"
    k = targets.index("strong")
    assert all(t == "strong" for t in targets[k:]), targets
    assert k <= 3


def test_budget_spend_and_fired_levels_come_from_the_store(sim: SimServer, store: Store) -> None:
    """Another gateway already spent $0.60 of $1.00 and announced 50%: this one starts from there."""
    cfg = make_config(
        sim,
        budgets=_budget("global-usd", "{}", "limit_usd: 1.0", "alert_only").replace(
            "warn_at: [0.5, 0.8, 0.95]", "warn_at: [0.5, 0.6]"
        ),
        routes="""
  - name: default
    deadline_s: 10
    rules:
      - chain: [pricey]
""",
        targets="  - {name: pricey, provider: sim-openai, model: gpt-4o, "
        "price: {input_per_mtok: 5000, output_per_mtok: 5000}}",
    )
    clock = midday_clock()
    now = clock()
    budget = cfg.budget("global-usd")
    assert budget is not None
    insert_events(
        store.engine, [Event(ts_start=now - 5, ts_end=now - 4, provider="x", model="y", cost_usd=0.55)]
    )
    record_budget_warning(store.engine, "global-usd", alert_period_start(budget, now), 0.5)

    async def main() -> tuple[float, list[float]]:
        async with Gateway(store, config=cfg, key_resolver=keys, clock=clock) as gw:
            spent = gw.budget_standings()[0].spent_usd
            await gw.chat(ask(text="a question that costs money"))
            await gw.flush()
            await wait_for(lambda: bool(gw.budget_warnings), 2.0)
            return spent, [w.level for w in gw.budget_warnings]

    spent, levels = run(main)
    assert spent == pytest.approx(0.55)
    assert levels == [0.6], "50% was announced by the other gateway; 60% is this one's"


# --- breakers and overrides ------------------------------------------------------------------------


def test_forced_overrides_are_obeyed_and_expire(sim: SimServer) -> None:
    cfg = make_config(sim)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(None, config=cfg, key_resolver=keys) as gw:
            gw.set_breaker_override(
                "fast", "force_open", reason="maintenance", actor="ana", expires_at=time.time() + 0.5
            )
            r = await gw.chat(ask())
            out["forced_open"] = (r.target, r.event.breaker_state, r.event.targets_tried)
            snap = {s.target: s for s in gw.breaker_snapshots()}["fast"]
            out["forced"] = snap.forced
            await asyncio.sleep(0.6)
            out["expired"] = (await gw.chat(ask(text="after"))).target
            out["transitions"] = [(t.target, t.cause.value) for t in gw.transitions]
        return out

    out = run(main)
    assert out["forced_open"] == ("strong", "open", ["strong"])
    assert (
        out["forced"] is not None and out["forced"].reason == "maintenance" and out["forced"].actor == "ana"
    )
    assert out["expired"] == "fast"
    assert ("fast", "force_open") in out["transitions"] and ("fast", "override_expired") in out["transitions"]


def test_force_closed_sends_traffic_to_a_failing_target_anyway(sim: SimServer) -> None:
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 10
    retry: {max_attempts: 1}
    rules:
      - chain: [fast, strong]
""",
        breakers="breakers:\n  default: {window_s: 2, min_requests: 3, open_for_s: 30}",
    )
    sim.set_scenario(
        {"name": "openai-down", "outages": [{"provider": "openai", "fault": "server_error", "rate": 1.0}]}
    )

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(None, config=cfg, key_resolver=keys) as gw:
            for i in range(4):
                await gw.chat(ask(text=f"q{i}"))
            out["auto"] = {s.target: s.state.value for s in gw.breaker_snapshots()}["fast"]
            gw.set_breaker_override("fast", "force_closed", reason="testing the fix", actor="bo")
            r = await gw.chat(ask(text="forced"))
            out["forced_closed"] = (r.target, r.event.targets_tried)
            gw.set_breaker_override("fast", "auto", reason="done", actor="bo")
            out["back"] = {s.target: s.state.value for s in gw.breaker_snapshots()}["fast"]
        return out

    out = run(main)
    assert out["auto"] == "open"
    assert out["forced_closed"] == ("strong", ["fast", "strong"]), (
        "force_closed: fast is called although it is failing"
    )
    assert out["back"] == "open", "back to auto: the open period has not run out"


def test_a_breaker_forced_in_the_store_by_another_connection_is_obeyed_within_a_second(
    sim: SimServer, store: Store, tmp_path: Path
) -> None:
    cfg = make_config(sim)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(store, config=cfg, key_resolver=keys, sync_interval_s=0.25) as gw:
            out["before"] = (await gw.chat(ask())).target
            other = open_store(f"sqlite:///{tmp_path / 'store.db'}")
            try:
                set_breaker_override(
                    other.engine, "fast", "force_open", actor="ana", reason="provider incident"
                )
                t0 = time.monotonic()
                seen = await wait_for(
                    lambda: any(s.target == "fast" and s.forced is not None for s in gw.breaker_snapshots()),
                    3.0,
                )
                out["took"] = time.monotonic() - t0
                out["seen"] = seen
                out["during"] = (await gw.chat(ask(text="during"))).target
                set_breaker_override(other.engine, "fast", "auto", actor="ana", reason="resolved")
                await wait_for(lambda: all(s.forced is None for s in gw.breaker_snapshots()), 3.0)
                out["after"] = (await gw.chat(ask(text="after"))).target
            finally:
                other.close()
        return out

    out = run(main)
    assert out["before"] == "fast"
    assert out["seen"], "the override in the store never reached the gateway"
    assert out["took"] < 1.0, f"the override took {out['took']:.2f} s to apply"
    assert out["during"] == "strong"
    assert out["after"] == "fast"
    # the forced transitions are in the store for the timeline
    causes = [t.cause for t in list_breaker_transitions(store.engine, target="fast")]
    assert causes[:2] == ["force_open", "override_cleared"]


# --- control state from the store ---------------------------------------------------------------


def test_rows_round_trip_to_the_same_config(sim: SimServer) -> None:
    cfg = make_config(
        sim,
        routes=ROUTING,
        budgets=_budget("b", "{feature: search}", "limit_usd: 5", "downgrade", "downgrade_to: [fast]"),
        breakers="breakers:\n  targets:\n    strong: {min_requests: 7}",
    )
    rows = config_to_rows(cfg)
    back = config_from_rows(rows["provider"], rows["target"], rows["route"], rows["budget"])
    assert back == cfg


def test_a_gateway_on_the_store_loads_its_routes_and_follows_changes(sim: SimServer, store: Store) -> None:
    cfg = make_config(
        sim, breakers="breakers:\n  default: {min_requests: 9}\n  targets:\n    strong: {min_requests: 7}"
    )
    apply_config(store.engine, cfg, actor="test", reason="first setup")  # what `config apply` does
    rows = config_to_rows(cfg)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(store, key_resolver=keys, sync_interval_s=0.05) as gw:
            out["first"] = (await gw.chat(ask())).target
            out["min_requests"] = gw.state.breakers.settings_for("strong").min_requests
            out["default_min"] = gw.state.breakers.default.min_requests
            st = gw.state
            out["same"] = (
                dict(st.providers) == {p.name: p for p in cfg.providers}
                and dict(st.targets) == {t.name: t for t in cfg.targets}
                and dict(st.routes) == {r.name: r for r in cfg.routes}
                and st.breakers == cfg.breakers
            )
            version = gw.control_version
            route = dict(rows["route"][0])
            route["rules"] = [{"chain": ["strong", "fast"]}]
            save_object(
                store.engine, "route", route, expected_revision=1, actor="ana", reason="move to claude"
            )
            await wait_for(lambda: gw.control_version > version)
            out["second"] = (await gw.chat(ask(text="after the change"))).target
            # a broken change is refused by the gateway: it keeps routing with the last good state
            version = gw.control_version
            route["rules"] = [{"chain": ["no-such-target"]}]
            save_object(store.engine, "route", route, expected_revision=2, actor="ana")
            await asyncio.sleep(0.3)
            out["kept_version"] = gw.control_version == version
            out["third"] = (await gw.chat(ask(text="after a bad change"))).target
        return out

    out = run(main)
    assert out["first"] == "fast" and out["min_requests"] == 7 and out["default_min"] == 9
    assert out["same"], "the gateway runs on exactly the config that was applied"
    assert out["second"] == "strong"
    assert out["kept_version"] and out["third"] == "strong"


# --- secrets ----------------------------------------------------------------------------------------


def test_keys_never_appear_in_events_logs_metrics_or_errors(
    sim: SimServer, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "LEAKCHECK7f3a9b2c"
    bad_key = f"sk-invalid-{secret}"  # the simulator answers 401 to it
    good_key = f"sk-ant-test-{secret}-ok"
    cfg = make_config(
        sim,
        routes="""
  - name: default
    deadline_s: 10
    store_text: true
    rules:
      - chain: [fast, strong]
  - name: only-fast
    deadline_s: 10
    rules:
      - chain: [fast]
""",
    )
    caplog.set_level(logging.DEBUG)

    def leaky_keys(provider: str, ref: str) -> str:
        return good_key if "anthropic" in provider else bad_key

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Gateway(store, config=cfg, key_resolver=leaky_keys) as gw:
            out["ok"] = await gw.chat(ask(text=f"my key is {bad_key}, keep it safe"))
            with pytest.raises(GatewayError) as info:
                await gw.chat(ask(route="only-fast"))
            out["err"] = info.value
            streamed = [i async for i in gw.stream(ask(text="stream", stream=True))]
            out["stream"] = streamed
            out["stats"] = repr(gw.stats())
            out["snapshots"] = repr(gw.breaker_snapshots())
        return out

    out = run(main)
    assert out["ok"].target == "strong"
    err = out["err"]
    assert err.failure is Failure.CLIENT_ERROR and err.status_code == 401
    texts = [
        str(err),
        repr(err),
        err.message,
        repr(err.event),
        repr(out["ok"].event),
        out["stats"],
        out["snapshots"],
        caplog.text,
        repr(out["stream"][-1].response.event),
    ]
    for shown in texts:
        assert secret not in shown
    assert out["ok"].event.input_text and "***" in out["ok"].event.input_text
    store.close()
    for f in tmp_path.glob("store.db*"):
        assert secret.encode() not in f.read_bytes(), f"{f.name} holds the key"


# --- cost ------------------------------------------------------------------------------------------


def test_fast_pricing_matches_genai_prices() -> None:
    pricer = Pricer()
    for model, kind in (("gpt-4o-mini", "openai"), ("gpt-4o", "openai"), ("claude-sonnet-4-5", "anthropic")):
        for i, o, cr, cw in ((10, 5, 0, 0), (1200, 300, 1000, 0), (5000, 40, 0, 3000), (150_000, 10, 0, 0)):
            want = price_call(
                model,
                provider=kind,
                input_tokens=i,
                output_tokens=o,
                cache_read_tokens=cr,
                cache_write_tokens=cw,
                input_excludes_cache=False,
            ).cost_usd
            got = pricer.cost(
                model, kind, input_tokens=i, output_tokens=o, cache_read_tokens=cr, cache_write_tokens=cw
            )
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (model, i, o, cr, cw)
    assert pricer.cost("no-such-model-xyz", None, input_tokens=10, output_tokens=10) is None


# --- the store writer ---------------------------------------------------------------------------------


def test_the_writer_keeps_events_while_the_store_refuses_them_and_orders_its_jobs(store: Store) -> None:
    def events(k: int, start: int) -> list[Event]:
        now = time.time()
        return [Event(ts_start=now, ts_end=now, provider="p", model=f"m{start + i}") for i in range(k)]

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        writer = StoreWriter(store, retry_s=0.05, max_retry_s=0.1)
        writer.start()
        try:
            for e in events(50, 0):
                writer.enqueue(e)
            out["first"] = await writer.call(lambda: count_events(store.engine))
            # the store goes away (the table is renamed under it): writes fail and are retried
            with store.engine.begin() as conn:
                conn.execute(text("ALTER TABLE events RENAME TO events_away"))
            for e in events(30, 50):
                writer.enqueue(e)
            assert await wait_for(lambda: writer.failed_batches >= 2, 3.0)
            out["pending_while_down"] = writer.pending
            with store.engine.begin() as conn:
                conn.execute(text("ALTER TABLE events_away RENAME TO events"))
            await writer.flush()
            out["after"] = count_events(store.engine)
        finally:
            await writer.aclose()
        out["written"], out["dropped"] = writer.written, writer.dropped
        return out

    out = run(main)
    assert out["first"] == 50, "a job sees every event queued before it"
    assert out["pending_while_down"] == 30
    assert out["after"] == 80 and out["written"] == 80 and out["dropped"] == 0


def test_the_writer_gathers_a_trickle_of_events_into_few_transactions(store: Store) -> None:
    """At a few hundred requests/s events arrive one at a time; the writer lets them gather for its
    linger instead of committing every few events.  A flush cuts the wait short (here the linger is
    30 s, so a flush that waited it out would time out), and a linger that runs out writes too."""

    def event(model: str) -> Event:
        now = time.time()
        return Event(ts_start=now, ts_end=now, provider="p", model=model)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        writer = StoreWriter(store, linger_s=30.0)
        writer.start()
        try:
            for i in range(60):
                writer.enqueue(event(f"m{i}"))
                await asyncio.sleep(0.001)
            await asyncio.wait_for(writer.flush(), 10.0)
            out["flushed"], out["batches"] = count_events(store.engine), writer.batches
        finally:
            await writer.aclose()
        short = StoreWriter(store, linger_s=0.05)
        short.start()
        try:
            for i in range(5):
                short.enqueue(event(f"s{i}"))
            out["by_itself"] = await wait_for(lambda: short.written == 5, 5.0)
            out["short_batches"] = short.batches
        finally:
            await short.aclose()
        out["count"] = count_events(store.engine)
        return out

    out = run(main)
    assert out["flushed"] == 60 and out["batches"] == 1, out
    assert out["by_itself"] and out["short_batches"] == 1, out
    assert out["count"] == 65
