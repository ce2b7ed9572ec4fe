"""The gateway engine: one request's path through the data plane (semantics.md section 1).

``route -> budget -> cache -> for target in chain: breaker -> attempts with deadline and retries ->
fallback -> exactly one event``.  A library first::

    gw = Gateway(store)                      # or Gateway(None, config=parse_config(text))
    await gw.start()
    resp = await gw.chat(GatewayRequest(route="default", messages=[{"role": "user", "content": "hi"}]))
    await gw.aclose()

Plain asyncio: no threads of its own beyond the event writer's executor thread.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from app.core.breaker import BreakerSnapshot
from app.core.config import ControlConfig
from app.core.event import Event, Failure
from app.providers.base import ChatResult, StreamEvent
from storage.engine import Store

#: ``key_resolver(provider_name, key_ref) -> key or None``.
KeyResolver = Callable[[str, str], str | None]


@dataclass(slots=True)
class GatewayRequest:
    """One call through the gateway.

    ``route`` is a route name, or a target name (then a one-target chain with the default route
    settings).  ``messages`` are OpenAI-style; an Anthropic caller's system prompt goes in
    ``system``.  ``params``: temperature, top_p, max_output_tokens, stop, tools, tool_choice,
    response_format, n, ...  ``deadline_s`` is the caller's own deadline; the route's caps it.
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


@dataclass(slots=True)
class GatewayResponse:
    """The answer: the provider's result, the one event recorded for the request, and how it went."""

    result: ChatResult
    event: Event
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


@dataclass(slots=True)
class GatewayStats:
    """Counters for /metrics (filled in by the implementation)."""

    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (route, target, failure) -> n
    latency_buckets: tuple[float, ...] = ()
    latency: dict[tuple[str, str], list[int]] = field(
        default_factory=dict
    )  # (route, target) -> bucket counts
    latency_sum: dict[tuple[str, str], float] = field(default_factory=dict)
    breakers: list[BreakerSnapshot] = field(default_factory=list)
    budget_spend: dict[str, float] = field(default_factory=dict)
    budget_limit: dict[str, float | None] = field(default_factory=dict)
    events_written: int = 0
    events_pending: int = 0
    events_dropped: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    control_version: int = 0


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
    ) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Load control state from the store (or ``config``), start the sync task and the event writer."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Flush the writer (nothing lost) and close the adapters."""
        raise NotImplementedError

    async def chat(self, req: GatewayRequest) -> GatewayResponse:
        """A non-streaming call; raises :class:`GatewayError`."""
        raise NotImplementedError

    def stream(self, req: GatewayRequest) -> AsyncIterator[StreamEvent | GatewayStreamEnd]:
        """Stream events (TextDelta, ToolCallDelta, UsageUpdate, StreamDone), then a :class:`GatewayStreamEnd`.

        Raises :class:`GatewayError` before the first chunk if no target could start; a failure after
        the first chunk ends the stream with a GatewayError (the event records a billed failure).
        """
        raise NotImplementedError

    def models(self) -> list[str]:
        """Route names and target names (for /v1/models)."""
        raise NotImplementedError

    @property
    def control_version(self) -> int:
        raise NotImplementedError

    def breaker_snapshots(self) -> list[BreakerSnapshot]:
        raise NotImplementedError

    def stats(self) -> GatewayStats:
        raise NotImplementedError
