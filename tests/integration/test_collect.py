"""The collector, as the app runs it (on the runtime thread) and as ``controlroom collect`` runs it.

Real parts throughout: a SQLite store, the ingest pipeline, an OTLP receiver
fed by the OpenTelemetry SDK exporter, a JSONL file, a remote HTTP endpoint on
loopback, and the simulator's usage API for a provider with an admin key.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from app.core.event import Event
from app.runtime import Runtime
from app.sim import SimServer
from app.sources.base import SourceState
from app.sources.collector import Collector, SourceFileError, load_source_file
from app.sources.otlp import OtlpReceiver
from storage import Store, open_store
from storage.queries.compaction import dirty_blocks
from storage.queries.control import save_object
from storage.queries.events import count_events, fetch_events
from storage.queries.provider_usage import list_usage
from storage.queries.source_configs import SourceConfig, SourceConfigError, save_source_config

REPO = Path(__file__).resolve().parents[2]


def wait_for(
    check: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
    state: Callable[[], object] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state else ""))
        time.sleep(0.02)


def send_span(url: str, model: str = "gpt-4o") -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=10)))
    with provider.get_tracer("t").start_as_current_span(
        f"chat {model}", attributes={"gen_ai.provider.name": "openai", "gen_ai.request.model": model}
    ):
        pass
    provider.shutdown()


def write_events(path: Path, n: int, model: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        now = time.time()  # recent: older records would be past retention, folded into the tiers and dropped
        for i in range(n):
            ts = now - 600 + i
            f.write(
                Event(ts_start=ts, ts_end=ts + 1, source="file", provider="openai", model=model).to_json()
                + "\n"
            )


class RemoteEvents:
    """A loopback endpoint serving a fixed list of events, with a cursor, on the runtime's loop."""

    def __init__(self, events: list[Event]) -> None:
        self.records = [e.to_dict() for e in events]
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def page(request: web.Request) -> web.Response:
            start = int(request.query.get("cursor") or 0)
            chunk = self.records[start : start + 50]
            return web.json_response(
                {"data": chunk, "next_cursor": str(start + len(chunk)), "has_more": False}
            )

        app = web.Application()
        app.router.add_get("/events", page)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/events"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}") as s:
        yield s


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    with Runtime() as rt:
        yield rt


