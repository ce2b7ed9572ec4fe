"""End to end: a route saved from the routing editor changes what a running in-process Gateway
serves, through the store's control version (no restart, no call into the gateway).

The gateway runs on its own event loop in a ``controlroom-`` thread against the simulator on
127.0.0.1; the editor runs on the GUI thread with the synchronous runner, like a test of any page.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.core.config import parse_config
from app.gateway.control import apply_config
from app.gateway.engine import Gateway, GatewayRequest
from app.sim import SimServer
from app.ui.models.runner import run_now
from app.ui.pages.budgets import BudgetsPage
from app.ui.pages.routing import RoutingPage
from storage.engine import Store, open_store
from storage.queries.control import get_control_version

pytestmark = pytest.mark.gui

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a named thread; ``call`` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="controlroom-test-gateway", daemon=True
        )
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def config_text(sim: SimServer) -> str:
    return f"""
providers:
  - {{name: sim-openai, kind: openai, base_url: "{sim.openai_base_url}", api_key: env:SIM_KEY}}
  - {{name: sim-anthropic, kind: anthropic, base_url: "{sim.anthropic_base_url}", api_key: env:SIM_KEY}}
targets:
  - {{name: fast, provider: sim-openai, model: gpt-4o-mini}}
  - {{name: strong, provider: sim-anthropic, model: claude-sonnet-4-5}}
routes:
  - name: default
    deadline_s: 10
    rules:
      - when: {{feature: search}}
        chain: [fast, strong]
      - chain: [fast, strong]
budgets:
  - name: search-daily
    scope: {{feature: search}}
    period: day
    limit_usd: 100
    action: alert_only
"""


def keys(provider: str, ref: str) -> str:
    return "sk-test-routing-live-0001"


def wait_for(cond: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``cond()`` held, or ``None`` if it did not within ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if cond():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def test_a_route_saved_in_the_editor_changes_what_the_gateway_serves(
    sim: SimServer, store: Store, qtbot: Any
) -> None:
    apply_config(store.engine, parse_config(config_text(sim)), actor="setup", reason="seed")
    loop = LoopThread()
    gw = Gateway(store, key_resolver=keys)  # the default control poll (0.25 s)
    try:
        loop.call(gw.start())

        def serve(feature: str | None = "search") -> str:
            req = GatewayRequest(
                route="default", messages=[{"role": "user", "content": "hello"}], feature=feature
            )
            return loop.call(gw.chat(req)).target

        assert serve() == "fast"
        page = RoutingPage()
        qtbot.addWidget(page)
        page.attach_store(lambda: store, run_now, lambda: gw)
        page.show()
        assert page.note.isHidden()  # the gateway runs on the store: the routes are editable
        search_rule = page.rules[0]
        search_rule.steps[1].up.click()  # strong first for search traffic
        page.save_bar.reason.setText("search moves to claude")
        page.save_bar.save.click()
        saved_version = get_control_version(store.engine)
        assert "Saved route default (revision 2)" in page.result.text()
        # The gateway picks the change up by polling the control version (every 0.25 s).
        took = wait_for(lambda: gw.control_version >= saved_version, timeout_s=5.0)
        assert took is not None, "the gateway never loaded the saved route"
        print(f"\ngateway applied the saved route {took * 1000:.0f} ms after the save (under load)")
        assert serve() == "strong"
        assert serve(feature=None) == "fast"  # the catch-all rule was not touched

        # The budgets editor on the same store: a block at 100% takes effect the same way.
        budgets = BudgetsPage()
        qtbot.addWidget(budgets)
        budgets.attach_store(lambda: store, run_now, lambda: gw)
        budgets.timer.stop()
        budgets.select_budget("search-daily")
        budgets.limit_usd.setText("0.000001")
        budgets.action.setCurrentIndex(budgets.action.findData("block"))
        budgets.save_bar.reason.setText("freeze search spend")
        budgets.save_bar.save.click()
        saved_version = get_control_version(store.engine)
        assert wait_for(lambda: gw.control_version >= saved_version, timeout_s=5.0) is not None
        blocked = False
        for _ in range(20):  # the first call after the change may still be under the old spend
            try:
                serve()
            except Exception as exc:  # GatewayError: budget_blocked
                blocked = "budget" in str(exc).lower()
                break
        assert blocked
    finally:
        loop.call(gw.aclose())
        loop.stop()
