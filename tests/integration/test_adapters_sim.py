"""Our adapters against the real simulator (app.sim) over real sockets on 127.0.0.1.

The simulator's ledger is the oracle: for every request it says which fault
it injected, what status it sent and what usage it billed.  Whatever the
weather, each of our outcomes must agree with it: a success with exactly the
billed usage (normalised: total input, cache included), or a ProviderError
whose failure is the taxonomy's name for the injected fault.

Every shipped scenario runs with its faults, limits, outages and answers as
shipped, but with time compressed (first-token latency and generation time
scaled down) so the suite stays fast; one test runs a scenario in real time
to check time-to-first-token against the simulator's own delay.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import socket
from collections.abc import Awaitable
from typing import Any

import pytest

from app.core.event import Failure
from app.providers import (
    ChatRequest,
    ChatResult,
    ProviderAdapter,
    ProviderError,
    StreamDone,
    TextDelta,
    make_adapter,
)
from app.sim import SimServer, list_scenarios, load_scenario
from app.sim.ledger import Served

SCENARIOS = ["instant", "healthy", "degraded", "rate-limited", "primary-outage", "flaky-stream"]
OPENAI_KEY = "sk-test-integration-0001"
ANTHROPIC_KEY = "sk-ant-test-integration-0001"
MODELS = {"openai": ("gpt-4o-mini", "gpt-4o"), "anthropic": ("claude-haiku-4-5", "claude-sonnet-4-5")}
READ_TIMEOUT = 3.0  # above any compressed first-token delay; what ends a "hang"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def requests_for(provider: str, n: int) -> list[ChatRequest]:
    """A mix: a scripted answer, a default answer of a set length, and a forced tool call."""
    out = []
    for i in range(n):
        model = MODELS[provider][i % 2]
        kind = i % 3
        if kind == 0:
            out.append(
                ChatRequest(
                    model=model, messages=[{"role": "user", "content": "What is the capital of France?"}]
                )
            )
        elif kind == 1:
            text = f"Summarise incident {i} for the on-call channel. [[sim:tokens={20 + i}]]"
            out.append(
                ChatRequest(model=model, system="Be brief.", messages=[{"role": "user", "content": text}])
            )
        else:
            out.append(
                ChatRequest(
                    model=model,
                    messages=[{"role": "user", "content": f"What is the weather in city {i}?"}],
                    tools=[WEATHER_TOOL],
                    tool_choice="required",
                )
            )
    return out


def compressed(name: str, factor: float = 0.05) -> dict[str, Any]:
    """The shipped scenario with every delay scaled by ``factor`` (and generation sped up as much)."""
    source = copy.deepcopy(dict(load_scenario(name).source))

    def scale(dist: Any, f: float) -> Any:
        if isinstance(dist, int | float):
            return dist * f
        if isinstance(dist, dict) and "median" in dist:
            return {k: v * f for k, v in dist.items()}
        if isinstance(dist, dict) and "mu" in dist:
            return {**dist, "mu": dist["mu"] + math.log(f)}
        return dist

    for profile in [source.get("defaults") or {}, *(source.get("models") or {}).values()]:
        if profile and "ttft" in profile:
            profile["ttft"] = scale(profile["ttft"], factor)
        if profile and profile.get("tokens_per_s"):
            profile["tokens_per_s"] = scale(profile["tokens_per_s"], 1 / factor)
    for outage in source.get("outages") or []:
        for key in ("start", "end"):
            if outage.get(key) is not None:
                outage[key] *= factor
    return source


def adapters(sim: SimServer, **kw: Any) -> dict[str, ProviderAdapter]:
    options = {"read_timeout": READ_TIMEOUT, "connect_timeout": 2.0, **kw}
    return {
        "openai": make_adapter("openai", "sim-openai", sim.openai_base_url, OPENAI_KEY, **options),
        "anthropic": make_adapter(
            "anthropic", "sim-anthropic", sim.anthropic_base_url, ANTHROPIC_KEY, **options
        ),
    }


async def close_all(found: dict[str, ProviderAdapter]) -> None:
    for adapter in found.values():
        await adapter.aclose()


async def served_async(sim: SimServer, n: int) -> list[Served]:
    """The records once ``n`` requests were served, on the simulator's own loop: a streamed answer is
    recorded when its handler returns, a moment after the client has read the last frame."""
    async with asyncio.timeout(10):
        while len(sim.served) < n:  # noqa: ASYNC110 - the ledger is thread-safe, with no asyncio event to wait on
            await asyncio.sleep(0.005)
    return sim.served.records()


async def call(adapter: ProviderAdapter, req: ChatRequest, stream: bool) -> ChatResult | ProviderError:
    """One request, its outcome either way (a stream is read to the end)."""
    try:
        if not stream:
            return await adapter.chat(req)
        async with adapter.stream(req) as s:
            text = []
            async for event in s:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, StreamDone):
                    assert event.result.text == "".join(text)
                    return event.result
        raise AssertionError("a stream ended without StreamDone")
    except ProviderError as exc:
        return exc


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --- the oracle ------------------------------------------------------------------------------------


def expected_failure(provider: str, fault: str) -> Failure:
    return {
        "rate_limit": Failure.RATE_LIMITED,
        "quota_exceeded": Failure.CLIENT_ERROR,  # OpenAI's insufficient_quota 429 / Anthropic's 400: not retryable
        "server_error": Failure.SERVER_ERROR,
        "unavailable": Failure.OVERLOADED,  # 503
        "overloaded": Failure.OVERLOADED,  # Anthropic 529 / OpenAI 503
        "hang": Failure.TIMEOUT,
        "stream_cut": Failure.CONNECTION_ERROR,
        "stream_error": Failure.OVERLOADED if provider == "anthropic" else Failure.SERVER_ERROR,
        "malformed_json": Failure.SERVER_ERROR,
        "wrong_content_type": Failure.SERVER_ERROR,
    }[fault]


def check_usage(provider: str, result: ChatResult, rec: Served) -> None:
    u = result.usage
    assert u is not None, "the simulator always reports usage"
    if provider == "openai":  # prompt_tokens already include the cached ones
        assert u.input_tokens == rec.input_tokens
    else:  # Anthropic reports input without cache: we add it back
        assert u.input_tokens == rec.input_tokens + rec.cache_read_tokens + rec.cache_write_tokens
    assert u.output_tokens == rec.output_tokens
    assert u.cache_read_tokens == rec.cache_read_tokens
    assert u.cache_write_tokens == rec.cache_write_tokens


def check_retry_after(provider: str, err: ProviderError, rec: Served) -> None:
    """OpenAI's retry-after-ms is exact to the millisecond; Anthropic sends whole seconds, rounded up."""
    assert rec.retry_after is not None and err.retry_after_s is not None
    if provider == "openai" or rec.retry_after < 1:
        assert err.retry_after_s == pytest.approx(rec.retry_after, abs=1e-3)
    else:
        assert rec.retry_after <= err.retry_after_s < rec.retry_after + 1


