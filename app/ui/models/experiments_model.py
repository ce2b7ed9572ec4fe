"""What the Experiments page shows, read off the GUI thread: experiments, runs, a run's analysis.

Plain data and blocking functions (the page hands them to its runner); no widgets.
:func:`run_blocking` runs an experiment on a loop of its own in the calling
(worker) thread with a gateway of its own on the same store, so the page never
waits on the network and a run survives page switches.
"""

from __future__ import annotations

import asyncio
import difflib
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.experiments.runner import ExperimentRunner, Progress, RunOutcome, resolve_prompts
from app.experiments.spec import (
    Case,
    Experiment,
    ExperimentError,
    experiment_from_data,
    experiment_to_data,
    parse_csv_cases,
    parse_jsonl_cases,
)
from app.experiments.stats import Analysis, analyse
from storage.queries import experiments as q

#: Variant colours (Okabe-Ito, colour-blind safe), the baseline first.
VARIANT_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")


@dataclass(frozen=True, slots=True)
class ExperimentEntry:
    name: str
    experiment: Experiment | None  # None: the stored definition could not be read
    problem: str | None
    runs: list[q.RunInfo]
    updated_at: float


@dataclass(frozen=True, slots=True)
class Overview:
    experiments: list[ExperimentEntry]


@dataclass(frozen=True, slots=True)
class RunView:
    run: q.RunInfo
    experiment: Experiment
    results: list[q.ResultRecord]
    analysis: Analysis
    by_case: dict[int, dict[str, list[q.ResultRecord]]] = field(default_factory=dict)
    judge_cost_usd: float = 0.0  # the judge's calls, on top of the run's own (run.cost_usd)


def load_overview(engine: Any) -> Overview:
    """Every experiment with its runs, newest first (a blocking read)."""
    entries: list[ExperimentEntry] = []
    runs = q.list_runs(engine, limit=500)
    by_exp: dict[str, list[q.RunInfo]] = {}
    for r in runs:
        by_exp.setdefault(r.experiment, []).append(r)
    seen: set[str] = set()
    for info in q.list_experiments(engine):
        seen.add(info.name)
        try:
            exp: Experiment | None = experiment_from_data(info.spec)
            problem = None
        except (KeyError, TypeError, ValueError) as exc:
            exp, problem = None, f"the stored definition cannot be read: {exc}"
        entries.append(ExperimentEntry(info.name, exp, problem, by_exp.get(info.name, []), info.updated_at))
    for name, rs in by_exp.items():  # runs whose definition was deleted: still shown
        if name not in seen:
            entries.append(
                ExperimentEntry(name, experiment_from_data(rs[0].spec), None, rs, rs[0].started_at)
            )
    return Overview(entries)


def load_page(
    engine: Any, experiment: str | None, run_id: str | None, shown: tuple[str, int, str] | None
) -> tuple[Overview, RunView | None]:
    """The overview and, in the same trip, the run the page will show (the selected one, else the
    newest run of the selected or first experiment) unless ``shown`` (run id, done, status) says the
    page already has it as it is."""
    overview = load_overview(engine)
    entry = next((e for e in overview.experiments if e.name == experiment), None)
    if entry is None and overview.experiments:
        entry = overview.experiments[0]
    if entry is None or not entry.runs:
        return overview, None
    run = next((r for r in entry.runs if r.run_id == run_id), entry.runs[0])
    if shown == (run.run_id, run.done, run.status):
        return overview, None
    return overview, load_run(engine, run.run_id)


def load_run(engine: Any, run_id: str) -> RunView:
    """A run's results and analysis (a blocking read; the bootstrap takes a few ms per variant)."""
    run = q.get_run(engine, run_id)
    if run is None:
        raise LookupError(f"run {run_id} is not in the store")
    exp = experiment_from_data(run.spec)
    results = q.fetch_results(engine, run_id)
    gate = exp.gate
    an = analyse(
        results,
        exp.baseline,
        variants=[v.name for v in exp.variants],
        gate=(gate.variant, gate.not_worse_than, gate.metric, gate.alpha, gate.margin) if gate else None,
    )
    by_case: dict[int, dict[str, list[q.ResultRecord]]] = {}
    for r in results:
        by_case.setdefault(r.case_index, {}).setdefault(r.variant, []).append(r)
    judge = sum(
        float(c.get("cost_usd") or 0.0) for r in results for c in r.checks if c.get("type") == "llm_judge"
    )
    return RunView(run, exp, results, an, by_case, judge)


def save_definition(engine: Any, exp: Experiment) -> Experiment:
    """Store an experiment's definition (registry prompts pinned), replacing one of the same name."""
    q.save_experiment(engine, exp.name, experiment_to_data(exp))
    return exp


