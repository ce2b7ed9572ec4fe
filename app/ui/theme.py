"""One visual language (ui.md): light and dark palettes that follow the OS, and colours that mean one thing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.core.event import FAILURE_TYPES, Failure
from app.ui.qt import QtCore, QtGui, QtWidgets


class Scheme(StrEnum):
    SYSTEM = "system"
    LIGHT = "light"
    DARK = "dark"


@dataclass(frozen=True)
class Colors:
    window: str
    base: str
    alt_base: str
    text: str
    muted: str
    rail: str
    rail_text: str
    accent: str
    border: str
    ok: str
    warn: str
    bad: str


LIGHT = Colors(
    window="#f6f7f9",
    base="#ffffff",
    alt_base="#f0f2f5",
    text="#1d2330",
    muted="#5f6b7a",
    rail="#e9ecf1",
    rail_text="#2b3340",
    accent="#2f6fdb",
    border="#d5dae1",
    ok="#1e8e3e",
    warn="#c77c02",
    bad="#d93025",
)
DARK = Colors(
    window="#1b1e24",
    base="#22262e",
    alt_base="#2a2f38",
    text="#e6e9ef",
    muted="#9aa4b2",
    rail="#15181d",
    rail_text="#d5dae3",
    accent="#6ea0ff",
    border="#363c47",
    ok="#4cc26b",
    warn="#f0b429",
    bad="#ff6b5e",
)

#: Failure types in legend order, one fixed colour-blind-safe palette (Okabe-Ito and Tol).
FAILURE_COLORS: dict[Failure, str] = dict(
    zip(
        FAILURE_TYPES,
        [
            "#E69F00",
            "#56B4E9",
            "#CC79A7",
            "#D55E00",
            "#0072B2",
            "#B8A600",
            "#882255",
            "#999933",
            "#44AA99",
            "#AA4499",
        ],
        strict=True,
    )
)


def system_is_dark(app: QtGui.QGuiApplication) -> bool:
    hints = app.styleHints()
    scheme = hints.colorScheme() if hasattr(hints, "colorScheme") else None
    if scheme == QtCore.Qt.ColorScheme.Dark:
        return True
    if scheme == QtCore.Qt.ColorScheme.Light:
        return False
    # Unknown (offscreen, old desktops): judge by the platform's window colour.
    return app.palette().color(QtGui.QPalette.ColorRole.Window).lightness() < 128


def colors_for(app: QtGui.QGuiApplication, scheme: Scheme) -> Colors:
    if scheme is Scheme.DARK:
        return DARK
    if scheme is Scheme.LIGHT:
        return LIGHT
    return DARK if system_is_dark(app) else LIGHT


def apply_theme(app: QtWidgets.QApplication, scheme: Scheme = Scheme.SYSTEM) -> Colors:
    """Fusion with our palette, so the app looks the same on every OS, in light or dark."""
    colors = colors_for(app, scheme)
    app.setStyle("Fusion")
    pal = QtGui.QPalette()
    role = QtGui.QPalette.ColorRole
    c = QtGui.QColor
    pal.setColor(role.Window, c(colors.window))
    pal.setColor(role.WindowText, c(colors.text))
    pal.setColor(role.Base, c(colors.base))
    pal.setColor(role.AlternateBase, c(colors.alt_base))
    pal.setColor(role.Text, c(colors.text))
    pal.setColor(role.Button, c(colors.alt_base))
    pal.setColor(role.ButtonText, c(colors.text))
    pal.setColor(role.ToolTipBase, c(colors.base))
    pal.setColor(role.ToolTipText, c(colors.text))
    pal.setColor(role.PlaceholderText, c(colors.muted))
    pal.setColor(role.Highlight, c(colors.accent))
    pal.setColor(role.HighlightedText, c(selected_text(colors)))
    pal.setColor(role.Link, c(colors.accent))
    pal.setColor(QtGui.QPalette.ColorGroup.Disabled, role.Text, c(colors.muted))
    pal.setColor(QtGui.QPalette.ColorGroup.Disabled, role.WindowText, c(colors.muted))
    pal.setColor(QtGui.QPalette.ColorGroup.Disabled, role.ButtonText, c(colors.muted))
    app.setPalette(pal)
    app.setStyleSheet(stylesheet(colors))
    app.setProperty("controlroom_colors", colors)
    return colors


def current_colors() -> Colors:
    app = QtWidgets.QApplication.instance()
    colors = app.property("controlroom_colors") if app is not None else None
    return colors if isinstance(colors, Colors) else LIGHT


def selected_text(c: Colors) -> str:
    """Text on a selected row: white on the light theme's deep accent; on the dark theme's light
    accent white reads at under 3:1, its darkest colour at over 6:1."""
    return c.rail if QtGui.QColor(c.accent).lightnessF() > 0.6 else "#ffffff"


def stylesheet(c: Colors) -> str:
    # A selected row's text in the selection colour, whatever colour a cell asks for (a state in
    # green or amber on the dark theme's light blue would not read).
    return f"""
    QAbstractItemView::item:selected {{ color: {selected_text(c)}; }}
    QListWidget#rail {{ background: {c.rail}; color: {c.rail_text}; border: none; font-size: 13px;
                        padding-top: 6px; outline: 0; }}
    QListWidget#rail::item {{ padding: 7px 12px; border-left: 3px solid transparent; }}
    QListWidget#rail::item:selected {{ background: {c.base}; color: {c.text}; border-left: 3px solid {c.accent}; }}
    QLabel#pageTitle {{ font-size: 18px; font-weight: 600; }}
    QLabel#muted, QLabel[muted="true"] {{ color: {c.muted}; }}
    QFrame#tile {{ background: {c.base}; border: 1px solid {c.border}; border-radius: 6px; }}
    QLabel#tileValue {{ font-size: 22px; font-weight: 600; }}
    QLabel#tileTitle {{ color: {c.muted}; font-size: 12px; }}
    QFrame#emptyState {{ background: {c.base}; border: 1px dashed {c.border}; border-radius: 6px; }}
    QLabel#badgeDemo {{ background: {c.warn}; color: #1b1e24; border-radius: 3px; padding: 0 6px; font-weight: 600; }}
    QStatusBar QLabel {{ padding: 0 6px; }}
    """
