"""What the routing editor reads and writes, without Qt: routes as store rows and as
:class:`~app.core.routing.Route` objects, the text forms of the editor's fields, the dry run of
a pasted request or a recorded event, and the one-transaction save.

Rows are the store's shape (``storage.queries.control``; see :mod:`app.gateway.state`): a route
row is ``{name, settings, rules, on_all_open}``.  The editor converts a row to a ``Route`` with
the same parser a config file goes through, and back with the same writer
``controlroom config export`` uses, so a route saved here exports and re-applies as a no-op.

Every function that touches the store is blocking: the page calls them through its runner.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy import Connection, Engine

from app.core.config import ConfigError, ControlConfig, check_config, config_to_data, dump_config
from app.core.event import Event
from app.core.routing import Decision, RequestContext, Route, TagValue, dry_run
from app.gateway.control import stored_breaker_defaults
from app.gateway.state import config_from_rows, config_to_rows
from storage.engine import transaction
from storage.queries import control as q
from storage.queries.events import fetch_events

Bind = Engine | Connection

#: Sticky keys offered in the editor (any request attribute or tag may be typed).
STICKY_KEYS = ("", "user", "feature", "conversation", "session", "team")


class SaveRefused(ValueError):
    """The store's configuration would not validate with this change; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# --- rows <-> routes ------------------------------------------------------------------


def route_to_row(route: Route) -> dict[str, Any]:
    """The store row for a route (exactly what ``config apply`` would write for it)."""
    return config_to_rows(ControlConfig(routes=(route,)))["route"][0]


def route_to_data(route: Route) -> dict[str, Any]:
    """The route in the config file's shape (config.md ``routes:`` item)."""
    data: dict[str, Any] = config_to_data(ControlConfig(routes=(route,)))["routes"][0]
    return data


def route_yaml(route: Route) -> str:
    """The route as it reads in a config file."""
    return dump_config(ControlConfig(routes=(route,)))


def _step_names(chain: Iterable[Any]) -> set[str]:
    names: set[str] = set()
    for step in chain:
        if isinstance(step, str):
            names.add(step)
        elif isinstance(step, Mapping) and isinstance(step.get("split"), Mapping):
            names.update(str(k) for k in step["split"])
    return names


def route_from_row(row: Mapping[str, Any]) -> Route:
    """The :class:`Route` a store row holds, parsed like a file (``ValueError`` when it does not parse).

    Target names are not checked here (the editor checks them against the store's targets).
    """
    data = {"name": row["name"], **dict(row.get("settings") or {})}
    data["on_all_open"] = row.get("on_all_open") or "fail_fast"
    data["rules"] = list(row.get("rules") or [])
    names: set[str] = set()
    for rule in data["rules"]:
        if isinstance(rule, Mapping):
            names |= _step_names(rule.get("chain") or [])
    doc = {
        "providers": [{"name": "p", "kind": "openai", "api_key": "none"}],
        "targets": [{"name": n, "provider": "p", "model": "m"} for n in sorted(names)],
        "routes": [data],
    }
    result = check_config(yaml.safe_dump(doc, sort_keys=False), f"route {row['name']}")
    if result.config is None:
        raise ValueError("; ".join(p.message for p in result.errors))
    return result.config.routes[0]


# --- the editor's text fields -----------------------------------------------------------

_TAG = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*=\s*(.+?)\s*$")


def parse_tags(text: str) -> dict[str, TagValue]:
    """``feature=search, tier=gold|pro`` -> ``{"feature": "search", "tier": ("gold", "pro")}``."""
    out: dict[str, TagValue] = {}
    for part in (p for p in text.split(",") if p.strip()):
        m = _TAG.match(part)
        if m is None:
            raise ValueError(f"`{part.strip()}` is not key=value (e.g. feature=search, tier=gold|pro)")
        key, raw = m.group(1), m.group(2)
        if key in ("input_tokens_over", "input_tokens_under", "hours"):
            raise ValueError(f"`{key}` has its own field")
        if key in out:
            raise ValueError(f"`{key}` is given twice: list its values as {key}=a|b")
        values = tuple(v.strip() for v in raw.split("|"))
        if any(not v for v in values):
            raise ValueError(f"`{key}` has an empty value")
        out[key] = values[0] if len(values) == 1 else values
    return out


def format_tags(tags: Mapping[str, TagValue]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else '|'.join(v)}" for k, v in tags.items())


