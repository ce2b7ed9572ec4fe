"""The demo's traffic generator: realistic requests at a rate that rises and falls.

Pure asyncio and :mod:`app.core` only: the generator knows nothing of the
gateway.  It builds :class:`RequestSpec` values and hands each one to an
injected ``send(spec)`` coroutine function (the demo passes one that calls the
in-process gateway), so the simulator package stays free of the data plane::

    gen = TrafficGenerator(send, seed=7)
    task = asyncio.create_task(gen.run())
    ...
    await gen.stop()

What the traffic looks like, deterministic for a seed:

- several routes and features (``default``/chat, ``search``/search,
  ``summarize``/summarize and support-bot), each with its own share;
- a few dozen users with a skewed (Zipf-like) share of the traffic, so the
  top-N views have a head and a tail;
- a rate that swings smoothly between ``base_rps`` and ``peak_rps`` over
  ``period_s`` seconds, with a little jitter, and Poisson arrivals;
- some streamed requests, and now and then a very long prompt (thousands of
  tokens) that the routes send to a stronger target and the outlier views
  pick out.

Stopping drains: no new arrivals, and the requests already sent get
``grace_s`` to finish.  Only those still outstanding after that are
cancelled, and :meth:`TrafficGenerator.cancelled_by_stop` lets whoever
records events tell such a cancellation (the generator's own doing, not
the traffic's) from a caller that gave up.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request the generator wants sent: everything a gateway request needs, nothing of the gateway."""

    route: str
    feature: str
    user: str
    messages: list[dict[str, Any]]
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    long_prompt: bool = False


