"""The gateway's control state: an immutable snapshot, loaded from the store or given as a config.

A :class:`ControlState` holds what one request needs to be routed (providers,
targets, routes, breaker settings, budgets, the operators' breaker overrides)
as plain immutable objects, so the request path reads it without a lock or a
query.  A new snapshot replaces the old one whole when the store's control
version moves (the engine polls :func:`storage.queries.control.get_control_version`).

The store keeps control objects as rows (storage/models.py); their shape is
the config file's (config.md), flattened where the table has columns:

- provider: ``kind``, ``base_url``, ``api_key_ref`` (``keyring:controlroom/NAME`` for
  ``keyring``, ``env:VAR`` and ``none`` as written), ``admin_key_ref``, ``rpm``, ``tpm``.
- target: ``provider``, ``model``, the four ``*_per_mtok`` prices, ``breaker`` = the
  target's entry under ``breakers.targets`` (changed fields only).
- route: ``settings`` = every route key of the file except ``name``, ``rules`` and
  ``on_all_open`` (``deadline_s``, ``retry: {...}``, ``cache: {...}``, ...);
  ``rules`` = the file's rules list as written; ``on_all_open``.
- budget: its keys as columns (``scope``, ``period``, ``timezone``, ``limit_usd``,
  ``limit_tokens``, ``warn_at``, ``action``, ``downgrade_to``).

:func:`config_to_rows` and :func:`config_from_rows` convert both ways; rows are
validated by the same parser as a file (:func:`app.core.config.check_config`),
so the store can never hold a route the gateway reads differently from the file.
The store has no table for ``breakers.default``: ``config apply`` keeps it in
the audit log (:func:`app.gateway.control.stored_breaker_defaults`), where
:func:`load_state` reads it.

The prompt registry's active versions ride along (``ControlState.prompts``):
promote and roll back bump the control version, so a gateway renders the new
active version from its next poll on (docs/prompts.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from app.core.breaker import BreakerSettings, Override, OverrideMode
from app.core.budget import Budget
from app.core.config import (
    BreakerConfig,
    ConfigError,
    ControlConfig,
    Provider,
    Target,
    check_config,
    config_to_data,
)
from app.core.routing import Route, Rule
from storage.queries import control as q
from storage.queries.prompts import PromptVersion, active_versions

log = logging.getLogger(__name__)

_KEYRING_PREFIX = "keyring:controlroom/"
_PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")
_ROUTE_ROW_KEYS = ("name", "rules", "on_all_open")


@dataclass(frozen=True, slots=True)
class ControlState:
    """Everything the request path reads, as of one control version.  Never mutated."""

    version: int
    config: ControlConfig
    providers: Mapping[str, Provider]
    targets: Mapping[str, Target]
    routes: Mapping[str, Route]
    budgets: tuple[Budget, ...]
    breakers: BreakerConfig
    #: Active operator overrides by target (from the store; empty for a config-only gateway).
    overrides: Mapping[str, tuple[Override, ...]] = field(default_factory=dict)
    source: str = "config"  # "config" | "store"
    #: Every prompt in the registry with its active version (``None``: none promoted yet).
    prompts: Mapping[str, PromptVersion | None] = field(default_factory=dict)

    def route_for(self, name: str) -> tuple[Route, bool] | None:
        """The route called ``name``, or a one-target route when ``name`` is a target.

        The second item says whether it is a real route (``False``: a target called directly,
        with the default route settings of semantics.md).
        """
        route = self.routes.get(name)
        if route is not None:
            return route, True
        if name in self.targets:
            return _direct_route(name), False
        return None

    def breaker_settings(self) -> tuple[BreakerSettings, dict[str, BreakerSettings]]:
        per = {name: self.breakers.settings_for(name) for name in self.breakers.targets}
        return self.breakers.default, per


_direct_cache: dict[str, Route] = {}


def _direct_route(target: str) -> Route:
    r = _direct_cache.get(target)
    if r is None:
        r = Route(target, (Rule((target,)),))
        if len(_direct_cache) > 10_000:
            _direct_cache.clear()
        _direct_cache[target] = r
    return r


def state_from_config(
    cfg: ControlConfig,
    *,
    version: int = 0,
    overrides: Mapping[str, tuple[Override, ...]] | None = None,
    source: str = "config",
    prompts: Mapping[str, PromptVersion | None] | None = None,
) -> ControlState:
    return ControlState(
        version=version,
        config=cfg,
        providers={p.name: p for p in cfg.providers},
        targets={t.name: t for t in cfg.targets},
        routes={r.name: r for r in cfg.routes},
        budgets=cfg.budgets,
        breakers=cfg.breakers,
        overrides=dict(overrides or {}),
        source=source,
        prompts=dict(prompts or {}),
    )


# --- rows <-> config -------------------------------------------------------------------


def _key_ref_to_row(ref: str | None, provider: str) -> str | None:
    if ref is None:
        return None
    return f"{_KEYRING_PREFIX}{provider}" if ref == "keyring" else ref


def _key_ref_from_row(ref: str | None) -> str | None:
    if ref is None:
        return None
    return "keyring" if ref.startswith("keyring") else ref


def config_to_rows(cfg: ControlConfig) -> dict[str, list[dict[str, Any]]]:
    """The store rows (``storage.queries.control.save_object`` data) for a config, by kind.

    ``breakers.default`` has no row (see the module docstring).
    """
    data = config_to_data(cfg)
    providers = []
    for p in cfg.providers:
        providers.append(
            {
                "name": p.name,
                "kind": p.kind.value,
                "base_url": p.base_url,
                "api_key_ref": _key_ref_to_row(p.api_key, p.name),
                "admin_key_ref": _key_ref_to_row(p.admin_key, p.name),
                "rpm": p.rate_limits.rpm if p.rate_limits else None,
                "tpm": p.rate_limits.tpm if p.rate_limits else None,
            }
        )
    targets = []
    for t in cfg.targets:
        row: dict[str, Any] = {"name": t.name, "provider": t.provider, "model": t.model}
        for f in _PRICE_FIELDS:
            row[f] = getattr(t.price, f) if t.price is not None else None
        changes = cfg.breakers.targets.get(t.name)
        row["breaker"] = dict(changes) if changes else None
        targets.append(row)
    routes = []
    for r in data.get("routes", []):
        routes.append(
            {
                "name": r["name"],
                "settings": {k: v for k, v in r.items() if k not in _ROUTE_ROW_KEYS},
                "rules": r["rules"],
                "on_all_open": r.get("on_all_open", "fail_fast"),
            }
        )
    budgets = []
    for b in data.get("budgets", []):
        budgets.append(
            {
                "name": b["name"],
                "scope": b.get("scope", {}),
                "period": b["period"],
                "timezone": b.get("timezone", "UTC"),
                "limit_usd": b.get("limit_usd"),
                "limit_tokens": b.get("limit_tokens"),
                "warn_at": b.get("warn_at", [0.5, 0.8, 0.95]),
                "action": b.get("action", "alert_only"),
                "downgrade_to": b.get("downgrade_to"),
            }
        )
    return {"provider": providers, "target": targets, "route": routes, "budget": budgets}


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def config_from_rows(
    providers: Iterable[Mapping[str, Any]],
    targets: Iterable[Mapping[str, Any]],
    routes: Iterable[Mapping[str, Any]],
    budgets: Iterable[Mapping[str, Any]],
    *,
    breakers_default: BreakerSettings | None = None,
) -> ControlConfig:
    """The config the rows describe, validated like a file; :class:`ConfigError` lists what is wrong."""
    data: dict[str, Any] = {}
    pdata = []
    for p in providers:
        d: dict[str, Any] = {"name": p["name"], "kind": p["kind"]}
        if p.get("base_url"):
            d["base_url"] = p["base_url"]
        d["api_key"] = _key_ref_from_row(p.get("api_key_ref")) or "keyring"
        admin = _key_ref_from_row(p.get("admin_key_ref"))
        if admin is not None:
            d["admin_key"] = admin
        limits = _drop_none({"rpm": p.get("rpm"), "tpm": p.get("tpm")})
        if limits:
            d["rate_limits"] = limits
        pdata.append(d)
    tdata = []
    per_target: dict[str, Any] = {}
    for t in targets:
        d = {"name": t["name"], "provider": t["provider"], "model": t["model"]}
        price = _drop_none({f: t.get(f) for f in _PRICE_FIELDS})
        if price:
            d["price"] = price
        if t.get("breaker"):
            per_target[t["name"]] = dict(t["breaker"])
        tdata.append(d)
    rdata = []
    for r in routes:
        d = {"name": r["name"], **dict(r.get("settings") or {})}
        d["on_all_open"] = r.get("on_all_open") or "fail_fast"
        d["rules"] = list(r.get("rules") or [])
        rdata.append(d)
    bdata = []
    for b in budgets:
        d = {
            "name": b["name"],
            "scope": dict(b.get("scope") or {}),
            "period": b["period"],
            "timezone": b.get("timezone") or "UTC",
        }
        if b.get("limit_usd") is not None:
            d["limit_usd"] = b["limit_usd"]
        if b.get("limit_tokens") is not None:
            d["limit_tokens"] = b["limit_tokens"]
        if b.get("warn_at") is not None:
            d["warn_at"] = list(b["warn_at"])
        d["action"] = b.get("action") or "alert_only"
        if b.get("downgrade_to"):
            d["downgrade_to"] = list(b["downgrade_to"])
        bdata.append(d)
    for key, items in (("providers", pdata), ("targets", tdata), ("routes", rdata), ("budgets", bdata)):
        if items:
            data[key] = items
    default = breakers_default or BreakerSettings()
    if per_target or default != BreakerSettings():
        data["breakers"] = {
            "default": _drop_none({f: getattr(default, f) for f in default.__dataclass_fields__}),
            "targets": per_target,
        }
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    result = check_config(text, "<store>")
    if result.config is None:
        raise ConfigError(result.errors)
    return result.config


# --- loading from the store (blocking: run it off the event loop) ------------------------


def load_overrides(bind: q.Bind, *, now: float | None = None) -> dict[str, tuple[Override, ...]]:
    """The operators' active breaker overrides by target."""
    ts = time.time() if now is None else now
    out: dict[str, tuple[Override, ...]] = {}
    for o in q.list_breaker_overrides(bind, now=ts):
        if o.state == "auto":
            continue
        ov = Override(
            OverrideMode(o.state),
            o.reason or "(no reason given)",
            o.actor or "unknown",
            o.created_at,
            o.expires_at,
        )
        out[o.target] = (*out.get(o.target, ()), ov)
    return out


