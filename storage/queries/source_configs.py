"""Configured log sources (the ``sources`` table): what ``controlroom collect`` and the app run.

A source config is a name, a kind (``jsonl``, ``otlp``, ``http_poll``,
``usage_api``), its settings (a JSON object, checked by the source that runs
it) and whether the operator paused it.  Saving bumps ``revision``, so a
running collector sees the change and restarts that source.  Secrets never
enter here: a token is a reference (``keyring``, ``keyring:ENTRY``,
``env:VAR``).

Every change (create, update, pause, resume, delete) is a control change: it
writes an audit row (``object_type`` ``"source"``, before and after) and bumps
the control version in the same transaction, so a running collector applies it
within a second and the Audit page shows who did it and why.  A save may name
the revision it was based on; a stale one is refused with
:class:`~storage.queries.control.StaleRevision`.
"""

from __future__ import annotations

import getpass
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal, TypeAlias

from sqlalchemy import Connection, Engine, delete, insert, select, update

from storage.engine import transaction
from storage.models import SOURCES
from storage.queries.control import StaleRevision, record_audit

SOURCE_KINDS: tuple[str, ...] = ("jsonl", "otlp", "http_poll", "usage_api")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# Settings keys that would hold a secret rather than a reference to one.
_SECRET_KEYS = frozenset({"token", "api_key", "admin_key", "password", "secret"})
_REF = re.compile(r"^(keyring(:[A-Za-z0-9._/-]{1,128})?|env:[A-Za-z_][A-Za-z0-9_]*|none)$")


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    paused: bool = False
    revision: int = 0

    def as_dict(self) -> dict[str, Any]:
        """What the audit log keeps of it (settings hold references only, never secrets)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "settings": dict(self.settings),
            "paused": self.paused,
            "revision": self.revision,
        }

    def check(self) -> list[str]:
        """Every problem with this config (empty when it is fine)."""
        problems = []
        if not _NAME.match(self.name):
            problems.append(
                f"name {self.name!r} must be 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
            )
        if self.kind not in SOURCE_KINDS:
            problems.append(f"kind {self.kind!r} must be one of {', '.join(SOURCE_KINDS)}")
        if not isinstance(self.settings, Mapping):
            problems.append("settings must be an object")
            return problems
        for key in sorted(_SECRET_KEYS & set(self.settings)):
            value = self.settings[key]
            if not (isinstance(value, str) and _REF.fullmatch(value)):
                # Never echo the value: it may be a pasted secret.
                problems.append(
                    f"settings.{key} must be a reference (keyring, keyring:ENTRY, env:VAR or none), not a secret; "
                    "store the secret with `controlroom keys set ENTRY`"
                )
        return problems


class SourceConfigError(ValueError):
    pass


class _Any(Enum):
    ANY = "any"


#: ``expected_revision`` for a save that creates or replaces whatever is there (config files, scripts).
ANY_REVISION: Final = _Any.ANY
Expected: TypeAlias = int | Literal[_Any.ANY] | None


def _who(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a bare container): still say something
        return "unknown"


def _row(conn: Connection, name: str) -> SourceConfig | None:
    c = SOURCES.c
    r = conn.execute(select(c.name, c.kind, c.settings, c.paused, c.revision).where(c.name == name)).first()
    if r is None:
        return None
    return SourceConfig(r.name, r.kind, dict(r.settings or {}), bool(r.paused), int(r.revision))


def _check_revision(name: str, before: SourceConfig | None, expected: Expected) -> None:
    if expected is ANY_REVISION:
        return
    actual = before.revision if before is not None else None
    if expected != actual:
        raise StaleRevision("source", name, expected, actual)


def list_source_configs(bind: Engine | Connection) -> list[SourceConfig]:
    c = SOURCES.c
    with transaction(bind) as conn:
        rows = conn.execute(select(c.name, c.kind, c.settings, c.paused, c.revision).order_by(c.name)).all()
    return [
        SourceConfig(r.name, r.kind, dict(r.settings or {}), bool(r.paused), int(r.revision)) for r in rows
    ]


def get_source_config(bind: Engine | Connection, name: str) -> SourceConfig | None:
    with transaction(bind) as conn:
        return _row(conn, name)


def save_source_config(
    bind: Engine | Connection,
    config: SourceConfig,
    *,
    expected_revision: Expected = ANY_REVISION,
    actor: str | None = None,
    reason: str = "",
    now: float | None = None,
) -> SourceConfig:
    """Create or replace a source config; its revision goes up by one.  Audited; bumps the control version.

    ``expected_revision``: ``None`` to create only (refused when the name is
    taken), the revision you loaded to update only that, or :data:`ANY_REVISION`
    to create or replace.  ``actor`` defaults to the OS user.  Raises
    :class:`SourceConfigError` listing every problem with ``config``, and
    :class:`~storage.queries.control.StaleRevision` when the store moved on.
    """
    problems = config.check()
    if problems:
        raise SourceConfigError(f"source {config.name!r}: " + "; ".join(problems))
    now = time.time() if now is None else now
    c = SOURCES.c
    values = {
        "kind": config.kind,
        "settings": dict(config.settings),
        "paused": config.paused,
        "updated_at": now,
    }
    with transaction(bind, write=True) as conn:
        before = _row(conn, config.name)
        _check_revision(config.name, before, expected_revision)
        if before is None:
            revision = 1
            conn.execute(
                insert(SOURCES).values(name=config.name, revision=revision, created_at=now, **values)
            )
            action = "create"
        else:
            revision = before.revision + 1
            conn.execute(update(SOURCES).where(c.name == config.name).values(revision=revision, **values))
            if before.paused != config.paused and dict(before.settings) == dict(config.settings):
                action = "pause" if config.paused else "resume"
            else:
                action = "update"
        after = SourceConfig(config.name, config.kind, dict(config.settings), config.paused, revision)
        record_audit(
            conn,
            _who(actor),
            action,
            "source",
            config.name,
            before.as_dict() if before is not None else None,
            after.as_dict(),
            reason,
            now=now,
        )
    return after


def set_source_paused(
    bind: Engine | Connection,
    name: str,
    paused: bool,
    *,
    expected_revision: Expected = ANY_REVISION,
    actor: str | None = None,
    reason: str = "",
    now: float | None = None,
) -> SourceConfig:
    """Pause or resume a stored source (audited).  Raises ``LookupError`` when there is none by that name."""
    with transaction(bind, write=True) as conn:
        current = _row(conn, name)
        if current is None:
            raise LookupError(f"source {name!r} does not exist")
        _check_revision(name, current, expected_revision)
        changed = SourceConfig(current.name, current.kind, dict(current.settings), paused, current.revision)
        return save_source_config(
            conn, changed, expected_revision=current.revision, actor=actor, reason=reason, now=now
        )


def delete_source_config(
    bind: Engine | Connection,
    name: str,
    *,
    expected_revision: Expected = ANY_REVISION,
    actor: str | None = None,
    reason: str = "",
    now: float | None = None,
) -> SourceConfig | None:
    """Remove a source config (audited, with what it was).  Returns what was removed, ``None`` if nothing was.

    Its read position and quarantined records stay: adding it back resumes where it stopped.
    """
    with transaction(bind, write=True) as conn:
        before = _row(conn, name)
        if before is None:
            if isinstance(expected_revision, int):
                raise StaleRevision("source", name, expected_revision, None)
            return None
        _check_revision(name, before, expected_revision)
        conn.execute(delete(SOURCES).where(SOURCES.c.name == name))
        record_audit(conn, _who(actor), "delete", "source", name, before.as_dict(), None, reason, now=now)
    return before


__all__ = [
    "ANY_REVISION",
    "SOURCE_KINDS",
    "SourceConfig",
    "SourceConfigError",
    "delete_source_config",
    "get_source_config",
    "list_source_configs",
    "save_source_config",
    "set_source_paused",
]
