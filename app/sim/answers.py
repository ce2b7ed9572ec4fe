"""What the simulated model says: rule answers, echoes, JSON, tool calls, and filler of a chosen length.

The order of precedence for one answer:

1. a scenario rule whose regex matches the prompt text (``answer``, ``json``,
   ``echo``, ``refusal``, ``tool_call``; named groups fill ``{name}``
   placeholders);
2. the ``[[sim:echo]]`` marker in the prompt: answer the prompt's variables —
   the first JSON object after the marker (or anywhere in the last user
   message) — as JSON, or else the last user message itself;
3. tools offered and not refused: call one (the tool named by ``tool_choice``,
   else the first tool whose name appears in the prompt, else the first),
   with arguments drawn from its JSON schema — unless the last message already
   carries a tool result, when the model answers in text;
4. otherwise filler sentences; ``[[sim:tokens=N]]`` asks for exactly N tokens,
   else the scenario's ``default_tokens`` distribution decides.

JSON mode (OpenAI ``response_format`` json_object/json_schema, Anthropic
``output_config.format``) always yields a JSON object: a schema is sampled
(filled from the prompt's variables where names match), otherwise the text is
wrapped as ``{"answer": ...}``.  Stop sequences cut the text; ``max_tokens``
truncates it (finish ``length``).  Token counts come from the real tokenizer.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from app.core import tokens as core_tokens
from app.sim.scenario import AnswerRule, Answers

ECHO_MARKER = "[[sim:echo]]"
_TOKENS_MARKER = re.compile(r"\[\[sim:tokens=(\d{1,6})\]\]")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

_SENTENCES = (
    "The request was processed and the result is ready for review.",
    "Latency stayed within the expected range during the last window.",
    "Here is a short summary of the main points you asked about.",
    "The service responded normally and no errors were recorded.",
    "Consider caching repeated prompts to reduce both cost and latency.",
    "A fallback model can keep the feature available during an outage.",
    "Token usage grows with the length of the conversation history.",
    "The answer depends on the context you provide in the prompt.",
    "Retries with jittered backoff avoid synchronized bursts of traffic.",
    "Each step in the pipeline reports its own timing and outcome.",
    "The budget for this feature is on track for the current month.",
    "In short, the approach is sound and the numbers support it.",
    "Streaming responses let the user see the first words sooner.",
    "Rate limits apply per minute to both requests and tokens.",
    "The evaluation compares both variants on the same inputs.",
    "This option trades a little accuracy for a large saving in cost.",
    "Monitoring the error rate by type makes incidents easier to triage.",
    "The configuration change took effect without a restart.",
    "A circuit breaker stops sending traffic to a failing dependency.",
    "The report lists each model with its requests, tokens and spend.",
    "Let me know if you would like more detail on any of these points.",
    "Overall, the system behaved as designed under the tested load.",
)
_WORDS = (
    "alpha",
    "amber",
    "cedar",
    "delta",
    "ember",
    "harbor",
    "maple",
    "nova",
    "orbit",
    "quartz",
    "river",
    "sierra",
)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Ask:
    """A chat request reduced to what decides the answer, whatever the provider."""

    model: str
    text: str  # system + all message text, for rules and markers
    last_user: str
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"  # auto | none | required | <tool name>
    answered_tool: bool = False  # the last message carries a tool result
    json_mode: bool = False
    json_schema: Mapping[str, Any] | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    preamble: bool = False  # say a few words before calling a tool (Claude does)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Answer:
    text: str | None
    text_tokens: tuple[int, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None
    finish: str = "stop"  # stop | length | stop_sequence | tool_calls | refusal
    stop_sequence: str | None = None
    output_tokens: int = 0
    rule: str | None = field(default=None, compare=False)  # what produced it, for the ledger


@cache
def encoding_for(model: str) -> Any:
    return core_tokens.get_encoding(core_tokens.encoding_name_for_model(model))


def encode(text: str, model: str) -> list[int]:
    return list(encoding_for(model).encode(text, disallowed_special=()))


def count(text: str, model: str) -> int:
    return len(encoding_for(model).encode(text, disallowed_special=()))


def token_pieces(tokens: Sequence[int], model: str) -> list[str]:
    """Split text into per-token pieces for streaming, never splitting a UTF-8 character."""
    enc = encoding_for(model)
    pieces: list[str] = []
    buf = b""
    for token in tokens:
        buf += enc.decode_single_token_bytes(token)
        try:
            pieces.append(buf.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        buf = b""
    if buf:
        pieces.append(buf.decode("utf-8", errors="replace"))
    return pieces


def text_pieces(text: str, model: str) -> list[str]:
    return token_pieces(encode(text, model), model)


# --- composing ------------------------------------------------------------------------------------------


def compose(ask: Ask, config: Answers, rng: random.Random, *, call_id: str) -> Answer:
    """The answer to ``ask``; ``rng`` makes it reproducible, ``call_id`` names a tool call."""
    rule, match = _first_rule(config.rules, ask)
    groups = {k: v for k, v in (match.groupdict() if match else {}).items() if v is not None}
    echo_vars = (
        _echo_vars(ask)
        if (rule is None and ECHO_MARKER in ask.text) or (rule and rule.kind == "echo")
        else None
    )

    if rule is not None and rule.kind == "refusal":
        text = _fill(rule.value, groups)
        return _finish_text(ask, text, finish="refusal", refusal=True, rule="refusal")

    tool = _tool_to_call(ask, rule)
    if tool is not None:
        return _tool_answer(
            ask, tool, rule=rule, groups=groups, echo_vars=echo_vars, rng=rng, call_id=call_id
        )

    if ask.json_mode or ask.json_schema is not None:
        obj = _json_answer(ask, rule, groups, echo_vars, rng)
        return _finish_text(ask, json.dumps(obj, ensure_ascii=False), rule=rule.kind if rule else "json")

    if rule is not None and rule.kind == "answer":
        return _finish_text(ask, _fill(rule.value, groups), rule="answer")
    if rule is not None and rule.kind == "json":
        return _finish_text(ask, json.dumps(_fill(rule.value, groups), ensure_ascii=False), rule="json")
    if echo_vars is not None:
        if isinstance(echo_vars, dict):
            return _finish_text(ask, json.dumps(echo_vars, ensure_ascii=False), rule="echo")
        return _finish_text(ask, echo_vars, rule="echo")
    return _finish_text(ask, None, rule="default", target=_target_tokens(ask, config, rng), rng=rng)


def _first_rule(rules: Sequence[AnswerRule], ask: Ask) -> tuple[AnswerRule | None, re.Match[str] | None]:
    for rule in rules:
        m = rule.matches(ask.text, ask.model)
        if m is not None:
            if rule.kind == "tool_call" and (not ask.tools or ask.tool_choice == "none" or ask.answered_tool):
                continue  # a tool call is only possible when tools are offered
            return rule, m
    return None, None


def _target_tokens(ask: Ask, config: Answers, rng: random.Random) -> int:
    m = _TOKENS_MARKER.search(ask.text)
    if m:
        return max(int(m.group(1)), 1)
    return max(round(config.default_tokens.sample(rng)), 1)


def _filler_tokens(model: str, target: int, rng: random.Random) -> list[int]:
    sentences = _sentence_tokens(model)
    out: list[int] = []
    first = True
    while len(out) < target:
        i = rng.randrange(len(sentences))
        out.extend(sentences[i][0] if first else sentences[i][1])
        first = False
    return out[:target]


@cache
def _sentence_tokens(model: str) -> tuple[tuple[list[int], list[int]], ...]:
    # Each sentence tokenized alone and with a leading space: the pre-tokenizer splits at " Word", so
    # joining these lists gives the same tokens as encoding the joined text.
    return tuple((encode(s, model), encode(" " + s, model)) for s in _SENTENCES)


def _finish_text(
    ask: Ask,
    text: str | None,
    *,
    finish: str = "stop",
    refusal: bool = False,
    rule: str,
    target: int | None = None,
    rng: random.Random | None = None,
) -> Answer:
    stop_sequence: str | None = None
    if text is None:
        assert target is not None and rng is not None
        toks = _filler_tokens(ask.model, target, rng)
        text = encoding_for(ask.model).decode(toks)
    if not refusal:
        text, stop_sequence = _apply_stop(text, ask.stop)
        if stop_sequence is not None:
            finish = "stop_sequence"
    toks = encode(text, ask.model)
    if ask.max_tokens is not None and len(toks) > ask.max_tokens:
        toks = toks[: ask.max_tokens]
        text = encoding_for(ask.model).decode(toks)
        finish, stop_sequence = "length", None
    if refusal:
        return Answer(None, tuple(toks), refusal=text, finish=finish, output_tokens=len(toks), rule=rule)
    return Answer(
        text, tuple(toks), finish=finish, stop_sequence=stop_sequence, output_tokens=len(toks), rule=rule
    )


def _apply_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    best: tuple[int, str] | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


# --- tools and JSON ------------------------------------------------------------------------------------


def _tool_to_call(ask: Ask, rule: AnswerRule | None) -> ToolSpec | None:
    if not ask.tools or ask.tool_choice == "none":
        return None
    by_name = {t.name: t for t in ask.tools}
    if rule is not None and rule.kind == "tool_call":
        return by_name.get(str(rule.value["name"]), ToolSpec(str(rule.value["name"]), {}))
    if ask.tool_choice in by_name:
        return by_name[ask.tool_choice]
    if ask.answered_tool and ask.tool_choice == "auto":
        return None
    if rule is not None and ask.tool_choice == "auto":
        return None  # a scripted text answer wins over an optional tool call
    for t in ask.tools:
        if t.name in ask.text:
            return t
    return ask.tools[0]


def _tool_answer(
    ask: Ask,
    tool: ToolSpec,
    *,
    rule: AnswerRule | None,
    groups: Mapping[str, str],
    echo_vars: dict[str, Any] | str | None,
    rng: random.Random,
    call_id: str,
) -> Answer:
    hints = dict(echo_vars) if isinstance(echo_vars, dict) else {}
    hints.update(groups)
    if rule is not None and rule.kind == "tool_call" and "arguments" in rule.value:
        args = _fill(rule.value["arguments"], groups)
    else:
        args = sample_schema(tool.schema or {"type": "object"}, rng, hints)
        if not isinstance(args, dict):
            args = {"value": args}
    arguments = json.dumps(args, ensure_ascii=False)
    preamble = f"I'll use the {tool.name} tool for this." if ask.preamble else None
    text_toks = encode(preamble, ask.model) if preamble else []
    out = len(text_toks) + count(tool.name, ask.model) + count(arguments, ask.model)
    return Answer(
        preamble,
        tuple(text_toks),
        tool_calls=(ToolCall(call_id, tool.name, arguments),),
        finish="tool_calls",
        output_tokens=out,
        rule="tool_call",
    )


def _json_answer(
    ask: Ask,
    rule: AnswerRule | None,
    groups: Mapping[str, str],
    echo_vars: dict[str, Any] | str | None,
    rng: random.Random,
) -> Any:
    hints = dict(echo_vars) if isinstance(echo_vars, dict) else {}
    hints.update(groups)
    if rule is not None and rule.kind == "json":
        value = _fill(rule.value, groups)
        return value if isinstance(value, dict) else {"answer": value}
    if ask.json_schema is not None:
        return sample_schema(ask.json_schema, rng, hints)
    if isinstance(echo_vars, dict):
        return echo_vars
    if rule is not None and rule.kind == "answer":
        return {"answer": _fill(rule.value, groups)}
    if isinstance(echo_vars, str):
        return {"answer": echo_vars}
    toks = _filler_tokens(ask.model, 16, rng)
    return {"answer": encoding_for(ask.model).decode(toks)}


def sample_schema(
    schema: Mapping[str, Any], rng: random.Random, hints: Mapping[str, Any], name: str = ""
) -> Any:
    """A value that satisfies the common JSON-schema keywords; ``hints`` fill properties by name."""
    if name in hints:
        return hints[name]
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], Mapping):
            return sample_schema(options[0], rng, hints, name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        return {
            str(k): sample_schema(v if isinstance(v, Mapping) else {}, rng, hints, str(k))
            for k, v in props.items()
        }
    if kind == "array":
        items = schema.get("items")
        n = max(int(schema.get("minItems", 1)), 1)
        return [sample_schema(items if isinstance(items, Mapping) else {}, rng, {}, "") for _ in range(n)]
    if kind == "integer":
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(lo, max(lo, hi))
    if kind == "number":
        flo, fhi = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 100.0))
        return round(rng.uniform(flo, max(flo, fhi)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date":
        return "2025-01-15"
    if fmt == "date-time":
        return "2025-01-15T09:30:00Z"
    if fmt == "email":
        return "ada@example.com"
    return _WORDS[rng.randrange(len(_WORDS))]


# --- echo and placeholders -----------------------------------------------------------------------------


def _echo_vars(ask: Ask) -> dict[str, Any] | str:
    after = ask.text.split(ECHO_MARKER, 1)[1] if ECHO_MARKER in ask.text else ""
    for source in (after, ask.last_user):
        found = first_json_object(source)
        if found is not None:
            return found
    return ask.last_user.replace(ECHO_MARKER, "").strip()


def first_json_object(text: str, *, max_tries: int = 20) -> dict[str, Any] | None:
    """The first ``{...}`` in ``text`` that parses as a JSON object."""
    decoder = json.JSONDecoder()
    pos = text.find("{")
    tries = 0
    while pos >= 0 and tries < max_tries:
        try:
            value, _ = decoder.raw_decode(text, pos)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        tries += 1
        pos = text.find("{", pos + 1)
    return None


def _fill(value: Any, groups: Mapping[str, str]) -> Any:
    """Replace ``{name}`` with the rule's named regex groups, inside strings, lists and mappings."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: groups.get(m.group(1), m.group(0)), value) if groups else value
    if isinstance(value, list):
        return [_fill(v, groups) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _fill(v, groups) for k, v in value.items()}
    return value
