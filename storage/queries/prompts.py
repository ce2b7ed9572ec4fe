"""The prompt registry: named prompts, their immutable versions, and the active version of each.

A version (template with ``{{variables}}``, system prompt, model parameters,
note) never changes once added; versions are numbered 1, 2, ... per prompt.
The active version is what the gateway renders when a request names the
prompt without a version.  Every change (create, add a version, promote, roll
back) writes an audit row with ``object_type="prompt"`` and bumps the control
version in the same transaction, so running gateways follow a promotion
within a poll (architecture.md, Store).

Promote and roll back are both :func:`set_active_version`: the audit row's
action is ``promote`` when the new active version is newer than the old one
(or there was none) and ``rollback`` when it is older, unless the caller
names the action.  The audit row's ``before``/``after`` are the prompt as a
dict (:meth:`Prompt.as_dict`), so reverting a change from the audit page is
``set_active_version(bind, name, before["active_version"], ...,
expected_revision=after["revision"])``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, func, select, update

from app.core.prompts import PromptError, check_name, check_params, variables
from storage.engine import transaction
from storage.models import PROMPT_VERSIONS, PROMPTS
from storage.queries.control import AuditEntry, Bind, NotFound, StaleRevision, list_audit, record_audit

OBJECT_TYPE = "prompt"
ActiveAction = Literal["promote", "rollback"]

_P = PROMPTS.c
_V = PROMPT_VERSIONS.c


@dataclass(frozen=True, slots=True)
class Prompt:
    """A named prompt: its active version (``None`` until one is promoted) and how many versions it has."""

    name: str
    description: str
    active_version: int | None
    revision: int
    created_at: float
    updated_at: float
    latest_version: int | None = None
    version_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One immutable version.  Satisfies :class:`app.core.prompts.PromptBody`."""

    prompt: str
    version: int
    template: str
    system: str | None
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    author: str = ""
    created_at: float = 0.0

    @property
    def variables(self) -> list[str]:
        return variables(self.system, self.template)

    @property
    def ref(self) -> str:
        """``name@version``, as a request or an experiment file names it."""
        return f"{self.prompt}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prompt_select() -> Any:
    latest = (
        select(_V.prompt, func.max(_V.version).label("latest"), func.count().label("n"))
        .group_by(_V.prompt)
        .subquery()
    )
    return select(
        _P.name,
        _P.description,
        _P.active_version,
        _P.revision,
        _P.created_at,
        _P.updated_at,
        latest.c.latest,
        latest.c.n,
    ).outerjoin(latest, latest.c.prompt == _P.name)


def _prompt(row: Any) -> Prompt:
    return Prompt(
        row.name,
        row.description or "",
        row.active_version,
        row.revision,
        row.created_at,
        row.updated_at,
        row.latest,
        int(row.n or 0),
    )


def _version(row: Any) -> PromptVersion:
    return PromptVersion(
        row.prompt,
        row.version,
        row.template,
        row.system,
        dict(row.params or {}),
        row.note or "",
        row.author,
        row.created_at,
    )


def _get_prompt(conn: Connection, name: str) -> Prompt | None:
    row = conn.execute(_prompt_select().where(_P.name == name)).first()
    return _prompt(row) if row is not None else None


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("an audited change needs an actor (who made it)")


# --- reading -------------------------------------------------------------------------------------------


def get_prompt(bind: Bind, name: str) -> Prompt | None:
    """One prompt, or ``None``."""
    with transaction(bind) as conn:
        return _get_prompt(conn, name)


def list_prompts(bind: Bind) -> list[Prompt]:
    """Every prompt, by name, with its active and latest version."""
    with transaction(bind) as conn:
        return [_prompt(row) for row in conn.execute(_prompt_select().order_by(_P.name))]


def list_versions(bind: Bind, name: str) -> list[PromptVersion]:
    """A prompt's versions, oldest first (empty for an unknown prompt)."""
    with transaction(bind) as conn:
        rows = conn.execute(select(PROMPT_VERSIONS).where(_V.prompt == name).order_by(_V.version))
        return [_version(row) for row in rows]


def get_version(bind: Bind, name: str, version: int | None = None) -> PromptVersion | None:
    """Version ``version`` of a prompt, or the active one (``None``); ``None`` if there is no such version."""
    with transaction(bind) as conn:
        if version is None:
            active = conn.execute(select(_P.active_version).where(_P.name == name)).scalar_one_or_none()
            if active is None:
                return None
            version = int(active)
        row = conn.execute(select(PROMPT_VERSIONS).where(_V.prompt == name, _V.version == version)).first()
        return _version(row) if row is not None else None


def active_versions(bind: Bind) -> dict[str, PromptVersion | None]:
    """Every prompt by name with its active version (``None``: none promoted yet): what a gateway loads."""
    stmt = (
        select(_P.name, PROMPT_VERSIONS)
        .select_from(PROMPTS)
        .outerjoin(PROMPT_VERSIONS, (_V.prompt == _P.name) & (_V.version == _P.active_version))
    )
    out: dict[str, PromptVersion | None] = {}
    with transaction(bind) as conn:
        for row in conn.execute(stmt):
            out[row.name] = _version(row) if row.version is not None else None
    return out


# --- changing ------------------------------------------------------------------------------------------


def create_prompt(
    bind: Bind,
    name: str,
    *,
    description: str = "",
    actor: str,
    reason: str = "",
    now: float | None = None,
) -> Prompt:
    """A new prompt with no versions; ``ValueError`` for a bad name, :class:`StaleRevision` if it exists."""
    check_name(name)
    _check_actor(actor)
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        existing = _get_prompt(conn, name)
        if existing is not None:
            raise StaleRevision(OBJECT_TYPE, name, None, existing.revision)
        conn.execute(
            PROMPTS.insert().values(
                name=name,
                description=description or "",
                active_version=None,
                revision=1,
                created_at=ts,
                updated_at=ts,
            )
        )
        after = _get_prompt(conn, name)
        assert after is not None
        record_audit(conn, actor, "create", OBJECT_TYPE, name, None, after.as_dict(), reason, now=ts)
    return after


