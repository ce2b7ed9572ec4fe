"""Opening the store: the engine factory, migrations on start, and transactions.

- SQLite (the default): WAL, ``synchronous=NORMAL``, foreign keys on, a busy
  timeout, set on every new connection.  We emit ``BEGIN`` ourselves instead of
  letting Python's sqlite3 module do it (SQLAlchemy's documented recipe): that
  makes DDL transactional, so a failed migration leaves the file as it was, and
  lets write transactions take the lock up front with ``BEGIN IMMEDIATE`` so a
  read-then-write never fails half-way with "database is locked".
- PostgreSQL: ``postgresql+psycopg://`` runs the same code.  Concurrent
  migrators (a fleet of gateways starting at once) queue on an advisory lock.
- Before migrating a SQLite file that is behind the newest revision, a copy is
  made beside it (vorta's ``backup_current_db``).  A fresh store is just created.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DatabaseError
from sqlalchemy.pool import ConnectionPoolEntry

from app.core import paths

#: Milliseconds a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Page size of a new SQLite store (an existing file keeps the size it was made with).
SQLITE_PAGE_SIZE = 16_384

# Execution option that marks a connection's next transaction as a writer.
_WRITE_OPTION = "controlroom_write"

# Any constant works; it only has to be the same in every process (pg_advisory_xact_lock).
_PG_MIGRATION_LOCK = 0x636F6E74726F6C  # "control"


class StoreError(Exception):
    """The store cannot be opened or migrated; the message says why and what to do."""


class StoreTooNew(StoreError):
    """The store was migrated by a newer Control Room than this one."""


# --- URLs and engines ------------------------------------------------------------------


def normalize_store_url(url: str) -> URL:
    """Accept what an operator types: a URL, a bare file path, or ``postgres://``.

    A bare path means a SQLite file; ``postgresql://`` without a driver means
    psycopg 3 (the only PostgreSQL driver we ship).
    """
    text = url.strip()
    if not text:
        raise StoreError("empty store URL")
    if "://" not in text:
        text = f"sqlite:///{Path(text).expanduser()}"
    try:
        parsed = make_url(text)
    except Exception as exc:  # ArgumentError; the message may echo the URL, so say it our way
        raise StoreError("not a store URL: expected sqlite:///PATH or postgresql+psycopg://...") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported store backend {parsed.get_backend_name()!r}: use sqlite or postgresql")
    return parsed


def describe_url(url: str | URL) -> str:
    """The URL with any password hidden: safe for logs and error messages."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, or ``None`` for an in-memory database."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def create_store_engine(url: str | None = None) -> Engine:
    """An engine for the store at ``url`` (default: ``app.core.paths.default_store_url()``).

    It does not migrate; :func:`open_store` does.
    """
    parsed = normalize_store_url(url if url is not None else paths.default_store_url())
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # pre_ping: a fleet's connections outlive PostgreSQL restarts and failovers.
    return create_engine(parsed, pool_pre_ping=True)


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Take BEGIN away from the sqlite3 module (see _sqlite_on_begin); it must be
    # set before the pragmas, which cannot run inside a transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # 16 KiB pages for a new store (a no-op on an existing one, whose pages are fixed): an
        # event row is about 350 bytes, and bigger pages mean fewer b-tree splits and page
        # writes per insert.  Measured: raw executemany of events 7.0 -> 6.3 us a row.  It must
        # come before WAL mode, which fixes the page size once the file exists.
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def transaction(bind: Engine | Connection, *, write: bool = False) -> Iterator[Connection]:
    """A connection inside a transaction.

    Given an engine: a new connection and a transaction of its own, committed at
    the end (``write=True`` takes SQLite's write lock up front).  Given a
    connection that is already in a transaction: that transaction, which its
    owner commits.  Given an idle connection: a transaction on it, committed at
    the end.
    """
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn
        return
    if bind.in_transaction():
        yield bind
        return
    if write:
        bind.execution_options(**{_WRITE_OPTION: True})
    try:
        with bind.begin():
            yield bind
    finally:
        if write:
            bind.execution_options(**{_WRITE_OPTION: False})


# --- WAL checkpoints off the writer's thread -----------------------------------------------

#: SQLite's default: a commit that leaves more WAL pages than this copies them into the file.
_SQLITE_AUTOCHECKPOINT_PAGES = 1000


