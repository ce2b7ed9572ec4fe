"""API keys in the OS keyring, and nowhere else.

Follows vorta's idea of a backend chain with a *visible* fallback: the
operator is always told which backend holds the keys, and when no secure
backend exists (no D-Bus session, a locked keyring, only a plain-text
backend) we say so plainly and refuse — we never fall back to plain text
silently (style.md item 6, platform-notes.md).

Keys are stored under the service ``controlroom`` with the provider name as
user name (``NAME`` for the API key, ``NAME:admin`` for an admin key).  The
keyring has no listing call, so a small index of provider names (never keys)
is kept under ``controlroom`` / ``_index``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from enum import StrEnum

SERVICE = "controlroom"
_INDEX_USER = "_index"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Backends that keep secrets readable on disk.  keyrings.alt's are the usual
# suspects; we refuse them rather than store a key where anyone can read it.
_INSECURE_BACKEND_MODULES = ("keyrings.alt", "keyring.backends.null", "keyring.backends.fail")


class KeyKind(StrEnum):
    API = "api"
    ADMIN = "admin"


class SecretsUnavailable(RuntimeError):
    """No secure keyring backend can be used now.  The message is meant for the operator."""


class InvalidProviderName(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BackendStatus:
    available: bool
    backend: str
    message: str


def _user(provider: str, kind: KeyKind) -> str:
    if not _NAME_RE.match(provider):
        raise InvalidProviderName(
            f"provider name {provider!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return provider if kind is KeyKind.API else f"{provider}:admin"


def backend_status() -> BackendStatus:
    """Which keyring backend would hold our keys, and whether it is usable."""
    import keyring
    import keyring.errors

    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a broken keyring config raises anything at all
        return BackendStatus(False, "none", f"The keyring could not be loaded: {type(exc).__name__}.")
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    label = getattr(backend, "name", type(backend).__name__)
    if name.startswith(_INSECURE_BACKEND_MODULES) or _only_insecure(backend):
        return BackendStatus(
            False,
            label,
            "No secure keyring is available (no Secret Service, KWallet, macOS Keychain or Windows "
            "Credential Locker was found). API keys are never stored in plain text: start or unlock "
            "your desktop keyring, or pass keys with env:VAR_NAME in the config.",
        )
    locked = getattr(backend, "is_locked", None)
    return BackendStatus(True, label, f"Keys are kept in {label}." if not locked else f"{label} (locked)")


def _only_insecure(backend: object) -> bool:
    backends = getattr(backend, "backends", None)
    if backends is None:
        return False
    return all(f"{type(b).__module__}".startswith(_INSECURE_BACKEND_MODULES) for b in backends)


def _require_backend() -> None:
    status = backend_status()
    if not status.available:
        raise SecretsUnavailable(status.message)


def _translate(exc: Exception, action: str) -> SecretsUnavailable:
    import keyring.errors

    if isinstance(exc, keyring.errors.NoKeyringError):
        return SecretsUnavailable(backend_status().message)
    text = str(exc) or type(exc).__name__
    if "locked" in text.lower() or type(exc).__name__ == "KeyringLocked":
        return SecretsUnavailable(f"The keyring is locked; unlock it and try again ({action}).")
    if "dismissed" in text.lower():
        return SecretsUnavailable(
            f"The keyring asked to be unlocked and the prompt was dismissed ({action})."
        )
    return SecretsUnavailable(f"The keyring refused to {action}: {type(exc).__name__}.")


def set_key(provider: str, secret: str, kind: KeyKind = KeyKind.API) -> None:
    import keyring
    import keyring.errors

    user = _user(provider, kind)
    if not secret or not secret.strip():
        raise ValueError("an empty key was given; nothing was stored")
    _require_backend()
    try:
        keyring.set_password(SERVICE, user, secret.strip())
        names = set(_read_index())
        names.add(provider)
        keyring.set_password(SERVICE, _INDEX_USER, json.dumps(sorted(names)))
    except keyring.errors.KeyringError as exc:
        raise _translate(exc, "store the key") from None


def get_key(provider: str, kind: KeyKind = KeyKind.API) -> str | None:
    import keyring
    import keyring.errors

    user = _user(provider, kind)
    _require_backend()
    try:
        return keyring.get_password(SERVICE, user)
    except keyring.errors.KeyringError as exc:
        raise _translate(exc, "read the key") from None


def delete_key(provider: str, kind: KeyKind | None = None) -> bool:
    """Delete one kind of key, or both when ``kind`` is None.  True when something was deleted."""
    import keyring
    import keyring.errors

    _require_backend()
    kinds = [kind] if kind is not None else list(KeyKind)
    deleted = False
    try:
        for k in kinds:
            try:
                keyring.delete_password(SERVICE, _user(provider, k))
                deleted = True
            except keyring.errors.PasswordDeleteError:
                pass
        if not any(keyring.get_password(SERVICE, _user(provider, k)) for k in KeyKind):
            names = set(_read_index())
            names.discard(provider)
            keyring.set_password(SERVICE, _INDEX_USER, json.dumps(sorted(names)))
    except keyring.errors.KeyringError as exc:
        raise _translate(exc, "delete the key") from None
    return deleted


def list_keys() -> dict[str, list[KeyKind]]:
    """Provider name -> the kinds of key held for it.  Never returns a secret."""
    import keyring
    import keyring.errors

    _require_backend()
    result: dict[str, list[KeyKind]] = {}
    try:
        for name in _read_index():
            kinds = [k for k in KeyKind if keyring.get_password(SERVICE, _user(name, k))]
            if kinds:
                result[name] = kinds
    except keyring.errors.KeyringError as exc:
        raise _translate(exc, "list the keys") from None
    return result


def _read_index() -> list[str]:
    import keyring

    raw = keyring.get_password(SERVICE, _INDEX_USER)
    if not raw:
        return []
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [n for n in names if isinstance(n, str) and _NAME_RE.match(n)]


def resolve_key_ref(ref: str | None, provider: str, kind: KeyKind = KeyKind.API) -> str | None:
    """Turn a config reference (``keyring``, ``env:VAR``, ``none``) into the key itself, at the moment of use."""
    if ref is None or ref == "none":
        return None
    if ref.startswith("env:"):
        var = ref[4:]
        value = os.environ.get(var)
        if not value:
            raise SecretsUnavailable(
                f"the environment variable {var} named for {provider}'s {kind.value} key is not set"
            )
        return value
    if ref == "keyring" or ref.startswith("keyring"):
        key = get_key(provider, kind)
        if key is None:
            raise SecretsUnavailable(
                f"no {kind.value} key for {provider} in the keyring; add one with `controlroom keys set {provider}`"
            )
        return key
    raise ValueError(f"unknown key reference {ref!r}: use keyring, env:VAR_NAME or none")
