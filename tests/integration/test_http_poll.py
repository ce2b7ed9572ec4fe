"""The remote HTTP poll source against a real HTTP server on loopback, into a real store.

The remote is a small aiohttp app serving our own event records with a cursor
(JSON pages or NDJSON), that can be told to fail, to demand a bearer token,
or to serve garbage.  Each test runs one asyncio loop: the server, the
poller, and the real ingest pipeline (its writer thread) into SQLite.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from app.core.event import Event
from app.sources.http_poll import Backoff, HttpPollConfig, HttpPoller, PollHealth, resolve_token, safe_url
from app.sources.pipeline import Pipeline
from storage import Store, open_store
from storage.queries.events import count_events
from storage.queries.positions import load_position
from storage.queries.quarantine import count_quarantined

T0 = 1_700_000_000.0


@dataclass
class Remote:
    """An endpoint that serves ``records`` after a cursor (the index of the next record)."""

    records: list[Any] = field(default_factory=list)
    page_size: int = 10
    fail: list[int] = field(default_factory=list)  # statuses to answer with, one per request, before serving
    token: str | None = None
    cursors: list[str | None] = field(default_factory=list)  # the cursor of every request, in order
    garbage: bool = False

    def add(self, n: int) -> list[Event]:
        start = len(self.records)
        events = [
            Event(ts_start=T0 + i, ts_end=T0 + i + 0.5, source="remote", provider="openai", model="gpt-4o-mini",
                  input_tokens=10 + i, output_tokens=5, latency_ms=500.0, cost_usd=0.001)
            for i in range(start, start + n)
        ]  # fmt: skip
        self.records += [e.to_dict() for e in events]
        return events

    def _gate(self, request: web.Request) -> web.Response | None:
        self.cursors.append(request.query.get("after") or request.query.get("cursor"))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.fail:
            status = self.fail.pop(0)
            return web.json_response({"error": "busy"}, status=status, headers={"Retry-After": "2"})
        return None

    def _page(self, cursor: str | None) -> tuple[list[Any], int]:
        start = int(cursor or 0)
        page = self.records[start : start + self.page_size]
        return page, start + len(page)

    async def json_page(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        if self.garbage:
            return web.Response(text="<html>oops</html>", content_type="text/html")
        page, nxt = self._page(request.query.get("after"))
        return web.json_response({"data": page, "next_cursor": str(nxt), "has_more": nxt < len(self.records)})

    async def ndjson(self, request: web.Request) -> web.Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        page, nxt = self._page(request.query.get("cursor"))
        body = "".join(json.dumps(r) + "\n" for r in page)
        return web.Response(
            text=body,
            content_type="application/x-ndjson",
            headers={"X-Next-Cursor": str(nxt)} if page else {},
        )


async def _serve(remote: Remote) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/events", remote.json_page)
    app.router.add_get("/events.ndjson", remote.ndjson)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


Scenario = Callable[[Store, Pipeline, str, httpx.AsyncClient], Awaitable[None]]


def _run(tmp_path: Path, remote: Remote, scenario: Scenario) -> Store:
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")

    async def main() -> None:
        runner, base = await _serve(remote)
        pipeline = Pipeline(store)
        pipeline.start()
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                await scenario(store, pipeline, base, client)
        finally:
            await asyncio.to_thread(pipeline.stop)
            await runner.cleanup()

    asyncio.run(main())
    return store


def _poller(base: str, path: str = "/events", **settings: Any) -> HttpPoller:
    config = HttpPollConfig.from_settings({"url": base + path, "cursor_param": "after", **settings})
    return HttpPoller("remote", config, rng=random.Random(1))


def test_pages_follow_the_cursor_and_the_cursor_is_committed(tmp_path: Path) -> None:
    remote = Remote()
    remote.add(25)

    async def scenario(store: Store, pipeline: Pipeline, base: str, client: httpx.AsyncClient) -> None:
        poller = _poller(base, interval_s=30)
        assert await poller.poll_once(client, pipeline) == 30
        assert count_events(store.engine) == 25
        assert remote.cursors == [None, "10", "20"]
        assert poller.detail.health is PollHealth.CONNECTED and poller.detail.cursor == "25"
        stored = load_position(store.engine, "http_poll:remote")
        assert stored is not None and stored.fingerprint == "25"
        await poller.poll_once(client, pipeline)  # nothing new: one request with the last cursor
        assert remote.cursors[-1] == "25" and count_events(store.engine) == 25
        remote.add(5)
        await poller.poll_once(client, pipeline)
        assert count_events(store.engine) == 30
        status = poller.status()
        assert status.state.value == "running" and status.ingested == 30 and "connected" in status.detail

        # A new poller (a restart) resumes from the committed cursor, not from the start.
        asked = len(remote.cursors)
        again = _poller(base)
        task = asyncio.create_task(again.run(pipeline))
        async with asyncio.timeout(5):
            while len(remote.cursors) == asked:  # noqa: ASYNC110 - the remote has no event to wait on
                await asyncio.sleep(0.01)
        again.stop()
        await asyncio.wait_for(task, 5)
        assert remote.cursors[asked] == "30"
        assert again.detail.health is PollHealth.STOPPED

    _run(tmp_path, remote, scenario).close()


def test_ndjson_with_the_cursor_in_a_header_or_in_the_last_record(tmp_path: Path) -> None:
    remote = Remote(page_size=4)
    remote.add(6)

    async def scenario(store: Store, pipeline: Pipeline, base: str, client: httpx.AsyncClient) -> None:
        config = HttpPollConfig.from_settings({"url": base + "/events.ndjson"})
        poller = HttpPoller("nd", config)
        await poller.poll_once(client, pipeline)
        await poller.poll_once(client, pipeline)
        assert count_events(store.engine) == 6 and poller.detail.cursor == "6"
        assert remote.cursors[:2] == [None, "4"]

    _run(tmp_path, remote, scenario).close()


def test_a_failing_remote_backs_off_then_recovers(tmp_path: Path) -> None:
    remote = Remote(fail=[503, 500, 502])
    remote.add(3)

    async def scenario(store: Store, pipeline: Pipeline, base: str, client: httpx.AsyncClient) -> None:
        poller = _poller(base, backoff_base_s=1, max_backoff_s=8)
        delays = [await poller.poll_once(client, pipeline) for _ in range(3)]
        assert poller.detail.health is PollHealth.FAILING and poller.detail.consecutive_failures == 3
        assert "answered HTTP 502" in (poller.detail.last_error or "")
        assert all(d >= 2 for d in delays)  # the remote's Retry-After: 2 is honoured
        status = poller.status()
        assert status.state.value == "error" and "failing" in status.detail and status.last_error
        assert count_events(store.engine) == 0
        await poller.poll_once(client, pipeline)
        assert poller.detail.health is PollHealth.CONNECTED and poller.detail.last_error is None
        assert count_events(store.engine) == 3

        gone = _poller("http://127.0.0.1:9", interval_s=1)  # nothing listens on the discard port
        await gone.poll_once(client, pipeline)
        assert "cannot connect to http://127.0.0.1:9/events" in (gone.detail.last_error or "")

    _run(tmp_path, remote, scenario).close()


def test_bearer_token_from_the_environment_never_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tok-" + "s3cr3t" * 4
    remote = Remote(token=secret)
    remote.add(2)
    monkeypatch.setenv("REMOTE_TOKEN", secret)
    monkeypatch.setenv("WRONG_TOKEN", "tok-wrong-value-xyz")

    async def scenario(store: Store, pipeline: Pipeline, base: str, client: httpx.AsyncClient) -> None:
        wrong = _poller(base, token="env:WRONG_TOKEN")
        await wrong.poll_once(client, pipeline)
        assert wrong.detail.health is PollHealth.FAILING
        assert "refused the credentials (HTTP 401)" in (wrong.detail.last_error or "")
        missing = _poller(base, token="env:NOT_SET_ANYWHERE")
        await missing.poll_once(client, pipeline)
        assert "NOT_SET_ANYWHERE" in (missing.detail.last_error or "")
        right = _poller(base, token="env:REMOTE_TOKEN")
        await right.poll_once(client, pipeline)
        assert count_events(store.engine) == 2
        for p in (wrong, missing, right):
            text = repr(p.status()) + repr(p.detail)
            assert secret not in text and "tok-wrong-value-xyz" not in text

    _run(tmp_path, remote, scenario).close()


def test_bad_records_are_quarantined_and_bad_bodies_fail_the_poll(tmp_path: Path) -> None:
    remote = Remote()
    remote.add(2)
    remote.records.insert(1, {"provider": "openai"})  # no ts_start
    remote.records.insert(2, "just a string")

    async def scenario(store: Store, pipeline: Pipeline, base: str, client: httpx.AsyncClient) -> None:
        poller = _poller(base)
        await poller.poll_once(client, pipeline)
        assert count_events(store.engine) == 2 and count_quarantined(store.engine) == 2
        assert poller.status().rejected == 2
        remote.garbage = True
        remote.add(1)
        await poller.poll_once(client, pipeline)
        assert "not JSON or NDJSON" in (poller.detail.last_error or "")

    _run(tmp_path, remote, scenario).close()


def test_a_remote_that_outruns_us_shows_as_lagging(tmp_path: Path) -> None:
    remote = Remote(page_size=2)
    remote.add(10)

    async def scenario(store: Store, pipeline: Pipeline, base: str, client: httpx.AsyncClient) -> None:
        poller = _poller(base, max_pages_per_poll=2, lag_after_s=0.05)
        assert await poller.poll_once(client, pipeline) == 0.0  # more waiting: poll again at once
        await asyncio.sleep(0.06)
        await poller.poll_once(client, pipeline)
        assert poller.detail.health is PollHealth.LAGGING and "catching up" in poller.status().detail
        await poller.poll_once(client, pipeline)
        assert poller.detail.health is PollHealth.CONNECTED and count_events(store.engine) == 10

    _run(tmp_path, remote, scenario).close()


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    b = Backoff(1.0, 8.0, random.Random(3))
    delays = [b.next_delay() for _ in range(6)]
    for n, d in enumerate(delays):
        ceiling = min(8.0, 2.0**n)
        assert ceiling / 2 <= d <= ceiling
    assert b.next_delay(hint=30.0) == 30.0  # a server's Retry-After beyond the cap still wins
    b.reset()
    assert b.next_delay() <= 1.0


def test_configs_are_checked_and_secrets_refused() -> None:
    with pytest.raises(ValueError) as err:
        HttpPollConfig.from_settings(
            {"url": "ftp://x", "interval_s": 0, "token": "sk-live-123", "headers": {"Authorization": "Bearer x"},
             "bogus": 1, "format": "nope"}
        )  # fmt: skip
    message = str(err.value)
    for part in ("unknown setting 'bogus'", "url must be", "interval_s must be", "never the token", "Authorization",
                 "format"):  # fmt: skip
        assert part in message
    assert "sk-live-123" not in message
    assert safe_url("http://user:pw@127.0.0.1:8000/x?a=1") == "http://127.0.0.1:8000/x?a=1"
    assert resolve_token(None, "x") is None
    with pytest.raises(ValueError, match="unknown token reference"):
        resolve_token("plain", "x")
