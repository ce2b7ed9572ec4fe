"""Guards against a known-bad Qt binding.

PySide6 6.12.0 drops one reference to ``None`` on every call of a static
method that returns void (``QCoreApplication.processEvents``,
``QTimer.singleShot``...).  A running app makes such calls all the time and
aborts with "none_dealloc" after a few thousand.  The pin in pyproject.toml
keeps it out; this test notices if it comes back.
"""

from __future__ import annotations

import sys

import pytest

from app.ui.qt import QtCore

pytestmark = pytest.mark.gui


def test_static_qt_calls_do_not_leak_references_to_none(qapp: object) -> None:
    before = sys.getrefcount(None)
    for _ in range(2000):
        QtCore.QCoreApplication.processEvents()
        QtCore.QCoreApplication.sendPostedEvents()
    after = sys.getrefcount(None)
    # Other threads may hold or drop a few references meanwhile; a leak is thousands.
    assert before - after < 500, f"None lost {before - after} references: a broken PySide6 build"
