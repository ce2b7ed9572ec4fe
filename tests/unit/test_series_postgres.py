"""The history tiers on a real PostgreSQL server: the triggers, compaction and queries of test_series.py."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from app.sources.pipeline import Pipeline
from storage import Store, open_store
from storage.queries.compaction import DAY, HOUR, apply_retention, compact_rollups, dirty_blocks
from tests.unit.test_series import (
    NOW,
    check_late_record,
    check_reconciliation,
    check_series,
    check_splits,
    check_top_n,
    check_users,
    make_events,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    with open_store(pg_url) as s:
        yield s


def test_tiers_answer_like_the_raw_events_on_postgresql(store: Store) -> None:
    rng = random.Random(21)
    events = make_events(rng, NOW - 3 * DAY, NOW - 60, 250) + make_events(rng, NOW - 2 * HOUR, NOW - 60, 100)
    Pipeline(store).write_events(events)
    blocks = dirty_blocks(store.engine)
    assert blocks and all(b % 300 == 0 for b in blocks)  # the PL/pgSQL trigger marked them
    fresh = check_series(store, events, NOW - 24 * HOUR, NOW)
    assert fresh.raw_blocks > 0
    check_users(store, events)
    compact_rollups(store.engine, now=NOW)
    assert not dirty_blocks(store.engine)
    for hours in (1, 24, 72):
        assert check_series(store, events, NOW - hours * HOUR, NOW).raw_blocks == 0
    check_splits(store, events)
    check_users(store, events)
    check_top_n(store, events)
    check_late_record(store, events)
    assert apply_retention(store.engine, now=NOW).events == 0  # nothing is old enough


def test_reconciliation_on_postgresql(store: Store) -> None:
    check_reconciliation(store)
