"""``/metrics``: the gateway's counters in the Prometheus text format (version 0.0.4).

Two sources: the engine's :class:`~app.gateway.engine.GatewayStats` (requests by route,
target and failure; latency histograms by route, target and failure; breaker states; budget spend;
the event writer) and the HTTP server's own :class:`ServerStats` (responses by endpoint and
status, requests in flight, and the latency the gateway itself adds to each answered call).

Written by hand rather than with prometheus_client: the format is small, the engine keeps
its own counters, and one fewer dependency ships.  Label values are escaped as the format
says (backslash, double quote, newline); nothing here ever holds a key.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.gateway.engine import GatewayStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the added-latency histogram: the overhead target is 1 ms (p50) / 5 ms (p99).
OVERHEAD_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)

_BREAKER_STATES = ("closed", "open", "half_open")

#: Labels of the latency histogram, in the order of the engine's keys: ``(route, target, failure)``.
#: ``failure`` is the taxonomy (app/core/event.py ``Failure``, eleven values), so the series stay
#: bounded by routes x targets x 11.  The failure of a request that failed fast (budget blocked,
#: every breaker open) and of one that timed out are different latencies: mixing them with the
#: successes would hide both.
LATENCY_LABELS = ("route", "target", "failure")


@dataclass(slots=True)
class Histogram:
    """A fixed-bucket histogram (counts per bucket, not cumulative; the +Inf bucket last)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass(slots=True)
class ServerStats:
    """What the HTTP server counts itself."""

    responses: dict[tuple[str, int], int] = field(default_factory=dict)  # (endpoint, status) -> n
    in_flight: int = 0
    overhead: Histogram = field(default_factory=lambda: Histogram(OVERHEAD_BUCKETS_S))

    def count(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.responses[key] = self.responses.get(key, 0) + 1


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Sequence[tuple[str, str]], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def histogram(
        self,
        name: str,
        labels: Sequence[tuple[str, str]],
        bounds: Sequence[float],
        counts: Sequence[int],
        total: float,
    ) -> None:
        """``counts`` per bucket (not cumulative), one more than ``bounds`` (the +Inf bucket)."""
        running = 0
        for bound, n in zip(bounds, counts, strict=False):
            running += n
            self.sample(f"{name}_bucket", [*labels, ("le", _num(bound))], running)
        count = sum(counts)
        self.sample(f"{name}_bucket", [*labels, ("le", "+Inf")], count)
        self.sample(f"{name}_sum", labels, total)
        self.sample(f"{name}_count", labels, count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(stats: GatewayStats | None, server: ServerStats | None = None) -> str:
    """The whole exposition: engine counters, then the server's."""
    w = _Writer()
    if stats is not None:
        _engine_metrics(w, stats)
    if server is not None:
        _server_metrics(w, server)
    return w.text()


def _engine_metrics(w: _Writer, s: GatewayStats) -> None:
    w.family(
        "controlroom_gateway_requests_total", "counter", "Requests answered, by route, target and failure."
    )
    for (route, target, failure), n in sorted(s.requests.items()):
        w.sample(
            "controlroom_gateway_requests_total",
            [("route", route), ("target", target), ("failure", failure)],
            n,
        )
    w.family(
        "controlroom_gateway_request_duration_seconds",
        "histogram",
        "Request latency as callers saw it, by route, target and failure.",
    )
    bounds = s.latency_buckets
    for key, counts in sorted(s.latency.items()):
        w.histogram(
            "controlroom_gateway_request_duration_seconds",
            list(zip(LATENCY_LABELS, key, strict=False)),
            bounds,
            counts,
            s.latency_sum.get(key, 0.0),
        )
    w.family(
        "controlroom_breaker_state",
        "gauge",
        "1 for the state each target's breaker is in (closed, open, half_open), else 0.",
    )
    for snap in sorted(s.breakers, key=lambda b: b.target):
        current = str(getattr(snap.state, "value", snap.state))
        for state in _BREAKER_STATES:
            w.sample(
                "controlroom_breaker_state", [("target", snap.target), ("state", state)], state == current
            )
    w.family("controlroom_breaker_forced", "gauge", "1 when an operator override forces the breaker.")
    for snap in sorted(s.breakers, key=lambda b: b.target):
        w.sample("controlroom_breaker_forced", [("target", snap.target)], snap.forced is not None)
    w.family("controlroom_breaker_failure_rate", "gauge", "Failure rate in the breaker's window (0-1).")
    for snap in sorted(s.breakers, key=lambda b: b.target):
        if snap.failure_rate is not None:
            w.sample("controlroom_breaker_failure_rate", [("target", snap.target)], snap.failure_rate)
    w.family("controlroom_budget_spend_usd", "gauge", "Spend in the budget's current period, in USD.")
    for name, spend in sorted(s.budget_spend.items()):
        w.sample("controlroom_budget_spend_usd", [("budget", name)], spend)
    w.family("controlroom_budget_limit_usd", "gauge", "The budget's limit in USD (budgets with one).")
    for name, limit in sorted(s.budget_limit.items()):
        if limit is not None:
            w.sample("controlroom_budget_limit_usd", [("budget", name)], limit)
    for name, kind, help_text, value in (
        ("controlroom_events_written_total", "counter", "Events written to the store.", s.events_written),
        ("controlroom_events_pending", "gauge", "Events waiting for the writer.", s.events_pending),
        (
            "controlroom_events_dropped_total",
            "counter",
            "Events the writer could not keep.",
            s.events_dropped,
        ),
        ("controlroom_cache_hits_total", "counter", "Answers served from the cache.", s.cache_hits),
        ("controlroom_cache_misses_total", "counter", "Cache lookups that missed.", s.cache_misses),
        (
            "controlroom_control_version",
            "gauge",
            "The control-state version this gateway runs on.",
            s.control_version,
        ),
    ):
        w.family(name, kind, help_text)
        w.sample(name, [], value)


def _server_metrics(w: _Writer, s: ServerStats) -> None:
    w.family("controlroom_http_responses_total", "counter", "HTTP responses, by endpoint and status code.")
    for (endpoint, status), n in sorted(s.responses.items()):
        w.sample("controlroom_http_responses_total", [("endpoint", endpoint), ("code", str(status))], n)
    w.family("controlroom_http_in_flight", "gauge", "HTTP requests being served now.")
    w.sample("controlroom_http_in_flight", [], s.in_flight)
    w.family(
        "controlroom_gateway_overhead_seconds",
        "histogram",
        "Latency the gateway adds to an answered call (its time minus the provider call's).",
    )
    h = s.overhead
    w.histogram("controlroom_gateway_overhead_seconds", [], h.bounds, h.counts, h.total)


def parse_text(text: str) -> Mapping[str, list[tuple[dict[str, str], float]]]:
    """A strict reader of the exposition (for tests and the UI): ``{name: [(labels, value), ...]}``.

    Raises ``ValueError`` naming the first line that is not valid text format.
    """
    import re

    sample = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})?'
        r" (NaN|[+-]Inf|[-+]?[0-9.eE+-]+)$"
    )
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = sample.match(line)
        if m is None:
            raise ValueError(f"line {i} is not Prometheus text format: {line!r}")
        labels = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in label.findall(m.group(2) or "")
        }
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out
