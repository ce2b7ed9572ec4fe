"""What every log source shares: the batch it hands the pipeline, its status, and its protocol.

A source reads records from somewhere (a file, an OTLP request, a remote HTTP
endpoint, a provider's usage API), turns the good ones into
:class:`~app.core.event.Event` objects and the bad ones into
:class:`Rejected` records, and hands both to the ingest pipeline
(:class:`app.sources.pipeline.Pipeline`) as one :class:`Batch`.  A source that
reads a file also puts its read position in the batch; the pipeline commits
that position in the same transaction as the events, so a restart resumes
exactly where the store left off.

A bad record never stops a source: it becomes a :class:`Rejected` with a reason
and a bounded excerpt, and lands in the quarantine table.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from app.core.event import Event

#: Characters of a bad record kept in the quarantine: enough to see what went wrong.
EXCERPT_CHARS = 2048


def excerpt_of(raw: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """A bounded, printable excerpt of a raw record for the quarantine.

    Invalid UTF-8 becomes ``\\xNN`` escapes and NUL becomes ``\\x00`` (PostgreSQL
    text cannot hold NUL); a longer record is cut and says by how much.
    """
    if isinstance(raw, bytes):
        total, unit = len(raw), "bytes"
        text = raw[: limit * 4].decode("utf-8", errors="backslashreplace")  # <= 4 bytes per character
        cut = total > limit * 4
    else:
        total, unit = len(raw), "chars"
        # A lone surrogate (from a JSON "\\ud800") cannot be stored as UTF-8: escape it.
        text = raw[:limit].encode("utf-8", errors="backslashreplace").decode("utf-8")
        cut = total > limit
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) > limit:
        text, cut = text[:limit], True
    return text + f"... [{total:,} {unit} in all]" if cut else text


@dataclass(slots=True)
class Rejected:
    """A record that could not be read as an event: kept aside, never dropped silently.

    ``position`` says where it came from in the source's own terms: ``"line
    12 @ byte 3456"`` for a file, ``"request 7 span 3"`` for OTLP.  ``reason``
    is a short category first, then detail (``"invalid JSON: ..."``); the
    category before the first colon is what ingest summaries count.
    """

    source: str
    position: str
    reason: str
    excerpt: str
    ts: float = field(default_factory=time.time)
    #: A stable name of the record within its source (file fingerprint + byte offset), so a
    #: re-read quarantines it once; ``None`` when there is none.
    key: str | None = None

    @property
    def category(self) -> str:
        """The reason's category (the text before the first colon): what summaries count."""
        return self.reason.split(":", 1)[0].strip()

    @classmethod
    def of(
        cls, source: str, position: str, reason: str, raw: bytes | str, key: str | None = None
    ) -> Rejected:
        """A rejection with a bounded excerpt of ``raw``."""
        return cls(source=source, position=position, reason=reason, excerpt=excerpt_of(raw), key=key)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a file source has read up to: committed with the events read before it.

    ``identity`` names the file itself, not its path (``"dev:inode"``), so a
    rotated file is recognised; ``fingerprint`` is a hash of the file's first
    bytes (up to 256, fewer when the file was shorter), which tells a
    truncated-and-rewritten file from the one we read.
    """

    source: str  # the source key, e.g. "jsonl:/var/log/app.jsonl"
    identity: str  # "dev:inode"
    offset: int  # bytes consumed: the next read starts here
    fingerprint: str = ""


@dataclass(slots=True)
class Batch:
    """What a source hands the pipeline in one go.  Either list may be empty."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: Positions reached after this batch, committed in the same transaction.
    positions: list[Position] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.rejected)


class SourceState(StrEnum):
    """What the sources page shows beside a source's name."""

    STARTING = "starting"
    RUNNING = "running"  # reading or waiting for more
    PAUSED = "paused"  # the operator paused it
    ERROR = "error"  # cannot read right now (missing file, refused connection); retrying
    STOPPED = "stopped"


@dataclass(slots=True)
class SourceStatus:
    """A source's health for the UI and ``controlroom collect``: counts, position, last error."""

    name: str
    kind: str  # jsonl | otlp | http_poll | usage_api
    state: SourceState = SourceState.STARTING
    ingested: int = 0
    duplicates: int = 0
    rejected: int = 0
    last_error: str | None = None
    last_event_at: float | None = None  # wall time the source last produced a record
    detail: str = ""  # e.g. "app.jsonl @ 12,345 bytes", "listening on 127.0.0.1:4318"


@runtime_checkable
class Source(Protocol):
    """A log source run by ``controlroom collect`` or the app's runtime thread.

    ``run`` reads until ``stop`` is called (or, for a one-shot source, until
    the input is exhausted), handing batches to ``sink``; it must not raise for
    bad input, only for a programming error.  It is a coroutine so that many
    sources share one asyncio loop; blocking file reads go to a thread.
    """

    name: str
    kind: str

    def status(self) -> SourceStatus: ...

    async def run(self, sink: BatchSink) -> None: ...

    def stop(self) -> None: ...


class BatchSink(Protocol):
    """Where a source puts its batches: :meth:`app.sources.pipeline.Pipeline.submit_async` fits."""

    async def __call__(self, batch: Batch) -> object: ...


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block.

    Parsing or writing a batch allocates tens of thousands of small containers that all
    survive into the batch, so the collector runs again and again and finds
    nothing: a third of the parse time, measured.  The records hold no
    reference cycles, and the collector runs as usual after the block.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def summarize_reasons(rejected: Sequence[Rejected]) -> dict[str, int]:
    """Counts per reason category, for ingest summaries."""
    out: dict[str, int] = {}
    for r in rejected:
        c = r.category
        out[c] = out.get(c, 0) + 1
    return out
