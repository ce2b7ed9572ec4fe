"""The ingest row path: our own JSONL lines straight to store rows, rows into the store and rollups.

Each fast piece is held to the general path it replaces: ``EventFormat.parse_rows``
to ``parse_line`` + ``event_rows``; ``merge_rollup_rows`` to ``merge_rollups(accumulate())``;
``add_values`` to ``LatencySketch.add``; the pipeline's row batches to its event batches.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.core.event import CacheHit, Event, Failure
from app.core.ids import derived_event_id, new_event_id
from app.core.sketch import LatencySketch
from app.sources import formats
from app.sources.base import Batch
from app.sources.formats import EventFormat, Parsed
from app.sources.jsonl import read_file
from app.sources.live import LiveAggregator
from app.sources.pipeline import Pipeline, RowBatch, pack_rows
from storage import Store, open_store
from storage.models import ROLLUP_MINUTE
from storage.queries.events import (
    EVENT_COLUMNS,
    count_events,
    event_from_row,
    event_rows,
    get_event,
    insert_rows,
)
from storage.queries.quarantine import fetch_quarantined
from storage.queries.rollups import (
    ROW_COLUMNS,
    accumulate,
    apply_rows_rollup,
    merge_rollup_rows,
    merge_rollups,
    merge_rows_rollups,
    rollup_of_rows,
    rollup_totals,
)
from storage.queries.sketch_batch import add_values, sketch_keys

T0 = 1_780_000_020.0
_LAT = EVENT_COLUMNS.index("latency_ms")


def make_events(n: int, *, start: float = T0, seed: int = 1, step: float = 0.5) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = start + i * step
        failure = rng.choice(
            [Failure.NONE] * 6 + [Failure.TIMEOUT, Failure.RATE_LIMITED, Failure.QUALITY_FAIL]
        )
        out.append(
            Event(
                ts_start=ts,
                ts_end=ts + 0.4,
                provider=rng.choice(["openai", "anthropic"]),
                model=rng.choice(["m1", "m2"]),
                route=rng.choice(["default", None]),
                feature=rng.choice(["search", None, "chat"]),
                user=f"u{i % 3}",
                tags=rng.choice([{}, {"team": "core"}, {"team": "ops", "env": "prod", "note": 'é "q"'}]),
                targets_tried=rng.choice([[], ["fast"], ["fast", "strong"]]),
                event_id=new_event_id(ts),
                failure=failure,
                latency_ms=rng.choice([None, 0.0, rng.lognormvariate(6, 0.8)]),
                ttft_ms=rng.uniform(50, 200) if i % 2 else None,
                input_tokens=rng.randrange(5000),
                output_tokens=rng.randrange(900),
                cache_read_tokens=rng.choice([0, 17]),
                reasoning_tokens=rng.choice([0, 3]),
                cost_usd=None if i % 10 == 0 else rng.random() / 100,
                cache_hit=CacheHit.EXACT if i % 7 == 0 else CacheHit.NONE,
                stream=bool(i % 2),
                status_code=rng.choice([200, 429, None]),
                prompt_name=rng.choice([None, "p"]),
                prompt_version=rng.choice([None, 3]),
            )
        )
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


# --- parse_rows against the careful path --------------------------------------------------------


def _mutate(d: dict[str, Any], kind: int) -> bytes:
    """One way of many a line of our own format can be irregular or wrong."""
    changes: dict[int, Any] = {
        0: ("event_id", None), 1: ("event_id", "abc"), 2: ("event_id", ""), 3: ("source", None),
        4: ("source", ""), 5: ("tags", {"a": 1}), 6: ("tags", ["x"]), 7: ("targets_tried", "x"),
        8: ("targets_tried", [1]), 9: ("latency_ms", -1), 10: ("input_tokens", -5), 11: ("input_tokens", 1.0),
        12: ("input_tokens", 2**60), 13: ("failure", "weird"), 14: ("cache_hit", None), 15: ("stream", 1),
        16: ("prompt_version", True), 17: ("status_code", 5000), 18: ("ts_end", "x"), 19: ("model", None),
        20: ("error_message", "y" * ((1 << 20) + 5)), 21: ("user", "nul\x00"), 22: ("ts_start", 1_780_000_000),
        23: ("attempts", -1), 24: ("cost_usd", "1"), 25: ("prompt_version", 2**40), 26: ("ttft_ms", -0.5),
    }  # fmt: skip
    if kind == 27:
        del d["event_id"]
    elif kind == 28:
        del d["tags"]
    elif kind == 29:
        d["event_id"] = str(d["event_id"]).upper()
    elif kind == 30:
        return b"{not json"
    elif kind == 31:
        return b"[1, 2]"
    elif kind == 32:
        return b'{"ts_start": 5, "provider": "p", "model": "m", "latency_ms": 10, "note": "\\ud800"}'
    elif kind == 33:
        return b'{"ts_start": 5, "provider": "p", "model": "m", "user": "a\\u0000b"}'
    elif kind == 34:
        d["extra"] = {"ignored": True}
    elif kind == 35:  # the same record spelled otherwise: escapes, spaces (tags and targets too)
        return json.dumps(d, ensure_ascii=True, separators=(" , ", " : ")).encode()
    else:
        name, value = changes[kind]
        d[name] = value
    return json.dumps(d, ensure_ascii=False).encode()


@pytest.fixture(params=["msgspec", "orjson"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both plain paths: msgspec's checked records when installed, orjson and checks in Python."""
    if request.param == "msgspec":
        if formats._typed_row is None:
            pytest.skip("msgspec is not installed: the orjson path is the plain path")
    else:
        monkeypatch.setattr(formats, "_typed_row", None)
    return str(request.param)