def open_experiment_file(path: str | Path, store: Any) -> Experiment:
    """Parse a file (ExperimentError lists FILE:LINE problems), pin its registry prompts, store it."""
    from app.experiments.spec import load_experiment

    exp = load_experiment(path)
    exp = resolve_prompts(store, exp)
    return save_definition(store.engine, exp)


def import_cases(path: str | Path) -> list[Case]:
    """Cases from a .csv/.tsv or .jsonl file; ExperimentError with FILE:LINE problems."""
    from app.core.config import ConfigProblem

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError([ConfigProblem(str(p), 1, f"cannot read it: {exc}")]) from exc
    if p.suffix.lower() in (".csv", ".tsv"):
        cases, problems = parse_csv_cases(text, str(p), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
    else:
        cases, problems = parse_jsonl_cases(text, str(p))
    if problems:
        raise ExperimentError(problems)
    return cases


def dataset_columns(cases: Sequence[Case]) -> list[str]:
    """The variable names of a dataset in first-seen order, then ``expected``."""
    names: dict[str, None] = {}
    for c in cases:
        for k in c.vars:
            names.setdefault(k, None)
    return [*names, "expected"]


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def cell_value(text: str) -> Any:
    """A table cell back to a value: JSON when it reads as a JSON object/array/number, else text."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") or stripped in ("true", "false", "null"):
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def cases_from_rows(columns: Sequence[str], rows: Sequence[Sequence[str]], old: Sequence[Case]) -> list[Case]:
    """The edited table as cases; a row keeps the checks its case had (by position)."""
    out: list[Case] = []
    for i, row in enumerate(rows):
        values = dict(zip(columns, row, strict=False))
        expected_text = values.pop("expected", "")
        vars_ = {k: cell_value(v) for k, v in values.items() if k}
        if not any(str(v).strip() for v in vars_.values()) and not expected_text.strip():
            continue  # an empty row is no case
        prev = old[i] if i < len(old) else None
        out.append(
            Case(
                len(out),
                vars_,
                prev.asserts if prev else (),
                cell_value(expected_text) if expected_text.strip() else None,
                prev.description if prev else None,
                "dataset table",
            )
        )
    return out


def check_dataset(exp: Experiment, cases: Sequence[Case]) -> list[str]:
    """Problems with a dataset for this experiment: rows missing a variable the prompts use."""
    from app.core.prompts import variables

    problems: list[str] = []
    for p in exp.prompts:
        if p.template is None:
            continue
        wanted = variables(p.body_system, p.system, p.template)
        for c in cases:
            missing = [v for v in wanted if v not in c.vars]
            if missing:
                problems.append(f"row {c.index + 1}: no {', '.join(missing)} (prompt {p.id} uses it)")
    if not cases:
        problems.append("the dataset has no rows")
    return problems


def run_blocking(
    store: Any,
    exp: Experiment,
    *,
    run_id: str | None,
    on_progress: Callable[[Progress], None],
    on_runner: Callable[[ExperimentRunner], None],
    progress_interval_s: float = 0.1,
) -> RunOutcome:
    """Run (or resume) ``exp`` here, on a loop of this thread, with a gateway of its own on ``store``."""
    from app.gateway.engine import Gateway

    async def go() -> RunOutcome:
        async with Gateway(store) as gw:
            runner = ExperimentRunner(
                gw,
                store,
                exp,
                run_id=run_id,
                on_progress=on_progress,
                progress_interval_s=progress_interval_s,
            )
            on_runner(runner)
            return await runner.run()

    return asyncio.run(go())


# --- side by side -----------------------------------------------------------------------------------


def diff_html(a: str, b: str, *, removed: str, added: str) -> tuple[str, str]:
    """Two outputs as HTML with the words that differ highlighted (``removed`` on the left's side)."""
    ta, tb = _words(a), _words(b)
    left: list[str] = []
    right: list[str] = []
    sm = difflib.SequenceMatcher(a=ta, b=tb, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        sa = html.escape("".join(ta[i1:i2]))
        sb = html.escape("".join(tb[j1:j2]))
        if op == "equal":
            left.append(sa)
            right.append(sb)
        else:
            if sa:
                left.append(f'<span style="background:{removed}">{sa}</span>')
            if sb:
                right.append(f'<span style="background:{added}">{sb}</span>')
    wrap = '<div style="white-space: pre-wrap">{}</div>'
    return wrap.format("".join(left)), wrap.format("".join(right))


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"\s+|\w+|[^\w\s]", text)


def check_summary(r: q.ResultRecord | None) -> str:
    """``✓``, ``✗ 2/5`` or ``error`` for a table cell."""
    if r is None:
        return ""
    if r.status != "ok":
        return "error"
    failed = sum(1 for c in r.checks if not c.get("passed"))
    return "✓" if r.passed else f"✗ {failed}/{len(r.checks)}"
