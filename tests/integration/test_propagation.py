"""Control changes reach running gateways: two ``controlroom gateway`` PROCESSES on one store, a third
process flips a breaker (``controlroom breaker open fast``) or applies a config, and both gateways
obey within a second — on one SQLite file and on PostgreSQL.

The bound asserted is generous (the machine may be loaded); the delays measured are printed, and
the benchmark (tests/bench/test_bench_gateway.py) gives their distribution.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.engine import open_store
from tests.integration.test_gateway_server_fixtures import (  # noqa: F401 - fixtures
    apply_text,
    config_text,
    sim,
    sim_key,
    subprocess_env,
)

CHAT = {"model": "default", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
BOUND_S = 10.0  # generous: what is asserted; the figure that matters is printed (and benchmarked)

pytestmark = pytest.mark.slow


@contextmanager
def gateway_process(store_url: str) -> Iterator[str]:
    """A ``python -m app gateway`` child on a free loopback port; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "gateway", "--listen", "127.0.0.1:0", "--store", store_url],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if m is None:
            proc.kill()
            raise AssertionError(f"the gateway did not start: {line}{proc.communicate(timeout=10)[1]}")
        yield m.group(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _target(client: httpx.Client, base: str) -> str:
    r = client.post(base + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    return r.headers["x-controlroom-target"]


def _cli(*argv: str) -> float:
    """Run a ``controlroom`` command in its own process; return the time it finished."""
    done = subprocess.run(
        [sys.executable, "-m", "app", *argv],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic()


def _until_all(client: httpx.Client, bases: list[str], want: str, since: float) -> list[float]:
    """Poll every gateway until each serves from ``want``; the delay for each, from ``since``."""
    delays: dict[str, float] = {}
    while len(delays) < len(bases):
        for base in bases:
            if base not in delays and _target(client, base) == want:
                delays[base] = time.monotonic() - since
        if time.monotonic() - since > BOUND_S:
            raise AssertionError(f"not every gateway serves from {want} after {BOUND_S} s: {delays}")
    return [delays[b] for b in bases]


def _propagation(store_url: str, sim: Any, tmp_path: Path) -> None:  # noqa: F811
    with open_store(store_url) as s:
        apply_text(s, config_text(sim))
    with ExitStack() as stack, httpx.Client(timeout=10) as client:
        bases = [stack.enter_context(gateway_process(store_url)) for _ in range(2)]
        assert [_target(client, b) for b in bases] == ["fast", "fast"]

        done = _cli("breaker", "open", "fast", "--reason", "test: failover", "--store", store_url)
        opened = _until_all(client, bases, "strong", done)
        done = _cli("breaker", "auto", "fast", "--store", store_url)
        closed = _until_all(client, bases, "fast", done)

        # A config change travels the same way: the route now starts with strong.
        changed = tmp_path / "changed.yaml"
        changed.write_text(config_text(sim).replace("chain: [fast, strong]", "chain: [strong, fast]"))
        done = _cli("config", "apply", str(changed), "--store", store_url)
        applied = _until_all(client, bases, "strong", done)
    print(
        f"\npropagation on {store_url.split(':', maxsplit=1)[0]}: breaker open -> both gateways "
        f"{max(opened) * 1000:.0f} ms, back to auto {max(closed) * 1000:.0f} ms, "
        f"config apply {max(applied) * 1000:.0f} ms (measured from the command's exit)"
    )


def test_two_gateway_processes_on_one_sqlite_file_obey_a_breaker_flip(
    sim: Any,  # noqa: F811
    sim_key: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _propagation(f"sqlite:///{tmp_path / 'shared.db'}", sim, tmp_path)


@pytest.mark.postgres
def test_two_gateway_processes_on_postgresql_obey_a_breaker_flip(
    sim: Any,  # noqa: F811
    sim_key: str,  # noqa: F811
    tmp_path: Path,
    pg_url: str,
) -> None:
    _propagation(pg_url, sim, tmp_path)
