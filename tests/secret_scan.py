"""After the whole run: no API key in any store file, log or export the tests left behind.

Every test works under pytest's base temporary directory (its CONTROLROOM_HOME, its stores, the
files it exported), so one walk of that directory at the end of the session sees everything the
code wrote.  Tests use keys shaped like real ones (``sk-…``, ``sk-ant-…``, ``sk-proj-…``); any of
them found in a store file, a log or an export fails the run, naming the file and the offset
(never the key itself).

Input files a test writes on purpose (a YAML config with a literal key, to prove it is refused)
are not the code's output, so only what the code writes is scanned: SQLite files and their
journals, logs, and the export formats.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest

#: Shapes of the keys the tests use (and of real ones).
KEY = re.compile(rb"sk-(?:ant-|proj-|live-|test-|admin-|kr-|remote-|frozen-)?[A-Za-z0-9_-]{6,}")
#: What the code writes: store files, logs, exports.
SCANNED = (
    *(f"{db}{suffix}" for db in (".db", ".sqlite", ".sqlite3") for suffix in ("", "-wal", "-journal")),
    ".log",
    ".csv",
    ".md",
    ".ndjson",
)


def scan(root: Path) -> list[str]:
    """``path:offset`` for each key-shaped string in a scanned file under ``root``."""
    found: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(SCANNED) and not _is_export_json(name):
                continue
            path = Path(dirpath) / name
            try:
                data = path.read_bytes()
            except OSError:  # removed while we walked: nothing left to leak
                continue
            found.extend(f"{path}:{m.start()}" for m in KEY.finditer(data) if _is_leak(path, data, m))
    return found


#: Bytes that lead into a key inside a longer text: a header, JSON, an assignment.
_TEXT_LEADS = frozenset(b" \"'=:")
_SQLITE = (".db", ".sqlite", ".sqlite3")
_SHORTEST_KEY = len("sk-") + 6


def _is_leak(path: Path, data: bytes, match: re.Match[bytes]) -> bool:
    """Every hit counts, but one in a SQLite file that is no text of the store.

    A SQLite record keeps its values side by side with no separator, so a float
    whose last bytes happen to spell ``sk-`` right before a text column (one
    event in about 16 million) looks like a key.  Such a hit counts only when
    the store holds the string in a text or blob value, or when text leads
    into it (a key inside a longer value, left in a freed page).
    """
    if not path.name.endswith(
        tuple(f"{db}{suffix}" for db in _SQLITE for suffix in ("", "-wal", "-journal"))
    ):
        return True
    if match.start() > 0 and data[match.start() - 1] in _TEXT_LEADS:
        return True
    database = path.with_name(path.name.removesuffix("-wal").removesuffix("-journal"))
    # The shortest key shape: the match may run on into the next column's text.
    return _holds_text(database, match.group()[:_SHORTEST_KEY].decode("ascii"))


def _holds_text(database: Path, text: str) -> bool:
    """True when some text or blob value of the database contains ``text`` (or it cannot be read)."""
    try:
        conn = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return True
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                hit = conn.execute(
                    f'SELECT 1 FROM "{table}" WHERE instr(CAST("{column}" AS BLOB), CAST(? AS BLOB)) > 0 LIMIT 1',
                    (text,),
                ).fetchone()
                if hit is not None:
                    return True
        return False
    except sqlite3.Error:
        return True
    finally:
        conn.close()


def _is_export_json(name: str) -> bool:
    """Exports are named by what they hold (``audit-….json``, ``report….json``, ``…export….json``)."""
    return name.endswith(".json") and any(w in name for w in ("export", "audit", "report", "series"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller scans everything once
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        root = factory.getbasetemp()
    except (OSError, ValueError):
        return
    leaks = scan(root)
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  {where}" for where in leaks[:50])
        message = (
            f"\nSECRET SCAN: {len(leaks)} key-shaped string(s) in store files, logs or exports:\n{lines}\n"
        )
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
