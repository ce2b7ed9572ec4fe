"""The Experiments page: A/B tests of prompts and models, run within rate limits, judged with statistics.

Left: experiments and their runs.  Right, in tabs: the results of the selected
run (per-variant pass rates with intervals, the verdict in plain words, charts,
exports, Promote), the outputs side by side with their differences
highlighted, and the dataset, editable in place (import CSV/JSONL).  Run shows
a progress bar with the ETA and the running cost; Cancel stops it and Resume
finishes it later without paying twice for what is done.

Every store read and the run itself go through the page's runner (off the GUI
thread); progress comes back through a queued signal.
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.core.format import fmt_latency_ms, fmt_usd
from app.experiments import report
from app.experiments.promote import PromoteError, Promotion, promote_prompt, start_canary
from app.experiments.runner import ExperimentRunner, Progress, RunOutcome
from app.experiments.spec import Case, Experiment, ExperimentError
from app.experiments.stats import Analysis
from app.ui.charts import pg
from app.ui.models.experiments_model import (
    C_COL_TEST,
    SORT_ROLE,
    VARIANT_COLORS,
    CasesModel,
    ComparisonsModel,
    DatasetModel,
    ExperimentEntry,
    Overview,
    RunView,
    VariantsModel,
    cases_from_rows,
    check_dataset,
    check_summary,
    diff_html,
    import_cases,
    load_page,
    load_run,
    open_experiment_file,
    run_blocking,
    save_definition,
)
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtCore, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import Colors, current_colors
from storage.queries.control import list_objects

REFRESH_MS = 5000
STATUS_COLORS = {"done": "ok", "running": "warn", "cancelled": "muted", "failed": "bad"}


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER and no passwd entry
        return "unknown"


def _when(ts: float) -> str:
    return time.strftime("%d %b %H:%M", time.localtime(ts))


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _view(model: QtCore.QAbstractItemModel, *, stretch: int | None = None) -> QtWidgets.QTableView:
    """A read-only table view of ``model``: whole rows selected, columns sized to their contents."""
    t = QtWidgets.QTableView()
    t.setModel(model)
    t.verticalHeader().setVisible(False)
    t.verticalHeader().setDefaultSectionSize(t.fontMetrics().height() + 10)
    t.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
    t.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
    t.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setAlternatingRowColors(True)
    t.setWordWrap(False)
    t.setTextElideMode(Qt.TextElideMode.ElideRight)
    header = t.horizontalHeader()
    header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(stretch is None)
    if stretch is not None:
        header.setSectionResizeMode(stretch, QtWidgets.QHeaderView.ResizeMode.Stretch)
    return t


class DistributionCharts(QtWidgets.QWidget):
    """Pass rate per variant with its Wilson interval, and the latency distribution per variant."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.pass_plot = pg.PlotWidget()
        self.lat_plot = pg.PlotWidget()
        for w, title, unit in (
            (self.pass_plot, "Pass rate, 95% interval", "%"),
            (self.lat_plot, "Latency distribution", "ms"),
        ):
            w.setMenuEnabled(False)
            w.hideButtons()
            w.setMouseEnabled(x=False, y=False)
            w.setTitle(title, size="9pt")
            w.setLabel("left", unit)
            w.showGrid(x=False, y=True, alpha=0.18)
            w.setMinimumHeight(190)
            w.setMaximumHeight(260)
            layout.addWidget(w)
        self.lat_plot.addLegend(offset=(-6, 6), labelTextSize="8pt")
        self.apply_colors(current_colors())

    def apply_colors(self, colors: Colors) -> None:
        for w in (self.pass_plot, self.lat_plot):
            w.setBackground(colors.base)
            for axis in ("left", "bottom"):
                ax = w.getAxis(axis)
                ax.setPen(pg.mkPen(colors.border))
                ax.setTextPen(pg.mkPen(colors.muted))
            w.getPlotItem().titleLabel.setText(w.getPlotItem().titleLabel.text, color=colors.text, size="9pt")

    def set_view(self, view: RunView | None) -> None:
        colors = current_colors()
        self.pass_plot.clear()
        self.lat_plot.clear()
        legend = self.lat_plot.getPlotItem().legend
        if legend is not None:
            legend.clear()
        if view is None:
            return
        names = [v.name for v in view.analysis.variants]
        x = np.arange(len(names), dtype=float)
        rates = np.array([(v.pass_rate or 0.0) * 100 for v in view.analysis.variants])
        brushes = [pg.mkBrush(VARIANT_COLORS[i % len(VARIANT_COLORS)]) for i in range(len(names))]
        self.pass_plot.addItem(
            pg.BarGraphItem(x=x, height=rates, width=0.6, brushes=brushes, pen=pg.mkPen(None))
        )
        lo = np.array(
            [
                (v.pass_rate or 0) * 100 - (v.pass_ci[0] * 100 if v.pass_ci else 0)
                for v in view.analysis.variants
            ]
        )
        hi = np.array(
            [
                (v.pass_ci[1] * 100 if v.pass_ci else 0) - (v.pass_rate or 0) * 100
                for v in view.analysis.variants
            ]
        )
        self.pass_plot.addItem(
            pg.ErrorBarItem(x=x, y=rates, top=hi, bottom=lo, beam=0.2, pen=pg.mkPen(colors.text, width=1.5))
        )
        self.pass_plot.getAxis("bottom").setTicks([list(zip(x, names, strict=True))])
        self.pass_plot.setYRange(0, 105, padding=0)
        self.pass_plot.setXRange(-0.6, len(names) - 0.4, padding=0)
        lat = {
            name: [
                r.latency_ms
                for r in view.results
                if r.variant == name and r.status == "ok" and r.latency_ms is not None
            ]
            for name in names
        }
        every = [v for vs in lat.values() for v in vs]
        if every:
            top = float(np.percentile(every, 99)) or 1.0
            edges = np.linspace(0.0, top * 1.05, 25)
            for i, name in enumerate(names):
                if not lat[name]:
                    continue
                counts, _ = np.histogram(np.clip(lat[name], 0, edges[-1]), bins=edges)
                share = counts / max(len(lat[name]), 1) * 100
                color = VARIANT_COLORS[i % len(VARIANT_COLORS)]
                self.lat_plot.plot(edges, share, stepMode="center", pen=pg.mkPen(color, width=2), name=name)
            self.lat_plot.setLabel("left", "% of calls")
            self.lat_plot.setLabel("bottom", "latency, ms")


