"""The tests that reason about "today", "this week" and "this month" pass at any hour.

Two of them once assumed the last hour of seeded traffic lay inside today, and CI ran at 00:06 UTC.
Here those tests run again under libfaketime with the wall clock set a few minutes past midnight
UTC on a Monday that is also the first of a month (day, week and month all just began), and again
from 23:59:55, so that the day turns while they run (they take about 8 s).  The clock ticks on
from where it is set."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("time_of_day")]

ROOT = Path(__file__).resolve().parents[2]

# Every test that compares stored traffic with a calendar day or with "yesterday by now".  Named one
# by one: under faketime, tests that wait on the Qt-asyncio bridge can stall (its timed waits are
# not all clock-neutral there), and they reason about no day.
DAY_SENSITIVE = [
    "tests/ui/test_budgets_page.py::test_standing_spend_projection_and_fired_levels",
    "tests/ui/test_budgets_page.py::test_projection_words_for_a_calendar_day",
    "tests/ui/test_traffic.py::test_store_facts_spend_today_budgets_and_breakers",
    "tests/ui/test_traffic.py::test_today_runs_from_midnight_in_the_daily_budgets_time_zone",
    "tests/unit/test_core_budget.py",
    "tests/unit/test_core_budget_outlook.py",
    "tests/integration/test_gateway_engine.py::test_budget_spend_and_fired_levels_come_from_the_store",
    "tests/integration/test_gateway_engine.py::test_budget_warning_levels_fire_once_each_and_block_applies_at_100",
]


def _faketime() -> str:
    found = shutil.which("faketime")
    if found is None:
        reason = "libfaketime's `faketime` is not installed (apt-get install faketime; .ci/run does)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI must run the time-of-day tests: {reason}", pytrace=False)
        pytest.skip(reason)
    return found


def _first_monday_first_of_month(after: dt.date) -> dt.date:
    d = (after.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    while d.weekday() != 0:
        d = (d + dt.timedelta(days=32)).replace(day=1)
    return d


@pytest.mark.parametrize("clock", ["00:06:00", "23:59:55"], ids=["just-after-midnight", "across-midnight"])
def test_day_sensitive_tests_pass_at_any_hour(clock: str, tmp_path: Path) -> None:
    faketime = _faketime()
    day = _first_monday_first_of_month(dt.datetime.now(dt.UTC).date())
    if clock.startswith("23"):
        day -= dt.timedelta(days=1)
    env = {
        **os.environ,
        "TZ": "UTC",
        "QT_QPA_PLATFORM": "offscreen",
        # Only the wall clock moves.  A faked monotonic clock would put every timed wait's deadline
        # (Python computes it on the faked clock, the kernel waits on the real one) months away.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [
        faketime, "-f", f"@{day.isoformat()} {clock}",
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:xdist",
        "--basetemp", str(tmp_path / "t"), *DAY_SENSITIVE,
    ]  # fmt: skip
    out = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = "\n".join((out.stdout + out.stderr).splitlines()[-40:])
    assert out.returncode == 0, f"at {day} {clock} UTC:\n{tail}"
    summary = tail.splitlines()[-1]
    assert re.fullmatch(r"=* ?\d+ passed in .*", summary), f"every test must run and pass: {summary}"