def check_outcome(provider: str, stream: bool, req: ChatRequest, outcome: Any, rec: Served) -> None:
    assert rec.stream is stream and rec.model == req.model
    if isinstance(outcome, ChatResult):
        assert rec.status == 200, f"we saw a success where the simulator sent {rec.status} ({rec.fault})"
        assert rec.fault in (None, "stream_cut", "stream_error") or not stream
        assert rec.fault not in ("malformed_json", "wrong_content_type", "hang")
        check_usage(provider, outcome, rec)
        assert outcome.native_finish_reason == rec.finish
        assert outcome.response_model == req.model and outcome.response_id
        assert outcome.request_id == rec.request_id and outcome.status_code == 200
        assert outcome.latency_ms is not None
        if req.tools:
            assert outcome.finish_reason is not None and outcome.finish_reason.value == "tool_calls"
            assert [c.name for c in outcome.tool_calls] == ["get_weather"]
            assert "city" in json.loads(outcome.tool_calls[0].arguments)
        else:
            assert outcome.text and not outcome.tool_calls
        if stream:
            assert outcome.ttft_ms is not None and 0 <= outcome.ttft_ms <= outcome.latency_ms
        return
    assert isinstance(outcome, ProviderError), outcome
    assert rec.fault is not None, f"we failed ({outcome}) where the simulator injected nothing"
    assert outcome.failure is expected_failure(provider, rec.fault), (rec.fault, str(outcome))
    assert outcome.provider == f"sim-{provider}"
    assert OPENAI_KEY not in str(outcome) and ANTHROPIC_KEY not in str(outcome)
    if rec.fault == "hang":
        assert outcome.status_code is None and outcome.request_id is None
        return
    assert outcome.status_code == (rec.status or None)
    assert outcome.request_id == rec.request_id
    if rec.fault in ("rate_limit", "unavailable") or (rec.fault == "overloaded" and provider == "openai"):
        check_retry_after(provider, outcome, rec)
    if rec.fault in ("malformed_json", "wrong_content_type"):
        assert outcome.error_type in ("invalid_response", "invalid_stream")
    if rec.fault in ("stream_cut", "stream_error"):
        # A billed failure: what was generated before the break comes back with the error.
        assert rec.billed and outcome.partial is not None
        assert outcome.partial.produced_output == (rec.output_tokens > 0)
        if provider == "anthropic":  # message_start told us the input side
            assert outcome.partial.usage is not None
            assert (
                outcome.partial.usage.input_tokens
                == rec.input_tokens + rec.cache_read_tokens + rec.cache_write_tokens
            )