class PromoteDialog(QtWidgets.QDialog):
    """What promoting the variant will do, and why: the reason goes in the audit log."""

    def __init__(
        self,
        exp: Experiment,
        variant: str,
        routes: list[str],
        sentence: str,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Promote {variant}")
        self.exp, self.variant = exp, variant
        v = exp.variant(variant)
        base = exp.variant(exp.baseline)
        layout = QtWidgets.QVBoxLayout(self)
        intro = QtWidgets.QLabel(f"<b>{variant}</b> against <b>{exp.baseline}</b>: {sentence}")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.prompt_choice = QtWidgets.QRadioButton()
        self.canary_choice = QtWidgets.QRadioButton()
        self.prompt_name = QtWidgets.QLineEdit()
        self.prompt_name.setPlaceholderText("prompt name (saved as a new version)")
        if v.prompt.registry_name is not None:
            self.prompt_choice.setText(
                f"Make {v.prompt.registry_name}@{v.prompt.registry_version} the active version "
                "(every gateway within a second)"
            )
            self.prompt_name.setVisible(False)
        else:
            self.prompt_choice.setText(
                "Save this inline prompt as a new version of a prompt and make it active:"
            )
        layout.addWidget(self.prompt_choice)
        layout.addWidget(self.prompt_name)
        canary_ok = v.target != base.target and bool(routes)
        self.canary_choice.setText(
            f"Start a canary: on a route, send a share of {base.target}'s traffic to {v.target}"
            if v.target != base.target
            else f"Canary: not possible, {variant} runs on the baseline's target ({v.target})"
        )
        self.canary_choice.setEnabled(canary_ok)
        layout.addWidget(self.canary_choice)
        row = QtWidgets.QHBoxLayout()
        self.route = QtWidgets.QComboBox()
        self.route.addItems(routes)
        self.weight = QtWidgets.QSpinBox()
        self.weight.setRange(1, 50)
        self.weight.setValue(10)
        self.weight.setSuffix(" %")
        row.addWidget(QtWidgets.QLabel("route"))
        row.addWidget(self.route, 1)
        row.addWidget(QtWidgets.QLabel("share"))
        row.addWidget(self.weight)
        layout.addLayout(row)
        for w in (self.route, self.weight):
            w.setEnabled(canary_ok)
        self.prompt_choice.setChecked(True)
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("why (required; goes in the audit log)")
        self.reason.setText(f"A/B {exp.name}: {sentence[:120]}")
        layout.addWidget(QtWidgets.QLabel("Reason"))
        layout.addWidget(self.reason)
        self.problem = QtWidgets.QLabel("", objectName="muted")
        self.problem.setWordWrap(True)
        layout.addWidget(self.problem)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok).setText("Promote")
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _accept(self) -> None:
        if not self.reason.text().strip():
            self.problem.setText("A reason is required.")
            return
        if (
            self.prompt_choice.isChecked()
            and self.prompt_name.isVisible()
            and not self.prompt_name.text().strip()
        ):
            self.problem.setText("Name the prompt to save this version under.")
            return
        self.accept()

    def action(self) -> tuple[str, dict[str, Any]]:
        reason = self.reason.text().strip()
        if self.canary_choice.isChecked():
            return "canary", {
                "route": self.route.currentText(),
                "weight": self.weight.value(),
                "reason": reason,
            }
        return "prompt", {"prompt_name": self.prompt_name.text().strip() or None, "reason": reason}


