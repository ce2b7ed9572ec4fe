""" "Test connection": can we reach a provider with this key, and how fast does it answer?

:func:`probe` lists the provider's models, then times a one-token call, through
the same adapters the gateway uses, and explains whatever went wrong in plain
words: a wrong key (401/403), an unreachable host (connection refused, DNS), a
TLS failure, a timeout, a wrong base URL.  The key is never in what it returns:
every text goes through :func:`~app.providers.errors.redact` with the key.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

import httpx

from app.core.event import Failure
from app.providers import make_adapter
from app.providers.base import ChatRequest, ProviderAdapter
from app.providers.errors import ProviderError, redact

#: How long each step may take by default (seconds).
DEFAULT_TIMEOUT_S = 10.0
#: Models tried first for the one-token call when none is named: the cheap ones.
_CHEAP_HINTS = ("mini", "haiku", "nano", "small", "flash")


class Problem(StrEnum):
    WRONG_KEY = "wrong_key"
    FORBIDDEN = "forbidden"
    UNREACHABLE = "unreachable"
    DNS = "dns"
    TLS = "tls"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    BAD_URL = "bad_url"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the connection test found.  ``message`` is for the operator; nothing in it holds the key."""

    ok: bool
    message: str
    problem: Problem | None = None
    detail: str = ""  # the technical cause (redacted), for a "details" line
    models: list[str] = field(default_factory=list)
    list_ms: float | None = None
    model: str | None = None  # the model the one-token call used
    call_ms: float | None = None
    status_code: int | None = None


