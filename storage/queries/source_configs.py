"""Configured log sources (the ``sources`` table): what ``controlroom collect`` and the app run.

A source config is a name, a kind (``jsonl``, ``otlp``, ``http_poll``,
``usage_api``), its settings (a JSON object, checked by the source that runs
it) and whether the operator paused it.  Saving bumps ``revision``, so a
running collector sees the change and restarts that source.  Secrets never
enter here: a token is a reference (``keyring``, ``keyring:ENTRY``,
``env:VAR``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from storage.engine import transaction
from storage.models import SOURCES

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


def list_source_configs(bind: Engine | Connection) -> list[SourceConfig]:
    c = SOURCES.c
    with transaction(bind) as conn:
        rows = conn.execute(select(c.name, c.kind, c.settings, c.paused, c.revision).order_by(c.name)).all()
    return [
        SourceConfig(r.name, r.kind, dict(r.settings or {}), bool(r.paused), int(r.revision)) for r in rows
    ]


def get_source_config(bind: Engine | Connection, name: str) -> SourceConfig | None:
    return next((s for s in list_source_configs(bind) if s.name == name), None)


def save_source_config(
    bind: Engine | Connection, config: SourceConfig, *, now: float | None = None
) -> SourceConfig:
    """Create or replace a source config (its revision goes up by one).  Raises :class:`SourceConfigError`."""
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
        row = conn.execute(select(c.revision).where(c.name == config.name)).first()
        if row is None:
            revision = 1
            conn.execute(
                insert(SOURCES).values(name=config.name, revision=revision, created_at=now, **values)
            )
        else:
            revision = int(row[0]) + 1
            conn.execute(update(SOURCES).where(c.name == config.name).values(revision=revision, **values))
    return SourceConfig(config.name, config.kind, dict(config.settings), config.paused, revision)


def delete_source_config(bind: Engine | Connection, name: str) -> bool:
    with transaction(bind, write=True) as conn:
        return bool(conn.execute(delete(SOURCES).where(SOURCES.c.name == name)).rowcount)


__all__ = [
    "SOURCE_KINDS",
    "SourceConfig",
    "SourceConfigError",
    "delete_source_config",
    "get_source_config",
    "list_source_configs",
    "save_source_config",
]
