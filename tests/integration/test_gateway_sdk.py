"""The official SDKs (openai, anthropic) through the gateway server, against the simulator.

The SDKs are the judges of the wire format: plain answers, streams (their own accumulators
must rebuild the message), tool calls, the models list, and every error in the shape and
status they expect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from app.gateway import control
from storage.queries.events import get_event
from tests.integration.test_gateway_server_fixtures import (  # noqa: F401 - fixtures
    SIM_KEY,
    GatewayThread,
    apply_text,
    config_text,
    gateway,
    sim,
    sim_key,
    store,
    wait_for,
)

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PARIS = "The capital of France is Paris."
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def oai(gateway: GatewayThread) -> Iterator[openai.OpenAI]:  # noqa: F811
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="not-a-provider-key", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def ant(gateway: GatewayThread) -> Iterator[anthropic.Anthropic]:  # noqa: F811
    client = anthropic.Anthropic(base_url=gateway.url, api_key="not-a-provider-key", max_retries=0)
    yield client
    client.close()


# --- OpenAI --------------------------------------------------------------------------------------


def test_openai_plain_answer_with_gateway_headers(oai: openai.OpenAI, gateway: GatewayThread) -> None:  # noqa: F811
    raw = oai.chat.completions.with_raw_response.create(model="default", messages=FRANCE)
    completion = raw.parse()
    assert completion.choices[0].message.content == PARIS
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-controlroom-target"] == "fast"
    assert raw.headers["x-controlroom-attempts"] == "1"
    assert raw.headers["x-controlroom-cache"] in ("miss", "off")
    assert "gateway;dur=" in raw.headers["server-timing"]
    # The request id is the event's: the store gets it once the writer flushes.
    event_id = raw.headers["x-request-id"]
    event = wait_for(lambda: get_event(gateway.store.engine, event_id), what="the event in the store")
    assert event.route == "default" and event.provider == "sim-openai" and event.failure.value == "none"


def test_openai_stream_rebuilds_the_answer_and_reports_usage(oai: openai.OpenAI) -> None:
    with oai.chat.completions.with_streaming_response.create(
        model="default", messages=FRANCE, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == PARIS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_streams_carry_the_gateway_headers(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    with oai.chat.completions.with_streaming_response.create(
        model="default", messages=FRANCE, stream=True
    ) as r:
        assert r.headers["x-controlroom-target"] == "fast"
        assert r.headers["x-controlroom-attempts"] == "1"
        assert r.headers["x-controlroom-cache"] in ("miss", "off")
        r.read()
    with ant.messages.with_streaming_response.create(
        model="claude", max_tokens=20, messages=FRANCE, stream=True
    ) as a:
        assert a.headers["x-controlroom-target"] == "strong"
        a.read()


def test_openai_stream_helper_accumulates_the_final_completion(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(model="claude", messages=FRANCE) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == PARIS
    assert final.choices[0].finish_reason == "stop"


def test_openai_tool_calls_plain_and_streamed(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    for route in ("default", "claude"):  # an OpenAI target, then an Anthropic one translated
        plain = oai.chat.completions.create(model=route, messages=messages, tools=[WEATHER_TOOL_OPENAI])
        call = plain.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        assert plain.choices[0].finish_reason == "tool_calls"
        with oai.chat.completions.stream(
            model=route, messages=messages, tools=[WEATHER_TOOL_OPENAI]
        ) as stream:
            final = stream.get_final_completion()
        streamed = final.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert streamed.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(streamed.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        assert final.choices[0].finish_reason == "tool_calls"


def test_openai_caller_to_an_anthropic_target(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "system", "content": "Be brief."}, *FRANCE], max_tokens=50
    )
    assert raw.parse().choices[0].message.content == PARIS
    assert raw.headers["x-controlroom-target"] == "strong"


def test_openai_models_list_names_routes_and_targets(oai: openai.OpenAI) -> None:
    ids = {m.id for m in oai.models.list()}
    assert {"default", "claude", "slow", "fast", "strong", "stuck"} <= ids


# --- Anthropic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["claude", "default"])
def test_anthropic_plain_answer(ant: anthropic.Anthropic, route: str) -> None:
    raw = ant.messages.with_raw_response.create(model=route, max_tokens=100, messages=FRANCE)
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == PARIS
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-controlroom-target"] == ("strong" if route == "claude" else "fast")


@pytest.mark.parametrize("route", ["claude", "default"])
def test_anthropic_stream_rebuilds_the_message(ant: anthropic.Anthropic, route: str) -> None:
    with ant.messages.stream(model=route, max_tokens=100, system="Be brief.", messages=FRANCE) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == PARIS
    assert final.content[0].type == "text" and final.content[0].text == PARIS
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


@pytest.mark.parametrize("route", ["claude", "default"])
def test_anthropic_tool_use_round_trip(ant: anthropic.Anthropic, route: str) -> None:
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = ant.messages.create(model=route, max_tokens=100, messages=ask, tools=[WEATHER_TOOL_ANTHROPIC])
    uses = [b for b in message.content if b.type == "tool_use"]
    assert message.stop_reason == "tool_use"
    assert uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}
    with ant.messages.stream(
        model=route, max_tokens=100, messages=ask, tools=[WEATHER_TOOL_ANTHROPIC]
    ) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert streamed[0].name == "get_weather" and streamed[0].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    # The tool's answer goes back as a tool_result block: translated for either target.
    follow: Any = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"}],
        },
    ]
    answer = ant.messages.create(model=route, max_tokens=100, messages=follow, tools=[WEATHER_TOOL_ANTHROPIC])
    assert answer.content and answer.content[0].type == "text"


def test_anthropic_system_blocks_and_models_list(ant: anthropic.Anthropic) -> None:
    message = ant.messages.create(
        model="claude",
        max_tokens=50,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=FRANCE,
    )
    assert message.content[0].text == PARIS  # type: ignore[union-attr]
    ids = {m.id for m in ant.models.list()}
    assert {"default", "claude", "fast", "strong"} <= ids


# --- errors, in each SDK's shape -----------------------------------------------------------------


def test_unknown_route_is_a_404_in_both_shapes(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    with pytest.raises(openai.NotFoundError) as o:
        oai.chat.completions.create(model="nope", messages=FRANCE)
    assert "no route or target called 'nope'" in o.value.message
    assert o.value.code == "model_not_found"
    with pytest.raises(anthropic.NotFoundError) as a:
        ant.messages.create(model="nope", max_tokens=10, messages=FRANCE)
    assert a.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_deadline_passed_is_a_504(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    with pytest.raises(openai.InternalServerError) as o:
        oai.chat.completions.create(model="slow", messages=FRANCE)
    assert o.value.status_code == 504
    assert o.value.code == "timeout" and "slow" in o.value.message
    with pytest.raises(anthropic.InternalServerError) as a:
        ant.messages.create(model="slow", max_tokens=10, messages=FRANCE)
    assert a.value.status_code == 504
    with pytest.raises(openai.InternalServerError) as s:
        oai.chat.completions.create(model="slow", messages=FRANCE, stream=True)
    assert s.value.status_code == 504


def test_every_breaker_open_is_a_503_with_a_clear_message(
    oai: openai.OpenAI,
    ant: anthropic.Anthropic,
    gateway: GatewayThread,  # noqa: F811
) -> None:
    for target in ("fast", "strong"):
        control.set_breaker(gateway.store, target, "open", reason="test: all open", actor="tests")

    def refused() -> openai.APIStatusError | None:
        try:
            oai.chat.completions.create(model="default", messages=FRANCE)
        except openai.APIStatusError as exc:
            return exc
        return None

    exc = wait_for(refused, what="the gateway to obey the forced breakers")
    assert exc.status_code == 503
    assert "open" in exc.message and "fast" in exc.message
    assert exc.body["code"] == "breaker_open"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as a:
        ant.messages.create(model="default", max_tokens=10, messages=FRANCE)
    assert a.value.status_code == 503
    assert a.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with (
        pytest.raises(anthropic.APIStatusError),
        ant.messages.stream(model="default", max_tokens=10, messages=FRANCE) as stream,
    ):
        stream.get_final_message()


def test_budget_block_is_a_429_the_sdk_does_not_retry(
    sim: Any,  # noqa: F811
    store: Any,  # noqa: F811
    sim_key: str,  # noqa: F811
) -> None:
    budget = """\