def add_version(
    bind: Bind,
    name: str,
    *,
    template: str,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    note: str = "",
    actor: str,
    now: float | None = None,
) -> int:
    """Add an immutable version; returns its number (1, 2, ...).  It does not become active by itself.

    ``ValueError`` (:class:`app.core.prompts.PromptError`) for an empty template or bad
    parameters; :class:`NotFound` for an unknown prompt.
    """
    _check_actor(actor)
    if not isinstance(template, str) or not template.strip():
        raise PromptError("a prompt version needs a template (the user message, with {{variables}})")
    if system is not None and not isinstance(system, str):
        raise PromptError("the system prompt must be text")
    clean = check_params(params)
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        # Lock the prompt row (PostgreSQL) so two writers cannot take the same number.
        locked = conn.execute(select(_P.name).where(_P.name == name).with_for_update()).scalar_one_or_none()
        if locked is None:
            raise NotFound(f"prompt {name!r} does not exist; create it first")
        latest = conn.execute(select(func.max(_V.version)).where(_V.prompt == name)).scalar_one()
        number = int(latest or 0) + 1
        conn.execute(
            PROMPT_VERSIONS.insert().values(
                prompt=name,
                version=number,
                template=template,
                system=system or None,
                params=clean,
                note=note or "",
                author=actor,
                created_at=ts,
            )
        )
        conn.execute(update(PROMPTS).where(_P.name == name).values(updated_at=ts))
        after = {
            "version": number,
            "template": template,
            "system": system or None,
            "params": clean,
            "note": note or "",
        }
        record_audit(conn, actor, "add_version", OBJECT_TYPE, name, None, after, note, now=ts)
    return number


def set_active_version(
    bind: Bind,
    name: str,
    version: int | None,
    *,
    actor: str,
    reason: str,
    expected_revision: int | None = None,
    action: ActiveAction | None = None,
    now: float | None = None,
) -> Prompt:
    """Make ``version`` the prompt's active version: promote, roll back, or revert either.

    ``version=None`` leaves the prompt with no active version (reverting its
    first promotion).  ``expected_revision``: the revision you loaded; a save
    after someone else's raises :class:`StaleRevision` (``None`` skips the
    check).  ``action`` defaults to ``promote`` for a newer version and
    ``rollback`` for an older one.  A reason is required.  Returns the prompt
    as stored now.
    """
    _check_actor(actor)
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("promoting or rolling back a prompt needs a reason")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ValueError(f"a prompt version is a whole number from 1, not {version!r}")
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        before = _get_prompt(conn, name)
        if before is None:
            if expected_revision is not None:
                raise StaleRevision(OBJECT_TYPE, name, expected_revision, None)
            raise NotFound(f"prompt {name!r} does not exist")
        if version is not None:
            exists = conn.execute(
                select(_V.version).where(_V.prompt == name, _V.version == version)
            ).scalar_one_or_none()
            if exists is None:
                raise NotFound(f"prompt {name!r} has no version {version}")
        if expected_revision is not None and before.revision != expected_revision:
            raise StaleRevision(OBJECT_TYPE, name, expected_revision, before.revision)
        if before.active_version == version:
            raise ValueError(
                f"prompt {name!r}: version {version} is already active"
                if version is not None
                else f"prompt {name!r} has no active version already"
            )
        stmt = update(PROMPTS).where(_P.name == name)
        if expected_revision is not None:
            stmt = stmt.where(_P.revision == expected_revision)
        result = conn.execute(stmt.values(active_version=version, revision=_P.revision + 1, updated_at=ts))
        if result.rowcount != 1:
            raise StaleRevision(OBJECT_TYPE, name, expected_revision, before.revision)
        after = _get_prompt(conn, name)
        assert after is not None
        if action is None:
            older = version is None or (before.active_version is not None and version < before.active_version)
            action = "rollback" if older else "promote"
        record_audit(
            conn, actor, action, OBJECT_TYPE, name, before.as_dict(), after.as_dict(), reason, now=ts
        )
    return after


# --- history -------------------------------------------------------------------------------------------


def activation_history(entries: Iterable[AuditEntry]) -> list[int | None]:
    """The stack of active versions the audit rows describe (oldest first; the last is the current one).

    A promote pushes; a rollback pops back to the version it went to (so two
    rollbacks in a row go two steps back).  Pure: give it
    ``list_audit(bind, object_type="prompt", object_name=NAME)`` in any order.
    """
    stack: list[int | None] = []
    for e in sorted(entries, key=lambda e: e.id):
        if e.action not in ("promote", "rollback") or not isinstance(e.after, dict):
            continue
        new = e.after.get("active_version")
        if e.action == "promote":
            if not stack and isinstance(e.before, dict) and e.before.get("active_version") is not None:
                stack.append(e.before.get("active_version"))
            stack.append(new)
            continue
        while stack and stack[-1] != new:
            stack.pop()
        if not stack:
            stack.append(new)
    return stack


def rollback_target(bind: Bind, name: str) -> int | None:
    """The version "Roll back" returns to: the one active before the current one (``None``: nothing to go back to)."""
    entries = list_audit(bind, object_type=OBJECT_TYPE, object_name=name, limit=10_000)
    stack = activation_history(entries)
    while len(stack) >= 2:
        candidate = stack[-2]
        if candidate is not None:
            return candidate
        stack.pop(-2)
    return None
