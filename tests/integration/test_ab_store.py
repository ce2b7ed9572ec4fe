"""The A/B lab's store queries on SQLite and PostgreSQL: one result per run x variant x case x
repetition (a second write of the same key keeps the first), runs with their counts and cost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.engine import Store, open_store
from storage.queries import experiments as q


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = open_store(url)
    yield s
    s.close()


def rec(run: str, variant: str, case: int, rep: int = 0, **kw: object) -> q.ResultRecord:
    fields: dict[str, object] = {"output": f"{variant}-{case}", "cost_usd": 0.01, **kw}
    return q.ResultRecord(run, variant, case, rep, "ok", **fields)  # type: ignore[arg-type]


def test_experiments_runs_and_results(store: Store) -> None:
    e = store.engine
    assert q.save_experiment(e, "exp", {"name": "exp", "v": 1}, now=100.0) == 1
    assert q.save_experiment(e, "exp", {"name": "exp", "v": 2}, now=200.0) == 2
    info = q.get_experiment(e, "exp")
    assert info is not None and info.spec == {"name": "exp", "v": 2} and info.revision == 2
    assert [x.name for x in q.list_experiments(e)] == ["exp"]

    q.create_run(e, "r1", "exp", {"name": "exp"}, 4, now=300.0)
    q.create_run(e, "r2", "exp", {"name": "exp"}, 4, now=400.0)
    assert (
        q.insert_results(
            e, [rec("r1", "v1", 0), rec("r1", "v2", 0, checks=[{"type": "contains", "passed": True}])]
        )
        >= 1
    )
    q.insert_results(e, [rec("r1", "v1", 0, output="again")])  # same key: the first stays
    q.insert_results(e, [rec("r1", "v1", 1, 1)])
    assert q.done_keys(e, "r1") == {("v1", 0, 0), ("v2", 0, 0), ("v1", 1, 1)}
    results = q.fetch_results(e, "r1")
    assert [(r.variant, r.case_index, r.repetition) for r in results] == [
        ("v1", 0, 0),
        ("v1", 1, 1),
        ("v2", 0, 0),
    ]
    assert results[0].output == "v1-0"
    assert results[2].checks == [{"type": "contains", "passed": True}]

    runs = q.list_runs(e, "exp")
    assert [r.run_id for r in runs] == ["r2", "r1"]
    assert (runs[1].done, round(runs[1].cost_usd, 6)) == (3, 0.03)
    assert q.latest_unfinished_run(e, "exp").run_id == "r2"  # type: ignore[union-attr]
    q.set_run_status(e, "r2", "done", now=500.0)
    q.set_run_status(e, "r1", "cancelled", now=500.0)
    assert q.latest_unfinished_run(e, "exp").run_id == "r1"  # type: ignore[union-attr]
    r1 = q.get_run(e, "r1")
    assert r1 is not None and r1.status == "cancelled" and r1.finished_at == 500.0
    q.set_run_status(e, "r1", "running")
    assert q.get_run(e, "r1").finished_at is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="status"):
        q.set_run_status(e, "r1", "paused")
    with pytest.raises(LookupError):
        q.set_run_status(e, "nope", "done")
    assert q.delete_experiment(e, "exp")
    assert q.get_experiment(e, "exp") is None
    assert len(q.list_runs(e, "exp")) == 2  # runs stay, for the record
