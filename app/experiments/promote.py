"""Promote a winning variant: make its prompt version active, or start it as a weighted canary.

- :func:`promote_prompt`: the variant's registry version becomes the prompt's
  active version (the gateway follows at its next control poll).  A variant
  written inline in the experiment file is first saved as a new version of a
  named prompt (created if needed), then activated.
- :func:`start_canary`: on a route, the baseline's target step becomes a
  weighted split between the baseline target and the variant's target
  (``{split: {old: 90, new: 10}}``), so a share of live traffic tries it first.

Both are audited control changes (the registry's and the route's own audit
rows, with the actor and the reason); the audit page can revert either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.experiments.spec import Experiment, Variant
from storage.queries import control
from storage.queries import prompts as registry

Bind = Any  # an Engine or a Connection, as storage.queries takes


class PromoteError(ValueError):
    """The promotion cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Promotion:
    kind: str  # prompt | canary
    summary: str  # one line for the status bar / CLI
    prompt: str | None = None
    version: int | None = None
    route: str | None = None


def promote_prompt(
    bind: Bind,
    exp: Experiment,
    variant: str,
    *,
    actor: str,
    reason: str,
    prompt_name: str | None = None,
    expected_revision: int | None = None,
) -> Promotion:
    """Make ``variant``'s prompt version the active one (saving an inline prompt as ``prompt_name`` first)."""
    if not reason.strip():
        raise PromoteError("a promotion needs a reason (it goes in the audit log)")
    v = _variant(exp, variant)
    p = v.prompt
    if p.registry_name is not None and p.registry_version is not None:
        name, version = p.registry_name, p.registry_version
    else:
        if not prompt_name:
            raise PromoteError(
                f"{variant} is an inline prompt: give a prompt name to save it in the registry as a new version"
            )
        if p.template is None:
            raise PromoteError(f"{variant} has no template to save")
        name = prompt_name
        if registry.get_prompt(bind, name) is None:
            registry.create_prompt(
                bind, name, description=f"from experiment {exp.name}", actor=actor, reason=reason
            )
        version = registry.add_version(
            bind,
            name,
            template=p.template,
            system=p.system,
            params={**exp.default_params, **p.params} or None,
            note=f"{exp.name}: variant {variant}",
            actor=actor,
        )
    current = registry.get_prompt(bind, name)
    if current is not None and current.active_version == version:
        raise PromoteError(f"{name}@{version} is already the active version")
    try:
        registry.set_active_version(
            bind, name, version, actor=actor, reason=reason, expected_revision=expected_revision
        )
    except (LookupError, control.StaleRevision) as exc:
        raise PromoteError(str(exc)) from exc
    return Promotion("prompt", f"{name}@{version} is now the active version of {name}", name, version)


def canary_rules(rules: list[Any], old: str, new: str, weight: int) -> tuple[list[Any], int]:
    """``rules`` with every chain step that is ``old`` (a plain step, or a split holding it) sending
    ``weight`` percent to ``new``; returns the new rules and how many steps changed."""
    changed = 0
    out: list[Any] = []
    for rule in rules:
        if not isinstance(rule, dict) or not isinstance(rule.get("chain"), list):
            out.append(rule)
            continue
        chain: list[Any] = []
        for step in rule["chain"]:
            if step == old:
                chain.append({"split": {old: 100 - weight, new: weight}})
                changed += 1
            elif isinstance(step, dict) and isinstance(step.get("split"), dict) and old in step["split"]:
                split = {k: int(w) for k, w in step["split"].items() if k != new}
                split[old] = split[old] - weight
                if split[old] < 0:
                    raise PromoteError(f"{old} has less than {weight}% in a split of this route")
                split[new] = weight
                chain.append({**step, "split": {k: w for k, w in split.items() if w > 0}})
                changed += 1
            else:
                chain.append(step)
        out.append({**rule, "chain": chain})
    return out, changed


def start_canary(
    bind: Bind,
    exp: Experiment,
    variant: str,
    route: str,
    *,
    weight: int,
    actor: str,
    reason: str,
) -> Promotion:
    """Send ``weight`` percent of ``route``'s traffic for the baseline's target to the variant's target."""
    if not reason.strip():
        raise PromoteError("a canary needs a reason (it goes in the audit log)")
    if not 1 <= weight <= 50:
        raise PromoteError("a canary takes 1 to 50 percent of the traffic")
    v, base = _variant(exp, variant), _variant(exp, exp.baseline)
    if v.target == base.target:
        raise PromoteError(
            f"{variant} runs on the same target as the baseline ({v.target}): a route canary splits "
            "targets, not prompts; promote the prompt version instead"
        )
    row = control.get_object(bind, "route", route)
    if row is None:
        raise PromoteError(f"there is no route {route!r}")
    rules, changed = canary_rules(list(row.get("rules") or []), base.target, v.target, weight)
    if not changed:
        raise PromoteError(f"route {route} never sends traffic to {base.target} (the baseline's target)")
    data = {k: row[k] for k in ("name", "settings", "on_all_open") if k in row} | {"rules": rules}
    try:
        control.save_object(
            bind, "route", data, expected_revision=row["revision"], actor=actor, reason=reason
        )
    except control.StaleRevision as exc:
        raise PromoteError(str(exc)) from exc
    return Promotion(
        "canary",
        f"route {route}: {weight}% of {base.target}'s traffic now goes to {v.target} ({changed} step(s))",
        route=route,
    )


def _variant(exp: Experiment, name: str) -> Variant:
    try:
        return exp.variant(name)
    except KeyError:
        raise PromoteError(
            f"{name} is not a variant of {exp.name} ({', '.join(x.name for x in exp.variants)})"
        ) from None
