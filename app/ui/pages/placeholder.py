"""A page that says what it will hold and what to do next (ui.md: an empty page offers the next step)."""

from __future__ import annotations

from app.ui.pages import PageSpec
from app.ui.qt import Qt, QtWidgets


class PageHeader(QtWidgets.QWidget):
    def __init__(self, title: str, subtitle: str = "", parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 8)
        layout.setSpacing(2)
        self.title = QtWidgets.QLabel(title, objectName="pageTitle")
        layout.addWidget(self.title)
        if subtitle:
            self.subtitle = QtWidgets.QLabel(subtitle, objectName="muted")
            self.subtitle.setWordWrap(True)
            layout.addWidget(self.subtitle)


class EmptyState(QtWidgets.QFrame):
    def __init__(self, message: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="emptyState")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(24, 24, 24, 24)
        self.label = QtWidgets.QLabel(message)
        self.label.setWordWrap(True)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.label)

    def setText(self, text: str) -> None:
        self.label.setText(text)


class PlaceholderPage(QtWidgets.QWidget):
    """Stands in for a page whose capability has not landed yet."""

    def __init__(self, spec: PageSpec, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec = spec
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(PageHeader(spec.title, spec.purpose))
        self.empty = EmptyState(spec.next_step)
        layout.addWidget(self.empty)
        layout.addStretch(1)