budgets:
  - name: tiny
    scope: {route: default}
    period: day
    limit_tokens: 5
    action: block
"""
    apply_text(store, config_text(sim, budget))
    with GatewayThread(store) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=2)
        try:

            def blocked() -> openai.RateLimitError | None:
                try:
                    client.chat.completions.create(model="default", messages=FRANCE)
                except openai.RateLimitError as exc:
                    return exc
                return None

            exc = wait_for(blocked, what="the budget to block")
            assert exc.response.headers["x-should-retry"] == "false"
            assert exc.body["type"] == "insufficient_quota"  # type: ignore[index]
            assert exc.body["code"] == "budget_blocked"  # type: ignore[index]
            assert "tiny" in exc.message
            before = len(sim.served)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="default", messages=FRANCE)
            assert len(sim.served) == before  # blocked before any provider call, and not retried
        finally:
            client.close()


def test_provider_keys_never_reach_clients_metrics_events_or_logs(
    sim: Any,  # noqa: F811
    store: Any,  # noqa: F811
    sim_key: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad_key = "sk-invalid-DoNotLeakEither-0123456789abcdef"
    monkeypatch.setenv("CONTROLROOM_TEST_BAD_KEY", bad_key)
    extra = """\
  - name: rejected
    rules:
      - chain: [badkey]
