"""Undo a control change from the audit log, as a new audited change (ui.md "Acting safely").

Only the newest change to an object can be reverted: reverting an older one
would silently drop everything after it.  A revert is itself a change — it
goes through the same write path as the UI or ``config apply`` (``save_object``
/ ``delete_object`` with the revision the audit row left, ``set_breaker_override``,
the prompt registry), so it is audited ("revert of #ID: why"), bumps the
control version, and is refused with :class:`~storage.queries.control.StaleRevision`
or :class:`RevertRefused` when the object moved on since the row was written.

What each change reverts to:

- provider / target / route / budget: ``create`` -> delete it, ``update`` -> save
  the ``before`` again, ``delete`` -> create the ``before`` again.
- breaker (the operator's switch): the override before the change, or ``auto``
  when there was none or it has expired since.
- breaker_defaults (``breakers.default`` of a config file): the previous defaults.
- source (storage.queries.source_configs): ``create`` -> remove it, ``update`` / ``pause`` /
  ``resume`` -> save the ``before`` again, ``delete`` -> add the ``before`` back.
- prompt ``promote`` / ``rollback``: the active version before it
  (``storage.queries.prompts.set_active_version``); a ``create_version`` cannot
  be undone (versions are immutable: promote another one instead).

:func:`plan_revert` says what a revert would do without doing it (the
confirmation dialog); :func:`revert_change` does it.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Engine

from app.gateway.control import BREAKER_DEFAULTS
from storage.engine import Store, transaction
from storage.queries import control as q
from storage.queries.control import AuditEntry, ConflictError

Bind = Store | Engine | Connection

#: Fields every stored object carries that say nothing about what it does.
BOOKKEEPING = frozenset({"revision", "created_at", "updated_at", "id"})


class RevertRefused(ConflictError):
    """The change cannot be reverted now; the message says why and what to do."""


class NotRevertible(ValueError):
    """This kind of change can never be reverted (the message says what to do instead)."""


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs between two states, values as short readable text."""

    path: str  # "settings.retry.max_attempts"
    before: str | None  # None: the field was absent
    after: str | None  # None: the field is gone

    @property
    def kind(self) -> str:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "changed"


@dataclass(frozen=True, slots=True)
class RevertPlan:
    """What reverting one audit row would do, said before doing it."""

    entry: AuditEntry
    summary: str  # one sentence: "Restore route 'default' as it was before #12."
    current: Any  # the object as it is now (None: it does not exist)
    result: Any  # the object as the revert leaves it (None: deleted / no override)
    changes: list[FieldChange]  # current -> result


def _conn_bind(bind: Bind) -> Engine | Connection:
    return bind.engine if isinstance(bind, Store) else bind


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key in value:
            if not prefix and key in BOOKKEEPING:
                continue
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif prefix:
        out[prefix] = value


def field_changes(before: Any, after: Any) -> list[FieldChange]:
    """Every field that differs between ``before`` and ``after`` (nested mappings by dotted path).

    Lists are compared whole (a route's rules read best as one value); bookkeeping
    fields (revision, timestamps) are left out; ``None`` stands for "absent".
    """
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    if before is not None:
        _flatten(before, "", old) if isinstance(before, Mapping) else old.update({"value": before})
    if after is not None:
        _flatten(after, "", new) if isinstance(after, Mapping) else new.update({"value": after})
    changes = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        changes.append(
            FieldChange(
                path,
                None if path not in old or a is None else _text(a),
                None if path not in new or b is None else _text(b),
            )
        )
    return changes


# --- the prompt registry: written by another part; used when it is there ------------------


def prompt_registry() -> Callable[..., Any] | None:
    """``storage.queries.prompts.set_active_version`` when the prompt registry has it, else ``None``."""
    try:
        module = importlib.import_module("storage.queries.prompts")
    except ModuleNotFoundError:
        return None
    fn = getattr(module, "set_active_version", None)
    return cast(Callable[..., Any], fn) if callable(fn) else None


def prompt_reverts_available() -> bool:
    return prompt_registry() is not None


# --- planning ---------------------------------------------------------------------------------


def _strip(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in BOOKKEEPING}


