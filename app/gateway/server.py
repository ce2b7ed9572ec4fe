"""The gateway as an HTTP server: OpenAI- and Anthropic-compatible, on aiohttp.web.

Endpoints::

    POST /v1/chat/completions   OpenAI chat (plain and SSE streaming)
    POST /v1/messages           Anthropic messages (plain and the full event stream)
    GET  /v1/models             routes and targets (OpenAI's list shape; Anthropic's when anthropic-version is sent)
    GET  /metrics               Prometheus text format
    GET  /healthz               {"status": "ok"}; never needs the token

``model`` names the route (or a target).  Feature, user and tags come from the
``x-controlroom-feature``, ``x-controlroom-user`` and ``x-controlroom-tags`` headers (tags as
``k=v,k2=v2`` or a JSON object), or from OpenAI's ``user`` and ``metadata`` (``metadata.feature``
is the feature, the other keys are tags) and Anthropic's ``metadata.user_id``; headers win.
``x-controlroom-deadline-s: SECONDS`` is optional.  ``x-controlroom-prompt: NAME`` (or ``NAME@VERSION``)
renders the registry prompt's active (or that) version into the request, with its variables from
``x-controlroom-prompt-vars`` (a JSON object) and/or the body's ``prompt_vars`` object (the SDKs'
``extra_body``; the header wins per name); ``messages`` may then be empty (docs/architecture-delta.md).
Every answer carries ``x-controlroom-target`` (who served it), ``x-controlroom-attempts``,
``x-controlroom-cache`` (hit | miss | off) and ``server-timing`` (the gateway's own time and the
provider call's).

Errors come back in the shape the caller's SDK expects (``{"error": {...}}`` for OpenAI,
``{"type": "error", "error": {...}}`` for Anthropic) with the engine's status: 429 for a budget
block (with ``x-should-retry: false``: the SDKs would otherwise retry it), 503 when every target's
breaker is open, 504 when the deadline passed, client errors as they are.

Security: loopback by default.  Listening on any other address needs a token (``--token`` or
``CONTROLROOM_GATEWAY_TOKEN``), checked on every request but ``/healthz`` as
``Authorization: Bearer TOKEN`` (OpenAI SDK) or ``x-api-key: TOKEN`` (Anthropic SDK).  What a
client sends in those headers is the gateway's token, never a provider key, and is never
logged or echoed (clients often send their real provider key there by habit: the SDKs read
``OPENAI_API_KEY``).  Request bodies are limited (4 MiB by default: 413 with a clear message).

Why aiohttp.web: measured against uvicorn + Starlette (h11, the only HTTP parser installed here) on
the same JSON handler (tests/bench/test_bench_gateway.py::test_bench_server_stack_choice, five runs
on a shared 2-core machine), aiohttp answered in 0.26-0.37 ms (p50) at concurrency 1 against
0.43-0.52 ms, and sustained as many to twice the requests per second at 50 and 200; it is never
behind, it is already the simulator's server, and it adds no dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from app.core.event import Failure
from app.core.ids import new_event_id
from app.core.prompts import PromptError, parse_ref
from app.gateway import metrics
from app.gateway.engine import (
    Gateway,
    GatewayError,
    GatewayRequest,
    GatewayResponse,
    GatewayStreamEnd,
    GatewayStreamStart,
)
from app.providers.base import (
    ChatResult,
    FinishReason,
    StreamDone,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
MAX_BODY_BYTES = 4 * 1024 * 1024
TOKEN_ENV = "CONTROLROOM_GATEWAY_TOKEN"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- listening ---------------------------------------------------------------------------


class ListenError(ValueError):
    """The gateway must not listen where it was asked to (the message says why and what to do)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_listen(host: str, token: str | None) -> None:
    """Loopback by default; any other address requires a bearer token."""
    if not is_loopback(host) and not token:
        raise ListenError(
            f"refusing to listen on {host}: off loopback the gateway needs a token; set {TOKEN_ENV} "
            "(or pass --token) and give it to clients as their API key"
        )


