"""The gateway engine: one request's path through the data plane (semantics.md section 1).

``validate -> count input tokens -> route -> budgets -> cache -> for target in chain: breaker ->
attempts with deadline and retries -> next target -> fallback response or error -> exactly one
event``.  A library first::

    gw = Gateway(store)                      # or Gateway(None, config=parse_config(text))
    await gw.start()
    resp = await gw.chat(GatewayRequest(route="default", messages=[{"role": "user", "content": "hi"}]))
    resp = await gw.chat(route="default", messages=[...], tags={"team": "ml"})   # the same, as keywords
    async for item in gw.stream(route="default", messages=[...]): ...           # ends with GatewayStreamEnd
    gw.dry_run(GatewayRequest(...))      # where would it go, and why (calls nobody)
    await gw.aclose()

Plain asyncio on the caller's loop.  The only threads are the store writer's
(``controlroom-writer``) and the control-state reader's (``controlroom-gwsync``);
the request path never waits for either.  Control state is an immutable
snapshot (:mod:`app.gateway.state`) replaced whole when the store's control
version moves, polled every ``sync_interval_s``.

Decisions worth knowing (the report lists them too):

- Deadline: the whole request (attempts, backoff waits, fallbacks) is bounded
  by ``min(route.deadline_s, request.deadline_s)``.  Each attempt is bounded by
  the attempt timeout capped at what is left, so the attempt's own timeout fires
  at the deadline at the latest; a backstop ``asyncio.timeout`` 50 ms later
  catches anything else.  Streams are judged by time to first token and gaps
  between chunks, and by the deadline as a whole.
- Breakers count every attempt.  A target whose breaker refuses is skipped;
  if every target was skipped, ``on_all_open`` decides (``fail_fast``: a
  ``breaker_open`` error; ``try_anyway``: the chain again, ignoring breakers).
- Retries: :class:`app.core.retry.RetryPolicy` per route decides; a per-target
  :class:`app.core.retry.RetryBudget` (20% over 10 s, 3 concurrent) caps them.
  Each retry on a half-open breaker takes a probe of its own.
- Budgets scoped by provider or model are checked per target (a provider out
  of money is skipped like an open breaker); the others once per request.
- The exact cache keys on the route, the primary target, the messages and the
  output-changing parameters.  A hit records an event with ``cache_hit=exact``,
  no tokens and ``cost_usd=0``; the cost it saved is in the tag
  ``cache_saved_usd`` (the event has no field for it).
- ``cost_source`` is ``provider`` when the tokens are the provider's usage,
  ``estimated`` when we counted them (no usage reported, or a broken stream).
- ``breaker_state`` is the primary target's breaker state when the request was
  routed: "open" on an event served by a fallback says why.
- A 200 answer that is empty, cut by the length limit, refused, or not JSON when
  JSON was asked for is returned to the caller but recorded as ``quality_fail``.
- A caller that cancels (or stops reading a stream) still leaves its one event:
  ``client_error`` with status 499, billed for what a stream had produced.
- A request that names a prompt (``prompt="NAME"`` or ``"NAME@VERSION"``, variables in
  ``prompt_vars``) gets the registry's active (or pinned) version rendered into it before
  anything else looks at it (:func:`app.core.prompts.apply`: system prompt, then the template as
  the first user message, then the caller's messages; the version's parameters under the
  request's).  The active versions come with the control state, so a promotion reaches
  every gateway at the next poll; pinned versions are read once and kept (they never change).
  A name the registry does not know, on a request that brings its own messages and no
  variables, is only a label on the event (prompts managed in the caller's code); without
  messages or with variables it is a 404.
- Budget warnings are remembered at once and claimed in the store
  (``record_budget_warning``), so two gateways announce a level once between
  them; announced ones are in ``gateway.budget_warnings``, logged, and passed to
  listeners (:meth:`Gateway.add_budget_warning_listener`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from app.core.breaker import (
    BreakerBoard,
    BreakerSnapshot,
    BreakerState,
    Override,
    OverrideMode,
    Transition,
)
from app.core.budget import Budget, BudgetAction, BudgetWarning, evaluate, period_bounds, projection
from app.core.cache import ExactCache, cache_key, cacheable
from app.core.config import ConfigError, ControlConfig, Provider, Target
from app.core.event import CacheHit, CostSource, Event, Failure
from app.core.prompts import PromptError, apply, parse_ref
from app.core.retry import RetryBudget
from app.core.routing import Decision, OnAllOpen, RequestContext, Route, dry_run, select_chain
from app.core.tokens import count_messages, count_text
from app.gateway.cost import Pricer
from app.gateway.spend import BudgetBook, spend_in_store
from app.gateway.state import ControlState, load_overrides, load_prompts, load_state, state_from_config
from app.gateway.transport import AiohttpTransport
from app.gateway.writer import StoreWriter
from app.providers import make_adapter
from app.providers.base import (
    ChatRequest,
    ChatResult,
    ChatStream,
    FinishReason,
    ProviderAdapter,
    StreamDone,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    result_events,
)
from app.providers.errors import ProviderError
from storage.engine import Store
from storage.queries.control import (
    BreakerTransition,
    get_control_version,
    list_budget_warnings,
    record_budget_warning,
)
from storage.queries.prompts import PromptVersion, get_version

_T = TypeVar("_T")

log = logging.getLogger(__name__)

#: ``key_resolver(provider_name, key_ref) -> key or None``.
KeyResolver = Callable[[str, str], str | None]

#: Latency histogram bounds in seconds (Prometheus style, +Inf implied).
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# What an HTTP server answers for each failure (client errors pass the provider's status through).
_STATUS: dict[Failure, int] = {
    Failure.TIMEOUT: 504,
    Failure.RATE_LIMITED: 429,
    Failure.OVERLOADED: 503,
    Failure.SERVER_ERROR: 502,
    Failure.CONNECTION_ERROR: 502,
    Failure.BREAKER_OPEN: 503,
    Failure.BUDGET_BLOCKED: 429,
    Failure.GUARDRAIL_BLOCKED: 400,
    Failure.CLIENT_ERROR: 400,
    Failure.QUALITY_FAIL: 502,
}

_PUBLIC_BASE_URL = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}

_MAX_TOKEN_KEYS = ("max_output_tokens", "max_tokens", "max_completion_tokens")
_DIRECT_FIELDS = ("temperature", "top_p", "stop", "tools", "tool_choice", "response_format")
_NOT_EXTRA = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "system",
        *_MAX_TOKEN_KEYS,
        *_DIRECT_FIELDS,
    }
)
_BACKSTOP_S = 0.05  # the outer deadline fires this long after the attempt timeouts could

# Key shapes masked in stored text (the same shapes app.providers.errors masks in messages).
_SECRET = re.compile(
    r"(sk-(?:ant-)?(?:admin\d*-|api\d*-|proj-)?[A-Za-z0-9_\-]{6,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9_\-\.=+/]{6,}"
    r"|(?i:x-api-key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9_\-\.]{6,})"
)


def _default_key_resolver(provider: str, ref: str) -> str | None:
    from app.secrets import resolve_key_ref

    return resolve_key_ref(ref, provider)


@dataclass(slots=True)
class GatewayRequest:
    """One call through the gateway.

    ``route`` is a route name, or a target name (then a one-target chain with the default route
    settings).  ``messages`` are OpenAI-style; an Anthropic caller's system prompt goes in
    ``system``.  ``params``: temperature, top_p, max_output_tokens (or max_tokens /
    max_completion_tokens), stop, tools, tool_choice, response_format, metadata, and anything
    else the provider takes (passed through as is).  ``deadline_s`` is the caller's own
    deadline; the route's caps it.  ``prompt_name`` (and ``prompt_version`` to pin one) names a
    registry prompt rendered with ``prompt_vars``; as keywords, ``prompt="NAME@VERSION"`` says
    both and ``messages`` may then be left out.
    """

    route: str
    messages: list[dict[str, Any]]
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    feature: str | None = None
    user: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    prompt_name: str | None = None
    prompt_version: int | None = None
    deadline_s: float | None = None
    prompt_vars: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class GatewayResponse:
    """The answer: the provider's result, the one event recorded for the request, and how it went."""

    result: ChatResult
    event: Event
    target: str  # the target that served it ("fallback" for the route's fallback response)
    attempts: int
    cache: str  # "hit" | "miss" | "off"


