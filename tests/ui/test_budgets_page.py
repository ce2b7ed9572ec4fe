"""The budgets editor against a real SQLite store: standing (spend, projection, fired levels) from
real events, every field with valid and invalid input (the message at the field), what the store
holds after a save, stale-revision refusal with two pages, delete, and the config round trip."""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.budget import Budget, alert_period_start
from app.core.config import parse_config
from app.core.event import Event
from app.gateway.control import apply_config, export_text
from app.ui.models import budgets_model as bm
from app.ui.models.runner import run_now
from app.ui.pages.budgets import BudgetsPage, describe_projection
from app.ui.qt import Qt, QtWidgets
from storage.engine import Store, open_store
from storage.queries.control import get_control_version, get_object, list_audit, record_budget_warning
from storage.queries.events import insert_events

pytestmark = pytest.mark.gui

CONFIG = """
providers:
  - {name: openai, kind: openai, api_key: none}
targets:
  - {name: fast, provider: openai, model: gpt-4o-mini}
  - {name: strong, provider: openai, model: gpt-4o}
routes:
  - name: default
    rules:
      - chain: [fast, strong]
budgets:
  - name: all-daily
    scope: {}
    period: day
    limit_usd: 100
  - name: search-rolling
    scope: {feature: search}
    period: rolling_6h
    limit_usd: 10
    limit_tokens: 100000
    warn_at: [0.5, 0.8]
    action: downgrade
    downgrade_to: [fast]
"""