def _host(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or base_url
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it was raised from or during (the adapter keeps httpx's error as context)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def explain(
    exc: BaseException, base_url: str, *, step: str = "models", timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[Problem, str]:
    """The problem behind ``exc`` and a sentence an operator can act on."""
    host = _host(base_url)
    causes = _causes(exc)
    status = exc.status_code if isinstance(exc, ProviderError) else None
    if status == 401:
        return Problem.WRONG_KEY, (
            f"{host} refused the API key (HTTP 401): it is wrong, revoked, or belongs to another provider. "
            "Paste the key again and save."
        )
    if status == 403:
        return Problem.FORBIDDEN, (
            f"{host} accepted the key but it may not do this (HTTP 403): check the key's project or "
            "organisation, and that it has access to the models."
        )
    if status == 404:
        if step == "models":
            return Problem.NOT_FOUND, (
                f"{host} has no models list at this base URL (HTTP 404): check the URL — OpenAI-style URLs "
                "end in /v1, Anthropic's have no /v1."
            )
        return Problem.NOT_FOUND, (
            "The model was not found (HTTP 404): pick one from the models list, or check the base URL."
        )
    if status == 429:
        return Problem.RATE_LIMITED, (
            f"{host} answered and knows the key, but refused the call for now (HTTP 429: rate limit or "
            "quota). The connection is fine; try again later or check the account's quota."
        )
    if status is not None and status >= 500:
        return Problem.SERVER_ERROR, (
            f"{host} answered with a server error (HTTP {status}); the connection and key may be fine — "
            "try again, or check the provider's status page."
        )
    if status is not None:
        return Problem.OTHER, f"{host} refused the request (HTTP {status})."
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes) or any(
        "CERTIFICATE_VERIFY_FAILED" in str(c) for c in causes
    ):
        return Problem.TLS, (
            f"The TLS certificate of {host} could not be verified (self-signed, expired, or for another "
            "name). Use the provider's real https address, or install the certificate authority it uses."
        )
    if any(isinstance(c, ssl.SSLError) for c in causes) or any("SSL" in str(c) for c in causes[:3]):
        return Problem.TLS, (
            f"The TLS (https) handshake with {host} failed: the server may not speak https on that port "
            "(try http:// for a local server) or rejected the connection."
        )
    if any(isinstance(c, socket.gaierror) for c in causes):
        return Problem.DNS, (
            f"The host name {urlsplit(base_url).hostname} could not be found (DNS): check its spelling in "
            "the base URL, and your network or VPN."
        )
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return Problem.UNREACHABLE, (
            f"Nothing is listening at {host} (connection refused): is the server running, and is the port right?"
        )
    if isinstance(exc, TimeoutError) or (isinstance(exc, ProviderError) and exc.failure is Failure.TIMEOUT):
        what = "list its models" if step == "models" else "answer a one-token call"
        return Problem.TIMEOUT, (
            f"{host} did not {what} within {timeout_s:g} s: the host may be down, behind a firewall, or "
            "overloaded."
        )
    if isinstance(exc, ProviderError) and exc.error_type == "invalid_url":
        return Problem.BAD_URL, "The base URL is not a usable http(s) address."
    if isinstance(exc, ProviderError) and exc.error_type == "invalid_response":
        return Problem.OTHER, (
            f"{host} answered, but not like an API of this kind: check the provider kind and the base URL."
        )
    if any(isinstance(c, OSError | httpx.ConnectError) for c in causes):
        return Problem.UNREACHABLE, f"Could not connect to {host}: {type(causes[-1]).__name__}."
    return Problem.OTHER, f"The test failed: {type(exc).__name__}."


def pick_model(models: list[str], wanted: str | None) -> str | None:
    """The model for the one-token call: the one asked for, else a cheap chat model, else the first."""
    if wanted:
        return wanted
    chat = [m for m in models if not any(x in m for x in ("embed", "whisper", "tts", "dall-e", "moderation"))]
    for hint in _CHEAP_HINTS:
        for m in chat:
            if hint in m:
                return m
    return chat[0] if chat else None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


async def probe(
    kind: str,
    base_url: str,
    api_key: str | None,
    model: str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ProbeResult:
    """List the models, time a one-token call, and say in plain words what went wrong, if anything."""
    secrets = (api_key,) if api_key else ()

    def clean(text: str) -> str:
        return redact(text, secrets)

    try:
        adapter: ProviderAdapter = make_adapter(
            kind,
            "probe",
            base_url,
            api_key,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            transport=transport,
        )
    except ValueError as exc:
        return ProbeResult(False, clean(str(exc)).replace("provider 'probe': ", ""), Problem.BAD_URL)
    models: list[str] = []
    list_ms: float | None = None
    note = ""
    async with adapter:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                models = await adapter.list_models()
            list_ms = _ms(started)
        except (ProviderError, TimeoutError) as exc:
            problem, message = explain(exc, base_url, step="models", timeout_s=timeout_s)
            status = exc.status_code if isinstance(exc, ProviderError) else None
            # Some OpenAI-compatible servers have no models list; the call below still tells.
            if not (problem is Problem.NOT_FOUND and model and kind == "openai_compatible"):
                return ProbeResult(False, clean(message), problem, clean(str(exc)), status_code=status)
            note = "The server has no models list. "
        chosen = pick_model(models, model)
        if chosen is None:
            return ProbeResult(
                False,
                "The key works, but the provider lists no chat model to try a call with; name a model.",
                Problem.NOT_FOUND,
                models=models,
                list_ms=list_ms,
            )
        if model and models and model not in models:
            note += f"{model} is not in the provider's models list. "
        request = ChatRequest(
            model=chosen, messages=[{"role": "user", "content": "Say OK."}], max_output_tokens=1
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                result = await adapter.chat(request)
        except (ProviderError, TimeoutError) as exc:
            problem, message = explain(exc, base_url, step="call", timeout_s=timeout_s)
            listed = (
                f"Listed {len(models)} models, but the one-token call to {chosen} failed: " if models else ""
            )
            return ProbeResult(
                False,
                clean(note + listed + message),
                problem,
                clean(str(exc)),
                models=models,
                list_ms=list_ms,
                model=chosen,
                status_code=exc.status_code if isinstance(exc, ProviderError) else None,
            )
        call_ms = result.latency_ms if result.latency_ms is not None else _ms(started)
    listed = f"{len(models)} models listed in {_fmt_ms(list_ms)}; " if list_ms is not None else ""
    return ProbeResult(
        True,
        clean(f"{note}Connected. {listed}a one-token call to {chosen} took {_fmt_ms(call_ms)}."),
        models=models,
        list_ms=list_ms,
        model=chosen,
        call_ms=call_ms,
        status_code=result.status_code,
    )


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


__all__ = ["DEFAULT_TIMEOUT_S", "ProbeResult", "Problem", "explain", "pick_model", "probe"]
