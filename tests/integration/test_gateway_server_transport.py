"""The aiohttp-backed httpx transport (app/gateway/transport.py) under the provider adapters: the
same oracle as tests/integration/test_adapters_sim.py (the simulator's ledger), so every outcome and
every fault must be classified exactly as with httpx's own transport."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from app.core.event import Failure
from app.gateway.transport import AiohttpTransport
from app.providers import ChatRequest, ChatResult, ProviderAdapter, ProviderError, make_adapter
from app.sim import SimServer
from tests.integration.test_adapters_sim import (
    ANTHROPIC_KEY,
    MODELS,
    OPENAI_KEY,
    READ_TIMEOUT,
    call,
    check_outcome,
    compressed,
    requests_for,
    run_mix,
    served_async,
)

FAULTS = [
    "rate_limit",
    "quota_exceeded",
    "server_error",
    "unavailable",
    "overloaded",
    "hang",
    "stream_cut",
    "stream_error",
    "malformed_json",
    "wrong_content_type",
]


#: The adapters' two paths over the aiohttp transport: through httpx's client, and ``direct`` (an
#: explicit transport and ``trust_env=False``, how the gateway builds them: straight to the transport).
#: Both must classify every outcome and fault alike.
PATHS = pytest.mark.parametrize("direct", [False, True], ids=["client", "direct"])


def adapters(sim: SimServer, *, direct: bool = False, **kw: Any) -> dict[str, ProviderAdapter]:
    options = {"read_timeout": READ_TIMEOUT, "connect_timeout": 2.0, "trust_env": not direct, **kw}
    found = {
        "openai": make_adapter(
            "openai", "sim-openai", sim.openai_base_url, OPENAI_KEY, transport=AiohttpTransport(), **options
        ),
        "anthropic": make_adapter(
            "anthropic",
            "sim-anthropic",
            sim.anthropic_base_url,
            ANTHROPIC_KEY,
            transport=AiohttpTransport(),
            **options,
        ),
    }
    assert all((a._direct is not None) is direct for a in found.values())  # the path under test
    return found


async def close_all(found: dict[str, ProviderAdapter]) -> None:
    for adapter in found.values():
        await adapter.aclose()


@PATHS
@pytest.mark.parametrize("scenario", ["instant", "degraded", "flaky-stream"])
def test_every_outcome_agrees_with_the_simulator(scenario: str, direct: bool) -> None:
    async def go() -> None:
        async with SimServer(compressed(scenario), seed=11) as sim:
            found = adapters(sim, direct=direct)
            try:
                grouped = await run_mix(sim, found, 9)
            finally:
                await close_all(found)
        for outcomes in grouped.values():
            assert any(isinstance(o, ChatResult) for o in outcomes)

    asyncio.run(go())


@PATHS
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_every_fault_is_classified_alike(provider: str, stream: bool, direct: bool) -> None:
    async def one(sim: SimServer, fault: str) -> tuple[str, Any]:
        adapter = adapters(sim, direct=direct, extra_headers={"x-sim-fault": fault}, read_timeout=0.5)[
            provider
        ]
        try:
            return fault, await call(adapter, requests_for(provider, 2)[1], stream)
        finally:
            await adapter.aclose()

    async def go() -> None:
        async with SimServer("instant", seed=3) as sim:
            results = await asyncio.gather(*(one(sim, f) for f in FAULTS))
            by_fault = {r.fault: r for r in await served_async(sim, len(FAULTS))}
        for fault, outcome in results:
            if fault in ("stream_cut", "stream_error") and not stream:
                assert isinstance(outcome, ChatResult)
                continue
            assert isinstance(outcome, ProviderError), (fault, outcome)
            check_outcome(provider, stream, requests_for(provider, 2)[1], outcome, by_fault[fault])

    asyncio.run(go())


@PATHS
def test_a_refused_connection_is_a_connection_error_and_keys_stay_out(direct: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> None:
        adapter = make_adapter(
            "openai",
            "gone",
            f"http://127.0.0.1:{port}/v1",
            "sk-test-refused-000000",
            connect_timeout=1.0,
            transport=AiohttpTransport(),
            trust_env=not direct,
        )
        try:
            for stream in (False, True):
                req = ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                err = await call(adapter, req, stream)
                assert isinstance(err, ProviderError) and err.failure is Failure.CONNECTION_ERROR
                assert "sk-test-refused" not in str(err)
        finally:
            await adapter.aclose()

    asyncio.run(go())


def test_connections_are_pooled_and_a_closed_transport_refuses_work() -> None:
    async def go() -> None:
        async with SimServer("instant", seed=1) as sim:
            transport = AiohttpTransport(max_connections=4)
            adapter = make_adapter(
                "openai", "sim-openai", sim.openai_base_url, OPENAI_KEY, transport=transport
            )
            req = ChatRequest(model=MODELS["openai"][0], messages=[{"role": "user", "content": "hi"}])
            results = await asyncio.gather(*(call(adapter, req, i % 2 == 1) for i in range(40)))
            assert all(isinstance(r, ChatResult) for r in results)
            connector = transport._session.connector  # type: ignore[union-attr]
            assert connector is not None and connector.limit == 4
            await adapter.aclose()
            await transport.aclose()  # twice is fine
            with pytest.raises(RuntimeError, match="closed"):
                transport._client()

    asyncio.run(go())
