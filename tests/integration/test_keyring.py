"""API keys go into a real Secret Service keyring, and nowhere else."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator

import keyring
import keyring.backends.fail
import pytest

from app import secrets
from tests.keyring_support import require_secret_service

pytestmark = pytest.mark.keyring


@pytest.fixture
def real_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_secret_service()
    service = f"controlroom-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(secrets, "SERVICE", service)
    yield service
    for user in ("p1", "p1:admin", "_index"):
        with contextlib.suppress(keyring.errors.PasswordDeleteError):
            keyring.delete_password(service, user)


def test_set_get_list_delete_round_trip(real_keyring: str) -> None:
    status = secrets.backend_status()
    assert status.available, status.message
    secrets.set_key("p1", "sk-live-secret-123")
    secrets.set_key("p1", "sk-admin-456", secrets.KeyKind.ADMIN)
    assert secrets.get_key("p1") == "sk-live-secret-123"
    assert keyring.get_password(real_keyring, "p1") == "sk-live-secret-123"  # really in the Secret Service
    assert secrets.list_keys() == {"p1": [secrets.KeyKind.API, secrets.KeyKind.ADMIN]}
    assert secrets.delete_key("p1", secrets.KeyKind.API)
    assert secrets.get_key("p1") is None
    assert secrets.list_keys() == {"p1": [secrets.KeyKind.ADMIN]}
    assert secrets.delete_key("p1")
    assert secrets.list_keys() == {}


def test_cli_reads_the_key_from_stdin_never_argv(real_keyring: str, tmp_path: object) -> None:
    env_service = real_keyring
    code = (
        "import sys; from app import secrets; secrets.SERVICE = sys.argv[1]; "
        "from app.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, env_service, "keys", "set", "p1"],
        input="sk-from-stdin-789\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "sk-from-stdin" not in done.stdout + done.stderr
    assert secrets.get_key("p1") == "sk-from-stdin-789"
    listed = subprocess.run(
        [sys.executable, "-c", code, env_service, "keys", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0
    assert "p1\tapi" in listed.stdout
    assert "sk-from-stdin" not in listed.stdout


def test_no_backend_is_said_plainly_and_nothing_is_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    try:
        status = secrets.backend_status()
        assert not status.available
        assert "never stored in plain text" in status.message
        with pytest.raises(secrets.SecretsUnavailable, match="No secure keyring"):
            secrets.set_key("p1", "sk-should-not-be-stored")
        with pytest.raises(secrets.SecretsUnavailable):
            secrets.get_key("p1")
    finally:
        keyring.set_keyring(previous)


def test_bad_input_gets_a_clear_error() -> None:
    with pytest.raises(secrets.InvalidProviderName):
        secrets.set_key("../etc/passwd", "x")
    with pytest.raises(ValueError, match="empty key"):
        secrets.set_key("p1", "   ")


def test_key_references_resolve_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-env")
    assert secrets.resolve_key_ref("env:MY_KEY", "p1") == "sk-env"
    assert secrets.resolve_key_ref("none", "p1") is None
    with pytest.raises(secrets.SecretsUnavailable, match="MISSING_VAR"):
        secrets.resolve_key_ref("env:MISSING_VAR", "p1")
