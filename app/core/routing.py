"""Routing: which targets a request goes to, in which order, and why (semantics.md 6).

A :class:`Route` holds ordered :class:`Rule` s; the first whose conditions all
match gives the chain ``[primary, fallback1, ...]``.  A chain step is a target
name or a weighted :class:`Split` (a canary), sticky on a request attribute
when a key is given: the same user always lands on the same side, and moving
weights from 90/10 to 80/20 moves only the users in between.

:func:`select_chain` answers with the resolved chain and plain-words reasons;
:func:`dry_run` is the same answer without touching the caller's random source.
:func:`validate_route` finds what would make a route misbehave before it is
saved: unknown targets, weights not adding to 100, rules that can never match,
timeouts that contradict each other.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.core.retry import RetryPolicy

TagValue = str | tuple[str, ...]
"""A tag condition: one value, or any of several."""

# Request attributes that conditions and sticky keys may name besides free-form tags.
CONTEXT_FIELDS = ("route", "feature", "user", "provider", "model")


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What routing and budgets know about a request before any call is made."""

    route: str | None = None
    feature: str | None = None
    user: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    input_tokens: int | None = None
    provider: str | None = None  # the target about to be called, for budgets scoped to it
    model: str | None = None
    ts: float | None = None  # epoch seconds; None means now

    def tag(self, key: str) -> str | None:
        """A named attribute (``feature``, ``user``, ...) or, failing that, a free-form tag."""
        if key in CONTEXT_FIELDS:
            value: str | None = getattr(self, key)
            if value is not None:
                return value
        return self.tags.get(key)


@dataclass(frozen=True, slots=True)
class HoursWindow:
    """Local hours ``[start, end)`` in a time zone; ``start > end`` wraps midnight (22 -> 6)."""

    start: int
    end: int
    tz: str = "UTC"

    def contains(self, ts: float) -> bool:
        local = datetime.fromtimestamp(ts, ZoneInfo(self.tz))
        hour = local.hour + local.minute / 60 + local.second / 3600
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end

    def describe(self) -> str:
        return f"{self.start:02d}:00-{self.end:02d}:00 {self.tz}"


@dataclass(frozen=True, slots=True)
class Conditions:
    """All must hold for a rule to match; no conditions at all is a catch-all."""

    tags: Mapping[str, TagValue] = field(default_factory=dict)
    input_tokens_over: int | None = None  # matches when input tokens > this
    input_tokens_under: int | None = None  # matches when input tokens < this
    hours: HoursWindow | None = None

    @property
    def unconditional(self) -> bool:
        return (
            not self.tags
            and self.input_tokens_over is None
            and self.input_tokens_under is None
            and self.hours is None
        )

    def check(self, ctx: RequestContext, now: float) -> tuple[bool, list[str]]:
        """``(matched, reasons)``: when it fails, the reasons name the conditions that failed."""
        held: list[str] = []
        failed: list[str] = []
        for key, want in self.tags.items():
            got = ctx.tag(key)
            allowed = _values(want)
            shown = " or ".join(allowed)
            if got is None:
                failed.append(f"{key} not given (needs {shown})")
            elif got in allowed:
                held.append(f"{key} = {got}")
            else:
                failed.append(f"{key} is {got}, not {shown}")
        tokens = ctx.input_tokens
        for bound, over in ((self.input_tokens_over, True), (self.input_tokens_under, False)):
            if bound is None:
                continue
            word = "over" if over else "under"
            if tokens is None:
                failed.append(f"input tokens unknown (needs {word} {bound})")
            elif (tokens > bound) if over else (tokens < bound):
                held.append(f"input tokens {tokens} {word} {bound}")
            else:
                failed.append(f"input tokens {tokens} not {word} {bound}")
        if self.hours is not None:
            local = datetime.fromtimestamp(now, ZoneInfo(self.hours.tz)).strftime("%H:%M")
            if self.hours.contains(now):
                held.append(f"time {local} within {self.hours.describe()}")
            else:
                failed.append(f"time {local} outside {self.hours.describe()}")
        return (not failed, failed if failed else held)


@dataclass(frozen=True, slots=True)
class Split:
    """One chain step that resolves to one of several targets by weight (percent, adding to 100)."""

    weights: Mapping[str, int]
    sticky: str | None = None  # a request attribute or tag: same value -> same target

    def describe(self) -> str:
        return " / ".join(f"{t} {w}" for t, w in self.weights.items())


