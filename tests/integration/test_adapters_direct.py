"""The adapters' direct path (an explicit transport and ``trust_env=False``, which is how the gateway
builds them): chat calls go straight to the transport instead of through httpx's client.  It must
send what the client path sends (here) and classify every outcome and fault exactly as it does
(tests/integration/test_gateway_server_transport.py runs those tests on both paths)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from app.core.event import Failure
from app.gateway.transport import AiohttpTransport
from app.providers import ProviderError, make_adapter
from tests.integration.test_adapters_sim import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    call,
    requests_for,
)


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


_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "compressed hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def _encoded(encoding: str) -> bytes:
    import gzip
    import zlib

    raw = json.dumps(_ANSWER).encode()
    if encoding == "gzip":
        return gzip.compress(raw)
    if encoding == "deflate":
        return zlib.compress(raw)
    if encoding == "raw-deflate":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(raw) + c.flush()
    if encoding == "broken-gzip":
        return b"\x1f\x8b\x08\x00not really gzip"
    return raw


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate", "raw-deflate", "broken-gzip"])
def test_the_direct_path_decodes_answers_as_httpx_does(encoding: str) -> None:
    """The gateway's non-streaming path reads answers without httpx's response object, so it decodes
    content-encodings itself: the same text as the client path, and a body that does not decode is
    the same server_error on both."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        header = {"identity": "identity", "raw-deflate": "deflate", "broken-gzip": "gzip"}.get(
            encoding, encoding
        )
        return web.Response(
            body=_encoded(encoding),
            headers={"content-type": "application/json", "content-encoding": header},
        )

    outcomes: list[Any] = []

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        try:
            for trust_env in (True, False):
                adapter = make_adapter(
                    "openai", "enc", base, OPENAI_KEY, trust_env=trust_env, transport=AiohttpTransport()
                )
                assert (adapter._whole is None) is trust_env
                try:
                    outcomes.append(await call(adapter, requests_for("openai", 1)[0], False))
                finally:
                    await adapter.aclose()
        finally:
            await runner.cleanup()

    asyncio.run(go())
    via_client, direct = outcomes
    if encoding == "broken-gzip":
        for outcome in outcomes:
            assert isinstance(outcome, ProviderError), outcome
            assert outcome.failure is Failure.SERVER_ERROR and outcome.error_type == "invalid_response"
    else:
        assert not isinstance(direct, ProviderError), direct
        assert direct.text == via_client.text == "compressed hello"
        assert direct.usage == via_client.usage
