"""The one place Qt is imported from (style.md item 2, after qutebrowser's ``qt`` package).

A binding change or a workaround lives here and nowhere else.
"""

import builtins

from PySide6 import QtCore, QtGui, QtTest, QtWidgets
from PySide6.QtCore import Property, QObject, QSettings, Qt, QTimer, Signal, Slot

# PySide6 replaces ``__import__`` with a hook that serves ``from __feature__
# import snake_case``: on every module imported after Qt it reads the module's
# source with ``inspect.getsource``.  That slows every later import and, in the
# frozen build, raced pydantic's own lazy imports (genai-prices uses pydantic):
# "cannot import name 'import_string' from partially initialized module" in
# about 1 of 25 frozen starts.  We use no ``__feature__`` switches, so we put
# the interpreter's own import back.
_orig_import = getattr(builtins, "__orig_import__", None)
if _orig_import is not None and builtins.__import__ is not _orig_import:
    builtins.__import__ = _orig_import

__all__ = [
    "Property",
    "QObject",
    "QSettings",
    "QTimer",
    "Qt",
    "QtCore",
    "QtGui",
    "QtTest",
    "QtWidgets",
    "Signal",
    "Slot",
]
