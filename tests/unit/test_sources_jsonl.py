"""JSONL files: the line reader, one-shot reads, and the tail -F follower on real files."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.event import Event
from app.core.ids import new_event_id
from app.sources.base import Batch
from app.sources.jsonl import JsonlTail, LineReader, UnknownFormat, ingest_files, read_file, source_key
from app.sources.pipeline import Pipeline
from storage import Store, open_store
from storage.queries.events import count_events
from storage.queries.quarantine import count_quarantined

T0 = 1_780_000_000.0


def line(i: int, *, with_id: bool = True) -> bytes:
    """One event line; without an id, the reader derives one from the line's position."""
    d = Event(
        ts_start=T0 + i, ts_end=T0 + i + 0.5, provider="openai", model="m", event_id=new_event_id(T0 + i)
    ).to_dict()
    if not with_id:
        del d["event_id"]
    return json.dumps(d).encode()


def write(path: Path, data: bytes, mode: str = "ab") -> None:
    with open(path, mode) as f:
        f.write(data)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


def drain(tail: JsonlTail, pipeline: Pipeline) -> list[Batch]:
    """Poll until nothing is new, writing every batch (what run() does, synchronously)."""
    batches = []
    while (batch := tail.poll()) is not None:
        pipeline.write(batch)
        if batch.positions:
            tail.committed_to(batch.positions[-1])
        batches.append(batch)
    return batches


# --- the line reader ------------------------------------------------------------------------


def test_reader_keeps_a_partial_line_until_its_newline() -> None:
    f = io.BytesIO(b'{"a":1}\r\n\n  \n{"b":')
    reader = LineReader(f)  # type: ignore[arg-type]
    chunk = reader.read(100)
    assert chunk.lines == [(0, b'{"a":1}')]  # CRLF stripped, blank lines skipped
    assert reader.offset == 13 and reader.pending == b'{"b":'
    f.seek(0, io.SEEK_END)
    f.write(b"2}\n")
    f.seek(18)  # where the reader's last read ended
    chunk = reader.read(100)
    assert chunk.lines == [(13, b'{"b":2}')] and reader.offset == 21 and reader.pending == b""


def test_reader_skips_an_over_long_line_without_holding_it() -> None:
    big = b"x" * 3_000_000
    f = io.BytesIO(b'{"a":1}\n' + big + b'\n{"b":2}\n')
    reader = LineReader(f, max_line_bytes=1_000_000)  # type: ignore[arg-type]
    chunk = reader.read(100)
    assert [off for off, _ in chunk.lines] == [0, 8 + len(big) + 1]
    [(off, head, length)] = chunk.too_long
    assert (off, length, len(head)) == (8, len(big), 8192)
    assert reader.offset == f.getbuffer().nbytes


# --- one-shot reads ---------------------------------------------------------------------------


def test_read_file_detects_the_format_and_takes_a_valid_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, line(1) + b"\n" + line(2) + b"\n" + line(3))  # no final newline
    batches = list(read_file(path, batch_lines=2))
    assert sum(len(b.events) for b in batches) == 3
    assert batches[-1].positions[-1].offset == path.stat().st_size
    assert all(b.positions[0].source == source_key(path) for b in batches)


def test_read_file_quarantines_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write(path, line(1) + b"\n" + line(2)[:40])
    batches = list(read_file(path, "event"))
    events = [e for b in batches for e in b.events]
    [rej] = [r for b in batches for r in b.rejected]
    assert len(events) == 1 and rej.category == "truncated line"
    assert rej.position == f"byte {len(line(1)) + 1}"


