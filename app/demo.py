"""Demo mode: the simulator, synthetic traffic through an in-process gateway, and a day of history.

Headless and Qt-free; the desktop app runs it on the runtime thread::

    demo = Demo(store, live)                  # live: the LiveAggregator the charts read (or None)
    await demo.start()                        # simulator + gateway + traffic + weather; backfill in the background
    demo.status()                             # for the DEMO badge
    await demo.stop_traffic()                 # one click: no new requests (the gateway stays up)
    await demo.aclose()                       # everything stopped, every event written

How the parts fit:

- The simulator (:class:`app.sim.SimServer`) listens on ``127.0.0.1:0``; the
  demo control config (``resources/demo/control.yaml``) gets its URLs at run
  time.  Keys are the fake ``sk-demo``: the keyring is never read.
- The gateway is built with ``write_events=False`` and an event listener, so
  its events go through the **ingest pipeline** (the one writer): rollups and
  the live aggregator see them, exactly as they see any other source's.  The
  gateway still writes its breaker transitions and budget warnings itself and
  reads breaker overrides from the store, so the Breakers page steers the demo.
- The traffic generator (:mod:`app.sim.traffic`) is handed a ``send`` that
  turns a request spec into a gateway call; the weather schedule
  (``resources/demo/weather.yaml``) switches the simulator's scenario.
- :meth:`Demo.backfill` writes 24 h of simulated history with deterministic
  ids, so a second start inserts nothing twice.

Stopping never makes failures up.  A caller that cancels is recorded by the
gateway as ``client_error`` 499 (semantics.md section 2: the request got no
answer), which is right for a real client and wrong for the demo stopping
itself: the stored traffic would show failures nobody's dependency caused.
So :meth:`Demo.stop_traffic` drains (every request already sent gets its
route's deadline to finish, and is recorded as it ends), and only at
:meth:`Demo.aclose`, when the app quits, are requests still outstanding after
a short grace cancelled; their events are not stored as traffic, and how
many there were is logged and kept in :attr:`DemoStatus.cancelled`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.resources
import logging
import math
import random
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from app.core.config import ControlConfig, parse_config
from app.core.event import CostSource, Event, Failure
from app.core.ids import derived_event_id
from app.core.pricing import price_call
from app.gateway.engine import Gateway, GatewayRequest, GatewayStreamEnd
from app.sim.server import SimServer
from app.sim.traffic import (
    RequestSpec,
    TrafficGenerator,
    TrafficProfile,
    Workload,
    pick_user,
    pick_workload,
)
from app.sources.base import Batch
from app.sources.pipeline import Pipeline, StoreUnavailable
from storage.engine import Store

log = logging.getLogger(__name__)

#: The fake API key every demo provider gets.
DEMO_KEY = "sk-demo"
#: ``source`` of the demo's events (live and backfilled), so they can be told apart.
DEMO_SOURCE = "demo"
#: How often buffered gateway events are handed to the pipeline.
_FLUSH_S = 0.2
#: Events kept for another try while the store refuses them; beyond that the oldest are dropped (and said).
_MAX_RETRY = 100_000
#: Events per backfill transaction: short, so the live writer is never kept waiting long.
_BACKFILL_CHUNK = 10_000
#: Seconds the backfill leaves the store to other writers between its transactions.
_BACKFILL_PAUSE_S = 0.05
#: Seconds past the longest route deadline a request may take to end (the gateway's backstop).
_DRAIN_MARGIN_S = 2.0
#: When the app quits: seconds outstanding demo requests get before they are cancelled.
_CLOSE_GRACE_S = 3.0


# --- resources ------------------------------------------------------------------------------------


def demo_config(openai_base_url: str, anthropic_base_url: str) -> ControlConfig:
    """The demo control config with the simulator's URLs filled in."""
    text = importlib.resources.files("resources.demo").joinpath("control.yaml").read_text("utf-8")
    text = text.replace("${SIM_OPENAI_URL}", openai_base_url).replace(
        "${SIM_ANTHROPIC_URL}", anthropic_base_url
    )
    return parse_config(text, "resources/demo/control.yaml")


