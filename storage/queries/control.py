"""Control state: the version counter, the audit log, breaker overrides and transitions,
providers, targets, routes and budgets.

Every control change writes an audit row and bumps the control version in the
same transaction (architecture.md, Store): a gateway that sees the new version
also sees the change, and no change goes unrecorded.  On PostgreSQL the bump
also sends ``NOTIFY controlroom_control`` so gateways may LISTEN instead of poll.

Providers, targets, routes and budgets are dicts in and out, keyed by column
name, with a ``revision``: a save names the revision it was based on and is
refused with :class:`StaleRevision` if someone saved in between.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Engine, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.engine import transaction
from storage.models import (
    AUDIT_LOG,
    BREAKER_OVERRIDES,
    BREAKER_TRANSITIONS,
    BUDGET_WARNINGS_FIRED,
    BUDGETS,
    CONTROL_VERSION,
    PROVIDERS,
    ROUTES,
    TARGETS,
)

#: The PostgreSQL channel notified on every control change (payload: the new version).
CONTROL_CHANNEL = "controlroom_control"

Bind = Engine | Connection
ControlKind = Literal["provider", "target", "route", "budget"]
OverrideState = Literal["force_open", "force_closed", "auto"]

CONTROL_KINDS: tuple[str, ...] = get_args(ControlKind)
OVERRIDE_STATES: tuple[str, ...] = get_args(OverrideState)
PROVIDER_KINDS = ("openai", "anthropic", "openai_compatible")
ON_ALL_OPEN = ("fail_fast", "try_anyway")
BUDGET_ACTIONS = ("alert_only", "block", "downgrade")

_AUDIT = AUDIT_LOG
_VERSION = CONTROL_VERSION
_OVERRIDES = BREAKER_OVERRIDES
_TRANSITIONS = BREAKER_TRANSITIONS
_WARNINGS = BUDGET_WARNINGS_FIRED
_TABLES: dict[str, Table] = {"provider": PROVIDERS, "target": TARGETS, "route": ROUTES, "budget": BUDGETS}
_BOOKKEEPING = ("id", "revision", "created_at", "updated_at")

# A key reference, never a key: "keyring:SERVICE/NAME", "env:VAR" or "none".
_KEY_REF = re.compile(r"(keyring:[^\s/]+/[^\s]+|env:[A-Za-z_][A-Za-z0-9_]*|none)")
_PERIOD = re.compile(r"(day|week|month|rolling_[1-9][0-9]*[mhd])")


class ConflictError(Exception):
    """A control change collided with another one."""


class StaleRevision(ConflictError):
    """A save was based on an old revision (or on the object not existing yet)."""

    def __init__(self, kind: str, name: str, expected: int | None, actual: int | None) -> None:
        self.kind, self.name, self.expected, self.actual = kind, name, expected, actual
        if expected is None:
            message = f"{kind} {name!r} already exists (revision {actual}); reload it and save again"
        elif actual is None:
            message = f"{kind} {name!r} was deleted since revision {expected}; reload before saving"
        else:
            message = (
                f"{kind} {name!r} changed since you loaded it (you had revision {expected}, "
                f"the store has {actual}); reload it, reapply your change and save again"
            )
        super().__init__(message)


class NotFound(LookupError):
    """The named control object does not exist."""


# --- version and audit -----------------------------------------------------------------


def get_control_version(bind: Bind) -> int:
    """The control version: gateways compare it with the one they loaded (cheap to poll)."""
    with transaction(bind) as conn:
        return int(conn.execute(select(_VERSION.c.version).where(_VERSION.c.id == 1)).scalar_one())


def bump_control_version(bind: Bind, *, now: float | None = None) -> int:
    """Add one to the control version and return it; notify listeners on PostgreSQL."""
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        version = int(
            conn.execute(
                update(_VERSION)
                .where(_VERSION.c.id == 1)
                .values(version=_VERSION.c.version + 1, updated_at=ts)
                .returning(_VERSION.c.version)
            ).scalar_one()
        )
        if conn.dialect.name == "postgresql":
            # Delivered at commit, so a listener never sees a version before its change.
            conn.execute(select(func.pg_notify(CONTROL_CHANNEL, str(version))))
        return version


def record_audit(  # noqa: PLR0917 - the positional order reads like the audit row
    bind: Bind,
    actor: str,
    action: str,
    object_type: str,
    object_name: str,
    before: Any,
    after: Any,
    reason: str = "",
    *,
    now: float | None = None,
) -> int:
    """Write one audit row and bump the control version, in one transaction; return the new version."""
    if not actor or not actor.strip():
        raise ValueError("an audited change needs an actor (who made it)")
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        conn.execute(
            _AUDIT.insert().values(
                ts=ts,
                actor=actor,
                action=action,
                object_type=object_type,
                object_name=object_name,
                before=before,
                after=after,
                reason=reason or "",
            )
        )
        return bump_control_version(conn, now=ts)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    object_type: str
    object_name: str
    before: Any
    after: Any
    reason: str


def list_audit(
    bind: Bind,
    *,
    object_type: str | None = None,
    object_name: str | None = None,
    since: float | None = None,
    before_id: int | None = None,
    limit: int = 200,
) -> list[AuditEntry]:
    """Audit rows, newest first; page with ``before_id`` = the last id seen."""
    c = _AUDIT.c
    stmt = select(_AUDIT)
    if object_type is not None:
        stmt = stmt.where(c.object_type == object_type)
    if object_name is not None:
        stmt = stmt.where(c.object_name == object_name)
    if since is not None:
        stmt = stmt.where(c.ts >= since)
    if before_id is not None:
        stmt = stmt.where(c.id < before_id)
    stmt = stmt.order_by(c.id.desc()).limit(limit)
    with transaction(bind) as conn:
        return [AuditEntry(**row._asdict()) for row in conn.execute(stmt)]


def search_audit(
    bind: Bind,
    *,
    object_type: str | None = None,
    name_contains: str | None = None,
    actor: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 1000,
) -> list[AuditEntry]:
    """Audit rows for the audit page's filters, newest first.

    ``name_contains`` matches part of the object name, case-insensitively;
    ``actor`` is exact; the time range is ``since <= ts < until``.
    """
    c = _AUDIT.c
    stmt = select(_AUDIT)
    if object_type:
        stmt = stmt.where(c.object_type == object_type)
    if name_contains:
        # LIKE wildcards in what the operator typed are meant literally.
        escaped = name_contains.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(func.lower(c.object_name).like(f"%{escaped}%", escape="\\"))
    if actor:
        stmt = stmt.where(c.actor == actor)
    if since is not None:
        stmt = stmt.where(c.ts >= since)
    if until is not None:
        stmt = stmt.where(c.ts < until)
    stmt = stmt.order_by(c.id.desc()).limit(limit)
    with transaction(bind) as conn:
        return [AuditEntry(**row._asdict()) for row in conn.execute(stmt)]


def get_audit_entry(bind: Bind, audit_id: int) -> AuditEntry | None:
    """One audit row by id, or ``None``."""
    with transaction(bind) as conn:
        row = conn.execute(select(_AUDIT).where(_AUDIT.c.id == audit_id)).first()
    return AuditEntry(**row._asdict()) if row is not None else None


def latest_audit_ids(bind: Bind) -> dict[tuple[str, str], int]:
    """The id of the newest audit row of every object, by ``(object_type, object_name)``.

    Only an object's newest change can be reverted; the audit page marks those rows.
    """
    c = _AUDIT.c
    stmt = select(c.object_type, c.object_name, func.max(c.id)).group_by(c.object_type, c.object_name)
    with transaction(bind) as conn:
        return {(t, n): int(i) for t, n, i in conn.execute(stmt)}


def list_audit_actors(bind: Bind) -> list[str]:
    """Everyone who has made a control change, by name (the audit page's actor filter)."""
    with transaction(bind) as conn:
        return [str(a) for (a,) in conn.execute(select(_AUDIT.c.actor).distinct().order_by(_AUDIT.c.actor))]


# --- breaker overrides and transitions ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerOverride:
    target: str
    state: str  # force_open | force_closed | auto
    reason: str
    actor: str
    created_at: float
    expires_at: float | None

    def active(self, now: float) -> bool:
        """Whether it still applies at ``now`` (an expired override is back to ``auto``)."""
        return self.state != "auto" and (self.expires_at is None or now < self.expires_at)


def _upsert(conn: Connection, table: Table) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def set_breaker_override(
    bind: Bind,
    target: str,
    state: OverrideState,
    *,
    actor: str,
    reason: str = "",
    expires_at: float | None = None,
    now: float | None = None,
) -> BreakerOverride:
    """The operator's switch: force a target's breaker open or closed, or give it back to ``auto``.

    Audited, and bumps the control version.  ``expires_at`` (epoch seconds):
    after it the override no longer applies and the breaker is ``auto`` again.
    """
    if state not in OVERRIDE_STATES:
        raise ValueError(f"breaker override state must be one of {', '.join(OVERRIDE_STATES)}, not {state!r}")
    if not target:
        raise ValueError("a breaker override needs a target")
    ts = time.time() if now is None else now
    if expires_at is not None and (not math.isfinite(expires_at) or expires_at <= ts):
        raise ValueError("a breaker override must expire in the future")
    override = BreakerOverride(
        target, state, reason or "", actor, ts, None if state == "auto" else expires_at
    )
    with transaction(bind, write=True) as conn:
        before = _get_override_row(conn, target)
        values = asdict(override)
        stmt = _upsert(conn, _OVERRIDES).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["target"], set_={k: v for k, v in values.items() if k != "target"}
        )
        conn.execute(stmt)
        record_audit(
            conn,
            actor,
            state,
            "breaker",
            target,
            asdict(before) if before else None,
            values,
            reason,
            now=ts,
        )
    return override


