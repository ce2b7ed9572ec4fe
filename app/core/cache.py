"""The exact response cache: its key, when a request may use it, and an in-memory LRU (semantics.md 8).

The key is a hash of the model, the messages in a normal form, and the
parameters that change the output.  Parameters that only change transport or
bookkeeping (``stream``, ``user``, ``metadata``, timeouts) are left out, so a
streamed and a non-streamed call share an entry.  Unknown parameters are kept
in the key: a wrong hit would serve a wrong answer, a wrong miss only costs a call.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Clock = Callable[[], float]
V = TypeVar("V")

KEY_VERSION = "v1"

# Never part of the key: they do not change what the model answers.
IGNORED_PARAMS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "timeout",
        "request_timeout",
        "extra_headers",
        "extra_query",
        "service_tier",
        "messages",
        "model",
    }
)


def _canon(value: Any) -> Any:
    """A JSON-ready normal form: sorted keys, no ``None`` members, integral floats as ints."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, Mapping):
        return {
            str(k): _canon(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])) if v is not None
        }
    if isinstance(value, Sequence):
        return [_canon(v) for v in value]
    raise TypeError(f"cannot put a {type(value).__name__} in a cache key")


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Messages in a form where the same conversation always looks the same.

    Roles are lower-cased, ``\\r\\n`` becomes ``\\n``, and a content list that is a single text
    part is the same as that text (OpenAI accepts both spellings for one message).
    """
    out: list[Any] = []
    for m in messages:
        msg = dict(m)
        if isinstance(msg.get("role"), str):
            msg["role"] = msg["role"].strip().lower()
        content = msg.get("content")
        if isinstance(content, Sequence) and not isinstance(content, str) and len(content) == 1:
            part = content[0]
            if isinstance(part, Mapping) and part.get("type") == "text" and set(part) <= {"type", "text"}:
                content = part.get("text")
        msg["content"] = _text(content)
        out.append(_canon(msg))
    return out


def _text(content: Any) -> Any:
    if isinstance(content, str):
        return content.replace("\r\n", "\n")
    if isinstance(content, Sequence):
        return [_text(c) for c in content]
    if isinstance(content, Mapping):
        return {k: _text(v) if k == "text" else v for k, v in content.items()}
    return content


def cache_key(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    """A 64-hex-digit key for (model, normalized messages, output-changing parameters)."""
    kept = {k: v for k, v in params.items() if k not in IGNORED_PARAMS}
    doc = [KEY_VERSION, model, normalize_messages(messages), _canon(kept)]
    blob = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def cacheable(temperature: float | None, route_opt_in: bool) -> bool:
    """Exact caching serves one fixed answer: fine at temperature 0 (or unset), otherwise only if
    the route opted in."""
    return temperature is None or temperature <= 0 or route_opt_in


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int  # pushed out by size
    expirations: int  # dropped after their TTL
    entries: int


class ExactCache(Generic[V]):
    """An in-memory LRU with a time to live per entry.  Not thread-safe (one event loop uses it)."""

    def __init__(
        self, ttl_s: float = 3600.0, max_entries: int = 10_000, *, clock: Clock = time.monotonic
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()  # key -> (expires at, value)
        self._hits = self._misses = self._evictions = self._expirations = 0

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        if item is None:
            self._misses += 1
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._data[key]
            self._expirations += 1
            self._misses += 1
            return None
        self._data.move_to_end(key)
        self._hits += 1
        return value

    def put(self, key: str, value: V, ttl_s: float | None = None) -> None:
        ttl = self.ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            return
        self._data[key] = (self._clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
            self._evictions += 1

    def discard(self, key: str) -> None:
        self._data.pop(key, None)

    def purge_expired(self) -> int:
        """Drop every expired entry now (the LRU alone only drops them when touched)."""
        now = self._clock()
        dead = [k for k, (exp, _) in self._data.items() if now >= exp]
        for k in dead:
            del self._data[k]
        self._expirations += len(dead)
        return len(dead)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        item = self._data.get(key)
        return item is not None and self._clock() < item[0]

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, self._expirations, len(self._data))