"""
    text = config_text(sim, extra).replace(
        "targets:\n",
        f"  - {{name: sim-bad, kind: openai, base_url: {sim.openai_base_url}, "
        "api_key: env:CONTROLROOM_TEST_BAD_KEY}\ntargets:\n"
        "  - {name: badkey, provider: sim-bad, model: gpt-4o-mini}\n",
    )
    apply_text(store, text)
    seen: list[str] = []
    caplog.set_level("DEBUG")
    with GatewayThread(store) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        try:
            ok = client.chat.completions.with_raw_response.create(model="default", messages=FRANCE)
            seen += [ok.http_response.text, json.dumps(dict(ok.headers))]
            with client.chat.completions.with_streaming_response.create(
                model="default", messages=FRANCE, stream=True
            ) as streamed:
                seen.append(streamed.read().decode())
            for route in ("rejected", "slow", "nope"):
                try:
                    client.chat.completions.create(model=route, messages=FRANCE)
                except openai.APIStatusError as exc:
                    seen += [exc.response.text, json.dumps(dict(exc.response.headers))]
            seen.append(httpx.get(gw.url + "/metrics").text)
            ids = [ok.headers["x-request-id"]]
            wait_for(lambda: all(get_event(store.engine, i) for i in ids), what="events written")
        finally:
            client.close()
    with store.engine.connect() as conn:
        seen += [json.dumps(list(map(str, row))) for row in conn.exec_driver_sql("SELECT * FROM events")]
        seen += [json.dumps(list(map(str, row))) for row in conn.exec_driver_sql("SELECT * FROM audit_log")]
    seen += [r.getMessage() for r in caplog.records]
    seen += [str(r.exc_info) for r in caplog.records if r.exc_info]
    everything = "\n".join(seen)
    assert len(everything) > 1000  # the corpus is really there
    assert SIM_KEY not in everything
    assert bad_key not in everything
    assert bad_key[:20] not in everything