def _get_override_row(conn: Connection, target: str) -> BreakerOverride | None:
    c = _OVERRIDES.c
    row = conn.execute(
        select(c.target, c.state, c.reason, c.actor, c.created_at, c.expires_at).where(c.target == target)
    ).first()
    return BreakerOverride(**row._asdict()) if row is not None else None


def get_breaker_override(bind: Bind, target: str, *, now: float | None = None) -> BreakerOverride | None:
    """The override that applies to ``target`` now, or ``None`` (the breaker decides by itself)."""
    ts = time.time() if now is None else now
    with transaction(bind) as conn:
        override = _get_override_row(conn, target)
    return override if override is not None and override.active(ts) else None


def list_breaker_overrides(
    bind: Bind, *, now: float | None = None, include_inactive: bool = False
) -> list[BreakerOverride]:
    """Overrides that apply now (or every stored one, with ``include_inactive``), by target."""
    ts = time.time() if now is None else now
    c = _OVERRIDES.c
    with transaction(bind) as conn:
        rows = conn.execute(
            select(c.target, c.state, c.reason, c.actor, c.created_at, c.expires_at).order_by(c.target)
        )
        overrides = [BreakerOverride(**row._asdict()) for row in rows]
    return overrides if include_inactive else [o for o in overrides if o.active(ts)]


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    target: str
    ts: float
    from_state: str
    to_state: str
    cause: str  # "failure_rate 0.62 over 31 requests", "operator: ana", "probe succeeded", ...
    detail: dict[str, Any] | None = None


