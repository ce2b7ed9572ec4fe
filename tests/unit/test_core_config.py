"""The control config file: parse, validate whole with FILE:LINE problems, refuse keys, round-trip (config.md)."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.breaker import BreakerSettings
from app.core.budget import Budget, BudgetAction
from app.core.config import (
    BreakerConfig,
    ConfigError,
    ControlConfig,
    Provider,
    ProviderKind,
    RateLimits,
    Target,
    check_config,
    dump_config,
    parse_config,
)
from app.core.pricing import PriceOverride
from app.core.retry import RetryPolicy
from app.core.routing import CacheSettings, Conditions, HoursWindow, OnAllOpen, Route, Rule, Split

# The example of config.md, comments and all.
EXAMPLE = textwrap.dedent(
    """\
    providers:
      - name: openai-main
        kind: openai                 # openai | anthropic | openai_compatible
        base_url: http://127.0.0.1:8700/v1
        api_key: keyring             # keyring (default) | env:VAR_NAME | none
        admin_key: keyring           # optional, for usage/cost APIs
        rate_limits: {rpm: 500, tpm: 200000}      # optional, what we may use
      - name: anthropic-main
        kind: anthropic
        base_url: https://api.anthropic.com
        api_key: env:ANTHROPIC_API_KEY

    targets:                          # a target = provider + model; breakers are per target
      - name: fast
        provider: openai-main
        model: gpt-4o-mini
      - name: strong
        provider: anthropic-main
        model: claude-sonnet-4-5
        price: {input_per_mtok: 3.0, output_per_mtok: 15.0}   # optional override

    routes:
      - name: default
        deadline_s: 20
        first_token_timeout_s: 8
        retry: {max_attempts: 3, base_s: 0.5, cap_s: 8, max_retry_after_s: 60}
        cache: {exact_ttl_s: 3600}
        max_output_tokens: 1024
        rules:                        # first match wins
          - when: {input_tokens_over: 4000}
            chain: [strong, fast]
          - when: {feature: search}
            chain: [{split: {fast: 90, strong: 10}, sticky: user}, strong]
          - chain: [fast, strong]

    breakers:                         # defaults, and per-target overrides
      default: {window_s: 30, min_requests: 20, failure_rate: 0.5,
                slow_rate: 0.8, open_for_s: 30, max_open_for_s: 300, probe_requests: 3}
      targets:
        strong: {min_requests: 10}

    budgets:
      - name: search-daily
        scope: {feature: search}      # or {} for global, {provider: ...}, {route: ...}, {user: ...}
        period: day                   # day | week | month | rolling_1h ...
        timezone: UTC
        limit_usd: 100
        warn_at: [0.5, 0.8, 0.95]
        action: alert_only            # alert_only | block | downgrade
    """
)

SECRET = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


def line_of(text: str, snippet: str, nth: int = 0) -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if snippet in line]
    return hits[nth]


def problems(text: str) -> list[str]:
    result = check_config(text, "ctl.yaml")
    assert result.config is None
    return [str(p) for p in result.errors]


def with_example(old: str, new: str, count: int = 1) -> str:
    assert old in EXAMPLE
    return EXAMPLE.replace(old, new, count)


# -- reading -------------------------------------------------------------------------


def test_the_example_of_the_docs_parses_into_typed_objects() -> None:
    result = check_config(EXAMPLE, "ctl.yaml")
    assert result.errors == [] and result.warnings == []
    cfg = result.config
    assert cfg is not None
    assert cfg.providers[0] == Provider(
        "openai-main",
        ProviderKind.OPENAI,
        "http://127.0.0.1:8700/v1",
        "keyring",
        "keyring",
        RateLimits(500, 200_000),
    )
    assert cfg.providers[1].api_key == "env:ANTHROPIC_API_KEY"
    assert cfg.target("strong") == Target(
        "strong", "anthropic-main", "claude-sonnet-4-5", PriceOverride(3.0, 15.0)
    )
    route = cfg.route("default")
    assert route is not None
    assert (route.deadline_s, route.first_token_timeout_s, route.connect_timeout_s) == (20, 8, 5)
    assert route.effective_attempt_timeout_s == 10
    assert route.retry == RetryPolicy(3, 0.5, 8, 60)
    assert route.cache == CacheSettings(3600)
    assert route.max_output_tokens == 1024
    assert route.rules == (
        Rule(("strong", "fast"), Conditions(input_tokens_over=4000)),
        Rule((Split({"fast": 90, "strong": 10}, "user"), "strong"), Conditions({"feature": "search"})),
        Rule(("fast", "strong")),
    )
    assert cfg.breakers.settings_for("strong") == BreakerSettings(min_requests=10)
    assert cfg.breakers.settings_for("fast") == BreakerSettings()
    assert cfg.budgets == (Budget("search-daily", {"feature": "search"}, "day", "UTC", 100.0),)


def test_an_empty_file_is_an_empty_config() -> None:
    assert parse_config("") == ControlConfig()
    assert parse_config("# nothing yet\n") == ControlConfig()


def test_every_optional_field_is_read() -> None:
    text = textwrap.dedent(
        """\
        providers:
          - {name: local, kind: openai_compatible, base_url: "http://127.0.0.1:11434/v1", api_key: none}
        targets:
          - {name: llama, provider: local, model: llama3,
             price: {input_per_mtok: 0, output_per_mtok: 0, cache_read_per_mtok: 0}}
        routes:
          - name: night
            deadline_s: 60
            attempt_timeout_s: 20
            connect_timeout_s: 2
            idle_timeout_s: 5
            on_all_open: try_anyway
            store_text: true
            latency_aware: true
            fallback_response: "Sorry, try again later."
            cache: {exact_ttl_s: 60, allow_nonzero_temperature: true}
            rules:
              - when: {hours: {from: 22, to: 6, tz: Europe/Berlin}, tier: [free, trial], input_tokens_under: 300}
                chain: [llama]
              - chain: [{split: {llama: 100}}]
        breakers:
          default: {slow_call_s: 12.5}
        budgets:
          - name: tokens
            scope: {team: ml, provider: local}
            period: rolling_6h
            timezone: Asia/Tokyo
            limit_tokens: 5000000
            warn_at: [0.9]
            action: downgrade
            downgrade_to: llama
        """
    )
    cfg = parse_config(text)
    route = cfg.routes[0]
    assert route.attempt_timeout_s == 20 and route.on_all_open is OnAllOpen.TRY_ANYWAY
    assert route.store_text and route.latency_aware
    assert route.fallback_response == "Sorry, try again later."
    assert route.cache == CacheSettings(60, True)
    assert route.rules[0].when == Conditions(
        {"tier": ("free", "trial")}, None, 300, HoursWindow(22, 6, "Europe/Berlin")
    )
    assert route.rules[1].chain == (Split({"llama": 100}),)
    assert cfg.breakers.default.slow_call_s == 12.5
    b = cfg.budgets[0]
    assert b.downgrade_to == ("llama",) and b.action is BudgetAction.DOWNGRADE
    assert b.limit_tokens == 5_000_000 and b.limit_usd is None
    assert cfg.providers[0].api_key == "none"
    assert cfg.targets[0].price == PriceOverride(0, 0, 0, None)


# -- problems, all at once, with lines -----------------------------------------------


def test_every_problem_is_reported_with_its_line() -> None:
    text = with_example("provider: openai-main", "provider: openai-mian")
    text = text.replace("deadline_s: 20", "deadline_s: twenty")
    text = text.replace("chain: [strong, fast]", "chain: [strong, fsat]")
    text = text.replace("{fast: 90, strong: 10}", "{fast: 90, strong: 20}")
    text = text.replace("action: alert_only", "action: shout")
    text = text.replace("    period: day", "    perod: day")
    got = problems(text)
    assert got == [
        f"ctl.yaml:{line_of(text, 'openai-mian')}: target `fast`: unknown provider `openai-mian` "
        "(did you mean `openai-main`?)",
        f"ctl.yaml:{line_of(text, 'deadline_s: twenty')}: route `default`: deadline_s must be a number, not text",
        f"ctl.yaml:{line_of(text, 'perod')}: budgets[0]: unknown key `perod` (did you mean `period`?)",
        f"ctl.yaml:{line_of(text, 'action: shout')}: budget `search-daily`: action must be one of "
        "alert_only, block, downgrade, not `shout`",
    ]


def test_route_problems_point_at_the_offending_chain_step() -> None:
    text = EXAMPLE.replace("chain: [strong, fast]", "chain: [strong, fsat]").replace(
        "{fast: 90, strong: 10}", "{fast: 90, strong: 20}"
    )
    got = problems(text)
    assert got == [
        f"ctl.yaml:{line_of(text, 'fsat')}: route `default`: rule 1: unknown target `fsat` (did you mean `fast`?)",
        f"ctl.yaml:{line_of(text, 'strong: 20')}: route `default`: rule 2: split weights add up to 110, not 100",
    ]


def test_a_rule_that_can_never_match_is_an_error() -> None:
    text = EXAMPLE.replace(
        "      - chain: [fast, strong]\n",
        "      - chain: [fast, strong]\n      - when: {feature: chat}\n        chain: [strong]\n",
    )
    [msg] = problems(text)
    assert msg == (
        f"ctl.yaml:{line_of(text, 'feature: chat')}: route `default`: "
        "rule 4 can never match: rule 3 above it has no conditions and takes every request"
    )


def test_route_warnings_do_not_refuse_the_file() -> None:
    text = EXAMPLE.replace("      - chain: [fast, strong]\n", "")
    result = check_config(text, "ctl.yaml")
    assert result.ok and result.config is not None
    assert [str(w) for w in result.warnings] == [
        f"ctl.yaml:{line_of(text, 'rules:')}: route `default`: "
        "no catch-all rule: a request that matches no rule has no target and fails"
    ]


def test_a_literal_api_key_is_refused_without_showing_it() -> None:
    text = EXAMPLE.replace("api_key: env:ANTHROPIC_API_KEY", f"api_key: {SECRET}")
    result = check_config(text, "ctl.yaml")
    assert result.config is None
    [p] = result.errors
    assert p.line == line_of(text, "sk-proj")
    assert SECRET not in str(p) and "sk-proj" not in str(p)
    assert "store it with `controlroom keys set anthropic-main` or use env:VAR_NAME" in p.message
    with pytest.raises(ConfigError) as err:
        parse_config(text, "ctl.yaml")
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("value", ["hunter2", "keyrnig", "12345", "'env:'", "env:1BAD", "'env:sk-abc'"])
def test_anything_but_a_key_reference_is_refused_for_keys(value: str) -> None:
    text = EXAMPLE.replace("admin_key: keyring", f"admin_key: {value}")
    [msg] = problems(text)
    assert msg.startswith(f"ctl.yaml:{line_of(text, 'admin_key')}: provider `openai-main`: admin_key")
    bare = value.strip("'")
    if bare != "env:":  # the message itself names the env: form
        assert bare not in msg


def test_a_key_anywhere_else_is_refused_too() -> None:
    text = EXAMPLE.replace(
        "base_url: https://api.anthropic.com", f"base_url: https://api.anthropic.com?k={SECRET}"
    )
    text = text.replace("model: gpt-4o-mini", f"model: {SECRET}")
    got = problems(text)
    assert len(got) == 2
    assert all("looks like an API key" in m and SECRET not in m for m in got)
    assert [m.split(":")[1] for m in got] == [
        str(line_of(text, "base_url: https://api.anthropic")),
        str(line_of(text, "model: sk-")),
    ]


def test_a_yaml_syntax_error_gives_its_line_but_not_the_text() -> None:
    text = f"providers:\n  - name: x\n    api_key: {SECRET}\n   bad: [\n"
    [msg] = problems(text)
    assert msg.startswith("ctl.yaml:") and "not valid YAML" in msg
    assert SECRET not in msg


def test_shapes_and_duplicates() -> None:
    text = textwrap.dedent(
        """\
        providers:
          - name: a
            kind: openai
            kind: anthropic
          - name: a
            kind: openai
        targets: {name: x}
        routes:
          - deadline_s: 3
            rules: []
        stuff: 1
        """
    )
    got = problems(text)
    assert got == [
        "ctl.yaml:4: providers[0]: `kind` is given twice",
        "ctl.yaml:5: provider `a` is defined twice (first on line 2)",
        "ctl.yaml:7: targets must be a list, not a mapping",
        "ctl.yaml:9: routes[0]: needs a name",
        "ctl.yaml:11: the file: unknown key `stuff` (known: providers, targets, routes, breakers, budgets)",
    ]


EMPTY_NAME = "- name: ''"


def test_names_and_tag_values_must_be_words() -> None:
    text = EXAMPLE.replace("- name: fast", EMPTY_NAME).replace("{feature: search}", "{feature: no}", 1)
    assert problems(text) == [
        f"ctl.yaml:{line_of(text, EMPTY_NAME)}: targets[0]: name must not be empty",
        f"ctl.yaml:{line_of(text, 'feature: no')}: route `default`: rule 2: when: feature must be text, "
        "not true/false (put it in quotes if you mean the word)",
    ]


def test_the_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["ctl.yaml:1: the file must be a mapping (key: value), not a list"]


def test_providers_need_what_they_need() -> None:
    text = textwrap.dedent(
        """\
        providers:
          - name: vllm
            kind: openai_compatible
          - name: other
            kind: azure
          - name: web
            kind: openai
            base_url: ftp://example.com
            rate_limits: {rpm: 0}
        """
    )
    assert problems(text) == [
        "ctl.yaml:2: provider `vllm`: an openai_compatible provider needs a base_url (ending in /v1)",
        "ctl.yaml:5: provider `other`: kind must be one of openai, anthropic, openai_compatible, not `azure`",
        "ctl.yaml:8: provider `web`: base_url must start with http:// or https://",
        "ctl.yaml:9: provider `web`: rate_limits rpm must be at least 1",
    ]


def test_breaker_problems() -> None:
    text = EXAMPLE.replace(
        "strong: {min_requests: 10}", "strong: {min_requests: 0}\n    ghost: {window_s: 5}"
    )
    text = text.replace("failure_rate: 0.5", "failure_rate: 50")
    got = problems(text)
    assert got == [
        f"ctl.yaml:{line_of(text, 'failure_rate: 50')}: breakers default: failure_rate must be a fraction "
        "in (0, 1], e.g. 0.5 for 50%",
        f"ctl.yaml:{line_of(text, 'min_requests: 0')}: breakers for target `strong`: min_requests must be at least 1",
        f"ctl.yaml:{line_of(text, 'ghost')}: breakers: unknown target `ghost`",
    ]


def test_budget_problems() -> None:
    text = EXAMPLE.replace("action: alert_only", "action: downgrade").replace(
        "scope: {feature: search}", "scope: {route: nope}"
    )
    text = text.replace("timezone: UTC", "timezone: Mars/Olympus")
    assert problems(text) == [
        f"ctl.yaml:{line_of(text, 'route: nope')}: budget `search-daily`: scope route `nope` is not defined "
        "in this file",
        f"ctl.yaml:{line_of(text, 'Mars')}: budget `search-daily`: unknown time zone `Mars/Olympus`",
        f"ctl.yaml:{line_of(text, 'action: downgrade')}: budget `search-daily`: action downgrade needs "
        "downgrade_to: the cheaper chain to use",
    ]
    text = EXAMPLE.replace("action: alert_only", "action: downgrade\n    downgrade_to: [cheap]")
    assert problems(text) == [
        f"ctl.yaml:{line_of(text, 'downgrade_to')}: budget `search-daily`: downgrade_to names unknown target `cheap`"
    ]


def test_config_error_lists_every_problem_one_per_line() -> None:
    text = EXAMPLE.replace("deadline_s: 20", "deadline_s: -1").replace("limit_usd: 100", "limit_usd: 0")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "ops/control.yaml")
    lines = str(err.value).splitlines()
    assert lines == [
        f"ops/control.yaml:{line_of(text, 'deadline_s: -1')}: route `default`: deadline_s must be more than 0 seconds",
        f"ops/control.yaml:{line_of(text, 'limit_usd')}: budget `search-daily`: limit_usd must be more than 0",
    ]
    assert len(err.value.problems) == 2


# -- writing back --------------------------------------------------------------------


def test_the_example_round_trips() -> None:
    cfg = parse_config(EXAMPLE)
    text = dump_config(cfg)
    assert parse_config(text) == cfg
    assert dump_config(parse_config(text)) == text  # and the written form is stable


def test_the_written_form_stays_readable() -> None:
    text = dump_config(parse_config(EXAMPLE))
    assert "deadline_s: 20\n" in text
    assert "chain: [strong, fast]" in text
    assert "sticky: user" in text
    assert "slow_call_s" not in text  # unset fields are left out


_name = st.text("abcdefghij-_", min_size=1, max_size=8).filter(lambda s: s[0].isalpha())
_secs = st.floats(0.5, 600, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def configs(draw: st.DrawFn) -> ControlConfig:
    provs = draw(st.lists(_name, min_size=1, max_size=3, unique=True))
    providers = tuple(
        Provider(
            p,
            draw(st.sampled_from(list(ProviderKind))),
            "http://127.0.0.1:8700/v1",
            draw(st.sampled_from(["keyring", "none", "env:OPENAI_API_KEY"])),
            draw(st.sampled_from([None, "keyring"])),
            draw(st.sampled_from([None, RateLimits(10, None), RateLimits(None, 1000)])),
        )
        for p in provs
    )
    tnames = draw(st.lists(_name, min_size=2, max_size=4, unique=True))
    targets = tuple(
        Target(
            t,
            draw(st.sampled_from(provs)),
            draw(st.sampled_from(["gpt-4o-mini", "claude-sonnet-4-5", "4"])),
            draw(st.sampled_from([None, PriceOverride(1.5, 2.0), PriceOverride(0.1, 0.4, 0.01, 0.2)])),
        )
        for t in tnames
    )
    deadline = draw(st.floats(10, 120).map(lambda x: round(x, 2)))
    a, b = tnames[0], tnames[1]
    route = Route(
        draw(_name),
        (
            Rule(
                (Split({a: 70, b: 30}, draw(st.sampled_from([None, "user", "team"]))), b),
                Conditions(
                    {"feature": draw(st.sampled_from(["search", "true", "1.5"]))},
                    draw(st.sampled_from([None, 100])),
                    draw(st.sampled_from([None, 5000])),
                    draw(st.sampled_from([None, HoursWindow(9, 17, "Europe/Paris")])),
                ),
            ),
            Rule((a,), Conditions({"tier": ("x", "y")})),
            Rule((b, a)),
        ),
        deadline_s=deadline,
        attempt_timeout_s=draw(st.sampled_from([None, round(deadline / 3, 2)])),
        retry=RetryPolicy(draw(st.integers(1, 5)), 0.25, draw(st.sampled_from([8.0, 2.5])), 30.0),
        cache=draw(st.sampled_from([CacheSettings(), CacheSettings(60.0), CacheSettings(1.5, True)])),
        max_output_tokens=draw(st.sampled_from([None, 256])),
        on_all_open=draw(st.sampled_from(list(OnAllOpen))),
        store_text=draw(st.booleans()),
        latency_aware=draw(st.booleans()),
        fallback_response=draw(st.sampled_from([None, "busy: try again", "ünïcode ✓"])),
    )
    breakers = draw(
        st.sampled_from(
            [
                BreakerConfig(),
                BreakerConfig(BreakerSettings(min_requests=5, slow_call_s=3.5), {a: {"open_for_s": 60.0}}),
            ]
        )
    )
    budgets = (
        Budget(
            "budget-1",
            draw(st.sampled_from([{}, {"feature": "search"}, {"provider": provs[0]}, {"team": "007"}])),
            draw(st.sampled_from(["day", "week", "month", "rolling_6h", "rolling_2d"])),
            draw(st.sampled_from(["UTC", "America/New_York"])),
            draw(st.sampled_from([None, 12.5, 100.0])),
            draw(st.sampled_from([None, 1_000_000])) or 1000,
            draw(st.sampled_from([(0.5, 0.8, 0.95), (), (0.9,)])),
            BudgetAction.DOWNGRADE,
            (a,),
        ),
    )
    return ControlConfig(providers, targets, (route,), breakers, budgets)


@settings(max_examples=40, deadline=None)
@given(configs())
def test_any_valid_config_round_trips_losslessly(cfg: ControlConfig) -> None:
    text = dump_config(cfg)
    result = check_config(text, "dump.yaml")
    assert result.errors == [], text
    assert result.config == cfg