def test_the_collector_runs_store_sources_on_the_runtime_thread(
    store: Store, runtime: Runtime, tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "app.jsonl"
    write_events(log, 5, "from-file")
    remote = RemoteEvents(
        [Event(ts_start=time.time() - 300 + i, ts_end=time.time() - 299 + i, provider="openai", model="from-remote")
         for i in range(7)]
    )  # fmt: skip
    runtime.run(remote.start(), timeout=10)
    save_source_config(store.engine, SourceConfig("traces", "otlp", {"listen": "127.0.0.1:0"}))
    save_source_config(
        store.engine, SourceConfig("app-log", "jsonl", {"path": str(log), "poll_interval": 0.05})
    )
    save_source_config(
        store.engine, SourceConfig("remote", "http_poll", {"url": remote.url, "interval_s": 0.2})
    )
    # A provider with an admin key gets a usage poller without further configuration.
    monkeypatch.setenv("SIM_ADMIN", "sk-admin-test-1")
    save_object(
        store.engine, "provider",
        {"name": "openai-main", "kind": "openai", "base_url": sim.openai_base_url, "api_key_ref": "env:SIM_KEY",
         "admin_key_ref": "env:SIM_ADMIN"},
        expected_revision=None, actor="test",
    )  # fmt: skip
    import openai

    with openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    collector = Collector(store, compact_every_s=0.2, reload_every_s=0.2)
    runtime.run(collector.start(), timeout=20)
    try:
        names = {s.name: s for s in collector.statuses()}
        assert set(names) == {"traces", "app-log", "remote", "usage:openai-main"}
        receiver = collector.source("traces")
        assert isinstance(receiver, OtlpReceiver) and names["traces"].state is SourceState.RUNNING
        send_span(receiver.url)

        def seen() -> object:
            return (
                [(e.model, e.source) for e in fetch_events(store.engine, limit=100).events],
                collector.statuses(),
            )

        wait_for(lambda: count_events(store.engine) == 13, what="events from all three sources", state=seen)
        models = sorted({e.model for e in fetch_events(store.engine, limit=100).events})
        assert models == ["from-file", "from-remote", "gpt-4o"]
        wait_for(lambda: bool(list_usage(store.engine, "openai-main")), what="usage figures")
        wait_for(lambda: not dirty_blocks(store.engine), what="compaction of what was written")

        # Edits in the store reach the running collector: a paused source stops, a new one starts,
        # a broken one says why without stopping the others.
        save_source_config(store.engine, SourceConfig("app-log", "jsonl", {"path": str(log)}, paused=True))
        save_source_config(
            store.engine,
            SourceConfig("broken", "http_poll", {"url": "http://127.0.0.1:9/x", "interval_s": 60}),
        )
        wait_for(
            lambda: {s.name: s.state for s in collector.statuses()}.get("broken") is SourceState.ERROR,
            what="the broken source's status",
        )
        states = {s.name: s for s in collector.statuses()}
        assert states["app-log"].state is SourceState.PAUSED
        assert "cannot connect" in (states["broken"].last_error or "")
        write_events(log, 3, "while-paused")
        send_span(receiver.url, "gpt-4o-mini")
        wait_for(lambda: count_events(store.engine) == 14, what="the second span", state=seen)
        assert "while-paused" not in {e.model for e in fetch_events(store.engine, limit=100).events}
    finally:
        runtime.run(collector.aclose(), timeout=30)
        runtime.run(remote.stop(), timeout=10)
    assert collector.statuses() == []


def test_a_port_in_use_is_an_error_of_that_source_only(store: Store, runtime: Runtime) -> None:
    blocker = OtlpReceiver("127.0.0.1", 0)

    async def noop(batch: object) -> None:
        return None

    runtime.run(blocker.start(noop), timeout=10)
    port = blocker.port
    try:
        collector = Collector(store, otlp=f"127.0.0.1:{port}", compact_every_s=None, reload_every_s=None)
        runtime.run(collector.start(), timeout=20)
        try:
            status = collector.statuses()[0]
            assert status.name == "otlp" and status.state is SourceState.ERROR
            assert f"cannot listen on 127.0.0.1:{port}" in (status.last_error or "")
        finally:
            runtime.run(collector.aclose(), timeout=30)
    finally:
        runtime.run(blocker.aclose(), timeout=10)


def test_source_files_are_checked_whole(tmp_path: Path) -> None:
    good = tmp_path / "sources.yaml"
    good.write_text(
        "sources:\n  - {name: otlp, kind: otlp, listen: '127.0.0.1:4318'}\n  - {name: log, kind: jsonl, path: /x}\n"
    )
    assert [c.name for c in load_source_file(good)] == ["otlp", "log"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sources:\n  - {name: a, kind: otlp}\n  - {name: a, kind: carrier-pigeon}\n"
        "  - {name: b, kind: http_poll, url: 'http://x', token: sk-live-abcdef}\n  - 7\n"
    )
    with pytest.raises(SourceFileError) as err:
        load_source_file(bad)
    message = str(err.value)
    assert str(bad) in message and "used twice" in message and "carrier-pigeon" in message
    assert "sources[3]" in message and "not a secret" in message and "sk-live-abcdef" not in message
    with pytest.raises(SourceFileError, match="cannot read"):
        load_source_file(tmp_path / "missing.yaml")
    with (
        open_store(f"sqlite:///{tmp_path / 's.db'}") as store,
        pytest.raises(SourceConfigError, match="not a secret"),
    ):
        save_source_config(store.engine, SourceConfig("x", "http_poll", {"token": "abc"}))


def _cli(*args: str, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CONTROLROOM_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "app", "collect", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_controlroom_collect_receives_until_interrupted(tmp_path: Path) -> None:
    log = tmp_path / "service.jsonl"
    write_events(log, 4, "from-file")
    config = tmp_path / "sources.yaml"
    config.write_text(json.dumps({"sources": [{"name": "service-log", "kind": "jsonl", "path": str(log)}]}))
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    proc = _cli(
        "--store", url, "--otlp", "127.0.0.1:0", "--config", str(config), "--status-every", "0", home=tmp_path
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                break
        text = "".join(lines)
        assert "from 2 sources" in text and "service-log" in text, text
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+/v1/traces)", text)
        assert found, text
        send_span(found.group(1))
        with open_store(url) as store:
            wait_for(lambda: count_events(store.engine) == 5, what="the span and the file's events")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped; ingested 5, duplicates 0, rejected 0" in out


def test_controlroom_collect_refuses_a_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "sources.yaml"
    config.write_text("sources: [{name: x, kind: nope}]\n")
    proc = _cli("--store", f"sqlite:///{tmp_path / 's.db'}", "--config", str(config), home=tmp_path)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "kind 'nope' must be one of" in err and str(config) in err


def test_maintenance_runs_with_nothing_configured(store: Store) -> None:
    async def run() -> None:
        collector = Collector(store, compact_every_s=0.05, retain_every_s=0.05, reload_every_s=0.05)
        await collector.start()
        await asyncio.sleep(0.2)
        assert collector.maintenance.compactions > 0 and collector.maintenance.retentions > 0
        await collector.aclose()

    asyncio.run(run())
