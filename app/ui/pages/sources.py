"""The Sources page: add, edit, pause and remove log sources; their live status; the quarantined records.

What the operator sees:

- a table of every source the collector runs (stored ones are editable; those
  from a config file, ``--otlp`` or a provider's admin key are shown with where
  they come from), with state, events/s, lag, last error and how many records
  were quarantined — live, pushed by the app's collector every second;
- an editor for the four kinds (JSONL file, OTLP/HTTP receiver, HTTP poll,
  provider usage API) that checks every field before saving and says what is
  wrong at the field.  A bearer token or an admin key typed here goes to the OS
  keyring; the store keeps only the reference;
- the quarantined records of the selected source (or all), newest first, read
  page by page, with the reason and the excerpt of each.

Every change is one audited store transaction that bumps the control version;
the running collector applies it within a second.  Pausing and removing ask
first; a removal can be undone from the result line.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.sources.collector import SETTINGS_BY_KIND, SourceReport, source_problems
from app.sources.formats import FORMAT_NAMES
from app.ui.editors.export import export_table
from app.ui.editors.fields import ask_reason
from app.ui.models.quarantine_model import (
    COL_EXCERPT,
    COL_POSITION,
    COL_REASON,
    COL_SOURCE,
    COL_WHEN,
    QuarantineModel,
)
from app.ui.models.runner import Runner
from app.ui.models.sources_model import (
    COL_ERROR,
    COL_KIND,
    COL_LAG,
    COL_NAME,
    COL_QUARANTINED,
    COL_RATE,
    COL_STATE,
    COL_WHERE,
    KIND_LABELS,
    STATE_ROLE,
    SourceRow,
    SourcesModel,
    build_rows,
)
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import current_colors
from storage.queries.control import list_objects
from storage.queries.quarantine import count_quarantined_by_source
from storage.queries.source_configs import (
    SourceConfig,
    delete_source_config,
    list_source_configs,
    save_source_config,
    set_source_paused,
)

#: How often the page reads the store again while it is shown (configs, providers).
REFRESH_MS = 2000
#: Seconds between quarantine counts when no source reports a new rejection.
COUNT_EVERY_S = 30.0

KIND_HELP = {
    "jsonl": "Follow a JSONL log file like tail -F: rotation, truncation and a file that appears later are handled; "
    "after a restart it resumes where it stopped.",
    "otlp": "Receive OpenTelemetry GenAI spans over OTLP/HTTP (POST /v1/traces, JSON or protobuf) from "
    "instrumented services.",
    "http_poll": "Poll a remote JSON or NDJSON endpoint with a cursor parameter; backs off when it fails.",
    "usage_api": "Read a provider's own usage and cost reports (OpenAI, Anthropic) with its admin key, to "
    "reconcile against our events.",
}

#: Token / admin-key choices: (label, mode).
TOKEN_MODES = (
    ("No token", "none"),
    ("Bearer token in the OS keyring", "keyring"),
    ("From an environment variable", "env"),
)
ADMIN_MODES = (
    ("The provider's admin key (as set on Providers)", "provider"),
    ("Admin key in the OS keyring (type it below)", "keyring"),
    ("From an environment variable", "env"),
)


def token_entry(source: str) -> str:
    """The keyring entry of a source's bearer token: apart from the providers' entries (no collision).

    Keyring entry names take no ``:`` (source names may), so it becomes ``_``.
    """
    return f"source.{source.replace(':', '_')}"


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment: the audit still says something
        return "unknown"


# --- the editor --------------------------------------------------------------------------------


@dataclass
class _Field:
    key: str
    widget: QtWidgets.QWidget
    error: QtWidgets.QLabel


class SourceEditor(QtWidgets.QFrame):
    """The form for one source: name, kind and the kind's fields, each with its message under it."""

    save_requested = Signal()
    cancelled = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="sourceEditor")
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.original: SourceConfig | None = None
        self.providers: dict[str, str] = {}
        self.fields: dict[str, _Field] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        self.title = QtWidgets.QLabel("New source", objectName="sectionTitle")
        self.title.setStyleSheet("font-weight: 600; font-size: 14px;")
        layout.addWidget(self.title)
        self.help = QtWidgets.QLabel("", objectName="muted")
        self.help.setWordWrap(True)
        layout.addWidget(self.help)
        self.general_error = self._error_label()
        layout.addWidget(self.general_error)

        self.form = QtWidgets.QFormLayout()
        self.form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        layout.addLayout(self.form)

        self.name = QtWidgets.QLineEdit()
        self.name.setPlaceholderText("e.g. app-log")
        self._add("name", "&Name", self.name)
        self.kind = QtWidgets.QComboBox()
        for kind, label in KIND_LABELS.items():
            self.kind.addItem(label, kind)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self._add("kind", "&Kind", self.kind)

        # JSONL
        self.path = QtWidgets.QLineEdit()
        self.path.setPlaceholderText("/var/log/app/llm.jsonl")
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        path_row = QtWidgets.QWidget()
        path_layout = QtWidgets.QHBoxLayout(path_row)
        path_layout.setContentsMargins(0, 0, 0, 0)
        path_layout.addWidget(self.path, 1)
        path_layout.addWidget(browse)
        self._add("path", "&File", path_row, focus=self.path)
        self.jsonl_format = self._format_combo()
        self._add("format", "&Format", self.jsonl_format, kind_key="jsonl:format")
        self.poll_interval = QtWidgets.QLineEdit()
        self.poll_interval.setPlaceholderText("0.25 (seconds between looks at the file)")
        self._add("poll_interval", "Look every (s)", self.poll_interval)

        # OTLP
        self.listen = QtWidgets.QLineEdit()
        self.listen.setPlaceholderText("127.0.0.1:4318")
        self._add("listen", "&Listen on", self.listen)

        # HTTP poll
        self.url = QtWidgets.QLineEdit()
        self.url.setPlaceholderText("http://127.0.0.1:9100/events")
        self._add("url", "&URL", self.url)
        self.http_format = self._format_combo(detect=False)
        self._add("format", "&Format", self.http_format, kind_key="http_poll:format")
        self.cursor_param = QtWidgets.QLineEdit()
        self.cursor_param.setPlaceholderText("cursor")
        self.cursor_param.setToolTip("The query parameter that carries the cursor to the endpoint")
        self._add("cursor_param", "&Cursor parameter", self.cursor_param)
        self.records_field = QtWidgets.QLineEdit()
        self.records_field.setPlaceholderText("optional, e.g. data")
        self.records_field.setToolTip(
            "Where the records are in a JSON reply (a path); empty for NDJSON or a top-level list"
        )
        self._add("records_field", "&Records at", self.records_field)
        self.interval = QtWidgets.QLineEdit()
        self.interval.setPlaceholderText("10 (seconds between polls)")
        self._add("interval_s", "Poll &every (s)", self.interval, kind_key="http_poll:interval_s")
        self.token_mode = QtWidgets.QComboBox()
        for label, mode in TOKEN_MODES:
            self.token_mode.addItem(label, mode)
        self.token_mode.currentIndexChanged.connect(self._sync_secret_fields)
        self._add("token", "&Authorization", self.token_mode)
        self.token = QtWidgets.QLineEdit()
        self.token.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.token.setAccessibleName("Bearer token")
        self._add("token_value", "&Token", self.token)
        self.token_env = QtWidgets.QLineEdit()
        self.token_env.setPlaceholderText("VARIABLE_NAME")
        self._add("token_env", "&Variable", self.token_env)

        # usage API
        self.provider = QtWidgets.QComboBox()
        self._add("provider", "&Provider", self.provider)
        self.admin_mode = QtWidgets.QComboBox()
        for label, mode in ADMIN_MODES:
            self.admin_mode.addItem(label, mode)
        self.admin_mode.currentIndexChanged.connect(self._sync_secret_fields)
        self._add("admin_key", "A&dmin key", self.admin_mode)
        self.admin_key = QtWidgets.QLineEdit()
        self.admin_key.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.admin_key.setAccessibleName("Admin key")
        self._add("admin_key_value", "&Key", self.admin_key)
        self.admin_env = QtWidgets.QLineEdit()
        self.admin_env.setPlaceholderText("VARIABLE_NAME")
        self._add("admin_env", "&Variable", self.admin_env)
        self.lookback = QtWidgets.QLineEdit()
        self.lookback.setPlaceholderText("7 (days read again each poll)")
        self._add("lookback_days", "&Look back (days)", self.lookback)
        self.usage_interval = QtWidgets.QLineEdit()
        self.usage_interval.setPlaceholderText("3600 (seconds between polls)")
        self._add("interval_s", "Poll &every (s)", self.usage_interval, kind_key="usage_api:interval_s")

        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("optional: why (kept in the audit log)")
        self._add("reason", "&Why", self.reason)

        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancelled.emit)
        self.save_button = QtWidgets.QPushButton("&Save")
        self.save_button.setDefault(True)
        self.save_button.clicked.connect(self.save_requested.emit)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.save_button)
        layout.addLayout(buttons)
        layout.addStretch(1)
        QtGui.QShortcut(QtGui.QKeySequence("Esc"), self, activated=self.cancelled.emit)
        self._kind_changed()

    # -- building -----------------------------------------------------------------------------
    @staticmethod
    def _error_label() -> QtWidgets.QLabel:
        label = QtWidgets.QLabel("", objectName="fieldError")
        label.setWordWrap(True)
        label.setStyleSheet(f"color: {current_colors().bad};")
        label.setVisible(False)
        return label

    def _add(
        self,
        key: str,
        label: str,
        widget: QtWidgets.QWidget,
        *,
        kind_key: str | None = None,
        focus: QtWidgets.QWidget | None = None,
    ) -> None:
        error = self._error_label()
        holder = QtWidgets.QWidget()
        box = QtWidgets.QVBoxLayout(holder)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(widget)
        box.addWidget(error)
        self.form.addRow(label, holder)
        text_label = self.form.labelForField(holder)
        if isinstance(text_label, QtWidgets.QLabel):
            text_label.setBuddy(focus or widget)
        self.fields[kind_key or key] = _Field(key, holder, error)

    @staticmethod
    def _format_combo(*, detect: bool = True) -> QtWidgets.QComboBox:
        combo = QtWidgets.QComboBox()
        combo.setEditable(True)  # a mapping file's path may be typed
        if detect:
            combo.addItem("detect from the file", "")
        for name in FORMAT_NAMES:
            combo.addItem(name, name)
        combo.setToolTip(
            "event: our own event lines; otlp: the OpenTelemetry Collector's file exporter; "
            "litellm / openai-response: built-in field mappings; or the path of a mapping file (.yaml/.json)"
        )
        return combo

    def _visible_keys(self, kind: str) -> set[str]:
        keys = {"name", "kind", "reason"}
        if kind == "jsonl":
            keys |= {"path", "jsonl:format", "poll_interval"}
        elif kind == "otlp":
            keys |= {"listen"}
        elif kind == "http_poll":
            keys |= {
                "url",
                "http_poll:format",
                "cursor_param",
                "records_field",
                "http_poll:interval_s",
                "token",
            }
            mode = self.token_mode.currentData()
            if mode == "keyring":
                keys.add("token_value")
            elif mode == "env":
                keys.add("token_env")
        elif kind == "usage_api":
            keys |= {"provider", "admin_key", "lookback_days", "usage_api:interval_s"}
            mode = self.admin_mode.currentData()
            if mode == "keyring":
                keys.add("admin_key_value")
            elif mode == "env":
                keys.add("admin_env")
        return keys

    def _kind_changed(self, *_args: object) -> None:
        kind = self.current_kind
        self.help.setText(KIND_HELP.get(kind, ""))
        self._sync_secret_fields()

    def _sync_secret_fields(self, *_args: object) -> None:
        visible = self._visible_keys(self.current_kind)
        for key, f in self.fields.items():
            shown = key in visible
            f.widget.setVisible(shown)
            label = self.form.labelForField(f.widget)
            if label is not None:
                label.setVisible(shown)
        editing_keyring = (
            self.original is not None
            and isinstance(self.original.settings.get("token"), str)
            and str(self.original.settings.get("token")).startswith("keyring")
        )
        self.token.setPlaceholderText(
            "leave empty to keep the stored token"
            if editing_keyring
            else "the token (goes to the OS keyring)"
        )
        self.admin_key.setPlaceholderText("the admin key (goes to the OS keyring, under the provider)")

    def _browse(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self,
            "Choose a JSONL file",
            self.path.text(),
            "JSON lines (*.jsonl *.ndjson *.log *.json);;All (*)",
        )
        if path:
            self.path.setText(path)

    # -- filling ------------------------------------------------------------------------------------
    def line_edits(self) -> list[QtWidgets.QLineEdit]:
        return [
            self.name, self.path, self.poll_interval, self.listen, self.url, self.cursor_param,
            self.records_field, self.interval, self.token, self.token_env, self.admin_key, self.admin_env,
            self.lookback, self.usage_interval, self.reason,
        ]  # fmt: skip

    @property
    def current_kind(self) -> str:
        return str(self.kind.currentData())

    def set_providers(self, providers: dict[str, str]) -> None:
        """Provider names -> kinds (a usage source names one with a usage API)."""
        self.providers = dict(providers)
        current = self.provider.currentData()
        self.provider.blockSignals(True)
        self.provider.clear()
        usable = [(n, k) for n, k in sorted(providers.items()) if k in ("openai", "anthropic")]
        for name, kind in usable:
            self.provider.addItem(f"{name}  ({kind})", name)
        if not usable:
            self.provider.addItem("no OpenAI or Anthropic provider yet — add one on Providers", "")
        index = self.provider.findData(current)
        self.provider.setCurrentIndex(max(index, 0))
        self.provider.blockSignals(False)

    def start_new(self, kind: str) -> None:
        self.original = None
        self.title.setText(f"New {KIND_LABELS.get(kind, kind)} source")
        self.name.setReadOnly(False)
        self.kind.setEnabled(True)
        for line in self.line_edits():
            line.clear()
        self.kind.setCurrentIndex(self.kind.findData(kind))
        self.jsonl_format.setCurrentIndex(0)
        self.http_format.setCurrentIndex(0)
        self.token_mode.setCurrentIndex(0)
        self.admin_mode.setCurrentIndex(0)
        self.clear_errors()
        self._kind_changed()
        self.name.setFocus()

    def start_edit(self, config: SourceConfig) -> None:
        self.start_new(config.kind)
        self.original = config
        self.title.setText(f"Edit {config.name}  ·  {KIND_LABELS.get(config.kind, config.kind)}")
        self.name.setText(config.name)
        self.name.setReadOnly(True)
        self.kind.setEnabled(False)
        s = config.settings

        def text(widget: QtWidgets.QLineEdit, key: str) -> None:
            value = s.get(key)
            widget.setText("" if value is None else str(value))

        if config.kind == "jsonl":
            text(self.path, "path")
            self._set_format(self.jsonl_format, s.get("format"))
            text(self.poll_interval, "poll_interval")
        elif config.kind == "otlp":
            text(self.listen, "listen")
        elif config.kind == "http_poll":
            text(self.url, "url")
            self._set_format(self.http_format, s.get("format", "event"))
            text(self.cursor_param, "cursor_param")
            text(self.records_field, "records_field")
            text(self.interval, "interval_s")
            token = s.get("token")
            if isinstance(token, str) and token.startswith("env:"):
                self.token_mode.setCurrentIndex(self.token_mode.findData("env"))
                self.token_env.setText(token[4:])
            elif isinstance(token, str) and token.startswith("keyring"):
                self.token_mode.setCurrentIndex(self.token_mode.findData("keyring"))
        elif config.kind == "usage_api":
            index = self.provider.findData(s.get("provider"))
            if index < 0 and s.get("provider"):
                self.provider.addItem(f"{s.get('provider')}  (not in the store)", s.get("provider"))
                index = self.provider.count() - 1
            self.provider.setCurrentIndex(max(index, 0))
            admin = s.get("admin_key")
            if isinstance(admin, str) and admin.startswith("env:"):
                self.admin_mode.setCurrentIndex(self.admin_mode.findData("env"))
                self.admin_env.setText(admin[4:])
            elif isinstance(admin, str) and admin.startswith("keyring"):
                self.admin_mode.setCurrentIndex(self.admin_mode.findData("keyring"))
            text(self.lookback, "lookback_days")
            text(self.usage_interval, "interval_s")
        self._sync_secret_fields()
        self.reason.setFocus()

    @staticmethod
    def _set_format(combo: QtWidgets.QComboBox, value: Any) -> None:
        index = combo.findData(value or "")
        if index >= 0:
            combo.setCurrentIndex(index)
        else:
            combo.setEditText(str(value))

    @staticmethod
    def _format_value(combo: QtWidgets.QComboBox) -> str:
        text = combo.currentText().strip()
        index = combo.findText(text)
        if index >= 0:
            return str(combo.itemData(index) or "")
        return text

    # -- reading -----------------------------------------------------------------------------------
    def clear_errors(self) -> None:
        self.general_error.setVisible(False)
        self.general_error.setText("")
        for f in self.fields.values():
            f.error.setVisible(False)
            f.error.setText("")

    def show_errors(self, problems: dict[str, str]) -> None:
        """Each message at its field; one that belongs to no visible field at the top."""
        self.clear_errors()
        visible = self._visible_keys(self.current_kind)
        general = []
        for key, message in problems.items():
            target = None
            for field_key in (f"{self.current_kind}:{key}", key):
                if field_key in self.fields and field_key in visible:
                    target = self.fields[field_key]
                    break
            if target is None:
                general.append(f"{key}: {message}" if key else message)
                continue
            target.error.setText(message)
            target.error.setVisible(True)
        if general:
            self.general_error.setText("\n".join(general))
            self.general_error.setVisible(True)

    def error_text(self, key: str) -> str:
        """The message shown at a field ("" when none): ``path``, ``url``, ``http_poll:interval_s``..."""
        f = self.fields.get(key) or self.fields.get(f"{self.current_kind}:{key}")
        return f.error.text() if f is not None and not f.error.isHidden() else ""

    def read(self) -> tuple[SourceConfig, dict[str, str], dict[str, str]]:
        """The config the form describes, problems found reading it, and secrets to store first.

        Secrets are ``{"token": ...}`` or ``{"admin_key": ...}``; they never enter the config.
        """
        kind = self.current_kind
        problems: dict[str, str] = {}
        secrets: dict[str, str] = {}
        name = self.name.text().strip()
        base = self.original
        # Settings the form does not show (headers, params...) are kept as they were.
        settings: dict[str, Any] = dict(base.settings) if base is not None and base.kind == kind else {}

        def put(key: str, value: Any) -> None:
            if value is None or value == "":
                settings.pop(key, None)
            else:
                settings[key] = value

        def number(widget: QtWidgets.QLineEdit, key: str, *, whole: bool = False) -> Any:
            text = widget.text().strip()
            if not text:
                return None
            try:
                value = int(text) if whole else float(text)
            except ValueError:
                problems[key] = "a whole number" if whole else "a number of seconds, e.g. 10 or 0.5"
                return None
            return value

        if kind == "jsonl":
            put("path", self.path.text().strip())
            put("format", self._format_value(self.jsonl_format))
            put("poll_interval", number(self.poll_interval, "poll_interval"))
        elif kind == "otlp":
            put("listen", self.listen.text().strip())
        elif kind == "http_poll":
            put("url", self.url.text().strip())
            put("format", self._format_value(self.http_format) or "event")
            put("cursor_param", self.cursor_param.text().strip())
            put("records_field", self.records_field.text().strip())
            put("interval_s", number(self.interval, "interval_s"))
            mode = self.token_mode.currentData()
            if mode == "none":
                settings.pop("token", None)
            elif mode == "env":
                var = self.token_env.text().strip()
                put("token", f"env:{var}" if var else "")
                if not var:
                    problems["token_env"] = "the name of the environment variable that holds the token"
            else:
                token = self.token.text()
                had = isinstance(settings.get("token"), str) and str(settings.get("token")).startswith(
                    "keyring"
                )
                if token.strip():
                    secrets["token"] = token.strip()
                    settings["token"] = f"keyring:{token_entry(name)}"
                elif not had:
                    problems["token_value"] = (
                        "type the token: it is stored in the OS keyring, not in the store"
                    )
        elif kind == "usage_api":
            put("provider", self.provider.currentData() or "")
            mode = self.admin_mode.currentData()
            if mode == "provider":
                settings.pop("admin_key", None)
            elif mode == "env":
                var = self.admin_env.text().strip()
                put("admin_key", f"env:{var}" if var else "")
                if not var:
                    problems["admin_env"] = "the name of the environment variable that holds the admin key"
            else:
                key = self.admin_key.text().strip()
                had = isinstance(settings.get("admin_key"), str) and str(settings["admin_key"]).startswith(
                    "keyring"
                )
                if key:
                    secrets["admin_key"] = key
                    settings["admin_key"] = "keyring"
                elif not had:
                    problems["admin_key_value"] = "type the admin key: it is stored in the OS keyring"
            put("lookback_days", number(self.lookback, "lookback_days", whole=True))
            put("interval_s", number(self.usage_interval, "interval_s"))
        for key in list(settings):
            if key not in SETTINGS_BY_KIND.get(kind, ()):
                settings.pop(key)
        paused = base.paused if base is not None else False
        return (
            SourceConfig(name, kind, settings, paused, base.revision if base is not None else 0),
            problems,
            secrets,
        )


