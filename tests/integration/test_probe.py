""" "Test connection" against real servers on 127.0.0.1: the simulator (which checks keys), a server that
forbids, a closed port, a TLS server with a self-signed certificate, https to a plain-http port, and a
server that never answers.  The key never appears in what the probe says."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from app.core.event import Failure
from app.providers.errors import ProviderError
from app.providers.probe import ProbeResult, Problem, explain, pick_model, probe
from app.sim import SimServer
from tests.integration.sim_fixtures import sim  # noqa: F401  (fixture)

KEY = "sk-test-probe-0123456789"
BAD_KEY = "sk-invalid-probe-0123456789"


def _run(coro: Coroutine[Any, Any, ProbeResult]) -> ProbeResult:
    return asyncio.run(coro)


def _no_key(result: ProbeResult, key: str) -> None:
    assert key not in result.message and key not in result.detail and key not in repr(result)


def test_openai_and_anthropic_connect_list_models_and_time_a_call(sim: SimServer) -> None:  # noqa: F811
    result = _run(probe("openai", sim.openai_base_url, KEY))
    assert result.ok, result.message
    assert result.models and result.list_ms is not None and result.call_ms is not None and result.call_ms > 0
    assert result.model is not None and "mini" in result.model  # a cheap model when none is named
    assert result.message.startswith("Connected.") and f"{len(result.models)} models" in result.message

    anthropic = _run(probe("anthropic", sim.anthropic_base_url, "sk-ant-test-0123456789", "claude-haiku-4-5"))
    assert anthropic.ok, anthropic.message
    assert anthropic.model == "claude-haiku-4-5" and any("claude" in m for m in anthropic.models)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_wrong_key_is_said_plainly_and_never_echoed(sim: SimServer, kind: str) -> None:  # noqa: F811
    url = sim.openai_base_url if kind == "openai" else sim.anthropic_base_url
    result = _run(probe(kind, url, BAD_KEY))
    assert not result.ok and result.problem is Problem.WRONG_KEY and result.status_code == 401
    assert "refused the API key (HTTP 401)" in result.message
    _no_key(result, BAD_KEY)


def test_an_unknown_model_fails_the_call_after_listing(sim: SimServer) -> None:  # noqa: F811
    result = _run(probe("openai", sim.openai_base_url, KEY, "missing-model"))
    assert not result.ok and result.problem is Problem.NOT_FOUND
    assert result.models and "missing-model is not in the provider's models list" in result.message


@asynccontextmanager
async def _server(
    handler: Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]], **ssl_args: Any
) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, **ssl_args)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


def test_403_says_the_key_lacks_permission() -> None:
    async def forbidden(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": "You have insufficient permissions",
                    "type": "invalid_request_error",
                    "code": None,
                }
            },
            status=403,
        )

    async def main() -> ProbeResult:
        async with _server(forbidden) as port:
            return await probe("openai", f"http://127.0.0.1:{port}/v1", KEY)

    result = asyncio.run(main())
    assert result.problem is Problem.FORBIDDEN and "HTTP 403" in result.message
    _no_key(result, KEY)


def test_a_closed_port_is_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _run(probe("openai", f"http://127.0.0.1:{port}/v1", KEY))
    assert result.problem is Problem.UNREACHABLE
    assert f"Nothing is listening at 127.0.0.1:{port} (connection refused)" in result.message


def test_https_to_a_plain_http_port_is_a_tls_failure(sim: SimServer) -> None:  # noqa: F811
    result = _run(probe("openai", f"https://127.0.0.1:{sim.port}/v1", KEY))
    assert result.problem is Problem.TLS and "TLS (https) handshake" in result.message
    _no_key(result, KEY)


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def test_a_self_signed_certificate_is_explained(tmp_path: Path) -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def main() -> ProbeResult:
        async with _server(ok, ssl_context=_self_signed(tmp_path)) as port:
            return await probe("openai", f"https://127.0.0.1:{port}/v1", KEY)

    result = asyncio.run(main())
    assert (
        result.problem is Problem.TLS
        and "certificate" in result.message
        and "could not be verified" in result.message
    )


def test_a_server_that_never_answers_times_out() -> None:
    async def main() -> ProbeResult:
        accepted: list[asyncio.StreamWriter] = []

        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # read nothing, answer nothing

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await probe("openai", f"http://127.0.0.1:{port}/v1", KEY, timeout_s=0.5)
        finally:
            for w in accepted:
                w.close()
            server.close()
            await server.wait_closed()

    result = asyncio.run(main())
    assert result.problem is Problem.TIMEOUT and "within 0.5 s" in result.message


def test_dns_failure_and_bad_urls_are_explained() -> None:
    # Resolving a made-up name would ask a DNS server (tests talk to 127.0.0.1 only), so the DNS case
    # is checked on the exception chain the adapter produces for it (httpx ConnectError from gaierror).
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as inner:
            raise httpx.ConnectError("[Errno -2] Name or service not known") from inner
    except httpx.ConnectError as transport:
        try:
            raise ProviderError(
                Failure.CONNECTION_ERROR, "ConnectError talking to https://api.example.test/v1"
            )
        except ProviderError as exc:
            assert exc.__context__ is transport
            problem, message = explain(exc, "https://api.example.test/v1")
    assert problem is Problem.DNS and "api.example.test could not be found (DNS)" in message

    result = _run(probe("openai", "ftp://127.0.0.1/v1", KEY))
    assert result.problem is Problem.BAD_URL and "http(s)" in result.message
    result = _run(probe("openai", "http://127.0.0.1:9/v1?key=" + KEY, KEY))
    assert result.problem is Problem.BAD_URL
    _no_key(result, KEY)


def test_pick_model_prefers_a_cheap_chat_model() -> None:
    assert pick_model(["text-embedding-3-small", "gpt-4o", "gpt-4o-mini"], None) == "gpt-4o-mini"
    assert pick_model(["gpt-4o"], None) == "gpt-4o"
    assert pick_model(["x"], "wanted") == "wanted"
    assert pick_model([], None) is None