def append_breaker_transition(
    bind: Bind,
    target: str,
    *,
    ts: float,
    from_state: str,
    to_state: str,
    cause: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record one breaker state change (see :func:`append_breaker_transitions`)."""
    append_breaker_transitions(bind, [BreakerTransition(target, ts, from_state, to_state, cause, detail)])


def append_breaker_transitions(bind: Bind, transitions: list[BreakerTransition]) -> None:
    """Record breaker state changes (data-plane facts: not audited, no version bump)."""
    if not transitions:
        return
    with transaction(bind, write=True) as conn:
        conn.execute(_TRANSITIONS.insert(), [asdict(t) for t in transitions])


def list_breaker_transitions(
    bind: Bind,
    *,
    target: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 1000,
) -> list[BreakerTransition]:
    """Transitions in time order (the newest ``limit`` of the range)."""
    c = _TRANSITIONS.c
    stmt = select(c.target, c.ts, c.from_state, c.to_state, c.cause, c.detail)
    if target is not None:
        stmt = stmt.where(c.target == target)
    if since is not None:
        stmt = stmt.where(c.ts >= since)
    if until is not None:
        stmt = stmt.where(c.ts < until)
    stmt = stmt.order_by(c.ts.desc(), c.id.desc()).limit(limit)
    with transaction(bind) as conn:
        rows = [BreakerTransition(**row._asdict()) for row in conn.execute(stmt)]
    rows.reverse()
    return rows


# --- budget warnings ----------------------------------------------------------------------


def record_budget_warning(
    bind: Bind, budget: str, period_start: float, level: float, *, now: float | None = None
) -> bool:
    """Note that ``budget`` crossed ``level`` in the period; ``True`` only the first time.

    Each warning level alerts once per period (semantics.md section 7), even
    with several gateways racing: the unique key decides who alerts.
    """
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        stmt = _upsert(conn, _WARNINGS).values(budget=budget, period_start=period_start, level=level, ts=ts)
        stmt = stmt.on_conflict_do_nothing(index_elements=["budget", "period_start", "level"])
        # RETURNING, not rowcount: PostgreSQL reports -1 for an insert that returns rows.
        return conn.execute(stmt.returning(_WARNINGS.c.id)).first() is not None


def list_budget_warnings(bind: Bind, budget: str, period_start: float) -> list[float]:
    """The warning levels already fired for ``budget`` in the period starting at ``period_start``."""
    c = _WARNINGS.c
    with transaction(bind) as conn:
        rows = conn.execute(
            select(c.level).where(c.budget == budget, c.period_start == period_start).order_by(c.level)
        )
        return [float(level) for (level,) in rows]


# --- providers, targets, routes, budgets -------------------------------------------------


def _defaults(kind: str, name: str) -> dict[str, Any]:
    if kind == "provider":
        # config.md: ``api_key: keyring`` is the default.
        return {"base_url": None, "api_key_ref": f"keyring:controlroom/{name}", "admin_key_ref": None}
    if kind == "route":
        return {"settings": {}, "rules": [], "on_all_open": "fail_fast"}
    if kind == "budget":
        return {"scope": {}, "timezone": "UTC", "warn_at": [0.5, 0.8, 0.95], "action": "alert_only"}
    return {}


def _fields(kind: str) -> list[str]:
    return [c.name for c in _TABLES[kind].columns if c.name not in _BOOKKEEPING]


def _normalize(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Complete ``data`` with defaults and check it; every problem is listed in one ValueError."""
    if kind not in _TABLES:
        raise ValueError(f"unknown control object kind {kind!r}: one of {', '.join(CONTROL_KINDS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a {kind} needs a non-empty name")
    fields = _fields(kind)
    problems: list[str] = []
    unknown = sorted(set(data) - set(fields) - {"revision", "created_at", "updated_at"})
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}")
    table = _TABLES[kind]
    values = {**{f: None for f in fields}, **_defaults(kind, name)}
    values.update({k: v for k, v in data.items() if k in fields})
    for f in fields:
        if values[f] is None and not table.c[f].nullable:
            problems.append(f"{f} is required")
    problems += _check(kind, values)
    if problems:
        raise ValueError(f"{kind} {name!r}: " + "; ".join(problems))
    return values