async def run_mix(
    sim: SimServer, found: dict[str, ProviderAdapter], n: int
) -> dict[tuple[str, bool], list[Any]]:
    """n requests per (provider, stream), all at once; each outcome checked against its ledger record."""
    sim.reset()
    plan = [(p, s, req) for p in ("openai", "anthropic") for s in (False, True) for req in requests_for(p, n)]
    outcomes = await asyncio.gather(*(call(found[p], req, s) for p, s, req in plan))
    records = sim.served.records()
    assert len(records) == len(plan)
    by_id = {r.request_id: r for r in records}
    unmatched = [r for r in records if r.fault == "hang"]
    for (provider, stream, req), outcome in zip(plan, outcomes, strict=True):
        request_id = outcome.request_id if isinstance(outcome, ChatResult | ProviderError) else None
        if request_id is None:  # only a request that never got an answer has no id
            assert isinstance(outcome, ProviderError) and outcome.failure is Failure.TIMEOUT
            rec = next(r for r in unmatched if r.stream is stream and r.model == req.model)
            unmatched.remove(rec)
        else:
            rec = by_id.pop(request_id)
        check_outcome(provider, stream, req, outcome, rec)
    grouped: dict[tuple[str, bool], list[Any]] = {}
    for (provider, stream, _), outcome in zip(plan, outcomes, strict=True):
        grouped.setdefault((provider, stream), []).append(outcome)
    return grouped


# --- every scenario ------------------------------------------------------------------------------------