def _breaker_state(override: q.BreakerOverride | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if override is None:
        return None
    if isinstance(override, q.BreakerOverride):
        return {
            "target": override.target,
            "state": override.state,
            "reason": override.reason,
            "actor": override.actor,
            "created_at": override.created_at,
            "expires_at": override.expires_at,
        }
    return dict(override)


def _stored_override(conn: Connection, target: str) -> q.BreakerOverride | None:
    for o in q.list_breaker_overrides(conn, include_inactive=True):
        if o.target == target:
            return o
    return None


def _check_latest(conn: Connection, entry: AuditEntry) -> None:
    newer = q.list_audit(conn, object_type=entry.object_type, object_name=entry.object_name, limit=1)
    if newer and newer[0].id != entry.id:
        raise RevertRefused(
            f"only the newest change to {entry.object_type} {entry.object_name!r} can be reverted: "
            f"#{newer[0].id} came after #{entry.id}; reload and revert that one first"
        )


def _prompt_versions(entry: AuditEntry) -> tuple[int | None, int | None]:
    """(active version to go back to, revision the promote left) from a prompt audit row."""

    def pick(value: Any, *keys: str) -> Any:
        if isinstance(value, Mapping):
            for key in keys:
                if key in value:
                    return value[key]
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    version = pick(entry.before, "active_version", "version")
    revision = pick(entry.after, "revision") if isinstance(entry.after, Mapping) else None
    return (
        int(version) if isinstance(version, int) else None,
        int(revision) if isinstance(revision, int) else None,
    )


def _plan(conn: Connection, entry: AuditEntry, now: float) -> RevertPlan:
    kind, name = entry.object_type, entry.object_name
    label = f"{kind} {name!r}"
    if kind in q.CONTROL_KINDS:
        current = q.get_object(conn, cast(q.ControlKind, kind), name)
        if entry.action == "create":
            result = None
            summary = f"Delete {label}, which #{entry.id} created."
        elif entry.action in ("update", "delete"):
            if not isinstance(entry.before, Mapping):
                raise NotRevertible(f"#{entry.id} has no earlier state of {label} to go back to")
            result = _strip(entry.before)
            verb = "Restore" if entry.action == "update" else "Create again"
            summary = f"{verb} {label} as it was before #{entry.id}."
            if kind == "provider" and entry.action == "delete":
                summary += " Its keys are not in the audit log: enter them again if they were removed."
        else:
            raise NotRevertible(f"#{entry.id} ({entry.action}) is not a change that can be reverted")
        return RevertPlan(entry, summary, current, result, field_changes(current, result))
    if kind == "breaker":
        stored = _stored_override(conn, name)
        current = _breaker_state(stored)
        before = entry.before if isinstance(entry.before, Mapping) else None
        expired = (
            before is not None and before.get("expires_at") is not None and float(before["expires_at"]) <= now
        )
        if before is None or before.get("state") == "auto" or expired:
            result = {"target": name, "state": "auto"}
            summary = f"Give the breaker of {name} back to auto (as before #{entry.id})"
            summary += ", the earlier override having expired since." if expired else "."
        else:
            result = {k: before.get(k) for k in ("target", "state", "reason", "expires_at")}
            until = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(float(before["expires_at"])))
                if before.get("expires_at") is not None
                else "until changed"
            )
            summary = (
                f"Set the breaker of {name} back to {before.get('state')} ({until}), as before #{entry.id}."
            )
        shown_current = {k: v for k, v in (current or {}).items() if k not in ("actor", "created_at")}
        return RevertPlan(entry, summary, current, result, field_changes(shown_current or None, result))
    if kind == "source":
        from storage.queries import source_configs as sc

        source = sc.get_source_config(conn, name)
        current = source.as_dict() if source is not None else None
        if entry.action == "create":
            result = None
            summary = f"Remove source {name!r}, which #{entry.id} added (its read position is kept)."
        elif entry.action in ("update", "pause", "resume", "delete"):
            if not isinstance(entry.before, Mapping):
                raise NotRevertible(f"#{entry.id} has no earlier state of source {name!r} to go back to")
            result = _strip(entry.before)
            summary = (
                f"Add source {name!r} back as it was before #{entry.id}."
                if entry.action == "delete"
                else f"Put source {name!r} back as it was before #{entry.id}"
                + (
                    " (running again)."
                    if entry.action == "pause"
                    else " (paused again)."
                    if entry.action == "resume"
                    else "."
                )
            )
        else:
            raise NotRevertible(f"#{entry.id} ({entry.action}) is not a change that can be reverted")
        return RevertPlan(entry, summary, current, result, field_changes(current, result))
    if kind == BREAKER_DEFAULTS:
        summary = (
            f"Put the breaker defaults back as they were before #{entry.id}."
            if entry.before is not None
            else f"Drop the breaker defaults #{entry.id} set: the built-in defaults apply again."
        )
        return RevertPlan(entry, summary, entry.after, entry.before, field_changes(entry.after, entry.before))
    if kind == "prompt":
        if entry.action not in ("promote", "rollback"):
            raise NotRevertible(
                f"#{entry.id} ({entry.action}) cannot be undone: prompt versions are kept for good; "
                "promote the version you want instead"
            )
        if prompt_registry() is None:
            raise NotRevertible(
                "reverting prompt changes needs the prompt registry, which is not installed yet"
            )
        if not isinstance(entry.before, Mapping) or not isinstance(entry.after, Mapping):
            raise NotRevertible(f"#{entry.id} left no earlier state of prompt {name!r} to go back to")
        version, _ = _prompt_versions(entry)
        summary = (
            f"Make version {version} of prompt {name!r} active again, as before #{entry.id}."
            if version is not None
            else f"Leave prompt {name!r} with no active version, as before #{entry.id}."
        )
        shown = ("active_version",)
        return RevertPlan(
            entry,
            summary,
            entry.after,
            {**entry.after, "active_version": version},
            field_changes(
                {k: entry.after.get(k) for k in shown}, {k: v for k, v in (("active_version", version),)}
            ),
        )
    raise NotRevertible(f"changes to {kind} cannot be reverted from the audit log")