# --- errors in each SDK's shape ------------------------------------------------------------

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class ApiError(Exception):
    """An error answer, rendered in the caller's API shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        openai_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.openai_type = openai_type
        self.headers = dict(headers or {})


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_exceeded"
    return "server_error" if status >= 500 else "invalid_request_error"


def _error_response(flavor: str, exc: ApiError, request_id: str) -> web.Response:
    if flavor == "anthropic":
        body: dict[str, Any] = {
            "type": "error",
            "error": {
                "type": _ANTHROPIC_TYPES.get(
                    exc.status, "api_error" if exc.status >= 500 else "invalid_request_error"
                ),
                "message": exc.message,
            },
            "request_id": request_id,
        }
        headers = {"request-id": request_id, **exc.headers}
    else:
        body = {
            "error": {
                "message": exc.message,
                "type": exc.openai_type or _openai_type(exc.status),
                "param": exc.param,
                "code": exc.code,
            }
        }
        headers = {"x-request-id": request_id, **exc.headers}
    return web.Response(
        status=exc.status, body=_dumps(body), content_type="application/json", headers=headers
    )


def _gateway_api_error(exc: GatewayError) -> ApiError:
    """The engine's refusal as an HTTP error: status from the engine, words for the caller."""
    headers: dict[str, str] = {"x-controlroom-attempts": str(exc.event.attempts)}
    tried = exc.event.targets_tried
    if tried:
        headers["x-controlroom-target"] = tried[-1]
    if exc.retry_after_s is not None and exc.retry_after_s > 0:
        headers["retry-after"] = str(math.ceil(exc.retry_after_s))
        headers["retry-after-ms"] = str(math.ceil(exc.retry_after_s * 1000))
    openai_type = None
    if exc.failure is Failure.BUDGET_BLOCKED:
        # A budget does not refill in seconds: the SDKs must not retry it by themselves.
        headers["x-should-retry"] = "false"
        openai_type = "insufficient_quota"
    elif exc.status_code == 404:
        openai_type = "invalid_request_error"
    code = "model_not_found" if exc.status_code == 404 else exc.failure.value
    return ApiError(exc.status_code, exc.message, code=code, openai_type=openai_type, headers=headers)


# --- request parsing -----------------------------------------------------------------------


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_request")


def parse_tags(value: str) -> dict[str, str]:
    """``x-controlroom-tags``: ``team=search,tier=gold`` or a JSON object of strings."""
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise _bad("x-controlroom-tags is not valid JSON") from None
        if not isinstance(data, dict) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in data.values()
        ):
            raise _bad("x-controlroom-tags must be a JSON object of text values")
        return {str(k): str(v) for k, v in data.items()}
    tags: dict[str, str] = {}
    for part in text.split(","):
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise _bad("x-controlroom-tags must be k=v pairs separated by commas, or a JSON object")
        tags[key.strip()] = val.strip()
    return tags


