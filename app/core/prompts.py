"""Prompt templates: ``{{variable}}`` substitution, the variables a template needs, and diffs.

Pure functions, shared by the gateway (rendering a request that names a
prompt), the registry (checking a new version) and the Prompts page (the
variables list, "Try it" and the diff between two versions).

Rendering rules (docs/architecture-delta.md, "Prompt registry"):

- ``{{name}}`` (spaces inside the braces allowed) is replaced by the variable's
  value: text as it is, anything else as JSON (``20``, ``true``, ``["a"]``).
  Names are letters, digits and ``_``, not starting with a digit.
- One pass: a value that itself holds ``{{x}}`` is not rendered again, so a
  caller's text can never pull in another variable.
- Every missing variable is named in one :class:`MissingVariables` error;
  extra variables are ignored (one set of variables can serve several versions).
- Anything else between braces (``{ "json": 1 }``, ``{{ not a name }}``) is
  left as written.
- Model parameters: the prompt version's are defaults, the request's explicit
  ones win; a request that sets any output-length key replaces the version's
  (``max_tokens``, ``max_output_tokens`` and ``max_completion_tokens`` are one
  setting).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: ``{{ name }}``: what the renderer substitutes.
VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
#: A prompt's name: also the ``NAME`` of ``x-controlroom-prompt: NAME@VERSION``.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}")
#: The output-length keys that mean one setting.
MAX_TOKEN_KEYS = ("max_tokens", "max_output_tokens", "max_completion_tokens")
#: Keys a prompt version's parameters may not set: they belong to the request, not the prompt.
RESERVED_PARAMS = frozenset(
    {"model", "messages", "stream", "stream_options", "system", "prompt", "prompt_vars"}
)


class PromptError(ValueError):
    """A prompt that cannot be used as asked (the message says which and why)."""


class MissingVariables(PromptError):
    """The template needs variables the request did not give."""

    def __init__(self, missing: Sequence[str], *, where: str = "the template") -> None:
        self.missing = tuple(missing)
        names = ", ".join(self.missing)
        plural = "s" if len(self.missing) > 1 else ""
        super().__init__(f"{where} needs the variable{plural} {names}, which the request did not give")


def check_name(name: str) -> str:
    """``name`` if it is a valid prompt name, else a :class:`PromptError` saying what is allowed."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PromptError(
            f"prompt name {name!r} is not valid: 1-128 letters, digits, '_', '.', '-' or '/', "
            "starting with a letter or digit (no '@': it separates the version in NAME@VERSION)"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"support-summary@3"`` -> ``("support-summary", 3)``; ``"support-summary"`` -> ``(name, None)``."""
    name, sep, version = ref.strip().partition("@")
    name = name.strip()
    check_name(name)
    if not sep:
        return name, None
    try:
        number = int(version.strip())
    except ValueError:
        number = 0
    if number < 1:
        raise PromptError(f"prompt reference {ref!r}: the version after '@' must be a whole number from 1")
    return name, number


def variables(*texts: str | None) -> list[str]:
    """The variables the texts use, in order of first appearance, each once."""
    seen: dict[str, None] = {}
    for text in texts:
        if text:
            for m in VARIABLE.finditer(text):
                seen.setdefault(m.group(1), None)
    return list(seen)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def render(template: str, values: Mapping[str, Any], *, where: str = "the template") -> str:
    """``template`` with every ``{{name}}`` replaced; :class:`MissingVariables` names all that are missing."""
    missing = [name for name in variables(template) if name not in values]
    if missing:
        raise MissingVariables(missing, where=where)
    return VARIABLE.sub(lambda m: _text(values[m.group(1)]), template)


class PromptBody(Protocol):
    """What a prompt version holds (``storage.queries.prompts.PromptVersion`` is one)."""

    @property
    def template(self) -> str: ...
    @property
    def system(self) -> str | None: ...
    @property
    def params(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Rendered:
    """A prompt version applied to a request: what goes to the provider."""

    system: str | None
    messages: list[dict[str, Any]]
    params: dict[str, Any]


def merge_params(prompt_params: Mapping[str, Any], request_params: Mapping[str, Any]) -> dict[str, Any]:
    """The version's parameters under the request's: the request's explicit ones win."""
    out = dict(prompt_params)
    if any(request_params.get(k) is not None for k in MAX_TOKEN_KEYS):
        for k in MAX_TOKEN_KEYS:
            out.pop(k, None)
    out.update({k: v for k, v in request_params.items() if v is not None})
    return out