class ExperimentsPage(QtWidgets.QWidget):
    #: At most this often a run reports progress (the bar, ETA and cost).
    progress_interval_s = 0.1
    status_message = Signal(str)
    _progress = Signal(object)  # Progress, from the run's worker thread (queued to the GUI thread)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("experimentsPage")
        spec = page_spec("experiments")
        self._runner: Runner | None = None
        self._store_getter: Any = lambda: None
        self._gateway_getter: Any = lambda: None
        self._busy = False
        self.overview: Overview | None = None
        self.view: RunView | None = None
        self.running: ExperimentRunner | None = None
        self._run_active = False
        self._selected_exp: str | None = None
        self._selected_run: str | None = None
        self._dataset_cases: list[Case] = []
        self._dataset_dirty = False
        self._last_outcome: RunOutcome | None = None

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(PageHeader(spec.title, spec.purpose))

        pickers = QtWidgets.QHBoxLayout()
        self.exp_combo = QtWidgets.QComboBox()
        self.exp_combo.setObjectName("experimentPicker")
        self.exp_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.exp_combo.setMinimumContentsLength(18)
        self.run_combo = QtWidgets.QComboBox()
        self.run_combo.setObjectName("runPicker")
        self.run_combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.run_combo.setMinimumContentsLength(30)
        self.exp_label = QtWidgets.QLabel("Experiment")
        self.run_label = QtWidgets.QLabel("Run")
        pickers.addWidget(self.exp_label)
        pickers.addWidget(self.exp_combo)
        pickers.addSpacing(12)
        pickers.addWidget(self.run_label)
        pickers.addWidget(self.run_combo)
        pickers.addStretch(1)
        self.open_button = QtWidgets.QPushButton("Open file…")
        self.open_button.setToolTip("Open an experiment file (YAML, config.md) and keep it in the store")
        pickers.addWidget(self.open_button)
        layout.addLayout(pickers)
        self.summary = QtWidgets.QLabel("", objectName="muted")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)

        bar = QtWidgets.QHBoxLayout()
        self.run_button = QtWidgets.QPushButton("Run")
        self.run_button.setToolTip("Run the selected experiment (F5)")
        self.run_button.setShortcut(QtGui.QKeySequence("F5"))
        self.resume_button = QtWidgets.QPushButton("Resume")
        self.resume_button.setToolTip(
            "Finish the selected cancelled or interrupted run; nothing done is paid twice"
        )
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("%v / %m")
        self.progress.setMinimumWidth(160)
        self.progress.setVisible(False)  # shown while a run is made, and after it
        self.progress_label = QtWidgets.QLabel("", objectName="muted")
        for w in (self.run_button, self.resume_button, self.cancel_button):
            w.setSizePolicy(QtWidgets.QSizePolicy.Policy.Maximum, QtWidgets.QSizePolicy.Policy.Fixed)
            bar.addWidget(w)
        bar.addWidget(self.progress, 1)
        bar.addWidget(self.progress_label)
        bar.addStretch(0)
        layout.addLayout(bar)

        self.empty = EmptyState(
            "No experiments yet. Open an experiment file (prompts, targets, tests and checks; see config.md), "
            "or run one headless with controlroom ab run FILE.yaml."
        )
        layout.addWidget(self.empty)
        self._filler = QtWidgets.QWidget()  # takes the spare height while there is nothing to show
        layout.addWidget(self._filler, 1)

        self.tabs = QtWidgets.QTabWidget()
        layout.addWidget(self.tabs, 1)

        # Results
        results = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(results)
        rl.setContentsMargins(8, 8, 8, 8)
        self.verdict = QtWidgets.QLabel("")
        self.verdict.setObjectName("verdict")
        self.verdict.setWordWrap(True)
        self.verdict.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rl.addWidget(self.verdict)
        self.variants_model = VariantsModel(self)
        self.variants = _view(self.variants_model)
        self.variants.setToolTip("Select a variant to promote it")
        rl.addWidget(self.variants)
        self.comparisons_model = ComparisonsModel(self)
        self.comparisons = _view(self.comparisons_model, stretch=C_COL_TEST)
        rl.addWidget(self.comparisons)
        self.charts = DistributionCharts()
        rl.addWidget(self.charts, 1)
        actions = QtWidgets.QHBoxLayout()
        self.export_csv = QtWidgets.QPushButton("Export CSV…")
        self.export_json = QtWidgets.QPushButton("Export JSON…")
        self.export_md = QtWidgets.QPushButton("Export report…")
        self.promote_button = QtWidgets.QPushButton("Promote…")
        self.promote_button.setToolTip(
            "Make the selected variant's prompt version active, or start it as a canary"
        )
        for w in (self.export_csv, self.export_json, self.export_md):
            actions.addWidget(w)
        actions.addStretch(1)
        actions.addWidget(self.promote_button)
        rl.addLayout(actions)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(results)
        self.tabs.addTab(scroll, "Results")

        # Outputs side by side
        outputs = QtWidgets.QWidget()
        ol = QtWidgets.QVBoxLayout(outputs)
        ol.setContentsMargins(8, 8, 8, 8)
        self.cases_model = CasesModel(self)
        self.cases_proxy = QtCore.QSortFilterProxyModel(self)
        self.cases_proxy.setSourceModel(self.cases_model)
        self.cases_proxy.setSortRole(SORT_ROLE)
        self.cases = _view(self.cases_proxy)
        self.cases.setSortingEnabled(True)
        self.cases.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.cases.setToolTip("Sort a variant's column to see its failures first")
        ol.addWidget(self.cases, 2)
        pick = QtWidgets.QHBoxLayout()
        self.left_variant = QtWidgets.QComboBox()
        self.right_variant = QtWidgets.QComboBox()
        self.repetition = QtWidgets.QSpinBox()
        self.repetition.setPrefix("repetition ")
        self.repetition.setMinimum(1)
        pick.addWidget(self.left_variant, 1)
        pick.addWidget(QtWidgets.QLabel("vs"))
        pick.addWidget(self.right_variant, 1)
        pick.addWidget(self.repetition)
        ol.addLayout(pick)
        self.diff_legend = QtWidgets.QLabel(
            "Highlighted: words only the left output has (green) and only the right one has (red).",
            objectName="muted",
        )
        ol.addWidget(self.diff_legend)
        panes = QtWidgets.QHBoxLayout()
        self.left_text = QtWidgets.QTextBrowser()
        self.right_text = QtWidgets.QTextBrowser()
        panes.addWidget(self.left_text)
        panes.addWidget(self.right_text)
        ol.addLayout(panes, 3)
        self.tabs.addTab(outputs, "Outputs")

        # Dataset
        dataset = QtWidgets.QWidget()
        dl = QtWidgets.QVBoxLayout(dataset)
        dl.setContentsMargins(8, 8, 8, 8)
        self.dataset_note = QtWidgets.QLabel("", objectName="muted")
        self.dataset_note.setWordWrap(True)
        dl.addWidget(self.dataset_note)
        self.dataset_model = DatasetModel(self)
        self.dataset = QtWidgets.QTableView()
        self.dataset.setModel(self.dataset_model)
        self.dataset.setAlternatingRowColors(True)
        self.dataset.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Interactive)
        self.dataset.horizontalHeader().setStretchLastSection(True)
        self.dataset.setWordWrap(False)
        self.dataset.verticalHeader().setDefaultSectionSize(self.dataset.fontMetrics().height() + 10)
        dl.addWidget(self.dataset, 1)
        drow = QtWidgets.QHBoxLayout()
        self.import_button = QtWidgets.QPushButton("Import CSV/JSONL…")
        self.add_row_button = QtWidgets.QPushButton("Add row")
        self.remove_row_button = QtWidgets.QPushButton("Remove row")
        self.save_dataset_button = QtWidgets.QPushButton("Save dataset")
        for w in (self.import_button, self.add_row_button, self.remove_row_button):
            drow.addWidget(w)
        drow.addStretch(1)
        drow.addWidget(self.save_dataset_button)
        dl.addLayout(drow)
        self.tabs.addTab(dataset, "Dataset")

        self.open_button.clicked.connect(self._choose_file)
        self.run_button.clicked.connect(self.start_run)
        self.resume_button.clicked.connect(self.resume_run)
        self.cancel_button.clicked.connect(self.cancel_run)
        self.exp_combo.currentIndexChanged.connect(self._on_exp_selected)
        self.run_combo.currentIndexChanged.connect(self._on_run_selected)
        self.cases.selectionModel().selectionChanged.connect(self._show_outputs)
        self.left_variant.currentIndexChanged.connect(self._show_outputs)
        self.right_variant.currentIndexChanged.connect(self._show_outputs)
        self.repetition.valueChanged.connect(self._show_outputs)
        self.export_csv.clicked.connect(lambda: self._export("csv"))
        self.export_json.clicked.connect(lambda: self._export("json"))
        self.export_md.clicked.connect(lambda: self._export("md"))
        self.promote_button.clicked.connect(self._promote)
        self.import_button.clicked.connect(self._choose_dataset)
        self.add_row_button.clicked.connect(self._add_row)
        self.remove_row_button.clicked.connect(self._remove_row)
        self.save_dataset_button.clicked.connect(self.save_dataset)
        self.dataset_model.edited.connect(self._on_dataset_edit)
        self._progress.connect(self._on_progress)

        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self._retry = QTimer(self)
        self._retry.setSingleShot(True)
        self._retry.setInterval(300)
        self._retry.timeout.connect(self.refresh)
        self._show_overview()

    # --- store --------------------------------------------------------------------------------

    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        self._runner = runner
        self._store_getter = store if callable(store) else (lambda: store)
        self._gateway_getter = gateway if callable(gateway) else (lambda: gateway)
        app = QtWidgets.QApplication.instance()
        if app is not None:  # a run in flight stops (resumable) when the app quits
            app.aboutToQuit.connect(self.cancel_run)
        self.refresh()
        self.timer.start()

    def _store(self) -> Any:
        return self._store_getter()

    def refresh(self) -> None:
        store = self._store()
        if self._runner is not None and store is None and not self._retry.isActive():
            self._retry.start()
        if self._runner is None or store is None or self._busy:
            return
        self._busy = True
        engine, exp, run = store.engine, self._selected_exp, self._selected_run
        v = self.view
        shown = (v.run.run_id, v.run.done, v.run.status) if v is not None else None
        self._runner(lambda: load_page(engine, exp, run, shown), self._on_overview, self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self._say(f"Experiments: the store could not answer: {exc}")

    def _say(self, text: str) -> None:
        self.progress_label.setText(text if len(text) < 90 else text[:87] + "…")
        self.progress_label.setToolTip(text)
        self.status_message.emit(text)

    def _on_overview(self, answer: tuple[Overview, RunView | None]) -> None:
        self._busy = False
        overview, view = answer
        self.overview = overview
        if view is not None and self._selected_exp in (None, view.run.experiment):
            self._selected_exp = view.run.experiment
            self._selected_run = view.run.run_id
            self._set_view(view)
        self._show_overview()

    def _entry(self) -> ExperimentEntry | None:
        if self.overview is None or self._selected_exp is None:
            return None
        return next((e for e in self.overview.experiments if e.name == self._selected_exp), None)

    def _show_overview(self) -> None:
        entries = self.overview.experiments if self.overview else []
        has = bool(entries)
        self.empty.setVisible(not has)
        self._filler.setVisible(not has)
        self.tabs.setVisible(has)
        self.empty.setText(
            "Reading the store…"
            if self.overview is None
            else "No experiments yet. Open an experiment file (prompts, targets, tests and checks; see "
            "config.md), or run one headless with controlroom ab run FILE.yaml."
        )
        for w in (self.exp_label, self.exp_combo, self.run_label, self.run_combo, self.run_button,
                  self.resume_button, self.cancel_button):  # fmt: skip
            w.setVisible(has)
        if self._selected_exp is None and entries:
            self._selected_exp = entries[0].name
        self.exp_combo.blockSignals(True)
        self.exp_combo.clear()
        for i, e in enumerate(entries):
            last = e.runs[0] if e.runs else None
            self.exp_combo.addItem(e.name, e.name)
            if e.experiment is not None:
                tip = (
                    f"{len(e.experiment.variants)} variants x {len(e.experiment.cases)} cases x "
                    f"{e.experiment.repeat}; last run: {last.status if last else 'never'}"
                )
            else:
                tip = e.problem or ""
            self.exp_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
            if e.name == self._selected_exp:
                self.exp_combo.setCurrentIndex(i)
        self.exp_combo.blockSignals(False)
        self._show_summary()
        self._show_runs()
        self._update_buttons()

    def _show_summary(self) -> None:
        entry = self._entry()
        exp = entry.experiment if entry else None
        self.summary.setVisible(exp is not None or bool(entry and entry.problem))
        if exp is None:
            self.summary.setText(entry.problem or "" if entry else "")
            return
        prompts = ", ".join(
            f"{p.id} = {p.registry_name}@{p.registry_version}" if p.registry_name else f"{p.id} (inline)"
            for p in exp.prompts
        )
        checks = ", ".join(dict.fromkeys(c.label() for c in exp.default_asserts)) or "per case"
        self.summary.setText(
            f"{len(exp.variants)} variants: {prompts} on {', '.join(exp.targets)} · baseline {exp.baseline} · "
            f"{len(exp.cases)} cases x {exp.repeat} repetition{'' if exp.repeat == 1 else 's'} · checks: {checks}"
        )
        self.summary.setToolTip(exp.description or exp.source)

    def _show_runs(self) -> None:
        entry = self._entry()
        runs = entry.runs if entry else []
        colors = current_colors()
        if runs and (self._selected_run is None or all(r.run_id != self._selected_run for r in runs)):
            self._selected_run = runs[0].run_id
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        for i, r in enumerate(runs):
            self.run_combo.addItem(
                f"{_when(r.started_at)} · {r.status} · {r.done}/{r.total} · {fmt_usd(r.cost_usd)}", r.run_id
            )
            key = STATUS_COLORS.get(r.status, "muted")
            self.run_combo.setItemData(
                i, QtGui.QColor(getattr(colors, key, colors.muted)), Qt.ItemDataRole.ForegroundRole
            )
            self.run_combo.setItemData(
                i, f"run {r.run_id}" + (f": {r.error}" if r.error else ""), Qt.ItemDataRole.ToolTipRole
            )
            if r.run_id == self._selected_run:
                self.run_combo.setCurrentIndex(i)
        if not runs:
            self.run_combo.addItem("no runs yet: press Run", None)
        self.run_combo.setEnabled(bool(runs))
        self.run_combo.blockSignals(False)
        if not runs:
            self._selected_run = None
            self._set_view(None)
        elif self.view is None or self.view.run.run_id != self._selected_run or self._changed(runs):
            self._load_run()
        if not self._dataset_dirty:
            self._show_dataset()

    def _changed(self, runs: list[Any]) -> bool:
        cur = next((r for r in runs if r.run_id == self._selected_run), None)
        return (
            cur is not None
            and self.view is not None
            and (cur.done, cur.status)
            != (
                self.view.run.done,
                self.view.run.status,
            )
        )

    def _on_exp_selected(self, index: int) -> None:
        name = self.exp_combo.itemData(index)
        if name and name != self._selected_exp:
            self._selected_exp = name
            self._selected_run = None
            self._dataset_dirty = False
            self.view = None
            self._show_summary()
            self._show_runs()
            self._update_buttons()

    def _on_run_selected(self, index: int) -> None:
        run_id = self.run_combo.itemData(index)
        if run_id and run_id != self._selected_run:
            self._selected_run = run_id
            self._load_run()
        self._update_buttons()

    def _load_run(self) -> None:
        store = self._store()
        if store is None or self._runner is None or self._selected_run is None:
            return
        engine, run_id = store.engine, self._selected_run
        self._runner(lambda: load_run(engine, run_id), self._set_view, self._on_error)

    # --- results ------------------------------------------------------------------------------

    def _set_view(self, view: RunView | None) -> None:
        if view is not None and view.run.run_id != self._selected_run:
            return  # an older answer for a run no longer selected
        self.view = view
        colors = current_colors()
        an = view.analysis if view else None
        self._show_verdict(an, view, colors)
        self.variants_model.set_variants(an.variants if an else [])
        self.comparisons_model.set_comparisons(an.comparisons if an else [])
        self._fit_table(self.variants)
        self._fit_table(self.comparisons)
        self.charts.set_view(view)
        for w in (self.variants, self.comparisons, self.charts):
            w.setVisible(view is not None)
        self._show_cases()
        self._update_buttons()

    def _fit_table(self, t: QtWidgets.QTableView) -> None:
        rows = t.model().rowCount()
        h = t.horizontalHeader().sizeHint().height() + 4 + sum(t.rowHeight(i) for i in range(rows))
        t.setFixedHeight(min(max(h, 60), 190))

    def _show_verdict(self, an: Analysis | None, view: RunView | None, colors: Colors) -> None:
        if an is None or view is None:
            entry = self._entry()
            if entry is not None and not entry.runs:
                self.verdict.setText("No run yet. Press Run to call every variant on every case.")
            else:
                self.verdict.setText("Loading the run…" if entry else "")
            return
        lines = []
        run = view.run
        judge = f" + judge {fmt_usd(view.judge_cost_usd)}" if view.judge_cost_usd else ""
        head = (
            f"Run {_when(run.started_at)} · {run.status} · {run.done}/{run.total} results · "
            f"{fmt_usd(run.cost_usd)}{judge}"
        )
        lines.append(f'<span style="color:{colors.muted}">{head}</span>')
        for v in an.verdicts or ["Only one variant: nothing to compare."]:
            lines.append(f"<b>{_html(v)}</b>")
        if an.gate is not None:
            colour = colors.ok if an.gate.passed else colors.bad
            word = "passed" if an.gate.passed else "FAILED"
            metric = report.METRIC_WORDS.get(an.gate.metric, an.gate.metric)
            lines.append(
                f'<span style="color:{colour}"><b>Gate {word}</b> ({metric}): {_html(an.gate.reason)}</span>'
            )
        for w in an.warnings:
            lines.append(f'<span style="color:{colors.warn}">{_html(w)}</span>')
        self.verdict.setText("<br>".join(lines))

    def _selected_variant(self) -> str | None:
        rows = self.variants.selectionModel().selectedRows()
        if not rows or self.view is None:
            return None
        return self.variants_model.variant(rows[0].row()).name

    # --- outputs side by side -----------------------------------------------------------------

    def _show_cases(self) -> None:
        view = self.view
        names = [v.name for v in view.experiment.variants] if view else []
        selected = self._selected_case()
        self.cases_model.set_view(view)
        header = self.cases.horizontalHeader()
        header.setStretchLastSection(True)
        for combo, default in ((self.left_variant, 1 if len(names) > 1 else 0), (self.right_variant, 0)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            combo.setCurrentIndex(names.index(current) if current in names else min(default, len(names) - 1))
            combo.blockSignals(False)
        self.repetition.setMaximum(view.experiment.repeat if view else 1)
        if view is not None and view.experiment.cases:
            row = 0
            for r in range(self.cases_model.rowCount()):
                if self.cases_model.case(r).index == selected:
                    row = r
            self.cases.selectRow(self.cases_proxy.mapFromSource(self.cases_model.index(row, 0)).row())
        self._show_outputs()

    def _selected_case(self) -> int | None:
        rows = self.cases.selectionModel().selectedRows()
        if not rows:
            return None
        source = self.cases_proxy.mapToSource(rows[0])
        return self.cases_model.case(source.row()).index if source.isValid() else None

    def _show_outputs(self) -> None:
        view = self.view
        case_index = self._selected_case() if view else None
        if view is None or case_index is None:
            self.left_text.setHtml("")
            self.right_text.setHtml("")
            return
        rep = self.repetition.value() - 1
        per = view.by_case.get(case_index, {})

        def pick(name: str) -> Any:
            return next((r for r in per.get(name, []) if r.repetition == rep), None)

        a_name, b_name = self.left_variant.currentText(), self.right_variant.currentText()
        a, b = pick(a_name), pick(b_name)
        colors = current_colors()
        removed = _tint(colors.bad, colors)
        added = _tint(colors.ok, colors)
        ta = (a.output or a.error or "") if a else ""
        tb = (b.output or b.error or "") if b else ""
        # The right-hand side is the reference (the baseline by default): words only the left has are green.
        hb, ha = diff_html(tb, ta, removed=removed, added=added)
        self.left_text.setHtml(_pane(a_name, a, ha, colors))
        self.right_text.setHtml(_pane(b_name, b, hb, colors))

    # --- dataset ------------------------------------------------------------------------------

    def _show_dataset(self) -> None:
        entry = self._entry()
        exp = entry.experiment if entry else None
        cases = list(exp.cases) if exp else []
        self._dataset_cases = cases
        self._fill_dataset(cases)
        self._dataset_dirty = False
        self._dataset_note()

    def _fill_dataset(self, cases: list[Case]) -> None:
        self.dataset_model.set_cases(cases)
        self.dataset.resizeColumnsToContents()
        for j in range(self.dataset_model.columnCount() - 1):  # readable, never wider than a third
            self.dataset.setColumnWidth(j, min(max(self.dataset.columnWidth(j), 80), 360))

    def _dataset_note(self, extra: str = "") -> None:
        entry = self._entry()
        exp = entry.experiment if entry else None
        if exp is None:
            self.dataset_note.setText("")
            return
        state = "Unsaved changes. " if self._dataset_dirty else ""
        self.dataset_note.setText(
            f"{state}{self.dataset_model.rowCount()} rows. Edit cells in place, or import a CSV (a header row of "
            "variable names) or a JSONL file (one object of variables per line); a column named expected "
            "is what equals/contains checks without a value compare with. A new run uses the saved dataset."
            + (f" {extra}" if extra else "")
        )

    def _on_dataset_edit(self) -> None:
        self._dataset_dirty = True
        self._dataset_note()
        self._update_buttons()

    def _add_row(self) -> None:
        row = self.dataset_model.add_row()
        self.dataset.setCurrentIndex(self.dataset_model.index(row, 0))

    def _remove_row(self) -> None:
        rows = {i.row() for i in self.dataset.selectedIndexes()}
        self.dataset_model.remove_rows(sorted(rows) or [self.dataset_model.rowCount() - 1])

    def _choose_dataset(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Import cases", "", "Cases (*.csv *.tsv *.jsonl *.ndjson);;All files (*)"
        )
        if path:
            self.import_dataset(path)

    def import_dataset(self, path: str | Path) -> bool:
        """Replace the table with the cases of a CSV or JSONL file (saved with Save dataset)."""
        try:
            cases = import_cases(path)
        except ExperimentError as exc:
            self._show_problems("The file was not imported", exc)
            return False
        self._fill_dataset(cases)
        self._dataset_dirty = True
        self._dataset_note(f"Imported {len(cases)} rows from {Path(path).name}.")
        self._update_buttons()
        return True

    def save_dataset(self) -> None:
        entry = self._entry()
        store = self._store()
        if entry is None or entry.experiment is None or store is None or self._runner is None:
            return
        cases = cases_from_rows(self.dataset_model.columns, self.dataset_model.rows(), self._dataset_cases)
        exp = entry.experiment.with_cases(tuple(cases))
        problems = check_dataset(exp, cases)
        if problems:
            QtWidgets.QMessageBox.warning(
                self,
                "Dataset not saved",
                "The dataset does not fit the prompts:\n\n" + "\n".join(problems[:12]),
            )
            return
        engine = store.engine

        def done(_: Any) -> None:
            self._dataset_dirty = False
            self._say(f"Saved {len(cases)} cases of {exp.name}")
            self.refresh()

        self._runner(lambda: save_definition(engine, exp), done, self._on_error)

    # --- open, run, resume, cancel ------------------------------------------------------------

    def _choose_file(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self, "Open an experiment file", "", "Experiment files (*.yaml *.yml);;All files (*)"
        )
        if path:
            self.open_file(path)

    def open_file(self, path: str | Path) -> None:
        store = self._store()
        if store is None or self._runner is None:
            self._say("The store is not open yet")
            return

        def done(exp: Experiment) -> None:
            self._selected_exp = exp.name
            self._selected_run = None
            self._dataset_dirty = False
            self._say(f"Opened {exp.name}: {len(exp.variants)} variants x {len(exp.cases)} cases")
            self.refresh()

        def failed(exc: BaseException) -> None:
            if isinstance(exc, ExperimentError):
                self._show_problems(f"{Path(path).name} was not opened", exc)
            else:
                self._say(f"{Path(path).name} was not opened: {exc}")

        self._runner(lambda: open_experiment_file(path, store), done, failed)

    def _show_problems(self, title: str, exc: ExperimentError) -> None:
        text = "\n".join(str(p) for p in exc.problems[:20])
        more = f"\n… and {len(exc.problems) - 20} more" if len(exc.problems) > 20 else ""
        self._say(f"{title}: {exc.problems[0]}")
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, title, text + more, parent=self)
        box.open()
        self.problem_box = box

    def start_run(self) -> None:
        entry = self._entry()
        if entry is None or entry.experiment is None:
            return
        if self._dataset_dirty:
            self._say("Save or reload the dataset first: a run uses the saved one")
            return
        self._launch(entry.experiment, None)

    def resume_run(self) -> None:
        entry = self._entry()
        run = self._current_run()
        if entry is None or run is None or run.status not in ("cancelled", "running", "failed"):
            return
        from app.experiments.spec import experiment_from_data

        self._launch(experiment_from_data(run.spec), run.run_id)

    def _current_run(self) -> Any:
        entry = self._entry()
        if entry is None:
            return None
        return next((r for r in entry.runs if r.run_id == self._selected_run), None)

    def _launch(self, exp: Experiment, run_id: str | None) -> None:
        store = self._store()
        if store is None or self._runner is None or self._run_active:
            return
        self._run_active = True
        self.running = None
        self.progress.setVisible(True)
        self.progress.setRange(0, exp.total)
        self.progress.setValue(0)
        self._say(f"{'Resuming' if run_id else 'Starting'} {exp.name}…")
        self._update_buttons()

        def on_runner(r: ExperimentRunner) -> None:
            self.running = r

        emit, every, live = self._progress.emit, self.progress_interval_s, self._gateway_getter()
        self._runner(
            lambda: run_blocking(
                store,
                exp,
                run_id=run_id,
                on_progress=emit,
                on_runner=on_runner,
                progress_interval_s=every,
                live_gateway=live,
            ),
            self._on_finished,
            self._on_run_error,
        )

    def cancel_run(self) -> None:
        if self.running is not None:
            self.running.cancel()
            self._say("Cancelling: calls in flight are stopped; what finished is kept")

    def _on_progress(self, p: Progress) -> None:
        self.progress.setRange(0, p.total)
        self.progress.setValue(p.done)
        errors = f" · {p.errors} errors" if p.errors else ""
        self.progress_label.setText(f"ETA {_clock(p.eta_s)} · {fmt_usd(p.cost_usd)}{errors}")
        if p.running and self._selected_run != p.run_id:
            self._selected_run = p.run_id  # show the run being made (its results fill in as it goes)
            self.refresh()

    def _on_finished(self, outcome: RunOutcome) -> None:
        self._run_active = False
        self.running = None
        self._last_outcome = outcome
        self._selected_run = outcome.run_id
        self.view = None
        extra = f" ({outcome.skipped} already done)" if outcome.skipped else ""
        self._say(
            f"Run {outcome.status}: {outcome.done}/{outcome.total} results, {outcome.calls} calls, "
            f"{fmt_usd(outcome.cost_usd)}{extra}" + (f" — {outcome.error}" if outcome.error else "")
        )
        self.refresh()
        self._update_buttons()

    def _on_run_error(self, exc: BaseException) -> None:
        self._run_active = False
        self.running = None
        self._say(f"The run could not start: {exc}")
        self._update_buttons()
        self.refresh()

    def _update_buttons(self) -> None:
        entry = self._entry()
        run = self._current_run()
        idle = not self._run_active
        self.run_button.setEnabled(idle and entry is not None and entry.experiment is not None)
        self.resume_button.setEnabled(
            idle
            and run is not None
            and run.status in ("cancelled", "running", "failed")
            and run.done < run.total
        )
        self.cancel_button.setEnabled(self._run_active)
        self.open_button.setEnabled(idle)
        has_view = self.view is not None and bool(self.view.results)
        for b in (self.export_csv, self.export_json, self.export_md):
            b.setEnabled(has_view)
        self.promote_button.setEnabled(has_view and idle)
        self.save_dataset_button.setEnabled(self._dataset_dirty and idle)

    # --- export and promote -------------------------------------------------------------------

    def export_text(self, kind: str) -> str:
        view = self.view
        assert view is not None
        if kind == "csv":
            return report.results_csv(view.results, view.experiment)
        if kind == "json":
            return report.report_json(
                view.analysis,
                experiment=view.experiment.name,
                run_id=view.run.run_id,
                status=view.run.status,
                results=view.results,
            )
        return report.report_markdown(
            view.analysis,
            exp=view.experiment,
            run_id=view.run.run_id,
            status=view.run.status,
            results=view.results,
        )

    def export_visible(self) -> None:
        """Ctrl+E: the shown run's results as CSV (the buttons offer JSON and a report too)."""
        if self.view is None:
            self._say("No run to export: pick a run, or press Run (F5).")
            return
        self._export("csv")

    def _export(self, kind: str) -> None:
        if self.view is None:
            return
        suffix = {"csv": "csv", "json": "json", "md": "md"}[kind]
        name = f"{self.view.experiment.name}-{self.view.run.run_id[:8]}.{suffix}"
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export", name, f"*.{suffix}")
        if not path:
            return
        try:
            Path(path).write_text(self.export_text(kind), encoding="utf-8")
        except OSError as exc:
            self._say(f"Could not write {path}: {exc.strerror or exc}")
            return
        self._say(f"Wrote {path}")

    def _promote(self) -> None:
        view = self.view
        store = self._store()
        if view is None or store is None:
            return
        variant = self._selected_variant()
        if variant is None:
            winners = [c.variant for c in view.analysis.comparisons if c.metric == "pass_rate" and c.better]
            variant = winners[0] if winners else None
        if variant is None:
            self._say("Select the variant to promote in the table first")
            return
        comp = view.analysis.comparison(variant, "pass_rate")
        sentence = comp.sentence if comp else "the baseline itself"
        routes = [r["name"] for r in list_objects(store.engine, "route")] if store else []
        dialog = PromoteDialog(view.experiment, variant, routes, sentence, self)
        self.promote_dialog = dialog
        dialog.accepted.connect(lambda: self._do_promote(dialog))
        dialog.open()

    def _do_promote(self, dialog: PromoteDialog) -> None:
        store = self._store()
        if store is None or self._runner is None:
            return
        kind, args = dialog.action()
        exp, variant, engine, actor = dialog.exp, dialog.variant, store.engine, _actor()

        def work() -> Promotion:
            if kind == "canary":
                return start_canary(
                    engine,
                    exp,
                    variant,
                    args["route"],
                    weight=args["weight"],
                    actor=actor,
                    reason=args["reason"],
                )
            return promote_prompt(
                engine, exp, variant, actor=actor, reason=args["reason"], prompt_name=args["prompt_name"]
            )

        def failed(exc: BaseException) -> None:
            text = str(exc) if isinstance(exc, PromoteError | ValueError) else f"{type(exc).__name__}: {exc}"
            self._say(f"Not promoted: {text}")
            QtWidgets.QMessageBox.warning(self, "Not promoted", text)

        self._runner(
            work, lambda p: self._say(p.summary + " (audited; revert it from the Audit page)"), failed
        )


def _html(text: str) -> str:
    import html

    return html.escape(text)


def _tint(color: str, colors: Colors) -> str:
    """A highlight that keeps the text readable on this palette."""
    c = QtGui.QColor(color)
    base = QtGui.QColor(colors.base)
    mix = 0.28 if base.lightness() < 128 else 0.22
    r = round(c.red() * mix + base.red() * (1 - mix))
    g = round(c.green() * mix + base.green() * (1 - mix))
    b = round(c.blue() * mix + base.blue() * (1 - mix))
    return f"#{r:02x}{g:02x}{b:02x}"


def _pane(name: str, r: Any, body: str, colors: Colors) -> str:
    if r is None:
        return f'<p style="color:{colors.muted}"><b>{_html(name)}</b>: not run yet</p>'
    head = f"<b>{_html(name)}</b> · {check_summary(r)}"
    if r.latency_ms is not None:
        head += f" · {fmt_latency_ms(r.latency_ms)}"
    if r.cost_usd is not None:
        head += f" · {fmt_usd(r.cost_usd)}"
    failed = [c for c in r.checks if not c.get("passed")]
    notes = "".join(
        f'<div style="color:{colors.bad}">✗ {_html(str(c.get("label")))}: {_html(str(c.get("reason") or ""))}</div>'
        for c in failed
    )
    judge = [c for c in r.checks if c.get("type") == "llm_judge" and c.get("passed")]
    notes += "".join(
        f'<div style="color:{colors.muted}">judge {c.get("score")}: {_html(str(c.get("reason") or ""))}</div>'
        for c in judge
    )
    return f'<div style="color:{colors.muted}">{head}</div>{notes}<hr>{body}'


PAGE_CLASS = ExperimentsPage
