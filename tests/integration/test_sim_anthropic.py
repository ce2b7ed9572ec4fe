"""The official anthropic SDK against the simulator: messages, the event stream, tools, errors and retries."""

from __future__ import annotations

import json

import anthropic
import httpx
import httpx2  # the anthropic SDK's HTTP client; a cut stream surfaces as its protocol error
import pytest

from app.sim import SimServer
from tests.integration import sim_fixtures

MODEL = (
    "claude-haiku-4-5"  # the SDK warns (an error under our pytest config) for claude-sonnet-4-5: deprecated
)
MESSAGES = [{"role": "user", "content": "Say something useful."}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

# Fixtures shared by the simulator tests.
anthropic_client = sim_fixtures.anthropic_client
sim = sim_fixtures.sim


def test_messages_create_has_the_documented_shape(
    anthropic_client: anthropic.Anthropic, sim: SimServer
) -> None:
    m = anthropic_client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    (block,) = m.content
    assert block.type == "text" and block.text
    assert m.usage.output_tokens > 0 and m.usage.input_tokens > 0
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0
    count = anthropic_client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert count.input_tokens == m.usage.input_tokens
    records = sim.served.records()
    assert [(r.endpoint, r.status) for r in records] == [("messages", 200), ("count_tokens", 200)]
    assert records[0].output_tokens == m.usage.output_tokens and records[0].cost_usd
    assert records[1].billed is False


def test_request_id_header_and_version_required(
    anthropic_client: anthropic.Anthropic, sim: SimServer
) -> None:
    raw = anthropic_client.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert raw.headers["request-id"].startswith("req_")
    r = httpx.post(
        sim.base_url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 10, "messages": MESSAGES},
        headers={"x-api-key": "sk-ant-test"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_stream_helper_text_stream_and_final_message(anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.stream(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Tell me [[sim:tokens=30]]"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens == 30
    assert final.stop_reason == "end_turn"


def test_event_stream_order_on_the_wire_includes_ping(
    anthropic_client: anthropic.Anthropic, sim: SimServer
) -> None:
    body = {"model": MODEL, "max_tokens": 50, "messages": MESSAGES, "stream": True}
    headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", sim.base_url + "/v1/messages", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in datas] == names  # every event's data names its type; no [DONE]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "ping" in names
    body_events = [n for n in names if n != "ping"]
    assert body_events[1] == "content_block_start" and body_events[-3] == "content_block_stop"
    assert set(body_events[2:-3]) == {"content_block_delta"}
    assert datas[0]["message"]["content"] == [] and datas[0]["message"]["usage"]["input_tokens"] > 0
    # The SDK drops pings and reads the same stream as typed events.
    events = list(
        anthropic_client.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES, stream=True)
    )
    assert [e.type for e in events] == body_events


def test_max_tokens_stops_with_max_tokens(anthropic_client: anthropic.Anthropic) -> None:
    m = anthropic_client.messages.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Long [[sim:tokens=50]]"}]
    )
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 4


def test_stop_sequences(anthropic_client: anthropic.Anthropic) -> None:
    m = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=50,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        stop_sequences=[" Paris"],
    )
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == " Paris"
    assert m.content[0].type == "text" and m.content[0].text == "The capital of France is"


def test_tool_use_then_answer_after_tool_result(anthropic_client: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "What's the weather in Oslo?"}]
    m = anthropic_client.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=ask)
    assert m.stop_reason == "tool_use"
    tool_uses = [b for b in m.content if b.type == "tool_use"]
    assert len(tool_uses) == 1
    use = tool_uses[0]
    assert use.name == "get_weather" and use.id.startswith("toolu_") and isinstance(use.input, dict)
    assert set(use.input) == {"city"}
    follow = [
        *ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "12 C"}]},
    ]
    m2 = anthropic_client.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL], messages=follow)
    assert m2.stop_reason == "end_turn" and m2.content[0].type == "text"


def test_streamed_tool_use_input_is_assembled(anthropic_client: anthropic.Anthropic) -> None:
    with anthropic_client.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "weather"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert set(use.input) == {"city"}


def test_structured_output_follows_the_schema(anthropic_client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["pos", "neg"]}}}
    m = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=MESSAGES,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert m.content[0].type == "text"
    assert json.loads(m.content[0].text)["label"] in ("pos", "neg")


def test_prompt_cache_writes_then_reads(anthropic_client: anthropic.Anthropic, sim: SimServer) -> None:
    system = [{"type": "text", "text": "Reference manual. " * 700, "cache_control": {"type": "ephemeral"}}]
    first = anthropic_client.messages.create(
        model=MODEL, max_tokens=20, system=system, messages=[{"role": "user", "content": "one"}]
    )
    second = anthropic_client.messages.create(
        model=MODEL, max_tokens=20, system=system, messages=[{"role": "user", "content": "two"}]
    )
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens >= 1024
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    # input_tokens excludes cache reads and writes; count_tokens gives the whole prompt.
    total = anthropic_client.messages.count_tokens(
        model=MODEL, system=system, messages=[{"role": "user", "content": "two"}]
    ).input_tokens
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == total
    records = sim.served.records(where=lambda r: r.endpoint == "messages")
    assert records[1].cache_read_tokens == second.usage.cache_read_input_tokens


