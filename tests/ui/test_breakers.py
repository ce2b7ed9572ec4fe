"""Breakers: the board read from a real store (and a live snapshot), the table model without a window, the page."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.breaker import BreakerSnapshot, BreakerState
from app.core.event import Event, Failure
from app.ui.models.breakers_model import (
    COL_FAILURE_RATE,
    COL_FORCED,
    COL_IN_STATE,
    COL_REQUESTS,
    COL_STATE,
    COL_TARGET,
    ROW_ROLE,
    SORT_ROLE,
    STATE_ROLE,
    BreakersModel,
    TransitionsModel,
    load_board,
)
from app.ui.models.runner import run_now
from app.ui.pages.breakers import BreakersPage
from app.ui.qt import Qt, QtTest
from storage.engine import Store, open_store
from storage.queries.control import (
    BreakerTransition,
    append_breaker_transitions,
    save_object,
    set_breaker_override,
)
from storage.queries.events import insert_events

NOW = time.time()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    save_object(
        s.engine,
        "provider",
        {"name": "openai", "kind": "openai"},
        actor="test",
        reason="setup",
        expected_revision=None,
    )
    for name, model in (("fast", "gpt-4o-mini"), ("strong", "gpt-4o"), ("spare", "gpt-4.1")):
        save_object(
            s.engine,
            "target",
            {"name": name, "provider": "openai", "model": model},
            actor="t",
            reason="",
            expected_revision=None,
        )
    t = NOW - 1200
    append_breaker_transitions(
        s.engine,
        [
            BreakerTransition(
                "fast", t, "closed", "open", "failure_rate", {"detail": "62% of 31 calls", "forced": False}
            ),
            BreakerTransition("fast", t + 30, "open", "half_open", "open_elapsed", None),
            BreakerTransition("fast", t + 31, "half_open", "closed", "probes_succeeded", None),
            BreakerTransition(
                "strong", t + 600, "closed", "open", "failure_rate", {"detail": "55% of 40 calls"}
            ),
        ],
    )
    set_breaker_override(
        s.engine, "spare", "force_open", actor="ana", reason="provider incident", expires_at=NOW + 3600
    )
    # Recorded traffic in the window: fast 10 requests, 4 counted failures (and a client error that does not count).
    events = [
        Event(ts_start=NOW - 10 + i, ts_end=NOW - 9 + i, provider="openai", model="gpt-4o-mini",
              failure=Failure.TIMEOUT if i < 4 else (Failure.CLIENT_ERROR if i == 4 else Failure.NONE))
        for i in range(10)
    ]  # fmt: skip
    insert_events(s.engine, events)
    yield s
    s.close()


def test_board_from_the_store_alone(store: Store) -> None:
    board = load_board(store.engine, now=NOW)
    rows = {r.target: r for r in board.rows}
    assert set(rows) == {"fast", "strong", "spare"}
    assert not board.live
    assert rows["fast"].state == "closed" and rows["fast"].last_cause == "probes succeeded"
    assert rows["fast"].requests == 10 and rows["fast"].failure_rate == pytest.approx(0.4)
    assert rows["strong"].state == "open" and "55% of 40 calls" in (rows["strong"].last_cause or "")
    assert rows["spare"].state == "open" and rows["spare"].forced is not None
    assert rows["spare"].forced.actor == "ana"
    assert len(board.transitions) == 4


def test_live_snapshots_win_over_the_store(store: Store) -> None:
    snap = BreakerSnapshot(
        target="fast", state=BreakerState.HALF_OPEN, auto_state=BreakerState.HALF_OPEN, forced=None, overrides=(),
        requests=42, failures=21, slow=0, failure_rate=0.5, slow_rate=0.0, window_s=30.0, since=NOW - 5,
        time_in_state_s=5.0, open_until=None, open_for_s=30.0, probes_in_flight=1, probes_succeeded=0,
    )  # fmt: skip
    board = load_board(store.engine, [snap], now=NOW)
    fast = next(r for r in board.rows if r.target == "fast")
    assert board.live and fast.live
    assert (fast.state, fast.requests, fast.failure_rate) == ("half_open", 42, 0.5)


def test_model_without_a_window(store: Store, qapp: object) -> None:
    model = BreakersModel(clock=lambda: NOW)
    tester = QtTest.QAbstractItemModelTester(
        model, QtTest.QAbstractItemModelTester.FailureReportingMode.Warning
    )
    board = load_board(store.engine, now=NOW)
    model.set_board(board.rows)
    assert model.rowCount() == 3
    by_target = {model.index(r, COL_TARGET).data(ROW_ROLE).target: r for r in range(3)}
    fast, spare, strong = by_target["fast"], by_target["spare"], by_target["strong"]
    assert model.index(fast, COL_STATE).data() == "closed"
    assert model.index(fast, COL_STATE).data(STATE_ROLE) == "ok"
    assert model.index(strong, COL_STATE).data(STATE_ROLE) == "bad"
    assert model.index(fast, COL_FAILURE_RATE).data() == "40%"
    assert model.index(fast, COL_REQUESTS).data() == "10 in 30 s"
    assert model.index(fast, COL_IN_STATE).data() == "19 min 29 s"
    assert model.index(fast, COL_TARGET).data() == "fast  (gpt-4o-mini)"
    forced = model.index(spare, COL_FORCED).data()
    assert forced.startswith("open by ana, until") and forced.count(":") == 1  # HH:MM in the cell
    tip = model.index(spare, COL_STATE).data(Qt.ItemDataRole.ToolTipRole)
    assert "forced open by ana" in tip and "provider incident" in tip
    assert model.index(fast, COL_FORCED).data() == "auto"
    assert model.index(strong, COL_STATE).data(SORT_ROLE) < model.index(fast, COL_STATE).data(SORT_ROLE)
    # Same targets again: one dataChanged, no reset (the selection survives a refresh).
    resets: list[int] = []
    changed: list[int] = []
    model.modelReset.connect(lambda: resets.append(1))
    model.dataChanged.connect(lambda *a: changed.append(1))
    model.set_board(load_board(store.engine, now=NOW + 2).rows)
    assert resets == [] and changed == [1]
    del tester


def test_transitions_model_newest_first(store: Store, qapp: object) -> None:
    model = TransitionsModel(clock=lambda: NOW)
    model.set_transitions(load_board(store.engine, now=NOW).transitions)
    assert model.rowCount() == 4
    assert model.index(0, 1).data() == "strong"
    assert model.index(0, 2).data() == "closed → open"
    assert "55% of 40 calls" in model.index(0, 3).data()
    assert model.index(0, 0).data().endswith("min ago")


@pytest.mark.gui
def test_page_renders_table_timeline_and_causes(store: Store, qtbot: object) -> None:
    page = BreakersPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)  # type: ignore[attr-defined]
    page.attach_store(store, run_now)
    assert page.board is not None and page.stack.currentWidget() is page.table
    assert page.model.rowCount() == 3 and page.transitions.rowCount() == 4
    assert "3 targets · 2 open · 1 forced" in page.source_label.text()
    page.timeline.grab()  # paints it
    tips = page.timeline.tick_tips()
    assert len(tips) == 4 and any("a probe" in t or "probes succeeded" in t for t in tips)
    pixmap = page.grab()
    assert not pixmap.isNull()
    page.timer.stop()


@pytest.mark.gui
def test_page_with_no_targets_says_what_to_do(tmp_path: Path, qtbot: object) -> None:
    with open_store(f"sqlite:///{tmp_path / 'empty.db'}") as empty:
        page = BreakersPage()
        qtbot.addWidget(page)  # type: ignore[attr-defined]
        page.attach_store(lambda: empty, run_now)
        assert page.stack.currentWidget() is page.empty
        assert "config apply" in page.empty.label.text() and "Providers page" in page.empty.label.text()
        assert page.lower.isHidden()  # no timeline or transitions list under the message
        page.timer.stop()


@pytest.mark.gui
def test_switch_force_open_then_back_to_auto(store: Store, qtbot: object) -> None:
    from app.ui.pages.breakers import SwitchDialog, describe_switch
    from storage.queries.control import get_breaker_override, list_audit

    page = BreakersPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    page.show()
    page.attach_store(store, run_now)
    row = next(r for r in range(page.model.rowCount()) if page.model.row_at(r).target == "fast")
    page.table.selectRow(row)
    assert page.switch_buttons["force_open"].isEnabled()
    assert not page.switch_buttons["auto"].isEnabled()  # already auto
    # The dialog says what will happen and will not go without a reason.
    dialog = SwitchDialog("fast", "force_open", page)
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    assert "fall back" in describe_switch("fast", "force_open")
    assert not dialog.ok.isEnabled()
    dialog.reason.setText("upstream incident")
    assert dialog.ok.isEnabled() and dialog.expires_in_s() == 3600.0
    page.switch("fast", "force_open", "upstream incident", 3600.0)
    override = get_breaker_override(store.engine, "fast")
    assert override is not None and override.state == "force_open" and override.reason == "upstream incident"
    fast = next(r for r in page.board.rows if r.target == "fast")  # type: ignore[union-attr]
    assert fast.state == "open" and fast.forced is not None
    assert "done" in page.switch_result.text()
    page.table.selectRow(row)
    assert page.switch_buttons["auto"].isEnabled() and not page.switch_buttons["force_open"].isEnabled()
    page.switch("fast", "auto", "incident over")
    assert get_breaker_override(store.engine, "fast") is None
    assert [e.action for e in list_audit(store.engine, object_type="breaker")][:2] == ["auto", "force_open"]
    page.timer.stop()


ROUTES_YAML = """
providers:
  - {name: openai, kind: openai, api_key: env:OPENAI_API_KEY}
