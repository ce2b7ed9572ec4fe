"""The Experiments page driven as an operator would: open a file, run, read the verdict, edit the dataset,
cancel and resume, export and promote; the store and the simulator's ledger say what happened."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.sim import SimServer
from app.ui.models.experiments_model import (
    C_COL_SIGNIFICANT,
    COLOR_ROLE,
    SORT_ROLE,
    V_COL_PASS_RATE,
    CasesModel,
    ComparisonsModel,
    VariantsModel,
    diff_html,
    load_run,
)
from app.ui.models.runner import run_now
from app.ui.pages.experiments import ExperimentsPage
from app.ui.qt import Qt, QtWidgets
from storage.engine import Store
from storage.queries import experiments as q
from storage.queries import prompts as registry
from tests.integration.ab_support import GRADING_SCENARIO, KEY_ENV, chat_calls, experiment_yaml, sim_store

pytestmark = pytest.mark.gui


@pytest.fixture
def store(sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv(KEY_ENV, "sk-test-ab-ui-00000000001")
    sim.set_scenario(GRADING_SCENARIO)
    s = sim_store(sim, tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def page(qtbot: Any, store: Store) -> ExperimentsPage:
    p = ExperimentsPage()
    qtbot.addWidget(p)
    p.resize(1100, 800)
    p.attach_store(store, run_now)
    p.show()
    return p


def open_file(page: ExperimentsPage, tmp_path: Path, **kw: Any) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(experiment_yaml(**kw), encoding="utf-8")
    page.open_file(path)
    return path


def test_empty_page_says_what_to_do(page: ExperimentsPage) -> None:
    assert page.empty.isVisible()
    assert page.overview is not None and "controlroom ab run" in page.empty.label.text()


def test_open_run_and_read_the_verdict(
    qtbot: Any, page: ExperimentsPage, store: Store, sim: SimServer, tmp_path: Path
) -> None:
    open_file(page, tmp_path, cases=12, gate="variant: v2\nnot_worse_than: v1")
    assert not page.empty.isVisible()
    assert page.exp_combo.count() == 1 and page.exp_combo.itemText(0) == "capitals"
    assert q.get_experiment(store.engine, "capitals") is not None
    qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
    runs = q.list_runs(store.engine, "capitals")
    assert len(runs) == 1 and runs[0].status == "done" and runs[0].done == 24
    assert chat_calls(sim) == 24
    assert page.view is not None and page.view.run.run_id == runs[0].run_id
    text = page.verdict.text()
    assert "v2 passes fewer checks than v1: -100 points" in text
    assert "Gate FAILED" in text
    vm = page.variants_model
    assert vm.rowCount() == 2 and vm.index(0, V_COL_PASS_RATE).data().startswith("100% [")
    assert page.progress.value() == 24
    # side by side: case 1, v2 against the baseline v1, differences highlighted
    assert page.cases_model.rowCount() == 12
    assert page.left_variant.currentText() == "v2" and page.right_variant.currentText() == "v1"
    assert "Paris" in page.right_text.toPlainText() and "background" in page.right_text.toHtml()
    assert "icontains paris" in page.left_text.toPlainText()
    # exports
    assert page.export_text("csv").count("\n") == 25
    assert json.loads(page.export_text("json"))["gate"]["passed"] is False
    assert page.export_text("md").startswith("# A/B report: capitals")


def test_a_bad_file_is_refused_with_its_line(
    qtbot: Any, page: ExperimentsPage, store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(experiment_yaml().replace("repeat: 1", "repeat: 0"), encoding="utf-8")
    page.open_file(path)
    assert q.list_experiments(store.engine) == []
    assert f"{path}:9: repeat must be between 1 and 100" in page.problem_box.text()
    page.problem_box.close()


def test_edit_the_dataset_in_place_and_import(
    qtbot: Any, page: ExperimentsPage, store: Store, tmp_path: Path
) -> None:
    open_file(page, tmp_path, cases=2)
    page.tabs.setCurrentIndex(2)
    dm = page.dataset_model
    assert dm.rowCount() == 2
    assert [dm.headerData(j, Qt.Orientation.Horizontal) for j in range(dm.columnCount())] == [
        "ticket",
        "expected",
    ]
    assert not page.save_dataset_button.isEnabled()
    qtbot.mouseClick(page.add_row_button, Qt.MouseButton.LeftButton)
    assert dm.setData(dm.index(2, 0), "ticket new")  # what the cell editor does
    assert page.save_dataset_button.isEnabled()
    qtbot.mouseClick(page.save_dataset_button, Qt.MouseButton.LeftButton)
    spec = q.get_experiment(store.engine, "capitals").spec  # type: ignore[union-attr]
    assert [c["vars"]["ticket"] for c in spec["cases"]] == ["ticket 0", "ticket 1", "ticket new"]
    # a CSV replaces the table; saved only on Save
    csv_path = tmp_path / "cases.csv"
    csv_path.write_text("ticket,expected\nalpha,A\nbeta,B\ngamma,C\n", encoding="utf-8")
    assert page.import_dataset(csv_path)
    assert dm.rowCount() == 3 and "Unsaved" in page.dataset_note.text()
    qtbot.mouseClick(page.save_dataset_button, Qt.MouseButton.LeftButton)
    spec = q.get_experiment(store.engine, "capitals").spec  # type: ignore[union-attr]
    assert [(c["vars"]["ticket"], c["expected"]) for c in spec["cases"]] == [
        ("alpha", "A"),
        ("beta", "B"),
        ("gamma", "C"),
    ]
    # a bad file says where
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ticket": "x"}\nnot json\n', encoding="utf-8")
    assert not page.import_dataset(bad)
    assert f"{bad}:2: not valid JSON" in page.problem_box.text()
    page.problem_box.close()


def test_cancel_then_resume_bills_nothing_twice(
    qtbot: Any, page: ExperimentsPage, store: Store, sim: SimServer, tmp_path: Path
) -> None:
    open_file(page, tmp_path, cases=20)

    def stop_early(p: Any) -> None:
        if p.done >= 10 and page.cancel_button.isEnabled():
            qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)

    page.progress_interval_s = 0.0  # every result reports, so the cancel lands at 10 on any machine
    page._progress.connect(stop_early)
    qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
    page._progress.disconnect(stop_early)
    run = q.list_runs(store.engine, "capitals")[0]
    assert run.status == "cancelled" and 10 <= run.done < 40
    calls = chat_calls(sim)
    assert page.resume_button.isEnabled()
    qtbot.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
    after = q.get_run(store.engine, run.run_id)
    assert after is not None and after.status == "done" and after.done == 40
    assert chat_calls(sim) - calls == 40 - run.done  # only the missing cases were called


def test_promote_an_inline_winner(qtbot: Any, page: ExperimentsPage, store: Store, tmp_path: Path) -> None:
    open_file(page, tmp_path, cases=12)
    qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
    page.variants.selectRow(0)  # v1, the winner
    qtbot.mouseClick(page.promote_button, Qt.MouseButton.LeftButton)
    dialog = page.promote_dialog
    assert dialog.prompt_choice.isChecked() and dialog.prompt_name.isVisible()
    ok = dialog.findChild(QtWidgets.QDialogButtonBox).button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
    qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and "Name the prompt" in dialog.problem.text()  # asked, not promoted
    dialog.prompt_name.setText("capital-question")
    qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    prompt = registry.get_prompt(store.engine, "capital-question")
    assert prompt is not None and prompt.active_version == 1
    assert "audited" in page.progress_label.toolTip()


def test_diff_highlights_only_the_words_that_differ() -> None:
    left, right = diff_html("The capital is Paris.", "The capital is Rome.", removed="#f00", added="#0f0")
    assert '<span style="background:#f00">Paris</span>' in left
    assert '<span style="background:#0f0">Rome</span>' in right
    assert "The capital is " in left and "The capital is " in right


@pytest.fixture
def bridge(qapp: object) -> Iterator[Any]:
    from app.runtime import Runtime
    from app.ui.bridge import Bridge

    runtime = Runtime()
    runtime.start()
    yield Bridge(runtime)
    runtime.stop()


def test_a_run_off_the_gui_thread_reports_progress_and_cancels(
    qtbot: Any, store: Store, sim: SimServer, bridge: Any, tmp_path: Path
) -> None:
    """The app's way: work on the runtime's threads, progress back through a queued signal, Cancel
    pressed on the GUI thread while calls are in flight."""
    from app.ui.models.runner import bridge_runner

    slow = {**GRADING_SCENARIO, "defaults": {"ttft": 0.05, "tokens_per_s": 0}}
    sim.set_scenario(slow)
    page = ExperimentsPage()
    qtbot.addWidget(page)
    page.attach_store(store, bridge_runner(bridge))
    page.show()
    path = tmp_path / "exp.yaml"
    path.write_text(experiment_yaml(cases=40), encoding="utf-8")
    page.open_file(path)
    qtbot.waitUntil(lambda: page.exp_combo.count() == 1 and page.run_button.isEnabled(), timeout=10_000)
    qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
    assert page.cancel_button.isEnabled() and not page.run_button.isEnabled()
    qtbot.waitUntil(lambda: page.progress.value() >= 8, timeout=20_000)
    assert "ETA" in page.progress_label.text()
    qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.run_button.isEnabled(), timeout=20_000)
    run = q.list_runs(store.engine, "capitals")[0]
    assert run.status == "cancelled" and 8 <= run.done < 80
    qtbot.waitUntil(lambda: page.resume_button.isEnabled(), timeout=10_000)
    qtbot.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: q.get_run(store.engine, run.run_id).status == "done", timeout=30_000)  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: page.view is not None and page.view.run.status == "done", timeout=10_000)
    assert "v2 passes fewer checks than v1" in page.verdict.text()
    page.timer.stop()


def test_models_without_a_window(qtbot: Any, store: Store, sim: SimServer, tmp_path: Path) -> None:
    """The table models read a run as the page shows it, with sort and colour roles (style.md item 3)."""
    import asyncio

    from app.experiments.runner import run_experiment
    from app.experiments.spec import parse_experiment
    from app.gateway.engine import Gateway

    exp = parse_experiment(experiment_yaml(cases=12))

    async def go() -> str:
        async with Gateway(store) as gw:
            return (await run_experiment(gw, store, exp)).run_id

    view = load_run(store.engine, asyncio.run(go()))
    variants = VariantsModel()
    variants.set_variants(view.analysis.variants)
    assert variants.index(1, V_COL_PASS_RATE).data() == "0% [0, 24]"
    assert variants.index(0, V_COL_PASS_RATE).data(SORT_ROLE) == 1.0
    assert variants.index(1, 0).data(COLOR_ROLE) == "v1"
    comps = ComparisonsModel()
    comps.set_comparisons(view.analysis.comparisons)
    assert comps.index(0, 1).data() == "pass rate"
    assert comps.index(0, C_COL_SIGNIFICANT).data() == "yes"
    assert comps.index(0, C_COL_SIGNIFICANT).data(COLOR_ROLE) == "bad"  # v2 is worse
    assert "v2 passes fewer checks than v1" in comps.index(0, 0).data(Qt.ItemDataRole.ToolTipRole)
    cases = CasesModel()
    cases.set_view(view)
    assert cases.columnCount() == 4 and cases.headerData(1, Qt.Orientation.Horizontal) == "v1"
    assert (cases.index(0, 1).data(), cases.index(0, 2).data()) == ("✓", "✗ 1/2")
    assert cases.index(0, 2).data(SORT_ROLE) < cases.index(0, 1).data(SORT_ROLE)  # failures sort first
    assert "paris" in cases.index(0, 2).data(Qt.ItemDataRole.ToolTipRole)
    assert cases.index(3, 3).data() == "ticket=ticket 3"


def test_runs_on_the_targets_of_a_gateway_configured_in_code(
    qtbot: Any, sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's gateway has its targets in code, not in the store: a run from the page uses them."""
    from app.core.config import parse_config
    from app.gateway.engine import Gateway
    from storage.engine import open_store

    sim.set_scenario(GRADING_SCENARIO)
    config = parse_config(
        f"""
providers:
  - {{name: sim-openai, kind: openai, base_url: "{sim.openai_base_url}", api_key: keyring}}
  - {{name: sim-anthropic, kind: anthropic, base_url: "{sim.anthropic_base_url}", api_key: keyring}}
targets:
  - {{name: fast, provider: sim-openai, model: gpt-4o-mini}}
  - {{name: strong, provider: sim-anthropic, model: claude-sonnet-4-5}}
"""
    )
    with open_store(f"sqlite:///{tmp_path / 'demo.db'}") as bare:
        live = Gateway(bare, config=config, key_resolver=lambda provider, ref: "sk-demo-not-a-real-key-000")
        page = ExperimentsPage()
        qtbot.addWidget(page)
        page.attach_store(bare, run_now, lambda: live)
        open_file(page, tmp_path, cases=3)
        qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
        run = q.list_runs(bare.engine, "capitals")[0]
        assert (run.status, run.done) == ("done", 6)
        assert all(r.status == "ok" for r in q.fetch_results(bare.engine, run.run_id))
        page.timer.stop()