def _prompt_vars(headers: Mapping[str, str], body: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt's variables: the body's ``prompt_vars``, then ``x-controlroom-prompt-vars`` on top."""
    values = body.get("prompt_vars")
    if values is not None and not isinstance(values, dict):
        raise _bad("prompt_vars must be an object of variable names and values", "prompt_vars")
    out = dict(values or {})
    header = headers.get("x-controlroom-prompt-vars")
    if header:
        try:
            data = json.loads(header)
        except ValueError:
            raise _bad(
                "x-controlroom-prompt-vars is not valid JSON (send an object of name: value)"
            ) from None
        if not isinstance(data, dict):
            raise _bad("x-controlroom-prompt-vars must be a JSON object of name: value")
        out.update(data)
    return out


def _context(
    headers: Mapping[str, str], feature: str | None, user: str | None, tags: dict[str, str]
) -> dict[str, Any]:
    """Feature, user, tags, prompt and deadline: headers win over the body."""
    out: dict[str, Any] = {
        "feature": headers.get("x-controlroom-feature") or feature,
        "user": headers.get("x-controlroom-user") or user,
        "tags": tags,
    }
    header_tags = headers.get("x-controlroom-tags")
    if header_tags:
        tags.update(parse_tags(header_tags))
    prompt = headers.get("x-controlroom-prompt")
    if prompt:
        try:
            out["prompt_name"], out["prompt_version"] = parse_ref(prompt)
        except PromptError as exc:
            raise _bad(f"x-controlroom-prompt must be NAME or NAME@VERSION: {exc}") from None
    deadline = headers.get("x-controlroom-deadline-s")
    if deadline:
        try:
            seconds = float(deadline)
        except ValueError:
            seconds = -1.0
        if not (seconds > 0 and math.isfinite(seconds)):
            raise _bad("x-controlroom-deadline-s must be a number of seconds above 0")
        out["deadline_s"] = seconds
    return out


def _text_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad(f"{what} must be an object of text values", what)
    return dict(value)


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(f"{what} must be a whole number of at least 1", what)
    return value


def _route(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model is required: the name of a route (or of a target) of this gateway", "model")
    return model


def _messages(body: Mapping[str, Any], headers: Mapping[str, str]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if headers.get("x-controlroom-prompt") and messages in (None, []):
        return []  # the prompt's template is the user message
    if not isinstance(messages, list) or not messages:
        raise _bad("messages is required: a non-empty list of messages", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a role", f"messages[{i}]")
    return messages


_OPENAI_OWN = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "max_tokens",
        "max_completion_tokens",
        "prompt_vars",
    }
)


def openai_request(body: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[GatewayRequest, bool]:
    """An OpenAI chat request -> the engine's request, and whether the stream should end with usage."""
    route = _route(body)
    messages = _messages(body, headers)
    params = {k: v for k, v in body.items() if k not in _OPENAI_OWN}
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        params["max_output_tokens"] = _positive_int(limit, "max_completion_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user must be text", "user")
    tags = _text_map(body.get("metadata"), "metadata")
    feature = tags.pop("feature", None)
    req = GatewayRequest(route=route, messages=messages, params=params, stream=bool(stream))
    for key, value in _context(headers, feature, user, tags).items():
        setattr(req, key, value)
    req.prompt_vars = _prompt_vars(headers, body)
    return req, include_usage


# Anthropic -> OpenAI message shapes (the engine speaks OpenAI's; the Anthropic adapter translates back).


def _anthropic_image(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        return dict(block)  # a file reference or a new kind: Anthropic targets take it as it is
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(content: Any) -> Any:
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "".join(b.get("text", "") for b in content)
    return content if content is not None else ""


def anthropic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic messages -> OpenAI chat messages (tool_use -> tool_calls, tool_result -> tool messages)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        content = m.get("content")
        if role not in ("user", "assistant"):
            raise _bad(f"messages[{i}].role must be user or assistant", f"messages.{i}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _bad(
                f"messages[{i}].content must be text or a list of content blocks", f"messages.{i}.content"
            )
        if role == "assistant":
            texts: list[str] = []
            calls: list[dict[str, Any]] = []
            for block in content:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "text":
                    texts.append(str(block.get("text", "")))
                elif kind == "tool_use":
                    calls.append(
                        {
                            "id": block.get("id"),
                            "type": "function",
                            "function": {
                                "name": block.get("name"),
                                "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                            },
                        }
                    )
                # thinking and redacted_thinking blocks belong to the model's own turn: not replayed
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(texts) if texts or not calls else None,
            }
            if calls:
                message["tool_calls"] = calls
            out.append(message)
            continue
        parts: list[Any] = []
        for block in content:
            if not isinstance(block, dict):
                raise _bad(
                    f"messages[{i}].content holds a block that is not an object", f"messages.{i}.content"
                )
            kind = block.get("type")
            if kind == "tool_result":
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id"),
                        "content": _tool_result_text(block.get("content")),
                    }
                )
            elif kind == "image":
                parts.append(_anthropic_image(block))
            else:
                parts.append(block)  # text blocks have one shape in both APIs; others pass as they are
        if parts:
            out.append({"role": "user", "content": parts})
    return out