def load_config(bind: q.Bind, *, breakers_default: BreakerSettings | None = None) -> ControlConfig:
    """The control objects in the store as a config; :class:`ConfigError` when they do not validate."""
    return config_from_rows(
        q.list_objects(bind, "provider"),
        q.list_objects(bind, "target"),
        q.list_objects(bind, "route"),
        q.list_objects(bind, "budget"),
        breakers_default=breakers_default,
    )


def load_state(
    bind: q.Bind,
    *,
    config: ControlConfig | None = None,
    now: float | None = None,
) -> ControlState:
    """One consistent snapshot: the version first, so a change racing the load is seen next poll.

    With ``config`` the objects come from it and only the overrides from the store.
    """
    version = q.get_control_version(bind)
    overrides = load_overrides(bind, now=now)
    prompts = load_prompts(bind)
    if config is not None:
        return state_from_config(
            config, version=version, overrides=overrides, source="config", prompts=prompts
        )
    # breakers.default lives in the audit log (app.gateway.control owns that convention).
    from app.gateway.control import stored_breaker_defaults

    cfg = load_config(bind, breakers_default=stored_breaker_defaults(bind))
    return state_from_config(cfg, version=version, overrides=overrides, source="store", prompts=prompts)


def load_prompts(bind: q.Bind) -> dict[str, PromptVersion | None]:
    """The prompt registry's active versions by prompt name (versions are immutable: safe to share)."""
    return active_versions(bind)
