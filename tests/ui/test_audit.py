"""Audit: the table model without a window, the filters, the detail, revert and export, on a real store."""

from __future__ import annotations

import csv
import getpass
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ui.models.audit_model import (
    COL_CHANGES,
    COL_ID,
    COL_OBJECT,
    ENTRY_ROLE,
    LATEST_ROLE,
    AuditFilter,
    AuditModel,
    export_csv,
    export_json,
    load_audit,
)
from app.ui.models.runner import run_now
from app.ui.pages.audit import AuditPage
from app.ui.qt import Qt, QtTest, QtWidgets
from storage.engine import Store, open_store
from storage.queries import control as q

pytestmark = pytest.mark.gui

SECRET = "sk-live-abcdefghijklmnop123456"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    e = s.engine
    t0 = time.time() - 7200
    q.save_object(
        e, "provider", {"name": "openai-main", "kind": "openai"}, expected_revision=None, actor="ana", now=t0
    )
    q.save_object(
        e,
        "target",
        {"name": "fast", "provider": "openai-main", "model": "gpt-4o-mini"},
        expected_revision=None,
        actor="ana",
        now=t0 + 10,
    )
    q.save_object(
        e,
        "provider",
        {"name": "openai-main", "kind": "openai", "rpm": 500},
        expected_revision=1,
        actor="bo",
        reason="raise the limit",
        now=t0 + 3600,
    )
    q.set_breaker_override(e, "fast", "force_open", actor="bo", reason="incident", now=time.time() - 60)
    yield s
    s.close()
    # Two tests plant a key in the store on purpose (a hand-edited store) to prove exports mask it;
    # the planted store goes, so the end-of-run secret scan judges only what the code wrote.
    for path in tmp_path.glob("audit.db*"):
        path.unlink()


def _page(qtbot: object, store: Store) -> AuditPage:
    page = AuditPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    page.attach_store(lambda: store, run_now)
    page.timer.stop()
    return page


def test_model_marks_the_newest_change_per_object(store: Store) -> None:
    model = AuditModel()
    model.set_view(load_audit(store.engine, AuditFilter()))
    assert model.rowCount() == 4
    entries = [model.index(r, 0).data(ENTRY_ROLE) for r in range(4)]
    assert [e.object_type for e in entries] == ["breaker", "provider", "target", "provider"]
    latest = [model.index(r, COL_ID).data(LATEST_ROLE) for r in range(4)]
    assert latest == [True, True, True, False]  # the first provider change has a newer one
    assert model.index(1, COL_CHANGES).data() == "rpm added"
    assert model.index(3, COL_CHANGES).data() == "created"
    assert model.index(0, COL_OBJECT).data() == "breaker fast"


def test_filters_select_rows_in_the_store(store: Store) -> None:
    e = store.engine
    assert [x.object_name for x in load_audit(e, AuditFilter(object_type="provider")).entries] == [
        "openai-main",
        "openai-main",
    ]
    assert len(load_audit(e, AuditFilter(name_contains="FAS")).entries) == 2  # target and breaker
    assert {x.actor for x in load_audit(e, AuditFilter(actor="bo")).entries} == {"bo"}
    assert len(load_audit(e, AuditFilter(since=time.time() - 600)).entries) == 1
    with pytest.raises(ValueError, match="start of the range"):
        load_audit(e, AuditFilter(since=10.0, until=5.0))


