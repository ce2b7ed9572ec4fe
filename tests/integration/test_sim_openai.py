"""The official openai SDK against the simulator: every shape it parses and every error class it raises."""

from __future__ import annotations

import itertools
import json

import httpx
import openai
import pytest

from app.core.tokens import count_messages, count_text
from app.sim import SimServer
from tests.integration import sim_fixtures

MESSAGES = [{"role": "user", "content": "Say something useful."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}

# Fixtures shared by the simulator tests.
openai_client = sim_fixtures.openai_client
sim = sim_fixtures.sim


def test_chat_plain_has_the_documented_shape_and_real_token_counts(
    openai_client: openai.OpenAI, sim: SimServer
) -> None:
    r = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert r.usage is not None
    assert r.usage.prompt_tokens == count_messages(MESSAGES, "gpt-4o-mini").tokens
    assert r.usage.completion_tokens == count_text(choice.message.content, "gpt-4o-mini").tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 0
    (record,) = sim.served.records()
    assert (record.endpoint, record.status, record.model, record.billed) == (
        "chat.completions",
        200,
        "gpt-4o-mini",
        True,
    )
    assert record.input_tokens == r.usage.prompt_tokens and record.output_tokens == r.usage.completion_tokens
    assert record.cost_usd is not None and record.cost_usd > 0


def test_raw_response_carries_request_id_header(openai_client: openai.OpenAI) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["content-type"].startswith("application/json")


def test_stream_with_include_usage_ends_with_a_usage_chunk(openai_client: openai.OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == count_text(text, "gpt-4o-mini").tokens
    assert all(c.usage is None for c in chunks[:-1])
    plain = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert plain.choices[0].message.content == text  # the same prompt gets the same answer


def test_stream_helper_gives_the_final_completion(openai_client: openai.OpenAI) -> None:
    with openai_client.chat.completions.stream(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello [[sim:tokens=12]]"}]
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content
    assert final.usage is None or final.usage.completion_tokens == 12
    assert count_text(final.choices[0].message.content or "", "gpt-4o").tokens == 12


def test_tool_call_then_answer_after_the_tool_result(openai_client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = openai_client.chat.completions.create(model="gpt-4o", messages=ask, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("c", "f")
    follow = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    r2 = openai_client.chat.completions.create(model="gpt-4o", messages=follow, tools=[WEATHER_TOOL])
    assert r2.choices[0].finish_reason == "stop" and r2.choices[0].message.content


def test_streamed_tool_call_is_assembled_by_the_helper(openai_client: openai.OpenAI) -> None:
    with openai_client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert set(json.loads(call.function.arguments)) == {"city", "unit"}


def test_n_gives_distinct_choices_and_summed_usage(openai_client: openai.OpenAI) -> None:
    r = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    texts = [c.message.content or "" for c in r.choices]
    assert texts[0] != texts[1]
    assert r.usage is not None
    assert r.usage.completion_tokens == sum(count_text(t, "gpt-4o-mini").tokens for t in texts)
    stream = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=2, stream=True)
    streamed = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == texts


def test_max_tokens_truncates_with_finish_reason_length(openai_client: openai.OpenAI) -> None:
    r = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Long please [[sim:tokens=80]]"}],
        max_tokens=5,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_json_mode_and_json_schema_answers_parse(openai_client: openai.OpenAI) -> None:
    r = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
    }
    r = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": 'Extract [[sim:echo]] {"name": "Ada"}'}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    obj = json.loads(r.choices[0].message.content or "")
    assert obj["name"] == "Ada" and 0 <= obj["age"] <= 120


def test_answer_rules_and_echo(openai_client: openai.OpenAI, sim: SimServer) -> None:
    r = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert r.choices[0].message.content == "The capital of France is Paris."
    r = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": 'Fill the template [[sim:echo]] {"city": "Oslo", "n": 3}'}],
    )
    assert json.loads(r.choices[0].message.content or "") == {"city": "Oslo", "n": 3}
    sim.set_scenario(
        {
            "name": "refuser",
            "answers": {"rules": [{"match": "(?i)forbidden", "refusal": "I can't help with that."}]},
        }
    )
    r = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "forbidden"}]
    )
    assert r.choices[0].message.refusal == "I can't help with that." and r.choices[0].message.content is None


