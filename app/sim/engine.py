"""The simulator's brain, free of HTTP: the active scenario, the request counter, fault and latency draws,
prices, the prompt cache and the ledger.

Determinism: a request's fault and latency come from ``Random(f"{seed}:{seq}")``
where ``seq`` counts API requests since start or reset; its answer comes from
``Random`` seeded by the seed, the model, the prompt and the choice index — so
the same seed and the same sequence of requests give the same answers and
faults, and the same prompt gets the same answer wherever it falls in the
sequence.  Time-based weather (outage windows, rate-limit buckets) follows the
clock, as it would in production.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.core.pricing import PriceOverride, price_call
from app.sim.ledger import Ledger, Served
from app.sim.ratelimit import RateLimiter, Verdict
from app.sim.scenario import FAULTS, STREAM_ONLY_FAULTS, Profile, Scenario, load_scenario

#: Prompts shorter than this are never cached (both providers' documented minimum).
CACHE_MIN_TOKENS = 1024
OPENAI_CACHE_TTL = 300.0
#: The request limit announced on an injected 429 when the scenario sets no limits.
NOMINAL_RPM = 10_000
_CACHE_MAX_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one request: its fault (or none) and its timing."""

    fault: str | None
    ttft: float
    tokens_per_s: float  # 0 = no pacing
    retry_after: float | None
    verdict: Verdict | None  # rate-limit state, for the headers
    limit_kind: str | None  # "requests" | "tokens" when a real limit refused it
    cut_after: int  # chunks sent before a stream_cut / stream_error / malformed chunk
    hang_seconds: float

    def generation_time(self, tokens: int) -> float:
        return tokens / self.tokens_per_s if self.tokens_per_s > 0 else 0.0


@dataclass(slots=True)
class _Weather:
    scenario: Scenario
    started: float
    limiter: RateLimiter
    count: int = 0  # decisions since activation, for the scripted sequence