Step = str | Split


@dataclass(frozen=True, slots=True)
class Rule:
    chain: tuple[Step, ...]
    when: Conditions = field(default_factory=Conditions)


class OnAllOpen(StrEnum):
    FAIL_FAST = "fail_fast"
    TRY_ANYWAY = "try_anyway"


@dataclass(frozen=True, slots=True)
class CacheSettings:
    exact_ttl_s: float | None = None  # None: exact cache off
    allow_nonzero_temperature: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    rules: tuple[Rule, ...] = ()
    deadline_s: float = 30.0
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 10.0
    attempt_timeout_s: float | None = None  # None: deadline / 2
    idle_timeout_s: float = 15.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    cache: CacheSettings = field(default_factory=CacheSettings)
    max_output_tokens: int | None = None
    on_all_open: OnAllOpen = OnAllOpen.FAIL_FAST
    store_text: bool = False  # may the request's input/output text be kept in events
    latency_aware: bool = False  # splits prefer the healthy target with the lower recent p95
    fallback_response: str | None = None  # answered when every target failed

    @property
    def effective_attempt_timeout_s(self) -> float:
        return self.attempt_timeout_s if self.attempt_timeout_s is not None else self.deadline_s / 2


@dataclass(frozen=True, slots=True)
class Decision:
    """The resolved chain (targets in order, no repeats), the rule that gave it, and why."""

    chain: list[str]
    rule_index: int | None  # 0-based; None when no rule matched
    explanation: list[str]

    @property
    def matched(self) -> bool:
        return self.rule_index is not None


LatencyLookup = Callable[[str], float | None]
HealthLookup = Callable[[str], bool]


def select_chain(
    route: Route,
    ctx: RequestContext,
    *,
    rng: random.Random | None = None,
    now: float | None = None,
    p95_s: LatencyLookup | None = None,
    healthy: HealthLookup | None = None,
) -> Decision:
    """Pick the chain for a request: first matching rule, splits resolved to one target each.

    ``p95_s`` and ``healthy`` feed the latency-aware option (``route.latency_aware``): a split
    without a sticky key then draws two candidates by weight and takes the healthy one with
    the lower recent p95 (power of two choices).
    """
    rng = rng if rng is not None else _rng
    ts = now if now is not None else (ctx.ts if ctx.ts is not None else time.time())
    lines: list[str] = []
    for i, rule in enumerate(route.rules):
        ok, reasons = rule.when.check(ctx, ts)
        if not ok:
            lines.append(f"rule {i + 1} skipped: {'; '.join(reasons)}")
            continue
        head = f"rule {i + 1} matched: {'; '.join(reasons) if reasons else 'no conditions (catch-all)'}"
        chain: list[str] = []
        notes: list[str] = []
        for step in rule.chain:
            if isinstance(step, Split):
                target, note = _resolve_split(
                    step, ctx, rng, latency_aware=route.latency_aware, p95_s=p95_s, healthy=healthy
                )
                notes.append(note)
            else:
                target = step
            if target not in chain:
                chain.append(target)
        lines.append("; ".join([head, *notes]))
        lines.append(f"chain: {' -> '.join(chain)}")
        return Decision(chain, i, lines)
    lines.append("no rule matched: the request has no target")
    return Decision([], None, lines)


def dry_run(
    route: Route,
    ctx: RequestContext,
    *,
    now: float | None = None,
    p95_s: LatencyLookup | None = None,
    healthy: HealthLookup | None = None,
) -> Decision:
    """Where would this request go, and why?  Same as :func:`select_chain`, with a private
    random source seeded from the request, so asking twice gives the same answer."""
    seed = f"{route.name}|{sorted(ctx.tags.items())}|{ctx.feature}|{ctx.user}|{ctx.input_tokens}"
    return select_chain(
        route,
        ctx,
        rng=random.Random(seed),
        now=now,
        p95_s=p95_s,
        healthy=healthy,
    )


def sticky_point(split: Split, value: str) -> float:
    """Where a sticky value falls in [0, 100): stable across processes, releases and weight changes."""
    key = f"{','.join(sorted(split.weights))}|{value}".encode("utf-8", "surrogatepass")
    n = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return (n % 1_000_000) / 10_000