def _anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    out = []
    for t in tools:
        if isinstance(t, dict) and "input_schema" in t and "name" in t:
            fn: dict[str, Any] = {"name": t["name"], "parameters": t["input_schema"]}
            if t.get("description"):
                fn["description"] = t["description"]
            out.append({"type": "function", "function": fn})
        else:
            out.append(t)  # a server tool (web search, ...): Anthropic targets take it as it is
    return out


def _anthropic_tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        raise _bad("tool_choice must be an object", "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise _bad("tool_choice.type must be auto, any, tool or none", "tool_choice")
    return mapped


_ANTHROPIC_OWN = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "metadata",
        "stop_sequences",
        "tools",
        "tool_choice",
        "prompt_vars",
    }
)


def anthropic_request(body: Mapping[str, Any], headers: Mapping[str, str]) -> GatewayRequest:
    """An Anthropic Messages request -> the engine's request."""
    route = _route(body)
    if "max_tokens" not in body:
        raise _bad("max_tokens: Field required", "max_tokens")
    max_tokens = _positive_int(body["max_tokens"], "max_tokens")
    messages = anthropic_messages(_messages(body, headers))
    params = {k: v for k, v in body.items() if k not in _ANTHROPIC_OWN}
    params["max_output_tokens"] = max_tokens
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences must be a list of text", "stop_sequences")
        params["stop"] = stop
    if body.get("tools") is not None:
        params["tools"] = _anthropic_tools(body["tools"])
    if body.get("tool_choice") is not None:
        params["tool_choice"] = _anthropic_tool_choice(body["tool_choice"])
    system = body.get("system")
    system_text: str | None = None
    if isinstance(system, str):
        system_text = system or None
    elif isinstance(system, list):
        if all(isinstance(b, dict) and b.keys() == {"type", "text"} and b["type"] == "text" for b in system):
            system_text = "\n\n".join(b["text"] for b in system) or None
        else:
            # Blocks with cache_control and the like: a system message of blocks keeps them.
            messages.insert(0, {"role": "system", "content": system})
    elif system is not None:
        raise _bad("system must be text or a list of text blocks", "system")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream must be true or false", "stream")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("metadata must be an object", "metadata")
    user = (metadata or {}).get("user_id")
    req = GatewayRequest(
        route=route, messages=messages, system=system_text, params=params, stream=bool(stream)
    )
    for key, value in _context(headers, None, user if isinstance(user, str) else None, {}).items():
        setattr(req, key, value)
    req.prompt_vars = _prompt_vars(headers, body)
    return req


# --- answers -------------------------------------------------------------------------------


_dumps = msgspec.json.encode  # compact UTF-8 JSON; about 5x json.dumps
_loads = msgspec.json.decode


_OPENAI_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
}


def _openai_finish(result: ChatResult) -> str:
    return _OPENAI_FINISH.get(result.finish_reason, "stop") if result.finish_reason else "stop"


def _usage_of(resp: GatewayResponse) -> Usage:
    """The provider's usage, or the engine's figures (estimated when the provider reported none)."""
    if resp.result.usage is not None:
        return resp.result.usage
    e = resp.event
    return Usage(
        e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens, e.reasoning_tokens
    )


def openai_usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_response(resp: GatewayResponse, route: str) -> dict[str, Any]:
    """A chat.completion body: the provider's own when it spoke OpenAI, else built from the result."""
    r = resp.result
    raw = r.raw
    if raw is not None and raw.get("object") == "chat.completion" and isinstance(raw.get("choices"), list):
        return raw
    message: dict[str, Any] = {
        "role": "assistant",
        "content": r.text if (r.text or not r.tool_calls) else None,
        "refusal": r.refusal,
    }
    if r.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id or f"call_{i}",
                "type": "function",
                "function": {"name": c.name or "", "arguments": c.arguments or "{}"},
            }
            for i, c in enumerate(r.tool_calls)
        ]
    return {
        "id": f"chatcmpl-{resp.event.event_id}",
        "object": "chat.completion",
        "created": int(resp.event.ts_start),
        "model": r.response_model or route,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _openai_finish(r)}],
        "usage": openai_usage(_usage_of(resp)),
    }