def install_demo_control(store: Store, config: ControlConfig) -> bool:
    """Put the demo's control config in the store, so every editor steers the demo's traffic.

    On a store with no control objects the whole config is applied (audited as ``demo``).  On a
    store that holds only what an earlier demo put there, the simulator's new URLs are written into
    its providers (the simulator listens on a free port each time).  A store with the operator's
    own providers is left alone and the demo gateway runs on its own config: answers False.
    """
    from app.gateway.control import apply_config
    from storage.queries.control import list_objects, save_object

    engine = store.engine
    demo_names = {p.name for p in config.providers}
    providers = list_objects(engine, "provider")
    if not providers and not any(list_objects(engine, kind) for kind in ("target", "route", "budget")):
        apply_config(
            engine,
            config,
            actor=DEMO_SOURCE,
            reason="demo mode: the simulator's providers, targets, routes and budgets",
        )
        return True
    if not providers or not {p["name"] for p in providers} <= demo_names:
        return False
    for row in providers:
        wanted = next(p for p in config.providers if p.name == row["name"]).base_url
        if row.get("base_url") != wanted:
            save_object(
                engine,
                "provider",
                {**row, "base_url": wanted},
                actor=DEMO_SOURCE,
                reason=f"demo mode: the simulator now listens on {wanted}",
                expected_revision=row["revision"],
            )
    return True


#: The demo's registry prompt: route ``summarize`` renders its active version (the Prompts page
#: shows two versions, the second active, so there is something to diff and roll back).
DEMO_PROMPT = "ticket-summary"
_DEMO_PROMPT_VERSIONS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    (
        "You summarize customer support tickets for the on-call engineer.",
        "Summarize this ticket in two sentences:\n\n{{ticket}}",
        {"temperature": 0.3},
        "first version",
    ),
    (
        "You summarize customer support tickets for the on-call engineer. Be factual; no greetings.",
        "Summarize the ticket below in at most {{max_words}} words. Start with the customer's problem.\n\n{{ticket}}",
        {"temperature": 0.2, "max_tokens": 200},
        "shorter, problem first",
    ),
)


def install_demo_prompts(store: Store) -> bool:
    """Give a demo store the demo's registry prompt (once): two versions, the second active."""
    from storage.queries.prompts import add_version, create_prompt, get_prompt, set_active_version

    engine = store.engine
    if get_prompt(engine, DEMO_PROMPT) is not None:
        return True
    create_prompt(
        engine,
        DEMO_PROMPT,
        description="Support ticket summaries (demo)",
        actor=DEMO_SOURCE,
        reason="demo mode",
    )
    version = 0
    for system, template, params, note in _DEMO_PROMPT_VERSIONS:
        version = add_version(
            engine, DEMO_PROMPT, template=template, system=system, params=params, note=note, actor=DEMO_SOURCE
        )
    set_active_version(
        engine, DEMO_PROMPT, version, actor=DEMO_SOURCE, reason="demo mode: the current version"
    )
    install_demo_experiment(store)
    return True


def install_demo_experiment(store: Store) -> None:
    """Give a demo store the demo's A/B experiment (v1 against v2 of the demo prompt), not yet run."""
    from app.experiments.spec import experiment_to_data, parse_experiment
    from storage.queries.experiments import get_experiment, save_experiment

    text = importlib.resources.files("resources.demo").joinpath("experiment.yaml").read_text("utf-8")
    exp = parse_experiment(text, "resources/demo/experiment.yaml")
    if get_experiment(store.engine, exp.name) is None:
        save_experiment(store.engine, exp.name, experiment_to_data(exp))


def only_demo_providers(names: Collection[str]) -> bool:
    """Whether a store's providers are all the demo's (so ``--demo-if-empty`` still counts it as empty)."""
    return set(names) <= DEMO_PROVIDERS


#: The providers the demo config names (resources/demo/control.yaml).
DEMO_PROVIDERS = frozenset({"openai-sim", "anthropic-sim"})


