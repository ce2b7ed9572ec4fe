"""The ingest's parser process: files read by a forked child land exactly as when read in-process.

Real files, real SQLite stores, a real child process.  The store's tables
(events, rollups, quarantine, read positions) are compared whole between
``ingest_files(parallel=True)`` and ``parallel=False``.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.sources import parse_process
from app.sources.jsonl import FileIngest, ingest_files
from app.sources.parse_process import ParserProcessFailed, read_files_in_child
from app.sources.pipeline import Pipeline, RowBatch
from storage import Store, open_store
from storage.queries.events import count_events
from storage.queries.rollups import rollup_totals
from tests.integration.test_ingest_sigkill import make_corpus
from tests.unit.test_sources_rows import assert_same_rollups

pytestmark = pytest.mark.skipif(not parse_process.parallel_available(), reason="needs fork (Linux)")

DATA = Path(__file__).parent.parent / "data"


def _ingest(url: str, paths: list[Path], *, parallel: bool) -> FileIngest:
    with open_store(url) as store, Pipeline(store) as pipeline:
        return ingest_files(pipeline, paths, batch_lines=700, parallel=parallel)


def _table(store: Store, sql: str) -> list[tuple[Any, ...]]:
    with store.begin() as conn:
        return sorted(tuple(r) for r in conn.execute(text(sql)).all())


def _rollups(store: Store) -> list[tuple[Any, ...]]:
    from tests.unit.test_sources_rows import _rollup_table

    return _rollup_table(store)


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[Path], int, int]:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    unique_a, bad_a = make_corpus(a, 3000, seed=1)  # bad lines, repeated records, records without ids
    unique_b, bad_b = make_corpus(b, 1500, seed=2)
    otlp = tmp_path / "spans.jsonl"
    shutil.copy(DATA / "otlp_collector.jsonl", otlp)  # not our row format: whole batches cross
    return [a, tmp_path / "missing.jsonl", b, otlp], unique_a + unique_b, bad_a + bad_b


def test_the_parser_process_stores_what_the_in_process_reader_stores(
    tmp_path: Path, files: tuple[list[Path], int, int]
) -> None:
    paths, unique, bad = files
    here, child = f"sqlite:///{tmp_path / 'here.sqlite3'}", f"sqlite:///{tmp_path / 'child.sqlite3'}"
    expected = _ingest(here, paths, parallel=False)
    got = _ingest(child, paths, parallel=True)
    assert got.as_dict() == expected.as_dict()
    assert got.errors == expected.errors and len(got.errors) == 1 and "missing.jsonl" in got.errors[0]
    assert got.ingested > unique  # our events and the spans' events
    with open_store(here) as a, open_store(child) as b:
        for sql in (
            "SELECT * FROM events",  # ids too: the same rows in the same order
            "SELECT source, position, reason, excerpt, record_key FROM quarantine",
            "SELECT source, identity, offset, fingerprint FROM source_positions",
        ):
            assert _table(a, sql) == _table(b, sql), sql
        assert_same_rollups(_rollups(a), _rollups(b))
        assert len(_table(b, "SELECT * FROM quarantine")) == got.rejected >= bad


def test_a_replay_through_the_parser_process_counts_nothing_twice(
    tmp_path: Path, files: tuple[list[Path], int, int]
) -> None:
    paths = files[0]
    first_half = tmp_path / "half.jsonl"
    lines = paths[0].read_bytes().splitlines(keepends=True)
    first_half.write_bytes(b"".join(lines[: len(lines) // 2]))
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    _ingest(url, [first_half], parallel=True)
    once = _ingest(url, paths, parallel=True)  # half of a.jsonl is stored already
    again = _ingest(url, paths, parallel=True)  # all of it is
    assert again.ingested == 0 and again.duplicates == once.ingested + once.duplicates
    with open_store(url) as store:
        events = count_events(store.engine)
        totals = rollup_totals(store.engine)
        ref_url = f"sqlite:///{tmp_path / 'ref.sqlite3'}"
        _ingest(ref_url, paths, parallel=False)
        with open_store(ref_url) as ref:
            assert events == count_events(ref.engine)
            assert totals == rollup_totals(ref.engine)
            assert_same_rollups(_rollups(ref), _rollups(store))


def test_a_parser_process_that_fails_is_reported_with_its_traceback(
    tmp_path: Path, files: tuple[list[Path], int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the reader broke")

    monkeypatch.setattr(parse_process, "read_file", broken)  # the fork inherits it
    with (
        open_store(f"sqlite:///{tmp_path / 's.sqlite3'}") as store,
        Pipeline(store) as pipeline,
        pytest.raises(ParserProcessFailed, match="the reader broke"),
    ):
        ingest_files(pipeline, files[0], parallel=True)
    assert not [p for p in multiprocessing.active_children() if p.name == "controlroom-ingest-parser"]


def test_closing_the_reader_early_ends_the_parser_process(files: tuple[list[Path], int, int]) -> None:
    reader = read_files_in_child(files[0][:1], "event", batch_lines=100, max_line_bytes=1 << 20)
    first = next(reader)
    assert isinstance(first, RowBatch) and len(first.rows) > 0 and first.rollup is not None
    reader.close()
    assert not [p for p in multiprocessing.active_children() if p.name == "controlroom-ingest-parser"]