@dataclass(slots=True)
class GatewayStreamStart:
    """The first item of :meth:`Gateway.stream`, once a target has started answering (or a cached or
    fallback answer is about to be replayed): what an HTTP server puts in its response headers."""

    target: str
    attempts: int
    cache: str  # "hit" | "miss" | "off"


@dataclass(slots=True)
class GatewayStreamEnd:
    """The last item of :meth:`Gateway.stream`: the finished request."""

    response: GatewayResponse


class GatewayError(Exception):
    """A request the gateway could not serve.  ``message`` is plain words and never holds a key."""

    def __init__(
        self,
        failure: Failure,
        message: str,
        *,
        status_code: int,
        event: Event,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.status_code = status_code
        self.event = event
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"GatewayError(failure={self.failure.value!r}, status_code={self.status_code}, message={self.message!r})"


@dataclass(frozen=True, slots=True)
class BudgetStanding:
    """One budget now: for /metrics and the budgets page."""

    budget: Budget
    spent_usd: float
    spent_tokens: int
    ratio: float
    period_start: float
    period_end: float
    projected_at: (
        float | None
    )  # when the limit will be reached at the current burn rate (None: not this period)


@dataclass(slots=True)
class GatewayStats:
    """Counters for /metrics.  A copy: safe to read from another thread.  Latencies are in SECONDS."""

    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (route, target, failure) -> n
    latency_buckets: tuple[float, ...] = LATENCY_BUCKETS
    latency: dict[tuple[str, str, str], list[int]] = field(
        default_factory=dict
    )  # cumulative-free bucket counts (+Inf last)
    latency_sum: dict[tuple[str, str, str], float] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)  # target -> calls made
    retries: dict[str, int] = field(default_factory=dict)  # target -> retries made
    retries_denied: dict[str, int] = field(default_factory=dict)  # target -> retries the budget refused
    breakers: list[BreakerSnapshot] = field(default_factory=list)
    budget_spend: dict[str, float] = field(default_factory=dict)
    budget_limit: dict[str, float | None] = field(default_factory=dict)
    budgets: list[BudgetStanding] = field(default_factory=list)
    cost_usd: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_saved_usd: float = 0.0
    events_recorded: int = 0
    events_written: int = 0
    events_pending: int = 0
    events_dropped: int = 0
    control_version: int = 0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class TargetView:
    """One target in a dry run: its breaker and whether a call would go to it now."""

    target: str
    exists: bool
    breaker: str
    forced: str | None
    would_call: bool
    note: str


@dataclass(frozen=True, slots=True)
class DryRunResult:
    """Where a request would go and why, without calling anyone (semantics.md section 6)."""

    route: str
    input_tokens: int
    chain: list[str]
    explanation: list[str]
    targets: list[TargetView]
    budget_action: str | None
    budget_reason: str
    cache: str  # "on" | "off (temperature > 0)" | "off"


@dataclass(slots=True)
class _Cached:
    target: str
    provider: str
    model: str
    result: ChatResult
    cost_usd: float | None


class _Run:
    """One request's bookkeeping on its way through the chain."""

    __slots__ = (
        "attempts",
        "billed_cost",
        "billed_estimated",
        "billed_in",
        "billed_out",
        "billed_unknown",
        "breaker_state",
        "cache",
        "cache_key",
        "chain",
        "ctx",
        "deadline_at",
        "deadline_s",
        "direct",
        "input_estimate",
        "input_tokens",
        "last_error",
        "last_failure",
        "last_status",
        "m_start",
        "notes",
        "req",
        "retry_after",
        "route",
        "skipped_open",
        "streaming",
        "t_start",
        "target",
        "targets_tried",
        "template",
        "ttft_ms",
    )

    def __init__(self, req: GatewayRequest, t_start: float, m_start: float) -> None:
        self.req = req
        self.t_start = t_start
        self.m_start = m_start
        self.route: Route | None = None
        self.direct = False
        self.deadline_s = 0.0
        self.deadline_at = 0.0
        self.input_tokens = 0
        self.input_estimate = False
        self.ctx: RequestContext | None = None
        self.chain: list[str] = []
        self.template: ChatRequest | None = None
        self.cache = "off"
        self.cache_key: str | None = None
        self.attempts = 0
        self.targets_tried: list[str] = []
        self.skipped_open: list[str] = []
        self.notes: list[str] = []
        self.last_failure: Failure | None = None
        self.last_error: ProviderError | None = None
        self.last_status: int | None = None
        self.retry_after: float | None = None
        self.breaker_state: str | None = None
        self.target: Target | None = None
        self.billed_in = 0
        self.billed_out = 0
        self.billed_cost = 0.0
        self.billed_estimated = False
        self.billed_unknown = False
        self.ttft_ms: float | None = None
        self.streaming = False

    def fail(self, failure: Failure, note: str, *, status: int | None = None) -> None:
        self.last_failure = failure
        self.notes.append(note)
        if status is not None:
            self.last_status = status


class _Stop(Exception):
    """No further target may help (the request itself is the problem)."""


