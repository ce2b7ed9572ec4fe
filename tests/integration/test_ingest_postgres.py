"""The ingest pipeline on a real PostgreSQL: the same code, the backend's own rules.

PostgreSQL refuses NUL in text (SQLite keeps it): such an event must be found
and quarantined alone, the rest of the batch stored.  Rollup writers from
several threads must not lose each other's counts (the advisory lock).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.event import Event, Failure
from app.core.ids import new_event_id
from app.core.sketch import LatencySketch
from app.sources.base import Batch, Position, Rejected
from app.sources.jsonl import ingest_files
from app.sources.pipeline import Pipeline
from storage import Store, open_store
from storage.queries.events import count_events
from storage.queries.quarantine import count_quarantined, fetch_quarantined
from storage.queries.rollups import merged_sketch, rollup_totals

pytestmark = pytest.mark.postgres

DATA = Path(__file__).parent.parent / "data"
T0 = 1_780_000_020.0


def make_events(n: int, seed: int, start: float = T0) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(
            ts_start=start + i * 0.01,
            ts_end=start + i * 0.01 + 0.3,
            provider="openai",
            model=rng.choice(["m1", "m2"]),
            route="default",
            event_id=new_event_id(start + i * 0.01),
            failure=rng.choice([Failure.NONE, Failure.TIMEOUT]),
            latency_ms=rng.uniform(10, 1000),
            ttft_ms=rng.uniform(5, 50),
            input_tokens=10,
            cost_usd=0.001,
        )
        for i in range(n)
    ]


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    with open_store(pg_url) as s:
        yield s


def test_batches_rollups_quarantine_and_positions(store: Store) -> None:
    events = make_events(500, seed=1)
    pipeline = Pipeline(store)
    rejected = [Rejected.of("jsonl:/a", "byte 3", "NUL character: x", b"a\x00b", key="fp:3")]
    result = pipeline.write(Batch(events[:300], rejected, [Position("jsonl:/a", "1:2", 99, "fp")]))
    assert (result.ingested, result.rejected) == (300, 1)
    again = pipeline.write(Batch(events, rejected))
    assert (again.ingested, again.duplicates) == (200, 300)
    assert count_events(store.engine) == 500
    assert count_quarantined(store.engine) == 1
    assert fetch_quarantined(store.engine)[0].excerpt == "a\\x00b"
    totals = rollup_totals(store.engine)
    assert totals.requests == 500 and totals.failures["timeout"] == sum(
        e.failure is Failure.TIMEOUT for e in events
    )
    assert merged_sketch(store.engine).same_bins(LatencySketch(e.latency_ms for e in events if e.latency_ms))
    assert pipeline.load_position("jsonl:/a") == Position("jsonl:/a", "1:2", 99, "fp")


def test_an_event_postgres_refuses_is_quarantined_alone(store: Store) -> None:
    events = make_events(100, seed=2)
    events[37].error_message = "nul \x00 inside"
    result = Pipeline(store).write(Batch(events))
    assert (result.ingested, result.rejected, result.reasons) == (99, 1, {"store refused": 1})
    [q] = fetch_quarantined(store.engine)
    assert q.position == f"event {events[37].event_id}"
    assert '"error_message": "nul \\u0000 inside"' in q.excerpt
    assert rollup_totals(store.engine).requests == 99


def test_concurrent_writers_lose_no_rollup_counts(store: Store) -> None:
    batches = [make_events(400, seed=s) for s in range(4)]  # same minutes and keys: contended rows
    errors: list[BaseException] = []

    def write(events: list[Event]) -> None:
        try:
            pipeline = Pipeline(store)
            for i in range(0, len(events), 50):
                pipeline.write(Batch(events[i : i + 50]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(b,), name=f"controlroom-test-{i}") for i, b in enumerate(batches)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    every = [e for b in batches for e in b]
    assert count_events(store.engine) == 1600
    totals = rollup_totals(store.engine)
    assert totals.requests == 1600 and totals.ttft_n == 1600
    assert merged_sketch(store.engine).same_bins(LatencySketch(e.latency_ms for e in every if e.latency_ms))


def test_the_corpus_ingests_on_postgres(store: Store) -> None:
    with Pipeline(store) as pipeline:
        report = ingest_files(pipeline, [DATA / "malformed.jsonl", DATA / "otlp_collector.jsonl"])
    assert (report.ingested, report.duplicates, report.rejected) == (3 + 3, 1, 13 + 1)
    assert count_quarantined(store.engine) == 14


def test_our_own_lines_take_the_row_path_on_postgres(store: Store, tmp_path: Path) -> None:
    # Read straight to rows (no Event per line), written with executemany on PostgreSQL;
    # read twice: the second read is all duplicates, nothing counted twice in the rollups.
    events = make_events(2500, seed=11)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    for expected in ((2500, 0), (0, 2500)):
        with Pipeline(store, max_batch=1000) as pipeline:
            report = ingest_files(pipeline, [path], "event", batch_lines=700)
        assert (report.ingested, report.duplicates, report.rejected) == (*expected, 0)
    assert count_events(store.engine) == 2500
    assert rollup_totals(store.engine).requests == 2500
    assert merged_sketch(store.engine).same_bins(LatencySketch(e.latency_ms for e in events if e.latency_ms))
    assert merged_sketch(store.engine, "ttft_sketch").same_bins(
        LatencySketch(e.ttft_ms for e in events if e.ttft_ms)
    )
