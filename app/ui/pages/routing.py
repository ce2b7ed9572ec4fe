"""The Routing page: edit routes (ordered rules, chains with fallbacks and weighted splits,
timeouts, retries, cache, output cap), validated at each field before saving, with a dry run of
a pasted request or a recorded event against the route as edited.

Saving writes the route row through :func:`app.ui.models.routes_model.save_row`: one transaction
that checks the whole configuration still loads, saves at the revision the form was loaded
from (a concurrent save is refused, with Reload), audits it with the OS user and the reason
typed, and bumps the control version, so every gateway applies it within a second.
"""

from __future__ import annotations

import dataclasses
import getpass
import itertools
import time
from collections.abc import Callable
from typing import Any

from app.core.retry import RetryPolicy
from app.core.routing import (
    CacheSettings,
    Conditions,
    HoursWindow,
    OnAllOpen,
    Problem,
    Route,
    Rule,
    Split,
    Step,
    validate_route,
)
from app.ui.editors import FieldError, ProblemBanner, SaveBar, ask_confirmation, export_config
from app.ui.editors.control_page import ControlObjectPage
from app.ui.models import routes_model as rm
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import current_colors
from storage.queries.control import list_breaker_overrides

Confirm = Callable[[str, str, str], bool]

#: How often the page reads the routes again while it is shown (its own edits are kept).
REFRESH_MS = 5000

#: Stands in for a field that does not parse, so the rest of the route can still be checked;
#: problems that mention it are not shown (the field's own message says what is wrong).
UNPARSED = "\u2060unparsed"

_DRY_RUN_EXAMPLE = (
    '{"model": "default",\n "messages": [{"role": "user", "content": "Find hotels in Lisbon"}],\n'
    ' "user": "u-42", "metadata": {"feature": "search", "tier": "gold"}}\n\n'
    "or header lines:\nx-controlroom-feature: search\nx-controlroom-user: u-42\ninput_tokens: 5200"
)


def _line(placeholder: str = "", text: str = "") -> QtWidgets.QLineEdit:
    edit = QtWidgets.QLineEdit(text)
    edit.setPlaceholderText(placeholder)
    return edit


def _inline_label(text: str) -> QtWidgets.QLabel:
    """A label beside a field, level with the field's text (the message under the field may grow it)."""
    label = QtWidgets.QLabel(text)
    label.setFixedHeight(QtWidgets.QLineEdit().sizeHint().height())
    label.setAlignment(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft)
    return label


def _tool(text: str, tip: str) -> QtWidgets.QToolButton:
    b = QtWidgets.QToolButton()
    b.setText(text)
    b.setToolTip(tip)
    b.setAccessibleName(tip)
    b.setAutoRaise(True)
    return b


def _num(value: float | int | None) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