@dataclass(frozen=True, slots=True)
class WeatherPhase:
    scenario: str | Mapping[str, Any]  # a shipped scenario name or a scenario mapping
    seconds: float

    @property
    def name(self) -> str:
        return self.scenario if isinstance(self.scenario, str) else str(self.scenario.get("name", "custom"))


@dataclass(frozen=True, slots=True)
class WeatherSchedule:
    phases: tuple[WeatherPhase, ...]
    loop: bool = True

    @property
    def cycle_s(self) -> float:
        return sum(p.seconds for p in self.phases)


def parse_weather(data: Any, where: str = "weather") -> WeatherSchedule:
    """A schedule from its YAML mapping; ``ValueError`` says what is wrong and where."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping with `phases`")
    raw = data.get("phases")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: `phases` must be a non-empty list")
    phases: list[WeatherPhase] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: phase {i + 1}: expected {{scenario: NAME, seconds: N}}")
        scenario = item.get("scenario")
        seconds = item.get("seconds")
        if not isinstance(scenario, str | Mapping) or not scenario:
            raise ValueError(f"{where}: phase {i + 1}: `scenario` must be a scenario name or mapping")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise ValueError(f"{where}: phase {i + 1}: `seconds` must be a positive number")
        phases.append(WeatherPhase(scenario, float(seconds)))
    return WeatherSchedule(tuple(phases), loop=bool(data.get("loop", True)))


def load_weather() -> WeatherSchedule:
    text = importlib.resources.files("resources.demo").joinpath("weather.yaml").read_text("utf-8")
    return parse_weather(yaml.safe_load(text), "resources/demo/weather.yaml")


def demo_key(provider: str, ref: str) -> str:
    """Every demo provider gets the same fake key; the keyring is never asked."""
    return DEMO_KEY


def backfill_span_h(hours: float, now: float | None = None) -> float:
    """Hours of history to write: a day or more reaches back to the start of yesterday (UTC).

    The Overview compares spend today with yesterday by the same time; a history that began
    24 hours ago would give it a fraction of yesterday to compare with.
    """
    if hours < 24:
        return hours
    now = time.time() if now is None else now
    return max(hours, 24.0 + (now % 86400) / 3600)


# --- the demo -------------------------------------------------------------------------------------


@dataclass(slots=True)
class BackfillResult:
    generated: int = 0
    ingested: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    since: float = 0.0
    until: float = 0.0


@dataclass(slots=True)
class DemoStatus:
    running: bool
    traffic: bool
    weather: str | None
    weather_left_s: float | None
    rate_rps: float
    sent: int
    completed: int
    failed: int
    events: int  # events handed to the pipeline
    written: int  # of those, stored
    backfill: BackfillResult | None
    backfilling: bool
    sim_url: str | None
    errors: list[str] = field(default_factory=list)
    #: Requests the demo cancelled itself at shutdown (not stored as traffic).
    cancelled: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Demo:
    """The whole demo on the caller's event loop.  See the module docstring."""

    def __init__(
        self,
        store: Store,
        live: Any | None = None,
        *,
        seed: int = 0,
        profile: TrafficProfile | None = None,
        weather: WeatherSchedule | None = None,
        pipeline: Pipeline | None = None,
        backfill_hours: float = 24.0,
        backfill_per_minute: float = 50.0,
    ) -> None:
        self.store = store
        self.live = live
        self.seed = seed
        self.profile = profile or TrafficProfile()
        self.weather = weather or load_weather()
        self.backfill_hours = backfill_hours
        self.backfill_per_minute = backfill_per_minute
        self._own_pipeline = pipeline is None
        self.pipeline = pipeline or Pipeline(store, live=live)
        self.sim: SimServer | None = None
        self.gateway: Gateway | None = None
        self._prompted = False  # the store has the demo prompt: summaries use it
        self.generator: TrafficGenerator | None = None
        self._buffer: list[Event] = []
        self._retry: list[Event] = []  # a batch the store refused (busy): sent again with the next flush
        self._events = 0
        self._written = 0
        self._errors: list[str] = []
        self._cancelled = 0
        self._drain_s = 15.0 + _DRAIN_MARGIN_S
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._phase: WeatherPhase | None = None
        self._phase_ends: float | None = None
        self._backfill: BackfillResult | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._started = False
        self._closed = False

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Simulator, gateway, pipeline, traffic and weather up; the backfill runs in the background."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        try:
            first = self.weather.phases[0].scenario
            self.sim = SimServer(first, seed=self.seed)
            await self.sim.start("127.0.0.1", 0)
            config = demo_config(self.sim.openai_base_url, self.sim.anthropic_base_url)
            deadlines = [r.deadline_s for r in config.routes if r.deadline_s]
            if deadlines:
                self._drain_s = max(deadlines) + _DRAIN_MARGIN_S
            if self._own_pipeline:
                self.pipeline.start()
            # Store-backed when the store is the demo's: the routing, budget and provider editors
            # then move the demo's traffic like any gateway's (else it runs on its own config).
            in_store = await asyncio.to_thread(install_demo_control, self.store, config)
            if in_store:
                self._prompted = await asyncio.to_thread(install_demo_prompts, self.store)
            self.gateway = Gateway(
                self.store,
                config=None if in_store else config,
                key_resolver=demo_key,
                write_events=False,
                source=DEMO_SOURCE,
                rng=random.Random(self.seed),
            )
            self.gateway.add_event_listener(self._on_event)
            await self.gateway.start()
        except BaseException:
            await self.aclose()
            raise
        self._tasks["flush"] = loop.create_task(self._flush_loop(), name="controlroom-demo-flush")
        self.start_traffic()
        if self.backfill_hours > 0:
            # Its own named thread: CPU-bound for seconds, it must not hold up the loop's executor.
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="controlroom-demo-backfill"
            )
            job = functools.partial(
                self.backfill, backfill_span_h(self.backfill_hours), per_minute=self.backfill_per_minute
            )
            self._tasks["backfill"] = asyncio.ensure_future(loop.run_in_executor(self._executor, job))
        log.info("demo started: simulator on %s", self.sim.base_url)

    def start_traffic(self) -> None:
        """(Re)start the generator and the weather (after :meth:`stop_traffic`)."""
        if self.gateway is None or self._closed:
            raise RuntimeError("the demo is not running; call start() first")
        if self.generator is not None and self.generator.running:
            return
        loop = asyncio.get_running_loop()
        if self.generator is None:  # a resumed demo keeps its generator, so the counts go on
            self.generator = TrafficGenerator(self._send, seed=self.seed, profile=self.profile)
        self._tasks["traffic"] = loop.create_task(self.generator.run(), name="controlroom-demo-traffic")
        self._tasks["weather"] = loop.create_task(self._weather_loop(), name="controlroom-demo-weather")

    async def stop_traffic(self, grace_s: float | None = None) -> None:
        """No new requests from now on; outstanding ones are recorded as they end.

        They get ``grace_s`` (default: the longest route deadline, which the gateway enforces,
        plus a margin) to finish; any left after that are cancelled and not stored as traffic.
        """
        if grace_s is None:
            grace_s = self._drain_s
        weather = self._tasks.pop("weather", None)
        if weather is not None:
            weather.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await weather
        self._phase = None
        self._phase_ends = None
        gen = self.generator
        if gen is not None:
            cancelled = await gen.stop(grace_s)
            if cancelled:
                log.info(
                    "demo: %d request(s) still outstanding after %g s were cancelled and not stored as traffic",
                    cancelled,
                    grace_s,
                )
        traffic = self._tasks.pop("traffic", None)
        if traffic is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
        await self.flush()

    async def flush(self, attempts: int = 5) -> None:
        """Hand every buffered event to the pipeline and wait until it is stored (retrying a busy store)."""
        for attempt in range(attempts):
            fut = self._submit()
            if fut is not None:
                with contextlib.suppress(Exception):  # _on_written keeps what failed for the next try
                    await fut
            if not self._retry and not self._buffer:
                return
            await asyncio.sleep(0.2 * (attempt + 1))
        if self._retry:
            self._note(f"{len(self._retry)} demo event(s) could not be written: the store stayed busy")

    async def wait_backfilled(self) -> BackfillResult | None:
        """The backfill's result once it has finished (bound it with ``asyncio.timeout``)."""
        task = self._tasks.get("backfill")
        if task is not None:
            await asyncio.shield(task)
        return self._backfill

    async def aclose(self) -> None:
        """Stop everything; every event the gateway recorded is written before this returns."""
        if self._closed:
            return
        self._closed = True
        await self.stop_traffic(grace_s=_CLOSE_GRACE_S)
        backfill = self._tasks.pop("backfill", None)
        if backfill is not None:  # a thread cannot be cancelled; it stops at the next minute (_closed)
            with contextlib.suppress(Exception):
                await backfill
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        if self.gateway is not None:
            await self.gateway.aclose()
        flush = self._tasks.pop("flush", None)
        if flush is not None:
            flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flush
        with contextlib.suppress(Exception):
            await self.flush()
        if self._own_pipeline:
            await asyncio.to_thread(self.pipeline.stop)
        if self.sim is not None:
            await self.sim.stop()

    async def __aenter__(self) -> Demo:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- status -----------------------------------------------------------------------------------

    def status(self) -> DemoStatus:
        gen = self.generator
        traffic = gen is not None and gen.running
        left = None
        if self._phase_ends is not None:
            left = max(0.0, self._phase_ends - time.monotonic())
        bf = self._tasks.get("backfill")
        return DemoStatus(
            running=self._started and not self._closed,
            traffic=traffic,
            weather=self._phase.name if self._phase is not None else None,
            weather_left_s=left,
            rate_rps=gen.current_rate() if gen is not None and traffic else 0.0,
            sent=gen.stats.sent if gen is not None else 0,
            completed=gen.stats.completed if gen is not None else 0,
            failed=gen.stats.failed if gen is not None else 0,
            events=self._events,
            written=self._written,
            backfill=self._backfill,
            backfilling=bf is not None and not bf.done(),
            sim_url=self.sim.base_url
            if self.sim is not None and self._started and not self._closed
            else None,
            errors=list(self._errors[-5:]),
            cancelled=self._cancelled,
        )

    # --- traffic ----------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """The gateway's event listener (on the loop, in the request's task)."""
        gen = self.generator
        if event.status_code == 499 and gen is not None and gen.cancelled_by_stop():
            # The demo cancelled this request itself (shutting down): not a failure of the
            # traffic, so not stored as one.  Counted, and said once the stop is done.
            self._cancelled += 1
            return
        self._buffer.append(event)

    async def _send(self, spec: RequestSpec) -> object:
        gw = self.gateway
        if gw is None:
            raise RuntimeError("the demo gateway is not running")
        req = GatewayRequest(
            route=spec.route,
            messages=spec.messages,
            system=spec.system,
            params=dict(spec.params),
            stream=spec.stream,
            feature=spec.feature,
            user=spec.user,
            tags=dict(spec.tags),
        )
        if self._prompted and spec.route == "summarize" and not spec.long_prompt:
            # Summaries go through the registry prompt: its versions show on the Prompts page and
            # in the events, and a promotion there changes what the demo sends.
            ticket = " ".join(str(m.get("content", "")) for m in spec.messages if m.get("role") == "user")
            req = dataclasses.replace(
                req, messages=[], system=None, prompt_name=DEMO_PROMPT,
                prompt_vars={"ticket": ticket, "max_words": 40},
            )  # fmt: skip
        if not spec.stream:
            return await gw.chat(req)
        end: object = None
        # aclosing: a cancelled request ends its stream (and records its event) now, not at GC.
        stream = gw.stream(req)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for item in stream:
                if isinstance(item, GatewayStreamEnd):
                    end = item.response
        return end

    async def _weather_loop(self) -> None:
        sim = self.sim
        if sim is None:
            return
        try:
            while True:
                for phase in self.weather.phases:
                    try:
                        sim.set_scenario(phase.scenario)
                    except ValueError as exc:  # ScenarioError: keep the old weather, say so
                        self._note(f"weather phase {phase.name!r} refused: {exc}")
                    self._phase = phase
                    self._phase_ends = time.monotonic() + phase.seconds
                    await asyncio.sleep(phase.seconds)
                if not self.weather.loop:
                    break
        finally:
            self._phase = None
            self._phase_ends = None

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            self._submit()

    def _submit(self) -> asyncio.Future[Any] | None:
        if not self._buffer and not self._retry:
            return None
        self._events += len(self._buffer)
        events = self._retry + self._buffer
        self._retry = []
        self._buffer.clear()
        try:
            fut = self.pipeline.submit(Batch(events=events), block=False)
        except Exception as exc:  # the pipeline stopped under us: say so, never lose silently
            self._note(f"{len(events)} demo event(s) not written: {exc}")
            return None
        wrapped = asyncio.wrap_future(fut)
        wrapped.add_done_callback(functools.partial(self._on_written, events))
        return wrapped

    def _on_written(self, events: list[Event], fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, StoreUnavailable):
            # Nothing of the batch was committed (the store was busy or away): try it again with the
            # next flush.  Only a store that stays away long enough to pile up _MAX_RETRY events
            # costs events, and that is said.
            self._retry = events + self._retry
            if len(self._retry) > _MAX_RETRY:
                lost = len(self._retry) - _MAX_RETRY
                del self._retry[:lost]
                self._note(f"the store is not taking demo events: {lost} dropped ({exc})")
            else:
                log.info("demo events will be retried: %s", exc)
            return
        if exc is not None:
            self._note(f"writing demo events failed: {exc}")
            return
        self._written += fut.result().ingested

    def _note(self, msg: str) -> None:
        log.warning("%s", msg)
        self._errors.append(msg)

    # --- history ----------------------------------------------------------------------------------

    def backfill(
        self, hours: float = 24.0, *, now: float | None = None, per_minute: float = 50.0
    ) -> BackfillResult:
        """Write ``hours`` of simulated history up to the current minute, through the pipeline.

        Every minute's events come from a generator seeded by the minute itself and carry
        derived ids, so running it again (a second demo start) inserts nothing twice.  Runs in
        the caller's thread (the demo runs it in a worker thread); a separate pipeline without
        the live aggregator writes it, since history is not live.
        """
        t0 = time.perf_counter()
        now = time.time() if now is None else now
        end_min = int(now // 60)
        start_min = end_min - int(hours * 60)
        history = HistoryMaker(self.seed, per_minute=per_minute, prompt_v2_since=end_min * 60.0 - 6 * 3600.0)
        result = BackfillResult(since=start_min * 60.0, until=end_min * 60.0)
        writer = Pipeline(self.store)
        chunk: list[Event] = []
        for minute in range(start_min, end_min):
            if self._closed:  # quitting: what is written stays (a later start completes it)
                break
            chunk.extend(history.minute(minute))
            if len(chunk) >= _BACKFILL_CHUNK:
                self._write_history(writer, chunk, result)
                chunk = []
        if chunk and not self._closed:
            self._write_history(writer, chunk, result)
        result.seconds = time.perf_counter() - t0
        self._backfill = result
        log.info(
            "demo backfill: %d events (%d new) over %g h in %.2f s",
            result.generated,
            result.ingested,
            hours,
            result.seconds,
        )
        return result

    @staticmethod
    def _write_history(writer: Pipeline, events: list[Event], result: BackfillResult) -> None:
        r = writer.write(Batch(events=events))  # a store that fails raises (StoreUnavailable): nothing hidden
        result.generated += len(events)
        result.ingested += r.ingested
        result.duplicates += r.duplicates
        # Short transactions and a breath between them: the live events' writer must get the
        # SQLite write lock in time (its busy timeout), or its batches would fail.
        time.sleep(_BACKFILL_PAUSE_S)


# --- simulated history ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    target: str
    provider: str
    model: str
    ttft_s: float  # median
    tps: float  # median tokens/s
    in_per_tok: float  # USD
    out_per_tok: float


def _lognormal(rng: random.Random, mu: float, sigma: float) -> float:
    return math.exp(rng.gauss(mu, sigma))  # gauss is the quicker normal draw; one generator per thread here


def _model(target: str, provider: str, kind: str, model: str, *, ttft_s: float, tps: float) -> _Model:
    pin = price_call(model, provider=kind, input_tokens=1_000_000, output_tokens=0).cost_usd or 0.0
    pout = price_call(model, provider=kind, input_tokens=0, output_tokens=1_000_000).cost_usd or 0.0
    return _Model(target, provider, model, ttft_s, tps, pin / 1e6, pout / 1e6)


# Incidents in history, as (start, end) minutes of the UTC day, so the last 24 h always hold one of each.
_OUTAGE = (9 * 60 + 10, 9 * 60 + 35)  # openai-sim down: fallbacks serve
_RATE_BURST = (14 * 60, 14 * 60 + 12)  # 429s on openai-sim
_DEGRADED = (19 * 60 + 30, 20 * 60 + 10)  # everything slow, some 5xx and timeouts


class HistoryMaker:
    """Events for one minute of the past, consistent with the demo routes and targets."""

    def __init__(self, seed: int = 0, *, per_minute: float = 50.0, prompt_v2_since: float = 0.0) -> None:
        self.seed = seed
        self.per_minute = per_minute
        self._prompt_v2_since = prompt_v2_since  # summaries before this used version 1 of the prompt
        self.models = {
            m.target: m
            for m in (
                _model("fast", "openai-sim", "openai", "gpt-4o-mini", ttft_s=0.35, tps=85),
                _model("big", "openai-sim", "openai", "gpt-4o", ttft_s=0.5, tps=60),
                _model("strong", "anthropic-sim", "anthropic", "claude-sonnet-4-5", ttft_s=0.9, tps=55),
                _model("quick", "anthropic-sim", "anthropic", "claude-haiku-4-5", ttft_s=0.45, tps=110),
            )
        }
        self._long_text_tokens = (4000, 12000)

    def rate(self, minute: int) -> float:
        """Requests per minute: a daily swing (quiet at night UTC, busy mid-afternoon)."""
        hour = (minute % 1440) / 60.0
        swing = 0.5 - 0.5 * math.cos(2 * math.pi * (hour - 3.0) / 24.0)
        return self.per_minute * (0.25 + 1.5 * swing)

    def minute(self, minute: int) -> list[Event]:
        rng = random.Random(minute * 1_000_003 + self.seed)
        lam = self.rate(minute)
        n = max(0, round(rng.gauss(lam, math.sqrt(lam)))) if lam > 0 else 0
        of_day = minute % 1440
        weather = (
            "outage"
            if _OUTAGE[0] <= of_day < _OUTAGE[1]
            else "rate_limited"
            if _RATE_BURST[0] <= of_day < _RATE_BURST[1]
            else "degraded"
            if _DEGRADED[0] <= of_day < _DEGRADED[1]
            else "healthy"
        )
        return [self._event(rng, minute, i, weather) for i in range(n)]

    def _chain(self, rng: random.Random, wl: Workload, long_prompt: bool) -> list[str]:
        if wl.route == "default":
            return ["strong", "big"] if long_prompt else ["fast", "quick", "strong"]
        if wl.route == "search":
            return ["fast" if rng.random() < 0.9 else "quick", "strong"]
        return ["strong", "quick"] if long_prompt else ["big", "strong"]

    def _fails(self, rng: random.Random, m: _Model, weather: str) -> tuple[Failure, int] | None:
        openai = m.provider == "openai-sim"
        if weather == "outage" and openai:
            return Failure.OVERLOADED, 503
        if weather == "rate_limited" and openai and rng.random() < 0.35:
            return Failure.RATE_LIMITED, 429
        if weather == "degraded":
            r = rng.random()
            if r < 0.03:
                return Failure.SERVER_ERROR, 500
            if r < 0.05:
                return Failure.RATE_LIMITED, 429
            if r < 0.06:
                return Failure.TIMEOUT, 504
        r = rng.random()
        if r < 0.003:
            return Failure.RATE_LIMITED, 429
        if r < 0.005:
            return Failure.SERVER_ERROR, 500
        return None

    def _event(self, rng: random.Random, minute: int, i: int, weather: str) -> Event:
        wl = pick_workload(rng)
        user = pick_user(rng)
        long_prompt = rng.random() < 0.01
        if long_prompt:
            input_tokens = rng.randint(*self._long_text_tokens)
        elif wl.feature == "search":
            input_tokens = rng.randint(25, 60)
        elif wl.feature == "summarize":
            input_tokens = int(_lognormal(rng, math.log(450), 0.4))
        else:
            input_tokens = int(_lognormal(rng, math.log(120), 0.5))
        stream = rng.random() < wl.stream_share
        ts_start = minute * 60.0 + rng.random() * 60.0
        slow = 3.0 if weather == "degraded" else 1.0
        chain = self._chain(rng, wl, long_prompt)
        tried: list[str] = []
        latency_s = 0.0
        failure: tuple[Failure, int] | None = None
        served: _Model | None = None
        for name in chain:
            m = self.models[name]
            tried.append(name)
            failure = self._fails(rng, m, weather)
            if failure is None:
                served = m
                break
            latency_s += 0.05 + rng.random() * 0.3 if failure[0] is not Failure.TIMEOUT else 6.0
            # Not every failure reaches a fallback: a timeout spends the deadline, and a spent retry
            # budget or an impatient caller ends some of the others too.
            if failure[0] is Failure.TIMEOUT or rng.random() < 0.3:
                break
        m = served or self.models[tried[-1]]
        ev = Event(
            ts_start=ts_start,
            ts_end=ts_start,
            source=DEMO_SOURCE,
            provider=m.provider,
            model=m.model,
            event_id=derived_event_id(ts_start, f"demo-history:{self.seed}:{minute}:{i}"),
            response_model=m.model if served is not None else None,
            route=wl.route,
            feature=wl.feature,
            user=user,
            tags={"app": "acme-web" if rng.random() < 0.7 else "acme-mobile"},
            stream=stream,
            attempts=len(tried),
            targets_tried=tried,
            input_tokens=input_tokens,
            breaker_state="open" if weather == "outage" and chain[0] in ("fast", "big") else "closed",
        )
        if wl.route == "summarize" and not long_prompt:
            # As live: summaries use the registry prompt; version 2 took over 6 hours ago.
            ev.prompt_name = DEMO_PROMPT
            ev.prompt_version = 2 if ts_start >= self._prompt_v2_since else 1
        if served is not None:
            ttft_s = _lognormal(rng, math.log(m.ttft_s * slow), 0.45) * (1.8 if long_prompt else 1.0)
            out = max(1, int(_lognormal(rng, math.log(min(wl.max_tokens, 140) * 0.6), 0.6)))
            out = min(out, wl.max_tokens)
            gen_s = out / max(1.0, _lognormal(rng, math.log(m.tps / slow), 0.3))
            latency_s += ttft_s + gen_s
            ev.status_code = 200
            ev.output_tokens = out
            ev.ttft_ms = round(ttft_s * 1000.0, 2) if stream else None
            ev.cost_usd = input_tokens * m.in_per_tok + out * m.out_per_tok
            ev.cost_source = CostSource.PROVIDER
        else:
            assert failure is not None
            ev.failure, ev.status_code = failure
            ev.error_message = f"simulated {failure[0].value} (demo history)"
            ev.input_tokens = input_tokens
            ev.cost_usd = 0.0
            ev.cost_source = CostSource.PROVIDER
        ev.latency_ms = round(latency_s * 1000.0, 2)
        ev.ts_end = ts_start + latency_s
        return ev


__all__ = [
    "DEMO_KEY",
    "BackfillResult",
    "Demo",
    "DemoStatus",
    "HistoryMaker",
    "WeatherPhase",
    "WeatherSchedule",
    "demo_config",
    "load_weather",
    "parse_weather",
]
