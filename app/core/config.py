"""The control configuration as code: parse, validate whole, and write back (config.md).

:func:`check_config` reads YAML text into typed objects (providers, targets,
routes, breakers, budgets) and reports *every* problem as ``FILE:LINE:
message``, using the line numbers of the YAML nodes (``yaml.compose``).  A file
with any error gives no config at all: the caller refuses it whole and changes
nothing.  :func:`dump_config` writes the objects back so that
``parse_config(dump_config(c)) == c``.

Keys never live in the file.  ``api_key`` and ``admin_key`` take ``keyring``,
``env:VAR_NAME`` or ``none``; anything else is refused *without repeating the
value*, with the way to store it properly.  Any other value that looks like a
provider key is refused the same way.

Pure: no store, no keyring, no network; the caller applies the result.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.core.breaker import BreakerSettings
from app.core.budget import Budget, BudgetAction
from app.core.pricing import PriceOverride
from app.core.retry import RetryPolicy
from app.core.routing import (
    CacheSettings,
    Conditions,
    HoursWindow,
    OnAllOpen,
    Route,
    Rule,
    Split,
    Step,
    TagValue,
    validate_route,
)

# -- the objects ----------------------------------------------------------------


class ProviderKind(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai_compatible"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What we may use of a provider's limits (the A/B runner and gateway pace to them)."""

    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: ProviderKind
    base_url: str | None = None  # None: the provider's public endpoint
    api_key: str = "keyring"  # keyring | env:VAR_NAME | none  (a reference, never the key)
    admin_key: str | None = None  # same forms; for usage and cost APIs
    rate_limits: RateLimits | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A provider + model: what a chain names and what a breaker guards."""

    name: str
    provider: str
    model: str
    price: PriceOverride | None = None


BreakerOverrides = Mapping[str, float | int | None]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    default: BreakerSettings = field(default_factory=BreakerSettings)
    targets: Mapping[str, BreakerOverrides] = field(default_factory=dict)  # per target: changed fields only

    def settings_for(self, target: str) -> BreakerSettings:
        changes = self.targets.get(target)
        return replace(self.default, **changes) if changes else self.default  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ControlConfig:
    providers: tuple[Provider, ...] = ()
    targets: tuple[Target, ...] = ()
    routes: tuple[Route, ...] = ()
    breakers: BreakerConfig = field(default_factory=BreakerConfig)
    budgets: tuple[Budget, ...] = ()

    def provider(self, name: str) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

    def budget(self, name: str) -> Budget | None:
        return next((b for b in self.budgets if b.name == name), None)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class ConfigCheck:
    """``config`` is ``None`` whenever there is an error: a file is applied whole or not at all."""

    config: ControlConfig | None
    errors: list[ConfigProblem]
    warnings: list[ConfigProblem]

    @property
    def ok(self) -> bool:
        return not self.errors


class ConfigError(ValueError):
    """A config file that does not validate; ``problems`` lists every error."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# -- the keys -------------------------------------------------------------------

_TOP = ("providers", "targets", "routes", "breakers", "budgets")
_PROVIDER = ("name", "kind", "base_url", "api_key", "admin_key", "rate_limits")
_RATE = ("rpm", "tpm")
_TARGET = ("name", "provider", "model", "price")
_PRICE = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")
_ROUTE_SECONDS = ("deadline_s", "connect_timeout_s", "first_token_timeout_s", "idle_timeout_s")
_ROUTE = (
    "name",
    *_ROUTE_SECONDS,
    "attempt_timeout_s",
    "retry",
    "cache",
    "max_output_tokens",
    "on_all_open",
    "store_text",
    "latency_aware",
    "fallback_response",
    "rules",
)
_RETRY = ("max_attempts", "base_s", "cap_s", "max_retry_after_s")
_CACHE = ("exact_ttl_s", "allow_nonzero_temperature")
_RULE = ("when", "chain")
_WHEN_RESERVED = ("input_tokens_over", "input_tokens_under", "hours")
_HOURS = ("from", "to", "tz")
_SPLIT = ("split", "sticky")
_BREAKERS = ("default", "targets")
_BREAKER_INT = ("min_requests", "probe_requests")
_BREAKER_FIELDS = tuple(f.name for f in fields(BreakerSettings))
_BUDGET = (
    "name",
    "scope",
    "period",
    "timezone",
    "limit_usd",
    "limit_tokens",
    "warn_at",
    "action",
    "downgrade_to",
)

