"""The routing editor against a real SQLite store: every field with valid and invalid input (the
message at the field), what the store holds after a save, the dry run, stale-revision refusal with
two pages on one store, delete with confirmation, keys, and the config-file round trip."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import parse_config
from app.core.event import Event
from app.gateway.control import apply_config, export_text
from app.ui.models import routes_model as rm
from app.ui.models.runner import run_now
from app.ui.pages.routing import RoutingPage
from app.ui.qt import Qt, QtWidgets
from storage.engine import Store, open_store
from storage.queries.control import get_control_version, get_object, list_audit
from storage.queries.events import insert_events

pytestmark = pytest.mark.gui

CONFIG = """
providers:
  - {name: openai, kind: openai, api_key: none}
targets:
  - {name: fast, provider: openai, model: gpt-4o-mini}
  - {name: quick, provider: openai, model: gpt-4.1-mini}
  - {name: strong, provider: openai, model: gpt-4o}
routes:
  - name: default
    deadline_s: 20
    retry: {max_attempts: 2, base_s: 0.5, cap_s: 4, max_retry_after_s: 30}
    max_output_tokens: 1024
    rules:
      - when: {input_tokens_over: 4000}
        chain: [strong, fast]
      - when: {feature: search}
        chain: [{split: {fast: 90, quick: 10}, sticky: user}, strong]
      - chain: [fast, strong]
  - name: scoped
    rules:
      - chain: [fast]
budgets:
  - name: scoped-daily
    scope: {route: scoped}
    period: day
    limit_usd: 5
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    apply_config(s.engine, parse_config(CONFIG), actor="setup", reason="seed")
    yield s
    s.close()