_WEIGHT = re.compile(r"^\s*([^\s=:]+)\s*[=:]\s*(-?\d+)\s*%?\s*$")


def parse_weights(text: str) -> dict[str, int]:
    """``fast=90, quick=10`` -> ``{"fast": 90, "quick": 10}`` (percent; they must add up to 100)."""
    out: dict[str, int] = {}
    for part in (p for p in text.split(",") if p.strip()):
        m = _WEIGHT.match(part)
        if m is None:
            raise ValueError(f"`{part.strip()}` is not target=weight (e.g. fast=90, quick=10)")
        if m.group(1) in out:
            raise ValueError(f"`{m.group(1)}` is in the split twice")
        out[m.group(1)] = int(m.group(2))
    if not out:
        raise ValueError("a split needs targets with weights, e.g. fast=90, quick=10")
    return out


def format_weights(weights: Mapping[str, int]) -> str:
    return ", ".join(f"{t}={w}" for t, w in weights.items())


def parse_number(
    text: str, what: str, *, integer: bool = False, optional: bool = False, minimum: float | None = None
) -> float | int | None:
    """A field's number; empty is ``None`` when ``optional``.  ``ValueError`` says what is wrong."""
    s = text.strip()
    if not s:
        if optional:
            return None
        raise ValueError(f"{what} is required")
    try:
        value: float | int = int(s) if integer else float(s)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{what} must be {kind}, not `{s}`") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be at least {minimum:g}")
    return value


# --- the dry run ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DryRunInput:
    """What the dry run knows about a request: its context and, when pasted, its messages."""

    feature: str | None = None
    user: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    system: str | None = None
    model: str = "gpt-4o"
    input_tokens: int | None = None  # known already (a recorded event)
    source: str = "pasted request"


def _text_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be an object of text values")
    return {str(k): str(v) for k, v in value.items() if v is not None}


def parse_request(text: str) -> DryRunInput:
    """A pasted request: a JSON body (OpenAI or Anthropic shape, with optional ``feature``,
    ``user``, ``tags``, ``metadata``) or header lines (``x-controlroom-feature: search``,
    ``x-controlroom-tags: team=ml``, or plain ``feature: search`` / ``tier: gold``)."""
    s = text.strip()
    if not s:
        raise ValueError("paste a request first: a JSON body, or header lines like feature: search")
    if s.startswith("{"):
        try:
            body = json.loads(s)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
        if not isinstance(body, Mapping):
            raise ValueError("the JSON body must be an object")
        return _from_body(body)
    return _from_headers(s)


def _from_body(body: Mapping[str, Any]) -> DryRunInput:
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise ValueError("`messages` must be a list of {role, content} objects")
    metadata = _text_map(body.get("metadata"), "metadata")
    tags = {**{k: v for k, v in metadata.items() if k not in ("feature", "user_id")}}
    tags.update(_text_map(body.get("tags"), "tags"))
    system = body.get("system")
    if isinstance(system, list):  # Anthropic's block form
        system = " ".join(str(b.get("text", "")) for b in system if isinstance(b, Mapping))
    feature = body.get("feature") or metadata.get("feature")
    user = body.get("user") or metadata.get("user_id")
    return DryRunInput(
        feature=str(feature) if feature else None,
        user=str(user) if user else None,
        tags=tags,
        messages=[dict(m) for m in messages],
        system=str(system) if system else None,
        model=str(body.get("model") or "gpt-4o"),
        source="pasted JSON body",
    )


def _from_headers(text: str) -> DryRunInput:
    feature = user = None
    tags: dict[str, str] = {}
    tokens: int | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"line {n}: `{line.strip()}` is not `name: value`")
        key = key.strip().lower()
        value = value.strip()
        bare = key.removeprefix("x-controlroom-")
        if bare == "feature":
            feature = value
        elif bare == "user":
            user = value
        elif bare == "tags":
            for part in (p for p in value.split(",") if p.strip()):
                k, eq, v = part.partition("=")
                if not eq:
                    raise ValueError(f"line {n}: tags are k=v,k2=v2, not `{part.strip()}`")
                tags[k.strip()] = v.strip()
        elif bare in ("input_tokens", "input-tokens", "tokens"):
            try:
                tokens = int(value)
            except ValueError:
                raise ValueError(f"line {n}: input tokens must be a whole number") from None
        elif key.startswith(("authorization", "x-api-key", "content-")):
            continue  # never a routing input (and never echoed)
        else:
            tags[bare] = value
    return DryRunInput(feature, user, tags, input_tokens=tokens, source="pasted headers")


