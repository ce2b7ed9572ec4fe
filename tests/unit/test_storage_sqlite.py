"""The store on real SQLite files: the shared contract, plus what only SQLite has
(pragmas, the file and its parent directory, the copy made before migrating)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy.exc import OperationalError

from storage import StoreError, create_store_engine, open_store
from storage.engine import (
    SQLITE_PAGE_SIZE,
    StoreTooNew,
    WalCheckpointer,
    _alembic_config,
    current_revision,
    describe_url,
    head_revision,
    normalize_store_url,
)
from storage.queries import control
from storage.queries.events import count_events, insert_events
from tests.unit.test_storage_contract import StoreContract, make_event


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'controlroom.sqlite3'}"


def _downgrade_to_base(path: Path) -> None:
    """Leave a store as a Control Room older than every revision would: migrated to nothing."""
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "base")
    finally:
        engine.dispose()


def test_every_connection_gets_the_pragmas(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "s.sqlite3")) as store, store.engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1, "busy_timeout": 10_000}


def test_a_new_store_has_16k_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA journal_mode=WAL")  # writes the header: the file's page size is fixed
    conn.close()
    for path, size in ((tmp_path / "new.sqlite3", SQLITE_PAGE_SIZE), (old, 4096)):
        with open_store(str(path)) as store, store.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA page_size").scalar() == size
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_the_wal_checkpointer_takes_over_checkpoints_while_it_runs(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "s.sqlite3")) as store:
        checkpointer = WalCheckpointer(store.engine)
        with store.engine.connect() as conn:
            raw = conn.connection.driver_connection
            with checkpointer.deferring(conn):  # not running: the connection's default stays
                assert raw.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
            checkpointer.start()
            try:
                with checkpointer.deferring(conn):
                    assert raw.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
                    with conn.begin():
                        insert_events(conn, [make_event(i) for i in range(50)])
                assert raw.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
                # Woken by the commit.
                deadline = time.monotonic() + 10
                while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
                    threading.Event().wait(0.01)
            finally:
                checkpointer.stop()
            assert checkpointer.checkpoints >= 1 and not checkpointer.active
            # Everything committed is in the database file: the WAL holds no page it lacks.
            busy, wal_pages, moved = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert busy == 0 and wal_pages == moved
        assert count_events(store.engine) == 50


def test_the_wal_checkpointer_does_nothing_without_a_sqlite_file() -> None:
    with open_store("sqlite://") as store:
        checkpointer = WalCheckpointer(store.engine)
        checkpointer.start()
        assert not checkpointer.active
        checkpointer.stop()


def test_default_store_is_a_file_in_the_data_dir() -> None:
    with open_store() as store:
        assert store.dialect == "sqlite"
        insert_events(store.engine, [make_event(1)])
    # conftest points CONTROLROOM_HOME at a private directory for every test
    assert (Path(os.environ["CONTROLROOM_HOME"]) / "data" / "controlroom.sqlite3").is_file()


def test_controlroom_store_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere" / "team.sqlite3"
    monkeypatch.setenv("CONTROLROOM_STORE", f"sqlite:///{target}")
    with open_store() as store:
        assert store.url == f"sqlite:///{target}"
    assert target.is_file()


def test_urls_operators_type_are_understood(tmp_path: Path) -> None:
    assert (
        normalize_store_url(str(tmp_path / "a.sqlite3")).render_as_string()
        == f"sqlite:///{tmp_path}/a.sqlite3"
    )
    assert normalize_store_url("postgres://u:pw@db/cr").drivername == "postgresql+psycopg"
    assert normalize_store_url("postgresql://u:pw@db/cr").drivername == "postgresql+psycopg"
    assert (
        describe_url(normalize_store_url("postgresql://u:hunter2@db/cr"))
        == "postgresql+psycopg://u:***@db/cr"
    )
    with pytest.raises(StoreError, match="unsupported store backend 'mysql'"):
        normalize_store_url("mysql://u:pw@db/cr")
    with pytest.raises(StoreError, match="empty"):
        normalize_store_url("  ")


def test_a_fresh_store_is_created_without_a_backup(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "new.sqlite3")) as store:
        assert store.backup is None
    assert sorted(p.name for p in tmp_path.iterdir() if ".bak-" in p.name) == []


def test_a_store_behind_head_is_copied_aside_before_migrating(tmp_path: Path) -> None:
    path = tmp_path / "controlroom.sqlite3"
    with open_store(str(path)):
        pass
    _downgrade_to_base(path)

    with open_store(str(path)) as store:
        backup = store.backup
        assert current_revision(store.engine) == head_revision()
        insert_events(store.engine, [make_event(1)])  # the migrated store works
    assert backup is not None and backup.parent == tmp_path
    assert backup.name.startswith("controlroom.sqlite3.bak-base-")
    # The copy is the store as it was before migrating: a valid SQLite file, no schema yet.
    copy = sqlite3.connect(backup)
    try:
        tables = {name for (name,) in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        copy.close()
    assert tables == {"alembic_version"}

    with open_store(str(path)) as again:  # at head now: no second copy
        assert again.backup is None


def test_backup_includes_commits_still_in_the_wal(tmp_path: Path) -> None:
    from storage.engine import backup_sqlite_file

    path = tmp_path / "s.sqlite3"
    with open_store(str(path)) as store:
        insert_events(store.engine, [make_event(i) for i in range(50)])
        with store.engine.connect() as reader:
            reader.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        insert_events(store.engine, [make_event(i) for i in range(50, 80)])
        assert (tmp_path / "s.sqlite3-wal").stat().st_size > 0
        copy = backup_sqlite_file(path, head_revision())
    with open_store(str(copy)) as restored:
        assert count_events(restored.engine) == 80


def test_a_store_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with open_store(str(path)):
        pass
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999'")
    raw.close()
    with pytest.raises(StoreTooNew, match=r"revision 9999, newer than this Control Room knows"):
        open_store(str(path))
    assert not any(".bak-" in p.name for p in tmp_path.iterdir())


def test_files_that_are_not_control_room_stores_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, it is a shopping list " * 100)
    with pytest.raises(StoreError, match="cannot read the store"):
        open_store(str(garbage))

    foreign = tmp_path / "foreign.sqlite3"
    raw = sqlite3.connect(foreign)
    with raw:
        raw.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    raw.close()
    with pytest.raises(StoreError, match="not a Control Room store"):
        open_store(str(foreign))


def test_open_without_migration_refuses_an_old_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with open_store(str(path)):
        pass
    _downgrade_to_base(path)
    with pytest.raises(StoreError, match="open it with migration enabled"):
        open_store(str(path), migrate_schema=False)
    with open_store(str(path)), open_store(str(path), migrate_schema=False) as store:
        assert control.get_control_version(store.engine) == 0


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    # DDL runs in our transaction (we emit BEGIN ourselves), so a failure rolls it all back.
    path = tmp_path / "s.sqlite3"
    with open_store(str(path)):
        pass
    _downgrade_to_base(path)
    raw = sqlite3.connect(path)
    with raw:  # the last table the migration creates cannot be created: a view holds its name
        raw.execute("CREATE VIEW control_version AS SELECT 1 AS id")
    raw.close()
    with pytest.raises(OperationalError, match="already exists"):
        open_store(str(path))
    raw = sqlite3.connect(path)
    try:
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = raw.execute("SELECT count(*) FROM alembic_version").fetchone()
    finally:
        raw.close()
    assert tables == {"alembic_version"}  # events, rollups, ... created before the failure are gone
    assert version == (0,)
