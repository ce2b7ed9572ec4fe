"""Experiment files (config.md, "A/B experiment files"): parse, validate whole, report FILE:LINE.

Close to promptfoo's shape::

    name: summary-v2-vs-v1
    prompts:
      - {id: v1, prompt: support-summary@3}        # a registry prompt at a version (or @active)
      - {id: v2, template: "Summarize {{ticket}}", system: "...", params: {temperature: 0}}
    targets: [fast]                  # each prompt x each target is a variant
    baseline: v1
    repeat: 1
    concurrency: 8                   # requests in flight at most (rate limits still apply)
    tests: file://cases.jsonl        # or .csv, or an inline list of {vars, assert, expected}
    defaults: {assert: [...], params: {...}}
    gate: {variant: v2, not_worse_than: v1, metric: pass_rate, alpha: 0.05}

Every problem is reported with the file and line it is on (the YAML node's mark,
the JSONL line, the CSV row), like :mod:`app.core.config`; a file with any error
gives no experiment.  Pure: no store, no network.  Registry prompts are resolved
by the runner (:func:`app.experiments.runner.resolve_prompts`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.core.config import ConfigProblem, _Parser  # the same FILE:LINE reporting as control configs
from app.core.prompts import render as core_render
from app.core.prompts import variables

CHECK_TYPES: tuple[str, ...] = (
    "equals",
    "contains",
    "icontains",
    "not_contains",
    "regex",
    "is_json",
    "json_schema",
    "max_latency_ms",
    "max_cost_usd",
    "min_length",
    "max_length",
    "not_refusal",
    "llm_judge",
)
# Checks that need a value; the others take none (or, for equals/contains, the case's expected value).
_NEEDS_VALUE = {"regex", "json_schema", "max_latency_ms", "max_cost_usd", "min_length", "max_length"}
_NUMERIC = {"max_latency_ms", "max_cost_usd", "min_length", "max_length"}
_EXPECTED_FALLBACK = {"equals", "contains", "icontains", "not_contains"}
GATE_METRICS = ("pass_rate", "score", "latency_ms", "cost_usd")

_TOP = (
    "name",
    "description",
    "prompts",
    "targets",
    "baseline",
    "repeat",
    "concurrency",
    "tests",
    "defaults",
    "gate",
)
_PROMPT = ("id", "prompt", "template", "system", "params", "label")
_CASE = ("vars", "assert", "expected", "description")
# No `weight`: a case passes when every check passes, so a weight would change nothing (refused, not ignored).
_CHECK = ("type", "value", "rubric", "target", "pass_at", "scale", "case_sensitive")
_DEFAULTS = ("assert", "params")
_GATE = ("variant", "not_worse_than", "metric", "alpha", "margin")
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127})@(?P<version>[1-9]\d*|active)$")
MAX_CASES = 100_000


class ExperimentError(ValueError):
    """An experiment file that does not validate; ``problems`` lists every error as FILE:LINE."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """One prompt of the experiment: a registry reference or an inline template."""

    id: str
    template: str | None = None  # inline text; None for a registry prompt until resolved
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    registry_name: str | None = None
    registry_version: int | None = None  # None: the active version
    line: int = 0
    # A registry version's own system prompt and parameters, once resolved (the file's are above).
    body_system: str | None = None
    body_params: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str | None:
        if self.registry_name is None:
            return None
        return (
            f"{self.registry_name}@{self.registry_version if self.registry_version is not None else 'active'}"
        )


@dataclass(frozen=True, slots=True)
class CheckSpec:
    type: str
    value: Any = None
    rubric: str | None = None
    target: str | None = None  # llm_judge: the judge target
    pass_at: float | None = None  # llm_judge: the lowest passing score
    scale: tuple[float, float] = (1.0, 5.0)  # llm_judge: lowest and highest score
    weight: float = 1.0
    case_sensitive: bool = True  # equals
    line: int = 0

    def label(self) -> str:
        if self.type == "llm_judge":
            return "llm_judge"
        if self.value is None or isinstance(self.value, dict | list):
            return self.type
        text = str(self.value)
        return f"{self.type} {text[:30]}{'...' if len(text) > 30 else ''}"


@dataclass(frozen=True, slots=True)
class Case:
    index: int
    vars: dict[str, Any]
    asserts: tuple[CheckSpec, ...] = ()
    expected: Any = None
    description: str | None = None
    where: str = ""  # FILE:LINE, for messages


@dataclass(frozen=True, slots=True)
class Gate:
    variant: str
    not_worse_than: str
    metric: str = "pass_rate"
    alpha: float = 0.05
    margin: float = 0.0  # how much worse still counts as "not worse" (points for pass_rate, in metric units)


@dataclass(frozen=True, slots=True)
class Variant:
    """A prompt on a target: what the runner calls and the analysis compares."""

    name: str
    prompt: PromptSpec
    target: str


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    prompts: tuple[PromptSpec, ...]
    targets: tuple[str, ...]
    cases: tuple[Case, ...]
    baseline: str  # a variant name
    repeat: int = 1
    concurrency: int = 8
    default_asserts: tuple[CheckSpec, ...] = ()
    default_params: dict[str, Any] = field(default_factory=dict)
    gate: Gate | None = None
    description: str = ""
    source: str = ""  # the file it came from

    @property
    def variants(self) -> tuple[Variant, ...]:
        return tuple(
            Variant(variant_name(p.id, t, len(self.prompts), len(self.targets)), p, t)
            for p in self.prompts
            for t in self.targets
        )

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def checks_for(self, case: Case) -> tuple[CheckSpec, ...]:
        return case.asserts + self.default_asserts

    @property
    def total(self) -> int:
        """Calls the run makes (judge calls not counted): variants x cases x repetitions."""
        return len(self.variants) * len(self.cases) * self.repeat

    def with_prompts(self, prompts: tuple[PromptSpec, ...]) -> Experiment:
        return Experiment(
            self.name,
            prompts,
            self.targets,
            self.cases,
            self.baseline,
            self.repeat,
            self.concurrency,
            self.default_asserts,
            self.default_params,
            self.gate,
            self.description,
            self.source,
        )

    def with_cases(self, cases: tuple[Case, ...]) -> Experiment:
        return Experiment(
            self.name,
            self.prompts,
            self.targets,
            tuple(
                Case(i, c.vars, c.asserts, c.expected, c.description, c.where) for i, c in enumerate(cases)
            ),
            self.baseline,
            self.repeat,
            self.concurrency,
            self.default_asserts,
            self.default_params,
            self.gate,
            self.description,
            self.source,
        )


def variant_name(prompt_id: str, target: str, n_prompts: int, n_targets: int) -> str:
    """``v2`` with one target, ``fast`` with one prompt (and several targets), else ``v2/fast``."""
    if n_targets == 1:
        return prompt_id
    if n_prompts == 1:
        return target
    return f"{prompt_id}/{target}"


def template_vars(template: str) -> list[str]:
    return variables(template)


def render(template: str, values: dict[str, Any]) -> str:
    """``{{name}}`` replaced the way the gateway does it (:func:`app.core.prompts.render`); a missing
    variable raises :class:`app.core.prompts.MissingVariables` (a ValueError)."""
    return core_render(template, values)


# -- parsing --------------------------------------------------------------------------------------


class _ExperimentParser(_Parser):
    def __init__(self, filename: str, base_dir: Path | None) -> None:
        super().__init__(filename)
        self.base_dir = base_dir

    def err_at(self, where: str, line: int, message: str) -> None:
        self.errors.append(ConfigProblem(where, line, message))

    def prompt(self, node: Node, i: int) -> PromptSpec | None:
        what = f"prompts[{i}]"
        if isinstance(node, ScalarNode):  # a bare string: a registry reference or inline text
            text = self.text(node, what)
            if text is None:
                return None
            ref = _REF.match(text.strip())
            if ref:
                return self._registry(node, f"p{i + 1}", ref, {}, None)
            return PromptSpec(f"p{i + 1}", template=text, line=_line(node))
        m = self.mapping(node, what, _PROMPT)
        if m is None:
            return None
        pid = self.text(m["id"][1], f"{what}: id") if "id" in m else f"p{i + 1}"
        if pid is None:
            return None
        what = f"prompt `{pid}`"
        params: dict[str, Any] = {}
        if "params" in m:
            raw = self.plain(m["params"][1])
            if not isinstance(raw, dict):
                self.err(m["params"][1], f"{what}: params must be a mapping (temperature, max_tokens, ...)")
            else:
                params = raw
        system = self.text(m["system"][1], f"{what}: system", optional=True) if "system" in m else None
        if ("prompt" in m) == ("template" in m):
            self.err(
                node,
                f"{what}: give either prompt (a registry prompt, NAME@VERSION) or template (inline text)",
            )
            return None
        if "prompt" in m:
            ref_text = self.text(m["prompt"][1], f"{what}: prompt")
            if ref_text is None:
                return None
            mm = _REF.match(ref_text.strip())
            if mm is None:
                self.err(
                    m["prompt"][1],
                    f"{what}: prompt must be a registry prompt as NAME@VERSION (support-summary@3, or @active); "
                    "put inline text under template",
                )
                return None
            return self._registry(node, pid, mm, params, system)
        template = self.text(m["template"][1], f"{what}: template")
        if template is None:
            return None
        return PromptSpec(pid, template=template, system=system, params=params, line=_line(node))

    def _registry(
        self, node: Node, pid: str, m: re.Match[str], params: dict[str, Any], system: str | None
    ) -> PromptSpec:
        v = m.group("version")
        version = int(v) if v.isdigit() else None
        return PromptSpec(
            pid,
            template=None,
            system=system,
            params=params,
            registry_name=m.group("name"),
            registry_version=version,
            line=_line(node),
        )

    def plain(self, node: Node) -> Any:
        """A node as plain Python data (mappings, lists, scalars)."""
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            return [self.plain(n) for n in node.value]
        if isinstance(node, MappingNode):
            return {str(self.scalar(k)): self.plain(v) for k, v in node.value}
        return None

    def checks(self, node: Node, what: str) -> tuple[CheckSpec, ...]:
        items = self.seq(node, what)
        if items is None:
            return ()
        out = [self.check(n, f"{what}[{j}]") for j, n in enumerate(items)]
        return tuple(c for c in out if c is not None)

    def check(self, node: Node, what: str) -> CheckSpec | None:
        m = self.mapping(node, what, _CHECK)
        if m is None:
            return None
        if "type" not in m:
            self.err(node, f"{what}: needs a type ({', '.join(CHECK_TYPES)})")
            return None
        ctype = self.text(m["type"][1], f"{what}: type")
        if ctype is None:
            return None
        if ctype not in CHECK_TYPES:
            import difflib

            close = difflib.get_close_matches(ctype, CHECK_TYPES, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else f" (known: {', '.join(CHECK_TYPES)})"
            self.err(m["type"][1], f"{what}: unknown check type `{ctype}`{hint}")
            return None
        what = f"{what} ({ctype})"
        value = self.plain(m["value"][1]) if "value" in m else None
        vnode = m["value"][1] if "value" in m else node
        if ctype in _NEEDS_VALUE and value is None:
            self.err(node, f"{what}: needs a value")
            return None
        if (
            ctype in _NUMERIC
            and value is not None
            and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            )
        ):
            self.err(vnode, f"{what}: value must be a number of 0 or more")
            return None
        if ctype == "regex" and value is not None:
            try:
                re.compile(str(value))
            except re.error as exc:
                self.err(vnode, f"{what}: not a valid regular expression: {exc}")
                return None
        if ctype == "json_schema" and value is not None:
            from app.experiments.schema import SchemaError, check_schema

            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    self.err(vnode, f"{what}: value must be a JSON schema (a mapping, or JSON text)")
                    return None
            try:
                check_schema(value)
            except SchemaError as exc:
                self.err(vnode, f"{what}: {exc}")
                return None
        kwargs: dict[str, Any] = {}
        if "case_sensitive" in m:
            b = self.boolean(m["case_sensitive"][1], f"{what}: case_sensitive")
            if b is not None:
                kwargs["case_sensitive"] = b
        if ctype == "llm_judge":
            rubric = self.text(m["rubric"][1], f"{what}: rubric") if "rubric" in m else None
            target = self.text(m["target"][1], f"{what}: target") if "target" in m else None
            if rubric is None and "rubric" not in m:
                self.err(node, f"{what}: needs a rubric (what a good answer is, and how to score it)")
            if target is None and "target" not in m:
                self.err(node, f"{what}: needs a target (the model that judges)")
            scale = (1.0, 5.0)
            if "scale" in m:
                raw = self.plain(m["scale"][1])
                if (
                    isinstance(raw, list)
                    and len(raw) == 2
                    and all(isinstance(x, int | float) and not isinstance(x, bool) for x in raw)
                    and raw[0] < raw[1]
                ):
                    scale = (float(raw[0]), float(raw[1]))
                else:
                    self.err(m["scale"][1], f"{what}: scale must be [lowest, highest], e.g. [1, 5]")
            pass_at = None
            if "pass_at" in m:
                pass_at = self.number(m["pass_at"][1], f"{what}: pass_at")
                if pass_at is not None and not scale[0] <= pass_at <= scale[1]:
                    self.err(
                        m["pass_at"][1], f"{what}: pass_at must be within the scale {scale[0]:g}-{scale[1]:g}"
                    )
            if rubric is None or target is None:
                return None
            return CheckSpec(
                ctype,
                value,
                rubric=rubric,
                target=target,
                pass_at=pass_at if pass_at is not None else (scale[0] + scale[1]) / 2,
                scale=scale,
                line=_line(node),
                **kwargs,
            )
        for key in ("rubric", "target", "pass_at", "scale"):
            if key in m:
                self.err(m[key][0], f"{what}: {key} is only for llm_judge")
        return CheckSpec(ctype, value, line=_line(node), **kwargs)

    def inline_cases(self, node: Node) -> list[Case]:
        items = self.seq(node, "tests")
        if items is None:
            return []
        cases: list[Case] = []
        for j, item in enumerate(items):
            what = f"tests[{j}]"
            m = self.mapping(item, what, _CASE)
            if m is None:
                continue
            vars_: dict[str, Any] = {}
            if "vars" in m:
                raw = self.plain(m["vars"][1])
                if not isinstance(raw, dict):
                    self.err(m["vars"][1], f"{what}: vars must be a mapping of variable: value")
                    continue
                vars_ = raw
            asserts = self.checks(m["assert"][1], f"{what}: assert") if "assert" in m else ()
            expected = self.plain(m["expected"][1]) if "expected" in m else None
            desc = (
                self.text(m["description"][1], f"{what}: description", optional=True)
                if "description" in m
                else None
            )
            cases.append(Case(len(cases), vars_, asserts, expected, desc, f"{self.file}:{_line(item)}"))
        return cases

    def file_cases(self, node: Node, ref: str) -> list[Case]:
        rel = ref[len("file://") :]
        path = Path(rel)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        try:
            data = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            self.err(node, f"tests: {rel} does not exist (looked for {path})")
            return []
        except OSError as exc:
            self.err(node, f"tests: cannot read {rel}: {exc.strerror or exc}")
            return []
        except UnicodeDecodeError:
            self.err(node, f"tests: {rel} is not UTF-8 text")
            return []
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson", ".json"):
            cases, problems = parse_jsonl_cases(data, str(path))
        elif suffix in (".csv", ".tsv"):
            cases, problems = parse_csv_cases(data, str(path), delimiter="\t" if suffix == ".tsv" else ",")
        else:
            self.err(node, f"tests: {rel} must be a .jsonl or .csv file")
            return []
        self.errors.extend(problems)
        return cases


def _line(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def parse_jsonl_cases(text: str, filename: str = "<cases>") -> tuple[list[Case], list[ConfigProblem]]:
    """One case per line: a vars object, or ``{"vars": {...}, "expected": ..., "assert": [...]}``."""
    cases: list[Case] = []
    problems: list[ConfigProblem] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problems.append(
                ConfigProblem(filename, n, f"not valid JSON: {exc.msg if hasattr(exc, 'msg') else exc}")
            )
            continue
        if not isinstance(obj, dict):
            problems.append(ConfigProblem(filename, n, "each line must be a JSON object of variables"))
            continue
        asserts: tuple[CheckSpec, ...] = ()
        if "vars" in obj and isinstance(obj["vars"], dict):
            unknown = set(obj) - set(_CASE)
            if unknown:
                problems.append(ConfigProblem(filename, n, f"unknown key(s) {', '.join(sorted(unknown))}"))
                continue
            if "assert" in obj:
                sub = _ExperimentParser(filename, None)
                node = yaml.compose(json.dumps(obj["assert"]), Loader=yaml.SafeLoader)
                asserts = sub.checks(node, "assert") if node is not None else ()
                problems.extend(ConfigProblem(filename, n, p.message) for p in sub.errors)
            cases.append(
                Case(
                    len(cases),
                    obj["vars"],
                    asserts,
                    obj.get("expected"),
                    obj.get("description"),
                    f"{filename}:{n}",
                )
            )
        else:
            vars_ = dict(obj)
            expected = vars_.pop("expected", vars_.pop("__expected", None))
            cases.append(Case(len(cases), vars_, (), expected, None, f"{filename}:{n}"))
        if len(cases) > MAX_CASES:
            problems.append(ConfigProblem(filename, n, f"more than {MAX_CASES} cases"))
            break
    if not cases and not problems:
        problems.append(ConfigProblem(filename, 1, "no cases (the file is empty)"))
    return cases, problems


def parse_csv_cases(
    text: str, filename: str = "<cases>", *, delimiter: str = ","
) -> tuple[list[Case], list[ConfigProblem]]:
    """A header row of variable names; a column named ``expected`` (or ``__expected``) is the expected value."""
    problems: list[ConfigProblem] = []
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return [], [ConfigProblem(filename, 1, "no cases (the file is empty)")]
    except csv.Error as exc:
        return [], [ConfigProblem(filename, 1, f"not valid CSV: {exc}")]
    names = [h.strip() for h in header]
    if not any(names) or len(set(names)) != len(names):
        return [], [ConfigProblem(filename, 1, "the first row must name each column once (the variables)")]
    cases: list[Case] = []
    try:
        for row in reader:
            n = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                problems.append(
                    ConfigProblem(filename, n, f"{len(row)} columns, the header has {len(names)}")
                )
                continue
            vars_ = dict(zip(names, row, strict=True))
            expected = vars_.pop("expected", None)
            if expected is None:
                expected = vars_.pop("__expected", None)
            cases.append(Case(len(cases), vars_, (), expected, None, f"{filename}:{n}"))
    except csv.Error as exc:
        problems.append(ConfigProblem(filename, reader.line_num, f"not valid CSV: {exc}"))
    if not cases and not problems:
        problems.append(ConfigProblem(filename, 1, "no cases (only a header)"))
    return cases, problems


def check_experiment(
    text: str, filename: str = "<experiment>", *, base_dir: Path | None = None
) -> tuple[Experiment | None, list[ConfigProblem]]:
    """Parse and validate an experiment file whole: the experiment, or ``None`` and every problem."""
    p = _ExperimentParser(filename, base_dir)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(s for s in (exc.context, exc.problem) if s) or "not valid YAML"
        return None, [ConfigProblem(filename, mark.line + 1 if mark else 1, f"not valid YAML: {what}")]
    except yaml.YAMLError:
        return None, [ConfigProblem(filename, 1, "not valid YAML")]
    if root is None:
        return None, [
            ConfigProblem(filename, 1, "the file is empty: an experiment needs prompts, targets and tests")
        ]
    top = p.mapping(root, "the file", _TOP)
    if top is None:
        return None, p.errors
    p.scan_secrets(root)
    name = p.text(top["name"][1], "name") if "name" in top else None
    if "name" not in top:
        p.err(root, "the experiment needs a name")
    description = ""
    if "description" in top:
        description = p.text(top["description"][1], "description", optional=True) or ""

    prompts: list[PromptSpec] = []
    if "prompts" not in top:
        p.err(root, "the experiment needs prompts (at least one)")
    else:
        for i, n in enumerate(p.seq(top["prompts"][1], "prompts") or []):
            ps = p.prompt(n, i)
            if ps is not None:
                if any(q.id == ps.id for q in prompts):
                    p.err(n, f"prompts[{i}]: the id `{ps.id}` is used twice")
                prompts.append(ps)
        if not prompts and not p.errors:
            p.err(top["prompts"][0], "prompts: the list is empty")

    targets: tuple[str, ...] = ()
    if "targets" not in top:
        p.err(root, "the experiment needs targets (the target names to run each prompt on)")
    else:
        targets = p.names(top["targets"][1], "targets") or ()
        if len(set(targets)) != len(targets):
            p.err(top["targets"][1], "targets: a target is named twice")
        if not targets and "targets" in top and not p.errors:
            p.err(top["targets"][0], "targets: the list is empty")

    repeat = 1
    if "repeat" in top:
        r = p.integer(top["repeat"][1], "repeat")
        if r is not None and not 1 <= r <= 100:
            p.err(top["repeat"][1], "repeat must be between 1 and 100")
        elif r is not None:
            repeat = r
    concurrency = 8
    if "concurrency" in top:
        c = p.integer(top["concurrency"][1], "concurrency")
        if c is not None and not 1 <= c <= 256:
            p.err(top["concurrency"][1], "concurrency must be between 1 and 256")
        elif c is not None:
            concurrency = c

    default_asserts: tuple[CheckSpec, ...] = ()
    default_params: dict[str, Any] = {}
    if "defaults" in top:
        dm = p.mapping(top["defaults"][1], "defaults", _DEFAULTS)
        if dm is not None:
            if "assert" in dm:
                default_asserts = p.checks(dm["assert"][1], "defaults: assert")
            if "params" in dm:
                raw = p.plain(dm["params"][1])
                if isinstance(raw, dict):
                    default_params = raw
                else:
                    p.err(dm["params"][1], "defaults: params must be a mapping")

    cases: list[Case] = []
    if "tests" not in top:
        p.err(root, "the experiment needs tests (cases: a list, or file://cases.jsonl or .csv)")
    else:
        tnode = top["tests"][1]
        ref = p.scalar(tnode) if isinstance(tnode, ScalarNode) else None
        if isinstance(ref, str):
            if ref.startswith("file://"):
                cases = p.file_cases(tnode, ref)
            else:
                p.err(tnode, "tests must be a list of cases or file://PATH (a .jsonl or .csv file)")
        else:
            cases = p.inline_cases(tnode)
        if not cases and not p.errors:
            p.err(top["tests"][0], "tests: no cases")

    names = [variant_name(pr.id, t, len(prompts), len(targets)) for pr in prompts for t in targets]

    def resolve(node: Node, what: str) -> str | None:
        value = p.text(node, what)
        if value is None:
            return None
        found = resolve_variant(value, prompts, targets)
        if found is None:
            p.err(node, f"{what} `{value}` is not a variant ({', '.join(names) or 'none'})")
        return found

    baseline = names[0] if names else ""
    if "baseline" in top:
        baseline = resolve(top["baseline"][1], "baseline") or baseline

    gate = None
    if "gate" in top:
        gm = p.mapping(top["gate"][1], "gate", _GATE)
        if gm is not None:
            for key in ("variant", "not_worse_than"):
                if key not in gm:
                    p.err(top["gate"][1], f"gate: needs {key}")
            gv = resolve(gm["variant"][1], "gate: variant") if "variant" in gm else None
            gb = resolve(gm["not_worse_than"][1], "gate: not_worse_than") if "not_worse_than" in gm else None
            metric = "pass_rate"
            if "metric" in gm:
                mt = p.text(gm["metric"][1], "gate: metric")
                if mt is not None and mt not in GATE_METRICS:
                    p.err(gm["metric"][1], f"gate: metric must be one of {', '.join(GATE_METRICS)}")
                elif mt is not None:
                    metric = mt
            alpha = 0.05
            if "alpha" in gm:
                a = p.number(gm["alpha"][1], "gate: alpha")
                if a is not None and not 0 < a < 1:
                    p.err(gm["alpha"][1], "gate: alpha must be between 0 and 1 (0.05 is usual)")
                elif a is not None:
                    alpha = a
            margin = 0.0
            if "margin" in gm:
                mg = p.number(gm["margin"][1], "gate: margin")
                if mg is not None and mg < 0:
                    p.err(gm["margin"][1], "gate: margin must not be negative")
                elif mg is not None:
                    margin = mg
            if gv and gb:
                if gv == gb:
                    p.err(top["gate"][1], "gate: variant and not_worse_than are the same variant")
                gate = Gate(gv, gb, metric, alpha, margin)
            if metric == "score" and not any(
                c.type == "llm_judge" for c in default_asserts + tuple(a for cs in cases for a in cs.asserts)
            ):
                p.err(top["gate"][1], "gate: metric score needs an llm_judge check")

    # Every variable an inline template names must be in every case.
    for pr in prompts:
        if pr.template is None:
            continue
        wanted = template_vars(pr.template) + template_vars(pr.system or "")
        for case in cases:
            missing = [v for v in wanted if v not in case.vars]
            if missing:
                where, _, line = case.where.rpartition(":")
                p.err_at(
                    where or filename,
                    int(line) if line.isdigit() else 1,
                    f"case {case.index + 1} has no {', '.join(missing)} (prompt `{pr.id}` uses "
                    f"{', '.join('{{' + v + '}}' for v in missing)})",
                )
                break
    # equals/contains without a value compare with the case's expected value: it must be there.
    for case in cases:
        for chk in case.asserts + default_asserts:
            if chk.type in _EXPECTED_FALLBACK and chk.value is None and case.expected is None:
                where, _, line = case.where.rpartition(":")
                p.err_at(
                    where or filename,
                    int(line) if line.isdigit() else chk.line,
                    f"case {case.index + 1}: check {chk.type} has no value and the case no expected value",
                )
                break

    if p.errors or name is None:
        return None, p.errors
    return (
        Experiment(
            name,
            tuple(prompts),
            targets,
            tuple(cases),
            baseline,
            repeat,
            concurrency,
            default_asserts,
            default_params,
            gate,
            description,
            filename,
        ),
        [],
    )


def resolve_variant(
    value: str, prompts: list[PromptSpec] | tuple[PromptSpec, ...], targets: tuple[str, ...]
) -> str | None:
    """A variant name from what the file wrote: the variant itself, a prompt id (its first target) or a target."""
    names = [variant_name(pr.id, t, len(prompts), len(targets)) for pr in prompts for t in targets]
    if value in names:
        return value
    for pr in prompts:
        if pr.id == value and targets:
            return variant_name(pr.id, targets[0], len(prompts), len(targets))
    if value in targets and prompts:
        return variant_name(prompts[0].id, value, len(prompts), len(targets))
    return None


def parse_experiment(
    text: str, filename: str = "<experiment>", *, base_dir: Path | None = None
) -> Experiment:
    """:func:`check_experiment`, raising :class:`ExperimentError` with every problem."""
    exp, problems = check_experiment(text, filename, base_dir=base_dir)
    if exp is None:
        raise ExperimentError(problems)
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Read and parse an experiment file; ``file://`` cases are relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentError(
            [ConfigProblem(str(path), 1, f"cannot read it: {exc.strerror or exc}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ExperimentError([ConfigProblem(str(path), 1, "not UTF-8 text")]) from exc
    return parse_experiment(text, str(path), base_dir=path.parent)


# -- as JSON (the store keeps a snapshot of what a run ran) ---------------------------------------


def experiment_to_data(exp: Experiment) -> dict[str, Any]:
    def check(c: CheckSpec) -> dict[str, Any]:
        return {
            "type": c.type,
            "value": c.value,
            "rubric": c.rubric,
            "target": c.target,
            "pass_at": c.pass_at,
            "scale": list(c.scale),
            "weight": c.weight,
            "case_sensitive": c.case_sensitive,
        }

    return {
        "name": exp.name,
        "description": exp.description,
        "source": exp.source,
        "prompts": [
            {
                "id": pr.id,
                "template": pr.template,
                "system": pr.system,
                "params": pr.params,
                "registry_name": pr.registry_name,
                "registry_version": pr.registry_version,
                "body_system": pr.body_system,
                "body_params": pr.body_params,
            }
            for pr in exp.prompts
        ],
        "targets": list(exp.targets),
        "baseline": exp.baseline,
        "repeat": exp.repeat,
        "concurrency": exp.concurrency,
        "default_asserts": [check(c) for c in exp.default_asserts],
        "default_params": exp.default_params,
        "gate": None
        if exp.gate is None
        else {
            "variant": exp.gate.variant,
            "not_worse_than": exp.gate.not_worse_than,
            "metric": exp.gate.metric,
            "alpha": exp.gate.alpha,
            "margin": exp.gate.margin,
        },
        "cases": [
            {
                "vars": c.vars,
                "asserts": [check(a) for a in c.asserts],
                "expected": c.expected,
                "description": c.description,
                "where": c.where,
            }
            for c in exp.cases
        ],
    }


def experiment_from_data(d: dict[str, Any]) -> Experiment:
    def check(c: dict[str, Any]) -> CheckSpec:
        return CheckSpec(
            c["type"],
            c.get("value"),
            c.get("rubric"),
            c.get("target"),
            c.get("pass_at"),
            (float((c.get("scale") or (1.0, 5.0))[0]), float((c.get("scale") or (1.0, 5.0))[1])),
            c.get("weight", 1.0),
            c.get("case_sensitive", True),
        )

    gate = d.get("gate")
    return Experiment(
        d["name"],
        tuple(
            PromptSpec(
                p["id"],
                p.get("template"),
                p.get("system"),
                p.get("params") or {},
                p.get("registry_name"),
                p.get("registry_version"),
                0,
                p.get("body_system"),
                p.get("body_params") or {},
            )
            for p in d["prompts"]
        ),
        tuple(d["targets"]),
        tuple(
            Case(
                i,
                c["vars"],
                tuple(check(a) for a in c.get("asserts", [])),
                c.get("expected"),
                c.get("description"),
                c.get("where", ""),
            )
            for i, c in enumerate(d["cases"])
        ),
        d["baseline"],
        d.get("repeat", 1),
        d.get("concurrency", 8),
        tuple(check(c) for c in d.get("default_asserts", [])),
        d.get("default_params") or {},
        Gate(**gate) if gate else None,
        d.get("description", ""),
        d.get("source", ""),
    )
