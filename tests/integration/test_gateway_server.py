"""The gateway server at the HTTP level: headers in, headers out, /metrics, /healthz, the token,
the body limit, malformed requests, and the ``controlroom gateway`` command itself."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.event import Event
from app.gateway import metrics
from app.gateway.server import ListenError, check_listen, is_loopback, parse_tags
from storage.engine import Store, open_store
from storage.queries.events import get_event
from tests.integration.test_gateway_server_fixtures import (  # noqa: F401 - fixtures
    GatewayThread,
    apply_text,
    config_text,
    gateway,
    sim,
    sim_key,
    store,
    subprocess_env,
    wait_for,
)

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = {"model": "default", "messages": FRANCE}


def _events(gw: GatewayThread) -> list[Event]:
    seen: list[Event] = []
    assert gw.gateway is not None
    gw.call(lambda: gw.gateway.add_event_listener(seen.append))  # type: ignore[union-attr]
    return seen


# --- who, what, where: request context --------------------------------------------------------


def test_feature_user_and_tags_from_headers_win_over_the_body(gateway: GatewayThread) -> None:  # noqa: F811
    seen = _events(gateway)
    body = {**CHAT, "user": "body-user", "metadata": {"feature": "body-feature", "team": "a", "tier": "free"}}
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200
    e = wait_for(lambda: seen[-1:], what="the event")[0]
    assert (e.feature, e.user) == ("body-feature", "body-user")
    assert e.tags == {"team": "a", "tier": "free"}
    headers = {
        "x-controlroom-feature": "search",
        "x-controlroom-user": "ana",
        "x-controlroom-tags": "team=b, region=eu",
        "x-controlroom-prompt": "summary@3",
    }
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200
    e = wait_for(lambda: seen[1:], what="the second event")[0]
    assert (e.feature, e.user) == ("search", "ana")
    assert e.tags == {"team": "b", "tier": "free", "region": "eu"}
    assert (e.prompt_name, e.prompt_version) == ("summary", 3)
    # Anthropic callers: metadata.user_id is the user; JSON tags work too.
    r = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "claude", "max_tokens": 20, "messages": FRANCE, "metadata": {"user_id": "u-7"}},
        headers={"x-controlroom-tags": '{"team": "c"}'},
    )
    assert r.status_code == 200
    e = wait_for(lambda: seen[2:], what="the third event")[0]
    assert e.user == "u-7" and e.tags == {"team": "c"} and e.route == "claude"


def test_parse_tags_accepts_pairs_and_json_and_refuses_the_rest() -> None:
    assert parse_tags("a=1,b = two") == {"a": "1", "b": "two"}
    assert parse_tags('{"a": "1", "n": 2}') == {"a": "1", "n": "2"}
    assert parse_tags("  ") == {}
    for bad in ("novalue", "{not json", '{"a": [1]}', "=x"):
        with pytest.raises(Exception, match="x-controlroom-tags"):
            parse_tags(bad)


# --- malformed requests, in each API's error shape -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (json.dumps({"messages": FRANCE}).encode(), "model", "model is required"),
        (json.dumps({"model": "default"}).encode(), "messages", "messages is required"),
        (json.dumps({**CHAT, "max_tokens": 0}).encode(), "max_completion_tokens", "at least 1"),
        (json.dumps({**CHAT, "metadata": {"a": 1}}).encode(), "metadata", "text values"),
    ],
)
def test_openai_bad_requests_are_400s_that_say_what_is_wrong(
    gateway: GatewayThread,  # noqa: F811
    body: bytes,
    param: str | None,
    words: str,
) -> None:
    r = httpx.post(
        gateway.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert words in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_anthropic_bad_requests_are_400s_in_anthropic_shape(gateway: GatewayThread) -> None:  # noqa: F811
    r = httpx.post(gateway.url + "/v1/messages", json={"model": "claude", "messages": FRANCE})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    assert body["request_id"] == r.headers["request-id"]
    r = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "claude", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
    )
    assert r.status_code == 400 and "user or assistant" in r.json()["error"]["message"]


def test_bad_context_headers_are_400s(gateway: GatewayThread) -> None:  # noqa: F811
    for headers in (
        {"x-controlroom-tags": "oops"},
        {"x-controlroom-prompt": "p@latest"},
        {"x-controlroom-deadline-s": "-1"},
    ):
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 400, headers
        assert next(iter(headers)) in r.json()["error"]["message"]


def test_a_body_over_the_limit_is_a_413_whether_announced_or_chunked(
    sim: Any,  # noqa: F811
    store: Store,  # noqa: F811
    sim_key: str,  # noqa: F811
) -> None:
    apply_text(store, config_text(sim))
    with GatewayThread(store, max_body_bytes=64 * 1024) as gw:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}
        r = httpx.post(gw.url + "/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert "at most 0.0625 MiB" in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "request_too_large"

        def chunks() -> Any:
            data = json.dumps(big).encode()
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        r = httpx.post(
            gw.url + "/v1/messages", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "request_too_large"
        # Under the limit it is served.
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200


# --- the token ---------------------------------------------------------------------------------


def test_loopback_by_default_and_a_token_anywhere_else() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_listen(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "gateway.example.com"):
        assert not is_loopback(host)
        with pytest.raises(ListenError, match="CONTROLROOM_GATEWAY_TOKEN"):
            check_listen(host, None)
        check_listen(host, "a-token")


def test_with_a_token_every_request_but_healthz_needs_it(
    sim: Any,  # noqa: F811
    store: Store,  # noqa: F811
    sim_key: str,  # noqa: F811
) -> None:
    token = "gw-token-7f3c9a1e5b"
    apply_text(store, config_text(sim))
    with GatewayThread(store, token=token) as gw:
        url = gw.url
        assert httpx.get(url + "/healthz").status_code == 200
        r = httpx.post(url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        wrong = "sk-proj-SomeonesRealProviderKey0123456789"
        r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {wrong}"})
        assert r.status_code == 401 and wrong not in r.text and wrong[:12] not in r.text
        r = httpx.post(url + "/v1/messages", json={"model": "claude", "max_tokens": 5, "messages": FRANCE})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/v1/models").status_code == 401
        ok = {"authorization": f"Bearer {token}"}
        assert httpx.post(url + "/v1/chat/completions", json=CHAT, headers=ok).status_code == 200
        assert httpx.get(url + "/metrics", headers=ok).status_code == 200
        r = httpx.post(
            url + "/v1/messages",
            json={"model": "claude", "max_tokens": 5, "messages": FRANCE},
            headers={"x-api-key": token},
        )
        assert r.status_code == 200


# --- /metrics and /healthz -------------------------------------------------------------------------


def test_metrics_are_prometheus_text_with_requests_latency_breakers_and_budgets(
    sim: Any,  # noqa: F811
    store: Store,  # noqa: F811
    sim_key: str,  # noqa: F811
) -> None:
    budget = """\