def test_stop_sequence_cuts_the_answer(openai_client: openai.OpenAI) -> None:
    r = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        stop=[" Paris"],
    )
    assert r.choices[0].message.content == "The capital of France is"
    assert r.choices[0].finish_reason == "stop"


def test_models_list_and_retrieve(openai_client: openai.OpenAI) -> None:
    ids = [m.id for m in openai_client.models.list()]
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= set(ids)
    assert "claude-haiku-4-5" not in ids
    assert openai_client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("missing-model")


def test_embeddings_float_and_base64_agree(openai_client: openai.OpenAI) -> None:
    b64 = openai_client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"]
    )  # SDK asks base64
    flt = openai_client.embeddings.create(
        model="text-embedding-3-small", input=["alpha"], encoding_format="float"
    )
    assert [d.index for d in b64.data] == [0, 1]
    assert len(b64.data[0].embedding) == 1536
    assert b64.data[0].embedding == pytest.approx(flt.data[0].embedding, rel=1e-6)
    assert b64.data[0].embedding != b64.data[1].embedding
    assert abs(sum(x * x for x in flt.data[0].embedding) - 1.0) < 1e-4
    expected = sum(count_text(t, "text-embedding-3-small").tokens for t in ("alpha", "beta"))
    assert b64.usage.prompt_tokens == b64.usage.total_tokens == expected
    small = openai_client.embeddings.create(model="text-embedding-3-large", input="x", dimensions=64)
    assert len(small.data[0].embedding) == 64


def test_prompt_cache_reports_cached_tokens_on_a_repeated_prefix(openai_client: openai.OpenAI) -> None:
    long_system = {"role": "system", "content": "You are a careful assistant. " * 300}
    first = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[long_system, {"role": "user", "content": "one"}]
    )
    second = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[long_system, {"role": "user", "content": "two"}]
    )
    assert (
        first.usage
        and first.usage.prompt_tokens_details
        and first.usage.prompt_tokens_details.cached_tokens == 0
    )
    assert second.usage and second.usage.prompt_tokens_details
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= 1024 and cached % 128 == 0 and cached < second.usage.prompt_tokens


# --- errors -----------------------------------------------------------------------------------------


def test_invalid_key_raises_authentication_error(sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-invalid-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 401
    assert err.value.code == "invalid_api_key"
    assert "sk-invalid-123" not in str(err.value.body)
    client.close()


def test_unknown_model_raises_not_found(openai_client: openai.OpenAI, sim: SimServer) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.chat.completions.create(model="missing-gpt", messages=MESSAGES)
    assert err.value.code == "model_not_found"
    # Any other name is accepted with default behaviour, unless the scenario rejects unknown models.
    assert openai_client.chat.completions.create(model="my-finetune", messages=MESSAGES).choices
    sim.set_scenario({"name": "strict", "unknown_models": "reject", "models": {"gpt-4o-mini": {}}})
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="my-finetune", messages=MESSAGES)


def test_bad_request_raises_bad_request_error(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert err.value.param == "messages"


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("rate_limit", openai.RateLimitError, 429),
        ("quota_exceeded", openai.RateLimitError, 429),
        ("server_error", openai.InternalServerError, 500),
        ("unavailable", openai.APIStatusError, 503),
        ("overloaded", openai.APIStatusError, 503),
    ],
)
def test_injected_faults_raise_the_sdk_error_classes(
    openai_client: openai.OpenAI, sim: SimServer, fault: str, error: type[openai.APIStatusError], status: int
) -> None:
    sim.set_scenario({"name": f"always-{fault}", "defaults": {"faults": {fault: 1.0}}})
    with pytest.raises(error) as err:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == status
    body = err.value.body
    assert isinstance(body, dict) and {"message", "type", "param", "code"} <= set(body)
    if fault == "rate_limit":
        assert err.value.code == "rate_limit_exceeded"
        assert float(err.value.response.headers["retry-after"]) == 1.0
        assert err.value.response.headers["retry-after-ms"] == "1000"
        assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert err.value.response.headers["x-ratelimit-reset-requests"] == "1s"
    if fault == "quota_exceeded":
        assert err.value.code == "insufficient_quota"
    assert sim.served.records()[-1].billed is False


