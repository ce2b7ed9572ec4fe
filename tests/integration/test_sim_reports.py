"""The usage and cost reports agree with the traffic the simulator actually served."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import openai
import pytest

from app.sim import SimServer
from tests.integration import sim_fixtures

ADMIN = {"x-api-key": "sk-ant-admin-test", "anthropic-version": "2023-06-01"}

# Fixtures shared by the simulator tests.
anthropic_client = sim_fixtures.anthropic_client
openai_client = sim_fixtures.openai_client
sim = sim_fixtures.sim


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _openai_traffic(client: openai.OpenAI, sim: SimServer) -> None:
    for i in range(4):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}]
        )
    client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi [[sim:tokens=40]]"}]
    )
    list(
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "streamed"}], stream=True
        )
    )
    long_system = {"role": "system", "content": "Policy text. " * 600}
    for q in ("a", "b"):  # the second one reads the prompt cache
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[long_system, {"role": "user", "content": q}]
        )
    with pytest.raises(openai.RateLimitError):  # not billed
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-sim-fault": "rate_limit"},
        )
    client.embeddings.create(model="text-embedding-3-small", input=["one", "two", "three"])
    sim_fixtures.served_records(sim, 10)


def test_openai_usage_and_costs_match_the_ledger(openai_client: openai.OpenAI, sim: SimServer) -> None:
    _openai_traffic(openai_client, sim)
    billed = [r for r in sim.served.records() if r.billed]
    chats = [r for r in billed if r.endpoint == "chat.completions"]
    assert len(chats) == 8 and any(r.cache_read_tokens for r in chats)

    start = int(min(r.ts for r in billed)) - 60
    usage = openai_client.admin.organization.usage.completions(
        start_time=start, bucket_width="1m", group_by=["model"]
    )
    assert usage.object == "page" and not usage.has_more
    got: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for bucket in usage.data:
        assert bucket.object == "bucket" and bucket.end_time - bucket.start_time == 60
        for res in bucket.results:
            assert res.object == "organization.usage.completions.result"
            row = got[res.model or ""]
            row[0] += res.input_tokens
            row[1] += res.output_tokens
            row[2] += res.input_cached_tokens or 0
            row[3] += res.num_model_requests
    want: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in chats:
        row = want[r.model]
        row[0] += r.input_tokens
        row[1] += r.output_tokens
        row[2] += r.cache_read_tokens
        row[3] += 1
    assert dict(got) == dict(want)

    ungrouped = openai_client.admin.organization.usage.completions(start_time=start, bucket_width="1h")
    total_requests = sum(res.num_model_requests for b in ungrouped.data for res in b.results)
    assert total_requests == len(chats)
    assert all(res.model is None for b in ungrouped.data for res in b.results)

    emb = openai_client.admin.organization.usage.embeddings(start_time=start, bucket_width="1d")
    emb_rows = [res for b in emb.data for res in b.results]
    assert sum(res.input_tokens for res in emb_rows) == sum(
        r.input_tokens for r in billed if r.endpoint == "embeddings"
    )

    costs = openai_client.admin.organization.usage.costs(start_time=start, group_by=["line_item"])
    items = {res.line_item: res.amount.value for b in costs.data for res in b.results if res.amount}
    assert {
        "gpt-4o-mini, input",
        "gpt-4o-mini, cached input",
        "gpt-4o-mini, output",
        "gpt-4o, output",
    } <= set(items)
    assert "text-embedding-3-small, input" in items
    assert sum(v or 0.0 for v in items.values()) == pytest.approx(
        sum(r.cost_usd or 0.0 for r in billed), rel=1e-9
    )
    plain = openai_client.admin.organization.usage.costs(start_time=start)
    assert all(res.line_item is None for b in plain.data for res in b.results)
    assert sum(res.amount.value or 0 for b in plain.data for res in b.results if res.amount) == pytest.approx(
        sum(items.values()), rel=1e-9
    )


def test_openai_usage_pages_through_buckets(openai_client: openai.OpenAI, sim: SimServer) -> None:
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    start = int(time.time()) - 5 * 3600
    buckets: list[Any] = []
    page: str | None = None
    for _ in range(10):
        kwargs: dict[str, Any] = {"page": page} if page else {}
        resp = openai_client.admin.organization.usage.completions(
            start_time=start, bucket_width="1h", limit=2, **kwargs
        )
        buckets.extend(resp.data)
        assert len(resp.data) <= 2
        if not resp.has_more:
            break
        page = resp.next_page
    starts = [b.start_time for b in buckets]
    assert starts == sorted(set(starts)) and len(starts) == 6
    assert sum(res.num_model_requests for b in buckets for res in b.results) == 1


def test_openai_report_errors(sim: SimServer) -> None:
    r = httpx.get(
        sim.openai_base_url + "/organization/usage/completions", headers={"Authorization": "Bearer sk-a"}
    )
    assert r.status_code == 400 and "start_time" in r.json()["error"]["message"]
    r = httpx.get(
        sim.openai_base_url + "/organization/costs",
        params={"start_time": 0, "bucket_width": "1h"},
        headers={"Authorization": "Bearer sk-a"},
    )
    assert r.status_code == 400
    r = httpx.get(sim.openai_base_url + "/organization/costs", params={"start_time": 0})
    assert r.status_code == 401


def test_anthropic_usage_and_cost_reports_match_the_ledger(
    anthropic_client: anthropic.Anthropic, sim: SimServer
) -> None:
    model = "claude-haiku-4-5"
    for i in range(3):
        anthropic_client.messages.create(
            model=model, max_tokens=30, messages=[{"role": "user", "content": f"q{i}"}]
        )
    system = [{"type": "text", "text": "Handbook. " * 1200, "cache_control": {"type": "ephemeral"}}]
    for q in ("a", "b"):
        anthropic_client.messages.create(
            model=model, max_tokens=10, system=system, messages=[{"role": "user", "content": q}]
        )
    with anthropic_client.messages.stream(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "stream"}]
    ) as stream:
        stream.get_final_message()
    with pytest.raises(anthropic.OverloadedError):
        anthropic_client.messages.create(
            model=model,
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-sim-fault": "overloaded"},
        )
    billed = [r for r in sim_fixtures.served_records(sim, 7) if r.billed]
    assert len(billed) == 6

    start = min(r.ts for r in billed) - 60
    r = httpx.get(
        sim.base_url + "/v1/organizations/usage_report/messages",
        params={"starting_at": _rfc3339(start), "bucket_width": "1m", "group_by[]": "model"},
        headers=ADMIN,
    )
    assert r.status_code == 200
    page = r.json()
    assert page["has_more"] is False and page["next_page"] is None
    rows = [res for b in page["data"] for res in b["results"]]
    assert {row["model"] for row in rows} == {model}
    assert sum(row["uncached_input_tokens"] for row in rows) == sum(x.input_tokens for x in billed)
    assert sum(row["output_tokens"] for row in rows) == sum(x.output_tokens for x in billed)
    assert sum(row["cache_read_input_tokens"] for row in rows) == sum(x.cache_read_tokens for x in billed) > 0
    assert sum(row["cache_creation"]["ephemeral_5m_input_tokens"] for row in rows) == sum(
        x.cache_write_tokens for x in billed
    )
    for b in page["data"]:
        assert b["starting_at"].endswith(":00Z") and b["ending_at"] > b["starting_at"]

    day = _rfc3339(start - start % 86400)
    r = httpx.get(
        sim.base_url + "/v1/organizations/cost_report",
        params={"starting_at": day, "group_by[]": "description"},
        headers=ADMIN,
    )
    assert r.status_code == 200
    results = [res for b in r.json()["data"] for res in b["results"]]
    assert {res["token_type"] for res in results} == {
        "uncached_input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation.ephemeral_5m_input_tokens",
    }
    assert all(res["currency"] == "USD" and isinstance(res["amount"], str) for res in results)
    total_usd = sum(float(res["amount"]) for res in results) / 100
    assert total_usd == pytest.approx(sum(x.cost_usd or 0.0 for x in billed), rel=1e-6)
    r = httpx.get(sim.base_url + "/v1/organizations/cost_report", params={"starting_at": day}, headers=ADMIN)
    (row,) = [res for b in r.json()["data"] for res in b["results"]]
    assert row["description"] is None and float(row["amount"]) / 100 == pytest.approx(total_usd, rel=1e-6)


def test_anthropic_report_errors(sim: SimServer) -> None:
    url = sim.base_url + "/v1/organizations/usage_report/messages"
    assert httpx.get(url, headers=ADMIN).status_code == 400
    r = httpx.get(url, params={"starting_at": "yesterday"}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(url, params={"starting_at": _rfc3339(time.time())}, headers={"x-api-key": "sk-ant-invalid"})
    assert r.status_code == 401
    r = httpx.get(
        sim.base_url + "/v1/organizations/cost_report",
        params={"starting_at": _rfc3339(time.time()), "bucket_width": "1h"},
        headers=ADMIN,
    )
    assert r.status_code == 400
