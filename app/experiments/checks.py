"""Checks: grade one output against a case's assertions (config.md assertion types).

Every check but ``llm_judge`` is a pure function of the output, its latency and
cost, and the case (:func:`run_check`).  The judge is a model call the runner
makes; this module writes its prompt (:func:`judge_request`) and reads its
answer (:func:`read_judgement`), keeping the judge's reasoning for the store.
Values may name the case's variables (``value: "{{ticket}}"``); an
``equals``/``contains`` without a value compares with the case's ``expected``.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from app.experiments.schema import validate
from app.experiments.spec import Case, CheckSpec, render

# Refusal phrasings of the common model families (and the simulator's), matched near the start.
_REFUSAL = re.compile(
    r"^\W*(?:i(?:'m| am) (?:sorry|afraid|unable|not able)|i can(?:not|'t|\u2019t)|i won(?:'t|\u2019t)|i will not"
    r"|sorry,? (?:but )?i|as an ai\b|i(?:'m| am) not (?:able|allowed|comfortable)|unfortunately,? i can)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class CheckResult:
    type: str
    label: str
    passed: bool
    score: float | None = None  # llm_judge: the judge's score on its scale
    reason: str = ""  # why it failed; for llm_judge, the judge's reasoning

    def to_data(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "label": self.label,
            "passed": self.passed,
            "score": self.score,
            "reason": self.reason,
        }


def _value(check: CheckSpec, case: Case) -> Any:
    value = check.value if check.value is not None else case.expected
    if isinstance(value, str):
        try:
            return render(value, case.vars)
        except ValueError:
            return value  # braces that are not one of the case's variables stay as written
    return value


def _parse_json(output: str) -> Any:
    text = output.strip()
    fence = re.match(r"^```(?:json)?\s*\n(.*)\n```$", text, re.DOTALL)
    if fence:
        text = fence.group(1)
    return json.loads(text)


def is_refusal(output: str, refused: bool = False) -> bool:
    return refused or bool(_REFUSAL.search(output[:200]))


def run_check(
    check: CheckSpec,
    output: str,
    case: Case,
    *,
    latency_ms: float | None,
    cost_usd: float | None,
    refused: bool = False,
) -> CheckResult:
    """Grade ``output``; ``llm_judge`` is not graded here (see :func:`judge_request`)."""
    t = check.type
    label = check.label()
    v = _value(check, case)

    def result(passed: bool, reason: str) -> CheckResult:
        return CheckResult(t, label, passed, None, "" if passed else reason)

    if t == "equals":
        if isinstance(v, dict | list):
            try:
                return result(_parse_json(output) == v, "the output is not that JSON value")
            except ValueError:
                return result(False, "the output is not JSON")
        a, b = output.strip(), str(v).strip()
        if not check.case_sensitive:
            a, b = a.casefold(), b.casefold()
        return result(a == b, f"the output is not {_short(str(v))}")
    if t == "contains":
        return result(str(v) in output, f"{_short(str(v))} is not in the output")
    if t == "icontains":
        return result(str(v).casefold() in output.casefold(), f"{_short(str(v))} is not in the output")
    if t == "not_contains":
        return result(str(v) not in output, f"{_short(str(v))} is in the output")
    if t == "regex":
        return result(re.search(str(v), output) is not None, f"no match for /{_short(str(v))}/")
    if t == "is_json":
        try:
            _parse_json(output)
        except ValueError as exc:
            return result(False, f"not JSON: {exc}")
        return result(True, "")
    if t == "json_schema":
        try:
            data = _parse_json(output)
        except ValueError as exc:
            return result(False, f"not JSON: {exc}")
        schema = json.loads(v) if isinstance(v, str) else v
        problems = validate(data, schema)
        return result(not problems, "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""))
    if t == "max_latency_ms":
        if latency_ms is None:
            return result(False, "no latency measured")
        return result(latency_ms <= float(v), f"{latency_ms:.0f} ms is over {float(v):g} ms")
    if t == "max_cost_usd":
        if cost_usd is None:
            return result(False, "the cost is unknown (no price for the model)")
        return result(cost_usd <= float(v), f"${cost_usd:.6f} is over ${float(v):g}")
    if t == "min_length":
        return result(len(output) >= int(v), f"{len(output)} characters, fewer than {int(v)}")
    if t == "max_length":
        return result(len(output) <= int(v), f"{len(output)} characters, more than {int(v)}")
    if t == "not_refusal":
        return result(not is_refusal(output, refused), "the model refused")
    raise ValueError(f"{t} is graded by a judge call, not here")


def _short(text: str, n: int = 40) -> str:
    text = text.replace("\n", " ")
    return f"`{text[:n]}{'...' if len(text) > n else ''}`"


JUDGE_SYSTEM = (
    "You are grading an answer for an evaluation. Follow the rubric exactly. "
    "Reply with one JSON object and nothing else: "
    '{{"reasoning": "<one or two sentences>", "score": <a number from {lo:g} to {hi:g}>}}'
)


def judge_request(
    check: CheckSpec, case: Case, prompt_text: str, output: str
) -> tuple[str, list[dict[str, Any]]]:
    """The judge's system prompt and messages for one output."""
    lo, hi = check.scale
    rubric = check.rubric or ""
    with contextlib.suppress(ValueError):
        rubric = render(rubric, case.vars)
    parts = [
        f"Rubric: {rubric}",
        f"Score scale: {lo:g} (worst) to {hi:g} (best).",
        "",
        "The prompt the model was given:",
        "<<<",
        prompt_text,
        ">>>",
    ]
    if case.expected is not None:
        parts += ["", "The expected answer:", "<<<", str(case.expected), ">>>"]
    parts += ["", "The answer to grade:", "<<<", output, ">>>", "", "Grade it now (JSON only)."]
    return JUDGE_SYSTEM.format(lo=lo, hi=hi), [{"role": "user", "content": "\n".join(parts)}]


_SCORE = re.compile(r"(?i)\bscore\b\W{0,5}(-?\d+(?:\.\d+)?)")


def read_judgement(check: CheckSpec, text: str) -> CheckResult:
    """The judge's answer as a result: JSON ``{"score", "reasoning"}`` or, failing that, "score: N" in the text."""
    lo, hi = check.scale
    score: float | None = None
    reasoning = text.strip()
    obj: Any = None
    try:
        obj = _parse_json(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            try:
                obj = json.loads(text[start : end + 1])
            except ValueError:
                obj = None
    if isinstance(obj, dict):
        raw = obj.get("score", obj.get("rating"))
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            score = float(raw)
        elif isinstance(raw, str):
            try:
                score = float(raw)
            except ValueError:
                score = None
        r = obj.get("reasoning", obj.get("reason", obj.get("explanation")))
        if isinstance(r, str):
            reasoning = r
    if score is None:
        m = _SCORE.search(text)
        if m:
            score = float(m.group(1))
    label = check.label()
    if score is None:
        return CheckResult("llm_judge", label, False, None, f"the judge gave no score: {_short(text, 200)}")
    if not lo <= score <= hi:
        return CheckResult(
            "llm_judge",
            label,
            False,
            None,
            f"the judge's score {score:g} is outside {lo:g}-{hi:g}: {reasoning}",
        )
    pass_at = check.pass_at if check.pass_at is not None else (lo + hi) / 2
    return CheckResult("llm_judge", label, score >= pass_at, score, reasoning[:2000])
