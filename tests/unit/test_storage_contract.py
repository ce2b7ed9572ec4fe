"""What every store backend must do: the shared behaviour of SQLite and PostgreSQL.

``StoreContract`` holds the tests; it is not collected here (no ``Test`` prefix).
``tests/unit/test_storage_sqlite.py`` runs it on a SQLite file and
``tests/integration/test_storage_postgres.py`` on a real PostgreSQL, each by
subclassing it and providing a ``store_url`` fixture.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.core.event import EVENT_FIELDS, CacheHit, CostSource, Event, Failure
from app.core.ids import new_event_id
from storage import Store, open_store
from storage.engine import current_revision, head_revision
from storage.models import EVENTS, FAILURE_COUNT_COLUMNS, ROLLUP_MINUTE, Base
from storage.queries import control
from storage.queries.events import (
    EVENT_COLUMNS,
    EventFilter,
    count_events,
    delete_events_before,
    fetch_events,
    get_event,
    insert_events,
)

T0 = 1_780_000_000.0


def make_event(i: int, **overrides: Any) -> Event:
    ts = overrides.pop("ts_start", T0 + i)
    fields: dict[str, Any] = {
        "ts_start": ts,
        "ts_end": ts + 0.8,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "route": "default",
        "feature": "search" if i % 2 else "chat",
        "user": f"user-{i % 7}",
        "tags": {"team": "growth"},
        "status_code": 200,
        "latency_ms": 800.0,
        "ttft_ms": 120.0,
        "input_tokens": 100 + i,
        "output_tokens": 40,
        "cost_usd": 0.0002,
        "targets_tried": ["fast"],
        "event_id": new_event_id(ts),
    }
    fields.update(overrides)
    return Event(**fields)


def full_event() -> Event:
    """An event with every field set to something other than its default."""
    return Event(
        ts_start=T0 + 0.125,
        ts_end=T0 + 3.5,
        source="jsonl:/var/log/app.jsonl",
        provider="anthropic",
        model="claude-sonnet-4-5",
        event_id=new_event_id(T0),
        response_model="claude-sonnet-4-5-20250929",
        route="support",
        feature="summarize",
        user="ana@example.com",
        tags={"tier": "gold", 'quote"d': "back\\slash\nnew line", "unicode": "café ✓ 日本"},
        prompt_name="support-summary",
        prompt_version=3,
        stream=True,
        status_code=529,
        failure=Failure.OVERLOADED,
        error_message="overloaded_error: Overloaded",
        attempts=3,
        targets_tried=["strong", "fast", "fällback"],
        latency_ms=3375.25,
        ttft_ms=412.5,
        input_tokens=1234,
        output_tokens=56,
        cache_read_tokens=1000,
        cache_write_tokens=200,
        reasoning_tokens=7,
        cost_usd=0.0123456789,
        cost_source=CostSource.PROVIDER,
        cache_hit=CacheHit.SEMANTIC,
        breaker_state="half_open",
        input_text="Summarize: the printer is on fire 🔥",
        output_text="Printer fire.",
    )


class StoreContract:
    """Backend-independent behaviour.  Subclasses provide the ``store_url`` fixture."""

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[Store]:
        with open_store(store_url) as store:
            yield store

    # --- schema -------------------------------------------------------------------------

    def test_migrations_create_the_schema_the_models_describe(self, store: Store) -> None:
        assert current_revision(store.engine) == head_revision()
        with store.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
            tables = set(inspect(conn).get_table_names())
        assert diff == []
        assert set(Base.metadata.tables) <= tables
        assert control.get_control_version(store.engine) == 0

    def test_reopening_a_store_at_head_changes_nothing(self, store: Store, store_url: str) -> None:
        insert_events(store.engine, [make_event(1)])
        with open_store(store_url) as again:
            assert again.backup is None
            assert count_events(again.engine) == 1

    def test_every_event_field_has_a_column(self) -> None:
        assert sorted(EVENT_COLUMNS) == sorted(EVENT_FIELDS)
        assert {c.name for c in EVENTS.columns} == {"id", *EVENT_FIELDS}
        assert set(FAILURE_COUNT_COLUMNS.values()) <= {c.name for c in ROLLUP_MINUTE.columns}
        assert len(FAILURE_COUNT_COLUMNS) == len(Failure) - 1

    # --- events -------------------------------------------------------------------------

    def test_every_event_field_round_trips(self, store: Store) -> None:
        full = full_event()
        sparse = Event(ts_start=T0, ts_end=T0, event_id=new_event_id(T0 + 1))  # every optional field empty
        assert insert_events(store.engine, [full, sparse]).inserted == 2
        for original in (full, sparse):
            stored = get_event(store.engine, original.event_id)
            assert stored is not None
            assert dataclasses.asdict(stored) == dataclasses.asdict(original)
            assert type(stored.failure) is Failure and type(stored.cache_hit) is CacheHit
            assert type(stored.stream) is bool
        assert get_event(store.engine, "0" * 32) is None

    def test_replayed_batch_inserts_nothing_twice(self, store: Store) -> None:
        batch = [make_event(i) for i in range(300)]
        first = insert_events(store.engine, batch)
        assert (first.inserted, first.duplicates) == (300, 0)
        again = insert_events(store.engine, batch)
        assert (again.inserted, again.duplicates) == (0, 300)
        mixed = insert_events(store.engine, batch[:100] + [make_event(i) for i in range(300, 350)])
        assert (mixed.inserted, mixed.duplicates) == (50, 100)
        # the same event twice in one batch: kept once
        twice = make_event(999)
        assert insert_events(store.engine, iter([twice, twice])).inserted == 1
        assert count_events(store.engine) == 351

    def test_large_batch_from_a_generator_is_inserted_in_chunks(self, store: Store) -> None:
        result = insert_events(store.engine, (make_event(i) for i in range(25_000)))
        assert (result.inserted, result.duplicates) == (25_000, 0)
        assert count_events(store.engine) == 25_000

    def test_malformed_event_is_named_and_nothing_is_kept(self, store: Store) -> None:
        good = make_event(1)
        bad = make_event(2)
        bad.failure = "timeout"  # type: ignore[assignment]  # a str, not a Failure
        with pytest.raises(TypeError, match=r"event #1 .*failure must be a Failure"):
            insert_events(store.engine, [good, bad])
        with pytest.raises(TypeError, match=r"event #0: expected an app.core.event.Event, got dict"):
            insert_events(store.engine, [{"ts_start": 1.0}])  # type: ignore[list-item]
        unencodable = make_event(3, tags={"x": object()})
        with pytest.raises(ValueError, match=r"event #0 .*not JSON serializable"):
            insert_events(store.engine, [unencodable])
        assert count_events(store.engine) == 0

    def test_insert_joins_the_callers_transaction(self, store: Store) -> None:
        with pytest.raises(RuntimeError), store.begin(write=True) as conn:
            assert insert_events(conn, [make_event(1), make_event(2)]).inserted == 2
            assert count_events(conn) == 2
            raise RuntimeError("abort")
        assert count_events(store.engine) == 0

    def test_pages_walk_every_event_in_time_order(self, store: Store) -> None:
        rng = random.Random(7)
        # shuffled arrival, with ties on ts_start that the row id must break
        stamps = [T0 + rng.randrange(0, 20) for _ in range(45)]
        events = [make_event(i, ts_start=ts) for i, ts in enumerate(stamps)]
        insert_events(store.engine, events)
        seen: list[str] = []
        page = fetch_events(store.engine, limit=10)
        pages = 1
        while True:
            seen += [e.event_id for e in page.events]
            if page.next_cursor is None:
                break
            page = fetch_events(store.engine, limit=10, after=page.next_cursor)
            pages += 1
        assert pages == 5
        assert len(seen) == len(set(seen)) == 45
        by_id = {e.event_id: e for e in events}
        times = [by_id[i].ts_start for i in seen]
        assert times == sorted(times, reverse=True)
        oldest = fetch_events(store.engine, limit=45, newest_first=False)
        assert [e.event_id for e in oldest.events] == seen[::-1]
        assert oldest.next_cursor is None
        assert [e.event_id for e in fetch_events(store.engine, limit=5, offset=10).events] == seen[10:15]

    def test_pages_stay_stable_while_events_arrive(self, store: Store) -> None:
        insert_events(store.engine, [make_event(i) for i in range(20)])
        first = fetch_events(store.engine, limit=10)
        insert_events(store.engine, [make_event(i) for i in range(100, 110)])  # newer than all
        assert first.next_cursor is not None
        second = fetch_events(store.engine, limit=10, after=first.next_cursor)
        ids = [e.event_id for e in first.events + second.events]
        assert len(set(ids)) == 20
        assert second.next_cursor is None

    def test_filters_select_and_count_the_same_events(self, store: Store) -> None:
        events = [
            make_event(i, failure=Failure.TIMEOUT if i % 5 == 0 else Failure.NONE, provider="p" + str(i % 3))
            for i in range(60)
        ]
        insert_events(store.engine, events)
        cases = [
            (EventFilter(only_failures=True), lambda e: e.failure is not Failure.NONE),
            (
                EventFilter(failures=(Failure.TIMEOUT, Failure.RATE_LIMITED)),
                lambda e: e.failure is Failure.TIMEOUT,
            ),
            (
                EventFilter(feature="search", provider="p1"),
                lambda e: e.feature == "search" and e.provider == "p1",
            ),
            (EventFilter(since=T0 + 10, until=T0 + 20), lambda e: T0 + 10 <= e.ts_start < T0 + 20),
            (EventFilter(user="user-3", route="default"), lambda e: e.user == "user-3"),
            (EventFilter(source="nowhere"), lambda e: False),
        ]
        for flt, predicate in cases:
            expected = {e.event_id for e in events if predicate(e)}
            page = fetch_events(store.engine, flt, limit=100)
            assert {e.event_id for e in page.events} == expected, flt
            assert count_events(store.engine, flt) == len(expected), flt

    def test_bad_page_arguments_are_refused(self, store: Store) -> None:
        with pytest.raises(ValueError, match="limit"):
            fetch_events(store.engine, limit=0)
        with pytest.raises(ValueError, match="offset"):
            fetch_events(store.engine, offset=-1)

    def test_retention_drops_old_events_only(self, store: Store) -> None:
        insert_events(store.engine, [make_event(i) for i in range(10)])
        assert delete_events_before(store.engine, T0 + 4) == 4
        assert count_events(store.engine) == 6
        assert count_events(store.engine, EventFilter(until=T0 + 4)) == 0

    # --- audit and version --------------------------------------------------------------

    def test_audit_bumps_the_control_version(self, store: Store) -> None:
        v = control.record_audit(
            store.engine,
            "ana",
            "update",
            "route",
            "default",
            {"deadline_s": 30},
            {"deadline_s": 20},
            "p99 alarm",
        )
        assert v == 1 == control.get_control_version(store.engine)
        v2 = control.record_audit(store.engine, "bo", "create", "budget", "daily", None, {"limit_usd": 5})
        assert v2 == 2
        entries = control.list_audit(store.engine)
        assert [e.actor for e in entries] == ["bo", "ana"]
        assert entries[1].before == {"deadline_s": 30} and entries[1].after == {"deadline_s": 20}
        assert entries[1].reason == "p99 alarm"
        assert entries[0].before is None
        assert [e.actor for e in control.list_audit(store.engine, object_type="route")] == ["ana"]
        assert [e.actor for e in control.list_audit(store.engine, before_id=entries[0].id)] == ["ana"]
        with pytest.raises(ValueError, match="actor"):
            control.record_audit(store.engine, " ", "update", "route", "x", None, None)

    def test_audit_and_version_roll_back_together(self, store: Store) -> None:
        with pytest.raises(RuntimeError), store.begin(write=True) as conn:
            assert control.record_audit(conn, "ana", "update", "route", "x", None, {}) == 1
            raise RuntimeError("abort")
        assert control.get_control_version(store.engine) == 0
        assert control.list_audit(store.engine) == []

    def test_concurrent_writers_all_land(self, store: Store) -> None:
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                for i in range(15):
                    control.record_audit(store.engine, f"w{n}", "update", "route", "r", None, {"i": i})
                    insert_events(store.engine, [make_event(n * 100 + i)])
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [
            threading.Thread(target=write, args=(n,), name=f"controlroom-test-writer-{n}") for n in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert control.get_control_version(store.engine) == 60
        assert count_events(store.engine) == 60

    # --- providers, targets, routes, budgets --------------------------------------------

    def test_save_refuses_a_stale_revision(self, store: Store) -> None:
        e = store.engine
        created = control.save_object(
            e, "provider", {"name": "openai-main", "kind": "openai"}, expected_revision=None, actor="ana"
        )
        assert created["revision"] == 1
        assert created["api_key_ref"] == "keyring:controlroom/openai-main"  # config.md default
        updated = control.save_object(
            e, "provider", {**created, "rpm": 500}, expected_revision=1, actor="bo", reason="raise limit"
        )
        assert (updated["revision"], updated["rpm"]) == (2, 500)
        with pytest.raises(control.StaleRevision, match=r"you had revision 1, the store has 2") as info:
            control.save_object(e, "provider", {**created, "rpm": 10}, expected_revision=1, actor="cy")
        assert (info.value.expected, info.value.actual) == (1, 2)
        with pytest.raises(control.StaleRevision, match="already exists"):
            control.save_object(
                e, "provider", {"name": "openai-main", "kind": "openai"}, expected_revision=None, actor="cy"
            )
        assert control.get_object(e, "provider", "openai-main") == updated
        assert control.get_control_version(e) == 2  # refused saves change nothing
        audit = control.list_audit(e, object_type="provider")
        assert [(a.action, a.actor) for a in audit] == [("update", "bo"), ("create", "ana")]
        assert audit[0].before["rpm"] is None and audit[0].after["rpm"] == 500

    def test_provider_never_stores_a_key(self, store: Store) -> None:
        secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
        with pytest.raises(ValueError, match="never a key") as info:
            control.save_object(
                store.engine,
                "provider",
                {"name": "p", "kind": "openai", "api_key_ref": secret},
                expected_revision=None,
                actor="ana",
            )
        assert secret not in str(info.value)
        for ref in ("keyring:controlroom/p", "env:OPENAI_API_KEY", "none"):
            saved = control.save_object(
                store.engine,
                "provider",
                {"name": f"p-{ref[:3]}", "kind": "openai_compatible", "api_key_ref": ref},
                expected_revision=None,
                actor="ana",
            )
            assert saved["api_key_ref"] == ref

    def test_targets_routes_and_budgets(self, store: Store) -> None:
        e = store.engine
        control.save_object(
            e, "provider", {"name": "anthropic-main", "kind": "anthropic"}, expected_revision=None, actor="a"
        )
        with pytest.raises(ValueError, match="provider 'nope' does not exist"):
            control.save_object(
                e,
                "target",
                {"name": "x", "provider": "nope", "model": "m"},
                expected_revision=None,
                actor="a",
            )
        target = control.save_object(
            e,
            "target",
            {
                "name": "strong",
                "provider": "anthropic-main",
                "model": "claude-sonnet-4-5",
                "input_per_mtok": 3.0,
                "output_per_mtok": 15.0,
                "breaker": {"min_requests": 10},
            },
            expected_revision=None,
            actor="a",
        )
        assert target["breaker"] == {"min_requests": 10} and target["cache_read_per_mtok"] is None
        rules = [
            {"when": {"input_tokens_over": 4000}, "chain": ["strong", "fast"]},
            {
                "when": {"feature": "search"},
                "chain": [{"split": {"fast": 90, "strong": 10}, "sticky": "user"}],
            },
            {"chain": ["fast", "strong"]},
        ]
        route = control.save_object(
            e,
            "route",
            {"name": "default", "settings": {"deadline_s": 20, "retry": {"max_attempts": 3}}, "rules": rules},
            expected_revision=None,
            actor="a",
        )
        assert route["rules"] == rules and route["on_all_open"] == "fail_fast"
        budget = control.save_object(
            e,
            "budget",
            {
                "name": "search-daily",
                "scope": {"feature": "search"},
                "period": "day",
                "limit_usd": 100.0,
                "action": "downgrade",
                "downgrade_to": ["fast"],
            },
            expected_revision=None,
            actor="a",
        )
        assert budget["warn_at"] == [0.5, 0.8, 0.95] and budget["timezone"] == "UTC"
        assert [o["name"] for o in control.list_objects(e, "target")] == ["strong"]
        with pytest.raises(ValueError, match="used by target"):
            control.delete_object(e, "provider", "anthropic-main", expected_revision=1, actor="a")
        with pytest.raises(control.StaleRevision):
            control.delete_object(e, "target", "strong", expected_revision=7, actor="a")
        control.delete_object(e, "target", "strong", expected_revision=1, actor="a", reason="retired")
        assert control.get_object(e, "target", "strong") is None
        with pytest.raises(control.NotFound):
            control.delete_object(e, "target", "strong", expected_revision=1, actor="a")
        last = control.list_audit(e, limit=1)[0]
        assert (last.action, last.object_name, last.after, last.reason) == (
            "delete",
            "strong",
            None,
            "retired",
        )

    def test_invalid_objects_list_every_problem(self, store: Store) -> None:
        with pytest.raises(ValueError) as info:
            control.save_object(
                store.engine,
                "budget",
                {"name": "b", "period": "fortnight", "action": "downgrade", "warn_at": [2], "colour": "red"},
                expected_revision=None,
                actor="a",
            )
        message = str(info.value)
        for part in (
            "unknown field(s) colour",
            "period must be",
            "needs downgrade_to",
            "limit_usd",
            "warn_at",
        ):
            assert part in message
        with pytest.raises(ValueError, match="on_all_open"):
            control.save_object(
                store.engine, "route", {"name": "r", "on_all_open": "pray"}, expected_revision=None, actor="a"
            )
        with pytest.raises(ValueError, match="kind must be one of"):
            control.save_object(
                store.engine, "provider", {"name": "p", "kind": "gopher"}, expected_revision=None, actor="a"
            )
        assert control.get_control_version(store.engine) == 0

    # --- breakers -----------------------------------------------------------------------

    def test_breaker_override_applies_until_it_expires(self, store: Store) -> None:
        e = store.engine
        now = T0
        assert control.get_breaker_override(e, "fast", now=now) is None
        control.set_breaker_override(
            e, "fast", "force_open", actor="ana", reason="provider incident", expires_at=now + 900, now=now
        )
        active = control.get_breaker_override(e, "fast", now=now + 1)
        assert active is not None and (active.state, active.actor, active.reason) == (
            "force_open",
            "ana",
            "provider incident",
        )
        assert control.get_breaker_override(e, "fast", now=now + 900) is None  # expired: auto again
        assert [o.target for o in control.list_breaker_overrides(e, now=now + 1)] == ["fast"]
        assert control.list_breaker_overrides(e, now=now + 901) == []
        assert len(control.list_breaker_overrides(e, now=now + 901, include_inactive=True)) == 1
        control.set_breaker_override(e, "fast", "auto", actor="bo", reason="resolved", now=now + 10)
        assert control.get_breaker_override(e, "fast", now=now + 11) is None
        audit = control.list_audit(e, object_type="breaker")
        assert [a.action for a in audit] == ["auto", "force_open"]
        assert audit[0].before["state"] == "force_open"
        assert control.get_control_version(e) == 2
        with pytest.raises(ValueError, match="state"):
            control.set_breaker_override(e, "fast", "open", actor="a")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="future"):
            control.set_breaker_override(e, "fast", "force_closed", actor="a", expires_at=now - 1, now=now)

    def test_breaker_transitions_come_back_in_time_order(self, store: Store) -> None:
        T = control.BreakerTransition
        control.append_breaker_transitions(
            store.engine,
            [
                T("fast", T0 + 2, "open", "half_open", "open_for elapsed"),
                T(
                    "fast",
                    T0 + 1,
                    "closed",
                    "open",
                    "failure_rate 0.62 over 31",
                    {"failures": 19, "requests": 31},
                ),
                T("strong", T0 + 3, "closed", "open", "operator: ana"),
            ],
        )
        control.append_breaker_transitions(store.engine, [])
        control.append_breaker_transition(
            store.engine,
            "strong",
            ts=T0 + 4,
            from_state="open",
            to_state="half_open",
            cause="open_for elapsed",
        )
        fast = control.list_breaker_transitions(store.engine, target="fast")
        assert [t.to_state for t in fast] == ["open", "half_open"]
        assert fast[0].detail == {"failures": 19, "requests": 31}
        assert len(control.list_breaker_transitions(store.engine, since=T0 + 2, until=T0 + 4)) == 2
        newest = control.list_breaker_transitions(store.engine, limit=2)
        assert [(t.target, t.to_state) for t in newest] == [("strong", "open"), ("strong", "half_open")]
        assert control.get_control_version(store.engine) == 0

    def test_budget_warning_fires_once_per_period(self, store: Store) -> None:
        assert control.record_budget_warning(store.engine, "daily", T0, 0.8) is True
        assert control.record_budget_warning(store.engine, "daily", T0, 0.8) is False
        assert control.record_budget_warning(store.engine, "daily", T0, 0.5) is True
        assert control.record_budget_warning(store.engine, "daily", T0 + 86400, 0.8) is True
        assert control.list_budget_warnings(store.engine, "daily", T0) == [0.5, 0.8]

    def test_tags_and_targets_are_encoded_exactly(self, store: Store) -> None:
        # The row builder caches encoded string maps; values that compare equal
        # across types (1 == True == 1.0) must still come back as they went in.
        shapes: list[dict[str, Any]] = [
            {"x": 1},
            {"x": True},
            {"x": 1.0},
            {"x": "1"},
            {"x": [1, "a"]},
            {"x": None},
        ]
        events = [make_event(i, tags=tags, targets_tried=[tags["x"]]) for i, tags in enumerate(shapes * 2)]
        insert_events(store.engine, events)
        for original in events:
            stored = get_event(store.engine, original.event_id)
            assert stored is not None
            assert repr(stored.tags) == repr(original.tags)
            assert repr(stored.targets_tried) == repr(original.targets_tried)
