"""Experiments, their runs and per-case results (the A/B lab's store).

A result row is one run x variant x case x repetition, unique on that key: a
resumed run asks :func:`done_keys` what is already stored and calls only the
rest, so nothing finished is billed twice.  :func:`insert_result` ignores a row
that is already there (two writers racing on one key keep the first).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.engine import transaction
from storage.models import EXPERIMENT_RESULTS, EXPERIMENT_RUNS, EXPERIMENTS

Bind = Engine | Connection
RUN_STATUSES = ("running", "cancelled", "done", "failed")


@dataclass(frozen=True, slots=True)
class ExperimentInfo:
    name: str
    spec: dict[str, Any]
    revision: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    experiment: str
    spec: dict[str, Any]
    status: str
    total: int
    started_at: float
    finished_at: float | None
    error: str | None
    done: int = 0  # results stored
    cost_usd: float = 0.0  # their cost


@dataclass(slots=True)
class ResultRecord:
    """One stored result; ``checks`` is a list of ``{type, label, passed, score, reason}``."""

    run_id: str
    variant: str
    case_index: int
    repetition: int
    status: str  # ok | error
    output: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    passed: bool | None = None
    score: float | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    event_id: str | None = None
    created_at: float = 0.0


# --- experiments ------------------------------------------------------------------------------


def save_experiment(bind: Bind, name: str, spec: dict[str, Any], *, now: float | None = None) -> int:
    """Create or replace an experiment's definition; returns its new revision."""
    if not name.strip():
        raise ValueError("an experiment needs a name")
    ts = time.time() if now is None else now
    t = EXPERIMENTS
    with transaction(bind, write=True) as conn:
        rev = conn.execute(select(t.c.revision).where(t.c.name == name)).scalar_one_or_none()
        if rev is None:
            conn.execute(t.insert().values(name=name, spec=spec, revision=1, created_at=ts, updated_at=ts))
            return 1
        conn.execute(update(t).where(t.c.name == name).values(spec=spec, revision=rev + 1, updated_at=ts))
        return int(rev) + 1


def get_experiment(bind: Bind, name: str) -> ExperimentInfo | None:
    t = EXPERIMENTS
    with transaction(bind) as conn:
        row = conn.execute(select(t).where(t.c.name == name)).first()
    if row is None:
        return None
    return ExperimentInfo(row.name, row.spec, row.revision, row.created_at, row.updated_at)


def list_experiments(bind: Bind) -> list[ExperimentInfo]:
    t = EXPERIMENTS
    with transaction(bind) as conn:
        rows = conn.execute(select(t).order_by(t.c.updated_at.desc())).all()
    return [ExperimentInfo(r.name, r.spec, r.revision, r.created_at, r.updated_at) for r in rows]


def delete_experiment(bind: Bind, name: str) -> bool:
    """Delete a definition (its runs and results stay, for the record)."""
    t = EXPERIMENTS
    with transaction(bind, write=True) as conn:
        return bool(conn.execute(t.delete().where(t.c.name == name)).rowcount)


# --- runs ---------------------------------------------------------------------------------------


def create_run(
    bind: Bind, run_id: str, experiment: str, spec: dict[str, Any], total: int, *, now: float | None = None
) -> None:
    ts = time.time() if now is None else now
    with transaction(bind, write=True) as conn:
        conn.execute(
            EXPERIMENT_RUNS.insert().values(
                run_id=run_id,
                experiment=experiment,
                spec=spec,
                status="running",
                total=total,
                started_at=ts,
                finished_at=None,
                error=None,
            )
        )


def set_run_status(
    bind: Bind, run_id: str, status: str, *, error: str | None = None, now: float | None = None
) -> None:
    """``running`` (again, when resumed) clears the finish time; the others set it."""
    if status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}")
    ts = time.time() if now is None else now
    r = EXPERIMENT_RUNS
    with transaction(bind, write=True) as conn:
        done = conn.execute(
            update(r)
            .where(r.c.run_id == run_id)
            .values(status=status, error=error, finished_at=None if status == "running" else ts)
        )
        if done.rowcount != 1:
            raise LookupError(f"no run {run_id!r}")


def _run_infos(conn: Connection, rows: Iterable[Any]) -> list[RunInfo]:
    rows = list(rows)
    if not rows:
        return []
    res = EXPERIMENT_RESULTS
    ids = [row.run_id for row in rows]
    counts = {
        row.run_id: (int(row.n), float(row.cost or 0.0))
        for row in conn.execute(
            select(res.c.run_id, func.count().label("n"), func.sum(res.c.cost_usd).label("cost"))
            .where(res.c.run_id.in_(ids))
            .group_by(res.c.run_id)
        )
    }
    return [
        RunInfo(
            row.run_id,
            row.experiment,
            row.spec,
            row.status,
            row.total,
            row.started_at,
            row.finished_at,
            row.error,
            *counts.get(row.run_id, (0, 0.0)),
        )
        for row in rows
    ]


