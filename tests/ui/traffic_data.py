"""Seeded synthetic traffic for the Traffic and Overview tests, the screenshots and the GUI benchmark."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from app.core.event import FAILURE_TYPES, CacheHit, Event, Failure

PROVIDERS = {"openai": ("gpt-4o", "gpt-4o-mini"), "anthropic": ("claude-sonnet",)}
ROUTES = ("default", "search")
FEATURES = ("chat", "summarize")
USERS = ("ana", "ben", "chen")


def synthetic_events(
    start: float, seconds: int, *, per_second: float = 8.0, seed: int = 7
) -> Iterator[Event]:
    """Events ending in ``[start, start + seconds)``: a daily-looking wave, a latency spike, some failures."""
    rng = random.Random(seed)
    for s in range(seconds):
        wave = 1.0 + 0.5 * math.sin(s / 90.0)
        n = max(0, round(rng.gauss(per_second * wave, math.sqrt(per_second))))
        slow = 1.0 + (2.5 if seconds * 0.6 < s < seconds * 0.7 else 0.0)
        for _ in range(n):
            provider = rng.choice(tuple(PROVIDERS))
            model = rng.choice(PROVIDERS[provider])
            latency = rng.lognormvariate(math.log(700), 0.45) * slow
            failure = Failure.NONE
            if rng.random() < 0.06:
                failure = rng.choice(FAILURE_TYPES[:6])
            inp = rng.randint(200, 2400)
            out = 0 if failure is not Failure.NONE else rng.randint(40, 700)
            end = start + s + rng.random() * 0.999
            yield Event(
                ts_start=end - latency / 1000,
                ts_end=end,
                provider=provider,
                model=model,
                route=rng.choice(ROUTES),
                feature=rng.choice(FEATURES),
                user=rng.choice(USERS),
                stream=True,
                status_code=200 if failure is Failure.NONE else 500,
                failure=failure,
                latency_ms=latency,
                ttft_ms=latency * rng.uniform(0.15, 0.4),
                input_tokens=inp,
                output_tokens=out,
                cost_usd=(inp * 2.5 + out * 10) / 1e6,
                cache_hit=CacheHit.EXACT if rng.random() < 0.12 else CacheHit.NONE,
            )
