"""The Prompts page: the registry's prompts and versions, a new-version editor, diffs, "Try it",
and promote / roll back with a reason (audited; every gateway follows within a second).

Left: the prompts (active version, how many versions) and the selected prompt's versions.
Right, in tabs: the selected version; an editor for a new version (its variables listed as
you type); a coloured diff between any two versions; "Try it", which renders the selected
version with sample variables exactly as the gateway would (app.core.prompts.apply).
The store is read and written off the GUI thread through the runner; rendering and diffing
are pure and instant, so they run here.
"""

from __future__ import annotations

import getpass
import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core import format as fmt
from app.core.prompts import MissingVariables, PromptError, apply, check_name, check_params, diff, variables
from app.ui.editors.export import export_table
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import current_colors
from storage.queries.prompts import (
    Prompt,
    PromptVersion,
    add_version,
    create_prompt,
    list_prompts,
    list_versions,
    rollback_target,
    set_active_version,
)

#: How often the page reads the registry again while it is shown (promotions by others, the A/B lab).
REFRESH_MS = 5000

PROMPT_HEADERS = ("Prompt", "Active", "Versions")
VERSION_HEADERS = ("Version", "Note", "Author", "Created")


@dataclass(frozen=True)
class Registry:
    """One read of the registry: every prompt, its versions, and where "Roll back" would go."""

    prompts: list[Prompt]
    versions: dict[str, list[PromptVersion]] = field(default_factory=dict)
    rollback: dict[str, int | None] = field(default_factory=dict)
    fetched_at: float = 0.0

    def prompt(self, name: str | None) -> Prompt | None:
        return next((p for p in self.prompts if p.name == name), None)

    def version(self, name: str | None, number: int | None) -> PromptVersion | None:
        return next((v for v in self.versions.get(name or "", []) if v.version == number), None)


def load_registry(engine: Any) -> Registry:
    """Blocking: run it through the runner."""
    prompts = list_prompts(engine)
    return Registry(
        prompts,
        {p.name: list_versions(engine, p.name) for p in prompts},
        {p.name: rollback_target(engine, p.name) for p in prompts},
        time.time(),
    )


def fmt_when(ts: float, now: float | None = None) -> str:
    """``Nov 27 14:05 · 2 d ago`` (local time beside the relative one, ui.md "Times")."""
    now = time.time() if now is None else now
    return f"{time.strftime('%b %d %H:%M', time.localtime(ts))} · {fmt.fmt_relative_time(now - ts)}"


def mono_font() -> QtGui.QFont:
    return QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)


def diff_html(old: PromptVersion, new: PromptVersion) -> tuple[str, int, int]:
    """The diff from ``old`` to ``new`` as HTML (added lines green, removed red), and the +/- counts."""
    colors = current_colors()
    lines = diff(old, new, old_label=f"{old.prompt} v{old.version}", new_label=f"{new.prompt} v{new.version}")
    if not lines:
        return (
            f"<p style='color:{colors.muted}'>v{old.version} and v{new.version} are the same "
            "(system prompt, template and parameters).</p>",
            0,
            0,
        )
    added = sum(1 for d in lines if d.kind == "+")
    removed = sum(1 for d in lines if d.kind == "-")
    rows = []
    for d in lines:
        text = html.escape(d.text) or "&nbsp;"
        if d.kind == "+":
            style = f"color:{colors.ok}; background:{_tint(colors.ok)}"
            text = "+ " + text
        elif d.kind == "-":
            style = f"color:{colors.bad}; background:{_tint(colors.bad)}"
            text = "\u2212 " + text
        elif d.kind in ("@", "h"):
            style = f"color:{colors.muted}"
        else:
            style = f"color:{colors.text}"
            text = "&nbsp;&nbsp;" + text
        rows.append(f"<div style='{style}; white-space:pre-wrap'>{text}</div>")
    return "".join(rows), added, removed


def _tint(colour: str) -> str:
    c = QtGui.QColor(colour)
    return f"rgba({c.red()},{c.green()},{c.blue()},0.14)"


def rendered_text(version: PromptVersion, values: dict[str, Any]) -> str:
    """What the gateway would send for ``version`` with ``values`` (PromptError names what is missing)."""
    out = apply(version, values, where=f"{version.prompt} v{version.version}")
    parts = []
    if out.system:
        parts.append(f"system:\n{out.system}")
    for m in out.messages:
        parts.append(f"{m['role']}:\n{m['content']}")
    if out.params:
        parts.append("parameters: " + json.dumps(out.params, ensure_ascii=False, sort_keys=True))
    return "\n\n".join(parts)