def test_page_filters_detail_and_invalid_range(qtbot: object, store: Store) -> None:
    page = _page(qtbot, store)
    assert page.model.rowCount() == 4
    assert [page.actor_filter.itemText(i) for i in range(page.actor_filter.count())] == [
        "Anyone",
        "ana",
        "bo",
    ]
    page.type_filter.setCurrentIndex(page.type_filter.findData("provider"))
    assert page.model.rowCount() == 2
    page.type_filter.setCurrentIndex(0)
    page.name_filter.setText("fast")
    QtTest.QTest.keyClick(page.name_filter, Qt.Key.Key_Return)  # Enter applies at once
    assert page.model.rowCount() == 2
    page.name_filter.clear()
    page.actor_filter.setCurrentIndex(page.actor_filter.findData("ana"))
    assert page.model.rowCount() == 2

    # A custom range that ends before it starts: the message at the field, the rows stay.
    page.range_filter.setCurrentIndex(page.range_filter.findData("custom"))
    page.until_edit.setDateTime(page.since_edit.dateTime().addSecs(-60))
    page.reload()
    assert "start of the range" in page.filter_error.text()
    assert page.model.rowCount() == 2

    # Detail: select the provider update (no filters) and read before/after.
    page.range_filter.setCurrentIndex(4)
    page.actor_filter.setCurrentIndex(0)
    assert page.filter_error.text() == ""
    update = next(x for x in page.model.view.entries if x.object_type == "provider" and x.action == "update")
    assert page.select_id(update.id)
    assert "raise the limit" in page.detail_title.text()
    assert "rpm" in page.detail_changes.toPlainText() and "500" in page.detail_changes.toPlainText()
    assert '+  "rpm": 500' in page.detail_diff.toPlainText()
    assert page.revert_button.isEnabled()
    first = next(x for x in page.model.view.entries if x.object_type == "provider" and x.action == "create")
    page.select_id(first.id)
    assert not page.revert_button.isEnabled()
    assert "Only the newest change" in page.revert_button.toolTip()
    QtTest.QTest.keyClick(page.table, Qt.Key.Key_Escape)  # Esc closes the detail
    assert page.selected_entry() is None


def test_revert_asks_why_then_writes_an_audited_change(qtbot: object, store: Store) -> None:
    page = _page(qtbot, store)
    update = next(x for x in page.model.view.entries if x.object_type == "provider" and x.action == "update")
    page.select_id(update.id)
    page.revert_button.click()
    dialog = page.revert_dialog
    assert dialog is not None and dialog.isVisible()
    assert "Restore provider 'openai-main'" in dialog.findChildren(QtWidgets.QLabel)[0].text()
    assert "500" in dialog.changes.toPlainText()
    # Enter with no reason does nothing: the reason is required, said at the field.
    assert not dialog.ok.isEnabled() and "Required" in dialog.reason_error.text()
    QtTest.QTest.keyClick(dialog.reason, Qt.Key.Key_Return)
    assert dialog.isVisible() and "color" in dialog.reason_error.styleSheet()
    assert q.get_object(store.engine, "provider", "openai-main")["rpm"] == 500  # type: ignore[index]
    QtTest.QTest.keyClicks(dialog.reason, "limit was a typo")
    QtTest.QTest.keyClick(dialog.reason, Qt.Key.Key_Return)
    assert not dialog.isVisible()

    stored = q.get_object(store.engine, "provider", "openai-main")
    assert stored is not None and stored["rpm"] is None and stored["revision"] == 3
    newest = q.list_audit(store.engine, object_type="provider", limit=1)[0]
    assert newest.reason == f"revert of #{update.id}: limit was a typo"
    assert newest.actor == getpass.getuser()
    assert page.selected_id() == newest.id  # the page shows the new change
    assert f"written as #{newest.id}" in page.result_label.text()


def test_revert_escape_cancels_and_a_stale_log_reloads(qtbot: object, store: Store) -> None:
    page = _page(qtbot, store)
    breaker = next(x for x in page.model.view.entries if x.object_type == "breaker")
    page.select_id(breaker.id)
    page.revert_button.click()
    dialog = page.revert_dialog
    assert dialog is not None
    QtTest.QTest.keyClick(dialog, Qt.Key.Key_Escape)
    assert not dialog.isVisible()
    assert q.get_breaker_override(store.engine, "fast") is not None  # nothing written

    # Someone switches the breaker after the page read the log: the revert is refused and the page reloads.
    page.revert_button.click()
    dialog = page.revert_dialog
    assert dialog is not None
    q.set_breaker_override(store.engine, "fast", "force_closed", actor="cy", reason="other operator")
    dialog.reason.setText("stop the incident mode")
    dialog.ok.click()
    assert "Not reverted" in page.result_label.text() and "newest change" in page.result_label.text()
    assert page.model.rowCount() == 5  # reloaded: cy's change is shown
    override = q.get_breaker_override(store.engine, "fast")
    assert override is not None and override.state == "force_closed"