def test_ids_derived_from_positions_are_stable_and_file_specific(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write(a, line(1, with_id=False) + b"\n" + line(2, with_id=False) + b"\n")
    write(b, line(7, with_id=False) + b"\n" + line(2, with_id=False) + b"\n")  # same offsets, other file
    ids_a = [e.event_id for batch in read_file(a, "event") for e in batch.events]
    assert ids_a == [e.event_id for batch in read_file(a, "event") for e in batch.events]
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(a.read_bytes())
    assert ids_a == [e.event_id for batch in read_file(copy, "event") for e in batch.events]
    ids_b = [e.event_id for batch in read_file(b, "event") for e in batch.events]
    assert not set(ids_a) & set(ids_b)


def test_an_unknown_format_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write(path, b'{"hello": "world"}\n')
    with pytest.raises(UnknownFormat, match="give --format"):
        list(read_file(path))


def test_ingest_files_reports_unreadable_files_and_reads_the_rest(tmp_path: Path, store: Store) -> None:
    good = tmp_path / "good.jsonl"
    write(good, line(1) + b"\n" + b"{bad\n")
    with Pipeline(store) as pipeline:
        report = ingest_files(pipeline, [tmp_path / "missing.jsonl", good])
    assert report.as_dict() == {"ingested": 1, "duplicates": 0, "rejected": 1, "reasons": {"invalid JSON": 1}}
    assert len(report.errors) == 1 and "missing.jsonl" in report.errors[0]


# --- the follower -------------------------------------------------------------------------------


def test_tail_follows_appends_and_completes_partial_lines(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "app.jsonl"
    write(path, line(1) + b"\n" + line(2)[:30])
    pipeline = Pipeline(store)
    tail = JsonlTail(path, "event")
    drain(tail, pipeline)
    assert count_events(store.engine) == 1
    write(path, line(2)[30:] + b"\n" + line(3) + b"\n")
    drain(tail, pipeline)
    assert count_events(store.engine) == 3 and count_quarantined(store.engine) == 0
    tail.close()


def test_tail_follows_rotation_by_rename(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "app.jsonl"
    write(path, line(1) + b"\n")
    pipeline = Pipeline(store)
    tail = JsonlTail(path, "event")
    drain(tail, pipeline)
    write(path, line(2) + b"\n" + line(3)[:20])  # a partial line at rotation time
    os.rename(path, tmp_path / "app.jsonl.1")
    write(path, line(4) + b"\n")
    drain(tail, pipeline)
    assert count_events(store.engine) == 4 - 1  # line 3 never completed: quarantined, not lost
    assert count_quarantined(store.engine) == 1
    write(path, line(5) + b"\n")
    drain(tail, pipeline)
    assert count_events(store.engine) == 4
    tail.close()


def test_tail_rereads_a_truncated_file(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "app.jsonl"
    write(path, line(1) + b"\n" + line(2) + b"\n")
    pipeline = Pipeline(store)
    tail = JsonlTail(path, "event")
    drain(tail, pipeline)
    with open(path, "r+b") as f:  # copytruncate
        f.truncate(0)
    write(path, line(3) + b"\n")
    drain(tail, pipeline)
    assert count_events(store.engine) == 3
    # Truncated and rewritten past our offset before we looked: the first line tells.
    with open(path, "r+b") as f:
        f.truncate(0)
    write(path, line(4) + b"\n" + line(5) + b"\n" + line(6) + b"\n")
    drain(tail, pipeline)
    assert count_events(store.engine) == 6
    tail.close()


def test_tail_waits_for_a_file_that_appears_later(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "later.jsonl"
    tail = JsonlTail(path, "event")
    assert tail.poll() is None
    assert tail.status().state == "error" and "waiting for" in (tail.status().last_error or "")
    write(path, line(1) + b"\n")
    drain(tail, Pipeline(store))
    assert count_events(store.engine) == 1 and tail.status().state == "running"
    tail.close()


def test_tail_resumes_from_the_committed_position(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "app.jsonl"
    write(path, b"".join(line(i, with_id=False) + b"\n" for i in range(10)))
    pipeline = Pipeline(store)
    first = JsonlTail(path, "event", batch_lines=3)
    batch = first.poll()
    assert batch is not None
    pipeline.write(batch)  # the store holds the first batch and its position; then we "crash"
    first.close()
    resumed = JsonlTail(path, "event", resume=pipeline.load_position(source_key(path)))
    batches = drain(resumed, pipeline)
    assert sum(len(b.events) for b in batches) == 10 - len(batch.events)
    assert pipeline.totals.duplicates == 0 and count_events(store.engine) == 10
    resumed.close()


def test_tail_finishes_a_file_rotated_while_it_was_stopped(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "app.jsonl"
    write(path, line(1) + b"\n")
    pipeline = Pipeline(store)
    tail = JsonlTail(path, "event")
    drain(tail, pipeline)
    tail.close()
    write(path, line(2) + b"\n")  # written after we stopped, then rotated away
    os.rename(path, tmp_path / "app.jsonl.1")
    write(path, line(3) + b"\n")
    again = JsonlTail(path, "event", resume=pipeline.load_position(source_key(path)))
    drain(again, pipeline)
    assert count_events(store.engine) == 3 and pipeline.totals.duplicates == 0
    again.close()


def test_tail_runs_as_a_source_and_stops(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "app.jsonl"
    write(path, line(1) + b"\n" + b"not json\n")

    async def main() -> None:
        with Pipeline(store) as pipeline:
            tail = JsonlTail(path, "event", poll_interval=0.01)
            task = asyncio.create_task(tail.run(pipeline))
            for _ in range(500):
                if tail.status().ingested == 1:
                    break
                await asyncio.sleep(0.01)
            write(path, line(2) + b"\n")
            for _ in range(500):
                if tail.status().ingested == 2:
                    break
                await asyncio.sleep(0.01)
            tail.stop()
            await asyncio.wait_for(task, 10)
            status = tail.status()
            assert (status.ingested, status.rejected, status.state) == (2, 1, "stopped")
            assert tail.committed is not None and tail.committed.offset == path.stat().st_size

    asyncio.run(main())
    assert count_events(store.engine) == 2