def get_run(bind: Bind, run_id: str) -> RunInfo | None:
    r = EXPERIMENT_RUNS
    with transaction(bind) as conn:
        infos = _run_infos(conn, conn.execute(select(r).where(r.c.run_id == run_id)))
    return infos[0] if infos else None


def list_runs(bind: Bind, experiment: str | None = None, *, limit: int = 200) -> list[RunInfo]:
    """Runs, newest first, with how many results each has stored and their cost."""
    r = EXPERIMENT_RUNS
    stmt = select(r).order_by(r.c.started_at.desc(), r.c.id.desc()).limit(limit)
    if experiment is not None:
        stmt = stmt.where(r.c.experiment == experiment)
    with transaction(bind) as conn:
        return _run_infos(conn, conn.execute(stmt))


def latest_unfinished_run(bind: Bind, experiment: str) -> RunInfo | None:
    """The newest run of ``experiment`` that is running (a crash left it so) or cancelled."""
    r = EXPERIMENT_RUNS
    stmt = (
        select(r)
        .where(r.c.experiment == experiment, r.c.status.in_(("running", "cancelled")))
        .order_by(r.c.started_at.desc(), r.c.id.desc())
        .limit(1)
    )
    with transaction(bind) as conn:
        infos = _run_infos(conn, conn.execute(stmt))
    return infos[0] if infos else None


# --- results ------------------------------------------------------------------------------------


def done_keys(bind: Bind, run_id: str) -> set[tuple[str, int, int]]:
    """(variant, case_index, repetition) of every result stored for the run."""
    res = EXPERIMENT_RESULTS
    with transaction(bind) as conn:
        rows = conn.execute(
            select(res.c.variant, res.c.case_index, res.c.repetition).where(res.c.run_id == run_id)
        )
        return {(str(v), int(c), int(r)) for v, c, r in rows}


def _values(rec: ResultRecord) -> dict[str, Any]:
    return {
        "run_id": rec.run_id,
        "variant": rec.variant,
        "case_index": rec.case_index,
        "repetition": rec.repetition,
        "status": rec.status,
        "output": rec.output,
        "error": rec.error,
        "latency_ms": rec.latency_ms,
        "ttft_ms": rec.ttft_ms,
        "input_tokens": rec.input_tokens,
        "output_tokens": rec.output_tokens,
        "cost_usd": rec.cost_usd,
        "passed": rec.passed,
        "score": rec.score,
        "checks": rec.checks,
        "event_id": rec.event_id,
        "created_at": rec.created_at or time.time(),
    }


def insert_results(bind: Bind, records: list[ResultRecord]) -> int:
    """Store results; one already stored under the same key is kept, not replaced.  Returns rows added."""
    if not records:
        return 0
    rows = [_values(r) for r in records]
    keys = ("run_id", "variant", "case_index", "repetition")
    with transaction(bind, write=True) as conn:
        if conn.dialect.name == "postgresql":
            stmt: Any = postgresql.insert(EXPERIMENT_RESULTS).on_conflict_do_nothing(
                index_elements=list(keys)
            )
        else:
            stmt = sqlite.insert(EXPERIMENT_RESULTS).on_conflict_do_nothing(index_elements=list(keys))
        # RETURNING counts what went in on every driver (executemany rowcount is -1 on psycopg).
        return len(conn.execute(stmt.returning(EXPERIMENT_RESULTS.c.id), rows).all())


def fetch_results(bind: Bind, run_id: str) -> list[ResultRecord]:
    """Every result of a run, by variant, case and repetition."""
    res = EXPERIMENT_RESULTS
    c = res.c
    with transaction(bind) as conn:
        rows = conn.execute(
            select(res).where(c.run_id == run_id).order_by(c.variant, c.case_index, c.repetition)
        ).all()
    return [
        ResultRecord(
            r.run_id,
            r.variant,
            r.case_index,
            r.repetition,
            r.status,
            r.output,
            r.error,
            r.latency_ms,
            r.ttft_ms,
            r.input_tokens,
            r.output_tokens,
            r.cost_usd,
            r.passed,
            r.score,
            list(r.checks or []),
            r.event_id,
            r.created_at,
        )
        for r in rows
    ]
