"""Demo mode headless: the simulator, traffic through the in-process gateway, the pipeline, the history.

Real parts only: the simulator on 127.0.0.1, the gateway, the ingest pipeline, a SQLite file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core.breaker import BreakerState
from app.core.event import Failure
from app.demo import Demo, WeatherPhase, WeatherSchedule, demo_config, load_weather, parse_weather
from app.sim import load_scenario
from app.sim.traffic import TrafficProfile
from app.sources.base import Batch
from app.sources.live import LiveAggregator
from app.sources.pipeline import Pipeline, StoreUnavailable, WriteResult
from storage.engine import Store, open_store
from storage.queries.control import list_breaker_transitions
from storage.queries.events import EventFilter, count_events
from storage.queries.rollups import rollup_totals

FAST = TrafficProfile(base_rps=25.0, peak_rps=40.0, period_s=20.0, long_prompt_share=0.05)
CALM = WeatherSchedule((WeatherPhase("instant", 600.0),), loop=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    yield s
    s.close()


async def wait_for(cond: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


def test_shipped_config_and_weather_are_valid() -> None:
    cfg = demo_config("http://127.0.0.1:1/v1", "http://127.0.0.1:1")
    assert {p.name for p in cfg.providers} == {"openai-sim", "anthropic-sim"}
    assert all(p.base_url and p.base_url.startswith("http://127.0.0.1:1") for p in cfg.providers)
    assert {r.name for r in cfg.routes} == {"default", "search", "summarize"}
    assert cfg.budgets and all(b.warn_at for b in cfg.budgets)
    # The routing editor shows the demo's routes: nothing in them for it to warn about.
    from app.core.routing import validate_route

    targets = {t.name for t in cfg.targets}
    assert {r.name: [p.message for p in validate_route(r, targets)] for r in cfg.routes} == {
        r.name: [] for r in cfg.routes
    }
    weather = load_weather()
    names = [p.name for p in weather.phases]
    assert {"degraded", "primary-outage"} <= set(names)
    assert any(n.startswith("rate-limit") for n in names)
    for phase in weather.phases:  # every phase is a scenario the simulator takes
        load_scenario(phase.scenario if isinstance(phase.scenario, str) else dict(phase.scenario))
    # Every kind of weather shows within the first minute.
    assert sum(p.seconds for p in weather.phases[: names.index("primary-outage")]) < 60


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping"),
        ({"phases": []}, "non-empty list"),
        ({"phases": [{"scenario": "healthy"}]}, "phase 1: `seconds`"),
        ({"phases": [{"scenario": "", "seconds": 3}]}, "phase 1: `scenario`"),
        ({"phases": [{"scenario": "healthy", "seconds": 2}, "x"]}, "phase 2"),
    ],
)
def test_bad_weather_says_where(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_weather(data)


def test_live_traffic_reaches_the_store_and_the_live_aggregator_then_stops(store: Store) -> None:
    live = LiveAggregator()

    async def main() -> None:
        demo = Demo(store, live, seed=3, profile=FAST, weather=CALM, backfill_hours=0)
        await demo.start()
        try:
            assert await wait_for(lambda: live.added >= 40 and demo.status().written >= 40), demo.status()
            st = demo.status()
            assert st.running and st.traffic and st.weather == "instant"
            assert st.sim_url is not None and st.sim_url.startswith("http://127.0.0.1:")
            stored = count_events(store.engine, EventFilter(source="demo"))
            assert stored >= 40
            routes = {
                r
                for r in ("default", "search", "summarize")
                if count_events(store.engine, EventFilter(route=r))
            }
            assert len(routes) >= 2
            assert rollup_totals(store.engine).requests == stored  # the pipeline wrote rollups too

            await demo.stop_traffic()
            st = demo.status()
            assert not st.traffic and st.weather is None
            after = count_events(store.engine)
            assert after == st.events == st.written, "every recorded event is stored after stop_traffic"
            sent = st.sent
            await asyncio.sleep(0.5)
            assert demo.status().sent == sent
            assert count_events(store.engine) == after, "events arrived after the traffic stopped"
        finally:
            await demo.aclose()
        assert not demo.status().running

    asyncio.run(main())


def test_outage_weather_opens_the_primary_breaker(store: Store) -> None:
    weather = WeatherSchedule(
        (WeatherPhase("instant", 0.5), WeatherPhase("primary-outage", 600.0)), loop=False
    )

    async def main() -> None:
        demo = Demo(store, None, seed=4, profile=FAST, weather=weather, backfill_hours=0)
        async with demo:
            gw = demo.gateway
            assert gw is not None

            def primary_open() -> bool:
                return any(
                    s.target == "fast" and s.state is BreakerState.OPEN for s in gw.breaker_snapshots()
                )

            assert await wait_for(primary_open, 20.0), [(s.target, s.state) for s in gw.breaker_snapshots()]
            assert demo.status().weather == "primary-outage"
            # Traffic moved to the fallback: requests on the default route are answered by Anthropic.
            assert await wait_for(lambda: gw.stats().requests.get(("default", "quick", "none"), 0) > 0, 10.0)
            await demo.flush()
        transitions = list_breaker_transitions(store.engine)
        assert any(t.target == "fast" and t.to_state == "open" for t in transitions)

    asyncio.run(main())


def test_backfill_writes_a_day_of_rollups_once(store: Store) -> None:
    demo = Demo(store, None, seed=0)
    now = 1_790_000_000.0
    first = demo.backfill(24, now=now)
    assert 40_000 <= first.generated <= 110_000
    assert first.ingested == first.generated and first.duplicates == 0
    totals = rollup_totals(store.engine)
    assert totals.requests == first.generated
    assert totals.cost_usd > 0 and totals.input_tokens > 0
    # History holds incidents, so the failure charts have something to show.
    assert totals.failures[Failure.OVERLOADED.value] > 0
    assert totals.failures[Failure.RATE_LIMITED.value] > 0
    assert totals.failures[Failure.TIMEOUT.value] > 0
    # The whole day is covered, minute by minute.
    span = rollup_totals(store.engine, since=now - 24 * 3600 - 60, until=now)
    assert span.requests == first.generated
    assert (
        rollup_totals(store.engine, since=now - 24 * 3600 + 3600, until=now - 23 * 3600 + 3600).requests > 0
    )
    assert rollup_totals(store.engine, since=now - 3600, until=now).requests > 0
    # Summaries used the demo prompt: version 1 until six hours ago, version 2 since.
    from app.demo import DEMO_PROMPT

    switch = (int(now // 60) * 60.0) - 6 * 3600.0
    v1 = count_events(store.engine, EventFilter(prompt_name=DEMO_PROMPT, prompt_version=1))
    v2 = count_events(store.engine, EventFilter(prompt_name=DEMO_PROMPT, prompt_version=2))
    assert v1 > 0 and v2 > 0
    assert (
        count_events(store.engine, EventFilter(prompt_name=DEMO_PROMPT, prompt_version=1, since=switch)) == 0
    )
    assert (
        count_events(store.engine, EventFilter(prompt_name=DEMO_PROMPT, prompt_version=2, until=switch)) == 0
    )

    # A second start five minutes later adds only the five new minutes (the last hour is enough to show it).
    second = demo.backfill(1, now=now + 300)
    assert second.ingested > 0 and second.ingested < 2_000
    assert second.duplicates == second.generated - second.ingested
    assert count_events(store.engine) == first.generated + second.ingested
    assert rollup_totals(store.engine).requests == first.generated + second.ingested


def test_a_second_demo_start_does_not_duplicate_history(store: Store) -> None:
    async def once() -> tuple[int, int]:
        demo = Demo(store, None, seed=0, profile=FAST, weather=CALM, backfill_hours=2)
        await demo.start()
        try:
            async with asyncio.timeout(60):
                result = await demo.wait_backfilled()
        finally:
            await demo.aclose()
        assert result is not None
        return result.generated, result.ingested

    gen1, new1 = asyncio.run(once())
    assert new1 == gen1 > 0
    gen2, new2 = asyncio.run(once())
    assert gen2 >= gen1 - 200
    assert new2 < 300, "the second start wrote the history again"  # only the minutes that passed in between
    assert rollup_totals(store.engine, until=time.time() - 600).requests < gen1 + 300


class _BusyOnce(Pipeline):
    """A real pipeline whose first batches fail the way a store busy past its timeout fails them."""

    def __init__(self, store: Store, live: LiveAggregator, refusals: int) -> None:
        super().__init__(store, live=live)
        self.refusals = refusals

    def submit(self, batch: Batch, *, block: bool = True) -> concurrent.futures.Future[WriteResult]:
        if self.refusals > 0 and batch.events:
            self.refusals -= 1
            fut: concurrent.futures.Future[WriteResult] = concurrent.futures.Future()
            fut.set_exception(StoreUnavailable("the store could not take the batch: database is locked"))
            return fut
        return super().submit(batch, block=block)


def test_events_a_busy_store_refused_are_written_later_not_lost(store: Store) -> None:
    live = LiveAggregator()
    pipeline = _BusyOnce(store, live, refusals=3)

    async def main() -> None:
        demo = Demo(store, live, seed=5, profile=FAST, weather=CALM, backfill_hours=0, pipeline=pipeline)
        pipeline.start()
        try:
            await demo.start()
            assert await wait_for(lambda: pipeline.refusals == 0 and demo.status().written >= 30)
            await demo.stop_traffic()
            st = demo.status()
            assert st.written == st.events == count_events(store.engine), "refused events were lost"
            assert not st.errors
        finally:
            await demo.aclose()
            pipeline.stop()

    asyncio.run(main())


#: Every answer takes about 2 s to start: requests are always in flight.
SLOW = WeatherSchedule(
    (
        WeatherPhase(
            {
                "name": "slow",
                "description": "Answers start after about 2 s.",
                "defaults": {"ttft": {"median": 2.0, "p95": 2.5}, "tokens_per_s": 0},
            },
            600.0,
        ),
    ),
    loop=False,
)


def test_the_demo_stopping_itself_records_no_failures(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop drains (every request sent is recorded as it ends); quitting cancels the rest unrecorded."""
    import app.demo

    monkeypatch.setattr(app.demo, "_CLOSE_GRACE_S", 0.1)
    live = LiveAggregator()
    cancelled_errors = EventFilter(failures=(Failure.CLIENT_ERROR,))

    async def main() -> None:
        demo = Demo(store, live, seed=4, profile=FAST, weather=SLOW, backfill_hours=0)
        await demo.start()
        try:
            gen = demo.generator
            assert gen is not None
            assert await wait_for(lambda: gen.stats.in_flight >= 5), demo.status()
            await demo.stop_traffic()  # drains: the requests in flight end on their own
            st = demo.status()
            assert gen.stats.cancelled == 0 and st.cancelled == 0
            assert st.sent == gen.stats.completed + gen.stats.failed == count_events(store.engine)
            assert count_events(store.engine, cancelled_errors) == 0

            demo.start_traffic()
            assert await wait_for(lambda: gen.stats.in_flight >= 5), demo.status()
        finally:
            await demo.aclose()  # quitting: a short grace, then the rest are cancelled
        st = demo.status()
        assert st.cancelled >= 5 and gen.stats.cancelled == st.cancelled
        assert count_events(store.engine, cancelled_errors) == 0, (
            "the demo's own cancellations stored as failures"
        )
        assert count_events(store.engine) == st.written == st.sent - st.cancelled

    asyncio.run(main())


