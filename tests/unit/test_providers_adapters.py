"""Each adapter alone, over httpx.MockTransport: requests built, answers parsed, failures classified.

The same adapters run against the real simulator over real sockets in
tests/integration/test_adapters_sim.py; here the transport lets one test
decide exactly which bytes, headers and faults come back.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.core.event import Failure
from app.providers import (
    AnthropicAdapter,
    ChatRequest,
    FinishReason,
    OpenAIAdapter,
    OpenAICompatibleAdapter,
    ProviderAdapter,
    ProviderError,
    SSEMessage,
    StreamDone,
    TextDelta,
    ToolCallDelta,
    UsageUpdate,
    make_adapter,
)
from tests.unit.test_providers_streams import anthropic_stream, openai_stream

KEY = "sk-test-0123456789abcdefSECRET"
ANT_KEY = "sk-ant-api03-0123456789abcdefSECRET"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def openai(handler: Handler, kind: str = "openai", **kw: Any) -> ProviderAdapter:
    return make_adapter(
        kind, "oa", "http://upstream.test/v1", KEY, transport=httpx.MockTransport(handler), **kw
    )


def anthropic(handler: Handler, **kw: Any) -> ProviderAdapter:
    return make_adapter(
        "anthropic", "ant", "http://upstream.test", ANT_KEY, transport=httpx.MockTransport(handler), **kw
    )


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def chunks(*parts: bytes, error: Exception | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if error is not None:
        raise error


REQ = ChatRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

OPENAI_OK = {
    "id": "chatcmpl-9",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 100,
        "completion_tokens": 30,
        "total_tokens": 130,
        "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    },
}

ANTHROPIC_OK = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 1000,
        "output_tokens": 40,
    },
}


# --- requests ------------------------------------------------------------------------------


def test_openai_request_body_and_no_key_in_what_build_request_returns() -> None:
    adapter = OpenAIAdapter("oa", "http://x/v1", KEY)
    req = ChatRequest(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        system="be brief",
        max_output_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=["\n"],
        tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        tool_choice="auto",
        response_format={"type": "json_object"},
        user="u1",
        metadata={"feature": "search"},
        extra={"seed": 7, "temperature": 0.3},
    )
    path, headers, body = adapter.build_request(req)
    assert path == "/chat/completions"
    assert KEY not in json.dumps([path, headers, body])
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert body["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"}}
    ]
    assert body["metadata"] == {"feature": "search"} and body["user"] == "u1"
    assert body["seed"] == 7 and body["temperature"] == 0.3  # extra wins
    assert "stream" not in body
    _, headers, body = adapter.build_request(req, stream=True)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert headers["accept"] == "text/event-stream"
    run(adapter.aclose())


def test_openai_compatible_sends_max_tokens_and_no_metadata() -> None:
    adapter = OpenAICompatibleAdapter("vllm", "http://x/v1", None)
    req = ChatRequest(model="llama", messages=[], max_output_tokens=9, metadata={"a": "b"})
    _, _, body = adapter.build_request(req)
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body and "metadata" not in body
    assert "authorization" not in adapter._client.headers
    run(adapter.aclose())


def test_anthropic_translates_an_openai_conversation() -> None:
    adapter = AnthropicAdapter("ant", "http://x", ANT_KEY)
    req = ChatRequest(
        model="claude-sonnet-4-5",
        system="sys A",
        messages=[
            {"role": "system", "content": "sys B"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://img.test/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "checking",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"q": 1}'}},
                    {"id": "c2", "type": "function", "function": {"name": "look", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "r1"},
            {"role": "tool", "tool_call_id": "c2", "content": "r2"},
        ],
        stop="END",
        tools=[{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "look"}},
        user="u9",
        metadata={"feature": "x"},
    )
    path, headers, body = adapter.build_request(req, stream=True)
    assert path == "/v1/messages" and headers == {"accept": "text/event-stream"}
    assert body["system"] == "sys A\n\nsys B"
    assert body["max_tokens"] == 4096  # required by the API; our documented default
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u9"}
    assert body["tools"] == [{"name": "look", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "tool", "name": "look"}
    assert body["stream"] is True
    user, assistant, results = body["messages"]
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert user["content"][2] == {"type": "image", "source": {"type": "url", "url": "https://img.test/a.png"}}
    assert assistant["content"] == [
        {"type": "text", "text": "checking"},
        {"type": "tool_use", "id": "c1", "name": "look", "input": {"q": 1}},
        {"type": "tool_use", "id": "c2", "name": "look", "input": {}},
    ]
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "r1"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "r2"},
        ],
    }
    assert (
        "x-api-key" in adapter._client.headers
        and adapter._client.headers["anthropic-version"] == "2023-06-01"
    )
    run(adapter.aclose())


def test_anthropic_plain_conversation_is_passed_without_copying() -> None:
    adapter = AnthropicAdapter("ant", "http://x", None)
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    _, _, body = adapter.build_request(ChatRequest(model="m", messages=messages, max_output_tokens=5))
    assert body["messages"] is messages and "system" not in body and body["max_tokens"] == 5
    run(adapter.aclose())


def test_anthropic_system_blocks_with_cache_control_stay_blocks() -> None:
    adapter = AnthropicAdapter("ant", "http://x", None)
    block = {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    _, _, body = adapter.build_request(
        ChatRequest(
            model="m", messages=[{"role": "system", "content": [block]}, {"role": "user", "content": "q"}]
        )
    )
    assert body["system"] == [block]
    run(adapter.aclose())


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "code_interpreter"}]}, "code_interpreter"),
        ({"messages": [{"role": "narrator", "content": "x"}]}, "narrator"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{not json"}}],
                    }
                ]
            },
            "not JSON",
        ),
    ],
)
def test_anthropic_refuses_what_it_cannot_express(change: dict[str, Any], needle: str) -> None:
    adapter = AnthropicAdapter("ant", "http://x", None)
    req = ChatRequest(model="m", messages=[{"role": "user", "content": "q"}])
    for k, v in change.items():
        setattr(req, k, v)
    with pytest.raises(ProviderError, match=needle) as info:
        adapter.build_request(req)
    assert info.value.failure is Failure.CLIENT_ERROR and not info.value.retryable
    run(adapter.aclose())


# --- answers ---------------------------------------------------------------------------------


def test_openai_chat_parses_usage_headers_and_sends_the_key() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json=OPENAI_OK,
            headers={
                "x-request-id": "req_1",
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-remaining-tokens": "9000",
                "x-ratelimit-reset-tokens": "6m0s",
            },
        )

    async def go() -> None:
        async with openai(handler) as adapter:
            result = await adapter.chat(REQ)
            assert result.text == "Hello!" and result.finish_reason is FinishReason.STOP
            assert result.response_model == "gpt-4o-mini-2024-07-18" and result.response_id == "chatcmpl-9"
            u = result.usage
            assert u is not None
            assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.reasoning_tokens) == (
                100,
                30,
                64,
                12,
            )
            assert u.uncached_input_tokens == 36
            assert result.request_id == "req_1" and result.status_code == 200
            assert result.latency_ms is not None and result.latency_ms >= 0 and result.ttft_ms is None
            assert result.raw == OPENAI_OK
            rl = result.rate_limits
            assert rl is not None and rl.requests is not None and rl.tokens is not None
            assert (rl.requests.limit, rl.requests.remaining, rl.requests.reset_s) == (500, 499, 0.12)
            assert (rl.tokens.remaining, rl.tokens.reset_s) == (9000, 360.0)
        request = seen[0]
        assert str(request.url) == "http://upstream.test/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert json.loads(request.content)["model"] == "gpt-4o-mini"

    run(go())


def test_anthropic_chat_normalises_usage_to_total_input() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ANTHROPIC_OK, headers={"request-id": "req_a"})

    async def go() -> None:
        async with anthropic(handler) as adapter:
            result = await adapter.chat(
                ChatRequest(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "q"}])
            )
            assert result.text == "Let me look."
            assert [(c.id, c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
                ("toolu_1", "lookup", {"q": "x"})
            ]
            assert (
                result.finish_reason is FinishReason.TOOL_CALLS and result.native_finish_reason == "tool_use"
            )
            u = result.usage
            assert u is not None
            assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.output_tokens) == (
                1210,
                1000,
                200,
                40,
            )
            assert u.uncached_input_tokens == 10
            assert result.request_id == "req_a"
        assert str(seen[0].url) == "http://upstream.test/v1/messages"
        assert seen[0].headers["x-api-key"] == ANT_KEY

    run(go())


def test_openai_compatible_answer_without_usage_has_none_not_zero() -> None:
    body = {**OPENAI_OK}
    del body["usage"]

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    async def go() -> None:
        async with openai(handler, kind="openai_compatible") as adapter:
            assert (await adapter.chat(REQ)).usage is None

    run(go())


# --- failures ----------------------------------------------------------------------------------


def _err(kind: str, message: str, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "failure", "retry_after", "error_type"),
    [
        (
            429,
            _err("requests", "Rate limit reached", "rate_limit_exceeded"),
            {"retry-after": "3"},
            Failure.RATE_LIMITED,
            3.0,
            "requests",
        ),
        (
            429,
            _err("tokens", "slow", "rate_limit_exceeded"),
            {"retry-after-ms": "250", "retry-after": "9"},
            Failure.RATE_LIMITED,
            0.25,
            "tokens",
        ),
        (
            429,
            _err("insufficient_quota", "You exceeded your quota", "insufficient_quota"),
            {},
            Failure.CLIENT_ERROR,
            None,
            "insufficient_quota",
        ),
        (
            401,
            _err("invalid_request_error", "Incorrect API key", "invalid_api_key"),
            {},
            Failure.CLIENT_ERROR,
            None,
            "invalid_request_error",
        ),
        (
            404,
            _err("invalid_request_error", "no such model", "model_not_found"),
            {},
            Failure.CLIENT_ERROR,
            None,
            "invalid_request_error",
        ),
        (400, _err("invalid_request_error", "bad"), {}, Failure.CLIENT_ERROR, None, "invalid_request_error"),
        (408, b"", {}, Failure.TIMEOUT, None, None),
        (500, _err("server_error", "boom"), {}, Failure.SERVER_ERROR, None, "server_error"),
        (
            502,
            b"<html><body>Bad gateway</body></html>",
            {"content-type": "text/html"},
            Failure.SERVER_ERROR,
            None,
            None,
        ),
        (
            503,
            _err("server_error", "overloaded"),
            {"retry-after": "1"},
            Failure.OVERLOADED,
            1.0,
            "server_error",
        ),
        (404, {"error": "model 'llama9' not found"}, {}, Failure.CLIENT_ERROR, None, None),  # Ollama's shape
    ],
)
def test_openai_http_errors_are_classified(  # noqa: PLR0917 (one row of the table above)
    status: int,
    body: Any,
    headers: dict[str, str],
    failure: Failure,
    retry_after: float | None,
    error_type: str | None,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers={**headers, "x-request-id": "req_e"})

    async def go() -> ProviderError:
        async with openai(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                await adapter.chat(REQ)
            return info.value

    err = run(go())
    assert err.failure is failure
    assert err.status_code == status
    assert err.retry_after_s == retry_after
    assert err.error_type == error_type
    assert err.provider == "oa"
    assert err.retryable is failure.retryable
    if isinstance(body, dict) and isinstance(body["error"], dict):
        assert body["error"]["message"] in err.message
        assert err.request_id == "req_e"
    if status == 502:
        assert "Bad gateway" in err.message


@pytest.mark.parametrize(
    ("status", "kind", "failure"),
    [
        (400, "invalid_request_error", Failure.CLIENT_ERROR),
        (401, "authentication_error", Failure.CLIENT_ERROR),
        (403, "permission_error", Failure.CLIENT_ERROR),
        (404, "not_found_error", Failure.CLIENT_ERROR),
        (413, "request_too_large", Failure.CLIENT_ERROR),
        (429, "rate_limit_error", Failure.RATE_LIMITED),
        (500, "api_error", Failure.SERVER_ERROR),
        (529, "overloaded_error", Failure.OVERLOADED),
    ],
)
def test_anthropic_http_errors_are_classified(status: int, kind: str, failure: Failure) -> None:
    body = {"type": "error", "error": {"type": kind, "message": f"about {kind}"}, "request_id": "req_x"}

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"request-id": "req_x", "retry-after": "7"})

    async def go() -> ProviderError:
        async with anthropic(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                await adapter.chat(REQ)
            return info.value

    err = run(go())
    assert (err.failure, err.status_code, err.error_type, err.request_id) == (failure, status, kind, "req_x")
    assert err.retry_after_s == 7.0
    assert f"about {kind}" in str(err)


def test_x_should_retry_false_vetoes_a_retry() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json=_err("server_error", "no"), headers={"x-should-retry": "false"})

    async def go() -> ProviderError:
        async with openai(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                await adapter.chat(REQ)
            return info.value

    err = run(go())
    assert err.failure is Failure.SERVER_ERROR and err.should_retry is False and not err.retryable


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), Failure.CONNECTION_ERROR),
        (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]"), Failure.CONNECTION_ERROR),
        (httpx.ReadError("Connection reset by peer"), Failure.CONNECTION_ERROR),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            Failure.CONNECTION_ERROR,
        ),
        (httpx.ConnectTimeout("timed out"), Failure.TIMEOUT),
        (httpx.ReadTimeout("timed out"), Failure.TIMEOUT),
        (httpx.PoolTimeout("no connection"), Failure.TIMEOUT),
    ],
)
def test_transport_failures_are_classified(exc: Exception, failure: Failure) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async def go() -> ProviderError:
        async with openai(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                await adapter.chat(REQ)
            return info.value

    err = run(go())
    assert err.failure is failure
    assert err.status_code is None
    assert type(exc).__name__ in err.message and "upstream.test" in err.message


@pytest.mark.parametrize(
    ("content", "ctype", "needle"),
    [
        (b"<html>maintenance</html>", "text/html", "content-type 'text/html'"),
        (b'{"choices": [', "application/json", "not valid JSON"),
        (b'{"object": "chat.completion"}', "application/json", "no choices"),
        (b'{"choices": [{"index": 0, "message": "hi"}]}', "application/json", "no message object"),
        (
            b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": -3}}',
            "application/json",
            "prompt_tokens",
        ),
    ],
)
def test_a_200_that_is_not_the_promised_json_is_a_clear_server_error(
    content: bytes, ctype: str, needle: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content, headers={"content-type": ctype, "x-request-id": "req_b"})

    async def go() -> ProviderError:
        async with openai(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                await adapter.chat(REQ)
            return info.value

    err = run(go())
    assert err.failure is Failure.SERVER_ERROR and err.error_type == "invalid_response"
    assert needle in err.message
    assert err.status_code == 200 and err.request_id == "req_b" and err.provider == "oa"


def test_an_error_object_in_a_200_body_is_classified() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_err("rate_limit_error", "later"))

    async def go() -> ProviderError:
        async with openai(handler, kind="openai_compatible") as adapter:
            with pytest.raises(ProviderError) as info:
                await adapter.chat(REQ)
            return info.value

    assert run(go()).failure is Failure.RATE_LIMITED


def test_per_call_timeouts_override_the_adapter_defaults() -> None:
    seen: list[dict[str, float | None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=OPENAI_OK)

    async def go() -> None:
        async with openai(handler, connect_timeout=2.0, read_timeout=30.0) as adapter:
            await adapter.chat(REQ)
            await adapter.chat(REQ, read_timeout=0.5)
            async with adapter.stream(REQ, connect_timeout=0.25) as s:
                [e async for e in s]

    run(go())
    assert seen[0] == {"connect": 2.0, "read": 30.0, "write": 30.0, "pool": None}
    assert seen[1] == {"connect": 2.0, "read": 0.5, "write": 0.5, "pool": None}
    assert seen[2]["connect"] == 0.25 and seen[2]["read"] == 30.0


# --- streams ----------------------------------------------------------------------------------------


def _sse_response(
    data: bytes, *, size: int = 7, error: Exception | None = None, **headers: str
) -> httpx.Response:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream; charset=utf-8", **headers},
        content=chunks(*parts, error=error),
    )


def test_openai_stream_yields_deltas_then_done_with_timing() -> None:
    stream = openai_stream(["Hel", "lo", " there"], [("lookup", ['{"a"', ": 1}"])], usage=(50, 9, 32, 4))

    async def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return _sse_response(stream.data, **{"x-request-id": "req_s", "x-ratelimit-remaining-requests": "5"})

    async def go() -> None:
        async with openai(handler) as adapter, adapter.stream(REQ) as s:
            assert s.status_code == 200 and s.request_id == "req_s"
            events = [e async for e in s]
            assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo", " there"]
            calls = [e for e in events if isinstance(e, ToolCallDelta)]
            assert calls[0].name == "lookup" and "".join(c.arguments for c in calls) == '{"a": 1}'
            assert isinstance(events[-2], UsageUpdate) and isinstance(events[-1], StreamDone)
            result = events[-1].result
            assert s.result is result
            assert result.text == "Hello there" and result.finish_reason is FinishReason.TOOL_CALLS
            assert (
                result.usage is not None
                and result.usage.reasoning_tokens == 4
                and result.usage.cache_read_tokens == 32
            )
            assert result.ttft_ms is not None and result.latency_ms is not None
            assert 0 <= result.ttft_ms <= result.latency_ms
            assert result.request_id == "req_s" and result.status_code == 200
            assert result.rate_limits is not None and result.rate_limits.requests is not None
            assert result.rate_limits.requests.remaining == 5

    run(go())


def test_anthropic_stream_with_passthrough_and_pings() -> None:
    stream = anthropic_stream(["A", "B"], pings=True, unknown=True, thinking=True)

    async def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(stream.data, size=3, **{"request-id": "req_t"})

    async def go() -> None:
        async with anthropic(handler) as adapter:
            events = [e async for e in adapter.stream(REQ, passthrough=True)]
        raw = [e for e in events if isinstance(e, SSEMessage)]
        assert "ping" in {e.event for e in raw} and "future_event" in {e.event for e in raw}
        assert raw[0].event == "message_start" and raw[-1].event == "message_stop"
        done = events[-1]
        assert isinstance(done, StreamDone)
        assert done.result.text == "AB" and done.result.request_id == "req_t"
        assert done.result.usage is not None and done.result.usage.input_tokens == 55

    run(go())


def test_a_stream_refused_with_429_fails_on_entry_before_any_event() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            json={"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
            headers={"retry-after": "2", "anthropic-ratelimit-requests-remaining": "0"},
        )

    async def go() -> None:
        async with anthropic(handler) as adapter:
            stream = adapter.stream(REQ)
            with pytest.raises(ProviderError) as info:
                async with stream:
                    pytest.fail("entered a refused stream")
            err = info.value
            assert err.failure is Failure.RATE_LIMITED and err.retry_after_s == 2.0 and err.status_code == 429
            assert err.rate_limits is not None and err.rate_limits.requests is not None
            assert err.rate_limits.requests.remaining == 0

    run(go())


def test_a_connection_reset_mid_stream_keeps_the_partial_answer() -> None:
    stream = anthropic_stream(["one ", "two ", "three"])
    cut = stream.data[: stream.data.index(b"three")]

    async def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(cut, error=httpx.ReadError("Connection reset by peer"))

    async def go() -> ProviderError:
        got: list[str] = []
        async with anthropic(handler) as adapter, adapter.stream(REQ) as s:
            with pytest.raises(ProviderError) as info:
                async for event in s:
                    if isinstance(event, TextDelta):
                        got.append(event.text)
            assert got == ["one ", "two "]
            assert s.ttft_ms is not None
            return info.value

    err = run(go())
    assert err.failure is Failure.CONNECTION_ERROR and err.status_code == 200
    assert err.partial is not None and err.partial.text == "one two "
    assert err.partial.usage is not None and err.partial.usage.input_tokens == 55  # billed input is known
    assert err.partial.produced_output


def test_a_stream_that_just_stops_is_truncated() -> None:
    stream = openai_stream(["a", "b"], done=False, usage=None)

    async def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(stream.data)

    async def go() -> ProviderError:
        async with openai(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                [e async for e in adapter.stream(REQ)]
            return info.value

    err = run(go())
    assert err.failure is Failure.CONNECTION_ERROR and err.error_type == "stream_truncated"
    assert "[DONE]" in str(err) and err.partial is not None and err.partial.text == "ab"


def test_a_read_timeout_mid_stream_is_a_timeout_with_partial() -> None:
    stream = openai_stream(["slow"], done=False, usage=None)

    async def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(stream.data, error=httpx.ReadTimeout("idle"))

    async def go() -> ProviderError:
        async with openai(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                [e async for e in adapter.stream(REQ)]
            return info.value

    err = run(go())
    assert err.failure is Failure.TIMEOUT and err.partial is not None and err.partial.text == "slow"


def test_a_stream_answered_with_plain_json_still_works() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=OPENAI_OK)

    async def go() -> None:
        async with openai(handler, kind="openai_compatible") as adapter:
            events = [e async for e in adapter.stream(REQ)]
        assert [type(e) for e in events] == [TextDelta, UsageUpdate, StreamDone]
        assert isinstance(events[-1], StreamDone) and events[-1].result.text == "Hello!"
        assert events[-1].result.ttft_ms is not None

    run(go())


def test_a_stream_answered_with_html_is_a_clear_error() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>login</html>", headers={"content-type": "text/html"})

    async def go() -> ProviderError:
        async with openai(handler) as adapter:
            with pytest.raises(ProviderError) as info:
                [e async for e in adapter.stream(REQ)]
            return info.value

    err = run(go())
    assert (
        err.failure is Failure.SERVER_ERROR and "text/event-stream" in err.message and "login" in err.message
    )


def test_leaving_a_stream_early_releases_the_connection() -> None:
    closed: list[bool] = []
    stream = openai_stream([f"w{i} " for i in range(50)])

    async def body() -> AsyncIterator[bytes]:
        try:
            for i in range(0, len(stream.data), 40):
                yield stream.data[i : i + 40]
        finally:
            closed.append(True)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    async def go() -> None:
        async with openai(handler) as adapter:
            async with adapter.stream(REQ) as s:
                async for event in s:
                    if isinstance(event, TextDelta):
                        break
            assert s.result is None

    run(go())
    assert closed == [True]


# --- secrets ----------------------------------------------------------------------------------------


def test_the_key_never_appears_in_reprs_or_errors() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            raise httpx.ConnectError(f"could not connect with {request.headers['authorization']}")
        return httpx.Response(
            401, json=_err("invalid_request_error", f"Incorrect API key provided: {KEY}.", "invalid_api_key")
        )

    async def go() -> list[str]:
        texts: list[str] = []
        adapter = make_adapter(
            "openai",
            "oa",
            "http://user:pw-secret@upstream.test/v1",
            KEY,
            extra_headers={"x-custom-auth": "custom-secret-value"},
            transport=httpx.MockTransport(handler),
        )
        async with adapter:
            texts += [str(adapter), repr(adapter), repr(adapter.stream(REQ))]
            for call in (adapter.chat(REQ), adapter.list_models()):
                with pytest.raises(ProviderError) as info:
                    await call
                texts += [str(info.value), repr(info.value), info.value.message, *map(str, info.value.args)]
        return texts

    texts = run(go())
    for text in texts:
        for secret in (KEY, "sk-test-0123", "pw-secret", "dXNlcjpwdy1zZWNyZXQ", "custom-secret-value"):
            assert secret not in text, text
    assert any("Incorrect API key provided: ***" in t for t in texts)


# --- tokens and models --------------------------------------------------------------------------------


def test_openai_token_count_is_exact_for_openai_models_and_labelled_otherwise() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("counting must not call the network")

    async def go() -> None:
        async with openai(handler) as adapter:
            exact = await adapter.count_tokens(REQ)
            assert not exact.estimate and exact.tokens > 3
            other = await adapter.count_tokens(ChatRequest(model="llama-3-70b", messages=REQ.messages))
            assert other.estimate

    run(go())


def test_anthropic_token_count_uses_the_endpoint_and_falls_back_to_an_estimate() -> None:
    bodies: list[dict[str, Any]] = []
    status = [200]

    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages/count_tokens"
        bodies.append(json.loads(request.content))
        if status[0] != 200:
            return httpx.Response(
                status[0], json={"type": "error", "error": {"type": "api_error", "message": "x"}}
            )
        return httpx.Response(200, json={"input_tokens": 1234})

    async def go() -> None:
        req = ChatRequest(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello"}], system="s"
        )
        async with anthropic(handler) as adapter:
            exact = await adapter.count_tokens(req)
            assert (exact.tokens, exact.estimate) == (1234, False)
            status[0] = 500
            fallback = await adapter.count_tokens(req)
            assert fallback.estimate and 0 < fallback.tokens < 100
        assert set(bodies[0]) == {"model", "messages", "system"}

    run(go())


def test_list_models() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if (
            request.url.path == "/v1/models"
            and request.url.host == "upstream.test"
            and "limit" not in request.url.params
        ):
            return httpx.Response(
                200, json={"object": "list", "data": [{"id": "gpt-4o", "object": "model"}, {"id": "o3"}]}
            )
        after = request.url.params.get("after_id")
        if after is None:
            return httpx.Response(
                200,
                json={"data": [{"id": "claude-a", "type": "model"}], "has_more": True, "last_id": "claude-a"},
            )
        return httpx.Response(
            200,
            json={"data": [{"id": "claude-b", "type": "model"}], "has_more": False, "last_id": "claude-b"},
        )

    async def go() -> None:
        async with openai(handler) as oa:
            assert await oa.list_models() == ["gpt-4o", "o3"]
        async with anthropic(handler) as ant:
            assert await ant.list_models() == ["claude-a", "claude-b"]

    run(go())


def test_make_adapter_knows_the_three_kinds() -> None:
    made = [
        make_adapter("openai", "a", "http://x/v1"),
        make_adapter("openai_compatible", "b", "http://x/v1"),
        make_adapter("anthropic", "c", "http://x"),
    ]
    assert [type(a) for a in made] == [OpenAIAdapter, OpenAICompatibleAdapter, AnthropicAdapter]
    for adapter in made:
        run(adapter.aclose())
    with pytest.raises(
        ValueError, match="unknown provider kind 'gemini'; use one of openai, openai_compatible, anthropic"
    ):
        make_adapter("gemini", "d", "http://x")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("upstream.test/v1", "http(s) URL"),
        ("ftp://upstream.test", "http(s) URL"),
        ("https://upstream.test/v1?key=qs-secret", "query string"),
    ],
)
def test_a_base_url_that_cannot_work_is_refused_without_echoing_secrets(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)) as info:
        make_adapter("openai", "oa", url, KEY)
    assert "qs-secret" not in str(info.value)