def apply(
    body: PromptBody,
    values: Mapping[str, Any],
    *,
    messages: Sequence[Mapping[str, Any]] = (),
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    where: str = "the prompt",
) -> Rendered:
    """Render ``body`` for one request.

    The rendered system prompt comes first (then the caller's own ``system``,
    after a blank line); the rendered template is the first user message,
    followed by the caller's ``messages`` (a conversation that goes on from
    the prompt).  Missing variables of the system prompt and the template are
    reported together.
    """
    missing = [n for n in variables(body.system, body.template) if n not in values]
    if missing:
        raise MissingVariables(missing, where=where)
    rendered_system = render(body.system, values) if body.system else None
    joined = "\n\n".join(s for s in (rendered_system, system) if s) or None
    user = {"role": "user", "content": render(body.template, values)}
    return Rendered(joined, [user, *(dict(m) for m in messages)], merge_params(body.params, params or {}))


# --- checking and diffing versions -----------------------------------------------------------------


def check_params(params: Any) -> dict[str, Any]:
    """A version's model parameters: a JSON object without request-only keys; else a PromptError."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise PromptError('model parameters must be a JSON object, e.g. {"temperature": 0.2}')
    reserved = sorted(set(params) & RESERVED_PARAMS)
    if reserved:
        raise PromptError(
            f"model parameters cannot set {', '.join(reserved)}: those belong to the request, not the prompt"
        )
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"model parameters must be plain JSON values: {exc}") from None
    for key in ("temperature", "top_p"):
        value = params.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
            raise PromptError(f"{key} must be a number of at least 0")
    for key in MAX_TOKEN_KEYS:
        value = params.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise PromptError(f"{key} must be a whole number of at least 1")
    return dict(params)


def version_text(body: PromptBody) -> list[str]:
    """One version as the lines a diff compares: system prompt, template, parameters (sorted JSON)."""
    lines = ["# system"]
    lines += (body.system or "(none)").splitlines() or [""]
    lines += ["", "# template"]
    lines += body.template.splitlines() or [""]
    lines += ["", "# params"]
    lines += json.dumps(dict(body.params), indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    return lines


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One line of a unified diff: ``kind`` is ``+``, ``-``, `` `` (context), ``@`` (hunk) or ``h`` (file header)."""

    kind: str
    text: str


def diff(
    old: PromptBody, new: PromptBody, *, old_label: str = "old", new_label: str = "new", context: int = 3
) -> list[DiffLine]:
    """A unified diff between two versions (system, template and parameters); empty when they are equal."""
    out: list[DiffLine] = []
    lines = difflib.unified_diff(
        version_text(old), version_text(new), old_label, new_label, lineterm="", n=context
    )
    for i, line in enumerate(lines):
        if i < 2:  # "--- old" and "+++ new"
            out.append(DiffLine("h", line))
        elif line.startswith("@@"):
            out.append(DiffLine("@", line))
        else:
            out.append(DiffLine(line[:1] or " ", line[1:]))
    return out


def diff_text(old: PromptBody, new: PromptBody, *, old_label: str = "old", new_label: str = "new") -> str:
    """The unified diff as text (for export and logs)."""
    return "\n".join(
        d.text if d.kind in ("h", "@") else d.kind + d.text
        for d in diff(old, new, old_label=old_label, new_label=new_label)
    )
