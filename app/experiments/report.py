"""Exports of a run: results as CSV, the analysis as JSON, and a Markdown report (plus plain text for the CLI)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from app.experiments.spec import Experiment
from app.experiments.stats import Analysis, Comparison, VariantStats, _z
from storage.queries.experiments import ResultRecord

CSV_COLUMNS = (
    "variant", "case", "repetition", "status", "passed", "score", "latency_ms", "ttft_ms", "input_tokens",
    "output_tokens", "cost_usd", "failed_checks", "output", "error", "vars", "event_id",
)  # fmt: skip


def results_csv(results: Sequence[ResultRecord], exp: Experiment | None = None) -> str:
    """One row per result (case numbers from 1); a spreadsheet opens it as is."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    cases = {c.index: c for c in exp.cases} if exp else {}
    for r in results:
        failed = "; ".join(
            f"{c.get('label') or c.get('type')}: {c.get('reason') or 'failed'}"
            for c in r.checks
            if not c.get("passed")
        )
        case = cases.get(r.case_index)
        w.writerow(
            [
                r.variant, r.case_index + 1, r.repetition + 1, r.status,
                "" if r.passed is None else ("yes" if r.passed else "no"),
                _num(r.score), _num(r.latency_ms), _num(r.ttft_ms), _num(r.input_tokens), _num(r.output_tokens),
                _num(r.cost_usd), failed, r.output or "", r.error or "",
                json.dumps(case.vars, ensure_ascii=False) if case else "", r.event_id or "",
            ]
        )  # fmt: skip
    return buf.getvalue()


def _num(x: float | int | None) -> str:
    if x is None:
        return ""
    return f"{x:.10g}" if isinstance(x, float) else str(x)


def analysis_to_data(an: Analysis) -> dict[str, Any]:
    return {
        "baseline": an.baseline,
        "variants": [asdict(v) for v in an.variants],
        "comparisons": [asdict(c) for c in an.comparisons],
        "gate": asdict(an.gate) if an.gate else None,
        "verdicts": list(an.verdicts),
        "warnings": list(an.warnings),
    }


def report_json(
    an: Analysis,
    *,
    experiment: str,
    run_id: str,
    status: str,
    results: Sequence[ResultRecord] | None = None,
) -> str:
    data: dict[str, Any] = {
        "experiment": experiment,
        "run_id": run_id,
        "status": status,
        **analysis_to_data(an),
    }
    if results is not None:
        data["results"] = [asdict(r) for r in results]
    return json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"


def _ci(ci: tuple[float, float] | None, pct: bool = False, digits: int = 2) -> str:
    if ci is None:
        return "—"
    if pct:
        return f"[{_z(ci[0] * 100, '.0f')}, {_z(ci[1] * 100, '.0f')}]"
    return f"[{_z(ci[0], f'.{digits}f')}, {_z(ci[1], f'.{digits}f')}]"


def variant_row(v: VariantStats) -> list[str]:
    """The per-variant figures as display text (the report, the CLI and the page use the same)."""
    return [
        v.name,
        f"{v.passed}/{v.results}" + (f" (+{v.errors} err)" if v.errors else ""),
        "—" if v.pass_rate is None else f"{v.pass_rate * 100:.0f}% {_ci(v.pass_ci, pct=True)}",
        "—" if v.score_mean is None else f"{v.score_mean:.2f} {_ci(v.score_ci)}",
        "—" if v.latency_p50 is None else f"{v.latency_p50:.0f}",
        "—" if v.latency_p95 is None else f"{v.latency_p95:.0f}",
        "—" if v.cost_per_case is None else f"${v.cost_per_case:.6f}",
    ]


VARIANT_HEADERS = [
    "variant",
    "passed",
    "pass rate [95% CI]",
    "judge score [95% CI]",
    "p50 ms",
    "p95 ms",
    "cost/case",
]


def comparison_row(c: Comparison) -> list[str]:
    if c.diff is None:
        diff = "—"
    elif c.metric == "pass_rate":
        diff = f"{c.diff * 100:+.0f} pts {_ci(c.ci, pct=True)}"
    elif c.metric == "latency_ms":
        diff = f"{c.diff:+.0f} ms {_ci(c.ci, digits=0)}"
    elif c.metric == "cost_usd":
        diff = f"{c.diff:+.6f} {_ci(c.ci, digits=6)}"
    else:
        diff = f"{c.diff:+.2f} {_ci(c.ci)}"
    p = "—" if c.p is None else (f"{c.p:.3g}" if c.p >= 0.001 else "<0.001")
    return [f"{c.variant} vs {c.baseline}", METRIC_WORDS.get(c.metric, c.metric), diff, p, c.test,
            "yes" if c.significant else "no"]  # fmt: skip


METRIC_WORDS = {"pass_rate": "pass rate", "score": "judge score", "latency_ms": "latency", "cost_usd": "cost"}


COMPARISON_HEADERS = ["comparison", "metric", "difference [95% CI]", "p", "test", "significant"]


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def report_markdown(
    an: Analysis,
    *,
    exp: Experiment,
    run_id: str,
    status: str,
    results: Sequence[ResultRecord] = (),
    examples: int = 5,
) -> str:
    lines = [f"# A/B report: {exp.name}", ""]
    if exp.description:
        lines += [exp.description, ""]
    lines += [
        f"- Run `{run_id}` ({status}); baseline **{an.baseline}**",
        f"- {len(exp.cases)} case(s) x {len(exp.variants)} variant(s) x {exp.repeat} repetition(s)",
        "",
        "## Verdict",
        "",
    ]
    lines += [f"- {v}" for v in an.verdicts] or ["- only one variant: nothing to compare"]
    if an.gate is not None:
        lines += [
            "",
            f"**Gate {'passed' if an.gate.passed else 'FAILED'}** ({an.gate.metric}): {an.gate.reason}",
        ]
    if an.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in an.warnings]
    lines += ["", "## Variants", "", _md_table(VARIANT_HEADERS, [variant_row(v) for v in an.variants])]
    if an.comparisons:
        lines += [
            "",
            "## Against the baseline",
            "",
            _md_table(COMPARISON_HEADERS, [comparison_row(c) for c in an.comparisons]),
        ]
    failed = [r for r in results if r.passed is False or r.status != "ok"]
    if failed:
        lines += ["", f"## Failed cases (first {min(examples, len(failed))} of {len(failed)})", ""]
        for r in failed[:examples]:
            reasons = "; ".join(
                f"{c.get('label')}: {c.get('reason')}" for c in r.checks if not c.get("passed")
            )
            lines.append(f"- **{r.variant}**, case {r.case_index + 1}: {r.error or reasons}")
            if r.output:
                lines.append(f"  > {(r.output[:300]).replace(chr(10), ' ')}")
    return "\n".join(lines) + "\n"


def format_text(an: Analysis) -> str:
    """The analysis for a terminal: aligned tables, then the verdicts and the gate."""

    def table(headers: list[str], rows: list[list[str]]) -> list[str]:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]

    out = table(VARIANT_HEADERS, [variant_row(v) for v in an.variants])
    if an.comparisons:
        out += ["", *table(COMPARISON_HEADERS, [comparison_row(c) for c in an.comparisons])]
    out += [""] + [f"* {v}" for v in an.verdicts]
    out += [f"! {w}" for w in an.warnings]
    if an.gate is not None:
        out += ["", f"gate {'passed' if an.gate.passed else 'FAILED'} ({an.gate.metric}): {an.gate.reason}"]
    return "\n".join(out) + "\n"
