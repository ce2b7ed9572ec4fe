"""The event: one row per request (semantics.md section 9) and the failure taxonomy (section 2)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.core.ids import new_event_id


class Failure(StrEnum):
    """What went wrong with a request.  The order is the legend order everywhere (ui.md)."""

    NONE = "none"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    CONNECTION_ERROR = "connection_error"
    BREAKER_OPEN = "breaker_open"
    BUDGET_BLOCKED = "budget_blocked"
    GUARDRAIL_BLOCKED = "guardrail_blocked"
    QUALITY_FAIL = "quality_fail"

    @property
    def retryable(self) -> bool:
        """Semantics 4: retried on timeout, rate limit, overload, 5xx and connection errors."""
        return self in RETRYABLE

    @property
    def counts_for_breaker(self) -> bool:
        """Semantics 5: the caller's and the prompt's problems do not trip a breaker."""
        return self in RETRYABLE


RETRYABLE = frozenset(
    {
        Failure.TIMEOUT,
        Failure.RATE_LIMITED,
        Failure.OVERLOADED,
        Failure.SERVER_ERROR,
        Failure.CONNECTION_ERROR,
    }
)

#: Failure types in legend order, without ``none``.
FAILURE_TYPES: tuple[Failure, ...] = tuple(f for f in Failure if f is not Failure.NONE)


def classify_status(status: int, error_type: str | None = None) -> Failure:
    """Map an HTTP status (and the provider's error type, when known) to the taxonomy."""
    et = (error_type or "").lower()
    if status == 429 or et in {"rate_limit_error", "rate_limit_exceeded"}:
        return Failure.RATE_LIMITED
    if status in (503, 529) or et == "overloaded_error":
        return Failure.OVERLOADED
    if status == 408:
        return Failure.TIMEOUT
    if 500 <= status < 600:
        return Failure.SERVER_ERROR
    if 400 <= status < 500:
        return Failure.CLIENT_ERROR
    if 200 <= status < 300:
        return Failure.NONE
    return Failure.SERVER_ERROR


class CostSource(StrEnum):
    PROVIDER = "provider"
    ESTIMATED = "estimated"


class CacheHit(StrEnum):
    NONE = "none"
    EXACT = "exact"
    SEMANTIC = "semantic"


@dataclass(slots=True)
class Event:
    """One request, as the gateway or a log source saw it.

    Times are epoch seconds (UTC).  ``cost_usd`` is ``None`` when the price is
    unknown: never a silent zero.  Secrets never appear in any field.
    """

    ts_start: float
    ts_end: float
    source: str = "gateway"
    provider: str = ""
    model: str = ""
    event_id: str = field(default_factory=new_event_id)
    response_model: str | None = None
    route: str | None = None
    feature: str | None = None
    user: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    prompt_name: str | None = None
    prompt_version: int | None = None
    stream: bool = False
    status_code: int | None = None
    failure: Failure = Failure.NONE
    error_message: str | None = None
    attempts: int = 1
    targets_tried: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    cost_source: CostSource = CostSource.ESTIMATED
    cache_hit: CacheHit = CacheHit.NONE
    breaker_state: str | None = None
    input_text: str | None = None
    output_text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, in our own JSONL event format."""
        d = dataclasses.asdict(self)
        d["failure"] = self.failure.value
        d["cost_source"] = self.cost_source.value
        d["cache_hit"] = self.cache_hit.value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Build an event from our own format; raises ``ValueError`` on a malformed record."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            kwargs["failure"] = Failure(kwargs.get("failure", "none"))
            kwargs["cost_source"] = CostSource(kwargs.get("cost_source", "estimated"))
            kwargs["cache_hit"] = CacheHit(kwargs.get("cache_hit", "none"))
            for name in ("ts_start", "ts_end"):
                if not isinstance(kwargs.get(name), int | float) or isinstance(kwargs.get(name), bool):
                    raise ValueError(f"{name} must be a number of epoch seconds")
            return cls(**kwargs)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"not an event: {exc}") from exc


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Event))
