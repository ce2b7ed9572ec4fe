"""Crash safety: ingest killed with SIGKILL at random points, restarted until done.

Every record must end up stored exactly once, the rollups must agree with the
events, and every bad line must be quarantined once: checked with the store's
own counts after each round.  Two ways in:

- ``controlroom ingest`` (reads the whole file each time: idempotent ids), in
  alternate rounds with its parser process (``--parse-process on``: the
  rows and their rollups come from a forked child) and without it;
- a ``JsonlTail`` driver (resumes from the position committed with the
  events: no line is even re-read after a commit).

The quick tests run a couple of rounds; the slow ones run twenty.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.event import Event, Failure
from app.core.ids import new_event_id
from storage import open_store
from storage.queries.events import count_events
from storage.queries.quarantine import count_quarantined
from storage.queries.rollups import rollup_totals

ROOT = Path(__file__).parent.parent.parent
T0 = 1_780_000_000.0

# Follows FILE into STORE until the committed position reaches the end of the file,
# then prints the pipeline's totals.
TAIL_DRIVER = """
import json, os, sys
from app.sources.jsonl import JsonlTail, source_key
from app.sources.pipeline import Pipeline
from storage import open_store

path, url = sys.argv[1], sys.argv[2]
with open_store(url) as store:
    pipeline = Pipeline(store)
    tail = JsonlTail(path, "event", batch_lines=500, resume=pipeline.load_position(source_key(path)))
    size = os.path.getsize(path)
    while tail.committed is None or tail.committed.offset < size:
        batch = tail.poll()
        if batch is None:
            continue
        pipeline.write(batch)
        tail.committed_to(batch.positions[-1])
    tail.close()
    print(json.dumps(pipeline.totals.as_dict()))
"""


def make_corpus(path: Path, n: int, seed: int) -> tuple[int, int]:
    """Write n lines: good events (some without ids, some repeated) and bad lines.  Returns (unique, bad)."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    unique = bad = 0
    for i in range(n):
        r = rng.random()
        if r < 0.01:
            lines.append(b'{"ts_start": "broken' + str(i).encode())
            bad += 1
            continue
        if r < 0.02 and lines and lines[-1].startswith(b'{"ts_start": 17'):
            lines.append(lines[-1])  # a repeated record: one event
            continue
        ts = T0 + i * 0.01
        e = Event(
            ts_start=ts,
            ts_end=ts + 0.2,
            provider=rng.choice(["openai", "anthropic"]),
            model=rng.choice(["m1", "m2"]),
            route="default",
            event_id=new_event_id(ts),
            failure=rng.choice([Failure.NONE, Failure.NONE, Failure.TIMEOUT]),
            latency_ms=rng.uniform(50, 900),
            input_tokens=rng.randrange(1000),
        )
        d = e.to_dict()
        if r < 0.3:
            del d["event_id"]  # the id comes from the file position
        lines.append(json.dumps(d, separators=(",", ":")).encode())
        unique += 1
    path.write_bytes(b"\n".join(lines) + b"\n")
    return unique, bad


def run_until_done(cmd: list[str], rng: random.Random, *, max_kills: int = 12) -> tuple[int, str]:
    """Run cmd, SIGKILL it after a random time, restart, until it exits by itself."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills = 0
    while True:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            if kills < max_kills:
                # The first kill of a round lands early (start-up, migration, first batch), so every
                # round kills at least once however fast the machine; later ones anywhere.
                delay = rng.uniform(0.05, 0.5) if kills == 0 else rng.uniform(0.2, 3.0)
                deadline = time.monotonic() + delay
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate(timeout=30)
                    kills += 1
                    continue
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:  # the test itself failed or timed out: leave nothing behind
                proc.kill()
                proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        return kills, out.decode()


def check_store(url: str, db: Path, unique: int, bad: int) -> None:
    with open_store(url) as store:
        assert count_events(store.engine) == unique
        totals = rollup_totals(store.engine)
        assert totals.requests == unique and totals.latency_n == unique
        assert count_quarantined(store.engine) == bad
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def crash_rounds(tmp_path: Path, rounds: int, n: int, *, tail: bool, max_kills: int = 12) -> int:
    kills_total = 0
    for r in range(rounds):
        rng = random.Random(1000 + r)
        path = tmp_path / f"round{r}.jsonl"
        unique, bad = make_corpus(path, n, seed=r)
        db = tmp_path / f"round{r}.sqlite3"
        url = f"sqlite:///{db}"
        if tail:
            cmd = [sys.executable, "-c", TAIL_DRIVER, str(path), url]
        else:
            parse_process = "on" if r % 2 == 0 else "off"
            cmd = [sys.executable, "-m", "app", "ingest", str(path), "--store", url, "--json"]
            cmd += ["--parse-process", parse_process]
        kills, out = run_until_done(cmd, rng, max_kills=max_kills)
        kills_total += kills
        check_store(url, db, unique, bad)
        if tail:
            # Resuming from committed positions re-reads nothing: the last run saw no duplicate.
            assert json.loads(out)["duplicates"] == 0
    return kills_total


def test_ingest_killed_and_restarted_stores_every_record_once(tmp_path: Path) -> None:
    assert crash_rounds(tmp_path, rounds=2, n=20_000, tail=False) >= 1


def test_tail_killed_and_restarted_resumes_exactly(tmp_path: Path) -> None:
    assert crash_rounds(tmp_path, rounds=2, n=20_000, tail=True) >= 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_ingest_survives_twenty_rounds_of_sigkill(tmp_path: Path) -> None:
    kills = crash_rounds(tmp_path, rounds=20, n=8_000, tail=False, max_kills=5)
    print(f"\n20 rounds of controlroom ingest, {kills} SIGKILLs")
    assert kills >= 20


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_tail_survives_twenty_rounds_of_sigkill(tmp_path: Path) -> None:
    kills = crash_rounds(tmp_path, rounds=20, n=8_000, tail=True, max_kills=5)
    print(f"\n20 rounds of the JSONL tail, {kills} SIGKILLs")
    assert kills >= 20
