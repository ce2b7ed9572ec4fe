"""``controlroom ab run`` against the simulator: real calls, real checks, a real store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from app.experiments.cli import EXIT_FILE_ERROR, EXIT_GATE_FAILED, EXIT_OK
from app.experiments.runner import ExperimentRunner, Progress
from app.experiments.spec import load_experiment
from app.gateway.engine import Gateway
from app.sim import SimServer
from storage.engine import Store
from storage.queries import experiments as q
from tests.integration.ab_support import GRADING_SCENARIO, KEY_ENV, chat_calls, experiment_yaml, sim_store


@pytest.fixture
def store(sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv(KEY_ENV, "sk-test-ab-cli-0000000001")
    sim.set_scenario(GRADING_SCENARIO)
    s = sim_store(sim, tmp_path / "store.db")
    yield s
    s.close()


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_gate_that_holds_exits_zero_and_prints_the_analysis(
    sim: SimServer,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, experiment_yaml(gate="variant: v1\nnot_worse_than: v2\nmetric: pass_rate"))
    code = main(["ab", "run", str(path), "--store", str(store.engine.url), "--report", str(tmp_path / "r.md"),
                 "--csv", str(tmp_path / "r.csv")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    assert "gate passed" in out
    assert "v2 passes fewer checks than v1: -100 points" in out
    assert "] 24/24 100%" in err  # the progress bar
    assert chat_calls(sim) == 24
    runs = q.list_runs(store.engine, "capitals")
    assert len(runs) == 1 and runs[0].status == "done" and runs[0].done == 24
    results = q.fetch_results(store.engine, runs[0].run_id)
    v1 = [r for r in results if r.variant == "v1"]
    assert all(r.passed and "Paris" in (r.output or "") for r in v1)
    assert all(r.passed is False for r in results if r.variant == "v2")
    assert "Gate passed" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.csv").read_text().count("\n") == 25


def test_gate_that_fails_exits_non_zero(
    sim: SimServer,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, experiment_yaml(gate="variant: v2\nnot_worse_than: v1"))
    code = main(["ab", "run", str(path), "--store", str(store.engine.url), "--json", "--no-progress"])
    out, _ = capsys.readouterr()
    assert code == EXIT_GATE_FAILED
    data = json.loads(out)
    assert data["gate"]["passed"] is False
    c = next(c for c in data["comparisons"] if c["metric"] == "pass_rate")
    assert c["paired"] and c["test"].startswith("McNemar (exact") and c["p"] < 0.001


def test_file_error_exits_with_its_own_code_and_line(
    sim: SimServer,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = experiment_yaml().replace("type: icontains", "type: icontain")
    path = write(tmp_path, text)
    code = main(["ab", "run", str(path), "--store", str(store.engine.url)])
    _, err = capsys.readouterr()
    assert code == EXIT_FILE_ERROR
    line = text.splitlines().index("    - type: icontain") + 1
    assert (
        f"{path}:{line}: defaults: assert[0]: unknown check type `icontain` (did you mean `icontains`?)"
        in err
    )
    assert chat_calls(sim) == 0


def test_llm_judge_scores_and_keeps_its_reasoning(
    sim: SimServer,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, experiment_yaml(cases=3, judge=True))
    assert main(["ab", "run", str(path), "--store", str(store.engine.url), "--no-progress"]) == EXIT_OK
    out, _ = capsys.readouterr()
    assert "judge score" in out
    run = q.list_runs(store.engine, "capitals")[0]
    results = q.fetch_results(store.engine, run.run_id)
    assert all(r.score == 4.0 for r in results)
    judge = [c for r in results for c in r.checks if c["type"] == "llm_judge"]
    assert len(judge) == 6 and all(c["reason"] == "faithful and short" and c["passed"] for c in judge)
    assert (
        sum(1 for r in sim.served.records() if r.endpoint == "messages") == 6
    )  # the judge target is Anthropic


def test_a_resumed_run_bills_nothing_twice(
    sim: SimServer,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, experiment_yaml(cases=20, repeat=2))
    exp = load_experiment(path)
    total = exp.total  # 20 cases x 2 variants x 2 repetitions

    async def partial() -> str:
        async with Gateway(store) as gw:
            runner: ExperimentRunner

            def stop_early(p: Progress) -> None:
                if p.done >= 15:
                    runner.cancel()

            runner = ExperimentRunner(gw, store, exp, on_progress=stop_early)
            outcome = await runner.run()
            assert outcome.status == "cancelled"
            return outcome.run_id

    run_id = asyncio.run(partial())
    stored = len(q.done_keys(store.engine, run_id))
    assert 15 <= stored < total
    calls_before = chat_calls(sim)
    assert calls_before >= stored
    code = main(["ab", "run", str(path), "--store", str(store.engine.url), "--resume", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == EXIT_OK, err
    assert f"({stored} were already done)" in err
    assert chat_calls(sim) - calls_before == total - stored  # only what was missing
    assert len(q.done_keys(store.engine, run_id)) == total
    assert q.get_run(store.engine, run_id).status == "done"  # type: ignore[union-attr]
    # a crash leaves the run "running": --resume RUN_ID picks it up and has nothing left to call
    q.set_run_status(store.engine, run_id, "running")
    code = main(
        ["ab", "run", str(path), "--store", str(store.engine.url), "--resume", run_id, "--no-progress"]
    )
    assert code == EXIT_OK
    assert chat_calls(sim) - calls_before == total - stored


def test_resume_refuses_a_changed_experiment(
    sim: SimServer,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, experiment_yaml(cases=4))
    run_id = "r-1"
    exp = load_experiment(path)
    from app.experiments.spec import experiment_to_data

    q.create_run(store.engine, run_id, exp.name, experiment_to_data(exp), exp.total)
    q.set_run_status(store.engine, run_id, "cancelled")
    write(tmp_path, experiment_yaml(cases=5))
    code = main(["ab", "run", str(path), "--store", str(store.engine.url), "--resume"])
    _, err = capsys.readouterr()
    assert code == 4 and "ran a different version" in err
    assert chat_calls(sim) == 0


def test_registry_prompts_are_rendered_by_the_gateway_and_pinned(
    sim: SimServer,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from storage.queries import prompts as registry
    from storage.queries.events import EventFilter, fetch_events

    registry.create_prompt(store.engine, "capital", actor="test")
    registry.add_version(store.engine, "capital", template="Write a line about {{ticket}}", actor="test")
    registry.add_version(
        store.engine, "capital", template="What is the capital of France? {{ticket}}", actor="test"
    )
    registry.set_active_version(store.engine, "capital", 2, actor="test", reason="test")
    text = (
        experiment_yaml(cases=3)
        .replace(
            '    template: "What is the capital of France? Ticket: {{ticket}}"', "    prompt: capital@active"
        )
        .replace('    template: "Write a line about {{ticket}}"', "    prompt: capital@1")
    )
    path = write(tmp_path, text)
    assert main(["ab", "run", str(path), "--store", str(store.engine.url), "--no-progress"]) == EXIT_OK
    run = q.list_runs(store.engine, "capitals")[0]
    assert [p["registry_version"] for p in run.spec["prompts"]] == [2, 1]  # @active pinned to 2
    results = q.fetch_results(store.engine, run.run_id)
    assert all(r.passed for r in results if r.variant == "v1")
    assert not any(r.passed for r in results if r.variant == "v2")
    events = fetch_events(store.engine, EventFilter(), limit=100).events
    assert sorted((e.prompt_name, e.prompt_version) for e in events if e.prompt_name) == (
        [("capital", 1)] * 3 + [("capital", 2)] * 3
    )
    # a version the registry does not have is a run error, before any call
    path.write_text(text.replace("capital@1", "capital@7"), encoding="utf-8")
    calls = chat_calls(sim)
    assert main(["ab", "run", str(path), "--store", str(store.engine.url)]) == 4
    assert "the registry has no capital@7" in capsys.readouterr().err
    assert chat_calls(sim) == calls


def test_unknown_target_is_a_run_error_before_any_call(
    sim: SimServer, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, experiment_yaml(cases=2).replace("targets: [fast]", "targets: [fastest]"))
    assert main(["ab", "run", str(path), "--store", str(store.engine.url)]) == 4
    assert "target `fastest` is not defined (targets: big, fast, strong)" in capsys.readouterr().err
    assert chat_calls(sim) == 0


@pytest.mark.postgres
def test_a_run_on_postgresql(
    sim: SimServer, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-ab-cli-0000000001")
    sim.set_scenario(GRADING_SCENARIO)
    with sim_store(sim, pg_url) as pg:
        path = write(tmp_path, experiment_yaml(cases=6, gate="variant: v1\nnot_worse_than: v2"))
        assert main(["ab", "run", str(path), "--store", pg_url, "--no-progress"]) == EXIT_OK
        run = q.list_runs(pg.engine, "capitals")[0]
        assert (run.status, run.done) == ("done", 12)
