"""Scenarios: the weather the simulator serves — latency, faults, limits, outages and answers.

A scenario is a YAML mapping (files under ``resources/scenarios``, loaded with
``importlib.resources``) or the same mapping given in code.  Every key is
optional except ``name``::

    name: degraded
    description: Slow and error-prone.
    defaults:                  # every model starts from these
      ttft: {median: 0.8, p95: 4.0}        # seconds to first token, lognormal
      tokens_per_s: {median: 40, p95: 70}  # generation speed, lognormal; 0 = no pacing
      faults: {rate_limit: 0.05, server_error: 0.02}   # probability per request
      limits: {rpm: 500, tpm: 200000}      # token buckets; omitted = unlimited
    models:                    # per model, on top of the defaults
      gpt-4o-mini: {provider: openai, ttft: {median: 0.3, p95: 0.9}}
      claude-sonnet-4-5: {provider: anthropic, faults: {overloaded: 0.05}}
    outages:                   # windows in seconds since the scenario was activated
      - {provider: openai, model: "gpt-4o*", start: 30, end: 90, fault: unavailable, rate: 1.0}
    sequence: [rate_limit, ok] # faults forced on the first requests after activation
    fault_options: {retry_after: 1.0, hang_seconds: 120, cut_after_chunks: [2, 8]}
    answers:
      default_tokens: {median: 60, p95: 180}
      rules:                   # first match wins; `match` is a regex over the prompt text
        - {match: "capital of France", answer: "The capital of France is Paris."}
        - {match: "sentiment of: (?P<text>.+)", json: {label: positive, text: "{text}"}}
        - {match: "(?i)ignore previous instructions", refusal: "I can't help with that."}
        - {match: "ECHO", echo: true}
        - {match: "weather in (?P<city>\\w+)", tool_call: {name: get_weather, arguments: {city: "{city}"}}}
    unknown_models: accept     # or reject (404 model_not_found)

A distribution is a number (constant), ``{median, p95}`` or ``{mu, sigma}``
(lognormal parameters of the natural log).  A model name matches a ``models``
key exactly or by the longest prefix (``gpt-4o-mini-2024-07-18`` uses
``gpt-4o-mini``); any other model uses ``defaults``.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from app.core.pricing import PriceOverride

#: Fault names, in the order a random draw walks them.
FAULTS: tuple[str, ...] = (
    "rate_limit",  # 429 with retry-after and rate-limit headers
    "quota_exceeded",  # OpenAI 429 insufficient_quota (not retryable); Anthropic 400 credit balance
    "server_error",  # 500
    "unavailable",  # 503
    "overloaded",  # Anthropic 529 overloaded_error; OpenAI 503
    "hang",  # no answer until the client gives up (bounded by hang_seconds), then the connection drops
    "stream_cut",  # streams only: the connection closes after a few chunks
    "stream_error",  # streams only: an error event after a few chunks
    "malformed_json",  # 200 whose JSON body (or one stream chunk) is cut short
    "wrong_content_type",  # 200 text/html
)
STREAM_ONLY_FAULTS = frozenset({"stream_cut", "stream_error"})
PROVIDERS = ("openai", "anthropic")
_Z95 = 1.6448536269514722  # the 95th percentile of the standard normal


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message says which key is wrong and why."""


@dataclass(frozen=True, slots=True)
class Dist:
    """A lognormal distribution (or a constant when ``sigma`` is 0)."""

    mu: float = 0.0
    sigma: float = 0.0
    constant: float | None = None

    def sample(self, rng: random.Random) -> float:
        if self.constant is not None:
            return self.constant
        return rng.lognormvariate(self.mu, self.sigma) if self.sigma > 0 else math.exp(self.mu)

    @property
    def median(self) -> float:
        return self.constant if self.constant is not None else math.exp(self.mu)

    def describe(self) -> dict[str, float]:
        if self.constant is not None:
            return {"constant": self.constant}
        return {"median": round(self.median, 6), "p95": round(math.exp(self.mu + _Z95 * self.sigma), 6)}


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    """How one model behaves in a scenario."""

    name: str
    provider: str | None = None
    ttft: Dist = Dist(constant=0.0)
    tokens_per_s: Dist = Dist(constant=0.0)
    faults: Mapping[str, float] = field(default_factory=dict)
    limits: Limits = Limits()
    price: PriceOverride | None = None
    dimensions: int | None = None  # embedding models


