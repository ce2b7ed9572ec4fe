"""JSONL files: read once (``controlroom ingest``), or followed live like ``tail -F``.

Both read complete lines in large chunks, hand each to a record format
(:mod:`app.sources.formats`) and yield :class:`~app.sources.base.Batch` objects
that carry the read position reached; the pipeline commits that position in
the same transaction as the events, so a restarted tail resumes exactly after
the last committed line.

The follower (:class:`JsonlTail`) copes with what log files do:

- **rotation by rename** (``app.jsonl`` -> ``app.jsonl.1``, a new
  ``app.jsonl``): the open file is read to its end, then the new file is read
  from its start.  Files are known by ``dev:inode``, not by path; after a
  restart a position whose file was rotated meanwhile is found again under its
  new name in the same directory and finished first.
- **rotation by truncation** (copytruncate): the file shrinks below our
  offset, or its first line changes (the fingerprint), and is read again from
  the start.
- **a partial last line**: kept until its newline arrives.  When the file it
  belongs to is rotated away, or a one-shot read reaches the end, a partial
  line that is valid JSON is taken; otherwise it is quarantined as a
  ``truncated line``.
- **a file that appears later**: the follower waits for it (state ``error``,
  detail "waiting for ...") and starts reading when it shows up.
- **over-long lines** (over ``max_line_bytes``): skipped without holding them
  in memory, quarantined as ``line too long`` with their first bytes.

Records without an id get ``derived_event_id(ts, "<fingerprint>:<offset>")``:
re-reading the same file gives the same ids (idempotent), a rotated file with
the same offsets does not (its first line, hence its fingerprint, differs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from app.sources.base import Batch, BatchSink, Position, Rejected, SourceState, SourceStatus, gc_paused
from app.sources.formats import LineFormat, Parsed, RecordError, decode_line, detect_format, get_format
from app.sources.pipeline import RowBatch
from storage.queries.events import event_rows

log = logging.getLogger(__name__)

#: Lines per batch: large batches are what makes the store fast.
DEFAULT_BATCH_LINES = 20_000
#: A line longer than this is quarantined unread (one OTLP export request can be megabytes).
DEFAULT_MAX_LINE_BYTES = 16 << 20
_READ_SIZE = 1 << 20
_FINGERPRINT_BYTES = 256
_DETECT_BYTES = 256 << 10


class UnknownFormat(ValueError):
    """No format was given and none could be detected from the file's first lines."""


def source_key(path: str | Path) -> str:
    """The source key of a file (positions, quarantine, event ``source``): ``jsonl:<absolute path>``."""
    return f"jsonl:{os.path.abspath(path)}"


def file_identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def read_fingerprint(f: BinaryIO) -> str:
    """A hash of the file's first line (at most 256 bytes); ``""`` until that much exists.

    Stable once written, so it names the file's content across restarts, and
    it changes when the file is truncated and rewritten.
    """
    head = os.pread(f.fileno(), _FINGERPRINT_BYTES, 0)
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[: nl + 1]
    elif len(head) < _FINGERPRINT_BYTES:
        return ""
    return hashlib.blake2b(head, digest_size=8).hexdigest()


@dataclass(slots=True)
class _Chunk:
    lines: list[tuple[int, bytes]] = field(default_factory=list)  # (offset of the line, its bytes)
    too_long: list[tuple[int, bytes, int]] = field(default_factory=list)  # (offset, first bytes, length)
    end: int = 0  # offset after the last complete line consumed
    limit: int = DEFAULT_MAX_LINE_BYTES  # the reader's max_line_bytes, for the rejection reason


