"""/metrics latency histograms by route, target AND failure (issue 4 item 2), read back with a strict
parser of the Prometheus text format: a success and a deadline timeout on a real gateway server in
front of the simulator land in different series, each consistent with the request counter."""

from __future__ import annotations

from typing import Any

import httpx

from app.core.event import Failure
from app.gateway import metrics
from app.gateway.engine import LATENCY_BUCKETS, GatewayStats
from storage.engine import Store
from tests.integration.test_gateway_server_fixtures import (  # noqa: F401 - fixtures
    GatewayThread,
    apply_text,
    config_text,
    sim,
    sim_key,
    store,
)

HISTOGRAM = "controlroom_gateway_request_duration_seconds"
CHAT = {"model": "default", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
TAXONOMY = {f.value for f in Failure}

Key = tuple[str, str, str]


def histograms(families: Any) -> dict[Key, dict[str, Any]]:
    """``(route, target, failure) -> {"buckets": [(le, cumulative)], "sum": s, "count": n}``."""
    out: dict[Key, dict[str, Any]] = {}
    for suffix in ("bucket", "sum", "count"):
        for labels, value in families.get(f"{HISTOGRAM}_{suffix}", []):
            assert set(labels) - {"le"} == {"route", "target", "failure"}, labels
            key = (labels["route"], labels["target"], labels["failure"])
            h = out.setdefault(key, {"buckets": []})
            if suffix == "bucket":
                h["buckets"].append((labels["le"], value))
            else:
                h[suffix] = value
    return out


def check_consistent(hists: dict[Key, dict[str, Any]], requests: dict[Key, float]) -> None:
    """Every series: failure from the taxonomy, cumulative buckets ending in +Inf = count = requests."""
    for key, h in hists.items():
        assert key[2] in TAXONOMY, key
        values = [v for _, v in h["buckets"]]
        assert values == sorted(values), (key, h["buckets"])
        assert h["buckets"][-1] == ("+Inf", h["count"]), key
        assert len(h["buckets"]) == len(LATENCY_BUCKETS) + 1
        assert h["count"] == requests[key], key
    assert set(hists) == set(requests)


def test_render_keeps_one_latency_series_per_failure() -> None:
    n = len(LATENCY_BUCKETS) + 1
    ok, timed_out = [0] * n, [0] * n
    ok[0], timed_out[-1] = 5, 2
    # Keyed as the engine keys them: (route, target, failure).
    latency: dict[Any, list[int]] = {
        ("default", "fast", "none"): ok,
        ("default", "fast", "timeout"): timed_out,
    }
    latency_sum: dict[Any, float] = {("default", "fast", "none"): 0.01, ("default", "fast", "timeout"): 120.0}
    stats = GatewayStats(
        requests={("default", "fast", "none"): 5, ("default", "fast", "timeout"): 2},
        latency=latency,
        latency_sum=latency_sum,
    )
    families = metrics.parse_text(metrics.render(stats))
    hists = histograms(families)
    requests = {
        (s["route"], s["target"], s["failure"]): v for s, v in families["controlroom_gateway_requests_total"]
    }
    check_consistent(hists, requests)
    assert hists[("default", "fast", "none")]["buckets"][0] == (metrics._num(LATENCY_BUCKETS[0]), 5)
    assert hists[("default", "fast", "timeout")]["buckets"][-2][1] == 0  # all past the last bound
    assert hists[("default", "fast", "timeout")]["sum"] == 120.0


def test_a_success_and_a_timeout_are_separate_latency_series(
    sim: Any,  # noqa: F811
    store: Store,  # noqa: F811
    sim_key: str,  # noqa: F811
) -> None:
    apply_text(store, config_text(sim))
    with GatewayThread(store) as gw:
        for _ in range(3):
            assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        # Route "slow" (deadline 0.5 s) calls a model the simulator never answers: a timeout.
        r = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "slow"}, timeout=30)
        assert r.status_code == 504
        text = httpx.get(gw.url + "/metrics").text
    families = metrics.parse_text(text)
    requests = {
        (s["route"], s["target"], s["failure"]): v for s, v in families["controlroom_gateway_requests_total"]
    }
    hists = histograms(families)
    check_consistent(hists, requests)
    assert hists[("default", "fast", "none")]["count"] == 3
    (timeout_key,) = [k for k in hists if k[0] == "slow"]
    assert timeout_key[2] == "timeout"
    timed_out = hists[timeout_key]
    assert timed_out["count"] == 1
    assert timed_out["sum"] > 0
