"""Reverting a control change from the audit log, against a real SQLite store.

Each revert writes a new audited change ("revert of #ID: why") through the normal write path,
only the newest change to an object can be reverted, and a store that moved on refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.gateway import control
from app.gateway.revert import (
    NotRevertible,
    RevertRefused,
    field_changes,
    plan_revert,
    prompt_reverts_available,
    revert_change,
)
from storage.engine import Store, open_store
from storage.queries import control as q

PROVIDER = {"name": "p1", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "rpm": 100}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'revert.db'}") as s:
        yield s


def _last(store: Store, kind: str, name: str) -> q.AuditEntry:
    return q.list_audit(store.engine, object_type=kind, object_name=name, limit=1)[0]


def test_revert_update_restores_before_and_is_audited(store: Store) -> None:
    e = store.engine
    q.save_object(e, "provider", PROVIDER, expected_revision=None, actor="ana")
    q.save_object(e, "provider", {**PROVIDER, "rpm": 500}, expected_revision=1, actor="bo", reason="more")
    change = _last(store, "provider", "p1")
    version = q.get_control_version(e)

    plan = plan_revert(store, change.id)
    assert [(c.path, c.before, c.after) for c in plan.changes] == [("rpm", "500", "100")]
    assert "Restore provider 'p1'" in plan.summary

    entry = revert_change(store, change.id, actor="cy", reason="rpm too high")
    assert entry.id > change.id
    assert (entry.actor, entry.action, entry.reason) == (
        "cy",
        "update",
        f"revert of #{change.id}: rpm too high",
    )
    assert entry.before["rpm"] == 500 and entry.after["rpm"] == 100
    stored = q.get_object(e, "provider", "p1")
    assert stored is not None and stored["rpm"] == 100 and stored["revision"] == 3
    assert q.get_control_version(e) == version + 1


def test_revert_create_deletes_and_revert_delete_creates_again(store: Store) -> None:
    e = store.engine
    q.save_object(e, "provider", PROVIDER, expected_revision=None, actor="ana")
    q.save_object(
        e,
        "target",
        {
            "name": "fast",
            "provider": "p1",
            "model": "gpt-4o-mini",
            "input_per_mtok": 1.0,
            "output_per_mtok": 2.0,
        },
        expected_revision=None,
        actor="ana",
    )
    created = _last(store, "target", "fast")
    deleted = revert_change(e, created.id, actor="bo", reason="")
    assert deleted.action == "delete" and deleted.reason == f"revert of #{created.id}"
    assert q.get_object(e, "target", "fast") is None

    again = revert_change(e, deleted.id, actor="bo", reason="oops")
    assert again.action == "create"
    target = q.get_object(e, "target", "fast")
    assert target is not None and (target["model"], target["input_per_mtok"]) == ("gpt-4o-mini", 1.0)


def test_only_the_newest_change_can_be_reverted(store: Store) -> None:
    e = store.engine
    q.save_object(e, "provider", PROVIDER, expected_revision=None, actor="ana")
    first = _last(store, "provider", "p1")
    q.save_object(e, "provider", {**PROVIDER, "rpm": 7}, expected_revision=1, actor="bo")
    with pytest.raises(RevertRefused, match=r"only the newest change .* #\d+ came after"):
        revert_change(e, first.id, actor="cy", reason="x")
    with pytest.raises(RevertRefused):
        plan_revert(e, first.id)
    stored = q.get_object(e, "provider", "p1")
    assert stored is not None and stored["rpm"] == 7  # nothing changed


def test_a_store_changed_behind_the_audit_log_is_stale(store: Store) -> None:
    e = store.engine
    q.save_object(
        e, "budget", {"name": "b", "period": "day", "limit_usd": 10.0}, expected_revision=None, actor="a"
    )
    q.save_object(
        e, "budget", {"name": "b", "period": "day", "limit_usd": 20.0}, expected_revision=1, actor="a"
    )
    change = _last(store, "budget", "b")
    # Another writer bumps the row without going through the audit log (a hand edit): the revision
    # the audit row left is no longer the store's, so the revert must refuse, not overwrite.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE budgets SET revision = revision + 1, limit_usd = 30 WHERE name = 'b'")
    with pytest.raises(q.StaleRevision, match="changed since you loaded it"):
        revert_change(e, change.id, actor="c", reason="x")
    stored = q.get_object(e, "budget", "b")
    assert stored is not None and stored["limit_usd"] == 30


def test_revert_route_update_restores_nested_settings(store: Store) -> None:
    e = store.engine
    route = {"name": "default", "settings": {"deadline_s": 20, "retry": {"max_attempts": 3}}, "rules": []}
    q.save_object(e, "route", route, expected_revision=None, actor="a")
    changed = {**route, "settings": {"deadline_s": 10, "retry": {"max_attempts": 1}}}
    q.save_object(e, "route", changed, expected_revision=1, actor="a")
    plan = plan_revert(e, _last(store, "route", "default").id)
    assert {(c.path, c.before, c.after) for c in plan.changes} == {
        ("settings.deadline_s", "10", "20"),
        ("settings.retry.max_attempts", "1", "3"),
    }
    revert_change(e, plan.entry.id, actor="b", reason="r")
    stored = q.get_object(e, "route", "default")
    assert stored is not None and stored["settings"] == route["settings"]


def test_revert_breaker_override_to_the_previous_override_and_to_auto(store: Store) -> None:
    e = store.engine
    now = time.time()
    q.set_breaker_override(e, "fast", "force_open", actor="a", reason="incident", expires_at=now + 3600)
    q.set_breaker_override(e, "fast", "force_closed", actor="b", reason="false alarm")
    second = _last(store, "breaker", "fast")
    plan = plan_revert(e, second.id)
    assert "back to force_open" in plan.summary
    entry = revert_change(e, second.id, actor="c", reason="it is failing")
    assert entry.action == "force_open" and entry.reason == f"revert of #{second.id}: it is failing"
    override = q.get_breaker_override(e, "fast")
    assert override is not None and override.state == "force_open"
    assert override.expires_at == pytest.approx(now + 3600)

    # The very first override had nothing before it: revert gives the breaker back to auto.
    q.set_breaker_override(e, "slow", "force_open", actor="a", reason="x")
    first = _last(store, "breaker", "slow")
    revert_change(e, first.id, actor="c", reason="done")
    assert q.get_breaker_override(e, "slow") is None
    assert _last(store, "breaker", "slow").action == "auto"


def test_revert_breaker_to_an_expired_override_means_auto(store: Store) -> None:
    e = store.engine
    now = time.time()
    q.set_breaker_override(e, "fast", "force_open", actor="a", reason="x", expires_at=now + 60, now=now)
    q.set_breaker_override(e, "fast", "force_closed", actor="a", reason="y", now=now + 1)
    change = _last(store, "breaker", "fast")
    plan = plan_revert(e, change.id, now=now + 120)
    assert plan.result == {"target": "fast", "state": "auto"} and "expired" in plan.summary
    revert_change(e, change.id, actor="b", reason="z", now=now + 120)
    assert q.get_breaker_override(e, "fast", now=now + 121) is None


def test_breaker_defaults_revert_goes_back_to_the_earlier_defaults(store: Store) -> None:
    e = store.engine
    q.record_audit(e, "a", "update", control.BREAKER_DEFAULTS, "default", None, {"min_requests": 10}, "")
    q.record_audit(
        e, "a", "update", control.BREAKER_DEFAULTS, "default", {"min_requests": 10}, {"min_requests": 5}, ""
    )
    change = _last(store, control.BREAKER_DEFAULTS, "default")
    revert_change(e, change.id, actor="b", reason="too twitchy")
    defaults = control.stored_breaker_defaults(store)
    assert defaults is not None and defaults.min_requests == 10


def test_changes_that_cannot_be_reverted_say_why(store: Store) -> None:
    e = store.engine
    q.record_audit(e, "a", "create_version", "prompt", "summary", None, {"version": 2}, "")
    with pytest.raises(NotRevertible, match="promote the version you want"):
        revert_change(e, _last(store, "prompt", "summary").id, actor="b", reason="x")
    with pytest.raises(q.NotFound, match="no audit entry #999"):
        revert_change(e, 999, actor="b", reason="x")


def test_revert_prompt_promotion_through_the_registry(store: Store) -> None:
    from storage.queries import prompts

    assert prompt_reverts_available()
    e = store.engine
    prompts.create_prompt(e, "summary", actor="a", reason="new")
    for text in ("v1 {{ticket}}", "v2 {{ticket}}"):
        prompts.add_version(e, "summary", template=text, actor="a")
    prompts.set_active_version(e, "summary", 1, actor="a", reason="first")
    prompts.set_active_version(e, "summary", 2, actor="b", reason="better")
    promote = _last(store, "prompt", "summary")
    assert promote.action == "promote"
    plan = plan_revert(e, promote.id)
    assert "Make version 1 of prompt 'summary' active again" in plan.summary
    assert [(c.path, c.before, c.after) for c in plan.changes] == [("active_version", "2", "1")]
    entry = revert_change(e, promote.id, actor="c", reason="v2 hallucinates")
    assert entry.action == "rollback" and entry.reason == f"revert of #{promote.id}: v2 hallucinates"
    prompt = prompts.get_prompt(e, "summary")
    assert prompt is not None and prompt.active_version == 1

    # Reverting the rollback goes forward again; a version add cannot be reverted.
    revert_change(e, entry.id, actor="c", reason="it was fine")
    assert prompts.get_prompt(e, "summary").active_version == 2  # type: ignore[union-attr]
    prompts.add_version(e, "summary", template="v3 {{ticket}}", actor="a")
    with pytest.raises(NotRevertible, match="promote the version you want"):
        plan_revert(e, _last(store, "prompt", "summary").id)

    # The very first promotion reverts to no active version at all.
    prompts.create_prompt(e, "fresh", actor="a", reason="")
    prompts.add_version(e, "fresh", template="hello", actor="a")
    prompts.set_active_version(e, "fresh", 1, actor="a", reason="go")
    first = _last(store, "prompt", "fresh")
    assert "no active version" in plan_revert(e, first.id).summary
    revert_change(e, first.id, actor="b", reason="not ready")
    assert prompts.get_prompt(e, "fresh").active_version is None  # type: ignore[union-attr]


def test_field_changes_reads_like_a_diff() -> None:
    before: dict[str, Any] = {"name": "x", "rpm": 1, "revision": 3, "scope": {"feature": "a"}, "gone": True}
    after: dict[str, Any] = {
        "name": "x",
        "rpm": 2,
        "revision": 4,
        "scope": {"feature": "b"},
        "warn_at": [0.5],
    }
    changes = {c.path: (c.kind, c.before, c.after) for c in field_changes(before, after)}
    assert changes == {
        "rpm": ("changed", "1", "2"),
        "scope.feature": ("changed", "a", "b"),
        "gone": ("removed", "true", None),
        "warn_at": ("added", None, "[0.5]"),
    }
    assert [c.kind for c in field_changes(None, {"a": 1})] == ["added"]


def test_revert_source_changes(store: Store) -> None:
    from storage.queries import source_configs as sc

    e = store.engine
    sc.save_source_config(e, sc.SourceConfig("logs", "jsonl", {"path": "/var/log/a.jsonl"}), actor="a")
    sc.save_source_config(
        e, sc.SourceConfig("logs", "jsonl", {"path": "/var/log/b.jsonl"}), expected_revision=1, actor="a"
    )
    update = _last(store, "source", "logs")
    assert [(c.path, c.before, c.after) for c in plan_revert(e, update.id).changes] == [
        ("settings.path", "/var/log/b.jsonl", "/var/log/a.jsonl")
    ]
    revert_change(e, update.id, actor="b", reason="wrong file")
    stored = sc.get_source_config(e, "logs")
    assert stored is not None and stored.settings == {"path": "/var/log/a.jsonl"} and stored.revision == 3

    sc.set_source_paused(e, "logs", True, actor="a")
    pause = _last(store, "source", "logs")
    assert "running again" in plan_revert(e, pause.id).summary
    revert_change(e, pause.id, actor="b", reason="needed")
    assert sc.get_source_config(e, "logs").paused is False  # type: ignore[union-attr]

    sc.delete_source_config(e, "logs", actor="a")
    revert_change(e, _last(store, "source", "logs").id, actor="b", reason="oops")
    again = sc.get_source_config(e, "logs")
    assert again is not None and again.settings == {"path": "/var/log/a.jsonl"}
    created_again = _last(store, "source", "logs")
    assert created_again.action == "create"
    revert_change(e, created_again.id, actor="b", reason="gone for good")
    assert sc.get_source_config(e, "logs") is None
