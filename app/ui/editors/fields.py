"""A field with its message under it, the banner, the save bar (see the package docstring)."""

from __future__ import annotations

from app.ui.qt import Qt, QtWidgets, Signal
from app.ui.theme import current_colors

_SEVERITY_RANK = {"": 0, "warning": 1, "error": 2}


def mark_invalid(widget: QtWidgets.QWidget, severity: str = "error") -> None:
    """Outline a widget in the problem's colour ("" clears it); keeps Fusion's look otherwise."""
    colors = current_colors()
    if not severity:
        widget.setStyleSheet("")
        widget.setProperty("problem", "")
        return
    colour = colors.bad if severity == "error" else colors.warn
    for kind in (
        QtWidgets.QLineEdit,
        QtWidgets.QComboBox,
        QtWidgets.QPlainTextEdit,
        QtWidgets.QAbstractSpinBox,
    ):
        if isinstance(widget, kind):
            cls = kind.__name__
            break
    else:
        return  # not an input: the message under it says enough
    widget.setStyleSheet(f"{cls} {{ border: 1px solid {colour}; border-radius: 3px; padding: 2px 4px; }}")
    widget.setProperty("problem", severity)


class FieldError(QtWidgets.QWidget):
    """An input with the message about it right underneath (hidden while there is none).

    ``set_problem`` keeps the worst problem it is given until ``clear_problem``: an error beats
    a warning, the first of equal rank stays.
    """

    def __init__(
        self, editor: QtWidgets.QWidget | None, hint: str = "", parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        if editor is None:  # a message only: about a rule or a list rather than one input
            editor = QtWidgets.QWidget(self)
            editor.hide()
        else:
            layout.addWidget(editor)
        self.editor = editor
        self.error_label = QtWidgets.QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()
        layout.addWidget(self.error_label)
        self.severity = ""
        if hint:
            editor.setToolTip(hint)

    @property
    def message(self) -> str:
        return self.error_label.text() if self.severity else ""

    def set_problem(self, message: str, severity: str = "error") -> None:
        if _SEVERITY_RANK[severity] <= _SEVERITY_RANK[self.severity]:
            return
        self.severity = severity
        colors = current_colors()
        colour = colors.bad if severity == "error" else colors.warn
        self.error_label.setStyleSheet(f"color: {colour}; font-size: 12px;")
        prefix = "" if severity == "error" else "Warning: "
        self.error_label.setText(prefix + message)
        self.error_label.show()
        mark_invalid(self.editor, severity)

    def clear_problem(self) -> None:
        if not self.severity:
            return
        self.severity = ""
        self.error_label.setText("")
        self.error_label.hide()
        mark_invalid(self.editor, "")


class ProblemBanner(QtWidgets.QFrame):
    """Problems that belong to no one field, or a refused save; with an optional action button."""

    action = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="problemBanner")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        self.label = QtWidgets.QLabel("")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.label, 1)
        self.button = QtWidgets.QPushButton("")
        self.button.clicked.connect(self.action.emit)
        self.button.hide()
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignTop)
        self.severity = ""
        self.hide()

    @property
    def text(self) -> str:
        return "" if self.isHidden() else self.label.text()

    def show_message(self, text: str, severity: str = "error", button: str = "") -> None:
        colors = current_colors()
        colour = {"error": colors.bad, "warning": colors.warn}.get(severity, colors.accent)
        self.severity = severity
        self.setStyleSheet(
            f"QFrame#problemBanner {{ border: 1px solid {colour}; border-left: 4px solid {colour}; "
            f"border-radius: 4px; background: {colors.base}; }}"
        )
        self.label.setText(text)
        self.button.setText(button)
        self.button.setVisible(bool(button))
        self.show()

    def clear(self) -> None:
        self.severity = ""
        self.label.setText("")
        self.button.hide()
        self.hide()


class SaveBar(QtWidgets.QWidget):
    """Reason (required: it goes in the audit log), Save (Ctrl+S), Revert (Esc), Delete; the result."""

    def __init__(self, noun: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("Reason for this change (required, goes in the audit log)")
        self.reason.setAccessibleName("Reason")
        self.reason_field = FieldError(self.reason)
        layout.addWidget(self.reason_field, 1)
        self.save = QtWidgets.QPushButton(f"Save {noun}")
        self.save.setToolTip("Save to the store (Ctrl+S); every gateway applies it within a second")
        self.save.setDefault(False)
        self.revert = QtWidgets.QPushButton("Revert")
        self.revert.setToolTip("Throw away unsaved edits (Esc)")
        self.delete = QtWidgets.QPushButton(f"Delete {noun}…")
        self.delete.setToolTip(f"Delete this {noun} from the store (asks first; needs a reason)")
        for b in (self.save, self.revert, self.delete):
            layout.addWidget(b, 0, Qt.AlignmentFlag.AlignTop)

    def required_reason(
        self, ask: str = "say why: the reason goes in the audit log with your name"
    ) -> str | None:
        """The reason typed; ``None`` after marking the empty field with ``ask`` and focusing it."""
        reason = self.reason.text().strip()
        if not reason:
            self.reason_field.set_problem(ask)
            self.reason.setFocus()
            return None
        return reason


def ask_confirmation(parent: QtWidgets.QWidget, title: str, text: str, ok: str) -> bool:
    """A modal question; ``True`` when the operator chose ``ok``."""
    box = QtWidgets.QMessageBox(parent)
    box.setIcon(QtWidgets.QMessageBox.Icon.Question)
    box.setWindowTitle(title)
    box.setText(text)
    yes = box.addButton(ok, QtWidgets.QMessageBox.ButtonRole.AcceptRole)
    cancel = box.addButton(QtWidgets.QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.exec()
    return box.clickedButton() is yes


class ReasonBox(QtWidgets.QDialog):
    """Says what an action will do and asks why (ui.md "Acting safely"); ``ok`` needs a reason."""

    def __init__(self, parent: QtWidgets.QWidget | None, title: str, text: str, ok: str) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setMinimumWidth(420)
        layout = QtWidgets.QVBoxLayout(self)
        head = QtWidgets.QLabel(title)
        head.setStyleSheet("font-weight: 600;")
        layout.addWidget(head)
        what = QtWidgets.QLabel(text)
        what.setWordWrap(True)
        layout.addWidget(what)
        self.reason = QtWidgets.QLineEdit()
        self.reason.setPlaceholderText("why (kept in the audit log)")
        self.reason.setAccessibleName("Reason")
        layout.addWidget(self.reason)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        self.ok = buttons.addButton(ok, QtWidgets.QDialogButtonBox.ButtonRole.AcceptRole)
        self.ok.setEnabled(False)
        self.reason.textChanged.connect(lambda t: self.ok.setEnabled(bool(t.strip())))
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.reason.setFocus()


def ask_reason(parent: QtWidgets.QWidget, title: str, text: str, ok: str) -> str | None:
    """A modal question with a required reason: the reason, or ``None`` when the operator cancelled."""
    box = ReasonBox(parent, title, text, ok)
    if box.exec() != QtWidgets.QDialog.DialogCode.Accepted:
        return None
    return box.reason.text().strip() or None