_KEY_REF = re.compile(r"^(keyring|none|env:[A-Za-z_][A-Za-z0-9_]*)$")
# Provider keys: OpenAI sk-/sk-proj-, Anthropic sk-ant-, and long opaque tokens.
_SECRETISH = re.compile(r"(\bsk-[A-Za-z0-9_\-]{16,})|(^[A-Za-z0-9_\-+/=.]{40,}$)")
_KEY_HINT = "store it with `controlroom keys set {provider}` or use env:VAR_NAME"


def _looks_secret(text: str) -> bool:
    return bool(_SECRETISH.search(text))


def _show(value: Any) -> str:
    """A value quoted for a message, unless it could be a secret."""
    if isinstance(value, str) and _looks_secret(value):
        return "(a value that looks like a key, not shown)"
    text = repr(value) if not isinstance(value, str) else value
    return f"`{text[:60]}{'...' if len(text) > 60 else ''}`"


def _kind(node: Node, value: Any) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


_Entries = dict[str, tuple[Node, Node]]


class _Parser:
    def __init__(self, filename: str) -> None:
        self.file = filename
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        self._constructor = SafeConstructor()
        self._secret_nodes: set[int] = set()  # api_key/admin_key value nodes, checked on their own

    # -- reporting ----------------------------------------------------------------
    def err(self, node: Node | None, message: str) -> None:
        self.errors.append(ConfigProblem(self.file, _line(node), message))

    def warn(self, node: Node | None, message: str) -> None:
        self.warnings.append(ConfigProblem(self.file, _line(node), message, "warning"))

    # -- shapes -------------------------------------------------------------------
    def scalar(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            return node.value

    def is_null(self, node: Node) -> bool:
        return isinstance(node, ScalarNode) and self.scalar(node) is None

    def mapping(self, node: Node, what: str, allowed: tuple[str, ...] | None = None) -> _Entries | None:
        if self.is_null(node):
            return {}
        if not isinstance(node, MappingNode):
            self.err(node, f"{what} must be a mapping (key: value), not {_kind(node, self.scalar(node))}")
            return None
        out: _Entries = {}
        for k, v in node.value:
            key = self.scalar(k) if isinstance(k, ScalarNode) else None
            if not isinstance(key, str):
                self.err(k, f"{what}: a key must be a name")
                continue
            if key in out:
                self.err(k, f"{what}: `{key}` is given twice")
                continue
            out[key] = (k, v)
        if allowed is not None:
            for key, (k, _) in out.items():
                if key not in allowed:
                    close = difflib.get_close_matches(key, allowed, n=1)
                    hint = f" (did you mean `{close[0]}`?)" if close else f" (known: {', '.join(allowed)})"
                    self.err(k, f"{what}: unknown key {_show(key)}{hint}")
        return out

    def seq(self, node: Node, what: str) -> list[Node] | None:
        if self.is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.err(node, f"{what} must be a list, not {_kind(node, self.scalar(node))}")
            return None
        return list(node.value)

    # -- values ---------------------------------------------------------------------
    def text(self, node: Node, what: str, *, optional: bool = False) -> str | None:
        value = self.scalar(node)
        if value is None and optional and isinstance(node, ScalarNode):
            return None
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(node, ScalarNode):
            return str(node.value)  # a model or tag named 4 is still a name
        if isinstance(value, str):
            self.err(node, f"{what} must not be empty")
        elif isinstance(value, bool):
            self.err(node, f"{what} must be text, not true/false (put it in quotes if you mean the word)")
        else:
            self.err(node, f"{what} must be text, not {_kind(node, value)}")
        return None

    def number(self, node: Node, what: str, *, optional: bool = False) -> float | None:
        value = self.scalar(node)
        if value is None and optional and isinstance(node, ScalarNode):
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                self.err(node, f"{what} must be a finite number")
                return None
            return float(value)
        self.err(node, f"{what} must be a number, not {_kind(node, value)}")
        return None

    def integer(self, node: Node, what: str, *, optional: bool = False) -> int | None:
        value = self.scalar(node)
        if value is None and optional and isinstance(node, ScalarNode):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        self.err(node, f"{what} must be a whole number, not {_kind(node, value)}")
        return None

    def boolean(self, node: Node, what: str) -> bool | None:
        value = self.scalar(node)
        if isinstance(value, bool):
            return value
        self.err(node, f"{what} must be true or false, not {_kind(node, value)}")
        return None

    def choice(self, node: Node, what: str, enum: type[StrEnum]) -> Any:
        value = self.scalar(node)
        options = [e.value for e in enum]
        if isinstance(value, str) and value in options:
            return enum(value)
        self.err(node, f"{what} must be one of {', '.join(options)}, not {_show(value)}")
        return None

    def names(self, node: Node, what: str) -> tuple[str, ...] | None:
        """A list of names, or one name."""
        if isinstance(node, ScalarNode) and not self.is_null(node):
            one = self.text(node, what)
            return (one,) if one is not None else None
        items = self.seq(node, what)
        if items is None:
            return None
        out: list[str] = []
        for i, item in enumerate(items):
            name = self.text(item, f"{what}[{i}]")
            if name is None:
                return None
            out.append(name)
        return tuple(out)

    def key_ref(self, node: Node, what: str, provider: str) -> str | None:
        """``keyring`` | ``env:VAR_NAME`` | ``none``; never repeats what it was given."""
        self._secret_nodes.add(id(node))
        value = self.scalar(node)
        if isinstance(value, str) and _KEY_REF.match(value):
            return value
        if isinstance(value, str) and value.startswith("env:"):
            self.err(node, f"{what} needs an environment variable name after `env:` (letters, digits, _)")
            return None
        self.err(
            node,
            f"{what} must be keyring, env:VAR_NAME or none; a key itself is not allowed in a config file: "
            + _KEY_HINT.format(provider=provider),
        )
        return None

    def scan_secrets(self, node: Node | None) -> None:
        """Refuse anything anywhere that looks like a provider key, without showing it."""
        stack = [node] if node is not None else []
        while stack:
            n = stack.pop()
            if isinstance(n, ScalarNode):
                if id(n) not in self._secret_nodes and isinstance(n.value, str) and _looks_secret(n.value):
                    self.err(
                        n,
                        "this looks like an API key; keys do not belong in a config file: "
                        + _KEY_HINT.format(provider="PROVIDER"),
                    )
            elif isinstance(n, MappingNode):
                for k, v in n.value:
                    stack.extend((k, v))
            elif isinstance(n, SequenceNode):
                stack.extend(n.value)

    # -- sections -------------------------------------------------------------------
    def provider(self, node: Node, i: int) -> Provider | None:
        m = self.mapping(node, f"providers[{i}]", _PROVIDER)
        if m is None:
            return None
        name = self._name(m, node, f"providers[{i}]")
        what = f"provider `{name}`" if name else f"providers[{i}]"
        kind = self.choice(m["kind"][1], f"{what}: kind", ProviderKind) if "kind" in m else None
        if "kind" not in m:
            self.err(node, f"{what}: needs a kind ({', '.join(k.value for k in ProviderKind)})")
        base_url = None
        if "base_url" in m:
            base_url = self.text(m["base_url"][1], f"{what}: base_url", optional=True)
            if base_url is not None and not base_url.startswith(("http://", "https://")):
                self.err(m["base_url"][1], f"{what}: base_url must start with http:// or https://")
        if kind is ProviderKind.OPENAI_COMPATIBLE and base_url is None:
            self.err(node, f"{what}: an openai_compatible provider needs a base_url (ending in /v1)")
        label = name or "PROVIDER"
        api_key = "keyring"
        if "api_key" in m:
            api_key = self.key_ref(m["api_key"][1], f"{what}: api_key", label) or "keyring"
        admin_key = None
        if "admin_key" in m and not self.is_null(m["admin_key"][1]):
            admin_key = self.key_ref(m["admin_key"][1], f"{what}: admin_key", label)
        limits = None
        if "rate_limits" in m:
            rm = self.mapping(m["rate_limits"][1], f"{what}: rate_limits", _RATE)
            if rm is not None:
                rpm = self._positive_int(rm, "rpm", f"{what}: rate_limits")
                tpm = self._positive_int(rm, "tpm", f"{what}: rate_limits")
                limits = RateLimits(rpm, tpm)
        if name is None or kind is None:
            return None
        return Provider(name, kind, base_url, api_key, admin_key, limits)

    def target(self, node: Node, i: int) -> Target | None:
        m = self.mapping(node, f"targets[{i}]", _TARGET)
        if m is None:
            return None
        name = self._name(m, node, f"targets[{i}]")
        what = f"target `{name}`" if name else f"targets[{i}]"
        provider = self._required_text(m, node, "provider", what)
        model = self._required_text(m, node, "model", what)
        price = None
        if "price" in m:
            pm = self.mapping(m["price"][1], f"{what}: price", _PRICE)
            if pm is not None:
                values: dict[str, float | None] = {}
                for key in _PRICE:
                    if key in pm:
                        v = self.number(pm[key][1], f"{what}: price {key}", optional=True)
                        if v is not None and v < 0:
                            self.err(pm[key][1], f"{what}: price {key} must not be negative")
                        values[key] = v
                for key in ("input_per_mtok", "output_per_mtok"):
                    if values.get(key) is None:
                        self.err(m["price"][1], f"{what}: price needs {key} (USD per million tokens)")
                if values.get("input_per_mtok") is not None and values.get("output_per_mtok") is not None:
                    price = PriceOverride(
                        values["input_per_mtok"] or 0.0,
                        values["output_per_mtok"] or 0.0,
                        values.get("cache_read_per_mtok"),
                        values.get("cache_write_per_mtok"),
                    )
        if name is None or provider is None or model is None:
            return None
        return Target(name, provider, model, price)

    def route(self, node: Node, i: int) -> Route | None:
        m = self.mapping(node, f"routes[{i}]", _ROUTE)
        if m is None:
            return None
        name = self._name(m, node, f"routes[{i}]")
        what = f"route `{name}`" if name else f"routes[{i}]"
        kwargs: dict[str, Any] = {}
        ok = True
        for key in _ROUTE_SECONDS:
            if key in m:
                v = self.number(m[key][1], f"{what}: {key}")
                ok &= v is not None
                kwargs[key] = v
        if "attempt_timeout_s" in m:
            kwargs["attempt_timeout_s"] = self.number(
                m["attempt_timeout_s"][1], f"{what}: attempt_timeout_s", optional=True
            )
        if "max_output_tokens" in m:
            kwargs["max_output_tokens"] = self.integer(
                m["max_output_tokens"][1], f"{what}: max_output_tokens", optional=True
            )
        for key in ("store_text", "latency_aware"):
            if key in m:
                b = self.boolean(m[key][1], f"{what}: {key}")
                ok &= b is not None
                kwargs[key] = b
        if "on_all_open" in m:
            choice = self.choice(m["on_all_open"][1], f"{what}: on_all_open", OnAllOpen)
            ok &= choice is not None
            kwargs["on_all_open"] = choice
        if "fallback_response" in m:
            kwargs["fallback_response"] = self.text(
                m["fallback_response"][1], f"{what}: fallback_response", optional=True
            )
        if "retry" in m:
            rm = self.mapping(m["retry"][1], f"{what}: retry", _RETRY)
            if rm is None:
                ok = False
            else:
                r: dict[str, Any] = {}
                for key in _RETRY:
                    if key in rm:
                        conv = self.integer if key == "max_attempts" else self.number
                        r[key] = conv(rm[key][1], f"{what}: retry {key}")
                        ok &= r[key] is not None
                if ok:
                    kwargs["retry"] = RetryPolicy(**r)
        if "cache" in m:
            cm = self.mapping(m["cache"][1], f"{what}: cache", _CACHE)
            if cm is None:
                ok = False
            else:
                ttl = None
                if "exact_ttl_s" in cm:
                    ttl = self.number(cm["exact_ttl_s"][1], f"{what}: cache exact_ttl_s", optional=True)
                allow: bool | None = False
                if "allow_nonzero_temperature" in cm:
                    allow = self.boolean(
                        cm["allow_nonzero_temperature"][1], f"{what}: cache allow_nonzero_temperature"
                    )
                    ok &= allow is not None
                kwargs["cache"] = CacheSettings(ttl, bool(allow))
        rules: list[Rule] = []
        if "rules" not in m:
            self.err(node, f"{what}: needs rules (at least one chain of targets)")
            ok = False
        else:
            items = self.seq(m["rules"][1], f"{what}: rules")
            if items is None:
                ok = False
            else:
                for j, item in enumerate(items):
                    rule = self.rule(item, f"{what}: rule {j + 1}")
                    if rule is None:
                        ok = False
                    else:
                        rules.append(rule)
        if name is None or not ok:
            return None
        route = Route(name, tuple(rules), **kwargs)
        return route

    def rule(self, node: Node, what: str) -> Rule | None:
        m = self.mapping(node, what, _RULE)
        if m is None:
            return None
        when = Conditions()
        ok = True
        if "when" in m:
            parsed = self.conditions(m["when"][1], f"{what}: when")
            ok = parsed is not None
            when = parsed or when
        if "chain" not in m:
            self.err(node, f"{what}: needs a chain (the targets to try, in order)")
            return None
        items = self.seq(m["chain"][1], f"{what}: chain")
        if items is None:
            return None
        chain: list[Step] = []
        for k, item in enumerate(items):
            step = self.step(item, f"{what}: chain[{k}]")
            if step is None:
                ok = False
            else:
                chain.append(step)
        return Rule(tuple(chain), when) if ok else None

    def conditions(self, node: Node, what: str) -> Conditions | None:
        m = self.mapping(node, what)
        if m is None:
            return None
        ok = True
        tags: dict[str, TagValue] = {}
        over = under = None
        hours = None
        for key, (_, v) in m.items():
            if key in ("input_tokens_over", "input_tokens_under"):
                n = self.integer(v, f"{what}: {key}")
                ok &= n is not None
                if key == "input_tokens_over":
                    over = n
                else:
                    under = n
            elif key == "hours":
                hours = self.hours(v, f"{what}: hours")
                ok &= hours is not None
            elif isinstance(v, SequenceNode):
                values = self.names(v, f"{what}: {key}")
                ok &= values is not None
                if values is not None:
                    tags[key] = values
            else:
                one = self.text(v, f"{what}: {key}")
                ok &= one is not None
                if one is not None:
                    tags[key] = one
        return Conditions(tags, over, under, hours) if ok else None

    def hours(self, node: Node, what: str) -> HoursWindow | None:
        m = self.mapping(node, what, _HOURS)
        if m is None:
            return None
        if "from" not in m or "to" not in m:
            self.err(node, f"{what} needs from and to (hours 0-24), e.g. {{from: 9, to: 17, tz: UTC}}")
            return None
        start = self.integer(m["from"][1], f"{what}: from")
        end = self.integer(m["to"][1], f"{what}: to")
        tz = self.text(m["tz"][1], f"{what}: tz") if "tz" in m else "UTC"
        if start is None or end is None or tz is None:
            return None
        return HoursWindow(start, end, tz)

    def step(self, node: Node, what: str) -> Step | None:
        if isinstance(node, ScalarNode):
            return self.text(node, f"{what}: a target name")
        m = self.mapping(node, what, _SPLIT)
        if m is None:
            return None
        if "split" not in m:
            self.err(
                node, f"{what}: a chain step is a target name or {{split: {{a: 90, b: 10}}, sticky: user}}"
            )
            return None
        wm = self.mapping(m["split"][1], f"{what}: split")
        if wm is None:
            return None
        weights: dict[str, int] = {}
        ok = True
        for target, (_, v) in wm.items():
            w = self.integer(v, f"{what}: split weight of `{target}`")
            ok &= w is not None
            if w is not None:
                weights[target] = w
        sticky = None
        if "sticky" in m:
            sticky = self.text(m["sticky"][1], f"{what}: sticky", optional=True)
        return Split(weights, sticky) if ok else None

    def breakers(self, node: Node) -> BreakerConfig | None:
        m = self.mapping(node, "breakers", _BREAKERS)
        if m is None:
            return None
        default = BreakerSettings()
        default_problems: list[tuple[str, str]] = []
        if "default" in m:
            changes = self.breaker_fields(m["default"][1], "breakers default")
            if changes is None:
                return None
            default = replace(default, **changes)
            default_problems = default.problems()
            for fld, msg in default_problems:
                self.err(_find(m["default"][1], (fld,)), f"breakers default: {fld} {msg}")
        targets: dict[str, BreakerOverrides] = {}
        if "targets" in m:
            tm = self.mapping(m["targets"][1], "breakers targets")
            if tm is None:
                return None
            for name, (_, v) in tm.items():
                changes = self.breaker_fields(v, f"breakers for target `{name}`")
                if changes is None:
                    return None
                targets[name] = changes
                for fld, msg in replace(default, **changes).problems():
                    if (fld, msg) in default_problems:
                        continue  # reported once, on the default
                    self.err(_find(v, (fld,)), f"breakers for target `{name}`: {fld} {msg}")
        return BreakerConfig(default, targets)

    def breaker_fields(self, node: Node, what: str) -> dict[str, Any] | None:
        m = self.mapping(node, what, _BREAKER_FIELDS)
        if m is None:
            return None
        out: dict[str, Any] = {}
        ok = True
        for key, (_, v) in m.items():
            if key not in _BREAKER_FIELDS:
                ok = False
                continue
            if key in _BREAKER_INT:
                out[key] = self.integer(v, f"{what}: {key}")
            else:
                out[key] = self.number(v, f"{what}: {key}", optional=key == "slow_call_s")
            ok &= out[key] is not None or key == "slow_call_s"
        return out if ok else None

    def budget(self, node: Node, i: int) -> Budget | None:
        m = self.mapping(node, f"budgets[{i}]", _BUDGET)
        if m is None:
            return None
        name = self._name(m, node, f"budgets[{i}]")
        what = f"budget `{name}`" if name else f"budgets[{i}]"
        kwargs: dict[str, Any] = {}
        ok = True
        if "scope" in m:
            sm = self.mapping(m["scope"][1], f"{what}: scope")
            if sm is None:
                ok = False
            else:
                scope: dict[str, str] = {}
                for key, (_, v) in sm.items():
                    value = self.text(v, f"{what}: scope {key}")
                    ok &= value is not None
                    if value is not None:
                        scope[key] = value
                kwargs["scope"] = scope
        for key in ("period", "timezone"):
            if key in m:
                kwargs[key] = self.text(m[key][1], f"{what}: {key}")
                ok &= kwargs[key] is not None
        if "limit_usd" in m:
            kwargs["limit_usd"] = self.number(m["limit_usd"][1], f"{what}: limit_usd", optional=True)
        if "limit_tokens" in m:
            kwargs["limit_tokens"] = self.integer(
                m["limit_tokens"][1], f"{what}: limit_tokens", optional=True
            )
        if "warn_at" in m:
            items = self.seq(m["warn_at"][1], f"{what}: warn_at")
            levels: list[float] = []
            for j, item in enumerate(items or []):
                level = self.number(item, f"{what}: warn_at[{j}]")
                ok &= level is not None
                if level is not None:
                    levels.append(level)
            ok &= items is not None
            kwargs["warn_at"] = tuple(levels)
        if "action" in m:
            kwargs["action"] = self.choice(m["action"][1], f"{what}: action", BudgetAction)
            ok &= kwargs["action"] is not None
        if "downgrade_to" in m:
            chain = self.names(m["downgrade_to"][1], f"{what}: downgrade_to")
            ok &= chain is not None
            kwargs["downgrade_to"] = chain or ()
        if name is None or not ok:
            return None
        budget = Budget(name, **kwargs)
        for fld, msg in budget.problems():
            # A missing downgrade_to is best shown on the action that needs it.
            at = fld if fld in m or fld != "downgrade_to" else "action"
            self.err(_find(node, (at,)), f"{what}: {_field_message(fld, msg)}")
        return budget

    # -- helpers --------------------------------------------------------------------
    def _name(self, m: _Entries, node: Node, what: str) -> str | None:
        if "name" not in m:
            self.err(node, f"{what}: needs a name")
            return None
        return self.text(m["name"][1], f"{what}: name")

    def _required_text(self, m: _Entries, node: Node, key: str, what: str) -> str | None:
        if key not in m:
            self.err(node, f"{what}: needs {key}")
            return None
        return self.text(m[key][1], f"{what}: {key}")

    def _positive_int(self, m: _Entries, key: str, what: str) -> int | None:
        if key not in m:
            return None
        n = self.integer(m[key][1], f"{what} {key}", optional=True)
        if n is not None and n < 1:
            self.err(m[key][1], f"{what} {key} must be at least 1")
            return None
        return n


def _field_message(fld: str, msg: str) -> str:
    """Domain checks say "must be ..." about a field they name apart; name it in the message."""
    return f"{fld} {msg}" if msg.startswith("must") else msg


def _line(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _value_of(node: Node, key: str) -> Node | None:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                found: Node = v
                return found
    return None


def _find(node: Node, path: tuple[str | int, ...]) -> Node:
    """The deepest node along ``path`` (mapping keys and list indexes) that exists.

    A path that ends on a key gives the key itself: ``rules:`` is the line an operator looks
    for, while a block list under it starts on the next line.
    """
    cur = node
    for i, seg in enumerate(path):
        if isinstance(seg, int) and isinstance(cur, SequenceNode) and 0 <= seg < len(cur.value):
            cur = cur.value[seg]
        elif isinstance(seg, str) and isinstance(cur, MappingNode):
            for k, v in cur.value:
                if isinstance(k, ScalarNode) and k.value == seg:
                    cur = k if i == len(path) - 1 else v
                    break
            else:
                return cur
        else:
            return cur
    return cur


def check_config(text: str, filename: str = "<config>") -> ConfigCheck:
    """Parse and validate a control config whole; every problem comes back with its line."""
    p = _Parser(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        # The problem alone: str(exc) quotes the offending line, which could hold a key.
        what = " ".join(s for s in (exc.context, exc.problem) if s) or "not valid YAML"
        return ConfigCheck(None, [ConfigProblem(filename, line, f"not valid YAML: {what}")], [])
    except yaml.YAMLError:
        return ConfigCheck(None, [ConfigProblem(filename, 1, "not valid YAML")], [])
    if root is None:
        return ConfigCheck(ControlConfig(), [], [])
    top = p.mapping(root, "the file", _TOP)
    if top is None:
        return ConfigCheck(None, p.errors, p.warnings)  # one problem: nothing else to read

    def items(key: str) -> list[Node]:
        return (p.seq(top[key][1], key) or []) if key in top else []

    providers_nodes = items("providers")
    providers = [p.provider(n, i) for i, n in enumerate(providers_nodes)]
    target_nodes = items("targets")
    targets = [p.target(n, i) for i, n in enumerate(target_nodes)]
    route_nodes = items("routes")
    routes = [p.route(n, i) for i, n in enumerate(route_nodes)]
    breakers = p.breakers(top["breakers"][1]) if "breakers" in top else BreakerConfig()
    budget_nodes = items("budgets")
    budgets = [p.budget(n, i) for i, n in enumerate(budget_nodes)]
    p.scan_secrets(root)

    # Names are unique per kind.
    for kind, objs, nodes in (
        ("provider", providers, providers_nodes),
        ("target", targets, target_nodes),
        ("route", routes, route_nodes),
        ("budget", budgets, budget_nodes),
    ):
        seen: dict[str, int] = {}
        for obj, node in zip(objs, nodes, strict=True):
            if obj is None:
                continue
            name: str = getattr(obj, "name")  # noqa: B009 - the four kinds share only this field
            if name in seen:
                p.err(
                    _find(node, ("name",)), f"{kind} `{name}` is defined twice (first on line {seen[name]})"
                )
            else:
                seen[name] = _line(_find(node, ("name",)))

    provider_names = {x.name for x in providers if x is not None}
    target_names = {x.name for x in targets if x is not None}
    route_names = {x.name for x in routes if x is not None}
    # A target that failed to parse for another reason still exists by name: no second error
    # about every chain that names it.
    all_targets = target_names | {
        v.value
        for n, t in zip(target_nodes, targets, strict=True)
        if t is None and isinstance(v := _value_of(n, "name"), ScalarNode)
    }
    for t, node in zip(targets, target_nodes, strict=True):
        if t is not None and t.provider not in provider_names:
            p.err(
                _find(node, ("provider",)),
                f"target `{t.name}`: unknown provider `{t.provider}`{_near(t.provider, provider_names)}",
            )
    for r, node in zip(routes, route_nodes, strict=True):
        if r is None:
            continue
        for prob in validate_route(r, all_targets):
            at = _find(node, prob.path)
            msg = f"route `{r.name}`: {prob.message}"
            unknown = re.search(r"unknown target `([^`]*)`", prob.message)
            if unknown:
                msg += _near(unknown.group(1), all_targets)
            (p.err if prob.severity == "error" else p.warn)(at, msg)
    if breakers is not None and "breakers" in top:
        tnode = _value_of(top["breakers"][1], "targets") or top["breakers"][0]
        for name in breakers.targets:
            if name not in all_targets:
                p.err(_find(tnode, (name,)), f"breakers: unknown target `{name}`{_near(name, all_targets)}")
    for b, node in zip(budgets, budget_nodes, strict=True):
        if b is None:
            continue
        for k, step in enumerate(b.downgrade_to):
            if step not in all_targets:
                p.err(
                    _find(node, ("downgrade_to", k)),
                    f"budget `{b.name}`: downgrade_to names unknown target `{step}`",
                )
        for key, known in (("provider", provider_names), ("route", route_names)):
            value = b.scope.get(key)
            if value is not None and value not in known:
                p.err(
                    _find(node, ("scope", key)),
                    f"budget `{b.name}`: scope {key} `{value}` is not defined in this file",
                )

    errors = sorted(p.errors, key=lambda e: e.line)
    warnings = sorted(p.warnings, key=lambda e: e.line)
    if errors:
        return ConfigCheck(None, errors, warnings)
    cfg = ControlConfig(
        tuple(x for x in providers if x is not None),
        tuple(x for x in targets if x is not None),
        tuple(x for x in routes if x is not None),
        breakers or BreakerConfig(),
        tuple(x for x in budgets if x is not None),
    )
    return ConfigCheck(cfg, [], warnings)


def _near(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def parse_config(text: str, filename: str = "<config>") -> ControlConfig:
    """The config, or :class:`ConfigError` listing every problem (``FILE:LINE: message``)."""
    result = check_config(text, filename)
    if result.config is None:
        raise ConfigError(result.errors)
    return result.config


# -- writing back ------------------------------------------------------------------


def config_to_data(cfg: ControlConfig) -> dict[str, Any]:
    """Plain data in the file's shape (what :func:`dump_config` writes)."""
    out: dict[str, Any] = {}
    if cfg.providers:
        out["providers"] = [_provider_data(x) for x in cfg.providers]
    if cfg.targets:
        out["targets"] = [_target_data(x) for x in cfg.targets]
    if cfg.routes:
        out["routes"] = [_route_data(x) for x in cfg.routes]
    if cfg.breakers != BreakerConfig():
        b: dict[str, Any] = {
            "default": {k: v for k, v in _fields(cfg.breakers.default).items() if v is not None}
        }
        if cfg.breakers.targets:
            b["targets"] = {k: dict(v) for k, v in cfg.breakers.targets.items()}
        out["breakers"] = b
    if cfg.budgets:
        out["budgets"] = [_budget_data(x) for x in cfg.budgets]
    return out


class _Dumper(yaml.SafeDumper):
    """Whole-number floats as ``20`` (read back as 20.0 all the same), short lists of names inline."""


def _repr_float(dumper: yaml.SafeDumper, value: float) -> yaml.Node:
    if value.is_integer() and abs(value) < 1e15:
        return dumper.represent_int(int(value))
    return dumper.represent_float(value)


def _repr_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flat = all(isinstance(v, str | int | float) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat or None)


_Dumper.add_representer(float, _repr_float)
_Dumper.add_representer(list, _repr_list)


def dump_config(cfg: ControlConfig) -> str:
    """YAML that :func:`parse_config` reads back into an equal config."""
    return yaml.dump(
        config_to_data(cfg),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _provider_data(x: Provider) -> dict[str, Any]:
    d: dict[str, Any] = {"name": x.name, "kind": x.kind.value}
    if x.base_url is not None:
        d["base_url"] = x.base_url
    d["api_key"] = x.api_key
    if x.admin_key is not None:
        d["admin_key"] = x.admin_key
    if x.rate_limits is not None:
        d["rate_limits"] = {k: v for k, v in _fields(x.rate_limits).items() if v is not None}
    return d


def _target_data(x: Target) -> dict[str, Any]:
    d: dict[str, Any] = {"name": x.name, "provider": x.provider, "model": x.model}
    if x.price is not None:
        d["price"] = {k: v for k, v in _fields(x.price).items() if v is not None}
    return d


def _route_data(x: Route) -> dict[str, Any]:
    d: dict[str, Any] = {"name": x.name}
    for key in _ROUTE_SECONDS:
        d[key] = getattr(x, key)
    if x.attempt_timeout_s is not None:
        d["attempt_timeout_s"] = x.attempt_timeout_s
    d["retry"] = _fields(x.retry)
    if x.cache != CacheSettings():
        d["cache"] = {"exact_ttl_s": x.cache.exact_ttl_s}
        if x.cache.allow_nonzero_temperature:
            d["cache"]["allow_nonzero_temperature"] = True
    if x.max_output_tokens is not None:
        d["max_output_tokens"] = x.max_output_tokens
    d["on_all_open"] = x.on_all_open.value
    d["store_text"] = x.store_text
    if x.latency_aware:
        d["latency_aware"] = True
    if x.fallback_response is not None:
        d["fallback_response"] = x.fallback_response
    d["rules"] = [_rule_data(r) for r in x.rules]
    return d


def _rule_data(r: Rule) -> dict[str, Any]:
    d: dict[str, Any] = {}
    w = r.when
    if not w.unconditional:
        when: dict[str, Any] = {k: (v if isinstance(v, str) else list(v)) for k, v in w.tags.items()}
        if w.input_tokens_over is not None:
            when["input_tokens_over"] = w.input_tokens_over
        if w.input_tokens_under is not None:
            when["input_tokens_under"] = w.input_tokens_under
        if w.hours is not None:
            when["hours"] = {"from": w.hours.start, "to": w.hours.end, "tz": w.hours.tz}
        d["when"] = when
    chain: list[Any] = []
    for step in r.chain:
        if isinstance(step, Split):
            s: dict[str, Any] = {"split": dict(step.weights)}
            if step.sticky is not None:
                s["sticky"] = step.sticky
            chain.append(s)
        else:
            chain.append(step)
    d["chain"] = chain
    return d


def _budget_data(x: Budget) -> dict[str, Any]:
    d: dict[str, Any] = {"name": x.name, "scope": dict(x.scope), "period": x.period, "timezone": x.timezone}
    if x.limit_usd is not None:
        d["limit_usd"] = x.limit_usd
    if x.limit_tokens is not None:
        d["limit_tokens"] = x.limit_tokens
    d["warn_at"] = list(x.warn_at)
    d["action"] = x.action.value
    if x.downgrade_to:
        d["downgrade_to"] = list(x.downgrade_to)
    return d
