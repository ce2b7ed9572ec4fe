"""Synthetic events for the UI tests and screenshots: varied, deterministic, cheap to make in bulk."""

from __future__ import annotations

import random

from app.core.event import CacheHit, CostSource, Event, Failure
from app.core.ids import derived_event_id

PROVIDERS = (
    ("openai", "gpt-4o-mini", "fast"),
    ("openai", "gpt-4o", "strong"),
    ("anthropic", "claude-3-5-haiku", "haiku"),
)
ROUTES = ("default", "search", "summarize")
FEATURES = ("chat", "search", "digest")
USERS = ("ana", "bo", "chen", "dara", None)
FAILURES = (
    Failure.TIMEOUT,
    Failure.RATE_LIMITED,
    Failure.SERVER_ERROR,
    Failure.CLIENT_ERROR,
    Failure.BREAKER_OPEN,
)
STATUS = {
    Failure.NONE: 200,
    Failure.TIMEOUT: None,
    Failure.RATE_LIMITED: 429,
    Failure.SERVER_ERROR: 500,
    Failure.CLIENT_ERROR: 400,
    Failure.BREAKER_OPEN: None,
}


def make_events(n: int, *, end: float, span_s: float = 3600.0, seed: int = 7) -> list[Event]:
    """``n`` events spread over ``[end - span_s, end)``, about 8% failed, a few with text stored."""
    rng = random.Random(seed)
    out: list[Event] = []
    step = span_s / max(n, 1)
    for i in range(n):
        ts = end - span_s + i * step
        provider, model, target = PROVIDERS[i % 3]
        failure = FAILURES[i % len(FAILURES)] if rng.random() < 0.08 else Failure.NONE
        latency = rng.lognormvariate(6.3, 0.5)
        input_tokens = int(rng.lognormvariate(6.5, 0.8))
        output_tokens = 0 if failure is not Failure.NONE else int(rng.lognormvariate(5.0, 0.7))
        with_text = i % 50 == 0
        out.append(
            Event(
                ts_start=ts,
                ts_end=ts + latency / 1000,
                event_id=derived_event_id(ts, f"ui-test-{seed}-{i}"),
                provider=provider,
                model=model,
                response_model=f"{model}-2024-07-18" if provider == "openai" else model,
                route=ROUTES[i % 3],
                feature=FEATURES[(i // 3) % 3],
                user=USERS[i % 5],
                tags={"env": "prod"},
                stream=i % 4 == 0,
                status_code=STATUS[failure],
                failure=failure,
                error_message=None if failure is Failure.NONE else f"upstream said {failure.value}",
                attempts=1 if failure is Failure.NONE else 3,
                targets_tried=[target] if failure is Failure.NONE else [target, "strong", "haiku"],
                latency_ms=latency,
                ttft_ms=latency * 0.3 if i % 4 == 0 else None,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=None
                if provider == "anthropic" and i % 7 == 0
                else (input_tokens + 4 * output_tokens) * 1e-7,
                cost_source=CostSource.ESTIMATED,
                cache_hit=CacheHit.EXACT if i % 23 == 0 else CacheHit.NONE,
                breaker_state="closed",
                input_text="Summarize the meeting notes in three bullet points." if with_text else None,
                output_text="- Budget approved\n- Launch moved to May\n- Hiring paused"
                if with_text
                else None,
            )
        )
    return out
