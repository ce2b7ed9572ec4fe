"""The prompt renderer: substitution, missing variables, parameter merging, references and diffs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from app.core import prompts as p


@dataclass
class Body:
    template: str
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def test_variables_in_order_of_first_use_each_once() -> None:
    assert p.variables("Summarize {{ticket}} in {{ max_words }} words; {{ticket}} again") == [
        "ticket",
        "max_words",
    ]
    assert p.variables("You are {{tone}}.", "Hi {{name}}, {{tone}}") == ["tone", "name"]
    assert p.variables(None, "") == []


def test_render_substitutes_text_as_is_and_other_values_as_json() -> None:
    out = p.render(
        "{{a}}|{{n}}|{{b}}|{{xs}}|{{o}}", {"a": "x y", "n": 20, "b": True, "xs": ["q"], "o": {"k": 1}}
    )
    assert out == 'x y|20|true|["q"]|{"k": 1}'


def test_render_is_one_pass_so_values_cannot_pull_in_variables() -> None:
    assert p.render("{{a}} {{b}}", {"a": "{{b}}", "b": "B"}) == "{{b}} B"


def test_render_leaves_json_braces_and_non_names_alone() -> None:
    template = 'Answer as {"summary": "..."} for {{ticket}}; keep {{ 1bad }} and {single}'
    assert (
        p.render(template, {"ticket": "T"})
        == 'Answer as {"summary": "..."} for T; keep {{ 1bad }} and {single}'
    )


def test_missing_variables_are_all_named() -> None:
    with pytest.raises(p.MissingVariables) as info:
        p.render("{{ticket}} {{max_words}} {{tone}}", {"tone": "calm"})
    assert info.value.missing == ("ticket", "max_words")
    assert "ticket, max_words" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_extra_variables_are_ignored() -> None:
    assert p.render("Hi {{name}}", {"name": "Ana", "unused": 1}) == "Hi Ana"


def test_apply_builds_system_then_user_then_the_callers_conversation() -> None:
    body = Body("Summarize: {{ticket}}", "You are {{tone}}.", {"temperature": 0.2, "max_tokens": 50})
    out = p.apply(
        body,
        {"ticket": "Printer on fire", "tone": "terse"},
        messages=[{"role": "assistant", "content": "ok"}],
        system="Answer in French.",
        params={"temperature": 0.9},
    )
    assert out.system == "You are terse.\n\nAnswer in French."
    assert out.messages == [
        {"role": "user", "content": "Summarize: Printer on fire"},
        {"role": "assistant", "content": "ok"},
    ]
    assert out.params == {"temperature": 0.9, "max_tokens": 50}


def test_apply_reports_missing_variables_of_system_and_template_together() -> None:
    with pytest.raises(p.MissingVariables) as info:
        p.apply(Body("{{ticket}}", "You are {{tone}}."), {}, where="prompt support@2")
    assert info.value.missing == ("tone", "ticket")
    assert str(info.value).startswith("prompt support@2 needs the variables tone, ticket")


def test_request_output_length_replaces_the_versions_under_any_alias() -> None:
    merged = p.merge_params({"max_tokens": 50, "temperature": 0.1}, {"max_output_tokens": 7, "top_p": None})
    assert merged == {"temperature": 0.1, "max_output_tokens": 7}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("support-summary", ("support-summary", None)),
        ("support-summary@3", ("support-summary", 3)),
        (" a/b.c @ 12 ", ("a/b.c", 12)),
    ],
)
def test_parse_ref(ref: str, expected: tuple[str, int | None]) -> None:
    assert p.parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["", "@3", "x@", "x@0", "x@two", "x y", "-x"])
def test_parse_ref_refuses_bad_references(ref: str) -> None:
    with pytest.raises(p.PromptError):
        p.parse_ref(ref)


def test_check_params_refuses_request_only_keys_and_bad_values() -> None:
    assert p.check_params(None) == {}
    assert p.check_params({"temperature": 0, "max_tokens": 10, "response_format": {"type": "json_object"}})
    with pytest.raises(p.PromptError, match="model, stream"):
        p.check_params({"model": "x", "stream": True})
    with pytest.raises(p.PromptError, match="temperature"):
        p.check_params({"temperature": "hot"})
    with pytest.raises(p.PromptError, match="max_tokens"):
        p.check_params({"max_tokens": 0})
    with pytest.raises(p.PromptError, match="JSON object"):
        p.check_params([1])
    with pytest.raises(p.PromptError, match="plain JSON"):
        p.check_params({"x": float("nan")})


def test_diff_marks_changed_lines_in_system_template_and_params() -> None:
    old = Body("Summarize: {{ticket}}\nBe brief.", "You are terse.", {"temperature": 0.2})
    new = Body(
        "Summarize in {{max_words}} words: {{ticket}}\nBe brief.", "You are terse.", {"temperature": 0.0}
    )
    lines = p.diff(old, new, old_label="s v1", new_label="s v2")
    assert [d.text for d in lines[:2]] == ["--- s v1", "+++ s v2"]
    assert p.DiffLine("-", "Summarize: {{ticket}}") in lines
    assert p.DiffLine("+", "Summarize in {{max_words}} words: {{ticket}}") in lines
    assert p.DiffLine("-", '  "temperature": 0.2') in lines
    assert p.DiffLine("+", '  "temperature": 0.0') in lines
    assert p.DiffLine(" ", "Be brief.") in lines
    assert any(d.kind == "@" for d in lines)
    text = p.diff_text(old, new)
    assert "\n-Summarize: {{ticket}}\n" in text and text.startswith("--- old\n+++ new\n@@")


def test_diff_of_equal_versions_is_empty() -> None:
    body = Body("x", None, {})
    assert p.diff(body, Body("x", None, {})) == []