def input_from_event(event: Event) -> DryRunInput:
    """A recorded event as a dry-run input: its tags and the input tokens it was billed for."""
    return DryRunInput(
        feature=event.feature,
        user=event.user,
        tags=dict(event.tags),
        model=event.model or "gpt-4o",
        input_tokens=event.input_tokens,
        source=f"event {event.event_id[:12]}",
    )


def describe_event(event: Event) -> str:
    """One line for the recent-events picker."""
    when = time.strftime("%H:%M:%S", time.localtime(event.ts_start))
    bits = [when, event.route or "-", event.feature or "", event.user or "", f"{event.input_tokens} tok"]
    return " · ".join(b for b in bits if b)


@dataclass(frozen=True, slots=True)
class DryRunAnswer:
    decision: Decision
    input_tokens: int | None
    token_note: str  # how the tokens were known
    source: str
    live: list[str] = field(default_factory=list)  # breaker notes from a running gateway

    @property
    def headline(self) -> str:
        chain = self.decision.chain
        if not chain:
            return "No target: no rule matches this request"
        rest = f", then {' → '.join(chain[1:])}" if len(chain) > 1 else ""
        return f"→ {chain[0]}{rest}  (rule {self.decision.rule_index + 1 if self.decision.rule_index is not None else '-'})"


TokenCounter = Callable[[list[dict[str, Any]], str, str | None], int]


def _count(messages: list[dict[str, Any]], model: str, system: str | None) -> int:
    from app.core.tokens import count_messages

    return count_messages(messages, model, system).tokens


def run_dry(
    route: Route, given: DryRunInput, *, now: float | None = None, counter: TokenCounter | None = None
) -> DryRunAnswer:
    """Where ``given`` would go on ``route`` and why (blocking: the token count loads tiktoken)."""
    tokens = given.input_tokens
    note = "recorded on the event" if tokens is not None else ""
    if tokens is None and (given.messages or given.system):
        tokens = (counter or _count)(given.messages, given.model, given.system)
        note = f"counted with tiktoken for {given.model}"
    elif tokens is None:
        note = "no messages: token conditions cannot match"
    ctx = RequestContext(
        route=route.name, feature=given.feature, user=given.user, tags=given.tags, input_tokens=tokens
    )
    decision = dry_run(route, ctx, now=now if now is not None else time.time())
    return DryRunAnswer(decision, tokens, note, given.source)


def breaker_notes(chain: list[str], snapshots: Iterable[Any], on_all_open: str = "fail_fast") -> list[str]:
    """What the breakers of a running gateway do to a chain now: each target's state, and which
    target a call would go to first (the first whose breaker is not open)."""
    by_target = {getattr(s, "target", None): s for s in snapshots}
    if not chain or not any(t in by_target for t in chain):
        return []
    states = []
    first = None
    for t in chain:
        snap = by_target.get(t)
        if snap is None:
            states.append(f"{t} not seen yet")
            if first is None:
                first = t
            continue
        state = str(getattr(snap.state, "value", snap.state))
        forced = getattr(snap, "forced", None)
        states.append(
            f"{t} {state.replace('_', '-')}" + (f" ({forced.describe()})" if forced is not None else "")
        )
        if first is None and state != "open":
            first = t
    lines = [f"breakers now (the gateway in this app): {', '.join(states)}"]
    if first is None:
        what = "it tries anyway" if on_all_open == "try_anyway" else "it fails fast (breaker_open)"
        lines.append(f"every breaker of the chain is open: {what}")
    elif first != chain[0]:
        lines.append(f"so a call goes to {first} first")
    return lines


def override_notes(chain: list[str], overrides: Iterable[Any], now: float) -> list[str]:
    """The operators' breaker overrides on a chain's targets (from the store: what every gateway obeys)."""
    from app.ui.models.breakers_model import describe_override

    by_target = {getattr(o, "target", None): o for o in overrides}
    lines = [f"{t}: breaker {describe_override(by_target[t], now)}" for t in chain if t in by_target]
    if not lines:
        return []
    skipped = [t for t in chain if t in by_target and by_target[t].state == "force_open"]
    if skipped and len(skipped) < len(chain):
        lines.append(f"every gateway skips {', '.join(skipped)}: a call goes to the next target in the chain")
    elif skipped:
        lines.append("every target of the chain is forced open: the route's all-open rule decides")
    return lines


