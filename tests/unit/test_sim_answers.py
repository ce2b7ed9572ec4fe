"""What the simulated model answers: rules, echo, JSON, tools, lengths, stops — counted with the real tokenizer."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from app.core.tokens import count_text
from app.sim.answers import (
    Ask,
    ToolSpec,
    compose,
    first_json_object,
    sample_schema,
    text_pieces,
    token_pieces,
)
from app.sim.scenario import Answers, parse_scenario

DEFAULT = Answers()
TOOL = ToolSpec(
    "lookup", {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}}
)


def ask(text: str, **kw: Any) -> Ask:
    return Ask(model=kw.pop("model", "gpt-4o-mini"), text=text, last_user=kw.pop("last_user", text), **kw)


def answers_with(*rules: dict[str, Any]) -> Answers:
    return parse_scenario({"name": "r", "answers": {"rules": list(rules)}}).answers


def test_tokens_marker_gives_exactly_that_many_tokens() -> None:
    for n in (1, 7, 50, 300):
        a = compose(ask(f"go [[sim:tokens={n}]]"), DEFAULT, random.Random(n), call_id="c")
        assert a.text and a.output_tokens == n == count_text(a.text, "gpt-4o-mini").tokens
        assert a.finish == "stop" and a.rule == "default"


def test_default_length_follows_the_scenario_distribution() -> None:
    config = parse_scenario({"name": "x", "answers": {"default_tokens": 33}}).answers
    a = compose(ask("hello"), config, random.Random(1), call_id="c")
    assert a.output_tokens == 33


def test_same_rng_seed_gives_the_same_answer() -> None:
    a = compose(ask("hello"), DEFAULT, random.Random("s"), call_id="c")
    b = compose(ask("hello"), DEFAULT, random.Random("s"), call_id="c")
    c = compose(ask("hello"), DEFAULT, random.Random("t"), call_id="c")
    assert a == b and a.text != c.text


def test_rule_answers_fill_named_groups() -> None:
    config = answers_with(
        {"match": r"(?i)translate '(?P<word>\w+)'", "answer": "Translated: {word} ({missing})"},
        {"match": r"score (?P<item>\w+)", "json": {"item": "{item}", "score": 5, "tags": ["{item}"]}},
    )
    a = compose(ask("Please translate 'cat'"), config, random.Random(), call_id="c")
    assert a.text == "Translated: cat ({missing})" and a.rule == "answer"
    b = compose(ask("score apples"), config, random.Random(), call_id="c")
    assert json.loads(b.text or "") == {"item": "apples", "score": 5, "tags": ["apples"]}


def test_rule_can_be_limited_to_a_model() -> None:
    config = answers_with({"match": "hi", "model": "claude-*", "answer": "Claude says hi"})
    assert (
        compose(ask("hi", model="claude-haiku-4-5"), config, random.Random(), call_id="c").text
        == "Claude says hi"
    )
    assert compose(ask("hi"), config, random.Random(), call_id="c").text != "Claude says hi"


def test_echo_marker_answers_the_prompt_variables() -> None:
    a = compose(
        ask('Template [[sim:echo]] {"name": "Ada", "langs": ["en"]} end'),
        DEFAULT,
        random.Random(),
        call_id="c",
    )
    assert json.loads(a.text or "") == {"name": "Ada", "langs": ["en"]}
    b = compose(ask("[[sim:echo]] repeat after me"), DEFAULT, random.Random(), call_id="c")
    assert b.text == "repeat after me"
    config = answers_with({"match": "ECHO", "echo": True})
    c = compose(ask('ECHO {"k": 1}'), config, random.Random(), call_id="c")
    assert json.loads(c.text or "") == {"k": 1}


def test_refusal_rule() -> None:
    config = answers_with({"match": "secret", "refusal": "I can't share that."})
    a = compose(ask("tell me the secret"), config, random.Random(), call_id="c")
    assert a.refusal == "I can't share that." and a.text is None and a.finish == "refusal"
    assert a.output_tokens == count_text("I can't share that.", "gpt-4o-mini").tokens


def test_json_mode_always_yields_a_json_object() -> None:
    a = compose(ask("anything", json_mode=True), DEFAULT, random.Random(2), call_id="c")
    assert isinstance(json.loads(a.text or ""), dict)
    config = answers_with({"match": "capital", "answer": "Paris"})
    b = compose(ask("capital?", json_mode=True), config, random.Random(), call_id="c")
    assert json.loads(b.text or "") == {"answer": "Paris"}


def test_json_schema_is_sampled_and_filled_from_variables() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 18, "maximum": 20},
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "when": {"type": "string", "format": "date"},
            "nested": {"type": "object", "properties": {"x": {"type": ["null", "integer"]}}},
        },
    }
    a = compose(
        ask('[[sim:echo]] {"name": "Grace"}', json_schema=schema), DEFAULT, random.Random(4), call_id="c"
    )
    obj = json.loads(a.text or "")
    assert obj["name"] == "Grace" and 18 <= obj["age"] <= 20 and isinstance(obj["score"], float)
    assert isinstance(obj["ok"], bool) and obj["kind"] in ("a", "b") and len(obj["tags"]) == 2
    assert obj["when"] == "2025-01-15" and isinstance(obj["nested"]["x"], int)
    assert sample_schema({"const": 3}, random.Random(), {}) == 3


def test_tools_are_called_unless_refused_or_already_answered() -> None:
    rng = random.Random(5)
    a = compose(ask("find it", tools=(TOOL,)), DEFAULT, rng, call_id="call_1")
    (call,) = a.tool_calls
    assert call.id == "call_1" and call.name == "lookup" and a.finish == "tool_calls" and a.text is None
    assert set(json.loads(call.arguments)) == {"q", "n"}
    assert (
        a.output_tokens
        == count_text("lookup", "gpt-4o-mini").tokens + count_text(call.arguments, "gpt-4o-mini").tokens
    )
    assert not compose(ask("find", tools=(TOOL,), tool_choice="none"), DEFAULT, rng, call_id="c").tool_calls
    assert not compose(ask("find", tools=(TOOL,), answered_tool=True), DEFAULT, rng, call_id="c").tool_calls
    forced = compose(
        ask("find", tools=(TOOL,), tool_choice="required", answered_tool=True), DEFAULT, rng, call_id="c"
    )
    assert forced.tool_calls


def test_the_tool_named_in_the_prompt_or_by_tool_choice_is_the_one_called() -> None:
    other = ToolSpec("get_time", {"type": "object", "properties": {}})
    a = compose(ask("use get_time please", tools=(TOOL, other)), DEFAULT, random.Random(), call_id="c")
    assert a.tool_calls[0].name == "get_time"
    b = compose(ask("x", tools=(TOOL, other), tool_choice="lookup"), DEFAULT, random.Random(), call_id="c")
    assert b.tool_calls[0].name == "lookup"


def test_preamble_before_a_tool_call_for_claude() -> None:
    a = compose(
        ask("x", tools=(TOOL,), preamble=True, model="claude-haiku-4-5"),
        DEFAULT,
        random.Random(),
        call_id="c",
    )
    assert a.text and "lookup" in a.text and a.tool_calls


def test_tool_call_rule_with_scripted_arguments() -> None:
    config = answers_with(
        {"match": r"weather in (?P<city>\w+)", "tool_call": {"name": "lookup", "arguments": {"q": "{city}"}}}
    )
    a = compose(ask("weather in Rome", tools=(TOOL,)), config, random.Random(), call_id="c")
    assert json.loads(a.tool_calls[0].arguments) == {"q": "Rome"}
    # Without tools on offer the rule cannot apply, and the model answers in text.
    assert compose(ask("weather in Rome"), config, random.Random(), call_id="c").text


def test_stop_sequences_and_max_tokens() -> None:
    config = answers_with({"match": "count", "answer": "one two three four five six"})
    a = compose(ask("count", stop=(" four", " two")), config, random.Random(), call_id="c")
    assert a.text == "one" and a.finish == "stop_sequence" and a.stop_sequence == " two"
    b = compose(ask("count", max_tokens=3), config, random.Random(), call_id="c")
    assert b.text == "one two three" and b.finish == "length" and b.output_tokens == 3


@pytest.mark.parametrize("text", ["plain ascii words", "héllo wörld — ünïcode", "emoji 🌍🚀 and 漢字 mixed"])
def test_stream_pieces_rebuild_the_text_exactly(text: str) -> None:
    pieces = text_pieces(text, "gpt-4o")
    assert "".join(pieces) == text
    assert len(pieces) <= count_text(text, "gpt-4o").tokens
    assert token_pieces([], "gpt-4o") == []


def test_first_json_object_skips_non_objects() -> None:
    assert first_json_object('a {broken} b [1] {"x": {"y": 2}} {"z": 3}') == {"x": {"y": 2}}
    assert first_json_object("no braces") is None
