"""What the Experiments page shows: experiments, runs and a run's analysis read off the GUI thread,
and the table models the page's views show them with (style.md item 3; testable without a window).

The reads are blocking functions the page hands to its runner.
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

from app.core import format as fmt
from app.experiments import report
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
from app.experiments.stats import Analysis, Comparison, VariantStats, analyse
from app.ui.qt import QObject, Qt, QtCore, QtGui, Signal
from app.ui.theme import current_colors
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
    live_gateway: Any = None,
) -> RunOutcome:
    """Run (or resume) ``exp`` here, on a loop of this thread, with a gateway of its own on ``store``.

    ``live_gateway``: the app's in-process gateway, when it is configured in code rather than from
    the store (the demo); the run's gateway then takes the same targets and keys.
    """
    from app.gateway.engine import Gateway

    config, resolver = None, None
    state = getattr(live_gateway, "state", None)
    if state is not None and getattr(state, "source", "store") == "config":
        config = state.config
        # The demo's key resolver hands out its fake key; the gateway keeps it only privately.
        resolver = getattr(live_gateway, "_key_resolver", None)

    async def go() -> RunOutcome:
        async with Gateway(store, config=config, key_resolver=resolver) as gw:
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


# --- table models (style.md item 3) -----------------------------------------------------------------

SORT_ROLE = int(Qt.ItemDataRole.UserRole) + 1
ROW_ROLE = int(Qt.ItemDataRole.UserRole) + 2
#: A colour key for the page to paint with: ok | bad | muted, or a variant index as text ("v0", "v1").
COLOR_ROLE = int(Qt.ItemDataRole.UserRole) + 3

V_COL_VARIANT, V_COL_PASSED, V_COL_PASS_RATE, V_COL_SCORE, V_COL_P50, V_COL_P95, V_COL_COST = range(7)
C_COL_WHAT, C_COL_METRIC, C_COL_DIFF, C_COL_P, C_COL_TEST, C_COL_SIGNIFICANT = range(6)
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


class VariantsModel(QtCore.QAbstractTableModel):
    """One row per variant: passed, pass rate and judge score with their intervals, latency, cost."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[VariantStats] = []

    def set_variants(self, rows: Sequence[VariantStats]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def variant(self, row: int) -> VariantStats:
        return self._rows[row]

    def rowCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def columnCount(self, parent: Any = None) -> int:
        return len(report.VARIANT_HEADERS)

    def headerData(self, section: int, orientation: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return report.VARIANT_HEADERS[section]
        return None

    def data(self, index: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        v, col = self._rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return report.variant_row(v)[col]
        if role == SORT_ROLE:
            return (
                v.name,
                v.passed,
                v.pass_rate,
                v.score_mean,
                v.latency_p50,
                v.latency_p95,
                v.cost_per_case,
            )[col]
        if role == ROW_ROLE:
            return v
        if role in (COLOR_ROLE, Qt.ItemDataRole.ForegroundRole) and col == V_COL_VARIANT:
            key = f"v{index.row()}"
            return key if role == COLOR_ROLE else color_for(key, current_colors())
        if role == Qt.ItemDataRole.FontRole and col == V_COL_VARIANT:
            font = QtGui.QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and col >= V_COL_P50:
            return _RIGHT
        if role == Qt.ItemDataRole.ToolTipRole and col == V_COL_PASS_RATE and v.pass_ci:
            return f"{v.passed} of {v.results} graded results passed every check; Wilson 95% interval"
        if role == Qt.ItemDataRole.ToolTipRole and col == V_COL_SCORE and v.score_ci:
            return f"mean judge score of {v.scores} results; bootstrap 95% interval (seeded)"
        return None


def comparison_difference(c: Comparison) -> str:
    """The difference column with its unit on every number (ui.md: money always with its currency)
    and no "-0": the report's text otherwise."""
    if c.diff is None or c.metric not in ("latency_ms", "cost_usd"):
        return report.comparison_row(c)[C_COL_DIFF]
    if c.metric == "latency_ms":
        # Whole milliseconds as ints: a float format writes -0.4 as "-0".
        signed = round(c.diff)
        text = f"{signed:+d} ms" if signed else "0 ms"
        return text + (f" [{round(c.ci[0])}, {round(c.ci[1])}]" if c.ci else "")

    def usd(v: float) -> str:
        return ("-" if v < 0 else "") + fmt.fmt_usd(abs(v))

    text = ("+" if c.diff > 0 else "") + usd(c.diff) if c.diff else "$0"
    return text + (f" [{usd(c.ci[0])}, {usd(c.ci[1])}]" if c.ci else "")


class ComparisonsModel(QtCore.QAbstractTableModel):
    """Each variant against the baseline, per metric: the difference, its interval, p and the test."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Comparison] = []

    def set_comparisons(self, rows: Sequence[Comparison]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def columnCount(self, parent: Any = None) -> int:
        return len(report.COMPARISON_HEADERS)

    def headerData(self, section: int, orientation: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return report.COMPARISON_HEADERS[section]
        return None

    def data(self, index: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        c, col = self._rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if col == C_COL_DIFF:
                return comparison_difference(c)
            return report.comparison_row(c)[col]
        if role == Qt.ItemDataRole.ToolTipRole:
            return c.sentence
        if role == SORT_ROLE:
            return (c.variant, c.metric, c.diff, c.p, c.test, c.significant)[col]
        if role == ROW_ROLE:
            return c
        if (
            role in (COLOR_ROLE, Qt.ItemDataRole.ForegroundRole)
            and col == C_COL_SIGNIFICANT
            and c.significant
        ):
            key = "ok" if c.better else "bad"
            return key if role == COLOR_ROLE else color_for(key, current_colors())
        return None


class CasesModel(QtCore.QAbstractTableModel):
    """One row per case: how each variant did (✓, ✗ failed/checks, error) and the case's variables."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cases: list[Case] = []
        self._variants: list[str] = []
        self._by_case: dict[int, dict[str, list[q.ResultRecord]]] = {}

    def set_view(self, view: RunView | None) -> None:
        self.beginResetModel()
        self._cases = list(view.experiment.cases) if view else []
        self._variants = [v.name for v in view.experiment.variants] if view else []
        self._by_case = view.by_case if view else {}
        self.endResetModel()

    def case(self, row: int) -> Case:
        return self._cases[row]

    def rowCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._cases)

    def columnCount(self, parent: Any = None) -> int:
        return 2 + len(self._variants)

    def headerData(self, section: int, orientation: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return ["case", *self._variants, "vars"][section]
        return None

    def _first(self, row: int, col: int) -> q.ResultRecord | None:
        rs = self._by_case.get(self._cases[row].index, {}).get(self._variants[col - 1], [])
        return rs[0] if rs else None

    def data(self, index: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, col = index.row(), index.column()
        c = self._cases[row]
        last = 1 + len(self._variants)
        if col == 0:
            if role == Qt.ItemDataRole.DisplayRole:
                return str(c.index + 1)
            if role == SORT_ROLE:
                return c.index
            if role == Qt.ItemDataRole.TextAlignmentRole:
                return _RIGHT
            return None
        if col == last:
            if role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE):
                return vars_line(c)
            if role == Qt.ItemDataRole.ToolTipRole:
                return vars_line(c, 2000)
            return None
        r = self._first(row, col)
        text = check_summary(r)
        if role == Qt.ItemDataRole.DisplayRole:
            return text
        if role == SORT_ROLE:  # failures first when sorted ascending
            return -1 if r is None else (0 if r.status != "ok" else (2 if r.passed else 1))
        if role == Qt.ItemDataRole.ToolTipRole:
            if r is None:
                return "not run yet"
            failed = [f"{x.get('label')}: {x.get('reason')}" for x in r.checks if not x.get("passed")]
            return r.error or "\n".join(failed) or "every check passed"
        if role in (COLOR_ROLE, Qt.ItemDataRole.ForegroundRole) and text:
            key = "ok" if text == "✓" else "bad"
            return key if role == COLOR_ROLE else color_for(key, current_colors())
        return None


class DatasetModel(QtCore.QAbstractTableModel):
    """The dataset, editable in place: one column per variable, then ``expected``."""

    edited = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.columns: list[str] = []
        self._rows: list[list[str]] = []

    def set_cases(self, cases: Sequence[Case]) -> None:
        self.beginResetModel()
        self.columns = dataset_columns(cases)
        self._rows = [
            [cell_text(c.expected if col == "expected" else c.vars.get(col)) for col in self.columns]
            for c in cases
        ]
        self.endResetModel()

    def rows(self) -> list[list[str]]:
        return [list(r) for r in self._rows]

    def rowCount(self, parent: Any = None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self._rows)

    def columnCount(self, parent: Any = None) -> int:
        return len(self.columns)

    def headerData(self, section: int, orientation: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        return self.columns[section] if orientation == Qt.Orientation.Horizontal else str(section + 1)

    def flags(self, index: Any) -> Any:
        return super().flags(index) | Qt.ItemFlag.ItemIsEditable

    def data(self, index: Any, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole, SORT_ROLE):
            return self._rows[index.row()][index.column()]
        return None

    def setData(self, index: Any, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid() or role != Qt.ItemDataRole.EditRole:
            return False
        text = "" if value is None else str(value)
        if self._rows[index.row()][index.column()] == text:
            return False
        self._rows[index.row()][index.column()] = text
        self.dataChanged.emit(index, index, [role])
        self.edited.emit()
        return True

    def add_row(self) -> int:
        n = len(self._rows)
        self.beginInsertRows(QtCore.QModelIndex(), n, n)
        self._rows.append([""] * len(self.columns))
        self.endInsertRows()
        self.edited.emit()
        return n

    def remove_rows(self, rows: Sequence[int]) -> None:
        for r in sorted(set(rows), reverse=True):
            if 0 <= r < len(self._rows):
                self.beginRemoveRows(QtCore.QModelIndex(), r, r)
                del self._rows[r]
                self.endRemoveRows()
        self.edited.emit()


def vars_line(c: Case, limit: int = 120) -> str:
    text = ", ".join(f"{k}={cell_text(v)}" for k, v in c.vars.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def color_for(key: Any, colors: Any) -> QtGui.QColor | None:
    """The QColor a COLOR_ROLE key means on this palette (variant colours lightened on dark ones)."""
    if not isinstance(key, str):
        return None
    if key.startswith("v") and key[1:].isdigit():
        c = QtGui.QColor(VARIANT_COLORS[int(key[1:]) % len(VARIANT_COLORS)])
        if QtGui.QColor(colors.base).lightness() < 128:
            c = QtGui.QColor(
                round(c.red() * 0.6 + 102), round(c.green() * 0.6 + 102), round(c.blue() * 0.6 + 102)
            )
        return c
    value = getattr(colors, key, None)
    return QtGui.QColor(value) if isinstance(value, str) else None
