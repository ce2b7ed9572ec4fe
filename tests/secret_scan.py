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
from pathlib import Path

import pytest

#: Shapes of the keys the tests use (and of real ones).
KEY = re.compile(rb"sk-(?:ant-|proj-|live-|test-|admin-|kr-|remote-|frozen-)?[A-Za-z0-9_-]{6,}")
#: What the code writes: store files, logs, exports.
SCANNED = (".db", ".db-wal", ".db-journal", ".sqlite", ".sqlite3", ".log", ".csv", ".md", ".ndjson")


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
            found.extend(f"{path}:{m.start()}" for m in KEY.finditer(data))
    return found


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
