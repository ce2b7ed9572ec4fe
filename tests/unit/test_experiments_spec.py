"""Experiment files and checks: every mistake told with its file and line; every check grades as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.experiments.checks import judge_request, read_judgement, run_check
from app.experiments.schema import SchemaError, check_schema, validate
from app.experiments.spec import (
    Case,
    CheckSpec,
    ExperimentError,
    check_experiment,
    experiment_from_data,
    experiment_to_data,
    load_experiment,
    parse_experiment,
    render,
)

GOOD = """\
name: summary-v2-vs-v1
prompts:
  - id: v1
    prompt: support-summary@3
  - id: v2
    template: |
      Summarize the ticket in {{max_words}} words or fewer: {{ticket}}
targets: [fast]
baseline: v1
repeat: 2
tests:
  - vars: {ticket: "Printer on fire", max_words: 20}
    assert:
      - type: contains
        value: printer
      - type: max_latency_ms
        value: 3000
defaults:
  assert:
    - type: llm_judge
      rubric: "Is the summary faithful to the ticket? Score 1-5."
      target: strong
      pass_at: 4
gate:
  variant: v2
  not_worse_than: v1
  metric: pass_rate
  alpha: 0.05
"""


def test_the_documented_example_parses() -> None:
    exp = parse_experiment(GOOD, "x.yaml")
    assert [v.name for v in exp.variants] == ["v1", "v2"]
    v1 = exp.variant("v1").prompt
    assert (v1.registry_name, v1.registry_version, v1.template) == ("support-summary", 3, None)
    assert exp.repeat == 2 and exp.total == 4
    judge = exp.default_asserts[0]
    assert (judge.type, judge.target, judge.pass_at, judge.scale) == ("llm_judge", "strong", 4.0, (1.0, 5.0))
    assert exp.gate is not None and exp.gate.variant == "v2" and exp.gate.not_worse_than == "v1"
    again = experiment_from_data(experiment_to_data(exp))
    assert again.variants[1].prompt.template == exp.variants[1].prompt.template
    assert again.cases[0].asserts == tuple(
        CheckSpec(a.type, a.value, a.rubric, a.target, a.pass_at, a.scale, a.weight, a.case_sensitive)
        for a in exp.cases[0].asserts
    )


def test_several_targets_name_variants_prompt_slash_target() -> None:
    exp = parse_experiment(GOOD.replace("targets: [fast]", "targets: [fast, big]"))
    assert [v.name for v in exp.variants] == ["v1/fast", "v1/big", "v2/fast", "v2/big"]
    assert exp.baseline == "v1/fast"


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (
            ("    prompt: support-summary@3", "    prompt: support summary"),
            4,
            "must be a registry prompt as NAME@VERSION",
        ),
        (
            ("      - type: contains", "      - type: contians"),
            14,
            "unknown check type `contians` (did you mean `contains`?)",
        ),
        (("        value: 3000", "        value: soon"), 17, "value must be a number of 0 or more"),
        (("baseline: v1", "baseline: v3"), 9, "baseline `v3` is not a variant (v1, v2)"),
        (("      pass_at: 4", "      pass_at: 9"), 23, "pass_at must be within the scale 1-5"),
        (("repeat: 2", "repeat: 0"), 10, "repeat must be between 1 and 100"),
        (("  metric: pass_rate", "  metric: vibes"), 27, "gate: metric must be one of"),
        (("      target: strong\n", ""), 20, "needs a target"),
    ],
)
def test_mistakes_are_reported_with_their_line(change: tuple[str, str], line: int, message: str) -> None:
    text = GOOD.replace(*change)
    exp, problems = check_experiment(text, "exp.yaml")
    assert exp is None
    assert any(p.file == "exp.yaml" and p.line == line and message in p.message for p in problems), problems


def test_every_problem_at_once_and_no_experiment() -> None:
    text = GOOD.replace("repeat: 2", "repeat: 0").replace("baseline: v1", "baseline: nope")
    with pytest.raises(ExperimentError) as info:
        parse_experiment(text, "exp.yaml")
    assert len(info.value.problems) == 2
    assert str(info.value).startswith("exp.yaml:")


def test_a_missing_template_variable_points_at_the_case() -> None:
    text = GOOD.replace(
        'vars: {ticket: "Printer on fire", max_words: 20}', 'vars: {ticket: "Printer on fire"}'
    )
    _, problems = check_experiment(text, "exp.yaml")
    assert [(p.line, p.message) for p in problems] == [
        (12, "case 1 has no max_words (prompt `v2` uses {{max_words}})")
    ]


def test_not_yaml_and_keys_are_refused() -> None:
    _, problems = check_experiment("name: [unclosed", "e.yaml")
    assert problems[0].message.startswith("not valid YAML")
    _, problems = check_experiment(
        GOOD.replace("Printer on fire", "sk-proj-abcdefghijklmnopqrstuvwx"), "e.yaml"
    )
    assert any("looks like an API key" in p.message for p in problems)
    assert not any("abcdefghijkl" in p.message for p in problems)


def test_cases_from_jsonl_and_csv_with_expected_values(tmp_path: Path) -> None:
    (tmp_path / "cases.jsonl").write_text(
        '{"ticket": "a", "max_words": 5, "expected": "A"}\n\n'
        '{"vars": {"ticket": "b", "max_words": 5}, "expected": "B", "assert": [{"type": "equals"}]}\n',
        encoding="utf-8",
    )
    (tmp_path / "cases.csv").write_text('ticket,max_words,expected\na,5,A\n"b, c",6,B\n', encoding="utf-8")
    for name in ("cases.jsonl", "cases.csv"):
        body = (
            GOOD.split("tests:", maxsplit=1)[0]
            + f"tests: file://{name}\n"
            + "defaults:"
            + GOOD.split("defaults:")[1]
        )
        (tmp_path / "e.yaml").write_text(body, encoding="utf-8")
        exp = load_experiment(tmp_path / "e.yaml")
        assert [c.expected for c in exp.cases] == ["A", "B"]
        assert exp.cases[0].vars["ticket"] == "a"
        assert exp.cases[1].where.endswith(f"{name}:3")
    assert exp.cases[1].vars["ticket"] == "b, c"


def test_bad_case_files_say_which_line(tmp_path: Path) -> None:
    (tmp_path / "cases.jsonl").write_text(
        '{"ticket": "a", "max_words": 1}\n{"ticket": \n[1]\n', encoding="utf-8"
    )
    body = GOOD.split("tests:", maxsplit=1)[0] + "tests: file://cases.jsonl\n"
    _, problems = check_experiment(body, "e.yaml", base_dir=tmp_path)
    where = [(Path(p.file).name, p.line) for p in problems]
    assert ("cases.jsonl", 2) in where and ("cases.jsonl", 3) in where
    _, problems = check_experiment(
        GOOD.split("tests:", maxsplit=1)[0] + "tests: file://nope.csv\n", "e.yaml", base_dir=tmp_path
    )
    assert problems[0].line == 11 and "does not exist" in problems[0].message


def test_render_is_the_gateways() -> None:
    assert render("Hi {{ name }}, {{n}}!", {"name": "Ann", "n": [2]}) == "Hi Ann, [2]!"
    with pytest.raises(ValueError, match="missing"):
        render("{{missing}}", {})


CASE = Case(0, {"city": "Paris"}, expected="The capital is Paris.")


@pytest.mark.parametrize(
    ("check", "output", "passed"),
    [
        (CheckSpec("equals"), "The capital is Paris.", True),
        (CheckSpec("equals", case_sensitive=False), "the capital is paris.", True),
        (CheckSpec("equals", {"a": 1}), '{"a": 1}', True),
        (CheckSpec("contains", "{{city}}"), "It is Paris", True),
        (CheckSpec("contains", "paris"), "It is Paris", False),
        (CheckSpec("icontains", "paris"), "It is Paris", True),
        (CheckSpec("not_contains", "London"), "It is Paris", True),
        (CheckSpec("regex", r"^It is \w+$"), "It is Paris", True),
        (CheckSpec("is_json"), '```json\n{"a": 1}\n```', True),
        (CheckSpec("is_json"), "{a: 1}", False),
        (CheckSpec("json_schema", {"type": "object", "required": ["a"]}), '{"b": 1}', False),
        (CheckSpec("min_length", 3), "ab", False),
        (CheckSpec("max_length", 3), "abc", True),
        (CheckSpec("not_refusal"), "I'm sorry, but I can't help with that.", False),
        (CheckSpec("not_refusal"), "Sorry to hear that; here is the fix.", True),
    ],
)
def test_checks(check: CheckSpec, output: str, passed: bool) -> None:
    res = run_check(check, output, CASE, latency_ms=10, cost_usd=0.001)
    assert res.passed is passed
    assert (res.reason == "") is passed


def test_latency_and_cost_checks() -> None:
    assert run_check(CheckSpec("max_latency_ms", 100), "x", CASE, latency_ms=150, cost_usd=None).reason == (
        "150 ms is over 100 ms"
    )
    unknown = run_check(CheckSpec("max_cost_usd", 0.01), "x", CASE, latency_ms=1, cost_usd=None)
    assert not unknown.passed and "unknown" in unknown.reason
    assert run_check(CheckSpec("max_cost_usd", 0.01), "x", CASE, latency_ms=1, cost_usd=0.002).passed


def test_judge_prompt_and_answers() -> None:
    judge = CheckSpec("llm_judge", rubric="Does it name {{city}}?", target="strong", pass_at=4, scale=(1, 5))
    system, messages = judge_request(judge, CASE, "Where?", "Paris")
    assert "Does it name Paris?" in messages[0]["content"] and "from 1 to 5" in system
    assert "The capital is Paris." in messages[0]["content"]  # the expected answer helps the judge
    ok = read_judgement(judge, '{"reasoning": "names it", "score": 5}')
    assert (ok.passed, ok.score, ok.reason) == (True, 5.0, "names it")
    low = read_judgement(judge, "Reasoning: vague. Score: 3")
    assert (low.passed, low.score) == (False, 3.0)
    assert not read_judgement(judge, '{"score": 9}').passed
    assert "no score" in read_judgement(judge, "I like it").reason


def test_schema_subset() -> None:
    schema = {
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative"]},
            "n": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        },
        "required": ["label"],
        "additionalProperties": False,
    }
    check_schema(schema)
    assert validate({"label": "positive", "n": 3, "tags": ["a"]}, schema) == []
    problems = validate({"label": "meh", "n": -1, "tags": ["a", 2, "c"], "x": 1}, schema)
    assert len(problems) == 5
    with pytest.raises(SchemaError, match=r"\$ref"):
        check_schema({"$ref": "#/x"})
