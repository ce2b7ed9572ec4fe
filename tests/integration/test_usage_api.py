"""The usage/cost pollers against the simulator's OpenAI and Anthropic usage endpoints, into a real store.

Traffic goes through the official SDKs to the simulator; its ledger says what
was billed.  The pollers fetch the simulator's reports (pages and all) and
must store exactly those figures per day and model; reconciliation then sets
them beside our own events.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from app.core.event import Event
from app.sim import SimServer
from app.sources.http_poll import PollHealth
from app.sources.pipeline import Pipeline
from app.sources.usage_api import UsageApiConfig, UsagePoller
from storage import Store, open_store
from storage.queries.provider_usage import list_usage
from storage.queries.series import reconcile
from tests.keyring_support import require_secret_service

DAY = 86_400
OPENAI_ADMIN = "sk-admin-test-0123456789"
ANTHROPIC_ADMIN = "sk-ant-admin-test-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


def _poll(poller: UsagePoller) -> float:
    async def once() -> float:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            return await poller.poll_once(client)

    return asyncio.run(once())


def _wait_served(sim: SimServer, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(sim.served) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def _openai_traffic(sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0)
    with client:
        for i in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}]
            )
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi [[sim:tokens=40]]"}]
        )
        client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
        with pytest.raises(openai.RateLimitError):  # not billed, not reported
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-sim-fault": "rate_limit"},
            )
    _wait_served(sim, 6)


def _anthropic_traffic(sim: SimServer) -> None:
    client = anthropic.Anthropic(base_url=sim.anthropic_base_url, api_key="sk-ant-test", max_retries=0)
    with client:
        for i in range(2):
            client.messages.create(
                model="claude-haiku-4-5", max_tokens=30, messages=[{"role": "user", "content": f"q{i}"}]
            )
        system = [{"type": "text", "text": "Handbook. " * 1200, "cache_control": {"type": "ephemeral"}}]
        for q in ("a", "b"):  # the first writes the prompt cache, the second reads it
            client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=10,
                system=system,
                messages=[{"role": "user", "content": q}],
            )
    _wait_served(sim, 4)


def _ledger(sim: SimServer, provider: str) -> dict[tuple[float, str], list[float]]:
    """Billed totals per (UTC day, model): input (all of it), output, cached, requests, cost."""
    out: dict[tuple[float, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for r in sim.served.records():
        if not r.billed or r.provider != provider:
            continue
        row = out[(math.floor(r.ts / DAY) * DAY, r.model)]
        total_input = (
            r.input_tokens
            if provider == "openai"
            else r.input_tokens + r.cache_read_tokens + r.cache_write_tokens
        )
        row[0] += total_input
        row[1] += r.output_tokens
        row[2] += r.cache_read_tokens
        row[3] += 1
        row[4] += r.cost_usd or 0.0
    return dict(out)


def test_openai_usage_and_costs_are_stored_per_day_and_model(
    sim: SimServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _openai_traffic(sim)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", OPENAI_ADMIN)
    config = UsageApiConfig(
        provider="openai-main", kind="openai", base_url=sim.openai_base_url, admin_key="env:OPENAI_ADMIN_KEY"
    )
    poller = UsagePoller("usage:openai-main", config, store.engine)
    assert _poll(poller) == config.interval_s
    assert poller.detail.health is PollHealth.CONNECTED
    figures = {(f.bucket_start, f.model): f for f in list_usage(store.engine, "openai-main")}
    want = _ledger(sim, "openai")
    assert set(figures) == set(want)
    for key, (inp, out, cached, requests, cost) in want.items():
        f = figures[key]
        assert (f.input_tokens, f.output_tokens, f.cached_tokens, f.requests) == (inp, out, cached, requests)
        assert f.cost_usd == pytest.approx(cost, rel=1e-9)
        assert f.bucket_width == DAY
    # Polling again replaces the window: more traffic updates the figures, nothing doubles.
    _openai_traffic(sim)
    _poll(poller)
    again = {(f.bucket_start, f.model): f.requests for f in list_usage(store.engine, "openai-main")}
    assert again == {k: v[3] for k, v in _ledger(sim, "openai").items()}
    assert "connected" in poller.status().detail


def test_anthropic_usage_and_cost_reports_are_stored_in_dollars(
    sim: SimServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _anthropic_traffic(sim)
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", ANTHROPIC_ADMIN)
    config = UsageApiConfig(
        provider="anthropic-main",
        kind="anthropic",
        base_url=sim.anthropic_base_url,
        admin_key="env:ANTHROPIC_ADMIN_KEY",
    )
    poller = UsagePoller("usage:anthropic-main", config, store.engine)
    _poll(poller)
    assert poller.detail.health is PollHealth.CONNECTED, poller.detail.last_error
    figures = {(f.bucket_start, f.model): f for f in list_usage(store.engine, "anthropic-main")}
    want = _ledger(sim, "anthropic")
    assert set(figures) == set(want)
    for key, (inp, out, cached, _requests, cost) in want.items():
        f = figures[key]
        assert (f.input_tokens, f.output_tokens, f.cached_tokens) == (inp, out, cached)
        assert f.cached_tokens > 0 and f.cache_write_tokens > 0
        assert f.cost_usd == pytest.approx(cost, rel=1e-6)  # cents as decimal strings, back to dollars


def test_our_events_reconcile_against_the_providers_figures(
    sim: SimServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _openai_traffic(sim)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", OPENAI_ADMIN)
    config = UsageApiConfig(
        provider="openai-main", kind="openai", base_url=sim.openai_base_url, admin_key="env:OPENAI_ADMIN_KEY"
    )
    _poll(UsagePoller("usage", config, store.engine))
    # What a gateway recorded of the same calls, priced 10% above what the provider charged.
    ours = [
        Event(ts_start=r.ts - r.duration_s, ts_end=r.ts, source="gateway", provider="openai", model=r.model,
              input_tokens=r.input_tokens, output_tokens=r.output_tokens, cost_usd=(r.cost_usd or 0.0) * 1.1)
        for r in sim.served.records()
        if r.billed and r.provider == "openai"
    ]  # fmt: skip
    Pipeline(store).write_events(ours)
    now = time.time()
    rec = reconcile(store.engine, now - DAY, now, provider="openai-main", our_providers=["openai"])
    assert rec.rows and {r.model for r in rec.rows} == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    for row in rec.rows:
        assert row.our_requests == row.provider_requests
        assert row.drift_pct == pytest.approx(10.0, rel=1e-6)
    assert rec.drift_usd == pytest.approx(0.1 * (rec.provider_cost_usd or 0.0))


def test_a_refused_or_missing_admin_key_fails_with_a_clear_reason(
    sim: SimServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAD_ADMIN_KEY", "sk-invalid-admin-9876543210")
    for kind, base in (("openai", sim.openai_base_url), ("anthropic", sim.anthropic_base_url)):
        poller = UsagePoller(
            "usage",
            UsageApiConfig(provider="p", kind=kind, base_url=base, admin_key="env:BAD_ADMIN_KEY"),
            store.engine,
        )
        delay = _poll(poller)
        assert poller.detail.health is PollHealth.FAILING and delay >= 2.5
        assert "refused the admin key (HTTP 401" in (poller.detail.last_error or "")
        text = repr(poller.status()) + repr(poller.detail)
        assert "sk-invalid-admin-9876543210" not in text
    # No secure keyring in this process: the operator is told why, and how to pass the key instead.
    poller = UsagePoller(
        "usage", UsageApiConfig(provider="p", kind="openai", base_url=sim.openai_base_url), store.engine
    )
    _poll(poller)
    assert (poller.detail.last_error or "").startswith("no admin key for p:")
    assert list_usage(store.engine, "p") == []
    with pytest.raises(ValueError, match="never the key"):
        UsageApiConfig(provider="p", kind="openai", admin_key="sk-admin-literal")
    with pytest.raises(ValueError, match="kind must be one of"):
        UsageApiConfig(provider="p", kind="openai_compatible")


@pytest.mark.keyring
def test_admin_key_from_a_real_keyring(sim: SimServer, store: Store) -> None:
    require_secret_service()
    from app import secrets

    secrets.set_key("openai-kr", OPENAI_ADMIN, secrets.KeyKind.ADMIN)
    try:
        _openai_traffic(sim)
        poller = UsagePoller(
            "usage",
            UsageApiConfig(provider="openai-kr", kind="openai", base_url=sim.openai_base_url),
            store.engine,
        )
        _poll(poller)
        assert poller.detail.health is PollHealth.CONNECTED, poller.detail.last_error
        assert list_usage(store.engine, "openai-kr")
    finally:
        secrets.delete_key("openai-kr")