targets:
  - {name: fast, provider: openai, model: gpt-4o-mini}
  - {name: strong, provider: openai, model: gpt-4o}
  - {name: spare, provider: openai, model: gpt-4.1}
routes:
  - name: default
    rules:
      - when: {feature: search}
        chain: [{split: {fast: 90, spare: 10}, sticky: user}, strong]
      - chain: [fast, strong]
  - name: batch
    rules:
      - chain: [fast]
  - name: premium
    rules:
      - chain: [strong]
"""


def _save_routes(store: Store) -> None:
    from app.core.config import parse_config
    from app.gateway.state import config_to_rows

    for row in config_to_rows(parse_config(ROUTES_YAML))["route"]:
        save_object(store.engine, "route", row, actor="t", reason="", expected_revision=None)


def test_force_open_says_where_each_route_s_traffic_goes(store: Store) -> None:
    from app.ui.pages.breakers import describe_switch

    _save_routes(store)
    board = load_board(store.engine)
    # default: the split's other member, then the chain's next step; batch has nothing else.
    assert board.fallbacks["fast"] == [("batch", []), ("default", ["spare", "strong"])]  # by route name
    assert board.fallbacks["strong"] == [("default", []), ("premium", [])]
    text = describe_switch("fast", "force_open", board.fallbacks["fast"])
    assert "Traffic on route default will go to spare, strong." in text
    assert "Route batch has no other target: its requests will fail fast." in text
    # Without stored routes it says what happens in general.
    assert "fall back" in describe_switch("fast", "force_open", [])


def test_forcing_closed_a_failing_target_asks_twice_and_says_why(store: Store, qtbot: object) -> None:
    from app.ui.models.breakers_model import failing_reason
    from app.ui.pages.breakers import SwitchDialog

    board = load_board(store.engine, now=NOW)
    fast, strong = board.row("fast"), board.row("strong")
    assert fast is not None and strong is not None
    # fast: closed again, but 4 of 10 recorded requests failed; strong: open since its last transition.
    why_fast = failing_reason(fast)
    assert why_fast is not None and "4 of 10 requests failed" in why_fast and "40%" in why_fast
    why_strong = failing_reason(strong)
    assert why_strong is not None and "its breaker is open" in why_strong and "55% of 40 calls" in why_strong
    dialog = SwitchDialog("strong", "force_closed", failing=why_strong)
    qtbot.addWidget(dialog)  # type: ignore[attr-defined]
    assert dialog.confirm is not None
    assert not dialog.ok.isEnabled()
    dialog.reason.setText("provider says it is fixed")
    assert not dialog.ok.isEnabled()  # a reason is not enough: the operator ticks that they mean it
    dialog.confirm.setChecked(True)
    assert dialog.ok.isEnabled()
    # A healthy target, or forcing open, needs only the reason.
    calm = SwitchDialog("strong", "force_open", failing=why_strong)
    qtbot.addWidget(calm)  # type: ignore[attr-defined]
    assert calm.confirm is None


def test_switches_have_keys(store: Store, qtbot: object) -> None:
    from app.ui.pages.breakers import SWITCH_KEYS

    page = BreakersPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    keys = {a.shortcut().toString() for a in page.actions()}
    assert set(SWITCH_KEYS.values()) <= keys
    assert all(SWITCH_KEYS[m] in b.toolTip() for m, b in page.switch_buttons.items())
    asked: list[str] = []
    page.ask_switch = asked.append  # type: ignore[method-assign]
    by_key = {a.shortcut().toString(): a for a in page.actions()}
    by_key["Alt+O"].trigger()
    assert asked == []  # nothing selected: the key does nothing
    page.show()
    page.attach_store(store, run_now)
    row = next(r for r in range(page.model.rowCount()) if page.model.row_at(r).target == "fast")
    page.table.selectRow(row)
    by_key["Alt+O"].trigger()
    by_key["Alt+A"].trigger()  # fast is already automatic: its switch is off
    assert asked == ["force_open"]
    page.timer.stop()


@pytest.mark.gui
def test_narrow_window_fits_the_columns_and_ctrl_e_exports(
    store: Store, qtbot: object, tmp_path: Path
) -> None:
    page = BreakersPage()
    qtbot.addWidget(page)  # type: ignore[attr-defined]
    page.resize(760, 560)  # the page's share of a 960 px window
    page.show()
    qtbot.waitExposed(page)  # type: ignore[attr-defined]
    page.attach_store(store, run_now)
    table = page.table
    qtbot.waitUntil(  # type: ignore[attr-defined]
        lambda: table.horizontalHeader().length() <= table.viewport().width()
    )
    assert not table.horizontalScrollBar().isVisible()
    # spare is forced: its override keeps more room than the model names
    assert table.columnWidth(COL_FORCED) > table.columnWidth(COL_TARGET)
    # Wide again: the columns get their full width back.
    page.resize(1400, 700)
    qtbot.waitUntil(lambda: table.columnWidth(COL_FORCED) == page._preferred_widths[COL_FORCED])  # type: ignore[attr-defined]
    out = tmp_path / "breakers.csv"
    assert page.export_visible(ask_path=lambda _what, _suggested: out) == out
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("Target,State,Forced") and len(lines) == 4
    assert "Exported 3 breakers rows" in page.switch_result.text()
    page.timer.stop()


@pytest.mark.gui
def test_no_transitions_says_so(tmp_path: Path, qtbot: object) -> None:
    with open_store(f"sqlite:///{tmp_path / 'calm.db'}") as calm:
        save_object(calm.engine, "provider", {"name": "openai", "kind": "openai"}, actor="t", reason="",
                    expected_revision=None)  # fmt: skip
        save_object(calm.engine, "target", {"name": "fast", "provider": "openai", "model": "gpt-4o-mini"},
                    actor="t", reason="", expected_revision=None)  # fmt: skip
        page = BreakersPage()
        qtbot.addWidget(page)  # type: ignore[attr-defined]
        page.attach_store(lambda: calm, run_now)
        assert page.transitions_stack.currentWidget() is page.no_transitions
        assert "No breaker changed state" in page.no_transitions.text()
        assert "0 transitions" in page.timeline_title.text() and "hover" not in page.timeline_title.text()
        page.timer.stop()