_ANTHROPIC_STOPS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"})
_ANTHROPIC_FINISH = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.REFUSAL: "refusal",
    FinishReason.CONTENT_FILTER: "refusal",
}


def _anthropic_stop(result: ChatResult) -> str:
    if result.native_finish_reason in _ANTHROPIC_STOPS:
        return str(result.native_finish_reason)
    return _ANTHROPIC_FINISH.get(result.finish_reason, "end_turn") if result.finish_reason else "end_turn"


def anthropic_usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.uncached_input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    }


def _tool_input(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return {}


def anthropic_response(resp: GatewayResponse, route: str) -> dict[str, Any]:
    """A Messages body: the provider's own when it spoke Anthropic, else built from the result."""
    r = resp.result
    raw = r.raw
    if raw is not None and raw.get("type") == "message" and isinstance(raw.get("content"), list):
        return raw
    content: list[dict[str, Any]] = []
    text = r.text or r.refusal or ""
    if text or not r.tool_calls:
        content.append({"type": "text", "text": text})
    for i, c in enumerate(r.tool_calls):
        content.append(
            {
                "type": "tool_use",
                "id": c.id or f"toolu_{i}",
                "name": c.name or "",
                "input": _tool_input(c.arguments),
            }
        )
    return {
        "id": f"msg_{resp.event.event_id}",
        "type": "message",
        "role": "assistant",
        "model": r.response_model or route,
        "content": content,
        "stop_reason": _anthropic_stop(r),
        "stop_sequence": None,
        "usage": anthropic_usage(_usage_of(resp)),
    }


# --- the server ----------------------------------------------------------------------------


class GatewayServer:
    """The HTTP face of one :class:`Gateway`.  ``start``/``stop`` run on the caller's event loop."""

    def __init__(
        self, gateway: Gateway, *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.gateway = gateway
        self._token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.stats = metrics.ServerStats()
        self._runner: web.AppRunner | None = None
        self._host = DEFAULT_HOST
        self._port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/v1/chat/completions", self._counted("chat_completions", self._chat_completions))
        app.router.add_post("/v1/messages", self._counted("messages", self._messages))
        app.router.add_get("/v1/models", self._counted("models", self._models))
        app.router.add_get("/metrics", self._counted("metrics", self._metrics))
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self, host: str = DEFAULT_HOST, port: int = 0) -> None:
        check_listen(host, self._token.decode() if self._token else None)
        # access_log=None: an access log line per call costs time and could carry a caller's header.
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=10.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        """Stop accepting, let calls in flight finish (up to the runner's grace), close connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- plumbing -------------------------------------------------------------------------

    def _counted(self, endpoint: str, handler: Handler) -> Handler:
        stats = self.stats
        flavor = "anthropic" if endpoint == "messages" else "openai"

        async def counted(request: web.Request) -> web.StreamResponse:
            stats.in_flight += 1
            status = 500
            try:
                if self._token is not None and not self._authorized(request):
                    response: web.StreamResponse = _error_response(
                        flavor,
                        ApiError(
                            401,
                            "this gateway needs its token: send it as the API key (Authorization: Bearer TOKEN "
                            "or x-api-key: TOKEN)",
                            code="invalid_api_key",
                            openai_type="invalid_request_error",
                        ),
                        new_event_id(),
                    )
                else:
                    response = await handler(request)
                status = response.status
                return response
            except ApiError as exc:
                status = exc.status
                return _error_response(flavor, exc, new_event_id())
            except (asyncio.CancelledError, ConnectionResetError):
                status = 499  # the client went away
                raise
            except Exception:
                log.exception("gateway: internal error on %s", endpoint)
                return _error_response(
                    flavor, ApiError(500, "internal error in the gateway; see its log"), new_event_id()
                )
            finally:
                stats.in_flight -= 1
                stats.count(endpoint, status)

        return counted

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        auth = request.headers.get("Authorization", "")
        presented = (
            auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        )
        return hmac.compare_digest(presented.encode(), self._token)

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large(request.content_length)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large(None) from None
        try:
            data = _loads(raw)
        except ValueError:  # msgspec.DecodeError is one
            raise _bad("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _bad("the request body must be a JSON object")
        return data

    def _too_large(self, size: int | None) -> ApiError:
        limit_mib = self.max_body_bytes / 1048576
        got = f" ({size / 1048576:.1f} MiB)" if size is not None else ""
        return ApiError(
            413,
            f"the request body is too large{got}: this gateway accepts at most {limit_mib:g} MiB",
            code="request_too_large",
        )

    def _headers(self, resp: GatewayResponse, started: float) -> dict[str, str]:
        total_ms = (time.perf_counter() - started) * 1000.0
        upstream_ms = (resp.result.latency_ms or 0.0) if resp.cache != "hit" else 0.0
        overhead_ms = max(total_ms - upstream_ms, 0.0)
        self.stats.overhead.observe(overhead_ms / 1000.0)
        return {
            "x-controlroom-target": resp.target,
            "x-controlroom-attempts": str(resp.attempts),
            "x-controlroom-cache": resp.cache,
            "x-request-id": resp.event.event_id,
            "server-timing": f"gateway;dur={overhead_ms:.3f}, upstream;dur={upstream_ms:.3f}",
        }

    # --- handlers -------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_dumps({"status": "ok", "control_version": self.gateway.control_version}),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=metrics.render(self.gateway.stats(), self.stats),
            headers={"content-type": metrics.CONTENT_TYPE},
        )

    async def _models(self, request: web.Request) -> web.Response:
        names = self.gateway.models()
        if "anthropic-version" in request.headers:
            data: list[dict[str, Any]] = [
                {"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}
                for n in names
            ]
            body: dict[str, Any] = {
                "data": data,
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        else:
            body = {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "controlroom"} for n in names
                ],
            }
        return web.Response(body=_dumps(body), content_type="application/json")

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await self._json_body(request)
        req, include_usage = openai_request(body, request.headers)
        if req.stream:
            return await self._stream(request, req, _OpenAIStream(req.route, include_usage), started)
        try:
            resp = await self.gateway.chat(req)
        except GatewayError as exc:
            return _error_response("openai", _gateway_api_error(exc), exc.event.event_id)
        return web.Response(
            body=_dumps(openai_response(resp, req.route)),
            content_type="application/json",
            headers=self._headers(resp, started),
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await self._json_body(request)
        req = anthropic_request(body, request.headers)
        if req.stream:
            return await self._stream(request, req, _AnthropicStream(req.route), started)
        try:
            resp = await self.gateway.chat(req)
        except GatewayError as exc:
            return _error_response("anthropic", _gateway_api_error(exc), exc.event.event_id)
        headers = self._headers(resp, started)
        headers["request-id"] = headers["x-request-id"]
        return web.Response(
            body=_dumps(anthropic_response(resp, req.route)), content_type="application/json", headers=headers
        )

    async def _stream(
        self, request: web.Request, req: GatewayRequest, wire: _StreamWire, started: float
    ) -> web.StreamResponse:
        """Stream the engine's events in the caller's format.

        The status and headers go out with the first event: an engine that cannot start any
        target raises before it, and the caller gets a plain error response instead.
        """
        try:
            events: AsyncIterator[Any] = aiter(self.gateway.stream(req))
            first = await anext(events)
        except GatewayError as exc:
            return _error_response(wire.flavor, _gateway_api_error(exc), exc.event.event_id)
        except StopAsyncIteration:
            raise ApiError(500, "the engine ended the stream before it began") from None
        try:
            headers = {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
            }
            pending: list[Any] = []
            if isinstance(first, GatewayStreamStart):
                headers["x-controlroom-target"] = str(first.target)
                headers["x-controlroom-attempts"] = str(first.attempts)
                headers["x-controlroom-cache"] = str(first.cache)
            else:
                pending.append(first)
            response = web.StreamResponse(status=200, headers=headers)
            await response.prepare(request)
            write = response.write
            await write(wire.begin())
            try:
                for item in pending:
                    await self._stream_item(wire, item, write, started)
                async for item in events:
                    await self._stream_item(wire, item, write, started)
            except GatewayError as exc:
                await write(wire.error(_gateway_api_error(exc)))
            await response.write_eof()
            return response
        finally:
            # Also when the caller went away: the engine then ends the call and records its event.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _stream_item(
        self, wire: _StreamWire, item: Any, write: Callable[[bytes], Awaitable[None]], started: float
    ) -> None:
        cls = type(item)
        if cls is TextDelta:
            await write(wire.text(item.text))
        elif cls is ToolCallDelta:
            await write(wire.tool(item))
        elif cls is UsageUpdate:
            wire.usage = item.usage
        elif cls is StreamDone:
            wire.result = item.result
        elif cls is GatewayStreamEnd:
            resp = item.response
            self._headers(resp, started)  # counts the overhead; the headers themselves went out already
            await write(wire.end(resp))


# --- stream writers ------------------------------------------------------------------------


class _StreamWire:
    flavor = "openai"

    def __init__(self, route: str) -> None:
        self.route = route
        self.usage: Usage | None = None
        self.result: ChatResult | None = None

    def begin(self) -> bytes:
        raise NotImplementedError

    def text(self, text: str) -> bytes:
        raise NotImplementedError

    def tool(self, delta: ToolCallDelta) -> bytes:
        raise NotImplementedError

    def end(self, resp: GatewayResponse) -> bytes:
        raise NotImplementedError

    def error(self, exc: ApiError) -> bytes:
        raise NotImplementedError


class _OpenAIStream(_StreamWire):
    """``data: {chunk}`` lines ending with ``data: [DONE]`` (wire-formats.md)."""

    flavor = "openai"

    def __init__(self, route: str, include_usage: bool) -> None:
        super().__init__(route)
        self.include_usage = include_usage
        self.id = f"chatcmpl-{new_event_id()}"
        self.created = int(time.time())
        # Everything but the delta is the same in every chunk: render it once.
        self._head = (
            f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{json.dumps(route)},"system_fingerprint":null,"choices":[{{"index":0,"delta":'
        ).encode()
        self._tail = (
            b',"logprobs":null,"finish_reason":null}]'
            + (b',"usage":null' if include_usage else b"")
            + b"}\n\n"
        )

    def _chunk(self, delta: dict[str, Any]) -> bytes:
        return self._head + _dumps(delta) + self._tail

    def begin(self) -> bytes:
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def text(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def tool(self, delta: ToolCallDelta) -> bytes:
        call: dict[str, Any] = {"index": delta.index}
        if delta.id is not None:
            call["id"] = delta.id
            call["type"] = "function"
        fn: dict[str, Any] = {}
        if delta.name is not None:
            fn["name"] = delta.name
        fn["arguments"] = delta.arguments or ""
        call["function"] = fn
        return self._chunk({"tool_calls": [call]})

    def end(self, resp: GatewayResponse) -> bytes:
        result = self.result or resp.result
        finish = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.route,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": _openai_finish(result)}],
        }
        out = b"data: " + _dumps(finish) + b"\n\n"
        if self.include_usage:
            usage = resp.result.usage or self.usage or _usage_of(resp)
            last = {**finish, "choices": [], "usage": openai_usage(usage)}
            out += b"data: " + _dumps(last) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def error(self, exc: ApiError) -> bytes:
        body = {
            "error": {
                "message": exc.message,
                "type": exc.openai_type or _openai_type(exc.status),
                "param": None,
                "code": exc.code,
            }
        }
        return b"data: " + _dumps(body) + b"\n\n"


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


class _AnthropicStream(_StreamWire):
    """``message_start`` -> content blocks -> ``message_delta`` -> ``message_stop`` (wire-formats.md)."""

    flavor = "anthropic"

    def __init__(self, route: str) -> None:
        super().__init__(route)
        self.id = f"msg_{new_event_id()}"
        self._started = False
        self._block: int | None = None  # the open content block
        self._kind: str | None = None  # its type
        self._blocks = 0
        self._tool_blocks: dict[int, int] = {}  # tool call ordinal -> block index

    def begin(self) -> bytes:
        return b""  # message_start waits for the first content: Anthropic upstreams report input usage first

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        usage = anthropic_usage(self.usage or Usage())
        usage["output_tokens"] = 0 if self.usage is None else usage["output_tokens"]
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.route,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> bytes:
        if self._block is None:
            return b""
        index, self._block, self._kind = self._block, None, None
        return _event("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._block, self._kind = self._blocks, kind
        self._blocks += 1
        return out + _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._block, "content_block": block},
        )

    def text(self, text: str) -> bytes:
        out = self._start()
        if self._kind != "text":
            out += self._open_block("text", {"type": "text", "text": ""})
        return out + _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": self._block,
                "delta": {"type": "text_delta", "text": text},
            },
        )

    def tool(self, delta: ToolCallDelta) -> bytes:
        out = self._start()
        index = self._tool_blocks.get(delta.index)
        if index is None:
            block = {
                "type": "tool_use",
                "id": delta.id or f"toolu_{delta.index}",
                "name": delta.name or "",
                "input": {},
            }
            out += self._open_block("tool_use", block)
            index = self._tool_blocks[delta.index] = self._block  # type: ignore[assignment]
        if delta.arguments:
            out += _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": delta.arguments},
                },
            )
        return out

    def end(self, resp: GatewayResponse) -> bytes:
        result = self.result or resp.result
        out = self._start()
        if self._blocks == 0:
            out += self._open_block("text", {"type": "text", "text": ""})
        out += self._close_block()
        usage = anthropic_usage(resp.result.usage or self.usage or _usage_of(resp))
        out += _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _anthropic_stop(result), "stop_sequence": None},
                "usage": usage,
            },
        )
        return out + _event("message_stop", {"type": "message_stop"})

    def error(self, exc: ApiError) -> bytes:
        kind = _ANTHROPIC_TYPES.get(exc.status, "api_error" if exc.status >= 500 else "invalid_request_error")
        return _event("error", {"type": "error", "error": {"type": kind, "message": exc.message}})


# --- running it ----------------------------------------------------------------------------


def warm_up() -> None:
    """Load before listening what the first request would otherwise wait for: the default tokenizer
    (o200k_base, 1-2 s on first use) and the price table (0.3-0.6 s)."""
    from app.core.pricing import price_call
    from app.core.tokens import count_text

    count_text("warm-up", "gpt-4o")
    price_call("gpt-4o-mini", provider="openai", input_tokens=1, output_tokens=1)


async def run_gateway(
    host: str,
    port: int,
    *,
    store_url: str | None = None,
    token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    on_ready: Callable[[GatewayServer, str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Open the store, start the engine and the server, serve until ``stop`` is set (or cancelled).

    ``on_ready(server, store_url)`` is called once the port is open (the URL hides any password).

    On the way out the server stops accepting, calls in flight finish, and the engine flushes
    its events to the store: nothing recorded is lost.
    """
    from storage.engine import open_store

    check_listen(host, token)
    store = await asyncio.to_thread(open_store, store_url)
    try:
        await asyncio.to_thread(warm_up)
        gateway = Gateway(store)
        await gateway.start()
        try:
            server = GatewayServer(gateway, token=token, max_body_bytes=max_body_bytes)
            await server.start(host, port)
            try:
                if on_ready is not None:
                    on_ready(server, store.url)
                if stop is None:
                    await asyncio.Event().wait()  # until cancelled
                else:
                    await stop.wait()
            finally:
                await server.stop()
        finally:
            await gateway.aclose()
    finally:
        store.close()
