"""Test-wide set-up: offscreen Qt, private directories, and no leaked threads.

Every test gets its own CONTROLROOM_HOME so nothing touches the operator's real
store, settings or caches (style.md item 9).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Without a platform and without DISPLAY, Qt aborts inside the qapp fixture and
# pytest hides why (platform-notes.md).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("CONTROLROOM_TEST", "1")

_SHARED_CACHE: Path | None = None


@pytest.fixture(autouse=True)
def _private_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CONTROLROOM_HOME", str(home))
    monkeypatch.delenv("CONTROLROOM_STORE", raising=False)
    # Keep tiktoken's unpacked encodings in one place for the session: they are
    # 5 MB and immutable, and re-unpacking them per test only costs time.
    global _SHARED_CACHE
    if _SHARED_CACHE is None:
        _SHARED_CACHE = tmp_path_factory.mktemp("tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_SHARED_CACHE))
    yield home


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves one of our threads running (they are all named controlroom-*)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.is_alive() and t.name.startswith("controlroom-")
        ]
        if not leaked or time.monotonic() > deadline:
            break
        leaked[0].join(timeout=0.1)
    assert not leaked, f"test left threads running: {[t.name for t in leaked]}"


# Shared fixtures that need a real server (PostgreSQL) live in their own module
# so that one place decides how the server is started (platform-notes.md).
pytest_plugins = ["tests.postgres", "tests.integration.sim_fixtures", "tests.secret_scan"]