@dataclass(frozen=True, slots=True)
class Outage:
    provider: str | None
    model: str | None  # a glob
    start: float | None  # seconds since activation; None = from the start
    end: float | None  # None = never ends
    fault: str
    rate: float

    def applies(self, provider: str, model: str, elapsed: float) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        if self.model is not None and not fnmatch.fnmatchcase(model, self.model):
            return False
        if self.start is not None and elapsed < self.start:
            return False
        return not (self.end is not None and elapsed >= self.end)


@dataclass(frozen=True, slots=True)
class FaultOptions:
    retry_after: float = 1.0  # seconds announced on injected 429/503/529
    hang_seconds: float = 120.0
    cut_after_chunks: tuple[int, int] = (2, 8)


@dataclass(frozen=True, slots=True)
class AnswerRule:
    pattern: re.Pattern[str]
    kind: str  # answer | json | echo | refusal | tool_call
    value: Any
    model: str | None = None  # a glob

    def matches(self, text: str, model: str) -> re.Match[str] | None:
        if self.model is not None and not fnmatch.fnmatchcase(model, self.model):
            return None
        return self.pattern.search(text)


@dataclass(frozen=True, slots=True)
class Answers:
    default_tokens: Dist = Dist(constant=24.0)
    rules: tuple[AnswerRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str = ""
    defaults: Profile = Profile(name="*")
    models: Mapping[str, Profile] = field(default_factory=dict)
    outages: tuple[Outage, ...] = ()
    sequence: tuple[str | None, ...] = ()
    fault_options: FaultOptions = FaultOptions()
    answers: Answers = Answers()
    unknown_models: str = "accept"
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def profile(self, model: str) -> Profile:
        """The profile for ``model``: exact key, else the longest matching prefix, else the defaults."""
        found = self.models.get(model)
        if found is not None:
            return found
        best = ""
        for key in self.models:
            if model.startswith(key) and len(key) > len(best):
                best = key
        if best:
            return self.models[best]
        return replace(self.defaults, name=model)

    def knows(self, model: str) -> bool:
        return model in self.models or any(model.startswith(key) for key in self.models)

    def listed_models(self, provider: str) -> list[str]:
        return [name for name, p in self.models.items() if p.provider in (provider, None)]


# --- loading -------------------------------------------------------------------------------------------


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped under ``resources/scenarios``."""
    folder = importlib.resources.files("resources.scenarios")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(spec: str | Path | Mapping[str, Any] | Scenario) -> Scenario:
    """A scenario from a shipped name (``"degraded"``), a YAML file path, or a mapping."""
    if isinstance(spec, Scenario):
        return spec
    if isinstance(spec, Mapping):
        return parse_scenario(spec)
    text, where = _read_scenario_text(spec)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{where}: a scenario must be a mapping, got {type(data).__name__}")
    return parse_scenario(data, where=where)


def _read_scenario_text(spec: str | Path) -> tuple[str, str]:
    path = Path(spec)
    if isinstance(spec, Path) or path.suffix in (".yaml", ".yml") or "/" in str(spec) or "\\" in str(spec):
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario file {path}: {exc.strerror or exc}") from exc
    name = str(spec)
    resource = importlib.resources.files("resources.scenarios") / f"{name}.yaml"
    if not resource.is_file():
        raise ScenarioError(f"no scenario named {name!r}; shipped scenarios: {', '.join(list_scenarios())}")
    return resource.read_text(encoding="utf-8"), f"scenario {name!r}"


_TOP_KEYS = {
    "name",
    "description",
    "defaults",
    "models",
    "outages",
    "sequence",
    "fault_options",
    "answers",
    "unknown_models",
}
_PROFILE_KEYS = {"provider", "ttft", "tokens_per_s", "faults", "limits", "price", "dimensions"}


def parse_scenario(data: Mapping[str, Any], *, where: str = "scenario") -> Scenario:
    """Validate a scenario mapping; every error names the key at fault."""
    _check_keys(data, _TOP_KEYS, where)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{where}: 'name' is required and must be a non-empty string")
    where = f"scenario {name!r}" if where == "scenario" else where
    defaults_raw = _mapping(data.get("defaults", {}), f"{where}: defaults")
    defaults = _parse_profile("*", defaults_raw, None, f"{where}: defaults")
    models: dict[str, Profile] = {}
    for model, raw in _mapping(data.get("models", {}), f"{where}: models").items():
        models[str(model)] = _parse_profile(
            str(model), _mapping(raw or {}, f"{where}: models.{model}"), defaults, f"{where}: models.{model}"
        )
    outages = tuple(
        _parse_outage(raw, f"{where}: outages[{i}]")
        for i, raw in enumerate(_list(data.get("outages", []), where))
    )
    sequence: list[str | None] = []
    for i, item in enumerate(_list(data.get("sequence", []), f"{where}: sequence")):
        if item in (None, "ok", "none"):
            sequence.append(None)
        else:
            sequence.append(_fault_name(item, f"{where}: sequence[{i}]"))
    unknown = data.get("unknown_models", "accept")
    if unknown not in ("accept", "reject"):
        raise ScenarioError(f"{where}: unknown_models must be 'accept' or 'reject', got {unknown!r}")
    return Scenario(
        name=name,
        description=str(data.get("description", "")),
        defaults=defaults,
        models=models,
        outages=outages,
        sequence=tuple(sequence),
        fault_options=_parse_fault_options(data.get("fault_options", {}), f"{where}: fault_options"),
        answers=_parse_answers(data.get("answers", {}), f"{where}: answers"),
        unknown_models=unknown,
        source=dict(data),
    )


def _parse_profile(name: str, raw: Mapping[str, Any], base: Profile | None, where: str) -> Profile:
    _check_keys(raw, _PROFILE_KEYS, where)
    base = base or Profile(name="*")
    provider = raw.get("provider", base.provider if name != "*" else None)
    if provider is not None and provider not in PROVIDERS:
        raise ScenarioError(f"{where}.provider: must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    faults = dict(base.faults)
    for fault, rate in _mapping(raw.get("faults", {}), f"{where}.faults").items():
        faults[_fault_name(fault, f"{where}.faults")] = _probability(rate, f"{where}.faults.{fault}")
    if sum(faults.values()) > 1.0 + 1e-9:
        raise ScenarioError(f"{where}.faults: the rates add up to {sum(faults.values()):.3f}, more than 1")
    limits = base.limits
    if "limits" in raw:
        lim = _mapping(raw["limits"] or {}, f"{where}.limits")
        _check_keys(lim, {"rpm", "tpm"}, f"{where}.limits")
        limits = Limits(
            rpm=_positive_int(lim.get("rpm"), f"{where}.limits.rpm"),
            tpm=_positive_int(lim.get("tpm"), f"{where}.limits.tpm"),
        )
    price = base.price
    if "price" in raw:
        p = _mapping(raw["price"], f"{where}.price")
        _check_keys(
            p, {"input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok"}, where
        )
        try:
            price = PriceOverride(
                input_per_mtok=float(p["input_per_mtok"]),
                output_per_mtok=float(p["output_per_mtok"]),
                cache_read_per_mtok=_opt_float(p.get("cache_read_per_mtok")),
                cache_write_per_mtok=_opt_float(p.get("cache_write_per_mtok")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ScenarioError(
                f"{where}.price: needs numbers input_per_mtok and output_per_mtok ({exc})"
            ) from exc
    return Profile(
        name=name,
        provider=provider,
        ttft=_parse_dist(raw["ttft"], f"{where}.ttft") if "ttft" in raw else base.ttft,
        tokens_per_s=_parse_dist(raw["tokens_per_s"], f"{where}.tokens_per_s")
        if "tokens_per_s" in raw
        else base.tokens_per_s,
        faults=faults,
        limits=limits,
        price=price,
        dimensions=_positive_int(raw.get("dimensions"), f"{where}.dimensions") or base.dimensions,
    )


def _parse_dist(raw: Any, where: str) -> Dist:
    if raw is None:
        return Dist(constant=0.0)
    if isinstance(raw, bool):
        raise ScenarioError(f"{where}: expected a number or a mapping, got {raw!r}")
    if isinstance(raw, int | float):
        if raw < 0:
            raise ScenarioError(f"{where}: must not be negative, got {raw}")
        return Dist(constant=float(raw))
    m = _mapping(raw, where)
    if "median" in m:
        _check_keys(m, {"median", "p95"}, where)
        median, p95 = (
            _number(m["median"], f"{where}.median"),
            _number(m.get("p95", m["median"]), f"{where}.p95"),
        )
        if median <= 0 or p95 <= 0:
            raise ScenarioError(f"{where}: median and p95 must be positive (use a plain 0 for none)")
        return Dist(mu=math.log(median), sigma=abs(math.log(p95) - math.log(median)) / _Z95)
    if "mu" in m:
        _check_keys(m, {"mu", "sigma"}, where)
        sigma = _number(m.get("sigma", 0.0), f"{where}.sigma")
        if sigma < 0:
            raise ScenarioError(f"{where}.sigma: must not be negative")
        return Dist(mu=_number(m["mu"], f"{where}.mu"), sigma=sigma)
    raise ScenarioError(f"{where}: give a number, {{median, p95}} or {{mu, sigma}}")


def _parse_outage(raw: Any, where: str) -> Outage:
    m = _mapping(raw, where)
    _check_keys(m, {"provider", "model", "start", "end", "fault", "rate"}, where)
    provider = m.get("provider")
    if provider is not None and provider not in PROVIDERS:
        raise ScenarioError(f"{where}.provider: must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    start = None if m.get("start") is None else _number(m["start"], f"{where}.start")
    end = None if m.get("end") is None else _number(m["end"], f"{where}.end")
    if start is not None and end is not None and end <= start:
        raise ScenarioError(f"{where}: end ({end}) must be after start ({start})")
    return Outage(
        provider=provider,
        model=None if m.get("model") is None else str(m["model"]),
        start=start,
        end=end,
        fault=_fault_name(m.get("fault", "unavailable"), f"{where}.fault"),
        rate=_probability(m.get("rate", 1.0), f"{where}.rate"),
    )


def _parse_fault_options(raw: Any, where: str) -> FaultOptions:
    m = _mapping(raw or {}, where)
    _check_keys(m, {"retry_after", "hang_seconds", "cut_after_chunks"}, where)
    base = FaultOptions()
    cut = m.get("cut_after_chunks", list(base.cut_after_chunks))
    if isinstance(cut, int) and not isinstance(cut, bool):
        cut = [cut, cut]
    if not (isinstance(cut, list) and len(cut) == 2 and all(isinstance(c, int) and c >= 0 for c in cut)):
        raise ScenarioError(f"{where}.cut_after_chunks: give [min, max] chunk counts, got {cut!r}")
    retry_after = _number(m.get("retry_after", base.retry_after), f"{where}.retry_after")
    hang = _number(m.get("hang_seconds", base.hang_seconds), f"{where}.hang_seconds")
    if retry_after < 0 or not 0 <= hang <= 600:
        raise ScenarioError(f"{where}: retry_after must be >= 0 and hang_seconds within 0..600")
    return FaultOptions(retry_after=retry_after, hang_seconds=hang, cut_after_chunks=(min(cut), max(cut)))


_RULE_KINDS = ("answer", "json", "echo", "refusal", "tool_call")


def _parse_answers(raw: Any, where: str) -> Answers:
    m = _mapping(raw or {}, where)
    _check_keys(m, {"default_tokens", "rules"}, where)
    rules: list[AnswerRule] = []
    for i, item in enumerate(_list(m.get("rules", []), f"{where}.rules")):
        rw = f"{where}.rules[{i}]"
        r = _mapping(item, rw)
        _check_keys(r, {"match", "model", *_RULE_KINDS}, rw)
        kinds = [k for k in _RULE_KINDS if k in r]
        if len(kinds) != 1:
            raise ScenarioError(f"{rw}: give exactly one of {', '.join(_RULE_KINDS)}")
        try:
            pattern = re.compile(str(r.get("match", "")))
        except re.error as exc:
            raise ScenarioError(f"{rw}.match: not a valid regular expression: {exc}") from exc
        kind = kinds[0]
        value = r[kind]
        if kind == "tool_call":
            tc = _mapping(value, f"{rw}.tool_call")
            if not isinstance(tc.get("name"), str):
                raise ScenarioError(f"{rw}.tool_call: needs a 'name'")
        elif kind in ("answer", "refusal") and not isinstance(value, str):
            raise ScenarioError(f"{rw}.{kind}: must be a string")
        rules.append(AnswerRule(pattern, kind, value, None if r.get("model") is None else str(r["model"])))
    default = Answers().default_tokens
    if "default_tokens" in m:
        default = _parse_dist(m["default_tokens"], f"{where}.default_tokens")
    return Answers(default_tokens=default, rules=tuple(rules))


# --- small validators -------------------------------------------------------------------------------


def _check_keys(m: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in m if k not in allowed)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


def _list(raw: Any, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list, got {type(raw).__name__}")
    return raw


def _fault_name(raw: Any, where: str) -> str:
    if raw not in FAULTS:
        raise ScenarioError(f"{where}: unknown fault {raw!r}; known: {', '.join(FAULTS)}")
    return str(raw)


def _number(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ScenarioError(f"{where}: expected a number, got {raw!r}")
    return float(raw)


def _opt_float(raw: Any) -> float | None:
    return None if raw is None else float(raw)


def _probability(raw: Any, where: str) -> float:
    value = _number(raw, where)
    if not 0.0 <= value <= 1.0:
        raise ScenarioError(f"{where}: a probability must be within 0..1, got {value}")
    return value


def _positive_int(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise ScenarioError(f"{where}: expected a positive integer, got {raw!r}")
    return raw
