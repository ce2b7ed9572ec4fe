"""Control state in the store: config as code (apply / export) and the operator's breaker switch.

The store keeps providers, targets, routes and budgets as rows (storage.queries.control);
the config file (config.md) is the operator's view of the same objects.  This module is the
one place that maps one to the other, so ``controlroom config apply``, ``config export``,
the UI and every gateway (:func:`load_config`) read the same thing.

- :func:`apply_config` makes the store hold exactly the file's objects, in ONE transaction:
  objects the file names are created or updated, objects it does not name are DELETED
  ("the file is the truth": a setup kept in git must not keep a route someone removed from
  the file).  Every changed object writes an audit row (before/after) and bumps the control
  version; an object that did not change writes nothing, so applying an export is a no-op.
- :func:`load_config` / :func:`export_config` read the store back as a
  :class:`~app.core.config.ControlConfig`; ``parse_config(dump_config(export))`` equals the
  applied objects (objects come back sorted by name; order carries no meaning in the file).
- Breaker overrides are operational state, not configuration: apply and export leave them
  alone.  :func:`set_breaker` is the switch (``controlroom breaker open|close|auto``).

How objects are stored: the rows are the engine's mapping (app.gateway.state: an ``api_key:
keyring`` is the store's reference ``keyring:controlroom/NAME``, per-target breaker settings
live in the target row's ``breaker`` column).  The global ``breakers.default`` has no table of
its own and is kept as the ``after`` of the newest audit row of type ``breaker_defaults``
(:func:`stored_breaker_defaults`), so it is audited and versioned like everything else.
"""

from __future__ import annotations

import difflib
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Connection, Engine

from app.core.breaker import BreakerSettings, OverrideMode
from app.core.config import ConfigError, ControlConfig
from storage.engine import Store, transaction
from storage.queries import control as q

Bind = Store | Engine | Connection

#: The audit object type that carries ``breakers.default`` (see the module docstring).
BREAKER_DEFAULTS = "breaker_defaults"
_KINDS: tuple[q.ControlKind, ...] = ("provider", "target", "route", "budget")
_PG_APPLY_LOCK = 0x636F6E666967  # "config": any constant, the same in every process


class ControlError(Exception):
    """A control change that cannot be made; the message says why in plain words."""


def _engine_or_conn(bind: Bind) -> Engine | Connection:
    return bind.engine if isinstance(bind, Store) else bind


# --- rows <-> objects -------------------------------------------------------------------
# The row shapes are the engine's (app.gateway.state.config_to_rows / config_from_rows): one
# mapping, so what `config apply` writes is exactly what every gateway reads.


