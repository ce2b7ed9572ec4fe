"""The prompt registry in the store: versions, promote and roll back, audit, stale saves; SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.prompts import PromptError
from storage import Store, open_store
from storage.queries import control
from storage.queries import prompts as q


class PromptRegistryContract:
    @pytest.fixture
    def store(self, store_url: str) -> Iterator[Store]:
        s = open_store(store_url)
        yield s
        s.close()

    def _seed(self, store: Store, n: int = 3) -> None:
        q.create_prompt(
            store.engine, "support-summary", description="Ticket summaries", actor="ana", reason="new"
        )
        for i in range(1, n + 1):
            q.add_version(
                store.engine,
                "support-summary",
                template=f"v{i}: Summarize in {{{{max_words}}}} words: {{{{ticket}}}}",
                system="You are terse." if i > 1 else None,
                params={"temperature": 0.1 * i},
                note=f"take {i}",
                actor="ana",
            )

    def test_versions_are_numbered_and_immutable_and_none_is_active_at_first(self, store: Store) -> None:
        self._seed(store)
        versions = q.list_versions(store.engine, "support-summary")
        assert [v.version for v in versions] == [1, 2, 3]
        assert versions[1].system == "You are terse." and versions[1].params == {"temperature": 0.2}
        assert versions[1].variables == ["max_words", "ticket"] and versions[1].ref == "support-summary@2"
        assert versions[0].author == "ana" and versions[0].note == "take 1"
        prompt = q.get_prompt(store.engine, "support-summary")
        assert prompt is not None
        assert (prompt.active_version, prompt.latest_version, prompt.version_count) == (None, 3, 3)
        assert q.get_version(store.engine, "support-summary") is None
        got = q.get_version(store.engine, "support-summary", 2)
        assert got is not None and got.template.startswith("v2:")
        assert q.get_version(store.engine, "support-summary", 9) is None
        assert q.get_version(store.engine, "nope") is None

    def test_promote_then_roll_back_are_audited_and_bump_the_control_version(self, store: Store) -> None:
        self._seed(store)
        before = control.get_control_version(store.engine)
        p = q.set_active_version(
            store.engine, "support-summary", 2, actor="ana", reason="v2 wins", expected_revision=1
        )
        assert (p.active_version, p.revision) == (2, 2)
        assert control.get_control_version(store.engine) == before + 1
        active = q.get_version(store.engine, "support-summary")
        assert active is not None and active.version == 2
        q.set_active_version(store.engine, "support-summary", 3, actor="bo", reason="v3 better")
        assert q.rollback_target(store.engine, "support-summary") == 2
        p = q.set_active_version(store.engine, "support-summary", 2, actor="bo", reason="v3 broke json")
        assert p.active_version == 2 and p.revision == 4
        audit = control.list_audit(store.engine, object_type="prompt", object_name="support-summary")
        assert [a.action for a in audit] == [
            "rollback",
            "promote",
            "promote",
            "add_version",
            "add_version",
            "add_version",
            "create",
        ]
        assert audit[0].before["active_version"] == 3 and audit[0].after["active_version"] == 2
        assert audit[0].reason == "v3 broke json" and audit[0].actor == "bo"
        assert audit[3].after["version"] == 3 and audit[3].after["params"] == {
            "temperature": pytest.approx(0.3)
        }
        # Rolling back again goes one step further back: before v2 there was no active version.
        assert q.rollback_target(store.engine, "support-summary") is None
        assert {n: (v.version if v else None) for n, v in q.active_versions(store.engine).items()} == {
            "support-summary": 2
        }

    def test_rollback_target_walks_back_through_promotions(self, store: Store) -> None:
        self._seed(store)
        for v in (1, 2, 3):
            q.set_active_version(store.engine, "support-summary", v, actor="ana", reason=f"go {v}")
        assert q.rollback_target(store.engine, "support-summary") == 2
        q.set_active_version(store.engine, "support-summary", 2, actor="ana", reason="back")
        assert q.rollback_target(store.engine, "support-summary") == 1
        q.set_active_version(store.engine, "support-summary", 1, actor="ana", reason="back again")
        assert q.rollback_target(store.engine, "support-summary") is None

    def test_revert_of_a_promotion_as_the_audit_page_does_it(self, store: Store) -> None:
        self._seed(store)
        q.set_active_version(store.engine, "support-summary", 1, actor="ana", reason="first")
        entry = control.list_audit(store.engine, object_type="prompt", object_name="support-summary")[0]
        reverted = q.set_active_version(
            store.engine,
            "support-summary",
            entry.before["active_version"],
            actor="bo",
            reason="revert",
            expected_revision=entry.after["revision"],
        )
        assert reverted.active_version is None
        assert control.list_audit(store.engine, object_type="prompt", limit=1)[0].action == "rollback"

    def test_the_audit_page_reverts_a_promotion_through_the_registry(self, store: Store) -> None:
        from app.gateway.revert import revert_change

        self._seed(store)
        q.set_active_version(store.engine, "support-summary", 1, actor="ana", reason="ship")
        q.set_active_version(store.engine, "support-summary", 3, actor="ana", reason="v3 wins")
        promote = control.list_audit(store.engine, object_type="prompt", limit=1)[0]
        undone = revert_change(store.engine, promote.id, actor="bo", reason="v3 breaks JSON")
        prompt = q.get_prompt(store.engine, "support-summary")
        assert prompt is not None and prompt.active_version == 1
        assert undone.action == "rollback" and undone.actor == "bo"
        assert "v3 breaks JSON" in undone.reason

    def test_stale_revision_is_refused_with_a_clear_message(self, store: Store) -> None:
        self._seed(store)
        q.set_active_version(store.engine, "support-summary", 2, actor="ana", reason="x", expected_revision=1)
        with pytest.raises(control.StaleRevision, match="changed since you loaded it"):
            q.set_active_version(
                store.engine, "support-summary", 3, actor="bo", reason="y", expected_revision=1
            )
        prompt = q.get_prompt(store.engine, "support-summary")
        assert prompt is not None and prompt.active_version == 2

    def test_bad_changes_are_refused_and_nothing_is_written(self, store: Store) -> None:
        self._seed(store, n=1)
        version = control.get_control_version(store.engine)
        with pytest.raises(control.StaleRevision, match="already exists"):
            q.create_prompt(store.engine, "support-summary", actor="ana")
        with pytest.raises(PromptError, match="not valid"):
            q.create_prompt(store.engine, "bad@name", actor="ana")
        with pytest.raises(control.NotFound, match="create it first"):
            q.add_version(store.engine, "ghost", template="x", actor="ana")
        with pytest.raises(PromptError, match="needs a template"):
            q.add_version(store.engine, "support-summary", template="  ", actor="ana")
        with pytest.raises(PromptError, match="model"):
            q.add_version(store.engine, "support-summary", template="x", params={"model": "gpt"}, actor="ana")
        with pytest.raises(control.NotFound, match="no version 5"):
            q.set_active_version(store.engine, "support-summary", 5, actor="ana", reason="x")
        with pytest.raises(ValueError, match="needs a reason"):
            q.set_active_version(store.engine, "support-summary", 1, actor="ana", reason=" ")
        with pytest.raises(ValueError, match="actor"):
            q.set_active_version(store.engine, "support-summary", 1, actor="", reason="x")
        q.set_active_version(store.engine, "support-summary", 1, actor="ana", reason="x")
        with pytest.raises(ValueError, match="already active"):
            q.set_active_version(store.engine, "support-summary", 1, actor="ana", reason="x")
        assert control.get_control_version(store.engine) == version + 1
        assert [v.version for v in q.list_versions(store.engine, "support-summary")] == [1]

    def test_list_prompts_shows_active_and_latest(self, store: Store) -> None:
        self._seed(store, n=2)
        q.create_prompt(store.engine, "classifier", actor="ana")
        q.set_active_version(store.engine, "support-summary", 1, actor="ana", reason="x")
        rows = q.list_prompts(store.engine)
        assert [(p.name, p.active_version, p.latest_version, p.version_count) for p in rows] == [
            ("classifier", None, None, 0),
            ("support-summary", 1, 2, 2),
        ]
        assert rows[1].description == "Ticket summaries"
        assert q.active_versions(store.engine) == {
            "classifier": None,
            "support-summary": q.get_version(store.engine, "support-summary", 1),
        }

    def test_concurrent_writers_never_take_the_same_number(self, store: Store) -> None:
        q.create_prompt(store.engine, "busy", actor="ana")
        errors: list[BaseException] = []

        def add(i: int) -> None:
            try:
                for _ in range(5):
                    q.add_version(store.engine, "busy", template=f"t{i}", actor=f"w{i}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(i,), name=f"controlroom-t{i}") for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert [v.version for v in q.list_versions(store.engine, "busy")] == list(range(1, 21))


class TestPromptRegistrySqlite(PromptRegistryContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.mark.postgres
class TestPromptRegistryPostgres(PromptRegistryContract):
    @pytest.fixture
    def store_url(self, pg_url: str) -> str:
        return pg_url
