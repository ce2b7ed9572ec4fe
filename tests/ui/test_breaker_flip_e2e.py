"""End to end (issue 7 item 8): an operator flips a breaker on the Breakers page while a separate
``controlroom gateway`` process serves simulator traffic; the traffic moves to the fallback, and
back after "auto".

Everything is real: the simulator on 127.0.0.1, a gateway child process on a SQLite file, the page
with its buttons and its dialog, driven as an operator would (select the row, press the switch,
type a reason, press Enter).  The bound asserted is generous (the machine may be loaded); the delay from
the click to the first request served elsewhere is printed, and tests/bench/test_bench_gateway.py
gives its distribution.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ui.models.runner import run_now
from app.ui.pages.breakers import BreakersPage, SwitchDialog
from app.ui.qt import Qt, QTimer, QtTest, QtWidgets
from storage.engine import open_store
from storage.queries.control import get_breaker_override, list_audit
from tests.integration.test_gateway_server_fixtures import (  # noqa: F401 - fixtures
    apply_text,
    config_text,
    sim,
    sim_key,
)
from tests.integration.test_propagation import BOUND_S, CHAT, gateway_process

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def _served_by(client: httpx.Client, base: str) -> str:
    r = client.post(base + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text  # a client never sees the flip as a failure
    return r.headers["x-controlroom-target"]


def _until_served_by(client: httpx.Client, base: str, want: str, since: float) -> float:
    while _served_by(client, base) != want:
        if time.monotonic() - since > BOUND_S:
            raise AssertionError(f"the gateway still does not serve from {want} after {BOUND_S} s")
    return time.monotonic() - since


def _operate(page: BreakersPage, target: str, mode: str, reason: str) -> float:
    """Select ``target``'s row, press the switch, type the reason in its dialog and press Enter."""
    row = next(r for r in range(page.model.rowCount()) if page.model.row_at(r).target == target)
    page.table.selectRow(row)
    button = page.switch_buttons[mode]
    assert button.isEnabled()
    seen: list[str] = []

    def fill() -> None:
        dialog = QtWidgets.QApplication.activeModalWidget()
        if not isinstance(dialog, SwitchDialog):  # not open yet: look again on the next turn
            QTimer.singleShot(10, fill)
            return
        seen.append(dialog.windowTitle())
        QtTest.QTest.keyClicks(dialog.reason, reason)
        QtTest.QTest.keyClick(dialog.reason, Qt.Key.Key_Return)

    QTimer.singleShot(0, fill)
    button.click()
    assert seen, "the switch did not ask for a reason"
    return time.monotonic()


def test_a_breaker_flipped_on_the_page_moves_a_gateway_process_s_traffic(
    sim: Any,  # noqa: F811
    sim_key: str,  # noqa: F811
    tmp_path: Path,
    qtbot: Any,
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with open_store(url) as store:
        apply_text(store, config_text(sim))
    with open_store(url) as store, gateway_process(url) as base, httpx.Client(timeout=10) as client:
        page = BreakersPage()
        qtbot.addWidget(page)
        page.show()
        page.attach_store(store, run_now)
        assert _served_by(client, base) == "fast"

        clicked = _operate(page, "fast", "force_open", "e2e: fast is misbehaving")
        override = get_breaker_override(store.engine, "fast")
        assert override is not None and override.state == "force_open"
        assert override.reason == "e2e: fast is misbehaving"
        moved = _until_served_by(client, base, "strong", clicked)

        clicked = _operate(page, "fast", "auto", "e2e: fast is fine again")
        assert get_breaker_override(store.engine, "fast") is None
        back = _until_served_by(client, base, "fast", clicked)

        actions = [e.action for e in list_audit(store.engine, object_type="breaker")]
        assert actions[:2] == ["auto", "force_open"]
        page.timer.stop()
    print(
        f"\nbreaker flipped on the page -> gateway process: open {moved * 1000:.0f} ms, auto {back * 1000:.0f} ms"
    )
