"""What the budgets editor reads and writes, without Qt: budgets as store rows and as
:class:`~app.core.budget.Budget` objects, the text forms of the editor's fields, and each
budget's standing (spend so far from the store's events, the projection at the current burn
rate, the warning levels already fired this period).

Blocking functions: the page calls them through its runner.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from app.core.budget import (
    Budget,
    BudgetAction,
    BudgetOutlook,
    Spend,
    alert_period_start,
    budget_outlook,
    spend_message,
    use_ratio,
)
from app.core.config import ControlConfig
from app.gateway.spend import spend_in_store
from app.gateway.state import config_to_rows
from storage.engine import transaction
from storage.queries import control as q

Bind = Engine | Connection

PERIODS = ("day", "week", "month", "rolling_1h", "rolling_6h", "rolling_24h", "rolling_7d")
TIMEZONES = (
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
)
ACTIONS: tuple[tuple[str, str], ...] = (
    ("alert_only", "Alert only"),
    ("block", "Block (budget_blocked)"),
    ("downgrade", "Downgrade to a cheaper chain"),
)


def budget_to_row(budget: Budget) -> dict[str, Any]:
    """The store row for a budget (exactly what ``config apply`` would write for it)."""
    return config_to_rows(ControlConfig(budgets=(budget,)))["budget"][0]


def budget_from_row(row: Mapping[str, Any]) -> Budget:
    """The :class:`Budget` a store row holds (``ValueError`` for an action the code does not know)."""
    return Budget(
        name=str(row["name"]),
        scope={str(k): str(v) for k, v in dict(row.get("scope") or {}).items()},
        period=str(row.get("period") or "day"),
        timezone=str(row.get("timezone") or "UTC"),
        limit_usd=float(row["limit_usd"]) if row.get("limit_usd") is not None else None,
        limit_tokens=int(row["limit_tokens"]) if row.get("limit_tokens") is not None else None,
        warn_at=tuple(float(x) for x in (row.get("warn_at") if row.get("warn_at") is not None else ())),
        action=BudgetAction(row.get("action") or "alert_only"),
        downgrade_to=tuple(str(x) for x in (row.get("downgrade_to") or ())),
    )


# --- the editor's text fields -----------------------------------------------------------

_SCOPE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*=\s*(.*?)\s*$")


def parse_scope(text: str) -> dict[str, str]:
    """``feature=search, team=ml`` -> a scope; empty means all traffic."""
    out: dict[str, str] = {}
    for part in (p for p in text.split(",") if p.strip()):
        m = _SCOPE.match(part)
        if m is None:
            raise ValueError(f"`{part.strip()}` is not key=value (e.g. feature=search); empty is all traffic")
        if not m.group(2):
            raise ValueError(f"scope `{m.group(1)}` needs a value")
        if m.group(1) in out:
            raise ValueError(f"scope `{m.group(1)}` is given twice")
        out[m.group(1)] = m.group(2)
    return out


def format_scope(scope: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in scope.items())


def parse_levels(text: str) -> tuple[float, ...]:
    """``50, 80, 95`` (percent; a trailing % is fine) -> ``(0.5, 0.8, 0.95)``."""
    out: list[float] = []
    for part in (p.strip().rstrip("%").strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        try:
            pct = float(part)
        except ValueError:
            raise ValueError(f"`{part}` is not a percentage (write e.g. 50, 80, 95)") from None
        if not 0 < pct < 100:
            raise ValueError(f"a warning level is between 0 and 100%, not {part}%")
        out.append(round(pct / 100, 6))
    if len(set(out)) != len(out):
        raise ValueError("a warning level is listed twice")
    return tuple(sorted(out))


def format_levels(levels: tuple[float, ...]) -> str:
    return ", ".join(f"{lv * 100:g}" for lv in levels)


def parse_chain(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


# --- standing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetStandingView:
    """One budget now: what it spent this period, where it is heading, which levels fired."""

    budget: Budget
    spend: Spend
    ratio: float
    outlook: BudgetOutlook
    fired: tuple[float, ...]
    message: str
    now: float


@dataclass(frozen=True, slots=True)
class BudgetRecord:
    name: str
    revision: int | None
    budget: Budget | None
    standing: BudgetStandingView | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class BudgetsSnapshot:
    budgets: list[BudgetRecord]
    targets: list[str]
    routes: list[str]
    providers: list[str]
    version: int
    read_only: bool = False
    note: str = ""


def standing(bind: Bind, budget: Budget, now: float) -> BudgetStandingView:
    """Spend so far this period from the store's events, the outlook, and the levels fired."""
    outlook = budget_outlook(budget, Spend(), now)
    end = outlook.period_end if outlook.period_end > now else now + 1.0
    spend = spend_in_store(bind, budget, outlook.period_start, end)
    outlook = budget_outlook(budget, spend, now)
    fired = tuple(q.list_budget_warnings(bind, budget.name, alert_period_start(budget, now)))
    return BudgetStandingView(
        budget, spend, use_ratio(budget, spend), outlook, fired, spend_message(budget, spend), now
    )


def load_budgets(
    bind: Bind, gateway_config: ControlConfig | None = None, *, now: float | None = None
) -> BudgetsSnapshot:
    """Every budget in the store with its standing, and the names a scope or chain may use.

    When the store holds no budgets but the in-process gateway runs on a config file of its own
    (the demo), its budgets are shown read-only, with their standing from the store's events.
    """
    ts = time.time() if now is None else now
    with transaction(bind) as conn:
        rows = q.list_objects(conn, "budget")
        targets = [t["name"] for t in q.list_objects(conn, "target")]
        routes = [r["name"] for r in q.list_objects(conn, "route")]
        providers = [p["name"] for p in q.list_objects(conn, "provider")]
        version = q.get_control_version(conn)
        read_only = False
        note = ""
        if not rows and gateway_config is not None and gateway_config.budgets:
            rows = [budget_to_row(b) for b in gateway_config.budgets]
            targets = [t.name for t in gateway_config.targets]
            routes = [r.name for r in gateway_config.routes]
            providers = [p.name for p in gateway_config.providers]
            read_only = True
            note = (
                "These budgets come from the config the in-process gateway was started with (the demo's), "
                "not from the store: they are shown read-only, with their spend from the store's events. "
                "Apply a config file (controlroom config apply FILE) to edit budgets here."
            )
        records = []
        for row in rows:
            try:
                b = budget_from_row(row)
            except (ValueError, TypeError) as exc:
                records.append(BudgetRecord(row["name"], row.get("revision"), None, None, str(exc)))
                continue
            try:
                st = standing(conn, b, ts) if not b.problems() else None
            except ValueError:
                st = None
            records.append(BudgetRecord(b.name, None if read_only else row.get("revision"), b, st))
    return BudgetsSnapshot(records, targets, routes, providers, version, read_only, note)