def test_parse_rows_matches_the_careful_path_line_for_line(decoder: str) -> None:
    events = make_events(700)
    lines = [e.to_json().encode() for e in events]
    for i in range(0, len(lines), 2):  # every other line irregular, every kind many times
        lines[i] = _mutate(json.loads(lines[i]), (i // 2) % 36)
    pairs = [(i * 1000, line) for i, line in enumerate(lines)]
    fmt = EventFormat()
    careful = Parsed()
    for off, line in pairs:
        fmt.parse_line(line, source="jsonl:/x", key=f"fp:{off}", position=f"byte {off}", out=careful)
    fast = Parsed(rows=[])
    fmt.parse_rows(pairs, source="jsonl:/x", fingerprint="fp", out=fast)
    expected = event_rows(careful.events)
    assert fast.rows is not None and fast.events == []
    assert len(fast.rows) == len(expected) and 350 < len(expected) < 700
    for got, want in zip(fast.rows, expected, strict=True):
        assert got == want and list(map(type, got)) == list(map(type, want))
    assert [(r.position, r.reason, r.excerpt, r.key) for r in fast.rejected] == [
        (r.position, r.reason, r.excerpt, r.key) for r in careful.rejected
    ]
    reasons = {r.category for r in fast.rejected}
    assert {"invalid JSON", "not an object", "wrong type", "bad value", "NUL character"} <= reasons


def test_parse_rows_derives_ids_as_the_event_path_does(decoder: str) -> None:
    d = make_events(1)[0].to_dict()
    del d["event_id"]
    foreign = dict(d, event_id="req-7")
    pairs = [(0, json.dumps(d).encode()), (812, json.dumps(foreign).encode())]
    out = Parsed(rows=[])
    EventFormat().parse_rows(pairs, source="jsonl:/x", fingerprint="fp", out=out)
    assert out.rows is not None
    assert [r[0] for r in out.rows] == [
        derived_event_id(d["ts_start"], "fp:0"),
        derived_event_id(d["ts_start"], "id:req-7"),
    ]


def test_read_file_gives_row_batches_whose_events_are_the_lines(tmp_path: Path, decoder: str) -> None:
    events = make_events(50)
    path = tmp_path / "a.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in events) + "{cut", encoding="utf-8")
    batches = list(read_file(path, "event", batch_lines=20))
    assert all(isinstance(b, RowBatch) for b in batches)
    assert [e for b in batches for e in b.events] == events
    assert sum(len(b) for b in batches) == 51  # 50 rows and the truncated last line
    assert [r.category for b in batches for r in b.rejected] == ["truncated line"]


def test_event_from_row_is_the_inverse_of_building_the_row() -> None:
    events = make_events(40)
    assert [event_from_row(r) for r in event_rows(events)] == events


# --- rows into the store ------------------------------------------------------------------------


def test_insert_rows_is_idempotent_across_statement_boundaries(store: Store) -> None:
    rows = event_rows(make_events(450))  # two full multi-row statements and a tail
    assert insert_rows(store.engine, rows[:201]).inserted == 201
    result = insert_rows(store.engine, rows)
    assert (result.inserted, result.duplicates) == (249, 201)
    assert count_events(store.engine) == 450
    stored = get_event(store.engine, rows[333][0])
    assert stored is not None and event_rows([stored]) == [rows[333]]


def test_insert_rows_keeps_within_the_builds_limit_on_bound_parameters(store: Store) -> None:
    rows = event_rows(make_events(100))
    with store.begin(write=True) as conn:
        dbapi: Any = conn.connection.driver_connection
        old = dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # SQLite before 3.32
        try:
            assert insert_rows(conn, rows).inserted == 100  # 31 rows a statement
        finally:
            dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, old)
    assert count_events(store.engine) == 100


def test_insert_rows_refuses_an_unbindable_row_and_keeps_nothing(store: Store) -> None:
    rows = event_rows(make_events(300))
    broken = list(rows[250])
    broken[5] = {"not": "a string"}  # model
    rows[250] = tuple(broken)
    with pytest.raises(SQLAlchemyError):
        insert_rows(store.engine, rows)
    assert count_events(store.engine) == 0


# --- rollups from rows --------------------------------------------------------------------------


def _rollup_table(s: Store) -> list[tuple[Any, ...]]:
    with s.begin() as conn:
        return sorted(conn.execute(select(*[ROLLUP_MINUTE.c[c] for c in ROW_COLUMNS])).all())


def assert_same_rollups(old: list[tuple[Any, ...]], new: list[tuple[Any, ...]]) -> None:
    """Equal rollup rows: counts exactly, float sums to rounding, sketches bin for bin."""
    assert len(old) == len(new)
    for row_old, row_new in zip(old, new, strict=True):
        for name, x, y in zip(ROW_COLUMNS, row_old, row_new, strict=True):
            if name.endswith("_sketch"):
                assert (x is None) == (y is None), name
                if x is not None:
                    sx, sy = LatencySketch.from_bytes(x), LatencySketch.from_bytes(y)
                    assert sx.same_bins(sy) and (sx.count, sx.min, sx.max) == (sy.count, sy.min, sy.max)
                    assert sy.sum == pytest.approx(sx.sum, rel=1e-12)
            elif isinstance(x, float):
                assert y == pytest.approx(x, rel=1e-12, abs=1e-15), name
            else:
                assert (x, type(x)) == (y, type(y)), name


def test_merge_rollup_rows_writes_what_merge_rollups_writes(tmp_path: Path) -> None:
    events = make_events(2000, step=0.2)  # ~7 minutes: batches share rows with what is stored
    with (
        open_store(f"sqlite:///{tmp_path / 'a.sqlite3'}") as a,
        open_store(f"sqlite:///{tmp_path / 'b.sqlite3'}") as b,
    ):
        for i in range(0, len(events), 333):
            part = events[i : i + 333]
            with a.begin(write=True) as conn:
                merge_rollups(conn, accumulate(part))
            with b.begin(write=True) as conn:
                merge_rollup_rows(conn, event_rows(part))
        old, new = _rollup_table(a), _rollup_table(b)
    assert len(old) > 20
    assert_same_rollups(old, new)


def test_add_values_bins_exactly_as_ddsketch_adds() -> None:
    mapping = LatencySketch()._sketch._mapping
    edges = [mapping.value(k) for k in range(-50, 900, 7)] + [
        math.pow(mapping.gamma, k) for k in range(0, 700, 13)
    ]
    rng = random.Random(4)
    stored_values = [[rng.lognormvariate(5, 2) for _ in range(rng.randrange(30))] for _ in range(5)]
    stored_values[1] = []
    stored_values[2] = [0.0, 0.0, 12.5]
    stored: list[bytes | None] = [LatencySketch(v).to_bytes() if v else None for v in stored_values]
    values = edges + [0.0, 1e-320, 5e-324] + [rng.lognormvariate(3, 3) for _ in range(500)]
    groups = [rng.randrange(4) for _ in values]  # group 4 gets nothing
    out = add_values(stored, np.array(values), np.array(groups, dtype=np.int64))
    for g in range(5):
        ref = LatencySketch(stored_values[g] + [v for v, gg in zip(values, groups, strict=True) if gg == g])
        if not ref.count:
            assert out[g] is None
            continue
        blob = out[g]
        assert blob is not None
        got = LatencySketch.from_bytes(blob)
        assert got.same_bins(ref) and (got.count, got.min, got.max) == (ref.count, ref.min, ref.max)
        assert blob[:-8] == ref.to_bytes()[:-8]  # the same bytes but the running sum
    keys = sketch_keys(np.array(edges))
    assert keys.tolist() == [mapping.key(v) for v in edges]


def test_add_values_takes_the_general_path_for_sketches_it_cannot_decode_fast() -> None:
    weighted = LatencySketch()
    weighted.add(10.0, 2.5)  # float counts: another layout
    out = add_values([weighted.to_bytes(), None], np.array([1.0, 2.0, 3.0]), np.array([0, 0, 1]))
    assert out[0] is not None and out[1] is not None
    first = LatencySketch.from_bytes(out[0])
    assert first.count == 4.5 and first.min == 1.0 and first.max == 10.0
    assert LatencySketch.from_bytes(out[1]).count == 1


# --- the pipeline with row batches ----------------------------------------------------------------


def test_row_batches_and_event_batches_land_alike(tmp_path: Path) -> None:
    events = make_events(600)
    with (
        open_store(f"sqlite:///{tmp_path / 'a.sqlite3'}") as a,
        open_store(f"sqlite:///{tmp_path / 'b.sqlite3'}") as b,
    ):
        by_events, by_rows = Pipeline(a), Pipeline(b)
        for i in range(0, 600, 150):
            part = events[i : i + 150]
            r1 = by_events.write(Batch(part + part[:10]))
            r2 = by_rows.write(RowBatch(event_rows(part + part[:10])))
            assert r1 == r2 and (r2.ingested, r2.duplicates) == (150, 10)
        assert by_rows.write(RowBatch(event_rows(events))).duplicates == 600
        assert count_events(b.engine) == 600
        assert_same_rollups(_rollup_table(a), _rollup_table(b))


def test_the_writer_thread_coalesces_row_and_event_batches(store: Store) -> None:
    events = make_events(400)
    rows = event_rows(events)
    with Pipeline(store, max_batch=10_000) as pipeline:
        futures = [pipeline.submit(RowBatch(rows[:200])), pipeline.submit(Batch(events[100:300]))]
        futures.append(pipeline.submit(RowBatch(rows[250:])))
        results = [f.result(timeout=30) for f in futures]
    assert [(r.ingested, r.duplicates) for r in results] == [(200, 0), (100, 100), (100, 50)]
    assert count_events(store.engine) == 400


def test_a_row_the_store_refuses_is_quarantined_alone(store: Store) -> None:
    rows = event_rows(make_events(30))
    broken = list(rows[7])
    broken[5] = {"not": "a string"}
    rows[7] = tuple(broken)
    result = Pipeline(store).write(RowBatch(rows))
    assert (result.ingested, result.rejected, result.reasons) == (29, 1, {"store refused": 1})
    [q] = fetch_quarantined(store.engine)
    assert q.position == f"event {rows[7][0]}" and q.reason.startswith("store refused: ")
    assert json.loads(q.excerpt)["model"] == {"not": "a string"}


def test_the_live_view_gets_row_batches_as_events(store: Store) -> None:
    live = LiveAggregator()
    events = make_events(40, start=time.time() - 30)
    pipeline = Pipeline(store, live=live)
    pipeline.write(RowBatch(event_rows(events)))
    pipeline.write(RowBatch(event_rows(events)))  # replayed: not shown twice
    assert live.series(seconds=60).requests.sum() == 40


# --- rollups computed ahead (the parser process) ---------------------------------------------


def test_rollups_computed_ahead_and_merged_write_what_merge_rollup_rows_writes(tmp_path: Path) -> None:
    events = make_events(3000, step=0.2)  # ~10 minutes: the parts share their boundary minutes
    parts = [event_rows(events[i : i + 400]) for i in range(0, len(events), 400)]
    with (
        open_store(f"sqlite:///{tmp_path / 'a.sqlite3'}") as a,
        open_store(f"sqlite:///{tmp_path / 'b.sqlite3'}") as b,
    ):
        with a.begin(write=True) as conn:
            merge_rollup_rows(conn, [r for part in parts for r in part])
        # Two transactions of several parts each: merged per transaction, as the writer does.
        for group in (parts[:3], parts[3:]):
            ahead = merge_rows_rollups([rollup_of_rows(p) for p in group])
            assert ahead.rows == sum(map(len, group))
            with b.begin(write=True) as conn:
                apply_rows_rollup(conn, ahead)
        expected, got = _rollup_table(a), _rollup_table(b)
    assert len(expected) > 40
    assert_same_rollups(expected, got)


def test_a_packed_row_batch_unpacks_where_its_rows_are_read() -> None:
    rows = event_rows(make_events(50))
    batch = RowBatch.packed(pack_rows(rows), len(rows))
    assert len(batch) == 50 and batch._packed is not None  # counted without unpacking
    assert batch.rows == rows and batch._packed is None
    with pytest.raises(ValueError, match="hold 50 rows, not 49"):
        _ = RowBatch.packed(pack_rows(rows), 49).rows


def test_rollups_computed_ahead_are_ignored_when_some_rows_were_stored_before(store: Store) -> None:
    rows = event_rows(make_events(600, step=0.1))
    first, rest = rows[:250], rows[250:]
    pipeline = Pipeline(store)
    pipeline.write(RowBatch(first, rollup=rollup_of_rows(first)))
    # A replay that also brings new rows, with rollups made for all of them: only the new count.
    result = pipeline.write(RowBatch(rows, rollup=rollup_of_rows(rows)))
    assert (result.ingested, result.duplicates) == (len(rest), len(first))
    # Repeats within a batch also make the writer sum only what it stored.
    again = rows[:10] + rows[:10]
    assert pipeline.write(RowBatch(again, rollup=rollup_of_rows(again))).ingested == 0
    # And so do repeats across batches joined into one transaction (as the writer thread joins them).
    more = event_rows(make_events(300, start=T0 + 50_000, seed=3))
    a, b = more[:200], more[100:]
    results, _ = pipeline._write_many(
        [RowBatch(a, rollup=rollup_of_rows(a)), RowBatch(b, rollup=rollup_of_rows(b))]
    )
    assert [(r.ingested, r.duplicates) for r in results] == [(200, 0), (100, 100)]
    rows += more
    totals = rollup_totals(store.engine)
    assert totals.requests == len(rows) == count_events(store.engine)
    assert totals.latency_n == sum(1 for r in rows if r[_LAT] is not None)


def test_only_large_transactions_leave_their_wal_checkpoint_to_a_thread(store: Store) -> None:
    small, large = event_rows(make_events(100)), event_rows(make_events(6000, start=T0 + 100_000, seed=2))
    pipeline = Pipeline(store)
    with pipeline:
        assert pipeline.submit(RowBatch(small)).result().ingested == 100
        assert pipeline._checkpointer.checkpoints == 0  # SQLite's own checkpoint, in the commit
        assert pipeline.submit(RowBatch(large)).result().ingested == 6000
    # Stopping waits for the pass the large commit asked for.
    assert pipeline._checkpointer.checkpoints == 1 and not pipeline._checkpointer.active