def test_the_demo_s_control_lives_in_the_store_so_the_editors_steer_its_traffic(store: Store) -> None:
    """On a fresh store the demo applies its config there (audited as "demo"); a route saved later moves
    its traffic; a second start finds only the demo's objects and points them at the new simulator."""
    from app.gateway.engine import GatewayRequest
    from app.ui.demo_control import _has_providers
    from storage.queries.control import get_object, list_audit, list_objects, save_object

    ask = GatewayRequest(route="default", messages=[{"role": "user", "content": "hi"}])

    async def one_run() -> str:
        demo = Demo(store, None, seed=5, profile=FAST, weather=CALM, backfill_hours=0)
        async with demo:
            gw = demo.gateway
            assert gw is not None
            assert {r["name"] for r in list_objects(store.engine, "route")} == {
                "default",
                "search",
                "summarize",
            }
            assert gw.dry_run(ask).chain[0] == "fast"
            route = get_object(store.engine, "route", "default")
            assert route is not None
            original = route["rules"]
            rules = [{**rule, "chain": ["quick", "strong"]} for rule in original]
            saved = save_object(
                store.engine, "route", {**route, "rules": rules}, actor="ana", reason="try quick",
                expected_revision=route["revision"],
            )  # fmt: skip
            assert await wait_for(lambda: gw.dry_run(ask).chain[0] == "quick", 5.0)
            save_object(  # put it back for the next start
                store.engine, "route", {**route, "rules": original}, actor="ana", reason="back",
                expected_revision=saved["revision"],
            )  # fmt: skip
            sim_url = demo.status().sim_url
            assert sim_url is not None
            return sim_url

    first = asyncio.run(one_run())
    assert list_audit(store.engine, object_type="route")[-1].actor == "demo"
    second = asyncio.run(one_run())
    assert first != second  # a new port each time ...
    provider = get_object(store.engine, "provider", "openai-sim")
    assert provider is not None and provider["base_url"].startswith(second)  # ... and the store follows it
    # What an earlier demo stored does not count as "configured": make run keeps starting the demo.
    assert asyncio.run(_has_providers(store)) is False


