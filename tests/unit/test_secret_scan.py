"""The end-of-run secret scan (tests/secret_scan.py) finds a key where the code writes, and only there."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from pathlib import Path

from tests.secret_scan import scan


def test_a_key_in_a_store_file_log_or_export_is_found(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    try:
        db = planted / "home" / "store.db"
        db.parent.mkdir(parents=True)
        with sqlite3.connect(db) as conn:
            conn.execute("create table t (v text)")
            conn.execute("insert into t values ('Bearer sk-proj-Abc123Def456Ghi789')")
        conn.close()
        (planted / "gateway.log").write_text("calling with sk-ant-test-engine-0001\n")
        (planted / "audit-export.json").write_text('{"after": {"api_key": "sk-live-0123456789"}}')
        found = scan(planted)
        names = sorted(Path(f.rsplit(":", 1)[0]).name for f in found)
        assert names == ["audit-export.json", "gateway.log", "store.db"]
        assert all("sk-" not in f for f in found)  # it says where, never the key
    finally:
        # Planted on purpose: gone before the end-of-run scan walks this directory.
        shutil.rmtree(planted, ignore_errors=True)


def test_inputs_a_test_wrote_and_clean_outputs_are_not_flagged(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("api_key: sk-live-abcdefghijk\n")  # an input, refused by the code
    (tmp_path / "events.csv").write_text("provider,model\nopenai,gpt-4o-mini\n")
    (tmp_path / "store.db").write_bytes(b"SQLite format 3\x00 api_key_ref keyring:controlroom/openai")
    assert scan(tmp_path) == []


def test_a_float_that_spells_sk_before_a_text_column_is_not_a_key(tmp_path: Path) -> None:
    # SQLite writes the float's 8 bytes and the text side by side: ...'s' 'k' '-' 'gatewayopenai'.
    tail = struct.unpack(">d", b"\x41\xda\x86\x2a\x82sk-")[0]
    planted = tmp_path / "planted"
    planted.mkdir()
    db = planted / "store.sqlite3"
    try:
        with sqlite3.connect(db) as conn:
            conn.execute("create table events (ts real, source text, provider text)")
            conn.execute("insert into events values (?, 'gateway', 'openai')", (tail,))
        conn.close()
        assert b"sk-gatewayopenai" in db.read_bytes()  # key-shaped bytes on disk...
        assert scan(planted) == []  # ...but no text of the store holds them
        with sqlite3.connect(db) as conn:
            conn.execute("insert into events values (1.0, 'sk-live-0123456789', 'openai')")  # a real leak
        conn.close()
        assert len(scan(planted)) == 1
    finally:
        # Planted on purpose: gone before the end-of-run scan walks this directory.
        shutil.rmtree(planted, ignore_errors=True)
