"""The A/B runner against a simulator limited to 60 requests/min: how much of the limit it uses, and
how many 429s it causes (product.md: >= 95% of the configured requests/min, zero 429s caused by us).

Set-up: the simulator (own thread) allows 60 requests/min per model as a token bucket that starts full
(the providers' behaviour: a minute's capacity at once, refilled evenly).  The provider's config has no
rate limit: the runner learns it from the ``x-ratelimit-*`` headers.  The experiment has 2 variants x
90 cases = 180 calls, about two minutes at 60/min after the first burst.

A second case limits tokens/min instead (6,000, no request limit) with short and long answers mixed:
the runner must learn each variant's output size to stay inside it.

Figures:
- share of the limit used = calls / (what the bucket allowed over the run: its capacity at the start
  plus 60 per minute of the run's duration);
- steady rate = calls after the first burst, per minute, against 60/min;
- 429s the simulator sent (its ledger), and retries the gateway made.

Run with ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from app.experiments.runner import ExperimentRunner, Progress
from app.experiments.spec import parse_experiment
from app.gateway.engine import Gateway
from app.sim import SimThread
from tests.integration.ab_support import KEY_ENV, experiment_yaml, sim_store

RPM = 60
CASES = 90
SCENARIO = {
    "name": "ab-bench-60rpm",
    "defaults": {"ttft": 0.05, "tokens_per_s": 0, "limits": {"rpm": RPM}},
    "models": {"gpt-4o-mini": {"provider": "openai"}, "claude-sonnet-4-5": {"provider": "anthropic"}},
    "answers": {
        "default_tokens": 24,
        "rules": [{"match": "(?i)capital of france", "answer": "The capital of France is Paris."}],
    },
}


@pytest.mark.timeout(600)
def test_bench_ab_runner_uses_the_limit_without_429s(tmp_path: Path) -> None:
    os.environ[KEY_ENV] = "sk-test-ab-bench-00000001"
    with SimThread(SCENARIO, seed=7) as sim:
        store = sim_store(sim, tmp_path / "bench.db")
        exp = parse_experiment(
            experiment_yaml(cases=CASES, name="bench").replace("concurrency: 4", "concurrency: 8")
        )
        last: list[Progress] = []

        async def go() -> tuple[float, float]:
            async with Gateway(store) as gw:
                runner = ExperimentRunner(gw, store, exp, on_progress=last.append)
                start = time.monotonic()
                outcome = await runner.run()
                assert outcome.status == "done", outcome
                return start, time.monotonic()

        start, end = asyncio.run(go())
        records = [r for r in sim.served.records() if r.endpoint == "chat.completions"]
        store.close()
    ok = [r for r in records if r.status == 200]
    limited = [r for r in records if r.status == 429]
    duration = end - start
    allowed = RPM + RPM * duration / 60.0
    share = len(ok) / allowed
    first_ts = min(r.ts for r in ok)
    after_burst = [r for r in ok if r.ts > first_ts + 2.0]
    steady_window = max(r.ts for r in ok) - (first_ts + 2.0)
    steady = len(after_burst) / steady_window * 60.0 if steady_window > 0 else float("nan")
    print()
    print("A/B runner vs a simulator limited to 60 requests/min (limit learned from headers)")
    print(f"  calls answered        {len(ok)} of {exp.total} in {duration:.1f} s")
    print(
        f"  share of the limit    {share * 100:.1f}%  (target >= 95%; allowed {allowed:.1f} = burst {RPM} + {RPM}/min)"
    )
    print(
        f"  steady rate           {steady:.1f} requests/min after the first burst ({steady / RPM * 100:.1f}% of {RPM})"
    )
    print(f"  429s caused           {len(limited)}  (target 0)")
    print(f"  last progress         {last[-1].done}/{last[-1].total}, ${last[-1].cost_usd:.4f}")
    assert len(ok) == exp.total
    assert not limited
    assert share >= 0.95


TPM = 6_000
TPM_SCENARIO = {
    "name": "ab-bench-tpm",
    "defaults": {"ttft": 0.05, "tokens_per_s": 0, "limits": {"tpm": TPM}},
    "models": {"gpt-4o-mini": {"provider": "openai"}, "claude-sonnet-4-5": {"provider": "anthropic"}},
    # v1's answers are short (a rule), v2's are 200-token filler: the runner must learn both sizes.
    "answers": {
        "default_tokens": 200,
        "rules": [{"match": "(?i)capital of france", "answer": "The capital of France is Paris."}],
    },
}


@pytest.mark.timeout(600)
def test_bench_ab_runner_within_a_tokens_per_minute_limit(tmp_path: Path) -> None:
    """The same runner against 6,000 tokens/min (no request limit): short and long answers mixed."""
    os.environ[KEY_ENV] = "sk-test-ab-bench-00000001"
    with SimThread(TPM_SCENARIO, seed=7) as sim:
        store = sim_store(sim, tmp_path / "bench-tpm.db")
        exp = parse_experiment(
            experiment_yaml(cases=60, name="bench-tpm").replace("concurrency: 4", "concurrency: 8")
        )

        async def go() -> tuple[float, float]:
            async with Gateway(store) as gw:
                runner = ExperimentRunner(gw, store, exp)
                start = time.monotonic()
                outcome = await runner.run()
                assert outcome.status == "done", outcome
                return start, time.monotonic()

        start, end = asyncio.run(go())
        records = [r for r in sim.served.records() if r.endpoint == "chat.completions"]
        store.close()
    ok = [r for r in records if r.status == 200]
    limited = [r for r in records if r.status == 429]
    duration = end - start
    tokens = sum(r.input_tokens + r.output_tokens for r in ok)
    allowed = TPM + TPM * duration / 60.0
    print()
    print(f"A/B runner vs a simulator limited to {TPM} tokens/min (limit learned from headers)")
    print(f"  calls answered        {len(ok)} of {exp.total} in {duration:.1f} s, {tokens} tokens")
    print(
        f"  share of the limit    {tokens / allowed * 100:.1f}%  (allowed {allowed:.0f} = burst {TPM} + {TPM}/min)"
    )
    print(f"  429s caused           {len(limited)}  (target 0)")
    assert len(ok) == exp.total
    assert not limited