# --- the page ----------------------------------------------------------------------------------


class StatePillDelegate(QtWidgets.QStyledItemDelegate):
    """The state in its colour (ui.md: green ok, amber warning, red error; muted when paused)."""

    def initStyleOption(self, option: QtWidgets.QStyleOptionViewItem, index: Any) -> None:
        super().initStyleOption(option, index)
        key = index.data(STATE_ROLE)
        colors = current_colors()
        colour = {"ok": colors.ok, "warn": colors.warn, "bad": colors.bad}.get(key, colors.muted)
        option.palette.setColor(QtGui.QPalette.ColorRole.Text, QtGui.QColor(colour))
        option.font.setBold(key in ("bad", "ok"))


class SourcesPage(QtWidgets.QWidget):
    """Sources above (with the editor beside them when open), quarantined records below."""

    status_message = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._gateway_getter: Callable[[], Any] = lambda: None
        self._busy = False
        self._retry_pending = False
        self._counts_stale = True
        self._counted_at = 0.0
        self._rejected_seen = 0
        self.loaded = False
        self.configs: list[SourceConfig] = []
        self.counts: dict[str, int] = {}
        self.reports: list[SourceReport] | None = None
        self.providers: dict[str, str] = {}
        self.error = ""
        self.last_removed: SourceConfig | None = None
        #: Asks "are you sure, and why?" (title, text, ok label) -> the reason, or None when cancelled.
        self.confirm: Callable[[str, str, str], str | None] = lambda title, text, ok: ask_reason(
            self, title, text, ok
        )

        spec = page_spec("sources")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(
                spec.title,
                "Where the control room reads traffic it did not route itself: log files, OpenTelemetry spans, "
                "remote endpoints and the providers' own usage reports. Bad records are kept aside, never dropped.",
            )
        )
        self.summary = QtWidgets.QLabel("Opening the store…", objectName="muted")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)

        actions = QtWidgets.QHBoxLayout()
        self.add_button = QtWidgets.QPushButton("&Add source")
        menu = QtWidgets.QMenu(self.add_button)
        self.add_actions: dict[str, QtGui.QAction] = {}
        for kind, label in KIND_LABELS.items():
            action = menu.addAction(label)
            action.setToolTip(KIND_HELP[kind])
            action.triggered.connect(lambda _c=False, k=kind: self.start_add(k))
            self.add_actions[kind] = action
        self.add_button.setMenu(menu)
        self.edit_button = QtWidgets.QPushButton("&Edit")
        self.edit_button.clicked.connect(self.start_edit)
        self.pause_button = QtWidgets.QPushButton("&Pause")
        self.pause_button.clicked.connect(self.toggle_pause)
        self.remove_button = QtWidgets.QPushButton("&Remove…")
        self.remove_button.clicked.connect(self.remove_selected)
        for button in (self.add_button, self.edit_button, self.pause_button, self.remove_button):
            actions.addWidget(button)
        self.result = QtWidgets.QLabel("", objectName="muted")
        self.result.setWordWrap(True)
        actions.addWidget(self.result, 1)
        self.undo_button = QtWidgets.QPushButton("&Undo")
        self.undo_button.setVisible(False)
        self.undo_button.clicked.connect(self.undo_remove)
        actions.addWidget(self.undo_button)
        layout.addLayout(actions)

        self.model = SourcesModel(self)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.model)
        self.table.setItemDelegateForColumn(COL_STATE, StatePillDelegate(self.table))
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(26)
        self.table.horizontalHeader().setHighlightSections(False)
        self.table.setAccessibleName("Sources")
        metrics = self.table.fontMetrics()
        self.table.setColumnWidth(COL_LAG, metrics.horizontalAdvance("12.3 MB behind") + 20)
        header = self.table.horizontalHeader()
        for col in (COL_NAME, COL_KIND, COL_STATE, COL_RATE, COL_QUARANTINED):
            header.setSectionResizeMode(col, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        # The two free-text columns share what is left, so nothing scrolls sideways at the smallest window.
        header.setStretchLastSection(False)
        for col in (COL_ERROR, COL_WHERE):
            header.setSectionResizeMode(col, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.table.doubleClicked.connect(lambda _i: self.start_edit())

        self.empty = EmptyState(
            "No sources yet. Add a JSONL file to follow, an OTLP receiver for instrumented services, a remote "
            "endpoint to poll, or a provider's usage API (Add source above). To read a file once: "
            "controlroom ingest PATH."
        )
        quick = QtWidgets.QHBoxLayout()
        quick.addStretch(1)
        self.quick_add: dict[str, QtWidgets.QPushButton] = {}
        for kind, label in (
            ("jsonl", "Follow a JSONL file"),
            ("otlp", "Receive OTLP spans"),
            ("http_poll", "Poll an endpoint"),
            ("usage_api", "Read a usage API"),
        ):
            button = QtWidgets.QPushButton(label)
            button.setToolTip(KIND_HELP[kind])
            button.clicked.connect(lambda _c=False, k=kind: self.start_add(k))
            self.quick_add[kind] = button
            quick.addWidget(button)
        quick.addStretch(1)
        empty_layout = self.empty.layout()
        assert isinstance(empty_layout, QtWidgets.QVBoxLayout)
        # Text and buttons together in the middle of the box.
        self.empty.label.setSizePolicy(
            QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Maximum
        )
        empty_layout.insertStretch(0, 1)
        empty_layout.addSpacing(8)
        empty_layout.addLayout(quick)
        empty_layout.addStretch(1)
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.table)
        self.stack.addWidget(self.empty)
        self.stack.setCurrentWidget(self.empty)

        self.editor = SourceEditor()
        self.editor.setVisible(False)
        self.editor.save_requested.connect(self.save)
        self.editor.cancelled.connect(self.close_editor)
        editor_scroll = QtWidgets.QScrollArea()
        editor_scroll.setWidget(self.editor)
        editor_scroll.setWidgetResizable(True)
        editor_scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        editor_scroll.setMinimumWidth(380)
        editor_scroll.setVisible(False)
        self.editor_scroll = editor_scroll

        # Quarantined records
        lower = QtWidgets.QWidget()
        lower_layout = QtWidgets.QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 8, 0, 0)
        head = QtWidgets.QHBoxLayout()
        self.quarantine_title = QtWidgets.QLabel("Quarantined records", objectName="sectionTitle")
        self.quarantine_title.setStyleSheet("font-weight: 600;")
        head.addWidget(self.quarantine_title)
        head.addStretch(1)
        head.addWidget(QtWidgets.QLabel("Show"))
        self.quarantine_filter = QtWidgets.QComboBox()
        self.quarantine_filter.setAccessibleName("Quarantined records of")
        self.quarantine_filter.setMinimumContentsLength(24)
        self.quarantine_filter.addItem("all sources", None)
        self.quarantine_filter.currentIndexChanged.connect(self._filter_changed)
        head.addWidget(self.quarantine_filter)
        self.quarantine_refresh = QtWidgets.QPushButton("Re&load")
        self.quarantine_refresh.clicked.connect(self._reload_quarantine)
        head.addWidget(self.quarantine_refresh)
        lower_layout.addLayout(head)
        self.quarantine = QuarantineModel(parent=self)
        self.quarantine.loaded.connect(self._quarantine_loaded)
        self.quarantine.failed.connect(lambda m: self.quarantine_title.setText(f"Quarantined records — {m}"))
        self.quarantine_view = QtWidgets.QTableView()
        self.quarantine_view.setModel(self.quarantine)
        self.quarantine_view.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.quarantine_view.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.quarantine_view.setAlternatingRowColors(True)
        self.quarantine_view.setShowGrid(False)
        self.quarantine_view.setWordWrap(False)
        self.quarantine_view.verticalHeader().setVisible(False)
        self.quarantine_view.verticalHeader().setDefaultSectionSize(24)
        self.quarantine_view.setAccessibleName("Quarantined records")
        for col, sample in (
            (COL_WHEN, "19:04:11  ·  59 min ago"),
            (COL_SOURCE, "billing-log"),
            (COL_POSITION, "byte 1234567"),
        ):
            self.quarantine_view.setColumnWidth(col, metrics.horizontalAdvance(sample) + 16)
        # The reason and the excerpt are what the operator reads: they share the rest.
        q_header = self.quarantine_view.horizontalHeader()
        q_header.setStretchLastSection(False)
        for col in (COL_REASON, COL_EXCERPT):
            q_header.setSectionResizeMode(col, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.quarantine_view.selectionModel().selectionChanged.connect(self._show_record)
        self.excerpt = QtWidgets.QPlainTextEdit()
        self.excerpt.setReadOnly(True)
        self.excerpt.setPlaceholderText("Select a record to see its reason and the whole excerpt.")
        self.excerpt.setAccessibleName("Quarantined record")
        mono = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
        self.excerpt.setFont(mono)
        self.excerpt.setMinimumHeight(QtGui.QFontMetrics(mono).lineSpacing() * 3 + 12)
        # The record's detail under the list: the list keeps the width its reasons and excerpts need.
        self.quarantine_empty = EmptyState("No quarantined records: every record read so far was good.")
        self.quarantine_stack = QtWidgets.QStackedWidget()
        self.quarantine_stack.addWidget(self.quarantine_view)
        self.quarantine_stack.addWidget(self.quarantine_empty)
        records = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        records.addWidget(self.quarantine_stack)
        records.addWidget(self.excerpt)
        records.setStretchFactor(0, 3)
        records.setStretchFactor(1, 1)
        lower_layout.addWidget(records, 1)

        self.lower = lower
        split = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.stack)
        split.addWidget(lower)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        # The editor opens beside both, at full height: a form of a dozen fields needs it.
        body = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(split)
        body.addWidget(editor_scroll)
        body.setStretchFactor(0, 3)
        body.setStretchFactor(1, 2)
        body.setChildrenCollapsible(False)
        layout.addWidget(body, 1)

        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self._sync_buttons()

    # -- store ---------------------------------------------------------------------------------------
    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        self._runner = runner
        self._store_getter = store if callable(store) else (lambda: store)
        if gateway is not None:
            self._gateway_getter = gateway if callable(gateway) else (lambda: gateway)
        self.quarantine.attach(self._engine, runner)
        self.refresh()
        if self.isVisible():
            self.timer.start()

    def _engine(self) -> Any:
        store = self._store_getter()
        return store.engine if store is not None else None

    def export_visible(self, ask_path: Any = None) -> Path | None:
        """Ctrl+E: the sources table as shown, to a CSV file."""
        return export_table(self, self.model, "sources", self._say, ask_path=ask_path)

    def refresh(self, recount: bool = False) -> None:
        """Read the stored configs and providers, and the quarantine counts when due (off the GUI thread)."""
        if recount:
            self._counts_stale = True
        engine = self._engine()
        if self._runner is not None and engine is None and not self._retry_pending:
            # The store is still opening: look again shortly rather than at the next tick.
            self._retry_pending = True
            QTimer.singleShot(200, self._retry_refresh)
        if self._runner is None or engine is None or self._busy:
            return
        if self.loaded and not self.isVisible():
            return  # nobody is looking: read again when the page shows
        self._busy = True
        # Counting the quarantine scans it: only when a source rejected something new, or now and then
        # (records quarantined by `controlroom ingest` or another collector).
        count = self._counts_stale or time.monotonic() - self._counted_at >= COUNT_EVERY_S

        def work() -> tuple[list[SourceConfig], dict[str, int] | None, dict[str, str]]:
            providers = {p["name"]: str(p.get("kind")) for p in list_objects(engine, "provider")}
            counts = count_quarantined_by_source(engine) if count else None
            return list_source_configs(engine), counts, providers

        if count:
            self._counts_stale = False
            self._counted_at = time.monotonic()

        self._runner(work, self._on_loaded, self._on_error)

    def _retry_refresh(self) -> None:
        self._retry_pending = False
        self.refresh()

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if self._runner is not None:
            self.timer.start()
        self.refresh()

    def hideEvent(self, event: QtGui.QHideEvent) -> None:
        # Nobody is looking (or the window is closing): no reads until the page shows again.
        self.timer.stop()
        super().hideEvent(event)

    def _on_loaded(self, result: tuple[list[SourceConfig], dict[str, int] | None, dict[str, str]]) -> None:
        self._busy = False
        first = not self.loaded
        self.loaded = True
        self.error = ""
        configs, fresh, providers = result
        counts = self.counts if fresh is None else fresh
        counts_changed = counts != self.counts
        self.configs, self.counts, self.providers = configs, counts, providers
        self.editor.set_providers(providers)
        self._rebuild()
        if first:
            self.quarantine.reload()
        elif counts_changed and self.quarantine_view.verticalScrollBar().value() == 0:
            self.quarantine.reload()  # new records: show them when the operator is looking at the newest

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self.error = str(exc) or type(exc).__name__
        self.summary.setText(f"The store could not answer: {self.error}")

    # -- live statuses (pushed by the app's collector) -----------------------------------------------------
    def apply_reports(self, reports: list[SourceReport]) -> None:
        self.reports = list(reports)
        rejected = sum(r.rejected for r in reports)
        if rejected != self._rejected_seen:  # new bad records: count the quarantine at the next refresh
            self._rejected_seen = rejected
            self._counts_stale = True
            QTimer.singleShot(300, self.refresh)  # once the writer has committed them
        if self.loaded:
            self._rebuild()

    def _rebuild(self) -> None:
        selected = self.selected_row()
        rows = build_rows(self.configs, self.reports, self.counts)
        self.model.set_rows(rows)
        self.stack.setCurrentWidget(self.table if rows else self.empty)
        # Every source in sight without scrolling (up to eight); the quarantine takes the rest.
        shown = min(max(len(rows), 3), 8)
        self.stack.setMinimumHeight(
            self.table.horizontalHeader().sizeHint().height()
            + shown * self.table.verticalHeader().defaultSectionSize()
            + self.table.frameWidth() * 2
            + 2
        )
        if selected is not None and self.selected_row() is None:
            index = self.model.row_of(selected.name)
            if index >= 0:
                self.table.selectRow(index)
        self._sync_filter(rows)
        self._sync_buttons()
        self._summarise(rows)
        # Nothing configured and nothing ever quarantined: the next step is all there is to show.
        self.lower.setVisible(bool(rows) or bool(self.counts))

    def _summarise(self, rows: list[SourceRow]) -> None:
        running = sum(1 for r in rows if r.state == "running")
        paused = sum(1 for r in rows if r.paused)
        failing = sum(1 for r in rows if r.state_key == "bad")
        quarantined = sum(self.counts.values())
        if not rows:
            text = "No sources configured."
            if quarantined:
                text += f" {quarantined:,} records quarantined earlier (by controlroom ingest or removed sources)."
            if self._gateway_getter() is not None:
                text += " The demo's traffic comes from the in-process gateway, not from a source."
            self.summary.setText(text)
            return
        parts = [f"{len(rows)} source{'s' if len(rows) != 1 else ''}", f"{running} running"]
        if paused:
            parts.append(f"{paused} paused")
        if failing:
            parts.append(f"{failing} failing")
        parts.append(f"{quarantined:,} quarantined record{'s' if quarantined != 1 else ''}")
        text = " · ".join(parts) + "."
        if self.reports is None:
            text += " No collector runs in this window: statuses appear when the app runs the sources."
        if self._gateway_getter() is not None:
            text += " The demo's traffic comes from the in-process gateway, not from a source."
        self.summary.setText(text)

    # -- selection and buttons ----------------------------------------------------------------------------
    def selected_row(self) -> SourceRow | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        index = rows[0].row()
        return self.model.row_at(index) if 0 <= index < self.model.rowCount() else None

    def select(self, name: str) -> None:
        index = self.model.row_of(name)
        if index >= 0:
            self.table.selectRow(index)

    def _selection_changed(self, *_args: object) -> None:
        self._sync_buttons()
        row = self.selected_row()
        if row is not None:
            index = self.quarantine_filter.findText(row.name)
            if index >= 0:
                self.quarantine_filter.setCurrentIndex(index)

    def _sync_buttons(self) -> None:
        row = self.selected_row()
        editable = row is not None and row.editable
        tip = (
            ""
            if row is None or row.editable
            else f"{row.name} is configured in {row.origin}: change it there"
        )
        for button in (self.edit_button, self.pause_button, self.remove_button):
            button.setEnabled(editable)
            button.setToolTip(tip)
        self.pause_button.setText("Res&ume" if row is not None and row.paused else "&Pause")
        self.add_button.setEnabled(self._engine() is not None)

    def _sync_filter(self, rows: list[SourceRow]) -> None:
        """The quarantine's source choice: every source, each configured one, and others seen in the quarantine."""
        names: dict[str, str] = {}
        choices: list[tuple[str, tuple[str, ...]]] = []
        for row in rows:
            keys = row.quarantine_keys
            choices.append((row.name, keys))
            for key in keys:
                names[key] = row.name
        for key in sorted(self.counts):
            if key not in names:
                choices.append((key, (key,)))
        self.quarantine.set_names(names)
        wanted = [("all sources", None), *choices]
        have = [
            (self.quarantine_filter.itemText(i), self.quarantine_filter.itemData(i))
            for i in range(self.quarantine_filter.count())
        ]
        if have == wanted:
            return
        current = self.quarantine_filter.currentText()
        self.quarantine_filter.blockSignals(True)
        self.quarantine_filter.clear()
        for text, keys in wanted:
            self.quarantine_filter.addItem(text, keys)
        index = self.quarantine_filter.findText(current)
        self.quarantine_filter.setCurrentIndex(max(index, 0))
        self.quarantine_filter.blockSignals(False)
        if index < 0 and current != "all sources":
            self._filter_changed()

    def _filter_changed(self, *_args: object) -> None:
        keys = self.quarantine_filter.currentData()
        self.quarantine.set_sources(list(keys) if keys is not None else None)

    def _reload_quarantine(self) -> None:
        self.refresh(recount=True)
        self.quarantine.reload()

    def _quarantine_loaded(self, shown: int, total: int) -> None:
        which = self.quarantine_filter.currentText()
        scope = "" if which == "all sources" else f" of {which}"
        self.quarantine_stack.setCurrentWidget(self.quarantine_view if total else self.quarantine_empty)
        self.excerpt.setVisible(bool(total))
        self.quarantine_empty.setText(
            f"No quarantined records{scope}: every record read so far was good."
            if which == "all sources" or not which
            else f"No quarantined records of {which}: every record it read so far was good."
        )
        more = f" — showing the newest {shown:,} (scroll for more)" if shown < total else ""
        self.quarantine_title.setText(f"Quarantined records{scope}: {total:,}{more}")

    def _show_record(self, *_args: object) -> None:
        rows = self.quarantine_view.selectionModel().selectedRows()
        if not rows:
            self.excerpt.clear()
            return
        rec = self.quarantine.record_at(rows[0].row())
        source = self.quarantine.data(self.quarantine.index(rows[0].row(), COL_SOURCE))
        self.excerpt.setPlainText(
            f"{source} · {rec.position} · {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rec.ts))}\n"
            f"Reason: {rec.reason}\n\n{rec.excerpt}"
        )

    # -- editing ------------------------------------------------------------------------------------------
    def start_add(self, kind: str) -> None:
        self.editor.start_new(kind)
        self._open_editor()

    def start_edit(self) -> None:
        row = self.selected_row()
        if row is None or row.config is None:
            return
        self.editor.start_edit(row.config)
        self._open_editor()

    def _open_editor(self) -> None:
        self.editor.setVisible(True)
        self.editor_scroll.setVisible(True)

    def close_editor(self) -> None:
        self.editor.token.clear()
        self.editor.admin_key.clear()
        self.editor_scroll.setVisible(False)
        self.editor.setVisible(False)

    def save(self) -> None:
        """Check the form; store any secret in the keyring, then the config (audited), off the GUI thread."""
        engine = self._engine()
        if self._runner is None or engine is None:
            return
        editor = self.editor
        config, problems, secrets = editor.read()
        problems = {**source_problems(config, self.providers), **problems}
        if editor.original is None and any(c.name == config.name for c in self.configs):
            problems["name"] = f"a source named {config.name!r} exists: choose another name, or edit that one"
        if editor.original is None and any(r.name == config.name for r in self.model.rows()):
            problems.setdefault("name", f"a source named {config.name!r} runs from a config file")
        if problems:
            editor.show_errors(problems)
            return
        editor.clear_errors()
        editor.save_button.setEnabled(False)
        reason = editor.reason.text().strip()
        expected = editor.original.revision if editor.original is not None else None
        actor = _who()

        def work() -> SourceConfig:
            from app.secrets import KeyKind, set_key

            if "token" in secrets:
                try:
                    set_key(token_entry(config.name), secrets["token"], KeyKind.API)
                except Exception as exc:
                    raise _FieldError("token_value", _keyring_message(exc)) from None
            if "admin_key" in secrets:
                provider = str(config.settings.get("provider"))
                try:
                    set_key(provider, secrets["admin_key"], KeyKind.ADMIN)
                except Exception as exc:
                    raise _FieldError("admin_key_value", _keyring_message(exc)) from None
            return save_source_config(engine, config, expected_revision=expected, actor=actor, reason=reason)

        def done(saved: SourceConfig) -> None:
            editor.save_button.setEnabled(True)
            verb = "Added" if expected is None else "Saved"
            self._say(
                f"{verb} {saved.name} (revision {saved.revision}): the collector applies it within seconds."
            )
            self.close_editor()
            self.configs = [c for c in self.configs if c.name != saved.name] + [saved]
            self.configs.sort(key=lambda c: c.name)
            self._rebuild()
            self.select(saved.name)
            self.refresh()

        def failed(exc: BaseException) -> None:
            editor.save_button.setEnabled(True)
            if isinstance(exc, _FieldError):
                editor.show_errors({exc.key: exc.message})
            else:
                editor.show_errors({"": str(exc) or type(exc).__name__})
            self.refresh()

        self._runner(work, done, failed)

    # -- pause, resume, remove ------------------------------------------------------------------------------
    def toggle_pause(self) -> None:
        row = self.selected_row()
        engine = self._engine()
        if row is None or row.config is None or engine is None or self._runner is None:
            return
        config = row.config
        pause = not config.paused
        reason: str | None = "resumed on the Sources page"
        if pause:
            reason = self.confirm(f"Pause {config.name}?", _pause_text(config), "Pause")
            if reason is None:
                return
        actor = _who()

        def work() -> SourceConfig:
            return set_source_paused(
                engine,
                config.name,
                pause,
                expected_revision=config.revision,
                actor=actor,
                reason=reason,
            )

        def done(saved: SourceConfig) -> None:
            self._say(f"{'Paused' if pause else 'Resumed'} {saved.name}.")
            self.configs = [saved if c.name == saved.name else c for c in self.configs]
            self._rebuild()
            self.refresh()

        self._runner(work, done, self._action_failed)

    def remove_selected(self) -> None:
        row = self.selected_row()
        engine = self._engine()
        if row is None or row.config is None or engine is None or self._runner is None:
            return
        config = row.config
        reason = self.confirm(
            f"Remove {config.name}?",
            f"The collector stops {config.name} now. Its read position and its {row.quarantined:,} quarantined "
            "records are kept, so adding it back resumes where it stopped. You can undo this right after.",
            "Remove",
        )
        if reason is None:
            return
        actor = _who()

        def work() -> SourceConfig | None:
            return delete_source_config(
                engine,
                config.name,
                expected_revision=config.revision,
                actor=actor,
                reason=reason,
            )

        def done(removed: SourceConfig | None) -> None:
            self.last_removed = removed
            self.configs = [c for c in self.configs if c.name != config.name]
            self._rebuild()
            self._say(f"Removed {config.name}.", undo=removed is not None)
            self.refresh()

        self._runner(work, done, self._action_failed)

    def undo_remove(self) -> None:
        removed = self.last_removed
        engine = self._engine()
        if removed is None or engine is None or self._runner is None:
            return
        actor = _who()

        def work() -> SourceConfig:
            return save_source_config(
                engine, removed, expected_revision=None, actor=actor, reason="undo: removed by mistake"
            )

        def done(saved: SourceConfig) -> None:
            self.last_removed = None
            self.configs = sorted([*self.configs, saved], key=lambda c: c.name)
            self._rebuild()
            self._say(f"Put {saved.name} back.")
            self.refresh()

        self._runner(work, done, self._action_failed)

    def _action_failed(self, exc: BaseException) -> None:
        self._say(f"Not done: {exc}")
        self.refresh()

    def _say(self, text: str, *, undo: bool = False) -> None:
        self.result.setText(text)
        self.undo_button.setVisible(undo)
        self.status_message.emit(text)


class _FieldError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


def _keyring_message(exc: BaseException) -> str:
    """Why the keyring refused, in words; never the secret (it is not in the exception anyway)."""
    text = str(exc) or type(exc).__name__
    return f"not saved: the keyring refused it — {text}"


def _pause_text(config: SourceConfig) -> str:
    what = {
        "jsonl": "It stops reading the file; lines written meanwhile are read when you resume (it keeps its position).",
        "otlp": "The receiver stops listening: services sending spans get connection errors until you resume.",
        "http_poll": "It stops polling; the remote's cursor is kept, so it catches up when you resume.",
        "usage_api": "It stops polling the provider's usage API; the next poll after resuming fills the gap.",
    }.get(config.kind, "It stops until you resume it.")
    return f"{what} Pausing is recorded in the audit log."


PAGE_CLASS = SourcesPage

__all__ = ["PAGE_CLASS", "SourceEditor", "SourcesPage", "token_entry"]
