"""The ledger of what the simulator served, and the per-minute rollups its usage and cost reports read.

Every API request leaves one :class:`Served` record (kept for the last
``max_records`` requests) and, when it was billed, adds to a per-minute rollup
that is never trimmed — so the usage and cost endpoints agree with the traffic
exactly, however long the simulator runs.

Billed: a 200 answer, including one whose body the simulator then spoiled
(malformed JSON, wrong content type: the model did the work), and a stream cut
or errored mid-way (for the tokens it had sent).  Errors, hangs and refused
requests are not billed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Served:
    seq: int  # request number since the last reset, starting at 1: the determinism counter
    ts: float  # unix time the request finished
    provider: str  # openai | anthropic
    endpoint: str  # chat.completions | messages | embeddings | count_tokens | models
    model: str
    stream: bool
    status: int  # HTTP status sent; 0 when the connection was dropped before a status line
    fault: str | None  # the injected fault, if any
    request_id: str
    key_id: str  # a digest of the API key, never the key
    scenario: str
    input_tokens: int = 0  # as the provider reports it: OpenAI includes cached, Anthropic excludes cache
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # Anthropic cache creation, all TTLs
    cache_write_1h_tokens: int = 0  # the part of cache_write_tokens written with a one-hour TTL
    billed: bool = False
    cost_usd: float | None = None
    ttft_s: float = 0.0  # simulated time to first token
    duration_s: float = 0.0  # wall time from arrival to the end of the response
    finish: str | None = None
    retry_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Rollup:
    """Billed totals of one (minute, provider, kind, model, key) cell."""

    requests: int = 0
    input_tokens: int = 0  # uncached input (excluding cache reads and writes)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    cost: dict[str, float] = field(
        default_factory=dict
    )  # line item (input, cached_input, cache_write, output) -> USD


RollupKey = tuple[
    int, str, str, str, str
]  # minute start, provider, kind (completions|embeddings), model, key id


class Ledger:
    """Thread-safe: the server's loop appends, tests and reports read from anywhere."""

    def __init__(self, max_records: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._records: deque[Served] = deque(maxlen=max_records)
        self._rollups: dict[RollupKey, Rollup] = {}
        self._total = 0

    def add(self, record: Served, costs: dict[str, float] | None = None) -> None:
        kind = "embeddings" if record.endpoint == "embeddings" else "completions"
        with self._lock:
            self._records.append(record)
            self._total += 1
            if not record.billed:
                return
            key = (int(record.ts // 60) * 60, record.provider, kind, record.model, record.key_id)
            cell = self._rollups.get(key)
            if cell is None:
                cell = self._rollups[key] = Rollup()
            cell.requests += 1
            uncached = record.input_tokens
            if record.provider == "openai":  # OpenAI's prompt_tokens include the cached ones
                uncached -= record.cache_read_tokens
            cell.input_tokens += uncached
            cell.cache_read_tokens += record.cache_read_tokens
            cell.cache_write_tokens += record.cache_write_tokens
            cell.cache_write_1h_tokens += record.cache_write_1h_tokens
            cell.output_tokens += record.output_tokens
            for item, usd in (costs or {}).items():
                cell.cost[item] = cell.cost.get(item, 0.0) + usd

    def records(self, *, since_seq: int = 0, where: Callable[[Served], bool] | None = None) -> list[Served]:
        with self._lock:
            items = list(self._records)
        return [r for r in items if r.seq > since_seq and (where is None or where(r))]

    def __len__(self) -> int:
        with self._lock:
            return self._total

    def __iter__(self) -> Any:
        return iter(self.records())

    def count(self, **match: Any) -> int:
        """How many kept records have all the given field values, e.g. ``count(endpoint="messages", status=429)``."""
        return sum(1 for r in self.records() if all(getattr(r, k) == v for k, v in match.items()))

    def rollups(
        self, provider: str, kind: str, start: float, end: float
    ) -> Iterable[tuple[RollupKey, Rollup]]:
        with self._lock:
            items = [
                (k, replace(v, cost=dict(v.cost)))
                for k, v in self._rollups.items()
                if k[1] == provider and k[2] == kind and start <= k[0] < end
            ]
        return items

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._rollups.clear()
            self._total = 0