class StepRow(QtWidgets.QWidget):
    """One chain step: a target (editable list of known targets) or a weighted split with a sticky key."""

    changed = Signal()
    move = Signal(object, int)
    remove = Signal(object)

    def __init__(self, step: Step, targets: list[str], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.is_split = isinstance(step, Split)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        self.number = _inline_label("")
        self.number.setMinimumWidth(62)
        self.number.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        layout.addWidget(self.number, 0, Qt.AlignmentFlag.AlignTop)
        if isinstance(step, Split):
            self.weights = _line("fast=90, quick=10", rm.format_weights(step.weights))
            self.weights.setToolTip("Targets with weights in percent, adding up to 100")
            self.weights.setAccessibleName("Split weights")
            self.weights.textChanged.connect(self.changed)
            self.sticky = QtWidgets.QComboBox()
            self.sticky.setEditable(True)
            self.sticky.addItems(list(rm.STICKY_KEYS))
            self.sticky.setCurrentText(step.sticky or "")
            self.sticky.setToolTip("Sticky key: the same value always lands on the same side (empty: random)")
            self.sticky.setAccessibleName("Sticky key")
            self.sticky.lineEdit().setPlaceholderText("not sticky")
            self.sticky.currentTextChanged.connect(self.changed)
            self.field = FieldError(self.weights)
            layout.addWidget(self.field, 3)
            sticky_label = _inline_label("sticky on")
            layout.addWidget(sticky_label, 0, Qt.AlignmentFlag.AlignTop)
            layout.addWidget(self.sticky, 1, Qt.AlignmentFlag.AlignTop)
            self.editor: QtWidgets.QWidget = self.weights
        else:
            self.target = QtWidgets.QComboBox()
            self.target.setEditable(True)
            self.target.addItems(targets)
            self.target.setCurrentText(step)
            self.target.setAccessibleName("Target")
            self.target.currentTextChanged.connect(self.changed)
            self.field = FieldError(self.target)
            layout.addWidget(self.field, 1)
            self.editor = self.target
        self.up = _tool("▲", "Move this step up")
        self.down = _tool("▼", "Move this step down")
        self.drop = _tool("✕", "Remove this step")
        for b in (self.up, self.down, self.drop):
            layout.addWidget(b, 0, Qt.AlignmentFlag.AlignTop)
        self.up.clicked.connect(lambda: self.move.emit(self, -1))
        self.down.clicked.connect(lambda: self.move.emit(self, 1))
        self.drop.clicked.connect(lambda: self.remove.emit(self))

    def set_position(self, k: int, n: int) -> None:
        self.number.setText(("split" if self.is_split else "primary" if k == 0 else "fallback") + " ")
        if self.is_split and k > 0:
            self.number.setText("split ")
        self.up.setEnabled(k > 0)
        self.down.setEnabled(k < n - 1)

    def focus_widgets(self) -> list[QtWidgets.QWidget]:
        if self.is_split:
            return [self.weights, self.sticky, self.up, self.down, self.drop]
        return [self.target, self.up, self.down, self.drop]

    def build(self) -> tuple[Step | None, str]:
        if self.is_split:
            try:
                weights = rm.parse_weights(self.weights.text())
            except ValueError as exc:
                return None, str(exc)
            sticky = self.sticky.currentText().strip() or None
            return Split(weights, sticky), ""
        name = self.target.currentText().strip()
        if not name:
            return None, "name a target"
        return name, ""


class RuleCard(QtWidgets.QFrame):
    """One rule: its conditions (tags, input-token thresholds, hours) and its chain."""

    changed = Signal()
    move = Signal(object, int)
    remove = Signal(object)

    def __init__(self, rule: Rule, targets: list[str], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="ruleCard")
        self.targets = targets
        colors = current_colors()
        self.setStyleSheet(
            f"QFrame#ruleCard {{ border: 1px solid {colors.border}; border-radius: 6px; background: {colors.base}; }}"
        )
        outer = QtWidgets.QVBoxLayout(self)
        outer.setContentsMargins(10, 8, 10, 10)
        outer.setSpacing(6)
        head = QtWidgets.QHBoxLayout()
        self.title = QtWidgets.QLabel("Rule")
        self.title.setStyleSheet("font-weight: 600;")
        head.addWidget(self.title)
        self.summary = QtWidgets.QLabel("", objectName="muted")
        head.addWidget(self.summary, 1)
        self.up = _tool("▲", "Move this rule up")
        self.down = _tool("▼", "Move this rule down")
        self.drop = _tool("Remove", "Remove this rule")
        for b in (self.up, self.down, self.drop):
            head.addWidget(b)
        self.up.clicked.connect(lambda: self.move.emit(self, -1))
        self.down.clicked.connect(lambda: self.move.emit(self, 1))
        self.drop.clicked.connect(lambda: self.remove.emit(self))
        outer.addLayout(head)
        # Problems about the rule as a whole (it can never match) show under its title.
        self.rule_field = FieldError(None)
        outer.addWidget(self.rule_field)

        form = QtWidgets.QFormLayout()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        w = rule.when
        self.tags = _line("any request (or e.g. feature=search, tier=gold|pro)", rm.format_tags(w.tags))
        self.tags.setAccessibleName("Tag conditions")
        self.tags_field = FieldError(self.tags, "Tag equality: key=value; several values with |")
        form.addRow("When tags", self.tags_field)
        tokens = QtWidgets.QHBoxLayout()
        self.over = _line("any", _num(w.input_tokens_over))
        self.over.setAccessibleName("Input tokens over")
        self.under = _line("any", _num(w.input_tokens_under))
        self.under.setAccessibleName("Input tokens under")
        self.over_field = FieldError(self.over)
        self.under_field = FieldError(self.under)
        tokens.addWidget(_inline_label("over"), 0, Qt.AlignmentFlag.AlignTop)
        tokens.addWidget(self.over_field, 1)
        tokens.addWidget(_inline_label("under"), 0, Qt.AlignmentFlag.AlignTop)
        tokens.addWidget(self.under_field, 1)
        form.addRow("Input tokens", tokens)
        hours = QtWidgets.QHBoxLayout()
        h = w.hours
        self.h_from = _line("0-23", str(h.start) if h else "")
        self.h_from.setAccessibleName("Hours from")
        self.h_to = _line("1-24", str(h.end) if h else "")
        self.h_to.setAccessibleName("Hours to")
        self.h_tz = _line("UTC", h.tz if h and h.tz != "UTC" else "")
        self.h_tz.setAccessibleName("Hours time zone")
        self.hours_field = FieldError(self.h_from)
        self.h_to_field = FieldError(self.h_to)
        self.tz_field = FieldError(self.h_tz)
        hours.addWidget(_inline_label("from"), 0, Qt.AlignmentFlag.AlignTop)
        hours.addWidget(self.hours_field, 1)
        hours.addWidget(_inline_label("to"), 0, Qt.AlignmentFlag.AlignTop)
        hours.addWidget(self.h_to_field, 1)
        hours.addWidget(self.tz_field, 2)
        form.addRow("Hours", hours)
        outer.addLayout(form)

        chain_head = QtWidgets.QHBoxLayout()
        chain_label = QtWidgets.QLabel("Chain — tried in order; a split picks one target by weight")
        chain_label.setObjectName("muted")
        chain_label.setWordWrap(True)  # at 960 px it wraps rather than push the rules sideways
        chain_head.addWidget(chain_label, 1)
        self.add_target = QtWidgets.QPushButton("+ Target")
        self.add_target.setToolTip("Add a fallback target at the end of the chain")
        self.add_split = QtWidgets.QPushButton("+ Split")
        self.add_split.setToolTip("Add a weighted split (a canary), e.g. fast=90, quick=10")
        chain_head.addWidget(self.add_target)
        chain_head.addWidget(self.add_split)
        outer.addLayout(chain_head)
        self.steps_box = QtWidgets.QVBoxLayout()
        self.steps_box.setSpacing(4)
        outer.addLayout(self.steps_box)
        self.chain_field = FieldError(None)
        outer.addWidget(self.chain_field)
        self.steps: list[StepRow] = []
        for step in rule.chain:
            self._add_step(step)
        self.add_target.clicked.connect(lambda: self._add_step(targets[0] if targets else "", user=True))
        self.add_split.clicked.connect(lambda: self._add_step(self._default_split(), user=True))
        for edit in (self.tags, self.over, self.under, self.h_from, self.h_to, self.h_tz):
            edit.textChanged.connect(self.changed)
        self._renumber()

    def _default_split(self) -> Split:
        names = self.targets[:2] if len(self.targets) >= 2 else ["fast", "quick"]
        return Split({names[0]: 90, names[1]: 10}, "user")

    def _add_step(self, step: Step, *, user: bool = False) -> None:
        row = StepRow(step, self.targets)
        row.changed.connect(self.changed)
        row.move.connect(self._move_step)
        row.remove.connect(self._remove_step)
        self.steps.append(row)
        self.steps_box.addWidget(row)
        self._renumber()
        if user:
            row.editor.setFocus()
            self.changed.emit()

    def _move_step(self, row: StepRow, delta: int) -> None:
        i = self.steps.index(row)
        j = i + delta
        if not 0 <= j < len(self.steps):
            return
        self.steps[i], self.steps[j] = self.steps[j], self.steps[i]
        self.steps_box.removeWidget(row)
        self.steps_box.insertWidget(j, row)
        self._renumber()
        self.changed.emit()

    def _remove_step(self, row: StepRow) -> None:
        self.steps.remove(row)
        self.steps_box.removeWidget(row)
        row.deleteLater()
        self._renumber()
        self.changed.emit()

    def _renumber(self) -> None:
        for k, row in enumerate(self.steps):
            row.set_position(k, len(self.steps))

    def set_position(self, i: int, n: int) -> None:
        self.index = i
        self.title.setText(f"Rule {i + 1}")
        self.up.setEnabled(i > 0)
        self.down.setEnabled(i < n - 1)

    def fields(self) -> list[FieldError]:
        return [
            self.rule_field,
            self.tags_field,
            self.over_field,
            self.under_field,
            self.hours_field,
            self.h_to_field,
            self.tz_field,
            self.chain_field,
            *(s.field for s in self.steps),
        ]

    def focus_widgets(self) -> list[QtWidgets.QWidget]:
        out: list[QtWidgets.QWidget] = [self.up, self.down, self.drop, self.tags, self.over, self.under]
        out += [self.h_from, self.h_to, self.h_tz, self.add_target, self.add_split]
        for s in self.steps:
            out += s.focus_widgets()
        return out

    def field_for(self, rest: tuple[str | int, ...]) -> FieldError:
        """The field a problem's path (after ``("rules", i)``) points at."""
        if not rest:
            return self.rule_field
        if rest[0] == "when":
            key = rest[1] if len(rest) > 1 else None
            if key is None or key == "input_tokens_over":
                return self.over_field
            if key == "input_tokens_under":
                return self.under_field
            if key == "hours":
                return self.tz_field if "tz" in rest else self.hours_field
            return self.tags_field
        if rest[0] == "chain" and len(rest) > 1 and isinstance(rest[1], int) and rest[1] < len(self.steps):
            return self.steps[rest[1]].field
        return self.chain_field

    def build(self, errors: list[tuple[FieldError, str]]) -> Rule:
        """The rule as typed; a field that does not parse is noted in ``errors`` and stands in as
        a condition or target no other rule can be confused with (see :data:`UNPARSED`), so the
        rest of the route can still be checked."""
        tags: dict[str, Any] = {}
        try:
            tags = dict(rm.parse_tags(self.tags.text()))
        except ValueError as exc:
            errors.append((self.tags_field, str(exc)))
            tags = {UNPARSED: UNPARSED}
        bounds: list[int | None] = []
        for edit, field, what in (
            (self.over, self.over_field, "input tokens over"),
            (self.under, self.under_field, "input tokens under"),
        ):
            try:
                bounds.append(rm.parse_number(edit.text(), what, integer=True, optional=True))  # type: ignore[arg-type]
            except ValueError as exc:
                errors.append((field, str(exc)))
                bounds.append(None)
        hours = None
        tz = self.h_tz.text().strip() or "UTC"
        if self.h_from.text().strip() or self.h_to.text().strip() or self.h_tz.text().strip():
            ends: list[int] = []
            for edit, field, what in (
                (self.h_from, self.hours_field, "hours from"),
                (self.h_to, self.h_to_field, "hours to"),
            ):
                try:
                    ends.append(int(rm.parse_number(edit.text(), what, integer=True) or 0))
                except ValueError as exc:
                    errors.append((field, str(exc)))
            if len(ends) == 2:
                hours = HoursWindow(ends[0], ends[1], tz)
        chain: list[Step] = []
        for k, row in enumerate(self.steps):
            step, problem = row.build()
            if step is None:
                errors.append((row.field, problem))
                chain.append(f"{UNPARSED}{k}")
            else:
                chain.append(step)
        return Rule(tuple(chain), Conditions(tags, bounds[0], bounds[1], hours))

    def update_summary(self, route: Route | None) -> None:
        if route is None or self.index >= len(route.rules):
            self.summary.setText("")
            return
        rule = route.rules[self.index]
        self.summary.setText("— catch-all" if rule.when.unconditional else "")


class RoutingPage(ControlObjectPage, QtWidgets.QWidget):
    """Routes on the left, the editor in the middle, the dry run and the YAML view on the right."""

    KIND = "route"

    status_message = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._gateway_getter: Callable[[], Any] = lambda: None
        self.confirm: Confirm = lambda title, text, ok: ask_confirmation(self, title, text, ok)
        self.snapshot: rm.RoutesSnapshot | None = None
        self.record: rm.RouteRecord | None = None  # what the form was loaded from
        self.route: Route | None = None  # the form as a route, when it builds
        self.problems: list[Problem] = []
        self.field_errors: list[tuple[FieldError, str]] = []
        self.rules: list[RuleCard] = []
        self.dry_answer: rm.DryRunAnswer | None = None
        self.recent: list[Any] = []
        self._loaded_state: Any = None
        self._loading = False
        self._busy = False

        spec = page_spec("routing")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(
                spec.title,
                "Each route's ordered rules (the first match wins) give a chain: the primary target, then "
                "fallbacks; a step may be a weighted split. Checked before saving; dry-run any request.",
            )
        )
        self.note = QtWidgets.QLabel("", objectName="muted")
        self.note.setWordWrap(True)
        self.note.hide()
        layout.addWidget(self.note)

        # -- the list of routes
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        self.list = QtWidgets.QListWidget()
        self.list.setAccessibleName("Routes")
        self.list.currentRowChanged.connect(self._on_pick)
        left_layout.addWidget(self.list, 1)
        self.new_button = QtWidgets.QPushButton("New route")
        self.new_button.clicked.connect(self.new_route)
        left_layout.addWidget(self.new_button)

        # -- the editor
        self.editor = QtWidgets.QWidget()
        form_layout = QtWidgets.QVBoxLayout(self.editor)
        form_layout.setContentsMargins(0, 0, 8, 0)
        self.banner = ProblemBanner()
        self.banner.action.connect(self.reload_current)
        form_layout.addWidget(self.banner)

        self.fields: dict[tuple[str | int, ...], FieldError] = {}

        def field(path: tuple[str | int, ...], edit: QtWidgets.QWidget | None, hint: str = "") -> FieldError:
            f = FieldError(edit, hint)
            self.fields[path] = f
            return f

        route_box = QtWidgets.QGroupBox("Route")
        grid = QtWidgets.QGridLayout(route_box)
        grid.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.name = _line("e.g. default")
        self.name.setAccessibleName("Route name")
        grid.addWidget(_inline_label("Name"), 0, 0, Qt.AlignmentFlag.AlignTop)
        grid.addWidget(
            field(("name",), self.name, "Callers ask for the route by this name (model=...)"), 0, 1, 1, 3
        )
        self.deadline = _line("30")
        self.connect_t = _line("5")
        self.first_token = _line("10")
        self.attempt = _line("deadline / 2")
        self.idle = _line("15")
        timeouts = (
            (
                "Deadline (s)",
                self.deadline,
                "deadline_s",
                "Total time for a request, retries and fallbacks included",
            ),
            (
                "Attempt timeout (s)",
                self.attempt,
                "attempt_timeout_s",
                "One attempt; empty: half the deadline",
            ),
            ("Connect timeout (s)", self.connect_t, "connect_timeout_s", "Time to connect to a provider"),
            (
                "First token (s)",
                self.first_token,
                "first_token_timeout_s",
                "Streams: time to the first token",
            ),
            ("Idle gap (s)", self.idle, "idle_timeout_s", "Streams: longest gap between chunks"),
        )
        for k, (label, edit, key, tip) in enumerate(timeouts):
            edit.setAccessibleName(label)
            grid.addWidget(_inline_label(label), 1 + k // 2, (k % 2) * 2, Qt.AlignmentFlag.AlignTop)
            grid.addWidget(field((key,), edit, tip), 1 + k // 2, (k % 2) * 2 + 1)
        form_layout.addWidget(route_box)

        retry_box = QtWidgets.QGroupBox("Retries (per target) and behaviour")
        rgrid = QtWidgets.QGridLayout(retry_box)
        self.max_attempts = _line("3")
        self.base = _line("0.5")
        self.cap = _line("8")
        self.max_retry_after = _line("60")
        retry = (
            ("Attempts per target", self.max_attempts, "max_attempts", "The first attempt included"),
            ("Backoff base (s)", self.base, "base_s", "Full jitter: random(0, min(cap, base * 2^n))"),
            ("Backoff cap (s)", self.cap, "cap_s", "The longest backoff"),
            (
                "Max Retry-After (s)",
                self.max_retry_after,
                "max_retry_after_s",
                "A longer server hint: next target",
            ),
        )
        for k, (label, edit, key, tip) in enumerate(retry):
            edit.setAccessibleName(label)
            rgrid.addWidget(_inline_label(label), k // 2, (k % 2) * 2, Qt.AlignmentFlag.AlignTop)
            rgrid.addWidget(field(("retry", key), edit, tip), k // 2, (k % 2) * 2 + 1)
        self.cache_on = QtWidgets.QCheckBox("Exact cache, TTL (s)")
        self.cache_ttl = _line("3600")
        self.cache_ttl.setAccessibleName("Cache TTL")
        self.cache_temp = QtWidgets.QCheckBox("also when temperature > 0")
        self.cache_on.setFixedHeight(self.cache_ttl.sizeHint().height())
        rgrid.addWidget(self.cache_on, 2, 0, Qt.AlignmentFlag.AlignTop)
        rgrid.addWidget(field(("cache", "exact_ttl_s"), self.cache_ttl), 2, 1)
        rgrid.addWidget(self.cache_temp, 2, 2, 1, 2)
        self.max_output = _line("no cap")
        self.max_output.setAccessibleName("Output cap")
        rgrid.addWidget(_inline_label("Output cap (tokens)"), 3, 0, Qt.AlignmentFlag.AlignTop)
        rgrid.addWidget(field(("max_output_tokens",), self.max_output), 3, 1)
        self.on_all_open = QtWidgets.QComboBox()
        self.on_all_open.addItem("fail fast", OnAllOpen.FAIL_FAST.value)
        self.on_all_open.addItem("try anyway", OnAllOpen.TRY_ANYWAY.value)
        self.on_all_open.setAccessibleName("When every breaker is open")
        self.on_all_open.setToolTip("When every target of the chain has its breaker open")
        rgrid.addWidget(_inline_label("All breakers open"), 3, 2, Qt.AlignmentFlag.AlignTop)
        rgrid.addWidget(field(("on_all_open",), self.on_all_open), 3, 3)
        self.latency_aware = QtWidgets.QCheckBox("Latency-aware splits")
        self.store_text = QtWidgets.QCheckBox("Keep request text in events")
        self.latency_aware.setToolTip("Among healthy targets of a split, prefer the lower recent p95")
        self.store_text.setToolTip("Keep the request's input and output text in its event (off: tokens only)")
        rgrid.addWidget(self.latency_aware, 4, 0, 1, 2)
        rgrid.addWidget(self.store_text, 4, 2, 1, 2)
        self.fallback = _line("none: fail with the last error")
        self.fallback.setAccessibleName("Fallback response")
        rgrid.addWidget(_inline_label("Fallback answer"), 5, 0, Qt.AlignmentFlag.AlignTop)
        rgrid.addWidget(
            field(("fallback_response",), self.fallback, "Answered when every target failed"), 5, 1, 1, 3
        )
        form_layout.addWidget(retry_box)

        rules_head = QtWidgets.QHBoxLayout()
        rules_title = QtWidgets.QLabel("Rules — first match wins")
        rules_title.setStyleSheet("font-weight: 600;")
        rules_head.addWidget(rules_title, 1)
        self.add_rule = QtWidgets.QPushButton("+ Rule")
        self.add_rule.setToolTip("Add a rule at the end (drag nothing: use ▲ ▼ to order rules)")
        self.add_rule.clicked.connect(lambda: self._add_rule(self._blank_rule(), user=True))
        rules_head.addWidget(self.add_rule)
        form_layout.addLayout(rules_head)
        self.rules_field = field(("rules",), None)
        form_layout.addWidget(self.rules_field)
        self.rules_box = QtWidgets.QVBoxLayout()
        self.rules_box.setSpacing(8)
        form_layout.addLayout(self.rules_box)
        form_layout.addStretch(1)

        self.scroll = QtWidgets.QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        self.scroll.setWidget(self.editor)
        self.empty = EmptyState(spec.next_step)
        self.empty.setText("Opening the store…")
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.scroll)
        self.stack.addWidget(self.empty)
        self.stack.setCurrentWidget(self.empty)

        # -- the dry run and the YAML view
        right = QtWidgets.QTabWidget()
        right.addTab(self.stack, "Edit")
        dry = QtWidgets.QWidget()
        dl = QtWidgets.QVBoxLayout(dry)
        self.dry_route = QtWidgets.QLabel("", objectName="muted")
        self.dry_route.setWordWrap(True)
        dl.addWidget(self.dry_route)
        pick = QtWidgets.QHBoxLayout()
        self.events_combo = QtWidgets.QComboBox()
        self.events_combo.setAccessibleName("Recent events")
        self.events_combo.setPlaceholderText("a recent event…")
        self.events_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.events_combo.setMinimumContentsLength(16)
        pick.addWidget(self.events_combo, 1)
        self.use_event = QtWidgets.QPushButton("Use event")
        self.use_event.setToolTip("Fill the request below from the recorded event and dry-run it")
        self.use_event.clicked.connect(self.use_selected_event)
        pick.addWidget(self.use_event)
        dl.addLayout(pick)
        self.request = QtWidgets.QPlainTextEdit()
        self.request.setPlaceholderText(_DRY_RUN_EXAMPLE)
        self.request.setAccessibleName("Request to dry-run")
        self.request.setTabChangesFocus(True)
        self.request_field = FieldError(self.request)
        dl.addWidget(self.request_field, 1)
        self.dry_button = QtWidgets.QPushButton("Dry run")
        self.dry_button.setToolTip(
            "Where would this request go on the route as edited, and why? Calls nobody."
        )
        self.dry_button.clicked.connect(self.run_dry)
        dl.addWidget(self.dry_button)
        self.dry_headline = QtWidgets.QLabel("")
        self.dry_headline.setWordWrap(True)
        self.dry_headline.setStyleSheet("font-size: 15px; font-weight: 600;")
        dl.addWidget(self.dry_headline)
        self.dry_detail = QtWidgets.QLabel("")
        self.dry_detail.setWordWrap(True)
        self.dry_detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.dry_detail.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        dl.addWidget(self.dry_detail, 1)
        right.addTab(dry, "Dry run")
        self.yaml_view = QtWidgets.QPlainTextEdit()
        self.yaml_view.setReadOnly(True)
        self.yaml_view.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.yaml_view.setAccessibleName("Route as YAML")
        right.addTab(self.yaml_view, "YAML")
        self.right = right

        split = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([180, 800])
        split.setChildrenCollapsible(False)
        layout.addWidget(split, 1)

        self.save_bar = SaveBar("route")
        self.save_bar.save.clicked.connect(self.save)
        self.save_bar.revert.clicked.connect(self.revert)
        self.save_bar.delete.clicked.connect(self.delete)
        self.save_bar.reason.textChanged.connect(lambda _t: self.save_bar.reason_field.clear_problem())
        layout.addWidget(self.save_bar)
        self.result = QtWidgets.QLabel("", objectName="muted")
        self.result.setWordWrap(True)
        layout.addWidget(self.result)

        for edit in (
            self.name,
            self.deadline,
            self.connect_t,
            self.first_token,
            self.attempt,
            self.idle,
            self.max_attempts,
            self.base,
            self.cap,
            self.max_retry_after,
            self.cache_ttl,
            self.max_output,
            self.fallback,
        ):
            edit.textChanged.connect(self._edited)
        for box in (self.cache_on, self.cache_temp, self.latency_aware, self.store_text):
            box.toggled.connect(self._edited)
        self.cache_on.toggled.connect(self.cache_ttl.setEnabled)
        self.cache_on.toggled.connect(self.cache_temp.setEnabled)
        self.on_all_open.currentIndexChanged.connect(self._edited)

        self._validate_timer = QTimer(self, interval=120, singleShot=True)
        self._validate_timer.timeout.connect(self.validate)
        # Another operator (or `config apply`) may change routes while the page is open.
        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self._tick)

        save = QtGui.QShortcut(QtGui.QKeySequence.StandardKey.Save, self)
        save.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        save.activated.connect(self.save)
        esc = QtGui.QShortcut(QtGui.QKeySequence(Qt.Key.Key_Escape), self)
        esc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        esc.activated.connect(self.revert)
        self._set_editing(False)

    # -- store -----------------------------------------------------------------------
    def _tick(self) -> None:
        if self.isVisible() and not self.dirty and not self._busy:
            self.refresh()

    def export_visible(self, ask_path: Any = None) -> None:
        """Ctrl+E: the store's configuration (routes with the rest) as a file `config apply` reads."""
        store = self._store_getter()
        if store is None or self._runner is None:
            return
        export_config(self, store.engine, self._runner, self._tell, what="routes", ask_path=ask_path)

    def refresh(self, select: str | None = None) -> None:
        store = self._store_getter()
        if self._runner is None:
            return
        if store is None:  # still opening: look again shortly
            QTimer.singleShot(300, lambda: self.refresh(select))
            return
        engine = store.engine
        gateway_config = self._gateway_config()

        def work() -> tuple[rm.RoutesSnapshot, list[Any]]:
            return rm.load_routes(engine, gateway_config), rm.recent_events(engine)

        self._runner(work, lambda r: self._on_snapshot(r, select), self._on_error)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if self.snapshot is not None and not self.dirty:
            self.refresh()

    def _on_error(self, exc: BaseException) -> None:
        self.empty.setText(f"The store could not answer: {exc}")
        self.result.setText(f"The store could not answer: {exc}")

    def _on_snapshot(self, got: tuple[rm.RoutesSnapshot, list[Any]], select: str | None) -> None:
        snap, events = got
        self.snapshot = snap
        self.recent = events
        self.events_combo.clear()
        for e in events:
            self.events_combo.addItem(rm.describe_event(e))
        if events:
            self.events_combo.setCurrentIndex(0)
        self.use_event.setEnabled(bool(events))
        self.note.setText(snap.note)
        self.note.setVisible(bool(snap.note))
        self.new_button.setEnabled(not snap.read_only)
        current = select or (self.record.name if self.record is not None else None)
        self.list.blockSignals(True)
        self.list.clear()
        for rec in snap.routes:
            label = rec.name
            if rec.route is not None:
                n = len(rec.route.rules)
                label += f"   · {n} rule{'s' if n != 1 else ''}"
            else:
                label += "   · does not load"
            item = QtWidgets.QListWidgetItem(label)
            if rec.error:
                item.setToolTip(rec.error)
                item.setForeground(QtGui.QColor(current_colors().bad))
            self.list.addItem(item)
        self.list.blockSignals(False)
        if not snap.routes:
            self.empty.setText(
                "No routes in the store yet. Add one with New route, or apply a config file "
                "(controlroom config apply FILE.yaml)."
            )
            if self.record is None or self.record.revision is not None:
                self.stack.setCurrentWidget(self.empty)
            return
        names = [r.name for r in snap.routes]
        if self.dirty and self.record is not None:
            # Keep the operator's edits; a concurrent change is caught at save.
            if self.record.name in names:
                self.list.blockSignals(True)
                self.list.setCurrentRow(names.index(self.record.name))
                self.list.blockSignals(False)
            return
        row = names.index(current) if current in names else 0
        self.list.blockSignals(True)
        self.list.setCurrentRow(row)
        self.list.blockSignals(False)
        rec = snap.routes[row]
        old = self.record
        if old is not None and (rec.name, rec.revision, rec.route) == (old.name, old.revision, old.route):
            self.record = rec  # unchanged in the store: leave the form (and the focus) alone
            self._set_editing(True)
            return
        self.load_record(rec)

    # -- loading the form ------------------------------------------------------------------
    @property
    def targets(self) -> list[str]:
        return sorted(self.snapshot.targets) if self.snapshot is not None else []

    def _on_pick(self, row: int) -> None:
        if self.snapshot is None or not 0 <= row < len(self.snapshot.routes):
            return
        rec = self.snapshot.routes[row]
        if self.record is not None and rec.name == self.record.name:
            return
        if self.dirty and not self.confirm(
            "Discard edits?",
            f"Route {self.record.name if self.record else ''} has unsaved edits. Discard them?",
            "Discard",
        ):
            names = [r.name for r in self.snapshot.routes]
            self.list.blockSignals(True)
            if self.record is not None and self.record.name in names:
                self.list.setCurrentRow(names.index(self.record.name))
            self.list.blockSignals(False)
            return
        self.load_record(rec)

    def select_route(self, name: str) -> None:
        """Pick a route in the list as the operator would (asks first if edits would be lost)."""
        assert self.snapshot is not None
        names = [r.name for r in self.snapshot.routes]
        self.list.setCurrentRow(names.index(name))

    def _blank_rule(self) -> Rule:
        t = self.targets
        return Rule((t[0] if t else "",))

    def new_route(self) -> None:
        if self.dirty and not self.confirm(
            "Discard edits?", "The route being edited has unsaved edits. Discard them?", "Discard"
        ):
            return
        rec = rm.RouteRecord("", None, Route("", (self._blank_rule(),)))
        self.list.blockSignals(True)
        self.list.clearSelection()
        self.list.setCurrentRow(-1)
        self.list.blockSignals(False)
        self.load_record(rec)
        self.name.setFocus()

    def load_record(self, rec: rm.RouteRecord) -> None:
        self._loading = True
        try:
            self.record = rec
            self.banner.clear()
            route = rec.route or Route(rec.name, (self._blank_rule(),))
            self.name.setText(route.name)
            self.name.setReadOnly(
                rec.revision is not None or (self.snapshot is not None and self.snapshot.read_only)
            )
            self.name.setToolTip(
                "A saved route keeps its name (callers use it); create a new route to rename"
                if rec.revision is not None
                else "Callers ask for the route by this name (model=...)"
            )
            self.deadline.setText(_num(route.deadline_s))
            self.connect_t.setText(_num(route.connect_timeout_s))
            self.first_token.setText(_num(route.first_token_timeout_s))
            self.attempt.setText(_num(route.attempt_timeout_s))
            self.idle.setText(_num(route.idle_timeout_s))
            self.max_attempts.setText(_num(route.retry.max_attempts))
            self.base.setText(_num(route.retry.base_s))
            self.cap.setText(_num(route.retry.cap_s))
            self.max_retry_after.setText(_num(route.retry.max_retry_after_s))
            on = route.cache.exact_ttl_s is not None
            self.cache_on.setChecked(on)
            self.cache_ttl.setText(_num(route.cache.exact_ttl_s) if on else "3600")
            self.cache_ttl.setEnabled(on)
            self.cache_temp.setChecked(route.cache.allow_nonzero_temperature)
            self.cache_temp.setEnabled(on)
            self.max_output.setText(_num(route.max_output_tokens))
            self.on_all_open.setCurrentIndex(self.on_all_open.findData(route.on_all_open.value))
            self.latency_aware.setChecked(route.latency_aware)
            self.store_text.setChecked(route.store_text)
            self.fallback.setText(route.fallback_response or "")
            for card in self.rules:
                self.rules_box.removeWidget(card)
                card.deleteLater()
            self.rules = []
            for rule in route.rules:
                self._add_rule(rule)
            self._renumber()
            if rec.error:
                self.banner.show_message(
                    f"The stored route does not load: {rec.error}. It is shown as a fresh route; saving "
                    "replaces it."
                )
        finally:
            self._loading = False
        self.stack.setCurrentWidget(self.scroll)
        self._set_editing(True)
        self.validate()
        self._loaded_state = self.form_state()
        self._sync_buttons()
        self.dry_headline.setText("")
        self.dry_detail.setText("")

    def _add_rule(self, rule: Rule, *, user: bool = False) -> None:
        card = RuleCard(rule, self.targets)
        card.changed.connect(self._edited)
        card.move.connect(self._move_rule)
        card.remove.connect(self._remove_rule)
        self.rules.append(card)
        self.rules_box.addWidget(card)
        if self.snapshot is not None and self.snapshot.read_only:
            card.setEnabled(False)
        if user:
            self._renumber()
            card.tags.setFocus()
            self._edited()

    def _move_rule(self, card: RuleCard, delta: int) -> None:
        i = self.rules.index(card)
        j = i + delta
        if not 0 <= j < len(self.rules):
            return
        self.rules[i], self.rules[j] = self.rules[j], self.rules[i]
        self.rules_box.removeWidget(card)
        self.rules_box.insertWidget(j, card)
        self._renumber()
        (card.up if delta < 0 and j > 0 else card.down if j < len(self.rules) - 1 else card.tags).setFocus()
        self._edited()

    def _remove_rule(self, card: RuleCard) -> None:
        self.rules.remove(card)
        self.rules_box.removeWidget(card)
        card.deleteLater()
        self._renumber()
        self._edited()

    def _renumber(self) -> None:
        for i, card in enumerate(self.rules):
            card.set_position(i, len(self.rules))
        self._fix_tab_order()

    def _fix_tab_order(self) -> None:
        """Tab goes top to bottom through the form, then the save bar (rule cards are created late)."""
        chain: list[QtWidgets.QWidget] = [
            self.list,
            self.new_button,
            self.name,
            self.deadline,
            self.attempt,
            self.connect_t,
            self.first_token,
            self.idle,
            self.max_attempts,
            self.base,
            self.cap,
            self.max_retry_after,
            self.cache_on,
            self.cache_ttl,
            self.cache_temp,
            self.max_output,
            self.on_all_open,
            self.latency_aware,
            self.store_text,
            self.fallback,
            self.add_rule,
        ]
        for card in self.rules:
            chain += card.focus_widgets()
        chain += [self.save_bar.reason, self.save_bar.save, self.save_bar.revert, self.save_bar.delete]
        chain += [self.events_combo, self.use_event, self.request, self.dry_button]
        for a, b in itertools.pairwise(chain):
            QtWidgets.QWidget.setTabOrder(a, b)

    def _set_editing(self, on: bool) -> None:
        read_only = self.snapshot is not None and self.snapshot.read_only
        self.editor.setEnabled(on and not read_only)
        bar = on and not read_only
        self.save_bar.setEnabled(bar)
        self.dry_button.setEnabled(on)

    # -- the form as a route ------------------------------------------------------------
    def form_state(self) -> Any:
        """Everything the operator can change, to tell whether there are unsaved edits."""
        texts = [
            e.text()
            for e in (
                self.name,
                self.deadline,
                self.connect_t,
                self.first_token,
                self.attempt,
                self.idle,
                self.max_attempts,
                self.base,
                self.cap,
                self.max_retry_after,
                self.cache_ttl,
                self.max_output,
                self.fallback,
            )
        ]
        checks = [
            b.isChecked() for b in (self.cache_on, self.cache_temp, self.latency_aware, self.store_text)
        ]
        rules = []
        for card in self.rules:
            steps = [
                (s.weights.text(), s.sticky.currentText()) if s.is_split else s.target.currentText()
                for s in card.steps
            ]
            rules.append(
                (
                    card.tags.text(),
                    card.over.text(),
                    card.under.text(),
                    card.h_from.text(),
                    card.h_to.text(),
                    card.h_tz.text(),
                    steps,
                )
            )
        return (texts, checks, self.on_all_open.currentData(), rules)

    @property
    def dirty(self) -> bool:
        if self.record is None or self._loaded_state is None:
            return False
        if self.snapshot is not None and self.snapshot.read_only:
            return False
        # A new route, or a stored one that does not load (the form holds its replacement).
        return bool(
            self.record.revision is None or self.record.error or self.form_state() != self._loaded_state
        )

    def _edited(self, *_args: object) -> None:
        if self._loading:
            return
        self._validate_timer.start()
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        dirty = self.dirty
        self.save_bar.revert.setEnabled(
            dirty and self.record is not None and self.record.revision is not None
        )
        self.save_bar.delete.setEnabled(self.record is not None and self.record.revision is not None)
        self.save_bar.save.setEnabled(dirty)

    def build_route(self) -> tuple[Route, list[tuple[FieldError, str]]]:
        """The form as a :class:`Route`, and the fields that do not parse (with their messages).

        With parse errors the route is a best effort (defaults and :data:`UNPARSED` stand-ins) that
        is only good for checking the rest of the form: it is never saved nor dry-run.
        """
        errors: list[tuple[FieldError, str]] = []

        def number(edit: QtWidgets.QLineEdit, path: tuple[str | int, ...], what: str, **kw: Any) -> Any:
            try:
                return rm.parse_number(edit.text(), what, **kw)
            except ValueError as exc:
                errors.append((self.fields[path], str(exc)))
                return None

        d = Route("x")
        deadline = number(self.deadline, ("deadline_s",), "the deadline", optional=True)
        connect = number(self.connect_t, ("connect_timeout_s",), "the connect timeout", optional=True)
        first = number(self.first_token, ("first_token_timeout_s",), "the first-token timeout", optional=True)
        attempt = number(self.attempt, ("attempt_timeout_s",), "the attempt timeout", optional=True)
        idle = number(self.idle, ("idle_timeout_s",), "the idle timeout", optional=True)
        r = RetryPolicy()
        attempts = number(
            self.max_attempts, ("retry", "max_attempts"), "attempts", integer=True, optional=True
        )
        base = number(self.base, ("retry", "base_s"), "the backoff base", optional=True)
        cap = number(self.cap, ("retry", "cap_s"), "the backoff cap", optional=True)
        hint = number(self.max_retry_after, ("retry", "max_retry_after_s"), "max Retry-After", optional=True)
        ttl = None
        if self.cache_on.isChecked():
            ttl = number(self.cache_ttl, ("cache", "exact_ttl_s"), "the cache TTL")
        out_cap = number(
            self.max_output, ("max_output_tokens",), "the output cap", integer=True, optional=True
        )
        rules = [card.build(errors) for card in self.rules]
        route = Route(
            name=self.name.text().strip(),
            rules=tuple(rules),
            deadline_s=float(deadline) if deadline is not None else d.deadline_s,
            connect_timeout_s=float(connect) if connect is not None else d.connect_timeout_s,
            first_token_timeout_s=float(first) if first is not None else d.first_token_timeout_s,
            attempt_timeout_s=float(attempt) if attempt is not None else None,
            idle_timeout_s=float(idle) if idle is not None else d.idle_timeout_s,
            retry=RetryPolicy(
                max_attempts=int(attempts) if attempts is not None else r.max_attempts,
                base_s=float(base) if base is not None else r.base_s,
                cap_s=float(cap) if cap is not None else r.cap_s,
                max_retry_after_s=float(hint) if hint is not None else r.max_retry_after_s,
            ),
            cache=CacheSettings(
                float(ttl) if ttl is not None else None, self.cache_temp.isChecked() and ttl is not None
            ),
            max_output_tokens=int(out_cap) if out_cap is not None else None,
            on_all_open=OnAllOpen(self.on_all_open.currentData()),
            store_text=self.store_text.isChecked(),
            latency_aware=self.latency_aware.isChecked(),
            fallback_response=self.fallback.text() or None,
        )
        return route, errors

    def all_fields(self) -> list[FieldError]:
        out = list(self.fields.values())
        for card in self.rules:
            out += card.fields()
        return out

    def field_for(self, path: tuple[str | int, ...]) -> FieldError:
        """The field a :class:`Problem` path points at (the rules heading when nothing closer)."""
        if (
            path
            and path[0] == "rules"
            and len(path) > 1
            and isinstance(path[1], int)
            and path[1] < len(self.rules)
        ):
            return self.rules[path[1]].field_for(path[2:])
        for n in range(len(path), 0, -1):
            if path[:n] in self.fields:
                return self.fields[path[:n]]
        return self.rules_field

    def validate(self) -> list[Problem]:
        """Check the form now: parse errors and :func:`validate_route` problems, each at its field."""
        for f in self.all_fields():
            f.clear_problem()
        built, errors = self.build_route()
        self.field_errors = errors
        route = built if not errors else None
        self.route = route
        self.problems = []
        if built is not None:
            bad_deadline = any(f is self.fields[("deadline_s",)] for f, _ in errors)
            self.problems = [
                p
                for p in validate_route(built, self.targets if self.snapshot is not None else None)
                if UNPARSED not in p.message and not (bad_deadline and "deadline" in p.message)
            ]
            taken = {r.name for r in (self.snapshot.routes if self.snapshot else [])}
            read_only = self.snapshot is not None and self.snapshot.read_only
            if (
                self.record is not None
                and self.record.revision is None
                and built.name in taken
                and not read_only
            ):
                self.problems.insert(0, Problem(("name",), f"a route called `{built.name}` already exists"))
            if built.name in (self.snapshot.targets if self.snapshot else {}):
                self.problems.insert(
                    0,
                    Problem(
                        ("name",),
                        f"`{built.name}` is also a target: callers asking for it would get this route",
                        "warning",
                    ),
                )
        for f, message in errors:
            f.set_problem(message)
        for p in self.problems:
            self.field_for(p.path).set_problem(p.message, p.severity)
        for card in self.rules:
            card.update_summary(built)
        name = built.name or "(unnamed)"
        edited = " — with your unsaved edits" if self.dirty else ""
        self.dry_route.setText(
            f"Against route {name} as in the editor{edited}; nobody is called. Budgets are not applied; "
            "breakers are shown when a gateway runs in this app."
        )
        self.yaml_view.setPlainText(
            rm.route_yaml(self.route)
            if self.route is not None and self.route.name
            else "# the route does not parse yet: see the fields marked in red"
        )
        return self.problems

    @property
    def error_count(self) -> int:
        """Fields showing an error now (one per field: the first problem found there)."""
        return sum(1 for f in self.all_fields() if f.severity == "error")

    def messages(self) -> dict[str, str]:
        """Every field's message by the field's accessible name (for tests and screen readers)."""
        out = {}
        for f in self.all_fields():
            if f.message:
                out[f.editor.accessibleName() or f.editor.objectName() or str(id(f))] = f.message
        return out

    # -- save, revert, delete ------------------------------------------------------------------
    def save(self) -> None:
        if self.record is None or (self.snapshot is not None and self.snapshot.read_only) or self._busy:
            return
        self._validate_timer.stop()
        self.validate()
        if self.error_count or self.route is None:
            first = next((f for f in self.all_fields() if f.severity == "error"), None)
            self.banner.show_message(
                f"Not saved: fix the {self.error_count} problem{'s' if self.error_count != 1 else ''} "
                "marked in red first."
            )
            if first is not None:
                self.scroll.ensureWidgetVisible(first)
                first.editor.setFocus()
            return
        reason = self.save_bar.required_reason()
        if reason is None:
            return
        store = self._store_getter()
        if self._runner is None or store is None:
            return
        engine = store.engine
        row = rm.route_to_row(self.route)
        expected = self.record.revision
        actor = getpass.getuser()
        self._busy = True
        self.result.setText(f"Saving route {row['name']}…")

        def work() -> dict[str, Any]:
            return rm.save_row(engine, "route", row, expected_revision=expected, actor=actor, reason=reason)

        self._runner(work, self._on_saved, self._on_save_error)

    def _on_saved(self, stored: dict[str, Any]) -> None:
        self._busy = False
        self.banner.clear()
        self.save_bar.reason.clear()
        self.save_bar.reason_field.clear_problem()
        text = (
            f"Saved route {stored['name']} (revision {stored['revision']}) at "
            f"{time.strftime('%H:%M:%S')}; every gateway applies it within a second."
        )
        self.result.setText(text)
        self.status_message.emit(text)
        assert self.route is not None
        self.record = rm.RouteRecord(stored["name"], stored["revision"], rm.route_from_row(stored))
        self._loaded_state = self.form_state()
        self.name.setReadOnly(True)
        self._sync_buttons()
        self.refresh(select=stored["name"])

    def reload_current(self) -> None:
        """Reload the route from the store (after a refused stale save): the edits are dropped."""
        if self.record is None:
            return
        name = self.record.name or self.name.text().strip()
        self.banner.clear()
        self._loaded_state = None  # not dirty any more: the store's version wins
        self.record = rm.RouteRecord(name, -1, None)
        self.refresh(select=name)

    def revert(self) -> None:
        if self.record is None:
            return
        if self.dirty and not self.confirm(
            "Revert edits?", f"Throw away the unsaved edits to route {self.record.name or '(new)'}?", "Revert"
        ):
            return
        if self.record.revision is None:
            self.record = None
            self._loaded_state = None
            self.refresh()
            return
        self.load_record(self.record)

    def delete_consequence(self, name: str) -> str:
        return (
            f"Requests that ask for {name} will fail as an unknown route (in every gateway, within a second)."
        )

    # -- dry run -------------------------------------------------------------------------
    def use_selected_event(self) -> None:
        i = self.events_combo.currentIndex()
        if not 0 <= i < len(self.recent):
            return
        e = self.recent[i]
        lines = []
        if e.feature:
            lines.append(f"x-controlroom-feature: {e.feature}")
        if e.user:
            lines.append(f"x-controlroom-user: {e.user}")
        for k, v in e.tags.items():
            lines.append(f"{k}: {v}")
        lines.append(f"input_tokens: {e.input_tokens}")
        self.request.setPlainText("\n".join(lines))
        self.run_dry()

    def run_dry(self) -> None:
        self.request_field.clear_problem()
        self._validate_timer.stop()
        self.validate()
        if self.route is None:
            self.dry_headline.setText("Fix the route's fields marked in red first.")
            self.dry_detail.setText("")
            return
        try:
            given = rm.parse_request(self.request.toPlainText())
        except ValueError as exc:
            self.request_field.set_problem(str(exc))
            return
        route = self.route
        if self._runner is None:
            return
        self.dry_headline.setText("…")

        gateway = self._gateway_getter()
        store = self._store_getter()

        def work() -> rm.DryRunAnswer:
            answer = rm.run_dry(route, given)
            snapshots: list[Any] = []
            if gateway is not None and hasattr(gateway, "breaker_snapshots"):
                try:
                    snapshots = list(gateway.breaker_snapshots())
                except RuntimeError:  # its board changed while we read it: no live view this time
                    snapshots = []
            live = rm.breaker_notes(answer.decision.chain, snapshots, route.on_all_open.value)
            if not live and store is not None:  # no gateway in this app: what the store tells every gateway
                overrides = list_breaker_overrides(store.engine)
                live = rm.override_notes(answer.decision.chain, overrides, time.time())
            return dataclasses.replace(answer, live=live)

        self._runner(work, self._on_dry, lambda exc: self.request_field.set_problem(f"dry run failed: {exc}"))

    def _on_dry(self, answer: rm.DryRunAnswer) -> None:
        self.dry_answer = answer
        colors = current_colors()
        colour = colors.text if answer.decision.chain else colors.bad
        self.dry_headline.setStyleSheet(f"font-size: 15px; font-weight: 600; color: {colour};")
        self.dry_headline.setText(answer.headline)
        tokens = "unknown" if answer.input_tokens is None else f"{answer.input_tokens:,}"
        unknown = [
            t for t in answer.decision.chain if self.snapshot is not None and t not in self.snapshot.targets
        ]
        lines = [f"Input tokens: {tokens} ({answer.token_note}) · from the {answer.source}"]
        lines += [f"• {line}" for line in answer.decision.explanation]
        lines += [f"• {line}" for line in answer.live]
        if unknown:
            lines.append(f"⚠ not a known target: {', '.join(unknown)}")
        self.dry_detail.setText("\n".join(lines))


PAGE_CLASS = RoutingPage

__all__ = ["PAGE_CLASS", "RoutingPage", "RuleCard", "StepRow"]