def test_sdk_retries_429_honouring_retry_after(sim: SimServer) -> None:
    sim.set_scenario(
        {"name": "two-429s", "sequence": ["rate_limit", "rate_limit"], "fault_options": {"retry_after": 0.2}}
    )
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=2)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.close()
    assert r.choices[0].message.content
    records = sim.served.records(where=lambda x: x.endpoint == "chat.completions")
    assert [x.status for x in records] == [429, 429, 200]
    # The SDK waited for the announced 0.2 s before each retry (a lower bound, not a speed figure).
    gaps = [b.ts - b.duration_s - a.ts for a, b in itertools.pairwise(records)]
    assert all(g >= 0.18 for g in gaps), gaps


def test_sdk_gives_up_after_max_retries(sim: SimServer) -> None:
    sim.set_scenario(
        {"name": "down", "defaults": {"faults": {"server_error": 1.0}}, "fault_options": {"retry_after": 0}}
    )
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=1)
    with pytest.raises(openai.InternalServerError):
        client.with_options(timeout=5).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.close()
    assert sim.served.count(endpoint="chat.completions", status=500) == 2


def test_rpm_limit_answers_429_with_real_rate_limit_headers(
    openai_client: openai.OpenAI, sim: SimServer
) -> None:
    sim.set_scenario(
        {"name": "tight", "models": {"gpt-4o-mini": {"provider": "openai", "limits": {"rpm": 3}}}}
    )
    raw = openai_client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as err:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    headers = err.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < float(headers["retry-after-ms"]) / 1000 <= 20.0  # one request refills in 60/3 s
    assert "requests per min" in err.value.message


def test_spoiled_bodies_break_the_sdk_parser(openai_client: openai.OpenAI, sim: SimServer) -> None:
    sim.set_scenario({"name": "spoiled", "defaults": {"faults": {"malformed_json": 1.0}}})
    with pytest.raises(json.JSONDecodeError):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    sim.set_scenario({"name": "html", "defaults": {"faults": {"wrong_content_type": 1.0}}})
    raw = httpx.post(
        sim.openai_base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"Authorization": "Bearer sk-test"},
    )
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/html")
    # Both were billed: the model did the work, the transport spoiled it.
    assert [r.billed for r in sim.served.records()] == [True, True]


def test_stream_cut_raises_a_connection_error_and_bills_what_was_sent(
    openai_client: openai.OpenAI, sim: SimServer
) -> None:
    sim.set_scenario(
        {"name": "cut", "defaults": {"faults": {"stream_cut": 1.0}}, "fault_options": {"cut_after_chunks": 3}}
    )
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x [[sim:tokens=30]]"}], stream=True
        ):
            got.extend(c.delta.content or "" for c in chunk.choices)
    (record,) = sim_fixtures.served_records(sim, 1)
    assert record.fault == "stream_cut" and record.billed and record.output_tokens == 3
    assert len([g for g in got if g]) == 3


def test_stream_error_event_raises_api_error(openai_client: openai.OpenAI, sim: SimServer) -> None:
    sim.set_scenario({"name": "err", "defaults": {"faults": {"stream_error": 1.0}}})
    with pytest.raises(openai.APIError, match="server had an error"):
        list(openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))


def test_hang_times_out_the_client(openai_client: openai.OpenAI, sim: SimServer) -> None:
    with pytest.raises(openai.APITimeoutError):
        openai_client.with_options(timeout=0.3).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-sim-fault": "hang"}
        )
    (record,) = sim.served.records()
    assert record.fault == "hang" and record.status == 0 and not record.billed
