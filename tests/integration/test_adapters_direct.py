"""The adapters' direct path (an explicit transport and ``trust_env=False``, which is how the gateway
builds them): chat calls go straight to the transport instead of through httpx's client.  It must
send what the client path sends and classify every outcome and fault exactly as it does, judged by
the same oracle as tests/integration/test_adapters_sim.py (the simulator's ledger)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from aiohttp import web

from app.core.event import Failure
from app.gateway.transport import AiohttpTransport
from app.providers import ChatRequest, ChatResult, ProviderAdapter, ProviderError, make_adapter
from app.sim import SimServer
from tests.integration.test_adapters_sim import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    READ_TIMEOUT,
    call,
    check_outcome,
    compressed,
    requests_for,
    run_mix,
)
from tests.integration.test_gateway_server_transport import FAULTS


def direct_adapters(sim: SimServer, **kw: Any) -> dict[str, ProviderAdapter]:
    options: dict[str, Any] = {"read_timeout": READ_TIMEOUT, "connect_timeout": 2.0, "trust_env": False, **kw}
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
    assert all(a._direct is not None for a in found.values())  # the path under test
    return found


async def close_all(found: dict[str, ProviderAdapter]) -> None:
    for adapter in found.values():
        await adapter.aclose()


@pytest.mark.parametrize("scenario", ["instant", "degraded", "flaky-stream"])
def test_every_outcome_agrees_with_the_simulator(scenario: str) -> None:
    async def go() -> None:
        async with SimServer(compressed(scenario), seed=11) as sim:
            found = direct_adapters(sim)
            try:
                grouped = await run_mix(sim, found, 9)
            finally:
                await close_all(found)
        for outcomes in grouped.values():
            assert any(isinstance(o, ChatResult) for o in outcomes)

    asyncio.run(go())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_every_fault_is_classified_as_through_the_client(provider: str, stream: bool) -> None:
    async def one(sim: SimServer, fault: str) -> tuple[str, Any]:
        adapter = direct_adapters(sim, extra_headers={"x-sim-fault": fault}, read_timeout=0.5)[provider]
        try:
            return fault, await call(adapter, requests_for(provider, 2)[1], stream)
        finally:
            await adapter.aclose()

    async def go() -> None:
        async with SimServer("instant", seed=3) as sim:
            results = await asyncio.gather(*(one(sim, f) for f in FAULTS))
            by_fault = {r.fault: r for r in sim.served.records()}
        for fault, outcome in results:
            if fault in ("stream_cut", "stream_error") and not stream:
                assert isinstance(outcome, ChatResult)
                continue
            assert isinstance(outcome, ProviderError), (fault, outcome)
            check_outcome(provider, stream, requests_for(provider, 2)[1], outcome, by_fault[fault])

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_the_direct_path_sends_what_the_client_sends(kind: str) -> None:
    """Same method, path, headers (names case-insensitive) and body, plain and streaming."""
    seen: list[tuple[str, str, dict[str, str], Any]] = []

    async def capture(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen.append((request.method, request.path_qs, headers, json.loads(await request.read())))
        return web.json_response(
            {"error": {"message": "captured", "type": "invalid_request_error"}}, status=400
        )

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", capture)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
        key = OPENAI_KEY if kind == "openai" else ANTHROPIC_KEY
        try:
            for trust_env in (True, False):  # True: httpx's client over the same transport
                adapter = make_adapter(
                    kind,
                    "capture",
                    base,
                    key,
                    trust_env=trust_env,
                    extra_headers={"x-team": "ops"},
                    transport=AiohttpTransport(),
                )
                assert (adapter._direct is None) is trust_env
                try:
                    for stream in (False, True):
                        req = requests_for(kind, 1)[0]
                        outcome = await call(adapter, req, stream)
                        assert isinstance(outcome, ProviderError) and outcome.failure is Failure.CLIENT_ERROR
                        assert "captured" in outcome.message
                finally:
                    await adapter.aclose()
        finally:
            await runner.cleanup()

    asyncio.run(go())
    assert len(seen) == 4
    client_path, direct_path = seen[:2], seen[2:]
    for via_client, direct in zip(client_path, direct_path, strict=True):
        assert direct == via_client
    assert client_path[0][2]["accept"] != client_path[1][2]["accept"]  # per-call headers win over defaults
    assert client_path[0][2]["x-team"] == "ops"


def test_a_refused_connection_is_a_connection_error_and_keys_stay_out() -> None:
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
            trust_env=False,
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
