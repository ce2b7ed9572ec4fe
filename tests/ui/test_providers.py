"""Providers: the editors driven with valid and invalid input, against a real store, the simulator and
(where there is one) a real Secret Service keyring.  The store never holds a key."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backends.fail
import keyring.errors
import pytest

from app import secrets
from app.core.config import parse_config
from app.sim import SimServer
from app.ui.models.runner import run_now
from app.ui.pages.providers import (
    ProviderDialog,
    ProviderForm,
    ProvidersPage,
    TargetDialog,
    check_base_url,
    load_providers,
    validate_provider,
    validate_target,
)
from app.ui.qt import Qt, QtTest, QtWidgets
from storage.engine import Store, open_store
from storage.queries import control as q
from tests.integration.sim_fixtures import sim  # noqa: F401  (fixture)
from tests.keyring_support import require_secret_service

pytestmark = pytest.mark.gui

GOOD_KEY = "sk-test-providers-0123456789"
BAD_KEY = "sk-invalid-providers-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'providers.db'}")
    yield s
    s.close()


def _page(qtbot: object, store: Store, gateway: object = None) -> ProvidersPage:
    page = ProvidersPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    page.attach_store(lambda: store, run_now, (lambda: gateway) if gateway is not None else None)
    return page


def _type(widget: QtWidgets.QWidget, text: str) -> None:
    widget.clear()  # type: ignore[attr-defined]
    QtTest.QTest.keyClicks(widget, text)


def _choose(combo: QtWidgets.QComboBox, value: str) -> None:
    combo.setCurrentIndex(combo.findData(value))


def _provider_dialog(page: ProvidersPage) -> ProviderDialog:
    assert isinstance(page.dialog, ProviderDialog)
    return page.dialog


def _target_dialog(page: ProvidersPage) -> TargetDialog:
    assert isinstance(page.dialog, TargetDialog)
    return page.dialog


def _enter(dialog: ProviderDialog | TargetDialog, *, reason: str = "a test change") -> None:
    """Enter saves; a reason is typed first when none is (every save needs one)."""
    if reason and not dialog.reason.text():
        _type(dialog.reason, reason)
        dialog.name.setFocus()
    QtTest.QTest.keyClick(dialog.focusWidget() or dialog, Qt.Key.Key_Return)


def _add_env_provider(page: ProvidersPage, name: str, url: str, var: str, kind: str = "openai") -> None:
    page.add_button.click()
    d = _provider_dialog(page)
    _type(d.name, name)
    _choose(d.kind, kind)
    _type(d.base_url, url)
    _choose(d.key_source, "env")
    _type(d.api_env, var)
    _enter(d)
    assert page.dialog is None, d.banner.text()


# --- validation, pure --------------------------------------------------------------------------------


def _form(**kw: object) -> ProviderForm:
    base: dict[str, object] = dict(
        name="p1",
        kind="openai",
        base_url="",
        key_source="env",
        api_key="",
        api_env="OPENAI_API_KEY",
        admin_source="none",
        admin_key="",
        admin_env="",
        rpm="",
        tpm="",
    )
    base.update(kw)
    return ProviderForm(**base)  # type: ignore[arg-type]


def test_provider_validation_names_every_field() -> None:
    problems, row = validate_provider(_form())
    assert problems == {} and row["api_key_ref"] == "env:OPENAI_API_KEY" and row["base_url"] is None
    problems, _ = validate_provider(
        _form(name="bad name", kind="openai_compatible", rpm="0", tpm="lots", api_env="1X")
    )
    assert set(problems) == {"name", "base_url", "rpm", "tpm", "api_env"}
    problems, _ = validate_provider(_form(key_source="keyring", api_key=""))
    assert "OS keyring" in problems["api_key"]
    problems, row = validate_provider(
        _form(key_source="keyring", api_key="", has_stored_key=True, editing=True)
    )
    assert problems == {} and row["api_key_ref"] == "keyring:controlroom/p1"
    problems, _ = validate_provider(_form(existing_names=frozenset({"p1"})))
    assert "already exists" in problems["name"]
    assert check_base_url("http://u:pw@h/v1", "openai")[0] is not None
    assert (
        check_base_url("https://api.anthropic.com/v1", "anthropic")[1]
        == "Anthropic's base URL has no /v1 (the SDK adds it)."
    )


def test_target_validation() -> None:
    problems, values = validate_target(
        "fast",
        "gpt-4o-mini",
        {"input_per_mtok": "0.15", "output_per_mtok": "$0.6"},
        editing=False,
        existing=frozenset(),
    )
    assert problems == {} and values["output_per_mtok"] == 0.6
    problems, _ = validate_target(
        "", "", {"input_per_mtok": "-1", "cache_read_per_mtok": "x"}, editing=False, existing=frozenset()
    )
    assert set(problems) == {"name", "model", "input_per_mtok", "cache_read_per_mtok"}
    problems, _ = validate_target("t", "m", {"input_per_mtok": "1"}, editing=False, existing=frozenset())
    assert "both the input and the output" in problems["output_per_mtok"]


# --- the page ----------------------------------------------------------------------------------------


def test_add_provider_invalid_then_valid(qtbot: object, store: Store) -> None:
    page = _page(qtbot, store)
    assert page.stack.currentWidget() is page.empty and "No provider yet" in page.empty.label.text()
    page.add_button.click()
    d = _provider_dialog(page)
    _type(d.name, "my provider")
    _choose(d.kind, "openai_compatible")
    _type(d.rpm, "-5")
    _choose(d.key_source, "env")
    _enter(d, reason="")
    assert d.isVisible()
    assert "reason goes in the audit log" in d.errors["reason"].text()  # required, as in every editor
    assert "letters, digits" in d.errors["name"].text()
    assert "needs its base URL" in d.errors["base_url"].text()
    assert "whole number" in d.errors["rpm"].text()
    assert "environment variable name" in d.errors["api_env"].text()
    assert q.list_objects(store.engine, "provider") == []

    _type(d.name, "local")
    _type(d.base_url, "http://127.0.0.1:11434/v1/")
    _type(d.rpm, "600")
    _type(d.tpm, "100000")
    _type(d.api_env, "LOCAL_KEY")
    _type(d.reason, "new inference box")
    _enter(d)
    assert not d.isVisible()
    stored = q.get_object(store.engine, "provider", "local")
    assert stored is not None
    assert (stored["kind"], stored["base_url"], stored["api_key_ref"], stored["rpm"], stored["tpm"]) == (
        "openai_compatible",
        "http://127.0.0.1:11434/v1",
        "env:LOCAL_KEY",
        600,
        100000,
    )
    audit = q.list_audit(store.engine, object_type="provider", limit=1)[0]
    assert audit.reason == "new inference box" and audit.action == "create"
    assert page.selected_provider() is not None and page.selected_provider().name == "local"  # type: ignore[union-attr]
    assert "Saved provider local" in page.result_label.text()


def test_escape_cancels_and_a_stale_save_shows_the_message_and_reloads(qtbot: object, store: Store) -> None:
    q.save_object(
        store.engine,
        "provider",
        {"name": "p1", "kind": "openai", "api_key_ref": "none"},
        expected_revision=None,
        actor="a",
    )
    page = _page(qtbot, store)
    page.select_provider("p1")
    page.edit_button.click()
    d = _provider_dialog(page)
    _type(d.rpm, "10")
    QtTest.QTest.keyClick(d, Qt.Key.Key_Escape)
    assert not d.isVisible()
    assert q.get_object(store.engine, "provider", "p1")["rpm"] is None  # type: ignore[index]

    QtTest.QTest.keyClick(page.table, Qt.Key.Key_Return)  # Enter on a row edits it
    d = _provider_dialog(page)
    assert d.revision == 1 and d.name.isReadOnly()
    # Another operator saves first.
    q.save_object(
        store.engine,
        "provider",
        {"name": "p1", "kind": "openai", "api_key_ref": "none", "rpm": 99},
        expected_revision=1,
        actor="other",
    )
    _type(d.rpm, "10")
    _enter(d)
    assert d.isVisible()
    assert "changed since you loaded it" in d.banner.text() and "the store has 2" in d.banner.text()
    assert d.rpm.text() == "99" and d.revision == 2  # reloaded: the other operator's value
    assert q.get_object(store.engine, "provider", "p1")["rpm"] == 99  # type: ignore[index]
    _type(d.rpm, "10")
    _enter(d)
    assert not d.isVisible()
    stored = q.get_object(store.engine, "provider", "p1")
    assert stored is not None and stored["rpm"] == 10 and stored["revision"] == 3


def test_targets_prices_and_removal_with_confirmation(qtbot: object, store: Store) -> None:
    page = _page(qtbot, store)
    _add_env_provider(page, "openai-main", "https://api.openai.com/v1", "OPENAI_API_KEY")
    page.add_target_button.click()
    d = _target_dialog(page)
    _type(d.name, "fast")
    d.model.setCurrentText("gpt-4o-mini")
    _type(d.prices["input_per_mtok"], "0.15")
    _type(d.prices["cache_read_per_mtok"], "cheap")
    _enter(d, reason="")
    assert "reason goes in the audit log" in d.errors["reason"].text()
    assert "both the input and the output" in d.errors["output_per_mtok"].text()
    assert "price in USD" in d.errors["cache_read_per_mtok"].text()
    assert q.get_object(store.engine, "target", "fast") is None
    _type(d.prices["output_per_mtok"], "0.6")
    _type(d.prices["cache_read_per_mtok"], "0.075")
    _enter(d)
    assert not d.isVisible()
    t = q.get_object(store.engine, "target", "fast")
    assert t is not None and (
        t["provider"],
        t["model"],
        t["input_per_mtok"],
        t["output_per_mtok"],
        t["cache_read_per_mtok"],
    ) == (
        "openai-main",
        "gpt-4o-mini",
        0.15,
        0.6,
        0.075,
    )
    assert page.targets.rowCount() == 1 and page.targets.index(0, 2).data() == "$0.15"

    # A provider with targets is not removed; the target first, with Delete and a confirmation.
    page.table.setFocus()
    QtTest.QTest.keyClick(page.table, Qt.Key.Key_Delete)
    assert "still has 1 target" in page.result_label.text() and page.confirm is None
    page.targets_table.selectRow(0)
    QtTest.QTest.keyClick(page.targets_table, Qt.Key.Key_Delete)
    assert page.confirm is not None
    page.confirm.button(QtWidgets.QMessageBox.StandardButton.Cancel).click()
    assert q.get_object(store.engine, "target", "fast") is not None
    QtTest.QTest.keyClick(page.targets_table, Qt.Key.Key_Delete)
    assert page.confirm is not None
    page.confirm.button(QtWidgets.QMessageBox.StandardButton.Yes).click()
    assert q.get_object(store.engine, "target", "fast") is None
    page.table.selectRow(0)
    QtTest.QTest.keyClick(page.table, Qt.Key.Key_Delete)
    assert page.confirm is not None
    page.confirm.button(QtWidgets.QMessageBox.StandardButton.Yes).click()
    assert q.list_objects(store.engine, "provider") == []
    assert [e.action for e in q.list_audit(store.engine, limit=10)][:2] == ["delete", "delete"]


def test_connection_test_against_the_simulator(
    qtbot: object,
    store: Store,
    sim: SimServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CR_TEST_GOOD", GOOD_KEY)
    monkeypatch.setenv("CR_TEST_BAD", BAD_KEY)
    page = _page(qtbot, store)
    _add_env_provider(page, "sim-good", sim.openai_base_url, "CR_TEST_GOOD")
    _add_env_provider(page, "sim-ant", sim.anthropic_base_url, "CR_TEST_BAD", kind="anthropic")
    page.select_provider("sim-good")
    assert "env:CR_TEST_GOOD ✓" in page.providers.index(page.providers.row_of("sim-good"), 3).data()  # type: ignore[arg-type]
    page.test_button.click()
    assert page.result_label.text().startswith("sim-good: Connected."), page.result_label.text()
    assert page.models_seen["sim-good"]
    page.select_provider("sim-ant")
    page.test_button.click()
    text = page.result_label.text()
    assert "refused the API key (HTTP 401)" in text and BAD_KEY not in text

    # The dialog tests what is typed, before anything is saved; the model list feeds the target editor.
    page.add_button.click()
    d = _provider_dialog(page)
    _type(d.name, "typed")
    _type(d.base_url, sim.openai_base_url)
    _choose(d.key_source, "keyring")
    _type(d.api_key, BAD_KEY)
    d.test_button.click()
    assert "refused the API key" in d.test_result.text() and BAD_KEY not in d.test_result.text()
    _type(d.api_key, GOOD_KEY)
    d.test_button.click()
    assert d.test_result.text().startswith("Connected.")
    d.reject()
    assert q.get_object(store.engine, "provider", "typed") is None  # testing saves nothing
    page.select_provider("sim-good")
    page.add_target_button.click()
    assert _target_dialog(page).model.count() == len(page.models_seen["sim-good"])
    _target_dialog(page).reject()


def test_builtin_providers_of_a_running_gateway_are_listed_read_only(
    qtbot: object,
    store: Store,
    sim: SimServer,  # noqa: F811
) -> None:
    config = parse_config(
        f"providers:\n  - {{name: openai-sim, kind: openai, base_url: '{sim.openai_base_url}', api_key: none}}\n"
        "targets:\n  - {name: fast, provider: openai-sim, model: gpt-4o-mini}\n",
        "demo.yaml",
    )

    class State:  # what the page reads of a gateway: its current config, and how it finds keys
        def __init__(self) -> None:
            self.config = config

    class Gateway:
        state = State()

        @staticmethod
        def _key_resolver(_provider: str, _ref: str) -> str:
            return GOOD_KEY  # the demo's gateway hands its providers a fake key, never the keyring's

    view = load_providers(store.engine, config)
    assert view.builtin and [p.name for p in view.providers] == ["openai-sim"]
    page = _page(qtbot, store, Gateway())
    assert page.providers.index(0, 0).data() == "openai-sim  (built-in)"
    page.select_provider("openai-sim")
    assert page.test_button.isEnabled() and not page.edit_button.isEnabled()
    assert not page.remove_button.isEnabled()
    assert page.targets.rowCount() == 1 and not page.add_target_button.isEnabled()
    assert page.builtin_label.text().startswith("Rows marked “built-in”")
    page.test_button.click()
    assert "openai-sim: Connected." in page.result_label.text()
    assert "gpt-4o-mini" in page.result_label.text()  # the call used the target's model


def test_no_keyring_is_said_at_the_field_and_nothing_is_stored(qtbot: object, store: Store) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    try:
        page = _page(qtbot, store)
        assert page.keyring_label.text().startswith("⚠ No secure keyring")
        page.add_button.click()
        d = _provider_dialog(page)
        _type(d.name, "p1")
        _choose(d.key_source, "keyring")
        _type(d.api_key, GOOD_KEY)

        def close_box() -> None:
            box = QtWidgets.QApplication.activeModalWidget()
            if isinstance(box, QtWidgets.QMessageBox):
                box.accept()

        from app.ui.qt import QTimer

        QTimer.singleShot(50, close_box)  # require_keyring explains it in a modal box
        _enter(d)
        assert "No secure keyring here" in d.errors["api_key"].text()
        assert q.list_objects(store.engine, "provider") == []
        d.reject()

        # A provider whose key sits in a keyring we cannot reach now can still be edited: the key is kept.
        q.save_object(
            store.engine, "provider", {"name": "kept", "kind": "openai"}, expected_revision=None, actor="a"
        )
        page.reload()
        page.select_provider("kept")
        assert "keyring (unavailable)" in page.providers.index(page.providers.row_of("kept"), 3).data()  # type: ignore[arg-type]
        page.edit_button.click()
        d = _provider_dialog(page)
        _type(d.rpm, "30")
        _enter(d)
        assert not d.isVisible(), d.banner.text()
        kept = q.get_object(store.engine, "provider", "kept")
        assert kept is not None and kept["rpm"] == 30 and kept["api_key_ref"] == "keyring:controlroom/kept"
    finally:
        keyring.set_keyring(previous)


# --- with a real keyring (skipped locally without one; CI has one) -------------------------------------


@pytest.fixture
def real_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_secret_service()
    service = f"controlroom-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(secrets, "SERVICE", service)
    yield service
    for user in ("kp", "kp:admin", "_index"):
        with contextlib.suppress(keyring.errors.PasswordDeleteError):
            keyring.delete_password(service, user)


@pytest.mark.keyring
def test_keys_go_to_the_keyring_never_the_store(
    qtbot: object,
    store: Store,
    sim: SimServer,  # noqa: F811
    real_keyring: str,
    tmp_path: Path,
) -> None:
    page = _page(qtbot, store)
    page.add_button.click()
    d = _provider_dialog(page)
    _type(d.name, "kp")
    _type(d.base_url, sim.openai_base_url)
    _choose(d.key_source, "keyring")
    _type(d.api_key, GOOD_KEY)
    _choose(d.admin_source, "keyring")
    _type(d.admin_key, "sk-admin-test-0123456789")
    _enter(d)
    assert not d.isVisible(), d.banner.text()
    stored = q.get_object(store.engine, "provider", "kp")
    assert stored is not None and stored["api_key_ref"] == "keyring:controlroom/kp"
    assert stored["admin_key_ref"] == "keyring:controlroom/kp"
    assert keyring.get_password(real_keyring, "kp") == GOOD_KEY
    assert keyring.get_password(real_keyring, "kp:admin") == "sk-admin-test-0123456789"
    assert "keyring ✓" in page.providers.index(0, 3).data()
    page.test_button.click()
    assert "Connected." in page.result_label.text()

    # Editing without typing a key keeps the stored one.
    page.edit_button.click()
    d = _provider_dialog(page)
    _type(d.rpm, "50")
    _enter(d)
    assert not d.isVisible(), d.banner.text()
    assert keyring.get_password(real_keyring, "kp") == GOOD_KEY

    store.engine.dispose()
    for path in Path(str(store.engine.url.database)).parent.glob("providers.db*"):
        assert GOOD_KEY.encode() not in path.read_bytes()

    page.select_provider("kp")
    QtTest.QTest.keyClick(page.table, Qt.Key.Key_Delete)
    assert page.confirm is not None and "its keys in the keyring" in page.confirm.text()
    page.confirm.button(QtWidgets.QMessageBox.StandardButton.Yes).click()
    assert q.get_object(store.engine, "provider", "kp") is None
    assert keyring.get_password(real_keyring, "kp") is None


def test_a_stale_target_save_is_refused_and_the_form_reloads(qtbot: object, store: Store) -> None:
    e = store.engine
    q.save_object(
        e,
        "provider",
        {"name": "p1", "kind": "openai", "api_key_ref": "none"},
        expected_revision=None,
        actor="a",
    )
    q.save_object(
        e,
        "target",
        {"name": "fast", "provider": "p1", "model": "gpt-4o-mini"},
        expected_revision=None,
        actor="a",
    )
    page = _page(qtbot, store)
    page.select_provider("p1")
    page.targets_table.selectRow(0)
    QtTest.QTest.keyClick(page.targets_table, Qt.Key.Key_Return)
    d = _target_dialog(page)
    q.save_object(
        e,
        "target",
        {"name": "fast", "provider": "p1", "model": "gpt-4.1-mini"},
        expected_revision=1,
        actor="other",
    )
    _type(d.prices["input_per_mtok"], "1")
    _type(d.prices["output_per_mtok"], "2")
    _enter(d)
    assert d.isVisible() and "changed since you loaded it" in d.banner.text()
    assert (
        d.model.currentText() == "gpt-4.1-mini"
        and d.revision == 2
        and d.prices["input_per_mtok"].text() == ""
    )
    stored = q.get_object(e, "target", "fast")
    assert stored is not None and stored["input_per_mtok"] is None  # nothing overwritten
    _type(d.prices["input_per_mtok"], "1")
    _type(d.prices["output_per_mtok"], "2")
    _enter(d)
    assert not d.isVisible()
    stored = q.get_object(e, "target", "fast")
    assert stored is not None and (stored["model"], stored["input_per_mtok"], stored["revision"]) == (
        "gpt-4.1-mini",
        1.0,
        3,
    )


def test_removing_a_provider_someone_changed_is_refused(qtbot: object, store: Store) -> None:
    e = store.engine
    q.save_object(
        e,
        "provider",
        {"name": "p1", "kind": "openai", "api_key_ref": "none"},
        expected_revision=None,
        actor="a",
    )
    page = _page(qtbot, store)
    page.select_provider("p1")
    q.save_object(
        e,
        "provider",
        {"name": "p1", "kind": "openai", "api_key_ref": "none", "rpm": 5},
        expected_revision=1,
        actor="b",
    )
    QtTest.QTest.keyClick(page.table, Qt.Key.Key_Delete)
    assert page.confirm is not None
    page.confirm.button(QtWidgets.QMessageBox.StandardButton.Yes).click()
    assert (
        "Not removed" in page.result_label.text()
        and "changed since you loaded it" in page.result_label.text()
    )
    assert q.get_object(e, "provider", "p1") is not None
    assert page.selected_provider() is not None and page.selected_provider().revision == 2  # type: ignore[union-attr]


def test_ctrl_r_and_ctrl_e(qtbot: object, store: Store, tmp_path: Path) -> None:
    page = _page(qtbot, store)
    q.save_object(store.engine, "provider", {"name": "late", "kind": "openai"}, actor="t", reason="r",
                expected_revision=None)  # fmt: skip
    page.refresh()
    assert page.select_provider("late")
    out = tmp_path / "config.yaml"
    page.export_visible(ask_path=lambda _what, _suggested: out)
    assert "late" in {p.name for p in parse_config(out.read_text(encoding="utf-8")).providers}


def test_prices_read_as_money() -> None:
    from app.ui.pages.providers import _fmt_price

    assert [_fmt_price(v) for v in (2.5, 10, 0.075, 1.25, None)] == [
        "$2.50",
        "$10.00",
        "$0.075",
        "$1.25",
        "list price",
    ]


def test_a_forced_breaker_shows_on_its_target(store: Store) -> None:
    """Who forced it, why and until when: on the Providers page too, not only on Breakers."""
    import time as _time

    from app.ui.pages.providers import T_NAME, TargetsModel

    q.save_object(store.engine, "provider", {"name": "openai", "kind": "openai", "api_key_ref": "env:K"},
                  actor="t", reason="", expected_revision=None)  # fmt: skip
    for name in ("fast", "strong"):
        q.save_object(store.engine, "target", {"name": name, "provider": "openai", "model": "gpt-4o-mini"},
                      actor="t", reason="", expected_revision=None)  # fmt: skip
    q.set_breaker_override(store.engine, "fast", "force_open", actor="ana", reason="provider incident",
                           expires_at=_time.time() + 900)  # fmt: skip
    model = TargetsModel()
    model.set_rows(load_providers(store.engine).targets)
    names = [model.index(r, T_NAME).data() for r in range(model.rowCount())]
    assert names == ["fast · forced open", "strong"]
    tip = model.index(0, T_NAME).data(Qt.ItemDataRole.ToolTipRole)
    assert "forced open by ana until" in tip and "provider incident" in tip
