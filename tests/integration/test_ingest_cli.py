"""`controlroom ingest` end to end: real files, a real SQLite store, the store's own counts.

The malformed corpus (tests/data/malformed.jsonl, plus large and binary files
made here) must ingest with no crash, every bad line counted in the report
and kept in the quarantine, every good line stored once.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.core.event import Event
from app.core.ids import new_event_id
from app.sources import jsonl, parse_process
from app.sources.parse_process import parallel_available
from storage import open_store
from storage.queries.events import count_events
from storage.queries.quarantine import count_quarantined, quarantine_reasons
from storage.queries.rollups import rollup_totals

DATA = Path(__file__).parent.parent / "data"
ROOT = Path(__file__).parent.parent.parent
T0 = 1_780_000_000.0

# tests/data/malformed.jsonl, line by line: 3 good events (one with CRLF), one duplicate, a blank
# line, and one bad line per reason.
MALFORMED_REASONS = {
    "invalid JSON": 1,
    "not an object": 1,
    "missing field": 1,
    "wrong type": 3,
    "bad value": 2,
    "invalid UTF-8": 2,
    "NUL character": 2,
    "truncated line": 1,
}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["ingest", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def good_line(i: int) -> bytes:
    ts = T0 + i
    return (
        Event(
            ts_start=ts,
            ts_end=ts + 0.3,
            provider="openai",
            model="m",
            event_id=new_event_id(ts),
            latency_ms=300.0,
        )
        .to_json()
        .encode()
    )


@pytest.mark.parametrize("parse_process", ["off", "on"])
def test_the_malformed_corpus_is_counted_and_quarantined(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], parse_process: str
) -> None:
    if parse_process == "on" and not parallel_available():
        pytest.skip("the parser process needs fork (Linux)")
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    code, report, err = run_cli(
        capsys, str(DATA / "malformed.jsonl"), "--store", url, "--parse-process", parse_process
    )
    assert code == 0, err
    assert report == {"ingested": 3, "duplicates": 1, "rejected": 13, "reasons": MALFORMED_REASONS}
    with open_store(url) as store:
        assert count_events(store.engine) == 3
        assert rollup_totals(store.engine).requests == 3
        assert quarantine_reasons(store.engine) == MALFORMED_REASONS
    # Again: everything is a duplicate, and the quarantine keeps each bad line once.
    code, report, _ = run_cli(
        capsys, str(DATA / "malformed.jsonl"), "--store", url, "--parse-process", parse_process
    )
    assert (code, report["ingested"], report["duplicates"], report["rejected"]) == (0, 0, 4, 13)
    with open_store(url) as store:
        assert count_events(store.engine) == 3 and count_quarantined(store.engine) == 13


def test_huge_binary_and_rotated_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(5)
    good = [good_line(i) for i in range(40)]
    huge_valid = json.loads(good_line(100)) | {
        "output_text": "y" * (10 << 20)
    }  # a 10 MB event: kept, text cut
    bad: list[bytes] = [
        b"{" + b"x" * (10 << 20),  # a 10 MB line that is not JSON
        b"\xff" + bytes(rng.randrange(256) for _ in range(5000)).replace(b"\n", b"") + b"\x00",  # binary
        b"\x00" * 1000,  # NUL bytes
        b'{"ts_start": ' + b"1" * 5000 + b"}",  # a number too big for a float
        b'{"ts_start": 1e999}',  # infinity
        b'{"ts_start": 1780000000, "prompt_version": 99999999999999}',  # out of range
    ]
    current, rotated = tmp_path / "app.jsonl", tmp_path / "app.jsonl.1"
    rotated.write_bytes(b"\n".join(good[:20] + bad[:3]) + b"\n")
    # The live file: the rest, a 17 MB line over the limit, and a last line cut by a crash.
    current.write_bytes(
        b"\n".join([*good[20:], *bad[3:], json.dumps(huge_valid).encode(), b'"' + b"z" * (17 << 20) + b'"'])
        + b"\n"
        + good_line(200)[:50]
    )
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    code, report, err = run_cli(capsys, str(rotated), str(current), "--store", url, "--format", "event")
    assert code == 0, err
    assert report["ingested"] == 41 and report["duplicates"] == 0
    assert report["rejected"] == 8
    assert report["reasons"] == {
        "invalid JSON": 2,  # the 10 MB line, and the 5,000-digit number
        "invalid UTF-8": 1,  # the binary line
        "NUL character": 1,
        "bad value": 2,  # infinity, prompt_version out of range
        "line too long": 1,
        "truncated line": 1,
    }
    with open_store(url) as store:
        assert count_events(store.engine) == 41
        assert count_quarantined(store.engine) == 8
        assert rollup_totals(store.engine).requests == 41


def test_formats_are_detected_per_file_and_a_mapping_file_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    code, report, err = run_cli(
        capsys, str(DATA / "otlp_collector.jsonl"), str(DATA / "litellm_payloads.jsonl"), "--store", url
    )
    assert code == 0, err
    assert (report["ingested"], report["rejected"]) == (3 + 2, 1)
    code, report, err = run_cli(
        capsys,
        str(DATA / "service_log.jsonl"),
        "--format",
        str(DATA / "service_mapping.yaml"),
        "--store",
        url,
    )
    assert (code, report["ingested"], report["rejected"]) == (0, 2, 1)


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    code, report, err = run_cli(
        capsys, str(tmp_path / "nope.jsonl"), str(DATA / "malformed.jsonl"), "--store", url
    )
    assert code == 1 and "nope.jsonl: No such file or directory" in err
    assert report["ingested"] == 3  # the other file was read
    code, _, err = run_cli(capsys, str(DATA / "service_log.jsonl"), "--store", url)
    assert code == 1 and "cannot tell the format" in err
    assert main(["ingest", str(DATA / "malformed.jsonl"), "--format", "nonsense", "--store", url]) == 2
    assert "unknown format 'nonsense'" in capsys.readouterr().err


def test_a_failing_parser_process_is_reported_with_the_way_around(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not parallel_available():
        pytest.skip("the parser process needs fork (Linux)")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the reader broke")

    monkeypatch.setattr(parse_process, "read_file", broken)  # the forked child inherits it
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    code = main(["ingest", str(DATA / "malformed.jsonl"), "--store", url, "--parse-process", "on"])
    err = capsys.readouterr().err
    assert code == 1 and "the reader broke" in err and "--parse-process off" in err


def test_text_output_and_the_real_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "ingest", str(DATA / "malformed.jsonl"), "--store", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ingested 3, duplicates 1, rejected 13"
    assert "  wrong type: 3" in lines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_how_far_the_reading_has_come(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(good_line(i) + b"\n" for i in range(3000)))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(jsonl, "DEFAULT_BATCH_LINES", 500)  # several batches, several updates
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    assert main(["ingest", str(path), "--store", url, "--parse-process", "off"]) == 0
    shown = terminal.getvalue()
    assert shown.startswith("\rread ") and "records" in shown and "/s" in shown
    assert shown.endswith("\r") and not shown.rstrip("\r ").endswith("records")  # cleared at the end
    assert capsys.readouterr().out.startswith("ingested 3,000, duplicates 0, rejected 0")


def test_the_progress_line_is_rewritten_at_most_twice_a_second() -> None:
    from app.cli import _ProgressLine
    from app.sources.jsonl import IngestProgress

    now = [100.0]
    terminal = _Terminal()
    line = _ProgressLine(terminal, clock=lambda: now[0])
    for step in range(10):  # a batch every 0.25 s
        now[0] += 0.25
        line(IngestProgress(bytes_read=step * 10_000_000, bytes_total=100_000_000, records=step * 1000))
    writes = terminal.getvalue().split("\r")[1:]
    assert len(writes) == 5  # every other batch
    assert writes[-1].strip() == "read 80% (80 of 100 MB), 8,000 records, 3,556/s"
    line.close()
    assert terminal.getvalue().endswith("\r") and line.width == 0
