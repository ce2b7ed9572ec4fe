"""Scenario files: the shipped ones load, and a wrong one says exactly which key is wrong."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from app.sim.scenario import FAULTS, Dist, ScenarioError, list_scenarios, load_scenario, parse_scenario

REQUIRED = {"instant", "healthy", "degraded", "rate-limited", "primary-outage", "flaky-stream"}
MODELS = {"gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-haiku-4-5"}


def test_every_shipped_scenario_loads_and_knows_the_core_models() -> None:
    names = set(list_scenarios())
    assert names >= REQUIRED
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert set(scenario.models) >= MODELS, name
        for model in MODELS:
            expected = "anthropic" if model.startswith("claude") else "openai"
            assert scenario.profile(model).provider == expected


def test_instant_has_no_latency_faults_or_limits() -> None:
    s = load_scenario("instant")
    rng = random.Random(1)
    for model in [*MODELS, "anything-else"]:
        p = s.profile(model)
        assert p.ttft.sample(rng) == 0 and p.tokens_per_s.sample(rng) == 0
        assert not any(p.faults.values())
        assert p.limits.rpm is None and p.limits.tpm is None
    assert not s.outages and not s.sequence


def test_median_and_p95_become_lognormal_parameters() -> None:
    s = parse_scenario({"name": "x", "defaults": {"ttft": {"median": 0.5, "p95": 2.0}}})
    d = s.defaults.ttft
    assert d.describe() == {"median": 0.5, "p95": 2.0}
    rng = random.Random(3)
    draws = sorted(d.sample(rng) for _ in range(20_000))
    assert draws[10_000] == pytest.approx(0.5, rel=0.05)
    assert draws[19_000] == pytest.approx(2.0, rel=0.08)
    assert Dist(mu=math.log(3.0)).sample(rng) == pytest.approx(3.0)


def test_models_inherit_defaults_and_match_by_longest_prefix() -> None:
    s = parse_scenario(
        {
            "name": "x",
            "defaults": {"faults": {"server_error": 0.1}, "limits": {"rpm": 10}},
            "models": {
                "gpt-4o": {"provider": "openai", "faults": {"rate_limit": 0.2}},
                "gpt-4o-mini": {"provider": "openai", "limits": {"tpm": 99}},
            },
        }
    )
    assert s.profile("gpt-4o-mini-2024-07-18").name == "gpt-4o-mini"
    assert s.profile("gpt-4o-2024-08-06").faults == {"server_error": 0.1, "rate_limit": 0.2}
    assert s.profile("gpt-4o-mini").limits.tpm == 99 and s.profile("gpt-4o-mini").limits.rpm is None
    unknown = s.profile("llama-3")
    assert unknown.name == "llama-3" and unknown.provider is None and unknown.limits.rpm == 10
    assert s.listed_models("openai") == ["gpt-4o", "gpt-4o-mini"]


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({}, "'name' is required"),
        ({"name": "x", "colour": "blue"}, "unknown key(s) colour"),
        (
            {"name": "x", "defaults": {"faults": {"gremlins": 0.1}}},
            "defaults.faults: unknown fault 'gremlins'",
        ),
        ({"name": "x", "defaults": {"faults": {"hang": 1.5}}}, "defaults.faults.hang: a probability"),
        (
            {"name": "x", "models": {"m": {"faults": {"hang": 0.6, "server_error": 0.6}}}},
            "models.m.faults: the rates add up to 1.200",
        ),
        ({"name": "x", "models": {"m": {"provider": "acme"}}}, "models.m.provider: must be one of"),
        (
            {"name": "x", "defaults": {"ttft": {"median": -1}}},
            "defaults.ttft: median and p95 must be positive",
        ),
        ({"name": "x", "defaults": {"ttft": "fast"}}, "defaults.ttft: expected a mapping"),
        (
            {"name": "x", "defaults": {"limits": {"rpm": 0}}},
            "defaults.limits.rpm: expected a positive integer",
        ),
        ({"name": "x", "outages": [{"start": 5, "end": 1}]}, "outages[0]: end (1.0) must be after start"),
        ({"name": "x", "sequence": ["ok", "boom"]}, "sequence[1]: unknown fault 'boom'"),
        (
            {"name": "x", "answers": {"rules": [{"match": "(", "answer": "a"}]}},
            "rules[0].match: not a valid regular",
        ),
        ({"name": "x", "answers": {"rules": [{"match": "a"}]}}, "rules[0]: give exactly one of"),
        ({"name": "x", "unknown_models": "maybe"}, "unknown_models must be"),
        (
            {"name": "x", "fault_options": {"cut_after_chunks": [1, 2, 3]}},
            "cut_after_chunks: give [min, max]",
        ),
    ],
)
def test_bad_scenarios_name_the_key_at_fault(mapping: dict[str, object], fragment: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(mapping)
    assert fragment in str(err.value)


def test_load_from_file_and_clear_errors_for_missing_or_broken_files(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text(
        "name: mine\nsequence: [rate_limit, ok]\noutages:\n  - {provider: anthropic}\n", encoding="utf-8"
    )
    s = load_scenario(good)
    assert s.sequence == ("rate_limit", None)
    assert s.outages[0].fault == "unavailable" and s.outages[0].applies("anthropic", "claude-x", 1e6)
    assert not s.outages[0].applies("openai", "gpt-4o", 0)
    with pytest.raises(ScenarioError, match="cannot read scenario file"):
        load_scenario(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="must be a mapping"):
        load_scenario(listy)
    with pytest.raises(ScenarioError, match=r"shipped scenarios: .*healthy"):
        load_scenario("sunny")


def test_fault_names_are_the_documented_ones() -> None:
    assert set(FAULTS) == {
        "rate_limit",
        "quota_exceeded",
        "server_error",
        "unavailable",
        "overloaded",
        "hang",
        "stream_cut",
        "stream_error",
        "malformed_json",
        "wrong_content_type",
    }