class Confirmer:
    """Stands in for the modal question: records what was asked, answers as told."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def __call__(self, title: str, text: str, ok: str) -> bool:
        self.asked.append(text)
        return self.answer


@pytest.fixture
def make_page(qtbot: Any, store: Store) -> Callable[[], RoutingPage]:
    def make() -> RoutingPage:
        page = RoutingPage()
        qtbot.addWidget(page)
        page.confirm = Confirmer()
        page.attach_store(lambda: store, run_now)
        page.timer.stop()
        page.resize(1300, 900)
        page.show()
        return page

    return make


@pytest.fixture
def page(make_page: Callable[[], RoutingPage]) -> RoutingPage:
    return make_page()


def stored_route(store: Store, name: str = "default") -> dict[str, Any]:
    row = get_object(store.engine, "route", name)
    assert row is not None
    return row


def set_text(edit: QtWidgets.QLineEdit, text: str) -> None:
    edit.selectAll()
    edit.setText(text)


def test_loads_the_routes_and_shows_the_stored_route(page: RoutingPage) -> None:
    assert [page.list.item(i).text().split()[0] for i in range(page.list.count())] == ["default", "scoped"]
    assert page.name.text() == "default" and page.name.isReadOnly()
    assert (
        page.deadline.text() == "20" and page.max_attempts.text() == "2" and page.max_output.text() == "1024"
    )
    assert page.attempt.text() == "" and page.attempt.placeholderText() == "deadline / 2"
    assert len(page.rules) == 3
    first, second, third = page.rules
    assert first.over.text() == "4000" and [s.target.currentText() for s in first.steps] == ["strong", "fast"]
    assert second.tags.text() == "feature=search"
    split = second.steps[0]
    assert (
        split.is_split
        and split.weights.text() == "fast=90, quick=10"
        and split.sticky.currentText() == "user"
    )
    assert third.summary.text() == "— catch-all"
    assert not page.dirty and not page.save_bar.save.isEnabled()
    assert "deadline_s: 20" in page.yaml_view.toPlainText()
    assert page.error_count == 0


# (widget getter, invalid text, words in the message at that field, a valid text)
ROUTE_FIELDS: list[tuple[str, Callable[[RoutingPage], QtWidgets.QLineEdit], str, str, str]] = [
    ("deadline text", lambda p: p.deadline, "abc", "must be a number", "25"),
    ("deadline zero", lambda p: p.deadline, "0", "deadline_s must be more than 0", "25"),
    ("attempt > deadline", lambda p: p.attempt, "30", "longer than the deadline", "8"),
    ("attempt text", lambda p: p.attempt, "soon", "must be a number", ""),
    ("connect negative", lambda p: p.connect_t, "-1", "connect_timeout_s must be more than 0", "3"),
    ("first token > deadline", lambda p: p.first_token, "40", "never fires", "6"),
    ("idle", lambda p: p.idle, "0", "idle_timeout_s must be more than 0", "10"),
    ("attempts zero", lambda p: p.max_attempts, "0", "at least 1", "3"),
    ("attempts fraction", lambda p: p.max_attempts, "1.5", "whole number", "1"),
    ("base negative", lambda p: p.base, "-2", "must not be negative", "0.2"),
    ("cap below base", lambda p: p.cap, "0.1", "must be at least base_s", "2"),
    ("retry-after negative", lambda p: p.max_retry_after, "-5", "must not be negative", "10"),
    ("output cap zero", lambda p: p.max_output, "0", "at least 1", "512"),
    ("output cap text", lambda p: p.max_output, "lots", "whole number", ""),
]


@pytest.mark.parametrize("case", ROUTE_FIELDS, ids=[c[0] for c in ROUTE_FIELDS])
def test_route_fields_invalid_then_valid(page: RoutingPage, qtbot: Any, case: tuple[Any, ...]) -> None:
    _, get, bad, words, good = case
    edit = get(page)
    field = next(f for f in page.all_fields() if f.editor is edit)
    set_text(edit, bad)
    qtbot.waitUntil(lambda: words in field.message)
    assert field.error_label.isVisible()
    set_text(edit, good)
    qtbot.waitUntil(lambda: field.message == "")
    assert not field.error_label.isVisible()
    assert page.error_count == 0


def test_cache_ttl_is_checked_only_when_the_cache_is_on(page: RoutingPage, qtbot: Any) -> None:
    field = page.fields[("cache", "exact_ttl_s")]
    assert not page.cache_ttl.isEnabled()
    page.cache_on.setChecked(True)
    set_text(page.cache_ttl, "0")
    qtbot.waitUntil(lambda: "exact_ttl_s must be more than 0" in field.message)
    set_text(page.cache_ttl, "never")
    qtbot.waitUntil(lambda: "must be a number" in field.message)
    set_text(page.cache_ttl, "600")
    qtbot.waitUntil(lambda: field.message == "")
    assert page.route is not None and page.route.cache.exact_ttl_s == 600


RULE_FIELDS: list[tuple[str, int, str, str, str, str]] = [
    # (case, rule index, attribute, invalid text, words at that field, valid text)
    ("tags not key=value", 1, "tags", "feature", "is not key=value", "feature=search"),
    ("tags empty value", 1, "tags", "tier=gold|", "empty value", "tier=gold|pro"),
    ("tokens text", 0, "over", "many", "whole number", "4000"),
    ("tokens negative", 0, "over", "-3", "must not be negative", "100"),
    ("hours from==to", 1, "h_from", "9", "window is empty", "8"),
    ("hours over 24", 1, "h_from", "30", "hours run from 0 to 24", "8"),
]


@pytest.mark.parametrize("case", RULE_FIELDS, ids=[c[0] for c in RULE_FIELDS])
def test_rule_fields_invalid_then_valid(page: RoutingPage, qtbot: Any, case: tuple[Any, ...]) -> None:
    _, i, attr, bad, words, good = case
    card = page.rules[i]
    if attr == "h_from":
        set_text(card.h_to, "9")
    edit = getattr(card, attr)
    field = next(f for f in card.fields() if f.editor is edit)
    set_text(edit, bad)
    qtbot.waitUntil(lambda: words in field.message)
    set_text(edit, good)
    qtbot.waitUntil(lambda: field.message == "")
    assert page.error_count == 0


def test_tokens_over_and_under_that_exclude_each_other(page: RoutingPage, qtbot: Any) -> None:
    card = page.rules[0]
    set_text(card.under, "3000")
    qtbot.waitUntil(
        lambda: "can never match: no token count is over 4000 and under 3000" in card.over_field.message
    )
    set_text(card.under, "90000")
    qtbot.waitUntil(lambda: card.over_field.message == "")


def test_hours_time_zone_unknown(page: RoutingPage, qtbot: Any) -> None:
    card = page.rules[1]
    set_text(card.h_from, "22")
    set_text(card.h_to, "6")
    set_text(card.h_tz, "Mars/Olympus")
    qtbot.waitUntil(lambda: "unknown time zone `Mars/Olympus`" in card.tz_field.message)
    set_text(card.h_tz, "Europe/Lisbon")
    qtbot.waitUntil(lambda: card.tz_field.message == "")
    assert page.route is not None and page.route.rules[1].when.hours is not None


def test_unknown_target_and_split_weights_at_their_step(page: RoutingPage, qtbot: Any) -> None:
    first, second = page.rules[0], page.rules[1]
    first.steps[1].target.setCurrentText("fastt")
    qtbot.waitUntil(lambda: "unknown target `fastt`" in first.steps[1].field.message)
    first.steps[1].target.setCurrentText("quick")
    qtbot.waitUntil(lambda: first.steps[1].field.message == "")
    split = second.steps[0]
    set_text(split.weights, "fast=90, quick=20")
    qtbot.waitUntil(lambda: "split weights add up to 110, not 100" in split.field.message)
    set_text(split.weights, "fast=90, nope=10")
    qtbot.waitUntil(lambda: "unknown target `nope`" in split.field.message)
    set_text(split.weights, "fast 90")
    qtbot.waitUntil(lambda: "is not target=weight" in split.field.message)
    set_text(split.weights, "fast=80, quick=20")
    qtbot.waitUntil(lambda: split.field.message == "")
    assert page.error_count == 0


def test_a_field_that_does_not_parse_does_not_hide_the_other_problems(page: RoutingPage, qtbot: Any) -> None:
    set_text(page.deadline, "abc")
    set_text(page.rules[1].tags, "feature")
    set_text(page.rules[1].steps[0].weights, "fast=90, quick=20")
    page.rules[0].steps[0].target.setCurrentText("")
    qtbot.waitUntil(lambda: page.error_count == 4)
    assert "must be a number" in page.fields[("deadline_s",)].message
    assert "is not key=value" in page.rules[1].tags_field.message
    assert "add up to 110" in page.rules[1].steps[0].field.message
    assert "name a target" in page.rules[0].steps[0].field.message
    assert page.route is None and "does not parse yet" in page.yaml_view.toPlainText()


def test_a_rule_shadowed_by_an_earlier_one_is_marked_at_the_rule(page: RoutingPage, qtbot: Any) -> None:
    catch_all = page.rules[2]
    catch_all.up.click()
    catch_all.up.click()  # now first: takes every request
    assert page.rules[0] is catch_all and catch_all.title.text() == "Rule 1"
    qtbot.waitUntil(lambda: "rule 2 can never match" in page.rules[1].rule_field.message)
    assert "rule 1 above it has no conditions" in page.rules[2].rule_field.message
    catch_all.down.click()
    catch_all.down.click()
    qtbot.waitUntil(lambda: page.error_count == 0)


def test_an_empty_chain_and_no_rules(page: RoutingPage, qtbot: Any) -> None:
    card = page.rules[2]
    for step in list(card.steps):
        step.drop.click()
    qtbot.waitUntil(lambda: "the chain is empty" in card.chain_field.message)
    for c in list(page.rules):
        c.drop.click()
    qtbot.waitUntil(lambda: "a route needs at least one rule" in page.rules_field.message)


def test_save_writes_the_store_audited_with_the_reason_and_bumps_the_version(
    page: RoutingPage, store: Store, qtbot: Any
) -> None:
    version = get_control_version(store.engine)
    set_text(page.deadline, "25")
    set_text(page.attempt, "10")
    page.rules[1].add_target.click()
    page.rules[1].steps[-1].target.setCurrentText("quick")
    page.add_rule.click()  # a new rule at the end...
    new = page.rules[-1]
    set_text(new.tags, "tier=gold|pro")
    new.up.click()  # ...moved above the catch-all
    page.cache_on.setChecked(True)
    set_text(page.cache_ttl, "600")
    qtbot.waitUntil(lambda: page.dirty and page.save_bar.save.isEnabled())
    # No reason: refused at the reason field, nothing written.
    page.save_bar.save.click()
    assert "say why" in page.save_bar.reason_field.message
    assert stored_route(store)["revision"] == 1
    page.save_bar.reason.setText("longer deadline for the search canary")
    page.save_bar.save.click()
    row = stored_route(store)
    assert row["revision"] == 2
    assert row["settings"]["deadline_s"] == 25 and row["settings"]["attempt_timeout_s"] == 10
    assert row["settings"]["cache"] == {"exact_ttl_s": 600}
    assert row["rules"][1]["chain"] == [
        {"split": {"fast": 90, "quick": 10}, "sticky": "user"},
        "strong",
        "quick",
    ]
    assert row["rules"][2] == {"when": {"tier": ["gold", "pro"]}, "chain": ["fast"]}
    assert row["rules"][3] == {"chain": ["fast", "strong"]}
    audit = list_audit(store.engine, object_type="route", object_name="default", limit=1)[0]
    assert audit.actor == getpass.getuser() and audit.reason == "longer deadline for the search canary"
    assert audit.action == "update" and audit.before["revision"] == 1
    assert get_control_version(store.engine) == version + 1
    assert not page.dirty and "Saved route default (revision 2)" in page.result.text()
    assert page.save_bar.reason.text() == ""


def test_a_route_with_problems_is_not_saved(page: RoutingPage, store: Store, qtbot: Any) -> None:
    set_text(page.attempt, "99")
    page.save_bar.reason.setText("try it")
    page.save_bar.save.click()
    assert "Not saved: fix the 1 problem marked in red" in page.banner.text
    assert stored_route(store)["revision"] == 1


def test_new_route_is_created_and_a_taken_name_refused(page: RoutingPage, store: Store, qtbot: Any) -> None:
    page.new_button.click()
    assert not page.name.isReadOnly() and page.name.hasFocus()
    qtbot.waitUntil(lambda: "a route needs a name" in page.fields[("name",)].message)
    set_text(page.name, "default")
    qtbot.waitUntil(lambda: "already exists" in page.fields[("name",)].message)
    set_text(page.name, "fast")
    qtbot.waitUntil(lambda: "is also a target" in page.fields[("name",)].message)
    set_text(page.name, "search")
    page.rules[0].steps[0].target.setCurrentText("quick")
    page.save_bar.reason.setText("new search route")
    page.save_bar.save.click()
    row = stored_route(store, "search")
    assert row["revision"] == 1 and row["rules"] == [{"chain": ["quick"]}]
    assert page.list.count() == 3 and page.name.text() == "search" and page.name.isReadOnly()


def test_the_second_of_two_operators_is_refused_and_reloads(
    make_page: Callable[[], RoutingPage], store: Store, qtbot: Any
) -> None:
    ana, bob = make_page(), make_page()
    set_text(ana.deadline, "15")
    set_text(bob.deadline, "40")
    ana.save_bar.reason.setText("ana: tighter")
    bob.save_bar.reason.setText("bob: looser")
    ana.save_bar.save.click()
    bob.save_bar.save.click()
    assert stored_route(store)["settings"]["deadline_s"] == 15  # ana's, not overwritten
    assert "changed since you loaded it (you had revision 1, the store has 2)" in bob.banner.text
    assert bob.banner.button.isVisible() and bob.banner.button.text() == "Reload"
    assert bob.dirty  # bob's edits are still on screen until he reloads
    bob.banner.button.click()
    assert bob.deadline.text() == "15" and not bob.dirty and bob.banner.text == ""
    assert bob.record is not None and bob.record.revision == 2
    set_text(bob.deadline, "40")
    bob.save_bar.reason.setText("bob: looser, again")
    bob.save_bar.save.click()
    assert stored_route(store)["settings"]["deadline_s"] == 40 and stored_route(store)["revision"] == 3


def test_a_route_saved_here_exports_and_reapplies_as_a_no_op(page: RoutingPage, store: Store) -> None:
    set_text(page.deadline, "18")
    page.rules[1].steps[0].sticky.setCurrentText("conversation")
    page.latency_aware.setChecked(True)
    set_text(page.fallback, "Try again later.")
    set_text(page.rules[1].h_from, "8")
    set_text(page.rules[1].h_to, "20")
    set_text(page.rules[1].h_tz, "Europe/Paris")
    page.save_bar.reason.setText("round trip")
    page.save_bar.save.click()
    assert stored_route(store)["revision"] == 2
    text = export_text(store.engine)
    assert "sticky: conversation" in text and "tz: Europe/Paris" in text
    version = get_control_version(store.engine)
    report = apply_config(store.engine, parse_config(text), actor="ci", reason="re-apply the export")
    assert not report.changed, report.changes
    assert get_control_version(store.engine) == version


def test_delete_asks_and_is_refused_while_a_budget_needs_the_route(
    page: RoutingPage, store: Store, qtbot: Any
) -> None:
    confirm = page.confirm
    assert isinstance(confirm, Confirmer)
    page.select_route("scoped")
    assert page.name.text() == "scoped"
    page.save_bar.delete.click()
    assert "say why" in page.save_bar.reason_field.message and confirm.asked == []
    page.save_bar.reason.setText("not needed")
    confirm.answer = False
    page.save_bar.delete.click()
    assert "Delete route scoped?" in confirm.asked[-1]
    assert get_object(store.engine, "route", "scoped") is not None
    confirm.answer = True
    page.save_bar.delete.click()
    assert get_object(store.engine, "route", "scoped") is not None
    assert "scope route `scoped` is not defined" in page.banner.text
    page.select_route("default")
    page.new_button.click()
    set_text(page.name, "spare")
    page.save_bar.reason.setText("spare route")
    page.save_bar.save.click()
    assert get_object(store.engine, "route", "spare") is not None
    page.save_bar.reason.setText("spare no more")
    page.save_bar.delete.click()
    assert get_object(store.engine, "route", "spare") is None
    assert "Deleted route spare" in page.result.text()
    assert list_audit(store.engine, object_type="route", object_name="spare", limit=1)[0].action == "delete"


def test_dry_run_of_a_pasted_body_headers_and_a_recent_event(
    store: Store, make_page: Callable[[], RoutingPage], qtbot: Any
) -> None:
    insert_events(
        store.engine,
        [
            Event(
                ts_start=1_700_000_000.0,
                ts_end=1_700_000_001.0,
                route="default",
                feature="search",
                user="u-7",
                input_tokens=120,
            )
        ],
    )
    page = make_page()
    page.request.setPlainText(
        '{"model": "default", "messages": [{"role": "user", "content": "Find hotels in Lisbon"}],'
        ' "user": "u-42", "metadata": {"feature": "search"}}'
    )
    page.dry_button.click()
    answer = page.dry_answer
    assert answer is not None and answer.decision.rule_index == 1
    assert answer.input_tokens is not None and 5 < answer.input_tokens < 40
    assert answer.decision.chain[0] in ("fast", "quick") and answer.decision.chain[-1] == "strong"
    assert "sticky on user u-42" in page.dry_detail.text()
    assert page.dry_headline.text().startswith(f"→ {answer.decision.chain[0]}")
    page.request.setPlainText("x-controlroom-feature: chat\ninput_tokens: 5200")
    page.dry_button.click()
    assert page.dry_answer is not None and page.dry_answer.decision.chain == ["strong", "fast"]
    assert "rule 1 matched: input tokens 5200 over 4000" in page.dry_detail.text()
    # The route as edited, not as saved: the threshold moved.
    set_text(page.rules[0].over, "6000")
    page.dry_button.click()
    assert page.dry_answer.decision.chain == ["fast", "strong"] and page.dry_answer.decision.rule_index == 2
    # A recorded event.
    assert page.events_combo.count() == 1 and "search" in page.events_combo.itemText(0)
    page.use_event.click()
    assert "x-controlroom-user: u-7" in page.request.toPlainText()
    assert page.dry_answer.decision.rule_index == 1 and page.dry_answer.input_tokens == 120
    # Bad input at the request field.
    page.request.setPlainText('{"model": "default", "messages": 3')
    page.dry_button.click()
    assert "not valid JSON" in page.request_field.message


def test_esc_reverts_after_asking_and_ctrl_s_saves(page: RoutingPage, store: Store, qtbot: Any) -> None:
    confirm = page.confirm
    assert isinstance(confirm, Confirmer)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    set_text(page.deadline, "21")
    page.deadline.setFocus()
    confirm.answer = False
    qtbot.keyClick(page.deadline, Qt.Key.Key_Escape)
    assert confirm.asked and page.deadline.text() == "21"
    confirm.answer = True
    qtbot.keyClick(page.deadline, Qt.Key.Key_Escape)
    assert page.deadline.text() == "20" and not page.dirty
    set_text(page.deadline, "22")
    page.save_bar.reason.setText("keyboard")
    page.deadline.setFocus()
    qtbot.keyClick(page.deadline, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert stored_route(store)["settings"]["deadline_s"] == 22


def test_tab_order_runs_down_the_form(page: RoutingPage) -> None:
    order = []
    w: QtWidgets.QWidget = page.name
    for _ in range(12):
        order.append(w)
        w = w.nextInFocusChain()
    assert order[:4] == [page.name, page.deadline, page.attempt, page.connect_t]


def test_the_demo_gateways_own_routes_are_read_only(qtbot: Any, tmp_path: Path) -> None:
    empty = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    try:

        class FakeState:
            source = "config"
            config = parse_config(CONFIG)

        class FakeGateway:
            state = FakeState()

        page = RoutingPage()
        qtbot.addWidget(page)
        page.attach_store(lambda: empty, run_now, lambda: FakeGateway())
        assert page.list.count() == 2 and "read-only" in page.note.text()
        assert not page.editor.isEnabled() and not page.save_bar.isEnabled() and page.dry_button.isEnabled()
        assert not page.dirty
    finally:
        empty.close()


def test_row_round_trip_without_qt() -> None:
    cfg = parse_config(CONFIG)
    route = cfg.routes[0]
    assert rm.route_from_row(rm.route_to_row(route)) == route
    assert rm.parse_tags("feature=search, tier=gold|pro") == {"feature": "search", "tier": ("gold", "pro")}
    with pytest.raises(ValueError, match="given twice"):
        rm.parse_tags("a=1, a=2")
    assert rm.parse_request("tier: gold\nx-controlroom-tags: team=ml").tags == {"tier": "gold", "team": "ml"}


def test_dry_run_shows_the_running_gateways_breakers(store: Store, qtbot: Any) -> None:
    from app.core.breaker import BreakerSnapshot, BreakerState, Override, OverrideMode

    def snap(target: str, state: BreakerState, forced: Override | None = None) -> BreakerSnapshot:
        return BreakerSnapshot(
            target=target, state=state, auto_state=BreakerState.CLOSED, forced=forced, overrides=(),
            requests=0, failures=0, slow=0, failure_rate=None, slow_rate=None, window_s=30.0, since=0.0,
            time_in_state_s=0.0, open_until=None, open_for_s=30.0, probes_in_flight=0, probes_succeeded=0,
        )  # fmt: skip

    forced = Override(OverrideMode.FORCE_OPEN, "provider incident", "ana", 0.0, None)

    class FakeState:
        source = "store"

    class FakeGateway:
        state = FakeState()

        def breaker_snapshots(self) -> list[BreakerSnapshot]:
            return [snap("fast", BreakerState.OPEN, forced), snap("strong", BreakerState.CLOSED)]

    page = RoutingPage()
    qtbot.addWidget(page)
    page.attach_store(lambda: store, run_now, FakeGateway())
    page.timer.stop()
    assert page.note.isHidden() and page.editor.isEnabled()
    page.request.setPlainText("x-controlroom-feature: chat")
    page.dry_button.click()
    assert page.dry_answer is not None and page.dry_answer.decision.chain == ["fast", "strong"]
    detail = page.dry_detail.text()
    assert "fast open (force_open by ana: provider incident)" in detail and "strong closed" in detail
    assert "so a call goes to strong first" in detail
    assert rm.breaker_notes(["fast"], FakeGateway().breaker_snapshots())[-1] == (
        "every breaker of the chain is open: it fails fast (breaker_open)"
    )


def test_a_stored_route_that_does_not_load_is_marked_and_can_be_replaced(
    store: Store, make_page: Callable[[], RoutingPage]
) -> None:
    from storage.queries.control import save_object

    save_object(
        store.engine,
        "route",
        {"name": "broken", "settings": {"deadline_s": "soon"}, "rules": [{"chain": ["fast"]}]},
        expected_revision=None,
        actor="someone",
    )
    page = make_page()
    item = page.list.item(0)
    assert item.text().startswith("broken") and "does not load" in item.text()
    assert "deadline_s" in item.toolTip()
    page.select_route("broken")
    assert "The stored route does not load" in page.banner.text
    page.save_bar.reason.setText("repair")
    page.save_bar.save.click()
    assert page.banner.text == "", page.banner.text
    row = stored_route(store, "broken")
    assert row["revision"] == 2 and row["settings"]["deadline_s"] == 30


def test_ctrl_e_exports_the_configuration_as_a_file_config_apply_reads(
    page: RoutingPage, tmp_path: Path
) -> None:
    out = tmp_path / "config.yaml"
    page.export_visible(ask_path=lambda _what, _suggested: out)
    config = parse_config(out.read_text(encoding="utf-8"))
    assert "default" in {r.name for r in config.routes}
    assert str(out) in page.result.text()


def test_the_rules_fit_a_960_px_window_without_sideways_scrolling(page: RoutingPage, qtbot: Any) -> None:
    page.resize(780, 560)  # the page's share of a 960 x 640 window
    qtbot.waitUntil(lambda: page.scroll.viewport().width() < 600)
    assert page.scroll.widget().minimumSizeHint().width() <= page.scroll.viewport().width()
    assert not page.scroll.horizontalScrollBar().isVisible()


def test_without_a_gateway_here_the_dry_run_shows_the_store_s_overrides(store: Store, qtbot: Any) -> None:
    """A forced breaker shows wherever its target does: here from the store, which every gateway obeys."""
    import time as _time

    from storage.queries.control import set_breaker_override

    set_breaker_override(store.engine, "fast", "force_open", actor="ana", reason="provider incident",
                         expires_at=_time.time() + 900)  # fmt: skip
    page = RoutingPage()
    qtbot.addWidget(page)
    page.attach_store(lambda: store, run_now)
    page.timer.stop()
    page.request.setPlainText("x-controlroom-feature: chat")
    page.dry_button.click()
    assert page.dry_answer is not None and page.dry_answer.decision.chain == ["fast", "strong"]
    detail = page.dry_detail.text()
    assert "fast: breaker forced open by ana until" in detail and "provider incident" in detail
    assert "every gateway skips fast: a call goes to the next target in the chain" in detail
