"""Steering the simulator: the control endpoints, switching weather mid-run, determinism, lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from app.sim import SimServer, SimThread, run_simulator
from tests.integration import sim_fixtures

MESSAGES = [{"role": "user", "content": "Hello there"}]

# Fixtures shared by the simulator tests.
anthropic_client = sim_fixtures.anthropic_client
openai_client = sim_fixtures.openai_client
sim = sim_fixtures.sim
sim_factory = sim_fixtures.sim_factory


def test_state_scenarios_and_served_endpoints(sim: SimServer, openai_client: openai.OpenAI) -> None:
    state = httpx.get(sim.base_url + "/_sim/state").json()
    assert state["scenario"] == "instant" and state["seed"] == 7 and state["requests"] == 0
    assert state["base_url"] == sim.base_url
    assert {"gpt-4o-mini", "claude-haiku-4-5"} <= set(state["models"])
    names = httpx.get(sim.base_url + "/_sim/scenarios").json()["scenarios"]
    assert {"instant", "healthy", "degraded", "rate-limited", "primary-outage", "flaky-stream"} <= set(names)
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    records = httpx.get(sim.base_url + "/_sim/served", params={"since": 1}).json()["records"]
    assert [(r["seq"], r["model"], r["status"]) for r in records] == [(2, "gpt-4o", 200)]
    assert "sk-test" not in json.dumps(records)  # keys are never kept, only a digest
    assert records[0]["key_id"].startswith("key_")


def test_switch_scenario_mid_run_through_the_control_endpoint(
    sim: SimServer, openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic
) -> None:
    assert openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    r = httpx.post(sim.base_url + "/_sim/scenario", json={"name": "primary-outage"})
    assert r.status_code == 200 and r.json()["scenario"] == "primary-outage"
    with pytest.raises(openai.APIStatusError) as err:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 503
    assert anthropic_client.messages.create(model="claude-haiku-4-5", max_tokens=3, messages=MESSAGES).content
    r = httpx.post(sim.base_url + "/_sim/scenario", json={"scenario": {"name": "calm"}})
    assert r.json()["scenario"] == "calm"
    assert openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    statuses = [(x.provider, x.status) for x in sim.served.records()]
    assert statuses == [("openai", 200), ("openai", 503), ("anthropic", 200), ("openai", 200)]


def test_bad_scenario_is_refused_and_the_old_one_stays(sim: SimServer) -> None:
    r = httpx.post(sim.base_url + "/_sim/scenario", json={"name": "no-such-weather"})
    assert r.status_code == 400 and "no scenario named" in r.json()["error"]
    r = httpx.post(
        sim.base_url + "/_sim/scenario", json={"name": "bad", "defaults": {"faults": {"meteor_strike": 0.5}}}
    )
    assert r.status_code == 400 and "meteor_strike" in r.json()["error"]
    r = httpx.post(sim.base_url + "/_sim/scenario", content=b"not json")
    assert r.status_code == 400
    assert sim.scenario.name == "instant"


def test_scenario_from_a_yaml_file(sim: SimServer, tmp_path: Any) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("name: custom\nsequence: [server_error]\n", encoding="utf-8")
    assert (
        httpx.post(sim.base_url + "/_sim/scenario", json={"file": str(path)}).json()["scenario"] == "custom"
    )
    r = httpx.post(
        sim.openai_base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"Authorization": "Bearer sk-test"},
    )
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


def test_reset_restarts_the_counter_and_empties_the_ledger(
    sim: SimServer, openai_client: openai.OpenAI
) -> None:
    first = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    state = httpx.post(sim.base_url + "/_sim/reset").json()
    assert state["requests"] == 0 and state["next_seq"] == 1 and len(sim.served) == 0
    again = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert again.id == first.id  # ids derive from seed and sequence number
    assert sim.served.records()[0].seq == 1


def test_outage_window_opens_and_closes_with_the_clock(sim: SimServer, openai_client: openai.OpenAI) -> None:
    sim.set_scenario(
        {"name": "blip", "outages": [{"provider": "openai", "model": "gpt-4o*", "start": 0, "end": 0.3}]}
    )
    with pytest.raises(openai.APIStatusError):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # Other models are outside the window's glob.
    assert openai_client.chat.completions.create(model="o3-mini", messages=MESSAGES).choices
    deadline = time.monotonic() + 5
    while True:
        try:
            openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            break
        except openai.APIStatusError:
            assert time.monotonic() < deadline, "the outage never ended"
            time.sleep(0.05)


def _run_sequence(server: SimServer) -> list[Any]:
    out = []
    with httpx.Client(headers={"Authorization": "Bearer sk-test"}) as http:
        for i in range(30):
            r = http.post(
                server.openai_base_url + "/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"prompt {i % 7}"}]},
            )
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
            if isinstance(body, dict):
                body.pop("created", None)
            out.append((r.status_code, r.headers.get("retry-after"), body))
    return out


CHAOS = {
    "name": "chaos",
    "defaults": {"faults": {"rate_limit": 0.2, "server_error": 0.15, "unavailable": 0.1}},
    "fault_options": {"retry_after": 0.5},
    "answers": {"default_tokens": {"median": 20, "p95": 60}},
}


def test_same_seed_same_requests_give_the_same_run(sim_factory: Callable[..., SimServer]) -> None:
    a = _run_sequence(sim_factory(CHAOS, seed=42))
    b = _run_sequence(sim_factory(CHAOS, seed=42))
    c = _run_sequence(sim_factory(CHAOS, seed=43))
    assert a == b
    assert {s for s, _h, _b in a} == {200, 429, 500, 503}  # the weather really varied
    assert a != c


def test_the_same_prompt_gets_the_same_answer_anywhere_in_the_sequence(
    sim: SimServer, openai_client: openai.OpenAI
) -> None:
    ask = [{"role": "user", "content": "stable?"}]
    first = (
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=ask).choices[0].message.content
    )
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    second = (
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=ask).choices[0].message.content
    )
    assert first == second


def test_simthread_names_its_thread_and_stops_even_with_a_hanging_request() -> None:
    thread = SimThread({"name": "hangs", "defaults": {"faults": {"hang": 1.0}}}, seed=1)
    server = thread.start()
    assert any(t.name == "controlroom-sim" for t in threading.enumerate())
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(
                server.openai_base_url + "/chat/completions",
                json={"model": "gpt-4o-mini", "messages": MESSAGES},
                headers={"Authorization": "Bearer sk-test"},
                timeout=30,
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, name="test-caller")
    caller.start()
    assert sim_fixtures.served_records(server, 1)[0].fault == "hang"
    thread.stop()  # raises if the thread does not end
    caller.join(5)
    assert not caller.is_alive() and isinstance(outcome[0], httpx.RemoteProtocolError)
    assert not any(t.name == "controlroom-sim" for t in threading.enumerate())


def test_run_simulator_serves_until_cancelled() -> None:
    async def main() -> tuple[int, bool]:
        ready: asyncio.Future[SimServer] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run_simulator("127.0.0.1", 0, "instant", 5, on_ready=ready.set_result))
        server = await asyncio.wait_for(ready, 30)
        async with httpx.AsyncClient() as http:
            r = await http.get(server.base_url + "/_sim/state")
        url = server.base_url
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with httpx.AsyncClient() as http:
            try:
                await http.get(url + "/_sim/state")
                refused = False
            except httpx.ConnectError:
                refused = True
        return r.status_code, refused

    status, refused = asyncio.run(main())
    assert status == 200 and refused


def test_simserver_on_the_callers_loop() -> None:
    async def main() -> str:
        async with SimServer("instant", seed=3) as server:
            client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
            r = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            await client.close()
            return r.choices[0].message.content or ""

    assert asyncio.run(main())


def test_module_entry_point_serves_and_reports_bad_scenarios(tmp_path: Any) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bad = subprocess.run(
        [sys.executable, "-m", "app.sim", "--listen", "127.0.0.1:0", "--scenario", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert bad.returncode == 2 and "no scenario named 'nope'" in bad.stderr
    with subprocess.Popen(
        [sys.executable, "-m", "app.sim", "--listen", "127.0.0.1:0", "--scenario", "instant", "--seed", "9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "scenario 'instant'" in line and "seed 9" in line
            url = line.split(" on ", 1)[1].split(" ", 1)[0]
            assert httpx.get(url + "/_sim/state").json()["seed"] == 9
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    assert proc.returncode == 0


def test_latency_is_simulated_for_plain_and_streamed_answers(
    sim: SimServer, openai_client: openai.OpenAI
) -> None:
    sim.set_scenario({"name": "paced", "defaults": {"ttft": 0.15, "tokens_per_s": 200}})
    ask = [{"role": "user", "content": "go [[sim:tokens=20]]"}]
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=ask)
    chunks = list(openai_client.chat.completions.create(model="gpt-4o-mini", messages=ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain, streamed = sim_fixtures.served_records(sim, 2)
    # Lower bounds only: time to first token plus 20 tokens at 200 tokens/s.
    assert plain.ttft_s == streamed.ttft_s == 0.15
    assert plain.duration_s >= 0.24 and streamed.duration_s >= 0.24
