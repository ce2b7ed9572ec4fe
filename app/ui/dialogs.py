"""Dialogs that explain a problem plainly and offer the next step."""

from __future__ import annotations

from app.secrets import BackendStatus
from app.ui.qt import QtWidgets


def keyring_problem_box(
    status: BackendStatus, parent: QtWidgets.QWidget | None = None
) -> QtWidgets.QMessageBox:
    """The dialog shown when a key is first needed and no secure keyring can hold it."""
    box = QtWidgets.QMessageBox(parent)
    box.setIcon(QtWidgets.QMessageBox.Icon.Warning)
    box.setWindowTitle("No secure keyring")
    box.setText("Control Room cannot store this API key.")
    box.setInformativeText(status.message)
    box.setDetailedText(
        f"Keyring backend found: {status.backend}.\n\n"
        "Control Room keeps API keys only in the operating system's keyring (Secret Service / GNOME Keyring or "
        "KWallet on Linux, Keychain on macOS, Credential Locker on Windows). It never falls back to a plain-text "
        "file. You can also give a provider's key through an environment variable (api_key: env:VAR_NAME in the "
        "config file)."
    )
    box.setStandardButtons(QtWidgets.QMessageBox.StandardButton.Ok)
    return box


def require_keyring(status: BackendStatus, parent: QtWidgets.QWidget | None = None) -> bool:
    """True when keys can be stored; otherwise explain why not (modal) and return False."""
    if status.available:
        return True
    keyring_problem_box(status, parent).exec()
    return False
