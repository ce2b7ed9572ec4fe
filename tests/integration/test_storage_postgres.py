"""The store on a real PostgreSQL server: the shared contract, plus NOTIFY and concurrent migrators."""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy.engine import make_url

from storage import Store, open_store
from storage.engine import current_revision, head_revision
from storage.queries import control
from tests.unit.test_storage_contract import StoreContract

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store_url(self, pg_url: str) -> str:
        return pg_url


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_store_runs_on_postgresql_without_a_backup(pg_url: str) -> None:
    with open_store(pg_url) as store:
        assert store.dialect == "postgresql"
        assert store.backup is None


def test_control_changes_notify_listeners(pg_url: str) -> None:
    with open_store(pg_url) as store, psycopg.connect(_libpq(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {control.CONTROL_CHANNEL}")
        version = control.record_audit(store.engine, "ana", "update", "route", "default", None, {"x": 1})
        received = list(listener.notifies(timeout=10, stop_after=1))
    assert [(n.channel, n.payload) for n in received] == [(control.CONTROL_CHANNEL, str(version))]


def test_a_rolled_back_change_notifies_nobody(pg_url: str) -> None:
    with open_store(pg_url) as store, psycopg.connect(_libpq(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {control.CONTROL_CHANNEL}")
        with pytest.raises(RuntimeError), store.begin(write=True) as conn:
            control.record_audit(conn, "ana", "update", "route", "default", None, {"x": 1})
            raise RuntimeError("abort")
        control.record_audit(store.engine, "bo", "update", "route", "default", None, {"x": 2})
        received = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.payload for n in received] == ["1"]


def test_gateways_starting_together_migrate_once(pg_url: str) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def start_gateway() -> None:
        try:
            start.wait(timeout=30)
            stores.append(open_store(pg_url))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start_gateway, name=f"controlroom-test-gw-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
        assert len(stores) == 4
        assert current_revision(stores[0].engine) == head_revision()
        assert control.get_control_version(stores[0].engine) == 0  # the seed row was written once
    finally:
        for s in stores:
            s.close()