SendFn = Callable[[RequestSpec], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of request: its route and feature, its share of traffic, how it asks."""

    route: str
    feature: str
    weight: float
    system: str
    prompts: tuple[str, ...]
    stream_share: float = 0.3
    max_tokens: int = 200


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        route="default",
        feature="chat",
        weight=0.45,
        system="You are a helpful assistant for Acme's customers.",
        prompts=(
            "What is the capital of France?",
            "How do I reset my password?",
            "Explain the difference between a savings and a checking account.",
            "Write a short, friendly reply thanking a customer for their order.",
            "What are your opening hours on public holidays?",
            "Can you translate 'good morning' into Spanish and German?",
        ),
        stream_share=0.5,
        max_tokens=300,
    ),
    Workload(
        route="search",
        feature="search",
        weight=0.25,
        system="Rewrite the user's query into precise search keywords.",
        prompts=(
            "cheap flights to lisbon in may",
            "how long to boil an egg soft",
            "best laptop for data science under 1500",
            "return policy for damaged items",
            "nearest store open now",
        ),
        stream_share=0.0,
        max_tokens=400,
    ),
    Workload(
        route="summarize",
        feature="summarize",
        weight=0.2,
        system="Summarize the text in three sentences or fewer.",
        prompts=(
            "Ticket #4821: the customer reports that the mobile app logs them out every few minutes "
            "since the last update; they reinstalled twice and cleared the cache without success.",
            "Meeting notes: the team agreed to move the launch by two weeks to finish the payment "
            "integration; marketing will update the campaign dates and support gets a briefing.",
            "Review: the blender is powerful and easy to clean, but loud, and the lid cracked after a month.",
        ),
        stream_share=0.2,
        max_tokens=200,
    ),
    Workload(
        route="default",
        feature="support-bot",
        weight=0.1,
        system="You are Acme's support bot. Answer briefly; escalate when unsure.",
        prompts=(
            "My parcel says delivered but I don't have it.",
            "I was charged twice for the same order.",
            "How do I change the delivery address?",
        ),
        stream_share=0.6,
        max_tokens=250,
    ),
)

#: Users, most active first; their shares follow a Zipf-like curve.
USERS: tuple[str, ...] = tuple(f"user-{i:03d}" for i in range(1, 41))
_USER_WEIGHTS: tuple[float, ...] = tuple(1.0 / (i**1.1) for i in range(1, len(USERS) + 1))

_FILLER = (
    "The quarterly report covers revenue, churn, support volume and infrastructure cost across all "
    "regions, with a breakdown by product line and a comparison against the previous quarter. "
)


def long_document(rng: random.Random, min_words: int = 4000, max_words: int = 9000) -> str:
    """A very long prompt (several thousand tokens): a document pasted whole."""
    words = rng.randint(min_words, max_words)
    filler_words = _FILLER.split()
    reps = words // len(filler_words) + 1
    return " ".join((filler_words * reps)[:words])


_WORKLOAD_CUM = tuple(itertools.accumulate(w.weight for w in WORKLOADS))
_USER_CUM = tuple(itertools.accumulate(_USER_WEIGHTS))


def pick_workload(rng: random.Random) -> Workload:
    return WORKLOADS[bisect.bisect(_WORKLOAD_CUM, rng.random() * _WORKLOAD_CUM[-1])]


def pick_user(rng: random.Random) -> str:
    return USERS[bisect.bisect(_USER_CUM, rng.random() * _USER_CUM[-1])]


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    """How much traffic, and how it moves."""

    base_rps: float = 3.0  # the trough of the swing
    peak_rps: float = 10.0  # the crest
    period_s: float = 90.0  # one rise and fall
    jitter: float = 0.15  # relative noise on the rate
    long_prompt_share: float = 0.02  # requests carrying a very long document
    max_in_flight: int = 64  # requests outstanding at once; arrivals beyond it are skipped and counted

    def __post_init__(self) -> None:
        if self.base_rps < 0 or self.peak_rps < self.base_rps:
            raise ValueError("need 0 <= base_rps <= peak_rps")
        if self.period_s <= 0:
            raise ValueError("period_s must be positive")
        if not 0 <= self.long_prompt_share <= 1:
            raise ValueError("long_prompt_share must be between 0 and 1")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")


def rate_at(t: float, profile: TrafficProfile) -> float:
    """The smooth part of the rate (requests/s) ``t`` seconds after the start: trough at 0, crest at half a period."""
    swing = 0.5 - 0.5 * math.cos(2 * math.pi * t / profile.period_s)
    return profile.base_rps + (profile.peak_rps - profile.base_rps) * swing


class SpecMaker:
    """Draws request specs from a seeded generator: the same seed gives the same sequence."""

    def __init__(self, seed: int = 0, *, long_prompt_share: float = 0.02) -> None:
        self._rng = random.Random(seed)
        self._long_share = long_prompt_share

    def next(self) -> RequestSpec:
        rng = self._rng
        wl = pick_workload(rng)
        user = pick_user(rng)
        text = rng.choice(wl.prompts)
        long_prompt = rng.random() < self._long_share
        if long_prompt:
            text = "Summarize this document:\n\n" + long_document(rng)
        stream = rng.random() < wl.stream_share
        params: dict[str, Any] = {"max_output_tokens": wl.max_tokens}
        if wl.feature == "search":
            params["temperature"] = 0.0
        else:
            params["temperature"] = 0.7
        return RequestSpec(
            route=wl.route,
            feature=wl.feature,
            user=user,
            messages=[{"role": "user", "content": text}],
            system=wl.system,
            params=params,
            stream=stream,
            tags={"app": "acme-web" if rng.random() < 0.7 else "acme-mobile"},
            long_prompt=long_prompt,
        )


@dataclass(slots=True)
class TrafficStats:
    sent: int = 0  # handed to send()
    completed: int = 0  # send() returned
    failed: int = 0  # send() raised
    skipped: int = 0  # arrivals dropped because max_in_flight were outstanding
    cancelled: int = 0  # still outstanding when stop()'s grace ran out, and cancelled
    long_prompts: int = 0
    in_flight: int = 0


class TrafficGenerator:
    """Sends :class:`RequestSpec` values through ``send`` at a rising and falling rate until stopped."""

    def __init__(
        self,
        send: SendFn,
        *,
        seed: int = 0,
        profile: TrafficProfile | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.profile = profile or TrafficProfile()
        self._specs = SpecMaker(seed, long_prompt_share=self.profile.long_prompt_share)
        self._rng = random.Random(seed ^ 0x5EED)
        self._clock = clock
        self._t0: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._running = False
        self.stats = TrafficStats()

    @property
    def running(self) -> bool:
        return self._running

    def current_rate(self) -> float:
        """The smooth target rate now (requests/s)."""
        t = 0.0 if self._t0 is None else self._clock() - self._t0
        return rate_at(t, self.profile)

    def next_spec(self) -> RequestSpec:
        return self._specs.next()

    async def run(self) -> None:
        """Generate until :meth:`stop` (or cancellation).  Arrivals are Poisson at the current rate."""
        self._running = True
        self._stopping.clear()
        self._t0 = self._clock()
        try:
            while not self._stopping.is_set():
                rate = self.current_rate() * (1.0 + self.profile.jitter * (2 * self._rng.random() - 1))
                wait = self._rng.expovariate(rate) if rate > 0 else 0.5
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=min(wait, 1.0))
                    break
                if wait > 1.0:  # a long gap: re-read the rate instead of sleeping through a rise
                    continue
                self._launch()
        finally:
            self._running = False

    def _launch(self) -> None:
        if self._stopping.is_set():  # stop() came while we slept: it has already collected the requests
            return
        spec = self.next_spec()
        if len(self._tasks) >= self.profile.max_in_flight:
            self.stats.skipped += 1
            return
        self.stats.sent += 1
        if spec.long_prompt:
            self.stats.long_prompts += 1
        task = asyncio.get_running_loop().create_task(self._one(spec), name="controlroom-demo-request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, spec: RequestSpec) -> None:
        self.stats.in_flight += 1
        try:
            await self._send(spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed request is normal traffic; the gateway recorded it
            self.stats.failed += 1
            log.debug("demo request failed: %s", type(exc).__name__)
        else:
            self.stats.completed += 1
        finally:
            self.stats.in_flight -= 1

    def cancelled_by_stop(self, task: asyncio.Task[Any] | None = None) -> bool:
        """Whether ``task`` (default: the current one) is a request :meth:`stop` is cancelling."""
        if task is None:
            try:
                task = asyncio.current_task()
            except RuntimeError:  # no running loop: not one of ours
                return False
        return task is not None and task in self._cancelled

    async def stop(self, grace_s: float = 2.0) -> int:
        """Stop new arrivals; give outstanding requests ``grace_s`` to finish, then cancel the rest.

        Returns how many were cancelled (also in ``stats.cancelled``).
        """
        self._stopping.set()
        pending = [t for t in self._tasks if not t.done()]
        if not pending:
            return 0
        _done, still = await asyncio.wait(pending, timeout=grace_s)
        if not still:
            return 0
        self._cancelled.update(still)
        try:
            for t in still:
                t.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        finally:
            self._cancelled.difference_update(still)
        self.stats.cancelled += len(still)
        return len(still)