def test_models_list(anthropic_client: anthropic.Anthropic) -> None:
    ids = [m.id for m in anthropic_client.models.list()]
    assert ids == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    assert anthropic_client.models.retrieve(MODEL).id == MODEL


# --- errors -----------------------------------------------------------------------------------------


def test_invalid_key_raises_authentication_error(sim: SimServer) -> None:
    client = anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="sk-ant-invalid-1", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    client.close()
    assert err.value.status_code == 401
    body = err.value.body
    assert (
        isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "authentication_error"
    )


def test_unknown_model_and_bad_request(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client.messages.create(model="missing-claude", max_tokens=10, messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        anthropic_client.messages.create(model=MODEL, max_tokens=0, messages=MESSAGES)


FAULT_CASES: dict[str, tuple[type[anthropic.APIStatusError], int, str]] = {
    "rate_limit": (anthropic.RateLimitError, 429, "rate_limit_error"),
    "server_error": (anthropic.InternalServerError, 500, "api_error"),
    "unavailable": (anthropic.ServiceUnavailableError, 503, "api_error"),
    "overloaded": (anthropic.OverloadedError, 529, "overloaded_error"),
    "quota_exceeded": (anthropic.BadRequestError, 400, "invalid_request_error"),
}


@pytest.mark.parametrize("fault", list(FAULT_CASES))
def test_injected_faults_raise_the_sdk_error_classes(
    anthropic_client: anthropic.Anthropic, sim: SimServer, fault: str
) -> None:
    error, status, error_type = FAULT_CASES[fault]
    sim.set_scenario({"name": f"always-{fault}", "defaults": {"faults": {fault: 1.0}}})
    with pytest.raises(error) as err:
        anthropic_client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert err.value.status_code == status
    body = err.value.body
    assert (
        isinstance(body, dict)
        and body["error"]["type"] == error_type
        and body["request_id"].startswith("req_")
    )
    if fault == "rate_limit":
        assert err.value.response.headers["retry-after"] == "1"
        assert err.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    if fault == "overloaded":
        assert isinstance(err.value, anthropic.InternalServerError)  # OverloadedError subclasses it


def test_sdk_retries_429_honouring_retry_after(sim: SimServer) -> None:
    sim.set_scenario({"name": "one-429", "sequence": ["rate_limit"], "fault_options": {"retry_after": 0.2}})
    client = anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="sk-ant-test", max_retries=2)
    m = client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    client.close()
    assert m.content
    records = sim.served.records(where=lambda r: r.endpoint == "messages")
    assert [r.status for r in records] == [429, 200]
    assert records[1].ts - records[1].duration_s - records[0].ts >= 0.18


def test_token_limit_sends_anthropic_ratelimit_headers(
    anthropic_client: anthropic.Anthropic, sim: SimServer
) -> None:
    sim.set_scenario(
        {"name": "tpm", "models": {MODEL: {"provider": "anthropic", "limits": {"rpm": 100, "tpm": 60}}}}
    )
    raw = anthropic_client.messages.with_raw_response.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    h = raw.headers
    assert (
        h["anthropic-ratelimit-requests-limit"] == "100"
        and h["anthropic-ratelimit-requests-remaining"] == "99"
    )
    assert h["anthropic-ratelimit-tokens-limit"] == "60"
    assert h["anthropic-ratelimit-tokens-reset"].endswith("Z")
    with pytest.raises(anthropic.RateLimitError) as err:
        for _ in range(5):
            anthropic_client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60  # whole seconds, as the real API sends
    assert "tokens per minute" in err.value.message


def test_stream_error_event_raises(anthropic_client: anthropic.Anthropic, sim: SimServer) -> None:
    sim.set_scenario({"name": "err", "defaults": {"faults": {"stream_error": 1.0}}})
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        anthropic_client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream,
    ):
        list(stream.text_stream)


def test_stream_cut_raises_and_bills_what_was_sent(
    anthropic_client: anthropic.Anthropic, sim: SimServer
) -> None:
    sim.set_scenario(
        {"name": "cut", "defaults": {"faults": {"stream_cut": 1.0}}, "fault_options": {"cut_after_chunks": 4}}
    )
    with (
        pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)),
        anthropic_client.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "[[sim:tokens=20]]"}]
        ) as stream,
    ):
        list(stream.text_stream)
    (record,) = sim_fixtures.served_records(sim, 1)
    assert record.fault == "stream_cut" and record.output_tokens == 4 and record.billed


def test_deprecated_model_warns_in_the_sdk_but_is_served(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.warns(DeprecationWarning):
        m = anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES)
    assert m.model == "claude-sonnet-4-5"