class LineReader:
    """Complete lines from an open binary file, from an offset, in large reads.

    Keeps a partial last line until its newline arrives; skips over-long lines
    without buffering them.
    """

    def __init__(self, f: BinaryIO, offset: int = 0, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.f = f
        self.max_line_bytes = max_line_bytes
        self.offset = offset  # after the last complete line handed out
        self._buf = b""  # bytes read past ``offset``: the start of a line not complete yet
        self._skipping: tuple[int, bytes, int] | None = None  # an over-long line being skipped
        f.seek(offset)

    @property
    def pending(self) -> bytes:
        """The partial line read so far (no newline yet)."""
        return self._buf

    def read(self, max_lines: int) -> _Chunk:
        out = _Chunk(end=self.offset, limit=self.max_line_bytes)
        while len(out.lines) < max_lines:  # may overshoot by one read's worth of lines
            data = self.f.read(_READ_SIZE)
            if not data:
                break
            self._consume(data, out)
        return out

    def _consume(self, data: bytes, out: _Chunk) -> None:
        if self._skipping is not None:
            nl = data.find(b"\n")
            start, head, length = self._skipping
            if nl < 0:
                self._skipping = (start, head, length + len(data))
                return
            out.too_long.append((start, head, length + nl))
            self._skipping = None
            self.offset = start + length + nl + 1
            out.end = self.offset
            data = data[nl + 1 :]
        buf = self._buf + data if self._buf else data
        parts = buf.split(b"\n")
        tail = parts.pop()
        off = self.offset
        lines = out.lines
        limit = self.max_line_bytes
        for line in parts:
            n = len(line)
            if n > limit:
                out.too_long.append((off, line[:8192], n))
            elif n and (line[0] > 32 or line.strip()):  # blank lines are not records
                if line[-1] != 13:  # an int compare: no one-byte slice per line
                    lines.append((off, line))
                elif n > 1:  # CRLF line endings
                    lines.append((off, line[:-1]))
            off += n + 1
        self.offset = off
        out.end = off
        if len(tail) > limit:
            self._skipping = (off, tail[:8192], len(tail))
            self._buf = b""
        else:
            self._buf = tail

    def take_partial(self) -> tuple[int, bytes] | None:
        """The partial last line (at a final end of file), consumed; ``None`` if there is none."""
        if self._skipping is not None:
            start, head, length = self._skipping
            self._skipping = None
            self.offset = start + length
            return (start, head + b"...")  # too long and unterminated: certainly not valid
        if not self._buf:
            return None
        off, line = self.offset, self._buf
        self.offset += len(line)
        self._buf = b""
        return off, line.rstrip(b"\r")


def parse_lines(
    fmt: LineFormat,
    chunk: _Chunk,
    *,
    source: str,
    fingerprint: str,
    out: Parsed | None = None,
) -> Parsed:
    """Run every line of a chunk through ``fmt``; over-long lines become rejections."""
    out = Parsed() if out is None else out
    parse = fmt.parse_line
    with gc_paused():
        _parse_each(parse, chunk, source, fingerprint, out)
    for off, head, length in chunk.too_long:
        reason = f"line too long: {length:,} bytes, over the limit of {chunk.limit:,}"
        out.rejected.append(Rejected.of(source, f"byte {off}", reason, head, f"{fingerprint}:{off}"))
    return out


def _parse_each(
    parse: Callable[..., None], chunk: _Chunk, source: str, fingerprint: str, out: Parsed
) -> None:
    fmt = getattr(parse, "__self__", None)
    fast = getattr(fmt, "parse_rows" if out.rows is not None else "parse_many", None)
    if fast is not None:
        events, rejected = len(out.events), len(out.rejected)
        rows = len(out.rows) if out.rows is not None else 0
        try:
            fast(chunk.lines, source=source, fingerprint=fingerprint, out=out)
            return
        except Exception:  # a bug in the fast path: read line by line instead (which isolates it)
            log.exception("the fast path of a format failed on %s; reading line by line", source)
            del out.events[events:], out.rejected[rejected:]
            if out.rows is not None:
                del out.rows[rows:]
    for off, line in chunk.lines:
        key = f"{fingerprint}:{off}"
        try:
            parse(line, source=source, key=key, position=f"byte {off}", out=out)
        except Exception as exc:  # a format's bug must cost one line, never the rest of the file
            log.exception("a format failed on a line of %s", source)
            out.rejected.append(Rejected.of(source, f"byte {off}", f"bad value: {exc}"[:300], line, key))
    if out.rows is not None and out.events:  # a format without rows, or the line-by-line fallback
        out.rows += event_rows(out.events)
        out.events.clear()


def _parsed_for(fmt: LineFormat) -> Parsed:
    """An empty result; in rows when the format can build them (our own event format)."""
    return Parsed(rows=[]) if hasattr(fmt, "parse_rows") else Parsed()


def _batch(parsed: Parsed, position: Position) -> Batch:
    if parsed.rows is not None:
        return RowBatch(parsed.rows, parsed.rejected, [position])
    return Batch(parsed.events, parsed.rejected, [position])


def _parse_partial(
    fmt: LineFormat, off: int, line: bytes, *, source: str, fingerprint: str, out: Parsed
) -> None:
    """A last line without its newline: taken if it is a whole JSON value, else quarantined."""
    try:
        decode_line(line)
    except RecordError as exc:
        out.rejected.append(
            Rejected.of(
                source,
                f"byte {off}",
                f"truncated line: no newline at the end and {exc.reason}",
                line,
                f"{fingerprint}:{off}",
            )
        )
        return
    fmt.parse_line(line, source=source, key=f"{fingerprint}:{off}", position=f"byte {off}", out=out)
    if out.rows is not None and out.events:
        out.rows += event_rows(out.events)
        out.events.clear()


def _open_format(path: Path, fmt: LineFormat | str | None) -> LineFormat:
    if isinstance(fmt, LineFormat):
        return fmt
    if fmt is not None:
        return get_format(fmt)
    with open(path, "rb") as f:
        head = f.read(_DETECT_BYTES)
    lines = head.split(b"\n")
    if len(head) == _DETECT_BYTES and len(lines) > 1:
        lines.pop()  # cut mid-line
    found = detect_format(lines[:50])
    if found is None:
        raise UnknownFormat(
            f"cannot tell the format of {path}: no line looks like a known one; "
            "give --format (event, otlp, litellm, openai-response, or a mapping file)"
        )
    return found


def read_file(
    path: str | Path,
    fmt: LineFormat | str | None = None,
    *,
    batch_lines: int = DEFAULT_BATCH_LINES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    start: int = 0,
) -> Iterator[Batch]:
    """Read a whole file once, in batches that carry the position reached.

    ``fmt`` is a format, its name, or ``None`` to detect it (raises
    :class:`UnknownFormat`).  A partial last line is taken if it parses, else
    quarantined as a truncated line.  Raises ``OSError`` when the file cannot
    be opened.
    """
    path = Path(path)
    fmt = _open_format(path, fmt)
    source = source_key(path)
    with open(path, "rb") as f:
        identity = file_identity(os.fstat(f.fileno()))
        fingerprint = read_fingerprint(f)
        reader = LineReader(f, start, max_line_bytes=max_line_bytes)
        while True:
            chunk = reader.read(batch_lines)
            if not chunk.lines and not chunk.too_long:
                break
            parsed = parse_lines(fmt, chunk, source=source, fingerprint=fingerprint, out=_parsed_for(fmt))
            yield _batch(parsed, Position(source, identity, reader.offset, fingerprint))
        partial = reader.take_partial()
        if partial is not None:
            if not fingerprint:  # a file of one unterminated line
                fingerprint = hashlib.blake2b(partial[1][:_FINGERPRINT_BYTES], digest_size=8).hexdigest()
            parsed = _parsed_for(fmt)
            _parse_partial(fmt, partial[0], partial[1], source=source, fingerprint=fingerprint, out=parsed)
            yield _batch(parsed, Position(source, identity, reader.offset, fingerprint))


# --- the follower ------------------------------------------------------------------------


class _Open:
    """The file being followed: its handle, identity, reader and fingerprint."""

    def __init__(self, f: BinaryIO, identity: str, reader: LineReader, fingerprint: str, label: str) -> None:
        self.f = f
        self.identity = identity
        self.reader = reader
        self.fingerprint = fingerprint
        self.label = label  # the name it was opened under

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()


class JsonlTail:
    """Follow a JSONL file like ``tail -F``, resuming from its committed position.

    Call :meth:`poll` (blocking; returns a batch, or ``None`` when there is
    nothing new) or run it as a source: ``await tail.run(pipeline)``.  After a
    failed write call :meth:`rewind`: the next poll reads again from the last
    committed position.
    """

    kind = "jsonl"

    def __init__(
        self,
        path: str | Path,
        fmt: LineFormat | str | None = None,
        *,
        name: str | None = None,
        resume: Position | None = None,
        poll_interval: float = 0.25,
        batch_lines: int = DEFAULT_BATCH_LINES,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.key = source_key(self.path)
        self.name = name or self.path.name
        self._fmt_arg = fmt
        self._fmt: LineFormat | None = fmt if isinstance(fmt, LineFormat) else None
        self.poll_interval = poll_interval
        self.batch_lines = batch_lines
        self.max_line_bytes = max_line_bytes
        self._committed = resume  # the position the store holds
        self._resume = resume  # where the next open starts
        self._cur: _Open | None = None
        self._draining: _Open | None = None  # a rotated file being finished before the current one
        self._stop = threading.Event()
        self._status = SourceStatus(name=self.name, kind=self.kind)
        self._resume_loaded = resume is not None

    # -- status -----------------------------------------------------------------------------
    def status(self) -> SourceStatus:
        s = self._status
        return SourceStatus(
            s.name,
            s.kind,
            s.state,
            s.ingested,
            s.duplicates,
            s.rejected,
            s.last_error,
            s.last_event_at,
            s.detail,
        )

    def stop(self) -> None:
        self._stop.set()

    @property
    def committed(self) -> Position | None:
        return self._committed

    def committed_to(self, position: Position) -> None:
        """The store now holds everything up to ``position`` (called after a successful write)."""
        self._committed = position

    def rewind(self) -> None:
        """Forget what was read after the committed position; the next poll reads it again."""
        self.close()
        self._resume = self._committed

    def close(self) -> None:
        for o in (self._draining, self._cur):
            if o is not None:
                o.close()
        self._draining = self._cur = None

    # -- reading ----------------------------------------------------------------------------
    def _format(self, path: Path) -> LineFormat | None:
        if self._fmt is None:
            try:
                self._fmt = _open_format(
                    path, self._fmt_arg if not isinstance(self._fmt_arg, LineFormat) else None
                )
            except UnknownFormat:
                return None  # nothing recognisable yet: try again when more is written
        return self._fmt

    def _open(self, path: Path, offset: int = 0) -> _Open:
        f = open(path, "rb")  # noqa: SIM115 - kept open while following
        try:
            identity = file_identity(os.fstat(f.fileno()))
            fingerprint = read_fingerprint(f)
            reader = LineReader(f, offset, max_line_bytes=self.max_line_bytes)
        except BaseException:
            f.close()
            raise
        return _Open(f, identity, reader, fingerprint, str(path))

    def _find_by_identity(self, identity: str) -> Path | None:
        """A file in the watched file's directory with this identity (a rotated copy), if any."""
        directory = self.path.parent
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return None
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if file_identity(st) == identity:
                return Path(entry.path)
        return None

    def _start(self) -> bool:
        """Open the file (and a rotated predecessor to finish), honouring the resume position."""
        resume, self._resume = self._resume, None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            self._error(f"cannot read {self.path}: {exc.strerror}")
            self._resume = resume
            return False
        if resume is not None and (st is None or file_identity(st) != resume.identity):
            # Rotated while we were away: finish the old file where it now lives.
            old = self._find_by_identity(resume.identity)
            if old is not None:
                with contextlib.suppress(OSError):
                    o = self._open(old, resume.offset)
                    if self._same_content(o, resume):
                        self._draining = o
                    else:
                        o.close()
            resume = None
        if st is None:
            if self._draining is None:
                self._error(f"waiting for {self.path} to appear")
            return self._draining is not None
        try:
            offset = 0
            cur = self._open(self.path)
            if resume is not None and cur.identity == resume.identity and self._same_content(cur, resume):
                offset = resume.offset
                cur.reader = LineReader(cur.f, offset, max_line_bytes=self.max_line_bytes)
            self._cur = cur
        except FileNotFoundError:
            self._error(f"waiting for {self.path} to appear")
            return self._draining is not None
        except OSError as exc:
            self._error(f"cannot read {self.path}: {exc.strerror}")
            return self._draining is not None
        self._status.state = SourceState.RUNNING
        self._status.last_error = None
        return True

    @staticmethod
    def _same_content(o: _Open, p: Position) -> bool:
        size = os.fstat(o.f.fileno()).st_size
        return size >= p.offset and (not p.fingerprint or o.fingerprint == p.fingerprint)

    def _error(self, message: str) -> None:
        if self._status.last_error != message:
            log.info("%s: %s", self.name, message)
        self._status.state = SourceState.ERROR
        self._status.last_error = message
        self._status.detail = message

    def poll(self) -> Batch | None:
        """Read what is new (up to ``batch_lines`` lines); ``None`` when there is nothing."""
        if self._draining is None and self._cur is None and not self._start():
            return None
        if self._draining is not None:
            batch = self._read(self._draining, final_if_eof=True)
            if batch is not None:
                return batch
            self._draining.close()
            self._draining = None
            if self._cur is None and not self._start():
                return None
        cur = self._cur
        assert cur is not None
        batch = self._read(cur, final_if_eof=False)
        if batch is not None:
            return batch
        return self._check_rotation(cur)

    def _read(self, o: _Open, *, final_if_eof: bool) -> Batch | None:
        fmt = self._format(Path(o.label))
        if fmt is None:
            return None
        chunk = o.reader.read(self.batch_lines)
        if not o.fingerprint and (chunk.lines or chunk.too_long):
            o.fingerprint = read_fingerprint(o.f)
        parsed = _parsed_for(fmt)
        if chunk.lines or chunk.too_long:
            parse_lines(fmt, chunk, source=self.key, fingerprint=o.fingerprint, out=parsed)
        elif final_if_eof:
            partial = o.reader.take_partial()
            if partial is None:
                return None
            _parse_partial(
                fmt, partial[0], partial[1], source=self.key, fingerprint=o.fingerprint, out=parsed
            )
        else:
            return None
        self._status.detail = f"{o.label} @ {o.reader.offset:,} bytes"
        return _batch(parsed, Position(self.key, o.identity, o.reader.offset, o.fingerprint))

    def _check_rotation(self, cur: _Open) -> Batch | None:
        """At the end of the current file: has it been renamed away, replaced or truncated?"""
        try:
            st = os.stat(self.path)
            path_identity = file_identity(st)
        except OSError:
            path_identity = None
        if path_identity != cur.identity:
            # Renamed away (or deleted): what it still holds is final; then the new file, when it exists.
            batch = self._read(cur, final_if_eof=True)
            if batch is not None:
                return batch
            cur.close()
            self._cur = None
            if path_identity is None:
                self._error(f"waiting for {self.path} to appear")
                return None
            self._start_fresh()
            return self._read(self._cur, final_if_eof=False) if self._cur is not None else None
        size = os.fstat(cur.f.fileno()).st_size
        replaced = bool(cur.fingerprint) and read_fingerprint(cur.f) != cur.fingerprint
        if size < cur.reader.offset + len(cur.reader.pending) or replaced:
            # Truncated (copytruncate) or rewritten in place: read it again from the start.
            parsed = Parsed()
            pending = cur.reader.pending
            if pending:
                parsed.rejected.append(
                    Rejected.of(
                        self.key,
                        f"byte {cur.reader.offset}",
                        "truncated line: the file was truncated before the line was complete",
                        pending,
                        f"{cur.fingerprint}:{cur.reader.offset}",
                    )
                )
            cur.reader = LineReader(cur.f, 0, max_line_bytes=self.max_line_bytes)
            cur.fingerprint = read_fingerprint(cur.f)
            return Batch([], parsed.rejected, [Position(self.key, cur.identity, 0, cur.fingerprint)])
        return None

    def _start_fresh(self) -> None:
        self._resume = None
        self._start()

    # -- as a source ------------------------------------------------------------------------
    async def run(self, sink: BatchSink) -> None:
        """Follow the file until :meth:`stop`, handing batches to ``sink`` (a pipeline fits).

        When no resume position was given and ``sink`` can load one
        (``Pipeline.load_position``), the committed position is used.
        """
        if not self._resume_loaded:
            loader: Callable[[str], Position | None] | None = getattr(sink, "load_position", None)
            if loader is not None:
                self._committed = self._resume = await asyncio.to_thread(loader, self.key)
            self._resume_loaded = True
        self._stop.clear()
        try:
            while not self._stop.is_set():
                try:
                    batch = await asyncio.to_thread(self.poll)
                except OSError as exc:
                    self._error(f"cannot read {self.path}: {exc.strerror or exc}")
                    self.rewind()
                    await asyncio.sleep(self.poll_interval)
                    continue
                if batch is None:
                    await asyncio.sleep(self.poll_interval)
                    continue
                try:
                    result: Any = await sink(batch)
                except Exception as exc:
                    self._error(f"could not store a batch, will retry: {exc}")
                    self.rewind()
                    await asyncio.sleep(max(self.poll_interval, 1.0))
                    continue
                if batch.positions:
                    self.committed_to(batch.positions[-1])
                s = self._status
                s.ingested += getattr(result, "ingested", 0)
                s.duplicates += getattr(result, "duplicates", 0)
                s.rejected += getattr(result, "rejected", 0)
                if len(batch):
                    s.last_event_at = time.time()
                if s.state is not SourceState.RUNNING and self._cur is not None:
                    s.state, s.last_error = SourceState.RUNNING, None
        finally:
            self.close()
            self._status.state = SourceState.STOPPED


__all__ = [
    "DEFAULT_BATCH_LINES",
    "DEFAULT_MAX_LINE_BYTES",
    "JsonlTail",
    "LineReader",
    "UnknownFormat",
    "file_identity",
    "parse_lines",
    "read_file",
    "read_fingerprint",
    "source_key",
]


# --- one-shot ingest of files (``controlroom ingest``) ----------------------------------------


@dataclass(slots=True)
class FileIngest:
    """What one ``ingest_files`` call did: the summed result and the files it could not read."""

    ingested: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # "PATH: why", one per file not read

    def as_dict(self) -> dict[str, Any]:
        return {
            "ingested": self.ingested,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
        }


def ingest_files(
    pipeline: Any,
    paths: list[Path],
    fmt: str | LineFormat | None = None,
    *,
    batch_lines: int = DEFAULT_BATCH_LINES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    parallel: bool | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
) -> FileIngest:
    """Read each file once into ``pipeline`` (an :class:`app.sources.pipeline.Pipeline`).

    Batches go through the pipeline's writer thread when it is running, else
    through ``pipeline.write``.  With the writer thread running, large files
    (:data:`app.sources.parse_process.PARALLEL_MIN_BYTES` in all) are read by
    a parser process while this one writes (``parallel=None``, where
    :func:`app.sources.parse_process.parallel_available`); ``parallel=False``
    reads them here, ``True`` asks for the process whatever the size.  A file
    that cannot be opened or whose format cannot be told is listed in
    ``errors`` and the others are still read.  ``progress`` is called after
    each batch is handed over, with how far the reading has come.
    """
    from app.sources import parse_process

    report = FileIngest()
    threaded = getattr(pipeline, "running", False)
    total_bytes = sum(_size(p) for p in paths)
    if parallel is None:
        parallel = total_bytes >= parse_process.PARALLEL_MIN_BYTES
    parallel = parallel and threaded and parse_process.parallel_available()
    pending: list[Any] = []

    def settle(result: Any) -> None:
        report.ingested += result.ingested
        report.duplicates += result.duplicates
        report.rejected += result.rejected
        for k, v in result.reasons.items():
            report.reasons[k] = report.reasons.get(k, 0) + v

    offsets: dict[str, int] = {}  # per file, how far it has been read
    records = 0

    def put(batch: Any) -> None:
        nonlocal records
        if progress is not None:
            records += len(batch)
            for position in batch.positions:
                offsets[position.source] = position.offset
            progress(IngestProgress(sum(offsets.values()), total_bytes, records))
        if threaded:
            pending.append(pipeline.submit(batch))
            while pending and pending[0].done():
                settle(pending.pop(0).result())
        else:
            settle(pipeline.write(batch))

    if parallel:
        # Smaller batches than the writer's transactions, so that the writer starts early and
        # the child's last batch is short; the writer thread joins them into one transaction.
        child_lines = max(1, min(batch_lines, _CHILD_BATCH_LINES))
        reader = parse_process.read_files_in_child(
            paths, fmt, batch_lines=child_lines, max_line_bytes=max_line_bytes
        )
        with contextlib.closing(reader):
            for item in reader:
                if isinstance(item, str):
                    report.errors.append(item)
                else:
                    put(item)
    else:
        for path in paths:
            try:
                for batch in read_file(path, fmt, batch_lines=batch_lines, max_line_bytes=max_line_bytes):
                    put(batch)
            except (OSError, ValueError) as exc:  # unreadable file, unknown format, bad mapping file
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                report.errors.append(f"{path}: {why}")
    for f in pending:
        settle(f.result())
    return report


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """How far :func:`ingest_files` has read: bytes of all the files, and records (events and rejected)."""

    bytes_read: int
    bytes_total: int
    records: int


#: Lines per batch the parser process hands over (see :func:`ingest_files`).
_CHILD_BATCH_LINES = 4_000


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


__all__ += ["FileIngest", "IngestProgress", "ingest_files"]