budgets:
  - {name: daily, scope: {}, period: day, limit_usd: 100}
"""
    apply_text(store, config_text(sim, budget))
    with GatewayThread(store) as gw:
        for _ in range(3):
            assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        assert httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
        r = httpx.get(gw.url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    # Every family announces its type once, before its samples.
    types = re.findall(r"^# TYPE (\S+) (counter|gauge|histogram)$", text, re.M)
    assert len(types) == len({name for name, _ in types})
    families = metrics.parse_text(text)
    requests = {
        (s["route"], s["target"], s["failure"]): v for s, v in families["controlroom_gateway_requests_total"]
    }
    assert requests[("default", "fast", "none")] == 3
    buckets = [
        (s["le"], v)
        for s, v in families["controlroom_gateway_request_duration_seconds_bucket"]
        if s["route"] == "default" and s["target"] == "fast"
    ]
    values = [v for _, v in buckets]
    assert values == sorted(values) and buckets[-1] == ("+Inf", 3)
    counts = {s["target"]: v for s, v in families["controlroom_gateway_request_duration_seconds_count"]}
    assert counts["fast"] == 3
    states = {(s["target"], s["state"]): v for s, v in families["controlroom_breaker_state"]}
    assert states[("fast", "closed")] == 1 and states[("fast", "open")] == 0
    assert {t for t, _ in states} >= {"fast", "strong", "stuck"}
    assert families["controlroom_budget_limit_usd"] == [({"budget": "daily"}, 100.0)]
    assert families["controlroom_budget_spend_usd"][0][0] == {"budget": "daily"}
    responses = {(s["endpoint"], s["code"]): v for s, v in families["controlroom_http_responses_total"]}
    assert responses[("chat_completions", "200")] == 3 and responses[("chat_completions", "404")] == 1
    assert families["controlroom_gateway_overhead_seconds_count"][0][1] == 3
    assert families["controlroom_control_version"][0][1] >= 1


def test_metric_label_values_are_escaped() -> None:
    from app.gateway.engine import GatewayStats

    stats = GatewayStats(requests={('a"b\\c\nd', "t", "none"): 2})
    text = metrics.render(stats)
    assert 'route="a\\"b\\\\c\\nd"' in text
    parsed = metrics.parse_text(text)
    assert parsed["controlroom_gateway_requests_total"] == [
        ({"route": 'a"b\\c\nd', "target": "t", "failure": "none"}, 2.0)
    ]
    with pytest.raises(ValueError, match="line 1"):
        metrics.parse_text("not a metric line at all\n")


def test_healthz(gateway: GatewayThread) -> None:  # noqa: F811
    r = httpx.get(gateway.url + "/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["control_version"] >= 1


# --- the command ---------------------------------------------------------------------------------


def test_the_command_refuses_to_listen_off_loopback_without_a_token() -> None:
    env = subprocess_env()
    env.pop("CONTROLROOM_GATEWAY_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "app", "gateway", "--listen", "0.0.0.0:0"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr and "CONTROLROOM_GATEWAY_TOKEN" in done.stderr


@pytest.mark.slow
def test_the_command_serves_and_stops_cleanly_on_sigterm_with_every_event_written(
    sim: Any,  # noqa: F811
    tmp_path: Path,
    sim_key: str,  # noqa: F811
) -> None:
    url = f"sqlite:///{tmp_path / 'cmd.db'}"
    with open_store(url) as s:
        apply_text(s, config_text(sim))
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "gateway", "--listen", "127.0.0.1:0", "--store", url],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert m, line + (proc.stderr.read() if proc.stderr else "")
        base = m.group(1)
        ids = []
        for _ in range(5):
            r = httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=10)
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped; every event was written" in out
    assert sim_key not in out + err
    with open_store(url) as s:
        assert all(get_event(s.engine, i) is not None for i in ids)
