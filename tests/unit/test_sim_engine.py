"""The simulator's brain without HTTP: fault draws, determinism, rate-limit buckets, prices, formats."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from app.core.pricing import price_call
from app.sim.engine import SimEngine
from app.sim.ledger import Ledger, Served
from app.sim.ratelimit import Bucket, RateLimiter, go_duration, openai_headers
from app.sim.reports import cents
from app.sim.scenario import Limits, parse_scenario


def engine_with(mapping: dict[str, Any], seed: int = 1) -> SimEngine:
    return SimEngine(parse_scenario({"name": "t", **mapping}), seed)


def decide(e: SimEngine, model: str = "m", *, stream: bool = False, forced: str | None = None) -> Any:
    seq = e.next_seq()
    return e.decide(seq, "openai", model, e.scenario.profile(model), 10, stream=stream, forced=forced)


def test_fault_rates_are_honoured_and_reproducible() -> None:
    mapping = {
        "defaults": {"faults": {"rate_limit": 0.2, "server_error": 0.1}, "ttft": {"median": 1, "p95": 3}}
    }
    a, b = engine_with(mapping, seed=9), engine_with(mapping, seed=9)
    runs_a = [decide(a) for _ in range(5000)]
    runs_b = [decide(b) for _ in range(5000)]
    assert [(d.fault, d.ttft) for d in runs_a] == [(d.fault, d.ttft) for d in runs_b]
    counts = Counter(d.fault for d in runs_a)
    assert counts["rate_limit"] / 5000 == pytest.approx(0.2, abs=0.02)
    assert counts["server_error"] / 5000 == pytest.approx(0.1, abs=0.015)
    other = engine_with(mapping, seed=10)
    assert [decide(other).fault for _ in range(200)] != [d.fault for d in runs_a[:200]]


def test_sequence_comes_first_then_random_weather() -> None:
    e = engine_with(
        {"sequence": ["rate_limit", None, "server_error"], "fault_options": {"retry_after": 0.25}}
    )
    got = [decide(e) for _ in range(4)]
    assert [d.fault for d in got] == ["rate_limit", None, "server_error", None]
    assert got[0].retry_after == 0.25 and got[2].retry_after is None
    e.set_scenario(e.scenario)  # activation restarts the sequence
    assert decide(e).fault == "rate_limit"


def test_stream_only_faults_spare_plain_requests_and_forced_faults_win() -> None:
    e = engine_with({"defaults": {"faults": {"stream_cut": 1.0}}})
    assert decide(e).fault is None
    assert decide(e, stream=True).fault == "stream_cut"
    assert decide(e, forced="overloaded").fault == "overloaded"
    assert decide(e, forced="not-a-fault").fault is None


def test_outage_applies_to_matching_provider_and_model_only() -> None:
    e = engine_with({"outages": [{"provider": "openai", "model": "gpt-4o*", "fault": "server_error"}]})
    assert decide(e, "gpt-4o-mini").fault == "server_error"
    assert decide(e, "o3").fault is None
    seq = e.next_seq()
    assert (
        e.decide(seq, "anthropic", "gpt-4o", e.scenario.profile("gpt-4o"), 1, stream=False, forced=None).fault
        is None
    )


def test_rate_limit_verdict_refuses_when_the_bucket_is_empty() -> None:
    e = engine_with({"defaults": {"limits": {"rpm": 2}}})
    first, second, third = decide(e), decide(e), decide(e)
    assert first.fault is None and second.fault is None
    assert third.fault == "rate_limit" and third.limit_kind == "requests"
    assert 0 < (third.retry_after or 0) <= 30.0
    assert third.verdict is not None and third.verdict.rpm_remaining == 0


def test_token_bucket_refills_evenly_over_the_minute() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limits = Limits(rpm=60, tpm=600)
    assert limiter.admit("openai", "m", limits, 500).allowed
    refused = limiter.admit("openai", "m", limits, 200)
    assert not refused.allowed and refused.kind == "tokens"
    assert refused.retry_after == pytest.approx(10.0)  # 100 tokens short at 10 tokens/s
    now[0] = 10.0
    ok = limiter.admit("openai", "m", limits, 200)
    assert (
        ok.allowed and ok.tpm_remaining == 0 and ok.rpm_remaining == 59
    )  # refills to the cap, minus this one
    assert openai_headers(ok)["x-ratelimit-reset-tokens"] == "1m0s"
    assert not limiter.admit("openai", "m", limits, 601).allowed  # more than the whole minute: never
    assert Bucket(60, 30, 0).until_full() == 30.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (0.9996, "1000ms"), (1.5, "1.5s"), (59.0, "59s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_go_duration_format(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_prices_are_line_items_that_add_up_to_price_call() -> None:
    e = engine_with({})
    profile = e.scenario.profile("gpt-4o")
    total, items = e.price("openai", "gpt-4o", profile, uncached_input=800, cache_read=1200, output=300)
    assert set(items) == {"input", "cached_input", "output"}
    whole = price_call(
        "gpt-4o", provider="openai", input_tokens=2000, cache_read_tokens=1200, output_tokens=300
    )
    assert total == pytest.approx(whole.cost_usd)
    total, items = e.price(
        "anthropic",
        "claude-haiku-4-5",
        profile,
        uncached_input=50,
        cache_read=2000,
        cache_write=1500,
        output=10,
    )
    whole = price_call(
        "claude-haiku-4-5",
        provider="anthropic",
        input_tokens=50,
        cache_read_tokens=2000,
        cache_write_tokens=1500,
        output_tokens=10,
    )
    assert total == pytest.approx(whole.cost_usd) and set(items) == {
        "input",
        "cached_input",
        "cache_write",
        "output",
    }
    assert e.price("openai", "no-such-model-xyz", profile, uncached_input=5) == (None, {})
    priced = engine_with({"models": {"mine": {"price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}}})
    total, _ = priced.price(
        "openai", "mine", priced.scenario.profile("mine"), uncached_input=1_000_000, output=500_000
    )
    assert total == pytest.approx(2.0)


def test_cents_are_decimal_strings() -> None:
    assert cents(1.2345) == "123.45"
    assert cents(0.000015000000000000002) == "0.0015"
    assert cents(0.0) == "0"


def test_ledger_rolls_up_only_billed_records_by_minute() -> None:
    ledger = Ledger(max_records=2)

    def rec(seq: int, ts: float, billed: bool, cached: int = 0) -> Served:
        return Served(
            seq=seq,
            ts=ts,
            provider="openai",
            endpoint="chat.completions",
            model="m",
            stream=False,
            status=200,
            fault=None,
            request_id="r",
            key_id="k",
            scenario="s",
            input_tokens=100,
            output_tokens=10,
            cache_read_tokens=cached,
            billed=billed,
        )

    ledger.add(rec(1, 120.5, True, cached=40), {"input": 1.0})
    ledger.add(rec(2, 150.0, True), {"input": 2.0})
    ledger.add(rec(3, 181.0, False))
    assert len(ledger) == 3 and [r.seq for r in ledger.records()] == [2, 3]  # only the newest are kept
    cells = dict(ledger.rollups("openai", "completions", 0, 1e9))
    (key120,) = [k for k in cells if k[0] == 120]
    assert (
        cells[key120].requests == 2
        and cells[key120].input_tokens == 160
        and cells[key120].cache_read_tokens == 40
    )
    assert cells[key120].cost == {"input": 3.0}
    assert not [k for k in cells if k[0] == 180]
    assert ledger.count(status=200) == 2


def test_reset_restarts_the_sequence_and_forgets_the_cache() -> None:
    e = engine_with({})
    e.next_seq()
    e.cache_seen("k", 60)
    e.reset()
    assert e.next_seq() == 1 and not e.cache_peek("k")
    assert e.make_id(1, "x") == engine_with({}).make_id(1, "x")
