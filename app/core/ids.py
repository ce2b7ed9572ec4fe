"""Time-ordered event ids.

Ids are UUIDv7-shaped (48-bit millisecond timestamp first, then randomness),
written as 32 lowercase hex digits.  Because they sort by time, inserts into a
unique index land at the end of the b-tree and stay fast (platform-notes.md:
random text keys cost SQLite 3-6x in insert rate).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_seq = 0
# The random bits come from a generator seeded from the OS once per process (and again in a forked
# child, which must not repeat its parent's sequence), not from os.urandom per id: a system call per
# event was 2% of the gateway's CPU.  Uniqueness needs no cryptographic randomness: 50 random bits
# beside the millisecond and a per-process sequence.
_rng = random.Random(os.urandom(16))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(16)))


def new_event_id(ts: float | None = None) -> str:
    """A fresh, unique, time-ordered id.  Monotonic within one process."""
    global _last_ms, _seq
    ms = int((time.time() if ts is None else ts) * 1000)
    with _lock:
        if ms <= _last_ms and ts is None:
            ms = _last_ms
            _seq += 1
        else:
            _seq = 0
        _last_ms = max(_last_ms, ms)
        seq = _seq
    rand = _rng.getrandbits(50)
    # 48 bits ms | 4 bits version (7) | 12 bits sequence | 2 bits variant | 62 bits random
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (seq & 0xFFF) << 64 | 0b10 << 62 | rand
    return f"{value:032x}"


def derived_event_id(ts: float, key: str) -> str:
    """A deterministic, time-ordered id for records that carry no id of their own.

    `key` names the record's origin (for example ``"file:/var/log/a.jsonl:1234"``);
    replaying the same record yields the same id, which makes ingest idempotent.
    """
    ms = int(ts * 1000) & ((1 << 48) - 1)
    digest = int.from_bytes(
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=10).digest(), "big"
    )
    value = ms << 80 | 0x8 << 76 | (digest >> 4) & ((1 << 76) - 1)
    return f"{value:032x}"


def event_id_time(event_id: str) -> float:
    """The creation time (epoch seconds) encoded in an id."""
    return (int(event_id[:12], 16)) / 1000.0
