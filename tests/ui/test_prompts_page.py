"""The Prompts page against a real store: list, versions, editor, diff, "Try it", promote and roll back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ui.models.runner import run_now
from app.ui.pages.prompts import NewPromptDialog, PromptsPage, ReasonDialog, diff_html, sample_value
from app.ui.qt import Qt, QTimer, QtWidgets
from storage.engine import Store, open_store
from storage.queries import control
from storage.queries import prompts as q

pytestmark = pytest.mark.gui


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    q.create_prompt(s.engine, "support-summary", description="Ticket summaries", actor="ana", reason="new")
    q.add_version(
        s.engine,
        "support-summary",
        template="Summarize: {{ticket}}",
        system="Be terse.",
        note="first",
        actor="ana",
    )
    q.add_version(
        s.engine,
        "support-summary",
        template="Summarize in {{max_words}} words: {{ticket}}",
        system="Be terse.",
        params={"temperature": 0.2},
        note="word limit",
        actor="bo",
    )
    q.set_active_version(s.engine, "support-summary", 1, actor="ana", reason="ship")
    q.create_prompt(s.engine, "classifier", actor="ana")
    yield s
    s.close()


@pytest.fixture
def page(qtbot: object, store: Store) -> PromptsPage:
    p = PromptsPage()
    qtbot.addWidget(p)  # type: ignore[attr-defined]
    p.resize(1100, 720)
    p.show()
    p.attach_store(lambda: store, run_now)
    p.timer.stop()
    p.select("support-summary")
    return p


def answer_dialog(reason: str, *, accept: bool = True) -> None:
    """When the next modal dialog opens: type the reason and press its OK (or Cancel)."""

    def act() -> None:
        dialog = QtWidgets.QApplication.activeModalWidget()
        assert isinstance(dialog, ReasonDialog), dialog
        dialog.reason.setText(reason)
        if accept:
            dialog.ok.click()
        else:
            dialog.reject()

    QTimer.singleShot(0, act)


def test_lists_prompts_with_their_active_version_and_versions_newest_first(page: PromptsPage) -> None:
    t = page.prompts_table
    rows = [(t.item(r, 0).text(), t.item(r, 1).text(), t.item(r, 2).text()) for r in range(t.rowCount())]
    assert rows == [("classifier", "none", "0"), ("support-summary", "v1", "2")]
    v = page.versions_table
    assert [v.item(r, 0).text() for r in range(v.rowCount())] == ["v2", "v1  \u25cf active"]
    assert page.versions_title.text() == "Versions of support-summary"
    # The active version is selected and shown.
    assert page.selected_version == 1
    assert page.view_template.toPlainText() == "Summarize: {{ticket}}"
    assert "variables: ticket" in page.view_meta.text()


def test_clicking_another_prompt_and_version_shows_it(page: PromptsPage, qtbot: object) -> None:
    page.prompts_table.selectRow(0)
    assert page.selected_prompt == "classifier"
    assert "has no versions yet" in page.view_title.text()
    assert not page.promote_button.isEnabled() and not page.rollback_button.isEnabled()
    page.prompts_table.selectRow(1)
    page.versions_table.selectRow(0)
    assert page.selected_version == 2
    assert page.view_title.text() == "support-summary v2 \u00b7 not active"
    assert page.view_params.toPlainText() == '{\n  "temperature": 0.2\n}'
    assert page.promote_button.isEnabled() and page.promote_button.text() == "&Promote v2…"


def test_editor_lists_variables_checks_parameters_and_saves_a_new_version(
    page: PromptsPage, store: Store, qtbot: object
) -> None:
    page.versions_table.selectRow(0)  # v2
    page.start_from_button.click()
    assert page.tabs.currentIndex() == 1
    assert page.edit_template.toPlainText() == "Summarize in {{max_words}} words: {{ticket}}"
    page.edit_template.moveCursor(page.edit_template.textCursor().MoveOperation.End)
    qtbot.keyClicks(page.edit_template, " Tone: {{tone}}")  # type: ignore[attr-defined]
    assert page.edit_variables.text() == "Variables: {{max_words}}, {{ticket}}, {{tone}}"
    page.edit_params.setPlainText('{"temperature": 0.2,')
    assert not page.save_button.isEnabled() and "not valid JSON" in page.edit_problem.text()
    page.edit_params.setPlainText('{"model": "gpt-4o"}')
    assert not page.save_button.isEnabled() and "cannot set model" in page.edit_problem.text()
    page.edit_params.setPlainText('{"temperature": 0.0, "max_tokens": 120}')
    assert page.save_button.isEnabled() and page.edit_problem.text() == ""
    qtbot.keyClicks(page.edit_note, "adds a tone")  # type: ignore[attr-defined]
    page.save_button.click()
    saved = q.get_version(store.engine, "support-summary", 3)
    assert saved is not None
    assert saved.template == "Summarize in {{max_words}} words: {{ticket}} Tone: {{tone}}"
    assert (saved.system, saved.params, saved.note, saved.author) == (
        "Be terse.",
        {"temperature": 0.0, "max_tokens": 120},
        "adds a tone",
        page.actor,
    )
    # The page reads again and shows the new version; it is not active.
    assert page.selected_version == 3 and page.tabs.currentIndex() == 0
    assert page.view_title.text() == "support-summary v3 \u00b7 not active"
    assert "Saved v3 of support-summary" in page.result_label.text()
    prompt = q.get_prompt(store.engine, "support-summary")
    assert prompt is not None and prompt.active_version == 1


def test_compare_shows_added_and_removed_lines(page: PromptsPage) -> None:
    page.tabs.setCurrentIndex(2)
    page.set_diff(1, 2)
    text = page.diff_view.toPlainText()
    assert "\u2212 Summarize: {{ticket}}" in text
    assert "+ Summarize in {{max_words}} words: {{ticket}}" in text
    assert '+   "temperature": 0.2' in text
    assert page.diff_summary.text().startswith("+4 \u22122 lines")
    page.set_diff(2, 2)
    assert "are the same" in page.diff_view.toPlainText()


def test_diff_html_colours_lines_by_kind(store: Store) -> None:
    old = q.get_version(store.engine, "support-summary", 1)
    new = q.get_version(store.engine, "support-summary", 2)
    assert old is not None and new is not None
    body, added, removed = diff_html(old, new)
    assert (added, removed) == (4, 2)
    assert body.count("background:rgba(") == 6  # only changed lines are tinted


def test_try_it_renders_with_sample_values_and_names_what_is_missing(page: PromptsPage) -> None:
    page.versions_table.selectRow(0)  # v2
    page.tabs.setCurrentIndex(3)
    t = page.try_vars
    assert [t.item(r, 0).text() for r in range(t.rowCount())] == ["max_words", "ticket"]
    assert "Fill in a sample value for max_words, ticket" in page.try_problem.text()
    page.set_sample("ticket", "Printer on fire")
    assert "for max_words to see" in page.try_problem.text() and page.try_output.toPlainText() == ""
    page.set_sample("max_words", "20")
    assert page.try_problem.text() == ""
    assert page.try_output.toPlainText() == (
        'system:\nBe terse.\n\nuser:\nSummarize in 20 words: Printer on fire\n\nparameters: {"temperature": 0.2}'
    )
    # Samples follow the variable name to another version.
    page.versions_table.selectRow(1)  # v1
    assert page.try_output.toPlainText() == "system:\nBe terse.\n\nuser:\nSummarize: Printer on fire"


def test_sample_values_that_parse_as_json_are_sent_as_json() -> None:
    assert sample_value("20") == 20
    assert sample_value("true") is True
    assert sample_value('["a", "b"]') == ["a", "b"]
    assert sample_value("Printer on fire") == "Printer on fire"
    assert sample_value("{not json") == "{not json"


def test_promote_then_roll_back_with_a_reason_through_the_dialogs(page: PromptsPage, store: Store) -> None:
    page.versions_table.selectRow(0)  # v2
    answer_dialog("v2 won the A/B")
    page.promote_button.click()
    prompt = q.get_prompt(store.engine, "support-summary")
    assert prompt is not None and prompt.active_version == 2
    entry = control.list_audit(store.engine, object_type="prompt", limit=1)[0]
    assert (entry.action, entry.reason, entry.actor) == ("promote", "v2 won the A/B", page.actor)
    assert "Promoted support-summary to v2" in page.result_label.text()
    assert page.prompts_table.item(1, 1).text() == "v2"
    assert page.rollback_button.isEnabled() and page.rollback_button.text() == "&Roll back to v1…"
    assert not page.promote_button.isEnabled()  # v2 is selected and already active

    answer_dialog("v2 truncates answers")
    page.rollback_button.click()
    prompt = q.get_prompt(store.engine, "support-summary")
    assert prompt is not None and prompt.active_version == 1
    entry = control.list_audit(store.engine, object_type="prompt", limit=1)[0]
    assert (entry.action, entry.reason) == ("rollback", "v2 truncates answers")
    assert not page.rollback_button.isEnabled()  # nothing before v1


def test_cancelling_the_dialog_changes_nothing(page: PromptsPage, store: Store) -> None:
    page.versions_table.selectRow(0)
    before = control.get_control_version(store.engine)
    answer_dialog("changed my mind", accept=False)
    page.promote_button.click()
    assert control.get_control_version(store.engine) == before


def test_the_dialog_says_what_will_happen_and_needs_a_reason(page: PromptsPage, qtbot: object) -> None:
    what = page.describe_change(2, "promote")
    assert what.startswith("Promote support-summary to v2: requests that name support-summary")
    assert "instead of v1" in what and "Audit page" in what
    dialog = ReasonDialog("Promote", what, "Promote v2")
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    assert not dialog.ok.isEnabled()
    dialog.reason.setText("   ")
    assert not dialog.ok.isEnabled()
    dialog.reason.setText("better")
    assert dialog.ok.isEnabled()


def test_a_stale_page_is_told_to_reload(page: PromptsPage, store: Store) -> None:
    page.versions_table.selectRow(0)
    q.set_active_version(store.engine, "support-summary", 2, actor="someone-else", reason="meanwhile")
    page.activate(2, "me too", "promote")
    assert "changed since you loaded it" in page.result_label.text()
    # It read again: the other operator's promotion shows.
    assert page.prompts_table.item(1, 1).text() == "v2"


def test_new_prompt_dialog_checks_the_name(page: PromptsPage, store: Store, qtbot: object) -> None:
    dialog = NewPromptDialog({"support-summary"})
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    assert not dialog.ok.isEnabled()
    dialog.name.setText("bad name@2")
    assert not dialog.ok.isEnabled() and "not valid" in dialog.problem.text()
    dialog.name.setText("support-summary")
    assert not dialog.ok.isEnabled() and "already exists" in dialog.problem.text()
    dialog.name.setText("release-notes")
    assert dialog.ok.isEnabled() and dialog.problem.text() == ""
    page.new_prompt("release-notes", "Notes from PR titles")
    created = q.get_prompt(store.engine, "release-notes")
    assert created is not None and created.description == "Notes from PR titles"
    assert page.selected_prompt == "release-notes" and page.tabs.currentIndex() == 1
    assert page.editor_title.text().startswith("Saving adds v1 of release-notes")


def test_an_empty_registry_says_what_to_do(qtbot: object, tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        p = PromptsPage()
        qtbot.addWidget(p)  # type: ignore[attr-defined]
        p.show()
        p.attach_store(lambda: s, run_now)
        p.timer.stop()
        assert p.stack.currentWidget() is p.empty
        assert "No prompts yet" in p.empty.label.text()
        assert p.new_button.isEnabled()
    finally:
        s.close()


def test_keyboard_reaches_the_actions(page: PromptsPage) -> None:
    assert page.new_button.text() == "&New prompt…"
    assert page.promote_button.text().startswith("&Promote") and page.rollback_button.text().startswith(
        "&Roll back"
    )
    assert page.tabs.tabText(3) == "&Try it"
    assert page.prompts_table.selectionBehavior() == QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows
    assert page.try_vars.item(0, 0).flags() & Qt.ItemFlag.ItemIsEditable == Qt.ItemFlag.NoItemFlags


def test_ctrl_e_writes_the_versions_shown(page: PromptsPage, tmp_path: Path) -> None:
    out = tmp_path / "versions.csv"
    assert page.export_visible(ask_path=lambda _what, _suggested: out) == out
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + page.versions_table.rowCount() and lines[1].startswith("v")
