"""The one place Qt is imported from (style.md item 2, after qutebrowser's ``qt`` package).

A binding change or a workaround lives here and nowhere else.
"""

from PySide6 import QtCore, QtGui, QtTest, QtWidgets
from PySide6.QtCore import Property, QObject, QSettings, Qt, QTimer, Signal, Slot

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