# --- reading and saving ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteRecord:
    name: str
    revision: int | None  # None: not in the store
    route: Route | None  # None: the stored row does not parse (``error`` says why)
    error: str = ""


@dataclass(frozen=True, slots=True)
class RoutesSnapshot:
    routes: list[RouteRecord]
    targets: dict[str, str]  # name -> model
    version: int
    read_only: bool = False  # the routes come from a gateway's config file, not the store
    note: str = ""


def load_routes(bind: Bind, gateway_config: ControlConfig | None = None) -> RoutesSnapshot:
    """Every route in the store with the known targets.

    When the store holds no routes but the in-process gateway runs on a config file of its own
    (the demo), its routes are shown read-only: editing them here would change nothing it serves.
    """
    with transaction(bind) as conn:
        rows = q.list_objects(conn, "route")
        targets = {t["name"]: t["model"] for t in q.list_objects(conn, "target")}
        version = q.get_control_version(conn)
    if not rows and gateway_config is not None and gateway_config.routes:
        return RoutesSnapshot(
            [RouteRecord(r.name, None, r) for r in gateway_config.routes],
            {t.name: t.model for t in gateway_config.targets},
            version,
            read_only=True,
            note="These routes come from the config the in-process gateway was started with (the demo's), "
            "not from the store: they are shown read-only. Apply a config file to the store "
            "(controlroom config apply FILE) to edit routes here.",
        )
    records = []
    for row in rows:
        try:
            records.append(RouteRecord(row["name"], row["revision"], route_from_row(row)))
        except ValueError as exc:
            records.append(RouteRecord(row["name"], row["revision"], None, str(exc)))
    return RoutesSnapshot(records, targets, version)


def recent_events(bind: Bind, limit: int = 30) -> list[Event]:
    """The newest events (for the dry run's "pick a recent event")."""
    return fetch_events(bind, limit=limit).events


def _check_whole(conn: Connection, kind: q.ControlKind, name: str, row: Mapping[str, Any] | None) -> None:
    """Would the store's configuration, with this change, still load in every gateway?

    A gateway refuses a control version that does not validate as a whole (a budget scoped to a
    deleted route, a chain naming a removed target): refuse the change before it is written.
    """
    rows = {
        k: [r for r in q.list_objects(conn, k) if not (k == kind and r["name"] == name)]
        for k in q.CONTROL_KINDS
    }
    if row is not None:
        rows[kind].append(dict(row))
    try:
        config_from_rows(
            rows["provider"],
            rows["target"],
            rows["route"],
            rows["budget"],
            breakers_default=stored_breaker_defaults(conn),
        )
    except ConfigError as exc:
        raise SaveRefused([p.message for p in exc.problems]) from None


def save_row(
    bind: Bind,
    kind: q.ControlKind,
    row: Mapping[str, Any],
    *,
    expected_revision: int | None,
    actor: str,
    reason: str,
) -> dict[str, Any]:
    """Validate the whole configuration with ``row`` in it and save it, in ONE transaction.

    Raises :class:`SaveRefused` (the configuration would not load), ``StaleRevision`` (someone
    saved since ``expected_revision``) or ``ValueError``.  Audited; bumps the control version.
    """
    if not reason.strip():
        raise ValueError("say why: a change needs a reason (it goes in the audit log)")
    with transaction(bind, write=True) as conn:
        _check_whole(conn, kind, row["name"], row)
        return q.save_object(
            conn, kind, row, expected_revision=expected_revision, actor=actor, reason=reason.strip()
        )


def delete_row(
    bind: Bind, kind: q.ControlKind, name: str, *, expected_revision: int, actor: str, reason: str
) -> None:
    """Delete an object, refused when the rest of the configuration needs it; one transaction."""
    if not reason.strip():
        raise ValueError("say why: a deletion needs a reason (it goes in the audit log)")
    with transaction(bind, write=True) as conn:
        _check_whole(conn, kind, name, None)
        q.delete_object(
            conn, kind, name, expected_revision=expected_revision, actor=actor, reason=reason.strip()
        )


def get_row(bind: Bind, kind: q.ControlKind, name: str) -> dict[str, Any] | None:
    return q.get_object(bind, kind, name)
