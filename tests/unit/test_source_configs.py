"""Source configs as control objects: every change audited, the control version bumped, stale saves refused;
the field-by-field checks the Sources page shows; the quarantine queries the page reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.sources.collector import SourceFileError, parse_source_list, quarantine_keys, source_problems
from storage.engine import Store, open_store
from storage.queries.control import StaleRevision, get_control_version, list_audit
from storage.queries.quarantine import count_quarantined_by_source, fetch_quarantined, insert_quarantined
from storage.queries.source_configs import (
    SourceConfig,
    SourceConfigError,
    delete_source_config,
    get_source_config,
    list_source_configs,
    save_source_config,
    set_source_paused,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


def test_every_change_is_audited_and_bumps_the_control_version(store: Store) -> None:
    v0 = get_control_version(store.engine)
    log = SourceConfig("app-log", "jsonl", {"path": "/var/log/app.jsonl"})
    saved = save_source_config(store.engine, log, expected_revision=None, actor="ana", reason="new service")
    assert saved.revision == 1 and get_control_version(store.engine) == v0 + 1
    moved = SourceConfig("app-log", "jsonl", {"path": "/srv/app.jsonl"})
    saved = save_source_config(store.engine, moved, expected_revision=1, actor="ana", reason="moved")
    assert saved.revision == 2
    paused = set_source_paused(store.engine, "app-log", True, expected_revision=2, actor="bo", reason="noisy")
    assert paused.paused and paused.revision == 3
    set_source_paused(store.engine, "app-log", False, actor="bo")
    removed = delete_source_config(store.engine, "app-log", expected_revision=4, actor="ana", reason="gone")
    assert removed is not None and removed.settings == {"path": "/srv/app.jsonl"}
    assert get_source_config(store.engine, "app-log") is None
    assert get_control_version(store.engine) == v0 + 5

    entries = sorted(list_audit(store.engine), key=lambda e: e.id)
    assert [(e.action, e.object_type, e.object_name, e.actor) for e in entries] == [
        ("create", "source", "app-log", "ana"),
        ("update", "source", "app-log", "ana"),
        ("pause", "source", "app-log", "bo"),
        ("resume", "source", "app-log", "bo"),
        ("delete", "source", "app-log", "ana"),
    ]
    assert entries[1].before["settings"] == {"path": "/var/log/app.jsonl"}
    assert entries[1].after["settings"] == {"path": "/srv/app.jsonl"}
    assert entries[1].reason == "moved" and entries[4].after is None
    # Without an actor, the OS user is the one who did it.
    save_source_config(store.engine, log)
    assert sorted(list_audit(store.engine), key=lambda e: e.id)[-1].actor


def test_a_stale_save_is_refused_with_a_clear_message(store: Store) -> None:
    save_source_config(store.engine, SourceConfig("otlp", "otlp", {"listen": "127.0.0.1:4318"}), actor="a")
    save_source_config(store.engine, SourceConfig("otlp", "otlp", {"listen": "127.0.0.1:4319"}), actor="b")
    with pytest.raises(StaleRevision, match="you had revision 1, the store has 2"):
        save_source_config(
            store.engine,
            SourceConfig("otlp", "otlp", {"listen": "0.0.0.0:4318"}),
            expected_revision=1,
            actor="a",
        )
    with pytest.raises(StaleRevision, match="already exists"):
        save_source_config(store.engine, SourceConfig("otlp", "otlp", {}), expected_revision=None, actor="a")
    with pytest.raises(StaleRevision, match="was deleted"):
        delete_source_config(store.engine, "nope", expected_revision=3, actor="a")
    assert delete_source_config(store.engine, "nope", actor="a") is None
    with pytest.raises(LookupError, match="does not exist"):
        set_source_paused(store.engine, "nope", True, actor="a")
    assert [c.settings for c in list_source_configs(store.engine)] == [{"listen": "127.0.0.1:4319"}]


def test_a_secret_in_the_settings_is_refused_and_not_echoed(store: Store) -> None:
    v0 = get_control_version(store.engine)
    with pytest.raises(SourceConfigError, match="not a secret") as err:
        save_source_config(
            store.engine, SourceConfig("x", "http_poll", {"url": "http://h", "token": "sk-live-123"})
        )
    assert "sk-live-123" not in str(err.value)
    assert get_control_version(store.engine) == v0 and list_audit(store.engine) == []


def test_source_problems_name_the_field(tmp_path: Path) -> None:
    def problems(
        kind: str, providers: dict[str, str] | None = None, name: str = "s", **settings: object
    ) -> dict[str, str]:
        return source_problems(SourceConfig(name, kind, settings), providers)

    assert problems("jsonl", path=str(tmp_path / "app.jsonl")) == {}
    assert problems("jsonl", path=str(tmp_path / "app.jsonl"), format="litellm", poll_interval=0.5) == {}
    assert "full path" in problems("jsonl", path="logs/app.jsonl")["path"]
    assert "required" in problems("jsonl")["path"]
    assert "directory" in problems("jsonl", path=str(tmp_path))["path"]
    assert "unknown format" in problems("jsonl", path="/x.jsonl", format="carrier-pigeon")["format"]
    assert "positive" in problems("jsonl", path="/x.jsonl", poll_interval=0)["poll_interval"]
    assert "must be 1-64" in problems("jsonl", name="bad name!", path="/x.jsonl")["name"]
    assert "unknown setting 'url'" in problems("jsonl", path="/x.jsonl", url="http://x")[""]

    assert problems("otlp", listen="127.0.0.1:4318") == {}
    assert "not a port number" in problems("otlp", listen="127.0.0.1:http")["listen"]
    assert "out of range" in problems("otlp", listen="127.0.0.1:99999")["listen"]

    assert problems("http_poll", url="http://127.0.0.1:9100/events", token="keyring:source.s") == {}
    assert "http://" in problems("http_poll", url="ftp://x")["url"]
    assert "not a secret" in problems("http_poll", url="http://h/x", token="abc")["token"]
    assert "positive" in problems("http_poll", url="http://h/x", interval_s=-1)["interval_s"]

    providers = {"openai-main": "openai", "local": "openai_compatible"}
    assert problems("usage_api", providers, provider="openai-main", lookback_days=7) == {}
    assert "no provider named 'nope'" in problems("usage_api", providers, provider="nope")["provider"]
    assert "only for OpenAI and Anthropic" in problems("usage_api", providers, provider="local")["provider"]
    assert (
        "1 to 400"
        in problems("usage_api", providers, provider="openai-main", lookback_days=0)["lookback_days"]
    )
    assert "kind 'x' must be one of" in problems("x")["kind"]


def test_quarantine_keys_and_file_lists() -> None:
    assert quarantine_keys(SourceConfig("log", "jsonl", {"path": "/var/log/a.jsonl"})) == (
        "jsonl:/var/log/a.jsonl",
    )
    assert quarantine_keys(SourceConfig("traces", "otlp", {})) == ("traces",)
    with pytest.raises(SourceFileError, match="used twice"):
        parse_source_list(
            {"sources": [{"name": "a", "kind": "otlp"}, {"name": "a", "kind": "otlp"}]}, where="f"
        )


def test_quarantine_counts_by_source_and_pages_of_several_sources(store: Store) -> None:
    rows = [("a", f"byte {i}", "invalid JSON: x", "{", float(i)) for i in range(5)]
    rows += [
        ("b", "line 1", "missing field: ts_start", "{}", 10.0),
        ("c", "line 2", "bad value: y", "[]", 11.0),
    ]
    insert_quarantined(store.engine, rows)
    assert count_quarantined_by_source(store.engine) == {"a": 5, "b": 1, "c": 1}
    page = fetch_quarantined(store.engine, sources=["a", "c"], limit=3)
    assert [r.source for r in page] == ["c", "a", "a"]
    rest = fetch_quarantined(store.engine, sources=["a", "c"], limit=10, before_id=page[-1].id)
    assert len(rest) == 3 and {r.source for r in rest} == {"a"}