class Gateway:
    """The data plane in-process.  See the module docstring."""

    def __init__(
        self,
        store: Store | None,
        *,
        config: ControlConfig | None = None,
        key_resolver: KeyResolver | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sync_interval_s: float = 0.25,
        write_events: bool = True,
        retry_ratio: float = 0.2,
        retry_window_s: float = 10.0,
        retry_min_concurrent: int = 3,
        budget_refresh_s: float = 5.0,
        cache_max_entries: int = 10_000,
        max_connections: int = 512,
        source: str = "gateway",
    ) -> None:
        if store is None and config is None:
            raise ValueError("a gateway needs a store, a config, or both")
        self._store = store
        self._config = config
        self._key_resolver = key_resolver or _default_key_resolver
        self._clock = clock
        self._rng = rng or random.Random()
        self._sync_interval_s = sync_interval_s
        self._retry_params = (retry_ratio, retry_window_s, retry_min_concurrent)
        self._budget_refresh_s = budget_refresh_s
        self._max_connections = max_connections
        self._source = source
        self._state = state_from_config(config or ControlConfig())
        self._writer = StoreWriter(store, write_events=write_events)
        self._board = BreakerBoard(clock=clock, on_transition=self._on_transition)
        self._retry_budgets: dict[str, RetryBudget] = {}
        self._cache: ExactCache[_Cached] = ExactCache(3600.0, cache_max_entries, clock=time.monotonic)
        self._book = BudgetBook(clock)
        self._target_budgets: tuple[Budget, ...] = ()
        self._request_budgets: tuple[Budget, ...] = ()
        self._pricer = Pricer()
        self._adapters: dict[str, tuple[Provider, ProviderAdapter | None, str | None]] = {}
        self._retired: list[ProviderAdapter] = []
        self._sync_exec: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._budget_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False
        self._bad_version: int | None = None
        self._latency: dict[str, deque[float]] = {}
        self._p95_cache: dict[str, tuple[float, float | None]] = {}
        # observability
        self.transitions: deque[Transition] = deque(maxlen=1000)
        self.budget_warnings: list[BudgetWarning] = []
        self._event_listeners: list[Callable[[Event], None]] = []
        self._warning_listeners: list[Callable[[BudgetWarning], None]] = []
        self._stats = GatewayStats()
        self._in_flight = 0
        self._pinned: dict[tuple[str, int], PromptVersion] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load control state from the store (or ``config``), start the sync task and the event writer."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._writer.start()
        if self._store is not None:
            self._sync_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="controlroom-gwsync")
            engine = self._store.engine
            state = await loop.run_in_executor(
                self._sync_exec, lambda: load_state(engine, config=self._config, now=self._clock())
            )
        else:
            state = state_from_config(self._config or ControlConfig())
        await self._apply_state(state)
        if self._store is not None:
            await self._refresh_budgets()
            self._tasks.append(loop.create_task(self._sync_loop(), name="controlroom-gateway-sync"))

    async def aclose(self) -> None:
        """Flush the writer (nothing lost) and close the adapters."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._budget_task is not None:
            self._budget_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._budget_task
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self._writer.aclose()
        for _, adapter, _ in self._adapters.values():
            if adapter is not None:
                await adapter.aclose()
        for adapter in self._retired:
            await adapter.aclose()
        self._adapters.clear()
        self._retired.clear()
        if self._sync_exec is not None:
            self._sync_exec.shutdown(wait=True)
            self._sync_exec = None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def flush(self) -> None:
        """Wait until every event recorded so far is in the store (tests, shutdown, demo)."""
        await self._writer.flush()

    # --- control state -------------------------------------------------------------------------

    async def _apply_state(self, state: ControlState) -> None:
        """Make ``state`` current: adapters for changed providers, breaker settings and overrides, budgets."""
        old = self._adapters
        new: dict[str, tuple[Provider, ProviderAdapter | None, str | None]] = {}
        for name, provider in state.providers.items():
            kept = old.get(name)
            if kept is not None and kept[0] == provider:
                new[name] = kept
                continue
            new[name] = await self._make_adapter(provider)
        for name, (_provider, adapter, _) in old.items():
            if adapter is not None and new.get(name, (None, None, None))[1] is not adapter:
                self._retired.append(adapter)  # in-flight calls may still use it; closed at aclose
        self._adapters = new
        default, per_target = state.breaker_settings()
        self._board.configure(default, per_target)
        if self._store is not None:
            for target in set(self._board.targets()) | set(state.overrides):
                self._board.get(target).apply_overrides(state.overrides.get(target, ()))
        self._book.configure(state.budgets)
        self._target_budgets = tuple(b for b in state.budgets if "provider" in b.scope or "model" in b.scope)
        self._request_budgets = tuple(b for b in state.budgets if b not in self._target_budgets)
        self._state = state

    async def _make_adapter(self, p: Provider) -> tuple[Provider, ProviderAdapter | None, str | None]:
        base_url = p.base_url or _PUBLIC_BASE_URL.get(p.kind.value)
        if base_url is None:
            return p, None, f"provider {p.name} has no base_url"
        try:
            key = await asyncio.to_thread(self._key_resolver, p.name, p.api_key)
        except Exception as exc:
            return p, None, f"provider {p.name} has no usable API key: {exc}"
        try:
            # aiohttp's pool under httpx's API: httpcore's pool scans every connection per request
            # (measured by the server helper: 2.5-5 ms of CPU a request at 50-200 concurrent).
            adapter = make_adapter(
                p.kind.value,
                p.name,
                base_url,
                key,
                max_connections=self._max_connections,
                trust_env=False,
                transport=AiohttpTransport(max_connections=self._max_connections),
            )
        except ValueError as exc:
            return p, None, str(exc)
        return p, adapter, None

    async def _sync_loop(self) -> None:
        """Poll the control version; reload on change; refresh budget spend now and then."""
        assert self._store is not None
        loop = asyncio.get_running_loop()
        engine = self._store.engine
        last_refresh = loop.time()
        failures = 0
        while True:
            await asyncio.sleep(self._sync_interval_s)
            try:
                version = await loop.run_in_executor(self._sync_exec, get_control_version, engine)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.warning("cannot read the control version from the store: %s", exc)
                continue
            if version not in (self._state.version, self._bad_version):
                await self._reload(version)
            if self._book.budgets and (
                self._book.stale or loop.time() - last_refresh >= self._budget_refresh_s
            ):
                last_refresh = loop.time()
                # In the background: the refresh waits for the writer, the version poll must not.
                if self._budget_task is None or self._budget_task.done():
                    self._budget_task = loop.create_task(self._refresh_budgets())

    async def _reload(self, version: int) -> None:
        assert self._store is not None
        loop = asyncio.get_running_loop()
        engine = self._store.engine
        try:
            state = await loop.run_in_executor(
                self._sync_exec, lambda: load_state(engine, config=self._config, now=self._clock())
            )
        except ConfigError as exc:
            # Keep routing with what we had; the operator's overrides still apply.
            self._bad_version = version
            log.error(
                "control state version %d does not validate; keeping the previous one:\n%s", version, exc
            )
            try:
                overrides, prompts = await loop.run_in_executor(
                    self._sync_exec, lambda: (load_overrides(engine, now=self._clock()), load_prompts(engine))
                )
            except Exception as exc2:
                log.warning("cannot read breaker overrides and prompts: %s", exc2)
                return
            state = replace(self._state, overrides=overrides, prompts=prompts)
        except Exception as exc:
            log.warning("cannot load control state version %d: %s", version, exc)
            return
        await self._apply_state(state)
        log.info("control state version %d loaded", state.version)

    async def _refresh_budgets(self) -> None:
        """Re-read budget spend and fired levels from the store (on the writer thread, after our writes)."""
        if self._store is None or not self._book.budgets:
            return
        plans = self._book.begin_refresh()
        if not plans:
            return
        engine = self._store.engine

        def job() -> dict[str, tuple[Any, list[float]]]:
            out = {}
            for p in plans:
                out[p.budget.name] = (
                    spend_in_store(engine, p.budget, p.start, p.end),
                    list_budget_warnings(engine, p.budget.name, p.alert_start),
                )
            return out

        try:
            results = await self._writer.call(job)
        except Exception as exc:
            log.warning("cannot read budget spend from the store: %s", exc)
            self._book.end_refresh(None, plans)
            return
        self._book.end_refresh(results, plans)

    # --- the operator's switch for a gateway without a store -------------------------------------

    def set_breaker_override(
        self,
        target: str,
        mode: OverrideMode | str,
        *,
        reason: str,
        actor: str,
        expires_at: float | None = None,
    ) -> Override | None:
        """Force a target's breaker in this process only (a store-less gateway: demo, tests).

        With a store, overrides belong in the store (``app.gateway.control``), where every
        gateway picks them up; one set here is replaced at the next control change.
        """
        return self._board.get(target).set_override(
            OverrideMode(mode), reason=reason, actor=actor, expires_at=expires_at
        )

    # --- reading ---------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Route names and target names (for /v1/models)."""
        st = self._state
        return sorted(st.routes) + sorted(t for t in st.targets if t not in st.routes)

    @property
    def control_version(self) -> int:
        return self._state.version

    @property
    def state(self) -> ControlState:
        return self._state

    def breaker_snapshots(self) -> list[BreakerSnapshot]:
        for name in self._state.targets:
            self._board.get(name)
        return self._board.snapshots()

    def budget_standings(self) -> list[BudgetStanding]:
        now = self._clock()
        out = []
        for _name, (b, spend) in self._book.states().items():
            start, end = period_bounds(b, now)
            ratio = 0.0
            if b.limit_usd:
                ratio = max(ratio, spend.usd / b.limit_usd)
            if b.limit_tokens:
                ratio = max(ratio, spend.tokens / b.limit_tokens)
            projected = None
            if b.limit_usd:
                projected = projection(spend.usd, start, now, end, b.limit_usd)
            elif b.limit_tokens:
                projected = projection(float(spend.tokens), start, now, end, float(b.limit_tokens))
            out.append(BudgetStanding(b, spend.usd, spend.tokens, ratio, start, end, projected))
        return out

    def stats(self) -> GatewayStats:
        s = self._stats
        standings = self.budget_standings()
        return GatewayStats(
            requests=dict(s.requests),
            latency_buckets=LATENCY_BUCKETS,
            latency={k: list(v) for k, v in s.latency.items()},
            latency_sum=dict(s.latency_sum),
            attempts=dict(s.attempts),
            retries=dict(s.retries),
            retries_denied=dict(s.retries_denied),
            breakers=self.breaker_snapshots(),
            budget_spend={b.budget.name: b.spent_usd for b in standings},
            budget_limit={b.budget.name: b.budget.limit_usd for b in standings},
            budgets=standings,
            cost_usd=s.cost_usd,
            cache_hits=s.cache_hits,
            cache_misses=s.cache_misses,
            cache_saved_usd=s.cache_saved_usd,
            events_recorded=s.events_recorded,
            events_written=self._writer.written,
            events_pending=self._writer.pending,
            events_dropped=self._writer.dropped,
            control_version=self._state.version,
            in_flight=self._in_flight,
        )

    def add_event_listener(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` on the loop for every event recorded (keep it quick: it is on the request path)."""
        self._event_listeners.append(fn)

    def add_budget_warning_listener(self, fn: Callable[[BudgetWarning], None]) -> None:
        """Call ``fn(warning)`` once for every budget warning level this gateway announces."""
        self._warning_listeners.append(fn)

    def dry_run(self, req: GatewayRequest) -> DryRunResult:
        """Where would this request go, and why?  Calls nobody, changes nothing."""
        st = self._state
        found = st.route_for(req.route)
        if found is None:
            raise ValueError(f"no route or target called {req.route!r}")
        route, is_route = found
        tokens, _ = self._count(req, route)
        now = self._clock()
        ctx = RequestContext(
            route=req.route, feature=req.feature, user=req.user, tags=req.tags, input_tokens=tokens, ts=now
        )
        decision = dry_run(route, ctx, now=now, p95_s=self._p95, healthy=self._healthy)
        lines = list(decision.explanation)
        if not is_route:
            lines.insert(0, f"{req.route} is a target, called directly with the default route settings")
        chain = list(decision.chain)
        budget_action = None
        budget_reason = ""
        if self._request_budgets:
            verdict = evaluate(self._request_budgets, ctx, self._book.spend, self._book.fired, now=now)
            if verdict.action is not None:
                budget_action = verdict.action.value
                budget_reason = verdict.reason
            if verdict.action is BudgetAction.DOWNGRADE:
                chain = list(verdict.downgrade_chain)
                lines.append(f"budget: {verdict.reason}")
            elif not verdict.allowed:
                lines.append(f"budget: {verdict.reason}")
        views = []
        first_open = True
        for name in chain:
            target = st.targets.get(name)
            if target is None:
                views.append(TargetView(name, False, "-", None, False, "unknown target"))
                continue
            snap = self._board.get(name).snapshot()
            forced = snap.forced.describe() if snap.forced is not None else None
            would = snap.state is not BreakerState.OPEN and first_open
            if would:
                first_open = False
            note = f"breaker {snap.state.value}" + (f" ({forced})" if forced else "")
            views.append(TargetView(name, True, snap.state.value, forced, would, note))
        cache = "off"
        if route.cache.exact_ttl_s is not None:
            temp = req.params.get("temperature")
            cache = (
                "on" if cacheable(temp, route.cache.allow_nonzero_temperature) else "off (temperature > 0)"
            )
        return DryRunResult(req.route, tokens, chain, lines, views, budget_action, budget_reason, cache)

    # --- the request path ------------------------------------------------------------------------

    async def chat(self, req: GatewayRequest | None = None, /, **fields: Any) -> GatewayResponse:
        """A non-streaming call; raises :class:`GatewayError`.

        Takes a :class:`GatewayRequest`, or its fields as keywords:
        ``await gw.chat(route="default", messages=[...], tags={"team": "ml"})``.
        """
        req = _request(req, fields)
        await self._fetch_pinned(req)
        loop = asyncio.get_running_loop()
        run = _Run(req, self._clock(), loop.time())
        self._in_flight += 1
        try:
            self._prepare(run, loop)
            cached = self._cache_lookup(run)
            if cached is not None:
                return self._serve_cached(run, cached)
            try:
                async with asyncio.timeout_at(run.deadline_at + _BACKSTOP_S):
                    result = await self._call_chain(run, loop)
            except TimeoutError:
                run.fail(Failure.TIMEOUT, f"the deadline of {run.deadline_s:g} s passed")
                result = None
            except _Stop:
                result = None
            if result is None:
                return self._fallback_or_raise(run, loop)
            return self._succeed(run, result, loop)
        except asyncio.CancelledError:
            if run.route is not None:
                run.fail(Failure.CLIENT_ERROR, "the caller cancelled the request")
                self._record(run, None, Failure.CLIENT_ERROR, loop, status=499)
            raise
        finally:
            self._in_flight -= 1

    def stream(
        self, req: GatewayRequest | None = None, /, **fields: Any
    ) -> AsyncIterator[GatewayStreamStart | StreamEvent | GatewayStreamEnd]:
        """A :class:`GatewayStreamStart`, stream events (TextDelta, ToolCallDelta, UsageUpdate,
        StreamDone), then a :class:`GatewayStreamEnd`.

        Raises :class:`GatewayError` before the start if no target could start; a failure after
        the first chunk ends the stream with a GatewayError (the event records a billed failure).
        Takes a :class:`GatewayRequest` or its fields as keywords, like :meth:`chat`.
        """
        req = _request(req, fields)
        if not req.stream:
            req = replace(req, stream=True)
        return self._stream(req)

    async def _stream(
        self, req: GatewayRequest
    ) -> AsyncIterator[GatewayStreamStart | StreamEvent | GatewayStreamEnd]:
        await self._fetch_pinned(req)
        loop = asyncio.get_running_loop()
        run = _Run(req, self._clock(), loop.time())
        run.streaming = True
        self._in_flight += 1
        recorded = False
        cs: ChatStream | None = None
        try:
            self._prepare(run, loop)
            cached = self._cache_lookup(run)
            if cached is not None:
                resp = self._serve_cached(run, cached)
                recorded = True
                yield GatewayStreamStart(resp.target, 0, "hit")
                for ev in result_events(resp.result):
                    yield ev
                yield GatewayStreamEnd(resp)
                return
            opened: tuple[ChatStream, AsyncIterator[StreamEvent], list[StreamEvent], float] | None
            try:
                async with asyncio.timeout_at(run.deadline_at + _BACKSTOP_S):
                    opened = await self._open_stream_chain(run, loop)
            except TimeoutError:
                run.fail(Failure.TIMEOUT, f"the deadline of {run.deadline_s:g} s passed")
                opened = None
            except _Stop:
                opened = None
            if opened is None:
                recorded = True
                resp = self._fallback_or_raise(run, loop)
                yield GatewayStreamStart(resp.target, resp.attempts, resp.cache)
                for ev in result_events(resp.result):
                    yield ev
                yield GatewayStreamEnd(resp)
                return
            cs, it, buffered, first_token_s = opened
            target = run.target
            assert target is not None and run.route is not None
            breaker = self._board.get(target.name)
            yield GatewayStreamStart(target.name, run.attempts, run.cache)
            for ev in buffered:
                yield ev
            failure: Failure | None = None
            err: ProviderError | None = None
            idle = run.route.idle_timeout_s
            while True:
                now = loop.time()
                if now >= run.deadline_at:
                    failure = Failure.TIMEOUT
                    run.fail(
                        failure, f"{target.name}: the deadline of {run.deadline_s:g} s passed mid-stream"
                    )
                    break
                try:
                    async with asyncio.timeout_at(min(now + idle, run.deadline_at)):
                        ev = await it.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    failure = Failure.TIMEOUT
                    what = (
                        "the deadline passed"
                        if loop.time() >= run.deadline_at
                        else f"no chunk for {idle:g} s"
                    )
                    run.fail(failure, f"{target.name}: {what} mid-stream")
                    break
                except ProviderError as exc:
                    failure, err = exc.failure, exc
                    run.last_error = exc
                    run.fail(
                        failure,
                        f"{target.name}: {exc.failure.value} mid-stream: {exc.message}",
                        status=exc.status_code,
                    )
                    break
                yield ev
            if failure is None:
                result = cs.result or cs.partial()
                breaker.record(Failure.NONE, latency_s=first_token_s, deadline_s=run.route.deadline_s)
                self._note_latency(target.name, first_token_s)
                await cs.aclose()
                cs = None
                recorded = True
                resp = self._succeed(run, result, loop)
                yield GatewayStreamEnd(resp)
                return
            # A billed failure: the caller already has part of the answer, so no fallback.
            breaker.record(
                failure, deadline_s=run.route.deadline_s, retry_after_s=err.retry_after_s if err else None
            )
            partial = (err.partial if err is not None and err.partial is not None else None) or cs.partial()
            await cs.aclose()
            cs = None
            self._bill_partial(run, target, partial)
            recorded = True
            event = self._record(run, None, failure, loop, partial=partial)
            raise GatewayError(
                failure,
                f"the stream from {target.name} broke off: {run.notes[-1]}",
                status_code=_STATUS.get(failure, 502),
                event=event,
                retry_after_s=err.retry_after_s if err else None,
            )
        except (asyncio.CancelledError, GeneratorExit):
            if not recorded and run.route is not None:
                recorded = True
                so_far = cs.partial() if cs is not None else None
                if cs is not None and run.target is not None:
                    self._board.get(run.target.name).release()
                    self._bill_partial(run, run.target, so_far)
                run.fail(Failure.CLIENT_ERROR, "the caller stopped reading the stream")
                self._record(run, None, Failure.CLIENT_ERROR, loop, status=499, partial=so_far)
            raise
        finally:
            self._in_flight -= 1
            if cs is not None:
                await cs.aclose()

    # --- request preparation ----------------------------------------------------------------------

    def _error(
        self,
        run: _Run,
        failure: Failure,
        message: str,
        loop: asyncio.AbstractEventLoop,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> GatewayError:
        run.fail(failure, message)
        code = status or _STATUS.get(failure, 500)
        event = self._record(run, None, failure, loop, status=code)
        return GatewayError(failure, message, status_code=code, event=event, retry_after_s=retry_after)

    def _prepare(self, run: _Run, loop: asyncio.AbstractEventLoop) -> None:
        """Validate, count, route, check budgets, build the request; raises GatewayError (event recorded)."""
        if not self._started or self._closed:
            raise RuntimeError("the gateway is not running: call `await gateway.start()` first")
        req = run.req
        st = self._state
        found = st.route_for(req.route)
        if found is None:
            run.route = None
            raise self._error(
                run,
                Failure.CLIENT_ERROR,
                f"no route or target called {req.route!r}; known: {', '.join(self.models()) or 'none'}",
                loop,
                status=404,
            )
        route, is_route = found
        run.route = route
        run.direct = not is_route
        deadline = route.deadline_s
        if req.deadline_s is not None:
            if not (isinstance(req.deadline_s, int | float) and req.deadline_s > 0):
                raise self._error(
                    run, Failure.CLIENT_ERROR, "deadline_s must be a positive number of seconds", loop
                )
            deadline = min(deadline, float(req.deadline_s))
        run.deadline_s = deadline
        run.deadline_at = run.m_start + deadline
        if req.prompt_name is not None:
            self._apply_prompt(run, loop)
            req = run.req
        problem = _check_messages(req.messages)
        if problem is not None:
            raise self._error(run, Failure.CLIENT_ERROR, problem, loop)
        run.input_tokens, run.input_estimate = self._count(req, route)
        ctx = RequestContext(
            route=req.route,
            feature=req.feature,
            user=req.user,
            tags=req.tags,
            input_tokens=run.input_tokens,
            ts=run.t_start,
        )
        run.ctx = ctx
        decision: Decision = select_chain(
            route,
            ctx,
            rng=self._rng,
            now=run.t_start,
            p95_s=self._p95 if route.latency_aware else None,
            healthy=self._healthy if route.latency_aware else None,
        )
        chain = decision.chain
        if not chain:
            raise self._error(
                run, Failure.CLIENT_ERROR, f"route {route.name}: {decision.explanation[-1]}", loop, status=400
            )
        if self._request_budgets:
            verdict = evaluate(
                self._request_budgets, ctx, self._book.spend, self._book.fired, now=run.t_start
            )
            for w in verdict.warnings_to_fire:
                self._fire_warning(w)
            if not verdict.allowed:
                st_block = next(
                    (s for s in verdict.states if s.over and s.budget.action is BudgetAction.BLOCK), None
                )
                retry_after = max(0.0, st_block.period_end - run.t_start) if st_block else None
                raise self._error(run, Failure.BUDGET_BLOCKED, verdict.reason, loop, retry_after=retry_after)
            if verdict.action is BudgetAction.DOWNGRADE:
                chain = list(verdict.downgrade_chain)
                run.notes.append(verdict.reason)
        run.chain = chain
        primary = self._board.get(chain[0]) if chain[0] in st.targets else None
        run.breaker_state = primary.effective_state.value if primary is not None else None
        run.template = _chat_request(req, route)
        if route.cache.exact_ttl_s is not None and cacheable(
            run.template.temperature, route.cache.allow_nonzero_temperature
        ):
            run.cache = "miss"
            msgs = (
                req.messages
                if req.system is None
                else [{"role": "system", "content": req.system}, *req.messages]
            )
            try:
                run.cache_key = cache_key(f"{route.name}/{chain[0]}", msgs, _key_params(run.template))
            except TypeError:
                run.cache = "off"  # something unhashable in the request: no caching, no harm

    # --- prompts ------------------------------------------------------------------------------------

    async def _fetch_pinned(self, req: GatewayRequest) -> None:
        """Read a pinned prompt version the control state does not hold (once: versions never change)."""
        name, number = req.prompt_name, req.prompt_version
        if name is None or number is None or self._store is None or (name, number) in self._pinned:
            return
        active = self._state.prompts.get(name)
        if active is not None and active.version == number:
            return
        try:
            found = await asyncio.to_thread(get_version, self._store.engine, name, number)
        except Exception as exc:  # the request then fails with "no such version", which is honest
            log.warning("cannot read prompt %s@%s from the store: %s", name, number, exc)
            return
        if found is not None:
            if len(self._pinned) >= 10_000:
                self._pinned.clear()
            self._pinned[(name, number)] = found

    def _apply_prompt(self, run: _Run, loop: asyncio.AbstractEventLoop) -> None:
        """Render the named prompt version into the request (``run.req`` is replaced); GatewayError if it cannot."""
        req = run.req
        name, number = req.prompt_name, req.prompt_version
        assert name is not None
        prompts = self._state.prompts
        body = self._pinned.get((name, number)) if number is not None else None
        if body is None and name not in prompts:
            if req.messages and not req.prompt_vars:
                return  # a name the registry does not know, on a whole conversation: a label for the event
            where = "" if self._store is not None else " (this gateway has no store, and prompts live in it)"
            raise self._error(
                run,
                Failure.CLIENT_ERROR,
                f"no prompt called {name!r} in the registry{where}",
                loop,
                status=404,
            )
        if body is None:
            active = prompts.get(name)
            if number is None and active is None:
                raise self._error(
                    run,
                    Failure.CLIENT_ERROR,
                    f"prompt {name!r} has no active version yet: promote one on the Prompts page, "
                    f"or name a version ({name}@1)",
                    loop,
                    status=409,
                )
            if active is not None and number in (None, active.version):
                body = active
            else:
                raise self._error(
                    run, Failure.CLIENT_ERROR, f"prompt {name!r} has no version {number}", loop, status=404
                )
        run.req = req = replace(req, prompt_version=body.version)
        values = req.prompt_vars
        if not isinstance(values, Mapping):
            raise self._error(
                run, Failure.CLIENT_ERROR, "prompt variables must be an object of name: value", loop
            )
        if req.messages and _check_messages(req.messages) is not None:
            return  # _prepare reports the caller's bad messages as usual
        try:
            rendered = apply(
                body,
                values,
                messages=req.messages or (),
                system=req.system,
                params=req.params or {},
                where=f"prompt {body.prompt}@{body.version}",
            )
        except PromptError as exc:
            raise self._error(run, Failure.CLIENT_ERROR, str(exc), loop) from None
        run.req = replace(req, messages=rendered.messages, system=rendered.system, params=rendered.params)

    def _count(self, req: GatewayRequest, route: Route) -> tuple[int, bool]:
        model = self._model_hint(route)
        try:
            tc = count_messages(req.messages, model, req.system)
        except Exception:
            tc = count_text(json.dumps(req.messages, default=str), model)
            return tc.tokens, True
        return tc.tokens, tc.estimate

    def _model_hint(self, route: Route) -> str:
        """The model whose tokenizer counts a request before routing: the route's first target's."""
        for rule in route.rules:
            for step in rule.chain:
                name = step if isinstance(step, str) else next(iter(step.weights), None)
                t = self._state.targets.get(name) if name else None
                if t is not None:
                    return t.model
        return "gpt-4o"

    # --- the cache ---------------------------------------------------------------------------------

    def _cache_lookup(self, run: _Run) -> _Cached | None:
        if run.cache_key is None:
            return None
        hit = self._cache.get(run.cache_key)
        if hit is None:
            self._stats.cache_misses += 1
            return None
        self._stats.cache_hits += 1
        run.cache = "hit"
        return hit

    def _serve_cached(self, run: _Run, cached: _Cached) -> GatewayResponse:
        loop = asyncio.get_running_loop()
        target = self._state.targets.get(cached.target)
        run.target = target
        if cached.cost_usd is not None:
            self._stats.cache_saved_usd += cached.cost_usd
        event = self._record(run, cached.result, Failure.NONE, loop, cached=cached)
        return GatewayResponse(cached.result, event, cached.target, 0, "hit")

    # --- calling the chain ---------------------------------------------------------------------------

    def _retry_budget(self, target: str) -> RetryBudget:
        rb = self._retry_budgets.get(target)
        if rb is None:
            ratio, window, floor = self._retry_params
            rb = self._retry_budgets[target] = RetryBudget(ratio, window, floor, clock=time.monotonic)
        return rb

    def _usable(self, run: _Run, name: str, force: bool) -> tuple[Target, ProviderAdapter] | None:
        """The target and its adapter if a call may go to it now (a breaker probe is then reserved)."""
        st = self._state
        target = st.targets.get(name)
        if target is None:
            run.fail(Failure.CLIENT_ERROR, f"{name}: no such target")
            return None
        breaker = self._board.get(name)
        if not force and not breaker.allow():
            run.skipped_open.append(name)
            forced = breaker.forced
            why = f"forced open ({forced.describe()})" if forced is not None else "breaker open"
            run.notes.append(f"{name}: skipped, {why}")
            return None
        entry = self._adapters.get(target.provider)
        if entry is None or entry[1] is None:
            breaker.release()
            problem = entry[2] if entry is not None else None
            run.fail(
                Failure.CLIENT_ERROR, f"{name}: {problem or f'provider {target.provider} is not configured'}"
            )
            return None
        if self._target_budgets:
            assert run.ctx is not None
            ctx = replace(run.ctx, provider=target.provider, model=target.model)
            verdict = evaluate(
                self._target_budgets, ctx, self._book.spend, self._book.fired, now=self._clock()
            )
            for w in verdict.warnings_to_fire:
                self._fire_warning(w)
            if not verdict.allowed:
                breaker.release()
                run.fail(Failure.BUDGET_BLOCKED, f"{name}: {verdict.reason}")
                return None
        return target, entry[1]

    async def _walk_chain(
        self,
        run: _Run,
        loop: asyncio.AbstractEventLoop,
        attempt: Callable[
            [_Run, Target, ProviderAdapter, asyncio.AbstractEventLoop, bool], Awaitable[_T | None]
        ],
    ) -> _T | None:
        """Each usable target of the chain in turn until ``attempt`` answers; then, if the route says
        ``try_anyway`` and every breaker was open, the skipped targets once more."""
        assert run.route is not None
        for force in (False, True):
            candidates = run.chain if not force else list(run.skipped_open)
            if force:
                if run.attempts or not run.skipped_open or run.route.on_all_open is not OnAllOpen.TRY_ANYWAY:
                    return None
                run.notes.append("every breaker is open; on_all_open is try_anyway: calling them anyway")
            for name in candidates:
                usable = self._usable(run, name, force)
                if usable is None:
                    continue
                target, adapter = usable
                result = await attempt(run, target, adapter, loop, force)
                if result is not None:
                    return result
        return None

    async def _call_chain(self, run: _Run, loop: asyncio.AbstractEventLoop) -> ChatResult | None:
        return await self._walk_chain(run, loop, self._try_target)

    async def _try_target(
        self,
        run: _Run,
        target: Target,
        adapter: ProviderAdapter,
        loop: asyncio.AbstractEventLoop,
        force: bool,
    ) -> ChatResult | None:
        """Attempts on one target: the result, ``None`` to move on, or :class:`_Stop`."""
        route = run.route
        assert route is not None and run.template is not None
        breaker = self._board.get(target.name)
        rb = self._retry_budget(target.name)
        creq = replace(run.template, model=target.model)
        run.target = target
        name = target.name
        if name not in run.targets_tried:
            run.targets_tried.append(name)
        n = 0
        while True:
            n += 1
            remaining = self._begin_attempt(run, target, n, force, loop)
            if remaining is None:
                return None
            retrying = n > 1
            timeout = min(route.effective_attempt_timeout_s, remaining)
            started = loop.time()
            err: ProviderError | None = None
            try:
                async with asyncio.timeout(timeout):
                    result = await adapter.chat(
                        creq,
                        connect_timeout=min(route.connect_timeout_s, timeout),
                        read_timeout=timeout,
                    )
            except ProviderError as exc:
                err = exc
                failure = exc.failure
                run.last_error = exc
                run.fail(failure, f"{name}: {_describe(exc)}", status=exc.status_code)
            except TimeoutError:
                failure = Failure.TIMEOUT
                run.fail(failure, f"{name}: no answer within {timeout:.3g} s")
            except asyncio.CancelledError:
                breaker.release()
                raise
            else:
                latency = loop.time() - started
                breaker.record(Failure.NONE, latency_s=latency, deadline_s=route.deadline_s)
                self._note_latency(name, latency)
                return result
            finally:
                if retrying:
                    rb.release()
            if not await self._after_failed_attempt(
                run, target, failure, err, attempt=n, started=started, loop=loop
            ):
                return None

    async def _open_stream_chain(
        self, run: _Run, loop: asyncio.AbstractEventLoop
    ) -> tuple[ChatStream, AsyncIterator[StreamEvent], list[StreamEvent], float] | None:
        return await self._walk_chain(run, loop, self._open_stream)

    async def _open_stream(
        self,
        run: _Run,
        target: Target,
        adapter: ProviderAdapter,
        loop: asyncio.AbstractEventLoop,
        force: bool,
    ) -> tuple[ChatStream, AsyncIterator[StreamEvent], list[StreamEvent], float] | None:
        """Attempts to start a stream on one target, up to its first content; retries like a call."""
        route = run.route
        assert route is not None and run.template is not None
        breaker = self._board.get(target.name)
        rb = self._retry_budget(target.name)
        creq = replace(run.template, model=target.model, stream=True)
        run.target = target
        name = target.name
        if name not in run.targets_tried:
            run.targets_tried.append(name)
        n = 0
        while True:
            n += 1
            remaining = self._begin_attempt(run, target, n, force, loop)
            if remaining is None:
                return None
            retrying = n > 1
            timeout = min(route.first_token_timeout_s, remaining)
            started = loop.time()
            err: ProviderError | None = None
            cs = adapter.stream(
                creq,
                connect_timeout=min(route.connect_timeout_s, timeout),
                read_timeout=min(route.idle_timeout_s, remaining),
            )
            buffered: list[StreamEvent] = []
            try:
                async with asyncio.timeout(timeout):
                    it = cs.__aiter__()
                    while True:
                        try:
                            ev = await it.__anext__()
                        except StopAsyncIteration:
                            break
                        buffered.append(ev)
                        kind = type(ev)
                        if kind is TextDelta or kind is ToolCallDelta or kind is StreamDone:
                            break
            except ProviderError as exc:
                err = exc
                failure = exc.failure
                run.last_error = exc
                run.fail(failure, f"{name}: {_describe(exc)}", status=exc.status_code)
            except TimeoutError:
                failure = Failure.TIMEOUT
                run.fail(failure, f"{name}: no first token within {timeout:.3g} s")
            except asyncio.CancelledError:
                breaker.release()
                await cs.aclose()
                raise
            else:
                if retrying:
                    rb.release()
                run.ttft_ms = (loop.time() - run.m_start) * 1000.0
                return cs, it, buffered, loop.time() - started
            if retrying:
                rb.release()
            await cs.aclose()
            if not await self._after_failed_attempt(
                run, target, failure, err, attempt=n, started=started, loop=loop
            ):
                return None

    def _begin_attempt(
        self, run: _Run, target: Target, n: int, force: bool, loop: asyncio.AbstractEventLoop
    ) -> float | None:
        """Admit attempt ``n`` on ``target``: the seconds left, or ``None`` to move on (breaker
        re-opened, retry budget spent); raises :class:`_Stop` when the deadline has passed."""
        name = target.name
        breaker = self._board.get(name)
        rb = self._retry_budget(name)
        stats = self._stats
        remaining = run.deadline_at - loop.time()
        if remaining <= 0:
            if n == 1:
                breaker.release()  # the probe _usable reserved was never used
            run.fail(Failure.TIMEOUT, f"{name}: the deadline of {run.deadline_s:g} s passed")
            raise _Stop
        if n > 1:
            if not force and not breaker.allow():
                run.notes.append(f"{name}: breaker opened; no more retries here")
                return None
            if not rb.try_acquire_retry():
                breaker.release()
                stats.retries_denied[name] = stats.retries_denied.get(name, 0) + 1
                run.notes.append(f"{name}: retry budget exhausted; no retry")
                return None
            stats.retries[name] = stats.retries.get(name, 0) + 1
        else:
            rb.record_attempt()
        run.attempts += 1
        stats.attempts[name] = stats.attempts.get(name, 0) + 1
        return remaining

    async def _after_failed_attempt(
        self,
        run: _Run,
        target: Target,
        failure: Failure,
        err: ProviderError | None,
        *,
        attempt: int,
        started: float,
        loop: asyncio.AbstractEventLoop,
    ) -> bool:
        """Record a failed attempt, bill what it produced, and decide: True to retry (after the
        backoff), False to move to the next target; raises :class:`_Stop` to end the request."""
        route = run.route
        assert route is not None
        name = target.name
        n = attempt
        breaker = self._board.get(name)
        latency = loop.time() - started
        retry_after = err.retry_after_s if err is not None else None
        breaker.record(failure, latency_s=latency, deadline_s=route.deadline_s, retry_after_s=retry_after)
        if retry_after is not None:
            run.retry_after = retry_after
        if err is not None and err.partial is not None and err.partial.produced_output:
            self._bill_partial(run, target, err.partial)
        decision = route.retry.decide(failure, n, retry_after, run.deadline_at - loop.time(), rng=self._rng)
        if decision.retry and err is not None and err.should_retry is False:
            run.notes.append(f"{name}: the provider said not to retry")
            return False
        if not decision.retry:
            if decision.next_target:
                if n > 1 or failure.retryable:
                    run.notes.append(f"{name}: {decision.reason}")
                return False
            run.notes.append(decision.reason)
            raise _Stop
        if decision.wait_s > 0:
            await asyncio.sleep(decision.wait_s)
        return True

    # --- endings ----------------------------------------------------------------------------------

    def _succeed(self, run: _Run, result: ChatResult, loop: asyncio.AbstractEventLoop) -> GatewayResponse:
        target = run.target
        assert target is not None and run.route is not None
        quality = _quality_problem(result, run.template)
        failure = Failure.NONE
        if quality is not None:
            failure = Failure.QUALITY_FAIL
            run.notes.append(f"{target.name}: {quality}")
        event = self._record(run, result, failure, loop)
        if run.cache_key is not None and failure is Failure.NONE:
            ttl = run.route.cache.exact_ttl_s
            if ttl is not None:
                self._cache.put(
                    run.cache_key,
                    _Cached(target.name, target.provider, target.model, result, event.cost_usd),
                    ttl,
                )
        return GatewayResponse(result, event, target.name, run.attempts, run.cache)

    def _fallback_or_raise(self, run: _Run, loop: asyncio.AbstractEventLoop) -> GatewayResponse:
        route = run.route
        assert route is not None
        if run.attempts == 0 and run.skipped_open:
            failure = Failure.BREAKER_OPEN  # nothing was called because breakers refused
        else:
            failure = run.last_failure or Failure.SERVER_ERROR
        summary = "; ".join(run.notes) or "no target could be called"
        if failure is Failure.BREAKER_OPEN:
            message = f"every target of route {route.name} is open ({', '.join(run.skipped_open)})"
        else:
            message = f"route {route.name} failed ({failure.value}): {summary}"
        if route.fallback_response is not None and failure is not Failure.BUDGET_BLOCKED:
            result = ChatResult(
                text=route.fallback_response,
                finish_reason=FinishReason.STOP,
                response_model="fallback",
                status_code=200,
                usage=Usage(0, 0),
            )
            run.notes.append("served the route's fallback response")
            event = self._record(run, result, failure, loop, status=200, fallback=True)
            return GatewayResponse(result, event, "fallback", run.attempts, run.cache)
        status = _STATUS.get(failure, 502)
        if failure is Failure.CLIENT_ERROR and run.last_status and 400 <= run.last_status < 500:
            status = run.last_status
        retry_after = run.retry_after
        if failure is Failure.BREAKER_OPEN:
            until = [
                s.open_until
                for s in (self._board.get(t).snapshot() for t in run.skipped_open)
                if s.open_until
            ]
            retry_after = max(0.0, min(until) - self._clock()) if until else None
        event = self._record(run, None, failure, loop, status=status)
        raise GatewayError(failure, message, status_code=status, event=event, retry_after_s=retry_after)

    def _bill_partial(self, run: _Run, target: Target, partial: ChatResult | None) -> None:
        """Count what a failed call was billed (tokens it produced) into the request's cost."""
        if partial is None:
            return
        usage = partial.usage
        text = partial.text + "".join(c.arguments for c in partial.tool_calls)
        if usage is not None and (usage.output_tokens or usage.input_tokens):
            inp, out = usage.input_tokens, usage.output_tokens
            cr, cw = usage.cache_read_tokens, usage.cache_write_tokens
            # Usage reported early (Anthropic's message_start) lags the text that followed it.
            counted = count_text(text, target.model).tokens if text else 0
            if counted > out:
                out = counted
                run.billed_estimated = True
        elif partial.produced_output:
            inp = run.input_tokens
            out = count_text(text, target.model).tokens if text else 0
            cr = cw = 0
            run.billed_estimated = True
        else:
            return
        provider = self._state.providers.get(target.provider)
        kind = provider.kind.value if provider is not None else None
        cost = self._pricer.cost(
            target.model,
            kind,
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=cr,
            cache_write_tokens=cw,
            override=target.price,
        )
        run.billed_in += inp
        run.billed_out += out
        if cost is None:
            run.billed_unknown = True
        else:
            run.billed_cost += cost

    def _record(
        self,
        run: _Run,
        result: ChatResult | None,
        failure: Failure,
        loop: asyncio.AbstractEventLoop,
        *,
        status: int | None = None,
        cached: _Cached | None = None,
        partial: ChatResult | None = None,
        fallback: bool = False,
    ) -> Event:
        """Build the request's one event, count it, charge budgets and queue it for the store."""
        req = run.req
        route = run.route
        target = run.target
        elapsed = loop.time() - run.m_start
        provider = self._state.providers.get(target.provider) if target is not None else None
        kind = provider.kind.value if provider is not None else None
        tags = req.tags if isinstance(req.tags, dict) else dict(req.tags)
        ev = Event(
            ts_start=run.t_start,
            ts_end=run.t_start + elapsed,
            source=self._source,
            provider=target.provider if target is not None else "",
            model=target.model if target is not None else "",
            route=req.route,
            feature=req.feature,
            user=req.user,
            tags=dict(tags),
            prompt_name=req.prompt_name,
            prompt_version=req.prompt_version,
            stream=run.streaming,
            failure=failure,
            attempts=run.attempts,
            targets_tried=list(run.targets_tried),
            latency_ms=elapsed * 1000.0,
            ttft_ms=run.ttft_ms,
            breaker_state=run.breaker_state,
        )
        cost: float | None = None
        # "provider": the tokens priced are the provider's own usage; "estimated": we counted them
        # (or nothing was billed: a cache hit, a failure that produced nothing).
        source = CostSource.ESTIMATED
        if cached is not None:
            ev.cache_hit = CacheHit.EXACT
            ev.provider, ev.model = cached.provider, cached.model
            ev.response_model = cached.result.response_model
            ev.status_code = 200
            cost = 0.0
            ev.tags["cache_saved_usd"] = (
                f"{cached.cost_usd:.8f}" if cached.cost_usd is not None else "unknown"
            )
            ev.attempts = 0
        elif result is not None and not fallback:
            ev.response_model = result.response_model
            ev.status_code = result.status_code or 200
            usage = result.usage
            source = CostSource.PROVIDER
            if usage is None:
                text = result.text + "".join(c.arguments for c in result.tool_calls)
                usage = Usage(
                    run.input_tokens, count_text(text, target.model).tokens if text and target else 0
                )
                source = CostSource.ESTIMATED
            ev.input_tokens = usage.input_tokens + run.billed_in
            ev.output_tokens = usage.output_tokens + run.billed_out
            ev.cache_read_tokens = usage.cache_read_tokens
            ev.cache_write_tokens = usage.cache_write_tokens
            ev.reasoning_tokens = usage.reasoning_tokens
            if target is not None:
                cost = self._pricer.cost(
                    target.model,
                    kind,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    override=target.price,
                )
                if cost is not None:
                    cost = None if run.billed_unknown else cost + run.billed_cost
            if run.billed_estimated:
                source = CostSource.ESTIMATED
        else:
            ev.status_code = status if status is not None else (run.last_status or _STATUS.get(failure))
            if fallback:
                ev.response_model = "fallback"
            ev.input_tokens = run.billed_in
            ev.output_tokens = run.billed_out
            if (run.billed_in or run.billed_out) and not run.billed_estimated:
                source = CostSource.PROVIDER  # a broken stream whose usage had arrived
            # A failure that produced nothing cost nothing: a known zero, not an unknown.
            cost = None if run.billed_unknown else run.billed_cost
        ev.cost_usd = cost
        ev.cost_source = source
        if failure is not Failure.NONE and run.notes:
            ev.error_message = _sanitize("; ".join(run.notes))[:2000]
        if failure is Failure.QUALITY_FAIL:
            ev.error_message = _sanitize(run.notes[-1]) if run.notes else "quality check failed"
        if route is not None and route.store_text:
            msgs = (
                req.messages
                if req.system is None
                else [{"role": "system", "content": req.system}, *req.messages]
            )
            ev.input_text = _sanitize(json.dumps(msgs, ensure_ascii=False, default=str))
            if result is not None:
                ev.output_text = _sanitize(result.text)
            elif partial is not None:
                ev.output_text = _sanitize(partial.text)
        self._count_event(ev, route.name if route is not None else req.route, target.name if target else "")
        # Budgets: every budget the request falls in is charged (cache hits cost nothing).
        if self._book.budgets and cached is None:
            usd = ev.cost_usd or 0.0
            tokens = ev.input_tokens + ev.output_tokens
            if usd or tokens:
                ctx = RequestContext(
                    route=req.route,
                    feature=req.feature,
                    user=req.user,
                    tags=req.tags,
                    provider=target.provider if target is not None else None,
                    model=target.model if target is not None else None,
                )
                for w in self._book.charge(ctx, usd, tokens, self._clock()):
                    self._fire_warning(w)
        self._writer.enqueue(ev)
        for fn in self._event_listeners:
            try:
                fn(ev)
            except Exception:
                log.exception("an event listener failed")
        return ev

    def _count_event(self, ev: Event, route: str, target: str) -> None:
        s = self._stats
        s.events_recorded += 1
        key = (route, target, ev.failure.value)
        s.requests[key] = s.requests.get(key, 0) + 1
        lk = key  # latency by route, target and failure: a timeout's 30 s never hides in a success's series
        buckets = s.latency.get(lk)
        if buckets is None:
            buckets = s.latency[lk] = [0] * (len(LATENCY_BUCKETS) + 1)
        secs = (ev.latency_ms or 0.0) / 1000.0
        buckets[bisect.bisect_left(LATENCY_BUCKETS, secs)] += 1
        s.latency_sum[lk] = s.latency_sum.get(lk, 0.0) + secs
        if ev.cost_usd:
            s.cost_usd += ev.cost_usd

    # --- budgets warnings ----------------------------------------------------------------------------

    def _fire_warning(self, w: BudgetWarning) -> None:
        """Announce a warning level once per period: remembered here at once, claimed in the store."""
        fired = self._book.fired
        budget = next((b for b in self._book.budgets if b.name == w.budget), None)
        if budget is not None and w.level in fired(budget, w.period_start):
            return
        self._book.mark_fired(w.budget, w.period_start, w.level)
        if self._store is None:
            self._announce(w)
            return
        engine = self._store.engine

        async def claim() -> None:
            try:
                first = await self._writer.call(
                    lambda: record_budget_warning(
                        engine, w.budget, w.period_start, w.level, now=self._clock()
                    )
                )
            except Exception as exc:
                log.warning("cannot record budget warning in the store (%s); announcing it anyway", exc)
                first = True
            if first:
                self._announce(w)

        task = asyncio.get_running_loop().create_task(claim())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _announce(self, w: BudgetWarning) -> None:
        self.budget_warnings.append(w)
        log.warning("budget %s: %s", w.budget, w.message)
        for fn in self._warning_listeners:
            try:
                fn(w)
            except Exception:
                log.exception("a budget warning listener failed")

    # --- breakers ------------------------------------------------------------------------------------

    def _on_transition(self, t: Transition) -> None:
        self.transitions.append(t)
        log.info(
            "breaker %s: %s -> %s (%s: %s)",
            t.target,
            t.from_state.value,
            t.to_state.value,
            t.cause.value,
            t.detail,
        )
        self._writer.enqueue_transition(
            BreakerTransition(
                t.target,
                t.ts,
                t.from_state.value,
                t.to_state.value,
                t.cause.value,
                {"detail": t.detail, "forced": t.forced},
            )
        )

    def _healthy(self, target: str) -> bool:
        return self._board.get(target).effective_state is not BreakerState.OPEN

    def _note_latency(self, target: str, latency: float) -> None:
        d = self._latency.get(target)
        if d is None:
            d = self._latency[target] = deque(maxlen=200)
        d.append(latency)

    def _p95(self, target: str) -> float | None:
        now = time.monotonic()
        hit = self._p95_cache.get(target)
        if hit is not None and now - hit[0] < 1.0:
            return hit[1]
        d = self._latency.get(target)
        value = None
        if d and len(d) >= 5:
            xs = sorted(d)
            value = xs[min(len(xs) - 1, math.ceil(0.95 * len(xs)) - 1)]
        self._p95_cache[target] = (now, value)
        return value


# --- helpers ----------------------------------------------------------------------------------------


def _request(req: GatewayRequest | None, fields: dict[str, Any]) -> GatewayRequest:
    if req is None:
        if "prompt" in fields:
            fields = dict(fields)
            ref = fields.pop("prompt")
            if ref is not None:
                name, number = parse_ref(ref)  # PromptError (a ValueError) names what is wrong
                fields["prompt_name"], fields["prompt_version"] = name, number
        if fields.get("prompt_name") is not None:
            fields.setdefault("messages", [])
        return GatewayRequest(**fields)
    if fields:
        raise TypeError("give a GatewayRequest or keyword fields, not both")
    return req


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            return f"messages[{i}] must be an object with a role and content"
        role = m.get("role")
        if not isinstance(role, str) or not role:
            return f"messages[{i}] has no role"
    return None


def _chat_request(req: GatewayRequest, route: Route) -> ChatRequest:
    params = req.params or {}
    cap = route.max_output_tokens
    asked = next((params[k] for k in _MAX_TOKEN_KEYS if params.get(k) is not None), None)
    max_out = asked if cap is None else (cap if asked is None else min(int(asked), cap))
    extra = {k: v for k, v in params.items() if k not in _NOT_EXTRA and v is not None}
    metadata = params.get("metadata")
    return ChatRequest(
        model="",
        messages=req.messages,
        system=req.system if req.system is not None else params.get("system"),
        max_output_tokens=max_out,
        temperature=params.get("temperature"),
        top_p=params.get("top_p"),
        stop=params.get("stop"),
        tools=params.get("tools"),
        tool_choice=params.get("tool_choice"),
        response_format=params.get("response_format"),
        stream=req.stream,
        user=req.user if req.user is not None else params.get("user"),
        metadata=metadata if isinstance(metadata, dict) else None,
        extra=extra,
    )


def _key_params(c: ChatRequest) -> dict[str, Any]:
    return {
        "max_output_tokens": c.max_output_tokens,
        "temperature": c.temperature,
        "top_p": c.top_p,
        "stop": c.stop,
        "tools": c.tools,
        "tool_choice": c.tool_choice,
        "response_format": c.response_format,
        **c.extra,
    }


def _describe(exc: ProviderError) -> str:
    status = f" (HTTP {exc.status_code})" if exc.status_code is not None else ""
    return f"{exc.failure.value}{status}: {exc.message}"


def _quality_problem(result: ChatResult, creq: ChatRequest | None) -> str | None:
    """Why a 200 answer is not a usable one (semantics.md: the silent failure), or ``None``."""
    if result.refusal or result.finish_reason is FinishReason.REFUSAL:
        return "the model refused"
    if result.finish_reason is FinishReason.CONTENT_FILTER:
        return "the answer was stopped by a content filter"
    if not result.text and not result.tool_calls:
        return "the answer is empty"
    if result.finish_reason is FinishReason.LENGTH:
        return "the answer was cut off at the output token limit"
    fmt = creq.response_format if creq is not None else None
    if fmt and fmt.get("type") in ("json_object", "json_schema") and not result.tool_calls:
        try:
            json.loads(result.text)
        except ValueError:
            return "JSON was asked for but the answer is not valid JSON"
    return None


def _sanitize(text: str) -> str:
    return _SECRET.sub("***", text)