def _check(kind: str, v: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if kind == "provider":
        if v["kind"] is not None and v["kind"] not in PROVIDER_KINDS:
            problems.append(f"kind must be one of {', '.join(PROVIDER_KINDS)}")
        for ref in ("api_key_ref", "admin_key_ref"):
            # Never echo the value: a pasted key must not land in a log or a dialog.
            if v[ref] is not None and not (isinstance(v[ref], str) and _KEY_REF.fullmatch(v[ref])):
                problems.append(
                    f"{ref} must be a reference ('keyring:controlroom/NAME', 'env:VAR' or 'none'), "
                    f"never a key; store the key with `controlroom keys set {v['name']}`"
                )
        for limit in ("rpm", "tpm"):
            if v[limit] is not None and (not isinstance(v[limit], int) or v[limit] <= 0):
                problems.append(f"{limit} must be a positive integer")
    elif kind == "target":
        for price in ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok"):
            if v[price] is not None and (not isinstance(v[price], int | float) or v[price] < 0):
                problems.append(f"{price} must be a non-negative number")
        if (v["input_per_mtok"] is None) != (v["output_per_mtok"] is None):
            problems.append("a price override needs both input_per_mtok and output_per_mtok")
        if v["breaker"] is not None and not isinstance(v["breaker"], dict):
            problems.append("breaker must be a mapping of breaker settings")
    elif kind == "route":
        if v["on_all_open"] not in ON_ALL_OPEN:
            problems.append(f"on_all_open must be one of {', '.join(ON_ALL_OPEN)}")
        if not isinstance(v["settings"], dict):
            problems.append("settings must be a mapping")
        if not isinstance(v["rules"], list):
            problems.append("rules must be a list")
    elif kind == "budget":
        if v["action"] not in BUDGET_ACTIONS:
            problems.append(f"action must be one of {', '.join(BUDGET_ACTIONS)}")
        if v["action"] == "downgrade" and not v["downgrade_to"]:
            problems.append("action downgrade needs downgrade_to (a chain of targets)")
        if not isinstance(v["period"], str) or not _PERIOD.fullmatch(v["period"]):
            problems.append("period must be day, week, month or rolling_<N><m|h|d>")
        if v["limit_usd"] is None and v["limit_tokens"] is None:
            problems.append("a budget needs limit_usd, limit_tokens or both")
        if not isinstance(v["scope"], dict):
            problems.append("scope must be a mapping")
        warn_at = v["warn_at"]
        if not isinstance(warn_at, list) or not all(
            isinstance(x, int | float) and 0 < x <= 1 for x in warn_at
        ):
            problems.append("warn_at must be a list of fractions in (0, 1]")
    return problems


def _row_dict(kind: str, row: Any) -> dict[str, Any]:
    d = dict(row._asdict())
    d.pop("id", None)
    return d


def _select_one(conn: Connection, kind: str, name: str) -> dict[str, Any] | None:
    table = _TABLES[kind]
    row = conn.execute(select(table).where(table.c.name == name)).first()
    return _row_dict(kind, row) if row is not None else None


def get_object(bind: Bind, kind: ControlKind, name: str) -> dict[str, Any] | None:
    """One provider, target, route or budget as a dict (with ``revision``), or ``None``."""
    if kind not in _TABLES:
        raise ValueError(f"unknown control object kind {kind!r}")
    with transaction(bind) as conn:
        return _select_one(conn, kind, name)


def list_objects(bind: Bind, kind: ControlKind) -> list[dict[str, Any]]:
    """Every object of a kind, by name."""
    if kind not in _TABLES:
        raise ValueError(f"unknown control object kind {kind!r}")
    table = _TABLES[kind]
    with transaction(bind) as conn:
        return [_row_dict(kind, row) for row in conn.execute(select(table).order_by(table.c.name))]


def save_object(
    bind: Bind,
    kind: ControlKind,
    data: Mapping[str, Any],
    *,
    expected_revision: int | None,
    actor: str,
    reason: str = "",
    now: float | None = None,
) -> dict[str, Any]:
    """Create (``expected_revision=None``) or update (the revision you loaded) an object.

    Returns the stored object with its new revision.  Raises
    :class:`StaleRevision` when the store moved on since ``expected_revision``,
    ``ValueError`` listing every problem with ``data``.  Audited; bumps the
    control version.
    """
    values = _normalize(kind, data)
    name = values["name"]
    table = _TABLES[kind]
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        if kind == "target" and not _select_one(conn, "provider", values["provider"]):
            raise ValueError(f"target {name!r}: provider {values['provider']!r} does not exist")
        before = _select_one(conn, kind, name)
        if expected_revision is None:
            if before is not None:
                raise StaleRevision(kind, name, None, before["revision"])
            conn.execute(table.insert().values(**values, revision=1, created_at=ts, updated_at=ts))
            action = "create"
        else:
            result = conn.execute(
                update(table)
                .where(table.c.name == name, table.c.revision == expected_revision)
                .values(**values, revision=table.c.revision + 1, updated_at=ts)
            )
            if result.rowcount != 1:
                raise StaleRevision(kind, name, expected_revision, before["revision"] if before else None)
            action = "update"
        after = _select_one(conn, kind, name)
        assert after is not None
        record_audit(conn, actor, action, kind, name, before, after, reason, now=ts)
    return after


def delete_object(
    bind: Bind,
    kind: ControlKind,
    name: str,
    *,
    expected_revision: int,
    actor: str,
    reason: str = "",
    now: float | None = None,
) -> None:
    """Delete an object at the revision you loaded; audited.  A provider still used by targets stays."""
    if kind not in _TABLES:
        raise ValueError(f"unknown control object kind {kind!r}")
    table = _TABLES[kind]
    with transaction(bind, write=True) as conn:
        before = _select_one(conn, kind, name)
        if before is None:
            raise NotFound(f"{kind} {name!r} does not exist")
        if kind == "provider":
            targets = _TABLES["target"]
            users = conn.execute(select(targets.c.name).where(targets.c.provider == name)).scalars().all()
            if users:
                raise ValueError(
                    f"provider {name!r} is used by target(s) {', '.join(users)}; delete them first"
                )
        result = conn.execute(
            table.delete().where(table.c.name == name, table.c.revision == expected_revision)
        )
        if result.rowcount != 1:
            raise StaleRevision(kind, name, expected_revision, before["revision"])
        record_audit(conn, actor, "delete", kind, name, before, None, reason, now=now)
