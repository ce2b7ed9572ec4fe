"""Shared set-up for the gateway server tests (no tests here): a simulator, a store, and a gateway
server running in a background thread, so the official SDKs can call it synchronously.

Import what you need: ``from tests.integration.test_gateway_server_fixtures import gateway, ...``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import parse_config
from app.gateway import control
from app.gateway.engine import Gateway
from app.gateway.server import GatewayServer
from app.sim import SimServer, SimThread
from storage.engine import Store, open_store

#: The provider key the tests give the gateway (through env:); it must never show anywhere.
SIM_KEY = "sk-test-DoNotLeakThisKey-0123456789abcdef"
KEY_ENV = "CONTROLROOM_TEST_SIM_KEY"

#: ``instant`` plus a tool-calling rule and a model that never answers.
SCENARIO: dict[str, Any] = {
    "name": "gateway-tests",
    "defaults": {"ttft": 0, "tokens_per_s": 0},
    "models": {
        "gpt-4o-mini": {"provider": "openai"},
        "claude-sonnet-4-5": {"provider": "anthropic"},
        "hang-model": {"provider": "openai", "faults": {"hang": 1.0}},
    },
    "fault_options": {"hang_seconds": 5},
    "answers": {
        "default_tokens": 12,
        "rules": [
            {"match": "(?i)capital of france", "answer": "The capital of France is Paris."},
            {
                "match": r"weather in (?P<city>\w+)",
                "tool_call": {"name": "get_weather", "arguments": {"city": "{city}"}},
            },
        ],
    },
}

CONFIG = """\
providers:
  - name: sim-openai
    kind: openai
    base_url: {openai}
    api_key: env:{env}
  - name: sim-anthropic
    kind: anthropic
    base_url: {anthropic}
    api_key: env:{env}
targets:
  - {{name: fast, provider: sim-openai, model: gpt-4o-mini}}
  - {{name: strong, provider: sim-anthropic, model: claude-sonnet-4-5}}
  - {{name: stuck, provider: sim-openai, model: hang-model}}
routes:
  - name: default
    retry: {{max_attempts: 1}}
    rules:
      - chain: [fast, strong]
  - name: claude
    retry: {{max_attempts: 1}}
    rules:
      - chain: [strong]
  - name: slow
    deadline_s: 0.5
    retry: {{max_attempts: 1}}
    rules:
      - chain: [stuck]
{extra}"""


def config_text(sim: SimServer, extra: str = "") -> str:
    return CONFIG.format(
        openai=sim.openai_base_url, anthropic=sim.anthropic_base_url, env=KEY_ENV, extra=extra
    )


def apply_text(store: Store, text: str) -> None:
    control.apply_config(store, parse_config(text, "test.yaml"), actor="tests", reason="set-up")


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class GatewayThread:
    """A store-backed gateway and its HTTP server on their own event loop, in a ``controlroom-`` thread."""

    def __init__(self, store: Store, *, token: str | None = None, max_body_bytes: int | None = None) -> None:
        self.store = store
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.gateway: Gateway | None = None
        self.server: GatewayServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="controlroom-gwtest", daemon=True)

    def start(self) -> GatewayThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the gateway did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the gateway's loop and return its result (for reading engine state)."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.gateway = Gateway(self.store, sync_interval_s=0.05)
            await self.gateway.start()
            kwargs: dict[str, Any] = {"token": self.token}
            if self.max_body_bytes is not None:
                kwargs["max_body_bytes"] = self.max_body_bytes
            self.server = GatewayServer(self.gateway, **kwargs)
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            if self.gateway is not None:
                await self.gateway.aclose()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.stop()
            await self.gateway.aclose()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def sim_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SIM_KEY)
    return SIM_KEY


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimThread(SCENARIO, seed=3) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


@pytest.fixture
def gateway(sim: SimServer, store: Store, sim_key: str) -> Iterator[GatewayThread]:
    apply_text(store, config_text(sim))
    with GatewayThread(store) as gw:
        yield gw


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m app`` child: ours (private CONTROLROOM_HOME) plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
