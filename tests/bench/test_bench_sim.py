"""How many requests per second the simulator sustains in the ``instant`` scenario, plain and streaming.

Set-up: the simulator runs in its own process (``python -m app.sim``), as it will for the gateway
benchmarks; the client is one aiohttp session in this process with 50 concurrent connections, each
sending chat requests back to back for a fixed time.  Two figures per case:

- requests/s seen by the client (client and server share the machine's cores, so this is a floor);
- the server process's CPU time per request, read from /proc, and the rate one server core could
  therefore sustain — the figure that does not depend on what else the machine is doing.

Run with ``make bench``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

CONCURRENCY = 50
WARMUP_S = 1.0
MEASURE_S = 5.0
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a concise assistant for an operations team."},
        {"role": "user", "content": "Summarize the last deployment in two sentences."},
    ],
}
ANTHROPIC_BODY = {"model": "claude-haiku-4-5", "max_tokens": 256, "messages": BODY["messages"][1:]}
OPENAI_HEADERS = {"Authorization": "Bearer sk-bench"}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01"}
CASES = {
    "openai plain": ("/v1/chat/completions", BODY, OPENAI_HEADERS, False),
    "openai stream": ("/v1/chat/completions", BODY, OPENAI_HEADERS, True),
    "anthropic plain": ("/v1/messages", ANTHROPIC_BODY, ANTHROPIC_HEADERS, False),
    "anthropic stream": ("/v1/messages", ANTHROPIC_BODY, ANTHROPIC_HEADERS, True),
}


class Server:
    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process (Linux); None elsewhere."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "app.sim", "--listen", "127.0.0.1:0", "--scenario", "instant", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert " on http://" in line, line
            yield Server(line.split(" on ", 1)[1].split(" ", 1)[0], proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


async def _load(
    server: Server, path: str, body: dict[str, object], headers: dict[str, str], *, stream: bool
) -> tuple[int, int, float, float | None]:
    """(requests done, errors, seconds measured, server CPU seconds) over the measuring window."""
    if stream:
        extra = (
            {"stream": True}
            if "max_tokens" in body
            else {"stream": True, "stream_options": {"include_usage": True}}
        )
        payload = json.dumps({**body, **extra})
    else:
        payload = json.dumps(body)
    done = errors = 0
    measuring = False
    stop_at = time.monotonic() + WARMUP_S + MEASURE_S
    marks: dict[str, float | None] = {}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(
        server.url, connector=connector, headers={**headers, "Content-Type": "application/json"}
    ) as session:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < stop_at:
                async with session.post(path, data=payload) as resp:
                    raw = await resp.read()
                    complete = raw.rstrip().endswith((b"[DONE]", b'"message_stop"}'))
                    ok = resp.status == 200 and (complete or not stream)
                if measuring:
                    done += 1
                    errors += not ok

        async def clock() -> None:
            nonlocal measuring, done, errors
            await asyncio.sleep(WARMUP_S)
            measuring, done, errors = True, 0, 0
            marks["t0"], marks["cpu0"] = time.monotonic(), server.cpu_seconds()
            await asyncio.sleep(stop_at - time.monotonic())
            marks["t1"], marks["cpu1"] = time.monotonic(), server.cpu_seconds()
            final_done = done
            marks["done"] = float(final_done)

        await asyncio.gather(clock(), *(worker() for _ in range(CONCURRENCY)))
    cpu0, cpu1 = marks["cpu0"], marks["cpu1"]
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return int(marks["done"] or 0), errors, float(marks["t1"] or 0) - float(marks["t0"] or 0), cpu


@pytest.mark.parametrize("label", list(CASES))
def test_bench_sim_instant_throughput(server: Server, label: str) -> None:
    path, body, headers, stream = CASES[label]
    done, errors, seconds, cpu = asyncio.run(_load(server, path, body, headers, stream=stream))
    rate = done / seconds
    per_core = (
        f"{done / cpu:8.0f} req/s per server core ({cpu / done * 1e6:5.0f} us CPU each)" if cpu else "n/a"
    )
    print(
        f"\n[bench sim] {label:17s}: {rate:8.0f} req/s at {CONCURRENCY} connections; {per_core}; {errors} errors"
    )
    assert errors == 0
    assert done > 0