class WalCheckpointer:
    """Checkpoints a SQLite store's write-ahead log from a thread of its own.

    By default the connection whose commit takes the WAL past 1,000 pages
    copies them back into the database file, inside that commit.  A bulk
    writer (the ingest pipeline's writer thread, for transactions of
    thousands of events) hands that work to this thread instead: such a
    transaction runs inside :meth:`deferring`, which turns the automatic
    checkpoint off on its connection, and its commit wakes this thread, which
    runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own, at most
    once every ``min_gap`` seconds.  A passive checkpoint never waits for
    readers or writers, and the sqlite3 module releases the GIL while it
    copies, so the copying runs on the other core (SQLite's own advice for
    write-heavy programs).  Measured on the ingest benchmark: 0.6 us less per
    event on the writer.

    For a store that is not a SQLite file (PostgreSQL, in memory) it does nothing.
    """

    def __init__(self, engine: Engine, *, min_gap: float = 0.2) -> None:
        self.path = sqlite_path(engine.url) if engine.dialect.name == "sqlite" else None
        self.min_gap = min_gap
        self.checkpoints = 0  # completed passes (tests and benchmarks read it)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._asked = False  # a deferred commit is waiting for its checkpoint
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.path is None or self.active:
            return
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="controlroom-wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """One last pass if a commit asked for one, then the thread ends."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join()

    @contextmanager
    def deferring(self, conn: Connection) -> Iterator[None]:
        """While the thread runs, ``conn``'s commits leave checkpoints to it (restored after)."""
        if not self.active:
            yield
            return
        raw: Any = conn.connection.driver_connection
        try:
            raw.execute("PRAGMA wal_autocheckpoint=0")  # not a transaction: isolation_level is None
        except sqlite3.Error:  # the transaction itself will say what is wrong with the store
            yield
            return
        try:
            yield
        finally:
            with suppress(sqlite3.Error):
                raw.execute(f"PRAGMA wal_autocheckpoint={_SQLITE_AUTOCHECKPOINT_PAGES}")
            self._asked = True
            self._wake.set()

    def _run(self) -> None:
        conn = sqlite3.connect(str(self.path), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._asked:
                    self._asked = False
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        self.checkpoints += 1
                    except sqlite3.Error:  # busy or gone for a moment: the next pass catches up
                        pass
                if self._stop.is_set():
                    return
                self._stop.wait(self.min_gap)  # at most one pass per gap; stop cuts it short
        finally:
            conn.close()


# --- migrations ------------------------------------------------------------------------


def _migrations_dir() -> Path:
    # importlib.resources finds the scripts installed, editable, or frozen
    # (PyInstaller unpacks collected data files beside the package).  The
    # package is imported by name so a freezer's import analysis sees it.
    import storage.migrations

    return Path(str(importlib.resources.files(storage.migrations)))


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()  # no alembic.ini at run time: everything is set here
    config.set_main_option("script_location", str(_migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "storage/migrations/versions holds no revision"
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def current_revision(bind: Engine | Connection) -> str | None:
    """The store's schema revision, or ``None`` when it has never been migrated."""
    from alembic.migration import MigrationContext

    with transaction(bind) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def backup_sqlite_file(path: Path, revision: str | None) -> Path:
    """Copy a SQLite store aside, consistently, and return the copy's path.

    The backup API copies committed pages including those still in the WAL
    file; copying the main file with ``shutil`` would miss them.
    """
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.bak-{revision or 'base'}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bak-{revision or 'base'}-{stamp}-{n}")
    source = sqlite3.connect(path)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    return target


def migrate(engine: Engine) -> Path | None:
    """Bring the store to the newest revision; return the backup made first, if any.

    Raises :class:`StoreTooNew` for a store migrated by a newer Control Room,
    and :class:`StoreError` for a file that is not a Control Room store.
    """
    from alembic import command

    head = head_revision()
    try:
        with engine.connect() as conn:
            current = current_revision(conn)
            has_tables = bool(inspect(conn).get_table_names())
    except DatabaseError as exc:
        raise StoreError(f"cannot read the store at {describe_url(engine.url)}: {exc.orig}") from exc
    if current == head:
        return None
    if current is not None and current not in known_revisions():
        raise StoreTooNew(
            f"the store at {describe_url(engine.url)} is at schema revision {current}, newer than this "
            f"Control Room knows (newest {head}); upgrade Control Room or open another store"
        )
    if current is None and has_tables and not _only_alembic_tables(engine):
        raise StoreError(
            f"{describe_url(engine.url)} holds tables but no Control Room schema revision; "
            "refusing to migrate a database that is not a Control Room store"
        )
    backup = None
    path = sqlite_path(engine.url)
    if path is not None and has_tables:
        backup = backup_sqlite_file(path, current)
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # Released at commit; the next migrator then finds the store at head.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            command.upgrade(_alembic_config(conn), "head")
    return backup


def _only_alembic_tables(engine: Engine) -> bool:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names()) <= {"alembic_version"}


# --- the store -------------------------------------------------------------------------


@dataclass
class Store:
    """An open, migrated store.  Close it (or use ``with``) to release its connections."""

    engine: Engine
    backup: Path | None = None  # the copy made before migrating, if one was made

    @property
    def url(self) -> str:
        """The store's URL with any password hidden."""
        return describe_url(self.engine.url)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def begin(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction of its own, committed when the block ends."""
        with transaction(self.engine, write=write) as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str | None = None, *, migrate_schema: bool = True) -> Store:
    """Open the store at ``url`` (default: the operator's store) and migrate it to the newest schema.

    With ``migrate_schema=False`` a store that is not at the newest revision is
    refused instead (for tools that must not change the schema).
    """
    engine = create_store_engine(url)
    try:
        if migrate_schema:
            backup = migrate(engine)
        else:
            backup = None
            current = current_revision(engine)
            if current != head_revision():
                raise StoreError(
                    f"the store at {describe_url(engine.url)} is at schema revision {current or 'none'}, "
                    f"not {head_revision()}; open it with migration enabled"
                )
    except BaseException:
        engine.dispose()
        raise
    return Store(engine=engine, backup=backup)
