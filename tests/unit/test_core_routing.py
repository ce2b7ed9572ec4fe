"""Routing rules, splits, explanations and route validation (semantics.md 6, config.md routes)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.retry import RetryPolicy
from app.core.routing import (
    CacheSettings,
    Conditions,
    HoursWindow,
    Problem,
    RequestContext,
    Route,
    Rule,
    Split,
    dry_run,
    route_targets,
    select_chain,
    sticky_point,
    validate_route,
)

CANARY = Split({"fast": 90, "strong": 10}, sticky="user")

# The route of config.md.
DEFAULT = Route(
    "default",
    (
        Rule(("strong", "fast"), Conditions(input_tokens_over=4000)),
        Rule((CANARY, "strong"), Conditions({"feature": "search"})),
        Rule(("fast", "strong")),
    ),
)
TARGETS = {"fast", "strong", "cheap"}


def test_first_matching_rule_wins_and_says_why() -> None:
    d = select_chain(DEFAULT, RequestContext(feature="chat", input_tokens=5200))
    assert d.chain == ["strong", "fast"]
    assert d.rule_index == 0
    assert d.explanation[0] == "rule 1 matched: input tokens 5200 over 4000"
    assert d.explanation[-1] == "chain: strong -> fast"


def test_skipped_rules_are_explained_in_plain_words() -> None:
    d = select_chain(DEFAULT, RequestContext(feature="chat", input_tokens=1200))
    assert d.chain == ["fast", "strong"]
    assert d.rule_index == 2
    assert d.explanation[:3] == [
        "rule 1 skipped: input tokens 1200 not over 4000",
        "rule 2 skipped: feature is chat, not search",
        "rule 3 matched: no conditions (catch-all)",
    ]


def test_a_sticky_split_is_explained_like_the_brief_says() -> None:
    d = select_chain(DEFAULT, RequestContext(feature="search", user="u-17", input_tokens=100))
    chosen = d.chain[0]
    assert d.explanation[1] == (
        f"rule 2 matched: feature = search; split fast 90 / strong 10 sticky on user u-17 -> {chosen}"
    )
    assert d.chain == ([chosen, "strong"] if chosen == "fast" else ["strong"])  # no repeats


def test_the_same_sticky_value_always_lands_on_the_same_target() -> None:
    ctx = RequestContext(feature="search", user="u-42")
    picks = {select_chain(DEFAULT, ctx, rng=random.Random(s)).chain[0] for s in range(50)}
    assert len(picks) == 1


def test_sticky_assignment_follows_the_weights_across_users() -> None:
    counts = Counter(
        select_chain(DEFAULT, RequestContext(feature="search", user=f"user-{i}")).chain[0]
        for i in range(5000)
    )
    assert 0.87 < counts["fast"] / 5000 < 0.93


def test_moving_weights_moves_only_the_users_in_between() -> None:
    before = Split({"fast": 90, "strong": 10}, "user")
    after = Split({"fast": 80, "strong": 20}, "user")
    moved = 0
    for i in range(2000):
        p = sticky_point(before, f"u{i}")
        assert p == sticky_point(after, f"u{i}")  # the salt is the split's targets, not its weights
        a = "fast" if p < 90 else "strong"
        b = "fast" if p < 80 else "strong"
        moved += a != b
        assert not (a == "strong" and b == "fast")  # nobody leaves the canary as it grows
    assert 0.07 < moved / 2000 < 0.13


def test_a_sticky_split_without_the_key_picks_at_random_by_weight() -> None:
    rng = random.Random(5)
    ctx = RequestContext(feature="search")
    counts = Counter(select_chain(DEFAULT, ctx, rng=rng).chain[0] for _ in range(4000))
    assert 0.87 < counts["fast"] / 4000 < 0.93
    d = select_chain(DEFAULT, ctx, rng=random.Random(1))
    assert "no user given so random pick by weight" in d.explanation[1]


def test_sticky_keys_may_name_any_tag() -> None:
    route = Route("r", (Rule((Split({"a": 50, "b": 50}, "conversation"),)),))
    ctx = RequestContext(tags={"conversation": "c-9"})
    picks = {select_chain(route, ctx, rng=random.Random(s)).chain[0] for s in range(20)}
    assert len(picks) == 1
    assert "sticky on conversation c-9" in select_chain(route, ctx).explanation[0]


def test_zero_weight_targets_are_never_picked() -> None:
    route = Route("r", (Rule((Split({"a": 0, "b": 100}),)),))
    assert {select_chain(route, RequestContext(), rng=random.Random(s)).chain[0] for s in range(100)} == {"b"}


def test_tag_conditions_read_named_fields_and_free_tags() -> None:
    route = Route(
        "r",
        (
            Rule(("strong",), Conditions({"tier": ("pro", "enterprise"), "feature": "chat"})),
            Rule(("fast",)),
        ),
    )
    pro = RequestContext(feature="chat", tags={"tier": "pro"})
    assert select_chain(route, pro).chain == ["strong"]
    assert select_chain(route, pro).explanation[0] == "rule 1 matched: tier = pro; feature = chat"
    free = RequestContext(feature="chat", tags={"tier": "free"})
    assert select_chain(route, free).chain == ["fast"]
    assert select_chain(route, free).explanation[0] == "rule 1 skipped: tier is free, not pro or enterprise"
    missing = select_chain(route, RequestContext(feature="chat"))
    assert "tier not given" in missing.explanation[0]


def test_token_thresholds_are_strict_and_unknown_counts_do_not_match() -> None:
    route = Route("r", (Rule(("short",), Conditions(input_tokens_under=500)), Rule(("long",))))
    assert select_chain(route, RequestContext(input_tokens=499)).chain == ["short"]
    assert select_chain(route, RequestContext(input_tokens=500)).chain == ["long"]
    d = select_chain(route, RequestContext())
    assert d.chain == ["long"]
    assert "input tokens unknown" in d.explanation[0]


def test_time_of_day_windows_use_the_rules_time_zone() -> None:
    office = HoursWindow(9, 17, "Europe/Berlin")
    route = Route("r", (Rule(("strong",), Conditions(hours=office)), Rule(("fast",))))
    # 07:30 UTC in January is 08:30 in Berlin: before office hours.
    early = datetime(2025, 1, 15, 7, 30, tzinfo=UTC).timestamp()
    late = datetime(2025, 1, 15, 8, 30, tzinfo=UTC).timestamp()
    assert select_chain(route, RequestContext(), now=early).chain == ["fast"]
    assert (
        "time 08:30 outside 09:00-17:00 Europe/Berlin"
        in select_chain(route, RequestContext(), now=early).explanation[0]
    )
    assert select_chain(route, RequestContext(ts=late)).chain == ["strong"]


def test_an_hours_window_can_wrap_midnight() -> None:
    night = HoursWindow(22, 6)

    def at(h: int) -> float:
        return datetime(2025, 1, 15, h, 0, tzinfo=UTC).timestamp()

    assert [night.contains(at(h)) for h in (21, 22, 23, 0, 5, 6, 12)] == [
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]


def test_no_matching_rule_gives_no_chain() -> None:
    route = Route("r", (Rule(("a",), Conditions({"feature": "x"})),))
    d = select_chain(route, RequestContext())
    assert d.chain == [] and d.rule_index is None and not d.matched
    assert d.explanation[-1] == "no rule matched: the request has no target"


def test_dry_run_answers_the_same_twice_and_leaves_the_callers_random_source_alone() -> None:
    ctx = RequestContext(feature="search")
    assert dry_run(DEFAULT, ctx) == dry_run(DEFAULT, ctx)
    rng = random.Random(3)
    state = rng.getstate()
    select_chain(DEFAULT, RequestContext(feature="search", user="u"), rng=rng)  # sticky: no draw
    assert rng.getstate() == state


def test_latency_aware_splits_prefer_the_faster_healthy_target() -> None:
    route = Route("r", (Rule((Split({"a": 50, "b": 50}),)),), latency_aware=True)
    p95 = {"a": 2.0, "b": 0.4}
    picks = Counter(
        select_chain(route, RequestContext(), rng=random.Random(s), p95_s=p95.get).chain[0]
        for s in range(200)
    )
    assert picks["b"] > 140  # b wins whenever it is one of the two candidates
    d = select_chain(route, RequestContext(), rng=random.Random(1), p95_s=p95.get, healthy=lambda t: t != "b")
    assert d.chain == ["a"] or "only one candidate" in d.explanation[0]
    unhealthy_b = Counter(
        select_chain(
            route, RequestContext(), rng=random.Random(s), p95_s=p95.get, healthy=lambda t: t != "b"
        ).chain[0]
        for s in range(200)
    )
    assert unhealthy_b["a"] > 140
    assert "latency-aware between" in d.explanation[0]


def test_without_the_option_latency_is_ignored() -> None:
    route = Route("r", (Rule((Split({"a": 50, "b": 50}),)),))
    picks = Counter(
        select_chain(route, RequestContext(), rng=random.Random(s), p95_s={"a": 9.0, "b": 0.1}.get).chain[0]
        for s in range(400)
    )
    assert 150 < picks["a"] < 250


def test_route_defaults_follow_the_semantics() -> None:
    r = Route("r")
    assert (r.deadline_s, r.connect_timeout_s, r.first_token_timeout_s, r.idle_timeout_s) == (30, 5, 10, 15)
    assert r.effective_attempt_timeout_s == 15
    assert Route("r", deadline_s=20, attempt_timeout_s=7).effective_attempt_timeout_s == 7
    assert r.retry == RetryPolicy()
    assert r.cache.exact_ttl_s is None
    assert not r.store_text
    assert route_targets(DEFAULT) == {"fast", "strong"}


# -- validation ----------------------------------------------------------------------


def messages(problems: list[Problem], severity: str = "error") -> list[str]:
    return [p.message for p in problems if p.severity == severity]


def test_the_config_example_route_is_valid() -> None:
    assert validate_route(DEFAULT, TARGETS) == []


def test_unknown_targets_are_reported_where_they_are() -> None:
    route = Route("r", (Rule(("fats", Split({"strong": 50, "nope": 50}))),))
    problems = validate_route(route, TARGETS)
    assert [(p.path, p.message) for p in problems if "unknown" in p.message] == [
        (("rules", 0, "chain", 0), "rule 1: unknown target `fats`"),
        (("rules", 0, "chain", 1, "split", "nope"), "rule 1: unknown target `nope`"),
    ]
    assert validate_route(route, None) == []  # no list: no check


def test_split_weights_must_add_up_to_100() -> None:
    route = Route("r", (Rule((Split({"fast": 90, "strong": 20}),)),))
    assert messages(validate_route(route, TARGETS)) == ["rule 1: split weights add up to 110, not 100"]
    neg = Route("r", (Rule((Split({"fast": 110, "strong": -10}),)),))
    assert "rule 1: the weight of `strong` must not be negative" in messages(validate_route(neg, TARGETS))


def test_a_rule_after_a_catch_all_can_never_match() -> None:
    route = Route("r", (Rule(("fast",)), Rule(("strong",), Conditions({"feature": "x"}))))
    [p] = validate_route(route, TARGETS)
    assert p.path == ("rules", 1)
    assert p.message == "rule 2 can never match: rule 1 above it has no conditions and takes every request"


@pytest.mark.parametrize(
    ("earlier", "later", "shadowed"),
    [
        (Conditions({"feature": "search"}), Conditions({"feature": "search", "user": "u"}), True),
        (Conditions({"tier": ("a", "b")}), Conditions({"tier": "a"}), True),
        (Conditions({"tier": "a"}), Conditions({"tier": ("a", "b")}), False),
        (Conditions(input_tokens_over=1000), Conditions(input_tokens_over=4000), True),
        (Conditions(input_tokens_over=4000), Conditions(input_tokens_over=1000), False),
        (Conditions(input_tokens_under=4000), Conditions(input_tokens_under=100), True),
        (Conditions({"feature": "a"}), Conditions({"feature": "b"}), False),
        (Conditions(hours=HoursWindow(9, 17)), Conditions(hours=HoursWindow(9, 17)), True),
        (Conditions(hours=HoursWindow(9, 17)), Conditions(), False),
    ],
)
def test_a_rule_shadowed_by_a_broader_earlier_rule_is_found(
    earlier: Conditions, later: Conditions, shadowed: bool
) -> None:
    route = Route("r", (Rule(("fast",), earlier), Rule(("strong",), later), Rule(("fast",))))
    found = any("rule 2 can never match: rule 1" in m for m in messages(validate_route(route, TARGETS)))
    assert found is shadowed


def test_contradictory_thresholds_are_an_error() -> None:
    route = Route(
        "r", (Rule(("fast",), Conditions(input_tokens_over=4000, input_tokens_under=4001)), Rule(("fast",)))
    )
    assert messages(validate_route(route, TARGETS)) == [
        "rule 1 can never match: no token count is over 4000 and under 4001"
    ]


def test_timeouts_that_contradict_the_deadline() -> None:
    route = Route("r", (Rule(("fast",)),), deadline_s=10, attempt_timeout_s=12, first_token_timeout_s=11)
    problems = validate_route(route, TARGETS)
    assert [p.path for p in problems if p.severity == "error"] == [("attempt_timeout_s",)]
    assert "longer than the deadline" in messages(problems)[0]
    assert [p.path for p in problems if p.severity == "warning"] == [
        ("first_token_timeout_s",),
        ("idle_timeout_s",),
    ]


def test_bad_numbers_and_empty_things_are_reported() -> None:
    route = Route(
        "",
        (Rule(()), Rule(("fast",), Conditions(hours=HoursWindow(5, 5, "Mars/Base")))),
        deadline_s=0,
        retry=RetryPolicy(max_attempts=0),
        cache=CacheSettings(exact_ttl_s=0),
        max_output_tokens=0,
    )
    got = {str(p) for p in validate_route(route, TARGETS) if p.severity == "error"}
    assert got >= {
        "name: a route needs a name",
        "deadline_s: deadline_s must be more than 0 seconds",
        "retry.max_attempts: retry max_attempts must be at least 1 (1 means no retries)",
        "cache.exact_ttl_s: cache exact_ttl_s must be more than 0 seconds (leave it out for no cache)",
        "max_output_tokens: max_output_tokens must be at least 1",
        "rules.0.chain: rule 1: the chain is empty: name at least one target",
        "rules.1.when.hours: rule 2: hours from and to are both 5: the window is empty",
        "rules.1.when.hours.tz: rule 2: unknown time zone `Mars/Base`",
    }


def test_a_route_without_a_catch_all_gets_a_warning() -> None:
    route = Route("r", (Rule(("fast",), Conditions({"feature": "x"})),))
    assert messages(validate_route(route, TARGETS), "warning") == [
        "no catch-all rule: a request that matches no rule has no target and fails"
    ]
    assert messages(validate_route(Route("r"), TARGETS)) == ["a route needs at least one rule"]


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 100), min_size=1),
    st.text(min_size=1, max_size=20),
)
def test_a_split_always_resolves_to_one_of_its_targets(weights: dict[str, int], user: str) -> None:
    route = Route("r", (Rule((Split(weights, "user"),)),))
    [target] = select_chain(route, RequestContext(user=user)).chain
    assert target in weights
    if any(w > 0 for w in weights.values()):
        assert weights[target] > 0