def _pick(weights: Mapping[str, int], point: float) -> str:
    """The target whose cumulative weight band holds ``point`` (scaled to the total weight)."""
    total = sum(w for w in weights.values() if w > 0)
    items = [(t, w) for t, w in weights.items() if w > 0]
    if not items:
        return next(iter(weights))
    x = point / 100 * total
    acc = 0.0
    for t, w in items:
        acc += w
        if x < acc:
            return t
    return items[-1][0]


def _resolve_split(
    split: Split,
    ctx: RequestContext,
    rng: random.Random,
    *,
    latency_aware: bool,
    p95_s: LatencyLookup | None,
    healthy: HealthLookup | None,
) -> tuple[str, str]:
    desc = f"split {split.describe()}"
    if split.sticky is not None:
        value = ctx.tag(split.sticky)
        if value is not None:
            target = _pick(split.weights, sticky_point(split, value))
            return target, f"{desc} sticky on {split.sticky} {value} -> {target}"
        desc += f", no {split.sticky} given so"
    first = _pick(split.weights, rng.random() * 100)
    if latency_aware and (p95_s is not None or healthy is not None):
        second = first
        for _ in range(4):  # a distinct second candidate, unless one target has all the weight
            second = _pick(split.weights, rng.random() * 100)
            if second != first:
                break
        chosen, why = _two_choices(first, second, p95_s, healthy)
        return chosen, f"{desc} latency-aware between {first} and {second}: {why} -> {chosen}"
    return first, f"{desc} random pick by weight -> {first}"


def _two_choices(
    a: str, b: str, p95_s: LatencyLookup | None, healthy: HealthLookup | None
) -> tuple[str, str]:
    if a == b:
        return a, "only one candidate"
    if healthy is not None:
        ha, hb = healthy(a), healthy(b)
        if ha != hb:
            return (a, f"{b} is unhealthy") if ha else (b, f"{a} is unhealthy")
    la = p95_s(a) if p95_s is not None else None
    lb = p95_s(b) if p95_s is not None else None
    if la is None or lb is None:
        return a, "no recent p95 for both"
    if lb < la:
        return b, f"p95 {lb * 1000:.0f} ms < {la * 1000:.0f} ms"
    return a, f"p95 {la * 1000:.0f} ms <= {lb * 1000:.0f} ms"


_rng = random.Random()


# -- validation ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a route.  ``path`` locates it (``("rules", 1, "chain", 0)``)."""

    path: tuple[str | int, ...]
    message: str
    severity: str = "error"  # "error" refuses the route; "warning" is shown but allowed

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.path)
        return f"{where}: {self.message}" if where else self.message


def validate_route(route: Route, known_targets: Collection[str] | None = None) -> list[Problem]:
    """Every problem with a route, errors and warnings, in the order they appear."""
    out: list[Problem] = []

    def err(path: tuple[str | int, ...], msg: str) -> None:
        out.append(Problem(path, msg))

    def warn(path: tuple[str | int, ...], msg: str) -> None:
        out.append(Problem(path, msg, "warning"))

    if not route.name.strip():
        err(("name",), "a route needs a name")
    for name in ("deadline_s", "connect_timeout_s", "first_token_timeout_s", "idle_timeout_s"):
        if not getattr(route, name) > 0:
            err((name,), f"{name} must be more than 0 seconds")
    if route.attempt_timeout_s is not None:
        if not route.attempt_timeout_s > 0:
            err(("attempt_timeout_s",), "attempt_timeout_s must be more than 0 seconds")
        elif route.attempt_timeout_s > route.deadline_s:
            err(
                ("attempt_timeout_s",),
                f"attempt_timeout_s {route.attempt_timeout_s:g} s is longer than the deadline "
                f"({route.deadline_s:g} s): "
                "an attempt can never use it",
            )
    if route.deadline_s > 0:
        for name in ("connect_timeout_s", "first_token_timeout_s", "idle_timeout_s"):
            value = getattr(route, name)
            if value > route.deadline_s:
                warn(
                    (name,),
                    f"{name} {value:g} s is longer than the deadline ({route.deadline_s:g} s): it never fires",
                )
    for fld, msg in route.retry.problems():
        err(("retry", fld), f"retry {fld} {msg}")
    if route.cache.exact_ttl_s is not None and not route.cache.exact_ttl_s > 0:
        err(
            ("cache", "exact_ttl_s"),
            "cache exact_ttl_s must be more than 0 seconds (leave it out for no cache)",
        )
    if route.max_output_tokens is not None and route.max_output_tokens < 1:
        err(("max_output_tokens",), "max_output_tokens must be at least 1")
    if not route.rules:
        err(("rules",), "a route needs at least one rule")
    for i, rule in enumerate(route.rules):
        _validate_rule(i, rule, known_targets, err)
        for j in range(i):
            earlier = route.rules[j]
            if _implies(rule.when, earlier.when):
                why = (
                    f"rule {j + 1} above it has no conditions and takes every request"
                    if earlier.when.unconditional
                    else f"rule {j + 1} above it matches every request this one would"
                )
                err(("rules", i), f"rule {i + 1} can never match: {why}")
                break
    if route.rules and not any(r.when.unconditional for r in route.rules):
        warn(("rules",), "no catch-all rule: a request that matches no rule has no target and fails")
    return out


