"""Promoting a winner: the prompt version becomes active, or a canary split lands on the route; audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import parse_config
from app.experiments.promote import PromoteError, canary_rules, promote_prompt, start_canary
from app.experiments.spec import parse_experiment
from app.gateway.control import apply_config
from storage.engine import Store, open_store
from storage.queries import prompts as registry
from storage.queries.control import get_object, list_audit


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 's.db'}")
    apply_config(
        s,
        parse_config(
            """
providers: [{name: p, kind: openai, base_url: "http://127.0.0.1:9/v1", api_key: none}]
targets:
  - {name: fast, provider: p, model: gpt-4o-mini}
  - {name: big, provider: p, model: gpt-4o}
routes:
  - name: default
    rules:
      - chain: [fast, big]
"""
        ),
        actor="test",
        reason="set-up",
        source_file="t",
    )
    yield s
    s.close()


EXP = """
name: e
prompts:
  - {id: v1, prompt: summary@1}
  - {id: v2, prompt: summary@2}
  - {id: v3, template: "Short: {{t}}"}
targets: [fast, big]
baseline: v1/fast
tests: [{vars: {t: x}}]
"""


def test_promote_a_registry_version_and_an_inline_prompt(store: Store) -> None:
    registry.create_prompt(store.engine, "summary", actor="t")
    for text in ("One {{t}}", "Two {{t}}"):
        registry.add_version(store.engine, "summary", template=text, actor="t")
    registry.set_active_version(store.engine, "summary", 1, actor="t", reason="first")
    exp = parse_experiment(EXP)
    done = promote_prompt(store.engine, exp, "v2/fast", actor="ann", reason="v2 wins: +12 points")
    assert (done.prompt, done.version) == ("summary", 2)
    assert registry.get_prompt(store.engine, "summary").active_version == 2  # type: ignore[union-attr]
    audit = list_audit(store.engine, object_type="prompt")
    assert (
        audit[0].actor == "ann" and audit[0].reason == "v2 wins: +12 points" and audit[0].action == "promote"
    )
    with pytest.raises(PromoteError, match="already the active version"):
        promote_prompt(store.engine, exp, "v2/fast", actor="ann", reason="again")
    with pytest.raises(PromoteError, match="inline prompt"):
        promote_prompt(store.engine, exp, "v3/fast", actor="ann", reason="x")
    inline = promote_prompt(
        store.engine, exp, "v3/fast", actor="ann", reason="short wins", prompt_name="short"
    )
    assert (inline.prompt, inline.version) == ("short", 1)
    assert registry.get_version(store.engine, "short").template == "Short: {{t}}"  # type: ignore[union-attr]


def test_canary_splits_the_baseline_target_on_the_route(store: Store) -> None:
    exp = parse_experiment(EXP)
    before = get_object(store.engine, "route", "default")
    done = start_canary(store.engine, exp, "v1/big", "default", weight=10, actor="ann", reason="try big")
    assert done.kind == "canary"
    after = get_object(store.engine, "route", "default")
    assert after is not None and before is not None
    assert after["rules"][0]["chain"] == [{"split": {"fast": 90, "big": 10}}, "big"]
    assert after["revision"] == before["revision"] + 1
    from app.core.routing import Split
    from app.gateway.state import load_state

    step = load_state(store.engine).routes["default"].rules[0].chain[0]  # what every gateway will load
    assert isinstance(step, Split) and dict(step.weights) == {"fast": 90, "big": 10}
    entry = list_audit(store.engine, object_type="route")[0]
    assert (entry.actor, entry.reason, entry.action) == ("ann", "try big", "update")
    with pytest.raises(PromoteError, match="same target"):
        start_canary(store.engine, exp, "v2/fast", "default", weight=10, actor="ann", reason="x")
    with pytest.raises(PromoteError, match="no route"):
        start_canary(store.engine, exp, "v1/big", "nope", weight=10, actor="ann", reason="x")


def test_canary_rules_adjust_an_existing_split() -> None:
    rules = [{"chain": [{"split": {"fast": 80, "big": 20}, "sticky": "user"}]}, {"chain": ["other"]}]
    out, n = canary_rules(rules, "fast", "new", 10)
    assert n == 1
    assert out[0]["chain"][0] == {"split": {"fast": 70, "big": 20, "new": 10}, "sticky": "user"}
    assert out[1] == rules[1]