def plan_revert(bind: Bind, audit_id: int, *, now: float | None = None) -> RevertPlan:
    """What reverting audit row ``audit_id`` would do; raises if it cannot be reverted now."""
    ts = time.time() if now is None else now
    with transaction(_conn_bind(bind)) as conn:
        entry = q.get_audit_entry(conn, audit_id)
        if entry is None:
            raise q.NotFound(f"there is no audit entry #{audit_id}")
        _check_latest(conn, entry)
        return _plan(conn, entry, ts)


def revert_reason(audit_id: int, reason: str) -> str:
    reason = reason.strip()
    return f"revert of #{audit_id}: {reason}" if reason else f"revert of #{audit_id}"


def revert_change(
    bind: Bind, audit_id: int, *, actor: str, reason: str, now: float | None = None
) -> AuditEntry:
    """Revert audit row ``audit_id`` (the newest change to its object); return the new audit row.

    One transaction: the checks and the write see the same store.  Raises
    :class:`RevertRefused` or ``StaleRevision`` when the object moved on,
    :class:`NotRevertible` for a change that cannot be undone, ``NotFound``.
    """
    ts = time.time() if now is None else now
    why = revert_reason(audit_id, reason)
    with transaction(_conn_bind(bind), write=True) as conn:
        entry = q.get_audit_entry(conn, audit_id)
        if entry is None:
            raise q.NotFound(f"there is no audit entry #{audit_id}")
        _check_latest(conn, entry)
        plan = _plan(conn, entry, ts)
        kind, name = entry.object_type, entry.object_name
        if kind in q.CONTROL_KINDS:
            ckind = cast(q.ControlKind, kind)
            after = entry.after if isinstance(entry.after, Mapping) else None
            if entry.action == "create":
                if plan.current is None:
                    raise RevertRefused(f"{kind} {name!r} no longer exists; reload")
                assert after is not None
                q.delete_object(
                    conn,
                    ckind,
                    name,
                    expected_revision=int(after["revision"]),
                    actor=actor,
                    reason=why,
                    now=ts,
                )
            elif entry.action == "update":
                assert after is not None
                q.save_object(
                    conn,
                    ckind,
                    plan.result,
                    expected_revision=int(after["revision"]),
                    actor=actor,
                    reason=why,
                    now=ts,
                )
            else:  # delete: create it again; StaleRevision if someone already did
                q.save_object(
                    conn, ckind, plan.result, expected_revision=None, actor=actor, reason=why, now=ts
                )
        elif kind == "breaker":
            stored = _breaker_state(_stored_override(conn, name))
            after = entry.after if isinstance(entry.after, Mapping) else None
            if (
                after is None
                or stored is None
                or (stored["state"], stored["created_at"])
                != (
                    after.get("state"),
                    after.get("created_at"),
                )
            ):
                raise RevertRefused(
                    f"the breaker of {name} was switched again since #{audit_id}; reload and look again"
                )
            result = plan.result
            q.set_breaker_override(
                conn,
                name,
                result["state"],
                actor=actor,
                reason=why,
                expires_at=result.get("expires_at"),
                now=ts,
            )
        elif kind == "source":
            from storage.queries import source_configs as sc

            after = entry.after if isinstance(entry.after, Mapping) else None
            revision = int(after["revision"]) if after is not None else None
            if entry.action == "create":
                if (
                    sc.delete_source_config(conn, name, expected_revision=revision, actor=actor, reason=why)
                    is None
                ):
                    raise RevertRefused(f"source {name!r} no longer exists; reload")
            else:
                result = plan.result
                config = sc.SourceConfig(
                    result["name"],
                    result["kind"],
                    dict(result.get("settings") or {}),
                    bool(result.get("paused")),
                )
                sc.save_source_config(
                    conn,
                    config,
                    expected_revision=None if entry.action == "delete" else revision,
                    actor=actor,
                    reason=why,
                    now=ts,
                )
        elif kind == BREAKER_DEFAULTS:
            q.record_audit(conn, actor, "revert", kind, name, entry.after, entry.before, why, now=ts)
        else:  # prompt (plan checked the action and that the registry is there)
            set_active_version = prompt_registry()
            assert set_active_version is not None
            version, revision = _prompt_versions(entry)
            set_active_version(conn, name, version, actor=actor, reason=why, expected_revision=revision)
        newest = q.list_audit(conn, object_type=kind, object_name=name, limit=1)
    return newest[0]


__all__ = [
    "FieldChange",
    "NotRevertible",
    "RevertPlan",
    "RevertRefused",
    "field_changes",
    "plan_revert",
    "prompt_reverts_available",
    "revert_change",
    "revert_reason",
]
