"""Reusable pytest fixtures for the simulated provider.

Import them into a test module (``from tests.integration.sim_fixtures import sim, openai_client``)
or register this module in the top-level conftest (``pytest_plugins``).  Every test gets a fresh
simulator on a free loopback port in the ``instant`` scenario with seed 7; switch the weather with
``sim.set_scenario(...)``.  The SDK clients never retry unless a test asks them to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.sim import SimServer, SimThread
from app.sim.ledger import Served

SIM_SEED = 7


def served_records(sim: SimServer, n: int, timeout: float = 10.0) -> list[Served]:
    """The simulator's records once ``n`` requests have been served (from another thread than the
    simulator's).  A streamed answer is recorded when its handler returns, which can be a moment
    after the client has read the last frame and moved on."""
    deadline = time.monotonic() + timeout
    while len(sim.served) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"the simulator served {len(sim.served)} requests, not {n}, in {timeout} s")
        threading.Event().wait(0.005)
    return sim.served.records()


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimThread("instant", seed=SIM_SEED) as server:
        yield server


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimServer]]:
    """Start more simulators (other scenarios or seeds); all are stopped after the test."""
    threads: list[SimThread] = []

    def start(scenario: Any = "instant", seed: int = SIM_SEED) -> SimServer:
        thread = SimThread(scenario, seed)
        threads.append(thread)
        return thread.start()

    yield start
    for thread in threads:
        thread.stop()


@pytest.fixture
def openai_client(sim: SimServer) -> Iterator[Any]:
    import openai

    client = openai.OpenAI(
        base_url=sim.openai_base_url, api_key="sk-test", admin_api_key="sk-admin-test", max_retries=0
    )
    yield client
    client.close()


@pytest.fixture
def anthropic_client(sim: SimServer) -> Iterator[Any]:
    import anthropic

    client = anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="sk-ant-test", max_retries=0)
    yield client
    client.close()