def test_export_csv_and_json_hold_the_filtered_rows_and_no_key(
    qtbot: object, store: Store, tmp_path: Path
) -> None:
    # A key pasted into a reason must not leave the store through an export.
    q.record_audit(store.engine, "dee", "update", "route", "default", None, {"x": 1}, f"key was {SECRET}")
    page = _page(qtbot, store)
    page.type_filter.setCurrentIndex(page.type_filter.findData("route"))
    out_csv, out_json = tmp_path / "audit-export.csv", tmp_path / "audit-export.json"
    page.export_to(out_csv)
    page.export_to(out_json)
    rows = list(csv.DictReader(out_csv.read_text(encoding="utf-8").splitlines()))
    assert [r["object_name"] for r in rows] == ["default"]
    assert rows[0]["time_utc"].endswith("Z") and json.loads(rows[0]["after"]) == {"x": 1}
    doc = json.loads(out_json.read_text(encoding="utf-8"))
    assert doc["count"] == 1 and doc["filter"]["object_type"] == "route"
    for text in (out_csv.read_text(encoding="utf-8"), out_json.read_text(encoding="utf-8")):
        assert SECRET not in text and "***" in text
    assert "Exported 1 audit row" in page.result_label.text()


def test_exports_keep_key_references_and_mask_key_fields(store: Store, tmp_path: Path) -> None:
    entries = load_audit(store.engine, AuditFilter(object_type="provider")).entries
    n = export_json(entries, tmp_path / "audit-p.json")
    assert n == 2
    text = (tmp_path / "audit-p.json").read_text(encoding="utf-8")
    assert "keyring:controlroom/openai-main" in text  # a reference, kept: it is how to find the key
    q.record_audit(store.engine, "x", "update", "provider", "odd", None, {"api_key": SECRET}, "")
    export_csv(load_audit(store.engine, AuditFilter(name_contains="odd")).entries, tmp_path / "audit-o.csv")
    assert SECRET not in (tmp_path / "audit-o.csv").read_text(encoding="utf-8")


def test_empty_store_says_what_would_be_there(qtbot: object, tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'empty.db'}") as s:
        page = _page(qtbot, s)
        assert page.pages.currentWidget() is page.blank
        assert "No control change has been made yet" in page.blank_state.label.text()


def test_prompt_promotion_reverts_from_the_page(qtbot: object, store: Store) -> None:
    from storage.queries import prompts

    e = store.engine
    prompts.create_prompt(e, "summary", actor="a", reason="new")
    prompts.add_version(e, "summary", template="v1", actor="a")
    prompts.add_version(e, "summary", template="v2", actor="a")
    prompts.set_active_version(e, "summary", 1, actor="a", reason="first")
    prompts.set_active_version(e, "summary", 2, actor="a", reason="second")
    page = _page(qtbot, store)
    page.type_filter.setCurrentIndex(page.type_filter.findData("prompt"))
    rows = page.model.view.entries
    version_add = next(x for x in rows if x.action == "add_version")
    page.select_id(version_add.id)
    assert not page.revert_button.isEnabled()
    promote = rows[0]
    page.select_id(promote.id)
    assert page.revert_button.isEnabled(), page.revert_button.toolTip()
    QtTest.QTest.keyClick(page.table, Qt.Key.Key_Return)  # Enter on a revertible row asks to revert
    dialog = page.revert_dialog
    assert dialog is not None and "Make version 1" in dialog.findChildren(QtWidgets.QLabel)[0].text()
    QtTest.QTest.keyClicks(dialog.reason, "v2 regressed")
    QtTest.QTest.keyClick(dialog.reason, Qt.Key.Key_Return)
    assert prompts.get_prompt(e, "summary").active_version == 1  # type: ignore[union-attr]
    assert (
        q.list_audit(e, object_type="prompt", limit=1)[0].reason == f"revert of #{promote.id}: v2 regressed"
    )


@pytest.mark.gui
def test_ctrl_r_reads_the_log_again(qtbot: object, store: Store) -> None:
    page = _page(qtbot, store)
    before = page.model.rowCount()
    q.save_object(store.engine, "provider", {"name": "late", "kind": "openai"}, actor="t", reason="r",
                expected_revision=None)  # fmt: skip
    page.refresh()
    assert page.model.rowCount() == before + 1


def test_the_log_fits_a_narrow_window_without_sideways_scrolling(qtbot: object, store: Store) -> None:
    page = _page(qtbot, store)
    page.resize(760, 560)  # the page's share of a 960 px window
    page.show()
    qtbot.waitExposed(page)  # type: ignore[attr-defined]
    table = page.table
    qtbot.waitUntil(lambda: table.horizontalHeader().length() <= table.viewport().width())  # type: ignore[attr-defined]
