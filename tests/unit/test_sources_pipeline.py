"""The ingest pipeline on a real SQLite store: idempotence, rollups, quarantine, positions, threads."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select

from app.core.event import CacheHit, Event, Failure
from app.core.ids import new_event_id
from app.core.sketch import LatencySketch
from app.sources.base import Batch, Position, Rejected
from app.sources.live import LiveAggregator
from app.sources.pipeline import Pipeline, PipelineStopped, StoreUnavailable, WriteResult
from storage import Store, open_store
from storage.engine import create_store_engine
from storage.models import ROLLUP_MINUTE
from storage.queries.events import count_events, get_event
from storage.queries.quarantine import count_quarantined, fetch_quarantined, quarantine_reasons
from storage.queries.rollups import merged_sketch, rollup_totals

T0 = 1_780_000_020.0  # 20 s into a minute


def make_events(n: int, *, start: float = T0, seed: int = 1, step: float = 0.5) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = start + i * step
        failure = rng.choice([Failure.NONE] * 8 + [Failure.TIMEOUT, Failure.RATE_LIMITED])
        out.append(
            Event(
                ts_start=ts,
                ts_end=ts + 0.4,
                provider=rng.choice(["openai", "anthropic"]),
                model="m1",
                route=rng.choice(["default", None]),
                feature="search",
                user=f"u{i % 3}",
                event_id=new_event_id(ts),
                failure=failure,
                latency_ms=rng.lognormvariate(6, 0.5),
                ttft_ms=rng.uniform(50, 200) if i % 2 else None,
                input_tokens=100,
                output_tokens=10,
                cost_usd=None if i % 10 == 0 else 0.001,
                cache_hit=CacheHit.EXACT if i % 7 == 0 else CacheHit.NONE,
            )
        )
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


def check_rollups_match_events(store: Store, events: list[Event]) -> None:
    """The rollups hold exactly the events: counts, sums and sketches."""
    totals = rollup_totals(store.engine)
    assert totals.requests == len(events)
    assert totals.failures["timeout"] == sum(e.failure is Failure.TIMEOUT for e in events)
    assert totals.failures["rate_limited"] == sum(e.failure is Failure.RATE_LIMITED for e in events)
    assert totals.cache_hits == sum(e.cache_hit is not CacheHit.NONE for e in events)
    assert totals.cost_unknown == sum(e.cost_usd is None for e in events)
    assert totals.input_tokens == sum(e.input_tokens for e in events)
    assert totals.cost_usd == pytest.approx(sum(e.cost_usd or 0 for e in events))
    assert totals.latency_n == len(events)
    assert totals.ttft_n == sum(e.ttft_ms is not None for e in events)
    expected = LatencySketch(e.latency_ms for e in events if e.latency_ms is not None)
    assert merged_sketch(store.engine).same_bins(expected)
    expected_ttft = LatencySketch(e.ttft_ms for e in events if e.ttft_ms is not None)
    assert merged_sketch(store.engine, "ttft_sketch").same_bins(expected_ttft)


def test_a_batch_lands_with_its_rollups_quarantine_and_position(store: Store) -> None:
    events = make_events(300)
    rejected = [Rejected.of("jsonl:/a", "byte 9", "invalid JSON: cut", b"{", key="fp:9")]
    position = Position("jsonl:/a", "1:2", 4096, "abc")
    result = Pipeline(store).write(Batch(events, rejected, [position]))
    assert result == WriteResult(ingested=300, duplicates=0, rejected=1, reasons={"invalid JSON": 1})
    assert count_events(store.engine) == 300
    check_rollups_match_events(store, events)
    [q] = fetch_quarantined(store.engine)
    assert (q.source, q.position, q.reason, q.excerpt) == ("jsonl:/a", "byte 9", "invalid JSON: cut", "{")
    assert Pipeline(store).load_position("jsonl:/a") == position
    # Rollup rows are per minute x provider x model x route x feature; missing route is "".
    with store.begin() as conn:
        keys = conn.execute(select(ROLLUP_MINUTE.c.minute, ROLLUP_MINUTE.c.route)).all()
    assert all(m % 60 == 0 for m, _ in keys) and {r for _, r in keys} == {"default", ""}


def test_replays_count_as_duplicates_and_never_twice_in_rollups(store: Store) -> None:
    events = make_events(200)
    pipeline = Pipeline(store)
    assert pipeline.write(Batch(events[:120])).ingested == 120
    # A replay of everything: the first 120 are stored already (the mixed path), 80 are new.
    again = pipeline.write(Batch(events))
    assert (again.ingested, again.duplicates) == (80, 120)
    # Pure replay: nothing new.
    assert pipeline.write(Batch(events)) == WriteResult(0, 200, 0, {})
    # Repeats inside one batch: the first occurrence wins.
    fresh = make_events(10, start=T0 + 10_000, seed=2)
    assert pipeline.write(Batch(fresh + fresh[:4])) == WriteResult(10, 4, 0, {})
    assert count_events(store.engine) == 210
    check_rollups_match_events(store, events + fresh)
    assert pipeline.totals == WriteResult(ingested=210, duplicates=324, rejected=0, reasons={})


def test_rollups_merge_across_batches_in_the_same_minute(store: Store) -> None:
    events = make_events(400, step=0.05)  # 20 s: every batch touches the same rows
    pipeline = Pipeline(store)
    for i in range(0, 400, 37):
        pipeline.write(Batch(events[i : i + 37]))
    check_rollups_match_events(store, events)


def test_a_record_the_store_refuses_is_found_and_quarantined_alone(store: Store) -> None:
    events = make_events(50)
    bad = make_events(1, start=T0 + 5000, seed=9)[0]
    bad.model = {"not": "a string"}  # type: ignore[assignment]  # what a buggy source might hand over
    result = Pipeline(store).write(Batch([*events[:20], bad, *events[20:]]))
    assert (result.ingested, result.rejected, result.reasons) == (50, 1, {"store refused": 1})
    assert count_events(store.engine) == 50
    check_rollups_match_events(store, events)
    [q] = fetch_quarantined(store.engine)
    assert q.position == f"event {bad.event_id}" and q.reason.startswith("store refused: ")


def test_an_unusable_store_raises_and_commits_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    open_store(url).close()
    engine = create_store_engine(url)

    @sa_event.listens_for(engine, "connect")
    def read_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only=ON")

    try:
        with pytest.raises(StoreUnavailable, match="could not take the batch"):
            Pipeline(engine).write(Batch(make_events(5), positions=[Position("k", "1:1", 10)]))
    finally:
        engine.dispose()
    with open_store(url) as s:
        assert count_events(s.engine) == 0
        assert Pipeline(s).load_position("k") is None


def test_quarantine_keeps_each_keyed_record_once_and_unkeyed_always(store: Store) -> None:
    pipeline = Pipeline(store)
    keyed = Rejected.of("jsonl:/a", "byte 1", "invalid JSON: x", b"{", key="fp:1")
    loose = Rejected.of("otlp", "request 1", "not an object: y", b"[]")
    for _ in range(3):
        assert pipeline.write(Batch(rejected=[keyed, loose])).rejected == 2
    assert count_quarantined(store.engine) == 4
    assert quarantine_reasons(store.engine) == {"invalid JSON": 1, "not an object": 3}


def test_excerpts_are_bounded_and_storable(store: Store) -> None:
    raw = b"\xff\x00" + "é".encode() * 10_000
    rej = Rejected.of("s", "p", "invalid UTF-8: x", raw)
    Pipeline(store).write(Batch(rejected=[rej]))
    [q] = fetch_quarantined(store.engine)
    assert q.excerpt.startswith("\\xff\\x00é") and q.excerpt.endswith("[20,002 bytes in all]")
    assert len(q.excerpt) < 2100


def test_the_live_view_gets_only_new_events_after_the_commit(store: Store) -> None:
    now = time.time()
    live = LiveAggregator()
    events = make_events(30, start=now - 20)
    pipeline = Pipeline(store, live=live)
    pipeline.write(Batch(events))
    pipeline.write(Batch(events))  # duplicates: not shown twice
    assert live.series(seconds=60).requests.sum() == 30


def test_the_writer_thread_coalesces_batches_and_answers_each(store: Store) -> None:
    events = make_events(1000)
    with Pipeline(store, max_batch=10_000) as pipeline:
        futures = [pipeline.submit(Batch(events[i : i + 100])) for i in range(0, 1000, 100)]
        futures.append(pipeline.submit(Batch(events[:100], [Rejected.of("s", "p", "bad value: z", b"")])))
        results = [f.result(timeout=30) for f in futures]
    assert [r.ingested for r in results[:10]] == [100] * 10
    assert (results[10].ingested, results[10].duplicates, results[10].rejected) == (0, 100, 1)
    assert count_events(store.engine) == 1000
    check_rollups_match_events(store, events)
    with pytest.raises(PipelineStopped):
        pipeline.submit(Batch(events[:1]))


def test_submit_async_from_an_event_loop(store: Store) -> None:
    events = make_events(500)

    async def main(pipeline: Pipeline) -> list[WriteResult]:
        return await asyncio.gather(*(pipeline(Batch(events[i : i + 50])) for i in range(0, 500, 50)))

    with Pipeline(store, queue_events=120) as pipeline:  # a small queue: submitters wait their turn
        results = asyncio.run(main(pipeline))
    assert sum(r.ingested for r in results) == 500
    assert count_events(store.engine) == 500


def test_stop_writes_what_is_queued(store: Store) -> None:
    pipeline = Pipeline(store)
    pipeline.start()
    futures = [pipeline.submit(Batch(make_events(10, start=T0 + i * 100, seed=i))) for i in range(20)]
    pipeline.stop()
    assert all(f.done() and f.result().ingested == 10 for f in futures)
    assert count_events(store.engine) == 200


def test_an_event_with_a_nul_is_stored_on_sqlite(store: Store) -> None:
    # SQLite keeps NUL in text; PostgreSQL refuses it (tests/integration/test_ingest_postgres.py).
    e = make_events(1)[0]
    e.error_message = "a\x00b"
    assert Pipeline(store).write(Batch([e])).ingested == 1
    stored = get_event(store.engine, e.event_id)
    assert stored is not None and stored.error_message == "a\x00b"