def test_a_store_with_the_operator_s_providers_is_left_alone(store: Store) -> None:
    from app.ui.demo_control import _has_providers
    from storage.queries.control import list_objects, save_object

    save_object(store.engine, "provider", {"name": "openai", "kind": "openai", "api_key_ref": "env:OPENAI_API_KEY"},
                actor="ana", reason="ours", expected_revision=None)  # fmt: skip

    async def main() -> None:
        demo = Demo(store, None, seed=6, profile=FAST, weather=CALM, backfill_hours=0)
        async with demo:
            assert demo.gateway is not None
            assert await wait_for(lambda: demo.status().written >= 5)

    asyncio.run(main())
    assert [p["name"] for p in list_objects(store.engine, "provider")] == ["openai"]
    assert list_objects(store.engine, "route") == []
    assert asyncio.run(_has_providers(store)) is True


def test_demo_summaries_use_the_registry_prompt_and_follow_a_rollback(store: Store) -> None:
    from sqlalchemy import text

    from app.demo import DEMO_PROMPT
    from app.experiments.runner import run_experiment
    from app.experiments.spec import experiment_from_data
    from storage.queries.experiments import fetch_results, get_experiment
    from storage.queries.prompts import get_prompt, list_versions, set_active_version

    def used(version: int) -> int:
        with store.engine.connect() as conn:
            return int(conn.execute(
                text("select count(*) from events where prompt_name = :p and prompt_version = :v and failure = 'none'"),
                {"p": DEMO_PROMPT, "v": version},
            ).scalar_one())  # fmt: skip

    async def main() -> None:
        demo = Demo(store, None, seed=7, profile=FAST, weather=CALM, backfill_hours=0)
        async with demo:
            prompt = get_prompt(store.engine, DEMO_PROMPT)
            assert prompt is not None and prompt.active_version == 2
            assert [v.version for v in list_versions(store.engine, DEMO_PROMPT)] == [1, 2]
            assert await wait_for(lambda: used(2) >= 3), "no summary used the active version"
            set_active_version(store.engine, DEMO_PROMPT, 1, actor="ana", reason="v2 too terse")
            assert await wait_for(lambda: used(1) >= 3), "the rollback did not reach the demo's traffic"

            # The shipped experiment (v1 against v2 of that prompt) is in the store and runs on the
            # demo's own gateway: 2 prompts x 2 targets x 12 cases x 2 repetitions.
            info = get_experiment(store.engine, "ticket-summary-v2-vs-v1")
            assert info is not None
            outcome = await run_experiment(demo.gateway, store, experiment_from_data(info.spec))
            assert (outcome.status, outcome.total) == ("done", 96), outcome
            assert len(fetch_results(store.engine, outcome.run_id)) == 96

    asyncio.run(main())


def test_a_day_of_history_reaches_back_to_the_start_of_yesterday() -> None:
    """So the Overview's "spend today vs yesterday by now" has a whole yesterday to compare with."""
    from app.demo import backfill_span_h

    day = 1_795_000_000 // 86400 * 86400
    assert backfill_span_h(2.0, now=day + 5 * 3600) == 2.0
    assert backfill_span_h(24.0, now=day + 5 * 3600) == 29.0  # 24 h and today's 5 h
    assert backfill_span_h(24.0, now=day) == 24.0
    assert backfill_span_h(72.0, now=day + 3600) == 72.0
