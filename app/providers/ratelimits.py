"""Rate-limit and retry hints from response headers (wire-formats.md).

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with
resets as Go-style durations (``"20ms"``, ``"6m0s"``); Anthropic sends
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
with resets as RFC 3339 times.  Both send ``retry-after`` (seconds or an HTTP
date) and OpenAI also ``retry-after-ms``, which wins (semantics.md section 4).
Resets and retry hints are normalised to seconds from the response.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

import httpx


@dataclass(frozen=True, slots=True)
class RateWindow:
    """One limited quantity: how much the window allows, what is left, and when it refills."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    requests: RateWindow | None = None
    tokens: RateWindow | None = None
    input_tokens: RateWindow | None = None
    output_tokens: RateWindow | None = None
    retry_after_s: float | None = None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# header suffix -> (window, field)
_WINDOWS = ("requests", "tokens", "input-tokens", "output-tokens")


def parse_duration(value: str) -> float | None:
    """Seconds in an OpenAI reset value (``"1m30.5s"``, ``"20ms"``, or a bare number of seconds)."""
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _DURATION_UNIT[u] for n, u in parts)


def _parse_reset(value: str, now: float) -> float | None:
    if value[:4].isdigit() and "-" in value[:8]:  # RFC 3339 time (Anthropic)
        try:
            return max(datetime.fromisoformat(value.strip()).timestamp() - now, 0.0)
        except ValueError:
            return None
    return parse_duration(value)


def parse_retry_after(retry_after_ms: str | None, retry_after: str | None, now: float) -> float | None:
    """The server's wait hint in seconds: ``retry-after-ms`` first, then ``retry-after`` (seconds or HTTP date)."""
    if retry_after_ms:
        try:
            return max(float(retry_after_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    if retry_after:
        try:
            return max(float(retry_after), 0.0)
        except ValueError:
            pass
        try:
            return max(parsedate_to_datetime(retry_after).timestamp() - now, 0.0)
        except (TypeError, ValueError, IndexError):
            return None
    return None


def _items(
    headers: httpx.Headers | Mapping[str, str] | Iterable[tuple[str, str]],
) -> Iterable[tuple[str, str]]:
    if isinstance(headers, httpx.Headers):
        return headers.multi_items()  # keys already lower-case
    if isinstance(headers, Mapping):
        return ((k.lower(), v) for k, v in headers.items())
    return ((k.lower(), v) for k, v in headers)


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        try:
            return int(float(value))
        except ValueError:
            return None


def parse_rate_limits(
    headers: httpx.Headers | Mapping[str, str] | Iterable[tuple[str, str]], *, now: float | None = None
) -> RateLimitInfo | None:
    """The rate-limit state the headers describe, or ``None`` when they say nothing about it.

    One pass over the headers: most responses from OpenAI-compatible servers
    carry none of these, and this runs on every response.
    """
    found: dict[str, dict[str, str]] | None = None
    retry_after = retry_after_ms = None
    for key, value in _items(headers):
        if "ratelimit-" in key:
            rest = key.split("ratelimit-", 1)[1]
            if key.startswith("x-ratelimit-"):  # x-ratelimit-{field}-{window}
                field_name, _, window = rest.partition("-")
            elif key.startswith("anthropic-ratelimit-"):  # anthropic-ratelimit-{window}-{field}
                window, _, field_name = rest.rpartition("-")
            else:
                continue
            if window in _WINDOWS and field_name in ("limit", "remaining", "reset"):
                if found is None:
                    found = {}
                found.setdefault(window, {})[field_name] = value
        elif key == "retry-after":
            retry_after = value
        elif key == "retry-after-ms":
            retry_after_ms = value
    if found is None and retry_after is None and retry_after_ms is None:
        return None
    t = time.time() if now is None else now
    windows: dict[str, RateWindow] = {}
    for window, fields in (found or {}).items():
        reset = fields.get("reset")
        windows[window.replace("-", "_")] = RateWindow(
            limit=_int_or_none(fields["limit"]) if "limit" in fields else None,
            remaining=_int_or_none(fields["remaining"]) if "remaining" in fields else None,
            reset_s=_parse_reset(reset, t) if reset else None,
        )
    return RateLimitInfo(retry_after_s=parse_retry_after(retry_after_ms, retry_after, t), **windows)