def sample_value(text: str) -> Any:
    """A "Try it" cell: JSON when it parses as a number, list, object, true/false; else the text itself."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") or stripped in ("true", "false", "null") or _is_number(stripped):
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return bool(text)


# --- dialogs ------------------------------------------------------------------------------------------


class ReasonDialog(QtWidgets.QDialog):
    """Says what the change will do, asks for the reason; OK only with a reason (ui.md "Acting safely")."""

    def __init__(self, title: str, what: str, ok_text: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="reasonDialog")
        self.setWindowTitle(title)
        self.setMinimumWidth(460)
        layout = QtWidgets.QVBoxLayout(self)
        self.what = QtWidgets.QLabel(what)
        self.what.setWordWrap(True)
        layout.addWidget(self.what)
        form = QtWidgets.QFormLayout()
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("why (kept in the audit log)")
        form.addRow("&Reason", self.reason)
        layout.addLayout(form)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        self.ok.setText(ok_text)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.reason.textChanged.connect(lambda _t: self.ok.setEnabled(bool(self.reason.text().strip())))
        self.ok.setEnabled(False)
        self.reason.setFocus()


class NewPromptDialog(QtWidgets.QDialog):
    """A name (checked as you type) and a description."""

    def __init__(self, existing: set[str], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="newPromptDialog")
        self.setWindowTitle("New prompt")
        self.setMinimumWidth(460)
        self._existing = existing
        layout = QtWidgets.QVBoxLayout(self)
        form = QtWidgets.QFormLayout()
        self.name = QtWidgets.QLineEdit()
        self.name.setPlaceholderText("support-summary")
        form.addRow("&Name", self.name)
        self.description = QtWidgets.QLineEdit()
        self.description.setPlaceholderText("what it is for (optional)")
        form.addRow("&Description", self.description)
        layout.addLayout(form)
        self.problem = QtWidgets.QLabel("")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet(f"color: {current_colors().bad};")
        layout.addWidget(self.problem)
        hint = QtWidgets.QLabel(
            "Requests use it with the header x-controlroom-prompt: NAME (or NAME@VERSION), "
            "once it has a version and one is promoted."
        )
        hint.setObjectName("muted")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("Create")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.name.textChanged.connect(self._check)
        self._check()

    def _check(self, *_args: object) -> None:
        name = self.name.text().strip()
        problem = ""
        if name:
            try:
                check_name(name)
            except PromptError as exc:
                problem = str(exc)
            if name in self._existing:
                problem = f"a prompt called {name} already exists"
        self.problem.setText(problem)
        self.ok.setEnabled(bool(name) and not problem)


# --- the page -----------------------------------------------------------------------------------------


class PromptsPage(QtWidgets.QWidget):
    """See the module docstring."""

    status_message = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._busy = False
        self._filling = False
        self.registry: Registry | None = None
        self.selected_prompt: str | None = None
        self.selected_version: int | None = None
        self._samples: dict[str, str] = {}
        self.actor = getpass.getuser()

        spec = page_spec("prompts")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(
                spec.title,
                "Versioned prompts. Requests that name one (header x-controlroom-prompt, or prompt= in the "
                "library) get its active version; promote and roll back apply to every gateway within a second.",
            )
        )
        actions = QtWidgets.QHBoxLayout()
        self.new_button = QtWidgets.QPushButton("&New prompt…")
        self.new_button.setToolTip("Add a prompt to the registry (Alt+N)")
        self.new_button.clicked.connect(self.ask_new_prompt)
        self.promote_button = QtWidgets.QPushButton("&Promote…")
        self.promote_button.setToolTip("Make the selected version the active one (asks for a reason) — Alt+P")
        self.promote_button.clicked.connect(self.ask_promote)
        self.rollback_button = QtWidgets.QPushButton("&Roll back…")
        self.rollback_button.setToolTip(
            "Make the previously active version active again (asks for a reason) — Alt+R"
        )
        self.rollback_button.clicked.connect(self.ask_rollback)
        for b in (self.new_button, self.promote_button, self.rollback_button):
            actions.addWidget(b)
        self.result_label = QtWidgets.QLabel("", objectName="muted")
        self.result_label.setWordWrap(True)
        actions.addWidget(self.result_label, 1)
        layout.addLayout(actions)

        # Left: prompts above, versions below.
        self.prompts_table = self._table(PROMPT_HEADERS)
        self.prompts_table.itemSelectionChanged.connect(self._on_prompt_selected)
        self.versions_title = QtWidgets.QLabel("Versions", objectName="sectionTitle")
        self.versions_title.setStyleSheet("font-weight: 600;")
        self.versions_table = self._table(VERSION_HEADERS)
        self.versions_table.itemSelectionChanged.connect(self._on_version_selected)
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        prompts_title = QtWidgets.QLabel("Prompts", objectName="sectionTitle")
        prompts_title.setStyleSheet("font-weight: 600;")
        left_layout.addWidget(prompts_title)
        left_layout.addWidget(self.prompts_table, 2)
        left_layout.addWidget(self.versions_title)
        left_layout.addWidget(self.versions_table, 3)

        # Right: the tabs.
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self._build_view_tab(), "&Version")
        self.tabs.addTab(self._build_editor_tab(), "New ver&sion")
        self.tabs.addTab(self._build_compare_tab(), "&Compare")
        self.tabs.addTab(self._build_try_tab(), "&Try it")

        split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([440, 560])
        self.empty = EmptyState("Opening the store…")
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(split)
        self.stack.addWidget(self.empty)
        self.stack.setCurrentWidget(self.empty)
        layout.addWidget(self.stack, 1)

        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self._retry = QTimer(self, interval=250, singleShot=True)
        self._retry.timeout.connect(self.refresh)
        self._sync_buttons()

    # -- building ---------------------------------------------------------------------------
    def _table(self, headers: tuple[str, ...]) -> QtWidgets.QTableWidget:
        t = QtWidgets.QTableWidget(0, len(headers))
        t.setHorizontalHeaderLabels(list(headers))
        t.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        t.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        t.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        t.setAlternatingRowColors(True)
        t.setShowGrid(False)
        t.setWordWrap(False)
        t.verticalHeader().setVisible(False)
        t.verticalHeader().setDefaultSectionSize(26)
        t.horizontalHeader().setStretchLastSection(True)
        t.horizontalHeader().setHighlightSections(False)
        return t

    def _text_box(self, *, read_only: bool) -> QtWidgets.QPlainTextEdit:
        box = QtWidgets.QPlainTextEdit()
        box.setReadOnly(read_only)
        box.setFont(mono_font())
        box.setTabChangesFocus(True)
        box.setMinimumHeight(box.fontMetrics().lineSpacing() * 3 + 12)
        return box

    @staticmethod
    def _boxes(rows: list[tuple[str, QtWidgets.QWidget, int]]) -> QtWidgets.QGridLayout:
        """Labelled boxes that share the height by ``stretch`` (the template gets the most)."""
        grid = QtWidgets.QGridLayout()
        for r, (label, box, stretch) in enumerate(rows):
            text = QtWidgets.QLabel(label)
            text.setBuddy(box)
            text.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
            grid.addWidget(text, r, 0)
            grid.addWidget(box, r, 1)
            grid.setRowStretch(r, stretch)
        return grid

    def _build_view_tab(self) -> QtWidgets.QWidget:
        w = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(w)
        self.view_title = QtWidgets.QLabel("", objectName="sectionTitle")
        self.view_title.setStyleSheet("font-weight: 600;")
        self.view_title.setWordWrap(True)
        layout.addWidget(self.view_title)
        self.view_meta = QtWidgets.QLabel("", objectName="muted")
        self.view_meta.setWordWrap(True)
        layout.addWidget(self.view_meta)
        self.view_system = self._text_box(read_only=True)
        self.view_template = self._text_box(read_only=True)
        self.view_params = self._text_box(read_only=True)
        grid = self._boxes(
            [
                ("System", self.view_system, 1),
                ("Template", self.view_template, 3),
                ("Parameters", self.view_params, 1),
            ]
        )
        layout.addLayout(grid, 1)
        return w

    def _build_editor_tab(self) -> QtWidgets.QWidget:
        w = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(w)
        self.editor_title = QtWidgets.QLabel("", objectName="muted")
        self.editor_title.setWordWrap(True)
        layout.addWidget(self.editor_title)
        self.edit_system = self._text_box(read_only=False)
        self.edit_system.setPlaceholderText("optional; {{variables}} allowed")
        self.edit_template = self._text_box(read_only=False)
        self.edit_template.setPlaceholderText(
            "the user message, e.g. Summarize in {{max_words}} words: {{ticket}}"
        )
        self.edit_params = self._text_box(read_only=False)
        self.edit_params.setPlaceholderText('{"temperature": 0.2, "max_tokens": 300}')
        self.edit_note = QtWidgets.QLineEdit()
        self.edit_note.setPlaceholderText("what changed and why")
        grid = self._boxes(
            [
                ("S&ystem", self.edit_system, 1),
                ("Te&mplate", self.edit_template, 3),
                ("P&arameters\n(JSON)", self.edit_params, 1),
                ("N&ote", self.edit_note, 0),
            ]
        )
        layout.addLayout(grid, 1)
        self.edit_variables = QtWidgets.QLabel("", objectName="muted")
        self.edit_variables.setWordWrap(True)
        layout.addWidget(self.edit_variables)
        self.edit_problem = QtWidgets.QLabel("")
        self.edit_problem.setWordWrap(True)
        layout.addWidget(self.edit_problem)
        row = QtWidgets.QHBoxLayout()
        self.start_from_button = QtWidgets.QPushButton("Start from selected version")
        self.start_from_button.setToolTip("Copy the selected version into the editor")
        self.start_from_button.clicked.connect(self.start_from_selected)
        self.save_button = QtWidgets.QPushButton("Save as new version")
        self.save_button.setToolTip("Add it as the next version (it does not become active until promoted)")
        self.save_button.clicked.connect(self.save_version)
        row.addWidget(self.start_from_button)
        row.addStretch(1)
        row.addWidget(self.save_button)
        layout.addLayout(row)
        for box in (self.edit_system, self.edit_template, self.edit_params):
            box.textChanged.connect(self._check_editor)
        self._check_editor()
        return w

    def _build_compare_tab(self) -> QtWidgets.QWidget:
        w = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(w)
        row = QtWidgets.QHBoxLayout()
        self.diff_from = QtWidgets.QComboBox()
        self.diff_from.setAccessibleName("Compare from version")
        self.diff_to = QtWidgets.QComboBox()
        self.diff_to.setAccessibleName("Compare to version")
        row.addWidget(QtWidgets.QLabel("From"))
        row.addWidget(self.diff_from)
        row.addWidget(QtWidgets.QLabel("to"))
        row.addWidget(self.diff_to)
        self.diff_summary = QtWidgets.QLabel("", objectName="muted")
        row.addWidget(self.diff_summary, 1)
        layout.addLayout(row)
        self.diff_view = QtWidgets.QTextBrowser()
        self.diff_view.setFont(mono_font())
        self.diff_view.setOpenLinks(False)
        layout.addWidget(self.diff_view, 1)
        self.diff_from.currentIndexChanged.connect(self._show_diff)
        self.diff_to.currentIndexChanged.connect(self._show_diff)
        return w

    def _build_try_tab(self) -> QtWidgets.QWidget:
        w = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(w)
        self.try_title = QtWidgets.QLabel("", objectName="muted")
        self.try_title.setWordWrap(True)
        layout.addWidget(self.try_title)
        self.try_vars = QtWidgets.QTableWidget(0, 2)
        self.try_vars.setHorizontalHeaderLabels(["Variable", "Sample value"])
        self.try_vars.verticalHeader().setVisible(False)
        self.try_vars.horizontalHeader().setStretchLastSection(True)
        self.try_vars.setMaximumHeight(150)
        self.try_vars.itemChanged.connect(self._on_sample_changed)
        layout.addWidget(self.try_vars)
        self.try_problem = QtWidgets.QLabel("")
        self.try_problem.setWordWrap(True)
        layout.addWidget(self.try_problem)
        self.try_output = self._text_box(read_only=True)
        layout.addWidget(self.try_output, 1)
        return w

    # -- data -------------------------------------------------------------------------------
    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        """Read the registry from ``store`` (or a getter of it); writes go to the same store."""
        self._runner = runner
        self._store_getter = store if callable(store) else (lambda: store)
        self.refresh()
        self.timer.start()

    def export_visible(self, ask_path: Any = None) -> Path | None:
        """Ctrl+E: the selected prompt's versions as shown, to a CSV file."""
        return export_table(
            self, self.versions_table.model(), "prompt versions", self._say, ask_path=ask_path
        )

    def refresh(self) -> None:
        store = self._store_getter()
        if self._runner is not None and store is None and not self._retry.isActive():
            self._retry.start()  # the store is still opening: look again soon, not at the next 5 s tick
        if self._runner is None or store is None or self._busy:
            return
        if not self.isVisible() and self.registry is not None:
            return  # nobody is looking: read again when the page shows
        self._busy = True
        engine = store.engine
        self._runner(lambda: load_registry(engine), self._on_registry, self._on_error)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self.empty.setText(f"The store could not answer: {exc}")
        self.result_label.setText(f"The store could not answer: {exc}")

    def _on_registry(self, registry: Registry) -> None:
        self._busy = False
        self.registry = registry
        if not registry.prompts:
            self.empty.setText(
                "No prompts yet. Create one with New prompt…, write its first version in the editor, "
                "then promote it. Requests use it with the header x-controlroom-prompt: NAME "
                "(docs/prompts.md)."
            )
            self.stack.setCurrentWidget(self.empty)
        else:
            self.stack.setCurrentWidget(self.stack.widget(0))
        if registry.prompt(self.selected_prompt) is None:
            self.selected_prompt = registry.prompts[0].name if registry.prompts else None
            self.selected_version = None
        self._fill_prompts()
        self._fill_versions()

    def _fill_prompts(self) -> None:
        registry = self.registry
        assert registry is not None
        t = self.prompts_table
        self._filling = True
        try:
            t.setRowCount(len(registry.prompts))
            colors = current_colors()
            for r, p in enumerate(registry.prompts):
                name = QtWidgets.QTableWidgetItem(p.name)
                name.setToolTip(p.description or p.name)
                active = QtWidgets.QTableWidgetItem(f"v{p.active_version}" if p.active_version else "none")
                active.setForeground(QtGui.QColor(colors.ok if p.active_version else colors.muted))
                if not p.active_version:
                    active.setToolTip(
                        "No active version: requests must name one (NAME@VERSION) until you promote"
                    )
                count = QtWidgets.QTableWidgetItem(str(p.version_count))
                count.setToolTip(f"latest: v{p.latest_version}" if p.latest_version else "no versions yet")
                for c, item in enumerate((name, active, count)):
                    t.setItem(r, c, item)
                if p.name == self.selected_prompt:
                    t.selectRow(r)
            header = t.horizontalHeader()
            header.setStretchLastSection(False)
            mode = QtWidgets.QHeaderView.ResizeMode
            for col, how in enumerate((mode.Stretch, mode.ResizeToContents, mode.ResizeToContents)):
                header.setSectionResizeMode(col, how)
        finally:
            self._filling = False

    def _fill_versions(self) -> None:
        registry = self.registry
        assert registry is not None
        prompt = registry.prompt(self.selected_prompt)
        versions = registry.versions.get(self.selected_prompt or "", [])
        if (
            self.selected_version is None
            or registry.version(self.selected_prompt, self.selected_version) is None
        ):
            # The active version first, else the newest.
            self.selected_version = (
                prompt.active_version
                if prompt and prompt.active_version
                else (versions[-1].version if versions else None)
            )
        t = self.versions_table
        self._filling = True
        try:
            t.setRowCount(len(versions))
            colors = current_colors()
            now = registry.fetched_at
            for r, v in enumerate(reversed(versions)):  # newest first
                is_active = prompt is not None and prompt.active_version == v.version
                label = QtWidgets.QTableWidgetItem(f"v{v.version}" + ("  \u25cf active" if is_active else ""))
                label.setData(Qt.ItemDataRole.UserRole, v.version)
                if is_active:
                    label.setForeground(QtGui.QColor(colors.ok))
                    font = label.font()
                    font.setBold(True)
                    label.setFont(font)
                note = QtWidgets.QTableWidgetItem(v.note or "\u2014")
                note.setToolTip(v.note)
                # Relative here (the table is narrow); the absolute time is on hover and in the Version tab.
                created = QtWidgets.QTableWidgetItem(fmt.fmt_relative_time(now - v.created_at))
                created.setToolTip(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created_at)))
                for c, item in enumerate((label, note, QtWidgets.QTableWidgetItem(v.author), created)):
                    t.setItem(r, c, item)
                if v.version == self.selected_version:
                    t.selectRow(r)
            header = t.horizontalHeader()
            header.setStretchLastSection(False)
            mode = QtWidgets.QHeaderView.ResizeMode
            for col, how in enumerate(
                (mode.ResizeToContents, mode.Stretch, mode.ResizeToContents, mode.ResizeToContents)
            ):
                header.setSectionResizeMode(col, how)
        finally:
            self._filling = False
        name = self.selected_prompt or ""
        self.versions_title.setText(f"Versions of {name}" if name else "Versions")
        self._fill_diff_choices()
        self._show_version()
        self._sync_buttons()

    def _on_prompt_selected(self) -> None:
        if self._filling or self.registry is None:
            return
        rows = self.prompts_table.selectionModel().selectedRows()
        if not rows:
            return
        name = self.prompts_table.item(rows[0].row(), 0).text()
        if name != self.selected_prompt:
            self.selected_prompt = name
            self.selected_version = None
            self._fill_versions()

    def _on_version_selected(self) -> None:
        if self._filling or self.registry is None:
            return
        rows = self.versions_table.selectionModel().selectedRows()
        if not rows:
            return
        number = self.versions_table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        if number != self.selected_version:
            self.selected_version = int(number)
            self._fill_diff_choices()
            self._show_version()
            self._sync_buttons()

    def select(self, prompt: str, version: int | None = None) -> None:
        """Select a prompt (and a version of it) as a click would."""
        self.selected_prompt = prompt
        self.selected_version = version
        if self.registry is not None:
            self._fill_prompts()
            self._fill_versions()

    def current_version(self) -> PromptVersion | None:
        return self.registry.version(self.selected_prompt, self.selected_version) if self.registry else None

    def current_prompt(self) -> Prompt | None:
        return self.registry.prompt(self.selected_prompt) if self.registry else None

    # -- the version tab ----------------------------------------------------------------------
    def _show_version(self) -> None:
        v = self.current_version()
        p = self.current_prompt()
        if v is None or p is None:
            self.view_title.setText(
                f"{p.name} has no versions yet: write the first one in the New version tab." if p else ""
            )
            self.view_meta.setText(p.description if p else "")
            for box in (self.view_system, self.view_template, self.view_params):
                box.setPlainText("")
            self.try_title.setText("Select a version to try it.")
            self._fill_samples([])
            self.editor_title.setText(
                f"Saving adds v1 of {p.name}; it serves traffic once you promote it."
                if p
                else "Create a prompt first (New prompt…)."
            )
            return
        state = "active" if p.active_version == v.version else "not active"
        self.view_title.setText(f"{v.prompt} v{v.version} \u00b7 {state}")
        names = v.variables
        self.view_meta.setText(
            " \u00b7 ".join(
                part
                for part in (
                    p.description,
                    f"by {v.author}, {fmt_when(v.created_at)}",
                    f"variables: {', '.join(names)}" if names else "no variables",
                    f"note: {v.note}" if v.note else "",
                )
                if part
            )
        )
        self.view_system.setPlainText(v.system or "")
        self.view_system.setPlaceholderText("(no system prompt)")
        self.view_template.setPlainText(v.template)
        self.view_params.setPlainText(json.dumps(v.params, indent=2, sort_keys=True) if v.params else "")
        self.view_params.setPlaceholderText("(no parameters: the request's or the provider's defaults)")
        latest = self.registry.versions[p.name][-1].version if self.registry else v.version
        self.editor_title.setText(
            f"Saving adds v{latest + 1} of {p.name}. Versions never change once saved; "
            "it serves traffic only once you promote it."
        )
        self.try_title.setText(
            f"Renders v{v.version} of {v.prompt} as the gateway would. Values that parse as JSON "
            "(numbers, true, lists) are sent as such."
        )
        self._fill_samples(names)

    # -- the editor ---------------------------------------------------------------------------
    def start_from_selected(self) -> None:
        v = self.current_version()
        if v is None:
            return
        self.edit_system.setPlainText(v.system or "")
        self.edit_template.setPlainText(v.template)
        self.edit_params.setPlainText(json.dumps(v.params, indent=2, sort_keys=True) if v.params else "")
        self.edit_note.setText("")
        self.tabs.setCurrentIndex(1)
        self.edit_template.setFocus()

    def editor_params(self) -> dict[str, Any]:
        """The editor's parameters; PromptError says what is wrong."""
        text = self.edit_params.toPlainText().strip()
        if not text:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PromptError(f"parameters are not valid JSON: {exc}") from None
        return check_params(data)

    def _check_editor(self) -> None:
        names = variables(self.edit_system.toPlainText(), self.edit_template.toPlainText())
        self.edit_variables.setText(
            "Variables: " + ", ".join(f"{{{{{n}}}}}" for n in names)
            if names
            else "Variables: none yet (write {{name}} in the system prompt or the template)"
        )
        problem = ""
        try:
            self.editor_params()
        except PromptError as exc:
            problem = str(exc)
        if not problem and not self.edit_template.toPlainText().strip():
            problem = "A version needs a template: the user message the gateway sends."
            self.edit_problem.setStyleSheet(f"color: {current_colors().muted};")
        else:
            self.edit_problem.setStyleSheet(f"color: {current_colors().bad};")
        self.edit_problem.setText(problem)
        self.save_button.setEnabled(not problem and self.selected_prompt is not None)

    def save_version(self) -> None:
        store = self._store_getter()
        name = self.selected_prompt
        if self._runner is None or store is None or name is None:
            return
        try:
            params = self.editor_params()
        except PromptError as exc:
            self.edit_problem.setText(str(exc))
            return
        template = self.edit_template.toPlainText()
        system = self.edit_system.toPlainText().strip() or None
        note = self.edit_note.text().strip()
        engine = store.engine
        actor = self.actor

        def work() -> int:
            return add_version(
                engine, name, template=template, system=system, params=params, note=note, actor=actor
            )

        def done(number: int) -> None:
            self.selected_version = number
            self._say(f"Saved v{number} of {name}. It is not active until you promote it.")
            self.edit_note.setText("")
            self.tabs.setCurrentIndex(0)
            self.refresh()

        self._runner(work, done, lambda exc: self._say(f"Saving a version of {name} failed: {exc}"))

    # -- compare ------------------------------------------------------------------------------
    def _fill_diff_choices(self) -> None:
        versions = self.registry.versions.get(self.selected_prompt or "", []) if self.registry else []
        numbers = [v.version for v in versions]
        keep = (self.diff_from.currentData(), self.diff_to.currentData(), self.diff_from.property("prompt"))
        self._filling = True
        try:
            for combo in (self.diff_from, self.diff_to):
                combo.clear()
                for n in numbers:
                    combo.addItem(f"v{n}", n)
            same_prompt = keep[2] == self.selected_prompt
            to = (
                self.selected_version
                if self.selected_version in numbers
                else (numbers[-1] if numbers else None)
            )
            prev = [n for n in numbers if to is not None and n < to]
            frm = prev[-1] if prev else to
            if same_prompt and keep[0] in numbers and keep[1] in numbers and keep[1] == to:
                frm = keep[0]
            self.diff_from.setCurrentIndex(max(self.diff_from.findData(frm), 0))
            self.diff_to.setCurrentIndex(max(self.diff_to.findData(to), 0))
            self.diff_from.setProperty("prompt", self.selected_prompt)
        finally:
            self._filling = False
        self._show_diff()

    def _show_diff(self) -> None:
        if self._filling:
            return
        registry = self.registry
        old = registry.version(self.selected_prompt, self.diff_from.currentData()) if registry else None
        new = registry.version(self.selected_prompt, self.diff_to.currentData()) if registry else None
        if old is None or new is None:
            self.diff_view.setHtml("")
            self.diff_summary.setText("Two versions are needed to compare." if old is None else "")
            return
        body, added, removed = diff_html(old, new)
        self.diff_view.setHtml(body)
        self.diff_summary.setText(
            f"+{added} \u2212{removed} lines (system prompt, template, parameters)"
            if added or removed
            else ""
        )

    def set_diff(self, old: int, new: int) -> None:
        self.diff_from.setCurrentIndex(self.diff_from.findData(old))
        self.diff_to.setCurrentIndex(self.diff_to.findData(new))

    # -- try it -------------------------------------------------------------------------------
    def _fill_samples(self, names: list[str]) -> None:
        t = self.try_vars
        self._filling = True
        try:
            t.setRowCount(len(names))
            for r, n in enumerate(names):
                key = QtWidgets.QTableWidgetItem(n)
                key.setFlags(key.flags() & ~Qt.ItemFlag.ItemIsEditable)
                t.setItem(r, 0, key)
                t.setItem(r, 1, QtWidgets.QTableWidgetItem(self._samples.get(n, "")))
            t.resizeColumnToContents(0)
            t.setColumnWidth(0, max(t.columnWidth(0) + 16, 120))
        finally:
            self._filling = False
        self.render_sample()

    def _on_sample_changed(self, item: QtWidgets.QTableWidgetItem) -> None:
        if self._filling or item.column() != 1:
            return
        self._samples[self.try_vars.item(item.row(), 0).text()] = item.text()
        self.render_sample()

    def set_sample(self, name: str, value: str) -> None:
        """Type a sample value as the operator would."""
        for r in range(self.try_vars.rowCount()):
            if self.try_vars.item(r, 0).text() == name:
                self.try_vars.item(r, 1).setText(value)
                return
        raise KeyError(f"the selected version has no variable {name!r}")

    def render_sample(self) -> None:
        v = self.current_version()
        if v is None:
            self.try_output.setPlainText("")
            self.try_problem.setText("")
            return
        values = {n: sample_value(self._samples[n]) for n in v.variables if self._samples.get(n, "") != ""}
        try:
            text = rendered_text(v, values)
        except PromptError as exc:
            self.try_problem.setStyleSheet(f"color: {current_colors().warn};")
            if isinstance(exc, MissingVariables):
                names = ", ".join(exc.missing)
                self.try_problem.setText(
                    f"Fill in a sample value for {names} to see what the gateway would send."
                )
            else:
                self.try_problem.setText(str(exc))
            self.try_output.setPlainText("")
            return
        self.try_problem.setText("")
        self.try_output.setPlainText(text)

    # -- promote and roll back ------------------------------------------------------------------
    def _sync_buttons(self) -> None:
        p = self.current_prompt()
        v = self.current_version()
        can_promote = p is not None and v is not None and p.active_version != v.version
        self.promote_button.setEnabled(can_promote)
        self.promote_button.setText(f"&Promote v{v.version}…" if can_promote and v else "&Promote…")
        back = self.registry.rollback.get(p.name) if p is not None and self.registry else None
        can_back = (
            p is not None and p.active_version is not None and back is not None and back != p.active_version
        )
        self.rollback_button.setEnabled(can_back)
        self.rollback_button.setText(f"&Roll back to v{back}…" if can_back else "&Roll back…")
        if p is not None and not can_back:
            self.rollback_button.setToolTip(
                f"{p.name} has no earlier active version to go back to"
                if p.active_version
                else f"{p.name} has no active version"
            )
        else:
            self.rollback_button.setToolTip(
                "Make the previously active version active again (asks for a reason) — Alt+R"
            )
        self.start_from_button.setEnabled(v is not None)
        self._check_editor()

    def describe_change(self, to_version: int, action: str) -> str:
        """What promote or roll back will do, said before it does it."""
        p = self.current_prompt()
        assert p is not None
        was = f"v{p.active_version}" if p.active_version else "no version (requests must name one)"
        verb = "Promote" if action == "promote" else "Roll back"
        return (
            f"{verb} {p.name} to v{to_version}: requests that name {p.name} without a version get "
            f"v{to_version} instead of {was}, on every gateway within a second. "
            f"Requests pinned to a version ({p.name}@N) are not affected. You can undo it from the Audit page."
        )

    def ask_promote(self) -> None:
        v = self.current_version()
        p = self.current_prompt()
        if v is None or p is None or p.active_version == v.version:
            return
        dialog = ReasonDialog(
            f"Promote {p.name} v{v.version}",
            self.describe_change(v.version, "promote"),
            f"Promote v{v.version}",
            self,
        )
        if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            self.activate(v.version, dialog.reason.text().strip(), "promote")

    def ask_rollback(self) -> None:
        p = self.current_prompt()
        back = self.registry.rollback.get(p.name) if p is not None and self.registry else None
        if p is None or back is None:
            return
        dialog = ReasonDialog(
            f"Roll back {p.name}", self.describe_change(back, "rollback"), f"Roll back to v{back}", self
        )
        if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            self.activate(back, dialog.reason.text().strip(), "rollback")

    def activate(self, version: int, reason: str, action: str) -> None:
        """Write the change (audited; a stale page is refused and told to reload), then read again."""
        store = self._store_getter()
        p = self.current_prompt()
        if self._runner is None or store is None or p is None:
            return
        engine = store.engine
        actor = self.actor
        name, revision = p.name, p.revision

        def work() -> Prompt:
            return set_active_version(
                engine,
                name,
                version,
                actor=actor,
                reason=reason,
                expected_revision=revision,
                action="rollback" if action == "rollback" else "promote",
            )

        def done(after: Prompt) -> None:
            verb = "Promoted" if action == "promote" else "Rolled back"
            self._say(f"{verb} {name} to v{after.active_version} at {time.strftime('%H:%M:%S')}.")
            self.selected_version = after.active_version
            self.refresh()

        def failed(exc: BaseException) -> None:
            self._say(f"{'Promote' if action == 'promote' else 'Roll back'} {name} failed: {exc}")
            self.refresh()

        self._runner(work, done, failed)

    # -- new prompt -------------------------------------------------------------------------------
    def ask_new_prompt(self) -> None:
        existing = {p.name for p in self.registry.prompts} if self.registry else set()
        dialog = NewPromptDialog(existing, self)
        if dialog.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            self.new_prompt(dialog.name.text().strip(), dialog.description.text().strip())

    def new_prompt(self, name: str, description: str = "") -> None:
        store = self._store_getter()
        if self._runner is None or store is None:
            return
        engine = store.engine
        actor = self.actor

        def done(_p: Prompt) -> None:
            self._say(f"Created {name}. Write its first version here, then promote it.")
            self.selected_prompt = name
            self.selected_version = None
            self.tabs.setCurrentIndex(1)
            self.refresh()

        self._runner(
            lambda: create_prompt(engine, name, description=description, actor=actor, reason="new prompt"),
            done,
            lambda exc: self._say(f"Creating {name} failed: {exc}"),
        )

    def _say(self, text: str) -> None:
        self.result_label.setText(text)
        self.status_message.emit(text)


PAGE_CLASS = PromptsPage