def _rows(cfg: ControlConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """The store rows (without bookkeeping) that hold ``cfg``, by kind and name."""
    from app.gateway.state import config_to_rows

    return {kind: {row["name"]: row for row in rows} for kind, rows in config_to_rows(cfg).items()}


def _breaker_defaults_data(settings: BreakerSettings) -> dict[str, Any]:
    return {
        f.name: getattr(settings, f.name) for f in fields(settings) if getattr(settings, f.name) is not None
    }


def _stored_breaker_defaults_data(conn: Engine | Connection) -> dict[str, Any] | None:
    rows = q.list_audit(conn, object_type=BREAKER_DEFAULTS, limit=1)
    if not rows or not isinstance(rows[0].after, dict):
        return None
    return dict(rows[0].after)


def stored_breaker_defaults(bind: Bind) -> BreakerSettings | None:
    """The ``breakers.default`` the last applied config set (``None``: never set, the defaults apply)."""
    data = _stored_breaker_defaults_data(_engine_or_conn(bind))
    if data is None:
        return None
    known = {f.name for f in fields(BreakerSettings)}
    return BreakerSettings(**{k: v for k, v in data.items() if k in known})


def load_config(bind: Bind) -> ControlConfig:
    """The control configuration the store holds (what every gateway runs on).

    The rows go through the same parser as a file, so the store can hold nothing a file could
    not.  Raises :class:`ControlError` if the store holds something that does not validate
    (an object saved by hand that a file would have refused), naming every problem.
    """
    from app.gateway import state

    with transaction(_engine_or_conn(bind)) as conn:
        try:
            return state.load_config(conn, breakers_default=stored_breaker_defaults(conn))
        except ConfigError as exc:
            problems = "; ".join(p.message for p in exc.problems)
            raise ControlError(f"the store's control state does not validate: {problems}") from None


#: The name the CLI uses: ``config export`` is ``load_config`` written out.
export_config = load_config


def export_text(bind: Bind) -> str:
    """``controlroom config export``: the store's configuration as a config file."""
    from app.core.config import dump_config

    engine_or_conn = _engine_or_conn(bind)
    cfg = load_config(engine_or_conn)
    version = q.get_control_version(engine_or_conn)
    header = (
        f"# Control Room configuration, exported at control version {version}.\n"
        "# Apply it with `controlroom config apply FILE`: the file is the truth, so objects\n"
        "# it does not name are deleted from the store.\n"
    )
    return header + dump_config(cfg)


# --- apply -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    action: str  # create | update | delete
    kind: str  # provider | target | route | budget | breaker_defaults
    name: str

    def __str__(self) -> str:
        return f"{self.action:<7} {self.kind} {self.name}"


@dataclass(slots=True)
class ApplyReport:
    """What :func:`apply_config` did (or, with ``dry_run``, would do)."""

    changes: list[Change] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    version_before: int = 0
    version_after: int = 0
    dry_run: bool = False

    def _names(self, action: str) -> list[str]:
        return [f"{c.kind} {c.name}" for c in self.changes if c.action == action]

    @property
    def created(self) -> list[str]:
        return self._names("create")

    @property
    def updated(self) -> list[str]:
        return self._names("update")

    @property
    def deleted(self) -> list[str]:
        return self._names("delete")

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _same(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    return all(_equal(v, current.get(k)) for k, v in desired.items())


def _equal(a: Any, b: Any) -> bool:
    # JSON columns give lists for tuples and may give 20 for 20.0; compare the values, not the types.
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def apply_config(
    store: Bind,
    cfg: ControlConfig,
    *,
    actor: str,
    reason: str = "",
    source_file: str = "",
    dry_run: bool = False,
    now: float | None = None,
) -> ApplyReport:
    """Make the store hold exactly ``cfg``, in one transaction; see the module docstring.

    ``cfg`` must be a validated config (``parse_config``/``check_config``).  Nothing is
    half-applied: any failure rolls every change back and raises.  With ``dry_run`` the plan
    is computed and nothing is written.
    """
    if not actor or not actor.strip():
        raise ControlError("a config change needs an actor (who made it)")
    why = f"config apply {source_file}".strip() + (f": {reason}" if reason else "")
    ts = time.time() if now is None else now
    desired = _rows(cfg)
    desired_defaults = _breaker_defaults_data(cfg.breakers.default)
    report = ApplyReport(dry_run=dry_run)
    with _write(store) as conn:
        if conn.dialect.name == "postgresql":
            # Two applies at once would each plan against what the other is changing: queue them.
            # (SQLite's BEGIN IMMEDIATE already does.)  Released at commit or rollback.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_APPLY_LOCK})")
        report.version_before = q.get_control_version(conn)
        current = {kind: {row["name"]: row for row in q.list_objects(conn, kind)} for kind in _KINDS}

        def upsert(kind: q.ControlKind) -> None:
            for name, row in desired[kind].items():
                before = current[kind].get(name)
                if before is not None and _same(row, before):
                    report.unchanged.append((kind, name))
                    continue
                report.changes.append(Change("create" if before is None else "update", kind, name))
                if not dry_run:
                    q.save_object(
                        conn,
                        kind,
                        row,
                        expected_revision=None if before is None else before["revision"],
                        actor=actor,
                        reason=why,
                        now=ts,
                    )

        def delete(kind: q.ControlKind) -> None:
            for name, before in current[kind].items():
                if name in desired[kind]:
                    continue
                report.changes.append(Change("delete", kind, name))
                if not dry_run:
                    q.delete_object(
                        conn,
                        kind,
                        name,
                        expected_revision=before["revision"],
                        actor=actor,
                        reason=why,
                        now=ts,
                    )

        # Foreign keys decide the order: providers before the targets that name them, and
        # targets gone before the providers they named.
        upsert("provider")
        upsert("target")
        delete("target")
        delete("provider")
        for kind in ("route", "budget"):
            upsert(kind)
            delete(kind)
        stored_defaults = _stored_breaker_defaults_data(conn)
        if not _equal(desired_defaults, stored_defaults or _breaker_defaults_data(BreakerSettings())):
            report.changes.append(Change("update", BREAKER_DEFAULTS, "default"))
            if not dry_run:
                q.record_audit(
                    conn,
                    actor,
                    "update",
                    BREAKER_DEFAULTS,
                    "default",
                    stored_defaults,
                    desired_defaults,
                    why,
                    now=ts,
                )
        else:
            report.unchanged.append((BREAKER_DEFAULTS, "default"))
        report.version_after = q.get_control_version(conn)  # dry run: nothing was written
    return report


@contextmanager
def _write(store: Bind) -> Iterator[Connection]:
    with transaction(_engine_or_conn(store), write=True) as conn:
        yield conn


# --- breakers ----------------------------------------------------------------------------

_MODES = {
    "open": OverrideMode.FORCE_OPEN,
    "close": OverrideMode.FORCE_CLOSED,
    "closed": OverrideMode.FORCE_CLOSED,
    "auto": OverrideMode.AUTO,
}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"15m"``, ``"90s"``, ``"1h30m"``, ``"2d"`` (or a bare number of seconds) -> seconds."""
    s = text.strip().lower().replace(" ", "")
    try:
        seconds = float(s)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ControlError(f"not a duration: {text!r} (write e.g. 90s, 15m, 1h30m, 2d)") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ControlError(f"a duration must be more than 0, not {text!r}")
    return seconds


def override_mode(word: str | OverrideMode) -> OverrideMode:
    """``open``/``close``/``auto`` (the CLI's words) or an :class:`OverrideMode` value."""
    if isinstance(word, OverrideMode):
        return word
    try:
        return _MODES.get(word) or OverrideMode(word)
    except ValueError:
        raise ControlError(f"breaker mode must be open, close or auto, not {word!r}") from None


def known_targets(bind: Bind) -> list[str]:
    return [row["name"] for row in q.list_objects(_engine_or_conn(bind), "target")]


def set_breaker(
    store: Bind,
    target: str,
    mode: str | OverrideMode,
    *,
    reason: str,
    actor: str,
    for_s: float | None = None,
    allow_unknown: bool = False,
    now: float | None = None,
) -> q.BreakerOverride:
    """Force ``target``'s breaker open or closed (for ``for_s`` seconds, or until changed), or give it back to auto.

    Audited with ``actor`` and ``reason``, and bumps the control version: every gateway obeys
    within a second.  A target the store does not know is refused (with the closest name)
    unless ``allow_unknown`` (a target a gateway defines in code).
    """
    state = override_mode(mode)
    if state is not OverrideMode.AUTO and not reason.strip():
        raise ControlError("say why: forcing a breaker needs a reason (--reason)")
    if state is OverrideMode.AUTO and for_s is not None:
        raise ControlError("--for goes with open or close; auto has no expiry")
    if not actor.strip():
        raise ControlError("a breaker change needs an actor (who made it)")
    engine_or_conn = _engine_or_conn(store)
    if not allow_unknown:
        names = known_targets(engine_or_conn)
        if target not in names:
            close = difflib.get_close_matches(target, names, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            known = f"; known targets: {', '.join(names)}" if names else "; the store has no targets yet"
            raise ControlError(f"no target named `{target}` in the store{hint}{known}")
    ts = time.time() if now is None else now
    expires_at = ts + for_s if for_s is not None else None
    return q.set_breaker_override(
        engine_or_conn,
        target,
        state.value,
        actor=actor,
        reason=reason or "back to automatic",
        expires_at=expires_at,
        now=ts,
    )


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """One line of ``controlroom breaker list``."""

    target: str
    in_store: bool  # a target the store defines (else: only an override names it)
    override: q.BreakerOverride | None  # the override in force now, if any
    last_transition: q.BreakerTransition | None  # the newest state change a gateway recorded


def list_breakers(store: Bind, *, now: float | None = None) -> list[BreakerStatus]:
    """Every target with its override in force and its newest recorded transition, by name."""
    engine_or_conn = _engine_or_conn(store)
    ts = time.time() if now is None else now
    with transaction(engine_or_conn) as conn:
        targets = set(known_targets(conn))
        overrides = {o.target: o for o in q.list_breaker_overrides(conn, now=ts)}
        out = []
        for name in sorted(targets | set(overrides)):
            last = q.list_breaker_transitions(conn, target=name, limit=1)
            out.append(BreakerStatus(name, name in targets, overrides.get(name), last[-1] if last else None))
    return out