# Noon UTC yesterday, pinned: the seeded traffic of the last hour lies inside "today" whatever the
# time the suite runs at (at 00:06 UTC, a wall-clock "now" put most of it in yesterday).
NOW = (time.time() // 86400 - 1) * 86400 + 12 * 3600


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    apply_config(s.engine, parse_config(CONFIG), actor="setup", reason="seed")
    # $6 and 60k tokens of search traffic in the last hour; $1 of chat.
    events = [
        Event(ts_start=NOW - 3000 + i * 10, ts_end=NOW - 2999 + i * 10, feature="search", provider="openai",
              model="gpt-4o-mini", input_tokens=500, output_tokens=100, cost_usd=0.06)
        for i in range(100)
    ] + [Event(ts_start=NOW - 100, ts_end=NOW - 99, feature="chat", cost_usd=1.0, input_tokens=10, output_tokens=10)]  # fmt: skip
    insert_events(s.engine, events)
    b = Budget("search-rolling", period="rolling_6h")
    record_budget_warning(s.engine, "search-rolling", alert_period_start(b, NOW), 0.5)
    yield s
    s.close()


class Confirmer:
    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def __call__(self, title: str, text: str, ok: str) -> bool:
        self.asked.append(text)
        return self.answer


@pytest.fixture
def make_page(qtbot: Any, store: Store) -> Callable[[], BudgetsPage]:
    def make() -> BudgetsPage:
        page = BudgetsPage()
        qtbot.addWidget(page)
        page.confirm = Confirmer()
        page.clock = lambda: NOW
        page.attach_store(lambda: store, run_now)
        page.timer.stop()
        page.resize(1200, 900)
        page.show()
        return page

    return make


@pytest.fixture
def page(make_page: Callable[[], BudgetsPage]) -> BudgetsPage:
    return make_page()


def set_text(edit: QtWidgets.QLineEdit, text: str) -> None:
    edit.selectAll()
    edit.setText(text)


def stored(store: Store, name: str) -> dict[str, Any]:
    row = get_object(store.engine, "budget", name)
    assert row is not None
    return row


def test_standing_spend_projection_and_fired_levels(page: BudgetsPage) -> None:
    assert page.table.rowCount() == 2
    assert [page.table.item(i, 0).text() for i in range(2)] == ["all-daily", "search-rolling"]
    page.select_budget("search-rolling")
    assert page.name.text() == "search-rolling" and page.name.isReadOnly()
    rec = page.record
    assert rec is not None and rec.standing is not None
    st = rec.standing
    assert st.spend.usd == pytest.approx(6.0) and st.spend.tokens == 60_000
    assert st.ratio == pytest.approx(0.6) and st.fired == (0.5,)
    assert page.table.item(1, 3).text() == "60%"
    assert page.table.item(1, 4).text() == "$6.00 / $10.00 · 60k / 100k tok"
    assert "(60%) in the last 6 hours" in page.spend_text.text()
    assert "Warnings already fired this period: 50%" in page.fired_text.text()
    assert "rolling window" in page.projection_text.text()
    assert page.bar.ratio == pytest.approx(0.6) and page.bar.levels == (0.5, 0.8) and page.bar.fired == (0.5,)
    assert page.levels.text() == "50, 80" and page.downgrade.text() == "fast"
    assert page.action.currentData() == "downgrade"
    page.select_budget("all-daily")
    st = page.record.standing if page.record else None
    assert st is not None and st.spend.usd == pytest.approx(7.0)
    assert "All traffic has spent $7.00 of $100.00 (7%) today" in page.spend_text.text()
    assert page.fired_text.text() == "No warning fired this period yet."


def test_projection_words_for_a_calendar_day(store: Store) -> None:
    snap = bm.load_budgets(store.engine, now=NOW)
    st = snap.budgets[0].standing
    assert st is not None
    text = describe_projection(st)
    assert text.startswith("At the current rate") and (
        "limit is reached" in text or "the day ends at" in text
    )


# (case, field key, attribute, invalid text, words at that field, valid text)
FIELDS = [
    ("scope not key=value", "scope", "scope", "feature", "is not key=value", "feature=search"),
    (
        "scope unknown route",
        "scope",
        "scope",
        "route=nope",
        "scope route `nope` does not exist",
        "route=default",
    ),
    ("usd text", "limit_usd", "limit_usd", "lots", "must be a number", "50"),
    ("usd zero", "limit_usd", "limit_usd", "0", "the USD limit must be more than 0", "50"),
    ("tokens fraction", "limit_tokens", "limit_tokens", "1.5", "whole number", "5000"),
    ("tokens zero", "limit_tokens", "limit_tokens", "0", "the token limit must be at least 1", ""),
    ("levels over 100", "warn_at", "levels", "50, 120", "between 0 and 100%", "50, 90"),
    ("levels text", "warn_at", "levels", "half", "is not a percentage", "50"),
    ("levels twice", "warn_at", "levels", "50, 50", "listed twice", "50, 75"),
    (
        "downgrade unknown",
        "downgrade_to",
        "downgrade",
        "fast, cheap",
        "unknown target `cheap`",
        "fast, strong",
    ),
]


@pytest.mark.parametrize("case", FIELDS, ids=[c[0] for c in FIELDS])
def test_fields_invalid_then_valid(page: BudgetsPage, qtbot: Any, case: tuple[Any, ...]) -> None:
    _, key, attr, bad, words, good = case
    page.select_budget("search-rolling")
    edit = getattr(page, attr)
    field = page.fields[key]
    set_text(edit, bad)
    qtbot.waitUntil(lambda: words in field.message)
    assert field.error_label.isVisible()
    set_text(edit, good)
    qtbot.waitUntil(lambda: field.message == "")
    assert page.error_count == 0


def test_period_time_zone_and_action(page: BudgetsPage, qtbot: Any) -> None:
    page.select_budget("all-daily")
    page.period.setCurrentText("fortnight")
    qtbot.waitUntil(lambda: "unknown period `fortnight`" in page.fields["period"].message)
    page.period.setCurrentText("week")
    page.timezone.setCurrentText("Mars/Base")
    qtbot.waitUntil(lambda: "unknown time zone `Mars/Base`" in page.fields["timezone"].message)
    assert page.fields["period"].message == ""
    page.timezone.setCurrentText("Europe/Paris")
    qtbot.waitUntil(lambda: page.error_count == 0)
    page.period.setCurrentText("rolling_24h")
    qtbot.waitUntil(lambda: "rolling window ignores the time zone" in page.fields["timezone"].message)
    assert page.error_count == 0  # a warning, not an error
    page.action.setCurrentIndex(page.action.findData("downgrade"))
    qtbot.waitUntil(lambda: "needs downgrade_to" in page.fields["downgrade_to"].message)
    set_text(page.downgrade, "fast")
    qtbot.waitUntil(lambda: page.fields["downgrade_to"].message == "")
    page.action.setCurrentIndex(page.action.findData("block"))
    qtbot.waitUntil(lambda: "only used with action downgrade" in page.fields["downgrade_to"].message)
    set_text(page.downgrade, "")
    set_text(page.limit_usd, "")
    qtbot.waitUntil(lambda: "needs limit_usd, limit_tokens or both" in page.fields["limit_usd"].message)
    set_text(page.limit_tokens, "1000000")
    qtbot.waitUntil(lambda: page.error_count == 0)


def test_save_writes_the_store_audited(page: BudgetsPage, store: Store, qtbot: Any) -> None:
    version = get_control_version(store.engine)
    page.select_budget("all-daily")
    set_text(page.scope, "team=ml")
    page.period.setCurrentText("month")
    page.timezone.setCurrentText("America/New_York")
    set_text(page.limit_usd, "250.5")
    set_text(page.limit_tokens, "5000000")
    set_text(page.levels, "25, 75%, 90")
    page.action.setCurrentIndex(page.action.findData("block"))
    qtbot.waitUntil(lambda: page.dirty and page.save_bar.save.isEnabled())
    page.save_bar.save.click()
    assert "say why" in page.save_bar.reason_field.message
    assert stored(store, "all-daily")["revision"] == 1
    page.save_bar.reason.setText("ml team gets its own monthly cap")
    page.save_bar.save.click()
    row = stored(store, "all-daily")
    assert row["revision"] == 2
    assert (
        row["scope"] == {"team": "ml"} and row["period"] == "month" and row["timezone"] == "America/New_York"
    )
    assert row["limit_usd"] == 250.5 and row["limit_tokens"] == 5_000_000
    assert row["warn_at"] == [0.25, 0.75, 0.9] and row["action"] == "block" and not row["downgrade_to"]
    audit = list_audit(store.engine, object_type="budget", object_name="all-daily", limit=1)[0]
    assert audit.actor == getpass.getuser() and audit.reason == "ml team gets its own monthly cap"
    assert get_control_version(store.engine) == version + 1
    assert not page.dirty and "Saved budget all-daily (revision 2)" in page.result.text()


def test_invalid_budget_is_not_saved(page: BudgetsPage, store: Store) -> None:
    page.select_budget("all-daily")
    set_text(page.limit_usd, "-1")
    page.save_bar.reason.setText("oops")
    page.save_bar.save.click()
    assert "Not saved: fix the 1 problem" in page.banner.text
    assert stored(store, "all-daily")["revision"] == 1


def test_new_budget_and_a_taken_name(page: BudgetsPage, store: Store, qtbot: Any) -> None:
    page.new_button.click()
    assert page.name.hasFocus() and not page.name.isReadOnly()
    qtbot.waitUntil(lambda: "a budget needs a name" in page.fields["name"].message)
    set_text(page.name, "all-daily")
    qtbot.waitUntil(lambda: "already exists" in page.fields["name"].message)
    set_text(page.name, "strong-tokens")
    set_text(page.scope, "model=gpt-4o")
    set_text(page.limit_tokens, "200000")
    page.save_bar.reason.setText("cap the big model")
    page.save_bar.save.click()
    row = stored(store, "strong-tokens")
    assert row["revision"] == 1 and row["scope"] == {"model": "gpt-4o"} and row["limit_tokens"] == 200_000
    assert row["limit_usd"] is None and row["warn_at"] == [0.5, 0.8, 0.95]
    assert page.table.rowCount() == 3 and page.name.isReadOnly()


def test_the_second_of_two_operators_is_refused_and_reloads(
    make_page: Callable[[], BudgetsPage], store: Store
) -> None:
    ana, bob = make_page(), make_page()
    set_text(ana.limit_usd, "120")
    set_text(bob.limit_usd, "80")
    ana.save_bar.reason.setText("ana")
    bob.save_bar.reason.setText("bob")
    ana.save_bar.save.click()
    bob.save_bar.save.click()
    assert stored(store, "all-daily")["limit_usd"] == 120
    assert "changed since you loaded it (you had revision 1, the store has 2)" in bob.banner.text
    assert bob.banner.button.isVisible() and bob.banner.button.text() == "Reload"
    bob.banner.button.click()
    assert bob.limit_usd.text() == "120" and not bob.dirty and bob.banner.text == ""


def test_delete_asks_first(page: BudgetsPage, store: Store) -> None:
    confirm = page.confirm
    assert isinstance(confirm, Confirmer)
    page.select_budget("search-rolling")
    page.save_bar.reason.setText("search is free now")
    confirm.answer = False
    page.save_bar.delete.click()
    assert "Delete budget search-rolling?" in confirm.asked[-1]
    assert get_object(store.engine, "budget", "search-rolling") is not None
    confirm.answer = True
    page.save_bar.delete.click()
    assert get_object(store.engine, "budget", "search-rolling") is None
    assert page.table.rowCount() == 1


def test_saved_budget_exports_and_reapplies_as_a_no_op(page: BudgetsPage, store: Store) -> None:
    page.select_budget("search-rolling")
    set_text(page.levels, "50, 80, 95")
    page.timezone.setCurrentText("UTC")
    set_text(page.downgrade, "fast, strong")
    page.save_bar.reason.setText("round trip")
    page.save_bar.save.click()
    assert stored(store, "search-rolling")["revision"] == 2
    text = export_text(store.engine)
    version = get_control_version(store.engine)
    report = apply_config(store.engine, parse_config(text), actor="ci")
    assert not report.changed, report.changes
    assert get_control_version(store.engine) == version


def test_esc_reverts_after_asking_and_ctrl_s_saves(page: BudgetsPage, store: Store, qtbot: Any) -> None:
    confirm = page.confirm
    assert isinstance(confirm, Confirmer)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    page.select_budget("all-daily")
    set_text(page.limit_usd, "99")
    page.limit_usd.setFocus()
    confirm.answer = False
    qtbot.keyClick(page.limit_usd, Qt.Key.Key_Escape)
    assert confirm.asked and page.limit_usd.text() == "99"
    confirm.answer = True
    qtbot.keyClick(page.limit_usd, Qt.Key.Key_Escape)
    assert page.limit_usd.text() == "100" and not page.dirty
    set_text(page.limit_usd, "101")
    page.save_bar.reason.setText("keyboard")
    page.limit_usd.setFocus()
    qtbot.keyClick(page.limit_usd, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert stored(store, "all-daily")["limit_usd"] == 101


def test_text_forms_without_qt() -> None:
    assert bm.parse_levels("50, 80%, 95") == (0.5, 0.8, 0.95)
    assert bm.format_levels((0.5, 0.8, 0.95)) == "50, 80, 95"
    assert bm.parse_scope("") == {} and bm.parse_scope("team=ml, tier=gold") == {"team": "ml", "tier": "gold"}
    b = parse_config(CONFIG).budgets[1]
    assert bm.budget_from_row(bm.budget_to_row(b)) == b


def test_ctrl_e_exports_the_configuration(page: BudgetsPage, tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    page.export_visible(ask_path=lambda _what, _suggested: out)
    config = parse_config(out.read_text(encoding="utf-8"))
    assert config.budgets and str(out) in page.result.text()
