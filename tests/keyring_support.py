"""Helpers to reach a real Secret Service in tests: present in CI (.ci/run), maybe absent on a laptop."""

from __future__ import annotations

import os

import pytest


def require_secret_service() -> None:
    """Skip (or, in CI, fail) unless a real, unlocked Secret Service keyring is reachable."""
    import keyring
    import keyring.backends.SecretService as ss

    reason = None
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        reason = "no D-Bus session (run under dbus-run-session with gnome-keyring-daemon --unlock, as .ci/run does)"
    else:
        backend = ss.Keyring()
        try:
            ok = backend.priority > 0
        except Exception as exc:
            ok = False
            reason = f"the Secret Service is not usable here: {type(exc).__name__}: {exc}"
        if ok:
            keyring.set_keyring(backend)
        elif reason is None:
            reason = "the Secret Service backend is not available"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide a real keyring: {reason}")
        pytest.skip(reason)
