"""The Providers page: providers and their targets, keys in the OS keyring, a connection test.

Providers and targets are the store's control objects (storage.queries.control):
every save names the revision it was based on, is audited, and reaches every
gateway within a second.  The store holds only a key *reference*
(``keyring:controlroom/NAME``, ``env:VAR`` or ``none``); a key typed here goes
straight to the OS keyring (app.secrets) and is never shown again, logged or
put in a message.  When no secure keyring exists the operator is told plainly
(app.ui.dialogs.require_keyring) and can use an environment variable instead.

A gateway in this process may run on providers that are not in the store (the
demo's built-in configuration): they are listed, marked as such, read-only.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.providers.probe import ProbeResult, probe
from app.secrets import (
    BackendStatus,
    KeyKind,
    SecretsUnavailable,
    backend_status,
    delete_key,
    list_keys,
    resolve_key_ref,
    set_key,
)
from app.ui.dialogs import require_keyring
from app.ui.editors.export import export_config
from app.ui.models.breakers_model import describe_override
from app.ui.models.runner import Runner
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import QObject, Qt, QtCore, QtGui, QTimer, QtWidgets, Signal
from app.ui.theme import current_colors
from storage.queries.control import (
    PROVIDER_KINDS,
    ConflictError,
    NotFound,
    StaleRevision,
    delete_object,
    get_object,
    list_breaker_overrides,
    list_objects,
    save_object,
)

#: How often the page reads the store again while it is shown.
REFRESH_MS = 5000
KIND_LABELS = {"openai": "OpenAI", "anthropic": "Anthropic", "openai_compatible": "OpenAI-compatible"}
URL_HINTS = {
    "openai": "https://api.openai.com/v1 (empty: the public API)",
    "anthropic": "https://api.anthropic.com (empty: the public API)",
    "openai_compatible": "http://127.0.0.1:11434/v1 (required)",
}
PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")
PRICE_LABELS = ("Input $/M tokens", "Output $/M tokens", "Cache read $/M tokens", "Cache write $/M tokens")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEYRING_PREFIX = "keyring:controlroom/"
#: Key sources offered by the editor: (label, value).
KEY_SOURCES = (("OS keyring", "keyring"), ("Environment variable", "env"), ("No key", "none"))


# --- the data the page shows ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderRow:
    name: str
    kind: str
    base_url: str | None
    api_key_ref: str
    admin_key_ref: str | None
    rpm: int | None
    tpm: int | None
    revision: int | None  # None: not in the store (a gateway's built-in configuration)
    targets: int
    key_state: str  # "keyring ✓", "keyring — no key stored", "env:VAR — not set", ...
    key_ok: bool | None  # None: cannot tell (keyring unavailable)

    @property
    def in_store(self) -> bool:
        return self.revision is not None


@dataclass(frozen=True, slots=True)
class ProvidersView:
    providers: list[ProviderRow]
    targets: list[dict[str, Any]]  # target rows, each with "_in_store"
    backend: BackendStatus
    fetched_at: float
    builtin: bool = False  # some rows come from the in-process gateway, not the store

    def targets_of(self, provider: str) -> list[dict[str, Any]]:
        return [t for t in self.targets if t["provider"] == provider]


def _key_state(
    ref: str | None, name: str, kind: KeyKind, stored: dict[str, list[KeyKind]] | None
) -> tuple[str, bool | None]:
    if ref is None:
        return "—", None
    if ref == "none":
        return "no key", True
    if ref.startswith("env:"):
        var = ref[4:]
        return (f"env:{var} ✓", True) if os.environ.get(var) else (f"env:{var} — not set here", False)
    if stored is None:
        return "keyring (unavailable)", None
    if kind in stored.get(name, []):
        return "keyring ✓", True
    return "keyring — no key stored", False


def load_providers(engine: Any, gateway_config: Any = None) -> ProvidersView:
    """Providers and targets from the store (plus a gateway's built-in ones); blocking: use the runner."""
    backend = backend_status()
    stored_keys: dict[str, list[KeyKind]] | None = None
    if backend.available:
        try:
            stored_keys = list_keys()
        except SecretsUnavailable:
            stored_keys = None
    providers = list_objects(engine, "provider")
    targets = [{**t, "_in_store": True} for t in list_objects(engine, "target")]
    names = {p["name"] for p in providers}
    builtin = False
    if gateway_config is not None:
        for p in getattr(gateway_config, "providers", ()):
            if p.name in names:
                continue
            builtin = True
            providers.append(
                {
                    "name": p.name,
                    "kind": str(p.kind),
                    "base_url": p.base_url,
                    "api_key_ref": p.api_key if p.api_key != "keyring" else f"{KEYRING_PREFIX}{p.name}",
                    "admin_key_ref": p.admin_key,
                    "rpm": p.rate_limits.rpm if p.rate_limits else None,
                    "tpm": p.rate_limits.tpm if p.rate_limits else None,
                    "revision": None,
                }
            )
        known = {t["name"] for t in targets}
        for t in getattr(gateway_config, "targets", ()):
            if t.name in known:
                continue
            price = t.price
            targets.append(
                {
                    "name": t.name,
                    "provider": t.provider,
                    "model": t.model,
                    **{f: getattr(price, f, None) if price else None for f in PRICE_FIELDS},
                    "revision": None,
                    "_in_store": False,
                }
            )
    rows = []
    for p in sorted(providers, key=lambda p: (p["revision"] is None, p["name"])):
        state, ok = _key_state(p["api_key_ref"], p["name"], KeyKind.API, stored_keys)
        if p.get("admin_key_ref"):
            admin, admin_ok = _key_state(p["admin_key_ref"], p["name"], KeyKind.ADMIN, stored_keys)
            state += f" · admin {admin}"
            ok = None if ok is None or admin_ok is None else ok and admin_ok
        rows.append(
            ProviderRow(
                p["name"],
                p["kind"],
                p.get("base_url"),
                p["api_key_ref"],
                p.get("admin_key_ref"),
                p.get("rpm"),
                p.get("tpm"),
                p.get("revision"),
                sum(1 for t in targets if t["provider"] == p["name"]),
                state,
                ok,
            )
        )
    targets.sort(key=lambda t: t["name"])
    # A forced breaker shows wherever its target does (issue 7): who, why and until when.
    forced = {o.target: o for o in list_breaker_overrides(engine)}
    for t in targets:
        t["_forced"] = forced.get(t["name"])
    return ProvidersView(rows, targets, backend, time.time(), builtin)


# --- validation (pure: the messages shown at the fields) -------------------------------------------


@dataclass
class ProviderForm:
    name: str
    kind: str
    base_url: str
    key_source: str  # keyring | env | none
    api_key: str  # typed key (keyring source); "" keeps the stored one
    api_env: str
    admin_source: str  # none | keyring | env
    admin_key: str
    admin_env: str
    rpm: str
    tpm: str
    editing: bool = False
    has_stored_key: bool = False
    has_stored_admin: bool = False
    existing_names: frozenset[str] = frozenset()


def _positive_int(text: str) -> int | None:
    text = text.strip().replace(",", "").replace("_", "")
    if not text:
        return None
    value = int(text)  # ValueError for anything else
    if value <= 0:
        raise ValueError
    return value


def _number(text: str) -> float | None:
    text = text.strip().lstrip("$")
    if not text:
        return None
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError
    return value


def check_base_url(url: str, kind: str) -> tuple[str | None, str | None]:
    """(error, warning) for a base URL; an empty one means the provider's public endpoint."""
    url = url.strip()
    if not url:
        if kind == "openai_compatible":
            return "An OpenAI-compatible provider needs its base URL (e.g. http://127.0.0.1:11434/v1).", None
        return None, None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Must be an http:// or https:// address with a host.", None
    if parts.username or parts.password or parts.query or parts.fragment:
        return "No user, password, query or fragment in the URL: keys belong in the key field.", None
    if kind in ("openai", "openai_compatible") and not parts.path.rstrip("/").endswith("/v1"):
        return None, "OpenAI-style base URLs usually end in /v1."
    if kind == "anthropic" and parts.path.rstrip("/").endswith("/v1"):
        return None, "Anthropic's base URL has no /v1 (the SDK adds it)."
    return None, None


def validate_provider(form: ProviderForm) -> tuple[dict[str, str], dict[str, Any]]:
    """Problems by field name, and (when there are none) the store row to save."""
    problems: dict[str, str] = {}
    name = form.name.strip()
    if not name:
        problems["name"] = "A name is required."
    elif not _NAME_RE.match(name):
        problems["name"] = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
    elif not form.editing and name in form.existing_names:
        problems["name"] = f"A provider named {name} already exists."
    if form.kind not in PROVIDER_KINDS:
        problems["kind"] = "Pick OpenAI, Anthropic or OpenAI-compatible."
    url_error, _ = check_base_url(form.base_url, form.kind)
    if url_error:
        problems["base_url"] = url_error
    refs: dict[str, str | None] = {}
    for prefix, source, key, env, stored in (
        ("api", form.key_source, form.api_key, form.api_env, form.has_stored_key),
        ("admin", form.admin_source, form.admin_key, form.admin_env, form.has_stored_admin),
    ):
        if source == "keyring":
            if not key.strip() and not stored:
                problems[f"{prefix}_key"] = (
                    "Paste the key: it goes to the OS keyring, never into the store."
                    if prefix == "api"
                    else "Paste the admin key, or choose no admin key."
                )
            elif key and (key != key.strip() or any(c.isspace() for c in key.strip())):
                problems[f"{prefix}_key"] = "The key has spaces in it; paste it again."
            refs[prefix] = f"{KEYRING_PREFIX}{name}"
        elif source == "env":
            if not _ENV_RE.match(env.strip()):
                problems[f"{prefix}_env"] = "An environment variable name: letters, digits and '_'."
            refs[prefix] = f"env:{env.strip()}"
        else:
            refs[prefix] = "none" if prefix == "api" else None
    limits: dict[str, int | None] = {}
    for fld, text in (("rpm", form.rpm), ("tpm", form.tpm)):
        try:
            limits[fld] = _positive_int(text)
        except ValueError:
            problems[fld] = "A whole number above 0, or empty for no limit."
    if problems:
        return problems, {}
    row = {
        "name": name,
        "kind": form.kind,
        "base_url": form.base_url.strip().rstrip("/") or None,
        "api_key_ref": refs["api"],
        "admin_key_ref": refs["admin"],
        **limits,
    }
    return {}, row


def validate_target(
    name: str, model: str, prices: Mapping[str, str], *, editing: bool, existing: frozenset[str]
) -> tuple[dict[str, str], dict[str, Any]]:
    problems: dict[str, str] = {}
    name = name.strip()
    if not name:
        problems["name"] = "A name is required (routes name targets)."
    elif any(c.isspace() for c in name):
        problems["name"] = "No spaces in a target name."
    elif not editing and name in existing:
        problems["name"] = f"A target named {name} already exists."
    if not model.strip():
        problems["model"] = "The provider's model name, e.g. gpt-4o-mini."
    values: dict[str, float | None] = {}
    for fld in PRICE_FIELDS:
        try:
            values[fld] = _number(prices.get(fld, ""))
        except ValueError:
            problems[fld] = "A price in USD per million tokens (0 or more), or empty."
    prices_read = "input_per_mtok" not in problems and "output_per_mtok" not in problems
    if prices_read and (values["input_per_mtok"] is None) != (values["output_per_mtok"] is None):
        missing = "output_per_mtok" if values["output_per_mtok"] is None else "input_per_mtok"
        problems[missing] = "A price override needs both the input and the output price."
    if problems:
        return problems, {}
    return {}, {"name": name, "model": model.strip(), **values}


# --- table models ------------------------------------------------------------------------------------

P_NAME, P_KIND, P_URL, P_KEY, P_LIMITS, P_TARGETS = range(6)
P_HEADERS = ("Provider", "Kind", "Base URL", "Keys", "Rate limits", "Targets")
T_NAME, T_MODEL, T_IN, T_OUT, T_CREAD, T_CWRITE = range(6)
T_HEADERS = ("Target", "Model", "Input", "Output", "Cache read", "Cache write")
ROW_ROLE = int(Qt.ItemDataRole.UserRole) + 2


def _fmt_limit(rpm: int | None, tpm: int | None) -> str:
    from app.core.format import fmt_tokens

    parts = []
    if rpm:
        parts.append(f"{fmt_tokens(rpm)} req/min")
    if tpm:
        parts.append(f"{fmt_tokens(tpm)} tok/min")
    return " · ".join(parts) or "—"


def _fmt_price(value: Any) -> str:
    if value is None:
        return "list price"
    price = float(value)
    # Cents as money reads them ($2.50, not $2.5); finer prices keep their digits ($0.075).
    return f"${price:.2f}" if round(price, 2) == price else f"${price:.4g}"


class ProvidersModel(QtCore.QAbstractTableModel):
    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.rows: list[ProviderRow] = []

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(P_HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return P_HEADERS[section]
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        col = index.column()
        if role == ROW_ROLE:
            return row
        if role == Qt.ItemDataRole.DisplayRole:
            if col == P_NAME:
                return row.name if row.in_store else f"{row.name}  (built-in)"
            if col == P_KIND:
                return KIND_LABELS.get(row.kind, row.kind)
            if col == P_URL:
                return row.base_url or "public API"
            if col == P_KEY:
                return row.key_state
            if col == P_LIMITS:
                return _fmt_limit(row.rpm, row.tpm)
            return str(row.targets)
        if role == Qt.ItemDataRole.ToolTipRole:
            if not row.in_store:
                return "Configured in the running gateway (the demo's built-in setup), not in the store: read-only."
            if col == P_KEY:
                return f"Reference in the store: {row.api_key_ref}" + (
                    f"; admin: {row.admin_key_ref}" if row.admin_key_ref else ""
                )
        if role == Qt.ItemDataRole.ForegroundRole:
            colors = current_colors()
            if not row.in_store:
                return QtGui.QColor(colors.muted)
            if col == P_KEY and row.key_ok is False:
                return QtGui.QColor(colors.bad)
            if col == P_KEY and row.key_ok is None:
                return QtGui.QColor(colors.warn)
        if role == Qt.ItemDataRole.TextAlignmentRole and col == P_TARGETS:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def set_rows(self, rows: list[ProviderRow]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def row_of(self, name: str) -> int | None:
        return next((i for i, r in enumerate(self.rows) if r.name == name), None)


class TargetsModel(QtCore.QAbstractTableModel):
    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.rows: list[dict[str, Any]] = []

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(T_HEADERS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return T_HEADERS[section]
        if (
            orientation == Qt.Orientation.Horizontal
            and role == Qt.ItemDataRole.ToolTipRole
            and section >= T_IN
        ):
            return "An override of the list price (genai-prices), e.g. a negotiated price"
        return None

    def data(self, index: QtCore.QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        t = self.rows[index.row()]
        col = index.column()
        if role == ROW_ROLE:
            return t
        forced = t.get("_forced")
        if role == Qt.ItemDataRole.DisplayRole:
            if col == T_NAME:
                name = t["name"] if t["_in_store"] else f"{t['name']}  (built-in)"
                if forced is None:
                    return name
                return f"{name} · {'forced open' if forced.state == 'force_open' else 'forced closed'}"
            if col == T_MODEL:
                return t["model"]
            return _fmt_price(t.get(PRICE_FIELDS[col - T_IN]))
        if col == T_NAME and forced is not None:
            if role == Qt.ItemDataRole.ToolTipRole:
                return "Breaker " + describe_override(forced, time.time())
            if role == Qt.ItemDataRole.ForegroundRole:
                colors = current_colors()
                return QtGui.QColor(colors.bad if forced.state == "force_open" else colors.warn)
        list_price = col >= T_IN and t.get(PRICE_FIELDS[col - T_IN]) is None
        if role == Qt.ItemDataRole.ForegroundRole and (not t["_in_store"] or list_price):
            return QtGui.QColor(current_colors().muted)
        if role == Qt.ItemDataRole.TextAlignmentRole and col >= T_IN:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()


# --- editors -----------------------------------------------------------------------------------------


class FieldError(QtWidgets.QLabel):
    """The message under a field: red, hidden when there is nothing to say."""

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setVisible(False)
        self.setStyleSheet(f"color: {current_colors().bad};")

    def say(self, text: str | None, *, warning: bool = False) -> None:
        colors = current_colors()
        self.setStyleSheet(f"color: {colors.warn if warning else colors.bad};")
        self.setText(text or "")
        self.setVisible(bool(text))


class _Editor(QtWidgets.QDialog):
    """A form dialog: fields with their messages, a banner for store answers; Enter saves, Esc cancels."""

    save_requested = Signal()

    def __init__(self, title: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(520)
        self.layout_ = QtWidgets.QVBoxLayout(self)
        self.banner = QtWidgets.QLabel("")
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)
        self.layout_.addWidget(self.banner)
        self.form = QtWidgets.QFormLayout()
        self.form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.layout_.addLayout(self.form)
        self.errors: dict[str, FieldError] = {}
        self.fields: dict[str, QtWidgets.QWidget] = {}
        self.buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Save | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        self.save_button = self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Save)
        self.save_button.setDefault(True)
        self.buttons.accepted.connect(self.save_requested.emit)
        self.buttons.rejected.connect(self.reject)
        self.busy = False

    def add_field(self, key: str, label: str, widget: QtWidgets.QWidget, *, hint: str = "") -> None:
        box = QtWidgets.QWidget()
        v = QtWidgets.QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(2)
        v.addWidget(widget)
        if hint:
            h = QtWidgets.QLabel(hint, objectName="muted")
            h.setWordWrap(True)
            v.addWidget(h)
        error = FieldError()
        v.addWidget(error)
        widget.setAccessibleName(label)
        caption = QtWidgets.QLabel(label)
        caption.setBuddy(widget)
        self.form.addRow(caption, box)
        self.errors[key] = error
        self.fields[key] = widget

    def show_problems(self, problems: Mapping[str, str]) -> None:
        for key, error in self.errors.items():
            error.say(problems.get(key))
        first = next((self.fields[k] for k in self.fields if k in problems), None)
        if first is not None:
            first.setFocus()

    def say(self, text: str, *, bad: bool = True) -> None:
        colors = current_colors()
        self.banner.setStyleSheet(
            f"color: {colors.bad}; font-weight: 600;" if bad else f"color: {colors.muted};"
        )
        self.banner.setText(text)
        self.banner.setVisible(bool(text))

    def set_busy(self, busy: bool, text: str = "Saving…") -> None:
        self.busy = busy
        self.save_button.setEnabled(not busy)
        if busy:
            self.say(text, bad=False)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not self.busy:
            focus = self.focusWidget()
            if not isinstance(focus, QtWidgets.QPushButton | QtWidgets.QPlainTextEdit):
                self.save_requested.emit()  # Enter saves from any field (ui.md: Enter saves)
                return
        super().keyPressEvent(event)


def _reason_problem(dialog: ProviderDialog | TargetDialog) -> dict[str, str]:
    """A save needs a reason, as in every other editor: it goes in the audit log."""
    if dialog.reason.text().strip():
        return {}
    return {"reason": "say why: the reason goes in the audit log"}


def _password_field(placeholder: str) -> QtWidgets.QLineEdit:
    edit = QtWidgets.QLineEdit()
    edit.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
    edit.setPlaceholderText(placeholder)
    # Never offered to the clipboard or undo history beyond this field.
    edit.setInputMethodHints(
        Qt.InputMethodHint.ImhHiddenText
        | Qt.InputMethodHint.ImhNoPredictiveText
        | Qt.InputMethodHint.ImhSensitiveData
    )
    return edit


class ProviderDialog(_Editor):
    """Add or edit one provider.  Keys go to the keyring on save; the store keeps the reference."""

    test_requested = Signal()

    def __init__(
        self, row: ProviderRow | None, existing: frozenset[str], parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(f"Edit provider {row.name}" if row else "Add a provider", parent)
        self.row = row
        self.existing = existing
        self.revision = row.revision if row else None
        self.name = QtWidgets.QLineEdit(row.name if row else "")
        self.name.setPlaceholderText("openai-main")
        if row is not None:
            self.name.setReadOnly(True)  # keys and targets are filed under the name
            self.name.setToolTip("A provider keeps its name: its keys and targets are filed under it.")
        self.kind = QtWidgets.QComboBox()
        for value in PROVIDER_KINDS:
            self.kind.addItem(KIND_LABELS[value], value)
        if row is not None:
            self.kind.setCurrentIndex(max(0, self.kind.findData(row.kind)))
        self.base_url = QtWidgets.QLineEdit(row.base_url or "" if row else "")
        self.key_source = QtWidgets.QComboBox()
        self.admin_source = QtWidgets.QComboBox()
        for label, value in KEY_SOURCES:
            self.key_source.addItem(label, value)
        for label, value in (KEY_SOURCES[2], KEY_SOURCES[0], KEY_SOURCES[1]):
            self.admin_source.addItem("No admin key" if value == "none" else label, value)
        self.api_key = _password_field("paste the API key")
        self.api_env = QtWidgets.QLineEdit()
        self.api_env.setPlaceholderText("OPENAI_API_KEY")
        self.admin_key = _password_field("paste the admin key (usage and cost reports)")
        self.admin_env = QtWidgets.QLineEdit()
        self.admin_env.setPlaceholderText("OPENAI_ADMIN_KEY")
        self.rpm = QtWidgets.QLineEdit("" if row is None or row.rpm is None else str(row.rpm))
        self.rpm.setPlaceholderText("no limit")
        self.tpm = QtWidgets.QLineEdit("" if row is None or row.tpm is None else str(row.tpm))
        self.tpm.setPlaceholderText("no limit")
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("why (required, goes in the audit log)")
        # A key we cannot check (keyring unavailable right now) may well be there: keep it unless replaced.
        self.has_stored_key = bool(row and row.api_key_ref.startswith("keyring") and row.key_ok is not False)
        self.has_stored_admin = bool(
            row and row.admin_key_ref and row.admin_key_ref.startswith("keyring") and row.key_ok is not False
        )
        if row is not None:
            self._load_ref(row.api_key_ref, self.key_source, self.api_env, self.api_key, self.has_stored_key)
            self._load_ref(
                row.admin_key_ref, self.admin_source, self.admin_env, self.admin_key, self.has_stored_admin
            )

        self.add_field("name", "Name", self.name)
        self.add_field("kind", "Kind", self.kind)
        self.add_field("base_url", "Base URL", self.base_url)
        self.add_field("key_source", "API key from", self.key_source)
        self.add_field("api_key", "API key", self.api_key, hint="Kept in the OS keyring; never shown again.")
        self.add_field("api_env", "Variable", self.api_env)
        self.add_field("admin_source", "Admin key from", self.admin_source)
        self.add_field("admin_key", "Admin key", self.admin_key)
        self.add_field("admin_env", "Admin variable", self.admin_env)
        self.add_field("rpm", "Requests/min", self.rpm, hint="What we may use of the account's limits.")
        self.add_field("tpm", "Tokens/min", self.tpm)
        self.add_field("reason", "Reason", self.reason)

        self.test_button = QtWidgets.QPushButton("Test connection")
        self.test_button.setToolTip("List the models and time a one-token call with what is typed here")
        self.test_button.clicked.connect(self.test_requested.emit)
        self.buttons.addButton(self.test_button, QtWidgets.QDialogButtonBox.ButtonRole.ActionRole)
        self.test_result = QtWidgets.QLabel("")
        self.test_result.setWordWrap(True)
        self.test_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.layout_.addWidget(self.test_result)
        self.layout_.addWidget(self.buttons)

        self.kind.currentIndexChanged.connect(self._sync)
        self.key_source.currentIndexChanged.connect(self._sync)
        self.admin_source.currentIndexChanged.connect(self._sync)
        self.base_url.textChanged.connect(self._url_hint)
        self._sync()
        (self.base_url if row is not None else self.name).setFocus()

    @staticmethod
    def _load_ref(
        ref: str | None,
        source: QtWidgets.QComboBox,
        env: QtWidgets.QLineEdit,
        key: QtWidgets.QLineEdit,
        stored: bool,
    ) -> None:
        if ref is None or ref == "none":
            source.setCurrentIndex(source.findData("none"))
        elif ref.startswith("env:"):
            source.setCurrentIndex(source.findData("env"))
            env.setText(ref[4:])
        else:
            source.setCurrentIndex(source.findData("keyring"))
            if stored:
                key.setPlaceholderText("a key is stored — leave empty to keep it, or paste a new one")

    def _set_row_visible(self, key: str, visible: bool) -> None:
        self.form.setRowVisible(self.fields[key].parentWidget(), visible)

    def _sync(self) -> None:
        kind = self.kind.currentData()
        self.base_url.setPlaceholderText(URL_HINTS.get(kind, ""))
        api, admin = self.key_source.currentData(), self.admin_source.currentData()
        self._set_row_visible("api_key", api == "keyring")
        self._set_row_visible("api_env", api == "env")
        self._set_row_visible("admin_key", admin == "keyring")
        self._set_row_visible("admin_env", admin == "env")
        self._url_hint()

    def _url_hint(self) -> None:
        error, warning = check_base_url(self.base_url.text(), self.kind.currentData())
        if error is None:
            self.errors["base_url"].say(warning, warning=True)

    def form_values(self) -> ProviderForm:
        return ProviderForm(
            name=self.name.text(),
            kind=self.kind.currentData(),
            base_url=self.base_url.text(),
            key_source=self.key_source.currentData(),
            api_key=self.api_key.text(),
            api_env=self.api_env.text(),
            admin_source=self.admin_source.currentData(),
            admin_key=self.admin_key.text(),
            admin_env=self.admin_env.text(),
            rpm=self.rpm.text(),
            tpm=self.tpm.text(),
            editing=self.row is not None,
            has_stored_key=self.has_stored_key,
            has_stored_admin=self.has_stored_admin,
            existing_names=self.existing,
        )

    def reload_from(self, row: ProviderRow) -> None:
        """The store's current version (after a stale save): fields as stored, typed keys dropped."""
        self.row = row
        self.revision = row.revision
        self.kind.setCurrentIndex(max(0, self.kind.findData(row.kind)))
        self.base_url.setText(row.base_url or "")
        self.rpm.setText("" if row.rpm is None else str(row.rpm))
        self.tpm.setText("" if row.tpm is None else str(row.tpm))
        self.api_key.clear()
        self.admin_key.clear()
        self._load_ref(row.api_key_ref, self.key_source, self.api_env, self.api_key, self.has_stored_key)
        self._load_ref(
            row.admin_key_ref, self.admin_source, self.admin_env, self.admin_key, self.has_stored_admin
        )


class TargetDialog(_Editor):
    """Add or edit a target of one provider: its model and, optionally, negotiated prices."""

    def __init__(
        self,
        provider: str,
        target: dict[str, Any] | None,
        existing: frozenset[str],
        models: list[str],
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(f"Edit target {target['name']}" if target else f"Add a target to {provider}", parent)
        self.provider = provider
        self.target = target
        self.existing = existing
        self.revision = target.get("revision") if target else None
        self.name = QtWidgets.QLineEdit(target["name"] if target else "")
        self.name.setPlaceholderText("fast")
        if target is not None:
            self.name.setReadOnly(True)
            self.name.setToolTip("Routes and breakers name the target: it keeps its name.")
        self.model = QtWidgets.QComboBox()
        self.model.setEditable(True)
        self.model.addItems(models)
        self.model.setCurrentText(target["model"] if target else "")
        self.model.lineEdit().setPlaceholderText("gpt-4o-mini")
        self.prices: dict[str, QtWidgets.QLineEdit] = {}
        self.add_field("name", "Name", self.name)
        self.add_field(
            "model",
            "Model",
            self.model,
            hint="Models listed by the last connection test are offered." if models else "",
        )
        for fld, label in zip(PRICE_FIELDS, PRICE_LABELS, strict=True):
            edit = QtWidgets.QLineEdit("" if not target or target.get(fld) is None else f"{target[fld]:g}")
            edit.setPlaceholderText("list price")
            self.prices[fld] = edit
            self.add_field(
                fld,
                label,
                edit,
                hint="Empty: the list price (genai-prices)." if fld == "input_per_mtok" else "",
            )
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("why (required, goes in the audit log)")
        self.add_field("reason", "Reason", self.reason)
        self.layout_.addWidget(self.buttons)
        (self.model if target is not None else self.name).setFocus()

    def validated(self) -> tuple[dict[str, str], dict[str, Any]]:
        return validate_target(
            self.name.text(),
            self.model.currentText(),
            {f: e.text() for f, e in self.prices.items()},
            editing=self.target is not None,
            existing=self.existing,
        )

    def reload_from(self, target: dict[str, Any]) -> None:
        self.target = target
        self.revision = target.get("revision")
        self.model.setCurrentText(target["model"])
        for fld, edit in self.prices.items():
            edit.setText("" if target.get(fld) is None else f"{target[fld]:g}")


# --- the page ----------------------------------------------------------------------------------------


def _run_probe(kind: str, base_url: str, key: str | None, model: str | None) -> ProbeResult:
    return asyncio.run(probe(kind, base_url, key, model))


_PUBLIC_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


class ProvidersPage(QtWidgets.QWidget):
    """Providers on top, the selected provider's targets below; editors in dialogs."""

    status_message = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner: Runner | None = None
        self._store_getter: Callable[[], Any] = lambda: None
        self._gateway_getter: Callable[[], Any] = lambda: None
        self._busy = False
        self.view: ProvidersView | None = None
        self.dialog: _Editor | None = None
        self.confirm: QtWidgets.QMessageBox | None = None
        self.models_seen: dict[str, list[str]] = {}
        self.actor = getpass.getuser()

        spec = page_spec("providers")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 12)
        layout.addWidget(
            PageHeader(
                spec.title,
                "OpenAI, Anthropic and OpenAI-compatible providers, and their targets (a provider + a model, "
                "with optional negotiated prices). API keys live in the OS keyring; the store keeps only "
                "where to find them.",
            )
        )
        self.keyring_label = QtWidgets.QLabel("", objectName="muted")
        self.keyring_label.setWordWrap(True)
        layout.addWidget(self.keyring_label)
        self.builtin_label = QtWidgets.QLabel("", objectName="muted")
        self.builtin_label.setWordWrap(True)
        self.builtin_label.setVisible(False)
        layout.addWidget(self.builtin_label)

        actions = QtWidgets.QHBoxLayout()
        self.add_button = QtWidgets.QPushButton("Add provider…")
        self.edit_button = QtWidgets.QPushButton("Edit…")
        self.remove_button = QtWidgets.QPushButton("Remove…")
        self.test_button = QtWidgets.QPushButton("Test connection")
        self.add_button.clicked.connect(self.add_provider)
        self.edit_button.clicked.connect(self.edit_provider)
        self.remove_button.clicked.connect(self.remove_provider)
        self.test_button.clicked.connect(self.test_selected)
        self.add_button.setToolTip("Add an OpenAI, Anthropic or OpenAI-compatible provider (Insert)")
        self.edit_button.setToolTip("Edit the selected provider (Enter)")
        self.remove_button.setToolTip("Remove the selected provider and its keys (Delete)")
        self.test_button.setToolTip("List its models and time a one-token call")
        for b in (self.add_button, self.edit_button, self.remove_button, self.test_button):
            actions.addWidget(b)
        actions.addStretch(1)
        layout.addLayout(actions)
        self.result_label = QtWidgets.QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setVisible(False)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.result_label)

        self.providers = ProvidersModel(self)
        self.table = self._table(self.providers, "Providers")
        # Every column as wide as its contents, the URL takes what is left (elided in the middle):
        # no sideways scrolling on a laptop screen.
        self._fit_columns(self.table, P_URL)
        self.table.selectionModel().selectionChanged.connect(self._on_selection)
        self.empty = EmptyState("Opening the store…")
        self.stack = QtWidgets.QStackedWidget()
        self.stack.addWidget(self.table)
        self.stack.addWidget(self.empty)
        self.stack.setCurrentWidget(self.empty)

        lower = QtWidgets.QWidget()
        lower_layout = QtWidgets.QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 8, 0, 0)
        head = QtWidgets.QHBoxLayout()
        self.targets_title = QtWidgets.QLabel("Targets", objectName="sectionTitle")
        self.targets_title.setStyleSheet("font-weight: 600;")
        self.targets_title.setToolTip(
            "A target is a provider + a model that routes name; a price here overrides the list price"
        )
        head.addWidget(self.targets_title, 1)
        self.add_target_button = QtWidgets.QPushButton("Add target…")
        self.edit_target_button = QtWidgets.QPushButton("Edit…")
        self.remove_target_button = QtWidgets.QPushButton("Remove…")
        self.add_target_button.clicked.connect(self.add_target)
        self.edit_target_button.clicked.connect(self.edit_target)
        self.remove_target_button.clicked.connect(self.remove_target)
        for b in (self.add_target_button, self.edit_target_button, self.remove_target_button):
            head.addWidget(b)
        lower_layout.addLayout(head)
        self.targets = TargetsModel(self)
        self.targets_table = self._table(self.targets, "Targets of the selected provider")
        self._fit_columns(self.targets_table, T_MODEL)
        self.targets_table.selectionModel().selectionChanged.connect(self._sync_buttons)
        lower_layout.addWidget(self.targets_table, 1)

        self.targets_panel = lower
        split = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.stack)
        split.addWidget(lower)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        layout.addWidget(split, 1)

        self.table.installEventFilter(self)
        self.targets_table.installEventFilter(self)
        self.setTabOrder(self.add_button, self.edit_button)
        self.setTabOrder(self.edit_button, self.remove_button)
        self.setTabOrder(self.remove_button, self.test_button)
        self.setTabOrder(self.test_button, self.table)
        self.setTabOrder(self.table, self.add_target_button)
        self.setTabOrder(self.add_target_button, self.edit_target_button)
        self.setTabOrder(self.edit_target_button, self.remove_target_button)
        self.setTabOrder(self.remove_target_button, self.targets_table)
        self._retry = QTimer(self, singleShot=True, interval=500)
        self._retry.timeout.connect(self.reload)
        # Read again now and then while shown: other operators, `config apply`, a gateway starting.
        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self._tick)
        self._sync_buttons()

    @staticmethod
    def _fit_columns(table: QtWidgets.QTableView, stretch: int) -> None:
        header = table.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(stretch, QtWidgets.QHeaderView.ResizeMode.Stretch)
        table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        table.setStyleSheet("QTableView::item { padding: 0 10px 0 4px; }")  # contents-wide columns need air

    @staticmethod
    def _table(model: QtCore.QAbstractTableModel, name: str) -> QtWidgets.QTableView:
        table = QtWidgets.QTableView()
        table.setModel(model)
        table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        table.setAlternatingRowColors(True)
        table.setShowGrid(False)
        table.setWordWrap(False)
        table.verticalHeader().setVisible(False)
        table.verticalHeader().setDefaultSectionSize(26)
        table.horizontalHeader().setStretchLastSection(True)
        table.horizontalHeader().setHighlightSections(False)
        table.setAccessibleName(name)
        return table

    # -- keys ------------------------------------------------------------------------------------------
    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if event.type() == QtCore.QEvent.Type.KeyPress:
            key = event.key()  # type: ignore[attr-defined]
            providers = watched is self.table
            if watched in (self.table, self.targets_table):
                if key == Qt.Key.Key_Delete:
                    (self.remove_provider if providers else self.remove_target)()
                    return True
                if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                    (self.edit_provider if providers else self.edit_target)()
                    return True
                if key == Qt.Key.Key_Insert:
                    (self.add_provider if providers else self.add_target)()
                    return True
        return super().eventFilter(watched, event)

    # -- data --------------------------------------------------------------------------------------------
    def attach_store(self, store: Any, runner: Runner, gateway: Any = None) -> None:
        self._runner = runner
        self._store_getter = store if callable(store) else (lambda: store)
        if gateway is not None:
            self._gateway_getter = (
                gateway if callable(gateway) and not hasattr(gateway, "state") else (lambda: gateway)
            )
        self.reload()
        self.timer.start()

    def _tick(self) -> None:
        if (self.isVisible() or self.view is None) and self.dialog is None and self.confirm is None:
            self.reload()

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        self.reload()

    def _gateway_config(self) -> Any:
        gateway = self._gateway_getter()
        try:
            return gateway.state.config if gateway is not None else None
        except AttributeError:
            return None

    def export_visible(self, ask_path: Any = None) -> None:
        """Ctrl+E: the store's configuration (providers and targets with the rest) as a file `config apply` reads."""
        store = self._store_getter()
        if store is None or self._runner is None:
            return
        export_config(
            self, store.engine, self._runner, self._say, what="providers and targets", ask_path=ask_path
        )

    def refresh(self) -> None:
        """Ctrl+R: read the providers and targets again."""
        self.reload()

    def reload(self) -> None:
        store = self._store_getter()
        if self._runner is None:
            return
        if store is None:
            self._retry.start()
            return
        if self._busy:
            return
        self._busy = True
        engine = store.engine
        config = self._gateway_config()
        self._runner(lambda: load_providers(engine, config), self._on_view, self._on_error)

    def _on_view(self, view: ProvidersView) -> None:
        self._busy = False
        selected = self.selected_provider()
        selected_target = self.selected_target()
        self.view = view
        self.providers.set_rows(view.providers)
        self.stack.setCurrentWidget(self.table if view.providers else self.empty)
        self.targets_panel.setVisible(bool(view.providers))
        if not view.providers:
            self.empty.setText(
                "No provider yet. Add one with “Add provider…” (Insert): OpenAI, Anthropic or any "
                "OpenAI-compatible server (vLLM, Ollama, LiteLLM…). Its key goes to the OS keyring. "
                "Or apply a config file: controlroom config apply FILE.yaml."
            )
        backend = view.backend
        self.keyring_label.setText(backend.message if backend.available else f"⚠ {backend.message}")
        self.keyring_label.setStyleSheet("" if backend.available else f"color: {current_colors().warn};")
        self.builtin_label.setVisible(view.builtin)
        self.builtin_label.setText(
            "Rows marked “built-in” belong to the gateway running in this app (the demo's own setup, not in "
            "the store): they can be tested, not edited. Providers you add are saved in the store."
        )
        name = selected.name if selected else (view.providers[0].name if view.providers else None)
        row = self.providers.row_of(name) if name else None
        if row is not None:
            self.table.selectRow(row)
        self._on_selection()
        if selected_target is not None:
            for i, t in enumerate(self.targets.rows):
                if t["name"] == selected_target["name"]:
                    self.targets_table.selectRow(i)

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self._say(f"The store could not answer: {exc}", bad=True)

    def _say(self, text: str, *, bad: bool = False, good: bool = False) -> None:
        colors = current_colors()
        self.result_label.setStyleSheet(
            f"color: {colors.bad};" if bad else f"color: {colors.ok};" if good else ""
        )
        self.result_label.setText(text)
        self.result_label.setVisible(bool(text))
        if text:
            self.status_message.emit(text)

    # -- selection ---------------------------------------------------------------------------------------
    def selected_provider(self) -> ProviderRow | None:
        rows = self.table.selectionModel().selectedRows()
        return self.providers.rows[rows[0].row()] if rows else None

    def selected_target(self) -> dict[str, Any] | None:
        rows = self.targets_table.selectionModel().selectedRows()
        return self.targets.rows[rows[0].row()] if rows else None

    def select_provider(self, name: str) -> bool:
        row = self.providers.row_of(name)
        if row is None:
            return False
        self.table.selectRow(row)
        return True

    def _on_selection(self, *_args: object) -> None:
        p = self.selected_provider()
        rows = self.view.targets_of(p.name) if (p and self.view) else []
        self.targets.set_rows(rows)
        if p is None:
            self.targets_title.setText("Targets — select a provider")
        else:
            self.targets_title.setText(f"Targets of {p.name} ({len(rows)}) · prices in $ per million tokens")
        self._sync_buttons()

    def _sync_buttons(self, *_args: object) -> None:
        p = self.selected_provider()
        t = self.selected_target()
        editable = p is not None and p.in_store
        self.edit_button.setEnabled(editable)
        self.remove_button.setEnabled(editable)
        self.test_button.setEnabled(p is not None)
        self.add_target_button.setEnabled(editable)
        self.edit_target_button.setEnabled(editable and t is not None and t["_in_store"])
        self.remove_target_button.setEnabled(editable and t is not None and t["_in_store"])
        if p is not None and not p.in_store:
            tip = "Built into the running gateway (the demo), not in the store: read-only."
            for b in (self.edit_button, self.remove_button, self.add_target_button):
                b.setToolTip(tip)

    # -- provider editor -------------------------------------------------------------------------------
    def _names(self) -> frozenset[str]:
        return frozenset(p.name for p in (self.view.providers if self.view else []))

    def add_provider(self) -> None:
        self._open_provider_dialog(None)

    def edit_provider(self) -> None:
        p = self.selected_provider()
        if p is not None and p.in_store:
            self._open_provider_dialog(p)

    def _open_provider_dialog(self, row: ProviderRow | None) -> None:
        dialog = ProviderDialog(row, self._names(), self)
        dialog.save_requested.connect(lambda: self._save_provider(dialog))
        dialog.test_requested.connect(lambda: self._test_from_dialog(dialog))
        dialog.finished.connect(lambda _r: setattr(self, "dialog", None))
        self.dialog = dialog
        dialog.open()

    def _save_provider(self, dialog: ProviderDialog) -> None:
        store = self._store_getter()
        if store is None or self._runner is None or dialog.busy:
            return
        form = dialog.form_values()
        problems, row = validate_provider(form)
        problems = {**problems, **_reason_problem(dialog)}
        dialog.show_problems(problems)
        if problems:
            dialog.say("Fix the fields marked in red.")
            return
        keys: dict[KeyKind, str] = {}
        if form.key_source == "keyring" and form.api_key.strip():
            keys[KeyKind.API] = form.api_key.strip()
        if form.admin_source == "keyring" and form.admin_key.strip():
            keys[KeyKind.ADMIN] = form.admin_key.strip()
        if keys:
            status = self.view.backend if self.view else backend_status()
            if not require_keyring(status, dialog):
                field_key = "api_key" if KeyKind.API in keys else "admin_key"
                dialog.show_problems(
                    {
                        field_key: "No secure keyring here: choose “Environment variable” and set it before starting."
                    }
                )
                return
        engine = store.engine
        expected = dialog.revision
        reason = dialog.reason.text().strip()
        actor = self.actor

        def work() -> dict[str, Any]:
            saved = save_object(
                engine, "provider", row, expected_revision=expected, actor=actor, reason=reason
            )
            for kind, secret in keys.items():  # after the store accepted it: a refused save stores no key
                set_key(saved["name"], secret, kind)
            return saved

        def done(saved: dict[str, Any]) -> None:
            dialog.set_busy(False)
            dialog.accept()
            stored = " Key stored in the keyring." if keys else ""
            self._say(f"Saved provider {saved['name']} (revision {saved['revision']}).{stored}", good=True)
            self._after_save(saved["name"])

        dialog.set_busy(True)
        self._runner(work, done, lambda exc: self._save_failed(dialog, exc, "provider", row["name"]))

    def _after_save(self, provider: str) -> None:
        self._busy = False
        self.reload()
        self.select_provider(provider)

    def _save_failed(self, dialog: _Editor, exc: BaseException, kind: str, name: str) -> None:
        dialog.set_busy(False)
        if isinstance(exc, StaleRevision):
            dialog.say(f"Not saved: {exc}. The form now shows what the store holds.")
            self._reload_into(dialog, kind, name)
        elif isinstance(exc, SecretsUnavailable):
            dialog.say(f"Saved to the store, but the key was not stored: {exc}")
            self.reload()
        elif isinstance(exc, ValueError | ConflictError | NotFound):
            dialog.say(f"Not saved: {exc}")
        else:
            dialog.say(f"Not saved: {type(exc).__name__}: {exc}")

    def _reload_into(self, dialog: _Editor, kind: str, name: str) -> None:
        store = self._store_getter()
        if store is None or self._runner is None:
            return
        engine = store.engine
        config = self._gateway_config()

        def work() -> tuple[ProvidersView, dict[str, Any] | None]:
            return load_providers(engine, config), get_object(engine, kind, name)  # type: ignore[arg-type]

        def done(result: tuple[ProvidersView, dict[str, Any] | None]) -> None:
            view, obj = result
            self._busy = False
            self._on_view(view)
            if obj is None:
                dialog.say(
                    f"{kind} {name} was deleted by someone else meanwhile; cancel, or save to create it again."
                )
                if isinstance(dialog, ProviderDialog | TargetDialog):
                    dialog.revision = None
                return
            if isinstance(dialog, ProviderDialog):
                fresh = next((p for p in view.providers if p.name == name), None)
                if fresh is not None:
                    dialog.reload_from(fresh)
            elif isinstance(dialog, TargetDialog):
                dialog.reload_from(obj)

        self._runner(work, done, self._on_error)

    # -- connection test -------------------------------------------------------------------------------
    def _test_model(self, provider: str) -> str | None:
        targets = self.view.targets_of(provider) if self.view else []
        return targets[0]["model"] if targets else None

    def test_selected(self) -> None:
        p = self.selected_provider()
        if p is None or self._runner is None:
            return
        gateway = self._gateway_getter()
        # The gateway running in this app knows how its providers' keys resolve (the demo's fake key).
        resolver = getattr(gateway, "_key_resolver", None)
        kind, url, ref, name = p.kind, p.base_url or _PUBLIC_URLS.get(p.kind, ""), p.api_key_ref, p.name
        model = self._test_model(name)

        def work() -> ProbeResult:
            key = resolver(name, ref) if resolver is not None else resolve_key_ref(ref, name, KeyKind.API)
            return _run_probe(kind, url, key, model)

        self._say(f"Testing {name}…")
        self.test_button.setEnabled(False)
        self._runner(work, lambda r: self._tested(name, r), self._test_failed)

    def _tested(self, name: str, result: ProbeResult) -> None:
        self.test_button.setEnabled(self.selected_provider() is not None)
        if result.models:
            self.models_seen[name] = result.models
        self._say(f"{name}: {result.message}", bad=not result.ok, good=result.ok)

    def _test_failed(self, exc: BaseException) -> None:
        self.test_button.setEnabled(self.selected_provider() is not None)
        if isinstance(exc, SecretsUnavailable):
            self._say(f"Cannot test: {exc}", bad=True)
        else:
            self._say(f"The test could not run: {type(exc).__name__}", bad=True)

    def _test_from_dialog(self, dialog: ProviderDialog) -> None:
        if self._runner is None:
            return
        form = dialog.form_values()
        error, _ = check_base_url(form.base_url, form.kind)
        if error:
            dialog.show_problems({"base_url": error})
            return
        url = form.base_url.strip() or _PUBLIC_URLS.get(form.kind, "")
        name = form.name.strip() or "new"
        typed = form.api_key.strip() if form.key_source == "keyring" else ""
        ref = {"env": f"env:{form.api_env.strip()}", "none": "none"}.get(
            form.key_source, f"{KEYRING_PREFIX}{name}"
        )
        model = self._test_model(name)
        kind = form.kind

        def work() -> ProbeResult:
            key = typed or resolve_key_ref(ref, name, KeyKind.API)
            return _run_probe(kind, url, key, model)

        def done(result: ProbeResult) -> None:
            colors = current_colors()
            dialog.test_result.setStyleSheet(f"color: {colors.ok if result.ok else colors.bad};")
            dialog.test_result.setText(result.message)
            dialog.test_button.setEnabled(True)
            if result.models:
                self.models_seen[name] = result.models

        def failed(exc: BaseException) -> None:
            dialog.test_result.setStyleSheet(f"color: {current_colors().bad};")
            dialog.test_result.setText(
                f"Cannot test: {exc}"
                if isinstance(exc, SecretsUnavailable | ValueError)
                else type(exc).__name__
            )
            dialog.test_button.setEnabled(True)

        dialog.test_button.setEnabled(False)
        dialog.test_result.setStyleSheet("")
        dialog.test_result.setText("Testing…")
        self._runner(work, done, failed)

    # -- removal -------------------------------------------------------------------------------------------
    def _ask(self, title: str, text: str, on_yes: Callable[[], None]) -> None:
        box = QtWidgets.QMessageBox(self)
        box.setIcon(QtWidgets.QMessageBox.Icon.Warning)
        box.setWindowTitle(title)
        box.setText(text)
        box.setStandardButtons(
            QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.Cancel
        )
        box.setDefaultButton(QtWidgets.QMessageBox.StandardButton.Cancel)  # a removal is never the default
        box.button(QtWidgets.QMessageBox.StandardButton.Yes).setText("Remove")

        def finished(result: int) -> None:
            self.confirm = None
            if result == QtWidgets.QMessageBox.StandardButton.Yes:
                on_yes()

        box.finished.connect(finished)
        self.confirm = box
        box.open()

    def remove_provider(self) -> None:
        p = self.selected_provider()
        if p is None or not p.in_store:
            return
        if p.targets:
            self._say(
                f"{p.name} still has {p.targets} target{'s' if p.targets != 1 else ''}: remove "
                f"{'them' if p.targets != 1 else 'it'} first (routes may name them).",
                bad=True,
            )
            return
        keys = " and its keys in the keyring" if p.api_key_ref.startswith("keyring") else ""
        self._ask(
            f"Remove {p.name}",
            f"Remove provider {p.name}{keys}? Gateways stop using it within a second. "
            "The change can be reverted from the Audit page (keys would have to be entered again).",
            lambda: self._remove_provider(p),
        )

    def _remove_provider(self, p: ProviderRow) -> None:
        store = self._store_getter()
        if store is None or self._runner is None or p.revision is None:
            return
        engine, actor, revision = store.engine, self.actor, p.revision
        uses_keyring = p.api_key_ref.startswith("keyring") or (p.admin_key_ref or "").startswith("keyring")

        def work() -> str:
            delete_object(
                engine,
                "provider",
                p.name,
                expected_revision=revision,
                actor=actor,
                reason="removed on the Providers page",
            )
            if uses_keyring:
                try:
                    delete_key(p.name)
                except SecretsUnavailable as exc:
                    return f" Its key could not be removed from the keyring: {exc}"
            return ""

        def done(note: str) -> None:
            self._say(f"Removed provider {p.name}.{note}", good=not note, bad=bool(note))
            self._busy = False
            self.reload()

        def failed(exc: BaseException) -> None:
            self._say(
                f"Not removed: {exc}"
                + (" The list has been read again." if isinstance(exc, ConflictError) else ""),
                bad=True,
            )
            self._busy = False
            self.reload()

        self._runner(work, done, failed)

    # -- targets ---------------------------------------------------------------------------------------------
    def add_target(self) -> None:
        p = self.selected_provider()
        if p is not None and p.in_store:
            self._open_target_dialog(p.name, None)

    def edit_target(self) -> None:
        p, t = self.selected_provider(), self.selected_target()
        if p is not None and p.in_store and t is not None and t["_in_store"]:
            self._open_target_dialog(p.name, t)

    def _open_target_dialog(self, provider: str, target: dict[str, Any] | None) -> None:
        existing = frozenset(t["name"] for t in (self.view.targets if self.view else []))
        dialog = TargetDialog(provider, target, existing, self.models_seen.get(provider, []), self)
        dialog.save_requested.connect(lambda: self._save_target(dialog))
        dialog.finished.connect(lambda _r: setattr(self, "dialog", None))
        self.dialog = dialog
        dialog.open()

    def _save_target(self, dialog: TargetDialog) -> None:
        store = self._store_getter()
        if store is None or self._runner is None or dialog.busy:
            return
        problems, values = dialog.validated()
        problems = {**problems, **_reason_problem(dialog)}
        dialog.show_problems(problems)
        if problems:
            dialog.say("Fix the fields marked in red.")
            return
        data = {**(dialog.target or {}), **values, "provider": dialog.provider}
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        engine, expected, actor, reason = (
            store.engine,
            dialog.revision,
            self.actor,
            dialog.reason.text().strip(),
        )

        def done(saved: dict[str, Any]) -> None:
            dialog.set_busy(False)
            dialog.accept()
            self._say(f"Saved target {saved['name']} (revision {saved['revision']}).", good=True)
            self._after_save(dialog.provider)

        dialog.set_busy(True)
        self._runner(
            lambda: save_object(
                engine, "target", data, expected_revision=expected, actor=actor, reason=reason
            ),
            done,
            lambda exc: self._save_failed(dialog, exc, "target", values["name"]),
        )

    def remove_target(self) -> None:
        p, t = self.selected_provider(), self.selected_target()
        if p is None or t is None or not t["_in_store"]:
            return
        self._ask(
            f"Remove {t['name']}",
            f"Remove target {t['name']} ({t['model']})? Routes that name it will fail their config check "
            "until they are changed. The change can be reverted from the Audit page.",
            lambda: self._remove_target(p.name, t),
        )

    def _remove_target(self, provider: str, t: dict[str, Any]) -> None:
        store = self._store_getter()
        if store is None or self._runner is None:
            return
        engine, actor = store.engine, self.actor

        def failed(exc: BaseException) -> None:
            self._say(f"Not removed: {exc}", bad=True)
            self._busy = False
            self.reload()

        def done(_none: None) -> None:
            self._say(f"Removed target {t['name']}.", good=True)
            self._after_save(provider)

        self._runner(
            lambda: delete_object(
                engine,
                "target",
                t["name"],
                expected_revision=int(t["revision"]),
                actor=actor,
                reason="removed on the Providers page",
            ),
            done,
            failed,
        )


__all__ = [
    "ProviderDialog",
    "ProviderForm",
    "ProvidersPage",
    "TargetDialog",
    "check_base_url",
    "load_providers",
    "validate_provider",
    "validate_target",
]

PAGE_CLASS = ProvidersPage