def test_the_shipped_scenarios_are_the_ones_we_cover() -> None:
    assert set(SCENARIOS) <= set(list_scenarios())


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_outcome_agrees_with_the_simulator(scenario: str) -> None:
    async def go() -> dict[tuple[str, bool], list[Any]]:
        async with SimServer(compressed(scenario), seed=11) as sim:
            found = adapters(sim)
            try:
                return await run_mix(sim, found, 9)
            finally:
                await close_all(found)

    grouped = run(go())
    for (provider, _stream), outcomes in grouped.items():
        ok = [o for o in outcomes if isinstance(o, ChatResult)]
        if scenario == "primary-outage" and provider == "openai":
            assert not ok and all(o.failure is Failure.OVERLOADED and o.retryable for o in outcomes)
        elif scenario in ("instant", "primary-outage"):
            assert len(ok) == len(outcomes)
        else:
            assert ok, f"{scenario}/{provider}: nothing succeeded"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_every_fault_is_classified(provider: str, stream: bool) -> None:
    faults = [
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

    async def one(sim: SimServer, fault: str) -> tuple[str, Any]:
        adapter = adapters(sim, extra_headers={"x-sim-fault": fault}, read_timeout=0.5)[provider]
        try:
            req = requests_for(provider, 2)[1]
            return fault, await call(adapter, req, stream)
        finally:
            await adapter.aclose()

    async def go() -> None:
        async with SimServer("instant", seed=3) as sim:
            results = await asyncio.gather(*(one(sim, f) for f in faults))
            records = await served_async(sim, len(faults))
        by_fault = {r.fault: r for r in records}
        for fault, outcome in results:
            if fault in ("stream_cut", "stream_error") and not stream:
                assert isinstance(outcome, ChatResult)  # stream-only faults do not touch a plain call
                continue
            assert isinstance(outcome, ProviderError), (fault, outcome)
            check_outcome(provider, stream, requests_for(provider, 2)[1], outcome, by_fault[fault])

    run(go())


# --- details that need the real thing ------------------------------------------------------------------


def test_time_to_first_token_in_real_time() -> None:
    """Unscaled healthy weather: TTFT is never earlier than the simulator's own delay, and precedes the end."""

    async def go() -> None:
        async with SimServer("healthy", seed=5) as sim:
            found = adapters(sim)
            try:
                for provider in ("openai", "anthropic"):
                    for _ in range(5):  # a rare injected fault just means: try again
                        sim.reset()
                        req = ChatRequest(
                            model=MODELS[provider][0],
                            messages=[{"role": "user", "content": "Describe the day. [[sim:tokens=25]]"}],
                        )
                        outcome = await call(found[provider], req, True)
                        rec = (await served_async(sim, 1))[-1]
                        if isinstance(outcome, ChatResult):
                            break
                    assert isinstance(outcome, ChatResult)
                    assert outcome.ttft_ms is not None and outcome.latency_ms is not None
                    assert outcome.ttft_ms >= rec.ttft_s * 1000.0 - 1.0
                    assert outcome.latency_ms >= outcome.ttft_ms
                    assert outcome.usage is not None and outcome.usage.output_tokens == 25
            finally:
                await close_all(found)

    run(go())


def test_rate_limit_headers_and_429s_under_the_rate_limited_scenario() -> None:
    async def go() -> None:
        async with SimServer(compressed("rate-limited", 0.01), seed=2) as sim:
            found = adapters(sim)
            try:
                plans = {"openai": ("gpt-4o", 30, 40), "anthropic": ("claude-sonnet-4-5", 50, 60)}
                for provider, (model, rpm, burst) in plans.items():
                    req = ChatRequest(
                        model=model, messages=[{"role": "user", "content": "hi [[sim:tokens=3]]"}]
                    )
                    outcomes = await asyncio.gather(
                        *(call(found[provider], req, False) for _ in range(burst))
                    )
                    ok = [o for o in outcomes if isinstance(o, ChatResult)]
                    limited = [o for o in outcomes if isinstance(o, ProviderError)]
                    # The bucket holds rpm requests and refills one every 60/rpm s: a slow burst may get one more.
                    assert rpm <= len(ok) <= rpm + 2 and len(ok) + len(limited) == burst
                    for o in ok:
                        assert o.rate_limits is not None and o.rate_limits.requests is not None
                        assert o.rate_limits.requests.limit == rpm
                    by_id = {r.request_id: r for r in sim.served.records()}
                    for err in limited:
                        assert (
                            err.failure is Failure.RATE_LIMITED and err.status_code == 429 and err.retryable
                        )
                        check_retry_after(provider, err, by_id[err.request_id])
                        rl = err.rate_limits
                        assert rl is not None and rl.requests is not None
                        assert (rl.requests.limit, rl.requests.remaining) == (rpm, 0)
                        assert rl.requests.reset_s is not None and rl.requests.reset_s >= 0
            finally:
                await close_all(found)

    run(go())


def test_cache_tokens_are_normalised_to_total_input() -> None:
    long_text = " ".join(f"Policy clause {i}: keep answers factual and short." for i in range(200))

    async def go() -> None:
        async with SimServer("instant", seed=9) as sim:
            found = adapters(sim)
            try:
                openai_req = ChatRequest(
                    model="gpt-4o-mini",
                    messages=[
                        {"role": "system", "content": long_text},
                        {"role": "user", "content": "First question?"},
                    ],
                )
                anthropic_req = ChatRequest(
                    model="claude-haiku-4-5",
                    messages=[
                        {
                            "role": "system",
                            "content": [
                                {"type": "text", "text": long_text, "cache_control": {"type": "ephemeral"}}
                            ],
                        },
                        {"role": "user", "content": "First question?"},
                    ],
                )
                for provider, req in (("openai", openai_req), ("anthropic", anthropic_req)):
                    sim.reset()
                    first = await found[provider].chat(req)
                    second = await found[provider].chat(req)
                    first_rec, second_rec = sim.served.records()
                    assert isinstance(first, ChatResult) and isinstance(second, ChatResult)
                    check_usage(provider, first, first_rec)
                    check_usage(provider, second, second_rec)
                    assert second.usage is not None and second.usage.cache_read_tokens > 0
                    assert second.usage.input_tokens >= second.usage.cache_read_tokens
                    if provider == "anthropic":
                        assert first.usage is not None and first.usage.cache_write_tokens > 0
                        # The same prompt is the same total input, however much of it the cache served.
                        assert first.usage.input_tokens == second.usage.input_tokens
                        counted = await found[provider].count_tokens(req)
                        assert not counted.estimate and counted.tokens == second.usage.input_tokens
            finally:
                await close_all(found)

    run(go())


def test_counts_models_and_client_errors() -> None:
    async def go() -> None:
        async with SimServer("instant", seed=1) as sim:
            found = adapters(sim)
            try:
                plain = [{"role": "user", "content": "What is the capital of France?"}]
                for provider in ("openai", "anthropic"):
                    adapter = found[provider]
                    req = ChatRequest(model=MODELS[provider][0], messages=plain)
                    counted = await adapter.count_tokens(req)
                    result = await adapter.chat(req)
                    assert result.usage is not None and counted.tokens == result.usage.input_tokens
                    assert not counted.estimate
                    assert set(MODELS[provider]) <= set(await adapter.list_models())
                    missing = ChatRequest(model="missing-model-x", messages=plain)
                    for stream in (False, True):
                        err = await call(adapter, missing, stream)
                        assert isinstance(err, ProviderError)
                        assert (err.failure, err.status_code, err.retryable) == (
                            Failure.CLIENT_ERROR,
                            404,
                            False,
                        )
                bad = {
                    "openai": make_adapter("openai", "bad", sim.openai_base_url, "sk-invalid-key-123456"),
                    "anthropic": make_adapter(
                        "anthropic", "bad", sim.anthropic_base_url, "sk-ant-invalid-123456"
                    ),
                }
                try:
                    for provider, adapter in bad.items():
                        err = await call(
                            adapter, ChatRequest(model=MODELS[provider][0], messages=plain), False
                        )
                        assert isinstance(err, ProviderError)
                        assert (err.failure, err.status_code) == (Failure.CLIENT_ERROR, 401)
                        assert "invalid-key" not in str(err) and "ant-invalid" not in repr(err)
                finally:
                    await close_all(bad)
            finally:
                await close_all(found)

    run(go())


def test_one_pooled_connection_serves_sequential_calls() -> None:
    async def go() -> None:
        async with SimServer("instant", seed=1) as sim:
            found = adapters(sim)
            try:
                for provider, adapter in found.items():
                    req = ChatRequest(model=MODELS[provider][0], messages=[{"role": "user", "content": "hi"}])
                    for i in range(10):
                        assert isinstance(await call(adapter, req, i % 2 == 1), ChatResult)
                    pool = adapter._client._transport._pool  # type: ignore[attr-defined]
                    assert len(pool.connections) == 1
            finally:
                await close_all(found)

    run(go())


def test_a_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.

    async def go() -> None:
        for kind, url in (
            ("openai", f"http://127.0.0.1:{port}/v1"),
            ("anthropic", f"http://127.0.0.1:{port}"),
        ):
            adapter = make_adapter(kind, "gone", url, "sk-test-refused-000000", connect_timeout=1.0)
            try:
                for stream in (False, True):
                    err = await call(
                        adapter, ChatRequest(model="m", messages=[{"role": "user", "content": "x"}]), stream
                    )
                    assert isinstance(err, ProviderError)
                    assert err.failure is Failure.CONNECTION_ERROR and err.retryable
                    assert f"127.0.0.1:{port}" in err.message
            finally:
                await adapter.aclose()

    run(go())
