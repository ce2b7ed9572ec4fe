"""What the app's collector tells the Sources page, and how fast it takes a change from the store.

Real parts: a SQLite store, the ingest pipeline, JSONL files on disk, a runtime thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core.event import Event
from app.runtime import Runtime
from app.sources.base import SourceState
from app.sources.collector import Collector, SourceReport
from storage import Store, open_store
from storage.queries.events import count_events
from storage.queries.quarantine import count_quarantined_by_source, fetch_quarantined
from storage.queries.source_configs import SourceConfig, save_source_config, set_source_paused


def wait_for(
    check: Callable[[], bool], what: str, state: Callable[[], object] | None = None, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state else ""))
        time.sleep(0.02)


def write_lines(path: Path, n: int, *, bad: int = 0) -> None:
    with path.open("a", encoding="utf-8") as f:
        now = time.time()
        for i in range(n):
            f.write(
                Event(ts_start=now - 60 + i, ts_end=now - 59 + i, provider="openai", model="m").to_json()
                + "\n"
            )
        for i in range(bad):
            f.write(
                '{"ts_start": "not a time", "provider": "openai"' + "\n" if i % 2 else "not json at all\n"
            )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime() as rt:
        yield rt


def test_a_stored_change_is_applied_at_once_and_reported(
    store: Store, runtime: Runtime, tmp_path: Path
) -> None:
    # No periodic reload: only the control-version watch can make it see the new source.
    collector = Collector(
        store, compact_every_s=None, retain_every_s=None, reload_every_s=None, watch_every_s=0.1
    )
    runtime.run(collector.start(), timeout=20)
    try:

        def reports() -> list[SourceReport]:
            return runtime.run(_reports(collector), timeout=5)

        assert reports() == []
        log = tmp_path / "service.jsonl"
        write_lines(log, 20, bad=2)
        save_source_config(
            store.engine, SourceConfig("service", "jsonl", {"path": str(log), "poll_interval": 0.05})
        )
        wait_for(lambda: count_events(store.engine) == 20, "the file's events", reports)
        wait_for(
            lambda: sum(count_quarantined_by_source(store.engine).values()) == 2, "the bad lines quarantined"
        )
        (report,) = reports()
        assert report.name == "service" and report.kind == "jsonl" and report.origin == "store"
        assert report.state is SourceState.RUNNING and report.healthy and not report.paused
        assert report.ingested == 20 and report.rejected == 2
        wait_for(lambda: reports()[0].lag == "up to date", "the lag to close", reports)
        # The quarantine names its records the way the report says.
        keys = set(count_quarantined_by_source(store.engine))
        assert keys == set(report.quarantine_keys)
        reasons = {
            r.reason.split(":")[0] for r in fetch_quarantined(store.engine, sources=report.quarantine_keys)
        }
        assert reasons and all(reasons)

        # Events per second follow what it reads.
        write_lines(log, 200)
        wait_for(lambda: count_events(store.engine) == 220, "the second batch")
        wait_for(lambda: reports()[0].events_per_s > 0, "a non-zero rate", reports)

        # Paused from the store: stopped within the watch interval, shown as paused.
        set_source_paused(store.engine, "service", True, actor="test")
        wait_for(lambda: reports()[0].state is SourceState.PAUSED, "the pause", reports)
        assert reports()[0].paused and not reports()[0].healthy
    finally:
        runtime.run(collector.aclose(), timeout=30)


def test_a_broken_source_reports_its_error(store: Store, runtime: Runtime, tmp_path: Path) -> None:
    save_source_config(
        store.engine, SourceConfig("remote", "http_poll", {"url": "http://127.0.0.1:9/x", "interval_s": 60})
    )
    collector = Collector(store, compact_every_s=None, retain_every_s=None, reload_every_s=None)
    runtime.run(collector.start(), timeout=20)
    try:
        wait_for(
            lambda: runtime.run(_reports(collector), timeout=5)[0].state is SourceState.ERROR,
            "the error state",
        )
        report = runtime.run(_reports(collector), timeout=5)[0]
        assert not report.healthy and "cannot connect" in (report.last_error or "")
    finally:
        runtime.run(collector.aclose(), timeout=30)


def test_closing_while_starting_leaves_nothing_running(
    store: Store, runtime: Runtime, tmp_path: Path
) -> None:
    log = tmp_path / "a.jsonl"
    write_lines(log, 3)
    save_source_config(store.engine, SourceConfig("a", "jsonl", {"path": str(log)}))
    collector = Collector(store)
    starting = runtime.submit(collector.start())
    runtime.run(collector.aclose(), timeout=30)  # the app quitting at once
    starting.result(timeout=10)
    assert collector.statuses() == []


async def _reports(collector: Collector) -> list[SourceReport]:
    return collector.reports()
