"""The Sources page: the editor driven like an operator with good and bad input, what the store holds after,
pause/remove with their questions, the quarantined records with their reasons, and the app's own collector
picking up a source added here."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.fail
import pytest

from app.core.event import Event
from app.sources.base import SourceState
from app.sources.collector import SourceReport
from app.ui.models.quarantine_model import COL_EXCERPT, COL_REASON, COL_SOURCE, QuarantineModel, one_line
from app.ui.models.runner import run_now
from app.ui.models.sources_model import COL_QUARANTINED, COL_RATE, COL_STATE, SourcesModel, build_rows
from app.ui.pages.sources import SourcesPage
from app.ui.qt import Qt, QTimer, QtTest, QtWidgets
from storage.engine import Store, open_store
from storage.queries.compaction import dirty_blocks
from storage.queries.control import get_control_version, list_audit, save_object
from storage.queries.events import count_events
from storage.queries.quarantine import count_quarantined_by_source, insert_quarantined
from storage.queries.source_configs import (
    SourceConfig,
    get_source_config,
    list_source_configs,
    save_source_config,
)

pytestmark = pytest.mark.gui


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


@pytest.fixture
def page(qtbot: Any, store: Store) -> SourcesPage:
    p = SourcesPage()
    qtbot.addWidget(p)
    p.resize(1200, 800)
    p.show()
    p.attach_store(store, run_now)
    assert p.loaded
    return p


def type_into(qtbot: Any, widget: QtWidgets.QLineEdit, text: str) -> None:
    widget.clear()
    qtbot.keyClicks(widget, text)


def save(qtbot: Any, page: SourcesPage) -> None:
    qtbot.mouseClick(page.editor.save_button, Qt.MouseButton.LeftButton)


def choose(combo: QtWidgets.QComboBox, data: object) -> None:
    index = combo.findData(data)
    assert index >= 0, f"{data!r} is not offered"
    combo.setCurrentIndex(index)


def report(name: str, kind: str = "jsonl", **kw: Any) -> SourceReport:
    values: dict[str, Any] = dict(
        name=name, kind=kind, state=SourceState.RUNNING, origin="store", paused=False, ingested=10,
        duplicates=0, rejected=0, events_per_s=2.5, lag="up to date", last_error=None, last_event_at=None,
        detail="", restarts=0, quarantine_keys=(name,),
    )  # fmt: skip
    values.update(kw)
    return SourceReport(**values)


def answer_next_question(qtbot: Any, button_text: str, reason: str = "") -> None:
    """In the next question, type ``reason`` and click ``button_text``, as the operator would."""
    from app.ui.editors.fields import ReasonBox

    def click() -> None:
        box = QtWidgets.QApplication.activeModalWidget()
        if not isinstance(box, ReasonBox):
            QTimer.singleShot(20, click)
            return
        if reason:
            QtTest.QTest.keyClicks(box.reason, reason)
        buttons = box.findChildren(QtWidgets.QPushButton)
        for button in buttons:
            if button.text().replace("&", "") == button_text:
                assert button.isEnabled(), f"{button_text!r} is not enabled (a reason is required)"
                button.click()
                return
        raise AssertionError(f"no {button_text!r} button in {[b.text() for b in buttons]}")

    QTimer.singleShot(0, click)


# --- the editor -----------------------------------------------------------------------------------


def test_adding_a_jsonl_source_saves_it_audited(
    qtbot: Any, page: SourcesPage, store: Store, tmp_path: Path
) -> None:
    version = get_control_version(store.engine)
    page.add_actions["jsonl"].trigger()
    editor = page.editor
    assert editor.isVisible() and editor.current_kind == "jsonl"
    assert not editor.fields["url"].widget.isVisible()  # only the kind's own fields show
    type_into(qtbot, editor.name, "app-log")
    type_into(qtbot, editor.path, str(tmp_path / "app.jsonl"))
    editor.jsonl_format.setCurrentIndex(editor.jsonl_format.findData("litellm"))
    type_into(qtbot, editor.poll_interval, "0.5")
    type_into(qtbot, editor.reason, "the billing service's log")
    save(qtbot, page)

    saved = get_source_config(store.engine, "app-log")
    assert saved is not None and saved.kind == "jsonl" and not saved.paused
    assert saved.settings == {"path": str(tmp_path / "app.jsonl"), "format": "litellm", "poll_interval": 0.5}
    (entry,) = list_audit(store.engine)
    assert (entry.action, entry.object_type, entry.object_name) == ("create", "source", "app-log")
    assert entry.reason == "the billing service's log" and entry.actor
    assert get_control_version(store.engine) == version + 1
    assert not editor.isVisible()
    assert page.model.rowCount() == 1 and page.model.row_at(0).name == "app-log"
    assert page.model.row_at(0).state == "not running"  # no collector in this window
    assert "Added app-log" in page.result.text()


def test_bad_input_is_explained_at_each_field_and_nothing_is_saved(
    qtbot: Any, page: SourcesPage, store: Store, tmp_path: Path
) -> None:
    page.add_actions["jsonl"].trigger()
    editor = page.editor
    type_into(qtbot, editor.name, "bad name!")
    type_into(qtbot, editor.path, "logs/app.jsonl")
    editor.jsonl_format.setEditText("carrier-pigeon")
    type_into(qtbot, editor.poll_interval, "fast")
    save(qtbot, page)
    assert "1-64 letters" in editor.error_text("name")
    assert "full path" in editor.error_text("path")
    assert "unknown format 'carrier-pigeon'" in editor.error_text("jsonl:format")
    assert "a number of seconds" in editor.error_text("poll_interval")
    assert editor.isVisible() and list_source_configs(store.engine) == []

    # Fixing the fields clears the messages and saves.
    type_into(qtbot, editor.name, "app-log")
    type_into(qtbot, editor.path, str(tmp_path / "app.jsonl"))
    editor.jsonl_format.setCurrentIndex(0)  # detect from the file
    editor.poll_interval.clear()
    save(qtbot, page)
    assert [c.settings for c in list_source_configs(store.engine)] == [{"path": str(tmp_path / "app.jsonl")}]

    # A second source by the same name is refused at the name.
    page.add_actions["otlp"].trigger()
    type_into(qtbot, editor.name, "app-log")
    type_into(qtbot, editor.listen, "127.0.0.1:99999")
    save(qtbot, page)
    assert "exists" in editor.error_text("name") and "out of range" in editor.error_text("listen")
    assert len(list_source_configs(store.engine)) == 1


def test_a_bearer_token_goes_to_the_keyring_never_to_the_store(
    qtbot: Any, page: SourcesPage, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())  # no secure keyring on this machine
    try:
        page.add_actions["http_poll"].trigger()
        editor = page.editor
        type_into(qtbot, editor.name, "gateway-b")
        type_into(qtbot, editor.url, "http://127.0.0.1:9100/events")
        type_into(qtbot, editor.cursor_param, "after")
        choose(editor.token_mode, "keyring")
        assert editor.token.isVisible() and editor.token.echoMode() == QtWidgets.QLineEdit.EchoMode.Password
        save(qtbot, page)
        assert "type the token" in editor.error_text("token_value")
        type_into(qtbot, editor.token, "sk-remote-secret-123")
        save(qtbot, page)
        assert "keyring refused" in editor.error_text("token_value")
        assert "sk-remote-secret-123" not in editor.error_text("token_value")
        assert list_source_configs(store.engine) == []
    finally:
        keyring.set_keyring(previous)

    # An environment variable works without a keyring.
    choose(editor.token_mode, "env")
    save(qtbot, page)
    assert "environment variable" in editor.error_text("token_env")
    type_into(qtbot, editor.token_env, "GATEWAY_B_TOKEN")
    type_into(qtbot, editor.interval, "0")
    save(qtbot, page)
    assert "positive" in editor.error_text("http_poll:interval_s")
    type_into(qtbot, editor.interval, "15")
    save(qtbot, page)
    saved = get_source_config(store.engine, "gateway-b")
    assert saved is not None
    assert saved.settings == {
        "url": "http://127.0.0.1:9100/events",
        "format": "event",
        "cursor_param": "after",
        "interval_s": 15.0,
        "token": "env:GATEWAY_B_TOKEN",
    }
    assert editor.token.text() == ""  # the typed secret does not linger in the form
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("store.sqlite3*"))
    assert raw and b"sk-remote-secret-123" not in raw


@pytest.mark.keyring
def test_a_bearer_token_is_stored_in_a_real_keyring_and_used_by_the_poller(
    qtbot: Any, page: SourcesPage, store: Store, tmp_path: Path
) -> None:
    """The token typed on the page reaches the remote only from the keyring: the store holds its reference."""
    from tests.keyring_support import require_secret_service

    require_secret_service()
    from aiohttp import web

    from app.runtime import Runtime
    from app.secrets import KeyKind, delete_key, get_key
    from app.sources.collector import Collector

    token = "sk-kr-token-456"
    seen: list[str | None] = []
    now = time.time()
    records = [
        Event(ts_start=now - 20 + i, ts_end=now - 19 + i, provider="openai", model="remote").to_dict()
        for i in range(4)
    ]

    async def serve() -> web.AppRunner:
        async def page_handler(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Authorization"))
            if request.headers.get("Authorization") != f"Bearer {token}":
                return web.json_response({"error": "unauthorized"}, status=401)
            start = int(request.query.get("after") or 0)
            return web.json_response(
                {"data": records[start:], "next_cursor": str(len(records)), "has_more": False}
            )

        app = web.Application()
        app.router.add_get("/events", page_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    with Runtime() as runtime:
        server = runtime.run(serve(), timeout=10)
        url = f"http://127.0.0.1:{server.addresses[0][1]}/events"
        page.add_actions["http_poll"].trigger()
        editor = page.editor
        type_into(qtbot, editor.name, "remote-kr")
        type_into(qtbot, editor.url, url)
        type_into(qtbot, editor.cursor_param, "after")
        type_into(qtbot, editor.records_field, "data")
        type_into(qtbot, editor.interval, "0.2")
        choose(editor.token_mode, "keyring")
        type_into(qtbot, editor.token, token)
        collector = Collector(store, compact_every_s=None, retain_every_s=None, watch_every_s=0.1)
        try:
            save(qtbot, page)
            saved = get_source_config(store.engine, "remote-kr")
            assert saved is not None and saved.settings["token"] == "keyring:source.remote-kr"
            assert get_key("source.remote-kr", KeyKind.API) == token
            runtime.run(collector.start(), timeout=20)
            qtbot.waitUntil(lambda: count_events(store.engine) == 4, timeout=15_000)
            assert seen and all(h == f"Bearer {token}" for h in seen)
        finally:
            runtime.run(collector.aclose(), timeout=30)
            runtime.run(server.cleanup(), timeout=10)
            delete_key("source.remote-kr")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("store.sqlite3*"))
    assert raw and token.encode() not in raw


def test_a_usage_source_names_a_provider_with_a_usage_api(
    qtbot: Any, page: SourcesPage, store: Store
) -> None:
    page.add_actions["usage_api"].trigger()
    editor = page.editor
    type_into(qtbot, editor.name, "openai-usage")
    save(qtbot, page)
    assert "OpenAI or Anthropic provider" in editor.error_text("provider")

    for name, kind in (("openai-main", "openai"), ("local", "openai_compatible")):
        save_object(store.engine, "provider", {"name": name, "kind": kind}, expected_revision=None, actor="t")
    page.refresh()
    assert editor.provider.findData("local") < 0  # no usage API there: not offered
    choose(editor.provider, "openai-main")
    type_into(qtbot, editor.lookback, "0")
    save(qtbot, page)
    assert "1 to 400" in editor.error_text("lookback_days")
    type_into(qtbot, editor.lookback, "14")
    save(qtbot, page)
    saved = get_source_config(store.engine, "openai-usage")
    assert saved is not None and saved.settings == {"provider": "openai-main", "lookback_days": 14}


def test_editing_keeps_what_the_form_does_not_show_and_refuses_a_stale_save(
    qtbot: Any, page: SourcesPage, store: Store
) -> None:
    save_source_config(
        store.engine,
        SourceConfig("remote", "http_poll", {"url": "http://127.0.0.1:9/a", "headers": {"X-Team": "ops"}}),
        actor="config",
    )
    page.refresh()
    page.select("remote")
    qtbot.mouseClick(page.edit_button, Qt.MouseButton.LeftButton)
    editor = page.editor
    assert editor.name.isReadOnly() and editor.url.text() == "http://127.0.0.1:9/a"
    type_into(qtbot, editor.url, "http://127.0.0.1:9/b")
    save(qtbot, page)
    saved = get_source_config(store.engine, "remote")
    assert saved is not None and saved.revision == 2
    assert saved.settings["headers"] == {"X-Team": "ops"} and saved.settings["url"] == "http://127.0.0.1:9/b"

    # Someone else saves while this operator edits: refused, said at the top, nothing overwritten.
    page.select("remote")
    page.start_edit()
    save_source_config(
        store.engine, SourceConfig("remote", "http_poll", {"url": "http://127.0.0.1:9/c"}), actor="x"
    )
    type_into(qtbot, editor.url, "http://127.0.0.1:9/d")
    save(qtbot, page)
    assert "changed since you loaded it" in editor.general_error.text()
    stored = get_source_config(store.engine, "remote")
    assert stored is not None and stored.settings["url"] == "http://127.0.0.1:9/c"


def test_pause_and_remove_ask_first_and_remove_can_be_undone(
    qtbot: Any, page: SourcesPage, store: Store
) -> None:
    save_source_config(store.engine, SourceConfig("traces", "otlp", {"listen": "127.0.0.1:4318"}), actor="t")
    page.refresh()
    page.select("traces")
    assert page.pause_button.isEnabled() and page.pause_button.text() == "&Pause"

    answer_next_question(qtbot, "Cancel")
    qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
    config = get_source_config(store.engine, "traces")
    assert config is not None and not config.paused

    answer_next_question(qtbot, "Pause", reason="collector upgrade")
    qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)
    config = get_source_config(store.engine, "traces")
    assert config is not None and config.paused
    assert list_audit(store.engine)[0].reason == "collector upgrade"  # the operator's words, audited
    assert page.model.row_at(0).state == "paused" and page.pause_button.text() == "Res&ume"
    qtbot.mouseClick(page.pause_button, Qt.MouseButton.LeftButton)  # resuming needs no question
    config = get_source_config(store.engine, "traces")
    assert config is not None and not config.paused

    answer_next_question(qtbot, "Remove", reason="moved to the central collector")
    qtbot.mouseClick(page.remove_button, Qt.MouseButton.LeftButton)
    assert get_source_config(store.engine, "traces") is None
    assert page.undo_button.isVisible() and "Removed traces" in page.result.text()
    qtbot.mouseClick(page.undo_button, Qt.MouseButton.LeftButton)
    back = get_source_config(store.engine, "traces")
    assert back is not None and back.settings == {"listen": "127.0.0.1:4318"}
    actions = [e.action for e in sorted(list_audit(store.engine), key=lambda e: e.id)]
    assert actions == ["create", "pause", "resume", "delete", "create"]
    assert not page.undo_button.isVisible()


# --- live status and quarantine --------------------------------------------------------------------------


def test_the_window_shows_source_health_in_the_status_bar_and_the_rail(qtbot: Any) -> None:
    from app.ui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show_source_statuses(
        [report("a"), report("b", state=SourceState.ERROR, last_error="cannot connect")]
    )
    assert window.status.sources.text() == "sources: 1/2 ok ⚠"
    assert "b: error — cannot connect" in window.status.sources.toolTip()
    rail = [window.rail.item(i).text() for i in range(window.rail.count())]
    assert "Sources  ⚠ 1" in rail
    window.show_source_statuses([report("a"), report("b", paused=True, state=SourceState.PAUSED)])
    assert window.status.sources.text() == "sources: 1/1 ok" and "Sources" in [
        window.rail.item(i).text() for i in range(window.rail.count())
    ]
    page = window.pages["sources"]
    assert isinstance(page, SourcesPage) and page.reports is not None and len(page.reports) == 2


def test_live_reports_fill_the_status_columns(page: SourcesPage, store: Store) -> None:
    save_source_config(store.engine, SourceConfig("a", "otlp", {}), actor="t")
    page.refresh()
    page.apply_reports(
        [
            report("a", "otlp", events_per_s=12.4),
            report(
                "file-src", origin="/etc/controlroom/sources.yaml", state=SourceState.ERROR, last_error="boom"
            ),
        ]
    )
    model = page.model
    assert [r.name for r in model.rows()] == ["a", "file-src"]
    assert (
        model.data(model.index(0, COL_RATE)) == "12.4/s"
        and model.data(model.index(0, COL_STATE)) == "running"
    )
    assert model.data(model.index(1, COL_STATE)) == "error"
    assert not model.row_at(1).editable
    page.select("file-src")
    assert not page.edit_button.isEnabled() and "sources.yaml" in page.edit_button.toolTip()
    assert "1 failing" in page.summary.text()


def test_sources_model_merges_configs_reports_and_counts() -> None:
    configs = [
        SourceConfig("log", "jsonl", {"path": "/var/log/a.jsonl"}),
        SourceConfig("p", "otlp", {}, paused=True),
    ]
    counts = {"jsonl:/var/log/a.jsonl": 3, "p": 1, "gone": 9}
    rows = build_rows(configs, None, counts)
    assert [(r.name, r.state, r.quarantined) for r in rows] == [("log", "not running", 3), ("p", "paused", 1)]
    rows = build_rows(
        configs, [report("log", quarantine_keys=("jsonl:/var/log/a.jsonl",)), report("p")], counts
    )
    assert [r.state for r in rows] == ["running", "paused"]
    model = SourcesModel()
    model.set_rows(rows)
    assert model.data(model.index(0, COL_QUARANTINED)) == "3"
    assert model.data(model.index(1, COL_RATE)) == "—"  # paused: no live figures


def test_quarantined_records_show_with_their_reasons(qtbot: Any, page: SourcesPage, store: Store) -> None:
    save_source_config(
        store.engine, SourceConfig("app-log", "jsonl", {"path": "/var/log/app.jsonl"}), actor="t"
    )
    key = "jsonl:/var/log/app.jsonl"
    insert_quarantined(
        store.engine,
        [
            (key, "byte 0", "invalid JSON: Expecting value", "not json at all", time.time() - 60),
            (
                key,
                "byte 16",
                "bad value: ts_start 'yesterday' is not a time",
                '{"ts_start": "yesterday"}',
                None,
            ),
            ("other", "line 3", "missing field: provider", "{}", None),
        ],
    )
    qtbot.mouseClick(page.quarantine_refresh, Qt.MouseButton.LeftButton)
    assert page.model.data(page.model.index(0, COL_QUARANTINED)) == "2"
    assert page.quarantine.rowCount() == 3  # all sources at first
    page.select("app-log")
    assert page.quarantine_filter.currentText() == "app-log"
    q = page.quarantine
    assert q.rowCount() == 2 and q.total == 2
    assert q.data(q.index(0, COL_SOURCE)) == "app-log"
    assert q.data(q.index(0, COL_REASON)) == "bad value: ts_start 'yesterday' is not a time"
    assert q.data(q.index(1, COL_EXCERPT)) == "not json at all"
    assert "app-log: 2" in page.quarantine_title.text()
    page.quarantine_view.selectRow(1)
    assert "Reason: invalid JSON: Expecting value" in page.excerpt.toPlainText()
    assert "not json at all" in page.excerpt.toPlainText()
    # Records of a source no longer configured can still be looked at.
    page.quarantine_filter.setCurrentIndex(page.quarantine_filter.findText("other"))
    assert q.rowCount() == 1 and q.data(q.index(0, COL_REASON)) == "missing field: provider"


def test_quarantine_model_reads_page_by_page(store: Store) -> None:
    insert_quarantined(
        store.engine, [("s", f"byte {i}", "invalid JSON: x", f"line\t{i}\n", float(i)) for i in range(250)]
    )
    model = QuarantineModel(lambda: store.engine, run_now)
    model.set_sources(["s"])
    assert model.rowCount() == 100 and model.total == 250 and model.canFetchMore()
    assert model.record_at(0).position == "byte 249"  # newest first
    model.fetchMore()
    model.fetchMore()
    assert model.rowCount() == 250 and not model.canFetchMore()
    assert len({model.record_at(i).id for i in range(250)}) == 250  # no record twice
    assert model.data(model.index(0, COL_EXCERPT)) == "line→249⏎"
    model.set_sources([])
    assert model.rowCount() == 0 and model.total == 0
    assert one_line("x" * 500, 10) == "x" * 9 + "…"


# --- the app's collector --------------------------------------------------------------------------------


def test_the_apps_collector_runs_a_source_added_on_the_page(qtbot: Any, tmp_path: Path) -> None:
    from app.ui.app import ControlRoom, UiOptions

    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    qapp = QtWidgets.QApplication.instance()
    assert isinstance(qapp, QtWidgets.QApplication)
    app = ControlRoom(qapp, UiOptions(store_url=url, page="sources"))
    qtbot.addWidget(app.window)
    app.start()
    try:
        qtbot.waitUntil(lambda: app.store is not None and app.collector is not None, timeout=20_000)
        page = app.window.pages["sources"]
        assert isinstance(page, SourcesPage)
        qtbot.waitUntil(lambda: page.loaded, timeout=10_000)
        assert app.window.status.sources.text() == "sources: none"

        log = tmp_path / "service.jsonl"
        now = time.time()
        with log.open("w", encoding="utf-8") as f:
            for i in range(5):
                f.write(
                    Event(ts_start=now - 30 + i, ts_end=now - 29 + i, provider="openai", model="m").to_json()
                    + "\n"
                )
            f.write('{"ts_start": "yesterday", "provider": "openai", "model": "m"}\n')

        page.add_actions["jsonl"].trigger()
        type_into(qtbot, page.editor.name, "service-log")
        type_into(qtbot, page.editor.path, str(log))
        save(qtbot, page)
        qtbot.waitUntil(
            lambda: get_source_config(app.store.engine, "service-log") is not None, timeout=10_000
        )

        qtbot.waitUntil(lambda: count_events(app.store.engine) == 5, timeout=15_000)
        qtbot.waitUntil(
            lambda: sum(count_quarantined_by_source(app.store.engine).values()) == 1, timeout=10_000
        )
        qtbot.waitUntil(lambda: app.window.status.sources.text() == "sources: 1/1 ok", timeout=10_000)
        qtbot.waitUntil(
            lambda: page.model.rowCount() == 1 and page.model.row_at(0).state == "running", timeout=10_000
        )
        qtbot.waitUntil(lambda: page.model.row_at(0).quarantined == 1, timeout=10_000)
        page.select("service-log")
        qtbot.waitUntil(lambda: page.quarantine.rowCount() == 1, timeout=10_000)
        reason = page.quarantine.data(page.quarantine.index(0, COL_REASON))
        assert reason and "yesterday" in json.dumps(page.quarantine.record_at(0).excerpt)

        # More lines reach the store while it runs; the page's row follows.
        with log.open("a", encoding="utf-8") as f:
            f.write(Event(ts_start=now, ts_end=now + 1, provider="openai", model="m").to_json() + "\n")
        qtbot.waitUntil(lambda: count_events(app.store.engine) == 6, timeout=10_000)
        # The app compacts the history tiers too (charts over days read them), soon after it starts.
        qtbot.waitUntil(lambda: app.collector.maintenance.compactions >= 1, timeout=30_000)
        assert app.collector.maintenance.last_compaction_error is None
        assert not dirty_blocks(app.store.engine)
        qtbot.waitUntil(
            lambda: (page.model.row_at(0).report or report("x", ingested=0)).ingested == 6, timeout=10_000
        )
    finally:
        app.shutdown()
        app.window.close()
    assert app.collector is None and app.pipeline is None


def test_the_demo_writes_through_the_apps_one_pipeline(qtbot: Any, tmp_path: Path) -> None:
    from app.demo import WeatherPhase, WeatherSchedule
    from app.ui.app import ControlRoom, UiOptions

    qapp = QtWidgets.QApplication.instance()
    assert isinstance(qapp, QtWidgets.QApplication)
    app = ControlRoom(qapp, UiOptions(store_url=f"sqlite:///{tmp_path / 'demo.sqlite3'}", demo=True))
    app.demo.demo_kwargs = {
        "backfill_hours": 0,
        "weather": WeatherSchedule((WeatherPhase("instant", 600.0),)),
    }
    qtbot.addWidget(app.window)
    app.start()
    try:
        qtbot.waitUntil(lambda: app.demo.state == "running", timeout=30_000)
        assert app.demo.demo.pipeline is app.pipeline  # one writer for the demo and the sources
        qtbot.waitUntil(lambda: app.pipeline.totals.ingested >= 5, timeout=20_000)
    finally:
        app.shutdown()
        app.window.close()
    assert app.collector is None and app.pipeline is None


def test_ctrl_e_writes_the_sources_table(page: SourcesPage, tmp_path: Path) -> None:
    out = tmp_path / "sources.csv"
    assert page.export_visible(ask_path=lambda _what, _suggested: out) == out
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",")[0] == page.model.headerData(0, Qt.Orientation.Horizontal)