class SimEngine:
    def __init__(self, scenario: Any = "instant", seed: int = 0, *, max_records: int = 100_000) -> None:
        self.seed = int(seed)
        self.ledger = Ledger(max_records)
        self._lock = threading.Lock()
        self._weather = _Weather(load_scenario(scenario), time.monotonic(), RateLimiter())
        self._seq = 0
        self._cache: dict[str, float] = {}  # prompt-cache key -> expiry (monotonic)
        self.started_at = time.time()

    # --- scenario and counters ---------------------------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        return self._weather.scenario

    def set_scenario(self, spec: Any) -> Scenario:
        """Switch the weather now; outage windows and the sequence restart from this moment."""
        scenario = load_scenario(spec)
        self._weather = _Weather(scenario, time.monotonic(), RateLimiter())
        return scenario

    def reset(self) -> None:
        """Forget everything served: counter, ledger, prompt cache, buckets; restart the scenario clock."""
        with self._lock:
            self._seq = 0
            self._cache.clear()
        self.ledger.clear()
        self._weather = _Weather(self._weather.scenario, time.monotonic(), RateLimiter())

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def elapsed(self) -> float:
        return time.monotonic() - self._weather.started

    # --- randomness ----------------------------------------------------------------------------------

    def request_rng(self, seq: int) -> random.Random:
        return random.Random(f"{self.seed}:{seq}")

    def answer_rng(self, model: str, prompt: str, choice: int) -> random.Random:
        digest = hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return random.Random(f"{self.seed}|{model}|{digest}|{choice}")

    def make_id(self, seq: int, kind: str, size: int = 24) -> str:
        return hashlib.blake2b(f"{self.seed}:{seq}:{kind}".encode(), digest_size=size // 2 + 1).hexdigest()[
            :size
        ]

    # --- faults and timing ---------------------------------------------------------------------------

    def decide(
        self,
        seq: int,
        provider: str,
        model: str,
        profile: Profile,
        tokens: int,
        *,
        stream: bool,
        forced: str | None,
    ) -> Decision:
        weather = self._weather
        scenario = weather.scenario
        options = scenario.fault_options
        rng = self.request_rng(seq)
        # Draw everything first, in a fixed order, so one knob never shifts the others' draws.
        u_fault, u_outage = rng.random(), rng.random()
        ttft = profile.ttft.sample(rng)
        tps = profile.tokens_per_s.sample(rng)
        cut_after = rng.randint(*options.cut_after_chunks)
        n = weather.count
        weather.count += 1

        fault = forced if forced in FAULTS else None
        if fault is None and n < len(scenario.sequence):
            fault = scenario.sequence[n]
        if fault is None:
            elapsed = time.monotonic() - weather.started
            for outage in scenario.outages:
                if outage.applies(provider, model, elapsed):
                    fault = outage.fault if u_outage < outage.rate else None
                    break
        verdict: Verdict | None = None
        limit_kind: str | None = None
        retry_after: float | None = None
        if profile.limits.rpm or profile.limits.tpm:
            verdict = weather.limiter.admit(provider, model, profile.limits, tokens, consume=fault is None)
            if fault is None and not verdict.allowed:
                fault, limit_kind = "rate_limit", verdict.kind
                retry_after = min(verdict.retry_after, 3600.0)
        if fault is None:
            edge = 0.0
            for name in FAULTS:
                edge += profile.faults.get(name, 0.0)
                if u_fault < edge:
                    fault = name
                    break
        if fault in STREAM_ONLY_FAULTS and not stream:
            fault = None
        if fault in ("rate_limit", "unavailable", "overloaded") and retry_after is None:
            retry_after = options.retry_after
        if fault == "rate_limit" and verdict is None:
            # An injected 429 on a model with no configured limits still carries request-limit headers,
            # as a real 429 does; the limit figure is nominal.
            wait = retry_after or 0.0
            verdict = Verdict(
                allowed=False,
                kind="requests",
                retry_after=wait,
                rpm=NOMINAL_RPM,
                rpm_remaining=0,
                rpm_reset=wait,
                tpm=None,
                tpm_remaining=0,
                tpm_reset=0.0,
            )
        return Decision(
            fault=fault,
            ttft=max(ttft, 0.0),
            tokens_per_s=max(tps, 0.0),
            retry_after=retry_after,
            verdict=verdict,
            limit_kind=limit_kind,
            cut_after=cut_after,
            hang_seconds=options.hang_seconds,
        )

    # --- prompt cache --------------------------------------------------------------------------------

    def cache_seen(self, key: str, ttl: float) -> bool:
        """Whether ``key`` is cached now; (re)writes it with ``ttl`` either way."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key, 0.0) > now
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v > now}
                if len(self._cache) >= _CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[key] = now + ttl
        return hit

    def cache_peek(self, key: str) -> bool:
        with self._lock:
            return self._cache.get(key, 0.0) > time.monotonic()

    # --- prices and records --------------------------------------------------------------------------

    def price(
        self,
        provider: str,
        model: str,
        profile: Profile,
        *,
        uncached_input: int,
        cache_read: int = 0,
        cache_write: int = 0,
        output: int = 0,
    ) -> tuple[float | None, dict[str, float]]:
        """Total USD and per line item (input, cached_input, cache_write, output); None when unknown."""
        items: dict[str, float] = {}
        for item, n in (
            ("input", uncached_input),
            ("cached_input", cache_read),
            ("cache_write", cache_write),
            ("output", output),
        ):
            if n <= 0:
                continue
            usd = _component_price(provider, model, item, n, profile.price)
            if usd is None:
                return None, {}
            items[item] = usd
        return sum(items.values()), items

    def record(self, served: Served, costs: dict[str, float] | None = None) -> None:
        self.ledger.add(served, costs)

    def state(self) -> dict[str, Any]:
        scenario = self.scenario
        return {
            "scenario": scenario.name,
            "description": scenario.description,
            "seed": self.seed,
            "elapsed_s": round(self.elapsed(), 3),
            "requests": len(self.ledger),
            "next_seq": self._seq + 1,
            "models": {
                name: {
                    "provider": p.provider,
                    "ttft_s": p.ttft.describe(),
                    "tokens_per_s": p.tokens_per_s.describe(),
                    "faults": {k: v for k, v in p.faults.items() if v},
                    "limits": {"rpm": p.limits.rpm, "tpm": p.limits.tpm},
                }
                for name, p in scenario.models.items()
            },
            "outages": [
                {
                    "provider": o.provider,
                    "model": o.model,
                    "start": o.start,
                    "end": o.end,
                    "fault": o.fault,
                    "rate": o.rate,
                }
                for o in scenario.outages
            ],
        }


@lru_cache(maxsize=65_536)
def _component_price(
    provider: str, model: str, item: str, n: int, override: PriceOverride | None
) -> float | None:
    # One line item priced alone; genai-prices' input total includes cache reads and writes for OpenAI-style
    # usage, and price_call adds them itself for Anthropic-style usage.
    anthropic = provider == "anthropic"
    if item == "input":
        price = price_call(model, provider=provider, input_tokens=n, override=override)
    elif item == "cached_input":
        price = price_call(
            model,
            provider=provider,
            input_tokens=0 if anthropic else n,
            cache_read_tokens=n,
            override=override,
        )
    elif item == "cache_write":
        price = price_call(
            model,
            provider=provider,
            input_tokens=0 if anthropic else n,
            cache_write_tokens=n,
            override=override,
        )
    else:
        price = price_call(model, provider=provider, output_tokens=n, override=override)
    return price.cost_usd
