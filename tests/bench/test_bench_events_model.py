"""Events table over a million events: how long each read of the lazy model takes (make bench).

The model never holds more than the pages scrolled through; what matters is
that each read stays short at any depth and for every order the page offers.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from app.ui.models.event_query import PRESETS, EventQuery, RowCursor, count_rows, fetch_rows
from storage.engine import open_store
from storage.queries.events import EventFilter, insert_events
from tests.ui.events_data import make_events

N = 1_000_000
END = 1_790_000_000.0


def _ms(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000


def test_bench_events_model_reads(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'bench.db'}")
    try:
        for chunk in range(10):
            insert_events(
                store.engine, make_events(N // 10, end=END - chunk * 86400, span_s=86400, seed=chunk)
            )
        with store.begin() as conn:
            ts, row_id = conn.execute(
                text("select ts_start, id from events order by ts_start desc, id desc limit 1 offset 900000")
            ).one()
        engine = store.engine
        figures = {
            "first page, newest": _ms(lambda: fetch_rows(engine, EventQuery())),
            "page at depth 900k (keyset)": _ms(
                lambda: fetch_rows(engine, EventQuery(), RowCursor(ts, row_id))
            ),
            "count all": _ms(lambda: count_rows(engine, EventQuery())),
            "search user:chen, first page": _ms(lambda: fetch_rows(engine, EventQuery(search="user:chen"))),
            "search a word, first page": _ms(lambda: fetch_rows(engine, EventQuery(search="timeout"))),
        }
        for p in PRESETS:
            figures[f"preset {p.title}, first page"] = _ms(
                lambda p=p: fetch_rows(engine, p.query(EventFilter()))
            )
        last_day = EventFilter(since=END - 86400)
        figures["most tokens, last 24 h"] = _ms(
            lambda: fetch_rows(engine, EventQuery(filters=last_day, sort="tokens"))
        )
        print(f"\nevents table over {N:,} events (SQLite, 500-row pages):")
        for name, ms in figures.items():
            print(f"  {name:<36} {ms:8.1f} ms")
        assert all(ms > 0 for ms in figures.values())
    finally:
        store.close()