def _validate_rule(
    i: int,
    rule: Rule,
    known: Collection[str] | None,
    err: Callable[[tuple[str | int, ...], str], None],
) -> None:
    when = rule.when
    base: tuple[str | int, ...] = ("rules", i)
    for key, want in when.tags.items():
        if not _values(want):
            err((*base, "when", key), f"rule {i + 1}: `{key}` needs at least one value")
    over, under = when.input_tokens_over, when.input_tokens_under
    for name, bound in (("input_tokens_over", over), ("input_tokens_under", under)):
        if bound is not None and bound < 0:
            err((*base, "when", name), f"rule {i + 1}: {name} must not be negative")
    if over is not None and under is not None and under - over <= 1:
        err(
            (*base, "when"),
            f"rule {i + 1} can never match: no token count is over {over} and under {under}",
        )
    if when.hours is not None:
        h = when.hours
        if not (0 <= h.start <= 23 and 0 <= h.end <= 24):
            err((*base, "when", "hours"), f"rule {i + 1}: hours run from 0 to 24")
        elif h.start == h.end:
            err(
                (*base, "when", "hours"),
                f"rule {i + 1}: hours from and to are both {h.start}: the window is empty",
            )
        try:
            ZoneInfo(h.tz)
        except (ZoneInfoNotFoundError, ValueError):
            err((*base, "when", "hours", "tz"), f"rule {i + 1}: unknown time zone `{h.tz}`")
    if not rule.chain:
        err((*base, "chain"), f"rule {i + 1}: the chain is empty: name at least one target")
    for k, step in enumerate(rule.chain):
        path = (*base, "chain", k)
        if isinstance(step, Split):
            if not step.weights:
                err(path, f"rule {i + 1}: a split needs at least one target")
                continue
            for target, w in step.weights.items():
                if known is not None and target not in known:
                    err((*path, "split", target), f"rule {i + 1}: unknown target `{target}`")
                if w < 0:
                    err(
                        (*path, "split", target),
                        f"rule {i + 1}: the weight of `{target}` must not be negative",
                    )
            total = sum(step.weights.values())
            if total != 100:
                err((*path, "split"), f"rule {i + 1}: split weights add up to {total}, not 100")
        elif known is not None and step not in known:
            err(path, f"rule {i + 1}: unknown target `{step}`")


def _implies(later: Conditions, earlier: Conditions) -> bool:
    """True when every request that matches ``later`` also matches ``earlier``."""
    for key, want in earlier.tags.items():
        if key not in later.tags or not set(_values(later.tags[key])) <= set(_values(want)):
            return False
    if earlier.input_tokens_over is not None and (
        later.input_tokens_over is None or later.input_tokens_over < earlier.input_tokens_over
    ):
        return False
    if earlier.input_tokens_under is not None and (
        later.input_tokens_under is None or later.input_tokens_under > earlier.input_tokens_under
    ):
        return False
    return earlier.hours is None or earlier.hours == later.hours


def _values(v: TagValue) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def route_targets(route: Route) -> set[str]:
    """Every target a route may call."""
    out: set[str] = set()
    for rule in route.rules:
        for step in rule.chain:
            out.update(step.weights if isinstance(step, Split) else (step,))
    return out