def test_f5_is_the_run_key(page: ExperimentsPage) -> None:
    """ui.md: F5 re-runs the selected experiment (the button's key; offscreen key delivery to
    shortcuts is not reliable, so the binding is what is checked here)."""
    assert page.run_button.shortcut().toString() == "F5" and "F5" in page.run_button.toolTip()


def test_comparison_differences_carry_their_units_and_no_minus_zero() -> None:
    from app.experiments.stats import Comparison
    from app.ui.models.experiments_model import comparison_difference

    def comp(metric: str, diff: float, ci: tuple[float, float]) -> Comparison:
        return Comparison("v2", "v1", metric, diff, ci, 0.5, "t", True, 12, False, False, False, "")

    assert comparison_difference(comp("latency_ms", -0.4, (-3.2, 2.1))) == "0 ms [-3, 2]"
    assert comparison_difference(comp("latency_ms", 12.6, (4.0, 20.0))) == "+13 ms [4, 20]"
    assert (
        comparison_difference(comp("cost_usd", 0.000009, (0.000009, 0.00001)))
        == "+$0.000009 [$0.000009, $0.00001]"
    )
    assert comparison_difference(comp("cost_usd", -0.0042, (-0.005, -0.003))) == "-$0.0042 [-$0.005, -$0.003]"
    assert comparison_difference(comp("pass_rate", 0.12, (0.04, 0.2))).startswith("+12 pts")
